//! Usage statistics: events from finished requests are aggregated in memory and written to the
//! store in batches, off the request path.
//!
//! The request path only does a non-blocking `try_send` into a bounded queue ([`UsageSink`]). The
//! [`StatsWriter`] folds events per (minute, key, account, model) and, every flush interval,
//! expands them into the minute/hour/day/month/total buckets of each dimension and writes them in
//! one batch. A failed write keeps the pending counters for the next attempt. On shutdown the writer
//! drains the queue and flushes once more, so usage that reached the relay is not lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::store::{BucketKey, Dimension, Granularity, Store, UsageCounters};
use crate::usage::UsageEvent;

/// Capacity of the queue between requests and the writer.
pub const QUEUE_CAPACITY: usize = 65_536;

/// The request path's handle: never blocks, never fails the request.
#[derive(Clone)]
pub struct UsageSink {
    tx: mpsc::Sender<UsageEvent>,
    metrics: Arc<Metrics>,
}

impl UsageSink {
    pub fn record(&self, ev: UsageEvent) {
        if let Err(e) = self.tx.try_send(ev) {
            self.metrics.usage_events_dropped.inc();
            tracing::error!(error = %e, "usage event dropped: statistics queue full or closed");
        }
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
    rx: mpsc::Receiver<UsageEvent>,
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

/// Creates the sink and its writer. Run the writer with [`StatsWriter::run`].
pub fn pipeline(store: Arc<dyn Store>, metrics: Arc<Metrics>, interval: Duration) -> (UsageSink, StatsWriter) {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    (
        UsageSink {
            tx,
            metrics: metrics.clone(),
        },
        StatsWriter {
            rx,
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

    /// Runs until stopped through the returned handle or until every sink is dropped; then drains
    /// the queue and flushes.
    pub fn start(self, rt: &tokio::runtime::Handle) -> (StatsStop, tokio::task::JoinHandle<()>) {
        let (stop_tx, stop_rx) = oneshot::channel();
        let handle = rt.spawn(self.run(stop_rx));
        (StatsStop(stop_tx), handle)
    }

    async fn run(mut self, mut stop: oneshot::Receiver<oneshot::Sender<()>>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let done = loop {
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Some(ev) => self.fold(ev),
                    None => break None,
                },
                _ = tick.tick() => self.flush().await,
                d = &mut stop => break d.ok(),
            }
        };
        while let Ok(ev) = self.rx.try_recv() {
            self.fold(ev);
        }
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
