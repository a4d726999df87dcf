# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test typecheck lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned: that pin resolves to the local CPU build (never a CUDA build).
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/npas search --model resnet20 --data digits --agent qbo --budget 16 --out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pyright -p .
	$(BIN)/python -m pytest -q

# pyright (basic mode, settings in pyproject.toml); also run by `test`.
typecheck: $(STAMP)
	$(BIN)/pyright -p .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) build *.egg-info
