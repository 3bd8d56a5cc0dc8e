#!/usr/bin/env bash
# Sandbox benchmark: RunPodSandbox through ferrio against the floor, in one run on one network.
#
#   ferrio: SERIAL pods one after another, then PARALLEL at once (examples/bench_sandbox.rs),
#           each stopped and removed after it was timed.
#   floor:  the same work scripted by hand, timed the same way: a new netns, lo up, CNI ADD of
#           bridge + host-local + portmap (the same conflist), `runc run -d` of a pause bundle.
#
# Prints p50/p95 (ms) of both and the ratio of the p50s (goal: ferrio within 1.3x of the floor).
# Needs root, the test registry (hack/test-registry.sh start), runc, CNI plugins, jq, catatonit.
#
#   hack/bench-sandbox.sh                   # release build, 50 serial + 10 parallel
#   SERIAL=20 PARALLEL=5 PROFILE=debug hack/bench-sandbox.sh
set -euo pipefail

SERIAL=${SERIAL:-50}
PARALLEL=${PARALLEL:-10}
PROFILE=${PROFILE:-release}
REGISTRY=${FERRIO_TEST_REGISTRY:-127.0.0.1:5055}
RUNC=${RUNC:-/usr/sbin/runc}
CNI_BIN=${CNI_BIN:-/usr/lib/cni}
PAUSE_BIN=${PAUSE_BIN:-/usr/bin/catatonit}

cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-sandbox: must run as root" >&2; exit 1; }
for t in jq ip iptables "$RUNC" "$CNI_BIN/bridge" "$CNI_BIN/portmap" "$PAUSE_BIN"; do
  command -v "$t" >/dev/null || [ -x "$t" ] || { echo "bench-sandbox: missing $t" >&2; exit 1; }
done

if [ "$PROFILE" = release ]; then
  cargo build -q --release --bins --example bench_sandbox
  OUT=${CARGO_TARGET_DIR:-target}/release
else
  cargo build -q --bins --example bench_sandbox
  OUT=${CARGO_TARGET_DIR:-target}/debug
fi

TAG=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
W=$(mktemp -d /var/tmp/ferrio-bench.XXXXXX)
NET=fbench$TAG                       # network name = bridge name (under IFNAMSIZ)
CG=/ferrio-bench-$TAG                # every pod's cgroup lives below this
FERRIO_PID=
routes=$(ip -4 -o route show; ip -4 -o addr show)
for _ in $(seq 100); do
  OCTET=$((RANDOM % 250 + 2))
  grep -q "10\.215\.$OCTET\." <<<"$routes" || break
done
SUBNET=10.215.$OCTET.0/24

cleanup() {
  set +e
  [ -n "$FERRIO_PID" ] && kill "$FERRIO_PID" 2>/dev/null && wait "$FERRIO_PID" 2>/dev/null
  for id in $("$RUNC" --root "$W/runc" list -q 2>/dev/null); do
    "$RUNC" --root "$W/runc" delete -f "$id" >/dev/null 2>&1
  done
  for ns in $(ip netns list | awk '{print $1}' | grep "^fb$TAG" ); do ip netns del "$ns"; done
  # The bridge and portmap plugins' rules of this network (their comments name it), then the
  # per-pod chains they jumped to.
  local rules chains
  rules=$(iptables -w -t nat -S | grep -- "$NET" | grep '^-A')
  chains=$(grep -o -- '-j CNI-[0-9a-f]*' <<<"$rules" | awk '{print $2}' | sort -u)
  while read -r rule; do
    [ -n "$rule" ] && eval iptables -w -t nat "${rule/#-A/-D}"
  done <<<"$rules"
  for c in $chains; do iptables -w -t nat -F "$c"; iptables -w -t nat -X "$c"; done
  ip link del "$NET" 2>/dev/null
  for d in /sys/fs/cgroup/*/"${CG#/}"; do
    [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  grep " $W" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l
  rm -rf "$W"
}
trap cleanup EXIT

mkdir -p "$W"/{net.d,ipam,runc,rootfs,bundles,times,ferrio.d}
jq -n --arg net "$NET" --arg subnet "$SUBNET" --arg ipam "$W/ipam" '{
  cniVersion: "1.0.0", name: $net,
  plugins: [
    { type: "bridge", bridge: $net, isGateway: true, ipMasq: true, hairpinMode: true,
      ipam: { type: "host-local", dataDir: $ipam, routes: [{dst: "0.0.0.0/0"}],
              ranges: [[{subnet: $subnet}]] } },
    { type: "portmap", capabilities: { portMappings: true } }
  ]}' > "$W/net.d/10-bench.conflist"
# What libcni hands each plugin: the list's cniVersion and name merged into the plugin's config.
jq -c '.plugins[0] + {cniVersion, name}' "$W/net.d/10-bench.conflist" > "$W/bridge.json"
jq -c '.plugins[1] + {cniVersion, name}' "$W/net.d/10-bench.conflist" > "$W/portmap.json"

# ---- floor -------------------------------------------------------------------------------------
cp "$PAUSE_BIN" "$W/rootfs/pause"
(cd "$W" && "$RUNC" spec && mv config.json template.json)

prepare_bundle() { # $1 = index: a bundle whose netns and cgroup are the pod's own
  local i=$1 b=$W/bundles/$1
  mkdir -p "$b"
  jq --arg root "$W/rootfs" --arg ns "/var/run/netns/fb$TAG-$i" --arg cg "$CG/floor$i/pause" '
    .process.terminal = false | .process.args = ["/pause", "-P"] |
    .root = {path: $root, readonly: true} | .linux.cgroupsPath = $cg |
    .linux.namespaces = [.linux.namespaces[] | if .type == "network" then .path = $ns else . end]
  ' "$W/template.json" > "$b/config.json"
}

cni() { # $1 = command, $2 = index, $3 = plugin, stdin = config
  CNI_COMMAND=$1 CNI_CONTAINERID=floor$TAG$2 CNI_NETNS=/var/run/netns/fb$TAG-$2 CNI_IFNAME=eth0 \
    CNI_PATH=$CNI_BIN "$CNI_BIN/$3"
}

floor_run() { # $1 = index; prints the microseconds it took
  local i=$1 t0 t1
  t0=$(date +%s%N)
  ip netns add "fb$TAG-$i"
  ip -n "fb$TAG-$i" link set lo up
  cni ADD "$i" bridge < "$W/bridge.json" > "$W/bundles/$i/result.json"
  jq -c --slurpfile p "$W/bundles/$i/result.json" '. + {prevResult: $p[0]}' "$W/portmap.json" \
    | cni ADD "$i" portmap > /dev/null
  "$RUNC" --root "$W/runc" run -d --bundle "$W/bundles/$i" "floor$TAG$i" \
    < /dev/null > /dev/null 2>&1
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000))
}

floor_remove() { # $1 = index (not timed)
  local i=$1
  "$RUNC" --root "$W/runc" delete -f "floor$TAG$i" > /dev/null 2>&1 || true
  jq -c --slurpfile p "$W/bundles/$i/result.json" '. + {prevResult: $p[0]}' "$W/portmap.json" \
    | cni DEL "$i" portmap > /dev/null
  jq -c --slurpfile p "$W/bundles/$i/result.json" '. + {prevResult: $p[0]}' "$W/bridge.json" \
    | cni DEL "$i" bridge > /dev/null
  ip netns del "fb$TAG-$i"
  rmdir "/sys/fs/cgroup/"*"/${CG#/}/floor$i" 2>/dev/null || true
}

stats() { # stdin: microseconds, one a line -> "n=.. p50_ms=.. p95_ms=.."
  sort -n | awk '{ v[NR] = $1 } END {
    r50 = int((50 * NR + 99) / 100); r95 = int((95 * NR + 99) / 100);
    printf "n=%d p50_ms=%.1f p95_ms=%.1f", NR, v[r50] / 1000, v[r95] / 1000 }'
}

for i in $(seq 0 $((SERIAL + PARALLEL))); do prepare_bundle "$i"; done
floor_run 0 > /dev/null; floor_remove 0            # warm-up: caches, bridge creation
for i in $(seq 1 "$SERIAL"); do
  floor_run "$i" >> "$W/times/floor-serial"
  floor_remove "$i"
done
t0=$(date +%s%N)
for i in $(seq $((SERIAL + 1)) $((SERIAL + PARALLEL))); do
  floor_run "$i" > "$W/times/floor-parallel-$i" &
done
wait
floor_wall=$((($(date +%s%N) - t0) / 1000))
cat "$W"/times/floor-parallel-* > "$W/times/floor-parallel"
for i in $(seq $((SERIAL + 1)) $((SERIAL + PARALLEL))); do floor_remove "$i"; done

# ---- ferrio ------------------------------------------------------------------------------------
cat > "$W/ferrio.toml" <<EOF
root = "$W/root"
runroot = "$W/run"
log_level = "warn"
[api]
listen = "$W/ferrio.sock"
[runtime]
monitor_path = "$PWD/$OUT/ferrio-monitor"
namespaces_dir = "$W/run/ns"
[network]
network_dir = "$W/net.d"
plugin_dirs = ["$CNI_BIN"]
[[image.registry]]
prefix = "registry.k8s.io"
[[image.registry.mirror]]
location = "$REGISTRY"
insecure = true
EOF
"$OUT/ferrio" --config "$W/ferrio.toml" --config-dir "$W/ferrio.d" > "$W/ferrio.log" 2>&1 &
FERRIO_PID=$!
for _ in $(seq 200); do [ -S "$W/ferrio.sock" ] && break; sleep 0.05; done
[ -S "$W/ferrio.sock" ] || { echo "ferrio did not start:" >&2; cat "$W/ferrio.log" >&2; exit 1; }
ferrio_out=$("$OUT/examples/bench_sandbox" --socket "$W/ferrio.sock" --serial "$SERIAL" \
  --parallel "$PARALLEL" --cgroup-prefix "$CG")

# ---- report ------------------------------------------------------------------------------------
floor_serial=$(stats < "$W/times/floor-serial")
floor_parallel=$(stats < "$W/times/floor-parallel")
echo "$ferrio_out"
echo "floor  serial   $floor_serial"
echo "floor  parallel $floor_parallel wall_ms=$(awk -v w="$floor_wall" 'BEGIN { printf "%.1f", w / 1000 }')"
p50() { sed -n 's/.*p50_ms=\([0-9.]*\).*/\1/p'; }
fs=$(grep 'ferrio serial' <<<"$ferrio_out" | p50); ls_=$(p50 <<<"$floor_serial")
fp=$(grep 'ferrio parallel' <<<"$ferrio_out" | p50); lp=$(p50 <<<"$floor_parallel")
awk -v a="$fs" -v b="$ls_" -v c="$fp" -v d="$lp" 'BEGIN {
  printf "ratio  serial p50 %.2fx   parallel p50 %.2fx   (goal <= 1.30x)\n", a / b, c / d }'
