//! Property tests of reading an upstream's error answer: any status, rate-limit headers and body
//! never panic, and a health entry never ends before it starts.

use proptest::prelude::*;

use super::*;
use crate::test_props::config;

/// A header value as an upstream may send it: numbers of any size and form, or anything.
fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        Just("rejected".to_string()),
        Just("1e300".to_string()),
        Just("-1e300".to_string()),
        Just("NaN".to_string()),
        "[ -~]{0,12}",
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_error_answer_is_classified_without_panicking(
        status in prop_oneof![Just(429u16), Just(401), Just(403), Just(529), Just(503), 100..600u16],
        headers in prop::collection::vec((prop::sample::select(vec![
            "anthropic-ratelimit-unified-status",
            "anthropic-ratelimit-unified-reset",
            "anthropic-ratelimit-unified-representative-claim",
            "anthropic-ratelimit-unified-5h-utilization",
            "anthropic-ratelimit-unified-5h-reset",
            "anthropic-ratelimit-unified-7d-reset",
            "retry-after",
        ]), header_value()), 0..6),
        rejected in any::<bool>(),
        body in prop::collection::vec(any::<u8>(), 0..64),
        now_ms in 0..=4_102_444_800_000i64,
        cooldown_s in any::<u64>(),
    ) {
        let mut h = http::HeaderMap::new();
        if rejected {
            h.insert("anthropic-ratelimit-unified-status", http::HeaderValue::from_static("rejected"));
        }
        for (name, value) in &headers {
            if let Ok(v) = http::HeaderValue::from_str(value) {
                h.insert(*name, v);
            }
        }
        let cooldown = |_: CooldownClass| std::time::Duration::from_secs(cooldown_s);
        let _ = UnifiedLimits::from_headers(&h, now_ms / 1000);
        if let Verdict::Mark(entry) = classify(status, &h, &body, &cooldown, now_ms) {
            prop_assert_eq!(entry.since, now_ms);
            if let Some(until) = entry.until {
                prop_assert!(until >= entry.since, "{:?}", entry);
            }
        }
    }
}
