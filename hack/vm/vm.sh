#!/bin/bash
# ferrio's VM test bed: a Debian 12 node (systemd, pure cgroup v2, AppArmor) booted with QEMU, with this
# repository shared into it at the same absolute path.
#
# usage: hack/vm/vm.sh COMMAND
#   image            build the node image, or reuse the cached one built from the same recipe; prints its dir
#   up               build/reuse the image, boot it and wait for ssh
#   ssh [CMD...]     run CMD in the guest as root (the words are joined and run by the guest's shell, as
#                    ssh does), or open an interactive shell; the exit status is CMD's
#   down             stop the VM and remove its run state
#   run -- CMD...    image + up + ssh CMD + down (also on failure and ^C); exits with CMD's status
#   shell            up + interactive ssh + down
#   status           list the VMs running from this cache
#
# environment:
#   FERRIO_VM_CACHE         where everything is written (default /var/cache/ferrio-vm)
#   FERRIO_VM_INSTANCE      which VM `up`, `ssh` and `down` act on (default "default"); `run` and `shell`
#                           use a fresh one of their own unless this is set
#   FERRIO_VM_SHARES        more host directories to share, colon-separated (the repository always is)
#   FERRIO_VM_ACCEL         kvm or tcg instead of choosing automatically
#   FERRIO_VM_CPUS          vCPUs (default 2)
#   FERRIO_VM_MEMORY        MiB of memory (default 4096)
#   FERRIO_VM_BOOT_TIMEOUT  seconds to wait for ssh after starting QEMU (default 300)
#   FERRIO_VM_REBUILD=1     `image` builds a new image even when one from the same recipe exists
#   FERRIO_VM_QEMU          the QEMU binary (default qemu-system-x86_64)
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd "$here/../.." && pwd -P)
RECIPE=$here/image.sh

CACHE=${FERRIO_VM_CACHE:-/var/cache/ferrio-vm}
INSTANCE=${FERRIO_VM_INSTANCE:-default}
CPUS=${FERRIO_VM_CPUS:-2}
MEMORY=${FERRIO_VM_MEMORY:-4096}
BOOT_TIMEOUT=${FERRIO_VM_BOOT_TIMEOUT:-300}
QEMU=${FERRIO_VM_QEMU:-qemu-system-x86_64}
# Free space the cache needs: a build holds the unpacked rootfs and the image; a running VM's
# copy-on-write overlay grows with what the guest writes.
BUILD_SPACE_MB=3072
RUN_SPACE_MB=1024

log() { echo "vm: $*" >&2; }
die() {
  echo "vm: error: $*" >&2
  exit 1
}

usage() {
  sed -n '/^# usage:/,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
  exit 2
}

need_root() {
  [ "$(id -u)" = 0 ] || die "$1 needs root (debootstrap, 9p passthrough)"
}

need_tools() {
  local tool missing=()
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  [ "${#missing[@]}" = 0 ] || die "no VM can run here: ${missing[*]} not found (run hack/install-deps.sh)"
}

need_space() { # megabytes what
  mkdir -p "$CACHE"
  local avail_kb
  avail_kb=$(df -Pk "$CACHE" | awk 'NR == 2 { print $4 }')
  if [ "$((avail_kb / 1024))" -lt "$1" ]; then
    die "no VM can run here: $2 needs ${1} MiB free in $CACHE, only $((avail_kb / 1024)) MiB are"
  fi
}

# --- the image -------------------------------------------------------------------------------------

recipe_hash() {
  sha256sum "$RECIPE" | cut -c1-16
}

image_dir() {
  echo "$CACHE/images/bookworm-$(recipe_hash)"
}

image_ready() { # dir
  [ -f "$1/ready" ]
}

# Builds the image unless one from the same recipe exists; prints its directory.
ensure_image() {
  local dir build started
  dir=$(image_dir)
  if image_ready "$dir" && [ "${FERRIO_VM_REBUILD:-}" != 1 ]; then
    echo "$dir"
    return
  fi
  need_root "building the VM image"
  need_tools debootstrap mkfs.ext4 ssh-keygen unshare flock sha256sum
  mkdir -p "$CACHE/images"
  # One build at a time per cache; a second caller waits and then finds the image ready.
  exec {lock_fd}>"$CACHE/images/.lock"
  flock "$lock_fd"
  if image_ready "$dir" && [ "${FERRIO_VM_REBUILD:-}" != 1 ]; then
    exec {lock_fd}>&-
    echo "$dir"
    return
  fi
  need_space "$BUILD_SPACE_MB" "building the image"
  build=$dir.build
  rm -rf --one-file-system "$build"
  mkdir -p "$build"
  log "building the node image $(basename "$dir") (logs in $build)"
  started=$SECONDS
  if ! bash "$RECIPE" "$build" "$CACHE/debs" </dev/null >&2; then
    exec {lock_fd}>&-
    die "building the image failed; logs in $build"
  fi
  touch "$build/ready"
  rm -rf --one-file-system "$dir"
  mv "$build" "$dir"
  # Images of older recipes are dead weight; running VMs keep their own copies of what they need.
  find "$CACHE/images" -mindepth 1 -maxdepth 1 ! -path "$dir" ! -name .lock -exec rm -rf --one-file-system {} +
  exec {lock_fd}>&-
  log "image built in $((SECONDS - started)) s: $dir ($(du -sh --apparent-size "$dir/disk.ext4" | cut -f1) apparent, $(du -sh "$dir/disk.ext4" | cut -f1) used)"
  echo "$dir"
}

# --- the accelerator -------------------------------------------------------------------------------

# Sets ACCEL_ARGS and ACCEL_WHY.
choose_accel() {
  local tcg=(-accel "tcg,thread=multi" -cpu max) kvm=(-accel kvm -cpu host) probe
  case ${FERRIO_VM_ACCEL:-auto} in
    kvm)
      ACCEL_ARGS=("${kvm[@]}") ACCEL_WHY="kvm (FERRIO_VM_ACCEL=kvm)"
      return
      ;;
    tcg)
      ACCEL_ARGS=("${tcg[@]}") ACCEL_WHY="tcg (FERRIO_VM_ACCEL=tcg)"
      return
      ;;
    auto) ;;
    *) die "FERRIO_VM_ACCEL must be kvm, tcg or auto, not '$FERRIO_VM_ACCEL'" ;;
  esac
  ACCEL_ARGS=("${tcg[@]}")
  if [ ! -e /dev/kvm ]; then
    ACCEL_WHY="tcg (emulation: there is no /dev/kvm)"
  elif [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    ACCEL_WHY="tcg (emulation: /dev/kvm is not readable and writable for uid $(id -u))"
  elif [ -d /sys/module/kvm_pvm ]; then
    # PVM accepts KVM_CREATE_VM but runs only PVM-patched guest kernels: a stock one hangs silently.
    ACCEL_WHY="tcg (emulation: /dev/kvm is PVM (/sys/module/kvm_pvm), which boots only PVM-patched kernels)"
  elif [ ! -d /sys/module/kvm_intel ] && [ ! -d /sys/module/kvm_amd ]; then
    ACCEL_WHY="tcg (emulation: /dev/kvm is backed by neither kvm_intel nor kvm_amd)"
  elif ! probe=$(echo quit | timeout 20 "$QEMU" -machine none -accel kvm -nodefaults -display none \
    -monitor stdio 2>&1 >/dev/null); then
    ACCEL_WHY="tcg (emulation: QEMU cannot use /dev/kvm: $(echo "$probe" | head -n1))"
  else
    ACCEL_ARGS=("${kvm[@]}") ACCEL_WHY="kvm (/dev/kvm is a usable $(
      [ -d /sys/module/kvm_intel ] && echo kvm_intel || echo kvm_amd
    ))"
  fi
}

# --- one VM's run state ----------------------------------------------------------------------------

run_dir() { # instance
  echo "$CACHE/run/$1"
}

valid_instance() {
  [[ $INSTANCE =~ ^[A-Za-z0-9_.-]+$ ]] || die "FERRIO_VM_INSTANCE must be letters, digits, '.', '_' or '-'"
}

# Prints the pid of the instance's QEMU if it runs; the pid is checked against the command line, so a
# reused pid is never taken for ours.
qemu_pid() { # run_dir
  local pid state
  pid=$(cat "$1/qemu.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$state" ] && [ "$state" != Z ] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$1/" || return 1
  echo "$pid"
}

console_tail() { # run_dir
  if [ -s "$1/console.log" ]; then
    echo "vm: last lines of the serial console ($1/console.log):" >&2
    tail -n 40 "$1/console.log" | tr -d '\r' | sed 's/^/  | /' >&2
  fi
}

# Stops the instance's QEMU (its disk is a throw-away snapshot, so there is nothing to shut down
# cleanly) and removes its run state.
stop_instance() { # run_dir
  local run=$1 pid i
  [ -d "$run" ] || return 0
  if [ -S "$run/ssh.sock" ]; then
    ssh -F "$run/ssh_config" -O exit ferrio-vm >/dev/null 2>&1 || true
  fi
  if pid=$(qemu_pid "$run"); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      qemu_pid "$run" >/dev/null || break
      sleep 0.1
    done
    if qemu_pid "$run" >/dev/null; then
      log "QEMU $pid ignored SIGTERM; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        qemu_pid "$run" >/dev/null || break
        sleep 0.1
      done
    fi
    qemu_pid "$run" >/dev/null && die "QEMU $pid in $run does not exit"
  fi
  rm -rf --one-file-system "$run"
  rmdir "$CACHE/run" 2>/dev/null || true
}

free_port() {
  local port
  for _ in $(seq 50); do
    port=$((20000 + RANDOM % 40000))
    if [ -z "$(ss -Htln "sport = :$port" 2>/dev/null)" ]; then
      echo "$port"
      return
    fi
  done
  die "found no free local port for ssh"
}

write_ssh_config() { # run_dir port
  cat >"$1/ssh_config" <<EOF
Host ferrio-vm
  HostName 127.0.0.1
  Port $2
  User root
  IdentityFile $1/id_ed25519
  IdentitiesOnly yes
  HostKeyAlias ferrio-vm
  UserKnownHostsFile $1/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
  ConnectTimeout 10
  ServerAliveInterval 15
  ServerAliveCountMax 8
  ControlPath $1/ssh.sock
  ControlMaster no
EOF
}

# Starts the connection every later ssh reuses (a new one costs seconds under emulation). Its output goes
# to a file: a background master holding the caller's stdout would keep a pipe open.
start_master() { # run_dir
  ssh -F "$1/ssh_config" -o ControlMaster=yes -o ControlPersist=yes -f -N ferrio-vm \
    </dev/null >/dev/null 2>>"$1/ssh.log"
}

# The comma-separated TAG=PATH list for the kernel command line, and the -virtfs arguments.
shares() {
  local paths=("$repo") extra path i=0 words
  SHARE_ARGS=() SHARE_LIST=
  if [ -n "${FERRIO_VM_SHARES:-}" ]; then
    IFS=: read -r -a words <<<"$FERRIO_VM_SHARES"
    for extra in "${words[@]}"; do
      [ -n "$extra" ] || continue
      [ -d "$extra" ] || die "FERRIO_VM_SHARES: $extra is not a directory"
      paths+=("$(cd "$extra" && pwd -P)")
    done
  fi
  for path in "${paths[@]}"; do
    # The kernel command line splits on spaces and the list on ',' and '='.
    [[ $path =~ ^/[A-Za-z0-9_./+@-]*$ ]] || die "cannot share $path: only [A-Za-z0-9_./+@-] in shared paths"
    SHARE_ARGS+=(-virtfs "local,path=$path,mount_tag=share$i,security_model=passthrough,multidevs=remap,id=share$i")
    SHARE_LIST+="${SHARE_LIST:+,}share$i=$path"
    i=$((i + 1))
  done
}

cmd_up() {
  need_root "booting the VM"
  need_tools "$QEMU" ssh ss
  valid_instance
  local img run port pid started attempt err
  img=$(ensure_image)
  run=$(run_dir "$INSTANCE")
  if [ -d "$run" ]; then
    if pid=$(qemu_pid "$run"); then
      die "VM '$INSTANCE' is already up (QEMU pid $pid); 'hack/vm/vm.sh down' first"
    fi
    stop_instance "$run"
  fi
  [ "${#run}" -le 90 ] || die "$run is too long a path for ssh's control socket; use a shorter FERRIO_VM_CACHE"
  need_space "$RUN_SPACE_MB" "running the VM"
  mkdir -p "$CACHE/run"
  mkdir "$run" || die "VM '$INSTANCE' is being started by someone else"
  OWNED_RUN=$run
  mkdir "$run/tmp"
  # This VM's own copies: a rebuild may replace the image directory while it runs.
  install -m 0600 "$img/id_ed25519" "$run/id_ed25519"
  cp "$img/known_hosts" "$run/known_hosts"
  shares
  choose_accel
  echo "$ACCEL_WHY" >"$run/accel"
  log "accelerator: $ACCEL_WHY"

  local cmdline="console=ttyS0 root=/dev/vda rw panic=1 apparmor=1 security=apparmor"
  cmdline+=" systemd.unified_cgroup_hierarchy=1 ferrio.shares=$SHARE_LIST"
  started=$SECONDS
  for attempt in 1 2 3; do
    port=$(free_port)
    echo "$port" >"$run/ssh.port"
    write_ssh_config "$run" "$port"
    # snapshot=on keeps the image untouched; QEMU puts the overlay in TMPDIR, here inside the run dir.
    if TMPDIR=$run/tmp "$QEMU" -name "ferrio-vm-$INSTANCE" \
      -machine q35 "${ACCEL_ARGS[@]}" -smp "$CPUS" -m "$MEMORY" \
      -nodefaults -display none -monitor none -no-reboot \
      -serial "file:$run/console.log" \
      -kernel "$img/vmlinuz" -initrd "$img/initrd.img" -append "$cmdline" \
      -drive "file=$img/disk.ext4,format=raw,if=virtio,snapshot=on,cache=unsafe" \
      -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$port-:22" \
      -device virtio-net-pci,netdev=net0,romfile= \
      -device virtio-rng-pci \
      "${SHARE_ARGS[@]}" \
      -daemonize -pidfile "$run/qemu.pid" </dev/null 2>"$run/qemu.log"; then
      break
    fi
    err=$(cat "$run/qemu.log")
    if [ "$attempt" -lt 3 ] && grep -q 'host forwarding' <<<"$err"; then
      continue # the port was taken in the meantime
    fi
    stop_instance "$run"
    die "QEMU did not start: $err"
  done
  pid=$(qemu_pid "$run") || {
    console_tail "$run"
    stop_instance "$run"
    die "QEMU exited right after starting"
  }
  log "QEMU pid $pid, ssh on 127.0.0.1:$port, console in $run/console.log; waiting for ssh"
  until start_master "$run"; do
    if ! qemu_pid "$run" >/dev/null; then
      console_tail "$run"
      stop_instance "$run"
      die "QEMU exited during boot"
    fi
    if [ $((SECONDS - started)) -ge "$BOOT_TIMEOUT" ]; then
      console_tail "$run"
      tail -n 3 "$run/ssh.log" 2>/dev/null | sed 's/^/vm: ssh: /' >&2
      stop_instance "$run"
      die "the guest did not answer ssh within $BOOT_TIMEOUT s ($ACCEL_WHY)"
    fi
    sleep 1
  done
  # The shares are mounted before sshd starts; a failed mount does not stop sshd, so check it here.
  # These commands must not read the caller's stdin: it belongs to the command `run` or `shell` runs next.
  if ! vm_ssh "$run" mountpoint -q "$repo" </dev/null; then
    vm_ssh "$run" journalctl -b -u ferrio-shares.service --no-pager </dev/null | sed 's/^/  | /' >&2 || true
    stop_instance "$run"
    die "the guest did not mount $repo from the host"
  fi
  log "up in $((SECONDS - started)) s: instance '$INSTANCE', $repo shared at the same path"
}

vm_ssh() { # run_dir [cmd...]
  local run=$1
  shift
  # A master lost to a network hiccup is started again rather than failing every later command.
  if ! ssh -F "$run/ssh_config" -O check ferrio-vm >/dev/null 2>&1; then
    start_master "$run" || die "cannot reach the guest over ssh (see $run/ssh.log)"
  fi
  if [ "$#" = 0 ]; then
    if [ -t 0 ]; then
      ssh -F "$run/ssh_config" -t ferrio-vm
    else
      ssh -F "$run/ssh_config" ferrio-vm
    fi
  else
    # "--" before the host: ssh stops taking options there, so a command may begin with "-".
    ssh -F "$run/ssh_config" -- ferrio-vm "$@"
  fi
}

running_run_dir() {
  valid_instance
  local run
  run=$(run_dir "$INSTANCE")
  qemu_pid "$run" >/dev/null || die "VM '$INSTANCE' is not up ('hack/vm/vm.sh up' or 'run')"
  echo "$run"
}

cmd_ssh() {
  [ "${1:-}" = -- ] && shift
  local run
  run=$(running_run_dir)
  vm_ssh "$run" "$@"
}

cmd_down() {
  valid_instance
  local run
  run=$(run_dir "$INSTANCE")
  if [ ! -d "$run" ]; then
    log "VM '$INSTANCE' is not up"
    return
  fi
  stop_instance "$run"
  log "VM '$INSTANCE' is down"
}

cmd_status() {
  local run pid found=0
  for run in "$CACHE"/run/*/; do
    [ -d "$run" ] || continue
    run=${run%/}
    found=1
    if pid=$(qemu_pid "$run"); then
      echo "$(basename "$run"): up, QEMU pid $pid, ssh 127.0.0.1:$(cat "$run/ssh.port"), $(cat "$run/accel")"
    else
      echo "$(basename "$run"): stale run state (no QEMU); 'down' removes it"
    fi
  done
  [ "$found" = 1 ] || echo "no VM is up in $CACHE"
}

# The run dir this process created, and so may remove; never a VM someone else started.
OWNED_RUN=

# From here on the VM this process starts is stopped however the script ends: failure, ^C, SIGTERM or a
# normal exit.
stop_on_exit() {
  trap 'trap - EXIT; [ -z "$OWNED_RUN" ] || stop_instance "$OWNED_RUN"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
}

cmd_run() {
  [ "${1:-}" = -- ] && shift
  [ "$#" -gt 0 ] || usage
  [ -n "${FERRIO_VM_INSTANCE:-}" ] || INSTANCE=run-$$
  stop_on_exit
  cmd_up
  local status=0
  cmd_ssh "$@" || status=$?
  exit "$status"
}

cmd_shell() {
  [ "$#" = 0 ] || usage
  [ -n "${FERRIO_VM_INSTANCE:-}" ] || INSTANCE=shell-$$
  stop_on_exit
  cmd_up
  log "from another terminal: FERRIO_VM_INSTANCE=$INSTANCE hack/vm/vm.sh ssh"
  local status=0
  cmd_ssh || status=$?
  exit "$status"
}

[ "$#" -gt 0 ] || usage
command=$1
shift
case $command in
  image)
    [ "$#" = 0 ] || usage
    ensure_image
    ;;
  up)
    [ "$#" = 0 ] || usage
    # A boot that fails leaves nothing behind; one that succeeds runs until `down`.
    stop_on_exit
    cmd_up
    trap - EXIT INT TERM HUP
    ;;
  ssh) cmd_ssh "$@" ;;
  down)
    [ "$#" = 0 ] || usage
    cmd_down
    ;;
  run) cmd_run "$@" ;;
  shell) cmd_shell "$@" ;;
  status) cmd_status ;;
  -h | --help | help) usage ;;
  *) usage ;;
esac
