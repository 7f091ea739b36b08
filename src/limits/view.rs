//! The JSON view of a key's limits with their counters as they stand: what the admin API's
//! `GET /admin/api/keys/{id}/limits` and the key's own `GET /v1/key/usage` answer (the same
//! shape, so the panel and the self-service page read it alike).

use filters::LimitPeek;
use serde_json::{Value, json};

fn usd(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

fn used(used: u64, limit: Option<u64>) -> Value {
    json!({"used": used, "limit": limit})
}

fn used_usd(used: u64, limit: Option<u64>) -> Value {
    json!({"used": usd(used), "limit": limit.map(usd)})
}

fn spent(spent: u64, limit: Option<u64>, resets_at: Option<i64>) -> Value {
    json!({"spent_usd": usd(spent), "limit_usd": limit.map(usd), "resets_at": resets_at})
}

/// The view of a key's policy and its counters at `now_s`.
pub fn limits(policy: &filters::policy::KeyPolicy, p: &LimitPeek, now_s: i64) -> Value {
    use crate::limits::{day_start, next_month_start, week_start};
    let rate = policy.rate_limit.as_ref().map(|r| {
        json!({
            "window_s": r.window.as_secs(),
            "rolling": r.rolling,
            "requests": used(p.requests, r.requests),
            "tokens": used(p.tokens, r.tokens),
            "cost_usd": used_usd(p.cost_nanos, r.cost_nanos),
            "resets_at": p.window_ends_ms.map(|ms| ms.div_euclid(1000)),
        })
    });
    let spend = policy.cost_limits.as_ref().map(|c| {
        let week = week_start(now_s, c.weekly_reset.0, c.weekly_reset.1);
        json!({
            "daily": spent(p.day_nanos, c.daily_nanos, Some(day_start(now_s) + 86_400)),
            "weekly": spent(p.week_nanos, c.weekly_nanos, Some(week + 7 * 86_400)),
            "monthly": spent(p.month_nanos, c.monthly_nanos, Some(next_month_start(now_s))),
            "total": spent(p.total_nanos, c.total_nanos, None),
        })
    });
    let concurrency = policy
        .concurrency
        .as_ref()
        .map(|c| json!({"in_flight": p.in_flight, "limit": c.limit}));
    json!({
        "rate": rate,
        "spend": spend,
        "concurrency": concurrency,
        "reserved_usd": usd(p.reserved_nanos),
    })
}
