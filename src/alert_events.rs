//! Alerts as the layers that notice trouble raise them, and the queue they go into. A leaf: the
//! scheduler and the token refresh raise alerts without knowing who delivers them (the `alerts`
//! module, high above, drains the queue and sends webhooks).
//!
//! Raising never blocks and never fails: it is a `try_send` into a bounded channel, and an alert
//! that finds the channel full (or no dispatcher installed, as in unit tests) is counted and
//! dropped. Lower layers raise only on state changes (an account leaving the pool, a refused
//! refresh), never per request.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// What an alert is about. The names are those of `alerts.webhooks[].events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// An account left the pool (cooling down, parked, refused).
    AccountUnhealthy,
    /// An account that left the pool served a request again.
    AccountRecovered,
    /// The token endpoint refused an account's refresh token (e.g. `invalid_grant`).
    RefreshFailed,
    /// A key's or account's spend reached the configured share of its cap.
    SpendThreshold,
    /// A key expires within the configured window.
    KeyExpiring,
    /// The relay's error rate stayed above the threshold.
    ErrorRate,
    /// The upstream time to first byte stayed above the threshold.
    Latency,
    /// A test alert sent on demand (`POST /admin/api/alerts/test`); never subscribed to.
    #[serde(skip_deserializing)]
    Test,
}

impl AlertKind {
    /// Every kind a webhook can subscribe to.
    pub const SUBSCRIBABLE: [AlertKind; 7] = [
        AlertKind::AccountUnhealthy,
        AlertKind::AccountRecovered,
        AlertKind::RefreshFailed,
        AlertKind::SpendThreshold,
        AlertKind::KeyExpiring,
        AlertKind::ErrorRate,
        AlertKind::Latency,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AlertKind::AccountUnhealthy => "account_unhealthy",
            AlertKind::AccountRecovered => "account_recovered",
            AlertKind::RefreshFailed => "refresh_failed",
            AlertKind::SpendThreshold => "spend_threshold",
            AlertKind::KeyExpiring => "key_expiring",
            AlertKind::ErrorRate => "error_rate",
            AlertKind::Latency => "latency",
            AlertKind::Test => "test",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// One alert. `subject` names what it is about (an account or key name, `relay`); the same
/// (kind, subject) is sent at most once per `alerts.dedup`. Nothing here may hold a secret.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub kind: AlertKind,
    pub severity: Severity,
    pub subject: String,
    pub message: String,
    /// Structured facts for the generic payload (`details`).
    pub details: serde_json::Value,
}

impl Alert {
    pub fn new(kind: AlertKind, severity: Severity, subject: impl Into<String>, message: impl Into<String>) -> Alert {
        Alert {
            kind,
            severity,
            subject: subject.into(),
            message: message.into(),
            details: serde_json::Value::Null,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Alert {
        self.details = details;
        self
    }
}

/// Where raised alerts go: the dispatcher's queue, once one is installed.
static QUEUE: RwLock<Option<mpsc::Sender<Alert>>> = RwLock::new(None);
/// Alerts dropped because the queue was full, not yet reported by the dispatcher.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Installs the queue raised alerts go to (replacing any earlier one).
pub fn install(queue: mpsc::Sender<Alert>) {
    *QUEUE.write().unwrap_or_else(|p| p.into_inner()) = Some(queue);
}

/// Raises an alert: queued for the dispatcher, or dropped when its queue is full. Never waits.
pub fn raise(alert: Alert) {
    let queue = QUEUE.read().unwrap_or_else(|p| p.into_inner());
    let Some(queue) = queue.as_ref() else {
        return;
    };
    if let Err(mpsc::error::TrySendError::Full(_)) = queue.try_send(alert) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// How many alerts were dropped since the last call.
pub fn take_dropped() -> u64 {
    DROPPED.swap(0, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_read_and_print_by_their_config_names() {
        for k in AlertKind::SUBSCRIBABLE {
            let v: AlertKind = serde_json::from_value(serde_json::json!(k.name())).unwrap();
            assert_eq!(v, k);
            assert_eq!(serde_json::to_value(k).unwrap(), serde_json::json!(k.name()));
        }
        assert!(serde_json::from_value::<AlertKind>(serde_json::json!("test")).is_err());
    }
}
