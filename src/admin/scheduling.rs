//! The scheduling side of accounts and keys in the admin API: key bindings, checked as strictly
//! as `relay.yaml` checks them, and the live view of an account's health as this instance's
//! scheduler sees it. (An account's own scheduling settings are checked with the rest of its
//! settings, by `accounts::AccountSettings::validate`.)

use serde::Serialize;

use super::AdminState;
use super::routes::{ApiError, bad_request};
use crate::accounts::AccountSettings;
use crate::accounts::values::check_label;
use crate::scheduler::health::UnifiedLimits;
use crate::scheduler::quota::quota_day_start;
use crate::store::coord::HealthState;

/// A name-like text (bound account or group): trimmed, checked by [`check_label`]. `field` names
/// the field in the error.
fn valid_label(field: &str, s: &str) -> Result<String, ApiError> {
    let s = s.trim();
    check_label(s).map_err(|r| bad_request(format!("`{field}` {r}")))?;
    Ok(s.to_string())
}

/// A key binding: an account name or `group:<name>`. The account or group need not exist yet
/// (it may be created later), as in `relay.yaml`.
pub fn valid_bind(bind: &str) -> Result<String, ApiError> {
    let bind = bind.trim();
    match bind.strip_prefix("group:") {
        Some(g) => {
            if g.trim().is_empty() {
                return Err(bad_request("`bind`: the group name after `group:` must not be empty"));
            }
            Ok(format!("group:{}", valid_label("bind", g)?))
        }
        None => valid_label("bind", bind),
    }
}

/// An account's live state on this instance: `health`, `ratelimit`, `in_flight` and
/// `spend_today_usd` in its view.
#[derive(Debug, Serialize)]
pub struct LiveView {
    pub health: HealthView,
    /// The last unified rate-limit headers this instance saw; `null` before any.
    pub ratelimit: Option<UnifiedLimits>,
    pub in_flight: u64,
    /// Spend in the current quota day; `null` without a daily quota.
    pub spend_today_usd: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct HealthView {
    pub state: &'static str,
    pub reason: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub family: Option<String>,
}

pub(super) fn state_name(s: HealthState) -> &'static str {
    match s {
        HealthState::CoolingDown => "cooling_down",
        HealthState::RateLimited => "rate_limited",
        HealthState::OverQuota => "over_quota",
        HealthState::Unauthorized => "unauthorized",
        HealthState::Blocked => "blocked",
    }
}

/// The live state of account `id`, from the scheduler's runtime of the account on this instance
/// (which mirrors the shared health entries).
///
/// The state is, in this order: `disabled`, the health entry in force (cooling down, rate
/// limited, ...), `over_quota` when today's spend reached the daily quota, else `active`.
pub fn live_view(state: &AdminState, id: &str, s: &AccountSettings) -> LiveView {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let rt = state.reloader.scheduler.runtime(id);
    let quota_nanos = s.daily_quota_usd.map(|q| (q * 1e9).round().max(0.0) as u64);
    let spend_nanos = rt.as_ref().map_or(0, |rt| rt.spend());
    let entry = rt.as_ref().and_then(|rt| rt.health(now_ms));
    let health = |state: &'static str| HealthView {
        state,
        reason: None,
        since: None,
        until: None,
        family: None,
    };
    let health = if !s.enabled {
        health("disabled")
    } else if let Some(h) = entry {
        HealthView {
            state: state_name(h.state),
            reason: Some(h.reason),
            since: Some(h.since),
            until: h.until,
            family: h.family,
        }
    } else if quota_nanos.is_some_and(|q| spend_nanos >= q) {
        let next_reset_s = quota_day_start(now_ms / 1000, s.quota_reset_minute()) + 86_400;
        HealthView {
            reason: Some("daily quota reached".to_string()),
            until: Some(next_reset_s.saturating_mul(1000)),
            ..health("over_quota")
        }
    } else {
        health("active")
    };
    LiveView {
        health,
        ratelimit: rt.as_ref().and_then(|rt| rt.unified()),
        in_flight: rt
            .as_ref()
            .map_or(0, |rt| rt.in_flight.load(std::sync::atomic::Ordering::Relaxed)),
        spend_today_usd: quota_nanos.map(|_| spend_nanos as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::values::MAX_NAME_CHARS;

    #[test]
    fn bindings_are_checked_and_normalised() {
        assert_eq!(valid_bind(" main ").unwrap(), "main");
        assert_eq!(valid_bind("group: team ").unwrap(), "group:team");
        assert!(valid_bind("").is_err());
        assert!(valid_bind("   ").is_err());
        assert!(valid_bind("group:").is_err());
        assert!(valid_bind("group:  ").is_err());
        assert!(valid_bind("a\nb").is_err());
        assert!(valid_bind(&"x".repeat(MAX_NAME_CHARS + 1)).is_err());
    }
}
