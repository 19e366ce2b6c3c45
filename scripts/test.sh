#!/usr/bin/env bash
# Installs the dependencies, builds qos and runs the whole test suite twice: a normal build, then
# an AddressSanitizer + UndefinedBehaviorSanitizer build. Fails on any test failure or report.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
jobs=$(nproc)

echo "== build (RelWithDebInfo) =="
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j "$jobs"
echo "== tests =="
(cd build && ctest --output-on-failure -j "$jobs" --timeout 300)

echo "== build (ASan + UBSan) =="
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DQOS_SANITIZE=ON -DQOS_BUILD_BENCH=OFF
cmake --build build-asan -j "$jobs"
echo "== tests under ASan + UBSan =="
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd build-asan && ctest --output-on-failure -j "$jobs" --timeout 600)
echo "== all tests passed =="
