# Two commands on a fresh machine:
#   make demo   set everything up, then run the main job on the embedded default repository
#   make test   set everything up, lint, then run the test suite (what .ci/run runs)
#   make lint   ruff (lint + format check) and mypy, as configured in pyproject.toml
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; set TORCH_SPEC= (empty) to keep a torch you installed yourself (e.g. a CUDA build).
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: setup demo lint test test-quick clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=/path/to/python3.10+)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if [ -n "$(TORCH_SPEC)" ] && ! $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "installing $(TORCH_SPEC)"; $(BIN)/python -m pip install -q "$(TORCH_SPEC)"; fi
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/hybrid demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Two pytest-xdist workers: every test that starts or joins Ray runs in one of them, in file order, the rest in the
# other (tests/conftest.py schedules them).
PYTEST := RAY_DATA_DISABLE_PROGRESS_BARS=1 $(BIN)/python -m pytest tests -q -n 2

test: lint
	$(PYTEST) --durations=15

test-quick: setup
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV) data/ast_dataset outputs
