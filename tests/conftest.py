"""Shared fixtures: tiny BERT models built in code (no download), the packaged tokenizer, toy streams."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from scalable_lm.backbones import resolve
from scalable_lm.config import SLMConfig
from scalable_lm.data.tasks import Task
from scalable_lm.encoder import QueryEncoder
from scalable_lm.methods.slm import SLM
from scalable_lm.store import attach_pretrained_names

attach_pretrained_names()  # tests build models from methods/ directly: give them save_pretrained / from_pretrained

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve("minilm"))


def tiny_bert(seed: int, hidden: int = 48, layers: int = 2) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    return BertModel(config).eval()


def tiny_config(**bank) -> SLMConfig:
    config = SLMConfig()
    config.bank.rank, config.bank.alpha = 4, 8.0
    config.bank.targets = ["attention.output.dense", "output.dense"]
    for key, value in bank.items():
        setattr(config.bank, key, value)
    config.keys.key_epochs = 10
    config.train.epochs, config.train.batch_size, config.train.max_length = 3, 8, 24
    config.train.lr = 1e-2
    return config


def tiny_query_model(seed: int = 100, hidden: int = 48) -> BertModel:
    """A bag-of-words sentence encoder: embeddings only, no position/type/special-token signal.

    A random transformer maps every short text near one common direction, so its queries cannot tell
    tasks apart; the tests need a query encoder that, like a trained one, separates domains.
    """
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=0, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    model = BertModel(config).eval()
    with torch.no_grad():
        model.embeddings.position_embeddings.weight.zero_()
        model.embeddings.token_type_embeddings.weight.zero_()
        model.embeddings.word_embeddings.weight[[0, 100, 101, 102, 103]] = 0.0
    return model


@pytest.fixture
def make_slm(tokenizer):
    def make(config: SLMConfig | None = None, backbone_seed: int = 0) -> SLM:
        encoder = QueryEncoder(tiny_query_model(), tokenizer, name="tiny-encoder", max_length=24)
        return SLM(config or tiny_config(), backbone=(tiny_bert(backbone_seed), tokenizer), encoder=encoder)

    return make


def shared_config(depth: int = 1, **bank) -> SLMConfig:
    """``tiny_config`` with the query read from the backbone's own block ``depth`` (``--encoder shared-lN``)."""
    config = tiny_config(**bank)
    config.model.encoder = f"shared-l{depth}"
    return config


@pytest.fixture
def make_shared_slm(tokenizer):
    """An SLM whose queries come from its own 3-block tiny BERT (no separate encoder)."""
    def make(config: SLMConfig | None = None, backbone_seed: int = 0) -> SLM:
        return SLM(config or shared_config(), backbone=(tiny_bert(backbone_seed, layers=3), tokenizer))

    return make


_DOMAINS = {
    "fruit": (["apple", "banana", "cherry", "mango"], ["sweet", "sour"]),
    "vehicle": (["car", "truck", "bicycle", "train"], ["fast", "slow"]),
    "weather": (["rain", "snow", "sun", "wind"], ["cold", "warm"]),
}


def toy_task(name: str, n_train: int = 40, n_test: int = 12, seed: int = 0) -> Task:
    """Texts of one domain; the label is which of two keywords the text contains."""
    nouns, labels = _DOMAINS[name]
    rng = random.Random(seed)

    def rows(n):
        out = []
        for _ in range(n):
            y = rng.randrange(2)
            out.append((f"{rng.choice(nouns)} {labels[y]} {rng.choice(nouns)}", y))
        return out

    return Task(name, list(labels), train=rows(n_train), test=rows(n_test))


@pytest.fixture
def toy_stream() -> list[Task]:
    return [toy_task(name, seed=i) for i, name in enumerate(_DOMAINS)]
