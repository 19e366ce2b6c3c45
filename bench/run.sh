#!/usr/bin/env bash
# The load benchmarks of issue 3: one command, every system side by side, one run.
#
# Usage: bench/run.sh [quick|full]        (quick: about 3 min, full: about 18 min)
#
# Systems (one at a time, each started and stopped here):
#   ours         examples/catalog_service, guarded (bench/config/qos-nN.yaml)
#   ours-naive   the same with --naive: the DB route blocks a reactor thread, no gate
#   ours-reserve S3 only: ours with one permit kept for high priority (qos-nN-reserve.yaml)
#   jetty-qos    ../shared/peers/jetty-qos/run.sh qos   (Jetty 9.4 QoSFilter)
#   jetty-naive  ../shared/peers/jetty-qos/run.sh naive (200 threads, no limit)
#   haproxy      ../shared/peers/haproxy/run.sh in front of a naive Jetty (server maxconn N)
#   (jetty-pool  on request: SYSTEMS="... jetty-pool")
# The peers are skipped with a note when ../shared/peers (next to the repository) is absent.
#
# Scenarios: S1 overload table, S2 cache route under DB overload, S3 priority, S4 timeout
# precision (from the S1 runs, whose clients all start at once, and again with their starts spread
# over S4_RAMP seconds), S5 gate overhead (bench/overhead_server.cpp), S6 memory per parked
# request. S7 (micro-benchmarks) is bench/micro_bench.cpp, not run here.
#
# Output: bench/out/<timestamp>/{results.md, csv/*.csv, plots/*.png, raw/, logs/}.
# Every load targets 127.0.0.1 and is bounded in time (timeout(1) around each client).
#
# Settings (environment; the mode sets the defaults): SYSTEMS CONCS D DRAIN PAUSE WARMUP TIMEOUT
#   N DB_MS DB_TIME LG_THREADS S2_DB_CS S3_DB_C S3_PRIO S4_CS S4_D S4_RAMP S5_C S5_D S5_REPS S6_KS S6_D
#   N30_SYSTEMS N30_CONCS SCENARIOS="s1 s2 s3 s4 s5 s6 n30" PIN=1 (client on CPU 0, servers on CPU 1)
#   BUILD (Release build dir, default build-bench) PEERS (default <repo>/../shared/peers)
set -euo pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
ROOT=$(git -C "$BENCH" rev-parse --show-toplevel)
MODE=${1:-quick}
case "$MODE" in
    quick|full) ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "usage: $0 [quick|full]" >&2; exit 2 ;;
esac

# ---- settings -------------------------------------------------------------------------------
if [ "$MODE" = quick ]; then
    : "${SYSTEMS:=ours jetty-qos haproxy}"
    : "${CONCS:=10 1000 5000}"
    : "${D:=3}" "${DRAIN:=2}" "${PAUSE:=0.5}" "${WARMUP:=2}"
    : "${S2_DB_CS:=1000}"
    : "${S4_CS:=5000}" "${S4_D:=3}"
    : "${S5_REPS:=1}" "${S5_D:=2}"
    : "${S6_KS:=1000}" "${S6_D:=4}"
    : "${SCENARIOS:=s1 s2 s3 s4 s5 s6}"
else
    : "${SYSTEMS:=ours ours-naive jetty-qos jetty-naive haproxy}"
    : "${CONCS:=10 50 100 200 500 1000 2000 5000 10000}"
    : "${D:=8}" "${DRAIN:=2.5}" "${PAUSE:=1}" "${WARMUP:=3}"
    : "${S2_DB_CS:=1000 5000}"
    : "${S4_CS:=1000 5000 10000}" "${S4_D:=5}"
    : "${S5_REPS:=3}" "${S5_D:=5}"
    : "${S6_KS:=1000 5000 10000}" "${S6_D:=6}"
    : "${SCENARIOS:=s1 s2 s3 s4 s5 s6 n30}"
fi
: "${N:=8}" "${DB_MS:=50}" "${TIMEOUT:=10}" "${LG_THREADS:=2}"
# total: our DB route holds its connection DB_MS in all, SQLite read included, like the peers'
# 50 ms of work; extra: the SQLite read plus DB_MS (the example's default)
: "${DB_TIME:=total}"
: "${S3_DB_C:=1000}" "${S3_PRIO:=10}" "${S5_C:=50}"
# S4 again with the clients' first requests spread over S4_RAMP s (loadgen --ramp)
: "${S4_RAMP:=1}"
: "${N30_SYSTEMS:=ours jetty-qos haproxy}" "${N30_CONCS:=100 1000 5000}"
: "${BUILD:=$ROOT/build-bench}"
: "${PEERS:=$ROOT/../shared/peers}"
WORK=${TMPDIR:-/tmp}/qos-bench
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$BENCH/out/$STAMP
RAW=$OUT/raw CSV=$OUT/csv
mkdir -p "$OUT/logs" "$RAW" "$CSV" "$OUT/plots" "$WORK"
: > "$OUT/anomalies.md"
: > "$OUT/notes.md"

CLIENT_PREFIX=() SERVER_PREFIX=()
if [ "${PIN:-0}" = 1 ]; then
    CLIENT_PREFIX=(taskset -c 0) SERVER_PREFIX=(taskset -c 1)
fi

. "$BENCH/lib/common.sh"
. "$BENCH/lib/report.sh"

trap 'stop_clients; stop_all' EXIT
trap 'log "interrupted"; exit 130' INT TERM

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)
note() { echo "- $*" >> "$OUT/notes.md"; log "note: $*"; }

# ---- preflight --------------------------------------------------------------------------------
if [ -d "$PEERS" ] && [ -x "$PEERS/jetty-qos/run.sh" ] && [ -x "$PEERS/haproxy/run.sh" ]; then
    PEERS=$(cd "$PEERS" && pwd)
else
    kept=""
    for s in $SYSTEMS; do case "$s" in jetty-*|haproxy) ;; *) kept="$kept $s" ;; esac; done
    note "peers folder $PEERS is absent: Jetty and HAProxy peers skipped; measuring:$kept"
    SYSTEMS=$kept
    N30_SYSTEMS=ours
fi
if [[ " $SYSTEMS " == *" jetty-"* ]] || [[ " $SYSTEMS " == *" haproxy "* ]]; then
    # install the peers' packages up front (as bench-peers.sh does), so that a first run does
    # not spend the readiness wait in apt; the peers' own helper, idempotent
    # shellcheck disable=SC1091
    . "$PEERS/lib/ensure.sh"
    log "checking the peers' Debian packages"
    ensure_pkgs openjdk-17-jdk-headless libjetty9-java libservlet-api-java haproxy curl
fi
# reachable WHAT C...: the concurrencies the open-files limit allows (the client needs C+100)
reachable() {
    local what=$1 c out=""
    shift
    for c in "$@"; do
        if [ $((c + 100)) -le "$FD_LIMIT" ]; then out="$out $c"; else
            note "${what}C=$c skipped: open-files limit is $FD_LIMIT (hard), the client needs C+100"
        fi
    done
    echo "${out# }"
}
# shellcheck disable=SC2086
CONCS=$(reachable "" $CONCS)
# shellcheck disable=SC2086
S4_CS=$(reachable "S4 " $S4_CS)
command -v gnuplot > /dev/null || note "gnuplot not installed (QOS_BENCH_DEPS=1 bash scripts/install-deps.sh): no plots"

# Other work on the machine skews every number: record what else was using the CPU.
busy_elsewhere() {
    top -b -n 2 -d 1 -w 200 2>/dev/null | awk '/^top -/ { n++ } n == 2 && $1 ~ /^[0-9]+$/ && $9 + 0 >= 10 { printf "%s (pid %s) %s%% CPU; ", $12, $1, $9 }' || true
}
foreign=$(busy_elsewhere)
if [ -n "$foreign" ]; then
    note "other processes were using the CPU when the run started: ${foreign%; }; numbers are skewed by that"
fi
cat > "$OUT/settings.env" <<EOF
MODE=$MODE
SYSTEMS="$SYSTEMS"
CONCS="$CONCS"
N=$N DB_MS=$DB_MS DB_TIME=$DB_TIME D=$D DRAIN=$DRAIN PAUSE=$PAUSE WARMUP=$WARMUP TIMEOUT=$TIMEOUT LG_THREADS=$LG_THREADS
S2_DB_CS="$S2_DB_CS" S3_DB_C=$S3_DB_C S3_PRIO=$S3_PRIO S4_CS="$S4_CS" S4_D=$S4_D S4_RAMP=$S4_RAMP S5_C=$S5_C S5_D=$S5_D S5_REPS=$S5_REPS
S6_KS="$S6_KS" S6_D=$S6_D N30_SYSTEMS="$N30_SYSTEMS" N30_CONCS="$N30_CONCS"
SCENARIOS="$SCENARIOS" PIN=${PIN:-0} FD_LIMIT=$FD_LIMIT
COMMIT=$(git -C "$ROOT" rev-parse HEAD)$(git -C "$ROOT" diff --quiet HEAD -- . 2>/dev/null || echo "+dirty")
DIRTY="$(git -C "$ROOT" status --short -- . ':!bench' 2>/dev/null | awk '$1 != "??" { printf "%s ", $2 }')"
EOF
log "mode $MODE; systems: $SYSTEMS; C: $CONCS; D=${D}s; output $OUT"
build_all

has() { [[ " $SCENARIOS " == *" $1 "* ]]; }

# ---- CSV headers ------------------------------------------------------------------------------
S1_COLS="system,n,conc,dur_s,sent,answered,answered_in_window,ok_in_window,ok_rps,ok_rps_steady,ok_rpm,s2xx,s503,s5xx_other,s4xx,timeouts,err_connect,err_lost,unanswered,ok_p50_ms,ok_p99_ms,ok_max_ms,s503_min_ms,s503_p50_ms,s503_p99_ms,s503_max_ms,oks_p50_ms,oks_p99_ms,oks_max_ms,s503_steady,s503s_min_ms,s503s_p50_ms,s503s_p99_ms,s503s_max_ms,listen_overflows,fb_timeout,fb_queue_full,open_max,rss_max_mib,hwm_mib,threads_max,db_max_inflight,srv_admitted,srv_timeout,srv_queue_full,srv_client_gone,srv_error,srv_service_ms,restarted_after,srv_late_p50_ms,srv_late_p99_ms,srv_late_within_5ms,s503sx_p50_ms,s503sx_p99_ms,s503sx_max_ms"
echo "$S1_COLS" > "$CSV/s1_overload.csv"
echo "$S1_COLS" > "$CSV/s4_ramped.csv"
echo "system,n,db_conc,cache_conc,dur_s,cache_rps,cache_p50_ms,cache_p99_ms,cache_p999_ms,cache_max_ms,cache_failed,db_ok_rps,db_s503,rss_max_mib,threads_max" > "$CSV/s2_cache.csv"
echo "system,n,db_conc,probe,priority,answered,s2xx,s503,failed,p50_ms,p90_ms,p99_ms,max_ms,db_ok_rps" > "$CSV/s3_priority.csv"
echo "tool,rep,route,conc,dur_s,rps,p50_ms,p99_ms,failed,cpu_us_per_req" > "$CSV/s5_overhead.csv"
echo "k,mode,rss_before_kib,rss_during_kib,items,per_item_kib,threads" > "$CSV/s6_memory.csv"

# ---- scenarios --------------------------------------------------------------------------------
warmup() {
    if [ "$WARMUP" = 0 ]; then return 0; fi
    log "$SYS_NAME: warm-up ${WARMUP}s (not recorded)"
    lg "$RAW/warmup-db.txt" --url "$SYS_URL/db" -c 50 -t 1 -d "$WARMUP" --drain 1.5 &
    local bg=$!
    lg "$RAW/warmup-cache.txt" --url "$SYS_URL/cache" -c 10 -t 1 -d "$WARMUP" --drain 1
    wait "$bg" || true
    settle
}

# S1: one point of the overload table. s1_point C ramp: the same run for S4 with the clients'
# starts spread over S4_RAMP seconds, recorded in s4_ramped.csv.
s1_point() {
    local c=$1 tag f m0 m1 st csv=$CSV/s1_overload.csv ramp=() d=$D
    tag=$SYS_NAME-n$SYS_N-s1-c$c
    if [ "${2:-}" = ramp ]; then
        tag=$SYS_NAME-n$SYS_N-s4r-c$c csv=$CSV/s4_ramped.csv ramp=(--ramp "$S4_RAMP") d=$S4_D
        log "S4 $SYS_NAME N=$SYS_N: /db C=$c for ${d}s, starts spread over ${S4_RAMP}s"
    else
        log "S1 $SYS_NAME N=$SYS_N: /db C=$c for ${D}s"
    fi
    f=$RAW/$tag.txt m0=$RAW/$tag.metrics0 m1=$RAW/$tag.metrics1 st=$RAW/$tag.stats.json
    stats_reset
    sys_is_ours && metrics_get "$m0"
    local lo0
    lo0=$(listen_overflows)
    # shellcheck disable=SC2046
    lg "$f" --url "$SYS_URL/db" -c "$c" -t "$LG_THREADS" -d "$d" --timeout "$TIMEOUT" \
        --drain "$DRAIN" "${ramp[@]}" $(pid_args) --cdf "$RAW/$tag.cdf" --label "$tag"
    stats_get "$st"
    local lo1
    lo1=$(listen_overflows)
    local adm="" tmo="" qf="" gone="" err="" svc="" late=",,"
    if sys_is_ours; then
        metrics_get "$m1"
        late=$(late_summary "$m0" "$m1")
        adm=$(metrics_delta "$m0" "$m1" admitted) tmo=$(metrics_delta "$m0" "$m1" timeout)
        qf=$(metrics_delta "$m0" "$m1" queue_full) gone=$(metrics_delta "$m0" "$m1" client_gone)
        err=$(metrics_delta "$m0" "$m1" error)
        svc=$(awk -v s="$(metrics_delta "$m0" "$m1" handler_sum)" -v n="$(metrics_delta "$m0" "$m1" handler_count)" \
            'BEGIN { if (n > 0) printf "%.2f", s / n * 1000 }')
    fi
    cat "$f.err" >&2 || true
    local alive maxin
    alive=$(lgv "$f" srv_alive) maxin=$(json_num dbMaxInFlight "$st")
    settle
    {
        printf '%s,%s,%s' "$SYS_NAME" "$SYS_N" "$c"
        local k
        for k in duration_s sent answered answered_in_window ok_in_window ok_rps ok_rps_steady; do printf ',%s' "$(lgv "$f" $k)"; done
        printf ',%s' "$(awk -v r="$(lgv "$f" ok_rps_steady)" 'BEGIN { if (r != "") printf "%.0f", r * 60 }')"
        for k in s2xx s503 s5xx_other s4xx timeouts err_connect err_lost unanswered ok_p50_ms ok_p99_ms \
                 ok_max_ms s503_min_ms s503_p50_ms s503_p99_ms s503_max_ms oks_p50_ms oks_p99_ms oks_max_ms \
                 s503_steady s503s_min_ms s503s_p50_ms s503s_p99_ms s503s_max_ms; do
            printf ',%s' "$(lgv "$f" $k)"
        done
        printf ',%s' "$([ -n "$lo0" ] && [ -n "$lo1" ] && echo $((lo1 - lo0)))"
        for k in outcome_timeout outcome_queue_full open_max; do printf ',%s' "$(lgv "$f" $k)"; done
        printf ',%s,%s,%s' "$(kib_to_mib "$(lgv "$f" srv_rss_max_kib)")" "$(kib_to_mib "$(lgv "$f" srv_hwm_kib)")" "$(lgv "$f" srv_threads_max)"
        printf ',%s,%s,%s,%s,%s,%s,%s,%s,%s' "$maxin" "$adm" "$tmo" "$qf" "$gone" "$err" "$svc" "$RESTARTED" "$late"
        for k in s503sx_p50_ms s503sx_p99_ms s503sx_max_ms; do printf ',%s' "$(lgv "$f" $k)"; done
        printf '\n'
    } >> "$csv"

    # What our guarded server must never do.
    if sys_is_ours; then
        local sent ans s2 to lost un
        sent=$(lgv "$f" sent) ans=$(lgv "$f" answered) s2=$(lgv "$f" s2xx)
        to=$(lgv "$f" timeouts) lost=$(lgv "$f" err_lost) un=$(lgv "$f" unanswered)
        if [ "$alive" = 0 ]; then anomaly "ours N=$SYS_N C=$c: server process gone during the run (see logs/ours-n$SYS_N.log)"; fi
        if [ "$RESTARTED" != 0 ]; then anomaly "ours N=$SYS_N C=$c: /cache did not answer ${PAUSE}s after the run; restarted"; fi
        if [ -z "$maxin" ]; then anomaly "ours N=$SYS_N C=$c: /stats did not answer after the run"
        elif [ "$maxin" -gt "$SYS_N" ]; then anomaly "ours N=$SYS_N C=$c: dbMaxInFlight=$maxin > N"; fi
        if [ "${sent:-0}" != "${ans:-0}" ]; then
            anomaly "ours N=$SYS_N C=$c: sent $sent but answered $ans (timeouts $to, lost $lost, unanswered $un)"
        fi
        if [ -n "$adm" ] && [ "${s2:-0}" -gt "${adm%.*}" ]; then
            anomaly "ours N=$SYS_N C=$c: client saw $s2 2xx but the server admitted $adm"
        fi
    fi
    return 0
}

# S2: the cache route alone, then beside DB overload.
s2_run() {
    local dbc=$1 tag fc fd
    tag=$SYS_NAME-n$SYS_N-s2-db$dbc
    fc=$RAW/$tag-cache.txt fd=$RAW/$tag-db.txt
    if [ "$dbc" = 0 ]; then
        log "S2 $SYS_NAME: /cache C=10 alone for ${D}s"
        # shellcheck disable=SC2046
        lg "$fc" --url "$SYS_URL/cache" -c 10 -t 1 -d "$D" --timeout "$TIMEOUT" --drain 1 $(pid_args) --cdf "$RAW/$tag-cache.cdf"
        : > "$fd"
    else
        log "S2 $SYS_NAME: /db C=$dbc plus /cache C=10 for ${D}s"
        lg "$fd" --url "$SYS_URL/db" -c "$dbc" -t 1 -d $((D + 2)) --timeout "$TIMEOUT" --drain "$DRAIN" &
        local bg=$!
        sleep 1
        # shellcheck disable=SC2046
        lg "$fc" --url "$SYS_URL/cache" -c 10 -t 1 -d "$D" --timeout "$TIMEOUT" --drain 1 $(pid_args) --cdf "$RAW/$tag-cache.cdf"
        wait "$bg" || true
    fi
    cat "$fc.err" >&2 || true
    settle
    local failed
    failed=$(awk -v a="$(lgv "$fc" timeouts)" -v b="$(lgv "$fc" err_lost)" -v c="$(lgv "$fc" err_connect)" \
        -v d="$(lgv "$fc" unanswered)" -v e="$(lgv "$fc" s503)" -v f="$(lgv "$fc" s5xx_other)" \
        'BEGIN { print a + b + c + d + e + f }')
    printf '%s,%s,%s,10,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$SYS_NAME" "$SYS_N" "$dbc" "$D" \
        "$(lgv "$fc" rps)" "$(lgv "$fc" ok_p50_ms)" "$(lgv "$fc" ok_p99_ms)" "$(lgv "$fc" ok_p999_ms)" \
        "$(lgv "$fc" ok_max_ms)" "$failed" "$(lgv "$fd" ok_rps)" "$(lgv "$fd" s503)" \
        "$(kib_to_mib "$(lgv "$fc" srv_rss_max_kib)")" "$(lgv "$fc" srv_threads_max)" >> "$CSV/s2_cache.csv"
}

# S3: high-priority requests (one at a time) during DB overload, beside a default-priority probe.
s3_run() {
    local tag fd fh fl
    tag=$SYS_NAME-n$SYS_N-s3
    fd=$RAW/$tag-db.txt fh=$RAW/$tag-hi.txt fl=$RAW/$tag-lo.txt
    log "S3 $SYS_NAME: /db C=$S3_DB_C plus sequential probes X-Priority: $S3_PRIO and none, ${D}s"
    lg "$fd" --url "$SYS_URL/db" -c "$S3_DB_C" -t 1 -d $((D + 2)) --timeout "$TIMEOUT" --drain "$DRAIN" &
    local bg1=$! bg2
    sleep 1
    lg "$fh" --url "$SYS_URL/db" -c 1 -t 1 -d "$D" --timeout "$TIMEOUT" --drain 2 -H "X-Priority: $S3_PRIO" --cdf "$RAW/$tag-hi.cdf" &
    bg2=$!
    lg "$fl" --url "$SYS_URL/db" -c 1 -t 1 -d "$D" --timeout "$TIMEOUT" --drain 2
    wait "$bg1" "$bg2" || true
    cat "$fh.err" "$fl.err" >&2 || true
    settle
    local f probe prio
    for probe in hi lo; do
        if [ $probe = hi ]; then f=$fh prio=$S3_PRIO; else f=$fl prio=none; fi
        printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$SYS_NAME" "$SYS_N" "$S3_DB_C" "$probe" "$prio" \
            "$(lgv "$f" answered)" "$(lgv "$f" s2xx)" "$(lgv "$f" s503)" \
            "$(awk -v a="$(lgv "$f" timeouts)" -v b="$(lgv "$f" err_lost)" -v c="$(lgv "$f" unanswered)" 'BEGIN { print a + b + c }')" \
            "$(lgv "$f" all_p50_ms)" "$(lgv "$f" all_p90_ms)" "$(lgv "$f" all_p99_ms)" "$(lgv "$f" all_max_ms)" \
            "$(lgv "$fd" ok_rps)" >> "$CSV/s3_priority.csv"
    done
}

bench_system() {   # bench_system NAME N CONCS SCENARIOS
    local name=$1 n=$2 concs=$3 scen=$4 c
    log "=== $name (N=$n) ==="
    if ! sys_start "$name" "$n"; then
        note "$name N=$n did not start (logs/$name*.log); skipped"
        sys_stop
        return 0
    fi
    warmup
    if [[ " $scen " == *" s1 "* ]]; then
        for c in $concs; do
            s1_point "$c"
            if [ "$RESTARTED" = 2 ]; then note "$name: could not restart after C=$c; rest skipped"; sys_stop; return 0; fi
        done
    fi
    if [[ " $scen " == *" s4 "* ]]; then
        for c in $S4_CS; do
            s1_point "$c" ramp
            if [ "$RESTARTED" = 2 ]; then note "$name: could not restart after S4 C=$c; rest skipped"; sys_stop; return 0; fi
        done
    fi
    if [[ " $scen " == *" s2 "* ]]; then
        for c in 0 $S2_DB_CS; do
            s2_run "$c"
            if [ "$RESTARTED" = 2 ]; then note "$name: could not restart in S2; rest skipped"; sys_stop; return 0; fi
        done
    fi
    if [[ " $scen " == *" s3 "* ]]; then s3_run; fi
    sys_stop
    sleep 1
}

# S5: the gate's cost on a trivial handler, at saturation (closed loop, S5_C connections).
# CPU time (user + system, clock ticks) a process has used so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# µs of server CPU per answered request: cpu_per_req TICKS_BEFORE TICKS_AFTER REQUESTS
cpu_per_req() {
    awk -v a="$1" -v b="$2" -v n="$3" -v hz="$(getconf CLK_TCK)" 'BEGIN { if (n > 0) printf "%.2f", (b - a) * 1e6 / hz / n }'
}

s5_overhead() {
    log "=== S5 overhead: overhead_server /plain vs /guarded (fiber) vs /inline (reactor kind), C=$S5_C, ${S5_D}s x $S5_REPS ==="
    SYS_NAME=overhead SYS_N=0 SYS_PIDS=() SYS_ADMIN_URL=
    start_bg overhead "$OVERHEAD" --port $PORT_OVERHEAD
    SYS_URL=http://127.0.0.1:$PORT_OVERHEAD
    wait_ready "$SYS_URL/cache" 20 || { note "overhead_server did not start"; sys_stop; return 0; }
    lg "$RAW/s5-warmup.txt" --url "$SYS_URL/guarded" -c "$S5_C" -t 2 -d 1 --drain 1
    local rep route f t0 t1 pid=${SYS_PIDS[0]}
    for ((rep = 1; rep <= S5_REPS; rep++)); do
        for route in plain guarded inline; do
            f=$RAW/s5-loadgen-$route-$rep.txt
            t0=$(cpu_ticks "$pid")
            # shellcheck disable=SC2046
            lg "$f" --url "$SYS_URL/$route" -c "$S5_C" -t "$LG_THREADS" -d "$S5_D" --drain 1 $(pid_args)
            t1=$(cpu_ticks "$pid")
            cat "$f.err" >&2 || true
            printf 'loadgen,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$rep" "$route" "$S5_C" "$S5_D" "$(lgv "$f" ok_rps)" \
                "$(lgv "$f" ok_p50_ms)" "$(lgv "$f" ok_p99_ms)" \
                "$(awk -v a="$(lgv "$f" sent)" -v b="$(lgv "$f" s2xx)" 'BEGIN { print a - b }')" \
                "$(cpu_per_req "$t0" "$t1" "$(lgv "$f" s2xx)")" >> "$CSV/s5_overhead.csv"
            sleep 1
        done
        if command -v wrk > /dev/null; then
            for route in plain guarded inline; do
                f=$RAW/s5-wrk-$route-$rep.txt
                t0=$(cpu_ticks "$pid")
                "${CLIENT_PREFIX[@]}" timeout -k 5 $((S5_D + 30)) wrk -t"$LG_THREADS" -c"$S5_C" -d"${S5_D}s" --latency \
                    "$SYS_URL/$route" > "$f" 2>&1 || true
                t1=$(cpu_ticks "$pid")
                awk -v rep="$rep" -v route="$route" -v c="$S5_C" -v d="$S5_D" -v t0="$t0" -v t1="$t1" -v hz="$(getconf CLK_TCK)" '
                    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
                    /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) } /^Requests\/sec:/ { rps = $2 }
                    / requests in / { n = $1 }
                    /Non-2xx|Socket errors/ { bad = 1 }
                    END { printf "wrk,%s,%s,%s,%s,%.2f,%.2f,%.2f,%s,%s\n", rep, route, c, d, rps, p50, p99, bad ? "see raw" : 0,
                              (n > 0) ? sprintf("%.2f", (t1 - t0) * 1e6 / hz / n) : "" }' \
                    "$f" >> "$CSV/s5_overhead.csv"
                sleep 1
            done
        fi
    done
    sys_stop
}

# S6: memory per parked request, and per idle keep-alive connection for comparison.
proc_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

s6_memory() {
    local k mode f rss0 rss1 items thr pid bg
    for k in $S6_KS; do
        if [ $((k + 100)) -gt "$FD_LIMIT" ]; then note "S6 k=$k skipped: open-files limit $FD_LIMIT"; continue; fi
        for mode in parked idle_conn; do
            log "S6: $k ${mode/_/ } requests on a fresh server"
            SYS_NAME=ours-park SYS_N=8 SYS_PIDS=()
            start_bg "ours-park" "$CATALOG" --config "$BENCH/config/qos-park.yaml" --port $PORT_PARK \
                --db "$WORK/catalog.db" --db-latency-ms "$DB_MS" --db-time "$DB_TIME"
            SYS_URL=http://127.0.0.1:$PORT_PARK SYS_ADMIN_URL=http://127.0.0.1:$PORT_PARK_ADMIN
            { wait_ready "$SYS_URL/cache" 20 && wait_ready "$SYS_ADMIN_URL/healthz" 10; } ||
                { note "S6 server did not start"; sys_stop; continue; }
            pid=${SYS_PIDS[0]}
            # warm the reactors, the allocator and the DB path (its connections, page cache and
            # pool threads are one-time costs, not per parked request), then take the baseline
            lg "$RAW/s6-warm.txt" --url "$SYS_URL/cache" -c 10 -t 1 -d 0.5 --drain 0.5
            lg "$RAW/s6-warm-db.txt" --url "$SYS_URL/db" -c "$SYS_N" -t 1 -d 1 --drain 0.5
            sleep 0.5
            rss0=$(proc_kib "$pid" VmRSS)
            f=$RAW/s6-$mode-$k.txt
            if [ $mode = parked ]; then
                lg "$f" --url "$SYS_URL/db" -c "$k" -t 2 -d "$S6_D" --timeout 300 --drain 0 --pid "$pid" &
            else
                lg "$f" --url "$SYS_URL/cache" -c "$k" -t 2 -d "$S6_D" --timeout 300 --drain 0 --reqs-per-conn 1 --pid "$pid" &
            fi
            bg=$!
            sleep "$(awk -v d="$S6_D" 'BEGIN { print d - 1 }')"
            rss1=$(proc_kib "$pid" VmRSS) thr=$(proc_kib "$pid" Threads)
            if [ $mode = parked ]; then
                metrics_get "$RAW/s6-$mode-$k.metrics"
                items=$(awk '$1 == "waiting" { print $2 }' "$RAW/s6-$mode-$k.metrics")
            else
                # connections the server has accepted (the client may count some still in the
                # listen queue)
                items=$(ss -Htn state established "( sport = :$PORT_PARK )" 2>/dev/null | wc -l || true)
            fi
            wait "$bg" || true
            cat "$f.err" >&2 || true
            printf '%s,%s,%s,%s,%s,%s,%s\n' "$k" "$mode" "$rss0" "$rss1" "${items:-}" \
                "$(awk -v a="$rss0" -v b="$rss1" -v n="${items:-0}" 'BEGIN { if (n > 0) printf "%.2f", (b - a) / n }')" \
                "$thr" >> "$CSV/s6_memory.csv"
            sys_stop
        done
    done
}

# ---- main -------------------------------------------------------------------------------------
T0=$SECONDS
if has s1 || has s2 || has s3 || has s4; then
    for s in $SYSTEMS; do
        s4=""  # S4 for the systems that answer a queue timeout with a fallback
        case "$s" in ours | jetty-qos | haproxy) has s4 && s4=s4 ;; esac
        bench_system "$s" "$N" "$CONCS" "$(has s1 && echo s1) $(has s2 && echo s2) $(has s3 && echo s3) $s4"
    done
fi
# S3 again for ours with a permit kept for high priority: the price (lower-priority goodput)
# and the gain (high-priority latency) side by side with the default above.
if has s3 && [[ " $SYSTEMS " == *" ours "* ]]; then
    bench_system ours-reserve "$N" "" "s3"
fi
if has n30 && [ -n "$N30_SYSTEMS" ]; then
    for s in $N30_SYSTEMS; do
        if [[ " $SYSTEMS " == *" $s "* ]] || [ "$s" = ours ]; then
            bench_system "$s" 30 "$N30_CONCS" "s1"
        fi
    done
fi
if has s5; then s5_overhead; fi
if has s6; then s6_memory; fi
log "measurements done in $((SECONDS - T0)) s; writing the report"
foreign=$(busy_elsewhere)
if [ -n "$foreign" ]; then note "other processes using the CPU at the end of the run: ${foreign%; }"; fi

make_plots
make_report
log "results: $OUT/results.md"
