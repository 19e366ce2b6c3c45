# Sourced by bench/run.sh: logging, builds, process control, the load client wrapper and the
# systems under test. Expects BENCH, ROOT, OUT, WORK, BUILD and the settings of run.sh.
# shellcheck disable=SC2034  # the PORT_* and RESTARTED globals are read by run.sh

log() { echo "[bench $(date +%H:%M:%S) +$((SECONDS))s] $*" >&2; }

anomaly() {  # something our server must not do; recorded, shown in results.md, run goes on
    log "ANOMALY: $*"
    echo "- $*" >> "$OUT/anomalies.md"
}

# ---------------------------------------------------------------------------------------------
# Builds (Release, separate build dir). The load client is the loadgen target of
# bench/CMakeLists.txt; the overhead server uses its target there when it exists, else it is
# compiled by hand against the static libraries of the same build.

# compile flags of the qos targets, read from the build's compile_commands.json
qos_cxxflags() {
    local cmd
    cmd=$(grep -o '"command": "[^"]*catalog_service.cpp[^"]*"' "$BUILD/compile_commands.json" | head -1 || true)
    # keep the -D flags, drop everything else (includes and outputs are given explicitly)
    echo "$cmd" | tr ' ' '\n' | grep '^-D' | grep -v '^-DNDEBUG$' | tr '\n' ' '
}

build_all() {
    local jobs
    jobs=$(nproc)
    CATALOG=$BUILD/examples/catalog_service
    LOADGEN=$BUILD/bench/loadgen
    if [ "${NO_BUILD:-0}" = 1 ]; then
        # measure the binaries already built (say so in the report)
        note "NO_BUILD=1: used the existing binaries in $BUILD (catalog_service built $(date -r "$CATALOG" '+%F %T' 2>/dev/null || echo never))"
        OVERHEAD=$(find "$BUILD" -type f -name overhead_server -perm -u+x | head -1)
        [ -x "$CATALOG" ] && [ -x "$LOADGEN" ] && [ -n "$OVERHEAD" ] && return 0
        log "NO_BUILD=1 but $CATALOG, $LOADGEN or overhead_server is missing"
        return 1
    fi
    # loadgen needs the benchmark targets (Google Benchmark stays optional: S7 only); a build dir
    # configured without them is configured again.
    if [ ! -f "$BUILD/CMakeCache.txt" ] || grep -q '^QOS_BUILD_BENCH:BOOL=OFF' "$BUILD/CMakeCache.txt"; then
        log "configuring Release build in $BUILD"
        cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DQOS_BUILD_TESTS=OFF \
            -DQOS_BUILD_BENCH=ON > "$OUT/logs/cmake.log" 2>&1 ||
            { tail -20 "$OUT/logs/cmake.log" >&2; return 1; }
    fi
    log "building catalog_service (Release)"
    make -C "$BUILD" -j"$jobs" catalog_service > "$OUT/logs/build.log" 2>&1 ||
        { grep -E 'error|Error' "$OUT/logs/build.log" | head -20 >&2; log "build failed (logs/build.log); NO_BUILD=1 measures the binaries already built"; return 1; }

    log "building loadgen"
    make -C "$BUILD" -j"$jobs" loadgen >> "$OUT/logs/build.log" 2>&1 ||
        { tail -30 "$OUT/logs/build.log" >&2; return 1; }

    if make -C "$BUILD" -j"$jobs" overhead_server >> "$OUT/logs/build.log" 2>&1; then
        OVERHEAD=$(find "$BUILD" -type f -name overhead_server -perm -u+x | head -1)
    fi
    if [ -z "${OVERHEAD:-}" ]; then
        mkdir -p "$BUILD/bench-tools"
        OVERHEAD=$BUILD/bench-tools/overhead_server
        local libs="" l
        for l in qos qos_admission qos_fiber qos_core qos_config; do
            libs="$libs $(find "$BUILD" -name "lib$l.a" | head -1)"
        done
        if [ ! -x "$OVERHEAD" ] || [ "$BENCH/overhead_server.cpp" -nt "$OVERHEAD" ] ||
           [ -n "$(find "$BUILD" -name 'libqos*.a' -newer "$OVERHEAD" | head -1)" ]; then
            log "compiling overhead_server by hand (no CMake target yet)"
            # shellcheck disable=SC2046,SC2086
            g++ -std=c++20 -O3 -DNDEBUG $(qos_cxxflags) -Wall -Wextra -Wpedantic \
                -I"$ROOT/include" -o "$OVERHEAD" "$BENCH/overhead_server.cpp" $libs \
                -lpistache -lboost_fiber -lboost_context -lyaml-cpp -lspdlog -lfmt -pthread \
                >> "$OUT/logs/build.log" 2>&1 || { tail -30 "$OUT/logs/build.log" >&2; return 1; }
        fi
    fi
}

# ---------------------------------------------------------------------------------------------
# Processes. Every process started here is recorded and stopped by stop_all (trap in run.sh).

ALL_PIDS=()   # everything still running that we started
SYS_PIDS=()   # the processes of the system under test now

start_bg() {   # start_bg LOGNAME CMD...   (server prefix applied; the peers' scripts exec)
    "${SERVER_PREFIX[@]}" "${@:2}" >> "$OUT/logs/$1.log" 2>&1 &
    local pid=$!
    ALL_PIDS+=("$pid")
    SYS_PIDS+=("$pid")
}

STOP_GRACE=${STOP_GRACE:-8}   # seconds between SIGTERM and SIGKILL
KILLED=0                      # set to 1 when stop_pid had to SIGKILL

stop_pid() {   # SIGTERM, up to STOP_GRACE s, then SIGKILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_GRACE * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid did not stop within $STOP_GRACE s of SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        KILLED=1
    fi
    wait "$pid" 2>/dev/null || true
}

stop_all() {
    local p
    for p in "${ALL_PIDS[@]:-}"; do [ -n "$p" ] && stop_pid "$p"; done
    ALL_PIDS=()
    SYS_PIDS=()
}

forget_pids() {   # drop the given pids from ALL_PIDS
    local keep=() p q drop
    for p in "${ALL_PIDS[@]:-}"; do
        drop=0
        for q in "$@"; do [ "$p" = "$q" ] && drop=1; done
        [ -n "$p" ] && [ $drop -eq 0 ] && keep+=("$p")
    done
    ALL_PIDS=("${keep[@]:-}")
}

wait_ready() {   # wait_ready URL SECONDS
    local i
    for ((i = 0; i < $2 * 4; i++)); do
        curl -s -o /dev/null --max-time 1 "$1" && return 0
        sleep 0.25
    done
    log "not ready after $2 s: $1"
    return 1
}

# ---------------------------------------------------------------------------------------------
# Systems under test. sys_start NAME N sets SYS_NAME SYS_N SYS_URL SYS_PIDS; sys_stop stops it.

PORT_OURS=19080 PORT_NAIVE=19081 PORT_PARK=19082 PORT_OVERHEAD=19090
# The admin listeners of our systems (admin: in bench/config/*.yaml, keep the ports equal): they
# serve /stats, /metrics and POST /stats/reset, with the bearer token of token_env
# QOS_BENCH_ADMIN_TOKEN. Loopback only, so a fixed value will do; the server refuses to start
# without it. SYS_ADMIN_URL is empty for the peers, whose /stats is on their public port.
PORT_ADMIN=19083 PORT_PARK_ADMIN=19084
export QOS_BENCH_ADMIN_TOKEN=${QOS_BENCH_ADMIN_TOKEN:-qos-bench-loopback}

sys_start() {
    local name=$1 n=$2 cfg
    SYS_NAME=$name SYS_N=$n SYS_PIDS=() SYS_ADMIN_URL=
    case "$name" in
        ours)
            cfg=$BENCH/config/qos-n$n.yaml
            [ -f "$cfg" ] || { log "no $cfg"; return 1; }
            start_bg "$name-n$n" "$CATALOG" --config "$cfg" --port $PORT_OURS \
                --db "$WORK/catalog.db" --db-latency-ms "$DB_MS" --db-time "$DB_TIME"
            SYS_URL=http://127.0.0.1:$PORT_OURS SYS_ADMIN_URL=http://127.0.0.1:$PORT_ADMIN ;;
        ours-reserve)
            # S3 only: the same with one permit kept for high priority (groups[].reserve)
            cfg=$BENCH/config/qos-n$n-reserve.yaml
            [ -f "$cfg" ] || { log "no $cfg"; return 1; }
            start_bg "$name-n$n" "$CATALOG" --config "$cfg" --port $PORT_OURS \
                --db "$WORK/catalog.db" --db-latency-ms "$DB_MS" --db-time "$DB_TIME"
            SYS_URL=http://127.0.0.1:$PORT_OURS SYS_ADMIN_URL=http://127.0.0.1:$PORT_ADMIN ;;
        ours-naive)
            start_bg "$name" "$CATALOG" --config "$BENCH/config/qos-n$n.yaml" --port $PORT_NAIVE \
                --db "$WORK/catalog.db" --db-latency-ms "$DB_MS" --db-time "$DB_TIME" --naive
            SYS_URL=http://127.0.0.1:$PORT_NAIVE SYS_ADMIN_URL=http://127.0.0.1:$PORT_ADMIN ;;
        jetty-qos)   start_bg "$name-n$n" "$PEERS/jetty-qos/run.sh" qos 18081 "$n";   SYS_URL=http://127.0.0.1:18081 ;;
        jetty-naive) start_bg "$name" "$PEERS/jetty-qos/run.sh" naive 18082 "$n";     SYS_URL=http://127.0.0.1:18082 ;;
        jetty-pool)  start_bg "$name-n$n" "$PEERS/jetty-qos/run.sh" pool 18083 "$n";  SYS_URL=http://127.0.0.1:18083 ;;
        haproxy)
            start_bg "haproxy-backend" "$PEERS/jetty-qos/run.sh" naive 18084 "$n"
            wait_ready http://127.0.0.1:18084/cache 180 || return 1
            start_bg "haproxy-n$n" "$PEERS/haproxy/run.sh" 18085 18084 "$n"
            SYS_URL=http://127.0.0.1:18085 ;;
        *) log "unknown system $name"; return 1 ;;
    esac
    # the first start of a peer installs packages and compiles: allow for it
    wait_ready "$SYS_URL/cache" 180 || return 1
    if [ -n "$SYS_ADMIN_URL" ]; then wait_ready "$SYS_ADMIN_URL/healthz" 10 || return 1; fi
    local p
    for p in "${SYS_PIDS[@]}"; do
        kill -0 "$p" 2>/dev/null || { log "$name: process $p died at start"; return 1; }
    done
}

sys_stop() {
    local p
    # a naive server whose reactors are blocked by abandoned requests does not stop on SIGTERM
    local STOP_GRACE=$STOP_GRACE
    if [ "$SYS_NAME" = ours-naive ]; then STOP_GRACE=2; fi
    KILLED=0
    for p in "${SYS_PIDS[@]:-}"; do [ -n "$p" ] && stop_pid "$p"; done
    if [ "$KILLED" = 1 ] && { [ "$SYS_NAME" = ours ] || [ "$SYS_NAME" = ours-park ] || [ "$SYS_NAME" = overhead ]; }; then
        anomaly "$SYS_NAME (N=$SYS_N) did not exit within $STOP_GRACE s of SIGTERM; killed (log: logs/$SYS_NAME*.log)"
    fi
    forget_pids "${SYS_PIDS[@]:-}"
    SYS_PIDS=()
}

sys_is_ours() { [ "$SYS_NAME" = ours ]; }

pid_args() {   # --pid for every process of the system (haproxy: proxy and backend)
    local p
    for p in "${SYS_PIDS[@]}"; do printf -- '--pid %s ' "$p"; done
}

# After a run: give the system PAUSE s, then check that /cache answers. A naive server may
# still be working through requests of connections that are gone; restart it then, so the next
# run starts clean. Sets RESTARTED=1 if it restarted the system (2 if that failed), else 0.
# Not to be called in a subshell: it changes SYS_PIDS.
settle() {
    local i
    RESTARTED=0
    sleep "$PAUSE"
    for ((i = 0; i < 4; i++)); do
        curl -s -o /dev/null --max-time 1 "$SYS_URL/cache" && return 0
        sleep 0.5
    done
    log "$SYS_NAME: /cache does not answer ${PAUSE}s after the run (busy with abandoned requests): restarting it"
    sys_stop
    RESTARTED=1
    sys_start "$SYS_NAME" "$SYS_N" || { log "$SYS_NAME: restart failed"; RESTARTED=2; }
}

# ---------------------------------------------------------------------------------------------
# The load client. lg OUTFILE ARGS... runs loadgen bounded by timeout(1); the LOADGEN line goes
# to OUTFILE, the human summary to OUTFILE.err.

lg() {
    local out=$1 d drain=2.5 a
    shift
    # find -d and --drain to bound the run
    local args=("$@") i
    for ((i = 0; i < ${#args[@]}; i++)); do
        case "${args[$i]}" in
            -d) d=${args[$((i + 1))]} ;;
            --drain) drain=${args[$((i + 1))]} ;;
        esac
    done
    a=$(awk -v d="${d:-10}" -v dr="$drain" 'BEGIN { printf "%d", d + dr + 30 }')
    "${CLIENT_PREFIX[@]}" timeout -k 5 "$a" "$LOADGEN" "$@" > "$out" 2> "$out.err" &
    local pid=$!
    echo "$pid" >> "$OUT/.client-pids"   # lg may run in a subshell: stop_clients reads this file
    wait "$pid" || true
}

# Stops load clients still running (after an interrupt); timeout(1) passes SIGTERM on.
stop_clients() {
    local pid
    [ -f "$OUT/.client-pids" ] || return 0
    while read -r pid; do
        kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null || true
    done < "$OUT/.client-pids"
    rm -f "$OUT/.client-pids"
}

# lgv FILE KEY: a value from a LOADGEN line (empty if missing)
lgv() { grep -o " $2=[^ ]*" "$1" 2>/dev/null | head -1 | cut -d= -f2 || true; }

# json_num KEY FILE
json_num() { grep -o "\"$1\":[0-9]*" "$2" 2>/dev/null | head -1 | cut -d: -f2 || true; }

# /stats: ours on the admin listener (the reset is a POST with the token), the peers' on their
# public port.
stats_reset() {
    if [ -n "${SYS_ADMIN_URL:-}" ]; then
        curl -s -o /dev/null --max-time 2 -X POST -H "Authorization: Bearer $QOS_BENCH_ADMIN_TOKEN" \
            "$SYS_ADMIN_URL/stats/reset" || true
    else
        curl -s -o /dev/null --max-time 2 "$SYS_URL/stats?reset=1" || true
    fi
}
stats_get() { curl -s --max-time 3 "${SYS_ADMIN_URL:-$SYS_URL}/stats" > "$1" 2>/dev/null || true; }

# Our /metrics (admin listener): "outcome value" lines of qos_requests_total for route db, plus
# handler sums.
metrics_get() {
    curl -s --max-time 3 "$SYS_ADMIN_URL/metrics" 2>/dev/null |
        awk 'function label(k,   r) { if (!match($0, k "=\"[^\"]+\"")) return ""; return substr($0, RSTART + length(k) + 2, RLENGTH - length(k) - 3) }
             # Labels come in any order, and one series per priority level: sum them.
             /^qos_requests_total\{/ && label("route") == "db" { n[label("outcome")] += $NF }
             /^qos_handler_seconds_sum\{/ && label("route") == "db" { hs += $NF }
             /^qos_handler_seconds_count\{/ && label("route") == "db" { hc += $NF }
             /^qos_fallback_late_seconds_bucket\{/ && label("route") == "db" { late[label("le")] += $NF; if (!(label("le") in seen)) { seen[label("le")] = 1; order[++k] = label("le") } }
             /^qos_group_waiting\{/ && label("group") == "db" { print "waiting", $NF }
             END { for (o in n) print o, n[o]; print "handler_sum", hs + 0; print "handler_count", hc + 0
                   for (i = 1; i <= k; i++) print "late_le_" order[i], late[order[i]] }' > "$1" || true
}

# late_summary BEFORE AFTER: from the server's qos_fallback_late_seconds histogram (timeouts
# between the two snapshots), "p50_ms,p99_ms,share_within_5ms": p50/p99 are bucket upper bounds.
late_summary() {
    awk 'FNR == NR { if ($1 ~ /^late_le_/) b[$1] = $2; next }
         $1 ~ /^late_le_/ { le = substr($1, 9); n++; bound[n] = le; cum[n] = $2 - b[$1] }
         END { if (n == 0 || cum[n] <= 0) { print ",,"; exit }
               tot = cum[n]
               for (i = 1; i <= n; i++) {
                   ms = bound[i] == "+Inf" ? ">250" : sprintf("%g", bound[i] * 1000)
                   if (p50 == "" && cum[i] >= 0.5 * tot) p50 = ms
                   if (p99 == "" && cum[i] >= 0.99 * tot) p99 = ms
                   if (bound[i] == "0.005") w5 = cum[i] / tot }
               printf "%s,%s,%.4f\n", p50, p99, w5 }' "$1" "$2"
}

# metrics_delta BEFORE AFTER KEY
metrics_delta() {
    awk -v k="$3" 'FNR == NR { if ($1 == k) b = $2; next } $1 == k { a = $2 } END { if (a != "") printf "%.6g", a - b }' "$1" "$2"
}

# Kernel counter (system-wide): connections dropped because a listen queue was full.
listen_overflows() {
    awk '/^TcpExt:/ { if (!h) { for (i = 2; i <= NF; i++) if ($i == "ListenOverflows") k = i; h = 1 } else { print (k ? $k : ""); exit } }' /proc/net/netstat 2>/dev/null || true
}

kib_to_mib() { [ -n "$1" ] && awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }' || true; }
