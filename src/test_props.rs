//! What the property tests share: their settings, and strategies for splitting a byte stream into
//! chunks the way a network may deliver it.

use proptest::prelude::*;
use proptest::test_runner::Config;

/// The cases of the standard properties when `PROPTEST_CASES` is not set.
pub const STANDARD_CASES: u32 = 256;

/// `cases` cases by default (kept small so that the suite stays fast). The standard
/// `PROPTEST_CASES` variable scales every property: it is the count of a standard one
/// ([`STANDARD_CASES`] by default), and a heavier property, whose default is lower, runs the same
/// share of it (`scripts/fuzz-long.sh` sets it high). Failures are not persisted to files: each
/// one found is kept as a plain regression test next to the property.
pub fn config(cases: u32) -> Config {
    let cases = match std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(n) => (n * u64::from(cases) / u64::from(STANDARD_CASES)).clamp(1, u64::from(u32::MAX)) as u32,
        None => cases,
    };
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
