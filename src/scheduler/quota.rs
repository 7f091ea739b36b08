//! Daily account quotas and the account-state gauges: every few seconds, each account with a
//! `daily_quota_usd` gets its spend since its last quota reset from the statistics in the store
//! (so all instances agree), and the metrics show which accounts are in the pool.
//!
//! Between two refreshes an instance also counts what it settles itself, so the overshoot past a
//! quota is bounded by the other instances' spend during one statistics flush interval.

use std::sync::Arc;
use std::time::Duration;

use super::Account;
use crate::metrics::Metrics;
use crate::store::{Dimension, Granularity, Store};

pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// The start (Unix seconds) of the quota day containing `now_s`, for a reset at `reset_minute`
/// minutes after midnight UTC.
pub fn quota_day_start(now_s: i64, reset_minute: u32) -> i64 {
    let midnight = now_s - now_s.rem_euclid(86_400);
    let reset = midnight + i64::from(reset_minute) * 60;
    if now_s >= reset { reset } else { reset - 86_400 }
}

/// Spend (nano-USD) of an account since `start`: whole hours from the hourly buckets, the partial
/// first hour from minute buckets.
pub async fn spend_since(store: &dyn Store, account_id: &str, start: i64, now_s: i64) -> Result<u64, String> {
    let first_full_hour = Granularity::Hour.bucket_start(start + 3_599);
    let mut total = 0u64;
    if first_full_hour > start {
        let minutes = store
            .usage_series(
                Dimension::Account,
                account_id,
                Granularity::Minute,
                start,
                first_full_hour.min(now_s + 1),
            )
            .await
            .map_err(|e| e.to_string())?;
        total += minutes.iter().map(|(_, c)| c.cost_nanos).sum::<u64>();
    }
    if first_full_hour <= now_s {
        let hours = store
            .usage_series(
                Dimension::Account,
                account_id,
                Granularity::Hour,
                first_full_hour,
                now_s + 1,
            )
            .await
            .map_err(|e| e.to_string())?;
        total += hours.iter().map(|(_, c)| c.cost_nanos).sum::<u64>();
    }
    Ok(total)
}

/// One refresh of the quota spend and state gauge of `accounts` (every account of the pool).
pub async fn refresh(store: &dyn Store, accounts: &[Arc<Account>], metrics: &Metrics) {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let now_s = now_ms / 1000;
    for a in accounts {
        if a.daily_quota_nanos.is_some() {
            let start = quota_day_start(now_s, a.quota_reset_minute);
            match spend_since(store, &a.id, start, now_s).await {
                Ok(n) => a.rt.set_store_spend(n),
                Err(e) => tracing::warn!(account = %a.name, error = %e, "reading quota spend failed"),
            }
        }
        let state = if !a.enabled {
            "disabled"
        } else if let Some(h) = a.rt.health(now_ms) {
            match h.state {
                crate::store::coord::HealthState::CoolingDown => "cooling_down",
                crate::store::coord::HealthState::RateLimited => "rate_limited",
                crate::store::coord::HealthState::OverQuota => "over_quota",
                crate::store::coord::HealthState::Unauthorized => "unauthorized",
                crate::store::coord::HealthState::Blocked => "blocked",
            }
        } else if a.daily_quota_nanos.is_some_and(|q| a.rt.spend() >= q) {
            "over_quota"
        } else {
            "active"
        };
        for (window, ratio) in utilization(a) {
            metrics
                .account_utilization
                .with_label_values(&[&a.name, window])
                .set(ratio);
        }
        for s in [
            "active",
            "disabled",
            "cooling_down",
            "rate_limited",
            "over_quota",
            "unauthorized",
            "blocked",
        ] {
            metrics
                .account_available
                .with_label_values(&[&a.name, s])
                .set(i64::from(s == state));
        }
    }
}

/// The 5-hour and 7-day utilization of an account (0 to 1): from the unified headers of its last
/// answer, else from the OAuth usage endpoint (which reports percents).
fn utilization(a: &Account) -> Vec<(&'static str, f64)> {
    let mut out = Vec::new();
    let headers = a.rt.unified();
    let endpoint = a.oauth().and_then(|c| c.usage());
    for (window, from_headers, key) in [
        (
            "5h",
            headers.as_ref().and_then(|u| u.five_hour_utilization),
            "five_hour",
        ),
        (
            "7d",
            headers.as_ref().and_then(|u| u.seven_day_utilization),
            "seven_day",
        ),
    ] {
        let from_endpoint = endpoint
            .as_ref()
            .and_then(|v| v[key]["utilization"].as_f64())
            .map(|p| p / 100.0);
        if let Some(r) = from_headers.or(from_endpoint) {
            out.push((window, r));
        }
    }
    out
}

/// Refreshes every [`REFRESH_EVERY`] until shutdown; `accounts` gives the current pool's
/// accounts (those of the latest snapshot).
pub async fn refresh_forever(store: Arc<dyn Store>, accounts: impl Fn() -> Vec<Arc<Account>>, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        refresh(&*store, &accounts(), &metrics).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_days_start_at_the_reset_time() {
        let day = 19_676 * 86_400; // a midnight (2023-11-14)
        assert_eq!(quota_day_start(day + 3_600, 0), day);
        assert_eq!(
            quota_day_start(day + 3_600, 120),
            day - 86_400 + 7_200,
            "before 02:00: yesterday's"
        );
        assert_eq!(quota_day_start(day + 7_200, 120), day + 7_200);
    }
}
