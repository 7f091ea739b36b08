//! The attempts of one request: which accounts it tries, in order, and what each outcome does to
//! the pool. The dispatch only runs the attempts this yields and reports how each ended.
//!
//! An attempt comes from the key's binding, else the session's sticky account, else the pool
//! (see [`Scheduler::pick`]); an account at its concurrency cap is skipped without counting as an
//! attempt. The plan ends when the attempt budget or the time budget is spent.
//!
//! Outcomes: a committed answer saves the sticky session and settles the suspects; a failure
//! marks the account, except a failure the request itself may have caused
//! ([`health::request_dependent`]): that one is held as a suspect. If the next account refuses
//! the same request with the same status, the request is the problem and no account is marked;
//! otherwise a suspect counts as one key's evidence against its account, marked once
//! `evidence_keys` different keys met such failures there within `evidence_window`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::health;
use super::{Account, AccountPool, PickRequest, Scheduler};
use crate::leases::{LeaseGuard, Leases};
use crate::store::Store;
use crate::store::coord::{AccountHealth, Coordination};

/// What bounds and judges the attempts (from `scheduler.failover` and `scheduler.sticky_ttl`).
#[derive(Debug, Clone)]
pub struct AttemptRules {
    pub max_attempts: u32,
    pub budget: Duration,
    pub sticky_ttl: Duration,
    pub evidence_keys: usize,
    pub evidence_window: Duration,
}

/// The shared state the outcomes are written to.
#[derive(Clone)]
pub struct Outcomes {
    pub scheduler: Arc<Scheduler>,
    pub coord: Arc<dyn Coordination>,
    pub store: Arc<dyn Store>,
    pub leases: Arc<Leases>,
    pub rules: AttemptRules,
    /// The owner of the background write of a mark.
    pub tasks: crate::lifecycle::Tasks,
    /// The account each session was last seen bound to here: the first pick's guess, which the
    /// store then confirms together with the account's lease (one round trip instead of two).
    pub sticky_hints: StickyHints,
}

/// Sessions' last known sticky accounts on this instance (shared by the clones of [`Outcomes`]).
/// Only a guess: the store's binding decides.
#[derive(Default, Clone)]
pub struct StickyHints(Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<str>>>>);

/// Past this many sessions the hints start over (they are only guesses).
const MAX_STICKY_HINTS: usize = 100_000;

impl StickyHints {
    fn get(&self, sticky_key: &str) -> Option<Arc<str>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sticky_key)
            .cloned()
    }

    fn set(&self, sticky_key: &str, account: Option<&str>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match account {
            Some(a) => {
                if map.get(sticky_key).is_some_and(|have| &**have == a) {
                    return;
                }
                if map.len() >= MAX_STICKY_HINTS {
                    map.clear();
                }
                map.insert(sticky_key.to_string(), Arc::from(a));
            }
            None => {
                map.remove(sticky_key);
            }
        }
    }
}

/// The request the attempts are for.
pub struct AttemptRequest<'a> {
    pub model: &'a str,
    /// The account kinds the request can be sent to.
    pub kinds: crate::store::KindSet,
    /// The client key: its id scopes sticky sessions and counts as evidence.
    pub key_id: Option<Arc<str>>,
    /// The key's dedicated binding, if any.
    pub binding: Option<Arc<str>>,
    /// The conversation the request belongs to, if any.
    pub session: Option<&'a str>,
}

/// One account to try, with its concurrency lease held.
pub struct Attempt {
    pub account: Arc<Account>,
    lease: Option<LeaseGuard>,
}

impl Attempt {
    /// The concurrency lease, to hold until the answer is fully relayed.
    pub fn take_lease(&mut self) -> Option<LeaseGuard> {
        self.lease.take()
    }
}

/// How an attempt failed.
pub struct Failure {
    /// The upstream's status when it refused; `None` when it was not reached or broke.
    pub status: Option<u16>,
    /// The health the failure gives the account, if any.
    pub mark: Option<AccountHealth>,
}

/// What the dispatch does after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try the next account.
    TryAnother,
    /// The request itself is the problem: give the client this answer, try no other account.
    AnswerClient,
}

/// Why an account was passed over without an attempt (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// At its concurrency cap.
    Busy,
}

/// A failure the request itself could have caused, held until the request's outcome is known.
struct Suspect {
    account: Arc<Account>,
    mark: AccountHealth,
    status: u16,
}

/// The attempts of one request.
pub struct AttemptPlan {
    model: String,
    kinds: crate::store::KindSet,
    key_id: Arc<str>,
    binding: Option<Arc<str>>,
    sticky_key: Option<String>,
    sticky: Option<String>,
    /// Whether `sticky` is the store's answer yet (it is asked with the first attempt).
    sticky_known: bool,
    tried: Vec<Arc<str>>,
    attempts: u32,
    started: Instant,
    suspects: Vec<Suspect>,
}

/// Raises `account_recovered` once for an account this instance reported unhealthy (cold: only
/// after such a report).
#[cold]
fn recovered(account: &Account) {
    use crate::alert_events::{Alert, AlertKind, Severity, raise};
    if account
        .rt
        .unhealthy_alerted
        .swap(false, std::sync::atomic::Ordering::Relaxed)
    {
        raise(
            Alert::new(
                AlertKind::AccountRecovered,
                Severity::Info,
                account.name.to_string(),
                format!("account `{}` serves requests again", account.name),
            )
            .with_details(serde_json::json!({"account": &*account.name, "account_id": &*account.id})),
        );
    }
}

impl AttemptPlan {
    /// The account kinds the request can be sent to.
    pub fn kinds(&self) -> crate::store::KindSet {
        self.kinds
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The store key of a sticky session: per client key, so keys never share sessions.
fn sticky_key(key_id: &str, session: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(key_id.as_bytes());
    h.update([0u8]);
    h.update(session.as_bytes());
    hex::encode(&h.finalize()[..16])
}

impl Outcomes {
    /// Starts the attempts of a request. A session's binding is asked of the store with the
    /// first attempt (see [`Outcomes::next`]); until then the binding this instance last saw is
    /// the guess.
    pub fn plan(&self, req: AttemptRequest<'_>) -> AttemptPlan {
        let sticky_key = match (&req.key_id, req.session) {
            (Some(k), Some(s)) => Some(sticky_key(k, s)),
            _ => None,
        };
        let sticky = sticky_key
            .as_deref()
            .and_then(|sk| self.sticky_hints.get(sk))
            .map(|a| a.to_string());
        AttemptPlan {
            model: req.model.to_string(),
            kinds: req.kinds,
            key_id: req.key_id.unwrap_or_else(|| Arc::from("")),
            binding: req.binding,
            sticky_known: sticky_key.is_none(),
            sticky_key,
            sticky,
            tried: Vec::new(),
            attempts: 0,
            started: Instant::now(),
            suspects: Vec::new(),
        }
    }

    /// Learns the session's binding from the store, with the lease of `account` when it has a
    /// cap (one round trip). Returns the lease (outer `None`: the binding names another account,
    /// pick again; `Some(None)`: no lease, because the account has no cap, the store failed, or
    /// it is at its cap — `busy` says which).
    async fn resolve_sticky(
        &self,
        plan: &mut AttemptPlan,
        account: &Account,
        busy: &mut bool,
    ) -> Option<Option<LeaseGuard>> {
        let sk = plan.sticky_key.clone()?;
        plan.sticky_known = true;
        let (bound, lease) = match account.max_concurrency {
            Some(limit) => {
                match self
                    .leases
                    .acquire_with_sticky(
                        &sk,
                        self.rules.sticky_ttl,
                        &account.id,
                        format!("account:{}", account.id),
                        limit,
                    )
                    .await
                {
                    Ok((bound, lease)) => {
                        let mismatch = bound.as_deref().is_some_and(|b| b != &*account.id);
                        *busy = lease.is_none() && !mismatch;
                        (bound, lease)
                    }
                    Err(e) => {
                        // As below: without the store, choose from the pool and serve without the
                        // lease rather than refuse.
                        tracing::warn!(error = %e, account = %account.name, "sticky session and account lease unavailable; serving without them");
                        (None, None)
                    }
                }
            }
            None => {
                let bound = self
                    .coord
                    .sticky_get(&sk, self.rules.sticky_ttl)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "sticky session lookup failed; choosing from the pool");
                        None
                    });
                (bound, None)
            }
        };
        self.sticky_hints.set(&sk, bound.as_deref());
        let mismatch = bound.as_deref().is_some_and(|b| b != &*account.id);
        plan.sticky = bound;
        if mismatch { None } else { Some(lease) }
    }

    /// The next account to try, with its lease; `None` when the budget is spent or no account
    /// is left. `skipped` is told about accounts passed over.
    pub async fn next(
        &self,
        plan: &mut AttemptPlan,
        pool: &AccountPool,
        mut skipped: impl FnMut(Skip),
    ) -> Option<Attempt> {
        loop {
            if plan.attempts >= self.rules.max_attempts
                || (plan.attempts > 0 && plan.started.elapsed() >= self.rules.budget)
            {
                return None;
            }
            let pick = PickRequest {
                model: &plan.model,
                kinds: plan.kinds,
                binding: plan.binding.as_deref(),
                sticky: plan.sticky.as_deref(),
                tried: &plan.tried,
                now_ms: now_ms(),
            };
            let account = self.scheduler.pick(pool, &pick)?;
            let lease = if plan.sticky_known {
                match account.max_concurrency {
                    Some(limit) => match self.leases.acquire(format!("account:{}", account.id), limit).await {
                        Ok(Some(g)) => Some(g),
                        Ok(None) => {
                            plan.tried.push(account.id.clone());
                            skipped(Skip::Busy);
                            continue; // at its cap: not an attempt, try the next account
                        }
                        Err(e) => {
                            // The store is the authority on the cap; without it, serve rather than refuse.
                            tracing::warn!(error = %e, account = %account.name, "account lease unavailable; serving without it");
                            None
                        }
                    },
                    None => None,
                }
            } else {
                let mut busy = false;
                match self.resolve_sticky(plan, &account, &mut busy).await {
                    // Bound to another account than the guess: pick again with the binding.
                    None => continue,
                    Some(lease) if busy => {
                        drop(lease);
                        plan.tried.push(account.id.clone());
                        skipped(Skip::Busy);
                        continue;
                    }
                    Some(lease) => lease,
                }
            };
            plan.tried.push(account.id.clone());
            plan.attempts += 1;
            return Some(Attempt { account, lease });
        }
    }

    /// An attempt failed before anything reached the client.
    pub fn failed(&self, plan: &mut AttemptPlan, account: &Arc<Account>, failure: Failure) -> Next {
        let Some(status) = failure.status else {
            if let Some(h) = failure.mark {
                self.mark(account, h);
            }
            return Next::TryAnother;
        };
        let dependent = failure
            .mark
            .as_ref()
            .is_some_and(|h| health::request_dependent(status, h));
        if dependent && plan.suspects.iter().any(|s| s.status == status) {
            // The same request failed the same way on another account: it is the request's
            // problem, not the accounts'.
            plan.suspects.clear();
            return Next::AnswerClient;
        }
        match failure.mark {
            Some(h) if dependent => plan.suspects.push(Suspect {
                account: account.clone(),
                mark: h,
                status,
            }),
            Some(h) => self.mark(account, h),
            None => {}
        }
        Next::TryAnother
    }

    /// An answer from `account` is committed to the client: a successful one binds the session
    /// to it (the store's write is not waited for); what failed before on other accounts was not
    /// this request's doing.
    pub fn committed(&self, plan: &mut AttemptPlan, account: &Account, success: bool) {
        if success && account.rt.unhealthy_alerted.load(std::sync::atomic::Ordering::Relaxed) {
            recovered(account);
        }
        if success
            && let Some(sk) = &plan.sticky_key
            && plan.sticky.as_deref() != Some(&*account.id)
        {
            // Saved while the answer streams: the client's next turn comes after this one ends.
            let (coord, sk_owned, id, ttl) = (
                self.coord.clone(),
                sk.clone(),
                account.id.clone(),
                self.rules.sticky_ttl,
            );
            drop(self.tasks.spawn_work("sticky session save", async move {
                if let Err(e) = coord.sticky_set(&sk_owned, &id, ttl).await {
                    tracing::warn!(error = %e, "saving the sticky session failed");
                }
            }));
            self.sticky_hints.set(sk, Some(&account.id));
            plan.sticky = Some(account.id.to_string());
        }
        self.settle(plan);
    }

    /// The request is over: the held suspects count as evidence against their accounts.
    pub fn settle(&self, plan: &mut AttemptPlan) {
        let window = self.rules.evidence_window.as_millis() as i64;
        for s in plan.suspects.drain(..) {
            if s.account
                .rt
                .corroborate(&plan.key_id, now_ms(), window, self.rules.evidence_keys)
            {
                self.mark(&s.account, s.mark);
            } else {
                tracing::info!(account = %s.account.name, status = s.status, "upstream refused a request; the account stays in the pool until more keys meet such failures");
            }
        }
    }

    /// Takes an account out of the pool here at once, and everywhere through the store.
    pub fn mark(&self, account: &Account, health: AccountHealth) {
        self.scheduler
            .mark_shared(account, health, self.coord.clone(), self.store.clone(), &self.tasks);
    }
}

impl AttemptPlan {
    /// Whether any account was tried.
    pub fn attempted(&self) -> bool {
        self.attempts > 0
    }
}
