"""Arrow routing (Ostapenko et al. 2024) over per-task LoRAs, through PEFT's own implementation.

Each task trains its own PEFT LoRA adapter (``task_<i>``) and its own head, with its task known (training
may use the task; inference may not). At inference PEFT's Arrow router takes over: in every target layer,
each token is sent to the ``top_k`` adapters whose prototype (top right singular vector of ``B A``) is most
aligned with it, softmax-weighted. Arrow is training-free and needs no task-ID, but it routes per token and
per layer and names no task; our classifier still needs one head per input, so we take the head of the
task whose adapter received the most routing weight (mean over the input's tokens, summed over layers),
the same rule SLM uses with its retrieved weights. The routing weights are recomputed from PEFT's own
prototypes in a forward hook only to read them out; PEFT does the mixing.
"""

from __future__ import annotations

import torch

from scalable_lm import training
from scalable_lm.adapters.classification import EncoderClassifier
from scalable_lm.config import BankConfig, TrainConfig, resolve_targets
from scalable_lm.data.tasks import Task, check_new_task, split_validation
from scalable_lm.methods.base import Prediction

ROUTER = "arrow_router"


class Arrow:
    """Per-task PEFT LoRAs, routed per token by PEFT's Arrow at inference; no task-ID.

    Args:
        backbone: ``(model, tokenizer)``; frozen.
        train: shared training budget (``train.lr`` is the LoRA learning rate).
        bank: rank, alpha and target layers (the other fields are unused).
        top_k: adapters mixed per token (PEFT's default 3).
        temperature: softmax temperature of the router (PEFT's default 1.0).
    """

    name = "arrow"

    def __init__(self, backbone, train: TrainConfig | None = None, bank: BankConfig | None = None,
                 top_k: int = 3, temperature: float = 1.0, device: str | torch.device = "cpu"):
        from scalable_lm.device import resolve_device

        model, tokenizer = backbone
        self.device = resolve_device(device)
        model = model.to(self.device)
        self.cfg, self.bank = train or TrainConfig(), bank or BankConfig()
        self.classifier = EncoderClassifier(model, tokenizer)
        self.model = model
        self.peft = None
        self.top_k, self.temperature = top_k, temperature
        self.task_names: list[str] = []
        self.label_names: list[list[str]] = []

    def _lora_config(self, **extra):
        from peft import LoraConfig

        return LoraConfig(r=self.bank.rank, lora_alpha=self.bank.alpha, lora_dropout=0.0,
                          target_modules=resolve_targets(self.bank.targets, None), **extra)

    def _add_adapter(self, name: str) -> None:
        from peft import get_peft_model

        if self.peft is None:  # injects LoRA layers into self.model in place; the classifier keeps working
            self.peft = get_peft_model(self.model, self._lora_config(), adapter_name=name)
        else:
            self.peft.add_adapter(name, self._lora_config())
        self.peft.set_adapter(name)  # only this adapter is active and trainable

    def _drop_router(self) -> None:
        if self.peft is not None and ROUTER in self.peft.peft_config:
            self.peft.delete_adapter(ROUTER)

    def _ensure_router(self) -> None:
        """(Re)build the Arrow router over every task adapter learned so far."""
        from peft import ArrowConfig

        experts = [f"task_{i}" for i in range(len(self.task_names))]
        if ROUTER in self.peft.peft_config and self.peft.peft_config[ROUTER].arrow_config.task_adapter_names == experts:
            self.peft.set_adapter(ROUTER)
            return
        self._drop_router()
        arrow = ArrowConfig(top_k=min(self.top_k, len(experts)), router_temperature=self.temperature, rng_seed=0)
        arrow.task_adapter_names, arrow.gks_adapter_names = experts, []
        self.peft.add_adapter(ROUTER, self._lora_config(arrow_config=arrow))
        self.peft.set_adapter(ROUTER)

    def learn(self, task: Task, progress: bool = True) -> dict:
        check_new_task(task, self.task_names)
        t = len(self.task_names)
        seed = self.cfg.seed + t
        generator = torch.Generator().manual_seed(seed)
        rows, val = split_validation(task.train, self.cfg.val_fraction, seed)  # same rows SLM trains on
        self._drop_router()
        with torch.random.fork_rng(devices=[]):  # LoRA/head init and dropout seeded; global RNG restored
            torch.manual_seed(seed)
            self._add_adapter(f"task_{t}")
            head = self.classifier.add_head(len(task.label_names))
            params = [p for n, p in self.peft.named_parameters() if p.requires_grad] + list(head.parameters())
            optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=0.0)
            tokens = self.classifier.tokenizer([x for x, _ in rows], truncation=True, max_length=self.cfg.max_length)
            labels = torch.tensor([y for _, y in rows], device=self.device)

            def logits_fn(idx):
                feats = self.classifier.features(self.classifier.pad(tokens, idx.tolist()))
                return self.classifier.head_logits(feats, t), labels[idx]

            best, best_state, history = -1.0, None, []
            for epoch in range(self.cfg.epochs):
                self.classifier.train()
                loss = training.supervised_epoch(params, optimizer, len(rows), self.cfg.batch_size, logits_fn,
                                                 generator, f"arrow lora {task.name} epoch {epoch + 1}", progress)
                acc = self._own_accuracy(t, val) if val else None
                history.append({"epoch": epoch + 1, "loss": loss, "val_accuracy": acc})
                if acc is not None and acc > best:
                    best, best_state = acc, [p.detach().clone() for p in params]
            if best_state is not None:  # keep the best epoch on the validation split, as SLM does
                with torch.no_grad():
                    for p, saved in zip(params, best_state):
                        p.copy_(saved)
            self.classifier.eval()
        for p in params:
            p.requires_grad_(False)
        self.task_names.append(task.name)
        self.label_names.append(list(task.label_names))
        return {"task": task.name, "epochs": history, "train_rows": len(rows)}

    @torch.no_grad()
    def _own_accuracy(self, t: int, rows) -> float:
        self.classifier.eval()
        correct = 0
        for idx in training.batches(len(rows), 64):
            feats = self.classifier.features(self.classifier.tokenize([rows[i][0] for i in idx], self.cfg.max_length))
            correct += int((self.classifier.head_logits(feats, t).argmax(-1) == torch.tensor([rows[i][1] for i in idx], device=self.device)).sum())
        return correct / len(rows)

    def _routing_layers(self) -> list[torch.nn.Module]:
        return [m for m in self.peft.modules() if hasattr(m, "lora_arrow") and ROUTER in m.lora_arrow]

    @torch.no_grad()
    def predict(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> list[Prediction]:
        if not self.task_names:
            raise RuntimeError("no task learned yet")
        self._ensure_router()
        self.classifier.eval()
        n = len(self.task_names)
        state: dict = {}

        def read_routing(module, inputs, output):
            # the router's weights, recomputed from PEFT's prototypes (built during this forward)
            arrow = module.lora_arrow[ROUTER]
            x = inputs[0].to(arrow.prototypes.dtype)  # (B, T, d_in)
            sim = (x @ arrow.prototypes.T).abs()  # (B, T, E)
            top, idx = sim.topk(arrow.top_k, dim=-1)
            coeff = torch.zeros_like(sim).scatter_(-1, idx, torch.softmax(top / arrow.temperature, dim=-1))
            mask = state["mask"][..., None]  # (B, T, 1)
            state["weight"] += (coeff * mask).sum(1) / mask.sum(1)

        hooks = [m.register_forward_hook(read_routing) for m in self._routing_layers()]
        out: list[Prediction] = []
        try:
            for idx in training.batches(len(texts), batch_size):
                batch = self.classifier.tokenize([texts[i] for i in idx], self.cfg.max_length)
                state["mask"] = batch["attention_mask"].float()
                state["weight"] = torch.zeros(len(idx), n, device=self.device)
                feats = self.classifier.features(batch)
                weight = state["weight"] / max(len(hooks), 1)  # (B, E): mean routing weight per task
                for row in range(len(idx)):
                    t = int(weight[row].argmax())
                    probs = torch.softmax(self.classifier.head_logits(feats[row: row + 1], t)[0], dim=-1)
                    k = int(probs.argmax())
                    out.append(Prediction(label=self.label_names[t][k], task=self.task_names[t],
                                          confidence=float(probs[k]), weights=[round(float(w), 6) for w in weight[row]]))
        finally:
            for h in hooks:
                h.remove()
        return out
