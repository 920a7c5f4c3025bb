#!/usr/bin/env bash
# What `make test` runs: install what the tests need when this machine can,
# run every test (all of them, even after a failure), and end with one line
# that counts a test that skipped itself as skipped, not as passed.
# Extra arguments go to `cargo test`.
set -uo pipefail
cd "$(dirname "$0")/.."
cargo=${CARGO:-cargo}

missing=$(./scripts/test-tools.sh missing | xargs)
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  ./scripts/test-tools.sh install || echo "apt-get could not install: $missing"
  missing=$(./scripts/test-tools.sh missing | xargs)
fi
if [ -n "$missing" ]; then
  echo "missing for some tests (they will be skipped): $missing; install with: sudo apt-get install $missing"
fi

mkdir -p target
log=target/test-output.log
skips=$PWD/target/test-skips.tsv
: >"$skips"
WWEP_SKIP_FILE=$skips $cargo test --all-targets --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
./scripts/test-summary.sh "$log" "$skips" "$status"
