//! Limits for one instance (the embedded backend): exact within the process.
//!
//! A concurrency slot is held until its guard releases it; there is no expiry, since a guard in
//! this process always runs (completion, disconnect, error, panic) and a crashed process takes its
//! slots with it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use filters::{Admission, ClientKey, LimitBackend};

use super::{Refusal, SpendSeed, SpendSeeds, day_start, week_start, window_bounds};

#[derive(Default)]
struct Counters {
    window_start: i64,
    requests: u64,
    tokens: u64,
    cost: u64,
    /// (period start, spend) in Unix s and nano-USD.
    day: (i64, u64),
    week: (i64, u64),
    total: u64,
    slots: HashSet<String>,
}

impl Counters {
    /// Starts new day and week periods when `now_s` left the current ones.
    fn roll(&mut self, now_s: i64, reset: (u32, u32)) {
        let day = day_start(now_s);
        if self.day.0 != day {
            self.day = (day, 0);
        }
        let week = week_start(now_s, reset.0, reset.1);
        if self.week.0 != week {
            self.week = (week, 0);
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
        self.total = self.total.max(s.total);
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
    async fn admit(&self, key: &ClientKey, holder: &str, now_ms: i64) -> Result<Admission, String> {
        let p = &key.policy;
        if p.rate_limit.is_none() && p.cost_limits.is_none() && p.concurrency.is_none() {
            return Ok(Admission::Admitted);
        }
        let now_s = now_ms.div_euclid(1000);
        let seed = match (&self.seeds, &p.cost_limits) {
            (Some(seeds), Some(caps)) => seeds.get(&key.id, caps, now_s).await,
            _ => None,
        };
        let mut map = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let c = map.entry(key.id.clone()).or_default();
        if let Some(cl) = &p.cost_limits {
            c.roll(now_s, cl.weekly_reset);
            if let Some(s) = &seed {
                c.seed(s);
            }
            if cl.total_nanos.is_some_and(|cap| c.total >= cap) {
                return Ok(Refusal::Total.admission(None));
            }
            if cl.daily_nanos.is_some_and(|cap| c.day.1 >= cap) {
                return Ok(Refusal::Daily.admission(Some((c.day.0 + 86_400 - now_s) as u64)));
            }
            if cl.weekly_nanos.is_some_and(|cap| c.week.1 >= cap) {
                return Ok(Refusal::Weekly.admission(Some((c.week.0 + 7 * 86_400 - now_s) as u64)));
            }
        }
        if let Some(rl) = &p.rate_limit {
            let (start, end) = window_bounds(now_ms, rl.window.as_millis() as i64);
            if c.window_start != start {
                (c.window_start, c.requests, c.tokens, c.cost) = (start, 0, 0, 0);
            }
            let over = rl.requests.is_some_and(|l| c.requests >= l)
                || rl.tokens.is_some_and(|l| c.tokens >= l)
                || rl.cost_nanos.is_some_and(|l| c.cost >= l);
            if over {
                return Ok(Refusal::Rate.admission(Some(((end - now_ms) as u64).div_ceil(1000))));
            }
        }
        if let Some(cc) = &p.concurrency {
            if c.slots.len() >= cc.limit as usize && !c.slots.contains(holder) {
                return Ok(Refusal::Concurrency.admission(Some(1)));
            }
            c.slots.insert(holder.to_string());
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
        let now_s = now_ms.div_euclid(1000);
        let mut map = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let c = map.entry(key.id.clone()).or_default();
        if let Some(rl) = &p.rate_limit {
            let (start, _) = window_bounds(now_ms, rl.window.as_millis() as i64);
            if c.window_start == start {
                c.tokens = c.tokens.saturating_add(tokens);
                c.cost = c.cost.saturating_add(cost_nanos);
            }
        }
        if let Some(cl) = &p.cost_limits {
            c.roll(now_s, cl.weekly_reset);
            c.day.1 = c.day.1.saturating_add(cost_nanos);
            c.week.1 = c.week.1.saturating_add(cost_nanos);
            c.total = c.total.saturating_add(cost_nanos);
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
            Admission::Admitted => None,
            Admission::Refused(r) => Some((r.status, r.reason, r.retry_after)),
        }
    }

    const T0: i64 = 1_800_000_000_000; // a multiple of 60 s

    #[tokio::test]
    async fn windows_caps_and_slots() {
        let m = MemoryLimits::new();
        let k = key(r#"{"rate_limit":{"window_minutes":1,"requests":2,"tokens":100}}"#);
        assert!(refused(&m.admit(&k, "", T0).await.unwrap()).is_none());
        assert!(refused(&m.admit(&k, "", T0 + 1).await.unwrap()).is_none());
        assert_eq!(
            refused(&m.admit(&k, "", T0 + 20_500).await.unwrap()),
            Some((429, "rate_limit", Some(40)))
        );
        assert!(refused(&m.admit(&k, "", T0 + 60_000).await.unwrap()).is_none());
        m.charge(&k, 100, 0, T0 + 60_001).await.unwrap();
        assert_eq!(
            refused(&m.admit(&k, "", T0 + 60_002).await.unwrap()).map(|r| r.1),
            Some("rate_limit")
        );

        let k = key(r#"{"cost_limits":{"daily_usd":1,"total_usd":3}}"#);
        assert!(refused(&m.admit(&k, "", T0).await.unwrap()).is_none());
        m.charge(&k, 1, 1_000_000_000, T0).await.unwrap();
        assert_eq!(
            refused(&m.admit(&k, "", T0).await.unwrap()).map(|r| (r.0, r.1)),
            Some((402, "daily_cost_limit"))
        );
        // The next day starts from zero; the total stays.
        m.charge(&k, 1, 2_000_000_000, T0 + 86_400_000).await.unwrap();
        assert_eq!(
            refused(&m.admit(&k, "", T0 + 86_400_000).await.unwrap()),
            Some((402, "total_cost_limit", None))
        );

        let k = key(r#"{"concurrency":{"limit":1}}"#);
        assert!(refused(&m.admit(&k, "a", T0).await.unwrap()).is_none());
        assert_eq!(
            refused(&m.admit(&k, "b", T0).await.unwrap()),
            Some((429, "concurrency_limit", Some(1)))
        );
        m.release("k", "a").await.unwrap();
        assert!(refused(&m.admit(&k, "b", T0).await.unwrap()).is_none());
    }
}
