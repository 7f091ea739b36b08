//! Alerts through webhooks. Lower layers raise alerts into a bounded queue
//! ([`crate::alert_events::raise`]: a `try_send`, never a wait); [`evaluate`] raises those that
//! come from thresholds (spend, key expiry, error rate, latency) on a timer. One dispatcher task
//! drains the queue: it deduplicates each (event, subject) for `alerts.dedup` across instances
//! (a claim in the coordination store), rate-limits each webhook, and hands each delivery to a
//! task of its own ([`deliver`]: the webhook's payload shape, retries with backoff). Nothing here
//! runs on a request's path, so a slow or failing webhook never delays nor fails a request.
//!
//! Webhook URLs are credentials: logs and the admin API name webhooks by their name only.

pub mod deliver;
pub mod evaluate;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::alert_events::{Alert, AlertKind, Severity};
use crate::config::{AlertsConfig, WebhookConfig};
use crate::lifecycle::Tasks;
use crate::metrics::Metrics;
use crate::store::coord::Coordination;

/// How many alerts the queue holds before new ones are dropped.
const QUEUE: usize = 256;
/// How many alerts the admin API lists.
const RECENT: usize = 50;
/// The outcomes of `relay_alert_deliveries_total`.
pub const OUTCOMES: [&str; 5] = ["ok", "failed", "dropped", "deduplicated", "rate_limited"];

/// An alert as the admin API lists it, with what became of it at each webhook.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    #[serde(skip)]
    id: u64,
    /// Unix seconds.
    pub at: i64,
    pub event: AlertKind,
    pub severity: Severity,
    pub subject: String,
    pub message: String,
    /// Webhook name → `pending`, `ok`, `failed`, `deduplicated` or `rate_limited`.
    pub deliveries: BTreeMap<String, Value>,
}

#[derive(Default)]
struct Book {
    /// Deliveries per webhook within the last minute.
    sent: HashMap<String, VecDeque<Instant>>,
    recent: VecDeque<Record>,
    next_id: u64,
}

/// The alerting of one relay process: its webhooks, their HTTP client and their bookkeeping.
pub struct Alerts {
    config: AlertsConfig,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    coord: Arc<dyn Coordination>,
    /// Names this process in payloads.
    instance: String,
    tasks: Tasks,
    book: Mutex<Book>,
}

fn lock(m: &Mutex<Book>) -> std::sync::MutexGuard<'_, Book> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The URL as the admin API shows it: scheme and host, the rest (where the secret lives) hidden.
pub fn masked(url: &str) -> String {
    match reqwest::Url::parse(url.trim()) {
        Ok(u) => format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or("")),
        Err(_) => "…".into(),
    }
}

impl Alerts {
    pub fn new(
        config: AlertsConfig,
        metrics: Arc<Metrics>,
        coord: Arc<dyn Coordination>,
        instance: String,
        tasks: Tasks,
    ) -> Arc<Alerts> {
        // No redirects: a webhook that moves must be reconfigured, not followed blindly.
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        for w in &config.webhooks {
            for outcome in OUTCOMES {
                metrics.alert_deliveries.with_label_values(&[w.name.as_str(), outcome]);
            }
        }
        Arc::new(Alerts {
            config,
            client,
            metrics,
            coord,
            instance,
            tasks,
            book: Mutex::new(Book::default()),
        })
    }

    pub fn config(&self) -> &AlertsConfig {
        &self.config
    }

    /// Installs the queue lower layers raise into and starts the dispatcher, when any webhook is
    /// configured (without one, raising is a no-op).
    pub fn start(self: &Arc<Self>) {
        if self.config.webhooks.is_empty() {
            return;
        }
        let (tx, mut rx) = mpsc::channel::<Alert>(QUEUE);
        crate::alert_events::install(tx);
        let me = self.clone();
        self.tasks.spawn_loop("alert dispatch", async move {
            while let Some(alert) = rx.recv().await {
                let dropped = crate::alert_events::take_dropped();
                if dropped > 0 {
                    tracing::warn!(dropped, "alerts dropped: the alert queue was full");
                    me.metrics
                        .alert_deliveries
                        .with_label_values(&["*", "dropped"])
                        .inc_by(dropped);
                }
                me.dispatch(alert).await;
            }
        });
    }

    /// Deduplicates, rate-limits and hands the alert's deliveries to tasks of their own.
    async fn dispatch(self: &Arc<Self>, alert: Alert) {
        self.metrics.alerts.with_label_values(&[alert.kind.name()]).inc();
        let targets: Vec<WebhookConfig> = self
            .config
            .webhooks
            .iter()
            .filter(|w| w.wants(alert.kind))
            .cloned()
            .collect();
        if targets.is_empty() {
            return;
        }
        let claim = format!("alert:{}:{}", alert.kind.name(), alert.subject);
        let first = match self.coord.claim_once(&claim, self.config.dedup.0).await {
            Ok(first) => first,
            Err(e) => {
                // Better twice than never.
                tracing::warn!(error = %e, "alert deduplication unavailable; sending anyway");
                true
            }
        };
        let mut deliveries = BTreeMap::new();
        let mut send = Vec::new();
        {
            let mut book = lock(&self.book);
            let now = Instant::now();
            for w in targets {
                let outcome = if !first {
                    "deduplicated"
                } else {
                    let sent = book.sent.entry(w.name.clone()).or_default();
                    while sent
                        .front()
                        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
                    {
                        sent.pop_front();
                    }
                    if sent.len() >= self.config.max_per_minute as usize {
                        "rate_limited"
                    } else {
                        sent.push_back(now);
                        "pending"
                    }
                };
                if outcome == "pending" {
                    send.push(w.clone());
                } else {
                    self.count(&w.name, outcome);
                    tracing::debug!(webhook = %w.name, event = alert.kind.name(), outcome, "alert not sent");
                }
                deliveries.insert(w.name.clone(), json!({ "outcome": outcome }));
            }
        }
        let id = self.remember(&alert, deliveries);
        let at = chrono::Utc::now();
        for w in send {
            let me = self.clone();
            let body = deliver::payload(&w, &alert, &self.instance, at);
            self.tasks.spawn_loop("alert delivery", async move {
                let d = deliver::post(&me.client, &w, &body, &deliver::BACKOFF).await;
                me.count(&w.name, d.outcome);
                me.settle(id, &w.name, &d);
            });
        }
    }

    fn count(&self, webhook: &str, outcome: &str) {
        self.metrics
            .alert_deliveries
            .with_label_values(&[webhook, outcome])
            .inc();
    }

    /// Adds an alert to the recent list; its id, for [`Alerts::settle`].
    fn remember(&self, alert: &Alert, deliveries: BTreeMap<String, Value>) -> u64 {
        let mut book = lock(&self.book);
        book.next_id += 1;
        let id = book.next_id;
        if book.recent.len() == RECENT {
            book.recent.pop_front();
        }
        book.recent.push_back(Record {
            id,
            at: chrono::Utc::now().timestamp(),
            event: alert.kind,
            severity: alert.severity,
            subject: alert.subject.clone(),
            message: alert.message.clone(),
            deliveries,
        });
        id
    }

    /// Records how a delivery of the alert `id` ended.
    fn settle(&self, id: u64, webhook: &str, d: &deliver::Delivery) {
        let mut book = lock(&self.book);
        if let Some(r) = book.recent.iter_mut().find(|r| r.id == id) {
            r.deliveries
                .insert(webhook.to_string(), serde_json::to_value(d).unwrap_or(Value::Null));
        }
    }

    /// The alerts sent or suppressed lately, newest first.
    pub fn recent(&self) -> Vec<Record> {
        lock(&self.book).recent.iter().rev().cloned().collect()
    }

    /// The webhooks as the admin API lists them (URLs masked), with their delivery counters.
    pub fn webhooks(&self) -> Vec<Value> {
        self.config
            .webhooks
            .iter()
            .map(|w| {
                let counters: serde_json::Map<String, Value> = OUTCOMES
                    .iter()
                    .map(|o| {
                        let n = self
                            .metrics
                            .alert_deliveries
                            .with_label_values(&[w.name.as_str(), o])
                            .get();
                        (o.to_string(), json!(n))
                    })
                    .collect();
                let events: Vec<AlertKind> = match &w.events {
                    Some(e) => e.clone(),
                    None => AlertKind::SUBSCRIBABLE.to_vec(),
                };
                json!({
                    "name": w.name,
                    "kind": w.kind,
                    "url": masked(&w.url),
                    "events": events,
                    "deliveries": counters,
                })
            })
            .collect()
    }

    /// Sends a test alert to the webhook `name` now, once (no retry, no deduplication, no rate
    /// limit); `None` when no webhook has that name.
    pub async fn send_test(&self, name: &str) -> Option<deliver::Delivery> {
        let w = self.config.webhooks.iter().find(|w| w.name == name)?;
        let alert = Alert::new(
            AlertKind::Test,
            Severity::Info,
            "relay",
            format!("test alert for webhook `{}`", w.name),
        );
        self.metrics.alerts.with_label_values(&[alert.kind.name()]).inc();
        let body = deliver::payload(w, &alert, &self.instance, chrono::Utc::now());
        let id = self.remember(&alert, BTreeMap::new());
        let d = deliver::post(&self.client, w, &body, &[]).await;
        self.count(&w.name, d.outcome);
        self.settle(id, &w.name, &d);
        tracing::info!(webhook = %w.name, outcome = d.outcome, status = ?d.status, "test alert sent");
        Some(d)
    }
}
