#!/bin/bash
# The recipe of the VM node image: a Debian 12 system from Debian's packages only, with systemd as PID 1,
# pure cgroup v2, AppArmor, runc/crun and the CNI plugins. vm.sh names the image after a hash of this file,
# so any change here makes `vm.sh image` build a new one.
#
# usage: image.sh OUT_DIR DEB_CACHE_DIR
# Writes into OUT_DIR: disk.ext4 (the root file system), vmlinuz, initrd.img, id_ed25519{,.pub} (root's
# ssh key) and known_hosts (the guest's host key under the alias ferrio-vm). Every mount it makes lives in a
# private mount namespace that dies with its process, so nothing stays mounted, also on failure.
set -euo pipefail

SUITE=bookworm
MIRROR=${FERRIO_VM_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${FERRIO_VM_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
DISK_SIZE=4G

# What a kubelet node runs, what the tests drive it with, and what an operator expects to find.
PACKAGES=(
  systemd systemd-sysv dbus udev kmod
  iproute2 iptables
  runc crun containernetworking-plugins
  apparmor
  openssh-server
  ca-certificates curl jq less man-db procps util-linux e2fsprogs iputils-ping
  initramfs-tools linux-image-amd64
)
# Modules the initramfs needs to mount the root disk; everything else loads from the root file system.
# A short list instead of MODULES=most keeps the initrd small, which matters when booting under emulation.
INITRD_MODULES=(virtio_pci virtio_blk ext4)

out=${1:?usage: image.sh OUT_DIR DEB_CACHE_DIR}
debs=${2:?usage: image.sh OUT_DIR DEB_CACHE_DIR}
rootfs=$out/rootfs

log() { echo "vm image: $*" >&2; }

# Runs "$@" in a fresh mount and pid namespace: whatever it mounts and whatever it leaves running ends
# with it.
isolated() {
  unshare --mount --propagation private --pid --fork --kill-child -- "$@"
}

# Runs a shell script inside the rootfs with /proc, /sys and /dev mounted and apt's download directory
# on the package cache (so a rebuild downloads only what changed), in an isolated namespace.
in_rootfs() { # script
  # shellcheck disable=SC2016 # the inner shell expands its own arguments
  isolated /bin/sh -euc '
    root=$1; debs=$2; script=$3
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount --rbind /dev "$root/dev"
    mount --bind "$debs" "$root/var/cache/apt/archives"
    exec chroot "$root" /bin/sh -euc "$script"
  ' sh "$rootfs" "$debs" "$1"
}

mkdir -p "$rootfs" "$debs"

log "debootstrap $SUITE (minbase) from $MIRROR"
isolated debootstrap --variant=minbase --cache-dir="$debs" "$SUITE" "$rootfs" "$MIRROR" >"$out/debootstrap.log" 2>&1 || {
  tail -n 30 "$out/debootstrap.log" >&2
  exit 1
}

# apt in the chroot resolves names like the host does while building; the guest gets its own below.
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
# Services must not start inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
# Read by mkinitramfs when the kernel's postinst builds the initrd, so it must exist before the kernel is
# installed. modules.d under /usr/share is read in addition to /etc/initramfs-tools/modules, which stays the
# package's own conffile.
mkdir -p "$rootfs/etc/initramfs-tools/conf.d" "$rootfs/usr/share/initramfs-tools/modules.d"
printf 'MODULES=list\nCOMPRESS=zstd\n' >"$rootfs/etc/initramfs-tools/conf.d/ferrio-vm.conf"
printf '%s\n' "${INITRD_MODULES[@]}" >"$rootfs/usr/share/initramfs-tools/modules.d/ferrio-vm"

log "installing ${#PACKAGES[@]} packages"
in_rootfs "
  export DEBIAN_FRONTEND=noninteractive
  # man-db rebuilds its index on every package with a man page; under emulation that is slow, and man
  # finds pages without the index.
  echo 'man-db man-db/auto-update boolean false' | debconf-set-selections
  apt-get update -q
  apt-get install -y -q --no-install-recommends ${PACKAGES[*]}
  # Keeps the cache to the packages the mirror still has.
  apt-get autoclean -q
" >"$out/packages.log" 2>&1 || {
  tail -n 30 "$out/packages.log" >&2
  exit 1
}
rm -f "$rootfs/usr/sbin/policy-rc.d"
find "$rootfs/var/cache/apt/archives" -name '*.deb' -delete
rm -f "$rootfs"/var/cache/apt/*.bin

log "configuring the guest"
echo ferrio-vm >"$rootfs/etc/hostname"
cat >"$rootfs/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	ferrio-vm
::1		localhost ip6-localhost ip6-loopback
EOF
# The disk is booted with snapshot=on: nothing is ever written back, so there is nothing to fsck.
echo '/dev/vda / ext4 rw,errors=remount-ro 0 0' >"$rootfs/etc/fstab"
# A machine id of its own, so that systemd does not treat each boot as a first boot (systemd-firstboot
# would then prompt on the console).
od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$rootfs/etc/machine-id"
echo >>"$rootfs/etc/machine-id"

# QEMU's user-mode network: the guest is 10.0.2.15, the host's loopback is 10.0.2.2, DNS is 10.0.2.3.
# A static address saves the DHCP round trips at boot.
cat >"$rootfs/etc/systemd/network/10-user-net.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
DNS=10.0.2.3
EOF
echo 'nameserver 10.0.2.3' >"$rootfs/etc/resolv.conf"

# CNI configuration is the tests' to write.
rm -rf "$rootfs/etc/cni/net.d"
mkdir -p "$rootfs/etc/cni/net.d"

# Root logs in with the image's key only.
ssh-keygen -q -t ed25519 -N '' -C ferrio-vm -f "$out/id_ed25519"
install -d -m 0700 "$rootfs/root/.ssh"
install -m 0600 "$out/id_ed25519.pub" "$rootfs/root/.ssh/authorized_keys"
cat >"$rootfs/etc/ssh/sshd_config.d/ferrio-vm.conf" <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF
# openssh-server's postinst generated the host keys; the host checks them under a fixed alias, since the
# forwarded port changes from boot to boot.
echo "ferrio-vm $(cut -d' ' -f1-2 "$rootfs/etc/ssh/ssh_host_ed25519_key.pub")" >"$out/known_hosts"

# The host's directories shared over 9p, mounted at the paths they have on the host, so host-built
# binaries and absolute paths work unchanged. vm.sh passes them on the kernel command line as
# ferrio.shares=TAG=PATH,TAG=PATH; the paths are not baked in because a clone may live anywhere.
cat >"$rootfs/usr/local/sbin/ferrio-mount-shares" <<'EOF'
#!/bin/sh
set -eu
shares=
for word in $(cat /proc/cmdline); do
  case $word in ferrio.shares=*) shares=${word#ferrio.shares=} ;; esac
done
[ -n "$shares" ] || exit 0
modprobe 9pnet_virtio
for share in $(echo "$shares" | tr , ' '); do
  tag=${share%%=*}
  path=${share#*=}
  mkdir -p "$path"
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=mmap "$tag" "$path"
done
EOF
chmod 0755 "$rootfs/usr/local/sbin/ferrio-mount-shares"
cat >"$rootfs/etc/systemd/system/ferrio-shares.service" <<'EOF'
[Unit]
Description=Mount the host's directories shared over 9p
After=local-fs.target
Before=ssh.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/ferrio-mount-shares

[Install]
WantedBy=multi-user.target
EOF

# Periodic jobs and e2scrub's boot-time clean-up only add load to a short-lived test node.
in_rootfs '
  systemctl enable systemd-networkd.service ferrio-shares.service
  systemctl mask apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer fstrim.timer \
    dpkg-db-backup.timer e2scrub_reap.service systemd-networkd-wait-online.service
' >>"$out/packages.log" 2>&1

kernel=$(find "$rootfs/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n1)
initrd=$(find "$rootfs/boot" -maxdepth 1 -name 'initrd.img-*' | sort -V | tail -n1)
if [ -z "$kernel" ] || [ -z "$initrd" ]; then
  log "no kernel or initrd in $rootfs/boot"
  exit 1
fi
cp "$kernel" "$out/vmlinuz"
cp "$initrd" "$out/initrd.img"

log "writing the $DISK_SIZE disk image"
mkfs.ext4 -q -L ferrio-root -d "$rootfs" "$out/disk.ext4" "$DISK_SIZE" >/dev/null
rm -rf "$rootfs"
