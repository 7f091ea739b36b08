//! Coordination on Redis: every instance sees the same sticky sessions, leases and account health.
//!
//! Layout under the store prefix `{p}`: `{p}sticky:{session}` (string, PX ttl),
//! `{p}lease:{scope}` (sorted set of holders scored by expiry in server ms), `{p}health` (hash of
//! account id → JSON), `{p}claim:{key}` (string, NX PX ttl). Each call is one round trip (a
//! session's binding and an account's lease together too: `lua/sticky_lease.lua`, two on a
//! Cluster, where the two keys live in two slots); lease scripts use the server's clock so
//! instances with skewed clocks agree.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::redis_conn::{KeyNames, RedisConn};

use super::coord::{AccountHealth, Coordination, LeaseAsk};
use super::{StoreError, StoreResult};

pub struct RedisCoordination {
    conn: RedisConn,
    names: KeyNames,
    acquire: Script,
    renew: Script,
    count: Script,
    sticky_get: Script,
    sticky_lease: Script,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

fn ms(d: Duration) -> u64 {
    d.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}

impl RedisCoordination {
    pub fn new(conn: RedisConn, names: KeyNames) -> Self {
        RedisCoordination {
            conn,
            names,
            acquire: Script::new(include_str!("lua/lease_acquire.lua")),
            renew: Script::new(include_str!("lua/lease_renew.lua")),
            count: Script::new(include_str!("lua/lease_count.lua")),
            sticky_get: Script::new(include_str!("lua/sticky_get.lua")),
            sticky_lease: Script::new(include_str!("lua/sticky_lease.lua")),
        }
    }

    fn sticky_key(&self, session: &str) -> String {
        self.names.plain(&format!("sticky:{session}"))
    }

    fn lease_key(&self, scope: &str) -> String {
        self.names.plain(&format!("lease:{scope}"))
    }

    fn health_key(&self) -> String {
        self.names.plain("health")
    }

    fn live_key(&self) -> String {
        self.names.plain("live")
    }

    fn claim_key(&self, key: &str) -> String {
        self.names.plain(&format!("claim:{key}"))
    }
}

#[async_trait]
impl Coordination for RedisCoordination {
    async fn sticky_get(&self, session: &str, ttl: Duration) -> StoreResult<Option<String>> {
        let mut c = self.conn.clone();
        self.sticky_get
            .key(self.sticky_key(session))
            .arg(ms(ttl))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn sticky_set(&self, session: &str, account_id: &str, ttl: Duration) -> StoreResult<()> {
        let mut c = self.conn.clone();
        redis::cmd("SET")
            .arg(self.sticky_key(session))
            .arg(account_id)
            .arg("PX")
            .arg(ms(ttl))
            .query_async(&mut c)
            .await
            .map_err(unavailable)
    }

    async fn sticky_get_and_lease(
        &self,
        session: &str,
        ttl: Duration,
        lease: &LeaseAsk<'_>,
    ) -> StoreResult<(Option<String>, bool)> {
        if self.names.cluster() {
            // Two keys of two slots: two calls on a Cluster, sent together (one round trip); the
            // slot goes back when the session turns out to be bound to another account.
            let (bound, taken) = tokio::join!(
                self.sticky_get(session, ttl),
                self.lease_acquire(lease.scope, lease.holder, lease.limit, lease.ttl)
            );
            let taken = taken?;
            let bound = match bound {
                Ok(b) => b,
                Err(e) => {
                    if taken {
                        let _ = self.lease_release(lease.scope, lease.holder).await;
                    }
                    return Err(e);
                }
            };
            if taken && bound.as_deref().is_some_and(|b| b != lease.account) {
                self.lease_release(lease.scope, lease.holder).await?;
                return Ok((bound, false));
            }
            return Ok((bound, taken));
        }
        let mut c = self.conn.clone();
        let (bound, taken): (Option<String>, i64) = self
            .sticky_lease
            .key(self.sticky_key(session))
            .key(self.lease_key(lease.scope))
            .arg(ms(ttl))
            .arg(lease.account)
            .arg(lease.holder)
            .arg(lease.limit)
            .arg(ms(lease.ttl))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok((bound, taken == 1))
    }

    async fn lease_acquire(&self, scope: &str, holder: &str, limit: u32, ttl: Duration) -> StoreResult<bool> {
        let mut c = self.conn.clone();
        let got: i64 = self
            .acquire
            .key(self.lease_key(scope))
            .arg(holder)
            .arg(limit)
            .arg(ms(ttl))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(got == 1)
    }

    async fn lease_release(&self, scope: &str, holder: &str) -> StoreResult<()> {
        let mut c = self.conn.clone();
        redis::cmd("ZREM")
            .arg(self.lease_key(scope))
            .arg(holder)
            .query_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn lease_renew(&self, leases: &[(String, String)], ttl: Duration) -> StoreResult<()> {
        if leases.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.clone();
        // On a Cluster a script's keys share one slot: one call per lease set there.
        let groups: Vec<&[(String, String)]> = if self.names.cluster() {
            leases.chunks(1).collect()
        } else {
            vec![leases]
        };
        for group in groups {
            let mut inv = self.renew.prepare_invoke();
            inv.arg(ms(ttl));
            for (scope, holder) in group {
                inv.key(self.lease_key(scope));
                inv.arg(holder);
            }
            inv.invoke_async::<i64>(&mut c).await.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn lease_count(&self, scope: &str) -> StoreResult<u32> {
        let mut c = self.conn.clone();
        let n: i64 = self
            .count
            .key(self.lease_key(scope))
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(n.max(0) as u32)
    }

    async fn put_account_health(&self, account_id: &str, health: &AccountHealth) -> StoreResult<()> {
        let json = serde_json::to_string(health).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut c = self.conn.clone();
        redis::cmd("HSET")
            .arg(self.health_key())
            .arg(account_id)
            .arg(json)
            .query_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn clear_account_health(&self, account_id: &str) -> StoreResult<()> {
        let mut c = self.conn.clone();
        redis::cmd("HDEL")
            .arg(self.health_key())
            .arg(account_id)
            .query_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn account_health(&self, now_ms: i64) -> StoreResult<BTreeMap<String, AccountHealth>> {
        let mut c = self.conn.clone();
        let rows: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.health_key())
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let mut out = BTreeMap::new();
        let mut expired = Vec::new();
        for (id, json) in rows {
            match serde_json::from_str::<AccountHealth>(&json) {
                Ok(h) if h.active_at(now_ms) => {
                    out.insert(id, h);
                }
                Ok(_) => expired.push(id),
                Err(e) => tracing::warn!(account = %id, error = %e, "unreadable account health entry; ignored"),
            }
        }
        if !expired.is_empty() {
            let _: Result<i64, _> = redis::cmd("HDEL")
                .arg(self.health_key())
                .arg(&expired)
                .query_async(&mut c)
                .await;
        }
        Ok(out)
    }

    async fn put_instance_live(&self, instance: &str, doc: &str, until_ms: i64) -> StoreResult<()> {
        // One hash of every instance's view, each field `until_ms doc`; stale fields are dropped
        // by the readers (as the health entries are).
        let mut c = self.conn.clone();
        redis::cmd("HSET")
            .arg(self.live_key())
            .arg(instance)
            .arg(format!("{until_ms} {doc}"))
            .query_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn instances_live(&self, now_ms: i64) -> StoreResult<BTreeMap<String, String>> {
        let mut c = self.conn.clone();
        let rows: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.live_key())
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        let mut out = BTreeMap::new();
        let mut stale = Vec::new();
        for (instance, value) in rows {
            match value
                .split_once(' ')
                .and_then(|(u, doc)| Some((u.parse::<i64>().ok()?, doc)))
            {
                Some((until, doc)) if until > now_ms => {
                    out.insert(instance, doc.to_string());
                }
                _ => stale.push(instance),
            }
        }
        if !stale.is_empty() {
            let _: Result<i64, _> = redis::cmd("HDEL")
                .arg(self.live_key())
                .arg(&stale)
                .query_async(&mut c)
                .await;
        }
        Ok(out)
    }

    async fn claim_once(&self, key: &str, ttl: Duration) -> StoreResult<bool> {
        let mut c = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.claim_key(key))
            .arg("1")
            .arg("NX")
            .arg("PX")
            .arg(ms(ttl))
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(set.is_some())
    }
}
