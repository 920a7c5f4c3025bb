#!/usr/bin/env bash
# Builds the Debian package target/debian/wwep_<version>_<arch>.deb (`make deb`):
# wwep-server and wwep in /usr/bin, the systemd unit (dist/wwep.service with
# ExecStart=/usr/bin/wwep-server) in /usr/lib/systemd/system, the sysusers file,
# /etc/wwep/wwep.env as a conffile, and the maintainer scripts in dist/debian/.
#
#   scripts/make-deb.sh [--binaries DIR] [--out DIR] [--compression xz|gzip|none]
#
#   --binaries DIR  package DIR/wwep-server and DIR/wwep (e.g. target/debug)
#                   instead of building a release
#   --out DIR       write the package there instead of target/debian
#   --compression   how dpkg-deb compresses the files (default xz, the
#                   smallest; none is fastest, for a package only inspected)
#
# The version comes from Cargo.toml, the architecture from
# `dpkg --print-architecture`, Depends from dpkg-shlibdeps (dpkg-dev).
# DEB_MAINTAINER sets the Maintainer field; SOURCE_DATE_EPOCH the files' dates
# (default: the last commit's).
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "make-deb.sh: $*" >&2
  exit 2
}

usage='usage: scripts/make-deb.sh [--binaries DIR] [--out DIR] [--compression xz|gzip|none]'
binaries='' out=target/debian compression=xz
while [ $# -gt 0 ]; do
  case $1 in
    --binaries) [ $# -ge 2 ] || die "--binaries needs a directory"; binaries=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
    --compression)
      case ${2:-} in
        xz | gzip | none) compression=$2; shift 2 ;;
        *) die "--compression takes xz, gzip or none, not '${2:-}'" ;;
      esac
      ;;
    -h | --help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *) die "unknown argument '$1' ($usage)" ;;
  esac
done

for tool in dpkg-deb dpkg-shlibdeps; do
  command -v "$tool" >/dev/null 2>&1 ||
    die "$tool not found; install it with: sudo apt-get install dpkg-dev"
done

version=$(awk -F'"' '/^\[/ { package = ($0 == "[package]") } package && /^version *=/ { print $2; exit }' Cargo.toml)
[ -n "$version" ] || die "no version in Cargo.toml's [package]"
arch=$(dpkg --print-architecture)

if [ -z "$binaries" ]; then
  "${CARGO:-cargo}" build --release --bins
  binaries=target/release
fi
for bin in wwep-server wwep; do
  if [ ! -f "$binaries/$bin" ] || [ ! -x "$binaries/$bin" ]; then
    die "$binaries/$bin: no such executable (build it first, or leave out --binaries)"
  fi
done

: "${SOURCE_DATE_EPOCH:=$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
export SOURCE_DATE_EPOCH
maintainer=${DEB_MAINTAINER:-wwep maintainers <wwep@example.org>}

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root

# The files, as installed.
install -d -m 0755 "$root/usr/bin" "$root/usr/lib/systemd/system" "$root/usr/lib/sysusers.d" \
  "$root/etc/wwep" "$root/usr/share/doc/wwep" "$root/DEBIAN"
for bin in wwep-server wwep; do
  if command -v strip >/dev/null 2>&1; then
    strip --strip-unneeded --remove-section=.comment --remove-section=.note \
      -o "$root/usr/bin/$bin" "$binaries/$bin"
  else
    echo "make-deb.sh: strip not found (binutils): $bin is packaged with its symbols"
    cp "$binaries/$bin" "$root/usr/bin/$bin"
  fi
  chmod 0755 "$root/usr/bin/$bin"
done
# A manual page for each, made of its --help: NAME from the first line, the
# rest verbatim.
install -d -m 0755 "$root/usr/share/man/man1"
for bin in wwep-server wwep; do
  help=$(env -i PATH="$PATH" "$binaries/$bin" --help) || die "$binaries/$bin --help failed"
  {
    printf '.TH %s 1 "%s" "wwep %s" "User Commands"\n' "${bin^^}" \
      "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)" "$version"
    printf '.SH NAME\n%s \\- %s\n' "$bin" "$(head -1 <<<"$help" | sed 's/\\/\\e/g; s/-/\\-/g')"
    printf '.SH DESCRIPTION\n.nf\n'
    tail -n +2 <<<"$help" | sed 's/\\/\\e/g; s/-/\\-/g; s/^[.'"'"']/\\\&&/'
    printf '.fi\n.SH SEE ALSO\n/usr/share/doc/wwep/, /etc/wwep/wwep.env, systemctl status wwep\n'
  } | gzip -9n >"$root/usr/share/man/man1/$bin.1.gz"
  chmod 0644 "$root/usr/share/man/man1/$bin.1.gz"
done
grep -q '^ExecStart=/usr/local/bin/wwep-server' dist/wwep.service ||
  die "dist/wwep.service: no ExecStart=/usr/local/bin/wwep-server line to point at /usr/bin"
sed 's|^ExecStart=/usr/local/bin/wwep-server|ExecStart=/usr/bin/wwep-server|' dist/wwep.service \
  >"$root/usr/lib/systemd/system/wwep.service"
install -m 0644 dist/wwep.sysusers "$root/usr/lib/sysusers.d/wwep.conf"
install -m 0644 dist/wwep.env "$root/etc/wwep/wwep.env"
install -m 0644 dist/debian/copyright "$root/usr/share/doc/wwep/copyright"
printf 'wwep (%s) unstable; urgency=medium\n\n  * wwep %s, built from its source tree with make deb.\n\n -- %s  %s\n' \
  "$version" "$version" "$maintainer" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")" |
  gzip -9n >"$root/usr/share/doc/wwep/changelog.gz"
chmod 0644 "$root/usr/share/doc/wwep/changelog.gz" "$root/usr/lib/systemd/system/wwep.service"

# Depends: the shared libraries the binaries link, as dpkg-shlibdeps finds them
# (it wants to run beside a debian/control).
mkdir -p "$work/src/debian"
printf 'Source: wwep\n\nPackage: wwep\nArchitecture: any\n' >"$work/src/debian/control"
depends=$(cd "$work/src" && dpkg-shlibdeps -O "$root/usr/bin/wwep-server" "$root/usr/bin/wwep" |
  sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || die "dpkg-shlibdeps found no dependencies for the binaries"

# The control files.
installed_size=$(du -sk --apparent-size --exclude=DEBIAN "$root" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$maintainer|" \
  -e "s|@INSTALLED_SIZE@|$installed_size|" -e "s|@DEPENDS@|$depends|" \
  dist/debian/control >"$root/DEBIAN/control"
install -m 0644 dist/debian/conffiles "$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do
  install -m 0755 "dist/debian/$script" "$root/DEBIAN/$script"
done
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
  xargs -0 md5sum >DEBIAN/md5sums)
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"

find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
deb=$out/wwep_${version}_${arch}.deb
dpkg-deb --root-owner-group -Z"$compression" --build "$root" "$deb" >/dev/null
echo "$deb"
