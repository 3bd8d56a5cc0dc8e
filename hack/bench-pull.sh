#!/bin/bash
# Pull benchmark: a 5-layer image of ~200 MB random data (incompressible, so transfer and hashing
# dominate) pushed to the local test registry, then pulled cold in the same run by
#   ferrio      ImageStore::pull (download + verify + unpack), release build
#   skopeo+umoci  skopeo copy to an OCI layout, then umoci unpack
#   containerd  ctr images pull (only when ctr and a containerd socket are there)
# and the ratio ferrio / (skopeo+umoci) printed. Goal: ratio <= 1, and <= half of containerd.
#
# usage: hack/bench-pull.sh [runs]     env: LAYERS (5), LAYER_MB (40), FERRIO_TEST_REGISTRY
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${1:-3}
LAYERS=${LAYERS:-5}
LAYER_MB=${LAYER_MB:-40}
hack/test-registry.sh start >/dev/null
REG=${FERRIO_TEST_REGISTRY:-127.0.0.1:5055}
TAG="${LAYERS}x${LAYER_MB}m"
IMAGE="$REG/bench/random:$TAG"
WORK=$(mktemp -d /var/tmp/ferrio-bench-pull.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
log() { echo "bench-pull: $*" >&2; }
now() { date +%s.%N; }

if curl -sf -o /dev/null -I -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$REG/v2/bench/random/manifests/$TAG"; then
  log "reusing $IMAGE"
else
  log "building $IMAGE: $LAYERS layers of $LAYER_MB MiB random data"
  umoci init --layout "$WORK/src"
  umoci new --image "$WORK/src:$TAG"
  for i in $(seq 1 "$LAYERS"); do
    umoci unpack --image "$WORK/src:$TAG" "$WORK/b" >/dev/null
    head -c "$((LAYER_MB << 20))" /dev/urandom >"$WORK/b/rootfs/blob$i"
    umoci repack --image "$WORK/src:$TAG" "$WORK/b" >/dev/null
    rm -rf "$WORK/b"
  done
  skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$WORK/src:$TAG" "docker://$IMAGE"
  rm -rf "$WORK/src"
fi

log "building ferrio's pull benchmark (release)"
cargo test --release --test image_bench --no-run >/dev/null 2>&1 || cargo test --release --test image_bench --no-run

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

ferrio_times=() ; skopeo_times=() ; ctr_times=()
have_ctr=false
if command -v ctr >/dev/null && [ -S /run/containerd/containerd.sock ]; then have_ctr=true; fi
for run in $(seq 1 "$RUNS"); do
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  out=$(FERRIO_BENCH_IMAGE=$IMAGE cargo test -q --release --test image_bench -- --ignored --nocapture 2>/dev/null \
        | grep -o 'ferrio_pull_seconds=[0-9.]*' | cut -d= -f2)
  [ -n "$out" ] || { log "ferrio pull failed"; exit 1; }
  ferrio_times+=("$out")

  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  t0=$(now)
  skopeo --insecure-policy copy -q --src-tls-verify=false "docker://$IMAGE" "oci:$WORK/oci:$TAG"
  umoci unpack --image "$WORK/oci:$TAG" "$WORK/bundle" >/dev/null
  t1=$(now)
  skopeo_times+=("$(echo "$t1 - $t0" | bc)")
  rm -rf "$WORK/oci" "$WORK/bundle"

  if $have_ctr; then
    ctr -n ferrio-bench images rm "$IMAGE" >/dev/null 2>&1 || true
    ctr -n ferrio-bench content prune references >/dev/null 2>&1 || true
    t0=$(now)
    ctr -n ferrio-bench images pull --plain-http "$IMAGE" >/dev/null
    t1=$(now)
    ctr_times+=("$(echo "$t1 - $t0" | bc)")
    ctr -n ferrio-bench images rm "$IMAGE" >/dev/null 2>&1 || true
  fi
  log "run $run: ferrio ${ferrio_times[-1]}s, skopeo+umoci ${skopeo_times[-1]}s${ctr_times:+, containerd ${ctr_times[-1]}s}"
done

F=$(printf '%s\n' "${ferrio_times[@]}" | median)
S=$(printf '%s\n' "${skopeo_times[@]}" | median)
echo "image: $IMAGE ($LAYERS layers, $((LAYERS * LAYER_MB)) MiB random), median of $RUNS cold pulls"
printf 'ferrio pull+unpack:        %8.3f s\n' "$F"
printf 'skopeo copy + umoci unpack:%8.3f s\n' "$S"
printf 'ratio ferrio / skopeo+umoci: %.2f\n' "$(echo "$F / $S" | bc -l)"
if $have_ctr; then
  C=$(printf '%s\n' "${ctr_times[@]}" | median)
  printf 'containerd (ctr pull):     %8.3f s\n' "$C"
  printf 'ratio ferrio / containerd:   %.2f\n' "$(echo "$F / $C" | bc -l)"
else
  echo "containerd: not installed (ctr or /run/containerd/containerd.sock missing), skipped"
fi
