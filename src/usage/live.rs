//! What is happening now on this instance, for the admin panel's live view: requests in flight by
//! key and by account, counts of the last minute, and the last [`RECENT`] requests.
//!
//! Kept cheap on the hot path: a request takes one short lock when it starts, one when its
//! account is chosen and one when it ends; the recent requests live in a fixed ring and the
//! last minute in sixty one-second slots.
//!
//! Each instance publishes its [`LiveSnapshot`] through the coordination store every
//! [`PUBLISH_EVERY`] (kept for [`PUBLISH_TTL`]), so the admin API of any instance answers for all
//! of them together ([`LiveSnapshot::merge`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::coord::Coordination;

/// How many finished requests the ring keeps.
pub const RECENT: usize = 100;

/// How often an instance publishes its live view for the others.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// How long a published view counts: an instance that stopped publishing drops out after this.
pub const PUBLISH_TTL: Duration = Duration::from_secs(5);

/// One finished request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recent {
    /// Unix milliseconds at the end of the request.
    pub at_ms: i64,
    pub key: Option<Arc<str>>,
    pub account: Option<Arc<str>>,
    pub model: Option<Arc<str>>,
    pub status: u16,
    pub duration_ms: u64,
    pub tokens: u64,
}

#[derive(Default, Clone, Copy)]
struct Second {
    at: i64,
    requests: u32,
    status_429: u32,
    status_5xx: u32,
}

struct Inner {
    by_key: HashMap<Arc<str>, u32>,
    by_account: HashMap<Arc<str>, u32>,
    recent: VecDeque<Recent>,
    seconds: [Second; 60],
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            by_key: HashMap::new(),
            by_account: HashMap::new(),
            recent: VecDeque::with_capacity(RECENT),
            seconds: [Second::default(); 60],
        }
    }
}

/// The live state of one instance.
#[derive(Default)]
pub struct Live {
    inner: Mutex<Inner>,
}

/// Counts of the last sixty seconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastMinute {
    pub requests: u64,
    pub status_429: u64,
    pub status_5xx: u64,
}

/// A copy of the live state.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveSnapshot {
    pub by_key: Vec<(Arc<str>, u32)>,
    pub by_account: Vec<(Arc<str>, u32)>,
    pub last_minute: LastMinute,
    /// Newest first.
    pub recent: Vec<Recent>,
}

/// Most in flight first, then by id.
fn sorted(m: HashMap<Arc<str>, u32>) -> Vec<(Arc<str>, u32)> {
    let mut v: Vec<(Arc<str>, u32)> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

impl LiveSnapshot {
    /// The views of several instances as one: in-flight counts and the last minute summed, the
    /// newest [`RECENT`] requests of all.
    pub fn merge<'a>(views: impl IntoIterator<Item = &'a LiveSnapshot>) -> LiveSnapshot {
        let (mut by_key, mut by_account) = (HashMap::new(), HashMap::new());
        let mut out = LiveSnapshot::default();
        for v in views {
            for (id, n) in &v.by_key {
                *by_key.entry(id.clone()).or_insert(0) += n;
            }
            for (id, n) in &v.by_account {
                *by_account.entry(id.clone()).or_insert(0) += n;
            }
            out.last_minute.requests += v.last_minute.requests;
            out.last_minute.status_429 += v.last_minute.status_429;
            out.last_minute.status_5xx += v.last_minute.status_5xx;
            out.recent.extend(v.recent.iter().cloned());
        }
        out.by_key = sorted(by_key);
        out.by_account = sorted(by_account);
        out.recent.sort_by_key(|r| std::cmp::Reverse(r.at_ms));
        out.recent.truncate(RECENT);
        out
    }
}

fn dec(map: &mut HashMap<Arc<str>, u32>, id: &Arc<str>) {
    if let Some(n) = map.get_mut(id) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(id);
        }
    }
}

impl Live {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a request of `key` in flight until the guard is dropped.
    pub fn start(self: &Arc<Self>, key: Arc<str>) -> LiveGuard {
        *self.lock().by_key.entry(key.clone()).or_insert(0) += 1;
        LiveGuard {
            live: self.clone(),
            key: Some(key),
            account: None,
        }
    }

    /// Records a finished request.
    pub fn finish(&self, r: Recent) {
        let sec = r.at_ms.div_euclid(1000);
        let mut inner = self.lock();
        let slot = &mut inner.seconds[sec.rem_euclid(60) as usize];
        if slot.at != sec {
            *slot = Second {
                at: sec,
                ..Default::default()
            };
        }
        slot.requests += 1;
        if r.status == 429 {
            slot.status_429 += 1;
        }
        if r.status >= 500 {
            slot.status_5xx += 1;
        }
        if inner.recent.len() == RECENT {
            inner.recent.pop_front();
        }
        inner.recent.push_back(r);
    }

    /// A copy of the state at `now_ms`.
    pub fn snapshot(&self, now_ms: i64) -> LiveSnapshot {
        let inner = self.lock();
        let now = now_ms.div_euclid(1000);
        let mut last_minute = LastMinute::default();
        for s in inner.seconds.iter().filter(|s| s.at > now - 60 && s.at <= now) {
            last_minute.requests += u64::from(s.requests);
            last_minute.status_429 += u64::from(s.status_429);
            last_minute.status_5xx += u64::from(s.status_5xx);
        }
        LiveSnapshot {
            by_key: sorted(inner.by_key.clone()),
            by_account: sorted(inner.by_account.clone()),
            last_minute,
            recent: inner.recent.iter().rev().cloned().collect(),
        }
    }
}

/// Publishes `live`'s view as `instance`'s every [`PUBLISH_EVERY`], for the admin API of every
/// instance ([`Coordination::instances_live`]). A failed write is logged and tried again at the
/// next tick; the view then simply ages out for the others.
pub async fn publish_forever(live: Arc<Live>, coord: Arc<dyn Coordination>, instance: String) {
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ttl = i64::try_from(PUBLISH_TTL.as_millis()).unwrap_or(i64::MAX);
    let mut failing = false;
    loop {
        tick.tick().await;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let doc = match serde_json::to_string(&live.snapshot(now_ms)) {
            Ok(doc) => doc,
            Err(e) => {
                tracing::warn!(error = %e, "the live view cannot be serialised");
                continue;
            }
        };
        match coord
            .put_instance_live(&instance, &doc, now_ms.saturating_add(ttl))
            .await
        {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "publishing this instance's live view failed");
            }
            Err(_) => {}
        }
    }
}

/// A request in flight: dropping it takes it out of the counts.
pub struct LiveGuard {
    live: Arc<Live>,
    key: Option<Arc<str>>,
    account: Option<Arc<str>>,
}

impl LiveGuard {
    /// The account now serving the request (a failover moves it).
    pub fn set_account(&mut self, account: Arc<str>) {
        if self.account.as_ref() == Some(&account) {
            return;
        }
        let mut inner = self.live.lock();
        if let Some(old) = self.account.take() {
            dec(&mut inner.by_account, &old);
        }
        *inner.by_account.entry(account.clone()).or_insert(0) += 1;
        self.account = Some(account);
    }

    pub fn key(&self) -> Option<&Arc<str>> {
        self.key.as_ref()
    }

    pub fn account(&self) -> Option<&Arc<str>> {
        self.account.as_ref()
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut inner = self.live.lock();
        if let Some(k) = self.key.take() {
            dec(&mut inner.by_key, &k);
        }
        if let Some(a) = self.account.take() {
            dec(&mut inner.by_account, &a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recent(at_ms: i64, status: u16) -> Recent {
        Recent {
            at_ms,
            key: None,
            account: None,
            model: None,
            status,
            duration_ms: 1,
            tokens: 0,
        }
    }

    #[test]
    fn in_flight_counts_follow_guards() {
        let live = Arc::new(Live::default());
        let mut a = live.start("k1".into());
        let b = live.start("k1".into());
        a.set_account("acc".into());
        a.set_account("acc2".into());
        let s = live.snapshot(0);
        assert_eq!(s.by_key, vec![("k1".into(), 2)]);
        assert_eq!(s.by_account, vec![("acc2".into(), 1)]);
        drop(a);
        drop(b);
        let s = live.snapshot(0);
        assert!(s.by_key.is_empty() && s.by_account.is_empty());
    }

    #[test]
    fn ring_and_last_minute_are_bounded() {
        let live = Live::default();
        for i in 0..150 {
            live.finish(recent(1_000_000 + i * 1000, if i % 2 == 0 { 429 } else { 502 }));
        }
        let s = live.snapshot(1_000_000 + 149 * 1000);
        assert_eq!(s.recent.len(), RECENT);
        assert_eq!(s.recent[0].at_ms, 1_000_000 + 149 * 1000, "newest first");
        assert_eq!(s.last_minute.requests, 60);
        assert_eq!(s.last_minute.status_429 + s.last_minute.status_5xx, 60);
        assert_eq!(live.snapshot(1_000_000 + 400 * 1000).last_minute.requests, 0);
    }

    #[test]
    fn views_of_instances_merge_and_survive_json() {
        let a = Arc::new(Live::default());
        let b = Arc::new(Live::default());
        let _g1 = a.start("k1".into());
        let mut g2 = b.start("k1".into());
        g2.set_account("acc".into());
        let _g3 = b.start("k2".into());
        for i in 0..80 {
            a.finish(recent(10_000 + i * 2, 200));
            b.finish(recent(10_001 + i * 2, 529));
        }
        let (sa, sb) = (a.snapshot(10_500), b.snapshot(10_500));
        let sb: LiveSnapshot = serde_json::from_str(&serde_json::to_string(&sb).unwrap()).unwrap();
        let m = LiveSnapshot::merge([&sa, &sb]);
        assert_eq!(m.by_key, vec![("k1".into(), 2), ("k2".into(), 1)]);
        assert_eq!(m.by_account, vec![("acc".into(), 1)]);
        assert_eq!(m.last_minute.requests, 160);
        assert_eq!(m.last_minute.status_5xx, 80);
        assert_eq!(m.recent.len(), RECENT);
        assert_eq!(m.recent[0].at_ms, 10_001 + 79 * 2, "newest first across instances");
        assert!(m.recent.windows(2).all(|w| w[0].at_ms >= w[1].at_ms));
    }
}
