//! The alerts that come from thresholds, checked every `alerts.check_every` from state that
//! already exists: key spend from the limit counters (one peek per key with a spend cap), account
//! spend from the scheduler's runtime, key expiry from the snapshot, and the error rate and the
//! median upstream time to first byte from the Prometheus counters the relay keeps anyway.
//!
//! A condition raises its alert when it becomes true, and again every `alerts.dedup` while it
//! holds (the dispatcher deduplicates across instances).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus::core::Collector;
use serde_json::json;

use crate::alert_events::{Alert, AlertKind, Severity, raise};
use crate::config::AlertsConfig;
use crate::metrics::Metrics;
use crate::state::Snapshot;

/// What the checks read.
pub struct Sources {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub limits: Arc<dyn filters::LimitBackend>,
    pub metrics: Arc<Metrics>,
}

/// A reading of the request counters and the time-to-first-byte histogram.
#[derive(Debug, Clone, Default, PartialEq)]
struct Sample {
    requests: u64,
    errors: u64,
    /// Cumulative counts per upper bound (seconds), summed over endpoints.
    ttfb: Vec<(f64, u64)>,
    ttfb_count: u64,
}

fn sample(m: &Metrics) -> Sample {
    let mut s = Sample::default();
    for family in m.requests.collect() {
        for metric in family.get_metric() {
            let n = metric.get_counter().get_value() as u64;
            s.requests += n;
            let status = metric.get_label().iter().find(|l| l.name() == "status");
            if status.is_some_and(|l| l.value().starts_with('5')) {
                s.errors += n;
            }
        }
    }
    for family in m.upstream_ttfb.collect() {
        for metric in family.get_metric() {
            let h = metric.get_histogram();
            s.ttfb_count += h.get_sample_count();
            for (i, b) in h.get_bucket().iter().enumerate() {
                match s.ttfb.get_mut(i) {
                    Some(slot) => slot.1 += b.cumulative_count(),
                    None => s.ttfb.push((b.upper_bound(), b.cumulative_count())),
                }
            }
        }
    }
    s
}

/// The median of the observations between two samples: the upper bound of the bucket that holds
/// it (`f64::INFINITY` above the last bucket); `None` without observations.
fn median_between(old: &Sample, new: &Sample) -> Option<f64> {
    let total = new.ttfb_count.checked_sub(old.ttfb_count)?;
    if total == 0 {
        return None;
    }
    for (i, (bound, cum)) in new.ttfb.iter().enumerate() {
        let before = old.ttfb.get(i).map_or(0, |b| b.1);
        if cum.saturating_sub(before) * 2 >= total {
            return Some(*bound);
        }
    }
    Some(f64::INFINITY)
}

/// The samples of the last window, and which conditions hold.
pub struct Checks {
    config: AlertsConfig,
    sources: Sources,
    samples: VecDeque<(Instant, Sample)>,
    /// Conditions in force (event and subject) → when their alert was last raised here.
    raised: HashMap<(AlertKind, String), Instant>,
}

impl Checks {
    pub fn new(config: AlertsConfig, sources: Sources) -> Checks {
        Checks {
            config,
            sources,
            samples: VecDeque::new(),
            raised: HashMap::new(),
        }
    }

    /// Runs the checks every `check_every`, forever.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.config.check_every.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.check().await;
        }
    }

    /// One round of checks.
    pub async fn check(&mut self) {
        // Alerts dropped by a full queue show even when no further alert wakes the dispatcher.
        let dropped = crate::alert_events::take_dropped();
        if dropped > 0 {
            tracing::warn!(dropped, "alerts dropped: the alert queue was full");
            self.sources
                .metrics
                .alert_deliveries
                .with_label_values(&["*", "dropped"])
                .inc_by(dropped);
        }
        let mut holding = HashSet::new();
        let mut alerts = Vec::new();
        self.spend(&mut alerts).await;
        self.expiry(&mut alerts);
        self.rates(&mut alerts);
        let now = Instant::now();
        for alert in alerts {
            let key = (alert.kind, alert.subject.clone());
            holding.insert(key.clone());
            let due = self
                .raised
                .get(&key)
                .is_none_or(|at| now.duration_since(*at) >= self.config.dedup.0);
            if due {
                self.raised.insert(key, now);
                raise(alert);
            }
        }
        // A condition that ended raises again when it comes back.
        self.raised.retain(|k, _| holding.contains(k));
    }

    /// Keys and accounts whose spend reached `spend_threshold` of a cap.
    async fn spend(&self, out: &mut Vec<Alert>) {
        let share = self.config.spend_threshold;
        let snapshot = self.sources.snapshot.load_full();
        let now_ms = chrono::Utc::now().timestamp_millis();
        for (key, _, _, _) in &snapshot.keys {
            let Some(caps) = key.policy.cost_limits.as_ref() else {
                continue;
            };
            if !key.enabled {
                continue;
            }
            let peek = match self.sources.limits.peek(key, now_ms).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(key = %key.name, error = %e, "alert check: key spend unreadable");
                    continue;
                }
            };
            let windows = [
                ("daily", caps.daily_nanos, peek.day_nanos),
                ("weekly", caps.weekly_nanos, peek.week_nanos),
                ("monthly", caps.monthly_nanos, peek.month_nanos),
                ("total", caps.total_nanos, peek.total_nanos),
            ];
            for (window, cap, spent) in windows {
                let Some(cap) = cap.filter(|c| *c > 0) else {
                    continue;
                };
                if spent as f64 >= share * cap as f64 {
                    out.push(spend_alert("key", &key.name, &key.id, window, spent, cap));
                }
            }
        }
        for a in snapshot.pool.all() {
            let Some(cap) = a.daily_quota_nanos.filter(|c| *c > 0) else {
                continue;
            };
            let spent = a.rt.spend();
            if spent as f64 >= share * cap as f64 {
                out.push(spend_alert("account", &a.name, &a.id, "daily", spent, cap));
            }
        }
    }

    /// Enabled keys that expire within `key_expiring`.
    fn expiry(&self, out: &mut Vec<Alert>) {
        let now = chrono::Utc::now().timestamp();
        let horizon = now.saturating_add(self.config.key_expiring.0.as_secs() as i64);
        let snapshot = self.sources.snapshot.load();
        for (key, _, _, _) in &snapshot.keys {
            let Some(at) = key.policy.expires_at else {
                continue;
            };
            if key.enabled && at > now && at <= horizon {
                let when = chrono::DateTime::from_timestamp(at, 0)
                    .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M UTC").to_string());
                out.push(
                    Alert::new(
                        AlertKind::KeyExpiring,
                        Severity::Warning,
                        format!("key {}", key.name),
                        format!("key `{}` expires at {when} (in {})", key.name, human(at - now)),
                    )
                    .with_details(json!({"key": &*key.name, "key_id": &*key.id, "expires_at": at})),
                );
            }
        }
    }

    /// The error rate and the median time to first byte over the `for` windows.
    fn rates(&mut self, out: &mut Vec<Alert>) {
        if self.config.error_rate.is_none() && self.config.latency.is_none() {
            return;
        }
        let now = Instant::now();
        let current = sample(&self.sources.metrics);
        let longest = [
            self.config.error_rate.map(|r| r.sustained.0),
            self.config.latency.map(|r| r.sustained.0),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or_default();
        // Keep one sample older than the longest window, as its baseline.
        while self
            .samples
            .get(1)
            .is_some_and(|(at, _)| now.duration_since(*at) >= longest)
        {
            self.samples.pop_front();
        }
        self.samples.push_back((now, current.clone()));
        // The newest sample about `window` old: within half a check of it, so that the jitter
        // of the timer never skips the sample a window should start from.
        let slack = self.config.check_every.0 / 2;
        let baseline = |window: Duration| {
            self.samples
                .iter()
                .rev()
                .find(|(at, _)| now.duration_since(*at) + slack >= window)
                .map(|(_, s)| s)
        };
        if let Some(rule) = self.config.error_rate
            && let Some(old) = baseline(rule.sustained.0)
        {
            let requests = current.requests.saturating_sub(old.requests);
            let errors = current.errors.saturating_sub(old.errors);
            let rate = if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            };
            if requests >= rule.min_requests && rate > rule.above {
                out.push(
                    Alert::new(
                        AlertKind::ErrorRate,
                        Severity::Critical,
                        "relay",
                        format!(
                            "{:.0}% of requests failed with a 5xx over the last {} ({errors} of {requests}; threshold {:.0}%)",
                            rate * 100.0,
                            human(rule.sustained.0.as_secs() as i64),
                            rule.above * 100.0
                        ),
                    )
                    .with_details(json!({"rate": rate, "errors": errors, "requests": requests, "above": rule.above, "window_s": rule.sustained.0.as_secs()})),
                );
            }
        }
        if let Some(rule) = self.config.latency
            && let Some(old) = baseline(rule.sustained.0)
            && let Some(p50) = median_between(old, &current)
            && p50 > rule.p50_above.0.as_secs_f64()
        {
            let shown = if p50.is_finite() {
                format!("{p50}s")
            } else {
                "beyond the largest bucket".to_string()
            };
            out.push(
                Alert::new(
                    AlertKind::Latency,
                    Severity::Warning,
                    "relay",
                    format!(
                        "the median upstream time to first byte over the last {} is {shown} (threshold {}s)",
                        human(rule.sustained.0.as_secs() as i64),
                        rule.p50_above.0.as_secs_f64()
                    ),
                )
                .with_details(json!({"p50_s": if p50.is_finite() { json!(p50) } else { json!(null) }, "above_s": rule.p50_above.0.as_secs_f64(), "window_s": rule.sustained.0.as_secs()})),
            );
        }
    }
}

fn spend_alert(what: &str, name: &str, id: &str, window: &str, spent: u64, cap: u64) -> Alert {
    let usd = |n: u64| n as f64 / 1e9;
    let share = spent as f64 / cap as f64;
    Alert::new(
        AlertKind::SpendThreshold,
        if share >= 1.0 {
            Severity::Critical
        } else {
            Severity::Warning
        },
        format!("{what} {name} {window}"),
        format!(
            "{what} `{name}` spent ${:.2} of its {window} cap of ${:.2} ({:.0}%)",
            usd(spent),
            usd(cap),
            share * 100.0
        ),
    )
    .with_details(json!({
        "of": what,
        "name": name,
        "id": id,
        "window": window,
        "spent_usd": usd(spent),
        "cap_usd": usd(cap),
        "share": share,
    }))
}

/// `3d 4h`, `5h 10m`, `12m`, `40s`.
fn human(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(count: u64, buckets: &[(f64, u64)]) -> Sample {
        Sample {
            ttfb: buckets.to_vec(),
            ttfb_count: count,
            ..Sample::default()
        }
    }

    #[test]
    fn the_median_comes_from_the_observations_between_two_samples() {
        let old = hist(10, &[(1.0, 10), (10.0, 10), (30.0, 10)]);
        // 10 new observations: 2 under 1 s, 8 between 10 s and 30 s.
        let new = hist(20, &[(1.0, 12), (10.0, 12), (30.0, 20)]);
        assert_eq!(median_between(&old, &new), Some(30.0));
        assert_eq!(median_between(&new, &new), None);
        let over = hist(24, &[(1.0, 12), (10.0, 12), (30.0, 20)]);
        assert_eq!(median_between(&new, &over), Some(f64::INFINITY));
    }

    #[test]
    fn durations_read_briefly() {
        assert_eq!(human(40), "40s");
        assert_eq!(human(720), "12m");
        assert_eq!(human(3 * 3600 + 600), "3h 10m");
        assert_eq!(human(2 * 86_400 + 3600), "2d 1h");
    }
}
