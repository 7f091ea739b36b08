//! What the property tests share: their settings, and strategies for splitting a byte stream into
//! chunks the way a network may deliver it.

use proptest::prelude::*;
use proptest::test_runner::Config;

/// `cases` cases by default (kept small so the suite stays fast); the standard `PROPTEST_CASES`
/// variable overrides it for long runs (`scripts/fuzz-long.sh`). Failures are not persisted to
/// files: each one found is kept as a plain regression test next to the property.
pub fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Cut points for a stream of `len` bytes: sorted, deduplicated offsets in `0..=len` (empty
/// chunks included, as a reader may see them).
pub fn cuts(len: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..=len, 0..16).prop_map(|mut v| {
        v.sort_unstable();
        v
    })
}

/// `bytes` cut at `cuts` (sorted offsets into it).
pub fn chunks<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut at = 0;
    for &c in cuts {
        let c = c.clamp(at, bytes.len());
        out.push(&bytes[at..c]);
        at = c;
    }
    out.push(&bytes[at..]);
    out
}

/// Arbitrary bytes, and cut points within them.
pub fn bytes_and_cuts(max: usize) -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    prop::collection::vec(any::<u8>(), 0..max).prop_flat_map(|b| {
        let n = b.len();
        (Just(b), cuts(n))
    })
}
