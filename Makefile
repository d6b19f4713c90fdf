# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := build/demo

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: this exact CPU build is on disk; anything else pulls a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check mixtera_cli planner runtime tests examples bench man
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/python examples/run_demo.py --workdir $(DEMO)

lint: $(STAMP)
	$(BIN)/ruff check mixtera_cli planner runtime tests examples bench man

clean:
	rm -rf build $(VENV)
