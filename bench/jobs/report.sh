#!/usr/bin/env bash
# Writes OUT/results.md from the CSV files of bench/jobs/run.sh, with seed 001's own .NET numbers
# (its "Raw test results" table, read from the seed text) beside ours and the node-queue peer's.
# Usage: bench/jobs/report.sh OUT [SEED_001_TEXT]
set -euo pipefail
OUT=${1:?usage: report.sh OUT [SEED_001_TEXT]}
SEED=${2:-}
CSV=$OUT/csv
MD=$OUT/results.md

# The seed's rows: "| submitordersync | 10 | 131 | 7,974 | 0 |" -> "sync,10,131,7974,0"
seed_rows() {
    [ -n "$SEED" ] && [ -f "$SEED" ] || return 0
    awk -F'|' '$2 ~ /submitorder(a)?sync/ {
        for (i = 2; i <= 6; i++) { gsub(/[ ,]/, "", $i) }
        printf "%s,%s,%s,%s,%s\n", ($2 ~ /async/ ? "async" : "sync"), $3, $4, $5, $6 }' "$SEED"
}

# table ROUTE SEEDKIND TITLE: one row per C, column groups .NET (seed) | ours | node-queue.
table() {
    local route=$1 kind=$2
    local seeds
    seeds=$(seed_rows | awk -F, -v k="$kind" '$1 == k')
    {
        echo "$seeds" | awk -F, 'NF == 5 { printf "seed,%s,%s,%s,%s\n", $2, $3, $4, $5 }'
        awk -F, -v r="$route" 'NR > 1 && $2 == r { print "run," $0 }' "$CSV/a_seed001.csv"
    } | awk -F, -v route="$route" '
        $1 == "seed" { c = $2 + 0; cs[c] = 1; s_lat[c] = $3; s_thr[c] = $4; s_fail[c] = $5; next }
        $1 == "run" {
            sys = $2; c = $4 + 0; cs[c] = 1; k = sys SUBSEP c; have[sys] = 1
            acc[k] = $11; mean[k] = $12; p50[k] = $13; p99[k] = $14; done[k] = $17; fail[k] = $10
            dend[k] = $18; dmax[k] = $19; held[k] = $20
        }
        function cell(sys, c,   k) {
            k = sys SUBSEP c
            if (!(k in acc)) return (route ~ /sync/) ? " | | | |" : " | | | | | | |"
            if (route ~ /sync/) return sprintf(" %s | %s | %s / %s | %s |", acc[k], mean[k], p50[k], p99[k], fail[k])
            return sprintf(" %s | %s | %s / %s | %s | %s | %s / %s | %s |", acc[k], mean[k], p50[k], p99[k], fail[k], done[k], dend[k], dmax[k], held[k])
        }
        END {
            n = 0; for (c in cs) order[++n] = c + 0
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (order[j] < order[i]) { t = order[i]; order[i] = order[j]; order[j] = t }
            if (route ~ /sync/) {
                print "| C | .NET avg ms | .NET /min | .NET failures | ours 2xx/min | ours mean ms | ours p50 / p99 ms | ours failures | node-queue 2xx/min | node-queue mean ms | node-queue p50 / p99 ms | node-queue failures |"
                print "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            } else {
                print "| C | .NET avg ms | .NET /min | .NET failures | ours accepted/min | ours mean ms | ours p50 / p99 ms | ours failures | ours completed/min | ours depth end / max | ours max running | node-queue accepted/min | node-queue mean ms | node-queue p50 / p99 ms | node-queue failures | node-queue completed/min | node-queue depth end / max | node-queue max running |"
                print "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            }
            for (i = 1; i <= n; i++) {
                c = order[i]
                line = "| " c " |"
                if (c in s_lat) line = line sprintf(" %s | %s | %s |", s_lat[c], s_thr[c], s_fail[c]); else line = line " | | |"
                line = line cell("ours", c) cell("node-queue", c)
                print line
            }
        }'
}

{
    echo "# Accept mode (issue 13): seed 001's table and scale-out on PostgreSQL"
    echo
    echo "Generated $(date -u +%Y-%m-%dT%H:%M:%SZ) by bench/jobs/run.sh on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ //'))."
    echo
    echo '```'
    cat "$OUT/settings.env" 2>/dev/null || true
    echo '```'
    if [ -s "$OUT/notes.md" ]; then echo; echo "Notes:"; echo; cat "$OUT/notes.md"; fi
    if [ -s "$OUT/anomalies.md" ]; then echo; echo "**Anomalies:**"; echo; cat "$OUT/anomalies.md"; fi
    if [ -f "$CSV/a_seed001.csv" ]; then
        echo
        echo "## (a) Seed 001: synchronous vs accept-and-queue, N = 8, 50 ms backend"
        echo
        echo "Closed-loop clients (bench/loadgen.cpp, POST of a small JSON order, keep-alive, client timeout"
        echo "TIMEOUT s), a fresh server and job store per point. Seed 001's own numbers (.NET, MassTransit, one"
        echo "machine; its \"Requests\" column is the concurrency and its \"Throughput\" the answered requests"
        echo "per minute) are copied from the seed's text. 2xx/min and accepted/min: 2xx answered within the"
        echo "window; latency of the 2xx answers; failures: requests without a 2xx (503 after max_wait 1 s,"
        echo "timeouts, errors) plus connect errors; completed/min: jobs the consumers finished during the"
        echo "point (ours: the store's succeeded jobs with their finish time in the point, read with sqlite3;"
        echo "the peer's jobsCompleted), whose ceiling"
        echo "is N / 50 ms = 9,600/min; depth: ours qos_jobs_depth (queued + running), the peer's queueDepth"
        echo "(waiting jobs), at the end and at most; max running: ours qos_group_in_use of db (permits held;"
        echo "qos_jobs_held also counts the jobs leased ahead, waiting for a permit), the peer's tasksRunning"
        echo "(both sampled every SAMPLE s; csv/a_depth.csv has the whole series; must stay <= N)."
        echo
        echo "### Synchronous: ours POST /orders/sync (guarded, 201) vs .NET submitordersync vs node-queue"
        echo
        table /orders/sync sync
        echo
        echo "### Accept: ours POST /orders (202, SQLite FULL) vs .NET submitorderasync vs node-queue (PostgreSQL)"
        echo
        table /orders async
        echo
        echo "Ours against the ceiling, both routes: N / DB_MS is the nominal one; the mean time a handler held"
        echo "its permit (qos_handler_seconds over the point) is the service time the loaded machine really gave,"
        echo "and N / that mean the ceiling it left (the sync route shows what the same backend allows)."
        echo "Steady: the accept route's jobs that ended from A_SKIP s into the point to its end (the"
        echo "first jobs cannot end before one service time after the first accept into an empty store):"
        echo
        nn=$(sed -n 's/.*\bN=\([0-9]*\).*/\1/p' "$OUT/settings.env" 2>/dev/null | head -1)
        ms=$(sed -n 's/.*\bDB_MS=\([0-9]*\).*/\1/p' "$OUT/settings.env" 2>/dev/null | head -1)
        echo "| route | C | done/min | of N / DB_MS | mean handler ms | N / mean handler, /min | done, of that | steady done/min | of N / DB_MS |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        awk -F, -v n="${nn:-8}" -v ms="${ms:-50}" 'NR > 1 && $1 == "ours" {
            nominal = n * 60000 / ms
            line = sprintf("| %s | %s | %s | %.1f %% |", $2, $3, $16, 100 * $16 / nominal)
            if ($27 != "" && $27 + 0 > 0) { cap = n * 60000 / $27; line = line sprintf(" %s | %.0f | %.1f %% |", $27, cap, 100 * $16 / cap) }
            else line = line " | | |"
            if ($28 != "") line = line sprintf(" %s | %.1f %% |", $28, 100 * $28 / nominal)
            else line = line " | |"
            print line }' "$CSV/a_seed001.csv"
        if [ -f "$CSV/a_depth.csv" ]; then
            echo
            echo "Queue depth over time (accept routes; one value per second of the point, from csv/a_depth.csv):"
            echo
            echo '```'
            awk -F, 'NR > 1 && $2 == "/orders" {
                k = $1 " C=" $3; if (!(k in seen)) { seen[k] = 1; order[++n] = k }
                s = int($4); if (!((k, s) in got)) { got[k, s] = 1; row[k] = row[k] " " ($5 == "" ? "?" : $5) } }
                END { for (i = 1; i <= n; i++) printf "%-22s%s\n", order[i], row[order[i]] }' "$CSV/a_depth.csv"
            echo '```'
        fi
    fi
    if [ -f "$CSV/c_check.csv" ]; then
        echo
        echo "## (c) Scale-out: 2 gateways + 2 consumers on one PostgreSQL"
        echo
        echo "Gateways (jobs.consume false) took the load; consumers (consume true) took none. From the"
        echo "recorded state changes of qos_jobs (bench/jobs/audit.sql, check_runs.sql): completed jobs/s"
        echo "against N / service time, runs (claim to completion: run_ms includes the wait of a job"
        echo "leased ahead and the claim's and the completion's commits), the most leased at once, and"
        echo "jobs claimed more than once; the consumers' counters (consumers_*) were read from their"
        echo "/metrics before they were stopped. Handlers running and run slots held are sampled."
        echo
        echo "| gateway | sent | 202 | failures | accepted/s | p50 ms | p99 ms |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
        awk -F, 'NR > 1 { printf "| %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7 }' "$CSV/c_gateways.csv" 2>/dev/null || true
        echo
        echo "| measure | value |"
        echo "|---|---:|"
        awk -F, 'NF >= 2 { printf "| %s | %s |\n", $1, $2 }' "$CSV/c_check.csv"
        if [ -f "$CSV/c_samples.csv" ]; then
            # c1 and c2 are read one after the other, some milliseconds apart: their sum is no
            # instant (8 jobs turn over every 50 ms), so each is given alone
            # in_use: handlers holding the group's permits (running), per consumer; slots_held:
            # the run slots held across processes, from pg_locks (one query: an instant)
            awk -F, 'NR > 1 { if ($3 + 0 > r) r = $3 + 0; if ($6 + 0 > h1) h1 = $6 + 0; if ($7 + 0 > h2) h2 = $7 + 0
                              if ($12 + 0 > u1) u1 = $12 + 0; if ($13 + 0 > u2) u2 = $13 + 0; if ($14 + 0 > sl) sl = $14 + 0
                              s1 += $12; s2 += $13; k++ }
                END { printf "| max leased (state running), sampled from the table | %d |\n| max qos_jobs_held of c1, of c2, sampled | %d, %d |\n", r, h1, h2
                      printf "| max handlers running (qos_group_in_use) of c1, of c2, sampled | %d, %d |\n| max run slots held across processes, sampled (pg_locks) | %d |\n", u1, u2, sl
                      if (k > 0) printf "| mean handlers running of c1, of c2, sampled | %.1f, %.1f |\n", s1 / k, s2 / k }' "$CSV/c_samples.csv"
        fi
        echo
        awk -F, '{ v[$1] = $2 }
            END {
                t = v["target_per_s"] + 0; r = v["completed_per_s_under_load"] + 0; b = v["completed_per_s_backlog_only"] + 0
                if (t > 0) printf "- completed/s under load %.1f = %.1f %% of %.0f/s; backlog only %.1f = %.1f %% (target >= 99 %%)\n", r, 100 * r / t, t, b, 100 * b / t
                hm = v["consumers_handler_mean_ms"] + 0
                if (hm > 0) printf "- handlers held their permits %.2f ms on average: N / that = %.1f/s; under load %.1f %% of it, backlog only %.1f %%\n", hm, v["n"] * 1000 / hm, 100 * r * hm / (v["n"] * 1000), 100 * b * hm / (v["n"] * 1000)
                # leases, not handlers: a consumer leases up to two jobs per run slot it holds
                # ahead of its slots (2 N in all), and the slots bound the handlers (sampled above)
                printf "- most leased at once (exact, from the recorded transitions): %s, N = %s: %s\n", v["max_running_exact"], v["n"],
                    (v["max_running_exact"] + 0 <= 3 * v["n"] ? "within N running + 2 N ahead" : "**above 3 N**")
                printf "- jobs claimed more than once: %s; runs taken back by the store before the stop: %s (given back at the stop: %s); runs still open after it: %s; consumers fenced_out: %s%s\n",
                    v["jobs_claimed_more_than_once"], v["runs_taken_back"], v["runs_given_back_at_stop"], v["runs_unfinished"], v["consumers_fenced_out"],
                    (v["jobs_claimed_more_than_once"] + 0 == 0 ? " (no job ran twice, so none twice at once)" : (v["consumers_fenced_out"] + 0 == 0 ? " (re-runs, none while the first still ran)" : " (**a job ran twice at once**)"))
            }' "$CSV/c_check.csv"
    fi
} > "$MD"
echo "$MD"
