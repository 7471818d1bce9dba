"""The 'auto' defaults: made concrete when a model is built, per kind, and stored resolved."""

from scalable_lm.config import (AUTO, PAPER_TARGETS, SHARED_PREFIX_TARGETS, SLMConfig, resolve_classifier,
                                resolve_targets)
from tests.methods.test_generative import lm_tokenizer  # noqa: F401 (a fixture)


def test_a_classifier_defaults_to_its_own_prefix_and_every_linear_layer_above_it():
    config = resolve_classifier(SLMConfig())
    assert config.model.encoder == "shared-l4" and config.bank.targets == SHARED_PREFIX_TARGETS
    # a separate encoder keeps the paper's targets; explicit choices are kept as given
    config = SLMConfig()
    config.model.encoder = "minilm-l4"
    assert resolve_classifier(config).bank.targets == PAPER_TARGETS
    config = SLMConfig()
    config.bank.targets = ["output.dense"]
    assert resolve_classifier(config).bank.targets == ["output.dense"]
    # the baselines route nothing: the paper's targets
    assert resolve_targets([AUTO], None) == PAPER_TARGETS


def test_a_given_encoder_names_itself_in_the_config(tokenizer):
    from scalable_lm.encoder import QueryEncoder
    from tests.conftest import tiny_query_model

    given = QueryEncoder(tiny_query_model(), tokenizer, name="tiny-encoder")
    config = resolve_classifier(SLMConfig(), given)
    assert config.model.encoder == "tiny-encoder" and config.bank.targets == PAPER_TARGETS


def test_a_generative_model_defaults_to_the_separate_encoder_and_o_proj(lm_tokenizer):
    from scalable_lm.methods.generative import DECODER_TARGETS, generative_backbone
    from tests.methods.test_generative import tiny_llama

    config, _ = generative_backbone(SLMConfig(), (tiny_llama(), lm_tokenizer))
    assert config.model.encoder == "minilm-l4" and config.bank.targets == DECODER_TARGETS
    assert config.model.backbone == "smollm2"


def test_a_new_generative_model_defaults_to_one_entry_per_task():
    from scalable_lm.config import GENERATIVE_LAYOUT

    config = SLMConfig.generative().validate()
    assert {name: getattr(config.bank, name) for name in GENERATIVE_LAYOUT} == GENERATIVE_LAYOUT
    assert config.bank.entries_per_task * config.bank.rank == SLMConfig().bank.entries_per_task * SLMConfig().bank.rank
    assert SLMConfig().bank.entries_per_task == 4  # the classifier's layout is unchanged
