//! Limits for one instance (the embedded backend): exact within the process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use filters::{Admission, ClientKey, LimitBackend, RejectKind, Rejection};

use super::{day_start, week_start, window_bounds};

#[derive(Default)]
struct Counters {
    window_start: i64,
    requests: u64,
    tokens: u64,
    cost: u64,
    day: (i64, u64),
    week: (i64, u64),
    total: u64,
    slots: HashMap<String, Instant>,
}

#[derive(Default)]
pub struct MemoryLimits {
    keys: Mutex<HashMap<String, Counters>>,
    activations: Mutex<HashMap<String, i64>>,
}

impl MemoryLimits {
    pub fn new() -> Self {
        Self::default()
    }
}

/// How long a concurrency slot lives without release (a crashed request cannot hold it forever).
const SLOT_TTL: Duration = Duration::from_secs(600);

fn refuse(status: u16, kind: RejectKind, reason: &'static str, message: String, retry_after: Option<u64>) -> Admission {
    let mut r = Rejection::new(status, kind, reason, message);
    r.retry_after = retry_after;
    Admission::Refused(r)
}

#[async_trait]
impl LimitBackend for MemoryLimits {
    async fn admit(&self, key: &ClientKey, holder: &str, now_ms: i64) -> Result<Admission, String> {
        let p = &key.policy;
        if p.rate_limit.is_none() && p.cost_limits.is_none() && p.concurrency.is_none() {
            return Ok(Admission::Admitted);
        }
        let now_s = now_ms / 1000;
        let mut map = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let c = map.entry(key.id.to_string()).or_default();
        if let Some(cl) = &p.cost_limits {
            let day = day_start(now_s);
            if c.day.0 != day {
                c.day = (day, 0);
            }
            let week = week_start(now_s, cl.weekly_reset.0, cl.weekly_reset.1);
            if c.week.0 != week {
                c.week = (week, 0);
            }
            if cl.total_nanos.is_some_and(|cap| c.total >= cap) {
                return Ok(refuse(
                    402,
                    RejectKind::Billing,
                    "total_cost_limit",
                    "Total cost limit reached".into(),
                    None,
                ));
            }
            if cl.daily_nanos.is_some_and(|cap| c.day.1 >= cap) {
                let wait = (day + 86_400 - now_s).max(1) as u64;
                return Ok(refuse(
                    402,
                    RejectKind::Billing,
                    "daily_cost_limit",
                    "Daily cost limit reached".into(),
                    Some(wait),
                ));
            }
            if cl.weekly_nanos.is_some_and(|cap| c.week.1 >= cap) {
                let wait = (week + 7 * 86_400 - now_s).max(1) as u64;
                return Ok(refuse(
                    402,
                    RejectKind::Billing,
                    "weekly_cost_limit",
                    "Weekly cost limit reached".into(),
                    Some(wait),
                ));
            }
        }
        if let Some(rl) = &p.rate_limit {
            let (start, end) = window_bounds(now_ms, rl.window.as_millis() as i64);
            if c.window_start != start {
                (c.window_start, c.requests, c.tokens, c.cost) = (start, 0, 0, 0);
            }
            let wait = ((end - now_ms) as u64).div_ceil(1000).max(1);
            let over = rl.requests.is_some_and(|l| c.requests >= l)
                || rl.tokens.is_some_and(|l| c.tokens >= l)
                || rl.cost_nanos.is_some_and(|l| c.cost >= l);
            if over {
                return Ok(refuse(
                    429,
                    RejectKind::RateLimited,
                    "rate_limit",
                    "Rate limit reached for this key".into(),
                    Some(wait),
                ));
            }
        }
        if let Some(cc) = &p.concurrency {
            let now = Instant::now();
            c.slots.retain(|_, exp| *exp > now);
            if c.slots.len() >= cc.limit as usize && !c.slots.contains_key(holder) {
                return Ok(refuse(
                    429,
                    RejectKind::RateLimited,
                    "concurrency_limit",
                    "Too many requests in flight for this key".into(),
                    Some(1),
                ));
            }
            c.slots.insert(holder.to_string(), now + SLOT_TTL);
        }
        if p.rate_limit.is_some() {
            c.requests += 1;
        }
        Ok(Admission::Admitted)
    }

    async fn charge(&self, key: &ClientKey, tokens: u64, cost_nanos: u64, now_ms: i64) -> Result<(), String> {
        let p = &key.policy;
        if p.rate_limit.is_none() && p.cost_limits.is_none() {
            return Ok(());
        }
        let now_s = now_ms / 1000;
        let mut map = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let c = map.entry(key.id.to_string()).or_default();
        if let Some(rl) = &p.rate_limit {
            let (start, _) = window_bounds(now_ms, rl.window.as_millis() as i64);
            if c.window_start == start {
                c.tokens += tokens;
                c.cost += cost_nanos;
            }
        }
        if let Some(cl) = &p.cost_limits {
            let day = day_start(now_s);
            if c.day.0 != day {
                c.day = (day, 0);
            }
            let week = week_start(now_s, cl.weekly_reset.0, cl.weekly_reset.1);
            if c.week.0 != week {
                c.week = (week, 0);
            }
            c.day.1 += cost_nanos;
            c.week.1 += cost_nanos;
            c.total += cost_nanos;
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
        Ok(*self
            .activations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key_id.to_string())
            .or_insert(now_s))
    }
}
