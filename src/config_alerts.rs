//! `alerts`: webhooks that receive alerts, and the thresholds that raise them.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, invalid};
use crate::alert_events::AlertKind;
use crate::types::Dur;

/// The chat or webhook service a webhook posts to, which decides the payload's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookKind {
    /// `{event, severity, subject, message, at, instance, details}`.
    Generic,
    /// `{text}`.
    Slack,
    /// `{content}`.
    Discord,
    /// Bot API `sendMessage`: `{chat_id, text}`.
    Telegram,
    /// `{msgtype: "text", text: {content}}`.
    Wecom,
    /// `{msgtype: "text", text: {content}}`.
    Dingtalk,
    /// `{msg_type: "text", content: {text}}`.
    Feishu,
}

/// One webhook. Its URL is a credential (Slack and Discord URLs are): it is never logged nor
/// shown; the name stands for it.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    pub kind: WebhookKind,
    pub url: String,
    /// The events sent to it; absent: all.
    #[serde(default)]
    pub events: Option<Vec<AlertKind>>,
    /// Telegram: the chat the bot writes to.
    #[serde(default)]
    pub chat_id: Option<String>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &"<redacted>")
            .field("events", &self.events)
            .finish()
    }
}

impl WebhookConfig {
    /// Whether the webhook receives alerts of `kind` (test alerts go wherever they are sent).
    pub fn wants(&self, kind: AlertKind) -> bool {
        kind == AlertKind::Test || self.events.as_ref().is_none_or(|e| e.contains(&kind))
    }
}

/// `alerts.error_rate`: the share of client requests answered with a 5xx.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRateRule {
    pub above: f64,
    /// How long the rate must stay above (measured over this window).
    #[serde(rename = "for")]
    pub sustained: Dur,
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
}

/// `alerts.latency`: the median upstream time to first byte.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyRule {
    pub p50_above: Dur,
    #[serde(rename = "for")]
    pub sustained: Dur,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// A key's or account's spend reaching this share of a cap raises `spend_threshold`.
    #[serde(default = "default_spend_threshold")]
    pub spend_threshold: f64,
    /// A key expiring within this raises `key_expiring`.
    #[serde(default = "default_key_expiring")]
    pub key_expiring: Dur,
    #[serde(default)]
    pub error_rate: Option<ErrorRateRule>,
    #[serde(default)]
    pub latency: Option<LatencyRule>,
    /// The same alert (event and subject) is sent at most once per this, across instances.
    #[serde(default = "default_dedup")]
    pub dedup: Dur,
    /// Deliveries per webhook and minute; more are counted as `rate_limited` and not sent.
    #[serde(default = "default_max_per_minute")]
    pub max_per_minute: u32,
    /// How often spend, key expiry, error rate and latency are checked.
    #[serde(default = "default_check_every")]
    pub check_every: Dur,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhooks: Vec::new(),
            spend_threshold: default_spend_threshold(),
            key_expiring: default_key_expiring(),
            error_rate: None,
            latency: None,
            dedup: default_dedup(),
            max_per_minute: default_max_per_minute(),
            check_every: default_check_every(),
        }
    }
}

fn default_min_requests() -> u64 {
    20
}
fn default_spend_threshold() -> f64 {
    0.8
}
fn default_key_expiring() -> Dur {
    Dur(Duration::from_secs(3 * 86_400))
}
fn default_dedup() -> Dur {
    Dur(Duration::from_secs(3600))
}
fn default_max_per_minute() -> u32 {
    30
}
fn default_check_every() -> Dur {
    Dur(Duration::from_secs(30))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl AlertsConfig {
    /// Checks every value, naming the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            let at = |field: &str| format!("alerts.webhooks[{i}].{field}");
            if !valid_name(&w.name) {
                return Err(invalid(at("name"), "must be 1 to 64 letters, digits, `-`, `_` or `.`"));
            }
            if !names.insert(w.name.as_str()) {
                return Err(invalid(at("name"), format!("`{}` is used twice", w.name)));
            }
            // The URL is a secret: the message never repeats it.
            let url = reqwest::Url::parse(w.url.trim()).map_err(|_| invalid(at("url"), "is not a URL"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(invalid(at("url"), "must be an http:// or https:// URL"));
            }
            match (w.kind, w.chat_id.as_deref()) {
                (WebhookKind::Telegram, None | Some("")) => {
                    return Err(invalid(at("chat_id"), "is required for a telegram webhook"));
                }
                (WebhookKind::Telegram, Some(_)) | (_, None) => {}
                (_, Some(_)) => return Err(invalid(at("chat_id"), "only applies to `kind: telegram`")),
            }
            if w.events.as_ref().is_some_and(Vec::is_empty) {
                return Err(invalid(
                    at("events"),
                    "must name at least one event (leave it out for all)",
                ));
            }
        }
        if !(self.spend_threshold > 0.0 && self.spend_threshold <= 1.0) {
            return Err(invalid("alerts.spend_threshold", "must be above 0 and at most 1"));
        }
        if self.key_expiring.0 < Duration::from_secs(60) {
            return Err(invalid("alerts.key_expiring", "must be at least 1m"));
        }
        if let Some(r) = &self.error_rate {
            if !(r.above > 0.0 && r.above < 1.0) {
                return Err(invalid("alerts.error_rate.above", "must be above 0 and below 1"));
            }
            if r.sustained.0 < Duration::from_secs(1) {
                return Err(invalid("alerts.error_rate.for", "must be at least 1s"));
            }
            if r.min_requests == 0 {
                return Err(invalid("alerts.error_rate.min_requests", "must be at least 1"));
            }
        }
        if let Some(r) = &self.latency {
            if r.p50_above.0 < Duration::from_millis(1) {
                return Err(invalid("alerts.latency.p50_above", "must be at least 1ms"));
            }
            if r.sustained.0 < Duration::from_secs(1) {
                return Err(invalid("alerts.latency.for", "must be at least 1s"));
            }
        }
        if self.dedup.0 < Duration::from_secs(1) {
            return Err(invalid("alerts.dedup", "must be at least 1s"));
        }
        if self.max_per_minute == 0 {
            return Err(invalid("alerts.max_per_minute", "must be at least 1"));
        }
        if self.check_every.0 < Duration::from_secs(1) || self.check_every.0 > Duration::from_secs(3600) {
            return Err(invalid("alerts.check_every", "must be between 1s and 1h"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<(), String> {
        let c: AlertsConfig = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_section_reads_and_bad_values_name_their_key() {
        parse(
            "webhooks:\n  - {name: ops, kind: slack, url: 'https://hooks.example/x', events: [account_unhealthy]}\n  - {name: tg, kind: telegram, url: 'https://api.example/bot1/sendMessage', chat_id: '42'}\nerror_rate: {above: 0.2, for: 5m}\nlatency: {p50_above: 10s, for: 5m}\n",
        )
        .unwrap();
        let cases = [
            (
                "webhooks: [{name: a, kind: slack, url: 'ftp://x/secret'}]",
                "alerts.webhooks[0].url",
            ),
            (
                "webhooks: [{name: a, kind: telegram, url: 'https://x/'}]",
                "alerts.webhooks[0].chat_id",
            ),
            (
                "webhooks: [{name: a, kind: slack, url: 'https://x/', chat_id: '1'}]",
                "alerts.webhooks[0].chat_id",
            ),
            (
                "webhooks: [{name: a, kind: slack, url: 'https://x/'}, {name: a, kind: slack, url: 'https://y/'}]",
                "alerts.webhooks[1].name",
            ),
            (
                "webhooks: [{name: a, kind: slack, url: 'https://x/', events: []}]",
                "alerts.webhooks[0].events",
            ),
            ("spend_threshold: 1.5", "alerts.spend_threshold"),
            ("error_rate: {above: 0, for: 5m}", "alerts.error_rate.above"),
            ("max_per_minute: 0", "alerts.max_per_minute"),
            ("dedup: 0s", "alerts.dedup"),
        ];
        for (yaml, key) in cases {
            let e = parse(yaml).unwrap_err();
            assert!(e.contains(key), "{yaml}: {e}");
        }
        assert!(parse("webhooks: [{name: a, kind: slack, url: 'https://x/', events: [test]}]").is_err());
        assert!(parse("webhooks: [{name: a, kind: pager, url: 'https://x/'}]").is_err());
        assert!(parse("unknown: 1").is_err());
    }

    #[test]
    fn the_url_never_prints() {
        let c: AlertsConfig =
            serde_yaml_ng::from_str("webhooks: [{name: a, kind: slack, url: 'https://hooks.example/T000/SECRET'}]")
                .unwrap();
        assert!(!format!("{c:?}").contains("SECRET"));
        let e = parse("webhooks: [{name: a, kind: slack, url: 'nota url SECRET'}]").unwrap_err();
        assert!(!e.contains("SECRET"), "{e}");
    }
}
