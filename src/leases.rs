//! Concurrency leases held for the life of a request, released by a guard whatever way the
//! request ends (completion, error, client disconnect, panic), and renewed while long streams run.
//! A lease that its holder failed to release (the process died) expires by itself after
//! [`LEASE_TTL`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::lifecycle::Tasks;
use crate::store::coord::{Coordination, LeaseAsk};

/// Lifetime of a lease without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(60);
/// How often held leases are renewed.
pub const RENEW_EVERY: Duration = Duration::from_secs(20);

/// The leases this instance holds, for renewal.
pub struct Leases {
    coord: Arc<dyn Coordination>,
    held: Mutex<HashSet<(String, String)>>,
    /// Where releases run: on a runtime that outlives the request's, as work shutdown waits for.
    tasks: Tasks,
}

impl Leases {
    pub fn new(coord: Arc<dyn Coordination>, tasks: Tasks) -> Arc<Self> {
        Arc::new(Leases {
            coord,
            held: Mutex::new(HashSet::new()),
            tasks,
        })
    }

    /// Takes a slot of `scope` (at most `limit` holders). `Ok(None)` when the scope is full.
    pub async fn acquire(self: &Arc<Self>, scope: String, limit: u32) -> Result<Option<LeaseGuard>, String> {
        let holder = uuid::Uuid::new_v4().simple().to_string();
        match self.coord.lease_acquire(&scope, &holder, limit, LEASE_TTL).await {
            Ok(true) => Ok(Some(self.guard(scope, holder))),
            Ok(false) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Looks up a sticky session (renewing it for `ttl`) and, unless it is bound to another
    /// account than `account`, takes a slot of `scope` for this request: one round trip on Redis.
    /// Returns the binding and the slot (`None` when the scope is full or it was not asked for).
    pub async fn acquire_with_sticky(
        self: &Arc<Self>,
        session: &str,
        ttl: Duration,
        account: &str,
        scope: String,
        limit: u32,
    ) -> Result<(Option<String>, Option<LeaseGuard>), String> {
        let holder = uuid::Uuid::new_v4().simple().to_string();
        let ask = LeaseAsk {
            account,
            scope: &scope,
            holder: &holder,
            limit,
            ttl: LEASE_TTL,
        };
        match self.coord.sticky_get_and_lease(session, ttl, &ask).await {
            Ok((bound, true)) => Ok((bound, Some(self.guard(scope, holder)))),
            Ok((bound, false)) => Ok((bound, None)),
            Err(e) => Err(e.to_string()),
        }
    }

    fn guard(self: &Arc<Self>, scope: String, holder: String) -> LeaseGuard {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((scope.clone(), holder.clone()));
        LeaseGuard {
            leases: self.clone(),
            scope,
            holder,
        }
    }

    pub fn held_count(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Renews every held lease; runs until the task is dropped (at shutdown).
    pub async fn renew_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RENEW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let held: Vec<(String, String)> = self
                .held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect();
            if let Err(e) = self.coord.lease_renew(&held, LEASE_TTL).await {
                tracing::warn!(error = %e, leases = held.len(), "renewing concurrency leases failed");
            }
        }
    }
}

/// Releases its lease when dropped.
pub struct LeaseGuard {
    leases: Arc<Leases>,
    scope: String,
    holder: String,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let key = (std::mem::take(&mut self.scope), std::mem::take(&mut self.holder));
        self.leases.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        let coord = self.leases.coord.clone();
        let tasks = &self.leases.tasks;
        if !tasks.can_spawn() {
            tracing::warn!(scope = %key.0, "lease dropped outside a runtime; it will expire by itself");
            return;
        }
        // Also for a request cut at shutdown, whose own runtime is going away.
        drop(tasks.spawn_work("concurrency lease release", async move {
            if let Err(e) = coord.lease_release(&key.0, &key.1).await {
                // The lease expires by itself after LEASE_TTL.
                tracing::warn!(error = %e, scope = %key.0, "releasing a concurrency lease failed");
            }
        }));
    }
}
