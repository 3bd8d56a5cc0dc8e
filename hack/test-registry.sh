#!/bin/bash
# A registry on loopback with the images the tests pull, built from local static binaries (no internet):
#   127.0.0.1:5055/pause:3.10            catatonit as /pause (registry.k8s.io/pause:3.10 via a mirror)
#   127.0.0.1:5055/library/busybox:1.36  busybox-static with every applet (docker.io/library/busybox:1.36)
#
# usage: hack/test-registry.sh start|stop|env|status
# Idempotent: `start` reuses a registry already serving on the address and skips images already pushed.
set -euo pipefail

ADDR=${FERRIO_TEST_REGISTRY_ADDR:-127.0.0.1:5055}
BASE=/var/tmp/ferrio-test-registry
# Bump when the image recipes below change: a new storage dir makes `start` rebuild the images even
# where an older registry still serves the old ones.
IMAGES_VERSION=2
DATA=$BASE/data-v$IMAGES_VERSION
CONFIG=$BASE/config.yml
PIDFILE=$BASE/registry.pid
LOG=$BASE/registry.log
REGISTRY_BIN=/usr/bin/docker-registry
BUSYBOX=/bin/busybox
CATATONIT=/usr/bin/catatonit
OCI_ACCEPT='application/vnd.oci.image.manifest.v1+json,application/vnd.oci.image.index.v1+json,application/vnd.docker.distribution.manifest.v2+json,application/vnd.docker.distribution.manifest.list.v2+json'

log() { echo "test-registry: $*" >&2; }

serving() {
  curl -sf --max-time 2 "http://$ADDR/v2/" >/dev/null 2>&1
}

has_image() { # name tag
  curl -sf --max-time 5 -o /dev/null -I -H "Accept: $OCI_ACCEPT" "http://$ADDR/v2/$1/manifests/$2"
}

start_registry() {
  if serving; then
    if grep -qs "rootdirectory: $DATA\$" "$CONFIG"; then
      log "reusing the registry serving on $ADDR"
      return
    fi
    if [ -f "$PIDFILE" ] && [ "$(cat "/proc/$(cat "$PIDFILE")/comm" 2>/dev/null)" = docker-registry ]; then
      log "restarting our registry: its images are from an older recipe"
      stop_registry
    else
      log "something else serves on $ADDR; using it as it is"
      return
    fi
  fi
  mkdir -p "$DATA"
  # Storage of older recipes is dead weight.
  find "$BASE" -mindepth 1 -maxdepth 1 -name 'data*' ! -path "$DATA" -exec rm -rf {} +
  # Our own config: the Debian package's sample enables htpasswd auth and listens on all addresses.
  cat >"$CONFIG" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $DATA
  delete:
    enabled: true
http:
  addr: $ADDR
YAML
  # setsid: the registry must outlive `make test`'s process group and not get its signals.
  setsid "$REGISTRY_BIN" serve "$CONFIG" >>"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 100); do
    if serving; then
      log "registry started on $ADDR (pid $(cat "$PIDFILE"))"
      return
    fi
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      log "registry exited; its log:"
      tail -n 20 "$LOG" >&2
      exit 1
    fi
    sleep 0.1
  done
  log "registry did not answer on $ADDR within 10s"
  exit 1
}

push() { # layout tag name
  skopeo copy --quiet --dest-tls-verify=false "oci:$1:$2" "docker://$ADDR/$3:$2"
}

# Add DIR as one layer. GNU tar writes the archive: umoci 0.4.7's own `insert` can end a layer
# without the last entry's padding and the end-of-archive blocks, which strict unpackers refuse.
add_layer() {
  local image=$1 dir=$2 tarball
  tarball=$(mktemp /var/tmp/ferrio-layer.XXXXXX)
  tar -C "$dir" -cf "$tarball" --numeric-owner .
  umoci raw add-layer --image "$image" "$tarball"
  rm -f "$tarball"
}

build_pause() {
  if has_image pause 3.10; then
    log "pause:3.10 already present"
    return
  fi
  if ldd "$CATATONIT" >/dev/null 2>&1; then
    log "$CATATONIT is dynamically linked; the pause image needs a static binary"
    exit 1
  fi
  local work
  work=$(mktemp -d /var/tmp/ferrio-pause.XXXXXX)
  mkdir -p "$work/root"
  cp "$CATATONIT" "$work/root/pause"
  umoci init --layout "$work/oci"
  umoci new --image "$work/oci:3.10"
  add_layer "$work/oci:3.10" "$work/root"
  # catatonit -P is pause mode: it runs no program, reaps zombies and exits on SIGTERM/SIGINT.
  umoci config --image "$work/oci:3.10" --config.entrypoint /pause --config.entrypoint -P \
    --config.user 65535:65535
  push "$work/oci" 3.10 pause
  rm -rf "$work"
  log "pushed pause:3.10"
}

build_busybox() {
  if has_image library/busybox 1.36; then
    log "library/busybox:1.36 already present"
    return
  fi
  if ldd "$BUSYBOX" >/dev/null 2>&1; then
    log "$BUSYBOX is dynamically linked; install busybox-static"
    exit 1
  fi
  local work r
  work=$(mktemp -d /var/tmp/ferrio-busybox.XXXXXX)
  r=$work/root
  mkdir -p "$r/bin" "$r/etc" "$r/root" "$r/home/test" "$r/tmp" "$r/var" "$r/proc" "$r/sys" "$r/dev"
  chmod 1777 "$r/tmp"
  chmod 700 "$r/root"
  chown 1000:1000 "$r/home/test"
  cp "$BUSYBOX" "$r/bin/busybox"
  # Hard links, as the official image has: one inode, every applet name.
  for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] && continue
    [ -e "$r/bin/$applet" ] || ln "$r/bin/busybox" "$r/bin/$applet"
  done
  [ -e "$r/bin/sh" ] || ln "$r/bin/busybox" "$r/bin/sh"
  cat >"$r/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
test:x:1000:1000:test:/home/test:/bin/sh
PASSWD
  cat >"$r/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
test:x:1000:
GROUP
  umoci init --layout "$work/oci"
  umoci new --image "$work/oci:1.36"
  # One layer holding the whole tree, hard links kept.
  add_layer "$work/oci:1.36" "$r"
  umoci config --image "$work/oci:1.36" --config.cmd sh \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  push "$work/oci" 1.36 library/busybox
  rm -rf "$work"
  log "pushed library/busybox:1.36"
}

stop_registry() {
  if [ -f "$PIDFILE" ]; then
    pid=$(cat "$PIDFILE")
    # Only the pid we started, and only if it is still a docker-registry.
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "docker-registry" ]; then
      kill "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      log "stopped registry pid $pid"
    fi
    rm -f "$PIDFILE"
  else
    log "no pid file; nothing to stop"
  fi
}

case "${1:-}" in
  start)
    start_registry
    build_pause
    build_busybox
    echo "export FERRIO_TEST_REGISTRY=$ADDR"
    ;;
  stop)
    stop_registry
    ;;
  env)
    echo "export FERRIO_TEST_REGISTRY=$ADDR"
    ;;
  status)
    if serving; then echo "serving on $ADDR"; else echo "not serving"; exit 1; fi
    ;;
  *)
    echo "usage: $0 start|stop|env|status" >&2
    exit 2
    ;;
esac
