//! Limits on Redis, shared by every relay instance on it and exact across them.
//!
//! Key layout under the store prefix `{p}` (the key id comes last, as in the store's own keys):
//!
//! | key                        | type       | content                                              |
//! |----------------------------|------------|------------------------------------------------------|
//! | `{p}limit:rate:{id}`       | hash       | the current rate window: `start` (ms), `requests`, `tokens`, `cost`; expires one window after its end |
//! | `{p}limit:spend:{id}`      | hash       | `day_start`, `day`, `week_start`, `week`, `total` (nano-USD); no expiry |
//! | `{p}limit:slots:{id}`      | sorted set | concurrency slots: holder → expiry (server ms)       |
//! | `{p}limit:activated:{id}`  | string     | first use of an activation-mode key (Unix s)         |
//!
//! Round trips: an admission is one Lua script (`lua/admit.lua`: every cap, window and the slot,
//! reserved only when all pass, on the server's clock `TIME`); a charge is one `MULTI`/`EXEC`
//! pipeline of `HINCRBY`s (after the response, off the request's critical path); a release is
//! one `ZREM`. The first admission of a key with spend caps on a day also reads its recorded spend
//! from the usage statistics ([`super::SpendSeeds`]: one more pipeline per granularity, once).
//!
//! Charges land in the window and the day that the hash holds when they arrive: a request that
//! completes after its window (or day) ended, before any new admission of the key, is counted in
//! the window (day) it was admitted in.
//!
//! Concurrency slots are leases. Each is taken for the lease time (60 s, or
//! `RELAY_CONCURRENCY_LEASE_TTL`, e.g. `5s`, read once at start) and this instance renews the slots
//! it holds every third of it in one script call, so a stream may run as long as it likes while
//! the slots of an instance that died come back within one lease time. The release of a slot is
//! one `ZREM` from the request's guard; if it fails, or the request was cancelled after Redis
//! gave it the slot but before it heard so, the lease runs out.
//!
//! This backend opens its own multiplexed connection, so an admission never waits behind a large
//! usage flush on the store's connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use filters::{Admission, ClientKey, LimitBackend};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, Script};

use super::{Refusal, SpendSeeds};
use crate::store::Store;

/// The lease time of a concurrency slot when `RELAY_CONCURRENCY_LEASE_TTL` is not set.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);
/// The environment variable that sets the lease time (`30s`, `2m`; at least 1 s).
pub const LEASE_TTL_ENV: &str = "RELAY_CONCURRENCY_LEASE_TTL";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Slots renewed per script call.
const RENEW_BATCH: usize = 500;

/// The lease time from the environment (`env` is `std::env::var` in the server).
pub fn lease_ttl_from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Duration, String> {
    match env(LEASE_TTL_ENV).filter(|v| !v.trim().is_empty()) {
        None => Ok(DEFAULT_LEASE_TTL),
        Some(v) => filters::policy::parse_period(&v).map_err(|e| format!("environment variable {LEASE_TTL_ENV}: {e}")),
    }
}

pub struct RedisLimits {
    conn: ConnectionManager,
    prefix: String,
    admit: Script,
    renew: Script,
    activate: Script,
    seeds: SpendSeeds,
    /// Slots this instance holds, holder → key id, renewed until released.
    held: Mutex<HashMap<String, Arc<str>>>,
    lease_ttl: Duration,
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl RedisLimits {
    /// Connects to Redis at `url` (the store's); key names go under `prefix` (the store's).
    pub async fn connect(url: &str, prefix: &str, store: Arc<dyn Store>, lease_ttl: Duration) -> Result<Self, String> {
        // The URL may hold a password: never echo it.
        let info = url
            .into_connection_info()
            .map_err(|e| format!("invalid redis URL: {:?}", e.kind()))?;
        let client = Client::open(info).map_err(|e| format!("redis: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(4)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        Ok(RedisLimits {
            conn,
            prefix: prefix.to_string(),
            admit: Script::new(include_str!("lua/admit.lua")),
            renew: Script::new(include_str!("lua/renew.lua")),
            activate: Script::new(include_str!("lua/activate.lua")),
            seeds: SpendSeeds::new(store),
            held: Mutex::new(HashMap::new()),
            lease_ttl,
        })
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}limit:{kind}:{id}", self.prefix)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<str>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Renews every slot this instance holds, in one script call per [`RENEW_BATCH`] slots.
    pub async fn renew_held(&self) -> Result<usize, String> {
        let held: Vec<(String, Arc<str>)> = self.held().iter().map(|(h, k)| (h.clone(), k.clone())).collect();
        for batch in held.chunks(RENEW_BATCH) {
            let mut inv = self.renew.prepare_invoke();
            inv.arg(ms(self.lease_ttl));
            for (holder, key_id) in batch {
                inv.key(self.key("slots", key_id));
                inv.arg(holder);
            }
            inv.invoke_async::<i64>(&mut self.conn.clone())
                .await
                .map_err(|e| format!("redis: {e}"))?;
        }
        Ok(held.len())
    }

    /// Renews the held slots every third of the lease time; runs until the task is dropped.
    pub async fn renew_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval((self.lease_ttl / 3).max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.held().is_empty() {
                continue;
            }
            if let Err(e) = self.renew_held().await {
                tracing::warn!(error = %e, "renewing concurrency slots failed");
            }
        }
    }
}

#[async_trait]
impl LimitBackend for RedisLimits {
    async fn admit(&self, key: &ClientKey, holder: &str, now_ms: i64) -> Result<Admission, String> {
        let p = &key.policy;
        if p.rate_limit.is_none() && p.cost_limits.is_none() && p.concurrency.is_none() {
            return Ok(Admission::Admitted);
        }
        let seed = match &p.cost_limits {
            Some(caps) => self.seeds.get(&key.id, caps, now_ms.div_euclid(1000)).await,
            None => None,
        };
        let none = -1i64;
        let mut inv = self.admit.prepare_invoke();
        inv.key(self.key("rate", &key.id))
            .key(self.key("spend", &key.id))
            .key(self.key("slots", &key.id))
            .arg(holder);
        match &p.rate_limit {
            Some(r) => inv
                .arg(ms(r.window))
                .arg(r.requests.map_or(none, int))
                .arg(r.tokens.map_or(none, int))
                .arg(r.cost_nanos.map_or(none, int)),
            None => inv.arg(0).arg(none).arg(none).arg(none),
        };
        match &p.cost_limits {
            Some(c) => inv
                .arg(1)
                .arg(c.daily_nanos.map_or(none, int))
                .arg(c.weekly_nanos.map_or(none, int))
                .arg(c.total_nanos.map_or(none, int))
                .arg(c.weekly_reset.0)
                .arg(c.weekly_reset.1),
            None => inv.arg(0).arg(none).arg(none).arg(none).arg(0).arg(0),
        };
        inv.arg(p.concurrency.as_ref().map_or(0, |c| c.limit))
            .arg(ms(self.lease_ttl));
        match &seed {
            Some(s) => inv
                .arg(1)
                .arg(s.day_start)
                .arg(int(s.day))
                .arg(s.week_start)
                .arg(int(s.week))
                .arg(int(s.total)),
            None => inv.arg(0).arg(0).arg(0).arg(0).arg(0).arg(0),
        };
        let answer: Vec<i64> = inv
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| format!("redis: {e}"))?;
        let wait = answer.get(1).map(|w| (*w).max(0) as u64);
        Ok(match answer.first().copied().unwrap_or(-1) {
            0 => {
                if p.concurrency.is_some() {
                    self.held().insert(holder.to_string(), key.id.clone());
                }
                Admission::Admitted
            }
            1 => Refusal::Rate.admission(wait),
            2 => Refusal::Concurrency.admission(wait),
            3 => Refusal::Daily.admission(wait),
            4 => Refusal::Weekly.admission(wait),
            5 => Refusal::Total.admission(None),
            other => return Err(format!("unexpected admission answer {other}")),
        })
    }

    async fn charge(&self, key: &ClientKey, tokens: u64, cost_nanos: u64, _now_ms: i64) -> Result<(), String> {
        let p = &key.policy;
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut any = false;
        if let Some(r) = &p.rate_limit
            && (r.tokens.is_some() || r.cost_nanos.is_some())
        {
            let k = self.key("rate", &key.id);
            pipe.cmd("HINCRBY").arg(&k).arg("tokens").arg(int(tokens)).ignore();
            pipe.cmd("HINCRBY").arg(&k).arg("cost").arg(int(cost_nanos)).ignore();
            // A charge after the window's hash expired must not leave a key without expiry.
            pipe.cmd("PEXPIRE").arg(&k).arg(2 * ms(r.window)).ignore();
            any = true;
        }
        if p.cost_limits.is_some() && cost_nanos > 0 {
            let k = self.key("spend", &key.id);
            for field in ["day", "week", "total"] {
                pipe.cmd("HINCRBY").arg(&k).arg(field).arg(int(cost_nanos)).ignore();
            }
            any = true;
        }
        if !any {
            return Ok(());
        }
        let done: Result<(), _> = pipe.query_async(&mut self.conn.clone()).await;
        done.map_err(|e| {
            tracing::warn!(key = %key.id, error = %e, "charging a key's limits failed");
            format!("redis: {e}")
        })
    }

    async fn release(&self, key_id: &str, holder: &str) -> Result<(), String> {
        self.held().remove(holder);
        let done: Result<i64, _> = redis::cmd("ZREM")
            .arg(self.key("slots", key_id))
            .arg(holder)
            .query_async(&mut self.conn.clone())
            .await;
        done.map(|_| ()).map_err(|e| {
            tracing::warn!(key = %key_id, error = %e, "releasing a concurrency slot failed; its lease will run out");
            format!("redis: {e}")
        })
    }

    async fn activate(&self, key_id: &str, now_s: i64) -> Result<i64, String> {
        self.activate
            .key(self.key("activated", key_id))
            .arg(now_s)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| format!("redis: {e}"))
    }
}
