#!/bin/bash
# Build the Debian package of ferrio with dpkg-deb from already built binaries (`make deb` passes
# the release build): ferrio_<version>_<arch>.deb, version from Cargo.toml.
#
#   hack/build-deb.sh [--bin-dir DIR] [--out DIR] [--fast]
#
# --bin-dir  where ferrio and ferrio-monitor are (default target/release)
# --out      where the package and its staging tree go (default target/debian)
# --fast     cheap compression, for tests that check the packaging with debug binaries
#
# The packaging sources: deploy/debian/ (control template, maintainer scripts, copyright), the
# cargo route's files in deploy/ and cni/ (the unit gets ExecStart=/usr/bin/ferrio), and the man
# pages that the built ferrio renders itself (`ferrio man`), from the same tables as `ferrio config`.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
bin_dir="${CARGO_TARGET_DIR:-$repo/target}/release"
out="$repo/target/debian"
compress=(-Zxz)
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir=$(realpath "$2"); shift 2 ;;
    --out) out=$(realpath -m "$2"); shift 2 ;;
    --fast) compress=(-Zgzip -z1); shift ;;
    *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

die() { echo "build-deb.sh: $*" >&2; exit 1; }
for tool in dpkg-deb dpkg-shlibdeps strip gzip sha256sum; do
  command -v "$tool" >/dev/null || die "$tool not found (hack/install-deps.sh installs dpkg-dev and binutils)"
done
for b in ferrio ferrio-monitor ferrio-envexec; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b not found (cargo build --release first)"
done

cd "$repo"
version=$(awk -F'"' '/^\[/{section=$0} section=="[package]" && /^version *=/{print $2; exit}' Cargo.toml)
[ -n "$version" ] || die "no version in Cargo.toml's [package]"
arch=$(dpkg --print-architecture)
maintainer=${DEB_MAINTAINER:-ferrio maintainers <maintainers@ferrio.invalid>}
# One timestamp for every file and the changelog: the commit's, so a rebuild is identical.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

# dpkg-shlibdeps wants the tree where a source package would have it: debian/<package>.
work="$out/build"
root="$work/debian/ferrio"
rm -rf "$work"
umask 022
mkdir -p "$root/DEBIAN"

install -D -m 0755 "$bin_dir/ferrio" "$root/usr/bin/ferrio"
# Run by the daemon only, never by users: out of PATH, where ferrio's monitor_path default looks.
install -D -m 0755 "$bin_dir/ferrio-monitor" "$root/usr/libexec/ferrio/ferrio-monitor"
# Run inside containers with an env value that is not UTF-8; static, so it needs no library of theirs.
install -D -m 0755 "$bin_dir/ferrio-envexec" "$root/usr/libexec/ferrio/ferrio-envexec"
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
  "$root/usr/bin/ferrio" "$root/usr/libexec/ferrio/ferrio-monitor" \
  "$root/usr/libexec/ferrio/ferrio-envexec"

# One unit for both routes: the cargo route installs to /usr/local/bin, the package to /usr/bin.
install -d "$root/lib/systemd/system"
sed 's|^ExecStart=/usr/local/bin/ferrio |ExecStart=/usr/bin/ferrio |' deploy/ferrio.service \
  > "$root/lib/systemd/system/ferrio.service"
grep -q '^ExecStart=/usr/bin/ferrio ' "$root/lib/systemd/system/ferrio.service" \
  || die "deploy/ferrio.service: no ExecStart=/usr/local/bin/ferrio line to point at /usr/bin"
chmod 0644 "$root/lib/systemd/system/ferrio.service"

install -D -m 0644 deploy/ferrio.toml "$root/etc/ferrio/ferrio.toml"
install -d "$root/etc/ferrio/ferrio.d"

# postinst copies the network from /usr/share/ferrio: /usr/share/doc may be filtered out by dpkg.
install -D -m 0644 cni/10-ferrio-bridge.conflist "$root/usr/share/ferrio/10-ferrio-bridge.conflist"
doc="$root/usr/share/doc/ferrio"
install -d "$doc/examples"
ln -s ../../../ferrio/10-ferrio-bridge.conflist "$doc/examples/10-ferrio-bridge.conflist"
install -m 0644 deploy/crictl.yaml deploy/ferrio-systemd-cgroups.toml deploy/kubelet-config.yaml \
  deploy/kubelet-ferrio.conf "$doc/examples/"
gzip -9n < README.md > "$doc/README.md.gz"
install -D -m 0644 deploy/debian/lintian-overrides "$root/usr/share/lintian/overrides/ferrio"
{
  printf 'ferrio (%s) unstable; urgency=medium\n\n' "$version"
  printf '  * ferrio %s, packaged by make deb from git commit %s.\n\n' "$version" "$commit"
  printf ' -- %s  %s\n' "$maintainer" "$(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n > "$doc/changelog.gz"
# The crates linked into the binaries, for the copyright file (build and proc-macro crates are not).
host=$(rustc -vV | sed -n 's/^host: //p')
crates=$(cargo tree --offline --locked -e normal,no-proc-macro --target "$host" --prefix none \
  -f '{p}|{l}' | grep -v '^ferrio ' | sed 's/ (\*)$//' | sort -u \
  | awk -F'|' '{printf " %s: %s\n", $1, ($2 == "" ? "see the crate" : $2)}')
[ -n "$crates" ] || die "cargo tree listed no crates"
first_year=$(git log --format=%cd --date=format:%Y 2>/dev/null | tail -n1)
last_year=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)
years=$last_year
if [ -n "$first_year" ] && [ "$first_year" != "$last_year" ]; then
  years="$first_year-$last_year"
fi
awk -v crates="$crates" -v years="$years" \
  '$0 == "@CRATES@" {print crates; next} {sub(/@YEARS@/, years); print}' deploy/debian/copyright \
  > "$doc/copyright"

for page in ferrio:8 ferrio.toml:5; do
  name=${page%:*} section=${page#*:}
  install -d "$root/usr/share/man/man$section"
  "$bin_dir/ferrio" man "$name" | gzip -9n > "$root/usr/share/man/man$section/$name.$section.gz"
done

example_sha256=$(sha256sum < cni/10-ferrio-bridge.conflist | cut -d' ' -f1)
install -m 0755 deploy/debian/postinst deploy/debian/prerm "$root/DEBIAN/"
sed "s/@CNI_EXAMPLE_SHA256@/$example_sha256/" deploy/debian/postrm > "$root/DEBIAN/postrm"
chmod 0755 "$root/DEBIAN/postrm"
echo /etc/ferrio/ferrio.toml > "$root/DEBIAN/conffiles"

printf 'Source: ferrio\n\nPackage: ferrio\nArchitecture: any\n' > "$work/debian/control"
shlibs=$(cd "$work" && dpkg-shlibdeps -O debian/ferrio/usr/bin/ferrio \
  debian/ferrio/usr/libexec/ferrio/ferrio-monitor | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || die "dpkg-shlibdeps found no shared library dependencies"
installed_size=$(du -k -s --apparent-size --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@MAINTAINER@/$maintainer/" \
  -e "s/@INSTALLED_SIZE@/$installed_size/" -e "s/@SHLIBS_DEPENDS@/$shlibs/" \
  deploy/debian/control > "$root/DEBIAN/control"
if grep -q '@[A-Z_]*@' "$root/DEBIAN/control"; then
  die "DEBIAN/control has unfilled fields"
fi

(cd "$root" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' | sort -z \
  | xargs -0 md5sum > DEBIAN/md5sums)
chmod 0644 "$root/DEBIAN/md5sums" "$root/DEBIAN/control" "$root/DEBIAN/conffiles"
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

deb="$out/ferrio_${version}_${arch}.deb"
dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$deb" >/dev/null
echo "$deb"
