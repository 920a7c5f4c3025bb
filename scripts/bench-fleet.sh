#!/usr/bin/env bash
# `make bench-fleet` (part of `make bench`): one front end with the in-process
# store, one front end on Redis, and two front ends on Redis behind nginx's
# stream module with PROXY protocol, in the same run, alternating; plain at
# concurrency 32, TLS (ECDSA) at concurrency 32. Loopback only; every process is
# stopped by PID.
#
# DURATION (seconds per run, default 3) and ROUNDS (default 3) tune the length.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-3}
ROUNDS=${ROUNDS:-3}
stream_module=/usr/lib/nginx/modules/ngx_stream_module.so
for tool in redis-server nginx; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench-fleet: $tool is not installed; skipped" >&2; exit 0; }
done
[ -e "$stream_module" ] || { echo "bench-fleet: nginx's stream module is not installed; skipped" >&2; exit 0; }

cargo build --release -q
wwep=./target/release/wwep
server=./target/release/wwep-server
tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

KEY=ec ./scripts/make-certs.sh "$tmp/certs" >/dev/null
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no --dir "$tmp" >"$tmp/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

# start NAME EXTRA...: wwep-server on ephemeral loopback ports, logging to a file.
start() {
  local name=$1
  shift
  "$server" --bind 127.0.0.1 --plain-port 0 --tls-port 0 \
    --cert "$tmp/certs/server.pem" --key "$tmp/certs/server.key" "$@" 2>"$tmp/$name.log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q "tls listener on" "$tmp/$name.log" 2>/dev/null && break; sleep 0.1; done
}
port_of() { grep -o "$2 listener on [0-9.:]*" "$tmp/$1.log" | awk -F: '{print $NF}'; }

start memory
start redis --store "redis://127.0.0.1:$redis_port"
start fe1 --store "redis://127.0.0.1:$redis_port" --proxy-protocol --proxy-from 127.0.0.1
start fe2 --store "redis://127.0.0.1:$redis_port" --proxy-protocol --proxy-from 127.0.0.1

lb_plain=$(free_port)
lb_tls=$(free_port)
mkdir -p "$tmp/nginx/logs"
cat >"$tmp/nginx.conf" <<CONF
load_module $stream_module;
worker_processes 1;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log warn;
events { worker_connections 4096; }
stream {
  upstream plain { least_conn; server 127.0.0.1:$(port_of fe1 plain); server 127.0.0.1:$(port_of fe2 plain); }
  upstream tls { least_conn; server 127.0.0.1:$(port_of fe1 tls); server 127.0.0.1:$(port_of fe2 tls); }
  server { listen 127.0.0.1:$lb_plain; proxy_pass plain; proxy_protocol on; }
  server { listen 127.0.0.1:$lb_tls; proxy_pass tls; proxy_protocol on; }
}
CONF
nginx -p "$tmp/nginx" -c "$tmp/nginx.conf" -g 'daemon off;' &
pids+=($!)
sleep 0.5

# measure PORT [tls]: transactions per second at concurrency 32.
measure() {
  local args=(--server "localhost:$1" --json bench -c 32 --duration "$DURATION" --warmup 0.5 --quiet)
  [ -n "${2:-}" ] && args=(--tls --ca "$tmp/certs/ca.pem" "${args[@]}")
  "$wwep" "${args[@]}" 2>/dev/null | sed -n 's/.*"per_second":\([0-9.]*\).*/\1/p'
}

results="$tmp/results"
: >"$results"
for round in $(seq "$ROUNDS"); do
  echo "round $round" >&2
  echo "plain memory $(measure "$(port_of memory plain)")" >>"$results"
  echo "plain redis $(measure "$(port_of redis plain)")" >>"$results"
  echo "plain two $(measure "$lb_plain")" >>"$results"
  echo "tls memory $(measure "$(port_of memory tls)" tls)" >>"$results"
  echo "tls redis $(measure "$(port_of redis tls)" tls)" >>"$results"
  echo "tls two $(measure "$lb_tls" tls)" >>"$results"
done

echo
echo "stores and front ends, c=32, ${ROUNDS}x${DURATION} s each, medians, $(nproc) cores shared by everything"
awk '
  { v[$1" "$2] = v[$1" "$2] " " $3 }
  function median(list,   a, n, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return a[int((n + 1) / 2)]
  }
  END {
    printf "| %-5s | %12s | %12s | %6s | %18s | %6s |\n", "port", "memory tx/s", "redis tx/s", "ratio", "2 x redis + LB tx/s", "ratio"
    printf "|-------|--------------|--------------|--------|--------------------|--------|\n"
    split("plain tls", ports, " ")
    for (p = 1; p <= 2; p++) {
      m = median(v[ports[p] " memory"]); r = median(v[ports[p] " redis"]); t = median(v[ports[p] " two"])
      printf "| %-5s | %12.0f | %12.0f | %6.2f | %18.0f | %6.2f |\n", ports[p], m, r, (m > 0 ? r / m : 0), t, (m > 0 ? t / m : 0)
    }
  }' "$results"
