import torch

from scalable_lm.baselines.osf import OSF, OSFGenerator, preserved_fraction
from scalable_lm.config import TrainConfig
from tests.conftest import tiny_bert
from tests.methods.test_generative import instruction_task, lm_tokenizer, tiny_config, tiny_llama  # noqa: F401

TRAIN = TrainConfig(epochs=2, batch_size=8, max_length=24, lr=1e-2)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.endswith("query.weight")}


def test_preserved_fraction_grows_with_the_task_index():
    fractions = [preserved_fraction(i, 5) for i in range(8)]
    assert fractions == sorted(fractions) and fractions[0] > 0 and max(fractions) <= 0.95


def test_osf_folds_each_task_into_the_weights_and_answers_without_task_id(tokenizer, toy_stream):
    model = tiny_bert(0)
    start = _weights(model)
    method = OSF((model, tokenizer), TRAIN, lr=1e-2, expected_tasks=2)
    first = method.learn(toy_stream[0], progress=False)
    after_first = _weights(method.classifier.backbone)
    assert any(not torch.allclose(start[k], after_first[k]) for k in start)  # merged, not discarded
    assert not any("osf" in name for name, _ in method.classifier.backbone.named_modules())  # unwrapped
    second = method.learn(toy_stream[1], progress=False)
    assert second["preserved_fraction"] > first["preserved_fraction"]
    assert second["trainable_parameters"] < first["trainable_parameters"]
    preds = method.predict([x for x, _ in toy_stream[1].test])
    assert {p.task for p in preds} <= {"fruit", "vehicle"}


def test_peft_unload_would_discard_what_osf_learned(tokenizer):
    """Why the baseline calls merge_and_unload(): the docs' unload() drops the trained update."""
    from peft import OSFConfig, get_peft_model

    model = tiny_bert(0)
    start = _weights(model)
    peft_model = get_peft_model(model, OSFConfig(target_modules=["query"], effective_rank=0.5))
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    reverted = _weights(peft_model.unload())
    assert all(torch.allclose(start[k], reverted[k]) for k in start)


def test_osf_generator_learns_two_tasks(lm_tokenizer):
    config = tiny_config(targets=["o_proj"])
    config.train.epochs = 2
    method = OSFGenerator(config, backbone=(tiny_llama(), lm_tokenizer), lr=1e-3, expected_tasks=2,
                          max_new_tokens=2)
    fruit, vehicle = instruction_task("fruit", "sweet"), instruction_task("vehicle", "fast", seed=1)
    method.learn(fruit, progress=False)
    report = method.learn(vehicle, progress=False)
    assert report["trainable_parameters"] > 0 and method.task_names == ["fruit", "vehicle"]
    assert len(method.predict([p for p, _ in fruit.test[:3]], batch_size=2)) == 3
    rows = [{"question": "What is red?", "choices": ["apple", "a car"]}]
    assert len(method.multiple_choice("arc_easy", rows)) == 1
