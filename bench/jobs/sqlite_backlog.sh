#!/usr/bin/env bash
# The consumer's rate on a SQLite backlog alone: one catalog service (bench/config/qos-jobs-n8.yaml:
# N = 8, a 50 ms database call, SQLite FULL), a 4 s fill of POST /orders at C = 50, 3 s of rest,
# then the jobs the store marked succeeded over 20 s, against N / 50 ms = 160/s.
#
# Usage: bench/jobs/sqlite_backlog.sh [BUILD]   (default build-bench; needs sqlite3 and curl)
# Loopback only; the service is bounded by timeout(1) and stopped at the end.
set -euo pipefail
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
BUILD=${1:-$ROOT/build-bench}
W=$(mktemp -d "${TMPDIR:-/tmp}/qos-sqlite-backlog.XXXX")
trap 'rm -rf "$W"' EXIT
sed -e "s|^  sqlite_path: .*|  sqlite_path: $W/jobs.db|" "$ROOT/bench/config/qos-jobs-n8.yaml" > "$W/cfg.yaml"
port=$(awk '/^server:/ { s = 1 } s && /port:/ { print $2; exit }' "$W/cfg.yaml")
export QOS_BENCH_ADMIN_TOKEN=${QOS_BENCH_ADMIN_TOKEN:-qos-bench-loopback}
timeout 120 "$BUILD/examples/catalog_service" --config "$W/cfg.yaml" --db "$W/catalog.db" \
    --db-latency-ms 50 --db-time total > "$W/service.log" 2>&1 &
pid=$!
for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$port/cache" && break; sleep 0.2; done
timeout 20 "$BUILD/bench/loadgen" --url "http://127.0.0.1:$port/orders" --method POST \
    --body '{"item":"widget","qty":1}' -c 50 -t 1 -d 4 --drain 1 > "$W/loadgen.txt" 2>&1 || true
sleep 3
# state 2 = succeeded, 0 = queued (qos/jobs/sqlite_store.cpp)
succeeded() { sqlite3 -readonly "$W/jobs.db" "SELECT count(*) FROM jobs WHERE state = 2"; }
a=$(succeeded); t0=$(date +%s.%N)
sleep 20
b=$(succeeded); t1=$(date +%s.%N)
left=$(sqlite3 -readonly "$W/jobs.db" "SELECT count(*) FROM jobs WHERE state = 0")
kill -TERM "$pid"; wait "$pid" 2> /dev/null || true
awk -v a="$a" -v b="$b" -v t0="$t0" -v t1="$t1" -v left="$left" 'BEGIN {
    r = (b - a) / (t1 - t0)
    printf "backlog alone: %.1f jobs/s = %.1f %% of 160/s (%d jobs still queued at the end)\n", r, r / 1.6, left
}'
