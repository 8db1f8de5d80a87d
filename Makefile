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
PIPECAT_TYPED := clients/python/alfred_client/pipecat/__init__.py \
	clients/python/alfred_client/pipecat/stt.py clients/python/alfred_client/pipecat/turns.py \
	benchmarks/pipecat_plugin_runner.py clients/python/examples/pipecat_bot.py

.PHONY: run demo setup test lint typecheck unit unit-fast bench bench-load bench-pipecat lock clean

# The daemon in the foreground (Ctrl-C drains and stops it): gRPC 127.0.0.1:50051,
# HTTP ops and the live monitor at http://127.0.0.1:8015/monitor.
run: setup
	$(BIN)/alfred-daemon serve

# No daemon: the engine alone over a sample file, printing events live.
demo: setup
	$(BIN)/alfred-daemon transcribe --realtime $(SAMPLE)

# The daemon's venv, and Pipecat's (tests/integration/test_pipecat_plugin.py runs the Pipecat plugin there).
setup: $(STAMP) $(PIPECAT_STAMP)

$(STAMP): pyproject.toml requirements.lock clients/node/package-lock.json
	@# Debian's chromium, for the dashboard test (driven by Playwright, no browser download);
	@# qemu-user, whose emulated AVX2-only CPU tests the Smart Turn int8 check on any host;
	@# openssl, whose CLI makes the TLS tests' certificates; haproxy, the balancer in
	@# front of several daemons (deploy/haproxy, deploy/local-cluster.sh, test_scale_out).
	command -v chromium >/dev/null && command -v qemu-x86_64 >/dev/null \
		&& command -v openssl >/dev/null && command -v haproxy >/dev/null || { \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q \
		--no-install-recommends chromium qemu-user openssl haproxy; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements.lock pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	$(BIN)/alfred-daemon models fetch
	@# The protoc of each protobuf major the client's stubs are generated with (for the
	@# stubs-are-fresh test, which then needs no network).
	$(BIN)/python clients/python/generate.py --fetch
	cd clients/node && npm ci --no-audit --no-fund
	touch $@

lint: setup
	$(BIN)/ruff check .

# alfred_client.pipecat and its runner are checked where Pipecat is installed: the main run
# excludes them (pyproject.toml), since Pipecat's classes would only be Any there.
typecheck: setup
	$(BIN)/mypy
	$(PIPECAT_VENV)/bin/mypy --config-file pyproject.toml $(PIPECAT_TYPED)

unit: setup
	$(BIN)/pytest -q

# The fast tier alone (no processes, sockets or models; well under 30 s).
unit-fast: setup
	$(BIN)/pytest -q tests/unit

test: lint typecheck unit

bench: setup
	$(BIN)/python benchmarks/engine_bench.py
	$(BIN)/python benchmarks/runtime_bench.py

# alfred-daemon vs Pipecat under real-time load (up to ~20 min per audio profile):
# benchmarks/results/load_bench_<profile>.*; `make bench-load PROFILES=realistic` runs one.
bench-load: PROFILES ?= realistic,harvard
bench-load: setup $(PIPECAT_STAMP)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev,bench]'
	$(BIN)/python benchmarks/load_bench.py --profiles $(PROFILES) \
		--pipecat-python $(PIPECAT_VENV)/bin/python

# A Pipecat pipeline on the daemon's plugin vs on Pipecat's local models (a few minutes):
# benchmarks/results/pipecat_plugin_bench.{json,md}.
bench-pipecat: setup
	$(BIN)/python benchmarks/pipecat_plugin_bench.py --pipecat-python $(PIPECAT_VENV)/bin/python

# Pipecat in a virtualenv of its own: it caps protobuf below what the daemon needs. The
# client goes in from this tree, editable, with its pipecat extra (alfred_client.pipecat);
# mypy and the stubs at the main venv's pinned versions type-check it there.
$(PIPECAT_STAMP): benchmarks/requirements-pipecat.txt clients/python/pyproject.toml
	$(PYTHON) -m venv $(PIPECAT_VENV)
	$(PIPECAT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PIPECAT_VENV)/bin/python -m pip install --quiet -r benchmarks/requirements-pipecat.txt \
		-e 'clients/python[pipecat]'
	$(PIPECAT_VENV)/bin/python -m pip install --quiet -c requirements.lock \
		mypy types-grpcio types-protobuf
	touch $@

# LiveKit Agents in a virtualenv of its own, as a LiveKit user has it: the pinned
# clients/python/requirements-livekit.txt, then the client with its [livekit] extra installed
# from a copy of clients/python (pip builds in the source tree; the copy keeps build/ out of
# the repo). Rebuilt when the client's sources change. tests/integration/test_livekit_plugin.py runs the
# plugin there against a live daemon; `make typecheck` type-checks it there (livekit is not
# in .venv, so the main mypy run excludes alfred_client/livekit).
LIVEKIT_VENV  := .venv-livekit
LIVEKIT_STAMP := $(LIVEKIT_VENV)/.installed
LIVEKIT_REQS  := clients/python/requirements-livekit.txt
LIVEKIT_SRC   := clients/python/pyproject.toml $(shell find clients/python/alfred_client \
                 -name '*.py' -o -name '*.pyi' -o -name py.typed)
LIVEKIT_MYPY  := clients/python/alfred_client/livekit clients/python/examples/livekit_agent.py \
                 tests/livekit_driver.py

.PHONY: livekit-env typecheck-livekit
setup: $(LIVEKIT_STAMP)
typecheck: typecheck-livekit

livekit-env: $(LIVEKIT_STAMP)

$(LIVEKIT_STAMP): $(LIVEKIT_REQS) $(LIVEKIT_SRC)
	$(PYTHON) -m venv $(LIVEKIT_VENV)
	$(LIVEKIT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LIVEKIT_VENV)/bin/python -m pip install --quiet -r $(LIVEKIT_REQS)
	rm -rf $(LIVEKIT_VENV)/alfred-client-src
	cp -r clients/python $(LIVEKIT_VENV)/alfred-client-src
	$(LIVEKIT_VENV)/bin/python -m pip install --quiet -c $(LIVEKIT_REQS) \
		'$(LIVEKIT_VENV)/alfred-client-src[livekit]'
	rm -rf $(LIVEKIT_VENV)/alfred-client-src
	touch $@

# mypy --strict with .venv-livekit's packages, on the sources in the tree (MYPYPATH puts them
# before the installed copy).
typecheck-livekit: $(LIVEKIT_STAMP)
	MYPYPATH=clients/python $(LIVEKIT_VENV)/bin/mypy --strict --python-version 3.11 \
		--config-file= --cache-dir .mypy_cache/livekit $(LIVEKIT_MYPY)

# Re-resolve every Python dependency (daemon, dev tools, benchmark plot) from pyproject.toml
# in a scratch venv and pin the result in requirements.lock, which `make setup` and CI
# install from. Run it to take new releases on purpose; commit the lock with the change.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e '.[dev,bench]'
	{ echo "# Pinned versions of every Python package make setup installs (pip constraints)."; \
	  echo "# Generated by 'make lock' from pyproject.toml's ranges; do not edit by hand."; \
	  .venv-lock/bin/python -m pip freeze --all --exclude-editable; } > requirements.lock
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) $(PIPECAT_VENV) $(LIVEKIT_VENV) .venv-lock .mypy_cache .pytest_cache .ruff_cache
