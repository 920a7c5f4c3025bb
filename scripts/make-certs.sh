#!/usr/bin/env bash
# Creates a CA, a server certificate and a client certificate under DIR (default
# certs/), never overwriting a file that exists. KEY=rsa (default, RSA-2048) or
# KEY=ec (ECDSA P-256). DEVICE=04FB also issues a board's client certificate,
# board-04FB.pem/.key, whose CN wwep-04FB carries its device id (for --acl).
set -euo pipefail

dir=${1:-certs}
key_kind=${KEY:-rsa}
days=${DAYS:-825}
mkdir -p "$dir"
umask 077

case "$key_kind" in
  rsa) newkey=(-newkey rsa:2048) ;;
  ec) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
  *) echo "make-certs: KEY must be rsa or ec, not '$key_kind'" >&2; exit 2 ;;
esac

device=${DEVICE:-}
if [ -n "$device" ]; then
  if ! [[ "$device" =~ ^[0-9A-Fa-f]{4}$ ]]; then
    echo "make-certs: DEVICE must be 4 hex digits (a device id such as 04FB), not '$device'" >&2
    exit 2
  fi
  device=$(printf '%s' "$device" | tr 'a-f' 'A-F')
fi

host=$(hostname 2>/dev/null || echo localhost)
san="DNS:localhost,IP:127.0.0.1,IP:::1"
if [ "$host" != localhost ] && [[ "$host" =~ ^[A-Za-z0-9.-]+$ ]]; then
  san="$san,DNS:$host"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ ! -e "$dir/ca.pem" ] && [ ! -e "$dir/ca.key" ]; then
  openssl req -x509 "${newkey[@]}" -nodes -sha256 -days "$days" \
    -subj "/CN=wwep local CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  echo "made $dir/ca.pem and $dir/ca.key"
fi

# issue NAME CN EXTENSIONS
issue() {
  local name=$1 cn=$2 ext=$3
  if [ -e "$dir/$name.pem" ] || [ -e "$dir/$name.key" ]; then
    echo "kept existing $dir/$name.pem"
    return
  fi
  openssl req "${newkey[@]}" -nodes -subj "/CN=$cn" \
    -keyout "$dir/$name.key" -out "$tmp/$name.csr" 2>/dev/null
  printf '%s\n' "$ext" > "$tmp/$name.ext"
  openssl x509 -req -in "$tmp/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -CAserial "$tmp/ca.srl" -sha256 -days "$days" \
    -extfile "$tmp/$name.ext" -out "$dir/$name.pem" 2>/dev/null
  echo "made $dir/$name.pem and $dir/$name.key"
}

issue server localhost "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san"
issue client "wwep client" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
if [ -n "$device" ]; then
  issue "board-$device" "wwep-$device" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
fi

chmod 600 "$dir"/*.key
chmod 644 "$dir"/*.pem
