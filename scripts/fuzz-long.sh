#!/usr/bin/env bash
# A long run of the property tests (the `props` modules next to the SSE usage reader, the body
# reader and model splice, the model rewriter, config loading, session ids and the classification
# of upstream error answers).
#
#   scripts/fuzz-long.sh [CASES] [--debug]
#
# CASES (default: $PROPTEST_CASES, else 100000) is the case count of a standard property; the
# heavier ones (every two-way split of a stream, every field of a config) run the same share of
# it as in the quick suite. The tests are built optimized with overflow checks and debug
# assertions kept on, so an arithmetic overflow still fails; --debug uses the ordinary test build
# instead (no extra build, slower to run). A failure prints the minimal input: keep it as a plain
# #[test] next to the property, then fix the code.
set -euo pipefail
cd "$(dirname "$0")/.."

cases="${PROPTEST_CASES:-100000}"
profile=(--release)
for arg in "$@"; do
  case "$arg" in
    --debug) profile=() ;;
    '' | *[!0-9]*) echo "usage: $0 [CASES] [--debug]" >&2; exit 2 ;;
    *) cases="$arg" ;;
  esac
done

export PROPTEST_CASES="$cases"
export CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true
export CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true
echo "fuzz-long: PROPTEST_CASES=$PROPTEST_CASES ${profile[*]:-(debug build)}"
start=$(date +%s)
cargo test "${profile[@]}" --lib -- props::
echo "fuzz-long: done in $(( $(date +%s) - start )) s"
