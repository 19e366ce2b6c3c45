#!/usr/bin/env bash
# The reload benchmark of issue 12: a limit raised by SIGHUP under load, without a restart.
#
# Usage: bench/reload/run.sh          (about 35 s; builds nothing)
#
# What it does: starts examples/catalog_service on a copy of bench/config/qos-n8.yaml (db group
# limit 8, max_wait 1s, DB_MS of DB time per query as bench/run.sh's "ours") plus an admin
# listener; runs bench/loadgen at C connections on /db for D seconds; at T_HUP seconds rewrites
# the config with limit 16 (a new file renamed over the old) and sends SIGHUP; samples the admin
# /qos/status every ~100 ms (the db group's limit, in use, waiting); then SIGTERM.
# Reports (stdout, and $OUT/summary.txt):
#   goodput before   2xx answers per second completed in [SKIP, T_HUP)       (loadgen --raw)
#   goodput after    2xx answers per second completed in [T_HUP + 1 s, D)
#   time to limit    from the SIGHUP to the first sample with in_use = 16 (sampling step ~100 ms)
#   lost             sent - answered (loadgen), must be 0; also timeouts, connect errors
#   exit status      of the service after SIGTERM (0 expected)
# The example's SQLite pool is opened for LIMIT_AFTER connections (--db-connections), so the
# permits the reload grants find a connection each: the group's limit is the only bound.
#
# Settings (environment): BUILD (Release build dir with catalog_service and bench/loadgen,
#   default <repo>/build-bench) C=1000 D=20 T_HUP=8 SKIP=2 DB_MS=50 DB_TIME=total LIMIT_BEFORE=8
#   LIMIT_AFTER=16 PORT=19080 ADMIN_PORT=19089 LG_THREADS=2 TIMEOUT=10
# Output: bench/out/reload-<timestamp>/{summary.txt, loadgen.txt, raw.txt, status.tsv, logs}.
# Loopback only; every step is bounded (timeout(1) around the client, SIGKILL after STOP_GRACE).
set -euo pipefail

BENCH=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$(git -C "$BENCH" rev-parse --show-toplevel)
case "${1:-}" in
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    "") ;;
    *) echo "usage: $0   (settings in the environment; --help)" >&2; exit 2 ;;
esac

: "${BUILD:=$ROOT/build-bench}"
: "${C:=1000}" "${D:=20}" "${T_HUP:=8}" "${SKIP:=2}"
: "${DB_MS:=50}" "${DB_TIME:=total}"
: "${LIMIT_BEFORE:=8}" "${LIMIT_AFTER:=16}"
: "${PORT:=19080}" "${ADMIN_PORT:=19089}"
: "${LG_THREADS:=2}" "${TIMEOUT:=10}" "${STOP_GRACE:=15}"

CATALOG=$BUILD/examples/catalog_service
LOADGEN=$BUILD/bench/loadgen
for b in "$CATALOG" "$LOADGEN"; do
    [ -x "$b" ] || { echo "missing $b: build catalog_service and loadgen in $BUILD (Release, -DQOS_BUILD_BENCH=ON)" >&2; exit 1; }
done
command -v curl > /dev/null || { echo "curl is needed" >&2; exit 1; }
awk -v t="$T_HUP" -v d="$D" -v s="$SKIP" 'BEGIN { exit !(s < t && t + 1 < d) }' ||
    { echo "need SKIP < T_HUP < D - 1" >&2; exit 2; }

OUT=$BENCH/out/reload-$(date +%Y%m%d-%H%M%S)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/qos-reload-bench.XXXXXX")
mkdir -p "$OUT"
log() { echo "[reload $(date +%H:%M:%S)] $*" >&2; }

SERVICE_PID="" SAMPLER_PID=""
cleanup() {
    if [ -n "$SAMPLER_PID" ]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi
    if [ -n "$SERVICE_PID" ] && kill -0 "$SERVICE_PID" 2>/dev/null; then
        kill -KILL "$SERVICE_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }

# bench/config/qos-n8.yaml with the limit, the ports and an admin listener (loopback, no
# token: only GET endpoints are used here).
write_config() {   # write_config LIMIT
    # qos-n8.yaml without its admin section (this bench's own follows, on ADMIN_PORT, no token)
    sed -e "s/^    max_concurrent: .*/    max_concurrent: $1/" \
        -e "s/^  port: .*/  port: $PORT/" -e '/^admin:/,/^[^ ]/{/^admin:/d;/^  /d}' \
        "$BENCH/config/qos-n8.yaml" > "$WORK/qos.yaml.tmp"
    printf 'admin:\n  address: 127.0.0.1\n  port: %s\n' "$ADMIN_PORT" >> "$WORK/qos.yaml.tmp"
    grep -q "max_concurrent: $1\$" "$WORK/qos.yaml.tmp" || { log "could not set the limit"; exit 1; }
    mv "$WORK/qos.yaml.tmp" "$WORK/qos.yaml"   # a rename: the service never reads half a file
}

# "limit in_use waiting" of the db group from /qos/status, or nothing.
db_status() {
    curl -s --max-time 1 "http://127.0.0.1:$ADMIN_PORT/qos/status" |
        grep -o '"name":"db","limit":[0-9]*,"in_use":[0-9]*,"waiting":[0-9]*' |
        sed -E 's/.*"limit":([0-9]+),"in_use":([0-9]+),"waiting":([0-9]+)/\1 \2 \3/'
}

write_config "$LIMIT_BEFORE"
cp "$WORK/qos.yaml" "$OUT/qos-before.yaml"
log "starting catalog_service (limit $LIMIT_BEFORE, DB $DB_MS ms $DB_TIME) on :$PORT, admin :$ADMIN_PORT"
"$CATALOG" --config "$WORK/qos.yaml" --db "$WORK/catalog.db" --db-latency-ms "$DB_MS" \
    --db-time "$DB_TIME" --db-connections "$LIMIT_AFTER" > "$OUT/service.log" 2>&1 &
SERVICE_PID=$!
ready=0
for _ in $(seq 1 120); do
    if grep -q "catalog service ready" "$OUT/service.log" 2>/dev/null &&
       [ -n "$(db_status)" ]; then ready=1; break; fi
    kill -0 "$SERVICE_PID" 2>/dev/null || break
    sleep 0.25
done
[ "$ready" = 1 ] || { log "the service did not start (see $OUT/service.log)"; tail -5 "$OUT/service.log" >&2; exit 1; }
sleep 0.2   # the ready line is printed just before run() takes over the signals

# The sampler: "seconds-since-load-start limit in_use waiting", every ~100 ms until killed.
T0=$(now)
(
    while :; do
        s=$(db_status) || true
        [ -n "$s" ] && echo "$(awk -v a="$(now)" -v b="$T0" 'BEGIN { printf "%.3f", a - b }') $s"
        sleep 0.1
    done
) > "$OUT/status.tsv" &
SAMPLER_PID=$!

log "loadgen: C=$C on /db for $D s; SIGHUP at $T_HUP s"
timeout $((D + TIMEOUT + 30)) "$LOADGEN" --url "http://127.0.0.1:$PORT/db" -c "$C" -t "$LG_THREADS" \
    -d "$D" --timeout "$TIMEOUT" --drain "$TIMEOUT" --skip "$SKIP" --raw "$OUT/raw.txt" \
    --pid "$SERVICE_PID" --label reload > "$OUT/loadgen.txt" 2> "$OUT/loadgen.err" &
LOADGEN_PID=$!

sleep "$(awk -v t="$T_HUP" -v a="$(now)" -v b="$T0" 'BEGIN { w = t - (a - b); print (w > 0 ? w : 0) }')"
write_config "$LIMIT_AFTER"
cp "$WORK/qos.yaml" "$OUT/qos-after.yaml"
HUP_AT=$(awk -v a="$(now)" -v b="$T0" 'BEGIN { printf "%.3f", a - b }')
kill -HUP "$SERVICE_PID"
log "SIGHUP at $HUP_AT s (limit $LIMIT_BEFORE -> $LIMIT_AFTER)"

lg_status=0
wait "$LOADGEN_PID" || lg_status=$?
kill "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""
alive_after=0
kill -0 "$SERVICE_PID" 2>/dev/null && alive_after=1

log "SIGTERM"
kill -TERM "$SERVICE_PID" 2>/dev/null || true
exit_status=killed
for _ in $(seq 1 $((STOP_GRACE * 10))); do
    kill -0 "$SERVICE_PID" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$SERVICE_PID" 2>/dev/null; then
    log "no exit within $STOP_GRACE s of SIGTERM: SIGKILL"
    kill -KILL "$SERVICE_PID" 2>/dev/null || true
    wait "$SERVICE_PID" 2>/dev/null || true
else
    exit_status=0
    wait "$SERVICE_PID" 2>/dev/null || exit_status=$?
fi
SERVICE_PID=""

# ---- report ---------------------------------------------------------------------------------
line=$(grep '^LOADGEN ' "$OUT/loadgen.txt" || true)
[ -n "$line" ] || { log "loadgen printed no result (status $lg_status; $OUT/loadgen.err)"; exit 1; }
key() { echo "$line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
sent=$(key sent) answered=$(key answered)
lost=$((sent - answered))

# Goodput from the raw answers, by completion time (sent + latency, in ms from loadgen's start;
# loadgen starts its clock within milliseconds of T0).
read -r before after < <(awk -v s="$SKIP" -v h="$HUP_AT" -v d="$D" '
    /^#/ { next }
    { done = ($1 + $2) / 1000; ok = ($3 >= 200 && $3 < 300) }
    ok && done >= s && done < h { b++ }
    ok && done >= h + 1 && done < d { a++ }
    END { printf "%.1f %.1f\n", b / (h - s), a / (d - h - 1) }' "$OUT/raw.txt")

# First sample after the SIGHUP with the new limit in use.
to_limit=$(awk -v h="$HUP_AT" -v n="$LIMIT_AFTER" '$1 >= h && $3 >= n { printf "%.2f", $1 - h; found = 1; exit }
    END { if (!found) print "never" }' "$OUT/status.tsv")
limit_seen=$(awk -v h="$HUP_AT" '$1 >= h { l = $2 } END { print (l == "" ? "?" : l) }' "$OUT/status.tsv")
in_use_max_before=$(awk -v h="$HUP_AT" '$1 < h && $3 > m { m = $3 } END { print m + 0 }' "$OUT/status.tsv")

{
    echo "reload benchmark: C=$C, $D s on /db, DB $DB_MS ms ($DB_TIME), limit $LIMIT_BEFORE -> $LIMIT_AFTER by SIGHUP at $HUP_AT s"
    echo "goodput before (2xx/s, [$SKIP s, SIGHUP)):        $before"
    echo "goodput after  (2xx/s, [SIGHUP + 1 s, $D s)):     $after"
    echo "time from SIGHUP to in_use = $LIMIT_AFTER (s, ~0.1 s steps): $to_limit"
    echo "limit shown after the SIGHUP: $limit_seen; most in use before it: $in_use_max_before"
    echo "sent $sent, answered $answered, lost (sent - answered): $lost"
    echo "2xx $(key s2xx), 503 $(key s503), timeouts $(key timeouts), connect errors $(key err_connect), lost connections $(key err_lost), unanswered $(key unanswered)"
    echo "service alive after the SIGHUP: $([ "$alive_after" = 1 ] && echo yes || echo NO); exit status after SIGTERM: $exit_status"
    echo
    echo "RESULTS.md row:"
    echo "| $C | $D s | $LIMIT_BEFORE -> $LIMIT_AFTER at ${HUP_AT} s | $before | $after | $to_limit | $sent | $answered | $lost | $exit_status |"
} | tee "$OUT/summary.txt"

[ "$lost" = 0 ] && [ "$alive_after" = 1 ] && [ "$exit_status" = 0 ]
