//! Limits on Redis, shared by every relay instance on it and exact across them.
//!
//! Key layout under the store prefix `{p}` (the key id comes last, as in the store's own keys):
//!
//! | key                        | type       | content                                              |
//! |----------------------------|------------|------------------------------------------------------|
//! | `{p}limit:rate:{id}`       | hash       | a fixed rate window: `start` (ms), `requests`, `tokens`, `cost`; expires one window after its end. A rolling window: the sums of its entries |
//! | `{p}limit:rolling:{id}`    | sorted set | a rolling window's entries `a\|c\|holder\|requests\|tokens\|cost` → when counted (ms); both keys expire one window (+1 min) after the last write |
//! | `{p}limit:spend:{id}`      | hash       | `total` (nano-USD, all the key spent) and per period (day, week, month) its start and its base: the period's spend is `total` less the base; no expiry |
//! | `{p}limit:inflight:{id}`   | sorted set | requests in flight, each its concurrency slot and its spend reservation: `nano-USD:holder` → expiry (server ms); `~reserved` → minus the sum of their amounts |
//! | `{p}limit:activated:{id}`  | string     | first use of an activation-mode key (Unix s)         |
//!
//! Round trips: an admission is one Lua script (`lua/admit.lua`: every cap, window, the slot and
//! the reservation, taken only when all pass, on the server's clock `TIME`); settling a finished
//! request is one script (`lua/settle.lua`: frees its place in flight and charges its tokens and
//! cost, after the response); a request that ends without settling (cut before completion) frees
//! its place with the same script and no charge. The first
//! admission of a key with spend caps on a day also reads its recorded spend from the usage
//! statistics ([`super::SpendSeeds`]: one more pipeline per granularity, once).
//!
//! Charges land in the window and the day that the hash holds when they arrive: a request that
//! completes after its window (or day) ended, before any new admission of the key, is counted in
//! the window (day) it was admitted in. A rolling window's charges are entries at the time of the
//! charge; an admission first drops the entries that slid out (each entry is added once and
//! removed once, and the sums are kept beside them, so an admission does not re-add the window).
//!
//! What a request costs Redis is kept small, and does not grow with the key's requests in flight:
//! one member in flight holds both its slot and its reservation (one write on admission, one on
//! settlement, one renewal), and the set keeps the sum of their reservations beside them (the
//! score of its `~reserved` member, so that it expires with them); a charge to the spend is
//! one `HINCRBY` of `total`, whatever caps the key has (the day's, week's and month's spends are
//! derived from it and their bases, which an admission writes when a period begins); a window's
//! expiry is set again only by a charge that may have created its hash.
//!
//! A spend hash written before the bases (`day`, `week`, `month` fields) is read as it is and
//! rewritten with bases by the next admission. Relay versions from before this layout read only
//! those fields: running both against one Redis (a rolling upgrade of several instances) counts
//! the day's, week's and month's spends short on the older instances until they are replaced, and
//! their concurrency slots apart from this version's.
//!
//! Concurrency slots and spend reservations are leases. Each is taken for the lease time (60 s, or
//! `RELAY_CONCURRENCY_LEASE_TTL`, e.g. `5s`, read once at start) and this instance renews the ones
//! it holds every third of it in one script call, so a stream may run as long as it likes while
//! the slots and reservations of an instance that died come back within one lease time. A slot is
//! freed by the settlement, or by one `ZREM` from the request's guard; if that fails, or the request was
//! cancelled after Redis gave it the slot but before it heard so, the lease runs out.
//!
//! This backend runs on a multiplexed connection of its own, apart from the store's, so an
//! admission never waits behind a large usage flush there; the server gives the same connection
//! to the coordination state ([`RedisLimits::hot_connection`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use filters::{Admission, ClientKey, LimitBackend, LimitPeek, Reservation};
use redis::Script;

use super::{Refusal, Shortfall, SpendSeeds};
use crate::store::Store;
use crate::store::redis_conn::{KeyNames, RedisConn, RedisTarget};

/// The lease time of a concurrency slot when `RELAY_CONCURRENCY_LEASE_TTL` is not set.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);
/// The environment variable that sets the lease time (`30s`, `2m`; at least 1 s).
pub const LEASE_TTL_ENV: &str = "RELAY_CONCURRENCY_LEASE_TTL";

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
    conn: RedisConn,
    names: KeyNames,
    admit: Script,
    settle: Script,
    renew: Script,
    activate: Script,
    peek: Script,
    seeds: SpendSeeds,
    /// Requests in flight this instance holds, (sorted set, holder) → member, renewed until
    /// released.
    held: Mutex<HashMap<(String, String), String>>,
    lease_ttl: Duration,
}

/// What a settlement charges to a key's windows and spend (`lua/settle.lua`'s ARGV 1–5).
struct Charge {
    tokens: i64,
    cost_nanos: i64,
    /// The rate window's kind: 0 none (or one without tokens and cost), 1 fixed, 2 rolling.
    mode: i64,
    window_ms: i64,
    /// Whether the cost goes to the spend (the key has spend caps and the request cost something).
    spend: bool,
}

impl Charge {
    /// Nothing charged: the settlement only frees the request's place in flight.
    const NONE: Charge = Charge {
        tokens: 0,
        cost_nanos: 0,
        mode: 0,
        window_ms: 0,
        spend: false,
    };
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl RedisLimits {
    /// Connects to the store's Redis (`target`); key names go under `prefix` (the store's).
    pub async fn connect(
        target: &RedisTarget,
        prefix: &str,
        store: Arc<dyn Store>,
        lease_ttl: Duration,
    ) -> Result<Self, String> {
        let conn = RedisConn::connect(target, RESPONSE_TIMEOUT).await?;
        Ok(Self::on(conn, prefix, store, lease_ttl))
    }

    /// On `conn`, a connection of the request path (see [`Self::hot_connection`]).
    pub fn on(conn: RedisConn, prefix: &str, store: Arc<dyn Store>, lease_ttl: Duration) -> Self {
        RedisLimits {
            names: KeyNames::new(prefix, conn.is_cluster()),
            conn,
            admit: Script::new(include_str!("lua/admit.lua")),
            settle: Script::new(include_str!("lua/settle.lua")),
            renew: Script::new(include_str!("lua/renew.lua")),
            activate: Script::new(include_str!("lua/activate.lua")),
            peek: Script::new(include_str!("lua/peek.lua")),
            seeds: SpendSeeds::new(store),
            held: Mutex::new(HashMap::new()),
            lease_ttl,
        }
    }

    /// A connection for the calls on a request's path: the key limits and the coordination state
    /// (sticky sessions, account leases) share it, apart from the store's connection and its bulk
    /// writes (usage flushes, logs), so that an admission never waits behind those, and the calls
    /// a request sends together leave in one write and come back in one read.
    pub async fn hot_connection(target: &RedisTarget) -> Result<RedisConn, String> {
        RedisConn::connect(target, RESPONSE_TIMEOUT).await
    }

    /// `{p}limit:{kind}:{id}`; on a Cluster the id is the hash tag, so one key's limits share a
    /// slot (its scripts use them together) and different keys spread over the slots.
    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}limit:{kind}:{}", self.names.prefix(), self.names.tag(id))
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Renews every slot and reservation this instance holds, in one script call per
    /// [`RENEW_BATCH`].
    pub async fn renew_held(&self) -> Result<usize, String> {
        let mut held: Vec<(String, String)> = self
            .held()
            .iter()
            .map(|((set, _), m)| (set.clone(), m.clone()))
            .collect();
        // On a Cluster a script's keys share one slot: a batch per key there.
        let batches: Vec<&[(String, String)]> = if self.names.cluster() {
            held.sort_unstable();
            held.chunk_by(|a, b| a.0 == b.0)
                .flat_map(|same| same.chunks(RENEW_BATCH))
                .collect()
        } else {
            held.chunks(RENEW_BATCH).collect()
        };
        for batch in batches {
            let mut inv = self.renew.prepare_invoke();
            inv.arg(ms(self.lease_ttl));
            for (set, member) in batch {
                inv.key(set);
                inv.arg(member);
            }
            inv.invoke_async::<i64>(&mut self.conn.clone())
                .await
                .map_err(|e| format!("redis: {e}"))?;
        }
        Ok(held.len())
    }

    /// Frees the place in flight of `holder` (the member this instance took for it) with the
    /// settlement's script and no charge (its reservation leaves the sum too); nothing when it
    /// was freed already (a request's slot and its reservation are one member, and both guards
    /// free it).
    async fn free(&self, key_id: &str, holder: &str) -> Result<(), String> {
        let set = self.key("inflight", key_id);
        let Some(member) = self.held().remove(&(set.clone(), holder.to_string())) else {
            return Ok(());
        };
        self.run_settle(key_id, &set, &member, holder, Charge::NONE)
            .await
            .map_err(|e| format!("redis: {e}"))
    }

    /// One call of `lua/settle.lua` on the key's limits: frees `member` of `set` (its place in
    /// flight, when not empty; `holder` names a rolling window's entry) and charges `charge`.
    async fn run_settle(
        &self,
        key_id: &str,
        set: &str,
        member: &str,
        holder: &str,
        charge: Charge,
    ) -> redis::RedisResult<()> {
        self.settle
            .key(self.key("rate", key_id))
            .key(self.key("spend", key_id))
            .key(set)
            .key(self.key("rolling", key_id))
            .arg(charge.tokens)
            .arg(charge.cost_nanos)
            .arg(charge.mode)
            .arg(charge.window_ms)
            .arg(i64::from(charge.spend))
            .arg(member)
            .arg(holder)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(|_| ())
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

/// A request's member among those in flight: the amount it reserves first (0: none), so the
/// admission can sum them.
fn flight_member(holder: &str, nanos: u64) -> String {
    format!("{nanos}:{holder}")
}

#[async_trait]
impl LimitBackend for RedisLimits {
    async fn admit(&self, key: &ClientKey, holder: &str, reserve_nanos: u64, now_ms: i64) -> Result<Admission, String> {
        let p = &key.policy;
        if p.rate_limit.is_none() && p.cost_limits.is_none() && p.concurrency.is_none() {
            return Ok(Admission::Admitted);
        }
        let estimate = if p.reserves_cost() { reserve_nanos } else { 0 };
        let seed = match &p.cost_limits {
            Some(caps) => self.seeds.get(&key.id, caps, now_ms.div_euclid(1000)).await,
            None => None,
        };
        let none = -1i64;
        let mut inv = self.admit.prepare_invoke();
        inv.key(self.key("rate", &key.id))
            .key(self.key("spend", &key.id))
            .key(self.key("inflight", &key.id))
            .key(self.key("rolling", &key.id))
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
                .arg(c.monthly_nanos.map_or(none, int))
                .arg(c.weekly_reset.0)
                .arg(c.weekly_reset.1),
            None => inv.arg(0).arg(none).arg(none).arg(none).arg(none).arg(0).arg(0),
        };
        inv.arg(p.concurrency.as_ref().map_or(0, |c| c.limit))
            .arg(ms(self.lease_ttl))
            .arg(int(estimate))
            .arg(i64::from(p.rate_limit.as_ref().is_some_and(|r| r.rolling)));
        // The month's bounds, which the script would otherwise work out from the date on every
        // call (it does when the server's clock is outside them).
        let now_s = now_ms.div_euclid(1000);
        if p.cost_limits.is_some() {
            let start = super::month_start(now_s);
            inv.arg(start).arg(crate::store::Granularity::Month.next_bucket(start));
        } else {
            inv.arg(0).arg(0);
        }
        if let Some(s) = &seed {
            inv.arg(s.day_start)
                .arg(int(s.day))
                .arg(s.week_start)
                .arg(int(s.week))
                .arg(s.month_start)
                .arg(int(s.month))
                .arg(int(s.total));
        }
        let answer: Vec<i64> = inv
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| format!("redis: {e}"))?;
        let at = |i: usize| answer.get(i).copied().unwrap_or(0);
        let wait = Some(at(1).max(0) as u64);
        let shortfall = match at(2) {
            1 => Shortfall::Reserved,
            2 => Shortfall::TooLarge {
                estimate: at(3).max(0) as u64,
                room: at(4).max(0) as u64,
            },
            _ => Shortfall::Spent,
        };
        Ok(match answer.first().copied().unwrap_or(-1) {
            0 => {
                if p.concurrency.is_some() || estimate > 0 {
                    self.held().insert(
                        (self.key("inflight", &key.id), holder.to_string()),
                        flight_member(holder, estimate),
                    );
                }
                if estimate > 0 {
                    Admission::Reserved {
                        room_nanos: at(2).max(0) as u64,
                    }
                } else {
                    Admission::Admitted
                }
            }
            1 => Refusal::Rate.refused(shortfall, wait),
            2 => Refusal::Concurrency.admission(wait),
            3 => Refusal::Daily.refused(shortfall, wait),
            4 => Refusal::Weekly.refused(shortfall, wait),
            5 => Refusal::Total.refused(shortfall, (shortfall == Shortfall::Reserved).then_some(1)),
            6 => Refusal::Monthly.refused(shortfall, wait),
            other => return Err(format!("unexpected admission answer {other}")),
        })
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
        _now_ms: i64,
    ) -> Result<(), String> {
        let p = &key.policy;
        let (mode, window) = match &p.rate_limit {
            Some(r) if r.tokens.is_some() || r.cost_nanos.is_some() => (if r.rolling { 2 } else { 1 }, ms(r.window)),
            _ => (0, 0),
        };
        let spend = p.cost_limits.is_some() && cost_nanos > 0;
        if reservation.is_none() && slot.is_none() && ((mode == 0 && !spend) || (tokens == 0 && cost_nanos == 0)) {
            return Ok(());
        }
        // The request's one member in flight, whether it held a slot, a reservation or both.
        let set = self.key("inflight", &key.id);
        let member = match (reservation, slot) {
            (Some(r), _) => flight_member(&r.holder, r.nanos),
            (None, Some(holder)) => flight_member(holder, 0),
            (None, None) => String::new(),
        };
        if let Some(holder) = reservation.map(|r| r.holder.as_str()).or(slot) {
            self.held().remove(&(set.clone(), holder.to_string()));
        }
        let holder = reservation.map(|r| r.holder.as_str()).or(slot).unwrap_or("");
        let charge = Charge {
            tokens: int(tokens),
            cost_nanos: int(cost_nanos),
            mode,
            window_ms: window,
            spend,
        };
        let done = self.run_settle(&key.id, &set, &member, holder, charge).await;
        done.map_err(|e| {
            tracing::warn!(key = %key.id, error = %e, "settling a key's limits failed; its reservation will run out");
            format!("redis: {e}")
        })
    }

    async fn unreserve(&self, key_id: &str, reservation: &Reservation) -> Result<(), String> {
        // Only when the request ends: its member goes, with the slot it may also hold.
        self.free(key_id, &reservation.holder).await.map_err(|e| {
            tracing::warn!(key = %key_id, error = %e, "freeing a reservation failed; its lease will run out");
            e
        })
    }

    async fn release(&self, key_id: &str, holder: &str) -> Result<(), String> {
        self.free(key_id, holder).await.map_err(|e| {
            tracing::warn!(key = %key_id, error = %e, "releasing a concurrency slot failed; its lease will run out");
            e
        })
    }

    async fn peek(&self, key: &ClientKey, now_ms: i64) -> Result<LimitPeek, String> {
        let p = &key.policy;
        let reset = p.cost_limits.as_ref().map_or((0, 0), |c| c.weekly_reset);
        let answer: Vec<i64> = self
            .peek
            .key(self.key("rate", &key.id))
            .key(self.key("spend", &key.id))
            .key(self.key("inflight", &key.id))
            .key(self.key("rolling", &key.id))
            .arg(p.rate_limit.as_ref().map_or(0, |r| ms(r.window)))
            .arg(i64::from(p.rate_limit.as_ref().is_some_and(|r| r.rolling)))
            .arg(reset.0)
            .arg(reset.1)
            .arg(super::month_start(now_ms.div_euclid(1000)))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| format!("redis: {e}"))?;
        let at = |i: usize| answer.get(i).copied().unwrap_or(0).max(0) as u64;
        Ok(LimitPeek {
            requests: at(0),
            tokens: at(1),
            cost_nanos: at(2),
            window_ends_ms: answer.get(3).copied().filter(|e| *e >= 0),
            day_nanos: at(4),
            week_nanos: at(5),
            month_nanos: at(6),
            total_nanos: at(7),
            in_flight: at(8),
            reserved_nanos: at(9),
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
