//! Per-key limit counters behind [`filters::LimitBackend`]: rate windows (requests, tokens, cost
//! per window of N minutes, fixed windows aligned to the epoch), spend caps (daily, weekly, total)
//! and concurrency slots, plus the first-use time of activation-mode keys.
//!
//! Two backends: [`MemoryLimits`] (the embedded store: one instance, exact within it) and
//! [`redis::RedisLimits`] (every instance on one Redis: one Lua script per admission, exact across
//! instances). `server.rs` picks the one that matches the store.
//!
//! Requests and concurrency are counted atomically at admission. Tokens and cost are known only
//! when a response completes: admission checks what was charged so far, completion charges. So a
//! key may overshoot a token or cost limit by what the requests admitted while earlier ones were
//! still running cost: at most `concurrency.limit` requests' worth when the key has a concurrency
//! cap, else the requests admitted in the time one request takes. A request admitted before the
//! limit is reached always runs to its end.
//!
//! Spend caps survive a restart: on first use per key and day, the backends read the key's spend
//! from the usage statistics in the store ([`SpendSeeds`]: today's `day` bucket, the `hour`
//! buckets since the weekly reset, the `total` bucket) and raise their counters to at least that.
//! Statistics are written every `stats.flush_interval`, and a process that dies (SIGKILL) loses the
//! batch it had not written yet, so after a crash a cap can be overshot by at most one flush
//! interval's spend plus the requests that were in flight. A weekly reset that is not on the hour
//! counts the spend of the hour it falls in from its start (the statistics have hourly buckets).

pub mod memory;
pub mod redis;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use filters::policy::CostLimits;
use filters::{Admission, RejectKind, Rejection};

use crate::store::{Dimension, Granularity, Store, StoreResult};

pub use memory::MemoryLimits;

/// Why an admission was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A rate window is exhausted; `retry-after` is the time until it ends.
    Rate,
    Concurrency,
    Daily,
    Weekly,
    Total,
}

impl Refusal {
    /// The refusal as the caller sees it: 429 for windows and slots, 402 for spent caps.
    pub fn admission(self, retry_after: Option<u64>) -> Admission {
        let (status, kind, reason, message) = match self {
            Refusal::Rate => (
                429,
                RejectKind::RateLimited,
                "rate_limit",
                "Rate limit reached for this key",
            ),
            Refusal::Concurrency => (
                429,
                RejectKind::RateLimited,
                "concurrency_limit",
                "Too many requests in flight for this key",
            ),
            Refusal::Daily => (402, RejectKind::Billing, "daily_cost_limit", "Daily cost limit reached"),
            Refusal::Weekly => (
                402,
                RejectKind::Billing,
                "weekly_cost_limit",
                "Weekly cost limit reached",
            ),
            Refusal::Total => (402, RejectKind::Billing, "total_cost_limit", "Total cost limit reached"),
        };
        let mut r = Rejection::new(status, kind, reason, message);
        r.retry_after = retry_after.map(|s| s.max(1));
        Admission::Refused(r)
    }
}

/// A key's spend as recorded in the usage statistics (nano-USD), for the periods it was read for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpendSeed {
    /// Unix s.
    pub day_start: i64,
    pub day: u64,
    /// Unix s.
    pub week_start: i64,
    pub week: u64,
    pub total: u64,
}

struct SeedCell {
    day_start: i64,
    week_start: i64,
    seed: tokio::sync::OnceCell<SpendSeed>,
}

/// Reads each key's recorded spend once per day and week (the first admission of a key waits for
/// it; concurrent ones share the read), so spend caps hold across restarts.
pub struct SpendSeeds {
    store: Arc<dyn Store>,
    cells: Mutex<HashMap<Arc<str>, Arc<SeedCell>>>,
}

impl SpendSeeds {
    pub fn new(store: Arc<dyn Store>) -> Self {
        SpendSeeds {
            store,
            cells: Mutex::new(HashMap::new()),
        }
    }

    /// The key's recorded spend for the day and week containing `now_s`; `None` when the store
    /// cannot say (logged; the counters then start from what this process charged).
    pub async fn get(&self, key_id: &Arc<str>, caps: &CostLimits, now_s: i64) -> Option<SpendSeed> {
        let day = day_start(now_s);
        let week = week_start(now_s, caps.weekly_reset.0, caps.weekly_reset.1);
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
            match cells.get(key_id) {
                Some(c) if c.day_start == day && c.week_start == week => c.clone(),
                _ => {
                    let c = Arc::new(SeedCell {
                        day_start: day,
                        week_start: week,
                        seed: tokio::sync::OnceCell::new(),
                    });
                    cells.insert(key_id.clone(), c.clone());
                    c
                }
            }
        };
        match cell
            .seed
            .get_or_try_init(|| read_spend(&*self.store, key_id, caps, day, week, now_s))
            .await
        {
            Ok(s) => Some(*s),
            Err(e) => {
                tracing::warn!(key = %key_id, error = %e, "reading the key's recorded spend failed; spend caps count from now");
                None
            }
        }
    }
}

async fn read_spend(
    store: &dyn Store,
    key_id: &str,
    caps: &CostLimits,
    day: i64,
    week: i64,
    now_s: i64,
) -> StoreResult<SpendSeed> {
    let spent = |rows: Vec<(i64, crate::store::UsageCounters)>| rows.iter().map(|(_, c)| c.cost_nanos).sum::<u64>();
    let mut seed = SpendSeed {
        day_start: day,
        week_start: week,
        ..SpendSeed::default()
    };
    if caps.daily_nanos.is_some() {
        seed.day = spent(
            store
                .usage_series(Dimension::Key, key_id, Granularity::Day, day, day + 1)
                .await?,
        );
    }
    if caps.weekly_nanos.is_some() {
        let from = Granularity::Hour.bucket_start(week);
        seed.week = spent(
            store
                .usage_series(Dimension::Key, key_id, Granularity::Hour, from, now_s + 1)
                .await?,
        );
    }
    if caps.total_nanos.is_some() {
        seed.total = spent(
            store
                .usage_series(Dimension::Key, key_id, Granularity::Total, 0, 1)
                .await?,
        );
    }
    Ok(seed)
}

/// The fixed window of `window_ms` containing `now_ms`: (start, end).
pub fn window_bounds(now_ms: i64, window_ms: i64) -> (i64, i64) {
    let start = now_ms - now_ms.rem_euclid(window_ms.max(1));
    (start, start + window_ms)
}

/// Start (Unix s) of the UTC day containing `now_s`.
pub fn day_start(now_s: i64) -> i64 {
    crate::store::Granularity::Day.bucket_start(now_s)
}

/// Start (Unix s) of the week containing `now_s` for a reset at `weekday` (0 = Monday) and
/// `minute` of the day, UTC.
pub fn week_start(now_s: i64, weekday: u32, minute: u32) -> i64 {
    // 1970-01-01 was a Thursday (weekday 3 with Monday = 0).
    let day = now_s.div_euclid(86_400);
    let today = (day + 3).rem_euclid(7);
    let mut start_day = day - (today - i64::from(weekday)).rem_euclid(7);
    let mut start = start_day * 86_400 + i64::from(minute) * 60;
    if start > now_s {
        start_day -= 7;
        start = start_day * 86_400 + i64::from(minute) * 60;
    }
    start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weeks_start_at_their_reset() {
        // 2026-11-23 is a Monday.
        let monday = chrono::NaiveDate::from_ymd_opt(2026, 11, 23)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp();
        assert_eq!(week_start(monday + 5 * 86_400, 0, 0), monday);
        assert_eq!(week_start(monday, 0, 0), monday);
        assert_eq!(week_start(monday - 1, 0, 0), monday - 7 * 86_400);
        // Reset Wednesday 12:00; on Monday we are in the week that began last Wednesday.
        assert_eq!(week_start(monday + 3600, 2, 720), monday - 5 * 86_400 + 43_200);
        assert_eq!(window_bounds(125_000, 60_000), (120_000, 180_000));
    }
}
