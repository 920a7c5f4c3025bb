#!/usr/bin/env bash
# `make bench`: our server against the practical limit for a one-shot server on
# this machine (nginx's stream module answering a constant reply, no parsing, no
# state), alternating the two servers. Loopback only; every process is stopped
# by PID. The cases:
#   plain                 the open port, at concurrency 1 and 32
#   tls13-{rsa,ec}-full   TLS 1.3 full handshakes, also at concurrency 1
# and at concurrency 32, each with an RSA-2048 and an ECDSA P-256 certificate
# ({rsa,ec}):
#   tls12-{rsa,ec}-full       TLS 1.2 full handshakes
#   tls12-{rsa,ec}-ticket     TLS 1.2 resumed by session ticket
#   tls12-{rsa,ec}-sessionid  TLS 1.2 resumed by session ID alone (the server's
#                             session cache; `--resume-with session-id`)
#   tls13-{rsa,ec}-full       TLS 1.3 full handshakes
#   tls13-{rsa,ec}-resumed    TLS 1.3 resumed (ticket, PSK with ECDHE)
# The client picks the version (`bench --tls12`, or TLS 1.3); both servers offer
# 1.2 and 1.3, session tickets and a session cache. Each row gives rate, p99,
# server CPU and context switches (all threads of the server and its children)
# per transaction, and the ratios wwep/nginx; for the resumed cases it checks
# that the handshakes did resume.
#
# Then it checks the generator itself: `wwep bench` against scripts/refgen.c (the
# smallest one-shot generator: blocking threads doing socket, connect, write,
# read, close, with no timing) on nginx's open port, alternating, and prints the
# median rates and their ratio.
#
# DURATION (seconds per run, default 3) and ROUNDS (default 2) tune the length;
# CASES (e.g. "plain tls12-ec-sessionid") picks cases by name; GEN_ROUNDS (default 7) and
# GEN_DURATION (seconds, default 2) the generator check;
# GEN_ONLY=1 (`make bench-generator`) runs the generator check alone.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-3}
ROUNDS=${ROUNDS:-2}
WARMUP=${WARMUP:-1}
GEN_ROUNDS=${GEN_ROUNDS:-7}
GEN_DURATION=${GEN_DURATION:-2}

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

KEY=rsa ./scripts/make-certs.sh "$tmp/rsa" >/dev/null
KEY=ec ./scripts/make-certs.sh "$tmp/ec" >/dev/null

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_ours NAME CERTDIR EXTRA...: runs wwep-server with its defaults (logging
# included, to a file as under journald) on ephemeral loopback ports.
start_ours() {
  local name=$1 dir=$2
  shift 2
  "$server" --bind 127.0.0.1 --plain-port 0 --tls-port 0 \
    --cert "$dir/server.pem" --key "$dir/server.key" "$@" 2>"$tmp/$name.log" &
  pids+=($!)
  for _ in $(seq 100); do
    grep -q "tls listener on" "$tmp/$name.log" 2>/dev/null && break
    sleep 0.1
  done
}
port_of() { grep -o "$2 listener on [0-9.:]*" "$tmp/$1.log" | awk -F: '{print $NF}'; }

# cpu_ticks PID...: user+system clock ticks of these processes and their children's
# threads, to price a transaction in server CPU.
cpu_ticks() {
  local total=0 pid task
  for pid in "$@" $(for p in "$@"; do pgrep -P "$p"; done); do
    for task in /proc/"$pid"/task/*/stat; do
      [ -r "$task" ] || continue
      total=$((total + $(sed 's/.*) //' "$task" | awk '{print $12 + $13}')))
    done
  done
  echo "$total"
}
tick=$(getconf CLK_TCK)

# switches PID...: voluntary and involuntary context switches of these processes'
# and their children's threads.
switches() {
  local pids=("$@") p
  for p in "$@"; do mapfile -t -O "${#pids[@]}" pids < <(pgrep -P "$p"); done
  local files=()
  for p in "${pids[@]}"; do files+=(/proc/"$p"/task/*/status); done
  # A thread may end between the listing and the reading: cat skips it.
  cat "${files[@]}" 2>/dev/null | awk '/^(non)?voluntary_ctxt_switches:/ { s += $2 } END { printf "%d\n", s }'

}

start_ours ours-rsa "$tmp/rsa"
ours_rsa_pid=${pids[-1]}
start_ours ours-ec "$tmp/ec" --no-plain
ours_ec_pid=${pids[-1]}
ours_plain=$(port_of ours-rsa plain)
ours_rsa=$(port_of ours-rsa tls)
ours_ec=$(port_of ours-ec tls)

stream_module=/usr/lib/nginx/modules/ngx_stream_module.so
have_nginx() { command -v nginx >/dev/null 2>&1 && [ -e "$stream_module" ]; }
if ! have_nginx && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing nginx and its stream module for the comparison..." >&2
  (apt-get install -y -qq nginx-light libnginx-mod-stream >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nginx-light libnginx-mod-stream >/dev/null 2>&1; }) || true
fi
limit=none
# nginx answers every request with one constant, which `wwep bench` would
# count as an A for another register: it is told to expect it.
nginx_answer=A0FAC0B1234
nginx_reply=(--expect-reply "$nginx_answer")
if have_nginx; then
  ng_plain=$(free_port); ng_rsa=$(free_port); ng_ec=$(free_port)
  mkdir -p "$tmp/nginx"
  cat >"$tmp/nginx.conf" <<CONF
load_module $stream_module;
worker_processes auto;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log warn;
events { worker_connections 8192; }
stream {
  server { listen 127.0.0.1:$ng_plain; return "$nginx_answer"; }
  server {
    listen 127.0.0.1:$ng_rsa ssl;
    ssl_certificate $tmp/rsa/server.pem; ssl_certificate_key $tmp/rsa/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:wwep_rsa:10m;
    ssl_session_tickets on;
    return "$nginx_answer";
  }
  server {
    listen 127.0.0.1:$ng_ec ssl;
    ssl_certificate $tmp/ec/server.pem; ssl_certificate_key $tmp/ec/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:wwep_ec:10m;
    ssl_session_tickets on;
    return "$nginx_answer";
  }
}
CONF
  nginx -e "$tmp/nginx-error.log" -p "$tmp/nginx" -c "$tmp/nginx.conf" -g 'daemon off;' &
  pids+=($!)
  nginx_pid=$!
  for _ in $(seq 50); do
    (echo >"/dev/tcp/127.0.0.1/$ng_plain") 2>/dev/null && break
    sleep 0.1
  done
  limit=nginx
fi

# case_flags NAME: the client's flags for a case, one a line: none for plain;
# the case's CA, TLS 1.2 only for tls12-*, and resumption for the resumed cases.
case_flags() {
  local name=$1
  [ "$name" = plain ] && return 0
  case "$name" in
    *-rsa-*) printf '%s\n' --tls --ca "$tmp/rsa/ca.pem" ;;
    *) printf '%s\n' --tls --ca "$tmp/ec/ca.pem" ;;
  esac
  case "$name" in tls12-*) echo --tls12 ;; esac
  case "$name" in
    *-ticket | *-resumed) printf '%s\n' --resume --resume-with ticket ;;
    *-sessionid) printf '%s\n' --resume --resume-with session-id ;;
  esac
}

# bench PORT CONCURRENCY SECONDS FLAGS...: one wwep bench run, its JSON on stdout.
bench() {
  local port=$1 conc=$2 secs=$3
  shift 3
  "$wwep" --server "localhost:$port" --json bench -c "$conc" --duration "$secs" \
    --warmup 0 --quiet "$@"
}

# run NAME PORT CONCURRENCY SERVER_PID [FLAGS...]: warm up, then one
# measurement as JSON, with the server's CPU (µs) and context switches per
# completed transaction added as "cpu_us" and "switches".
run() {
  local name=$1 port=$2 conc=$3 pid=$4 flags
  shift 4
  mapfile -t flags < <(case_flags "$name")
  flags+=("$@")
  bench "$port" "$conc" "$WARMUP" "${flags[@]}" >/dev/null 2>&1 || true
  local before sw_before out after sw_after n cpu=0 sw=0
  before=$(cpu_ticks "$pid")
  sw_before=$(switches "$pid")
  out=$(bench "$port" "$conc" "$DURATION" "${flags[@]}" 2>/dev/null) || true
  after=$(cpu_ticks "$pid")
  sw_after=$(switches "$pid")
  [ -n "$out" ] || out='{"completed":0,"per_second":0,"p99_us":0,"errors":{"run":1}}'
  n=$(field "$out" completed)
  if [ "${n:-0}" -gt 0 ]; then
    cpu=$(( (after - before) * 1000000 / tick / n ))
    sw=$(awk -v d="$((sw_after - sw_before))" -v n="$n" 'BEGIN { printf "%.2f", d / n }')
  fi
  echo "${out%\}},\"cpu_us\":$cpu,\"switches\":$sw}"
}
field() { sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" <<<"$1"; }
errors() { sed -n 's/.*"errors":{\([^}]*\)}.*/\1/p' <<<"$1"; }

# row NAME CONCURRENCY WHO JSON: one line of results: case, concurrency, who,
# tx/s, p99 µs, cpu µs/tx, switches/tx, handshakes and resumed (- without
# --resume), errors.
row() {
  local r=$4 hs resumed
  hs=$(field "$r" handshakes); resumed=$(field "$r" resumed)
  echo "$1 $2 $3 $(field "$r" per_second) $(field "$r" p99_us) $(field "$r" cpu_us) $(field "$r" switches) ${hs:--} ${resumed:--} $(errors "$r")" >>"$results"
}

if [ "${GEN_ONLY:-0}" != 1 ]; then
  results="$tmp/results"
  : >"$results"
  # NAME CONCURRENCY: our port and PID, and nginx's port, follow from the name.
  cases=("plain 1" "plain 32" "tls13-rsa-full 1" "tls13-ec-full 1")
  for v in tls12-full tls12-ticket tls12-sessionid tls13-full tls13-resumed; do
    for k in rsa ec; do cases+=("${v%%-*}-$k-${v#*-} 32"); done
  done
  for round in $(seq "$ROUNDS"); do
    for c in "${cases[@]}"; do
      read -r name conc <<<"$c"
      case " ${CASES:-$name} " in *" $name "*) ;; *) continue ;; esac
      case "$name" in
        plain) ours=$ours_plain theirs=${ng_plain:-} ours_pid=$ours_rsa_pid ;;
        *-rsa-*) ours=$ours_rsa theirs=${ng_rsa:-} ours_pid=$ours_rsa_pid ;;
        *) ours=$ours_ec theirs=${ng_ec:-} ours_pid=$ours_ec_pid ;;
      esac
      echo "round $round: $name c=$conc" >&2
      row "$name" "$conc" ours "$(run "$name" "$ours" "$conc" "$ours_pid")"
      if [ "$limit" = nginx ]; then
        row "$name" "$conc" limit "$(run "$name" "$theirs" "$conc" "$nginx_pid" "${nginx_reply[@]}")"
      fi
    done
  done

  echo
  echo "wwep vs. the one-shot limit on this machine ($(nproc) cores), ${ROUNDS}x${DURATION} s each, loopback"
  echo "(cpu: server user+system µs per transaction; switches: the server's context switches per transaction)"
  [ "$limit" = none ] && echo "(nginx with its stream module is not available here: ours alone)"
  awk -v limit="$limit" '
    { key=$1" "$2; who=$3; n[key,who]++; tps[key,who]+=$4; p99[key,who]+=$5; cpu[key,who]+=$6; sw[key,who]+=$7
      if ($1 ~ /-(ticket|sessionid|resumed)$/) { hs[key,who]+=($8 == "-" ? 0 : $8); res[key,who]+=($9 == "-" ? 0 : $9) }
      rest=""; for (i=10; i<=NF; i++) rest=rest " " $i
      if (rest != "") err[key,who]=err[key,who] rest
      if (!(key in seen)) { seen[key]=1; order[++k]=key } }
    function avg(a, key, who) { return n[key,who] ? a[key,who]/n[key,who] : 0 }
    END {
      if (limit == "none") {
        printf "| %-19s | %4s | %9s | %8s | %8s | %8s |\n", "case", "conc", "wwep tx/s", "wwep p99", "wwep cpu", "wwep sw"
        printf "|---------------------|------|-----------|----------|----------|----------|\n"
      } else {
        printf "| %-19s | %4s | %9s | %10s | %6s | %8s | %9s | %9s | %8s | %9s | %9s | %7s | %8s |\n", "case", "conc", "wwep tx/s", "nginx tx/s", "ratio", "wwep p99", "nginx p99", "p99 ratio", "wwep cpu", "nginx cpu", "cpu ratio", "wwep sw", "nginx sw"
        printf "|---------------------|------|-----------|------------|--------|----------|-----------|-----------|----------|-----------|-----------|---------|----------|\n"
      }
      for (i=1; i<=k; i++) {
        key=order[i]; split(key, f, " ")
        o=avg(tps, key, "ours"); o99=avg(p99, key, "ours")/1000; oc=avg(cpu, key, "ours"); os=avg(sw, key, "ours")
        if (limit == "none") { printf "| %-19s | %4s | %9.0f | %8.3f | %8.0f | %8.2f |\n", f[1], f[2], o, o99, oc, os; continue }
        t=avg(tps, key, "limit"); t99=avg(p99, key, "limit")/1000; tc=avg(cpu, key, "limit"); ts=avg(sw, key, "limit")
        printf "| %-19s | %4s | %9.0f | %10.0f | %6.2f | %8.3f | %9.3f | %9.2f | %8.0f | %9.0f | %9.2f | %7.2f | %8.2f |\n", f[1], f[2], o, t, (t>0?o/t:0), o99, t99, (t99>0?o99/t99:0), oc, tc, (tc>0?oc/tc:0), os, ts
      }
      # The resumed cases must have resumed (the full ones offer no session at all).
      for (i=1; i<=k; i++) {
        key=order[i]; line=""
        for (w=1; w<=2; w++) {
          who=(w==1 ? "ours" : "limit")
          if (!((key,who) in hs)) continue
          name=(who=="ours" ? "wwep" : "nginx")
          line=line sprintf("%s %s %d/%d", (line == "" ? "" : ","), name, res[key,who], hs[key,who])
          if (res[key,who] < 0.9 * hs[key,who] || hs[key,who] == 0) line=line " NOT RESUMED"
        }
        if (line != "") { if (!head++) print "handshakes resumed (of all):"; split(key, f, " "); printf "  %s:%s\n", f[1], line }
      }
      for (key in err) if (err[key] != "") { split(key, g, SUBSEP); print "errors " g[1] " " g[2] ":" err[key] }
    }' "$results"
fi

# The generator against the reference generator, on the same nginx port in the
# same run, alternating; medians, since other load on the machine moves single runs.
if [ "$limit" != nginx ]; then
  echo
  echo "generator check skipped: needs nginx with its stream module"
  exit 0
fi
if ! command -v cc >/dev/null 2>&1; then
  echo
  echo "generator check skipped: needs a C compiler (cc) for scripts/refgen.c"
  exit 0
fi
cc -O2 -pthread -o "$tmp/refgen" scripts/refgen.c
gen="$tmp/generators"
: >"$gen"
echo "generator check: ${GEN_ROUNDS}x${GEN_DURATION} s each, c=32, nginx open port" >&2
"$tmp/refgen" 127.0.0.1 "$ng_plain" 32 1 >/dev/null
for _ in $(seq "$GEN_ROUNDS"); do
  r=$("$tmp/refgen" 127.0.0.1 "$ng_plain" 32 "$GEN_DURATION")
  w=$("$wwep" --server "127.0.0.1:$ng_plain" --json bench -c 32 --duration "$GEN_DURATION" --warmup 0 --quiet "${nginx_reply[@]}" || true)
  echo "$(field "$r" per_second) $(field "$w" per_second)" >>"$gen"
done
echo
# median COLUMN: the median of one column of the pairs.
median() { awk -v c="$1" '{ print $c }' "$gen" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
awk '{ print $0, ($1 > 0 ? $2 / $1 : 0) }' "$gen" >"$gen.ratios" && mv "$gen.ratios" "$gen"
ref=$(median 1); ours=$(median 2); paired=$(median 3)
low=$(awk '{ print $3 }' "$gen" | sort -g | head -1); high=$(awk '{ print $3 }' "$gen" | sort -g | tail -1)
awk -v ref="$ref" -v ours="$ours" -v paired="$paired" -v low="$low" -v high="$high" -v rounds="$GEN_ROUNDS" 'BEGIN {
  printf "generator check (nginx open port, c=32, %d alternating pairs): refgen median %.0f tx/s, wwep bench median %.0f tx/s; ratio of medians %.2f, median paired ratio %.2f (range %.2f-%.2f)\n",
    rounds, ref, ours, (ref > 0 ? ours / ref : 0), paired, low, high }'
