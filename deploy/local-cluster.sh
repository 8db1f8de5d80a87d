#!/usr/bin/env bash
# deploy/local-cluster.sh N -- N alfred-daemons on loopback behind HAProxy, for developers and CI.
#
# Daemon i (1..N) is named d<i> (runtime.daemon_id) and listens on gRPC 127.0.0.1:$((GRPC_BASE+i-1)),
# HTTP $((HTTP_BASE+i-1)) and agent check $((AGENT_BASE+i-1)), with its own runtime dir and one
# worker. HAProxy (config from `python -m alfred_daemon.ops.haproxy`, as in
# deploy/haproxy/haproxy.cfg) listens on FRONT_GRPC (gRPC, h2c) and FRONT_HTTP (HTTP/WebSocket).
# A daemon that exits -- drained with `curl -X POST http://127.0.0.1:<its HTTP port>/drain`, or
# SIGTERM -- is started again, so draining each daemon in turn is a rolling restart. Ctrl-C (or
# any exit of this script) drains and stops every daemon and HAProxy.
#
# Environment: FRONT_GRPC (50050) FRONT_HTTP (8010) GRPC_BASE (50061) HTTP_BASE (8021)
# AGENT_BASE (8031) WORKERS (1) ALFRED_DAEMON (.venv/bin/alfred-daemon) PYTHON (.venv/bin/python)
# KEEP=1 keeps the work directory (logs, haproxy.cfg) after exit. Extra ALFRED__* variables
# reach every daemon (config overrides).
set -euo pipefail

usage() { echo "usage: $0 N   (N daemons, 1..16)" >&2; exit 2; }
[[ $# -eq 1 && $1 =~ ^[0-9]+$ ]] || usage
N=$1
(( N >= 1 && N <= 16 )) || usage

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FRONT_GRPC=${FRONT_GRPC:-50050}
FRONT_HTTP=${FRONT_HTTP:-8010}
GRPC_BASE=${GRPC_BASE:-50061}
HTTP_BASE=${HTTP_BASE:-8021}
AGENT_BASE=${AGENT_BASE:-8031}
WORKERS=${WORKERS:-1}
ALFRED_DAEMON=${ALFRED_DAEMON:-$REPO/.venv/bin/alfred-daemon}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
command -v haproxy >/dev/null || { echo "error: haproxy is not installed (make setup installs it)" >&2; exit 1; }
[[ -x $ALFRED_DAEMON ]] || { echo "error: $ALFRED_DAEMON is missing (make setup)" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/alfred-cluster.XXXXXX")
declare -a PIDS STARTS FAILS
HAPROXY_PID=""

start_daemon() {  # $1 = index (1-based)
    local i=$1 dir="$WORK/d$1"
    mkdir -p "$dir"
    ALFRED__RUNTIME__DAEMON_ID="d$i" ALFRED__HTTP__AGENT_CHECK_PORT=$((AGENT_BASE + i - 1)) \
        "$ALFRED_DAEMON" serve --listen "127.0.0.1:$((GRPC_BASE + i - 1))" \
        --http-port $((HTTP_BASE + i - 1)) --runtime-dir "$dir/run" --workers "$WORKERS" \
        >>"$dir/daemon.log" 2>&1 </dev/null &
    PIDS[$i]=$!
    STARTS[$i]=$SECONDS
}

cleanup() {
    trap - EXIT INT TERM
    echo "stopping: draining $N daemon(s) and HAProxy" >&2
    local i
    for i in $(seq 1 "$N"); do
        [[ -n ${PIDS[$i]:-} ]] && kill -TERM "${PIDS[$i]}" 2>/dev/null || true
    done
    # The daemons drain (runtime.drain_grace, 10 s by default); bounded, then killed.
    for _ in $(seq 1 150); do
        local alive=0
        for i in $(seq 1 "$N"); do
            [[ -n ${PIDS[$i]:-} ]] && kill -0 "${PIDS[$i]}" 2>/dev/null && alive=1
        done
        (( alive )) || break
        sleep 0.1
    done
    for i in $(seq 1 "$N"); do
        [[ -n ${PIDS[$i]:-} ]] && kill -KILL "${PIDS[$i]}" 2>/dev/null || true
    done
    [[ -n $HAPROXY_PID ]] && kill -TERM "$HAPROXY_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    if [[ ${KEEP:-0} == 1 ]]; then echo "logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m alfred_daemon.ops.haproxy "$N" \
    --front-grpc "$FRONT_GRPC" --front-http "$FRONT_HTTP" --grpc-base "$GRPC_BASE" \
    --http-base "$HTTP_BASE" --agent-base "$AGENT_BASE" --stats-socket "$WORK/haproxy.sock" \
    >"$WORK/haproxy.cfg"
haproxy -c -q -f "$WORK/haproxy.cfg"

for i in $(seq 1 "$N"); do start_daemon "$i"; done
haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 </dev/null &
HAPROXY_PID=$!

# Ready = every daemon's /readyz answers 200 (models loaded, workers up); bounded.
"$PYTHON" - "$HTTP_BASE" "$N" <<'EOF'
import sys, time, urllib.request
base, n = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 180
for port in range(base, base + n):
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"error: daemon on HTTP port {port} not ready within 180 s")
        time.sleep(0.2)
EOF

echo "alfred local cluster: $N daemon(s) behind HAProxy"
echo "  gRPC  127.0.0.1:$FRONT_GRPC   (h2c; AsyncClient(\"127.0.0.1:$FRONT_GRPC\"))"
echo "  HTTP  127.0.0.1:$FRONT_HTTP   (/ws, /process_frame, /pipeline/status, ...)"
for i in $(seq 1 "$N"); do
    echo "  d$i: gRPC $((GRPC_BASE + i - 1))  HTTP $((HTTP_BASE + i - 1))  agent $((AGENT_BASE + i - 1))  log $WORK/d$i/daemon.log"
done
echo "  HAProxy: $WORK/haproxy.cfg, stats socket $WORK/haproxy.sock"
echo "Ctrl-C stops everything."

# Supervise: restart a daemon that exited (a drain is a restart); give up on one that keeps
# dying within 10 s of its start.
while true; do
    kill -0 "$HAPROXY_PID" 2>/dev/null || { echo "error: haproxy exited; see $WORK/haproxy.log" >&2; KEEP=1; exit 1; }
    for i in $(seq 1 "$N"); do
        if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
            wait "${PIDS[$i]}" 2>/dev/null && code=0 || code=$?
            if (( SECONDS - STARTS[$i] < 10 )); then FAILS[$i]=$(( ${FAILS[$i]:-0} + 1 )); else FAILS[$i]=0; fi
            if (( FAILS[$i] >= 3 )); then
                echo "error: d$i keeps exiting (code $code); see $WORK/d$i/daemon.log" >&2; KEEP=1; exit 1
            fi
            echo "d$i exited (code $code): starting it again" >&2
            start_daemon "$i"
        fi
    done
    sleep 0.5
done
