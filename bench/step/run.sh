#!/usr/bin/env bash
# Step overload benchmark (issue 4, "Bench"): open-loop load at 0.8x capacity, a step to 5x for a
# while, then back to 0.8x, against the catalog service under several overload controls.
#
# Usage: bench/step/run.sh [quick|full]
#   quick: 3 s @128/s, 5 s @800/s, 5 s @128/s; fifo codel adaptive_lifo aimd codel_deadline; 1 rep
#          (about 4 min)
#   full:  5 s @128/s, 10 s @800/s, 10 s @128/s; the same plus aimd_codel and fifo_deadline;
#          3 reps (about 15 min)
# Capacity = N / service time = 8 / 50 ms = 160 req/s; 128/s = 0.8x, 800/s = 5x.
#
# Variants: bench/step/config/<variant>.yaml; a variant whose name contains "deadline" gets
# stepgen --header "X-Request-Timeout: 1s". Each run: start examples/catalog_service (Release,
# built here in build-step) on 127.0.0.1, wait for /health, open PRECONNECT idle keep-alive
# connections, run the profile with bench/step/stepgen (open loop, latency from the scheduled
# send time), stop the server. /stats (dbMaxInFlight <= N) and /metrics (outcome counts) are read
# before and after, on the server's admin listener (admin: in the variant's config, port
# STEP_ADMIN_PORT); the limit, permits in use and waiters are sampled every 0.5 s.
#
# Output: bench/step/out/<timestamp>/
#   summary.md        per-phase table of every variant, ratios vs fifo, recovery, targets, checks
#   summary.csv       every stepgen summary row (variant, rep, phase) + the medians (rep=median)
#   csv/              per run: <v>-r<k>.buckets.csv (100 ms buckets), .summary.csv, .gauges.csv
#   plots/            timeline.png (served p99 + goodput over time, all variants), useful.png
#                     (goodput and useful goodput in the step, per variant), gauges.png
#   raw/, logs/, server/   per-request CSVs, stepgen/server logs, /stats and /metrics snapshots
#   anomalies.md      what our server must not do (crash, hang, > N in flight, bad outcome headers)
#
# Before every load run the script waits (polling every 20 s, at most WAIT_OTHER s) until no
# bench/run.sh is running, so two benchmarks never share the machine's 2 cores; a run during
# which bench/run.sh started is discarded and run again (at most 3 attempts).
#
# Settings (environment; the mode sets the defaults): VARIANTS REPS PRE STEP POST BASE_RPS STEP_RPS
#   N DB_MS MAX_CONNS PRECONNECT TIMEOUT USEFUL DEADLINE_HEADER ARRIVALS(uniform|poisson) SEED
#   PORT_BASE PIN(=1: stepgen on CPU 0, server on CPU 1) BUILD(build dir, default build-step)
#   NO_BUILD(=1: use the binaries already in BUILD) WAIT_OTHER(s, 1800)
#   REPORT_ONLY=bench/step/out/<timestamp>: only rebuild summary.*, plots of that earlier run
set -euo pipefail

STEP_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(git -C "$STEP_DIR" rev-parse --show-toplevel)
MODE=${1:-quick}
case "$MODE" in
    quick|full) ;;
    -h|--help) sed -n '2,37p' "$0"; exit 0 ;;
    *) echo "usage: $0 [quick|full]" >&2; exit 2 ;;
esac

if [ "$MODE" = quick ]; then
    : "${VARIANTS:=fifo codel adaptive_lifo aimd codel_deadline}"
    : "${REPS:=1}" "${PRE:=3}" "${STEP:=5}" "${POST:=5}"
else
    : "${VARIANTS:=fifo codel adaptive_lifo aimd codel_deadline aimd_codel fifo_deadline}"
    : "${REPS:=3}" "${PRE:=5}" "${STEP:=10}" "${POST:=10}"
fi
: "${BASE_RPS:=128}" "${STEP_RPS:=800}" "${N:=8}" "${DB_MS:=50}"
: "${MAX_CONNS:=4000}" "${PRECONNECT:=1200}" "${TIMEOUT:=10s}" "${USEFUL:=1s}"
: "${DEADLINE_HEADER:=X-Request-Timeout: 1s}" "${ARRIVALS:=uniform}" "${SEED:=1}"
: "${PORT_BASE:=19180}" "${PIN:=0}" "${BUILD:=$ROOT/build-step}" "${NO_BUILD:=0}"
: "${WAIT_OTHER:=1800}"
# The admin listener of every variant (admin: in bench/step/config/*.yaml; keep them equal), apart
# from PORT_BASE + i and bench/run.sh's ports. Its POST /stats/reset needs the bearer token of
# token_env QOS_BENCH_ADMIN_TOKEN: loopback only, so a fixed value will do.
STEP_ADMIN_PORT=19199
export QOS_BENCH_ADMIN_TOKEN=${QOS_BENCH_ADMIN_TOKEN:-qos-bench-loopback}

STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$STEP_DIR/out/$STAMP
MEASURE=1
if [ -n "${REPORT_ONLY:-}" ]; then
    MEASURE=0
    # Rebuild summary.csv, summary.md and the plots of an earlier run; nothing is measured.
    OUT=$(cd "$REPORT_ONLY" && pwd)
    # shellcheck disable=SC1091
    . "$OUT/settings.env"
fi
WORK=${TMPDIR:-/tmp}/qos-step
mkdir -p "$OUT/csv" "$OUT/raw" "$OUT/logs" "$OUT/server" "$OUT/plots" "$WORK"
if [ "$MEASURE" = 1 ]; then : > "$OUT/anomalies.md"; : > "$OUT/notes.md"; fi

log() { echo "[step $(date +%H:%M:%S) +${SECONDS}s] $*" >&2; }
note() { echo "- $*" >> "$OUT/notes.md"; log "note: $*"; }
anomaly() { echo "- $*" >> "$OUT/anomalies.md"; log "ANOMALY: $*"; }

CLIENT_PREFIX=() SERVER_PREFIX=()
if [ "$PIN" = 1 ]; then CLIENT_PREFIX=(taskset -c 0) SERVER_PREFIX=(taskset -c 1); fi

# ---- processes: everything started here is stopped here ----------------------------------------
PIDS=()
stop_pid() {  # SIGTERM, up to 8 s, then SIGKILL; returns 1 if it had to SIGKILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 80; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        return 1
    fi
    wait "$pid" 2>/dev/null || true
    return 0
}
cleanup() {
    local p
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && { stop_pid "$p" || true; }; done
    PIDS=()
}
forget() {
    local keep=() p
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && [ "$p" != "$1" ] && keep+=("$p"); done
    PIDS=("${keep[@]:-}")
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" -lt $((MAX_CONNS + 64)) ]; then
    echo "open-files limit $(ulimit -n) < MAX_CONNS + 64; lower MAX_CONNS" >&2
    exit 2
fi

# ---- another benchmark on the machine? ---------------------------------------------------------
wait_quiet() {
    local waited=0
    while pgrep -f "bench/run.sh" > /dev/null; do
        if [ "$waited" -ge "$WAIT_OTHER" ]; then
            log "bench/run.sh still running after ${WAIT_OTHER}s: giving up"
            exit 3
        fi
        [ "$waited" = 0 ] && log "bench/run.sh is running: waiting for it (polling every 20 s, at most ${WAIT_OTHER}s)"
        sleep 20
        waited=$((waited + 20))
    done
    [ "$waited" -gt 0 ] && note "waited ${waited}s for bench/run.sh to finish before a run"
    return 0
}
busy_elsewhere() {
    top -b -n 2 -d 1 -w 200 2>/dev/null | awk '/^top -/ { n++ } n == 2 && $1 ~ /^[0-9]+$/ && $9 + 0 >= 10 { printf "%s (pid %s) %s%% CPU; ", $12, $1, $9 }' || true
}

# ---- build --------------------------------------------------------------------------------------
CATALOG=$BUILD/examples/catalog_service
STEPGEN=$BUILD/bench/stepgen
if [ "$MEASURE" = 0 ]; then
    :
elif [ "$NO_BUILD" = 1 ]; then
    note "NO_BUILD=1: measured the binaries already in $BUILD (catalog_service built $(date -r "$CATALOG" '+%F %T' 2>/dev/null || echo never))"
else
    wait_quiet  # a build takes both cores too
    log "building catalog_service and stepgen (Release) in $BUILD"
    # stepgen is a target of bench/CMakeLists.txt: a build dir configured without the benchmarks
    # (this script's setting before stepgen had a target) is configured again with them.
    if [ ! -f "$BUILD/CMakeCache.txt" ] || grep -q '^QOS_BUILD_BENCH:BOOL=OFF' "$BUILD/CMakeCache.txt"; then
        cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DQOS_BUILD_TESTS=OFF \
            -DQOS_BUILD_BENCH=ON > "$OUT/logs/cmake.log" 2>&1 ||
            { tail -20 "$OUT/logs/cmake.log" >&2; exit 1; }
    fi
    cmake --build "$BUILD" --target catalog_service stepgen -j2 > "$OUT/logs/build.log" 2>&1 ||
        { grep -E 'error|Error' "$OUT/logs/build.log" | head -20 >&2; log "build failed (logs/build.log)"; exit 1; }
fi
if [ "$MEASURE" = 1 ] && { [ ! -x "$CATALOG" ] || [ ! -x "$STEPGEN" ]; }; then
    log "missing $CATALOG or $STEPGEN"
    exit 1
fi

PROFILE=(--phase "${PRE}s@$BASE_RPS" --phase "${STEP}s@$STEP_RPS" --phase "${POST}s@$BASE_RPS")
TOTAL=$((PRE + STEP + POST))
COMMIT=$(git -C "$ROOT" rev-parse HEAD)
DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | wc -l)
[ "$MEASURE" = 0 ] || cat > "$OUT/settings.env" <<EOF
MODE=$MODE
VARIANTS="$VARIANTS"
REPS=$REPS PRE=$PRE STEP=$STEP POST=$POST BASE_RPS=$BASE_RPS STEP_RPS=$STEP_RPS N=$N DB_MS=$DB_MS
MAX_CONNS=$MAX_CONNS PRECONNECT=$PRECONNECT TIMEOUT=$TIMEOUT USEFUL=$USEFUL ARRIVALS=$ARRIVALS SEED=$SEED
DEADLINE_HEADER="$DEADLINE_HEADER" PIN=$PIN
COMMIT="$COMMIT (tracked files modified: $DIRTY)"
NPROC=$(nproc) CPU="$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
MEM="$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)" KERNEL=$(uname -r)
EOF
log "mode $MODE: variants: $VARIANTS; reps $REPS; profile ${PRE}s@$BASE_RPS ${STEP}s@$STEP_RPS ${POST}s@$BASE_RPS; output $OUT"

# ---- one run ------------------------------------------------------------------------------------
metrics_get() {  # URL FILE: "outcome count" lines of route db, plus handler sum/count
    curl -s --max-time 3 "$1/metrics" 2>/dev/null |
        awk '/^qos_requests_total\{route="db"/ { match($0, /outcome="[a-z_]+"/); print substr($0, RSTART + 9, RLENGTH - 10), $NF }
             /^qos_handler_seconds_sum\{route="db"/ { print "handler_sum", $NF }
             /^qos_handler_seconds_count\{route="db"/ { print "handler_count", $NF }' > "$2" || true
}
metrics_delta() {  # BEFORE AFTER KEY
    awk -v k="$3" 'FNR == NR { if ($1 == k) b = $2; next } $1 == k { a = $2 } END { printf "%.0f", a - b }' "$1" "$2"
}
json_num() { grep -o "\"$1\":[0-9]*" "$2" 2>/dev/null | head -1 | cut -d: -f2 || true; }

gauge_sampler() {  # URL FILE: unix time, limit, in use, waiting of group db every 0.5 s
    echo "unix,limit,in_use,waiting" > "$2"
    while :; do
        local t
        t=$(date +%s.%N)
        curl -s --max-time 0.4 "$1/metrics" 2>/dev/null | awk -v t="$t" '
            /^qos_group_limit\{group="db"/ { l = $NF } /^qos_group_in_use\{group="db"/ { u = $NF }
            /^qos_group_waiting\{group="db"/ { w = $NF }
            END { if (l != "") printf "%s,%s,%s,%s\n", t, l, u, w }' >> "$2" || true
        sleep 0.5
    done
}

CHECKS=$OUT/checks.csv
[ "$MEASURE" = 0 ] || echo "variant,rep,client_2xx,srv_admitted,client_fallbacks,srv_fallbacks,client_timeouts,client_errors,client_drops,db_max_inflight,srv_service_ms,server_ok,srv_cpu_s,client_cpu_s,wall_s" > "$CHECKS"
SUMMARY=$OUT/summary.csv

run_variant() {
    local v=$1 rep=$2 port=$3 tag cfg url admin spid gpid lpid
    tag=$v-r$rep
    cfg=$STEP_DIR/config/$v.yaml
    [ -f "$cfg" ] || { log "no config $cfg"; return 1; }
    url=http://127.0.0.1:$port admin=http://127.0.0.1:$STEP_ADMIN_PORT
    wait_quiet
    local foreign
    foreign=$(busy_elsewhere)
    [ -n "$foreign" ] && note "$tag: other processes were using the CPU before the run: ${foreign%; }"

    log "$tag: starting catalog_service on port $port"
    "${SERVER_PREFIX[@]}" "$CATALOG" --config "$cfg" --port "$port" --db "$WORK/catalog.db" \
        --db-latency-ms "$DB_MS" > "$OUT/logs/$tag.server.log" 2>&1 &
    spid=$!
    PIDS+=("$spid")
    local i ready=0
    for ((i = 0; i < 120; i++)); do
        kill -0 "$spid" 2>/dev/null || break
        if curl -s -o /dev/null --max-time 1 "$url/health" &&
           curl -s -o /dev/null --max-time 1 "$admin/healthz"; then ready=1; break; fi
        sleep 0.25
    done
    if [ "$ready" != 1 ]; then
        anomaly "$tag: catalog_service not ready within 30 s or exited at start (logs/$tag.server.log: $(tail -3 "$OUT/logs/$tag.server.log" | tr '\n' ' '))"
        stop_pid "$spid" || true
        forget "$spid"
        return 1
    fi
    curl -s -o /dev/null --max-time 2 -X POST -H "Authorization: Bearer $QOS_BENCH_ADMIN_TOKEN" \
        "$admin/stats/reset" || true
    metrics_get "$admin" "$OUT/server/$tag.metrics0"

    gauge_sampler "$admin" "$OUT/csv/$tag.gauges.raw" &
    gpid=$!
    PIDS+=("$gpid")

    local hdr=()
    [[ "$v" == *deadline* ]] && hdr=(--header "$DEADLINE_HEADER")
    local bound
    bound=$((TOTAL + 10 + ${TIMEOUT%s} + 15))
    log "$tag: load ${PRE}s@$BASE_RPS ${STEP}s@$STEP_RPS ${POST}s@$BASE_RPS ${hdr[*]:-}"
    "${CLIENT_PREFIX[@]}" timeout -k 5 "$bound" "$STEPGEN" --url "$url/db" "${PROFILE[@]}" \
        --max-conns "$MAX_CONNS" --preconnect "$PRECONNECT" --timeout "$TIMEOUT" --useful "$USEFUL" \
        --arrivals "$ARRIVALS" --seed "$SEED" --label "$v" "${hdr[@]}" \
        --csv "$OUT/csv/$tag.buckets.csv" --summary "$OUT/csv/$tag.summary.csv" \
        --raw "$OUT/raw/$tag.requests.csv" > "$OUT/logs/$tag.stepgen.txt" 2>&1 &
    lpid=$!
    PIDS+=("$lpid")
    local lrc=0
    wait "$lpid" || lrc=$?
    forget "$lpid"
    stop_pid "$gpid" || true
    forget "$gpid"
    sed 's/^/    /' "$OUT/logs/$tag.stepgen.txt" >&2
    [ "$lrc" = 0 ] || anomaly "$tag: stepgen exited with status $lrc (logs/$tag.stepgen.txt)"

    # What our server must not do: die, hang, exceed N queries at once, mislabel answers.
    local alive=1 answers=1
    kill -0 "$spid" 2>/dev/null || { alive=0; anomaly "$tag: catalog_service exited during the run (logs/$tag.server.log)"; }
    if [ "$alive" = 1 ] && ! curl -s -o /dev/null --max-time 2 "$url/health"; then
        answers=0
        anomaly "$tag: catalog_service does not answer /health after the run (hang?)"
    fi
    curl -s --max-time 3 "$admin/stats" > "$OUT/server/$tag.stats.json" 2>/dev/null || true
    metrics_get "$admin" "$OUT/server/$tag.metrics1"
    local maxin srvcpu
    maxin=$(json_num dbMaxInFlight "$OUT/server/$tag.stats.json")
    srvcpu=$(awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$spid/stat" 2>/dev/null || true)
    if [ -n "$maxin" ] && [ "$maxin" -gt "$N" ]; then anomaly "$tag: dbMaxInFlight $maxin > N=$N"; fi
    if ! stop_pid "$spid"; then anomaly "$tag: catalog_service did not exit within 8 s of SIGTERM (killed)"; fi
    forget "$spid"

    # t0 of the schedule, to put the gauges on the same time axis as the buckets.
    local t0
    t0=$(grep -o 't0_unix=[0-9.]*' "$OUT/logs/$tag.stepgen.txt" | cut -d= -f2 || true)
    echo "t_s,limit,in_use,waiting" > "$OUT/csv/$tag.gauges.csv"
    [ -n "$t0" ] && awk -F, -v t0="$t0" 'NR > 1 { printf "%.3f,%s,%s,%s\n", $1 - t0, $2, $3, $4 }' \
        "$OUT/csv/$tag.gauges.raw" >> "$OUT/csv/$tag.gauges.csv"
    rm -f "$OUT/csv/$tag.gauges.raw"

    local s="$OUT/csv/$tag.summary.csv"
    [ -s "$s" ] || { anomaly "$tag: no stepgen summary"; return 1; }
    # Another benchmark started while this one ran: both are skewed; this run is not kept.
    if pgrep -f "bench/run.sh" > /dev/null; then
        note "$tag: bench/run.sh started during the run: result moved to disturbed/, run again when it is done"
        mkdir -p "$OUT/disturbed"
        mv "$OUT"/csv/"$tag".* "$OUT/disturbed/" 2>/dev/null || true
        DISTURBED=1
        return 0
    fi

    # Client vs server accounting (row "all" of the summary).
    local m0=$OUT/server/$tag.metrics0 m1=$OUT/server/$tag.metrics1
    local row c2 cfb ctmo cerr cdrop a2 afb=0 o d svc
    row=$(awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next } $c["phase"] == "all" {
            fb = $c["s503"] + $c["s4xx"] + $c["s5xx_other"] + $c["other_status"]
            printf "%s %s %s %s %s %s %s %s", $c["s2xx"], fb, $c["timeouts"], $c["conn_errors"] + $c["lost"], $c["drops"],
                $c["anom_2xx_with_outcome"], $c["anom_fallback_without_outcome"], $c["anom_unknown_outcome"] }' "$s")
    read -r c2 cfb ctmo cerr cdrop an1 an2 an3 <<< "$row"
    a2=$(metrics_delta "$m0" "$m1" admitted)
    for o in queue_full timeout client_gone shutdown rejected error shed deadline predicted_timeout exec_timeout; do
        d=$(metrics_delta "$m0" "$m1" "$o")
        afb=$((afb + ${d:-0}))
    done
    svc=$(awk -v s="$(metrics_delta "$m0" "$m1" handler_sum)" -v n="$(metrics_delta "$m0" "$m1" handler_count)" \
        'BEGIN { if (n > 0) printf "%.1f", s / n * 1000 }')
    local ccpu wall
    ccpu=$(grep -o 'cpu_s=[0-9.]*' "$OUT/logs/$tag.stepgen.txt" | cut -d= -f2 || true)
    wall=$(grep -o 'wall_s=[0-9.]*' "$OUT/logs/$tag.stepgen.txt" | cut -d= -f2 || true)
    echo "$v,$rep,$c2,$a2,$cfb,$afb,$ctmo,$cerr,$cdrop,$maxin,$svc,$alive$answers,$srvcpu,$ccpu,$wall" >> "$CHECKS"
    if [ "$((an1 + an2 + an3))" -gt 0 ]; then
        anomaly "$tag: outcome headers: $an1 2xx with a fallback X-QoS-Outcome, $an2 non-2xx without one, $an3 unknown values (logs/$tag.stepgen.txt)"
    fi
    # Every answer the client got is one the server counted; client timeouts/errors may differ.
    if [ "$ctmo" = 0 ] && [ "$cerr" = 0 ] && { [ "$c2" != "$a2" ] || [ "$cfb" != "$afb" ]; }; then
        anomaly "$tag: client saw $c2 2xx and $cfb fallbacks, the server counted $a2 admitted and $afb fallbacks"
    fi
    sleep 1
}

rep=1
[ "$MEASURE" = 1 ] || rep=$((REPS + 1))
while [ "$rep" -le "$REPS" ]; do
    idx=0
    for v in $VARIANTS; do
        for _ in 1 2 3; do  # a run disturbed by bench/run.sh is repeated, at most 3 attempts
            DISTURBED=0
            run_variant "$v" "$rep" $((PORT_BASE + idx)) || log "$v-r$rep: run failed"
            [ "$DISTURBED" = 1 ] || break
        done
        idx=$((idx + 1))
    done
    rep=$((rep + 1))
done

# ---- summary: medians over reps ------------------------------------------------------------------
: > "$SUMMARY.tmp"
rm -f "$SUMMARY.hdr"
for v in $VARIANTS; do
    for ((k = 1; k <= REPS; k++)); do
        s=$OUT/csv/$v-r$k.summary.csv
        [ -s "$s" ] || continue
        awk -F, -v v="$v" -v r="$k" 'NR > 1 { print v "," r "," $0 }' "$s" >> "$SUMMARY.tmp"
        [ -s "$SUMMARY.hdr" ] || head -1 "$s" | sed 's/^/variant,rep,/' > "$SUMMARY.hdr"
    done
done
[ -s "$SUMMARY.hdr" ] || { log "no results"; exit 1; }
{
    cat "$SUMMARY.hdr"
    cat "$SUMMARY.tmp"
    # median per (variant, phase) of every column; ">x" (not recovered) sorts last
    awk -F, -v order="$VARIANTS" '
        function num(x) { if (x ~ /^>/) return 1e9 + substr(x, 2); if (x == "" || x == "none") return 2e9; return x + 0 }
        function med(k, c, n,   i, j, t, a, m) {
            for (i = 1; i <= n; i++) a[i] = V[k, c, i]
            for (i = 2; i <= n; i++) { t = a[i]; j = i - 1
                while (j >= 1 && num(a[j]) > num(t)) { a[j + 1] = a[j]; j-- }
                a[j + 1] = t }
            if (n % 2) return a[(n + 1) / 2]
            m = a[n / 2]; t = a[n / 2 + 1]
            if (m ~ /^[0-9.]+$/ && t ~ /^[0-9.]+$/) return sprintf("%.4g", (m + t) / 2)
            return t
        }
        { k = $1 SUBSEP $4
          if (!(k in cnt)) { nk++; kv[nk] = $1; kp[nk] = $4; kl[nk] = $3; kk[nk] = k }
          cnt[k]++
          for (c = 5; c <= NF; c++) V[k, c, cnt[k]] = $c
          if (NF > nf) nf = NF }
        END { nv = split(order, ord, " ")
              for (o = 1; o <= nv; o++) for (i = 1; i <= nk; i++) if (kv[i] == ord[o]) {
                  k = kk[i]; line = kv[i] ",median," kl[i] "," kp[i]
                  for (c = 5; c <= nf; c++) line = line "," med(k, c, cnt[k])
                  print line } }
    ' "$SUMMARY.tmp"
} > "$SUMMARY"
rm -f "$SUMMARY.tmp" "$SUMMARY.hdr"

# ---- summary.md -----------------------------------------------------------------------------------
REPORT=$OUT/summary.md
awk -F, -v pre="$PRE" -v step="$STEP" -v post="$POST" -v reps="$REPS" -v useful="$USEFUL" -v order="$VARIANTS" '
    NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
    $2 != "median" { if ($4 == "1") { u = $c["useful_rps"]; if (!($1 in umin) || u < umin[$1]) umin[$1] = u
                                      if (!($1 in umax) || u > umax[$1]) umax[$1] = u }
                     if ($4 == "2") { r = $c["recovery_s"]; rr = (r ~ /^>/) ? 1e9 : r + 0
                                      if (!($1 in rmax) || rr > rmaxv[$1]) { rmax[$1] = r; rmaxv[$1] = rr } }
                     next }
    { row[$1, $4] = $0 }
    END {
        nv = split(order, ord, " ")
        names["0"] = "pre (" pre " s)"; names["1"] = "step (" step " s)"; names["2"] = "post (" post " s)"
        printf "### Per phase (median of %d run(s))\n\n", reps
        print "A phase row covers the phase'"'"'s wall-clock window: offered by scheduled send time; goodput, latency, useful goodput, fallbacks, timeouts and errors by completion time (what the server delivered in that window). Latency is measured from the scheduled send (open loop, no coordinated omission). Useful = 2xx answered within " useful " of its scheduled send. Recovery = time from the step end until the p99 of the 2xx completed per 100 ms bucket stays <= 1.2x the pre-step p99 for 1 s (first bucket: the first such bucket alone).\n"
        print "| variant | phase | offered/s | goodput 2xx/s | p50 ms | p99 ms | max ms | useful/s (2xx <= " useful ") | fallbacks (503 by X-QoS-Outcome) | timeouts / errors / drops |"
        print "|---|---|---:|---:|---:|---:|---:|---:|---|---|"
        split("queue_full timeout shed deadline predicted_timeout rejected client_gone error exec_timeout shutdown", fbn, " ")
        for (o = 1; o <= nv; o++) {
            v = ord[o]
            for (p = 0; p <= 2; p++) {
                if (!((v, p) in row)) continue
                split(row[v, p], f, ",")
                fb = ""
                for (k = 1; k <= 10; k++) { n = f[c["fb_" fbn[k]]]; if (n + 0 > 0) fb = fb (fb == "" ? "" : ", ") fbn[k] " " n }
                if (f[c["fb_none"]] + 0 > 0) fb = fb ", none " f[c["fb_none"]]
                if (fb == "") fb = "-"
                printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s / %s |\n", (p == 0 ? v : ""), names[p],
                    f[c["rate"]], f[c["goodput_rps"]], f[c["ok_p50_ms"]], f[c["ok_p99_ms"]], f[c["ok_max_ms"]],
                    f[c["useful_rps"]], fb, f[c["timeouts"]], f[c["conn_errors"]] + f[c["lost"]], f[c["drops"]]
            }
        }
        printf "\n### Under 5x overload, vs fifo (median; useful goodput min..max over runs)\n\n"
        print "| variant | useful goodput/s in step | x fifo | goodput/s in step | p99 served in step ms | recovery after the step s (first bucket) | worst recovery over runs | useful >= 1.5x fifo | recovery <= 1 s |"
        print "|---|---:|---:|---:|---:|---:|---:|---|---|"
        split(row["fifo", 1], ff, ","); fu = ff[c["useful_rps"]] + 0
        for (o = 1; o <= nv; o++) {
            v = ord[o]
            if (!((v, 1) in row)) continue
            split(row[v, 1], f, ","); split(row[v, 2], g, ",")
            u = f[c["useful_rps"]] + 0
            ratio = (fu > 0) ? sprintf("%.2f", u / fu) : (u > 0 ? "inf (fifo 0)" : "-")
            rec = g[c["recovery_s"]]; recw = rmax[v]
            recok = (recw !~ /^>/ && recw != "" && recw + 0 <= 1.0) ? "yes" : (rec !~ /^>/ && rec != "" && rec + 0 <= 1.0) ? "median only" : "no"
            uok = (v == "fifo") ? "-" : ((fu > 0 && u >= 1.5 * fu) || (fu == 0 && u > 0)) ? "yes" : "no"
            printf "| %s | %s (%s..%s) | %s | %s | %s | %s (%s) | %s | %s | %s |\n", v, f[c["useful_rps"]], umin[v], umax[v], ratio,
                f[c["goodput_rps"]], f[c["ok_p99_ms"]], rec, g[c["recovery_first_s"]], recw, uok, recok
        }
        printf "\nBaseline p99 (phase pre, first second left out), per variant: "
        for (o = 1; o <= nv; o++) { v = ord[o]; if ((v, 0) in row) { split(row[v, 0], f, ","); printf "%s %s ms; ", v, f[c["base_p99_ms"]] } }
        printf "\n"
    }' "$SUMMARY" > "$REPORT"
{
    echo
    echo "### Checks (client vs server accounting, dbMaxInFlight <= $N, server alive and answering)"
    echo
    echo '```'
    column -s, -t < "$CHECKS" 2>/dev/null || cat "$CHECKS"
    echo '```'
    echo
    if [ -s "$OUT/anomalies.md" ]; then echo "### ANOMALIES"; echo; cat "$OUT/anomalies.md"; else echo "No anomalies."; fi
    if [ -s "$OUT/notes.md" ]; then echo; echo "### Notes"; echo; cat "$OUT/notes.md"; fi
    echo
    echo "Settings:"
    echo
    echo '```'
    cat "$OUT/settings.env"
    echo '```'
} >> "$REPORT"

# ---- plots ------------------------------------------------------------------------------------------
if command -v gnuplot > /dev/null; then
    colors=('#1f77b4' '#d62728' '#2ca02c' '#ff7f0e' '#9467bd' '#8c564b' '#e377c2' '#17becf')
    p99cmd="" gpcmd="" ugcmd="" limcmd="" waitcmd="" i=0
    for v in $VARIANTS; do
        f=$OUT/csv/$v-r1.buckets.csv g=$OUT/csv/$v-r1.gauges.csv sm=$OUT/plots/$v-r1.smooth.dat
        [ -s "$f" ] || continue
        # goodput and useful goodput over 500 ms (5 buckets, centred): 100 ms buckets of a
        # 128/s schedule alternate 12 and 13 answers
        awk -F, 'NR > 1 { t[++n] = $2; ok[n] = $8; us[n] = $13 }
            END { for (i = 1; i <= n; i++) { a = 0; b = 0; k = 0
                      for (j = i - 2; j <= i + 2; j++) if (j >= 1 && j <= n) { a += ok[j]; b += us[j]; k++ }
                      printf "%s,%.1f,%.1f\n", t[i] + 0.05, a / k * 10, b / k * 10 } }' "$f" > "$sm"
        col=${colors[$((i % ${#colors[@]}))]}
        p99cmd+="${p99cmd:+, }'$f' using (\$2 + 0.05):(\$17 > 0 ? \$17 : 1/0) with lines lw 1.5 lc rgb '$col' title '$v'"
        gpcmd+="${gpcmd:+, }'$sm' using 1:2 with lines lw 1.5 lc rgb '$col' title '$v'"
        ugcmd+="${ugcmd:+, }'$sm' using 1:3 with lines lw 1.5 lc rgb '$col' title '$v'"
        if [ -s "$g" ]; then
            limcmd+="${limcmd:+, }'$g' using 1:2 with steps lw 1.5 lc rgb '$col' title '$v limit', '$g' using 1:3 with points pt 7 ps 0.5 lc rgb '$col' notitle"
            waitcmd+="${waitcmd:+, }'$g' using 1:(\$4 > 0 ? \$4 : 0.5) with steps lw 1.5 lc rgb '$col' title '$v'"
        fi
        i=$((i + 1))
    done
    xmax=$((TOTAL + 1))
    gnuplot > "$OUT/logs/gnuplot.log" 2>&1 <<EOF || log "gnuplot failed (logs/gnuplot.log)"
set datafile separator ','
set terminal pngcairo size 1200,1100 font 'sans,10' noenhanced
set output '$OUT/plots/timeline.png'
set multiplot layout 3,1 title "Step overload, open loop: ${BASE_RPS}/s (0.8x) -> ${STEP_RPS}/s (5x capacity) for ${STEP} s (grey) -> ${BASE_RPS}/s. Run 1 of each variant."
set object 1 rect from $PRE, graph 0 to $((PRE + STEP)), graph 1 behind fc rgb '#e8e8e8' fs solid noborder
set xrange [0:$xmax]
set grid
set key outside right
set logscale y
set yrange [20:3000]
set ylabel 'served p99 per 100 ms (ms)'
set title 'p99 latency of the 2xx completed in each 100 ms bucket, from the scheduled send'
plot $p99cmd, 1000 with lines dt 2 lc rgb 'black' title '1 s'
unset logscale y
set yrange [0:200]
set ylabel 'goodput (2xx / s)'
set title 'goodput: 2xx completed per second (500 ms moving average)'
plot $gpcmd, 160 with lines dt 2 lc rgb 'black' title 'capacity 160/s'
set ylabel 'useful goodput (/ s)'
set xlabel 'time since the schedule start (s)'
set title 'useful goodput: 2xx answered within $USEFUL of the scheduled send, per second (500 ms moving average)'
plot $ugcmd, 160 with lines dt 2 lc rgb 'black' title 'capacity 160/s'
unset multiplot
EOF
    if [ -n "$limcmd" ]; then
        gnuplot >> "$OUT/logs/gnuplot.log" 2>&1 <<EOF || log "gnuplot failed (logs/gnuplot.log)"
set datafile separator ','
set terminal pngcairo size 1200,800 font 'sans,10' noenhanced
set output '$OUT/plots/gauges.png'
set multiplot layout 2,1 title "Group db from /metrics, sampled every 0.5 s; run 1 of each variant"
set object 1 rect from $PRE, graph 0 to $((PRE + STEP)), graph 1 behind fc rgb '#e8e8e8' fs solid noborder
set xrange [0:$xmax]
set grid
set key outside right
set yrange [0:*]
set ylabel 'permits'
set title 'concurrency limit (line) and permits in use (dots)'
plot $limcmd
set logscale y
set yrange [0.5:*]
set ylabel 'waiting'
set xlabel 'time since the schedule start (s)'
set title 'requests waiting for a permit (0 drawn at 0.5)'
plot $waitcmd
unset multiplot
EOF
    fi
    # bars: goodput and useful goodput in the step (median over runs)
    awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next } $2 == "median" && $4 == "1" { print $1, $c["goodput_rps"], $c["useful_rps"] }' \
        "$SUMMARY" > "$OUT/plots/useful.dat"
    gnuplot >> "$OUT/logs/gnuplot.log" 2>&1 <<EOF || log "gnuplot failed (logs/gnuplot.log)"
set terminal pngcairo size 1000,520 font 'sans,10' noenhanced
set output '$OUT/plots/useful.png'
set title "During the ${STEP} s at ${STEP_RPS}/s (5x capacity): goodput and useful goodput (2xx within $USEFUL of the scheduled send); median of $REPS run(s)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set yrange [0:200]
set grid ytics
set key top center horizontal
set ylabel 'requests / s'
plot '$OUT/plots/useful.dat' using 2:xtic(1) title 'goodput (2xx/s)' lc rgb '#9ecae1', '' using 3 title 'useful goodput (/s)' lc rgb '#08519c', '' using (\$0 + 0.18):(\$3 + 6):(sprintf('%.0f', \$3)) with labels notitle, 160 with lines dt 2 lc rgb 'black' title 'capacity 160/s'
EOF
fi

log "done: $REPORT"
cat "$REPORT"
