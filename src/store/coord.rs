//! Coordination state shared by relay instances: sticky sessions, concurrency leases and account
//! health. Unlike the records of [`super::Store`], this state is short-lived (every entry expires
//! by itself) and sits on the request path, so each operation is one round trip at most.
//!
//! Two implementations: [`MemoryCoordination`] (the embedded backend's single instance) and
//! [`super::redis_coord::RedisCoordination`] (shared by every instance on one Redis). Both pass
//! [`super::coord_contract`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreResult;

/// Why an account is out of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// A transient upstream error (5xx, 529, connect failures): back after `until`.
    CoolingDown,
    /// The upstream said a rate window is exhausted: back at its reset.
    RateLimited,
    /// The daily spend cap is reached: back at the quota reset.
    OverQuota,
    /// The upstream refused the credential (401).
    Unauthorized,
    /// The upstream refused the account itself (403, organization disabled).
    Blocked,
}

/// An account's shared health entry. `until` (Unix ms) is when it returns by itself; `None` means
/// only an admin action brings it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountHealth {
    pub state: HealthState,
    /// Short, secret-free reason, e.g. `upstream 529`.
    pub reason: String,
    /// Unix ms.
    pub since: i64,
    /// Unix ms.
    pub until: Option<i64>,
    /// When the limit covers only one model family (`opus`, `sonnet`), its name.
    #[serde(default)]
    pub family: Option<String>,
}

impl AccountHealth {
    /// An entry from `now_ms` that lasts `duration` (`None`: until an admin action), for every
    /// model.
    pub fn starting(state: HealthState, reason: impl Into<String>, now_ms: i64, duration: Option<Duration>) -> Self {
        AccountHealth {
            state,
            reason: reason.into(),
            since: now_ms,
            until: duration.map(|d| now_ms.saturating_add(d.as_millis().min(i64::MAX as u128) as i64)),
            family: None,
        }
    }

    pub fn active_at(&self, now_ms: i64) -> bool {
        self.until.is_none_or(|u| u > now_ms)
    }
}

/// A lease slot asked for together with a sticky-session lookup
/// ([`Coordination::sticky_get_and_lease`]).
#[derive(Debug, Clone, Copy)]
pub struct LeaseAsk<'a> {
    /// The account the slot is for: taken only when the session is bound to it or to none.
    pub account: &'a str,
    pub scope: &'a str,
    pub holder: &'a str,
    pub limit: u32,
    pub ttl: Duration,
}

/// [`Coordination::sticky_get_and_lease`] as two calls: the lookup, then the lease unless the
/// session is bound to another account.
pub async fn sticky_then_lease<C: Coordination + ?Sized>(
    c: &C,
    session: &str,
    ttl: Duration,
    lease: &LeaseAsk<'_>,
) -> StoreResult<(Option<String>, bool)> {
    let bound = c.sticky_get(session, ttl).await?;
    if bound.as_deref().is_some_and(|b| b != lease.account) {
        return Ok((bound, false));
    }
    let taken = c
        .lease_acquire(lease.scope, lease.holder, lease.limit, lease.ttl)
        .await?;
    Ok((bound, taken))
}

#[async_trait]
pub trait Coordination: Send + Sync + 'static {
    /// The account a session is bound to, renewing the binding for `ttl`.
    async fn sticky_get(&self, session: &str, ttl: Duration) -> StoreResult<Option<String>>;
    async fn sticky_set(&self, session: &str, account_id: &str, ttl: Duration) -> StoreResult<()>;

    /// The session's sticky account (renewing it for `ttl`) and, when that is `lease.account` or
    /// the session has none, a slot of `lease.scope` for `lease.holder`: whether it was taken. One
    /// round trip on a shared store; no slot is held when the session is bound to another
    /// account (a Redis Cluster asks for both at once and gives such a slot back).
    async fn sticky_get_and_lease(
        &self,
        session: &str,
        ttl: Duration,
        lease: &LeaseAsk<'_>,
    ) -> StoreResult<(Option<String>, bool)> {
        sticky_then_lease(self, session, ttl, lease).await
    }

    /// Takes one of `limit` slots of `scope` for `holder` (idempotent for the same holder). A slot
    /// frees itself `ttl` after its last renewal, so a crashed holder cannot leak it.
    async fn lease_acquire(&self, scope: &str, holder: &str, limit: u32, ttl: Duration) -> StoreResult<bool>;
    async fn lease_release(&self, scope: &str, holder: &str) -> StoreResult<()>;
    /// Extends every listed `(scope, holder)` lease by `ttl`, in one round trip.
    async fn lease_renew(&self, leases: &[(String, String)], ttl: Duration) -> StoreResult<()>;
    /// Live slots of `scope`.
    async fn lease_count(&self, scope: &str) -> StoreResult<u32>;

    async fn put_account_health(&self, account_id: &str, health: &AccountHealth) -> StoreResult<()>;
    async fn clear_account_health(&self, account_id: &str) -> StoreResult<()>;
    /// Every entry still in force at `now_ms`.
    async fn account_health(&self, now_ms: i64) -> StoreResult<BTreeMap<String, AccountHealth>>;

    /// Publishes an instance's live view (a JSON document) until `until_ms`; the next one
    /// replaces it.
    async fn put_instance_live(&self, instance: &str, doc: &str, until_ms: i64) -> StoreResult<()>;
    /// The live view of every instance that published one still valid at `now_ms`, by instance.
    async fn instances_live(&self, now_ms: i64) -> StoreResult<BTreeMap<String, String>>;

    /// Claims `key` for `ttl`: true for the first caller, false for every other until the claim
    /// expires (so one instance of several does a thing once per `ttl`, e.g. send an alert).
    async fn claim_once(&self, key: &str, ttl: Duration) -> StoreResult<bool>;
}

/// In-process coordination for the embedded backend (one instance).
#[derive(Default)]
pub struct MemoryCoordination {
    sticky: Mutex<HashMap<String, (String, Instant)>>,
    leases: Mutex<HashMap<String, HashMap<String, Instant>>>,
    health: Mutex<BTreeMap<String, AccountHealth>>,
    live: Mutex<BTreeMap<String, (i64, String)>>,
    claims: Mutex<HashMap<String, Instant>>,
}

impl MemoryCoordination {
    pub fn new() -> Self {
        Self::default()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl Coordination for MemoryCoordination {
    async fn sticky_get(&self, session: &str, ttl: Duration) -> StoreResult<Option<String>> {
        let mut map = lock(&self.sticky);
        let now = Instant::now();
        if map.len() > 100_000 {
            map.retain(|_, (_, exp)| *exp > now);
        }
        match map.get_mut(session) {
            Some((account, exp)) if *exp > now => {
                *exp = now + ttl;
                Ok(Some(account.clone()))
            }
            Some(_) => {
                map.remove(session);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn sticky_set(&self, session: &str, account_id: &str, ttl: Duration) -> StoreResult<()> {
        lock(&self.sticky).insert(session.to_string(), (account_id.to_string(), Instant::now() + ttl));
        Ok(())
    }

    async fn lease_acquire(&self, scope: &str, holder: &str, limit: u32, ttl: Duration) -> StoreResult<bool> {
        let mut map = lock(&self.leases);
        let now = Instant::now();
        let slots = map.entry(scope.to_string()).or_default();
        slots.retain(|_, exp| *exp > now);
        if let Some(exp) = slots.get_mut(holder) {
            *exp = now + ttl;
            return Ok(true);
        }
        if slots.len() < limit as usize {
            slots.insert(holder.to_string(), now + ttl);
            return Ok(true);
        }
        Ok(false)
    }

    async fn lease_release(&self, scope: &str, holder: &str) -> StoreResult<()> {
        let mut map = lock(&self.leases);
        if let Some(slots) = map.get_mut(scope) {
            slots.remove(holder);
            if slots.is_empty() {
                map.remove(scope);
            }
        }
        Ok(())
    }

    async fn lease_renew(&self, leases: &[(String, String)], ttl: Duration) -> StoreResult<()> {
        let mut map = lock(&self.leases);
        let now = Instant::now();
        for (scope, holder) in leases {
            if let Some(exp) = map.get_mut(scope).and_then(|s| s.get_mut(holder))
                && *exp > now
            {
                *exp = now + ttl;
            }
        }
        Ok(())
    }

    async fn lease_count(&self, scope: &str) -> StoreResult<u32> {
        let now = Instant::now();
        Ok(lock(&self.leases)
            .get(scope)
            .map_or(0, |s| s.values().filter(|e| **e > now).count() as u32))
    }

    async fn put_account_health(&self, account_id: &str, health: &AccountHealth) -> StoreResult<()> {
        lock(&self.health).insert(account_id.to_string(), health.clone());
        Ok(())
    }

    async fn clear_account_health(&self, account_id: &str) -> StoreResult<()> {
        lock(&self.health).remove(account_id);
        Ok(())
    }

    async fn account_health(&self, now_ms: i64) -> StoreResult<BTreeMap<String, AccountHealth>> {
        let mut map = lock(&self.health);
        map.retain(|_, h| h.active_at(now_ms));
        Ok(map.clone())
    }

    async fn put_instance_live(&self, instance: &str, doc: &str, until_ms: i64) -> StoreResult<()> {
        lock(&self.live).insert(instance.to_string(), (until_ms, doc.to_string()));
        Ok(())
    }

    async fn instances_live(&self, now_ms: i64) -> StoreResult<BTreeMap<String, String>> {
        let mut map = lock(&self.live);
        map.retain(|_, (until, _)| *until > now_ms);
        Ok(map.iter().map(|(k, (_, doc))| (k.clone(), doc.clone())).collect())
    }

    async fn claim_once(&self, key: &str, ttl: Duration) -> StoreResult<bool> {
        let mut map = lock(&self.claims);
        let now = Instant::now();
        if map.len() > 10_000 {
            map.retain(|_, exp| *exp > now);
        }
        match map.get(key) {
            Some(exp) if *exp > now => Ok(false),
            _ => {
                map.insert(key.to_string(), now + ttl);
                Ok(true)
            }
        }
    }
}
