#!/usr/bin/env bash
# Benchmark 8b of issue 13: enqueue latency (p50/p99/max) and committed jobs/s of the job
# stores, one line per configuration (see bench/jobs/store_bench.cpp for what each measures).
#
# Usage: bench/jobs/store.sh [BUILD_DIR] [store_bench options...]
#   BUILD_DIR  a Release build with -DQOS_BUILD_BENCH=ON (default: build-bench; built here)
#   e.g.       bench/jobs/store.sh build-bench --seconds 10 --rate 2000 --concurrency 32
#
# The SQLite files and the PostgreSQL cluster live under bench/out/ (on the repository's disk,
# the one measured: fsync on a tmpfs costs nothing); both are removed afterwards. The output
# is also kept in bench/out/store-bench-<timestamp>.txt.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-build-bench}
[ $# -gt 0 ] && shift
cd "$repo"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DQOS_BUILD_BENCH=ON >/dev/null
cmake --build "$build" --target store_bench -j "$(nproc)" >/dev/null
mkdir -p bench/out
out="bench/out/store-bench-$(date -u +%Y%m%dT%H%M%SZ).txt"
"$build/bench/store_bench" --dir bench/out "$@" | tee "$out"
echo "kept in $out"
