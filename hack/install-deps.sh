#!/bin/bash
# Install everything ferrio and its tests need on a fresh Debian 12 machine (run as root).
# Idempotent: a second run installs nothing and does not touch apt's lists.
set -euo pipefail

PACKAGES=(
  runc crun conmon
  containernetworking-plugins
  docker-registry skopeo umoci
  busybox-static catatonit
  protobuf-compiler
  iproute2 iptables kmod
  jq curl ca-certificates
  gcc libc6-dev pkg-config make
  dpkg-dev binutils lintian
  # The VM test bed (hack/vm): QEMU is installed separately below.
  debootstrap e2fsprogs openssh-client util-linux
)

if [ "$(id -u)" != 0 ]; then
  echo "install-deps.sh: must run as root" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  # dpkg-query prints "install ok installed" only for a fully installed package.
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps.sh: installing ${missing[*]}"
  # Debian's `busybox` (dynamic) and `busybox-static` conflict; we want the static one because it is
  # copied into test images without its libraries.
  export DEBIAN_FRONTEND=noninteractive
  # Refresh the lists only when they are absent or older than a day.
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages' -mtime -1 2>/dev/null | head -n1)" ]; then
    apt-get update -q
  fi
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# QEMU for the VM test bed. bookworm's qemu-system-x86 (7.2) cannot be installed next to a qemu-utils from
# bookworm-backports (they share qemu-system-common's version), as some machines have; there it comes from
# backports too.
BACKPORTS_LIST=/etc/apt/sources.list.d/bookworm-backports.list
install_qemu() {
  export DEBIAN_FRONTEND=noninteractive
  local from_backports=0
  if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q '~bpo'; then
    from_backports=1
  elif ! apt-get install -y -q --no-install-recommends qemu-system-x86; then
    echo "install-deps.sh: qemu-system-x86 from bookworm does not install here; trying bookworm-backports" >&2
    from_backports=1
  fi
  [ "$from_backports" = 1 ] || return 0
  if ! grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" >"$BACKPORTS_LIST"
  fi
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*bookworm-backports*_Packages' 2>/dev/null | head -n1)" ]; then
    apt-get update -q
  fi
  apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86
}
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
  echo "install-deps.sh: installing qemu-system-x86"
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages' -mtime -1 2>/dev/null | head -n1)" ]; then
    apt-get update -q
  fi
  install_qemu
fi

# Debian ships the CNI plugins in /usr/lib/cni; kubelet-era tooling and ferrio's default config look in
# /opt/cni/bin.
mkdir -p /opt/cni/bin
for plugin in /usr/lib/cni/*; do
  [ -e "$plugin" ] || continue
  name=$(basename "$plugin")
  if [ ! -e "/opt/cni/bin/$name" ]; then
    ln -s "$plugin" "/opt/cni/bin/$name"
  fi
done

# e2e/conformance.rs drives the daemon with Python grpcio, a grpc-core client (1.57 and later send the
# socket path as :authority); Debian 12's python3-grpcio is older, so it comes from PyPI.
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import grpc' 2>/dev/null; then
  echo "install-deps.sh: installing Python grpcio"
  python3 -m pip install -q grpcio || python3 -m pip install -q --break-system-packages grpcio
fi

# The Debian docker-registry package starts a registry on :5000 with htpasswd auth; the tests start their
# own on 127.0.0.1:5055 (hack/test-registry.sh), so the packaged service is left as it is.

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    echo "install-deps.sh: cargo is at $HOME/.cargo/bin; add it to PATH" >&2
  else
    echo "install-deps.sh: cargo not found; install a Rust toolchain (rustup) first" >&2
    exit 1
  fi
fi

echo "install-deps.sh: all dependencies present"
