# alfred-daemon image for deploy/k8s: the repo's own files and its own set-up commands; the
# model weights are fetched at build time (`alfred-daemon models fetch`) and baked in, so a
# starting pod downloads nothing (the daemon verifies the weights' checksums at start).
# Build where a registry is reachable:  docker build -t alfred-daemon:$(git rev-parse --short HEAD) .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/alfred/.venv PATH=/opt/alfred/.venv/bin:$PATH

WORKDIR /opt/alfred
# What `pip install .` needs: the package, its metadata and the pinned versions.
COPY pyproject.toml requirements.lock README.md ./
COPY alfred_daemon ./alfred_daemon
COPY proto ./proto
COPY clients/python ./clients/python

# As `make setup` does for the daemon (no dev extra: no tests run in the image). The
# weights land in the venv's share/alfred-daemon/models, where the daemon looks for them.
RUN python -m venv "$VIRTUAL_ENV" \
    && pip install --quiet -c requirements.lock pip \
    && pip install --quiet -c requirements.lock . \
    && alfred-daemon models fetch \
    && useradd --system --uid 10001 --home-dir /opt/alfred alfred

USER 10001
EXPOSE 50051 8015 8016
# Exec form: the daemon is PID 1 and gets the kubelet's SIGTERM itself (SIGTERM = drain).
ENTRYPOINT ["alfred-daemon"]
CMD ["serve", "--config", "/etc/alfred/alfred.toml"]
