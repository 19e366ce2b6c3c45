#!/usr/bin/env bash
# Checks what qos ships to adopters: installs it into an empty temporary prefix, checks that every
# public header, the six libraries (seven with libpq), the CMake package files, qos.pc and bin/qos-check are there
# (and that qos-check runs: its version, a valid and an invalid config), then builds and
# runs a small consumer against the prefix twice (find_package(qos) and pkg-config), and once more
# against the .deb that `cpack -G DEB` makes, unpacked with dpkg -x. Leaves nothing behind.
#
# usage: scripts/check-install.sh [BUILD_DIR]
#   BUILD_DIR  a configured qos build (build/ after scripts/test.sh): only its library targets and
#              qos-check are brought up to date. Without it they are configured and built in a
#              temporary directory first.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d "${TMPDIR:-/tmp}/qos-check-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
jobs=$(nproc)
fail() {
  echo "check-install: $*" >&2
  exit 1
}

if (($# > 0)); then
  build=$(cd "$1" && pwd)
else
  build=$work/build
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQOS_BUILD_TESTS=OFF \
    -DQOS_BUILD_BENCH=OFF -DQOS_BUILD_EXAMPLES=OFF >/dev/null
fi
cmake --build "$build" -j "$jobs" --target qos qos_jobs qos-check >/dev/null
if grep -q '^PostgreSQL_LIBRARY' "$build/CMakeCache.txt" 2>/dev/null; then
  cmake --build "$build" -j "$jobs" --target qos_jobs_pg >/dev/null
fi

prefix=$work/prefix
echo "== install into $prefix =="
cmake --install "$build" --prefix "$prefix" >/dev/null

# The library directory is lib/ or lib/<multiarch>/, as GNUInstallDirs chose at configure time.
pc=$(find "$prefix" -name qos.pc -path '*/pkgconfig/*')
[[ -n "$pc" ]] || fail "no qos.pc installed"
libdir=$(dirname "$(dirname "$pc")")
expected=("$libdir/cmake/qos/qosConfig.cmake" "$libdir/cmake/qos/qosConfigVersion.cmake"
  "$libdir/cmake/qos/qosTargets.cmake" "$prefix/include/qos/version.hpp" "$prefix/bin/qos-check")
for lib in qos qos_config qos_admission qos_fiber qos_core qos_jobs; do
  expected+=("$libdir/lib$lib.a")
done
# Every public header of every layer, as in the source tree.
while IFS= read -r header; do
  expected+=("$prefix/include/$header")
done < <(cd include && find qos -name '*.hpp' | sort)
missing=0
for f in "${expected[@]}"; do
  [[ -f "$f" ]] || {
    echo "check-install: missing ${f#"$prefix"/}" >&2
    missing=1
  }
done
((missing == 0)) || exit 1
echo "${#expected[@]} expected files present ($(find "$prefix" -type f | wc -l) installed)"

# The consumer: plain CMake, no C++ standard of its own (the targets must bring C++20); a core
# header, the generated version header, and one call into the config layer so that the link
# needs yaml-cpp, which qos_config links privately.
mkdir "$work/consumer"
cat >"$work/consumer/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.25)
project(qos_consumer LANGUAGES CXX)
find_package(qos 0.1 REQUIRED)
add_executable(consumer main.cpp)
target_link_libraries(consumer PRIVATE qos::qos)
EOF
cat >"$work/consumer/main.cpp" <<'EOF'
#include <cstdio>
#include "qos/config/config.hpp"
#include "qos/core/limiter.hpp"
#include "qos/version.hpp"
static_assert(__cplusplus >= 202002L, "qos's targets carry C++20");
int main() {
  qos::limiter gate({.max_concurrent = 1, .max_queue = 1});
  const bool limited = gate.try_acquire() && !gate.try_acquire();
  const auto cfg = qos::config::load_config_string(
      "groups: [{name: db, max_concurrent: 2}]\nroutes: [{name: db, group: db}]\n");
  std::printf("%.*s\n", static_cast<int>(qos::version().size()), qos::version().data());
  return limited && cfg.groups.size() == 1 ? 0 : 1;
}
EOF

# Builds the consumer with CMake in $work/$1 against prefix $2, runs it, checks it prints $3.
consume_cmake() {
  local out=$work/$1
  cmake -S "$work/consumer" -B "$out" -DCMAKE_PREFIX_PATH="$2" >/dev/null
  cmake --build "$out" -j "$jobs" >/dev/null
  local got
  got=$("$out/consumer") || fail "the consumer against $2 failed"
  [[ "$got" == "$3" ]] || fail "the consumer reports version '$got', qos.pc says '$3'"
}

version=$(PKG_CONFIG_PATH=$libdir/pkgconfig pkg-config --modversion qos)

# The installed checker, run as an operator would: exit 0 on the shipped config, 2 on a bad one.
echo "== qos-check =="
[[ -x "$prefix/bin/qos-check" ]] || fail "bin/qos-check is not executable"
[[ "$("$prefix/bin/qos-check" --version)" == "qos-check (qos) $version" ]] ||
  fail "qos-check --version does not say $version"
"$prefix/bin/qos-check" config/qos.yaml >/dev/null || fail "qos-check refuses config/qos.yaml"
printf 'groups: [{name: db, max_concurrent: 0}]\nroutes: [{name: r, group: db}]\n' >"$work/bad.yaml"
set +e
"$prefix/bin/qos-check" "$work/bad.yaml" >/dev/null 2>"$work/bad.err"
status=$?
set -e
((status == 2)) || fail "qos-check exits $status on an invalid config, not 2"
grep -q "bad.yaml:1:37: groups\[0\].max_concurrent" "$work/bad.err" ||
  fail "qos-check does not name the bad key: $(cat "$work/bad.err")"
echo "== consumer: find_package(qos) =="
consume_cmake consumer-prefix "$prefix" "$version"
echo "== consumer: pkg-config qos =="
# shellcheck disable=SC2046  # pkg-config's output is a list of words
PKG_CONFIG_PATH=$libdir/pkgconfig c++ -std=c++20 "$work/consumer/main.cpp" -o "$work/pc-consumer" \
  $(PKG_CONFIG_PATH=$libdir/pkgconfig pkg-config --cflags --libs qos)
[[ "$("$work/pc-consumer")" == "$version" ]] || fail "the pkg-config consumer failed"

echo "== consumer: the .deb, unpacked =="
cpack --config "$build/CPackConfig.cmake" -G DEB -B "$work/deb" >/dev/null
deb=$(find "$work/deb" -maxdepth 1 -name 'libqos-dev_*.deb')
[[ -n "$deb" ]] || fail "cpack made no libqos-dev .deb"
dpkg-deb -f "$deb" Depends | grep -q libpistache-dev || fail "$(basename "$deb") lacks its Depends"
dpkg-deb -x "$deb" "$work/deb/root"
[[ -x "$work/deb/root/usr/bin/qos-check" ]] || fail "$(basename "$deb") lacks /usr/bin/qos-check"
consume_cmake consumer-deb "$work/deb/root/usr" "$version"
echo "== install checked: qos $version, $(basename "$deb") =="
