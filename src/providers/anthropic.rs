//! The Anthropic Messages wire, shared by every account kind that speaks it (Console, OAuth,
//! CCR): the request as the client sent it, on the account's base URL, with the account's
//! credential; and the `anthropic-ratelimit-unified-*` headers of its answers.

use http::HeaderName;
use serde::Serialize;

use super::{Call, Operation, PrepareError, Prepared, ResponseKind, Target, request};

/// The Anthropic API: the default base URL of Claude accounts.
pub const DEFAULT_API_BASE: &str = "https://api.anthropic.com";
/// The `anthropic-version` sent for a client that named none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

impl Operation {
    /// The Anthropic API path of the operation.
    pub fn anthropic_path(self) -> Option<&'static str> {
        match self {
            Operation::Messages => Some("/v1/messages"),
            Operation::CountTokens => Some("/v1/messages/count_tokens"),
            _ => None,
        }
    }
}

/// The request for an Anthropic-compatible upstream: the client's path under the account's base
/// URL, its query and headers (cleaned), the account's credential header.
/// A client of another dialect (its request converted) sent no `anthropic-version`: the one the
/// Messages API is documented with is added.
pub fn prepare(call: &Call<'_>, target: &Target<'_>) -> Result<Prepared, PrepareError> {
    let Some(path) = call.op.anthropic_path() else {
        return Err(PrepareError::Request(
            "this account serves Anthropic Messages requests only".into(),
        ));
    };
    let path = target.base.path_and_query(path, call.query);
    let auth = match (target.live, target.credential) {
        (Some(live), _) => Some((http::header::AUTHORIZATION, live.clone())),
        (None, super::Credential::Header(name, value)) => Some((name.clone(), value.clone())),
        (None, _) => {
            return Err(PrepareError::Account(
                "the account has no credential for the Anthropic API".into(),
            ));
        }
    };
    let mut head = request::upstream_request(
        call.client,
        &path,
        &target.base.host_header,
        auth.as_ref(),
        call.body.len(),
    )?;
    default_version(&mut head)?;
    Ok(Prepared {
        head,
        body: call.body.clone(),
        response: ResponseKind::Anthropic,
        wire_model: None,
    })
}

/// Adds [`ANTHROPIC_VERSION`] to an upstream request whose client named no `anthropic-version`.
pub(super) fn default_version(head: &mut pingora::http::RequestHeader) -> pingora::Result<()> {
    // Looked up on every request: the name is parsed once.
    const VERSION: HeaderName = HeaderName::from_static("anthropic-version");
    if !head.headers.contains_key(VERSION) {
        head.insert_header("anthropic-version", ANTHROPIC_VERSION)?;
    }
    Ok(())
}

/// The latest `anthropic-ratelimit-unified-*` headers an account's upstream sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UnifiedLimits {
    /// `allowed`, `allowed_warning`, `rejected`, … (opaque).
    pub status: Option<String>,
    /// Unix seconds.
    pub reset: Option<i64>,
    pub representative_claim: Option<String>,
    pub five_hour_utilization: Option<f64>,
    pub five_hour_reset: Option<i64>,
    pub seven_day_utilization: Option<f64>,
    pub seven_day_reset: Option<i64>,
    /// Unix seconds when these were seen.
    pub seen_at: i64,
}

impl UnifiedLimits {
    /// Reads the unified headers; `None` when the answer carries none.
    pub fn from_headers(h: &http::HeaderMap, now_s: i64) -> Option<UnifiedLimits> {
        // Every answer is read for them: the names are parsed once, and an answer without the
        // headers the result depends on is left at once.
        const STATUS: HeaderName = HeaderName::from_static("anthropic-ratelimit-unified-status");
        const RESET: HeaderName = HeaderName::from_static("anthropic-ratelimit-unified-reset");
        const CLAIM: HeaderName = HeaderName::from_static("anthropic-ratelimit-unified-representative-claim");
        const FIVE_HOUR: HeaderName = HeaderName::from_static("anthropic-ratelimit-unified-5h-utilization");
        const FIVE_HOUR_RESET: HeaderName = HeaderName::from_static("anthropic-ratelimit-unified-5h-reset");
        const SEVEN_DAY: HeaderName = HeaderName::from_static("anthropic-ratelimit-unified-7d-utilization");
        const SEVEN_DAY_RESET: HeaderName = HeaderName::from_static("anthropic-ratelimit-unified-7d-reset");
        if !(h.contains_key(STATUS) || h.contains_key(RESET) || h.contains_key(FIVE_HOUR)) {
            return None;
        }
        let get = |n: HeaderName| h.get(n).and_then(|v| v.to_str().ok()).map(|s| s.trim().to_string());
        let num = |n: HeaderName| get(n).and_then(|v| v.parse::<f64>().ok());
        let int = |n: HeaderName| get(n).and_then(|v| v.parse::<f64>().ok()).map(|v| v as i64);
        let u = UnifiedLimits {
            status: get(STATUS),
            reset: int(RESET),
            representative_claim: get(CLAIM),
            five_hour_utilization: num(FIVE_HOUR),
            five_hour_reset: int(FIVE_HOUR_RESET),
            seven_day_utilization: num(SEVEN_DAY),
            seven_day_reset: int(SEVEN_DAY_RESET),
            seen_at: now_s,
        };
        let any = u.status.is_some() || u.reset.is_some() || u.five_hour_utilization.is_some();
        any.then_some(u)
    }

    /// The window is exhausted and the upstream announced when it reopens (Unix seconds).
    pub fn exhausted_until(&self, now_s: i64) -> Option<i64> {
        if self.status.as_deref() != Some("rejected") {
            return None;
        }
        self.reset.filter(|r| *r > now_s)
    }

    /// The model family the binding window covers, when it is family-scoped: the claim names a
    /// window, then a family (`seven_day_opus`, `seven_day_sonnet`, and any family Anthropic adds
    /// later, by the same rule). A claim with no family (`five_hour`, `seven_day`) or whose tail is
    /// no single name (`seven_day_oauth_apps`) covers the whole account.
    pub fn family(&self) -> Option<String> {
        claim_family(self.representative_claim.as_deref()?).map(str::to_ascii_lowercase)
    }
}

/// The family a rate-limit claim names after its window (`<count>_<unit>[_<family>]`).
fn claim_family(claim: &str) -> Option<&str> {
    let mut parts = claim.splitn(3, '_');
    let (_count, unit, family) = (parts.next()?, parts.next()?, parts.next()?);
    let unit = unit.trim_end_matches('s');
    let is_window = matches!(unit, "minute" | "hour" | "day" | "week" | "month");
    (is_window && !family.is_empty() && family.bytes().all(|b| b.is_ascii_alphabetic())).then_some(family)
}

/// The family of a Claude model by Anthropic's naming rule: the first word of the name that is
/// not a version or a date (`claude-opus-4-1` → `opus`, `claude-3-5-sonnet-20241022` →
/// `sonnet`, `us.anthropic.claude-haiku-4-5-20251001-v1:0` → `haiku`, and a family first seen
/// tomorrow the same way). `None` for a name that is not Claude's.
pub fn claude_family(model: &str) -> Option<&str> {
    let lower_at = model
        .as_bytes()
        .windows(7)
        .position(|w| w.eq_ignore_ascii_case(b"claude-"))?;
    let rest = &model[lower_at + 7..];
    rest.split(['-', '.', ':', '@', '['])
        .find(|w| w.len() > 1 && w.bytes().all(|b| b.is_ascii_alphabetic()) && !w.eq_ignore_ascii_case("latest"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_by_rule_including_ones_never_seen() {
        for (m, f) in [
            ("claude-opus-4-1", Some("opus")),
            ("claude-sonnet-4-5-20250929", Some("sonnet")),
            ("claude-3-5-sonnet-20241022", Some("sonnet")),
            ("claude-3-haiku-20240307", Some("haiku")),
            ("us.anthropic.claude-haiku-4-5-20251001-v1:0", Some("haiku")),
            ("claude-mythos-5", Some("mythos")),
            ("Claude-Opus-4[1m]", Some("Opus")),
            ("claude-3-5", None),
            ("gpt-5", None),
        ] {
            assert_eq!(claude_family(m), f, "{m}");
        }
        for (c, f) in [
            ("seven_day_opus", Some("opus")),
            ("seven_day_sonnet", Some("sonnet")),
            ("seven_day_mythos", Some("mythos")),
            ("five_hour", None),
            ("seven_day", None),
            ("seven_day_oauth_apps", None),
            ("opus", None),
        ] {
            assert_eq!(claim_family(c), f, "{c}");
        }
    }
}
