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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::store::{BucketKey, Dimension, Granularity, Store, UsageCounters};
use crate::usage::UsageEvent;

/// Capacity of the queue between requests and the writer (events between two drains).
pub const QUEUE_CAPACITY: usize = 1 << 20;
/// How often the writer takes the queue.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

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

/// Folds usage events and writes them to the store.
pub struct StatsWriter {
    queue: Arc<Mutex<Vec<UsageEvent>>>,
    spare: Vec<UsageEvent>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    interval: Duration,
    folded: HashMap<Fold, UsageCounters>,
    /// Buckets whose write failed, retried at the next flush.
    retry: HashMap<BucketKey, UsageCounters>,
    last_used: HashMap<Arc<str>, i64>,
}

/// Tells a running writer to drain its queue, flush, and stop.
pub struct StatsStop(oneshot::Sender<oneshot::Sender<()>>);

impl StatsStop {
    /// Waits until the final flush is done (or the writer is gone).
    pub async fn stop(self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.0.send(done_tx).is_ok() {
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
            folded: HashMap::new(),
            retry: HashMap::new(),
            last_used: HashMap::new(),
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
    }
}

impl StatsWriter {
    /// Takes everything queued so far (swapping buffers, so the lock is held for an instant).
    fn drain(&mut self) {
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *q, &mut self.spare);
        }
        let mut batch = std::mem::take(&mut self.spare);
        for ev in batch.drain(..) {
            self.fold(ev);
        }
        self.spare = batch;
    }

    fn fold(&mut self, ev: UsageEvent) {
        let c = counters_of(&ev);
        let slot = self.last_used.entry(ev.key_id.clone()).or_insert(ev.at);
        *slot = (*slot).max(ev.at);
        let key = Fold {
            minute: Granularity::Minute.bucket_start(ev.at),
            key: ev.key_id,
            account: ev.account_id,
            model: ev.model,
        };
        self.folded.entry(key).or_default().add(&c);
    }

    /// Expands the folded events into every bucket they touch.
    fn expand(&mut self) -> HashMap<BucketKey, UsageCounters> {
        let mut out = std::mem::take(&mut self.retry);
        for (f, c) in self.folded.drain() {
            let mut subjects: Vec<(Dimension, &str)> = vec![(Dimension::Key, &f.key), (Dimension::Model, &f.model)];
            if let Some(a) = &f.account {
                subjects.push((Dimension::Account, a));
            }
            for (dimension, subject) in subjects {
                for granularity in Granularity::ALL {
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
        out
    }

    async fn flush(&mut self) {
        let buckets = self.expand();
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
        if !self.last_used.is_empty() {
            let uses: Vec<(String, i64)> = self.last_used.drain().map(|(k, t)| (k.to_string(), t)).collect();
            let t = Instant::now();
            let res = self.store.touch_api_keys(&uses).await;
            self.metrics
                .store_latency
                .with_label_values(&["touch_keys"])
                .observe(t.elapsed().as_secs_f64());
            if let Err(e) = res {
                tracing::warn!(error = %e, "key last-used write failed; will retry");
                for (k, t) in uses {
                    self.last_used.insert(k.into(), t);
                }
            }
        }
    }

    /// Runs until stopped through the returned handle; then drains the queue and flushes.
    pub fn start(self, rt: &tokio::runtime::Handle) -> (StatsStop, tokio::task::JoinHandle<()>) {
        let (stop_tx, stop_rx) = oneshot::channel();
        let handle = rt.spawn(self.run(stop_rx));
        (StatsStop(stop_tx), handle)
    }

    async fn run(mut self, mut stop: oneshot::Receiver<oneshot::Sender<()>>) {
        let mut flush = tokio::time::interval(self.interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain = tokio::time::interval(DRAIN_EVERY.min(self.interval));
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let done = loop {
            tokio::select! {
                _ = drain.tick() => self.drain(),
                _ = flush.tick() => {
                    self.drain();
                    self.flush().await;
                }
                d = &mut stop => break d.ok(),
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
        if let Some(d) = done {
            let _ = d.send(());
        }
    }
}
