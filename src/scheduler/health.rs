//! Account health: the per-account runtime the hot path reads with plain atomic loads, how
//! upstream answers are classified into cooldowns.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use http::HeaderName;

use crate::store::coord::{AccountHealth, HealthState};
use crate::types::CooldownClass;

/// The model family a name belongs to, for limits the upstream scopes by family.
pub fn model_family(model: &str) -> Option<&str> {
    crate::providers::anthropic::claude_family(model)
}

/// Whether a limit scoped to `family` (`None`: the whole account) keeps `model` out.
pub fn family_covers(family: Option<&str>, model: &str) -> bool {
    family.is_none_or(|f| model_family(model).is_some_and(|m| m.eq_ignore_ascii_case(f)))
}

pub use crate::providers::anthropic::UnifiedLimits;

/// An account's runtime state. The hot path only does atomic loads here.
#[derive(Debug, Default)]
pub struct AccountRuntime {
    pub(super) last_used: AtomicU64,
    pub(super) picks: AtomicU64,
    /// Unix ms until which the account is out of the pool for every model (0: available;
    /// `i64::MAX`: until an admin action).
    blocked_until_ms: AtomicI64,
    /// Set when a family-scoped limit is in force (then `detail` names the family).
    family_limited: AtomicBool,
    /// Requests this instance has in flight on the account.
    pub in_flight: AtomicU64,
    /// Spend in the current quota day as last read from the store (nano-USD).
    pub spent_store_nanos: AtomicU64,
    /// Spend settled here since that read.
    pub spent_local_nanos: AtomicU64,
    detail: Mutex<Option<AccountHealth>>,
    unified: Mutex<Option<UnifiedLimits>>,
    /// Recent failures that could have been the request's own doing: (client key, Unix ms).
    strikes: Mutex<Vec<(std::sync::Arc<str>, i64)>>,
    /// The last [`HEALTH_EVENTS`] changes of the health entry this instance saw, oldest first.
    events: Mutex<std::collections::VecDeque<HealthEvent>>,
    /// Set when this instance raised `account_unhealthy` for the account; the next request it
    /// serves raises `account_recovered` and clears it (one relaxed load per served request).
    pub unhealthy_alerted: AtomicBool,
}

/// How many health changes an account's runtime remembers.
pub const HEALTH_EVENTS: usize = 50;

/// A change of an account's health entry, as this instance saw it: the new entry, or `None` when
/// the entry was cleared (expired entries are not reported when they lapse).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthEvent {
    /// Unix ms.
    pub at: i64,
    pub health: Option<AccountHealth>,
}

impl AccountRuntime {
    pub(super) fn starting_at(picks: u64) -> Self {
        let rt = AccountRuntime::default();
        rt.picks.store(picks, Ordering::Relaxed);
        rt
    }

    /// Whether the account may take a request for `model` now.
    #[inline]
    pub fn available(&self, model: &str, now_ms: i64, quota_nanos: Option<u64>) -> bool {
        if self.blocked_until_ms.load(Ordering::Relaxed) > now_ms {
            return false;
        }
        if let Some(q) = quota_nanos
            && self.spent_store_nanos.load(Ordering::Relaxed) + self.spent_local_nanos.load(Ordering::Relaxed) >= q
        {
            return false;
        }
        if self.family_limited.load(Ordering::Relaxed) {
            let detail = self.detail.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = detail.as_ref()
                && h.active_at(now_ms)
                && h.family.is_some()
                && family_covers(h.family.as_deref(), model)
            {
                return false;
            }
        }
        true
    }

    /// Sets (or clears) the health entry.
    pub fn set_health(&self, h: Option<AccountHealth>) {
        let (until, family) = match &h {
            Some(h) if h.family.is_some() => (0, true),
            Some(h) => (h.until.unwrap_or(i64::MAX), false),
            None => (0, false),
        };
        {
            let mut detail = self.detail.lock().unwrap_or_else(|p| p.into_inner());
            if *detail != h {
                let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
                if events.len() == HEALTH_EVENTS {
                    events.pop_front();
                }
                let at = h
                    .as_ref()
                    .map_or_else(|| chrono::Utc::now().timestamp_millis(), |h| h.since);
                events.push_back(HealthEvent { at, health: h.clone() });
            }
            *detail = h;
        }
        self.blocked_until_ms.store(until, Ordering::Relaxed);
        self.family_limited.store(family, Ordering::Relaxed);
    }

    pub fn health(&self, now_ms: i64) -> Option<AccountHealth> {
        self.detail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|h| h.active_at(now_ms))
    }

    /// The remembered health changes, newest first.
    pub fn events(&self) -> Vec<HealthEvent> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.iter().rev().cloned().collect()
    }

    pub fn set_unified(&self, u: UnifiedLimits) {
        *self.unified.lock().unwrap_or_else(|p| p.into_inner()) = Some(u);
    }

    pub fn unified(&self) -> Option<UnifiedLimits> {
        self.unified.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records that a request of `key` failed here in a way the request itself could have caused.
    /// True once requests of `need` different keys failed here within `window_ms`: then it is
    /// the account, and the strikes start over.
    pub fn corroborate(&self, key: &std::sync::Arc<str>, now_ms: i64, window_ms: i64, need: usize) -> bool {
        let mut strikes = self.strikes.lock().unwrap_or_else(|p| p.into_inner());
        strikes.retain(|(_, at)| now_ms - *at < window_ms);
        match strikes.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = now_ms,
            None => strikes.push((key.clone(), now_ms)),
        }
        if strikes.len() >= need {
            strikes.clear();
            return true;
        }
        // Bounded: only the most recent keys are remembered.
        if strikes.len() > 16 {
            strikes.remove(0);
        }
        false
    }

    /// Records spend settled on this instance (for the daily quota).
    pub fn add_spend(&self, nanos: u64) {
        self.spent_local_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Replaces the spend with what the store says for the current quota day.
    pub fn set_store_spend(&self, nanos: u64) {
        self.spent_store_nanos.store(nanos, Ordering::Relaxed);
        self.spent_local_nanos.store(0, Ordering::Relaxed);
    }

    pub fn spend(&self) -> u64 {
        self.spent_store_nanos.load(Ordering::Relaxed) + self.spent_local_nanos.load(Ordering::Relaxed)
    }
}

/// What an upstream failure means for the account that produced it.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The account is fine; the request itself was the problem (do not mark, do not fail over).
    RequestProblem,
    /// Try another account for this request, but leave this one in the pool: the answer says
    /// nothing that would justify parking it (a 429 that names no time to wait, or a failure of
    /// a call its client marked as background).
    PassOn,
    /// Put the account out of the pool with this health entry, then fail over.
    Mark(AccountHealth),
}

impl Verdict {
    /// The verdict for a request whose failures must never park an account (a background call):
    /// a mark becomes [`Verdict::PassOn`].
    pub fn without_mark(self) -> Verdict {
        match self {
            Verdict::Mark(_) => Verdict::PassOn,
            v => v,
        }
    }
}

/// Whether the request is one its client marks as background work (a title, a summary, a
/// classifier call of Claude Code: `x-claude-code-request-class: auxiliary`; or any call of a
/// Claude Code session running as a background job: `x-app: cli-bg`). Its failures never park an
/// account: a side call must not take the account away from the work it serves.
pub fn is_background(headers: &http::HeaderMap) -> bool {
    const REQUEST_CLASS: HeaderName = HeaderName::from_static("x-claude-code-request-class");
    const APP: HeaderName = HeaderName::from_static("x-app");
    let is = |name: HeaderName, value: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
    };
    is(REQUEST_CLASS, "auxiliary") || is(APP, "cli-bg")
}

/// Whether an error body says the client's own version is refused (Anthropic's
/// `claude_code_version_too_old`, or "version … or newer is required"): every account would
/// refuse it, and none is at fault.
fn client_version_refused(text: &str) -> bool {
    text.contains("version_too_old")
        || text.contains("version")
            && (text.contains("or newer is required")
                || text.contains("too old")
                || text.contains("no longer supported")
                || text.contains("please upgrade")
                || text.contains("please update"))
}

/// When an Anthropic organisation's monthly spend limit (`enforced_spend_limit_reached`, a 429
/// without `retry-after`) opens again: "You will regain access on 2026-09-01 at 00:00 UTC." as
/// Unix ms; `None` when the body names no such time.
fn spend_limit_reopens(text: &str) -> Option<i64> {
    let at = text.find("regain access on ")? + "regain access on ".len();
    let rest = text.get(at..)?;
    let date = rest.get(..10)?;
    let time = rest.get(10..)?.strip_prefix(" at ")?.get(..5)?;
    let t = chrono::NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%Y-%m-%d %H:%M").ok()?;
    Some(t.and_utc().timestamp_millis())
}

/// Classifies an upstream error answer (status, headers, body) for the account.
/// The `error.resets_in_seconds` of a Codex backend's 429.
fn resets_in_seconds(body: &[u8]) -> Option<u64> {
    memchr::memmem::find(body, b"resets_in_seconds")?;
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error").unwrap_or(&v);
    e.get("resets_in_seconds")
        .and_then(|n| n.as_f64())
        .map(|n| n.max(0.0).ceil() as u64)
}

/// The `retryDelay` of a Google error's `RetryInfo` detail (`"37s"`, `"0.5s"`), rounded up to
/// whole seconds; `None` without one.
fn google_retry_delay(body: &[u8]) -> Option<std::time::Duration> {
    memchr::memmem::find(body, b"retryDelay")?;
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    // A Code Assist or array-wrapped error: the first error object.
    let v = v.as_array().and_then(|a| a.first()).unwrap_or(&v);
    let details = v.get("error")?.get("details")?.as_array()?;
    let delay = details.iter().find_map(|d| d.get("retryDelay")?.as_str())?;
    let secs: f64 = delay.trim().strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| std::time::Duration::from_secs(secs.ceil().max(1.0) as u64))
}

/// OpenAI's `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens` (`1s`, `6m0s`, `250ms`):
/// the later of the two.
fn openai_reset(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .iter()
        .filter_map(|n| headers.get(*n)?.to_str().ok())
        .filter_map(parse_go_duration)
        .max()
}

/// A Go-style duration: `1h2m3.5s`, `250ms`.
fn parse_go_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let n: f64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            'h' => 3600.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0.001
            }
            'm' => 60.0,
            's' => 1.0,
            _ => return None,
        };
        total += n * unit;
        any = true;
    }
    if !num.is_empty() {
        return None;
    }
    (any && total.is_finite()).then(|| std::time::Duration::from_secs_f64(total))
}

pub fn classify(
    status: u16,
    headers: &http::HeaderMap,
    body: &[u8],
    cooldown: &dyn Fn(CooldownClass) -> std::time::Duration,
    now_ms: i64,
) -> Verdict {
    let text = String::from_utf8_lossy(&body[..body.len().min(16 * 1024)]).to_ascii_lowercase();
    let entry = |state, reason: String, dur: Option<std::time::Duration>, family: Option<String>| {
        Verdict::Mark(AccountHealth {
            family,
            ..AccountHealth::starting(state, reason, now_ms, dur)
        })
    };
    // The client's version is refused: its request's problem on every account.
    if status >= 400 && client_version_refused(&text) {
        return Verdict::RequestProblem;
    }
    match status {
        429 => {
            // Long-context requests need "extra usage" on the subscription: the request's
            // problem, another account would refuse it too unless it has it, and this one is fine.
            if text.contains("extra usage") || text.contains("long context") && text.contains("usage") {
                return Verdict::RequestProblem;
            }
            // OpenAI: the organisation is out of credit; only an admin brings it back (after
            // topping it up).
            if text.contains("insufficient_quota") {
                return entry(
                    HealthState::OverQuota,
                    "upstream 429 insufficient_quota: the account is out of credit".into(),
                    None,
                    None,
                );
            }
            let now_s = now_ms / 1000;
            // ChatGPT's Codex backend: a usage window is spent and says when it reopens.
            if let Some(secs) = resets_in_seconds(body)
                && secs > 0
            {
                return entry(
                    HealthState::RateLimited,
                    "usage limit reached".into(),
                    Some(std::time::Duration::from_secs(secs)),
                    None,
                );
            }
            // Google: `RESOURCE_EXHAUSTED` with a `RetryInfo` says how long the quota stays shut.
            if let Some(d) = google_retry_delay(body) {
                return entry(
                    HealthState::RateLimited,
                    format!("RESOURCE_EXHAUSTED: retry in {}s", d.as_secs()),
                    Some(d),
                    None,
                );
            }
            let unified = UnifiedLimits::from_headers(headers, now_s)
                .or_else(|| crate::providers::openai::codex_limits(headers, now_s));
            if let Some(u) = &unified
                && let Some(reset) = u.exhausted_until(now_s)
            {
                let until_ms = reset.saturating_mul(1000);
                let d = std::time::Duration::from_millis((until_ms - now_ms).max(0) as u64);
                let claim = u.representative_claim.clone().unwrap_or_else(|| "unified".into());
                return entry(
                    HealthState::RateLimited,
                    format!("window {claim} exhausted"),
                    Some(d),
                    u.family(),
                );
            }
            // Anthropic: the organisation's monthly spend limit is reached; the body says when
            // access returns (no `retry-after`), and nothing before that helps.
            if text.contains("enforced_spend_limit_reached") {
                let until = spend_limit_reopens(&text).filter(|&t| t > now_ms);
                return entry(
                    HealthState::OverQuota,
                    "upstream 429: the organisation's spend limit is reached".into(),
                    until.map(|t| std::time::Duration::from_millis((t - now_ms) as u64)),
                    None,
                );
            }
            let retry_after = headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(std::time::Duration::from_secs);
            // A 429 that names no time to wait is a throttle of this moment, not a reason to
            // take the account away from everyone: this request tries another account (unless
            // the operator set a `429` cooldown for such answers).
            let d = retry_after
                .or_else(|| openai_reset(headers))
                .unwrap_or_else(|| cooldown(CooldownClass::RateLimited));
            if d.is_zero() {
                return Verdict::PassOn;
            }
            let cap = cooldown(CooldownClass::RateLimitedMax);
            entry(HealthState::CoolingDown, "upstream 429".into(), Some(d.min(cap)), None)
        }
        401 => entry(
            HealthState::Unauthorized,
            "upstream 401".into(),
            Some(cooldown(CooldownClass::Unauthorized)),
            None,
        ),
        403 => {
            if text.contains("organization") && (text.contains("disabled") || text.contains("suspended")) {
                entry(HealthState::Blocked, "organization disabled".into(), None, None)
            } else {
                entry(
                    HealthState::CoolingDown,
                    "upstream 403".into(),
                    Some(cooldown(CooldownClass::Forbidden)),
                    None,
                )
            }
        }
        529 => entry(
            HealthState::CoolingDown,
            "upstream 529".into(),
            Some(cooldown(CooldownClass::Overloaded)),
            None,
        ),
        503 => entry(
            HealthState::CoolingDown,
            "upstream 503".into(),
            Some(cooldown(CooldownClass::Unavailable)),
            None,
        ),
        s if s >= 500 => entry(
            HealthState::CoolingDown,
            format!("upstream {s}"),
            Some(cooldown(CooldownClass::ServerError)),
            None,
        ),
        s => entry(
            HealthState::CoolingDown,
            format!("upstream {s}"),
            Some(cooldown(CooldownClass::ServerError)),
            None,
        ),
    }
}

/// Whether the failure behind `mark` (answered with `status`) could be the request's own doing —
/// a 403 for a model or beta the organization lacks, a 5xx or 529 a malformed request provokes —
/// so that one client's request alone must not take the account out of the pool for everyone.
/// Rate limits (429), refused credentials (401) and a disabled organization are about the
/// account whatever the request.
pub fn request_dependent(status: u16, mark: &AccountHealth) -> bool {
    mark.state == HealthState::CoolingDown && (status == 403 || status >= 500)
}

/// The reason recorded for connection failures.
pub const CONNECT_FAILED: &str = "connect failed";

/// The entry for a connection failure.
pub fn connect_failure(cooldown: std::time::Duration, now_ms: i64) -> AccountHealth {
    AccountHealth::starting(HealthState::CoolingDown, CONNECT_FAILED, now_ms, Some(cooldown))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cd(c: CooldownClass) -> Duration {
        c.default_duration()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn classifies_by_status() {
        let now = 1_000_000;
        let Verdict::Mark(h) = classify(529, &headers(&[]), b"", &cd, now) else {
            panic!()
        };
        assert_eq!((h.state, h.until), (HealthState::CoolingDown, Some(now + 600_000)));
        let Verdict::Mark(h) = classify(503, &headers(&[]), b"", &cd, now) else {
            panic!()
        };
        assert_eq!(h.until, Some(now + 60_000));
        let Verdict::Mark(h) = classify(500, &headers(&[]), b"", &cd, now) else {
            panic!()
        };
        assert_eq!(h.until, Some(now + 300_000));
        let Verdict::Mark(h) = classify(401, &headers(&[]), b"", &cd, now) else {
            panic!()
        };
        assert_eq!((h.state, h.until), (HealthState::Unauthorized, Some(now + 1_800_000)));
        let body = br#"{"error":{"message":"This organization has been disabled."}}"#;
        let Verdict::Mark(h) = classify(403, &headers(&[]), body, &cd, now) else {
            panic!()
        };
        assert_eq!((h.state, h.until), (HealthState::Blocked, None));
    }

    #[test]
    fn rate_limits_respect_retry_after_caps_and_unified_resets() {
        let now = 1_700_000_000_000;
        let Verdict::Mark(h) = classify(429, &headers(&[("retry-after", "7")]), b"", &cd, now) else {
            panic!()
        };
        assert_eq!(h.until, Some(now + 7_000));
        let Verdict::Mark(h) = classify(429, &headers(&[("retry-after", "99999")]), b"", &cd, now) else {
            panic!()
        };
        assert_eq!(h.until, Some(now + 1_800_000), "capped by 429_max");
        let reset = now / 1000 + 3 * 3600;
        let r = reset.to_string();
        let h429 = headers(&[
            ("anthropic-ratelimit-unified-status", "rejected"),
            ("anthropic-ratelimit-unified-reset", &r),
            ("anthropic-ratelimit-unified-representative-claim", "seven_day_opus"),
        ]);
        let Verdict::Mark(h) = classify(429, &h429, b"", &cd, now) else {
            panic!()
        };
        assert_eq!(
            (h.state, h.until, h.family.as_deref()),
            (HealthState::RateLimited, Some(reset * 1000), Some("opus"))
        );
        // A 429 without a future reset is a short throttle: the request moves on, the account
        // stays in the pool.
        let allowed = headers(&[
            ("anthropic-ratelimit-unified-status", "allowed"),
            ("anthropic-ratelimit-unified-reset", &r),
        ]);
        assert_eq!(classify(429, &allowed, b"", &cd, now), Verdict::PassOn);
        assert_eq!(classify(429, &headers(&[]), b"", &cd, now), Verdict::PassOn);
        let body =
            br#"{"error":{"type":"rate_limit_error","message":"Extra usage is required for long context requests."}}"#;
        assert_eq!(classify(429, &headers(&[]), body, &cd, now), Verdict::RequestProblem);
    }

    #[test]
    fn refusals_of_the_clients_version_or_of_background_calls_never_park() {
        let now = 1_700_000_000_000;
        let too_old = br#"{"type":"error","error":{"type":"invalid_request_error","message":"Claude Code 2.1.224 does not support this model; version 2.1.251 or newer is required. Run 'claude update', or update the Claude desktop app, then try again.","details":{"error_code":"claude_code_version_too_old"}},"request_id":"req_1"}"#;
        for status in [400, 403, 429] {
            assert_eq!(
                classify(status, &headers(&[]), too_old, &cd, now),
                Verdict::RequestProblem
            );
        }
        let Verdict::Mark(_) = classify(403, &headers(&[]), br#"{"error":{"message":"forbidden"}}"#, &cd, now) else {
            panic!()
        };
        assert_eq!(
            classify(429, &headers(&[("retry-after", "9")]), b"", &cd, now).without_mark(),
            Verdict::PassOn
        );
        assert_eq!(Verdict::RequestProblem.without_mark(), Verdict::RequestProblem);
        assert!(is_background(&headers(&[("x-claude-code-request-class", "auxiliary")])));
        assert!(is_background(&headers(&[("x-app", "cli-bg")])));
        assert!(!is_background(&headers(&[
            ("x-app", "cli"),
            ("x-claude-code-request-class", "main")
        ])));
    }

    #[test]
    fn a_spent_organisation_limit_parks_until_the_day_it_reopens() {
        let now = chrono::NaiveDate::from_ymd_opt(2026, 8, 20)
            .unwrap()
            .and_hms_opt(12, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis();
        let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"You have reached your API usage limits: the organization's monthly spend limit. You will regain access on 2026-09-01 at 00:00 UTC.","details":{"error_code":"enforced_spend_limit_reached"}}}"#;
        let Verdict::Mark(h) = classify(429, &headers(&[]), body, &cd, now) else {
            panic!()
        };
        let reopens = chrono::NaiveDate::from_ymd_opt(2026, 9, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis();
        assert_eq!((h.state, h.until), (HealthState::OverQuota, Some(reopens)));
        let undated = br#"{"error":{"type":"rate_limit_error","message":"limits","details":{"error_code":"enforced_spend_limit_reached"}}}"#;
        let Verdict::Mark(h) = classify(429, &headers(&[]), undated, &cd, now) else {
            panic!()
        };
        assert_eq!((h.state, h.until), (HealthState::OverQuota, None));
    }

    #[test]
    fn request_dependent_failures_need_more_than_one_key() {
        let now = 1_000_000;
        let Verdict::Mark(h) = classify(529, &headers(&[]), b"", &cd, now) else {
            panic!()
        };
        assert!(request_dependent(529, &h));
        let Verdict::Mark(h) = classify(429, &headers(&[("retry-after", "5")]), b"", &cd, now) else {
            panic!()
        };
        assert!(!request_dependent(429, &h));
        let Verdict::Mark(h) = classify(401, &headers(&[]), b"", &cd, now) else {
            panic!()
        };
        assert!(!request_dependent(401, &h));

        let rt = AccountRuntime::default();
        let (a, b): (std::sync::Arc<str>, std::sync::Arc<str>) = ("key-a".into(), "key-b".into());
        assert!(!rt.corroborate(&a, now, 60_000, 2));
        assert!(
            !rt.corroborate(&a, now + 1, 60_000, 2),
            "the same key again is no new evidence"
        );
        assert!(rt.corroborate(&b, now + 2, 60_000, 2));
        assert!(
            !rt.corroborate(&a, now + 3, 60_000, 2),
            "strikes start over after a mark"
        );
        assert!(!rt.corroborate(&b, now + 70_000, 60_000, 2), "old strikes expire");
        assert!(rt.corroborate(&a, now + 1, 60_000, 1));
    }

    #[test]
    fn family_limits_only_block_their_family() {
        let rt = AccountRuntime::default();
        let now = 10_000;
        rt.set_health(Some(AccountHealth {
            state: HealthState::RateLimited,
            reason: "x".into(),
            since: now,
            until: Some(now + 1000),
            family: Some("opus".into()),
        }));
        assert!(!rt.available("claude-opus-4-1", now, None));
        assert!(rt.available("claude-sonnet-4-5", now, None));
        assert!(rt.available("claude-opus-4-1", now + 2000, None));
        rt.set_health(Some(AccountHealth {
            family: None,
            ..rt.health(now).unwrap()
        }));
        assert!(!rt.available("claude-sonnet-4-5", now, None));
        rt.set_health(None);
        assert!(rt.available("claude-sonnet-4-5", now, None));
        rt.add_spend(5);
        assert!(!rt.available("m", now, Some(5)));
        rt.set_store_spend(1);
        assert!(rt.available("m", now, Some(5)));
    }
}

#[cfg(test)]
mod openai_tests {
    use super::*;

    #[test]
    fn reads_openai_reset_durations() {
        assert_eq!(parse_go_duration("6m0s"), Some(std::time::Duration::from_secs(360)));
        assert_eq!(parse_go_duration("250ms"), Some(std::time::Duration::from_millis(250)));
        assert_eq!(parse_go_duration("1h2m3s"), Some(std::time::Duration::from_secs(3723)));
        assert_eq!(parse_go_duration("x"), None);
        assert_eq!(parse_go_duration("5"), None);
        assert_eq!(
            resets_in_seconds(br#"{"error":{"type":"usage_limit_reached","resets_in_seconds":1800}}"#),
            Some(1800)
        );
    }

    #[test]
    fn google_retry_info_parks_the_account_that_long() {
        let body = br#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure"},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37.2s"}]}}"#;
        assert_eq!(google_retry_delay(body), Some(std::time::Duration::from_secs(38)));
        let cooldown = |_| std::time::Duration::from_secs(5);
        let Verdict::Mark(h) = classify(429, &http::HeaderMap::new(), body, &cooldown, 1_000) else {
            panic!("marked")
        };
        assert_eq!(h.state, HealthState::RateLimited);
        assert_eq!(h.until, Some(1_000 + 38_000));
        assert_eq!(
            google_retry_delay(br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED"}}"#),
            None
        );
    }
}

#[cfg(test)]
#[path = "health_props.rs"]
mod props;
