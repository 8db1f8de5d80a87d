# Two entry points a new user needs (see README): `make run` and `make test`.
# Everything lives in .venv; model weights land in .venv/share/alfred-daemon/models.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.alfred-installed
SAMPLE ?= tests/data/jfk.wav
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run demo setup test lint typecheck unit bench clean

# The daemon in the foreground (Ctrl-C drains and stops it): gRPC 127.0.0.1:50051,
# HTTP ops and the live monitor at http://127.0.0.1:8015/monitor.
run: setup
	$(BIN)/alfred-daemon serve

# No daemon: the engine alone over a sample file, printing events live.
demo: setup
	$(BIN)/alfred-daemon transcribe --realtime $(SAMPLE)

setup: $(STAMP)

$(STAMP): pyproject.toml clients/node/package-lock.json
	@# Debian's chromium, for the dashboard test (driven by Playwright, no browser download).
	command -v chromium >/dev/null || { $(SUDO) apt-get update -q && \
		$(SUDO) apt-get install -y -q --no-install-recommends chromium; }
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
