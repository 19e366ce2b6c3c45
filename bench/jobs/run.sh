#!/usr/bin/env bash
# The accept-mode benchmarks of issue 13: (a) seed 001's table, (c) scale-out on PostgreSQL.
#
# Usage: bench/jobs/run.sh [quick|full] [a|c|all]     (quick: about 2 min, full: about 10 min)
#
#   QUICK=1 bench/jobs/run.sh is the same as "quick". Examples:
#     bench/jobs/run.sh quick              # both parts, few C, short windows
#     bench/jobs/run.sh full a             # seed 001's table only, every C
#     SYSTEMS=ours bench/jobs/run.sh full  # without the node-queue peer
#     NO_BUILD=1 bench/jobs/run.sh quick   # measure the binaries already in build-bench
#
# (a) One catalog service (build-bench, Release; bench/config/qos-jobs-n8.yaml: the db group's
#     N = 8, a 50 ms database call) answering POST /orders/sync (guarded, 201 after the work) and
#     POST /orders (accept mode, SQLite synchronous FULL: 202 once committed, a consumer of N
#     does the work later). For every C in CONCS and each route: a fresh server and job store, a
#     warm-up of the sync route, then the closed-loop client (bench/loadgen.cpp, POST of a small
#     JSON order) for D seconds. Recorded: accepted/min (2xx answered in the window), the 2xx
#     latency (mean, p50, p99), completed/min (jobs the store marked succeeded during the point,
#     read from its file with sqlite3; without sqlite3 qos_jobs_finished_total{result=
#     "succeeded"}, which lags by up to a second; for the sync route its 2xx), the steady
#     completed/min (the same count from A_SKIP s into the point: the first jobs cannot end before
#     a service time after the first accept into an empty store, as S1's "steady" and part (c)'s
#     SCALE_SKIP leave out the start), failures (requests without a 2xx, plus connect
#     errors), and the queue depth, jobs held and jobs finished every SAMPLE s (csv/a_depth.csv).
#     The node-queue peer (../shared/peers/node-queue: Node gateway, graphile-worker, its own
#     PostgreSQL 15 cluster) runs the same points with the same client, its queue purged before
#     each point; skipped with a note when its folder, node or the PostgreSQL binaries are absent.
#     Its first start runs npm install (versions pinned in its package.json) into
#     $TMPDIR/qos-bench-jobs/peers: that needs the npm registry once.
# (c) One private PostgreSQL 15 cluster (initdb in a temporary folder, unix socket only, as the
#     postgres user when run as root), four catalog services on it (bench/config/qos-jobs-pg.yaml
#     with their ports rewritten): two gateways (jobs.consume false) take the load, SCALE_C
#     connections each; two consumers (consume true) get none. A trigger installed by
#     bench/jobs/audit.sql records every state change of qos_jobs with clock_timestamp(), and
#     bench/jobs/check_runs.sql reads it back: completed jobs/s (under load, and afterwards on the
#     backlog alone) against N / service time = 8 / 50 ms = 160/s, the most jobs running at once
#     (exact, from the recorded transitions; also sampled from the table and from each process's
#     qos_jobs_held), and whether any job ran twice: jobs claimed more than once (exact) and
#     leases taken back from a run; of those, the consumers' fenced_out count says how many were
#     still running when taken back (the database sees claims and completions, not handlers).
#
# Output: bench/out/jobs-<timestamp>/{results.md, csv/, raw/, logs/}; results.md is written by
# bench/jobs/report.sh (run it again on a folder to rewrite it). Every load targets 127.0.0.1,
# every client is bounded by timeout(1), every process started here is stopped at exit.
#
# Settings (environment; the mode sets the defaults): SYSTEMS="ours node-queue" CONCS D DRAIN
#   TIMEOUT WARMUP PAUSE SAMPLE N DB_MS LG_THREADS BODY LG_EXTRA SCALE_C SCALE_D SCALE_TAIL SCALE_SKIP
#   PREFETCH (part c: jobs.prefetch of the four processes; unset: the config's, auto)
#   BUILD (default build-bench) SHARED (default <repo>/../shared) PIN=1 (client on CPU 0,
#   servers on CPU 1)
set -euo pipefail

JOBS=$(cd "$(dirname "$0")" && pwd)
BENCH=$(cd "$JOBS/.." && pwd)
ROOT=$(git -C "$BENCH" rev-parse --show-toplevel)
MODE=${1:-}
PART=${2:-all}
if [ -z "$MODE" ]; then if [ "${QUICK:-0}" = 1 ]; then MODE=quick; else MODE=full; fi; fi
case "$MODE" in
    quick|full) ;;
    -h|--help) sed -n "2,45p" "$0"; exit 0 ;;
    *) echo "usage: $0 [quick|full] [a|c|all]" >&2; exit 2 ;;
esac
case "$PART" in a|c|all) ;; *) echo "usage: $0 [quick|full] [a|c|all]" >&2; exit 2 ;; esac

# ---- settings -------------------------------------------------------------------------------
if [ "$MODE" = quick ]; then
    : "${CONCS:=10 200 1000}"
    : "${D:=3}" "${WARMUP:=1}" "${PAUSE:=0.5}"
    : "${SCALE_C:=50}" "${SCALE_D:=6}" "${SCALE_TAIL:=4}" "${SCALE_SKIP:=1}"
else
    : "${CONCS:=10 50 100 200 500 1000 2000 3000}"
    : "${D:=10}" "${WARMUP:=2}" "${PAUSE:=1}"
    : "${SCALE_C:=100}" "${SCALE_D:=20}" "${SCALE_TAIL:=10}" "${SCALE_SKIP:=2}"
fi
: "${SYSTEMS:=ours node-queue}"
: "${LG_EXTRA:=}"   # more loadgen arguments for every measured load, e.g. --unique-idempotency-key
: "${N:=8}" "${DB_MS:=50}" "${TIMEOUT:=10}" "${LG_THREADS:=2}" "${SAMPLE:=0.5}" "${A_SKIP:=1}"
# the client waits up to DRAIN s for the answers still out when the window ends (it stops as soon
# as none is left): as long as the timeout, so that a slow answer is late, not a failure
: "${DRAIN:=$TIMEOUT}"
DEFAULT_BODY='{"item":"widget","qty":1}'   # what the node-queue peer's post.lua sends
BODY=${BODY:-$DEFAULT_BODY}
: "${BUILD:=$ROOT/build-bench}"
if [ -z "${SHARED:-}" ]; then
    SHARED=$ROOT/../shared
    [ -d "$SHARED" ] || SHARED=$ROOT/../../shared   # a worktree one level deeper
fi
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
WORK=${TMPDIR:-/tmp}/qos-bench-jobs
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$BENCH/out/jobs-$STAMP
RAW=$OUT/raw CSV=$OUT/csv
mkdir -p "$OUT/logs" "$RAW" "$CSV" "$WORK"
: > "$OUT/anomalies.md"
: > "$OUT/notes.md"

CLIENT_PREFIX=() SERVER_PREFIX=()
# shellcheck disable=SC2034  # read by lib/common.sh
if [ "${PIN:-0}" = 1 ]; then CLIENT_PREFIX=(taskset -c 0) SERVER_PREFIX=(taskset -c 1); fi

# log, anomaly, start_bg, stop_pid, stop_all, wait_ready, lg, lgv, json_num, stop_clients and
# QOS_BENCH_ADMIN_TOKEN, shared with bench/run.sh
# the node-queue peer's run.sh needs time to stop node and its PostgreSQL: a SIGKILL would leave
# the cluster running
STOP_GRACE=${STOP_GRACE:-40}
# shellcheck source=../lib/common.sh
. "$BENCH/lib/common.sh"
note() { echo "- $*" >> "$OUT/notes.md"; log "note: $*"; }

SAMPLER_PIDS=()
PG_DIR=""
cleanup() {
    local p
    for p in "${SAMPLER_PIDS[@]:-}"; do if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; fi; done
    stop_clients
    stop_all
    pg_stop
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)

CATALOG=$BUILD/examples/catalog_service
LOADGEN=$BUILD/bench/loadgen
build() {
    if [ "${NO_BUILD:-0}" = 1 ]; then
        note "NO_BUILD=1: used the binaries in $BUILD (catalog_service built $(date -r "$CATALOG" '+%F %T' 2>/dev/null || echo never))"
        [ -x "$CATALOG" ] && [ -x "$LOADGEN" ] && return 0
        log "NO_BUILD=1 but $CATALOG or $LOADGEN is missing"
        return 1
    fi
    if [ ! -f "$BUILD/CMakeCache.txt" ] || grep -q '^QOS_BUILD_BENCH:BOOL=OFF' "$BUILD/CMakeCache.txt"; then
        log "configuring Release build in $BUILD"
        cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DQOS_BUILD_TESTS=OFF \
            -DQOS_BUILD_BENCH=ON > "$OUT/logs/cmake.log" 2>&1 || { tail -20 "$OUT/logs/cmake.log" >&2; return 1; }
    fi
    log "building catalog_service and loadgen (Release)"
    make -C "$BUILD" -j"$(nproc)" catalog_service loadgen > "$OUT/logs/build.log" 2>&1 ||
        { grep -E 'error|Error' "$OUT/logs/build.log" | head -20 >&2; return 1; }
}

# Concurrencies the open-files limit allows (the client needs C + 100 descriptors).
reachable() {
    local c out=""
    for c in "$@"; do
        if [ $((c + 100)) -le "$FD_LIMIT" ]; then out="$out $c"; else
            note "C=$c skipped: open-files limit is $FD_LIMIT (hard), the client needs C+100"
        fi
    done
    echo "${out# }"
}
# shellcheck disable=SC2086
CONCS=$(reachable $CONCS)

busy_elsewhere() {
    top -b -n 2 -d 1 -w 200 2>/dev/null | awk '/^top -/ { n++ } n == 2 && $1 ~ /^[0-9]+$/ && $9 + 0 >= 10 { printf "%s (pid %s) %s%% CPU; ", $12, $1, $9 }' || true
}
foreign=$(busy_elsewhere)
[ -z "$foreign" ] || note "other processes were using the CPU when the run started: ${foreign%; }; numbers are skewed by that"

cat > "$OUT/settings.env" <<EOF
MODE=$MODE PART=$PART
SYSTEMS="$SYSTEMS"
CONCS="$CONCS"
N=$N DB_MS=$DB_MS D=$D DRAIN=$DRAIN WARMUP=$WARMUP PAUSE=$PAUSE TIMEOUT=$TIMEOUT LG_THREADS=$LG_THREADS SAMPLE=$SAMPLE A_SKIP=$A_SKIP
BODY='$BODY'
LG_EXTRA='$LG_EXTRA'
SCALE_C=$SCALE_C SCALE_D=$SCALE_D SCALE_TAIL=$SCALE_TAIL SCALE_SKIP=$SCALE_SKIP PREFETCH=${PREFETCH:-config}
PIN=${PIN:-0} FD_LIMIT=$FD_LIMIT NPROC=$(nproc)
COMMIT=$(git -C "$ROOT" rev-parse HEAD)$(git -C "$ROOT" diff --quiet HEAD -- . 2>/dev/null || echo "+dirty")
EOF
log "mode $MODE, part $PART; systems: $SYSTEMS; C: $CONCS; D=${D}s; output $OUT"
build || { log "build failed"; exit 1; }

# ---- metrics --------------------------------------------------------------------------------
# jobs_metrics ADMIN_URL: "depth,held,succeeded,created,running,..." of our service: qos_jobs_depth
# of route orders, qos_jobs_held of group db (running, and leased ahead waiting for a permit),
# qos_jobs_finished_total{result="succeeded"} of group db, qos_jobs_enqueued_total{result=
# "created"} of route orders, qos_group_in_use of group db (permits held: handlers running);
# then "h_orders_sum,h_orders_n,h_sync_sum,h_sync_n": qos_handler_seconds' sum and count of the
# routes orders and orders_sync (the time handlers held their permit: the service time the
# backend really gave, which the loaded machine stretches beyond DB_MS) (empty when absent).
jobs_metrics() {
    curl -s --max-time 2 "$1/metrics" 2>/dev/null |
        awk 'function label(k) { if (!match($0, k "=\"[^\"]+\"")) return ""; return substr($0, RSTART + length(k) + 2, RLENGTH - length(k) - 3) }
             /^qos_jobs_depth\{/ && label("route") == "orders" { d += $NF; hd = 1 }
             /^qos_jobs_held\{/ && label("group") == "db" { h += $NF; hh = 1 }
             /^qos_jobs_finished_total\{/ && label("group") == "db" && label("result") == "succeeded" { s += $NF; hs = 1 }
             /^qos_jobs_enqueued_total\{/ && label("route") == "orders" && label("result") == "created" { c += $NF; hc = 1 }
             /^qos_group_in_use\{/ && label("group") == "db" { u += $NF; hu = 1 }
             /^qos_handler_seconds_sum\{/ { hsum[label("route")] += $NF; hh2[label("route")] = 1 }
             /^qos_handler_seconds_count\{/ { hn[label("route")] += $NF }
             END { printf "%s,%s,%s,%s,%s,%s,%s,%s,%s\n", hd ? d : "", hh ? h : "", hs ? s : "", hc ? c : "", hu ? u : "",
                           ("orders" in hh2) ? hsum["orders"] : "", ("orders" in hh2) ? hn["orders"] : "",
                           ("orders_sync" in hh2) ? hsum["orders_sync"] : "", ("orders_sync" in hh2) ? hn["orders_sync"] : "" }' || echo ",,,,,,,,"
}
# peer_metrics URL: the same five from the node-queue peer's /stats (queueDepth, tasksRunning,
# jobsCompleted, accepted, tasksRunning), no handler times.
peer_metrics() {
    local f=$WORK/peer-stats.json
    curl -s --max-time 2 "$1/stats" > "$f" 2>/dev/null || : > "$f"
    echo "$(json_num queueDepth "$f"),$(json_num tasksRunning "$f"),$(json_num jobsCompleted "$f"),$(json_num accepted "$f"),$(json_num tasksRunning "$f"),,,,"
}

now_s() { date +%s.%N; }

# sampler FILE PREFIX FN ARG: appends "PREFIX,t_s," and the fields of FN every SAMPLE s
# until killed; t_s from the sampler's start. Sets SAMPLER.
sampler() {
    local file=$1 prefix=$2 fn=$3 arg=$4
    (
        t0=$(now_s)
        while :; do
            v=$($fn "$arg")
            printf '%s,%s,%s\n' "$prefix" "$(awk -v a="$t0" -v b="$(now_s)" 'BEGIN { printf "%.2f", b - a }')" "$v" >> "$file"
            sleep "$SAMPLE"
        done
    ) &
    SAMPLER=$!
    SAMPLER_PIDS+=("$SAMPLER")
}
sampler_stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# ---- part (a) --------------------------------------------------------------------------------
A_CSV=$CSV/a_seed001.csv
A_DEPTH=$CSV/a_depth.csv
PORT_A=19180 PORT_A_ADMIN=19183 PORT_PEER=18190

# One point: load ROUTE at C on the system now running; metrics from FN at URL.
a_point() {   # a_point SYSTEM ROUTE C FN METRICS_URL BASE_URL
    local sys=$1 route=$2 c=$3 fn=$4 murl=$5 base=$6 tag f m0 m1 t0 t1
    tag=$sys-${route//\//-}-c$c
    f=$RAW/$tag.txt
    m0=$($fn "$murl") t0=$(now_s)
    sampler "$A_DEPTH" "$sys,/$route,$c" "$fn" "$murl"
    local s=$SAMPLER
    log "(a) $sys POST /$route C=$c for ${D}s"
    # shellcheck disable=SC2046,SC2086  # pid_args and LG_EXTRA: words
    lg "$f" --url "$base/$route" --method POST --body "$BODY" -c "$c" -t "$LG_THREADS" -d "$D" \
        --timeout "$TIMEOUT" --drain "$DRAIN" --label "$tag" --cdf "$RAW/$tag.cdf" $(pid_args) $LG_EXTRA
    m1=$($fn "$murl") t1=$(now_s)
    sampler_stop "$s"
    # Ours: the jobs the store itself marked succeeded within [t0, t1] (the finished column, wall
    # clock ms). qos_jobs_finished_total is refreshed about once a second, so m1 - m0 misses up
    # to a second of completions (a tenth of a 10 s point); it stays the fallback without sqlite3.
    local store_done="" store_steady=""
    if [ "$sys" = ours ] && [ "$route" = orders ] && command -v sqlite3 > /dev/null; then
        store_done=$(sqlite3 -readonly "$WORK/jobs-a.db" \
            "SELECT count(*) FROM jobs WHERE state = 2 AND finished >= $(awk -v t="$t0" 'BEGIN { printf "%.0f", t * 1000 }') AND finished < $(awk -v t="$t1" 'BEGIN { printf "%.0f", t * 1000 }')" 2> /dev/null || true)
        store_steady=$(sqlite3 -readonly "$WORK/jobs-a.db" \
            "SELECT count(*) FROM jobs WHERE state = 2 AND finished >= $(awk -v t="$t0" -v k="$A_SKIP" 'BEGIN { printf "%.0f", (t + k) * 1000 }') AND finished < $(awk -v t="$t1" 'BEGIN { printf "%.0f", t * 1000 }')" 2> /dev/null || true)
    fi
    cat "$f.err" >&2 || true
    # depth/held maxima from the samples of this point
    local dmax hmax
    dmax=$(awk -F, -v p="$sys,/$route,$c" 'index($0, p ",") == 1 && $5 != "" && $5 + 0 > m { m = $5 + 0 } END { print m + 0 }' "$A_DEPTH")
    hmax=$(awk -F, -v p="$sys,/$route,$c" 'index($0, p ",") == 1 && $9 != "" && $9 + 0 > m { m = $9 + 0 } END { print m + 0 }' "$A_DEPTH")
    awk -v sys="$sys" -v route="/$route" -v c="$c" -v d="$D" -v m0="$m0" -v m1="$m1" -v t0="$t0" -v t1="$t1" \
        -v dmax="$dmax" -v hmax="$hmax" -v store_done="$store_done" -v store_steady="$store_steady" -v skip="$A_SKIP" -v line="$(grep '^LOADGEN' "$f" || true)" 'BEGIN {
        n = split(line, kv, " "); for (i = 2; i <= n; i++) { split(kv[i], p, "="); v[p[1]] = p[2] }
        split(m0, a, ","); split(m1, b, ",")
        if (b[1] != "" && b[1] + 0 > dmax) dmax = b[1] + 0
        sent = v["sent"] + 0; ok = v["s2xx"] + 0
        fail = sent - ok + v["err_connect"]
        # the mean time a handler of the route held its permit during the point
        hs = (route ~ /sync/) ? 8 : 6
        hm = (b[hs + 1] != "" && a[hs + 1] != "" && b[hs + 1] - a[hs + 1] > 0) ? sprintf("%.2f", 1000 * (b[hs] - a[hs]) / (b[hs + 1] - a[hs + 1])) : ""
        if (route ~ /sync/) { done = ok; dpm = v["ok_rps"] * 60 }
        else if (store_done != "") { done = store_done + 0; dpm = done / (t1 - t0) * 60 }
        else if (b[3] != "" && a[3] != "") { done = b[3] - a[3]; dpm = done / (t1 - t0) * 60 }
        else { done = ""; dpm = "" }
        spm = (store_steady != "" && t1 - t0 > skip) ? sprintf("%.0f", store_steady / (t1 - t0 - skip) * 60) : ""
        printf "%s,%s,%d,%s,%d,%d,%d,%d,%d,%.0f,%s,%s,%s,%s,%s,%s,%s,%s,%s,%d,%d,%d,%d,%d,%d,%.2f,%s,%s\n",
            sys, route, c, d, sent, ok, v["s201"], v["s202"], fail, v["ok_rps"] * 60,
            v["ok_mean_ms"], v["ok_p50_ms"], v["ok_p99_ms"], v["ok_max_ms"],
            done, (dpm == "" ? "" : sprintf("%.0f", dpm)), b[1], dmax, hmax,
            v["timeouts"], v["s503"], v["s4xx"] + v["s5xx_other"] + v["s_other"], v["err_connect"],
            v["err_lost"] + v["err_parse"], v["unanswered"], t1 - t0, hm, spm }' >> "$A_CSV"
    tail -1 "$A_CSV" >&2
    if [ "$sys" = ours ] && [ "$hmax" -gt "$N" ]; then anomaly "ours /$route C=$c: qos_group_in_use reached $hmax > N=$N"; fi
}

SYS_PIDS=()
# wait_up URL SECONDS: like wait_ready, but gives up as soon as a process of SYS_PIDS has exited
wait_up() {
    local i p
    for ((i = 0; i < $2 * 4; i++)); do
        curl -s -o /dev/null --max-time 1 "$1" && return 0
        for p in "${SYS_PIDS[@]:-}"; do
            [ -z "$p" ] || kill -0 "$p" 2>/dev/null || { log "process $p exited before $1 answered"; return 1; }
        done
        sleep 0.25
    done
    log "not ready after $2 s: $1"
    return 1
}
pid_args() { local p; for p in "${SYS_PIDS[@]:-}"; do [ -n "$p" ] && printf -- '--pid %s ' "$p"; done; }

ours_start() {   # a fresh service and job store (the config's copy names the store's file)
    rm -f "$WORK"/jobs-a.db "$WORK"/jobs-a.db-*
    sed -e "s|^  sqlite_path: .*|  sqlite_path: $WORK/jobs-a.db|" "$BENCH/config/qos-jobs-n8.yaml" > "$WORK/qos-jobs-n8.yaml"
    SYS_PIDS=()
    start_bg "ours-jobs" "$CATALOG" --config "$WORK/qos-jobs-n8.yaml" --port $PORT_A \
        --db "$WORK/catalog.db" --db-latency-ms "$DB_MS" --db-time total
    wait_up "http://127.0.0.1:$PORT_A/cache" 30 && wait_up "http://127.0.0.1:$PORT_A_ADMIN/healthz" 10
}
procs_stop() {   # procs_stop NAME: stops SYS_PIDS
    local p
    KILLED=0
    for p in "${SYS_PIDS[@]:-}"; do [ -n "$p" ] && stop_pid "$p"; done
    [ "$KILLED" = 0 ] || anomaly "$1 did not exit within $STOP_GRACE s of SIGTERM (logs/)"
    forget_pids "${SYS_PIDS[@]:-}"
    SYS_PIDS=()
}

part_a_ours() {
    local c route
    if ! "$CATALOG" --check "$BENCH/config/qos-jobs-n8.yaml" > "$OUT/logs/ours-check.log" 2>&1; then
        note "ours skipped: catalog_service --check refuses bench/config/qos-jobs-n8.yaml (accept mode not built in?): $(head -3 "$OUT/logs/ours-check.log" | tr '\n' ' ')"
        return 0
    fi
    for c in $CONCS; do
        for route in orders/sync orders; do
            if ! ours_start; then
                note "ours did not start for /$route C=$c (logs/ours-jobs.log); skipped"
                procs_stop ours
                continue
            fi
            lg "$RAW/ours-warmup.txt" --url "http://127.0.0.1:$PORT_A/orders/sync" --method POST --body "$BODY" \
                -c 10 -t 1 -d "$WARMUP" --drain 1
            a_point ours "$route" "$c" jobs_metrics "http://127.0.0.1:$PORT_A_ADMIN" "http://127.0.0.1:$PORT_A"
            procs_stop ours
            sleep "$PAUSE"
        done
    done
}

part_a_peer() {
    local dir=$SHARED/peers/node-queue c route base=http://127.0.0.1:$PORT_PEER why=""
    if [ ! -x "$dir/run.sh" ]; then why="$dir/run.sh absent"
    elif ! command -v node > /dev/null || ! command -v npm > /dev/null; then why="node/npm not installed"
    elif [ ! -x "$PGBIN/initdb" ]; then why="PostgreSQL binaries not in $PGBIN"
    fi
    if [ -n "$why" ]; then note "node-queue peer skipped: $why"; return 0; fi
    SYS_PIDS=()
    # its own PostgreSQL cluster and npm folder under our work folder (a short path: the unix
    # socket's path must stay under ~100 characters)
    PEERS_WORK=$WORK/peers start_bg node-queue env PEERS_WORK="$WORK/peers" N="$N" DB_MS="$DB_MS" "$dir/run.sh" "$PORT_PEER" "$N"
    if ! wait_up "$base/stats" 300; then
        note "node-queue peer did not start (logs/node-queue.log; first start runs npm install); skipped"
        procs_stop node-queue
        return 0
    fi
    lg "$RAW/node-queue-warmup.txt" --url "$base/orders/sync" --method POST --body "$BODY" -c 10 -t 1 -d "$WARMUP" --drain 1
    for c in $CONCS; do
        for route in orders/sync orders; do
            curl -s -X POST --max-time 120 "$base/admin/purge" >> "$RAW/node-queue-purge.log" 2>&1 || true
            echo >> "$RAW/node-queue-purge.log"
            curl -s -o /dev/null --max-time 5 "$base/stats?reset=1" || true
            a_point node-queue "$route" "$c" peer_metrics "$base" "$base"
            curl -s --max-time 5 "$base/stats" > "$RAW/node-queue-${route//\//-}-c$c.stats.json" || true
            sleep "$PAUSE"
        done
    done
    curl -s -X POST --max-time 120 "$base/admin/purge" >> "$RAW/node-queue-purge.log" 2>&1 || true
    procs_stop node-queue
}

part_a() {
    echo "system,route,conc,dur_s,sent,s2xx,s201,s202,failures,accepted_per_min,lat_mean_ms,lat_p50_ms,lat_p99_ms,lat_max_ms,completed,completed_per_min,depth_end,depth_max,running_max,timeouts,s503,other_non2xx,err_connect,err_lost,unanswered,measured_s,handler_mean_ms,completed_steady_per_min" > "$A_CSV"
    echo "system,route,conc,t_s,depth,held,succeeded,created,running,h_orders_sum,h_orders_n,h_sync_sum,h_sync_n" > "$A_DEPTH"
    local s
    for s in $SYSTEMS; do
        case "$s" in
            ours) part_a_ours ;;
            node-queue) part_a_peer ;;
            *) note "unknown system $s" ;;
        esac
    done
}

# ---- part (c) --------------------------------------------------------------------------------
AS_PG=()
[ "$(id -u)" -eq 0 ] && AS_PG=(runuser -u postgres --)
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -At)

pg_start() {   # a private cluster, unix socket in its own folder only
    PG_DIR=$(mktemp -d /tmp/qos-jobs-pg-XXXXXX)
    if [ ${#AS_PG[@]} -gt 0 ]; then
        id postgres > /dev/null 2>&1 || { log "no postgres user (initdb refuses root)"; return 1; }
        chown postgres:postgres "$PG_DIR"
    fi
    chmod 700 "$PG_DIR"
    "${AS_PG[@]}" "$PGBIN/initdb" -D "$PG_DIR/data" -A trust -U postgres --no-sync -E UTF8 --locale=C \
        > "$OUT/logs/initdb.log" 2>&1 || { tail -5 "$OUT/logs/initdb.log" >&2; return 1; }
    "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
        -o "-k $PG_DIR -p 5432 -c listen_addresses='' -c max_connections=200" start > "$OUT/logs/pg_ctl.log" 2>&1 ||
        { cat "$PG_DIR/server.log" >&2; return 1; }
    export QOS_BENCH_JOBS_PG="host=$PG_DIR port=5432 user=postgres dbname=postgres connect_timeout=5"
    log "PostgreSQL $("$PGBIN/postgres" -V | awk '{ print $3 }') on $PG_DIR/.s.PGSQL.5432"
}
pg_stop() {
    [ -n "$PG_DIR" ] || return 0
    "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 60 stop >> "$OUT/logs/pg_ctl.log" 2>&1 || true
    cp "$PG_DIR/server.log" "$OUT/logs/postgres.log" 2>/dev/null || true
    rm -rf "$PG_DIR"
    PG_DIR=""
}
pgq() { "${PSQL[@]}" "$QOS_BENCH_JOBS_PG" "$@"; }

# c_metrics: "running_in_table,held_gw1,held_gw2,held_c1,held_c2,succeeded_in_table,queued"
c_metrics() {
    local row h="" u="" p m
    # slots: the run slots held across processes (session advisory locks of qos.slot:db; the
    # key -1, 4294967295 as an oid, marks a process waiting for a slot, not a slot)
    row=$(pgq -F ' ' -c "SELECT count(*) FILTER (WHERE state = 'running'), count(*) FILTER (WHERE state = 'succeeded'), count(*) FILTER (WHERE state = 'queued'), (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND granted AND classid::int = hashtext('qos.slot:db') AND objid <> 4294967295) FROM qos_jobs" 2>/dev/null || echo "")
    for p in $C_ADMIN_PORTS; do
        m=$(jobs_metrics "http://127.0.0.1:$p")
        h="$h,$(echo "$m" | cut -d, -f2)"
        u="$u,$(echo "$m" | cut -d, -f5)"
    done
    # shellcheck disable=SC2086
    set -- $row
    echo "${1:-}$h,${2:-},${3:-}$u,${4:-}"
}

part_c() {
    local why=""
    [ -x "$PGBIN/initdb" ] || why="PostgreSQL binaries not in $PGBIN"
    command -v psql > /dev/null || why="psql not installed"
    if [ -n "$why" ]; then note "(c) skipped: $why"; return 0; fi
    local cfg=$BENCH/config/qos-jobs-pg.yaml
    if ! QOS_BENCH_JOBS_PG="host=/nonexistent" "$CATALOG" --check "$cfg" > "$OUT/logs/c-check.log" 2>&1; then
        note "(c) skipped: catalog_service --check refuses $cfg: $(head -3 "$OUT/logs/c-check.log" | tr '\n' ' ')"
        return 0
    fi
    pg_start || { note "(c) skipped: the private PostgreSQL did not start (logs/initdb.log, logs/postgres.log)"; pg_stop; return 0; }
    # name port admin_port consume
    local procs=("gw1 19280 19281 false" "gw2 19282 19284 false" "c1 19285 19286 true" "c2 19287 19288 true")
    C_ADMIN_PORTS="19281 19284 19286 19288"
    local spec name port admin consume first=1 ok=1
    SYS_PIDS=()
    for spec in "${procs[@]}"; do
        read -r name port admin consume <<< "$spec"
        sed -e "s/^  port: 19280$/  port: $port/" -e "s/^  port: 19283$/  port: $admin/" \
            -e "s/^  consume: true$/  consume: $consume/" "$cfg" > "$WORK/qos-jobs-pg-$name.yaml"
        # PREFETCH=0: nothing leased ahead (before e.g. 306d8e2: no run slots, leases the bound)
        if [ -n "${PREFETCH:-}" ]; then
            sed -i "s/^  consume: $consume$/  consume: $consume\n  prefetch: $PREFETCH/" "$WORK/qos-jobs-pg-$name.yaml"
        fi
        rm -f "$WORK/catalog-$name.db"*
        start_bg "c-$name" "$CATALOG" --config "$WORK/qos-jobs-pg-$name.yaml" --port "$port" \
            --db "$WORK/catalog-$name.db" --db-latency-ms "$DB_MS" --db-time total
        if ! { wait_up "http://127.0.0.1:$port/cache" 30 && wait_up "http://127.0.0.1:$admin/healthz" 10; }; then
            ok=0
            break
        fi
        if [ $first = 1 ]; then
            # the first process migrated the schema: record every state change from now on
            pgq -f "$JOBS/audit.sql" > "$OUT/logs/audit.log" 2>&1 || { ok=0; cat "$OUT/logs/audit.log" >&2; break; }
            first=0
        fi
    done
    if [ $ok = 0 ]; then
        note "(c) skipped: a catalog service did not start on PostgreSQL (logs/c-*.log)"
        procs_stop scale-out
        pg_stop
        return 0
    fi
    local C_CSV=$CSV/c_samples.csv
    echo "phase,t_s,running_table,held_gw1,held_gw2,held_c1,held_c2,succeeded_table,queued_table,in_use_gw1,in_use_gw2,in_use_c1,in_use_c2,slots_held" > "$C_CSV"
    local t_load t_end t_tail
    t_load=$(pgq -c "SELECT extract(epoch FROM clock_timestamp())")
    (
        t0=$(now_s)
        while :; do
            printf 'run,%s,%s\n' "$(awk -v a="$t0" -v b="$(now_s)" 'BEGIN { printf "%.2f", b - a }')" "$(c_metrics)" >> "$C_CSV"
            sleep "$SAMPLE"
        done
    ) &
    local smp=$!
    SAMPLER_PIDS+=("$smp")
    log "(c) POST /orders on gw1 and gw2, C=$SCALE_C each, for ${SCALE_D}s; consumers c1, c2 get no load"
    # shellcheck disable=SC2086
    lg "$RAW/c-gw1.txt" --url "http://127.0.0.1:19280/orders" --method POST --body "$BODY" -c "$SCALE_C" -t 1 \
        -d "$SCALE_D" --timeout "$TIMEOUT" --drain "$DRAIN" --label c-gw1 $LG_EXTRA &
    local bg=$!
    # shellcheck disable=SC2086
    lg "$RAW/c-gw2.txt" --url "http://127.0.0.1:19282/orders" --method POST --body "$BODY" -c "$SCALE_C" -t 1 \
        -d "$SCALE_D" --timeout "$TIMEOUT" --drain "$DRAIN" --label c-gw2 $LG_EXTRA
    wait "$bg" || true
    cat "$RAW/c-gw1.txt.err" "$RAW/c-gw2.txt.err" >&2 || true
    t_end=$(pgq -c "SELECT extract(epoch FROM clock_timestamp())")
    log "(c) load over; consumers work the backlog alone for ${SCALE_TAIL}s"
    sleep "$SCALE_TAIL"
    t_tail=$(pgq -c "SELECT extract(epoch FROM clock_timestamp())")
    sampler_stop "$smp"
    # the consumers' own account: a run whose lease was lost while it ran ends fenced_out
    local p
    for p in $C_ADMIN_PORTS; do curl -s --max-time 3 "http://127.0.0.1:$p/metrics" 2>/dev/null; done |
        awk 'function label(k) { if (!match($0, k "=\"[^\"]+\"")) return ""; return substr($0, RSTART + length(k) + 2, RLENGTH - length(k) - 3) }
             /^qos_jobs_finished_total\{/ { n[label("result")] += $NF }
             /^qos_handler_seconds_sum\{/ && label("route") == "orders" { hs += $NF }
             /^qos_handler_seconds_count\{/ && label("route") == "orders" { hn += $NF }
             END { split("succeeded failed given_back fenced_out requeued abandoned", r, " ")
                   for (i = 1; i <= 6; i++) printf "consumers_%s,%d\n", r[i], n[r[i]]
                   # how long handlers really held their permits (the backend wakes late on busy cores)
                   if (hn > 0) printf "consumers_handler_mean_ms,%.2f\n", 1000 * hs / hn }' > "$CSV/c_consumers.csv"
    # the spread of the work over the two consumers (run slots are shared evenly)
    local name
    for p in $C_ADMIN_PORTS; do
        case $p in 19286) name=c1 ;; 19288) name=c2 ;; *) continue ;; esac
        curl -s --max-time 3 "http://127.0.0.1:$p/metrics" 2>/dev/null |
            awk -v c="$name" '/^qos_jobs_finished_total\{/ && /result="succeeded"/ { n += $NF }
                              END { printf "succeeded_by_%s,%d\n", c, n }' >> "$CSV/c_consumers.csv"
    done
    procs_stop scale-out   # SIGTERM: the consumers finish or give back what they hold
    pgq -v t_load="$t_load" -v t_end="$t_end" -v t_tail="$t_tail" -v skip="$SCALE_SKIP" -v n="$N" \
        -v service_ms="$DB_MS" -F ',' -P footer=off -f "$JOBS/check_runs.sql" > "$CSV/c_check.csv" 2> "$OUT/logs/check_runs.log" ||
        { cat "$OUT/logs/check_runs.log" >&2; note "(c) check_runs.sql failed (logs/check_runs.log)"; }
    pgq -F ',' -c "SELECT state, count(*), max(fence), max(attempts) FROM qos_jobs GROUP BY state ORDER BY state" > "$CSV/c_states.csv" 2>&1 || true
    {
        echo "gateway,sent,s202,failures,accepted_per_s,p50_ms,p99_ms"
        local g f
        for g in gw1 gw2; do
            f=$RAW/c-$g.txt
            echo "$g,$(lgv "$f" sent),$(lgv "$f" s202),$(awk -v s="$(lgv "$f" sent)" -v o="$(lgv "$f" s2xx)" -v e="$(lgv "$f" err_connect)" 'BEGIN { print s - o + e }'),$(lgv "$f" ok_rps),$(lgv "$f" ok_p50_ms),$(lgv "$f" ok_p99_ms)"
        done
    } > "$CSV/c_gateways.csv"
    cat "$CSV/c_consumers.csv" >> "$CSV/c_check.csv"
    cat "$CSV/c_check.csv" >&2
    # Leases may run up to two per run slot held ahead of the slots, 2 N in all (PREFETCH=0:
    # none); the handlers (qos_group_in_use, per consumer, sampled) and the slots held
    # (pg_locks) stay within N.
    local lease_bound=$((3 * N))
    [ "${PREFETCH:-}" = 0 ] && lease_bound=$N
    awk -F, -v n="$N" 'NR > 1 { if ($12 + $13 > n) print "(c): " $12 + $13 " handlers ran at once at t=" $2 " s (c1 + c2, sampled), N = " n
                                if ($14 + 0 > n) print "(c): " $14 " run slots held at t=" $2 " s, N = " n }' "$C_CSV" |
        while read -r line; do anomaly "$line"; done
    awk -F, -v n="$lease_bound" '{ v[$1] = $2 }
        END { if (v["max_running_exact"] + 0 > n) print "(c): " v["max_running_exact"] " jobs leased at once, at most " n " expected"
              if (v["consumers_fenced_out"] + 0 > 0) print "(c): " v["consumers_fenced_out"] " runs were fenced out (a job ran twice at once)"
              if (v["jobs_dead"] + 0 > 0) print "(c): " v["jobs_dead"] " jobs dead" }' "$CSV/c_check.csv" |
        while read -r line; do anomaly "$line"; done
    pg_stop
}

# ---- main -------------------------------------------------------------------------------------
T0=$SECONDS
if [ "$PART" = a ] || [ "$PART" = all ]; then part_a; fi
if [ "$PART" = c ] || [ "$PART" = all ]; then part_c; fi
log "measurements done in $((SECONDS - T0)) s"
foreign=$(busy_elsewhere)
[ -z "$foreign" ] || note "other processes using the CPU at the end of the run: ${foreign%; }"
SEED=$(find "$SHARED/seeds" -maxdepth 1 -name "001_*.txt" 2>/dev/null | head -1 || true)
bash "$JOBS/report.sh" "$OUT" "$SEED"
log "results: $OUT/results.md"
