//! The scheduling side of accounts and keys in the admin API: the fields that steer account
//! selection (group, outbound proxy, concurrency cap, daily quota, weight, cooldown overrides, key
//! bindings), checked as strictly as `relay.yaml` checks them, and the live view of an account's
//! health as this instance's scheduler sees it.
//!
//! A proxy URL may carry credentials: it is sealed before it reaches the store, and answers show
//! only its masked form (`socks5://***@host:1080`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AdminState;
use super::routes::{ApiError, MAX_NAME_CHARS, bad_request};
use crate::config::Dur;
use crate::proxy::outbound::OutboundProxy;
use crate::scheduler::quota::quota_day_start;
use crate::scheduler::{CooldownClass, parse_hhmm};
use crate::secrets::Sealed;
use crate::store::coord::HealthState;

/// A cooldown as written in a request: `"10m"`, `"90s"`, or a bare number of seconds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum DurationInput {
    Seconds(u64),
    Text(String),
}

/// Longest cooldown override accepted, so that no value overflows a duration (`relay.yaml` has
/// no smaller limit of its own, and a day count in the trillions is no cooldown anyone means).
const MAX_COOLDOWN: Duration = Duration::from_secs(10 * 365 * 86_400);

/// A name-like text (group, bound account): trimmed, 1 to [`MAX_NAME_CHARS`] characters, no
/// control characters. `field` names the field in the error.
fn valid_label(field: &str, s: &str) -> Result<String, ApiError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(bad_request(format!("`{field}` must not be empty")));
    }
    if s.chars().count() > MAX_NAME_CHARS {
        return Err(bad_request(format!(
            "`{field}` must be at most {MAX_NAME_CHARS} characters"
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(bad_request(format!("`{field}` must not contain control characters")));
    }
    Ok(s.to_string())
}

pub fn valid_group(group: &str) -> Result<String, ApiError> {
    valid_label("group", group)
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

/// Checks a proxy URL; returns it trimmed (what gets sealed) and parsed.
pub fn valid_proxy(url: &str) -> Result<(String, OutboundProxy), ApiError> {
    // The message never echoes the URL: it may hold credentials.
    let parsed = OutboundProxy::parse(url).map_err(|r| bad_request(format!("`proxy`: {r}")))?;
    Ok((url.trim().to_string(), parsed))
}

pub fn valid_max_concurrency(n: u32) -> Result<u32, ApiError> {
    if n == 0 {
        return Err(bad_request(
            "`max_concurrency` must be at least 1 (leave it out, or null, for no cap)",
        ));
    }
    Ok(n)
}

pub fn valid_daily_quota(usd: f64) -> Result<f64, ApiError> {
    if !(usd.is_finite() && usd > 0.0) {
        return Err(bad_request("`daily_quota_usd` must be a positive number of USD"));
    }
    Ok(usd)
}

/// `HH:MM` UTC, returned in its canonical two-digit form.
pub fn valid_quota_reset(s: &str) -> Result<String, ApiError> {
    let m = parse_hhmm(s).map_err(|e| bad_request(format!("`quota_reset`: {e}")))?;
    Ok(format!("{:02}:{:02}", m / 60, m % 60))
}

pub fn valid_weight(w: u32) -> Result<u32, ApiError> {
    if w == 0 {
        return Err(bad_request("`weight` must be at least 1"));
    }
    Ok(w)
}

/// Cooldown overrides: keys are error classes as in `scheduler.cooldowns`, values durations.
/// Returns them as the store keeps them (class → duration text).
pub fn valid_cooldowns(map: BTreeMap<String, DurationInput>) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let class = CooldownClass::parse_key(k.trim()).map_err(|e| bad_request(format!("`cooldowns.{k}`: {e}")))?;
        let text = match v {
            DurationInput::Seconds(n) => n.to_string(),
            DurationInput::Text(t) => t.trim().to_string(),
        };
        check_duration(&text).map_err(|e| bad_request(format!("`cooldowns.{k}`: {e}")))?;
        out.insert(class.key().to_string(), text);
    }
    Ok(out)
}

/// [`Dur::parse`], refusing first what it cannot represent (it would panic on it).
fn check_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    if let Ok(n) = text[..split].parse::<f64>()
        && n > MAX_COOLDOWN.as_secs_f64()
    {
        return Err(format!(
            "`{text}` is longer than {} days",
            MAX_COOLDOWN.as_secs() / 86_400
        ));
    }
    let d = Dur::parse(text)?.0;
    if d > MAX_COOLDOWN {
        return Err(format!(
            "`{text}` is longer than {} days",
            MAX_COOLDOWN.as_secs() / 86_400
        ));
    }
    Ok(d)
}

/// A duration in the shortest exact form `Dur::parse` reads back (`10m`, `90s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match s {
        0 => "0s".to_string(),
        s if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        s if s.is_multiple_of(3_600) => format!("{}h", s / 3_600),
        s if s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The masked form of a stored (sealed) proxy URL, or why it cannot be shown.
pub fn masked_stored_proxy(state: &AdminState, sealed: &Sealed) -> Result<String, String> {
    let url = state
        .secrets
        .open(sealed)
        .map_err(|e| format!("stored proxy cannot be opened: {e}"))?;
    OutboundProxy::parse(&url)
        .map(|p| p.to_string())
        .map_err(|_| "stored proxy is not a usable proxy URL".to_string())
}

/// The masked form of a configured proxy URL.
pub fn masked_config_proxy(url: &str) -> Option<String> {
    OutboundProxy::parse(url).ok().map(|p| p.to_string())
}

/// What an account's live view needs from its definition.
pub struct LiveInputs<'a> {
    pub id: &'a str,
    pub enabled: bool,
    pub daily_quota_usd: Option<f64>,
    pub quota_reset: Option<&'a str>,
}

fn state_name(s: HealthState) -> &'static str {
    match s {
        HealthState::CoolingDown => "cooling_down",
        HealthState::RateLimited => "rate_limited",
        HealthState::OverQuota => "over_quota",
        HealthState::Unauthorized => "unauthorized",
        HealthState::Blocked => "blocked",
    }
}

/// Adds `health`, `ratelimit`, `in_flight` and `spend_today_usd` to an account's view, from the
/// scheduler's runtime of the account on this instance (which mirrors the shared health entries).
///
/// The state is, in this order: `disabled`, the health entry in force (cooling down, rate
/// limited, ...), `over_quota` when today's spend reached the daily quota, else `active`.
pub fn add_live_view(state: &AdminState, input: &LiveInputs<'_>, view: &mut Value) {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let rt = state.reloader.scheduler.runtime(input.id);
    let quota_nanos = input.daily_quota_usd.map(|q| (q * 1e9).round().max(0.0) as u64);
    let spend_nanos = rt.as_ref().map_or(0, |rt| rt.spend());
    let entry = rt.as_ref().and_then(|rt| rt.health(now_ms));
    let health = if !input.enabled {
        health_json("disabled", None, None, None, None)
    } else if let Some(h) = entry {
        health_json(state_name(h.state), Some(h.reason), Some(h.since), h.until, h.family)
    } else if quota_nanos.is_some_and(|q| spend_nanos >= q) {
        let reset_minute = input.quota_reset.and_then(|r| parse_hhmm(r).ok()).unwrap_or(0);
        let next_reset_s = quota_day_start(now_ms / 1000, reset_minute) + 86_400;
        health_json(
            "over_quota",
            Some("daily quota reached".to_string()),
            None,
            Some(next_reset_s.saturating_mul(1000)),
            None,
        )
    } else {
        health_json("active", None, None, None, None)
    };
    let Some(obj) = view.as_object_mut() else { return };
    obj.insert("health".into(), health);
    obj.insert(
        "ratelimit".into(),
        rt.as_ref()
            .and_then(|rt| rt.unified())
            .and_then(|u| serde_json::to_value(u).ok())
            .unwrap_or(Value::Null),
    );
    obj.insert(
        "in_flight".into(),
        json!(
            rt.as_ref()
                .map_or(0, |rt| rt.in_flight.load(std::sync::atomic::Ordering::Relaxed))
        ),
    );
    obj.insert(
        "spend_today_usd".into(),
        match quota_nanos {
            Some(_) => json!(spend_nanos as f64 / 1e9),
            None => Value::Null,
        },
    );
}

fn health_json(
    state: &str,
    reason: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
    family: Option<String>,
) -> Value {
    let mut m = Map::new();
    m.insert("state".into(), json!(state));
    m.insert("reason".into(), json!(reason));
    m.insert("since".into(), json!(since));
    m.insert("until".into(), json!(until));
    m.insert("family".into(), json!(family));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn scheduling_fields_mirror_the_config_rules() {
        assert!(valid_group(" ").is_err());
        assert_eq!(valid_group(" g ").unwrap(), "g");
        assert!(valid_max_concurrency(0).is_err());
        assert_eq!(valid_max_concurrency(3).unwrap(), 3);
        assert!(valid_daily_quota(0.0).is_err());
        assert!(valid_daily_quota(-1.0).is_err());
        assert!(valid_daily_quota(f64::INFINITY).is_err());
        assert!(valid_daily_quota(0.5).is_ok());
        assert_eq!(valid_quota_reset("7:5").unwrap(), "07:05");
        assert!(valid_quota_reset("24:00").is_err());
        assert!(valid_quota_reset("noon").is_err());
        assert!(valid_weight(0).is_err());
        assert!(valid_weight(1).is_ok());
    }

    #[test]
    fn proxies_are_parsed_and_errors_do_not_echo_credentials() {
        let (url, p) = valid_proxy(" socks5://u:secretpw@127.0.0.1:1080 ").unwrap();
        assert_eq!(url, "socks5://u:secretpw@127.0.0.1:1080");
        assert_eq!(p.to_string(), "socks5://***@127.0.0.1:1080");
        let e = valid_proxy("ftp://u:secretpw@h:1").unwrap_err();
        assert!(!e.2.contains("secretpw"), "{}", e.2);
        assert!(valid_proxy("socks5://h").is_err(), "no port");
        assert!(valid_proxy("not a url").is_err());
    }

    #[test]
    fn cooldowns_are_checked() {
        let m = |k: &str, v: DurationInput| [(k.to_string(), v)].into_iter().collect::<BTreeMap<_, _>>();
        let ok = valid_cooldowns(m("529", DurationInput::Text(" 10m ".into()))).unwrap();
        assert_eq!(ok["529"], "10m");
        assert_eq!(
            valid_cooldowns(m("connect", DurationInput::Seconds(30))).unwrap()["connect"],
            "30"
        );
        assert!(valid_cooldowns(m("999", DurationInput::Text("1m".into()))).is_err());
        assert!(valid_cooldowns(m("529", DurationInput::Text("soon".into()))).is_err());
        assert!(valid_cooldowns(m("529", DurationInput::Text("10y".into()))).is_err());
        assert!(valid_cooldowns(m("529", DurationInput::Text("99999999999999999999999d".into()))).is_err());
        assert!(valid_cooldowns(m("529", DurationInput::Seconds(u64::MAX))).is_err());
        assert!(valid_cooldowns(m("529", DurationInput::Text("3651d".into()))).is_err());
    }

    #[test]
    fn durations_format_back_to_what_they_parse_from() {
        for s in ["10m", "90s", "250ms", "2h", "1d", "0s", "61s"] {
            let d = Dur::parse(s).unwrap().0;
            assert_eq!(format_duration(d), s);
        }
    }
}
