#!/usr/bin/env bash
# `make bench-data`: write latency while the data file is compacted, with every
# one of the 16,777,216 registers written (see examples/compaction_latency.rs).
#
# Builds a data file with REGISTERS live registers (default all) in DIR (default
# the system's temporary directory: put it on the disk the server uses), replays
# it, then measures WRITERS threads writing random registers, RATE writes a
# second each (default 10000; 0 = flat out), for SECONDS_PER_PHASE outside any
# compaction and as long while the file is compacted back to back.
# Prints p50 / p99 / p99.9 / max per phase, and how long each compaction held
# writes back; exits 1 if p99.9 during compaction is over 2x outside or any write
# took over 20 ms. ROUNDS (default 3) repeats the whole measurement.
# Needs about 2 x 151 MB of disk in DIR and 200 MB of memory at the default size.
set -euo pipefail
cd "$(dirname "$0")/.."

REGISTERS=${REGISTERS:-16777216}
WRITERS=${WRITERS:-2}
RATE=${RATE:-10000}
SECONDS_PER_PHASE=${SECONDS_PER_PHASE:-5}
FSYNC=${FSYNC:-never}
ROUNDS=${ROUNDS:-3}
DIR=${DIR:-${TMPDIR:-/tmp}}

cargo build --release -q --example compaction_latency
echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg); data in $DIR ($(df -T "$DIR" | awk 'NR==2 {print $2}'))"
status=0
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round of $ROUNDS"
  ./target/release/examples/compaction_latency \
    --registers "$REGISTERS" --writers "$WRITERS" --rate "$RATE" --seconds "$SECONDS_PER_PHASE" \
    --fsync "$FSYNC" --dir "$DIR" || status=1
done
exit $status
