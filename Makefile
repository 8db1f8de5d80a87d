# Two entry points a new user needs (see README): `make run` and `make test`.
# Everything lives in .venv; model weights land in .venv/share/alfred-daemon/models.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.alfred-installed
SAMPLE ?= tests/data/jfk.wav

.PHONY: run setup test lint typecheck unit bench clean

run: setup
	$(BIN)/alfred-daemon transcribe --realtime $(SAMPLE)

setup: $(STAMP)

$(STAMP): pyproject.toml clients/node/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/alfred-daemon models fetch
	cd clients/node && npm ci --no-audit --no-fund
	touch $@

lint: setup
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -q

test: lint typecheck unit

bench: setup
	$(BIN)/python benchmarks/engine_bench.py
	$(BIN)/python benchmarks/runtime_bench.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
