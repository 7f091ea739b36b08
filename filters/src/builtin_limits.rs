//! The limit filters: `rate_limit` (requests, tokens and cost per window, fixed or rolling),
//! `cost_limits` (daily, weekly, monthly and total spend caps) and `concurrency` (requests in
//! flight, with an optional queue); and a key's `max_input_tokens`, checked by whichever of them
//! runs first.
//!
//! The three are configured and placed separately, but a request pays for them together: the
//! first of them to run in the chain calls [`LimitBackend::admit`] once for every limit of the key
//! whose filter is in the chain (with Redis: one round trip, one Lua script), and the others see
//! that the request was admitted and skip. Which filters are in the chain is known when it is
//! built: the three factories of one [`Registry`] share a group that each joins as it is built.
//!
//! | filter        | refusal                   | reasons                                                   |
//! |---------------|---------------------------|-----------------------------------------------------------|
//! | `rate_limit`  | 429 + `retry-after`       | `rate_limit` (seconds until the window ends, or for a rolling window until enough slid out) |
//! | `cost_limits` | 402 billing               | `daily_cost_limit`, `weekly_cost_limit`, `monthly_cost_limit`, `total_cost_limit` |
//! | `concurrency` | 429 + `retry-after: 1`    | `concurrency_limit`                                       |
//! | (any of them) | 400 invalid request       | `max_input_tokens` (the prompt's estimated size, [`RequestFacts::input_tokens`]) |
//!
//! When the backend cannot answer (Redis down), the request is refused with 503
//! `limits_unavailable` and `retry-after: 1` (fail closed: limits that silently stop holding are
//! what this is meant to prevent).
//!
//! Cost is known only when the request is over. A key with spend caps or a cost window reserves
//! the request's estimated cost ([`RequestFacts::reserve_nanos`], priced by the relay) in the same
//! admission, and is refused when it does not fit beside what was spent and what the requests in
//! flight reserved. The lowest of the enabled limit filters settles in `on_complete` through
//! [`LimitBackend::settle`]: the reservation is freed and the actual tokens and cost charged in
//! one call (also for clients that disconnected: `on_complete` runs however the request ended). A
//! reservation is held by a guard in [`FilterContext::holds`] whose `Drop` frees it if the request
//! never settles. A key with `cost_limits.hard_cap` also gets a [`SpendCeiling`] there: its
//! reservation plus the room the tightest limit had left at admission, which the relay's stream
//! loop compares with the running cost.
//!
//! A concurrency slot is held by a guard in [`FilterContext::holds`]; its `Drop` releases the slot,
//! so completion, client disconnect, upstream errors and panics all free it. The guard drops just
//! after the response's last byte, so a key at its limit gets a second try 25 ms later before a
//! refusal (a sequential client's next request must not race its previous one's release). When a
//! key's slots are taken and its `queue` is not 0, up to `queue` requests per key and instance wait (retrying
//! the admission after a local release, or after a short backoff for releases on other instances)
//! until `queue_timeout`, then get the 429.
//!
//! Place the limit filters after the restriction filters (the default order): a request refused
//! by a later filter has already been counted in the rate window.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::policy::KeyPolicy;
use crate::{
    Admission, ClientKey, CompletionContext, Filter, FilterContext, FilterDeps, LimitBackend, Registry, RejectKind,
    Rejection, RequestFacts, Reservation, SpendCeiling,
};

const RATE: u8 = 1;
const COST: u8 = 2;
const CONCURRENCY: u8 = 4;

/// First and longest pause between two admission attempts of a queued request.
const QUEUE_BACKOFF_MIN: Duration = Duration::from_millis(20);
const QUEUE_BACKOFF_MAX: Duration = Duration::from_millis(200);
/// How long a request refused for concurrency (without a queue) waits before its second and last
/// try.
const CONCURRENCY_GRACE: Duration = Duration::from_millis(25);

/// Registers `rate_limit`, `cost_limits` and `concurrency`.
pub fn register(r: &mut Registry) {
    let current: Arc<Mutex<Option<Arc<Group>>>> = Arc::default();
    for (name, part) in [
        ("rate_limit", RATE),
        ("cost_limits", COST),
        ("concurrency", CONCURRENCY),
    ] {
        let current = current.clone();
        r.register(name, move |deps| {
            Ok(Arc::new(LimitFilter {
                name,
                part,
                group: join_group(&current, deps, part),
            }) as Arc<dyn Filter>)
        });
    }
}

/// The group the filter being built belongs to: the current one, unless it already has this part
/// (then a new chain is being built) or another backend.
fn join_group(current: &Mutex<Option<Arc<Group>>>, deps: &FilterDeps, part: u8) -> Arc<Group> {
    let mut cur = current.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(g) = cur.as_ref()
        && std::ptr::addr_eq(Arc::as_ptr(&g.limits), Arc::as_ptr(&deps.limits))
        && g.enabled() & part == 0
    {
        g.enabled.fetch_or(part, Ordering::Relaxed);
        return g.clone();
    }
    let g = Arc::new(Group::new(deps.limits.clone(), part));
    *cur = Some(g.clone());
    g
}

/// The limit parts a policy has.
fn parts_of(p: &KeyPolicy) -> u8 {
    let mut parts = 0;
    if p.rate_limit.is_some() {
        parts |= RATE;
    }
    if p.cost_limits.is_some() {
        parts |= COST;
    }
    if p.concurrency.is_some() {
        parts |= CONCURRENCY;
    }
    parts
}

/// The key as the backend must see it: without the limits whose filter is not in the chain. The
/// key itself when it has no such limit (the usual case: no allocation).
fn scoped_key(key: &ClientKey, enabled: u8) -> Cow<'_, ClientKey> {
    let p = &key.policy;
    if parts_of(p) & !enabled == 0 {
        return Cow::Borrowed(key);
    }
    Cow::Owned(ClientKey {
        policy: Arc::new(KeyPolicy {
            rate_limit: p.rate_limit.clone().filter(|_| enabled & RATE != 0),
            cost_limits: p.cost_limits.clone().filter(|_| enabled & COST != 0),
            concurrency: p.concurrency.clone().filter(|_| enabled & CONCURRENCY != 0),
            max_input_tokens: p.max_input_tokens,
            ..KeyPolicy::default()
        }),
        ..key.clone()
    })
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// State shared by the limit filters of one chain.
struct Group {
    limits: Arc<dyn LimitBackend>,
    /// The parts whose filter is in the chain.
    enabled: AtomicU8,
    /// Queues of keys whose concurrency has a queue, by key id.
    queues: Mutex<HashMap<Arc<str>, Arc<KeyQueue>>>,
    /// Makes slot holder names unique across instances and restarts.
    holder_prefix: String,
    next_holder: AtomicU64,
}

/// The requests of one key waiting for a concurrency slot on this instance.
#[derive(Default)]
struct KeyQueue {
    waiting: AtomicU32,
    /// Signalled when a slot of the key is released here.
    freed: tokio::sync::Notify,
}

/// Marks a request as admitted (the later limit filters skip).
struct Admitted;

/// Holds a concurrency slot. Completion takes it and frees it with the settlement (one backend
/// call for both); if the request ends without completing, the drop releases it.
struct SlotGuard {
    limits: Arc<dyn LimitBackend>,
    key_id: Arc<str>,
    held: Mutex<Option<(String, Option<Arc<KeyQueue>>)>>,
}

impl SlotGuard {
    /// The slot's holder and the key's local queue, if the slot is still held.
    fn take(&self) -> Option<(String, Option<Arc<KeyQueue>>)> {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let Some((holder, queue)) = self.take() else { return };
        let limits = self.limits.clone();
        let key_id = self.key_id.clone();
        run_from_drop(async move {
            // A failed release is logged by the backend; the slot's lease then runs out.
            let _ = limits.release(&key_id, &holder).await;
            if let Some(q) = queue {
                q.freed.notify_waiters();
            }
        });
    }
}

/// Runs a release from a destructor. Started here, not only spawned: the memory backend is done
/// at once, and Redis has the release queued on its connection before this request's task moves
/// on, so the client's next request (admitted after it on the same connection) finds the slot or
/// the room free. Not while unwinding (a panic in a destructor then aborts), and a backend that
/// panics here (its runtime is shutting down) leaves what it held to its lease.
fn run_from_drop(release: impl Future<Output = ()> + Send + 'static) {
    let mut release = Box::pin(release);
    if !std::thread::panicking() {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| release.as_mut().poll(&mut cx))) {
            Ok(std::task::Poll::Pending) => {}
            Ok(std::task::Poll::Ready(())) | Err(_) => return,
        }
    }
    // Outside a runtime (never on the request path) the release is lost; on Redis what was held
    // then runs out with its lease.
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(release);
    }
}

/// Holds a request's spend reservation. Completion takes it and settles it with the actual cost
/// (one backend call); if the request ends without completing (shutdown cut it, a panic), the
/// drop frees it, so a reservation never outlives its request on this instance (and on Redis a
/// killed instance's reservations run out with their lease).
struct ReservationGuard {
    limits: Arc<dyn LimitBackend>,
    key_id: Arc<str>,
    reservation: Mutex<Option<Reservation>>,
}

impl ReservationGuard {
    fn take(&self) -> Option<Reservation> {
        self.reservation.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Drop for ReservationGuard {
    fn drop(&mut self) {
        let Some(r) = self.take() else { return };
        let limits = self.limits.clone();
        let key_id = self.key_id.clone();
        run_from_drop(async move {
            let _ = limits.unreserve(&key_id, &r).await;
        });
    }
}

/// A place in a key's queue, given back on drop (also when the client leaves while waiting).
struct QueuePlace(Arc<KeyQueue>);

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

fn unavailable() -> Rejection {
    let mut r = Rejection::new(
        503,
        RejectKind::RateLimited,
        "limits_unavailable",
        "The relay cannot check this API key's limits right now; retry shortly",
    );
    r.retry_after = Some(1);
    r
}

impl Group {
    fn new(limits: Arc<dyn LimitBackend>, part: u8) -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_i64(chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default());
        Group {
            limits,
            enabled: AtomicU8::new(part),
            queues: Mutex::new(HashMap::new()),
            holder_prefix: format!("{:016x}", h.finish()),
            next_holder: AtomicU64::new(0),
        }
    }

    fn enabled(&self) -> u8 {
        self.enabled.load(Ordering::Relaxed)
    }

    fn queue(&self, key_id: &Arc<str>) -> Arc<KeyQueue> {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key_id.clone())
            .or_default()
            .clone()
    }

    /// One admission for every enabled limit of the key (retried while queued).
    async fn admit(
        &self,
        key: &Arc<ClientKey>,
        enabled: u8,
        facts: Option<&RequestFacts>,
        holds: &mut Vec<Box<dyn std::any::Any + Send + Sync>>,
    ) -> Result<(), Rejection> {
        let scoped = scoped_key(key, enabled);
        let concurrency = scoped.policy.concurrency.clone();
        let reserve = match scoped.policy.reserves_cost() {
            true => facts.and_then(|f| f.reserve_nanos).unwrap_or(0),
            false => 0,
        };
        // Names the request's slot, reservation and rolling-window entries.
        let holder = format!(
            "{}-{:x}",
            self.holder_prefix,
            self.next_holder.fetch_add(1, Ordering::Relaxed)
        );
        let mut reserved = None;
        let mut place: Option<(QueuePlace, Instant)> = None;
        let mut backoff = QUEUE_BACKOFF_MIN;
        let mut graced = false;
        loop {
            // While queued, listen for local releases before asking, so none is missed.
            let queue = place.as_ref().map(|(p, _)| p.0.clone());
            let notified = queue.as_ref().map(|q| q.freed.notified());
            let mut notified = std::pin::pin!(notified);
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.enable();
            }
            let refusal = match self.limits.admit(&scoped, &holder, reserve, now_ms()).await {
                Ok(Admission::Admitted) => break,
                Ok(Admission::Reserved { room_nanos }) => {
                    reserved = Some(room_nanos);
                    break;
                }
                Ok(Admission::Refused(r)) => r,
                Err(_) => return Err(unavailable()),
            };
            if refusal.reason != "concurrency_limit" {
                return Err(refusal);
            }
            let Some(c) = concurrency.as_ref().filter(|c| c.queue > 0) else {
                // Without a queue, one more try after a short grace: a client's previous request
                // has sent its last byte before it releases its slot, so a client that sends the
                // next one at once must not be refused for that moment.
                if !graced {
                    graced = true;
                    tokio::time::sleep(CONCURRENCY_GRACE).await;
                    continue;
                }
                return Err(refusal);
            };
            let deadline = match &place {
                Some((_, deadline)) => *deadline,
                None => {
                    let q = self.queue(&key.id);
                    let ahead = q.waiting.fetch_add(1, Ordering::Relaxed);
                    let p = QueuePlace(q);
                    if ahead >= c.queue {
                        return Err(refusal);
                    }
                    let deadline = Instant::now() + c.queue_timeout;
                    place = Some((p, deadline));
                    deadline
                }
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(refusal);
            }
            let pause = backoff.min(deadline - now);
            match notified.as_mut().as_pin_mut() {
                Some(n) => {
                    let _ = tokio::time::timeout(pause, n).await;
                }
                None => tokio::time::sleep(pause).await,
            }
            backoff = (backoff * 2).min(QUEUE_BACKOFF_MAX);
        }
        drop(place);
        holds.push(Box::new(Admitted));
        if let Some(room) = reserved {
            if scoped.policy.cost_limits.as_ref().is_some_and(|c| c.hard_cap) {
                holds.push(Box::new(SpendCeiling {
                    nanos: reserve.saturating_add(room),
                }));
            }
            holds.push(Box::new(ReservationGuard {
                limits: self.limits.clone(),
                key_id: key.id.clone(),
                reservation: Mutex::new(Some(Reservation {
                    holder: holder.clone(),
                    nanos: reserve,
                })),
            }));
        }
        if let Some(c) = concurrency {
            holds.push(Box::new(SlotGuard {
                limits: self.limits.clone(),
                key_id: key.id.clone(),
                held: Mutex::new(Some((holder, (c.queue > 0).then(|| self.queue(&key.id))))),
            }));
        }
        Ok(())
    }
}

/// One of the three limit filters.
struct LimitFilter {
    name: &'static str,
    part: u8,
    group: Arc<Group>,
}

#[async_trait]
impl Filter for LimitFilter {
    fn name(&self) -> &str {
        self.name
    }

    async fn on_request(&self, cx: &mut FilterContext<'_>) -> Result<(), Rejection> {
        let Some(key) = cx.key.clone() else { return Ok(()) };
        if let (Some(limit), Some(tokens)) = (key.policy.max_input_tokens, cx.facts.and_then(|f| f.input_tokens))
            && tokens > limit
        {
            return Err(Rejection::new(
                400,
                RejectKind::InvalidRequest,
                "max_input_tokens",
                format!(
                    "The prompt is about {tokens} input tokens (an estimate from its size); this API key allows \
                     {limit} per request"
                ),
            ));
        }
        let enabled = self.group.enabled();
        if parts_of(&key.policy) & enabled == 0 || cx.holds.iter().any(|h| (**h).is::<Admitted>()) {
            return Ok(());
        }
        self.group.admit(&key, enabled, cx.facts, cx.holds).await
    }

    async fn on_complete(&self, cx: &CompletionContext<'_>) {
        let enabled = self.group.enabled();
        // The lowest enabled part charges, once.
        if self.part != enabled & enabled.wrapping_neg() {
            return;
        }
        let Some(key) = cx.key else { return };
        let reservation = cx
            .holds
            .iter()
            .find_map(|h| (**h).downcast_ref::<ReservationGuard>())
            .and_then(ReservationGuard::take);
        let slot = cx
            .holds
            .iter()
            .find_map(|h| (**h).downcast_ref::<SlotGuard>())
            .and_then(SlotGuard::take);
        let p = &key.policy;
        let rate = enabled & RATE != 0
            && p.rate_limit
                .as_ref()
                .is_some_and(|r| r.tokens.is_some() || r.cost_nanos.is_some());
        let spend = enabled & COST != 0 && p.cost_limits.is_some();
        let charge = (rate || spend) && (cx.tokens != 0 || cx.cost_nanos != 0);
        if charge || reservation.is_some() || slot.is_some() {
            let (tokens, cost) = if charge { (cx.tokens, cx.cost_nanos) } else { (0, 0) };
            // A failed settlement is logged by the backend (a reservation or slot then runs out).
            let _ = self
                .group
                .limits
                .settle(
                    &scoped_key(key, enabled),
                    reservation.as_ref(),
                    slot.as_ref().map(|(holder, _)| holder.as_str()),
                    tokens,
                    cost,
                    now_ms(),
                )
                .await;
        }
        if let Some((_, Some(queue))) = slot {
            queue.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::KeyPolicySpec;
    use crate::{Chain, KeyDirectory, RouteInfo, Service};

    /// Counts calls and holds at most `slots` concurrency holders.
    #[derive(Default)]
    struct Fake {
        admits: AtomicU32,
        charges: Mutex<Vec<(bool, bool, u64)>>,
        seen: Mutex<Vec<u8>>,
        held: Mutex<Vec<String>>,
        /// Reservations taken, and how each ended: settled (with its tokens) or freed.
        reserved: Mutex<Vec<(String, u64)>>,
        settled: Mutex<Vec<(String, u64)>>,
        freed: Mutex<Vec<String>>,
        slots: usize,
        fail: bool,
    }

    #[async_trait]
    impl LimitBackend for Fake {
        async fn admit(&self, key: &ClientKey, holder: &str, reserve: u64, _: i64) -> Result<Admission, String> {
            if self.fail {
                return Err("down".into());
            }
            self.admits.fetch_add(1, Ordering::SeqCst);
            self.seen.lock().unwrap().push(parts_of(&key.policy));
            if key.policy.concurrency.is_some() {
                let mut held = self.held.lock().unwrap();
                if held.len() >= self.slots {
                    let mut r = Rejection::new(429, RejectKind::RateLimited, "concurrency_limit", "busy");
                    r.retry_after = Some(1);
                    return Ok(Admission::Refused(r));
                }
                held.push(holder.to_string());
            }
            if reserve > 0 {
                self.reserved.lock().unwrap().push((holder.to_string(), reserve));
                return Ok(Admission::Reserved { room_nanos: 100 });
            }
            Ok(Admission::Admitted)
        }
        async fn settle(
            &self,
            key: &ClientKey,
            reservation: Option<&Reservation>,
            slot: Option<&str>,
            tokens: u64,
            cost: u64,
            now: i64,
        ) -> Result<(), String> {
            if let Some(r) = reservation {
                self.settled.lock().unwrap().push((r.holder.clone(), tokens));
            }
            if let Some(holder) = slot {
                self.release(&key.id, holder).await?;
            }
            self.charge(key, tokens, cost, now).await
        }
        async fn unreserve(&self, _: &str, r: &Reservation) -> Result<(), String> {
            self.freed.lock().unwrap().push(r.holder.clone());
            Ok(())
        }
        async fn charge(&self, key: &ClientKey, tokens: u64, _: u64, _: i64) -> Result<(), String> {
            let p = &key.policy;
            self.charges
                .lock()
                .unwrap()
                .push((p.rate_limit.is_some(), p.cost_limits.is_some(), tokens));
            Ok(())
        }
        async fn release(&self, _: &str, holder: &str) -> Result<(), String> {
            self.held.lock().unwrap().retain(|h| h != holder);
            Ok(())
        }
        async fn activate(&self, _: &str, now_s: i64) -> Result<i64, String> {
            Ok(now_s)
        }
    }

    struct NoKeys;
    impl KeyDirectory for NoKeys {
        fn find(&self, _: &str) -> Option<Arc<ClientKey>> {
            None
        }
    }

    fn key(spec: &str) -> Arc<ClientKey> {
        let spec: KeyPolicySpec = serde_json::from_str(spec).unwrap();
        Arc::new(ClientKey {
            id: "k".into(),
            name: "k".into(),
            enabled: true,
            bind: None,
            policy: Arc::new(KeyPolicy::compile(&spec).unwrap()),
        })
    }

    const ALL: &str = r#"{"rate_limit":{"window_minutes":1,"requests":5,"tokens":100},
        "cost_limits":{"daily_usd":1},"concurrency":{"limit":1,"queue":1,"queue_timeout_ms":2000}}"#;

    fn chain(fake: &Arc<Fake>, names: &[&str]) -> Chain {
        let deps = FilterDeps {
            keys: Arc::new(NoKeys),
            limits: fake.clone(),
        };
        let mut order = vec!["key_auth".to_string()];
        order.extend(names.iter().map(|s| s.to_string()));
        Registry::with_builtins().build(&order, &deps).unwrap()
    }

    type Holds = Vec<Box<dyn std::any::Any + Send + Sync>>;

    async fn request(chain: &Chain, key: &Arc<ClientKey>, holds: &mut Holds) -> Result<(), Rejection> {
        let headers = http::HeaderMap::new();
        let mut cx = FilterContext {
            route: RouteInfo {
                service: Service::Claude,
                endpoint: "messages",
            },
            headers: &headers,
            query: None,
            client_ip: None,
            key: Some(key.clone()),
            facts: None,
            holds,
        };
        chain.run_request(&mut cx).await
    }

    async fn complete(chain: &Chain, key: &Arc<ClientKey>, tokens: u64) {
        let cost_nanos = tokens * 10;
        chain
            .run_complete(&CompletionContext {
                route: RouteInfo {
                    service: Service::Claude,
                    endpoint: "messages",
                },
                key: Some(key),
                facts: None,
                status: 200,
                tokens,
                cost_nanos,
                holds: &[],
            })
            .await;
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn one_admission_and_one_charge_for_all_three() {
        let fake = Arc::new(Fake {
            slots: 5,
            ..Default::default()
        });
        let chain = chain(&fake, &["concurrency", "rate_limit", "cost_limits"]);
        let k = key(ALL);
        let mut holds = Vec::new();
        request(&chain, &k, &mut holds).await.unwrap();
        assert_eq!(fake.admits.load(Ordering::SeqCst), 1);
        assert_eq!(fake.seen.lock().unwrap()[0], RATE | COST | CONCURRENCY);
        assert_eq!(fake.held.lock().unwrap().len(), 1);
        complete(&chain, &k, 36).await;
        assert_eq!(*fake.charges.lock().unwrap(), vec![(true, true, 36)]);
        // Nothing to charge: no call.
        complete(&chain, &k, 0).await;
        assert_eq!(fake.charges.lock().unwrap().len(), 1);
        holds.clear();
        settle().await;
        assert!(fake.held.lock().unwrap().is_empty(), "the guard released the slot");
        // A key without limits costs no admission.
        request(&chain, &key("{}"), &mut Vec::new()).await.unwrap();
        assert_eq!(fake.admits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn limits_whose_filter_is_absent_are_not_enforced() {
        let fake = Arc::new(Fake::default());
        let chain = chain(&fake, &["rate_limit"]);
        let k = key(ALL);
        let mut holds = Vec::new();
        request(&chain, &k, &mut holds).await.unwrap();
        assert_eq!(fake.seen.lock().unwrap()[0], RATE, "only the rate window is checked");
        assert!(fake.held.lock().unwrap().is_empty());
        complete(&chain, &k, 5).await;
        assert_eq!(*fake.charges.lock().unwrap(), vec![(true, false, 5)]);
        // A key with only a requests window is not charged (nothing to charge it to).
        let requests_only = key(r#"{"rate_limit":{"window_minutes":1,"requests":5}}"#);
        complete(&chain, &requests_only, 5).await;
        assert_eq!(fake.charges.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn separate_builds_get_separate_groups() {
        let fake = Arc::new(Fake {
            slots: 5,
            ..Default::default()
        });
        let a = chain(&fake, &["rate_limit", "cost_limits", "concurrency"]);
        let b = chain(&fake, &["cost_limits"]);
        let k = key(ALL);
        request(&b, &k, &mut Vec::new()).await.unwrap();
        assert_eq!(fake.seen.lock().unwrap()[0], COST);
        request(&a, &k, &mut Vec::new()).await.unwrap();
        assert_eq!(fake.seen.lock().unwrap()[1], RATE | COST | CONCURRENCY);
    }

    #[tokio::test]
    async fn a_queued_request_gets_the_released_slot() {
        let fake = Arc::new(Fake {
            slots: 1,
            ..Default::default()
        });
        let chain = Arc::new(chain(&fake, &["rate_limit", "cost_limits", "concurrency"]));
        let k = key(r#"{"concurrency":{"limit":1,"queue":1,"queue_timeout_ms":300}}"#);
        let mut first = Vec::new();
        request(&chain, &k, &mut first).await.unwrap();
        let waiter = {
            let (chain, k) = (chain.clone(), k.clone());
            tokio::spawn(async move {
                let mut holds = Vec::new();
                request(&chain, &k, &mut holds).await.map(|_| holds)
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The queue holds one: a third request is refused at once.
        let t = Instant::now();
        let e = request(&chain, &k, &mut Vec::new()).await.unwrap_err();
        assert_eq!((e.status, e.reason), (429, "concurrency_limit"));
        assert!(t.elapsed() < Duration::from_millis(100));
        let t = Instant::now();
        first.clear();
        let second = waiter.await.unwrap().unwrap();
        assert_eq!(second.len(), 2, "admitted marker and slot guard");
        assert!(t.elapsed() < Duration::from_millis(100), "woken by the local release");
        // Queued until the timeout: refused.
        let t = Instant::now();
        let e = request(&chain, &k, &mut Vec::new()).await.unwrap_err();
        assert_eq!((e.status, e.reason, e.retry_after), (429, "concurrency_limit", Some(1)));
        assert!(t.elapsed() >= Duration::from_millis(300));
        drop(second);
    }

    #[tokio::test]
    async fn a_panicking_request_releases_its_slot() {
        let fake = Arc::new(Fake {
            slots: 1,
            ..Default::default()
        });
        let chain = Arc::new(chain(&fake, &["concurrency"]));
        let k = key(r#"{"concurrency":{"limit":1}}"#);
        let task = {
            let (chain, k) = (chain.clone(), k.clone());
            tokio::spawn(async move {
                let mut holds = Vec::new();
                request(&chain, &k, &mut holds).await.unwrap();
                assert_eq!(holds.len(), 2);
                panic!("a bug in the middle of a request");
            })
        };
        assert!(task.await.unwrap_err().is_panic());
        settle().await;
        assert!(fake.held.lock().unwrap().is_empty(), "released while unwinding");
        // Released synchronously when the request simply ends.
        let mut holds = Vec::new();
        request(&chain, &k, &mut holds).await.unwrap();
        assert_eq!(fake.held.lock().unwrap().len(), 1);
        drop(holds);
        assert!(fake.held.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn backend_failure_fails_closed() {
        let fake = Arc::new(Fake {
            fail: true,
            ..Default::default()
        });
        let chain = chain(&fake, &["rate_limit"]);
        let e = request(&chain, &key(ALL), &mut Vec::new()).await.unwrap_err();
        assert_eq!(
            (e.status, e.reason, e.retry_after),
            (503, "limits_unavailable", Some(1))
        );
    }

    async fn request_with(
        chain: &Chain,
        key: &Arc<ClientKey>,
        facts: &RequestFacts,
        holds: &mut Holds,
    ) -> Result<(), Rejection> {
        let headers = http::HeaderMap::new();
        let mut cx = FilterContext {
            route: RouteInfo {
                service: Service::Claude,
                endpoint: "messages",
            },
            headers: &headers,
            query: None,
            client_ip: None,
            key: Some(key.clone()),
            facts: Some(facts),
            holds,
        };
        chain.run_request(&mut cx).await
    }

    #[tokio::test]
    async fn a_reservation_is_settled_at_completion_or_freed_on_drop() {
        let fake = Arc::new(Fake::default());
        let chain = chain(&fake, &["rate_limit", "cost_limits", "concurrency"]);
        let k = key(r#"{"cost_limits":{"daily_usd":1,"hard_cap":true}}"#);
        let facts = RequestFacts {
            reserve_nanos: Some(50),
            ..RequestFacts::default()
        };
        let mut holds = Vec::new();
        request_with(&chain, &k, &facts, &mut holds).await.unwrap();
        let holder = fake.reserved.lock().unwrap()[0].0.clone();
        // hard_cap: the ceiling is the reservation plus the room left.
        let ceiling = holds.iter().find_map(|h| (**h).downcast_ref::<SpendCeiling>()).copied();
        assert_eq!(ceiling, Some(SpendCeiling { nanos: 150 }));
        // Completion settles it once (even with nothing to charge); the drop then does nothing.
        chain
            .run_complete(&CompletionContext {
                route: RouteInfo {
                    service: Service::Claude,
                    endpoint: "messages",
                },
                key: Some(&k),
                facts: Some(&facts),
                status: 200,
                tokens: 0,
                cost_nanos: 0,
                holds: &holds,
            })
            .await;
        assert_eq!(*fake.settled.lock().unwrap(), vec![(holder, 0)]);
        drop(holds);
        settle().await;
        assert!(fake.freed.lock().unwrap().is_empty());

        // A request that never completes frees its reservation when its holds drop.
        let mut holds = Vec::new();
        request_with(&chain, &k, &facts, &mut holds).await.unwrap();
        let holder = fake.reserved.lock().unwrap()[1].0.clone();
        drop(holds);
        assert_eq!(*fake.freed.lock().unwrap(), vec![holder]);

        // Keys without a cost limit, and requests without an estimate, reserve nothing.
        let mut holds = Vec::new();
        request_with(
            &chain,
            &key(r#"{"rate_limit":{"window_minutes":1,"requests":5}}"#),
            &facts,
            &mut holds,
        )
        .await
        .unwrap();
        let no_price = RequestFacts::default();
        request_with(&chain, &k, &no_price, &mut Vec::new()).await.unwrap();
        assert_eq!(fake.reserved.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn max_input_tokens_refuses_before_any_admission() {
        let fake = Arc::new(Fake::default());
        let chain = chain(&fake, &["rate_limit"]);
        let k = key(r#"{"max_input_tokens":100,"rate_limit":{"window_minutes":1,"requests":5}}"#);
        let big = RequestFacts {
            input_tokens: Some(101),
            ..RequestFacts::default()
        };
        let e = request_with(&chain, &k, &big, &mut Vec::new()).await.unwrap_err();
        assert_eq!(
            (e.status, e.reason, e.kind),
            (400, "max_input_tokens", RejectKind::InvalidRequest)
        );
        assert!(e.message.contains("about 101 input tokens"), "{}", e.message);
        assert_eq!(fake.admits.load(Ordering::SeqCst), 0);
        let fits = RequestFacts {
            input_tokens: Some(100),
            ..RequestFacts::default()
        };
        request_with(&chain, &k, &fits, &mut Vec::new()).await.unwrap();
        // Also for a key with no other limit.
        let only = key(r#"{"max_input_tokens":100}"#);
        assert!(request_with(&chain, &only, &big, &mut Vec::new()).await.is_err());
    }
}
