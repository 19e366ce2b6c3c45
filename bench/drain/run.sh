#!/usr/bin/env bash
# A stop under load: closed-loop clients on a guarded route (/db/1) and an unguarded one
# (/cache/1) of the example service, SIGTERM in the middle, and what the clients saw: every
# request they sent answered exactly once (lost = a connection closed with a request out,
# unanswered = still out when the client stopped), or refused at connect once the listener is
# closed. Loopback only, bounded: each run lasts DURATION + a few seconds and stops by itself.
#
#   bench/drain/run.sh LABEL=BINARY [LABEL=BINARY ...]
#
# Each BINARY is a catalog_service; the runs alternate between them, RUNS rounds. Settings
# (environment): RUNS=3, DB_C=100, CACHE_C=20, DURATION=6 (s), STOP_AT=3 (s after the load
# starts), LOADGEN=build-bench/bench/loadgen, CONFIG=config/qos.yaml, PORT=9181.
# Prints one row per run and keeps the raw outputs in bench/drain/results/<stamp>/.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-3}
DB_C=${DB_C:-100}
CACHE_C=${CACHE_C:-20}
DURATION=${DURATION:-6}
STOP_AT=${STOP_AT:-3}
LOADGEN=${LOADGEN:-build-bench/bench/loadgen}
CONFIG=${CONFIG:-config/qos.yaml}
PORT=${PORT:-9181}
[ $# -ge 1 ] || { sed -n '2,14p' "$0"; exit 2; }
[ -x "$LOADGEN" ] || { echo "no load client at $LOADGEN (build the bench targets)" >&2; exit 2; }
OUT=bench/drain/results/$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'pkill -KILL -f "catalog_service.*--port $PORT" 2>/dev/null || true; rm -rf "$WORK"' EXIT

field() { grep -o "^LOADGEN .*" "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

{
printf '| run | build | sent | answered | lost | unanswered | refused at connect | SIGTERM to "stopped" (ms) |\n'
printf '|---|---|---:|---:|---:|---:|---:|---:|\n'
for run in $(seq 1 "$RUNS"); do
  for spec in "$@"; do
    label=${spec%%=*}
    bin=${spec#*=}
    tag="$run-$label"
    rm -rf "$WORK"/*
    "$bin" --config "$CONFIG" --db "$WORK/catalog.db" --jobs-db "$WORK/jobs.db" --port "$PORT" \
      > "$OUT/$tag-server.log" 2>&1 &
    srv=$!
    for _ in $(seq 1 100); do
      (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
      sleep 0.05
    done
    "$LOADGEN" --url "http://127.0.0.1:$PORT/db/1" -c "$DB_C" -t 1 -d "$DURATION" --timeout 5 \
      --drain 3 > "$OUT/$tag-db.txt" 2>&1 &
    lg_db=$!
    "$LOADGEN" --url "http://127.0.0.1:$PORT/cache/1" -c "$CACHE_C" -t 1 -d "$DURATION" \
      --timeout 5 --drain 3 > "$OUT/$tag-cache.txt" 2>&1 &
    lg_cache=$!
    sleep "$STOP_AT"
    t0=$(date +%s%N)
    kill -TERM "$srv"
    wait "$srv" || true
    t1=$(date +%s%N)
    wait "$lg_db" "$lg_cache" || true
    sent=0 answered=0 lost=0 unanswered=0 refused=0
    for f in "$OUT/$tag-db.txt" "$OUT/$tag-cache.txt"; do
      sent=$((sent + $(field "$f" sent)))
      answered=$((answered + $(field "$f" answered)))
      lost=$((lost + $(field "$f" err_lost)))
      unanswered=$((unanswered + $(field "$f" unanswered)))
      refused=$((refused + $(field "$f" err_connect)))
    done
    printf '| %s | %s | %d | %d | %d | %d | %d | %d |\n' "$run" "$label" "$sent" "$answered" \
      "$lost" "$unanswered" "$refused" $(((t1 - t0) / 1000000))
  done
done
} | tee "$OUT/table.md"
echo "raw outputs: $OUT" >&2
