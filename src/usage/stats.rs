//! Usage statistics: events from finished requests are aggregated in memory and written to the
//! store in batches, off the request path.
//!
//! The request path only pushes onto a bounded in-memory queue ([`UsageSink`]): no channel wake-up,
//! no syscall, so a busy relay does not pay a cross-thread wake-up per request. The
//! [`StatsWriter`] takes the queue every 100 ms, folds events per (minute, key, account, model) and,
//! every flush interval,
//! expands them into the minute/hour/day/month/total buckets of each dimension and writes them in
//! one batch. A failed write keeps the pending counters for the next attempt. On shutdown the writer
//! drains the queue and flushes once more, so usage that reached the relay is not lost.
//!
//! Requests that name a client session ([`super::sessions`]) are also folded per (key, session),
//! by model and by agent, and written with one store call per flush
//! ([`Store::add_session_usage`]), bounded by [`StatsWriter::with_sessions`]'s limits.
//!
//! During a zero-downtime upgrade with the embedded store (one process at a time), the old process
//! writes what it has to the store and then switches the writer to the usage spool ([`spool`]):
//! the usage of its last requests is appended to a file under the data directory, which the new
//! process (or any later start) adds to the store once the old process is gone.

pub(crate) mod spool;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::store::{AgentUsage, BucketKey, Dimension, Granularity, SessionBounds, SessionUsage, Store, UsageCounters};
use crate::usage::UsageEvent;

/// Capacity of the queue between requests and the writer (events between two drains).
pub const QUEUE_CAPACITY: usize = 1 << 20;
/// How often the writer takes the queue.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// How often the writer looks for spool files left by processes that are gone.
const INGEST_EVERY: Duration = Duration::from_secs(2);
/// Model names a client may add to the statistics per UTC day (per process) that neither the
/// price table nor an account's configuration knows; later ones are counted under
/// [`OTHER_MODEL`]. Keeps the store and the usage summary bounded whatever clients send.
pub const MAX_UNKNOWN_MODELS_PER_DAY: usize = 100;
/// The model dimension's bucket for names beyond [`MAX_UNKNOWN_MODELS_PER_DAY`].
pub const OTHER_MODEL: &str = "other";

/// The request path's handle: never blocks on I/O, never fails the request.
#[derive(Clone)]
pub struct UsageSink {
    queue: Arc<Mutex<Vec<UsageEvent>>>,
    metrics: Arc<Metrics>,
}

impl UsageSink {
    pub fn record(&self, ev: UsageEvent) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() < QUEUE_CAPACITY {
            q.push(ev);
            return;
        }
        drop(q);
        self.metrics.usage_events_dropped.inc();
        tracing::error!("usage event dropped: statistics queue full (is the store down?)");
    }
}

#[derive(Hash, PartialEq, Eq)]
struct Fold {
    minute: i64,
    key: Arc<str>,
    account: Option<Arc<str>>,
    model: Arc<str>,
}

/// A client session of a key.
type SessionKey = (Arc<str>, Arc<str>);

/// Events folded per (minute, key, account, model), plus the last use of each key and, when
/// sessions are recorded, the usage per (key, session).
#[derive(Default)]
struct Folder {
    folded: HashMap<Fold, UsageCounters>,
    /// `None`: sessions are not recorded.
    sessions: Option<HashMap<SessionKey, SessionUsage>>,
    last_used: HashMap<Arc<str>, i64>,
    /// Model names recorded as themselves on `unknown_day` that nothing vouches for.
    unknown_models: std::collections::HashSet<Arc<str>>,
    unknown_day: i64,
}

impl Folder {
    fn recording_sessions() -> Self {
        Folder {
            sessions: Some(HashMap::new()),
            ..Default::default()
        }
    }

    fn fold(&mut self, ev: UsageEvent) {
        let c = counters_of(&ev);
        let slot = self.last_used.entry(ev.key_id.clone()).or_insert(ev.at);
        *slot = (*slot).max(ev.at);
        let model = self.model_dimension(&ev);
        if let (Some(sessions), Some(tag)) = (self.sessions.as_mut(), ev.session.as_ref()) {
            let mut delta = SessionUsage::new(&ev.key_id, &tag.id, ev.at);
            delta.models.insert(model.to_string(), c);
            match &tag.agent {
                None => delta.main = c,
                Some(agent) => {
                    delta.agents.insert(
                        agent.to_string(),
                        AgentUsage {
                            parent: tag.parent.as_deref().map(str::to_string),
                            first_seen: ev.at,
                            last_seen: ev.at,
                            usage: c,
                        },
                    );
                }
            }
            sessions
                .entry((ev.key_id.clone(), tag.id.clone()))
                .or_insert_with(|| SessionUsage::new(&ev.key_id, &tag.id, ev.at))
                .merge(&delta);
        }
        let key = Fold {
            minute: Granularity::Minute.bucket_start(ev.at),
            key: ev.key_id,
            account: ev.account_id,
            model,
        };
        self.folded.entry(key).or_default().add(&c);
    }

    /// The model name to record: itself when the price table or the serving account knows it,
    /// or while fewer than [`MAX_UNKNOWN_MODELS_PER_DAY`] unknown names were seen today; else
    /// [`OTHER_MODEL`].
    fn model_dimension(&mut self, ev: &UsageEvent) -> Arc<str> {
        if ev.cost_nanos.is_some() || ev.model_known {
            return ev.model.clone();
        }
        let day = Granularity::Day.bucket_start(ev.at);
        if day != self.unknown_day {
            self.unknown_day = day;
            self.unknown_models.clear();
        }
        if self.unknown_models.contains(&ev.model) {
            return ev.model.clone();
        }
        if self.unknown_models.len() < MAX_UNKNOWN_MODELS_PER_DAY {
            self.unknown_models.insert(ev.model.clone());
            return ev.model.clone();
        }
        OTHER_MODEL.into()
    }

    /// Takes the sessions folded so far, adding them to `out`.
    fn take_sessions_into(&mut self, out: &mut HashMap<SessionKey, SessionUsage>) {
        if let Some(sessions) = self.sessions.as_mut() {
            for (k, s) in sessions.drain() {
                match out.get_mut(&k) {
                    Some(pending) => pending.merge(&s),
                    None => {
                        out.insert(k, s);
                    }
                }
            }
        }
    }

    /// Expands the folded events into every bucket they touch, adding them to `out`.
    fn expand_into(&mut self, out: &mut HashMap<BucketKey, UsageCounters>) {
        for (f, c) in self.folded.drain() {
            let mut subjects: Vec<(Dimension, &str)> = vec![(Dimension::Key, &f.key), (Dimension::Model, &f.model)];
            if let Some(a) = &f.account {
                subjects.push((Dimension::Account, a));
            }
            let key_model = Dimension::key_model_subject(&f.key, &f.model);
            subjects.push((Dimension::KeyModel, &key_model));
            for (dimension, subject) in subjects {
                for granularity in Granularity::ALL {
                    // Per key and model, minutes would multiply the writes for no view that uses them.
                    if dimension == Dimension::KeyModel && granularity == Granularity::Minute {
                        continue;
                    }
                    let k = BucketKey {
                        dimension,
                        subject: subject.to_string(),
                        granularity,
                        start: granularity.bucket_start(f.minute),
                    };
                    out.entry(k).or_default().add(&c);
                }
            }
        }
    }
}

/// Folds usage events and writes them to the store.
pub struct StatsWriter {
    queue: Arc<Mutex<Vec<UsageEvent>>>,
    spare: Vec<UsageEvent>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    interval: Duration,
    folder: Folder,
    /// Buckets whose write failed, retried at the next flush.
    retry: HashMap<BucketKey, UsageCounters>,
    /// How client sessions are bounded; `None`: they are not recorded.
    session_bounds: Option<SessionBounds>,
    /// Sessions whose write failed, retried at the next flush.
    retry_sessions: HashMap<SessionKey, SessionUsage>,
    /// Where spool files are written and looked for (none: no spool).
    spool_dir: Option<PathBuf>,
    /// Set once the store was handed over: events go to this file instead of the store.
    spool: Option<spool::SpoolWriter>,
    /// Events whose spool write failed, written with the next batch.
    unspooled: Vec<UsageEvent>,
}

enum Command {
    /// Write everything to the store, then send later events to the spool.
    Spool(oneshot::Sender<()>),
    /// Drain, write, and stop.
    Stop(oneshot::Sender<()>),
}

/// Controls a running writer: stop it, or move it to the spool before the store is handed over.
#[derive(Clone)]
pub struct StatsStop(mpsc::UnboundedSender<Command>);

impl StatsStop {
    /// Waits until the final flush is done (or the writer is gone).
    pub async fn stop(self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.0.send(Command::Stop(done_tx)).is_ok() {
            let _ = done_rx.await;
        }
    }

    /// Writes everything received so far to the store, then appends every later event to a spool
    /// file instead (see [`StatsWriter::with_spool_dir`]), so that the store can be released to
    /// another process. Returns once the store is no longer written to.
    pub async fn spool_from_now(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.0.send(Command::Spool(done_tx)).is_ok() {
            let _ = done_rx.await;
        }
    }
}

/// Creates the sink and its writer. Start the writer with [`StatsWriter::start`].
pub fn pipeline(store: Arc<dyn Store>, metrics: Arc<Metrics>, interval: Duration) -> (UsageSink, StatsWriter) {
    let queue = Arc::new(Mutex::new(Vec::with_capacity(1024)));
    (
        UsageSink {
            queue: queue.clone(),
            metrics: metrics.clone(),
        },
        StatsWriter {
            queue,
            spare: Vec::with_capacity(1024),
            store,
            metrics,
            interval,
            folder: Folder::default(),
            retry: HashMap::new(),
            session_bounds: None,
            retry_sessions: HashMap::new(),
            spool_dir: None,
            spool: None,
            unspooled: Vec::new(),
        },
    )
}

fn counters_of(ev: &UsageEvent) -> UsageCounters {
    UsageCounters {
        requests: 1,
        errors: u64::from(ev.is_error),
        input_tokens: ev.usage.input,
        output_tokens: ev.usage.output,
        cache_read_tokens: ev.usage.cache_read,
        cache_write_5m_tokens: ev.usage.cache_write_5m,
        cache_write_1h_tokens: ev.usage.cache_write_1h,
        cost_nanos: ev.cost_nanos.unwrap_or(0),
        unpriced_requests: u64::from(ev.cost_nanos.is_none()),
        partly_priced_requests: u64::from(ev.cost_nanos.is_some() && !ev.unpriced.is_empty()),
        fast_requests: u64::from(ev.usage.billing.speed == crate::usage::Speed::Fast),
        web_search_requests: ev.usage.billing.web_searches,
    }
}

impl StatsWriter {
    /// Enables the spool in `dir`: [`StatsStop::spool_from_now`] writes there, and the writer adds
    /// to the store (at start, then every few seconds) the spool files whose writer is gone.
    pub fn with_spool_dir(mut self, dir: PathBuf) -> Self {
        self.spool_dir = Some(dir);
        self
    }

    /// Records usage per client session too, within `bounds` (see [`SessionBounds`]).
    pub fn with_sessions(mut self, bounds: SessionBounds) -> Self {
        self.session_bounds = Some(bounds);
        self.folder = Folder::recording_sessions();
        self
    }

    /// A folder that records sessions when this writer does.
    fn new_folder(&self) -> Folder {
        if self.session_bounds.is_some() {
            Folder::recording_sessions()
        } else {
            Folder::default()
        }
    }

    /// Writes the pending client sessions; on failure keeps them for the next flush.
    async fn flush_sessions(&mut self) {
        let Some(bounds) = self.session_bounds else {
            return;
        };
        let mut pending = std::mem::take(&mut self.retry_sessions);
        self.folder.take_sessions_into(&mut pending);
        if pending.is_empty() {
            return;
        }
        let batch: Vec<SessionUsage> = pending.into_values().collect();
        let t = Instant::now();
        let res = self
            .store
            .add_session_usage(&batch, bounds, chrono::Utc::now().timestamp())
            .await;
        self.metrics
            .store_latency
            .with_label_values(&["add_session_usage"])
            .observe(t.elapsed().as_secs_f64());
        if let Err(e) = res {
            tracing::warn!(error = %e, sessions = batch.len(), "client session usage write failed; will retry");
            for s in batch {
                let k: SessionKey = (s.key_id.as_str().into(), s.session_id.as_str().into());
                match self.retry_sessions.get_mut(&k) {
                    Some(pending) => pending.merge(&s),
                    None => {
                        self.retry_sessions.insert(k, s);
                    }
                }
            }
        }
    }

    /// Takes everything queued so far (swapping buffers, so the lock is held for an instant).
    fn drain(&mut self) {
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *q, &mut self.spare);
        }
        let mut batch = std::mem::take(&mut self.spare);
        if self.spool.is_some() {
            self.unspooled.append(&mut batch);
            self.spare = batch;
            self.write_spool();
            return;
        }
        for ev in batch.drain(..) {
            self.folder.fold(ev);
        }
        self.spare = batch;
    }

    /// Appends the events not yet spooled to the spool file (kept for the next try on failure).
    fn write_spool(&mut self) {
        let Some(spool) = self.spool.as_mut() else {
            return;
        };
        if self.unspooled.is_empty() {
            return;
        }
        let lines = self.unspooled.iter().map(spool::Line::event);
        match spool.append(lines) {
            Ok(()) => self.unspooled.clear(),
            Err(e) => tracing::error!(
                error = %e,
                path = %spool.path().display(),
                events = self.unspooled.len(),
                "cannot write the usage spool; will retry"
            ),
        }
    }

    async fn flush(&mut self) {
        if self.spool.is_some() {
            return;
        }
        let mut buckets = std::mem::take(&mut self.retry);
        self.folder.expand_into(&mut buckets);
        if !buckets.is_empty() {
            let batch: Vec<(BucketKey, UsageCounters)> = buckets.into_iter().collect();
            let t = Instant::now();
            let res = self.store.add_usage(&batch).await;
            self.metrics
                .store_latency
                .with_label_values(&["add_usage"])
                .observe(t.elapsed().as_secs_f64());
            if let Err(e) = res {
                tracing::warn!(error = %e, buckets = batch.len(), "usage write failed; will retry");
                for (k, c) in batch {
                    self.retry.entry(k).or_default().add(&c);
                }
            }
        }
        self.flush_sessions().await;
        if !self.folder.last_used.is_empty() {
            let uses: Vec<(String, i64)> = self.folder.last_used.drain().map(|(k, t)| (k.to_string(), t)).collect();
            let t = Instant::now();
            let res = self.store.touch_api_keys(&uses).await;
            self.metrics
                .store_latency
                .with_label_values(&["touch_keys"])
                .observe(t.elapsed().as_secs_f64());
            if let Err(e) = res {
                tracing::warn!(error = %e, "key last-used write failed; will retry");
                for (k, t) in uses {
                    self.folder.last_used.insert(k.into(), t);
                }
            }
        }
    }

    /// Writes what is pending to the store, then switches to the spool.
    async fn start_spooling(&mut self) {
        if self.spool.is_some() {
            return;
        }
        let Some(dir) = self.spool_dir.clone() else {
            tracing::warn!("no spool directory: usage keeps going to the store");
            return;
        };
        self.drain();
        self.flush().await;
        let mut spool = match spool::SpoolWriter::create(&dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, dir = %dir.display(), "cannot create a usage spool file; usage of the requests still running will be lost");
                return;
            }
        };
        // Buckets the store refused just now travel through the spool too.
        let retry = std::mem::take(&mut self.retry);
        if !retry.is_empty() {
            let n = retry.len();
            if let Err(e) = spool.append(retry.iter().map(|(k, c)| spool::Line::bucket(k, c))) {
                tracing::error!(error = %e, buckets = n, "cannot spool unwritten usage buckets; they are lost");
            }
        }
        self.folder.last_used.clear();
        if !self.retry_sessions.is_empty() {
            tracing::error!(
                sessions = self.retry_sessions.len(),
                "client session usage the store refused before the hand-over is lost (the statistics keep it)"
            );
            self.retry_sessions.clear();
        }
        tracing::info!(path = %spool.path().display(), "usage statistics now go to the spool");
        self.spool = Some(spool);
    }

    /// Adds the spool files of processes that are gone to the store, then deletes them.
    async fn ingest_spool(&mut self) {
        let Some(dir) = self.spool_dir.as_deref() else {
            return;
        };
        if self.spool.is_some() {
            return;
        }
        let sessions = self.session_bounds;
        for mut claimed in spool::claim_abandoned::<spool::Line>(dir) {
            let mut folder = self.new_folder();
            let mut buckets: HashMap<BucketKey, UsageCounters> = HashMap::new();
            let mut events = 0usize;
            for line in claimed.take_lines() {
                match line.into_parts() {
                    spool::Parts::Event(ev) => {
                        events += 1;
                        folder.fold(ev);
                    }
                    spool::Parts::Bucket(k, c) => buckets.entry(k).or_default().add(&c),
                }
            }
            folder.expand_into(&mut buckets);
            let batch: Vec<(BucketKey, UsageCounters)> = buckets.into_iter().collect();
            if let Err(e) = self.store.add_usage(&batch).await {
                // The file stays; the next round tries again.
                tracing::warn!(error = %e, path = %claimed.path().display(), "cannot add a usage spool file to the store; will retry");
                continue;
            }
            let uses: Vec<(String, i64)> = folder.last_used.drain().map(|(k, t)| (k.to_string(), t)).collect();
            if let Err(e) = self.store.touch_api_keys(&uses).await {
                tracing::warn!(error = %e, "key last-used write failed for spooled usage");
            }
            if let Some(bounds) = sessions {
                let mut pending = HashMap::new();
                folder.take_sessions_into(&mut pending);
                let batch: Vec<SessionUsage> = pending.into_values().collect();
                let now = chrono::Utc::now().timestamp();
                if let Err(e) = self.store.add_session_usage(&batch, bounds, now).await {
                    tracing::warn!(error = %e, "client session usage write failed for spooled usage");
                }
            }
            let path = claimed.path().to_path_buf();
            match claimed.remove() {
                Ok(()) => tracing::info!(path = %path.display(), events, "usage spool file added to the statistics"),
                Err(e) => {
                    tracing::error!(error = %e, path = %path.display(), "usage spool file added to the statistics but not deleted: delete it by hand, or it is counted again")
                }
            }
        }
    }

    /// Runs until stopped through the returned handle; then drains the queue and flushes.
    pub fn start(self, rt: &tokio::runtime::Handle) -> (StatsStop, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = rt.spawn(self.run(rx));
        (StatsStop(tx), handle)
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut flush = tokio::time::interval(self.interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain = tokio::time::interval(DRAIN_EVERY.min(self.interval));
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ingest = tokio::time::interval(INGEST_EVERY);
        ingest.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let done = loop {
            tokio::select! {
                _ = drain.tick() => self.drain(),
                _ = flush.tick() => {
                    self.drain();
                    self.flush().await;
                }
                _ = ingest.tick() => self.ingest_spool().await,
                c = commands.recv() => match c {
                    Some(Command::Spool(done)) => {
                        self.start_spooling().await;
                        let _ = done.send(());
                    }
                    Some(Command::Stop(done)) => break Some(done),
                    None => break None,
                },
            }
        };
        self.drain();
        self.flush().await;
        if !self.retry.is_empty() {
            // One more try; after that the counters are reported as lost in the log.
            self.flush().await;
            if !self.retry.is_empty() {
                tracing::error!(buckets = self.retry.len(), "usage could not be written before shutdown");
            }
        }
        if let Some(spool) = self.spool.take() {
            if !self.unspooled.is_empty() {
                tracing::error!(events = self.unspooled.len(), path = %spool.path().display(), "usage could not be spooled before shutdown");
            }
            if let Err(e) = spool.finish() {
                tracing::error!(error = %e, "cannot sync the usage spool");
            }
        }
        if let Some(d) = done {
            let _ = d.send(());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;
    use crate::usage::TokenUsage;

    fn event(at: i64) -> UsageEvent {
        UsageEvent {
            at,
            key_id: "k1".into(),
            account_id: Some("a1".into()),
            model: "claude-sonnet-4-5".into(),
            usage: TokenUsage {
                input: 21,
                output: 7,
                ..Default::default()
            },
            cost_nanos: Some(5),
            unpriced: Default::default(),
            is_error: false,
            model_known: false,
            session: None,
        }
    }

    #[test]
    fn usage_is_kept_per_key_and_model_without_minutes() {
        let mut f = Folder::default();
        let at = 1_700_006_400;
        f.fold(event(at));
        f.fold(event(at + 5));
        f.fold(UsageEvent {
            model: "claude-haiku-4-5".into(),
            ..event(at + 10)
        });
        let mut out = HashMap::new();
        f.expand_into(&mut out);
        let per = |model: &str, g: Granularity| {
            out.iter()
                .find(|(k, _)| {
                    k.dimension == Dimension::KeyModel
                        && k.subject == Dimension::key_model_subject("k1", model)
                        && k.granularity == g
                })
                .map(|(_, c)| c.requests)
        };
        assert_eq!(per("claude-sonnet-4-5", Granularity::Hour), Some(2));
        assert_eq!(per("claude-sonnet-4-5", Granularity::Total), Some(2));
        assert_eq!(per("claude-haiku-4-5", Granularity::Day), Some(1));
        assert_eq!(per("claude-haiku-4-5", Granularity::Minute), None);
        // The key's own prefix tells its subjects from those of a key whose id extends it.
        let s = Dimension::key_model_subject("k1:x", "m");
        assert!(!s.starts_with(&Dimension::key_model_prefix("k1")));
        assert!(s.starts_with(&Dimension::key_model_prefix("k1:x")));
    }

    #[test]
    fn unknown_model_names_are_bounded_per_day() {
        let mut f = Folder::default();
        let day = 1_700_006_400; // a UTC midnight
        let unpriced = |model: String, at: i64| UsageEvent {
            model: model.into(),
            cost_nanos: None,
            ..event(at)
        };
        for i in 0..MAX_UNKNOWN_MODELS_PER_DAY + 50 {
            f.fold(unpriced(format!("made-up-{i}"), day + 10));
        }
        f.fold(unpriced("made-up-0".into(), day + 20));
        f.fold(event(day + 30)); // priced: always itself
        f.fold(UsageEvent {
            model_known: true,
            ..unpriced("configured-model".into(), day + 40)
        });
        let mut out = HashMap::new();
        f.expand_into(&mut out);
        let models: std::collections::HashSet<String> = out
            .keys()
            .filter(|k| k.dimension == Dimension::Model)
            .map(|k| k.subject.clone())
            .collect();
        assert_eq!(models.len(), MAX_UNKNOWN_MODELS_PER_DAY + 3, "{models:?}");
        assert!(models.contains(OTHER_MODEL));
        assert!(models.contains("made-up-0"));
        assert!(!models.contains(&format!("made-up-{MAX_UNKNOWN_MODELS_PER_DAY}")));
        assert!(models.contains("claude-sonnet-4-5"));
        assert!(models.contains("configured-model"));
        let other = out
            .iter()
            .find(|(k, _)| {
                k.dimension == Dimension::Model && k.subject == OTHER_MODEL && k.granularity == Granularity::Total
            })
            .map(|(_, c)| c.requests);
        assert_eq!(other, Some(50));
        // A new day starts a new allowance.
        f.fold(unpriced("made-up-999".into(), day + 86_400 + 5));
        let mut out = HashMap::new();
        f.expand_into(&mut out);
        assert!(out.keys().any(|k| k.subject == "made-up-999"));
    }

    async fn key_total(store: &dyn Store) -> UsageCounters {
        store
            .usage_totals(Dimension::Key)
            .await
            .unwrap()
            .get("k1")
            .copied()
            .unwrap_or_default()
    }

    const BOUNDS: SessionBounds = SessionBounds {
        per_key: 10,
        retention_secs: 86_400,
    };

    fn in_session(at: i64, agent: Option<&str>) -> UsageEvent {
        UsageEvent {
            session: Some(crate::usage::sessions::SessionTag {
                id: "sess".into(),
                agent: agent.map(Into::into),
                parent: None,
            }),
            ..event(at)
        }
    }

    #[tokio::test]
    async fn session_usage_is_written_and_crosses_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let now = chrono::Utc::now().timestamp();
        let metrics = Arc::new(Metrics::new().unwrap());
        let old: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("old")).unwrap());
        let (sink, writer) = pipeline(old.clone(), metrics.clone(), Duration::from_millis(50));
        let (stop, task) = writer
            .with_spool_dir(spool_dir.clone())
            .with_sessions(BOUNDS)
            .start(&tokio::runtime::Handle::current());
        sink.record(in_session(now - 5, None));
        sink.record(in_session(now - 3, Some("sub")));
        sink.record(event(now)); // no session
        stop.spool_from_now().await;
        let s = old.session_usage("k1", "sess", 0).await.unwrap().unwrap();
        assert_eq!((s.first_seen, s.last_seen, s.totals().requests), (now - 5, now - 3, 2));
        assert_eq!((s.main.requests, s.agents["sub"].usage.input_tokens), (1, 21));
        assert_eq!(s.models["claude-sonnet-4-5"].cost_nanos, 10);

        // Events after the hand-over reach the next store's sessions through the spool.
        sink.record(in_session(now, Some("sub")));
        stop.stop().await;
        task.await.unwrap();
        let new: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("new")).unwrap());
        let (_sink2, writer2) = pipeline(new.clone(), metrics, Duration::from_millis(50));
        let mut writer2 = writer2.with_spool_dir(spool_dir).with_sessions(BOUNDS);
        writer2.ingest_spool().await;
        let s = new.session_usage("k1", "sess", 0).await.unwrap().unwrap();
        assert_eq!((s.totals().requests, s.agents["sub"].usage.requests), (1, 1));
    }

    #[tokio::test]
    async fn spooled_usage_reaches_the_store_once_its_writer_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let now = chrono::Utc::now().timestamp();
        let metrics = Arc::new(Metrics::new().unwrap());

        let old: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("old")).unwrap());
        let (sink, writer) = pipeline(old.clone(), metrics.clone(), Duration::from_millis(50));
        let (stop, task) = writer
            .with_spool_dir(spool_dir.clone())
            .start(&tokio::runtime::Handle::current());
        sink.record(event(now));
        stop.spool_from_now().await;
        assert_eq!(key_total(&*old).await.requests, 1, "written before the hand-over");
        for _ in 0..3 {
            sink.record(event(now));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(key_total(&*old).await.requests, 1, "later events only go to the spool");

        // A second writer (the new process) leaves the file alone while its writer lives.
        let new: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("new")).unwrap());
        let (_sink2, writer2) = pipeline(new.clone(), metrics.clone(), Duration::from_millis(50));
        let mut writer2 = writer2.with_spool_dir(spool_dir.clone());
        writer2.ingest_spool().await;
        assert_eq!(key_total(&*new).await.requests, 0);

        sink.record(event(now));
        stop.stop().await;
        task.await.unwrap();
        writer2.ingest_spool().await;
        let got = key_total(&*new).await;
        assert_eq!((got.requests, got.input_tokens, got.output_tokens), (4, 84, 28));
        assert_eq!(std::fs::read_dir(&spool_dir).unwrap().count(), 0, "the file is deleted");
        writer2.ingest_spool().await;
        assert_eq!(key_total(&*new).await.requests, 4, "counted exactly once");
        assert_eq!(key_total(&*old).await.requests, 1);
    }
}
