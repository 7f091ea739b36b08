//! What is happening now on this instance, for the admin panel's live view: requests in flight by
//! key and by account, counts of the last minute, and the last [`RECENT`] requests.
//!
//! Kept cheap on the hot path: a request takes one short lock when it starts, one when its
//! account is chosen and one when it ends; the recent requests live in a fixed ring and the
//! last minute in sixty one-second slots.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// How many finished requests the ring keeps.
pub const RECENT: usize = 100;

/// One finished request.
#[derive(Debug, Clone)]
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
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LastMinute {
    pub requests: u64,
    pub status_429: u64,
    pub status_5xx: u64,
}

/// A copy of the live state.
#[derive(Debug, Default, Clone)]
pub struct LiveSnapshot {
    pub by_key: Vec<(Arc<str>, u32)>,
    pub by_account: Vec<(Arc<str>, u32)>,
    pub last_minute: LastMinute,
    /// Newest first.
    pub recent: Vec<Recent>,
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
        let sorted = |m: &HashMap<Arc<str>, u32>| {
            let mut v: Vec<(Arc<str>, u32)> = m.iter().map(|(k, n)| (k.clone(), *n)).collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            v
        };
        LiveSnapshot {
            by_key: sorted(&inner.by_key),
            by_account: sorted(&inner.by_account),
            last_minute,
            recent: inner.recent.iter().rev().cloned().collect(),
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
}
