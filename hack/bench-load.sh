#!/usr/bin/env bash
# Load benchmark: a private ferrio with N pods x 2 busybox containers (sleeping), then
#   - ListPodSandbox, ListContainers, ListContainerStats latency p50/p99 (CALLS serial calls each;
#     goal p99 <= 5 ms for the two lists, which kubelet calls every second),
#   - daemon CPU at idle over IDLE seconds (utime+stime from /proc/<pid>/stat; goal < 1%), the
#     CPU of its reaped children and of all ferrio-monitor processes over the same window,
#   - daemon RSS/PSS, monitors' total and per-monitor RSS/PSS.
# Prints a table and writes hack/bench/results/load-<time>.csv (examples/bench_load.rs does the work).
#
# The daemon is its own: root, runroot, socket, drop-in dir and CNI conflist (bridge fload<hex>,
# a free 10.216.X.0/24) under /var/tmp/ferrio-load-<hex>. Images come from the test registry
# (hack/test-registry.sh, started here). Pods, monitors, mounts, the bridge, its nat rules and the
# cgroups are all removed at the end, also on failure; the run fails if anything is left.
#
#   hack/bench-load.sh                       # N=100, 1000 calls, 30 s idle, release build
#   N=3 CALLS=50 IDLE=3 hack/bench-load.sh   # a quick look
#   PROFILE=debug hack/bench-load.sh
set -euo pipefail

N=${N:-100}
CALLS=${CALLS:-1000}
IDLE=${IDLE:-30}
PARALLEL=${PARALLEL:-4}
PROFILE=${PROFILE:-release}
REGISTRY=${FERRIO_TEST_REGISTRY:-127.0.0.1:5055}

cd "$(dirname "$0")/.."
export PATH=$HOME/.cargo/bin:/root/.cargo/bin:$PATH
[ "$(id -u)" = 0 ] || { echo "bench-load: must run as root" >&2; exit 1; }

hack/test-registry.sh start >/dev/null
if [ "$PROFILE" = release ]; then
  cargo build -q --release --bins --example bench_load
  OUT=${CARGO_TARGET_DIR:-target}/release
else
  cargo build -q --bins --example bench_load
  OUT=${CARGO_TARGET_DIR:-target}/debug
fi

exec "$OUT/examples/bench_load" --pods "$N" --calls "$CALLS" --idle-secs "$IDLE" \
  --parallel "$PARALLEL" --ferrio "$OUT/ferrio" --monitor "$OUT/ferrio-monitor" \
  --registry "$REGISTRY" --results hack/bench/results
