import pytest

from scalable_lm.backbones import fingerprint, load_encoder


@pytest.mark.integration
def test_truncated_query_encoder_is_lighter_and_has_its_own_fingerprint():
    light, _ = load_encoder("minilm-l2")
    full, _ = load_encoder("minilm")
    assert len(light.encoder.layer) == 2 and light.config.num_hidden_layers == 2
    assert fingerprint(light) != fingerprint(full)
    with pytest.raises(ValueError, match="has 6 layers"):
        load_encoder("minilm-l9")
