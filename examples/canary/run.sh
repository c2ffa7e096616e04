#!/usr/bin/env bash
# Start (or stop) everything the canary walkthrough in examples/canary/README.md needs, in the
# background, from the repository root:
#
#   examples/canary/run.sh           # two versions of the app, nginx, Prometheus, shipyard serve
#   examples/canary/run.sh stop      # stop them all (and keep the logs)
#   examples/canary/run.sh clean     # stop them and delete /tmp/shipyard-canary (database included)
#
# Everything lives in $PREFIX (/tmp/shipyard-canary): nginx's prefix and the file Shipyard writes
# (shipyard/web.conf), Shipyard's database and work folder, Prometheus' data, logs/*.log and the
# processes' pid files. Ports: nginx 8100, stable 8101, canary 8102, Prometheus 9190, Shipyard 8080.
# PYTHON is the Python with Shipyard's dependencies (aiohttp, prometheus_client); SHIPYARD the
# shipyard command; NGINX and PROMETHEUS the binaries.
set -euo pipefail

PREFIX=/tmp/shipyard-canary            # fixed: shipyard.yml names it
HERE="$(cd "$(dirname "$0")" && pwd)"
PYTHON="${PYTHON:-python3}"
SHIPYARD="${SHIPYARD:-shipyard}"
NGINX="${NGINX:-/usr/sbin/nginx}"
PROMETHEUS="${PROMETHEUS:-prometheus}"

stop() {
    for name in shipyard prometheus nginx canary stable; do
        pidfile="$PREFIX/$name.pid"
        [ -f "$pidfile" ] || continue
        pid="$(cat "$pidfile")"
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" && echo "stopped $name ($pid)"
        fi
        rm -f "$pidfile"
    done
}

wait_for() {  # wait_for NAME URL: until URL answers (or the process died)
    for _ in $(seq 100); do
        if curl -fs -o /dev/null "$2"; then return 0; fi
        if ! kill -0 "$(cat "$PREFIX/$1.pid")" 2>/dev/null; then
            echo "$1 exited; its log, $PREFIX/logs/$1.log:" >&2
            tail -20 "$PREFIX/logs/$1.log" >&2
            exit 1
        fi
        sleep 0.2
    done
    echo "$1 does not answer at $2; see $PREFIX/logs/$1.log" >&2
    exit 1
}

start() {  # start NAME COMMAND...: in the background, its output in logs/NAME.log
    local name="$1"
    shift
    "$@" >>"$PREFIX/logs/$name.log" 2>&1 &
    echo $! >"$PREFIX/$name.pid"
}

case "${1:-start}" in
stop) stop; exit 0 ;;
clean) stop; rm -rf "$PREFIX"; echo "removed $PREFIX"; exit 0 ;;
start) ;;
*) echo "usage: $0 [start|stop|clean]" >&2; exit 2 ;;
esac

stop
mkdir -p "$PREFIX"/{logs,temp,shipyard,work}
cp "$HERE/nginx.conf" "$PREFIX/nginx.conf"
if [ ! -f "$PREFIX/shipyard/web.conf" ]; then
    # nginx needs the upstream before Shipyard first writes it: all traffic on stable
    printf 'upstream web {\n    server 127.0.0.1:8101;\n    server 127.0.0.1:8102 down;\n}\n' \
        >"$PREFIX/shipyard/web.conf"
fi

start stable "$PYTHON" "$HERE/service.py" --pool stable --port 8101 --version 1.0.0
start canary "$PYTHON" "$HERE/service.py" --pool canary --port 8102 --version 1.0.0
start nginx "$NGINX" -p "$PREFIX" -e "$PREFIX/logs/error.log" -c "$PREFIX/nginx.conf"
start prometheus "$PROMETHEUS" --config.file="$HERE/prometheus.yml" \
    --web.listen-address=127.0.0.1:9190 --storage.tsdb.path="$PREFIX/prometheus"
wait_for stable http://127.0.0.1:8101/metrics
wait_for canary http://127.0.0.1:8102/metrics
wait_for nginx http://127.0.0.1:8100/
wait_for prometheus http://127.0.0.1:9190/-/ready

export SHIPYARD_CONFIG="$HERE/shipyard.yml" SHIPYARD_PIPELINES_DIR="$HERE/pipelines" \
       SHIPYARD_DATABASE_URL="sqlite:///$PREFIX/shipyard.db" SHIPYARD_WORK_DIR="$PREFIX/work"
export CANARY_EXAMPLE="$HERE"           # where the pipeline's jobs find deploy.py
# shellcheck disable=SC2086  # SHIPYARD may be "python -m bot.cli"
start shipyard $SHIPYARD serve
wait_for shipyard http://127.0.0.1:8080/healthz

echo "running: nginx http://127.0.0.1:8100  stable :8101  canary :8102  Prometheus :9190  Shipyard :8080"
echo "logs in $PREFIX/logs; stop with: $0 stop"
