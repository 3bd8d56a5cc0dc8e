#!/bin/bash
# make test-vm: the node-shape suite on a systemd + cgroup v2 node.
#
# Builds the Debian package and the suite (e2e/node_shape) on this host, boots the VM of
# hack/vm/vm.sh, installs the package there with apt as an operator would, and runs the suite in
# the guest against ferrio.service, once with each cgroup driver. The guest pulls its images from
# this host's test registry (hack/test-registry.sh) through QEMU's user network (10.0.2.2).
# The last line is the suite's `N passed, M failed`; the exit status is non-zero on any failure,
# and where no VM can run it fails saying why: it never passes without having run.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

log() { echo "test-vm: $*" >&2; }

export PATH="$HOME/.cargo/bin:/root/.cargo/bin:$PATH"

# FERRIO_VM_DEB=debug packs the debug binaries instead (quicker to build, for iterating on the
# suite); the default is the release package, as `make deb` builds it for operators.
if [ "${FERRIO_VM_DEB:-release}" = debug ]; then
  log "building the package from the debug build"
  cargo build -q --bin ferrio --bin ferrio-monitor
  hack/build-deb.sh --bin-dir target/debug --out target/debian-debug --fast >/dev/null
  deb=$(ls -t target/debian-debug/ferrio_*_amd64.deb | head -n1)
else
  log "building the package (make deb)"
  make -s deb
  deb=$(ls -t target/debian/ferrio_*_amd64.deb | head -n1)
fi
[ -f "$deb" ] || { log "make deb produced no package"; exit 1; }

log "building the node-shape suite"
cargo build -q --example node_shape
suite=target/debug/examples/node_shape

hack/test-registry.sh start
registry_port=${FERRIO_TEST_REGISTRY_ADDR:-127.0.0.1:5055}
registry_port=${registry_port##*:}

out=$(mktemp)
trap 'rm -f "$out"' EXIT

# In the guest: install the package as an operator would, check its man pages, run the suite.
guest_script=$(cat <<EOF
set -euo pipefail
cd '$repo'
apt-get install -y -q --no-install-recommends './$deb' >/dev/null
man -w ferrio >/dev/null && man -w ferrio.toml >/dev/null
echo "test-vm: installed \$(dpkg-query -W -f='\${Package} \${Version}' ferrio); man pages present"
'./$suite' --registry 10.0.2.2:$registry_port ${FERRIO_NODE_DRIVERS:-}
EOF
)

set +e
# The summary is printed once, last, below.
hack/vm/vm.sh run -- "$guest_script" 2>&1 | tee "$out" | grep --line-buffered -Ev '^[0-9]+ passed, [0-9]+ failed$'
status=${PIPESTATUS[0]}
set -e

summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out" | tail -n1 || true)
if [ -z "$summary" ]; then
  log "the suite did not run to its end (exit $status)"
  echo "0 passed, 1 failed"
  exit 1
fi
echo "$summary"
exit "$status"
