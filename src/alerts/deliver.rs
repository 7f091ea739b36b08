//! One alert to one webhook: the payload in the webhook's shape, and the POST with retries.
//!
//! The URL is a credential: it is never logged, and errors are reported without it (reqwest's
//! errors name the URL, so only their kind is kept).

use std::time::Duration;

use serde_json::{Value, json};

use crate::alert_events::Alert;
use crate::config::{WebhookConfig, WebhookKind};

/// Waits before each retry: a delivery is tried at most four times over about 21 s.
pub const BACKOFF: [Duration; 3] = [Duration::from_secs(1), Duration::from_secs(4), Duration::from_secs(16)];

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Delivery {
    /// `ok` or `failed`.
    pub outcome: &'static str,
    /// The webhook's last HTTP status, if it answered.
    pub status: Option<u16>,
    pub attempts: u32,
    /// Why it failed, without the URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The one-line text of an alert, for the chat kinds.
pub fn text(alert: &Alert, instance: &str) -> String {
    format!(
        "[{}] {}: {} (relay {instance})",
        serde_json::to_value(alert.severity)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        alert.kind.name(),
        alert.message
    )
}

/// The body posted to a webhook of `kind`.
pub fn payload(webhook: &WebhookConfig, alert: &Alert, instance: &str, at: chrono::DateTime<chrono::Utc>) -> Value {
    let text = text(alert, instance);
    match webhook.kind {
        WebhookKind::Generic => json!({
            "event": alert.kind.name(),
            "severity": alert.severity,
            "subject": alert.subject,
            "message": alert.message,
            "at": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "instance": instance,
            "details": alert.details,
        }),
        WebhookKind::Slack => json!({ "text": text }),
        WebhookKind::Discord => json!({ "content": text }),
        WebhookKind::Telegram => json!({ "chat_id": webhook.chat_id, "text": text }),
        WebhookKind::Wecom | WebhookKind::Dingtalk => json!({ "msgtype": "text", "text": { "content": text } }),
        WebhookKind::Feishu => json!({ "msg_type": "text", "content": { "text": text } }),
    }
}

/// Whether a status is worth another try: 5xx, 408 and 429 (a refusal is final).
fn retryable(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// Why a request failed, without the URL reqwest puts into its messages.
fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else if e.is_request() || e.is_body() {
        "request failed".into()
    } else {
        "failed".into()
    }
}

/// One POST.
async fn post_once(client: &reqwest::Client, url: &str, body: &Value) -> Result<u16, String> {
    match client.post(url.trim()).json(body).send().await {
        Ok(r) => Ok(r.status().as_u16()),
        Err(e) => Err(error_kind(&e)),
    }
}

/// Posts `body`, trying `1 + backoff.len()` times at most: after a network failure, a 5xx, 408
/// or 429, after the next wait of `backoff`.
pub async fn post(client: &reqwest::Client, webhook: &WebhookConfig, body: &Value, backoff: &[Duration]) -> Delivery {
    let mut attempts = 0;
    let mut waits = backoff.iter();
    loop {
        attempts += 1;
        let (status, error) = match post_once(client, &webhook.url, body).await {
            Ok(s) if (200..300).contains(&s) => {
                return Delivery {
                    outcome: "ok",
                    status: Some(s),
                    attempts,
                    error: None,
                };
            }
            Ok(s) => (Some(s), format!("the webhook answered {s}")),
            Err(e) => (None, e),
        };
        let again = status.is_none_or(retryable);
        match waits.next() {
            Some(wait) if again => {
                tracing::debug!(webhook = %webhook.name, attempt = attempts, error = %error, "alert delivery failed; trying again");
                tokio::time::sleep(*wait).await;
            }
            _ => {
                tracing::warn!(webhook = %webhook.name, attempts, error = %error, "alert delivery failed");
                return Delivery {
                    outcome: "failed",
                    status,
                    attempts,
                    error: Some(error),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert_events::{AlertKind, Severity};

    fn hook(kind: WebhookKind) -> WebhookConfig {
        WebhookConfig {
            name: "w".into(),
            kind,
            url: "https://hooks.example/secret".into(),
            events: None,
            chat_id: (kind == WebhookKind::Telegram).then(|| "42".to_string()),
        }
    }

    #[test]
    fn payloads_take_each_services_shape() {
        let alert = Alert::new(
            AlertKind::AccountUnhealthy,
            Severity::Warning,
            "acct",
            "account `acct` is out",
        );
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let t = "[warning] account_unhealthy: account `acct` is out (relay r1)";
        assert_eq!(payload(&hook(WebhookKind::Slack), &alert, "r1", at), json!({"text": t}));
        assert_eq!(
            payload(&hook(WebhookKind::Discord), &alert, "r1", at),
            json!({"content": t})
        );
        assert_eq!(
            payload(&hook(WebhookKind::Telegram), &alert, "r1", at),
            json!({"chat_id": "42", "text": t})
        );
        for k in [WebhookKind::Wecom, WebhookKind::Dingtalk] {
            assert_eq!(
                payload(&hook(k), &alert, "r1", at),
                json!({"msgtype": "text", "text": {"content": t}})
            );
        }
        assert_eq!(
            payload(&hook(WebhookKind::Feishu), &alert, "r1", at),
            json!({"msg_type": "text", "content": {"text": t}})
        );
        let g = payload(&hook(WebhookKind::Generic), &alert, "r1", at);
        assert_eq!(g["event"], "account_unhealthy");
        assert_eq!(g["severity"], "warning");
        assert_eq!(g["subject"], "acct");
        assert_eq!(g["at"], "2023-11-14T22:13:20Z");
        assert_eq!(g["instance"], "r1");
    }

    #[test]
    fn refusals_are_final() {
        assert!(retryable(500) && retryable(503) && retryable(429) && retryable(408));
        assert!(!retryable(400) && !retryable(404) && !retryable(403));
    }
}
