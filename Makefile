# Two entry points a new user needs (see README): `make run` and `make test`.
# Everything lives in .venv; model weights land in .venv/share/alfred-daemon/models.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.alfred-installed
SAMPLE ?= tests/data/jfk.wav
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

PIPECAT_VENV := .venv-pipecat
PIPECAT_STAMP := $(PIPECAT_VENV)/.installed

.PHONY: run demo setup test lint typecheck unit bench bench-load clean

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

# alfred-daemon vs Pipecat under real-time load (~17 min): benchmarks/results/load_bench.*
bench-load: setup $(PIPECAT_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/load_bench.py --pipecat-python $(PIPECAT_VENV)/bin/python

# Pipecat in a virtualenv of its own: it caps protobuf below what the daemon needs.
$(PIPECAT_STAMP): benchmarks/requirements-pipecat.txt
	$(PYTHON) -m venv $(PIPECAT_VENV)
	$(PIPECAT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PIPECAT_VENV)/bin/python -m pip install --quiet -r benchmarks/requirements-pipecat.txt
	touch $@

clean:
	rm -rf $(VENV) $(PIPECAT_VENV) .mypy_cache .pytest_cache .ruff_cache
