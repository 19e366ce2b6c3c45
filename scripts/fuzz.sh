#!/usr/bin/env bash
# Builds the libFuzzer harnesses of tests/fuzz/ with clang 14 (ASan + UBSan) and runs each for a
# bounded time: the YAML config loader (config_fuzz) and the client header parsers
# (headers_fuzz). Each starts from a copy of its kept seed corpus (tests/fuzz/corpus/<name>/,
# plus the shipped config files for the loader) in a temporary folder, so the inputs it finds
# do not grow the repository. Fails on any crash, hang, leak or sanitizer report; the input
# that caused it is kept in <build>/artifacts/ (make it a unit test, then add it to the corpus).
# Usage: scripts/fuzz.sh [seconds per harness, default 60]; QOS_FUZZ_BUILD sets the build
# folder (default build-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

seconds=${1:-60}
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { echo "usage: scripts/fuzz.sh [seconds]" >&2; exit 2; }
build=${QOS_FUZZ_BUILD:-build-fuzz}
case "$build" in /*) ;; *) build="$root/$build" ;; esac

echo "== build fuzzers (clang-14, ASan + UBSan) =="
CC=clang-14 CXX=clang++-14 cmake -S tests/fuzz -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$build" -j "$(nproc)" --target config_fuzz headers_fuzz

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$build/artifacts"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

failed=()
for name in config headers; do
  corpus="$work/$name"
  mkdir -p "$corpus"
  cp tests/fuzz/corpus/$name/* "$corpus/"
  if [[ $name == config ]]; then
    # The shipped files as they are now, whatever copies the kept corpus holds.
    for f in config/*.yaml bench/config/*.yaml; do cp "$f" "$corpus/now-${f//\//-}"; done
  fi
  echo "== fuzz $name: ${seconds}s from $(ls "$corpus" | wc -l) seeds =="
  # -timeout: one input running 10 s is a hang; -rss_limit_mb: 2 GiB is a leak or a blow-up.
  # A run in a folder of its own: libFuzzer writes fuzz-*.log files next to itself.
  if ! (cd "$work" && "$build/${name}_fuzz" "$corpus" \
          -dict="$root/tests/fuzz/$name.dict" -max_total_time="$seconds" -timeout=10 \
          -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$build/artifacts/$name-"); then
    failed+=("$name")
  fi
done

if ((${#failed[@]} > 0)); then
  echo "fuzz: FAILED: ${failed[*]}; inputs in $build/artifacts/" >&2
  ls -l "$build/artifacts/" >&2
  exit 1
fi
echo "== fuzz: no crash in ${seconds}s per harness =="
