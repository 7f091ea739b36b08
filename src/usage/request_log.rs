//! The request log: one metadata record per relayed request, kept in the store's bounded
//! [`LogKind::Requests`] log for the admin API. Never a body, never a credential.
//!
//! The request path hands a [`RequestEntry`] to [`RequestLogSink::push`]: one short lock on a
//! bounded in-memory queue (no channel wake-up, no syscall, as for the usage statistics); when the
//! queue is full the entry is counted as dropped and the request goes on. The
//! [`RequestLogWriter`] takes the queue every [`DRAIN_EVERY`], serialises the entries to JSON and
//! appends them in batches (every [`FLUSH_EVERY`] or [`FLUSH_AT`] records), and trims the log to
//! its retention and cap every [`TRIM_EVERY`]. At shutdown it drains and writes what is left.
//!
//! Across a zero-downtime upgrade on the embedded store (one process at a time may hold it), the
//! old process's writer appends what it has to the store, then, told by
//! [`RequestLogControl::spool_from_now`], writes the records of its last requests to a spool file
//! under `<data_dir>/spool/requests/` (the usage spool's files and locking, see
//! [`crate::usage::stats`]). The writer that holds the store adds such files to the log once their
//! writer is gone (at start, then every [`CLAIM_EVERY`]) and deletes them.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::TokenUsage;
use super::stats::spool;
use crate::metrics::Metrics;
use crate::store::{LogKind, Store};

/// Entries the queue holds between two drains before it drops new ones.
pub const QUEUE_CAPACITY: usize = 64 * 1024;
/// How often the writer takes the queue.
pub const DRAIN_EVERY: Duration = Duration::from_millis(250);
/// The longest a record waits in the writer before it is appended.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Records that make the writer append at once.
pub const FLUSH_AT: usize = 500;
/// How often the log is trimmed to its retention and cap.
pub const TRIM_EVERY: Duration = Duration::from_secs(60);
/// How often a writer that holds the store looks for spool files of processes that are gone.
pub const CLAIM_EVERY: Duration = Duration::from_secs(2);
/// The most records a failed append keeps for the next attempt (older ones are dropped).
const MAX_PENDING: usize = 50_000;
/// The most characters of a client's User-Agent and request id kept.
pub const MAX_USER_AGENT_CHARS: usize = 200;
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// What the request path knows of one finished request.
#[derive(Debug, Clone, Default)]
pub struct RequestEntry {
    /// Unix ms when the request arrived.
    pub started_ms: i64,
    /// The client's `x-request-id`, when it sent a usable one.
    pub request_id: Option<Box<str>>,
    pub key_id: Option<Arc<str>>,
    pub key_name: Option<Arc<str>>,
    pub account_id: Option<Arc<str>>,
    pub account_name: Option<Arc<str>>,
    pub dialect: &'static str,
    pub endpoint: &'static str,
    pub model: Option<Arc<str>>,
    pub upstream_model: Option<Arc<str>>,
    pub stream: bool,
    pub status: u16,
    /// The client went away before the answer ended.
    pub client_disconnected: bool,
    /// The request failed although its status may be 200 (an error event inside a stream).
    pub failed: bool,
    /// Why the relay refused (a [`RelayError`](crate) reason), when it did.
    pub error: Option<&'static str>,
    /// `relay` or `upstream`: the `x-relay-error-source` of the answer.
    pub error_source: Option<&'static str>,
    pub usage: TokenUsage,
    /// `None` when the model has no price (or nothing was billed).
    pub cost_nanos: Option<u64>,
    pub ttfb_ms: Option<u64>,
    pub duration_ms: u64,
    /// Accounts tried before the one that answered.
    pub failover_hops: u16,
    pub user_agent: Option<Box<str>>,
    pub client_ip: Option<IpAddr>,
}

/// How a request ended, as the record says it.
pub mod outcome {
    pub const OK: &str = "ok";
    pub const ERROR: &str = "error";
    pub const CLIENT_DISCONNECTED: &str = "client_disconnected";
}

/// One record of the request log, as stored (JSON) and as the admin API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Unix ms when the request arrived.
    pub at_ms: i64,
    pub request_id: String,
    pub key_id: Option<String>,
    pub key_name: Option<String>,
    pub account_id: Option<String>,
    pub account_name: Option<String>,
    pub dialect: String,
    pub endpoint: String,
    pub model: Option<String>,
    pub upstream_model: Option<String>,
    pub stream: bool,
    pub status: u16,
    /// [`outcome`]: `ok`, `error` or `client_disconnected`.
    pub outcome: String,
    pub error: Option<String>,
    pub error_source: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_5m_tokens: u64,
    pub cache_write_1h_tokens: u64,
    pub reasoning_tokens: u64,
    /// `None` when the model has no price.
    pub cost_usd: Option<f64>,
    pub ttfb_ms: Option<u64>,
    pub duration_ms: u64,
    pub failover_hops: u16,
    pub user_agent: Option<String>,
    pub client_ip: Option<String>,
}

impl RequestEntry {
    /// How the request ended ([`outcome`]).
    pub fn outcome(&self) -> &'static str {
        if self.client_disconnected {
            outcome::CLIENT_DISCONNECTED
        } else if self.failed || self.status >= 400 || self.status == 0 {
            outcome::ERROR
        } else {
            outcome::OK
        }
    }

    /// Gives the entry an id when the client sent none, so the access line and the request log
    /// name the request alike.
    pub fn ensure_request_id(&mut self) {
        if self.request_id.is_none() {
            self.request_id = Some(new_request_id().into());
        }
    }

    /// The access line (`log.access`) to `log`, in the log's format: names, never credentials;
    /// never a body.
    pub fn log_access(&self, log: &crate::logging::AccessLog) {
        use crate::logging::Field::{Bool, F64, Str, U64};
        let ip = self.client_ip.map(|ip| ip.to_string());
        log.write(
            "request",
            &[
                ("request_id", self.request_id.as_deref().map(Str)),
                ("key_name", self.key_name.as_deref().map(Str)),
                ("account_name", self.account_name.as_deref().map(Str)),
                ("dialect", Some(Str(self.dialect))),
                ("endpoint", Some(Str(self.endpoint))),
                ("model", self.model.as_deref().map(Str)),
                ("upstream_model", self.upstream_model.as_deref().map(Str)),
                ("stream", Some(Bool(self.stream))),
                ("status", Some(U64(self.status.into()))),
                ("outcome", Some(Str(self.outcome()))),
                ("error", self.error.map(Str)),
                ("error_source", self.error_source.map(Str)),
                ("input_tokens", Some(U64(self.usage.input))),
                ("cache_read_tokens", Some(U64(self.usage.cache_read))),
                (
                    "cache_write_tokens",
                    Some(U64(self.usage.cache_write_5m.saturating_add(self.usage.cache_write_1h))),
                ),
                ("output_tokens", Some(U64(self.usage.output))),
                ("cost_usd", self.cost_nanos.map(|n| F64(n as f64 / 1e9))),
                ("ttfb_ms", self.ttfb_ms.map(U64)),
                ("latency_ms", Some(U64(self.duration_ms))),
                ("failover_hops", Some(U64(self.failover_hops.into()))),
                ("client_ip", ip.as_deref().map(Str)),
            ],
        );
    }
}

/// `req_` and 32 hex digits: a random number drawn once per process, then a counter (no system
/// call per request, and unique across processes and restarts).
fn new_request_id() -> String {
    static PREFIX: LazyLock<u64> = LazyLock::new(|| uuid::Uuid::new_v4().as_u64_pair().0);
    static NEXT: AtomicU64 = AtomicU64::new(0);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(36);
    id.push_str("req_");
    for n in [*PREFIX, NEXT.fetch_add(1, Ordering::Relaxed)] {
        id.extend((0..16).rev().map(|i| char::from(HEX[((n >> (i * 4)) & 0xf) as usize])));
    }
    id
}

/// An entry as the log stores it: the JSON of its [`RequestRecord`], written straight from the
/// entry (no record of owned strings built first).
struct Stored<'a>(&'a RequestEntry);

impl Serialize for Stored<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        /// An address as its text, formatted into the output.
        struct Text<'a, T: std::fmt::Display>(&'a T);
        impl<T: std::fmt::Display> Serialize for Text<'_, T> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self.0)
            }
        }
        let e = self.0;
        // The fields of `RequestRecord`, in its order.
        let mut r = s.serialize_struct("RequestRecord", 27)?;
        r.serialize_field("at_ms", &e.started_ms)?;
        match &e.request_id {
            Some(id) => r.serialize_field("request_id", id)?,
            None => r.serialize_field("request_id", &new_request_id())?,
        }
        r.serialize_field("key_id", &e.key_id.as_deref())?;
        r.serialize_field("key_name", &e.key_name.as_deref())?;
        r.serialize_field("account_id", &e.account_id.as_deref())?;
        r.serialize_field("account_name", &e.account_name.as_deref())?;
        r.serialize_field("dialect", e.dialect)?;
        r.serialize_field("endpoint", e.endpoint)?;
        r.serialize_field("model", &e.model.as_deref())?;
        r.serialize_field("upstream_model", &e.upstream_model.as_deref())?;
        r.serialize_field("stream", &e.stream)?;
        r.serialize_field("status", &e.status)?;
        r.serialize_field("outcome", e.outcome())?;
        r.serialize_field("error", &e.error)?;
        r.serialize_field("error_source", &e.error_source)?;
        r.serialize_field("input_tokens", &e.usage.input)?;
        r.serialize_field("output_tokens", &e.usage.output)?;
        r.serialize_field("cache_read_tokens", &e.usage.cache_read)?;
        r.serialize_field("cache_write_5m_tokens", &e.usage.cache_write_5m)?;
        r.serialize_field("cache_write_1h_tokens", &e.usage.cache_write_1h)?;
        r.serialize_field("reasoning_tokens", &e.usage.reasoning)?;
        r.serialize_field("cost_usd", &e.cost_nanos.map(|n| n as f64 / 1e9))?;
        r.serialize_field("ttfb_ms", &e.ttfb_ms)?;
        r.serialize_field("duration_ms", &e.duration_ms)?;
        r.serialize_field("failover_hops", &e.failover_hops)?;
        r.serialize_field("user_agent", &e.user_agent)?;
        r.serialize_field("client_ip", &e.client_ip.as_ref().map(Text))?;
        r.end()
    }
}

/// A client-supplied string kept in a record: printable ASCII only, at most `max` characters.
pub fn client_text(v: &[u8], max: usize) -> Option<Box<str>> {
    let v = &v[..v.len().min(max)];
    if v.is_empty() || !v.iter().all(|b| (0x20..0x7f).contains(b)) {
        return None;
    }
    std::str::from_utf8(v).ok().map(Into::into)
}

/// The request path's handle. Cheap to clone; when the log is off it holds nothing and `push`
/// does nothing.
#[derive(Clone)]
pub struct RequestLogSink {
    queue: Option<Arc<Mutex<Vec<RequestEntry>>>>,
    metrics: Arc<Metrics>,
}

impl RequestLogSink {
    /// A sink that records nothing (`request_log.enabled: false`).
    pub fn off(metrics: Arc<Metrics>) -> Self {
        RequestLogSink { queue: None, metrics }
    }

    pub fn is_on(&self) -> bool {
        self.queue.is_some()
    }

    /// Hands one entry to the writer; never blocks on I/O and never fails the request.
    pub fn push(&self, entry: RequestEntry) {
        let Some(queue) = &self.queue else { return };
        let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() < QUEUE_CAPACITY {
            q.push(entry);
            return;
        }
        drop(q);
        self.metrics.request_log.with_label_values(&["dropped"]).inc();
    }
    /// Drops every queued entry: a benchmark of [`RequestLogSink::push`] keeps the queue below
    /// its bound with it.
    pub fn clear_queue(&self) {
        if let Some(queue) = &self.queue {
            queue.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}

/// How long records are kept and how many.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_records: u64,
}

/// Writes queued entries to the store and trims the log.
pub struct RequestLogWriter {
    queue: Arc<Mutex<Vec<RequestEntry>>>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    retention: Retention,
    /// Serialised records not yet appended: `(at_ms, json)`.
    pending: Vec<(i64, String)>,
    commands: mpsc::UnboundedReceiver<Command>,
    control: RequestLogControl,
    /// Where spool files are written and looked for (none: no spool).
    spool_dir: Option<PathBuf>,
    /// Set once the store was handed over: records go to this file instead.
    spool: Option<spool::SpoolWriter>,
}

enum Command {
    /// Append everything to the store, then send later records to the spool.
    Spool(oneshot::Sender<()>),
}

/// Tells a running writer that the store is about to be handed over.
#[derive(Clone)]
pub struct RequestLogControl(mpsc::UnboundedSender<Command>);

impl RequestLogControl {
    /// Appends what the writer has to the store, then makes it write every later record to a
    /// spool file (see the module's documentation); returns once it has switched.
    pub async fn spool_from_now(&self) {
        let (done_tx, done) = oneshot::channel();
        if self.0.send(Command::Spool(done_tx)).is_ok() {
            let _ = done.await;
        }
    }
}

/// One line of a request-log spool file.
#[derive(Serialize, Deserialize)]
struct SpooledRecord {
    at_ms: i64,
    record: Box<RawValue>,
}

/// The sink and its writer.
pub fn pipeline(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    retention: Retention,
) -> (RequestLogSink, RequestLogWriter) {
    let queue = Arc::new(Mutex::new(Vec::with_capacity(1024)));
    let (commands_tx, commands) = mpsc::unbounded_channel();
    (
        RequestLogSink {
            queue: Some(queue.clone()),
            metrics: metrics.clone(),
        },
        RequestLogWriter {
            queue,
            store,
            metrics,
            retention,
            pending: Vec::new(),
            commands,
            control: RequestLogControl(commands_tx),
            spool_dir: None,
            spool: None,
        },
    )
}

impl RequestLogWriter {
    /// Enables the spool in `dir` (the embedded store): [`RequestLogControl::spool_from_now`]
    /// writes there, and the writer adds the files whose writer is gone to the log.
    pub fn with_spool_dir(mut self, dir: PathBuf) -> Self {
        self.spool_dir = Some(dir);
        self
    }

    /// The handle that moves this writer to the spool.
    pub fn control(&self) -> RequestLogControl {
        self.control.clone()
    }

    /// Runs until `stop` is cancelled, then writes what is queued and returns.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_flush = Instant::now();
        // Trimmed soon after start (a lowered cap or retention applies at once), then every
        // TRIM_EVERY (more often for a short retention), and whenever a tenth of the cap was
        // appended since (so a small cap holds between two trims).
        let trim_every = (self.retention.max_age / 4).clamp(Duration::from_secs(1), TRIM_EVERY);
        let trim_after = self.retention.max_records / 10 + 1;
        let mut next_trim = Instant::now() + Duration::from_secs(5).min(trim_every);
        let mut appended_since_trim = 0u64;
        let mut spare = Vec::with_capacity(1024);
        let mut claim = tokio::time::interval(CLAIM_EVERY);
        claim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(Command::Spool(done)) = self.commands.recv() => {
                    self.start_spooling(&mut spare).await;
                    let _ = done.send(());
                    continue;
                }
                _ = claim.tick(), if self.spool_dir.is_some() && self.spool.is_none() => {
                    self.claim_abandoned().await;
                    continue;
                }
                _ = drain.tick() => {}
            }
            self.take(&mut spare);
            if self.pending.len() >= FLUSH_AT || (!self.pending.is_empty() && last_flush.elapsed() >= FLUSH_EVERY) {
                appended_since_trim += self.flush().await;
                last_flush = Instant::now();
            }
            if self.spool.is_none() && (Instant::now() >= next_trim || appended_since_trim >= trim_after) {
                self.trim().await;
                appended_since_trim = 0;
                next_trim = Instant::now() + trim_every;
            }
        }
        self.take(&mut spare);
        self.flush().await;
        if let Some(spool) = self.spool.take()
            && let Err(e) = spool.finish()
        {
            tracing::warn!(error = %e, "cannot sync the request log spool");
        }
    }

    /// Appends what is queued to the store, then sends every later record to a new spool file.
    async fn start_spooling(&mut self, spare: &mut Vec<RequestEntry>) {
        let Some(dir) = self.spool_dir.clone() else {
            return;
        };
        if self.spool.is_some() {
            return;
        }
        self.take(spare);
        self.flush().await;
        match spool::SpoolWriter::create(&dir) {
            Ok(w) => {
                tracing::info!(path = %w.path().display(), "request log records now go to the spool");
                self.spool = Some(w);
            }
            Err(e) => {
                tracing::error!(error = %e, dir = %dir.display(), "cannot create the request log spool; the records of the last requests may be lost")
            }
        }
    }

    /// Adds to the log the spool files whose writer is gone, and deletes them.
    async fn claim_abandoned(&mut self) {
        let Some(dir) = self.spool_dir.clone() else {
            return;
        };
        let claimed = tokio::task::spawn_blocking(move || spool::claim_abandoned::<SpooledRecord>(&dir))
            .await
            .unwrap_or_default();
        for mut file in claimed {
            let records: Vec<(i64, String)> = file
                .take_lines()
                .into_iter()
                .map(|l| (l.at_ms, l.record.get().to_owned()))
                .collect();
            let mut added = 0;
            for chunk in records.chunks(FLUSH_AT) {
                if let Err(e) = self.store.append_log(LogKind::Requests, chunk).await {
                    // The file stays (its lock goes with `file`) and is tried again later.
                    tracing::warn!(error = %e, path = %file.path().display(), "cannot add a request log spool file yet");
                    break;
                }
                added += chunk.len();
            }
            self.metrics
                .request_log
                .with_label_values(&["written"])
                .inc_by(added as u64);
            if added < records.len() {
                continue;
            }
            let path = file.path().display().to_string();
            match file.remove() {
                Ok(()) => tracing::info!(path, records = added, "request log spool file added"),
                Err(e) => tracing::warn!(error = %e, path, "cannot delete an added request log spool file"),
            }
        }
    }

    /// Moves the queue's entries into `pending`, as JSON.
    fn take(&mut self, spare: &mut Vec<RequestEntry>) {
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *q, spare);
        }
        for entry in spare.drain(..) {
            match serde_json::to_string(&Stored(&entry)) {
                Ok(json) => self.pending.push((entry.started_ms, json)),
                Err(e) => {
                    self.metrics.request_log.with_label_values(&["write_failed"]).inc();
                    tracing::warn!(error = %e, "a request log record cannot be serialised");
                }
            }
        }
        if self.pending.len() > MAX_PENDING {
            let over = self.pending.len() - MAX_PENDING;
            self.pending.drain(..over);
            self.metrics
                .request_log
                .with_label_values(&["dropped"])
                .inc_by(over as u64);
        }
    }

    /// Appends what is pending (to the spool once the store was handed over); returns how many
    /// records were written.
    async fn flush(&mut self) -> u64 {
        if let Some(spool) = self.spool.as_mut() {
            let n = self.pending.len();
            let lines = self.pending.iter().filter_map(|(at_ms, json)| {
                Some(SpooledRecord {
                    at_ms: *at_ms,
                    record: RawValue::from_string(json.clone()).ok()?,
                })
            });
            return match spool.append(lines) {
                Ok(()) => {
                    self.pending.clear();
                    self.metrics
                        .request_log
                        .with_label_values(&["spooled"])
                        .inc_by(n as u64);
                    n as u64
                }
                Err(e) => {
                    tracing::warn!(error = %e, records = n, path = %spool.path().display(), "cannot write the request log spool; will retry");
                    0
                }
            };
        }
        let mut written = 0;
        while !self.pending.is_empty() {
            let n = self.pending.len().min(FLUSH_AT);
            match self.store.append_log(LogKind::Requests, &self.pending[..n]).await {
                Ok(()) => {
                    self.pending.drain(..n);
                    written += n as u64;
                    self.metrics
                        .request_log
                        .with_label_values(&["written"])
                        .inc_by(n as u64);
                }
                Err(e) => {
                    // Kept for the next flush (bounded by MAX_PENDING).
                    self.metrics
                        .request_log
                        .with_label_values(&["write_failed"])
                        .inc_by(n as u64);
                    tracing::warn!(error = %e, records = n, "appending to the request log failed");
                    return written;
                }
            }
        }
        written
    }

    async fn trim(&self) {
        let age = i64::try_from(self.retention.max_age.as_millis()).unwrap_or(i64::MAX);
        let min_at_ms = chrono::Utc::now().timestamp_millis().saturating_sub(age);
        match self
            .store
            .trim_log(LogKind::Requests, min_at_ms, self.retention.max_records)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "request log trimmed"),
            Err(e) => tracing::warn!(error = %e, "trimming the request log failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_text_is_printable_and_bounded() {
        assert_eq!(client_text(b"curl/8.0", 200).as_deref(), Some("curl/8.0"));
        assert_eq!(client_text(&[b'a'; 300], 200).map(|s| s.len()), Some(200));
        assert_eq!(client_text(b"a\nb", 200), None);
        assert_eq!(client_text("é".as_bytes(), 200), None);
        assert_eq!(client_text(b"", 200), None);
    }

    /// The record the log stores for `e`, as the admin API reads it back.
    fn stored(e: &RequestEntry) -> RequestRecord {
        serde_json::from_str(&serde_json::to_string(&Stored(e)).unwrap()).unwrap()
    }

    #[test]
    fn records_say_how_the_request_ended() {
        let base = RequestEntry {
            status: 200,
            ..Default::default()
        };
        assert_eq!(stored(&base).outcome, "ok");
        let failed = RequestEntry {
            failed: true,
            ..base.clone()
        };
        assert_eq!(stored(&failed).outcome, "error");
        let gone = RequestEntry {
            client_disconnected: true,
            ..base.clone()
        };
        assert_eq!(stored(&gone).outcome, "client_disconnected");
        let r = stored(&base);
        assert!(
            r.request_id.starts_with("req_")
                && r.request_id.len() == 36
                && r.request_id[4..]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{}",
            r.request_id
        );
        assert_ne!(
            stored(&base).request_id,
            r.request_id,
            "each record gets an id of its own"
        );
    }

    /// The stored JSON is exactly what `RequestRecord` writes: every field, in its order, with
    /// its value (a field the entry's serialiser left out would read back as null and be written
    /// here; one misnamed would not read back at all).
    #[test]
    fn a_stored_entry_is_the_json_of_its_record() {
        let full = RequestEntry {
            started_ms: 1_765_000_000_123,
            request_id: Some("client-\"id\"".into()),
            key_id: Some("k1".into()),
            key_name: Some("team \u{e9}".into()),
            account_id: Some("a1".into()),
            account_name: Some("main".into()),
            dialect: "anthropic",
            endpoint: "messages",
            model: Some("claude-sonnet-4-5".into()),
            upstream_model: Some("claude-sonnet-4-5-20250929".into()),
            stream: true,
            status: 529,
            client_disconnected: false,
            failed: true,
            error: Some("overloaded"),
            error_source: Some("upstream"),
            usage: TokenUsage {
                input: 11,
                output: 22,
                cache_read: 33,
                cache_write_5m: 44,
                cache_write_1h: 55,
                reasoning: 66,
                ..Default::default()
            },
            cost_nanos: Some(1_234_567),
            ttfb_ms: Some(120),
            duration_ms: 4500,
            failover_hops: 2,
            user_agent: Some("claude-cli/2.0".into()),
            client_ip: Some("2001:db8::1".parse().unwrap()),
        };
        for e in [full, RequestEntry::default()] {
            let json = serde_json::to_string(&Stored(&e)).unwrap();
            let record: RequestRecord = serde_json::from_str(&json).unwrap();
            assert_eq!(serde_json::to_string(&record).unwrap(), json);
        }
        let r = stored(&RequestEntry {
            client_ip: Some("10.0.0.7".parse().unwrap()),
            cost_nanos: Some(2_500_000_000),
            ..Default::default()
        });
        assert_eq!(r.client_ip.as_deref(), Some("10.0.0.7"));
        assert_eq!(r.cost_usd, Some(2.5));
    }
}
