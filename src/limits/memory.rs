//! Limits for one instance (the embedded backend): exact within the process.
//!
//! A concurrency slot is held until its guard releases it; there is no expiry, since a guard in
//! this process always runs (completion, disconnect, error, panic) and a crashed process takes its
//! slots with it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use filters::policy::RateLimit;
use filters::{Admission, ClientKey, LimitBackend, LimitPeek, Reservation};

use super::{
    Refusal, Shortfall, SpendSeed, SpendSeeds, cost_shortfall, day_start, month_start, next_month_start, week_start,
    window_bounds,
};

/// A rolling window: what was counted, oldest first, one entry per second at most (so a window
/// holds at most its length in seconds of entries), and the sums of what it holds.
#[derive(Default)]
struct Rolling {
    /// (ms of the entry's second, requests, tokens, cost)
    entries: VecDeque<(i64, u64, u64, u64)>,
    sums: (u64, u64, u64),
}

impl Rolling {
    /// Forgets what slid out of the window ending at `now_ms`.
    fn prune(&mut self, now_ms: i64, window_ms: i64) {
        while let Some(&(at, r, t, c)) = self.entries.front() {
            if at > now_ms - window_ms {
                break;
            }
            self.entries.pop_front();
            self.sums.0 -= r;
            self.sums.1 -= t;
            self.sums.2 -= c;
        }
    }

    fn add(&mut self, now_ms: i64, r: u64, t: u64, c: u64) {
        let second = now_ms - now_ms.rem_euclid(1000);
        match self.entries.back_mut() {
            Some(e) if e.0 == second => {
                e.1 = e.1.saturating_add(r);
                e.2 = e.2.saturating_add(t);
                e.3 = e.3.saturating_add(c);
            }
            _ => self.entries.push_back((second, r, t, c)),
        }
        self.sums.0 = self.sums.0.saturating_add(r);
        self.sums.1 = self.sums.1.saturating_add(t);
        self.sums.2 = self.sums.2.saturating_add(c);
    }

    /// Milliseconds until enough has slid out that `fits(sums)` holds; the whole window when
    /// even an empty window would not do.
    fn wait_until_fits(&self, now_ms: i64, window_ms: i64, fits: impl Fn((u64, u64, u64)) -> bool) -> i64 {
        let mut sums = self.sums;
        for &(at, r, t, c) in &self.entries {
            sums = (sums.0 - r, sums.1 - t, sums.2 - c);
            if fits(sums) {
                return at + window_ms - now_ms;
            }
        }
        window_ms
    }
}

#[derive(Default)]
struct Counters {
    window_start: i64,
    requests: u64,
    tokens: u64,
    cost: u64,
    rolling: Rolling,
    /// (period start, spend) in Unix s and nano-USD.
    day: (i64, u64),
    week: (i64, u64),
    month: (i64, u64),
    total: u64,
    slots: HashSet<String>,
    /// Spend reserved by requests in flight: holder → nano-USD, and their sum.
    reservations: HashMap<String, u64>,
    reserved: u64,
}

impl Counters {
    /// Starts new day, week and month periods when `now_s` left the current ones.
    fn roll(&mut self, now_s: i64, reset: (u32, u32)) {
        let day = day_start(now_s);
        if self.day.0 != day {
            self.day = (day, 0);
        }
        let week = week_start(now_s, reset.0, reset.1);
        if self.week.0 != week {
            self.week = (week, 0);
        }
        let month = month_start(now_s);
        if self.month.0 != month {
            self.month = (month, 0);
        }
    }

    /// Raises the spend to at least what the statistics recorded.
    fn seed(&mut self, s: &SpendSeed) {
        if self.day.0 == s.day_start {
            self.day.1 = self.day.1.max(s.day);
        }
        if self.week.0 == s.week_start {
            self.week.1 = self.week.1.max(s.week);
        }
        if self.month.0 == s.month_start {
            self.month.1 = self.month.1.max(s.month);
        }
        self.total = self.total.max(s.total);
    }

    /// A rate window's (requests, tokens, cost) at `now_ms`, after starting a new fixed window or
    /// sliding the rolling one.
    fn window(&mut self, rl: &RateLimit, now_ms: i64) -> (u64, u64, u64) {
        let window_ms = rl.window.as_millis() as i64;
        if rl.rolling {
            self.rolling.prune(now_ms, window_ms);
            return self.rolling.sums;
        }
        let (start, _) = window_bounds(now_ms, window_ms);
        if self.window_start != start {
            (self.window_start, self.requests, self.tokens, self.cost) = (start, 0, 0, 0);
        }
        (self.requests, self.tokens, self.cost)
    }
}

#[derive(Default)]
pub struct MemoryLimits {
    keys: Mutex<HashMap<Arc<str>, Counters>>,
    activations: Mutex<HashMap<String, i64>>,
    seeds: Option<SpendSeeds>,
    /// Where first-use times are kept across restarts (`activations.json` in the data directory).
    activations_file: Option<std::path::PathBuf>,
}

impl MemoryLimits {
    /// Limits that start from zero (benches, tests).
    pub fn new() -> Self {
        Self::default()
    }

    /// Limits whose spend caps start from the spend recorded in `store`'s usage statistics.
    pub fn with_store(store: Arc<dyn crate::store::Store>) -> Self {
        MemoryLimits {
            seeds: Some(SpendSeeds::new(store)),
            ..Self::default()
        }
    }

    /// Keeps first-use times of activation-mode keys in `file` (read now, rewritten atomically on
    /// each new activation), so a restart does not give a key a fresh period.
    pub fn with_activations_file(mut self, file: std::path::PathBuf) -> Self {
        // A file written by an older version may be readable by others.
        if let Err(e) = crate::private_fs::restrict_path(&file) {
            tracing::warn!(path = %file.display(), error = %e, "cannot make the activation times private");
        }
        if let Ok(text) = std::fs::read_to_string(&file) {
            match serde_json::from_str::<HashMap<String, i64>>(&text) {
                Ok(map) => *self.activations.lock().unwrap_or_else(|e| e.into_inner()) = map,
                Err(e) => {
                    tracing::error!(path = %file.display(), error = %e, "activation times unreadable; starting empty")
                }
            }
        }
        self.activations_file = Some(file);
        self
    }
}

/// Writes the activation map next to its final place and renames it over, so a crash leaves
/// either the old or the new file.
fn save_activations(file: &std::path::Path, map: &HashMap<String, i64>) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = file.with_extension("json.tmp");
    // 0600, also when a crash left the temporary file behind.
    let mut f = crate::private_fs::open_file(&tmp, true)?;
    f.write_all(serde_json::to_string(map).unwrap_or_default().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)
}

#[async_trait]
impl LimitBackend for MemoryLimits {
    async fn admit(&self, key: &ClientKey, holder: &str, reserve_nanos: u64, now_ms: i64) -> Result<Admission, String> {
        let p = &key.policy;
        if p.rate_limit.is_none() && p.cost_limits.is_none() && p.concurrency.is_none() {
            return Ok(Admission::Admitted);
        }
        let est = if p.reserves_cost() { reserve_nanos } else { 0 };
        let now_s = now_ms.div_euclid(1000);
        let seed = match (&self.seeds, &p.cost_limits) {
            (Some(seeds), Some(caps)) => seeds.get(&key.id, caps, now_s).await,
            _ => None,
        };
        let mut map = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let c = map.entry(key.id.clone()).or_default();
        // The least room any cost limit leaves once this request's estimate is reserved.
        let mut room = u64::MAX;
        if let Some(cl) = &p.cost_limits {
            c.roll(now_s, cl.weekly_reset);
            if let Some(s) = &seed {
                c.seed(s);
            }
            let caps = [
                (cl.total_nanos, c.total, Refusal::Total, None),
                (cl.daily_nanos, c.day.1, Refusal::Daily, Some(c.day.0 + 86_400)),
                (cl.weekly_nanos, c.week.1, Refusal::Weekly, Some(c.week.0 + 7 * 86_400)),
                (
                    cl.monthly_nanos,
                    c.month.1,
                    Refusal::Monthly,
                    Some(next_month_start(now_s)),
                ),
            ];
            for (cap, spent, refusal, ends) in caps {
                let Some(cap) = cap else { continue };
                if let Some(shortfall) = cost_shortfall(cap, spent, c.reserved, est) {
                    let wait = match shortfall {
                        Shortfall::Reserved => Some(1),
                        _ => ends.map(|e| (e - now_s) as u64),
                    };
                    return Ok(refusal.refused(shortfall, wait));
                }
                room = room.min(cap - spent - c.reserved - est);
            }
        }
        if let Some(rl) = &p.rate_limit {
            let window_ms = rl.window.as_millis() as i64;
            let (requests, tokens, cost) = c.window(rl, now_ms);
            let reserved = c.reserved;
            let fits = |(r, t, cst): (u64, u64, u64)| {
                rl.requests.is_none_or(|l| r < l)
                    && rl.tokens.is_none_or(|l| t < l)
                    && rl
                        .cost_nanos
                        .is_none_or(|l| cost_shortfall(l, cst, reserved, est).is_none())
            };
            if !fits((requests, tokens, cost)) {
                let shortfall = rl
                    .cost_nanos
                    .and_then(|l| cost_shortfall(l, cost, reserved, est))
                    .filter(|_| rl.requests.is_none_or(|l| requests < l) && rl.tokens.is_none_or(|l| tokens < l))
                    .unwrap_or(Shortfall::Spent);
                let wait_ms = if shortfall == Shortfall::Reserved {
                    1000
                } else if rl.rolling {
                    c.rolling.wait_until_fits(now_ms, window_ms, fits)
                } else {
                    window_bounds(now_ms, window_ms).1 - now_ms
                };
                return Ok(Refusal::Rate.refused(shortfall, Some((wait_ms.max(0) as u64).div_ceil(1000))));
            }
            if let Some(l) = rl.cost_nanos {
                room = room.min(l - cost - reserved - est);
            }
        }
        if let Some(cc) = &p.concurrency {
            if c.slots.len() >= cc.limit as usize && !c.slots.contains(holder) {
                return Ok(Refusal::Concurrency.admission(Some(1)));
            }
            c.slots.insert(holder.to_string());
        }
        if let Some(rl) = &p.rate_limit {
            if rl.rolling {
                c.rolling.add(now_ms, 1, 0, 0);
            } else {
                c.requests += 1;
            }
        }
        if est == 0 {
            return Ok(Admission::Admitted);
        }
        if let Some(old) = c.reservations.insert(holder.to_string(), est) {
            c.reserved -= old;
        }
        c.reserved += est;
        Ok(Admission::Reserved { room_nanos: room })
    }

    async fn peek(&self, key: &ClientKey, now_ms: i64) -> Result<LimitPeek, String> {
        let p = &key.policy;
        let now_s = now_ms.div_euclid(1000);
        let map = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = map.get(&key.id) else {
            return Ok(LimitPeek::default());
        };
        let mut out = LimitPeek {
            total_nanos: c.total,
            in_flight: c.slots.len() as u64,
            reserved_nanos: c.reserved,
            ..LimitPeek::default()
        };
        if let Some(rl) = &p.rate_limit {
            let window_ms = rl.window.as_millis() as i64;
            if rl.rolling {
                // What is still inside the window, without pruning the rest.
                for &(at, r, t, cost) in &c.rolling.entries {
                    if at > now_ms - window_ms {
                        out.requests += r;
                        out.tokens += t;
                        out.cost_nanos += cost;
                    }
                }
            } else {
                let (start, end) = window_bounds(now_ms, window_ms);
                if c.window_start == start {
                    (out.requests, out.tokens, out.cost_nanos) = (c.requests, c.tokens, c.cost);
                }
                out.window_ends_ms = Some(end);
            }
        }
        let reset = p.cost_limits.as_ref().map_or((0, 0), |cl| cl.weekly_reset);
        let current = |(start, spent): (i64, u64), now_start: i64| if start == now_start { spent } else { 0 };
        out.day_nanos = current(c.day, day_start(now_s));
        out.week_nanos = current(c.week, week_start(now_s, reset.0, reset.1));
        out.month_nanos = current(c.month, month_start(now_s));
        Ok(out)
    }

    async fn charge(&self, key: &ClientKey, tokens: u64, cost_nanos: u64, now_ms: i64) -> Result<(), String> {
        self.settle(key, None, None, tokens, cost_nanos, now_ms).await
    }

    async fn settle(
        &self,
        key: &ClientKey,
        reservation: Option<&Reservation>,
        slot: Option<&str>,
        tokens: u64,
        cost_nanos: u64,
        now_ms: i64,
    ) -> Result<(), String> {
        let p = &key.policy;
        let now_s = now_ms.div_euclid(1000);
        let mut map = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let c = map.entry(key.id.clone()).or_default();
        if let Some(holder) = slot {
            c.slots.remove(holder);
        }
        if let Some(r) = reservation
            && let Some(amount) = c.reservations.remove(&r.holder)
        {
            c.reserved -= amount;
        }
        if tokens == 0 && cost_nanos == 0 {
            return Ok(());
        }
        if let Some(rl) = &p.rate_limit {
            if rl.rolling {
                c.rolling.prune(now_ms, rl.window.as_millis() as i64);
                c.rolling.add(now_ms, 0, tokens, cost_nanos);
            } else {
                let (start, _) = window_bounds(now_ms, rl.window.as_millis() as i64);
                if c.window_start == start {
                    c.tokens = c.tokens.saturating_add(tokens);
                    c.cost = c.cost.saturating_add(cost_nanos);
                }
            }
        }
        if let Some(cl) = &p.cost_limits {
            c.roll(now_s, cl.weekly_reset);
            c.day.1 = c.day.1.saturating_add(cost_nanos);
            c.week.1 = c.week.1.saturating_add(cost_nanos);
            c.month.1 = c.month.1.saturating_add(cost_nanos);
            c.total = c.total.saturating_add(cost_nanos);
        }
        Ok(())
    }

    async fn unreserve(&self, key_id: &str, reservation: &Reservation) -> Result<(), String> {
        if let Some(c) = self.keys.lock().unwrap_or_else(|e| e.into_inner()).get_mut(key_id)
            && let Some(amount) = c.reservations.remove(&reservation.holder)
        {
            c.reserved -= amount;
        }
        Ok(())
    }

    async fn release(&self, key_id: &str, holder: &str) -> Result<(), String> {
        if let Some(c) = self.keys.lock().unwrap_or_else(|e| e.into_inner()).get_mut(key_id) {
            c.slots.remove(holder);
        }
        Ok(())
    }

    async fn activate(&self, key_id: &str, now_s: i64) -> Result<i64, String> {
        let (at, snapshot) = {
            let mut map = self.activations.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(at) = map.get(key_id) {
                return Ok(*at);
            }
            map.insert(key_id.to_string(), now_s);
            (now_s, map.clone())
        };
        if let Some(file) = self.activations_file.clone() {
            // Once per key, ever: off the async workers all the same.
            let saved = tokio::task::spawn_blocking(move || save_activations(&file, &snapshot)).await;
            match saved {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("cannot save the activation time: {e}")),
                Err(e) => return Err(format!("cannot save the activation time: {e}")),
            }
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use filters::policy::{KeyPolicy, KeyPolicySpec};

    fn key(spec: &str) -> ClientKey {
        let spec: KeyPolicySpec = serde_json::from_str(spec).unwrap();
        ClientKey {
            id: "k".into(),
            name: "k".into(),
            enabled: true,
            bind: None,
            policy: Arc::new(KeyPolicy::compile(&spec).unwrap()),
        }
    }

    fn refused(a: &Admission) -> Option<(u16, &'static str, Option<u64>)> {
        match a {
            Admission::Admitted | Admission::Reserved { .. } => None,
            Admission::Refused(r) => Some((r.status, r.reason, r.retry_after)),
        }
    }

    const T0: i64 = 1_800_000_000_000; // a multiple of 60 s

    #[tokio::test]
    async fn windows_caps_and_slots() {
        let m = MemoryLimits::new();
        let k = key(r#"{"rate_limit":{"window_minutes":1,"requests":2,"tokens":100}}"#);
        assert!(refused(&m.admit(&k, "", 0, T0).await.unwrap()).is_none());
        assert!(refused(&m.admit(&k, "", 0, T0 + 1).await.unwrap()).is_none());
        assert_eq!(
            refused(&m.admit(&k, "", 0, T0 + 20_500).await.unwrap()),
            Some((429, "rate_limit", Some(40)))
        );
        assert!(refused(&m.admit(&k, "", 0, T0 + 60_000).await.unwrap()).is_none());
        m.charge(&k, 100, 0, T0 + 60_001).await.unwrap();
        assert_eq!(
            refused(&m.admit(&k, "", 0, T0 + 60_002).await.unwrap()).map(|r| r.1),
            Some("rate_limit")
        );

        let k = key(r#"{"cost_limits":{"daily_usd":1,"total_usd":3}}"#);
        assert!(refused(&m.admit(&k, "", 0, T0).await.unwrap()).is_none());
        m.charge(&k, 1, 1_000_000_000, T0).await.unwrap();
        assert_eq!(
            refused(&m.admit(&k, "", 0, T0).await.unwrap()).map(|r| (r.0, r.1)),
            Some((402, "daily_cost_limit"))
        );
        // The next day starts from zero; the total stays.
        m.charge(&k, 1, 2_000_000_000, T0 + 86_400_000).await.unwrap();
        assert_eq!(
            refused(&m.admit(&k, "", 0, T0 + 86_400_000).await.unwrap()),
            Some((402, "total_cost_limit", None))
        );

        let k = key(r#"{"concurrency":{"limit":1}}"#);
        assert!(refused(&m.admit(&k, "a", 0, T0).await.unwrap()).is_none());
        assert_eq!(
            refused(&m.admit(&k, "b", 0, T0).await.unwrap()),
            Some((429, "concurrency_limit", Some(1)))
        );
        m.release("k", "a").await.unwrap();
        assert!(refused(&m.admit(&k, "b", 0, T0).await.unwrap()).is_none());
    }

    #[tokio::test]
    async fn rolling_windows_slide_and_say_when_enough_slid_out() {
        let m = MemoryLimits::new();
        let k = key(r#"{"rate_limit":{"window_minutes":1,"requests":2,"rolling":true}}"#);
        assert!(refused(&m.admit(&k, "a", 0, T0).await.unwrap()).is_none());
        assert!(refused(&m.admit(&k, "b", 0, T0 + 20_000).await.unwrap()).is_none());
        // Full: the first request leaves the window 60 s after it came, 30 s from now.
        assert_eq!(
            refused(&m.admit(&k, "c", 0, T0 + 30_000).await.unwrap()),
            Some((429, "rate_limit", Some(30)))
        );
        // A fixed window would have started afresh at T0 + 60 s; this one still holds the second.
        assert!(refused(&m.admit(&k, "d", 0, T0 + 60_000).await.unwrap()).is_none());
        assert_eq!(
            refused(&m.admit(&k, "e", 0, T0 + 61_000).await.unwrap()).map(|r| r.2),
            Some(Some(19))
        );
    }

    #[tokio::test]
    async fn reservations_hold_room_until_settled_or_freed() {
        let m = MemoryLimits::new();
        let k = key(r#"{"cost_limits":{"monthly_usd":0.000001}}"#);
        let reserved = |a: &Admission| match a {
            Admission::Reserved { room_nanos } => Some(*room_nanos),
            _ => None,
        };
        assert_eq!(reserved(&m.admit(&k, "a", 600, T0).await.unwrap()), Some(400));
        let r = m.admit(&k, "b", 600, T0).await.unwrap();
        assert_eq!(refused(&r), Some((402, "monthly_cost_limit", Some(1))));
        let Admission::Refused(r) = m.admit(&k, "c", 2_000, T0).await.unwrap() else {
            panic!()
        };
        assert!(r.message.contains("may cost up to $0.000002"), "{}", r.message);
        assert!(r.message.contains("more than the $0.000001 left"), "{}", r.message);
        let res = Reservation {
            holder: "a".into(),
            nanos: 600,
        };
        m.settle(&k, Some(&res), None, 10, 500, T0).await.unwrap();
        assert_eq!(reserved(&m.admit(&k, "d", 500, T0).await.unwrap()), Some(0));
        m.unreserve(
            "k",
            &Reservation {
                holder: "d".into(),
                nanos: 500,
            },
        )
        .await
        .unwrap();
        m.charge(&k, 1, 500, T0).await.unwrap();
        assert_eq!(
            refused(&m.admit(&k, "e", 1, T0).await.unwrap()).map(|r| r.1),
            Some("monthly_cost_limit")
        );
        // The next month starts from zero.
        let next = super::super::next_month_start(T0 / 1000) * 1000;
        assert!(reserved(&m.admit(&k, "f", 600, next).await.unwrap()).is_some());
    }
}
