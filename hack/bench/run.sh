#!/bin/bash
# Side-by-side benchmark: ferrio vs containerd (Debian's package, CRI plugin) vs the floors
# (`runc run`, conmon + runc), same images, CNI plugins and runc, on one machine in one run.
#
#   hack/bench/run.sh [N]          # N iterations per runtime and metric (default 50)
#   BENCH_LIST_PODS=100            # pods present while ListPodSandbox / ListContainers are timed
#   BENCH_MEM_PODS=10,50           # running pods at which memory is sampled
#   BENCH_STREAM_PODS=500          # pods (2 containers each) for StreamContainers vs ListContainers; 0 = skip
#   BENCH_ONLY_STREAM=1            # only that comparison (ferrio alone), e.g. with a small BENCH_STREAM_PODS
#   BENCH_NO_INSTALL=1             # do not apt-get install containerd when it is missing
#   BENCH_HANDLER=runc|crun        # ferrio's handler and the floors' runtime (default: ferrio's default)
#   BENCH_ONLY_NRI=1               # only the NRI row (pod lifecycle, NRI + a no-op plugin vs NRI off)
#
# Writes the table to stdout and CSV + PNG under hack/bench/results/. Needs root. Everything it
# starts lives under /var/tmp/ferrio-bench-<hex> and is removed when it ends (also on ^C).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=$HOME/.cargo/bin:/root/.cargo/bin:$PATH

N=${1:-50}
if [ "$(id -u)" != 0 ]; then
  echo "bench: needs root (runc, CNI, mounts)" >&2
  exit 1
fi

# Packages and the CNI plugins linked into /opt/cni/bin: what a fresh machine lacks.
hack/install-deps.sh >&2

if ! command -v containerd >/dev/null || ! command -v containerd-shim-runc-v2 >/dev/null; then
  if [ -z "${BENCH_NO_INSTALL:-}" ]; then
    echo "bench: installing containerd (Debian package)" >&2
    # No systemd here to start the packaged service; the benchmark runs its own containerd.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q containerd >&2 ||
      echo "bench: containerd could not be installed; ferrio against the floors only" >&2
  fi
fi

hack/test-registry.sh start >/dev/null
cargo build --release --bin ferrio --bin ferrio-monitor --example bench >&2

# Where cargo put them: CARGO_TARGET_DIR moves the build, and a stale target/ would be timed.
out=${CARGO_TARGET_DIR:-target}/release
exec "$out/examples/bench" "$N" \
  --ferrio "$out/ferrio" \
  --list-pods "${BENCH_LIST_PODS:-100}" \
  --mem-pods "${BENCH_MEM_PODS:-10,50}" \
  --stream-pods "${BENCH_STREAM_PODS:-500}" \
  ${BENCH_ONLY_STREAM:+--only-stream} \
  --registry "${FERRIO_TEST_REGISTRY:-127.0.0.1:5055}" \
  --results hack/bench/results \
  ${BENCH_HANDLER:+--handler "$BENCH_HANDLER"} \
  ${BENCH_ONLY_NRI:+--only-nri}
