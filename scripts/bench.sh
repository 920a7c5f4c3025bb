#!/usr/bin/env bash
# `make bench`: our server against the practical limit for a one-shot server on
# this machine (nginx's stream module answering a constant reply, no parsing, no
# state), plain and TLS (RSA-2048 and ECDSA P-256), at concurrency 1 and 32, and
# resumed TLS sessions (ECDSA; TLS 1.3 tickets, and TLS 1.2 as boards resume),
# alternating the two servers. Loopback only; every process is stopped by PID.
#
# Then it checks the generator itself: `wwep bench` against scripts/refgen.c (the
# smallest one-shot generator: blocking threads doing socket, connect, write,
# read, close, with no timing) on nginx's open port, alternating, and prints the
# median rates and their ratio.
#
# DURATION (seconds per run, default 3) and ROUNDS (default 2) tune the length;
# CASES (e.g. "plain tls-ec") picks cases by name; GEN_ROUNDS (default 7) and
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
  server { listen 127.0.0.1:$ng_plain; return "A0FAC0B1234"; }
  server {
    listen 127.0.0.1:$ng_rsa ssl;
    ssl_certificate $tmp/rsa/server.pem; ssl_certificate_key $tmp/rsa/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    return "A0FAC0B1234";
  }
  server {
    listen 127.0.0.1:$ng_ec ssl;
    ssl_certificate $tmp/ec/server.pem; ssl_certificate_key $tmp/ec/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:wwep:10m;
    ssl_session_tickets on;
    return "A0FAC0B1234";
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

# bench_cmd PORT CA CONCURRENCY SECONDS [tls [resume|resume12]]: the wwep bench
# command line; resume offers each connection the previous session (resume12:
# TLS 1.2 only, as embedded stacks of the boards' generation).
bench_cmd() {
  local port=$1 ca=$2 conc=$3 secs=$4 tls=${5:-} resume=${6:-}
  local args=(--server "localhost:$port" --json bench -c "$conc" --duration "$secs" --warmup 0 --quiet)
  case "$resume" in
    resume) args=(--resume "${args[@]}") ;;
    resume12) args=(--resume "${args[@]}" --tls12) ;;
  esac
  if [ -n "$tls" ]; then args=(--tls --ca "$ca" "${args[@]}"); fi
  echo "$wwep" "${args[@]}"
}

# run PORT CA CONCURRENCY SERVER_PID [tls [resume]]: warm up, then one measurement
# as JSON, with the server's CPU per completed transaction added as "cpu_us" and
# the generator's as "client_us".
run() {
  local port=$1 ca=$2 conc=$3 pid=$4 tls=${5:-} resume=${6:-}
  $(bench_cmd "$port" "$ca" "$conc" "$WARMUP" $tls $resume) >/dev/null 2>&1 || true
  local before out after n cpu=0 client=0 client_s
  before=$(cpu_ticks "$pid")
  # The generator's own CPU (user + system, from bash's `time`), to see what a
  # server's way of closing costs its clients' kernels.
  client_s=$( { TIMEFORMAT='%U %S'; time $(bench_cmd "$port" "$ca" "$conc" "$DURATION" $tls $resume) >"$tmp/run.json" 2>/dev/null; } 2>&1 ) || true
  out=$(cat "$tmp/run.json")
  [ -n "$out" ] || out='{"completed":0,"per_second":0,"p50_us":0,"p99_us":0,"errors":{"run":1}}'
  after=$(cpu_ticks "$pid")
  n=$(field "$out" completed)
  if [ "${n:-0}" -gt 0 ]; then
    cpu=$(( (after - before) * 1000000 / tick / n ))
    client=$(awk -v t="$client_s" -v n="$n" 'BEGIN { split(t, f, " "); printf "%d", (f[1] + f[2]) * 1000000 / n }')
  fi
  echo "${out%\}},\"cpu_us\":$cpu,\"client_us\":$client}"
}
field() { sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" <<<"$1"; }
errors() { sed -n 's/.*"errors":{\([^}]*\)}.*/\1/p' <<<"$1"; }

if [ "${GEN_ONLY:-0}" != 1 ]; then
  results="$tmp/results"
  : >"$results"
  cases=("plain 1 $ours_plain ${ng_plain:-} -" "plain 32 $ours_plain ${ng_plain:-} -"
         "tls-rsa 1 $ours_rsa ${ng_rsa:-} $tmp/rsa/ca.pem" "tls-rsa 32 $ours_rsa ${ng_rsa:-} $tmp/rsa/ca.pem"
         "tls-ec 1 $ours_ec ${ng_ec:-} $tmp/ec/ca.pem" "tls-ec 32 $ours_ec ${ng_ec:-} $tmp/ec/ca.pem"
         "ec-resumed 32 $ours_ec ${ng_ec:-} $tmp/ec/ca.pem" "ec12-resumed 32 $ours_ec ${ng_ec:-} $tmp/ec/ca.pem")
  for round in $(seq "$ROUNDS"); do
    for c in "${cases[@]}"; do
      read -r name conc ours theirs ca <<<"$c"
      case " ${CASES:-$name} " in *" $name "*) ;; *) continue ;; esac
      tls=""; [ "$ca" != "-" ] && tls=1
      resume=""
      case "$name" in ec-resumed) resume=resume ;; ec12-resumed) resume=resume12 ;; esac
      echo "round $round: $name c=$conc" >&2
      case "$name" in
        tls-ec | ec-resumed | ec12-resumed) ours_pid=$ours_ec_pid ;;
        *) ours_pid=$ours_rsa_pid ;;
      esac
      r=$(run "$ours" "$ca" "$conc" "$ours_pid" $tls $resume)
      echo "$name $conc ours $(field "$r" per_second) $(field "$r" p50_us) $(field "$r" p99_us) $(field "$r" cpu_us) $(field "$r" client_us) $(errors "$r")" >>"$results"
      if [ "$limit" = nginx ]; then
        r=$(run "$theirs" "$ca" "$conc" "$nginx_pid" $tls $resume)
        echo "$name $conc limit $(field "$r" per_second) $(field "$r" p50_us) $(field "$r" p99_us) $(field "$r" cpu_us) $(field "$r" client_us) $(errors "$r")" >>"$results"
      fi
    done
  done

  echo
  echo "wwep vs. the one-shot limit on this machine ($(nproc) cores), ${ROUNDS}x${DURATION} s each, loopback"
  [ "$limit" = none ] && echo "(nginx with its stream module is not available here: ours alone)"
  awk -v limit="$limit" '
    { key=$1" "$2; who=$3; n[key,who]++; tps[key,who]+=$4; p50[key,who]+=$5; p99[key,who]+=$6; cpu[key,who]+=$7; gen[key,who]+=$8
      if ($9 != "") err[key,who]=err[key,who] " " $9
      if (!(key in seen)) { seen[key]=1; order[++k]=key } }
    END {
      if (limit == "none") {
        printf "| %-12s | %4s | %10s | %9s | %9s | %8s | %10s |\n", "case", "conc", "ours tx/s", "p50 ms", "p99 ms", "ours cpu", "ours client"
        printf "|--------------|------|------------|-----------|-----------|----------|-------------|\n"
      } else {
        printf "| %-12s | %4s | %10s | %10s | %6s | %9s | %9s | %9s | %9s | %9s | %8s | %9s | %11s | %12s |\n", "case", "conc", "ours tx/s", "limit tx/s", "ratio", "ours p50", "limit p50", "ours p99", "limit p99", "p99 ratio", "ours cpu", "limit cpu", "ours client", "limit client"
        printf "|--------------|------|------------|------------|--------|-----------|-----------|-----------|-----------|-----------|----------|-----------|-------------|--------------|\n"
      }
      for (i=1; i<=k; i++) {
        key=order[i]; split(key, f, " ")
        o=tps[key,"ours"]/n[key,"ours"]; o50=p50[key,"ours"]/n[key,"ours"]/1000; o99=p99[key,"ours"]/n[key,"ours"]/1000; oc=cpu[key,"ours"]/n[key,"ours"]; og=gen[key,"ours"]/n[key,"ours"]
        if (limit == "none") { printf "| %-12s | %4s | %10.0f | %9.3f | %9.3f | %8.0f | %11.0f |\n", f[1], f[2], o, o50, o99, oc, og; continue }
        t=tps[key,"limit"]/n[key,"limit"]; t50=p50[key,"limit"]/n[key,"limit"]/1000; t99=p99[key,"limit"]/n[key,"limit"]/1000; tc=cpu[key,"limit"]/n[key,"limit"]; tg=gen[key,"limit"]/n[key,"limit"]
        printf "| %-12s | %4s | %10.0f | %10.0f | %6.2f | %9.3f | %9.3f | %9.3f | %9.3f | %9.2f | %8.0f | %9.0f | %11.0f | %12.0f |\n", f[1], f[2], o, t, (t>0?o/t:0), o50, t50, o99, t99, (t99>0?o99/t99:0), oc, tc, og, tg
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
  w=$("$wwep" --server "127.0.0.1:$ng_plain" --json bench -c 32 --duration "$GEN_DURATION" --warmup 0 --quiet || true)
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
