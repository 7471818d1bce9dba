"""Decoder LMs (``AutoModelForCausalLM``: LLaMA / SmolLM2, Gemma 3, ...): prompts, answer-only loss, generation.

A model with a chat template (an instruct model) reads each prompt as one user turn of it. A model without
one (a base model) reads ``prompt_format`` (default ``PLAIN_FORMAT``; Gemma 3 uses ``BASE_FORMAT``, the
prompt, a line break, ``Answer:``, and its answer after a space); its beginning-of-sequence token is put
first when its tokenizer normally adds one (Gemma's does; text rendered by a chat template already holds it).

Routing is per row and set once per prompt by the caller (``adapters.inject.routed``) around the whole
``generate`` call: greedy decoding keeps the batch's rows in place, so each row keeps its entries and
weights at every step, and the KV cache is untouched (the increments change the layer, not the cache).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from scalable_lm.device import module_device

PLAIN_FORMAT = "{prompt}\n"
BASE_FORMAT = "{prompt}\nAnswer:"


class CausalLM(nn.Module):
    """A frozen causal LM with its tokenizer (``generates``: the server can stream its answers).

    Args:
        model: an ``AutoModelForCausalLM``; frozen here.
        tokenizer: its tokenizer; the chat template is used when it has one.
        max_length: most tokens of prompt + answer in training (the prompt is cut from the left).
        prompt_format: how a prompt is read when the tokenizer has no chat template (``{prompt}`` in it);
            when it ends with ``:``, answers follow after a space.
    """

    generates = True

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 256, prompt_format: str = PLAIN_FORMAT):
        super().__init__()
        self.model = model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.prompt_format = prompt_format
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no end-of-sequence token")
        bos = tokenizer.bos_token_id  # does the tokenizer put BOS first by itself? (asked once: not thread-safe)
        self._bos_first = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
        self.stop_ids = stop_ids(model, tokenizer)

    @property
    def end_id(self) -> int:
        """The token training appends to every answer: the tokenizer's end-of-sequence, which for a chat model
        is the token its template ends a turn with (SmolLM2: <|im_end|>)."""
        return self.tokenizer.eos_token_id

    @property
    def device(self) -> torch.device:
        """The model's device: every batch is built there."""
        return module_device(self.model)

    @property
    def chat(self) -> bool:
        """Whether prompts go through the tokenizer's chat template (else ``BASE_FORMAT``)."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render(self, prompt: str) -> str:
        """The text the model sees before its answer (chat template with the generation prompt, or
        ``BASE_FORMAT`` for a base model)."""
        if self.chat:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                      add_generation_prompt=True, tokenize=False)
        return self.prompt_format.replace("{prompt}", prompt)

    @property
    def start_ids(self) -> list[int]:
        """Ids put before a base-model prompt: its beginning-of-sequence token, if its tokenizer adds one."""
        return [] if self.chat or not self._bos_first else [self.tokenizer.bos_token_id]

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _prompt(self, prompt: str, limit: int) -> list[int]:
        """``start_ids`` + the rendered prompt's ids, cut from the left to ``limit`` tokens in all."""
        return self.clip(self.start_ids + self._ids(self.render(prompt)), limit)

    def training_batch(self, prompts: list[str], answers: list[str]) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``/``attention_mask`` and ``labels`` that are ``-100`` except on the answer
        tokens and the closing end-of-sequence token (the loss is on the answer only)."""
        rows, labels = [], []
        for prompt, answer in zip(prompts, answers):
            if not self.chat and self.prompt_format.endswith(":"):
                answer = " " + answer  # "Answer: <answer>"
            answer_ids = self._ids(answer)[: self.max_length // 2] + [self.end_id]
            prompt_ids = self._prompt(prompt, self.max_length - len(answer_ids))
            rows.append(prompt_ids + answer_ids)
            labels.append([-100] * len(prompt_ids) + answer_ids)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        device = self.device
        return {
            "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device),
            "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels], device=device),
        }

    def loss(self, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy of the answer tokens in float32, whatever the model's dtype: their ``mean``, or their
        ``sum`` (micro-batches that add up to one step).

        The LM head runs only where a label is (``answer_logits``): a prompt's positions never reach the
        vocabulary, so memory follows the answer's length, not the prompt's times the vocabulary's.
        """
        labels = batch["labels"][:, 1:]
        keep = labels != -100  # [B, T-1]: position t predicts token t+1
        logits = answer_logits(self.model, keep, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return F.cross_entropy(logits.float(), labels[keep], reduction=reduction)

    @staticmethod
    def answer_tokens(batch: dict[str, torch.Tensor]) -> int:
        """How many tokens of ``batch`` the loss is over (the answers and their end tokens)."""
        return int((batch["labels"][:, 1:] != -100).sum())

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int = 64) -> list[tuple[str, float]]:
        """Greedy answers, batched with left padding: ``(text, mean log-probability of its tokens)``."""
        ids = [self._prompt(p, self.max_length) for p in prompts]
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.device)
        out = self.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                  do_sample=False, pad_token_id=pad, eos_token_id=self.stop_ids,
                                  output_scores=True, return_dict_in_generate=True)
        new = out.sequences[:, width:]
        logprobs = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)  # (B, T, V)
        chosen = logprobs.gather(-1, new[..., None])[..., 0]
        answers = []
        for row in range(len(prompts)):
            tokens = new[row].tolist()
            stop = next((i for i, t in enumerate(tokens) if t in self.stop_ids), len(tokens))
            text = self.tokenizer.decode(tokens[:stop], skip_special_tokens=True).strip()
            answers.append((text, float(chosen[row, : max(stop, 1)].mean())))
        return answers


    def prompt_ids(self, text: str) -> list[int]:
        """Token ids the model reads before its answer to ``text`` (``clip`` of its rendered tokens)."""
        return self._prompt(text, self.max_length)

    def clip(self, ids: list[int], limit: int | None = None) -> list[int]:
        """A prompt's ids cut from the left to ``limit`` (default ``max_length``), as ``generate`` does; a
        leading ``start_ids`` is kept."""
        limit = self.max_length if limit is None else limit
        if len(ids) <= limit:
            return ids
        start = self.start_ids
        if start and ids[: len(start)] == start and limit > len(start):
            return start + ids[len(ids) - (limit - len(start)):]
        return ids[len(ids) - limit:] if limit > 0 else []

    @torch.no_grad()
    def decode(self, ids: list[list[int]], max_new_tokens: list[int], temperature: list[float],
               top_p: list[float] | None = None, generators: list[torch.Generator | None] | None = None,
               on_token: Callable[[int, int], bool] | None = None,
               ignore_eos: list[bool] | None = None) -> list[list[int]]:
        """Our own decoding loop: each row has its own length limit, temperature, top-p and random stream.

        ``transformers``' ``generate`` takes one sampling setting and one global random stream for the whole
        batch, so a sampled row would depend on its batch-mates; here every row samples from its own
        ``torch.Generator`` and stops on its own. Rows are left-padded and never removed (the KV cache and
        the per-row routes keep their shape); a finished row keeps feeding end-of-sequence tokens whose
        outputs are ignored. A row ends at any of ``stop_ids``. Temperature 0 is greedy (the same tokens as
        ``generate``).

        Args:
            ids: prompt token ids per row (``prompt_ids``).
            max_new_tokens, temperature, top_p, generators: per row.
            ignore_eos: per row, keep decoding past end-of-sequence (fixed-length answers, for load tests).
            on_token: called as ``on_token(row, token_id)`` for every new token of an unfinished row
                (end-of-sequence included); returning False finishes the row (a stop string, a client gone).

        Returns:
            the new token ids per row, without the end-of-sequence token.
        """
        n = len(ids)
        top_p = top_p or [1.0] * n
        ignore_eos = ignore_eos or [False] * n
        # only the last position's logits are needed: skips the LM head over the whole prompt when the
        # model's forward supports it (transformers' causal LMs do)
        params = inspect.signature(self.model.forward).parameters
        last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        # the KV cache argument is ``cache`` from transformers 5.2x (``past_key_values`` before, deprecated after)
        cache_arg = "cache" if "cache" in params else "past_key_values"
        generators = generators or [None] * n
        eos, pad, stops = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id, set(self.stop_ids)
        width = max(len(x) for x in ids)
        device = self.device
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out: list[list[int]] = [[] for _ in range(n)]
        done = [limit <= 0 for limit in max_new_tokens]
        cache = None
        while not all(done):
            result = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                use_cache=True, **{cache_arg: cache}, **last_only)
            cache = getattr(result, "cache", None) if cache_arg == "cache" else result.past_key_values
            logits = result.logits[:, -1].float()
            step = torch.full((n,), eos, dtype=torch.long, device=device)
            for row in range(n):
                if done[row]:
                    continue
                token = _choose(logits[row], temperature[row], top_p[row], generators[row])
                step[row] = token
                keep = on_token(row, token) if on_token is not None else True
                if token in stops and not ignore_eos[row]:
                    done[row] = True
                    continue
                out[row].append(token)
                done[row] = not keep or len(out[row]) >= max_new_tokens[row]
            input_ids = step[:, None]
            mask = torch.cat([mask, mask.new_ones(n, 1)], dim=1)
            positions = positions[:, -1:] + 1
        return out


def answer_logits(model: nn.Module, keep: torch.Tensor, shifted: bool = True, **inputs) -> torch.Tensor:
    """``model(**inputs)``'s logits at the positions ``keep`` marks only: ``[N, V]`` for the ``N`` marked positions.

    ``keep [B, T']`` marks the positions whose next token is a label (``shifted``: ``T' = T - 1``, the last
    position predicts nothing) or, for an encoder-decoder, the decoder positions that carry a label. A hook on
    the output embedding (the LM head) hands it the hidden states of those positions alone, so the head's
    ``[B, T, V]`` output, and its float32 copy, are never made: for a 49k-262k word vocabulary that tensor,
    not the model, set the memory of a learn. transformers' ``logits_to_keep`` keeps the same positions of every
    row, which does not fit answers that start at a different position in each row, hence the hook. What the
    model does after its head (Gemma's soft-capping, a scale) is element-wise and still applies. A model
    without an output embedding, or whose head sees other positions than expected, gets the plain forward and
    the positions picked from its full logits.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    picked: list[bool] = []

    def gather(module, args):
        hidden = args[0]
        width = hidden.shape[1] - (1 if shifted else 0)
        if hidden.dim() != 3 or width != keep.shape[1] or picked:
            return None  # not the head call this expects: leave it as it is
        picked.append(True)
        return (hidden[:, :width][keep][None], *args[1:])

    # with labels the model computes its own loss over every position: no hook then
    handle = head.register_forward_pre_hook(gather) if head is not None and "labels" not in inputs else None
    try:
        logits = model(**inputs).logits
    finally:
        if handle is not None:
            handle.remove()
    if picked:
        return logits[0]
    return (logits[:, :-1] if shifted else logits)[keep]


def stop_ids(model: nn.Module, tokenizer) -> list[int]:
    """The ids that end an answer: the tokenizer's end-of-sequence and every end id of the model's generation
    config (as ``generate`` and vLLM stop), and, for a chat model whose template opens each turn with the BOS
    token (SmolLM2's <|im_start|>), that token: a new turn beginning means the answer ended. (Model directories
    of scalable-lm 0.1.0 were trained to end SmolLM2 answers with <|im_start|>.)"""
    from scalable_lm.backbones import end_ids

    ids = [tokenizer.eos_token_id, *end_ids(getattr(model, "generation_config", None))]
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and tokenizer.bos_token_id is not None and tokenizer.bos_token in template:
        ids.append(tokenizer.bos_token_id)
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def _choose(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """One token from ``logits [V]``: argmax at temperature 0, else a sample (nucleus ``top_p``)."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # keep the smallest prefix reaching top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


class Seq2SeqLM(nn.Module):
    """An encoder-decoder (``AutoModelForSeq2SeqLM``, T5 family) with the same interface as ``CausalLM``:
    the prompt goes to the encoder, the answer is the decoder's target (text-to-text labels)."""

    generates = False  # not served yet: answered by `slm predict`

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 256):
        super().__init__()
        self.model = model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs end-of-sequence and padding tokens")

    @property
    def device(self) -> torch.device:
        return module_device(self.model)

    def render(self, prompt: str) -> str:
        return prompt

    start_ids: list[int] = []  # the encoder reads the prompt as it is (no BOS to add)

    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    def training_batch(self, prompts: list[str], answers: list[str]) -> dict[str, torch.Tensor]:
        batch = self._encode(prompts)
        targets = [self.tokenizer(a, add_special_tokens=False)["input_ids"][: self.max_length // 2]
                   + [self.tokenizer.eos_token_id] for a in answers]
        width = max(len(t) for t in targets)
        batch["labels"] = torch.tensor([t + [-100] * (width - len(t)) for t in targets], device=self.device)
        return dict(batch)

    def loss(self, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy of the target tokens in float32 (``mean`` or ``sum``, as ``CausalLM.loss``); the LM head
        runs on the target positions only (padding skipped)."""
        labels = batch["labels"]
        keep = labels != -100
        # the decoder reads the labels shifted right; the model's own loss (over every position) is not asked for
        shift = getattr(self.model, "prepare_decoder_input_ids_from_labels", None)
        decoder = {"decoder_input_ids": shift(labels=labels)} if shift is not None else {"labels": labels}
        logits = answer_logits(self.model, keep, shifted=False, input_ids=batch["input_ids"],
                               attention_mask=batch["attention_mask"], **decoder)
        return F.cross_entropy(logits.float(), labels[keep], reduction=reduction)

    @staticmethod
    def answer_tokens(batch: dict[str, torch.Tensor]) -> int:
        """How many target tokens of ``batch`` the loss is over."""
        return int((batch["labels"] != -100).sum())

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int = 64) -> list[tuple[str, float]]:
        batch = self._encode(prompts)
        out = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  max_new_tokens=max_new_tokens, do_sample=False, output_scores=True,
                                  return_dict_in_generate=True, eos_token_id=self.tokenizer.eos_token_id,
                                  pad_token_id=self.tokenizer.pad_token_id)
        new = out.sequences[:, 1:]  # after the decoder start token
        logprobs = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)
        chosen = logprobs.gather(-1, new[..., None])[..., 0]
        answers = []
        for row in range(len(prompts)):
            tokens = new[row].tolist()
            eos = self.tokenizer.eos_token_id
            stop = tokens.index(eos) if eos in tokens else len(tokens)
            text = self.tokenizer.decode(tokens[:stop], skip_special_tokens=True).strip()
            answers.append((text, float(chosen[row, : max(stop, 1)].mean())))
        return answers
