#!/usr/bin/env bash
# Installs the dependencies, builds qos and runs the whole test suite twice: a normal build, then
# an AddressSanitizer + UndefinedBehaviorSanitizer build. Between the two, checks what adopters
# get from the normal build: the install (scripts/check-install.sh) and examples/consumer/ built
# and run four ways (scripts/check-consumer.sh); after both, the libFuzzer harnesses run for a
# bounded time (scripts/fuzz.sh). Fails on any test failure, report or crash, and
# when ctest finds no test at all. Every option is passed explicitly: build/ is shared with
# scripts/start.sh, which configures it with the tests off, and a CMake cache keeps its values.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
jobs=$(nproc)

echo "== build (RelWithDebInfo) =="
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQOS_SANITIZE=OFF \
  -DQOS_BUILD_TESTS=ON -DQOS_BUILD_EXAMPLES=ON -DQOS_BUILD_BENCH=ON
cmake --build build -j "$jobs"
echo "== tests =="
(cd build && ctest --output-on-failure --no-tests=error -j "$jobs" --timeout 300)
echo "== install =="
bash scripts/check-install.sh build
echo "== consumer, four ways =="
bash scripts/check-consumer.sh build

echo "== build (ASan + UBSan) =="
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DQOS_SANITIZE=ON \
  -DQOS_BUILD_TESTS=ON -DQOS_BUILD_EXAMPLES=ON -DQOS_BUILD_BENCH=OFF
cmake --build build-asan -j "$jobs"
echo "== tests under ASan + UBSan =="
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd build-asan && ctest --output-on-failure --no-tests=error -j "$jobs" --timeout 600)
echo "== fuzzing (libFuzzer, 60 s per harness) =="
bash scripts/fuzz.sh 60
echo "== all tests passed =="
