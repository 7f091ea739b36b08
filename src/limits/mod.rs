//! Per-key limit counters behind [`filters::LimitBackend`]: rate windows (requests, tokens, cost
//! per window of N minutes: fixed windows aligned to the epoch, or rolling ones that slide with
//! each request), spend caps (daily, weekly, monthly, total) and concurrency slots, plus the
//! first-use time of activation-mode keys.
//!
//! Two backends: [`MemoryLimits`] (the embedded store: one instance, exact within it) and
//! [`redis::RedisLimits`] (every instance on one Redis: one Lua script per admission, exact across
//! instances). `server.rs` picks the one that matches the store. Both follow the same rules, and
//! `tests/key_limits.rs` runs the same scenarios on each.
//!
//! Requests and concurrency are counted atomically at admission. Cost is known only when a
//! response completes, so a key with spend caps or a cost window **reserves** at admission what
//! the request may cost (the relay's estimate, `usage::estimate`: the prompt bounded by its size,
//! plus its output limit, at the model's price) and is admitted only when, for every cost limit,
//! `spent + reserved by requests in flight + this estimate <= limit` ([`cost_shortfall`]). At
//! completion one call frees the reservation and charges the actual cost. So parallel requests
//! cannot together overdraw a cap: the guarantee holds as long as each request costs at most its
//! estimate, which its output limit bounds exactly (an upstream never writes more than
//! `max_tokens`) and the size bound covers for the prompt; a request without an output limit is
//! reserved [`crate::usage::estimate::DEFAULT_OUTPUT_TOKENS`] and may cost more (the key's
//! `hard_cap` then ends its stream at the ceiling). A request of a model without a price reserves
//! nothing (its cost is unknown until the end, as before). Token windows are still charged after
//! the fact: a key may overshoot a token window by what the requests in flight use.
//!
//! A refusal because of a reservation keeps the cap's status and reason (402 `daily_cost_limit`,
//! 429 `rate_limit` for a cost window) and says which case it is: the cap is reached; what is left
//! is reserved by requests in flight (`retry-after: 1`, it comes back as they finish); or the
//! request's estimate alone is more than what is left (the message gives both figures, and the
//! retry-after is the end of the period).
//!
//! Spend caps survive a restart: on first use per key and day, the backends read the key's spend
//! from the usage statistics in the store ([`SpendSeeds`]: today's `day` bucket, the `hour`
//! buckets since the weekly reset, this month's `month` bucket, the `total` bucket) and raise
//! their counters to at least that. Statistics are written every `stats.flush_interval`, and a
//! process that dies (SIGKILL) loses the batch it had not written yet, so after a crash a cap can
//! be overshot by at most one flush interval's spend plus the requests that were in flight. A
//! weekly reset that is not on the hour counts the spend of the hour it falls in from its start
//! (the statistics have hourly buckets). Rolling windows and reservations are not seeded: a
//! restarted single instance starts them empty.

pub mod memory;
pub mod redis;
pub mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use filters::policy::CostLimits;
use filters::{Admission, RejectKind, Rejection};

use crate::store::{Dimension, Granularity, Store, StoreResult};

pub use memory::MemoryLimits;

/// Why an admission was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A rate window is exhausted; `retry-after` is the time until it ends (or, for a rolling
    /// window, until enough of it has slid out).
    Rate,
    Concurrency,
    Daily,
    Weekly,
    Monthly,
    Total,
}

/// How a cost limit (a spend cap or a rate window's cost) refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    /// The limit is reached (or, for requests and tokens, the window is full).
    Spent,
    /// What is left is reserved by the key's requests in flight; it comes back as they finish.
    Reserved,
    /// The request's own estimate is more than what is left (nano-USD), whatever is in flight.
    TooLarge { estimate: u64, room: u64 },
}

/// Which limit refused and how: the backends' common answer, turned into the caller's refusal
/// by [`Refusal::admission`].
impl Refusal {
    /// The refusal as the caller sees it: 429 for windows and slots, 402 for spent caps.
    pub fn admission(self, retry_after: Option<u64>) -> Admission {
        self.refused(Shortfall::Spent, retry_after)
    }

    /// The refusal for `shortfall`: the same status and reason whatever it is, a message that
    /// says why (a request whose estimate alone does not fit is told so, and how much is left).
    pub fn refused(self, shortfall: Shortfall, retry_after: Option<u64>) -> Admission {
        let (status, kind, reason, what) = match self {
            Refusal::Rate => (429, RejectKind::RateLimited, "rate_limit", "Rate limit"),
            Refusal::Concurrency => (429, RejectKind::RateLimited, "concurrency_limit", "Concurrency limit"),
            Refusal::Daily => (402, RejectKind::Billing, "daily_cost_limit", "Daily cost limit"),
            Refusal::Weekly => (402, RejectKind::Billing, "weekly_cost_limit", "Weekly cost limit"),
            Refusal::Monthly => (402, RejectKind::Billing, "monthly_cost_limit", "Monthly cost limit"),
            Refusal::Total => (402, RejectKind::Billing, "total_cost_limit", "Total cost limit"),
        };
        let message = match (self, shortfall) {
            (Refusal::Rate, Shortfall::Spent) => "Rate limit reached for this key".to_string(),
            (Refusal::Concurrency, _) => "Too many requests in flight for this key".to_string(),
            (_, Shortfall::Spent) => format!("{what} reached"),
            (_, Shortfall::Reserved) => {
                format!("{what}: what is left is reserved by this key's requests in flight; retry when they finish")
            }
            (_, Shortfall::TooLarge { estimate, room }) => format!(
                "{what}: this request may cost up to {} (its estimated input and its output limit at the \
                 model's price), more than the {} left; send a shorter prompt or a lower max_tokens",
                dollars(estimate),
                dollars(room)
            ),
        };
        let mut r = Rejection::new(status, kind, reason, message);
        r.retry_after = retry_after.map(|s| s.max(1));
        Admission::Refused(r)
    }
}

/// nano-USD as `$0.000123`.
fn dollars(nanos: u64) -> String {
    format!("${:.6}", nanos as f64 / 1e9)
}

/// The check of one cost limit at admission: `spent` of `cap` used, `reserved` held by requests
/// in flight, `estimate` asked for. `None` when the request fits; the same rule on both backends
/// (`lua/admit.lua` has it in Lua).
pub fn cost_shortfall(cap: u64, spent: u64, reserved: u64, estimate: u64) -> Option<Shortfall> {
    if spent >= cap {
        return Some(Shortfall::Spent);
    }
    if spent.saturating_add(reserved).saturating_add(estimate) <= cap {
        return None;
    }
    let room = cap - spent;
    Some(if estimate > room {
        Shortfall::TooLarge { estimate, room }
    } else {
        Shortfall::Reserved
    })
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
    /// Unix s.
    pub month_start: i64,
    pub month: u64,
    pub total: u64,
}

struct SeedCell {
    day_start: i64,
    week_start: i64,
    month_start: i64,
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
        let month = month_start(now_s);
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
            match cells.get(key_id) {
                Some(c) if c.day_start == day && c.week_start == week && c.month_start == month => c.clone(),
                _ => {
                    let c = Arc::new(SeedCell {
                        day_start: day,
                        week_start: week,
                        month_start: month,
                        seed: tokio::sync::OnceCell::new(),
                    });
                    cells.insert(key_id.clone(), c.clone());
                    c
                }
            }
        };
        match cell
            .seed
            .get_or_try_init(|| read_spend(&*self.store, key_id, caps, (day, week, month), now_s))
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
    (day, week, month): (i64, i64, i64),
    now_s: i64,
) -> StoreResult<SpendSeed> {
    let spent = |rows: Vec<(i64, crate::store::UsageCounters)>| rows.iter().map(|(_, c)| c.cost_nanos).sum::<u64>();
    let mut seed = SpendSeed {
        day_start: day,
        week_start: week,
        month_start: month,
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
    if caps.monthly_nanos.is_some() {
        seed.month = spent(
            store
                .usage_series(Dimension::Key, key_id, Granularity::Month, month, month + 1)
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

/// Start (Unix s) of the calendar month (UTC) containing `now_s`.
pub fn month_start(now_s: i64) -> i64 {
    Granularity::Month.bucket_start(now_s)
}

/// Start (Unix s) of the calendar month after the one containing `now_s`.
pub fn next_month_start(now_s: i64) -> i64 {
    Granularity::Month.next_bucket(month_start(now_s))
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
