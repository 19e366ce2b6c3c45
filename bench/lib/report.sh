# Sourced by bench/run.sh: results.md from the CSVs (make_report) and the gnuplot PNGs
# (make_plots). Both read only $OUT; they can be re-run on an old output folder with
#   OUT=bench/out/<stamp> bash bench/lib/report.sh
# All tables are built with awk from the CSV headers (columns are looked up by name).

# The awk prelude every table uses: col[name] from the header, v() prints "–" for empty.
AWK_LIB='
function v(x) { return x == "" ? "–" : x }
function num(x) { return x == "" ? -1 : x + 0 }
function f1(x) { return x == "" ? "–" : sprintf("%.1f", x) }
function f0(x) { return x == "" ? "–" : sprintf("%.0f", x) }
FNR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
function g(name) { return $col[name] }
'

machine_info() {
    local cpu mem
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    mem=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
    echo "- machine: $(nproc) CPUs ($cpu), $mem RAM, kernel $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")"
    echo "- open-files limit (hard): $(ulimit -Hn); client and servers share the same $(nproc) cores$([ "${PIN:-0}" = 1 ] && echo ", client pinned to CPU 0 and servers to CPU 1 (taskset)" || echo ", no pinning")"
    echo "- tools: $(g++ --version | head -1), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), $(java -version 2>&1 | head -1 || true), $(haproxy -v 2>/dev/null | head -1 | awk '{print $1, $2, $3}' || true), $(gnuplot --version 2>/dev/null || true)"
}

make_report() {
    local md=$OUT/results.md s1=$CSV/s1_overload.csv
    # shellcheck disable=SC1091
    . "$OUT/settings.env"
    local cap
    cap=$(awk -v n="$N" -v ms="$DB_MS" 'BEGIN { printf "%.1f", n * 1000 / ms }')
    {
        echo "# qos load benchmarks: $MODE run $(basename "$OUT")"
        echo
        echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ) (end of run)"
        machine_info
        echo "- commit: $COMMIT${DIRTY:+ (uncommitted changes outside bench/: $DIRTY)}"
        echo "- command: \`bench/run.sh $MODE\` (settings: \`settings.env\` in this folder)"
        local work="SQLite read + ${DB_MS} ms sleep"
        if [ "${DB_TIME:-extra}" = total ]; then work="SQLite read, then a sleep to ${DB_MS} ms in all (\`--db-time total\`)"; fi
        echo "- workload: /db = $work under a limit of N=$N (cap N/${DB_MS} ms = $cap 2xx/s), max_wait 1 s, client timeout ${TIMEOUT} s; /cache from memory"
        echo "- client: bench/loadgen (closed loop, keep-alive, ${LG_THREADS} threads): each connection sends its next request when the answer arrived. Rates count answers completed inside the ${D} s window; after it the client stops sending and waits up to ${DRAIN} s for the answers still out (\"answered\" includes those). Latency is from writing the request to reading the whole answer."
        echo
        if [ -s "$OUT/notes.md" ]; then echo "## Notes"; echo; cat "$OUT/notes.md"; echo; fi
        echo "## Anomalies of our server"
        echo
        if [ -s "$OUT/anomalies.md" ]; then cat "$OUT/anomalies.md"; else echo "None detected (process alive, /stats answering, max /db in flight <= N, every request sent was answered, client 2xx <= server admitted)."; fi
        echo
        report_s1 "$s1" "$N"
        if awk -F, 'NR > 1 && $2 == 30 { f = 1 } END { exit !f }' "$s1"; then report_s1 "$s1" 30; fi
        report_s2
        report_s3
        report_s4 "$s1"
        report_s5
        report_s6
        report_targets "$s1"
        echo "## Plots"
        echo
        local p
        for p in s1_goodput s1_goodput_zoom s1_p99 s1_latency_cdf s2_cache_p99; do
            [ -f "$OUT/plots/$p.png" ] && echo "![$p](plots/$p.png)"
        done
        echo
    } > "$md"
}

report_s1() {   # report_s1 CSV N
    local csv=$1 n=$2 cap
    cap=$(awk -v n="$n" -v ms="$DB_MS" 'BEGIN { printf "%.1f", n * 1000 / ms }')
    echo "## S1 overload table, /db, N=$n (cap $cap 2xx/s)"
    echo
    echo "Steady goodput in 2xx/s (2xx answers completed after the first second of the ${D} s window, per second), every system side by side; last column: ours / jetty-qos. The whole-window rate (start-up included) is in the details below."
    echo
    awk -F, -v n="$n" "$AWK_LIB"'
        g("n") != n { next }
        { s = g("system"); c = g("conc") + 0
          if (!(s in seen)) { seen[s] = 1; order[++ns] = s }
          if (!(c in cs)) { cs[c] = 1; clist[++nc] = c }
          ok[s, c] = g("ok_rps_steady") }
        END {
          # sort concurrencies numerically
          for (i = 1; i <= nc; i++) for (j = i + 1; j <= nc; j++) if (clist[j] < clist[i]) { t = clist[i]; clist[i] = clist[j]; clist[j] = t }
          printf "| C |"; for (i = 1; i <= ns; i++) printf " %s |", order[i]; print " ours/jetty-qos |"
          printf "|---:|"; for (i = 1; i <= ns; i++) printf "---:|"; print "---:|"
          for (k = 1; k <= nc; k++) {
            c = clist[k]; printf "| %d |", c
            for (i = 1; i <= ns; i++) printf " %s |", f1(ok[order[i], c])
            r = "–"; if ((("ours", c) in ok) && (("jetty-qos", c) in ok) && ok["jetty-qos", c] > 0) r = sprintf("%.3f", ok["ours", c] / ok["jetty-qos", c])
            print " " r " |"
          }
        }' "$csv"
    echo
    echo "Details per system. sent/answered: requests written / answers read (incl. the drain); 503: fallbacks; fail: client timeouts (${TIMEOUT} s) + connections lost with a request out + requests still unanswered at the end + connect errors; p50/p99/max of 2xx only (ms), \"2xx p99 steady\": of requests sent after the first second (see S4 on the start-up flash crowd); RSS: server's max VmRSS during the run (MiB, haproxy: proxy + backend); thr: max threads; in-flight: max /db at once at the backend (/stats)."
    echo
    awk -F, -v n="$n" "$AWK_LIB"'
        g("n") != n { next }
        { s = g("system")
          if (s != last) { if (last != "") print ""
            printf "**%s**\n\n", s
            print "| C | sent | answered | 2xx/s window | 2xx/s steady | 2xx/min steady | 2xx | 503 | other | fail (to/lost/unans/conn) | 2xx p50 | 2xx p99 | 2xx max | 2xx p99 steady | RSS MiB | thr | in-flight | note |"
            print "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
            last = s }
          fail = g("timeouts") + g("err_lost") + g("unanswered") + g("err_connect")
          note = ""
          if (g("restarted_after") == 1) note = "busy after the run: restarted"
          if (g("srv_admitted") != "") {
            eff = g("srv_service_ms") > 0 ? sprintf(", steady goodput = %.1f%% of N/service", 100 * g("ok_rps_steady") * g("srv_service_ms") / (1000 * g("n"))) : ""
            note = note sprintf("%sserver: admitted %s, timeout %s, queue_full %s, client_gone %s; mean service %s ms%s", note == "" ? "" : "; ", g("srv_admitted"), g("srv_timeout"), g("srv_queue_full"), g("srv_client_gone"), g("srv_service_ms"), eff) }
          printf "| %s | %s | %s | %s | %s | %s | %s | %s | %d | %d (%d/%d/%d/%d) | %s | %s | %s | %s | %s | %s | %s | %s |\n",
            g("conc"), g("sent"), g("answered"), f1(g("ok_rps")), f1(g("ok_rps_steady")), v(g("ok_rpm")), g("s2xx"), g("s503"), g("s5xx_other") + g("s4xx"),
            fail, g("timeouts"), g("err_lost"), g("unanswered"), g("err_connect"),
            v(g("ok_p50_ms")), v(g("ok_p99_ms")), v(g("ok_max_ms")), v(g("oks_p99_ms")), v(g("rss_max_mib")), v(g("threads_max")), v(g("db_max_inflight")), note }' "$csv"
    echo
}

report_s2() {
    local csv=$CSV/s2_cache.csv
    [ "$(wc -l < "$csv")" -gt 1 ] || return 0
    echo "## S2 cache route under DB overload"
    echo
    echo "/cache at C=10 (1 client thread) alone, then while /db runs at the DB concurrency given (started 1 s earlier). Latencies in ms; ×alone = p99 / p99 alone of the same system; failed = non-2xx + timeouts + lost."
    echo
    echo "| system | DB C | cache req/s | p50 | p99 | p99.9 | max | p99 ×alone | failed | DB 2xx/s meanwhile | DB 503 | RSS MiB | thr |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F, "$AWK_LIB"'
        { s = g("system"); if (g("db_conc") == 0) alone[s] = g("cache_p99_ms")
          x = (alone[s] > 0 && g("cache_p99_ms") != "") ? sprintf("%.2f", g("cache_p99_ms") / alone[s]) : "–"
          printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", s, g("db_conc"), f0(g("cache_rps")),
            v(g("cache_p50_ms")), v(g("cache_p99_ms")), v(g("cache_p999_ms")), v(g("cache_max_ms")), x, g("cache_failed"),
            g("db_conc") == 0 ? "–" : f1(g("db_ok_rps")), g("db_conc") == 0 ? "–" : v(g("db_s503")), v(g("rss_max_mib")), v(g("threads_max")) }' "$csv"
    echo
}

report_s3() {
    local csv=$CSV/s3_priority.csv
    [ "$(wc -l < "$csv")" -gt 1 ] || return 0
    echo "## S3 priority"
    echo
    echo "/db at C=$S3_DB_C without X-Priority; meanwhile two clients with one connection each send /db one after the other for ${D} s: hi with \`X-Priority: $S3_PRIO\`, lo without. Latency of all their answers in ms; ×service = p50 and p99 / ${DB_MS} ms."
    echo
    echo "| system | probe | answered | 2xx | 503 | failed | p50 | p90 | p99 | max | p50 ×service | p99 ×service | DB 2xx/s |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F, -v ms="$DB_MS" "$AWK_LIB"'
        { printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", g("system"), g("probe") " (" g("priority") ")",
            g("answered"), g("s2xx"), g("s503"), g("failed"), v(g("p50_ms")), v(g("p90_ms")), v(g("p99_ms")), v(g("max_ms")),
            g("p50_ms") == "" ? "–" : sprintf("%.2f", g("p50_ms") / ms), g("p99_ms") == "" ? "–" : sprintf("%.2f", g("p99_ms") / ms), f1(g("db_ok_rps")) }' "$csv"
    echo
}

report_s4() {
    local csv=$1
    echo "## S4 timeout precision"
    echo
    echo "How late the 503 fallbacks came past max_wait = 1 s, from the S1 runs: client-side latency of each 503 minus 1000 ms, in ms (runs with at least 20 503s). **steady**: requests sent after the first second of the run that were not the first on their connection; **all**: every 503, including the first requests of the flash crowd of new connections: when C connections open at once the listen queue overflows (column \"listen ovf\": the kernel's ListenOverflows during the run, system-wide), and the kernel's SYN and data retransmissions (1 s, then 200 ms steps) add to those requests' latency before the server has even read them. For ours every 503 was a timeout fallback (X-QoS-Outcome); the peers send 503 only on a queue timeout. A negative min means a 503 came before max_wait. **at the socket**: the same steady 503s measured to the kernel's receive timestamp of the answer (SO_TIMESTAMPNS; on loopback stamped as the server's send reaches the client's socket), which leaves out the time the load generator, sharing the 2 cores, takes to come round to reading it."
    echo
    echo
    echo "For ours, the server's own view too (\`qos_fallback_late_seconds\`, all timeouts of the run): how long after its wait's deadline each fallback was handed to the transport; p50/p99 are the upper bounds of the histogram buckets (0.5, 1, 2, 5, 10, 25 ms ...), and \"≤ 5 ms\" the share within 5 ms. The gap between the two views is the time a request waits to be read before the server stamps its arrival, plus the write back, under synchronized waves of C clients on 2 shared cores."
    echo
    s4_table "$csv"
    echo
    local ramped=$CSV/s4_ramped.csv
    if [ -f "$ramped" ] && [ "$(wc -l < "$ramped")" -gt 1 ]; then
        echo "### S4 with the clients' starts spread over ${S4_RAMP} s"
        echo
        echo "The same measurement (${S4_D} s windows), but connection i of C opens and sends its first request at i/C × ${S4_RAMP} s (\`loadgen --ramp ${S4_RAMP}\`), as independent clients arrive, instead of all C in the same millisecond; after that each client again sends its next request when its answer arrives. The table above is dominated by the flash-crowd start: C clients that start together stay in step, so each second C − 160 timeouts fall due within a few tens of milliseconds, and the 2 shared cores drain that wave (client, reactors and workers) at their speed; the wave comes back every second. Spread starts remove the wave, not the load: the same C, the same request rate and the same number of timeouts per second."
        echo
        s4_table "$ramped"
        echo
    fi
}

# s4_table CSV: the S4 columns of the runs in an S1-format CSV.
s4_table() {
    echo "| system | N | C | 503s steady | steady min | steady p50 | steady p99 | steady max | steady p99 at the socket | 503s all | all p50 | all p99 | all max | listen ovf | server p50 | server p99 | server ≤ 5 ms |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F, "$AWK_LIB"'
        function late(x) { return x == "" ? "–" : sprintf("%.1f", x - 1000) }
        function pct(x) { return x == "" ? "–" : sprintf("%.1f%%", x * 100) }
        g("s503") + 0 >= 20 {
          printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", g("system"), g("n"), g("conc"),
            v(g("s503_steady")), late(g("s503s_min_ms")), late(g("s503s_p50_ms")), late(g("s503s_p99_ms")), late(g("s503s_max_ms")), late(g("s503sx_p99_ms")),
            g("s503"), late(g("s503_p50_ms")), late(g("s503_p99_ms")), late(g("s503_max_ms")), v(g("listen_overflows")),
            v(g("srv_late_p50_ms")), v(g("srv_late_p99_ms")), pct(g("srv_late_within_5ms")) }' "$1"
}

report_s5() {
    local csv=$CSV/s5_overhead.csv
    [ "$(wc -l < "$csv")" -gt 1 ] || return 0
    echo "## S5 overhead of the gate"
    echo
    echo "bench/overhead_server: the same trivial handler (\"ok\") at /plain (unguarded, on the reactor), /guarded (gate.guard on a group with 100000 free permits, fiber handler: admission + request copy + hand-off to a fiber) and /inline (the same group, handler_kind::reactor: admission and permit, the handler on the reactor). Closed loop at C=$S5_C, ${S5_D} s per run, runs alternate plain/guarded/inline; medians over $S5_REPS repetitions per client."
    echo
    echo "Throughput on this VM varies by ±20 % from one 3-5 s run to the next, more than the effect measured, so the server's CPU time per answered request (user + system, from /proc, over each run) is given too: at saturation it is what bounds the server's throughput, and it is much steadier."
    echo
    echo "| client | route | runs | req/s (median) | p50 ms | p99 ms | server CPU µs/request (median) | req/s of each run |"
    echo "|---|---|---:|---:|---:|---:|---:|---|"
    awk -F, "$AWK_LIB"'
        function median(arr, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (arr[j] < arr[i]) { t = arr[i]; arr[i] = arr[j]; arr[j] = t }
          return n % 2 ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2 }
        { k = g("tool") SUBSEP g("route"); if (!(k in cnt)) keys[++nk] = k; cnt[k]++
          rps[k, cnt[k]] = g("rps"); p50[k, cnt[k]] = g("p50_ms"); p99[k, cnt[k]] = g("p99_ms"); all[k] = all[k] (all[k] == "" ? "" : ", ") sprintf("%.0f", g("rps"))
          if (g("cpu_us_per_req") != "") { nc[k]++; cpu[k, nc[k]] = g("cpu_us_per_req") } }
        END {
          for (i = 1; i <= nk; i++) { k = keys[i]; split(k, kk, SUBSEP); n = cnt[k]
            for (j = 1; j <= n; j++) { a[j] = rps[k, j]; b[j] = p50[k, j]; c[j] = p99[k, j] }
            mr[k] = median(a, n); m50[k] = median(b, n); m99[k] = median(c, n)
            mc[k] = ""; if (nc[k] > 0) { delete d; for (j = 1; j <= nc[k]; j++) d[j] = cpu[k, j]; mc[k] = median(d, nc[k]) }
            printf "| %s | %s | %d | %.0f | %.2f | %.2f | %s | %s |\n", kk[1], kk[2], n, mr[k], m50[k], m99[k], mc[k] == "" ? "–" : sprintf("%.2f", mc[k]), all[k] }
          print ""
          for (i = 1; i <= nk; i++) { split(keys[i], kk, SUBSEP); if (kk[2] != "plain") continue
            t = kk[1]; p = t SUBSEP "plain"
            for (ri = 1; ri <= 2; ri++) { rn = ri == 1 ? "inline" : "guarded"; q = t SUBSEP rn
              if ((q in mr) && mr[p] > 0) {
                printf "- %s: %s/plain throughput = **%.3f** (loss %.1f%%); p50 %+.2f ms, p99 %+.2f ms", t, rn, mr[q] / mr[p], (1 - mr[q] / mr[p]) * 100, m50[q] - m50[p], m99[q] - m99[p]
                if (mc[q] != "" && mc[p] > 0) printf "; server CPU per request %.2f vs %.2f µs (%+.1f%%)", mc[q], mc[p], (mc[q] / mc[p] - 1) * 100
                printf "\n" } } }
        }' "$csv"
    echo
}

report_s6() {
    local csv=$CSV/s6_memory.csv
    [ "$(wc -l < "$csv")" -gt 1 ] || return 0
    echo "## S6 memory per parked request"
    echo
    echo "A fresh guarded server (bench/config/qos-park.yaml: N=8, max_wait 120 s, max_queue 20000) per row. parked: k connections each with one /db request, of which all but N wait in the queue (count from /metrics qos_group_waiting, taken with the RSS $((S6_D - 1)) s into the run). idle_conn: the same number of keep-alive connections after one /cache answer each, nothing parked: the cost of a connection alone. per item = (VmRSS during − VmRSS before) / items."
    echo
    echo "| k | mode | RSS before KiB | RSS during KiB | items | KiB per item | threads |"
    echo "|---:|---|---:|---:|---:|---:|---:|"
    awk -F, "$AWK_LIB"'{ printf "| %s | %s | %s | %s | %s | %s | %s |\n", g("k"), g("mode"), g("rss_before_kib"), g("rss_during_kib"), v(g("items")), v(g("per_item_kib")), v(g("threads")) }' "$csv"
    echo
    awk -F, "$AWK_LIB"'{ pi[g("k"), g("mode")] = g("per_item_kib"); ks[g("k")] = 1 }
        END { for (k in ks) if (((k, "parked") in pi) && ((k, "idle_conn") in pi) && pi[k, "parked"] != "" && pi[k, "idle_conn"] != "")
                printf "- k=%s: parked request %.2f KiB, of which the connection alone %.2f KiB: the wait itself %.2f KiB\n", k, pi[k, "parked"], pi[k, "idle_conn"], pi[k, "parked"] - pi[k, "idle_conn"] }' "$csv" | sort -t= -k2 -n
    # The marginal cost between consecutive k, free of one-time growth (allocator arenas, tables).
    awk -F, "$AWK_LIB"'g("mode") == "parked" && g("items") + 0 > 0 { n++; k[n] = g("k"); it[n] = g("items"); r[n] = g("rss_during_kib") - g("rss_before_kib") }
        END { for (i = 2; i <= n; i++) if (it[i] > it[i - 1])
                printf "- marginal, k=%s → %s: %.2f KiB per more parked request\n", k[i - 1], k[i], (r[i] - r[i - 1]) / (it[i] - it[i - 1]) }' "$csv"
    echo
}

# The targets of issue 3, judged on this run's numbers.
report_targets() {
    local s1=$1 cap99
    cap99=$(awk -v n="$N" -v ms="$DB_MS" 'BEGIN { printf "%.1f", 0.99 * n * 1000 / ms }')
    echo "## Targets of issue 3 (this run)"
    echo
    echo "| target | result | met? |"
    echo "|---|---|---|"
    awk -F, -v n="$N" -v cap99="$cap99" "$AWK_LIB"'
        g("n") != n { next }
        { s = g("system"); c = g("conc") + 0; ok[s, c] = g("ok_rps_steady") + 0; have[s, c] = 1
          if (s == "ours") { if (c >= n) { if (min == "" || ok[s, c] < min) { min = ok[s, c]; minc = c } }
            fails += g("timeouts") + g("err_lost") + g("unanswered") + g("err_connect") + g("s5xx_other") + g("s4xx")
            notans += g("sent") - g("answered"); cl[++ncl] = c } }
        END {
          if (min == "") { print "| S1 goodput >= 99% of N/service at every C >= N | no data | – |"; exit }
          printf "| S1 goodput >= 99%% of N/50 ms (%s 2xx/s) at every C >= N (steady goodput) | lowest %.1f 2xx/s (C=%d) | %s |\n", cap99, min, minc, (min >= cap99 ? "yes" : "**no**")
          worse = ""; cmp = 0
          for (i = 1; i <= ncl; i++) { c = cl[i]; if (("jetty-qos", c) in have) { cmp++; if (ok["ours", c] < ok["jetty-qos", c]) worse = worse " " c } }
          if (cmp == 0) print "| S1 goodput >= Jetty QoSFilter at every C | jetty-qos not measured | – |"
          else printf "| S1 goodput >= Jetty QoSFilter at every C | %s | %s |\n", worse == "" ? "higher or equal at all " cmp " C" : "lower at C =" worse, worse == "" ? "yes" : "**no**"
          printf "| S1 zero client errors, every request answered | %d errors (timeouts, lost, unanswered, connect, non-503 5xx/4xx), %d sent but not answered | %s |\n", fails, notans, (fails == 0 && notans == 0) ? "yes" : "**no**"
        }' "$s1"
    awk -F, "$AWK_LIB"'
        { s = g("system"); d = g("db_conc") + 0; p[s, d] = g("cache_p99_ms"); if (s == "ours" && d > 0) dl[++nd] = d }
        END { if (!(("ours", 0) in p)) exit
          for (i = 1; i <= nd; i++) { d = dl[i]; r = p["ours", d] / p["ours", 0]
            printf "| S2 cache p99 <= 2x unloaded (DB C=%d) | %s ms vs %s ms alone: %.2fx | %s |\n", d, p["ours", d], p["ours", 0], r, r <= 2 ? "yes" : "**no**"
            if (("haproxy", d) in p) printf "| S2 cache p99 <= HAProxy (DB C=%d) | %s ms vs %s ms | %s |\n", d, p["ours", d], p["haproxy", d], p["ours", d] <= p["haproxy", d] ? "yes" : "**no**" } }' "$CSV/s2_cache.csv"
    awk -F, -v ms="$DB_MS" -v n="$N" "$AWK_LIB"'
        (g("system") == "ours" || g("system") == "ours-reserve") && g("probe") == "hi" && g("n") == n { lim = 1.2 * ms
          printf "| S3 high priority <= 1.2 service times (%.0f ms), %s | p50 %s ms, p99 %s ms, max %s ms | %s |\n", lim, g("system"), g("p50_ms"), g("p99_ms"), g("max_ms"),
            (g("p99_ms") + 0 <= lim) ? "yes" : ((g("p50_ms") + 0 <= lim) ? "p50 yes, **p99 no**" : "**no**") }' "$CSV/s3_priority.csv"
    awk -F, -v n="$N" "$AWK_LIB"'
        g("system") == "ours" && g("n") == n && g("s503_steady") + 0 >= 20 {
          l = g("s503s_p99_ms") - 1000; if (cnt == 0 || l > worst) { worst = l; wc = g("conc") }
          a = g("s503_p99_ms") - 1000; if (cnt == 0 || a > worsta) { worsta = a; wca = g("conc") }; cnt++ }
        END { if (cnt) {
          printf "| S4 fallback p99 <= 5 ms late (steady: after the first second, first request of each connection left out) | worst p99 %.1f ms late (C=%d), over %d runs with 503s | %s |\n", worst, wc, cnt, worst <= 5 ? "yes" : "**no**"
          printf "| S4 fallback p99 <= 5 ms late (all, start-up flash crowd included) | worst p99 %.1f ms late (C=%d) | %s |\n", worsta, wca, worsta <= 5 ? "yes" : "**no**" } }' "$s1"
    awk -F, -v n="$N" "$AWK_LIB"'
        g("system") == "ours" && g("n") == n && g("srv_late_within_5ms") != "" {
          w = g("srv_late_within_5ms") + 0; if (cnt == 0 || w < worst) { worst = w; wc = g("conc") }; cnt++ }
        END { if (cnt) printf "| S4 fallback p99 <= 5 ms late (server side: deadline to transport) | worst share within 5 ms %.2f%% (C=%d), over %d runs | %s |\n", worst * 100, wc, cnt, (worst >= 0.99) ? "yes" : "**no**" }' "$s1"
    [ -f "$CSV/s4_ramped.csv" ] && awk -F, -v n="$N" -v ramp="$S4_RAMP" "$AWK_LIB"'
        g("system") == "ours" && g("n") == n && g("s503_steady") + 0 >= 20 {
          l = g("s503s_p99_ms") - 1000; if (cnt == 0 || l > worst) { worst = l; wc = g("conc") }; cnt++ }
        END { if (cnt) printf "| S4 fallback p99 <= 5 ms late (steady, client starts spread over %s s) | worst p99 %.1f ms late (C=%d), over %d runs | %s |\n", ramp, worst, wc, cnt, (worst <= 5) ? "yes" : "**no**" }' "$CSV/s4_ramped.csv"
    awk -F, "$AWK_LIB"'
        function median(arr, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (arr[j] < arr[i]) { t = arr[i]; arr[i] = arr[j]; arr[j] = t }
          return n % 2 ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2 }
        { k = g("tool") SUBSEP g("route"); cnt[k]++; r[k, cnt[k]] = g("rps"); tools[g("tool")] = 1
          if (g("cpu_us_per_req") != "") { nc[k]++; cp[k, nc[k]] = g("cpu_us_per_req") } }
        END { for (t in tools) { np = cnt[t, "plain"]; if (!np) continue
              for (j = 1; j <= np; j++) a[j] = r[t, "plain", j]; mp = median(a, np)
              cpl = ""; if (nc[t, "plain"] > 0) { delete c; for (j = 1; j <= nc[t, "plain"]; j++) c[j] = cp[t, "plain", j]; cpl = median(c, nc[t, "plain"]) }
              split("inline guarded", routes, " ")
              for (ri = 1; ri <= 2; ri++) { q = routes[ri]; nq = cnt[t, q]; if (!nq) continue
                delete b; for (j = 1; j <= nq; j++) b[j] = r[t, q, j]; mq = median(b, nq)
                loss = (1 - mq / mp) * 100
                what = q == "inline" ? "handler_kind::reactor" : "fiber handler"
                printf "| S5 <= 3%% throughput loss (%s, /%s: %s), median req/s | %.1f%% (%.0f vs %.0f req/s) | %s |\n", t, q, what, loss, mq, mp, (loss <= 3) ? "yes" : "**no**"
                if (cpl != "" && nc[t, q] > 0) { delete c; for (j = 1; j <= nc[t, q]; j++) c[j] = cp[t, q, j]; cq = median(c, nc[t, q])
                  closs = (1 - cpl / cq) * 100
                  printf "| S5 <= 3%% throughput loss (%s, /%s: %s), from server CPU per request | %.1f%% (%.2f vs %.2f µs) | %s |\n", t, q, what, closs, cq, cpl, (closs <= 3) ? "yes" : "**no**" } } } }' "$CSV/s5_overhead.csv"
    awk -F, "$AWK_LIB"'
        g("mode") == "parked" && g("per_item_kib") != "" { printf "| S6 <= 10 KiB per parked request (k=%s) | %.2f KiB (connection included) | %s |\n", g("k"), g("per_item_kib"), g("per_item_kib") <= 10 ? "yes" : "**no**" }' "$CSV/s6_memory.csv"
    echo "| S7 acquire+release <= 100 ns | micro-benchmarks (bench/micro_bench.cpp), not part of this harness | – |"
    echo
}

# ---- plots ------------------------------------------------------------------------------------
make_plots() {
    command -v gnuplot > /dev/null || return 0
    local pd=$OUT/plots dat=$OUT/plots/data s1=$CSV/s1_overload.csv
    mkdir -p "$dat"
    # shellcheck disable=SC1091
    . "$OUT/settings.env"
    local systems
    systems=$(awk -F, -v n="$N" 'NR > 1 && $2 == n && !seen[$1]++ { printf "%s ", $1 }' "$s1")
    local s plot_ok="" plot_p99="" plot_cdf="" plot_s2="" i=0
    for s in $systems; do
        i=$((i + 1))
        awk -F, -v n="$N" -v s="$s" "$AWK_LIB"'g("system") == s && g("n") == n { r = g("ok_rps_steady") + 0; print g("conc"), (r < 1 ? 1 : r), (g("ok_p99_ms") == "" ? "?" : g("ok_p99_ms")), (g("oks_p99_ms") == "" ? "?" : g("oks_p99_ms")) }' "$s1" | sort -n > "$dat/s1-$s.dat"
        plot_ok="$plot_ok${plot_ok:+, }'$dat/s1-$s.dat' using 1:2 with linespoints ls $i title '$s'"
        plot_p99="$plot_p99${plot_p99:+, }'$dat/s1-$s.dat' using 1:3 with linespoints ls $i title '$s', '$dat/s1-$s.dat' using 1:4 with lines ls $i dt 2 notitle"
        local cdf=$RAW/$s-n$N-s1-c1000.cdf
        if [ -f "$cdf" ]; then
            grep '^ok ' "$cdf" > "$dat/cdf-$s-ok.dat" || true
            grep '^s503 ' "$cdf" > "$dat/cdf-$s-503.dat" || true
            [ -s "$dat/cdf-$s-ok.dat" ] && plot_cdf="$plot_cdf${plot_cdf:+, }'$dat/cdf-$s-ok.dat' using 3:2 with lines ls $i title '$s 2xx'"
            [ -s "$dat/cdf-$s-503.dat" ] && plot_cdf="$plot_cdf${plot_cdf:+, }'$dat/cdf-$s-503.dat' using 3:2 with lines ls $i dt 2 title '$s 503'"
        fi
        awk -F, -v s="$s" "$AWK_LIB"'g("system") == s { print g("db_conc"), g("cache_p99_ms") }' "$CSV/s2_cache.csv" | sort -n > "$dat/s2-$s.dat"
        [ -s "$dat/s2-$s.dat" ] && plot_s2="$plot_s2${plot_s2:+, }'$dat/s2-$s.dat' using 0:2:xtic(1) with linespoints ls $i title '$s'"
    done
    local cap
    cap=$(awk -v n="$N" -v ms="$DB_MS" 'BEGIN { printf "%.1f", n * 1000 / ms }')
    local style="set terminal pngcairo size 820,480 font 'DejaVu Sans,10'
set style line 1 lc rgb '#d62728' lw 2 pt 7 ps 0.8
set style line 2 lc rgb '#ff9896' lw 2 pt 5 ps 0.8
set style line 3 lc rgb '#1f77b4' lw 2 pt 9 ps 0.8
set style line 4 lc rgb '#9edae5' lw 2 pt 11 ps 0.8
set style line 5 lc rgb '#2ca02c' lw 2 pt 13 ps 0.8
set style line 6 lc rgb '#9467bd' lw 2 pt 3 ps 0.8
set grid
set key outside right"
    {
        echo "$style"
        if [ -n "$plot_ok" ]; then
            echo "set output '$pd/s1_goodput.png'"
            echo "set title 'S1: /db steady goodput vs concurrency (N=$N, ${DB_MS} ms; cap $cap 2xx/s; 0 drawn at 1)'"
            echo "set logscale xy; set xlabel 'connections (C)'; set ylabel '2xx per second'; set yrange [1:*]"
            echo "plot $plot_ok, $cap with lines lc rgb 'black' dt 3 title 'N/50 ms'"
            echo "set output '$pd/s1_goodput_zoom.png'"
            echo "set title 'S1: the same, linear scale near the cap (N=$N)'"
            echo "unset logscale y; set yrange [$(awk -v c="$cap" 'BEGIN { printf "%d:%d", c * 0.85, c * 1.03 + 1 }')]"
            echo "plot $plot_ok, $cap with lines lc rgb 'black' dt 3 title 'N/50 ms', $cap * 0.99 with lines lc rgb 'gray' dt 2 title '99%'"
            echo "set logscale y"
            echo "set output '$pd/s1_p99.png'"
            echo "set title 'S1: p99 latency of 2xx answers (N=$N); dashed: first request of each connection left out'"
            echo "set ylabel 'ms'; set yrange [*:*]; set datafile missing '?'"
            echo "plot $plot_p99"
        fi
        if [ -n "$plot_cdf" ]; then
            echo "set output '$pd/s1_latency_cdf.png'"
            echo "set title 'S1 at C=1000: latency distribution (solid 2xx, dashed 503)'"
            echo "unset logscale; set logscale x; set xlabel 'latency (ms)'; set ylabel 'fraction of answers'; set yrange [0:1]; set xrange [1:20000]"
            echo "plot $plot_cdf"
        fi
        if [ -n "$plot_s2" ]; then
            echo "set output '$pd/s2_cache_p99.png'"
            echo "set title 'S2: /cache p99 (C=10) vs /db concurrency'"
            echo "unset logscale; set logscale y; set xrange [*:*]; set yrange [*:*]; set xlabel '/db connections at the same time'; set ylabel 'cache p99 (ms)'"
            echo "plot $plot_s2"
        fi
    } > "$dat/plots.gp"
    gnuplot "$dat/plots.gp" > "$OUT/logs/gnuplot.log" 2>&1 || log "gnuplot failed: see $OUT/logs/gnuplot.log"
}

# Standalone: OUT=bench/out/<stamp> bash bench/lib/report.sh
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    : "${OUT:?set OUT to an output folder of bench/run.sh}"
    CSV=$OUT/csv RAW=$OUT/raw
    log() { echo "[report] $*" >&2; }
    make_plots
    make_report
    echo "$OUT/results.md" >&2
fi
