#!/usr/bin/env bash
# `make bench`: our server against the practical limit for a one-shot server on
# this machine (nginx's stream module answering a constant reply, no parsing, no
# state), the two alternating, ROUNDS times. Loopback only; every process is
# stopped by PID. The cases:
#   plain                 the open port, at concurrency 1 and 32
#   tls13-{rsa,ec}-full   TLS 1.3 full handshakes, also at concurrency 1
# and the ten TLS cases at concurrency 32, each with an RSA-2048 and an ECDSA
# P-256 certificate ({rsa,ec}):
#   tls12-{rsa,ec}-full       TLS 1.2 full handshakes
#   tls12-{rsa,ec}-ticket     TLS 1.2 resumed by session ticket
#   tls12-{rsa,ec}-sessionid  TLS 1.2 resumed by session ID alone (the server's
#                             session cache; `--resume-with session-id`)
#   tls13-{rsa,ec}-full       TLS 1.3 full handshakes
#   tls13-{rsa,ec}-resumed    TLS 1.3 resumed (ticket, PSK with ECDHE)
# The client picks the version (`bench --tls12`, or TLS 1.3); both servers offer
# 1.2 and 1.3, session tickets and a session cache, each with its defaults.
#
# Each run of a case, for each server: WARMUP seconds of load unmeasured, then
# COUNT_SECS seconds with `perf stat` counting the server's system calls (perf's
# raw_syscalls:sys_enter tracepoint, and its syscalls:sys_enter_* tracepoints
# call by call for the DETAIL cases; every thread of the server and its
# children), then DURATION seconds measuring rate, p99, the server's CPU
# (user+system, /proc) and its context switches (voluntary and involuntary,
# /proc), with nothing attached to it. The order of the servers alternates from
# round to round. The tables give the medians over the rounds, per
# transaction, and the ratios of those medians (wwep/nginx); the CPU ratio of
# each round is listed beside them. For the resumed cases it checks that the
# handshakes did resume, and it counts the session tickets each server sends
# after a TLS 1.3 full handshake (`openssl s_client -msg`). It ends with the
# bar of docs/performance.md, met or not, case by case.
#
# Then it checks the generator itself: `wwep bench` against scripts/refgen.c (the
# smallest one-shot generator: blocking threads doing socket, connect, write,
# read, close, with no timing) on nginx's open port, alternating, and prints the
# median rates and their ratio.
#
# DURATION (seconds per measured run, default 3), ROUNDS (default 5), WARMUP
# (seconds, default 1) and COUNT_SECS (seconds counted by perf, default 2; 0
# counts nothing) tune the length; CASES (e.g. "plain tls12-ec-sessionid") picks
# cases by name; DETAIL names the cases whose system calls are listed call by
# call (default tls12-ec-ticket; "" for none); BASELINE=FILE measures another
# build's wwep-server beside this one, as a third server in the same rounds
# (e.g. a copy of target/release/wwep-server built from main), and adds a table
# of this build against it. GEN_ROUNDS (default 7) and GEN_DURATION (seconds,
# default 2) tune the generator check; GEN_ONLY=1 (`make bench-generator`) runs
# it alone.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-3}
ROUNDS=${ROUNDS:-5}
WARMUP=${WARMUP:-1}
COUNT_SECS=${COUNT_SECS:-2}
DETAIL=${DETAIL-tls12-ec-ticket}
BASELINE=${BASELINE:-}
GEN_ROUNDS=${GEN_ROUNDS:-7}
GEN_DURATION=${GEN_DURATION:-2}

cargo build --release -q
wwep=./target/release/wwep
server=./target/release/wwep-server
if [ -n "$BASELINE" ] && [ ! -x "$BASELINE" ]; then
  echo "bench: BASELINE=$BASELINE is not an executable wwep-server" >&2
  exit 2
fi

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

# Where each server listens and which process it is, by "WHO:KIND" (WHO: ours,
# base, limit; KIND: plain, rsa, ec).
declare -A port pid_of

# start_ours WHO BINARY: two wwep-servers with their defaults (logging
# included, to a file as under journald) on ephemeral loopback ports: the open
# port and RSA on one, ECDSA on the other.
start_ours() {
  local who=$1 bin=$2 kind
  for kind in rsa ec; do
    local log="$tmp/$who-$kind.log" extra=()
    [ "$kind" = ec ] && extra=(--no-plain)
    "$bin" --bind 127.0.0.1 --plain-port 0 --tls-port 0 \
      --cert "$tmp/$kind/server.pem" --key "$tmp/$kind/server.key" "${extra[@]}" 2>"$log" &
    pids+=($!)
    pid_of[$who:$kind]=$!
    for _ in $(seq 100); do
      grep -q "tls listener on" "$log" 2>/dev/null && break
      sleep 0.1
    done
    port[$who:$kind]=$(grep -o "tls listener on [0-9.:]*" "$log" | awk -F: '{print $NF}')
  done
  port[$who:plain]=$(grep -o "plain listener on [0-9.:]*" "$tmp/$who-rsa.log" | awk -F: '{print $NF}')
  pid_of[$who:plain]=${pid_of[$who:rsa]}
}

# family PID...: these processes and their children (nginx's workers), one a line.
family() {
  local p
  for p in "$@"; do
    echo "$p"
    pgrep -P "$p" || true
  done
}

# cpu_ticks PID...: user+system clock ticks of these processes and their children's
# threads, to price a transaction in server CPU.
cpu_ticks() {
  local total=0 pid task
  for pid in $(family "$@"); do
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
  local files=() p
  for p in $(family "$@"); do files+=(/proc/"$p"/task/*/status); done
  # A thread may end between the listing and the reading: cat skips it.
  cat "${files[@]}" 2>/dev/null | awk '/^(non)?voluntary_ctxt_switches:/ { s += $2 } END { printf "%d\n", s }'
}

start_ours ours "$server"
servers=(ours)
if [ -n "$BASELINE" ]; then
  start_ours base "$BASELINE"
  servers+=(base)
fi

stream_module=/usr/lib/nginx/modules/ngx_stream_module.so
have_nginx() { command -v nginx >/dev/null 2>&1 && [ -e "$stream_module" ]; }
if ! have_nginx && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing nginx and its stream module for the comparison..." >&2
  (apt-get install -y -qq nginx-light libnginx-mod-stream >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nginx-light libnginx-mod-stream >/dev/null 2>&1; }) || true
fi
limit=none
if have_nginx; then
  port[limit:plain]=$(free_port); port[limit:rsa]=$(free_port); port[limit:ec]=$(free_port)
  mkdir -p "$tmp/nginx"
  cat >"$tmp/nginx.conf" <<CONF
load_module $stream_module;
worker_processes auto;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log warn;
events { worker_connections 8192; }
stream {
  server { listen 127.0.0.1:${port[limit:plain]}; return "A0FAC0B1234"; }
  server {
    listen 127.0.0.1:${port[limit:rsa]} ssl;
    ssl_certificate $tmp/rsa/server.pem; ssl_certificate_key $tmp/rsa/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:wwep_rsa:10m;
    ssl_session_tickets on;
    return "A0FAC0B1234";
  }
  server {
    listen 127.0.0.1:${port[limit:ec]} ssl;
    ssl_certificate $tmp/ec/server.pem; ssl_certificate_key $tmp/ec/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:wwep_ec:10m;
    ssl_session_tickets on;
    return "A0FAC0B1234";
  }
}
CONF
  nginx -e "$tmp/nginx-error.log" -p "$tmp/nginx" -c "$tmp/nginx.conf" -g 'daemon off;' &
  pids+=($!)
  for kind in plain rsa ec; do pid_of[limit:$kind]=$!; done
  for _ in $(seq 50); do
    (echo >"/dev/tcp/127.0.0.1/${port[limit:plain]}") 2>/dev/null && break
    sleep 0.1
  done
  limit=nginx
  servers+=(limit)
fi

# System calls are counted with perf's syscall tracepoints where perf can read
# them (root, or perf_event_paranoid and tracefs permissions that allow it).
counting="perf stat -e raw_syscalls:sys_enter (call by call: -e 'syscalls:sys_enter_*') over ${COUNT_SECS} s per run"
if [ "$COUNT_SECS" = 0 ]; then
  counting="not counted (COUNT_SECS=0)"
elif ! command -v perf >/dev/null 2>&1; then
  counting="not counted: perf is not installed"
elif ! perf stat -x, -e raw_syscalls:sys_enter -e 'syscalls:sys_enter_getpid' -- true >/dev/null 2>&1; then
  counting="not counted: perf cannot read the syscall tracepoints here (root or kernel.perf_event_paranoid)"
fi
counts() { [[ $counting == perf* ]]; }

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

# counted CSV EVENTS PIDS BENCH-ARGS...: one bench run (its JSON on stdout)
# while perf counts EVENTS and the context switches of PIDS (comma-separated);
# perf's CSV goes to CSV. perf attaches with its counters off and turns them on
# and off through its control pipe, so its own start and end are not counted.
counted() {
  local csv=$1 events=$2 pids=$3
  shift 3
  local ctl="$tmp/perf.ctl" ack="$tmp/perf.ack" c a out perf_pid
  rm -f "$ctl" "$ack"
  mkfifo "$ctl" "$ack"
  perf stat -x, -o "$csv" -D -1 --control "fifo:$ctl,$ack" \
    -e "$events" -e context-switches -p "$pids" >/dev/null 2>&1 &
  perf_pid=$!
  exec {c}<>"$ctl" {a}<>"$ack"
  echo enable >&"$c"
  read -r -t 60 _ <&"$a" || true
  out=$(bench "$@" 2>/dev/null) || true
  echo disable >&"$c"
  read -r -t 60 _ <&"$a" || true
  kill -INT "$perf_pid" 2>/dev/null || true
  wait "$perf_pid" 2>/dev/null || true
  exec {c}>&- {a}>&-
  echo "$out"
}

# run NAME CONCURRENCY WHO ROUND: warm up, count the system calls (with perf,
# where it can), then one measurement as JSON, with the server's CPU (µs),
# context switches and system calls per completed transaction added as
# "cpu_us", "switches" and "syscalls" (-1: not counted). The counted run's calls
# go to $calls, one "NAME CONC WHO ROUND CALL PER_TX" a line.
run() {
  local name=$1 conc=$2 who=$3 round=$4 flags kind
  case "$name" in plain) kind=plain ;; *-rsa-*) kind=rsa ;; *) kind=ec ;; esac
  local p=${port[$who:$kind]} pid=${pid_of[$who:$kind]}
  mapfile -t flags < <(case_flags "$name")
  # nginx answers every request with one constant, which `wwep bench` would
  # count as an A for another register: it is told to expect it.
  [ "$who" = limit ] && flags+=(--expect-reply A0FAC0B1234)
  bench "$p" "$conc" "$WARMUP" "${flags[@]}" >/dev/null 2>&1 || true
  local syscalls=-1
  if counts; then
    # All calls through the one tracepoint every call passes; call by call
    # (one tracepoint per call, hundreds of counters per thread, which take
    # perf seconds to close) only for the DETAIL cases.
    local csv="$tmp/perf.csv" counted_out n events=raw_syscalls:sys_enter
    case " $DETAIL " in *" $name "*) events='syscalls:sys_enter_*' ;; esac
    counted_out=$(counted "$csv" "$events" "$(family "$pid" | paste -sd,)" "$p" "$conc" "$COUNT_SECS" "${flags[@]}")
    n=$(field "$counted_out" completed)
    if [ "${n:-0}" -gt 0 ] && [ -s "$csv" ]; then
      # perf's CSV: count,unit,event,... ("<not counted>" for a call never made).
      awk -F, -v n="$n" -v pre="$name $conc $who $round" '
        $3 ~ /^syscalls:sys_enter_/ && $1 ~ /^[0-9]+$/ && $1 > 0 {
          call = $3; sub(/^syscalls:sys_enter_/, "", call); printf "%s %s %.4f\n", pre, call, $1 / n }' "$csv" >>"$calls"
      syscalls=$(awk -F, -v n="$n" '$3 ~ /sys_enter/ && $1 ~ /^[0-9]+$/ { s += $1 } END { printf "%.2f", s / n }' "$csv")
    fi
    rm -f "$csv"
  fi
  local before sw_before out after sw_after n cpu=0 sw=0
  before=$(cpu_ticks "$pid")
  sw_before=$(switches "$pid")
  out=$(bench "$p" "$conc" "$DURATION" "${flags[@]}" 2>/dev/null) || true
  after=$(cpu_ticks "$pid")
  sw_after=$(switches "$pid")
  [ -n "$out" ] || out='{"completed":0,"per_second":0,"p99_us":0,"errors":{"run":1}}'
  n=$(field "$out" completed)
  if [ "${n:-0}" -gt 0 ]; then
    cpu=$(( (after - before) * 1000000 / tick / n ))
    sw=$(awk -v d="$((sw_after - sw_before))" -v n="$n" 'BEGIN { printf "%.2f", d / n }')
  fi
  echo "${out%\}},\"cpu_us\":$cpu,\"switches\":$sw,\"syscalls\":$syscalls}"
}
field() { sed -n "s/.*\"$2\":\(-\{0,1\}[0-9.]*\).*/\1/p" <<<"$1"; }
errors() { sed -n 's/.*"errors":{\([^}]*\)}.*/\1/p' <<<"$1"; }

# row NAME CONCURRENCY WHO ROUND JSON: one line of results: case, concurrency,
# who, round, tx/s, p99 µs, cpu µs/tx, switches/tx, syscalls/tx, handshakes and
# resumed (- without --resume), errors.
row() {
  local r=$5 hs resumed
  hs=$(field "$r" handshakes); resumed=$(field "$r" resumed)
  echo "$1 $2 $3 $4 $(field "$r" per_second) $(field "$r" p99_us) $(field "$r" cpu_us) $(field "$r" switches) $(field "$r" syscalls) ${hs:--} ${resumed:--} $(errors "$r")" >>"$results"
}

# tickets WHO KIND: the session tickets a server sends after one TLS 1.3 full
# handshake, as `openssl s_client -msg` sees them.
tickets() {
  command -v openssl >/dev/null 2>&1 || { echo "?"; return; }
  printf 'R000000\n' | timeout 10 openssl s_client -connect "127.0.0.1:${port[$1:$2]}" \
    -servername localhost -CAfile "$tmp/$2/ca.pem" -tls1_3 -msg -ign_eof 2>/dev/null |
    grep -c '^<<< .*NewSessionTicket' || true
}

if [ "${GEN_ONLY:-0}" != 1 ]; then
  results="$tmp/results"
  calls="$tmp/calls"
  : >"$results"
  : >"$calls"
  load_before=$(uptime)
  # NAME CONCURRENCY: each server's port and PID follow from the name.
  cases=("plain 1" "plain 32" "tls13-rsa-full 1" "tls13-ec-full 1")
  for v in tls12-full tls12-ticket tls12-sessionid tls13-full tls13-resumed; do
    for k in rsa ec; do cases+=("${v%%-*}-$k-${v#*-} 32"); done
  done
  for round in $(seq "$ROUNDS"); do
    # Alternate which server goes first, so neither always runs on a machine
    # the other has just warmed (or loaded).
    order=("${servers[@]}")
    if [ $((round % 2)) = 0 ]; then
      order=()
      for ((i = ${#servers[@]} - 1; i >= 0; i--)); do order+=("${servers[i]}"); done
    fi
    for c in "${cases[@]}"; do
      read -r name conc <<<"$c"
      case " ${CASES:-$name} " in *" $name "*) ;; *) continue ;; esac
      echo "round $round: $name c=$conc" >&2
      for who in "${order[@]}"; do
        row "$name" "$conc" "$who" "$round" "$(run "$name" "$conc" "$who" "$round")"
      done
    done
  done
  load_after=$(uptime)

  echo
  echo "wwep vs. the one-shot limit on this machine ($(nproc) cores), ${ROUNDS} rounds x ${DURATION} s each, loopback, medians over the rounds"
  echo "(cpu: server user+system µs per transaction; sw: the server's context switches per transaction; sys: its system calls per transaction)"
  echo "system calls: $counting"
  echo "load before: ${load_before#*load average: }; after: ${load_after#*load average: } (1, 5, 15 min)"
  [ "$limit" = none ] && echo "(nginx with its stream module is not available here: ours alone)"
  tickets_line=""
  for who in "${servers[@]}"; do
    label=$who
    case $who in ours) label=wwep ;; base) label=before ;; limit) label=nginx ;; esac
    tickets_line="$tickets_line $label $(tickets "$who" ec) (ECDSA) $(tickets "$who" rsa) (RSA);"
  done
  awk -v limit="$limit" -v detail="$DETAIL" -v tickets="${tickets_line%;}" -f - "$results" "$calls" <<'AWK'
    FNR == 1 { file++ }
    # Results: case conc who round tps p99 cpu sw sys hs resumed errors...
    file == 1 {
      key = $1 " " $2; who = $3
      if (!(key in seen)) { seen[key] = 1; order[++k] = key }
      tps[key, who] = tps[key, who] " " $5; p99[key, who] = p99[key, who] " " $6
      cpu[key, who] = cpu[key, who] " " $7; sw[key, who] = sw[key, who] " " $8
      if ($9 >= 0) sys[key, who] = sys[key, who] " " $9
      cpu_round[key, who, $4] = $7; rounds[key] = ($4 > rounds[key] ? $4 : rounds[key])
      if ($1 ~ /-(ticket|sessionid|resumed)$/) { hs[key, who] += ($10 == "-" ? 0 : $10); res[key, who] += ($11 == "-" ? 0 : $11) }
      rest = ""; for (i = 12; i <= NF; i++) rest = rest " " $i
      if (rest != "") err[key, who] = err[key, who] rest
      present[who] = 1
      next
    }
    # Calls: case conc who round call per_tx
    {
      key = $1 " " $2
      c = key SUBSEP $3 SUBSEP $5
      per_call[c] = per_call[c] " " $6
      if (!((key, $5) in call_seen)) { call_seen[key, $5] = 1; call_list[key] = call_list[key] " " $5 }
    }
    function median(list,   a, n, i, j, t) {
      n = split(list, a, " ")
      if (n == 0) return -1
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
      return (n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2)
    }
    function ratio(a, b) { return (b > 0 ? a / b : 0) }
    function num(v, fmt) { return (v < 0 ? "-" : sprintf(fmt, v)) }
    function label(who) { return (who == "ours" ? "wwep" : (who == "base" ? "before" : "nginx")) }
    END {
      if (limit == "none") {
        printf "| %-19s | %4s | %9s | %8s | %8s | %6s | %7s |\n", "case", "conc", "wwep tx/s", "wwep p99", "wwep cpu", "wwep sw", "wwep sys"
        printf "|---------------------|------|-----------|----------|----------|--------|---------|\n"
        for (i = 1; i <= k; i++) {
          key = order[i]; split(key, f, " ")
          printf "| %-19s | %4s | %9.0f | %8.3f | %8.0f | %6.2f | %7s |\n", f[1], f[2], median(tps[key, "ours"]), median(p99[key, "ours"]) / 1000, median(cpu[key, "ours"]), median(sw[key, "ours"]), num(median(sys[key, "ours"]), "%.1f")
        }
      } else {
        print ""
        print "Rate, p99 (ms) and server CPU (µs) per transaction:"
        printf "| %-19s | %4s | %9s | %10s | %5s | %8s | %9s | %5s | %8s | %9s | %5s | %-29s |\n", "case", "conc", "wwep tx/s", "nginx tx/s", "ratio", "wwep p99", "nginx p99", "ratio", "wwep cpu", "nginx cpu", "ratio", "cpu ratio by round"
        printf "|---------------------|------|-----------|------------|-------|----------|-----------|-------|----------|-----------|-------|-------------------------------|\n"
        for (i = 1; i <= k; i++) {
          key = order[i]; split(key, f, " ")
          o = median(tps[key, "ours"]); t = median(tps[key, "limit"])
          o99 = median(p99[key, "ours"]) / 1000; t99 = median(p99[key, "limit"]) / 1000
          oc = median(cpu[key, "ours"]); tc = median(cpu[key, "limit"])
          by = ""
          for (r = 1; r <= rounds[key]; r++) if (((key, "ours", r) in cpu_round) && cpu_round[key, "limit", r] > 0) by = by sprintf("%s%.2f", (by == "" ? "" : " "), cpu_round[key, "ours", r] / cpu_round[key, "limit", r])
          printf "| %-19s | %4s | %9.0f | %10.0f | %5.2f | %8.3f | %9.3f | %5.2f | %8.0f | %9.0f | %5.2f | %-29s |\n", f[1], f[2], o, t, ratio(o, t), o99, t99, ratio(o99, t99), oc, tc, ratio(oc, tc), by
        }
        print ""
        print "System calls and context switches per transaction:"
        printf "| %-19s | %4s | %8s | %9s | %6s | %7s | %8s | %6s |\n", "case", "conc", "wwep sys", "nginx sys", "diff", "wwep sw", "nginx sw", "diff"
        printf "|---------------------|------|----------|-----------|--------|---------|----------|--------|\n"
        for (i = 1; i <= k; i++) {
          key = order[i]; split(key, f, " ")
          os = median(sys[key, "ours"]); ts = median(sys[key, "limit"])
          ow = median(sw[key, "ours"]); tw = median(sw[key, "limit"])
          printf "| %-19s | %4s | %8s | %9s | %6s | %7.2f | %8.2f | %+6.2f |\n", f[1], f[2], num(os, "%.1f"), num(ts, "%.1f"), (os < 0 || ts < 0 ? "-" : sprintf("%+.1f", os - ts)), ow, tw, ow - tw
        }
      }
      if ("base" in present) {
        print ""
        print "This build against BASELINE (before), same rounds:"
        printf "| %-19s | %4s | %11s | %9s | %5s | %10s | %8s | %5s | %10s | %8s | %9s | %7s |\n", "case", "conc", "before tx/s", "wwep tx/s", "ratio", "before cpu", "wwep cpu", "ratio", "before sys", "wwep sys", "before sw", "wwep sw"
        printf "|---------------------|------|-------------|-----------|-------|------------|----------|-------|------------|----------|-----------|---------|\n"
        for (i = 1; i <= k; i++) {
          key = order[i]; split(key, f, " ")
          b = median(tps[key, "base"]); o = median(tps[key, "ours"])
          bc = median(cpu[key, "base"]); oc = median(cpu[key, "ours"])
          printf "| %-19s | %4s | %11.0f | %9.0f | %5.2f | %10.0f | %8.0f | %5.2f | %10s | %8s | %9.2f | %7.2f |\n", f[1], f[2], b, o, ratio(o, b), bc, oc, ratio(oc, bc), num(median(sys[key, "base"]), "%.1f"), num(median(sys[key, "ours"]), "%.1f"), median(sw[key, "base"]), median(sw[key, "ours"])
        }
      }
      # The calls of the DETAIL cases, one by one (those made at least 0.05
      # times per transaction by some server).
      n_detail = split(detail, wanted, " ")
      for (d = 1; d <= n_detail; d++) {
        for (i = 1; i <= k; i++) {
          key = order[i]; split(key, f, " ")
          if (f[1] != wanted[d] || !(key in call_list)) continue
          print ""
          header = sprintf("| %-28s", "call (" f[1] " c=" f[2] ")")
          line = "|------------------------------"
          for (w = 1; w <= 3; w++) {
            who = (w == 1 ? "ours" : (w == 2 ? "base" : "limit"))
            if (!(who in present)) continue
            header = header sprintf(" | %7s", label(who)); line = line "|---------"
          }
          print "System calls per transaction, call by call (medians):"
          print header " |"; print line "|"
          m = split(call_list[key], names, " ")
          for (j = 1; j <= m; j++) {
            row = sprintf("| %-28s", names[j]); big = 0
            for (w = 1; w <= 3; w++) {
              who = (w == 1 ? "ours" : (w == 2 ? "base" : "limit"))
              if (!(who in present)) continue
              v = median(per_call[key, who, names[j]]); if (v < 0) v = 0
              if (v >= 0.05) big = 1
              row = row sprintf(" | %7.2f", v)
            }
            if (big) print row " |"
          }
        }
      }
      print ""
      print "session tickets after one TLS 1.3 full handshake:" tickets
      # The resumed cases must have resumed (the full ones offer no session at all).
      for (i = 1; i <= k; i++) {
        key = order[i]; line = ""
        for (w = 1; w <= 3; w++) {
          who = (w == 1 ? "ours" : (w == 2 ? "base" : "limit"))
          if (!((key, who) in hs)) continue
          line = line sprintf("%s %s %d/%d", (line == "" ? "" : ","), label(who), res[key, who], hs[key, who])
          if (res[key, who] < 0.9 * hs[key, who] || hs[key, who] == 0) line = line " NOT RESUMED"
        }
        if (line != "") { if (!head++) print "handshakes resumed (of all):"; split(key, f, " "); printf "  %s:%s\n", f[1], line }
      }
      for (key in err) if (err[key] != "") { split(key, g, SUBSEP); print "errors " g[1] " " label(g[2]) ":" err[key] }
      if (limit == "none") exit
      # The bar (docs/performance.md): every TLS case at concurrency 32 at or
      # below nginx's CPU per transaction and at 0.97 of its rate or more; the
      # ECDSA cases within 2.0 system calls (the log line and the graceful
      # close) and 0.2 context switches of nginx's; TLS 1.3 full handshakes at
      # 0.90 of nginx's CPU or less.
      checked = 0; missed = ""
      for (i = 1; i <= k; i++) {
        key = order[i]; split(key, f, " ")
        if (f[1] !~ /^tls/ || f[2] != 32) continue
        o = median(tps[key, "ours"]); t = median(tps[key, "limit"])
        oc = median(cpu[key, "ours"]); tc = median(cpu[key, "limit"])
        checked++
        if (ratio(oc, tc) > 1.00) missed = missed sprintf("\n  %s: cpu %.2fx nginx (bar 1.00)", f[1], ratio(oc, tc))
        if (ratio(o, t) < 0.97) missed = missed sprintf("\n  %s: rate %.2fx nginx (bar 0.97)", f[1], ratio(o, t))
        if (f[1] ~ /^tls13-.*-full$/ && ratio(oc, tc) > 0.90) missed = missed sprintf("\n  %s: cpu %.2fx nginx (bar for TLS 1.3 full 0.90)", f[1], ratio(oc, tc))
        if (f[1] ~ /-ec-/) {
          os = median(sys[key, "ours"]); ts = median(sys[key, "limit"])
          if (os >= 0 && ts >= 0 && os > ts + 2.0) missed = missed sprintf("\n  %s: %.1f system calls against nginx's %.1f (bar +2.0)", f[1], os, ts)
          ow = median(sw[key, "ours"]); tw = median(sw[key, "limit"])
          if (ow > tw + 0.2) missed = missed sprintf("\n  %s: %.2f context switches against nginx's %.2f (bar +0.2)", f[1], ow, tw)
        }
      }
      if (checked) {
        print ""
        if (missed == "") printf "bar: met in all %d TLS cases at c=32\n", checked
        else printf "bar: missed in %d TLS cases at c=32:%s\n", checked, missed
      }
    }
AWK
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
ng_plain=${port[limit:plain]}
cc -O2 -pthread -o "$tmp/refgen" scripts/refgen.c
gen="$tmp/generators"
: >"$gen"
echo "generator check: ${GEN_ROUNDS}x${GEN_DURATION} s each, c=32, nginx open port" >&2
"$tmp/refgen" 127.0.0.1 "$ng_plain" 32 1 >/dev/null
for _ in $(seq "$GEN_ROUNDS"); do
  r=$("$tmp/refgen" 127.0.0.1 "$ng_plain" 32 "$GEN_DURATION")
  w=$("$wwep" --server "127.0.0.1:$ng_plain" --json bench -c 32 --duration "$GEN_DURATION" --warmup 0 --quiet --expect-reply A0FAC0B1234 || true)
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
