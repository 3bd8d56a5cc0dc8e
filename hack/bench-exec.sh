#!/bin/sh
# Exec latency: ExecSync `true` p50/p90, an exec round trip over SPDY and WebSocket (Exec RPC,
# upgrade, streams, exit status), and plain `runc exec` as the floor. Runs a real daemon on a
# private root through the e2e harness; needs root and the test registry.
#   hack/bench-exec.sh            # 30 runs each
#   FERRIO_BENCH_N=100 hack/bench-exec.sh
set -eu
cd "$(dirname "$0")/.."
if [ -z "${FERRIO_TEST_REGISTRY:-}" ]; then
    hack/test-registry.sh start >/dev/null
    FERRIO_TEST_REGISTRY=127.0.0.1:5055
    export FERRIO_TEST_REGISTRY
fi
exec cargo test --release --test streaming bench_exec -- --ignored --nocapture --test-threads=1
