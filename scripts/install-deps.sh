#!/usr/bin/env bash
# Installs the Debian 12 packages qos builds, tests and runs with. Idempotent: packages
# already present are left alone, and apt is not touched at all when nothing is missing.
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config ca-certificates curl
  libpistache-dev
  libboost-fiber-dev libboost-context-dev
  libyaml-cpp-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libsqlite3-dev
  libpq-dev postgresql-15  # the PostgreSQL job store; its tests start a private cluster
  prometheus-cpp-dev python3-prometheus-client
  clang-14 libfuzzer-14-dev  # scripts/fuzz.sh: libFuzzer with ASan + UBSan
)
# Load tools for the benchmark harness only.
if [[ "${QOS_BENCH_DEPS:-0}" == 1 ]]; then
  pkgs+=(wrk gnuplot-nox procps sqlite3)
fi
# Doxygen for the API reference (cmake --build build --target docs) only: it brings LLVM along,
# and neither the tests nor CI need it.
if [[ "${QOS_DOCS_DEPS:-0}" == 1 ]]; then
  pkgs+=(doxygen)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi

sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
