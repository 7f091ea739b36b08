//! The Prometheus registry and every metric the relay exports on the admin listener's `/metrics`.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// All metrics of one relay process. Label values come from small closed sets (endpoints,
/// statuses, reasons, token kinds) or from model names the price table knows, so cardinality stays
/// bounded whatever clients send.
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub rejections: IntCounterVec,
    pub upstream_latency: HistogramVec,
    pub upstream_ttfb: HistogramVec,
    pub overhead: HistogramVec,
    pub tokens: IntCounterVec,
    pub cost_usd_nanos: IntCounterVec,
    pub in_flight: IntGauge,
    pub store_latency: HistogramVec,
    pub usage_events_dropped: prometheus::IntCounter,
    /// Priced requests with a part of their usage left unpriced, by that part.
    pub unpriced_usage: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub failovers: IntCounterVec,
    pub account_available: prometheus::IntGaugeVec,
    pub oauth_refreshes: IntCounterVec,
    pub account_utilization: prometheus::GaugeVec,
    /// Client connections closed by the relay's connection limits, by reason.
    pub connections_closed: IntCounterVec,
    /// Billed requests that named a client session, by agent (`main` or `subagent`). Session and
    /// agent ids are never labels: they are unbounded.
    pub session_requests: IntCounterVec,
    /// When the last scheduled backup was written (Unix seconds; 0 before the first).
    pub backup_last_success: IntGauge,
    /// Scheduled backups by result: `ok` or `failed`.
    pub backup_runs: IntCounterVec,
    /// Alerts raised, by event (before deduplication).
    pub alerts: IntCounterVec,
    /// Alert deliveries by webhook name and outcome: ok, failed, dropped, deduplicated,
    /// rate_limited.
    pub alert_deliveries: IntCounterVec,
    /// Request log records by result: `written` (appended to the store), `dropped` (its queue was
    /// full) or `write_failed` (the store refused the batch).
    pub request_log: IntCounterVec,
    /// The allocator's account of the heap, read at every scrape (see [`allocator_bytes`]).
    pub allocator: prometheus::IntGaugeVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
];
const STORE_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "relay_requests_total",
                "Client requests by endpoint and response status",
            ),
            &["endpoint", "status"],
        )?;
        let rejections = IntCounterVec::new(
            Opts::new("relay_rejections_total", "Requests refused by the relay, by reason"),
            &["reason"],
        )?;
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new(
                "relay_upstream_duration_seconds",
                "Time from sending upstream to the end of its response",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["endpoint"],
        )?;
        let upstream_ttfb = HistogramVec::new(
            HistogramOpts::new(
                "relay_upstream_ttfb_seconds",
                "Time from sending upstream to its response head",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["endpoint"],
        )?;
        let overhead = HistogramVec::new(
            HistogramOpts::new(
                "relay_overhead_seconds",
                "Relay's own time per request: total minus upstream time",
            )
            .buckets(OVERHEAD_BUCKETS.to_vec()),
            &["endpoint"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new("relay_tokens_total", "Tokens by kind and model"),
            &["kind", "model"],
        )?;
        let cost_usd_nanos = IntCounterVec::new(
            Opts::new(
                "relay_cost_nano_usd_total",
                "Cost of served requests in nano-USD (1e-9 USD), by model",
            ),
            &["model"],
        )?;
        let in_flight = IntGauge::new("relay_in_flight_requests", "Client requests being served now")?;
        let store_latency = HistogramVec::new(
            HistogramOpts::new("relay_store_duration_seconds", "Latency of store operations")
                .buckets(STORE_BUCKETS.to_vec()),
            &["op"],
        )?;
        let usage_events_dropped = prometheus::IntCounter::new(
            "relay_usage_events_dropped_total",
            "Usage events the statistics pipeline could not take (its queue was full)",
        )?;
        let unpriced_usage = IntCounterVec::new(
            Opts::new(
                "relay_unpriced_usage_total",
                "Requests whose usage reported a part without a price (counted at the price of the rest), by part",
            ),
            &["part"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new("relay_upstream_errors_total", "Upstream failures by class"),
            &["class"],
        )?;
        let failovers = IntCounterVec::new(
            Opts::new(
                "relay_failovers_total",
                "Requests moved to another account, by the reason the account failed",
            ),
            &["reason"],
        )?;
        let account_available = prometheus::IntGaugeVec::new(
            Opts::new(
                "relay_account_state",
                "1 for each account's current state (active, cooling_down, rate_limited, over_quota, unauthorized, blocked, disabled)",
            ),
            &["account", "state"],
        )?;
        let oauth_refreshes = IntCounterVec::new(
            Opts::new(
                "relay_oauth_refreshes_total",
                "OAuth token refreshes by result: ok, refused (the grant is dead; the account leaves the pool) or failed (temporary)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(oauth_refreshes.clone()))?;
        let account_utilization = prometheus::GaugeVec::new(
            Opts::new(
                "relay_account_utilization_ratio",
                "Share of a subscription window used (0 to 1), by account and window (5h, 7d), from the upstream's anthropic-ratelimit-unified-* headers or, without them, the OAuth usage endpoint",
            ),
            &["account", "window"],
        )?;
        registry.register(Box::new(account_utilization.clone()))?;
        registry.register(Box::new(failovers.clone()))?;
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "relay_connections_closed_total",
                "Client connections closed or refused by the connection limits: per_ip, request_head, keepalive_idle, request_body",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(connections_closed.clone()))?;
        let session_requests = IntCounterVec::new(
            Opts::new(
                "relay_session_requests_total",
                "Billed requests that named a client session (Claude Code, Codex), by agent: main (the session's main agent) or subagent",
            ),
            &["agent"],
        )?;
        registry.register(Box::new(session_requests.clone()))?;
        let backup_last_success = IntGauge::new(
            "relay_backup_last_success_timestamp_seconds",
            "When this instance last wrote a scheduled backup (Unix seconds; 0 before the first)",
        )?;
        registry.register(Box::new(backup_last_success.clone()))?;
        let backup_runs = IntCounterVec::new(
            Opts::new(
                "relay_backup_runs_total",
                "Scheduled backups this instance ran, by result: ok or failed",
            ),
            &["result"],
        )?;
        registry.register(Box::new(backup_runs.clone()))?;
        let alerts = IntCounterVec::new(Opts::new("relay_alerts_total", "Alerts raised, by event"), &["event"])?;
        registry.register(Box::new(alerts.clone()))?;
        let alert_deliveries = IntCounterVec::new(
            Opts::new(
                "relay_alert_deliveries_total",
                "Alert deliveries by webhook and outcome: ok, failed (after the retries), dropped (the alert queue was full: webhook `*`), deduplicated, rate_limited",
            ),
            &["webhook", "outcome"],
        )?;
        registry.register(Box::new(alert_deliveries.clone()))?;
        let request_log = IntCounterVec::new(
            Opts::new(
                "relay_request_log_records_total",
                "Request log records by result: written, dropped (the queue was full) or write_failed (the store refused them)",
            ),
            &["result"],
        )?;
        for result in ["written", "dropped", "write_failed"] {
            request_log.with_label_values(&[result]);
        }
        registry.register(Box::new(request_log.clone()))?;
        let allocator = prometheus::IntGaugeVec::new(
            Opts::new(
                "relay_allocator_bytes",
                "The heap as jemalloc counts it: allocated (live objects), active (their pages), resident (pages in RAM, the allocator's own included), retained (address space kept for reuse, not in RAM)",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(allocator.clone()))?;
        registry.register(Box::new(account_available.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(upstream_latency.clone()))?;
        registry.register(Box::new(upstream_ttfb.clone()))?;
        registry.register(Box::new(overhead.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(cost_usd_nanos.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(store_latency.clone()))?;
        registry.register(Box::new(usage_events_dropped.clone()))?;
        registry.register(Box::new(unpriced_usage.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            rejections,
            upstream_latency,
            upstream_ttfb,
            overhead,
            tokens,
            cost_usd_nanos,
            in_flight,
            store_latency,
            usage_events_dropped,
            unpriced_usage,
            upstream_errors,
            failovers,
            account_available,
            oauth_refreshes,
            account_utilization,
            connections_closed,
            session_requests,
            backup_last_success,
            backup_runs,
            alerts,
            alert_deliveries,
            request_log,
            allocator,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        if let Some(bytes) = allocator_bytes() {
            for (kind, v) in bytes {
                self.allocator.with_label_values(&[kind]).set(v as i64);
            }
        }
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for the text format except on invalid metric data.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// jemalloc's heap figures, or None when jemalloc is not the process's allocator (a build with
/// `system-alloc`, or a test binary: nothing was allocated through it).
pub fn allocator_bytes() -> Option<[(&'static str, usize); 4]> {
    use tikv_jemalloc_ctl::{epoch, stats};
    // The figures are a snapshot taken at the last epoch advance.
    epoch::advance().ok()?;
    let allocated = stats::allocated::read().ok()?;
    if allocated == 0 {
        return None;
    }
    Some([
        ("allocated", allocated),
        ("active", stats::active::read().ok()?),
        ("resident", stats::resident::read().ok()?),
        ("retained", stats::retained::read().ok()?),
    ])
}
