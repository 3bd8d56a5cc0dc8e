#!/bin/sh
# Container benchmark, all in one run (release build, a real daemon on a private root through the
# e2e harness; needs root, runc, conmon and the test registry):
#  - create+start of a container in an existing pod, p50/p90: ferrio (CreateContainer +
#    StartContainer) against the raw floor (`runc create` + `runc start` of an equivalent bundle:
#    the same rootfs, namespaces and process) and against conmon + runc; StopContainer
#    (timeout 0) and RemoveContainer after it, p50/p90;
#  - monitor RSS (VmRSS) with 1, 10 and 50 running containers: ferrio-monitor against Debian's
#    conmon monitoring the same containers.
#   hack/bench-container.sh            # 20 runs each
#   FERRIO_BENCH_N=50 hack/bench-container.sh
set -eu
cd "$(dirname "$0")/.."
if [ -z "${FERRIO_TEST_REGISTRY:-}" ]; then
    hack/test-registry.sh start >/dev/null
    FERRIO_TEST_REGISTRY=127.0.0.1:5055
    export FERRIO_TEST_REGISTRY
fi
exec cargo test --release --test e2e containers::bench_container -- --ignored --nocapture --test-threads=1
