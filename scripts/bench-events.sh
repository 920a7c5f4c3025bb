#!/usr/bin/env bash
# `make bench` (and `make bench-events`): the watchers of /api/events, against
# a release `wwep-server --http` on ephemeral loopback ports (logging included,
# to a file as under journald); every process is stopped by PID.
#
# (a) Latency from a write's `A` to its event at a `curl -N`-like watcher
#     (examples/events_bench.rs): p99 over WRITES (default 1000) writes, one
#     every INTERVAL_MS (default 2) ms, with the server otherwise quiet, then
#     again beside 32 writers. FAIL, and exit 1 at the end, when a p99 is P99_MS (default 50)
#     or more, or an event is missing.
# (b) The WWEP rate of `wwep bench -c 32` with no watcher, with 10 stuck
#     watchers (they never read; reopened whenever the server drops one) and
#     with 10 watchers that read, the three alternating (each round starts
#     with the next) over ROUNDS (default 5) rounds of DURATION (default 3)
#     seconds; medians of the rate and of the server's CPU per transaction
#     (all its threads, user and system), the ratios to no watcher, and the
#     spread of the no-watcher rounds as the measure of noise. The reading
#     watchers' own work (tens of MB/s) runs on the same cores as the server
#     and the load, so their rate ratio counts it too; the CPU ratio does not.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-3}
ROUNDS=${ROUNDS:-5}
WRITES=${WRITES:-1000}
INTERVAL_MS=${INTERVAL_MS:-2}
P99_MS=${P99_MS:-50}

cargo build --release -q --bins --example events_bench
wwep=./target/release/wwep
server=./target/release/wwep-server
events=./target/release/examples/events_bench

tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$server" --bind 127.0.0.1 --plain-port 0 --no-tls --http 127.0.0.1:0 2>"$tmp/server.log" &
pids+=($!)
server_pid=$!
# cpu_ticks: user+system clock ticks of the server's threads so far.
cpu_ticks() {
  cat /proc/"$server_pid"/task/*/stat 2>/dev/null | sed 's/.*) //' | awk '{ s += $12 + $13 } END { print s + 0 }'
}
tick=$(getconf CLK_TCK)
for _ in $(seq 100); do
  grep -q "plain listener on" "$tmp/server.log" 2>/dev/null && break
  sleep 0.1
done
addr_of() { grep -o "$1 listener on [0-9.:]*" "$tmp/server.log" | head -1 | awk '{print $NF}'; }
plain=$(addr_of plain)
http=$(addr_of http)
[ -n "$plain" ] && [ -n "$http" ] || { echo "bench-events: the server did not start:" >&2; cat "$tmp/server.log" >&2; exit 2; }

echo "watchers of /api/events ($(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg))"
status=0
"$events" latency --plain "$plain" --http "$http" --writes "$WRITES" --interval-ms "$INTERVAL_MS" --p99-ms "$P99_MS" || status=1
"$events" latency --plain "$plain" --http "$http" --writes "$WRITES" --interval-ms "$INTERVAL_MS" --p99-ms "$P99_MS" --load 32 || status=1

field() { sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" <<<"$1"; }
results="$tmp/rates"
: >"$results"
arms=(none stuck reading)
for round in $(seq "$ROUNDS"); do
  for k in 0 1 2; do
    arm=${arms[$(( (round + k) % 3 ))]}
    holder=
    if [ "$arm" != none ]; then
      "$events" "$arm" --http "$http" --watchers 10 --seconds "$(( DURATION + 2 ))" >"$tmp/$arm.out" &
      holder=$!
      pids+=("$holder")
      sleep 0.5
    fi
    echo "round $round: $arm" >&2
    before=$(cpu_ticks)
    out=$("$wwep" --server "$plain" --json bench -c 32 --duration "$DURATION" --warmup 0 --quiet 2>/dev/null) || true
    after=$(cpu_ticks)
    n=$(field "$out" completed)
    cpu=0
    [ "${n:-0}" -gt 0 ] && cpu=$(awk -v t="$((after - before))" -v hz="$tick" -v n="$n" 'BEGIN { printf "%.2f", t * 1000000 / hz / n }')
    echo "$arm $(field "$out" per_second) $cpu" >>"$results"
    if [ -n "$holder" ]; then
      wait "$holder" 2>/dev/null || true
      cat "$tmp/$arm.out" >&2
    fi
  done
done

dropped=$(curl -s "http://$http/metrics" 2>/dev/null | awk '/^wwep_http_watchers_dropped_total/ { s += $2 } END { print s + 0 }' || echo "?")
awk -v rounds="$ROUNDS" -v secs="$DURATION" -v dropped="$dropped" '
  { n[$1]++; v[$1, n[$1]] = $2; c[$1, n[$1]] = $3 }
  function median(arm, col,   i, j, t, a, m) {
    m = n[arm]; for (i = 1; i <= m; i++) a[i] = (col == 2 ? c[arm, i] : v[arm, i])
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return m ? (m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2) : 0
  }
  END {
    none = median("none", 1); stuck = median("stuck", 1); reading = median("reading", 1)
    cnone = median("none", 2); cstuck = median("stuck", 2); creading = median("reading", 2)
    lo = hi = v["none", 1]
    for (i = 2; i <= n["none"]; i++) { if (v["none", i] < lo) lo = v["none", i]; if (v["none", i] > hi) hi = v["none", i] }
    printf "wwep bench -c 32, %d alternating rounds of %d s (tx/s, medians):\n", rounds, secs
    printf "  no watcher %.0f; 10 stuck watchers %.0f (ratio %.3f); 10 reading watchers %.0f (ratio %.3f)\n", none, stuck, (none > 0 ? stuck / none : 0), reading, (none > 0 ? reading / none : 0)
    printf "  server CPU per transaction: no watcher %.2f us; stuck %.2f us (ratio %.3f); reading %.2f us (ratio %.3f)\n", cnone, cstuck, (cnone > 0 ? cstuck / cnone : 0), creading, (cnone > 0 ? creading / cnone : 0)
    printf "  noise: the no-watcher rounds ranged %.0f-%.0f (%.3f-%.3f of their median); watchers dropped by the server: %s\n", lo, hi, (none > 0 ? lo / none : 0), (none > 0 ? hi / none : 0), dropped
  }' "$results"
exit $status
