#!/usr/bin/env bash
# What the tests need besides Rust, in one list, for `make test` and .ci/run.
#
#   ./scripts/test-tools.sh missing   print the Debian packages still missing, one a line
#   ./scripts/test-tools.sh install   install them with apt (root only), starting no service
#
# Each line: how to check, what to check, the package that provides it.
# cmd = a program on PATH, pkg = an installed Debian package, file = a path.
TOOLS='
cmd  nc               netcat-openbsd
cmd  openssl          openssl
cmd  pkg-config       pkg-config
cmd  cc               gcc
cmd  make             make
pkg  libssl-dev       libssl-dev
pkg  libmbedtls-dev   libmbedtls-dev
cmd  systemd-analyze  systemd
cmd  ip               iproute2
cmd  dpkg-deb         dpkg-dev
pkg  dpkg-dev         dpkg-dev
cmd  nginx            nginx-light
file /usr/lib/nginx/modules/ngx_stream_module.so libnginx-mod-stream
cmd  redis-server     redis-server
cmd  redis-cli        redis-tools
cmd  haproxy          haproxy
cmd  chromium         chromium
cmd  systemd-nspawn   systemd-container
cmd  debootstrap      debootstrap
file /usr/include/lwip/lwip/sockets.h liblwip-dev
cmd  nm               binutils
cmd  arm-none-eabi-gcc gcc-arm-none-eabi
file /usr/include/newlib/string.h libnewlib-arm-none-eabi
cmd  clang            clang
pkg  libclang-rt-14-dev libclang-rt-14-dev
'
set -euo pipefail

missing() {
  local kind what package
  while read -r kind what package; do
    [ -n "$kind" ] || continue
    case $kind in
      cmd) command -v "$what" >/dev/null 2>&1 && continue ;;
      pkg) dpkg-query -W -f='${Status}' "$what" 2>/dev/null | grep -q 'ok installed' && continue ;;
      file) [ -e "$what" ] && continue ;;
    esac
    echo "$package"
  done <<<"$TOOLS" | sort -u
}

install() {
  local packages
  packages=$(missing)
  [ -n "$packages" ] || return 0
  # shellcheck disable=SC2086 # one word per package
  echo "installing: $(echo $packages)"
  # The tests start their own redis-server, nginx and haproxy on free loopback
  # ports; a policy-rc.d that refuses keeps the packages' services from starting.
  local policy=/usr/sbin/policy-rc.d made=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    made=1
  fi
  local status=0
  apt-get update -qq &&
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages ||
    status=$?
  [ -z "$made" ] || rm -f "$policy"
  return "$status"
}

case ${1:-missing} in
  missing) missing ;;
  install) install ;;
  *) echo "usage: $0 missing|install" >&2; exit 2 ;;
esac
