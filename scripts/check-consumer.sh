#!/usr/bin/env bash
# Builds examples/consumer/ (a separate CMake project with its own Pistache endpoint and router)
# the four ways an adopter gets qos, each in its own temporary build folder, and runs its smoke
# test (ctest: `qos_consumer --self-test`) each time:
#   (a) package       find_package(qos) in a prefix that `cmake --install` filled
#   (b) subdirectory  add_subdirectory of this source tree
#   (c) fetchcontent  FetchContent from this repository's git history (a file:// URL, offline)
#   (d) deb           find_package(qos) in the .deb that `cpack -G DEB` makes, unpacked with dpkg -x
# Prints one line per way with its result and time; exits non-zero when any failed (after
# trying them all, with the end of the failed one's log). Leaves nothing behind.
#
# usage: scripts/check-consumer.sh [BUILD_DIR]
#   BUILD_DIR  a configured qos build (build/ after scripts/test.sh), installed and packaged for
#              (a) and (d); only what is out of date is built. Without it qos is configured and
#              built in a temporary folder first.
# QOS_CONSUMER_KEEP=1 keeps the temporary folder (its path is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=$(mktemp -d "${TMPDIR:-/tmp}/qos-check-consumer.XXXXXX")
if [[ "${QOS_CONSUMER_KEEP:-0}" == 1 ]]; then
  echo "check-consumer: keeping $work"
else
  trap 'rm -rf "$work"' EXIT
fi
jobs=$(nproc)
started=$SECONDS

# The consumer is built for speed (-O2, no debug info): what is checked is that it configures,
# links and behaves, not how fast it is.
consumer_flags=(-DCMAKE_BUILD_TYPE=Release)

# Configures examples/consumer in $work/$1 with the remaining arguments, builds it, runs its
# test.
build_and_test_consumer() {
  local out=$work/$1
  shift
  cmake -S "$repo/examples/consumer" -B "$out" "${consumer_flags[@]}" "$@"
  cmake --build "$out" -j "$jobs"
  ctest --test-dir "$out" --output-on-failure --no-tests=error --timeout 60
}

# find_package(qos) must have found the package under $2, not another qos on the system.
expect_found_under() {
  local dir
  dir=$(sed -n 's/^qos_DIR:PATH=//p' "$work/$1/CMakeCache.txt")
  [[ "$dir" == "$2"/* ]] || {
    echo "find_package(qos) found '$dir', not the package under $2" >&2
    return 1
  }
}

# A parent build gets qos's libraries alone: no tests, benchmarks or example configured.
expect_libraries_only() {
  local d
  for d in tests bench examples; do
    [[ ! -e "$1/$d" ]] || {
      echo "qos's $d/ was configured in the parent build ($1/$d)" >&2
      return 1
    }
  done
}

mode_package() {
  cmake --build "$build" -j "$jobs" --target qos
  cmake --install "$build" --prefix "$work/prefix"
  build_and_test_consumer package -DQOS_CONSUMER_MODE=package -DCMAKE_PREFIX_PATH="$work/prefix"
  expect_found_under package "$work/prefix"
}

mode_subdirectory() {
  build_and_test_consumer subdirectory -DQOS_CONSUMER_MODE=subdirectory \
    -DQOS_SOURCE_DIR="$repo"
  expect_libraries_only "$work/subdirectory/qos-build"
}

# FetchContent clones this repository, so qos is built as committed at HEAD: changes to qos not
# yet committed (staged or not, and untracked files) are not seen by this way, only by the
# others. The consumer itself comes from the working tree, as in every way.
mode_fetchcontent() {
  local head
  head=$(git -C "$repo" rev-parse HEAD)
  if [[ -n "$(git -C "$repo" status --porcelain)" ]]; then
    echo "note: the working tree has uncommitted changes; FetchContent builds HEAD ($head)"
  fi
  build_and_test_consumer fetchcontent -DQOS_CONSUMER_MODE=fetchcontent \
    -DQOS_GIT_URL="file://$repo" -DQOS_GIT_TAG="$head"
  expect_libraries_only "$work/fetchcontent/_deps/qos-build"
}

# CPack installs the build into a staging folder of its own; all of the build must be up to
# date for it (with BUILD_DIR from scripts/test.sh it is).
mode_deb() {
  cpack --config "$build/CPackConfig.cmake" -G DEB -B "$work/deb"
  local deb
  deb=$(find "$work/deb" -maxdepth 1 -name 'libqos-dev_*.deb')
  [[ -n "$deb" ]] || {
    echo "cpack made no libqos-dev .deb" >&2
    return 1
  }
  dpkg-deb -x "$deb" "$work/deb/root"
  build_and_test_consumer deb -DQOS_CONSUMER_MODE=package -DCMAKE_PREFIX_PATH="$work/deb/root/usr"
  expect_found_under deb "$work/deb/root/usr"
}

if (($# > 0)); then
  build=$(cd "$1" && pwd)
else
  build=$work/qos-build
  echo "check-consumer: configuring and building qos in $build"
  if ! {
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DQOS_BUILD_TESTS=OFF \
      -DQOS_BUILD_BENCH=OFF -DQOS_BUILD_EXAMPLES=OFF && cmake --build "$build" -j "$jobs"
  } >"$work/qos-build.log" 2>&1; then
    tail -n 40 "$work/qos-build.log" >&2
    echo "check-consumer: qos itself does not build" >&2
    exit 1
  fi
fi

# Runs mode_$2 with its output in $work/$2.log; prints the result line for way $1.
failed=0
run() {
  local label=$1 mode=$2 t0=$SECONDS rc
  # errexit holds inside the subshell only when the subshell's own status is not being tested:
  # hence no `if ( ... )` or `|| rc=$?` here.
  set +e
  (
    set -e
    "mode_$mode"
  ) >"$work/$mode.log" 2>&1
  rc=$?
  set -e
  if ((rc == 0)); then
    printf 'consumer %s %-13s ok      %4d s\n' "$label" "$mode" $((SECONDS - t0))
  else
    printf 'consumer %s %-13s FAILED  %4d s (exit %d); the end of its log:\n' "$label" "$mode" \
      $((SECONDS - t0)) "$rc"
    tail -n 40 "$work/$mode.log" | sed 's/^/    /'
    failed=$((failed + 1))
  fi
  grep '^note:' "$work/$mode.log" | sed 's/^/    /' || true
}

run "(a)" package
run "(b)" subdirectory
run "(c)" fetchcontent
run "(d)" deb

if ((failed > 0)); then
  echo "check-consumer: $failed of 4 ways failed ($((SECONDS - started)) s)" >&2
  exit 1
fi
echo "check-consumer: the consumer builds and passes its smoke test all four ways ($((SECONDS - started)) s)"
