#!/usr/bin/env bash
# The closing line of a test run: `tests: N passed, M failed, K skipped`, with
# what the skipped tests were missing.
#
#   test-summary.sh CARGO_OUTPUT SKIP_FILE [CARGO_STATUS]
#
# CARGO_OUTPUT holds cargo's `test result:` lines; SKIP_FILE one line per skip,
# "binary::test<TAB>reason" (tests/common/mod.rs, `skip`). libtest counted the
# skipped tests as passed, so they are taken off the passed count. A cargo
# that failed without a failed test (a build error) counts as one failure, so
# a run that tested nothing never reads as a success. Exits 1 when anything
# failed.
set -euo pipefail
output=$1 skips=$2 status=${3:-0}

passed=$(awk '/^test result:/ { s += $4 } END { print s + 0 }' "$output")
failed=$(awk '/^test result:/ { s += $6 } END { print s + 0 }' "$output")
skipped=0 why=
if [ -s "$skips" ]; then
  skipped=$(cut -f1 "$skips" | sort -u | wc -l)
  # "reason: how many tests", most frequent first.
  why=$(sort -u "$skips" | cut -f2 | sort | uniq -c | sort -rn |
    awk '{ n = $1; $1 = ""; sub(/^ /, ""); printf "%s%s: %d", sep, $0, n; sep = "; " }')
fi
passed=$((passed - skipped))
note=
if [ "$status" != 0 ] && [ "$failed" = 0 ]; then
  failed=1
  note=" (cargo test exited with $status before any test failed: see above)"
fi
line="tests: $passed passed, $failed failed, $skipped skipped"
[ -z "$why" ] || line="$line ($why)"
echo "$line$note"
[ "$failed" = 0 ]
