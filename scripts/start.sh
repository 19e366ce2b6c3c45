#!/usr/bin/env bash
# Installs the dependencies, builds the example catalog service and starts it on the default
# config (config/qos.yaml: http://127.0.0.1:9080, its admin listener with /metrics and /stats on
# http://127.0.0.1:9081). Extra arguments go to the service, e.g. --naive for the unguarded
# baseline or --db-latency-ms 100.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQOS_BUILD_TESTS=OFF -DQOS_BUILD_BENCH=OFF
cmake --build build -j "$(nproc)" --target catalog_service
exec ./build/examples/catalog_service --config config/qos.yaml --db build/catalog.db "$@"
