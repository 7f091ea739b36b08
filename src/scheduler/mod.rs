//! Account selection. This module alone decides which account serves a request.
//!
//! Selection reads only the in-memory snapshot: the accounts sorted by priority (lower first),
//! and among the best eligible priority the least recently used one. It costs no store round trip
//! whatever the number of accounts.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::credentials::{Holder, TokenCell};
use crate::outbound::OutboundProxy;
use crate::providers::{self, Credential, Family, UpstreamBase, ccr};
use crate::store::coord::AccountHealth;
use crate::store::{AccountKind, KindSet};
use crate::types::CooldownClass;

pub mod attempts;
pub mod health;
pub mod quota;
pub mod session;

pub use health::{AccountRuntime, model_family};

/// The alert of an account leaving the pool.
fn unhealthy_alert(account: &Account, health: &AccountHealth) -> crate::alert_events::Alert {
    use crate::alert_events::{Alert, AlertKind, Severity};
    use crate::store::coord::HealthState;
    let state = serde_json::to_value(health.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let severity = match health.state {
        HealthState::Unauthorized | HealthState::Blocked => Severity::Critical,
        _ => Severity::Warning,
    };
    let until = match health.until {
        Some(ms) => chrono::DateTime::from_timestamp_millis(ms)
            .map_or_else(String::new, |t| format!(" until {}", t.format("%Y-%m-%d %H:%M:%S UTC"))),
        None => " until an admin brings it back".to_string(),
    };
    Alert::new(
        AlertKind::AccountUnhealthy,
        severity,
        account.name.to_string(),
        format!(
            "account `{}` is out of the pool: {state} ({}){until}",
            account.name, health.reason
        ),
    )
    .with_details(serde_json::json!({
        "account": &*account.name,
        "account_id": &*account.id,
        "state": state,
        "reason": health.reason,
        "until": health.until.map(|u| u.div_euclid(1000)),
        "family": health.family,
    }))
}

/// Where an account or key was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `relay.yaml`: read-only through the admin API.
    Config,
    /// Created through the admin API and kept in the store.
    Admin,
}

/// An account ready to serve: its credential is open and its header precomputed.
#[derive(Debug)]
pub struct Account {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub kind: AccountKind,
    pub base: UpstreamBase,
    /// How the account authenticates (its provider reads it on every attempt).
    pub credential: Credential,
    pub priority: u32,
    pub enabled: bool,
    pub models: Option<HashSet<String>>,
    pub model_map: HashMap<String, String>,
    pub source: Source,
    pub group: Option<String>,
    /// Outbound proxy for this account's connections.
    pub proxy: Option<Arc<OutboundProxy>>,
    pub max_concurrency: Option<u32>,
    /// Daily spend cap in nano-USD.
    pub daily_quota_nanos: Option<u64>,
    /// Minutes after midnight UTC when the daily quota resets.
    pub quota_reset_minute: u32,
    pub weight: u32,
    /// Per-account cooldown overrides.
    pub cooldowns: HashMap<CooldownClass, std::time::Duration>,
    /// Served only to keys bound to it (by name or through its group).
    pub dedicated: bool,
    /// Health, use counters and limits; shared across snapshot rebuilds.
    pub rt: Arc<AccountRuntime>,
    /// Models the account's subscription tier may not use (`model_blacklist` syntax).
    pub tier_blacklist: Vec<String>,
}

impl Account {
    /// Whether this account may serve the model the client asked for.
    pub fn serves(&self, model: &str) -> bool {
        // `ccr,` models go to CCR accounts only, and CCR accounts serve nothing else.
        if ccr::is_ccr_model(model) != (self.kind == AccountKind::Ccr) {
            return false;
        }
        let listed = match &self.models {
            None => {
                self.kind == AccountKind::Ccr
                    || self.model_map.contains_key(model)
                    || providers::default_family(self.kind, Family::of(model))
            }
            Some(allowed) => allowed.contains(model) || self.model_map.contains_key(model),
        };
        listed && (self.tier_blacklist.is_empty() || !self.tier_denies(self.upstream_model(model)))
    }

    /// Whether the subscription tier keeps the account from the upstream model.
    fn tier_denies(&self, upstream_model: &str) -> bool {
        use filters::builtin_policy::{model_entry_matches, policy_model_name};
        let m = policy_model_name(upstream_model);
        self.tier_blacklist.iter().any(|e| model_entry_matches(e, &m))
    }

    /// Whether the account lives in the store (created through the admin API).
    pub fn source_is_store(&self) -> bool {
        self.source == Source::Admin
    }

    /// Whether the account's configuration names the model (in `models` or `model_map`).
    pub fn names_model(&self, model: &str) -> bool {
        self.model_map.contains_key(model) || self.models.as_ref().is_some_and(|m| m.contains(model))
    }

    /// The model name to send upstream for the client's model: its `model_map` entry, else the
    /// name itself (for CCR accounts without the `ccr,` prefix).
    pub fn upstream_model<'a>(&'a self, model: &'a str) -> &'a str {
        match self.model_map.get(model) {
            Some(m) => m,
            None if self.kind == AccountKind::Ccr => ccr::strip(model),
            None => model,
        }
    }

    /// The live token cell of an OAuth account (`claude-oauth`, `openai-oauth`, `gemini-oauth`).
    pub fn oauth(&self) -> Option<&Arc<TokenCell>> {
        match &self.credential {
            Credential::OAuth(cell) | Credential::OpenAiOAuth(cell, _) | Credential::GoogleOAuth(cell, _) => Some(cell),
            _ => None,
        }
    }

    /// Whether the account takes requests of a key with this binding (or none) that may go to
    /// `kinds`: it is enabled, of one of those kinds, and the binding designates it (a key
    /// without one uses the shared, non-dedicated accounts).
    pub fn open_to(&self, binding: Option<&str>, kinds: KindSet) -> bool {
        let bound_ok = match binding {
            Some(b) => self.matches_binding(b),
            None => !self.dedicated,
        };
        bound_ok && self.enabled && kinds.contains(self.kind)
    }

    /// Whether a key binding (`name` or `group:<name>`) designates this account.
    pub fn matches_binding(&self, binding: &str) -> bool {
        match binding.strip_prefix("group:") {
            Some(g) => self.group.as_deref() == Some(g),
            None => *self.name == *binding,
        }
    }

    /// The cooldown for an error class: the account's override, else the global setting.
    pub fn cooldown(
        &self,
        class: CooldownClass,
        global: &HashMap<CooldownClass, std::time::Duration>,
    ) -> std::time::Duration {
        self.cooldowns
            .get(&class)
            .or_else(|| global.get(&class))
            .copied()
            .unwrap_or_else(|| class.default_duration())
    }
}

/// What the token refresh of an OAuth account reads of it.
impl Holder for Account {
    fn id(&self) -> &Arc<str> {
        &self.id
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn token(&self) -> Option<&Arc<TokenCell>> {
        self.oauth()
    }

    fn proxy(&self) -> Option<&OutboundProxy> {
        self.proxy.as_deref()
    }

    fn stored(&self) -> bool {
        self.source_is_store()
    }

    fn needs_token(&self, now_ms: i64) -> bool {
        self.enabled
            && !self
                .rt
                .health(now_ms)
                .is_some_and(|h| h.state == crate::store::coord::HealthState::Unauthorized)
    }
}

/// Where project discovery reaches a `gemini-oauth` account's Code Assist.
impl crate::providers::gemini_oauth::project::CodeAssistHolder for Account {
    fn code_assist_base(&self) -> &crate::providers::UpstreamBase {
        &self.base
    }
}

/// What an [`Account`] is built from.
pub struct AccountSpec {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub kind: AccountKind,
    pub base: UpstreamBase,
    pub credential: Credential,
    pub priority: u32,
    pub enabled: bool,
    pub models: Option<Vec<String>>,
    pub model_map: std::collections::BTreeMap<String, String>,
    pub source: Source,
    pub group: Option<String>,
    pub proxy: Option<Arc<OutboundProxy>>,
    pub max_concurrency: Option<u32>,
    pub daily_quota_nanos: Option<u64>,
    pub quota_reset_minute: u32,
    pub weight: u32,
    pub cooldowns: HashMap<CooldownClass, std::time::Duration>,
    pub tier_blacklist: Vec<String>,
}

/// What a request asks of the scheduler.
pub struct PickRequest<'a> {
    pub model: &'a str,
    /// The account kinds the request can be sent to (its dialect converts to their wires).
    pub kinds: KindSet,
    /// The key's dedicated binding, if any.
    pub binding: Option<&'a str>,
    /// The account the request's session is stuck to, if any.
    pub sticky: Option<&'a str>,
    /// Accounts already tried (or refused) for this request.
    pub tried: &'a [Arc<str>],
    /// Unix ms.
    pub now_ms: i64,
}

/// The scheduler's own state that outlives snapshots: each account's runtime (health, use
/// counters, spend).
#[derive(Default)]
pub struct Scheduler {
    runtimes: Mutex<HashMap<Arc<str>, Arc<AccountRuntime>>>,
    clock: AtomicU64,
    /// Accounts whose new health entry is still being written to the store: a reload that read
    /// the store before the write landed must not undo it.
    pending_health: Mutex<HashMap<Arc<str>, u32>>,
}

impl Scheduler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the pool for a new snapshot, keeping each account's runtime. `bindings` are the
    /// bindings of every key, which make the accounts they designate dedicated.
    pub fn pool(&self, specs: Vec<AccountSpec>, bindings: &[&str]) -> AccountPool {
        let mut runtimes = self.runtimes.lock().unwrap_or_else(|p| p.into_inner());
        let live: HashSet<Arc<str>> = specs.iter().map(|s| s.id.clone()).collect();
        runtimes.retain(|id, _| live.contains(id));
        // A new account starts level with the least-used of the others, not far behind them all.
        let floor = runtimes
            .values()
            .map(|r| r.picks.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        let mut accounts: Vec<Arc<Account>> = specs
            .into_iter()
            .map(|s| {
                let rt = runtimes
                    .entry(s.id.clone())
                    .or_insert_with(|| Arc::new(AccountRuntime::starting_at(floor)))
                    .clone();
                let mut a = Account {
                    id: s.id,
                    name: s.name,
                    kind: s.kind,
                    base: s.base,
                    credential: s.credential,
                    priority: s.priority,
                    enabled: s.enabled,
                    models: s.models.map(|m| m.into_iter().collect()),
                    model_map: s.model_map.into_iter().collect(),
                    source: s.source,
                    group: s.group,
                    proxy: s.proxy,
                    max_concurrency: s.max_concurrency,
                    daily_quota_nanos: s.daily_quota_nanos,
                    quota_reset_minute: s.quota_reset_minute,
                    weight: s.weight.max(1),
                    cooldowns: s.cooldowns,
                    dedicated: false,
                    rt,
                    tier_blacklist: s.tier_blacklist,
                };
                a.dedicated = bindings.iter().any(|b| a.matches_binding(b));
                Arc::new(a)
            })
            .collect();
        accounts.sort_by(|a, b| a.priority.cmp(&b.priority).then_with(|| a.name.cmp(&b.name)));
        let index = accounts.iter().enumerate().map(|(i, a)| (a.id.clone(), i)).collect();
        let hot = accounts
            .iter()
            .map(|a| Hot {
                priority: a.priority,
                weight: a.weight,
                enabled: a.enabled,
                dedicated: a.dedicated,
                needs_full_check: a.models.is_some() || !a.model_map.is_empty() || !a.tier_blacklist.is_empty(),
                ccr: a.kind == AccountKind::Ccr,
                kind: a.kind,
                quota: a.daily_quota_nanos,
                rt: a.rt.clone(),
            })
            .collect();
        AccountPool { accounts, index, hot }
    }

    /// The runtime of an account id, if the account exists.
    pub fn runtime(&self, id: &str) -> Option<Arc<AccountRuntime>> {
        self.runtimes.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// Applies the shared health entries (from the store) to every account: listed accounts get
    /// their entry, others are cleared.
    pub fn apply_health(&self, entries: &std::collections::BTreeMap<String, AccountHealth>, read_at_ms: i64) {
        let pending = self.pending_health.lock().unwrap_or_else(|p| p.into_inner());
        let runtimes = self.runtimes.lock().unwrap_or_else(|p| p.into_inner());
        for (id, rt) in runtimes.iter() {
            if pending.contains_key(id) {
                continue;
            }
            let shared = entries.get(&**id).cloned();
            // A mark made here after the store was read is newer than what was read: keep it.
            if let Some(local) = rt.health(read_at_ms)
                && local.since >= read_at_ms
                && shared.as_ref().is_none_or(|s| s.since < local.since)
            {
                continue;
            }
            rt.set_health(shared);
        }
    }

    /// Takes an account out of the pool here at once, and on every instance through the shared
    /// coordination store (written in the background, as work that shutdown waits for).
    pub fn mark_shared(
        self: &Arc<Self>,
        account: &Account,
        health: AccountHealth,
        coord: Arc<dyn crate::store::coord::Coordination>,
        store: Arc<dyn crate::store::Store>,
        tasks: &crate::lifecycle::Tasks,
    ) {
        tracing::warn!(account = %account.name, state = ?health.state, reason = %health.reason, until = ?health.until, "account out of the pool");
        if !account.rt.unhealthy_alerted.swap(true, Ordering::Relaxed) {
            crate::alert_events::raise(unhealthy_alert(account, &health));
        }
        self.set_health_pending(account, health.clone());
        let scheduler = self.clone();
        let id = account.id.clone();
        tasks.spawn_work("account health write", async move {
            let saved = coord.put_account_health(&id, &health).await;
            scheduler.health_saved(&id);
            if let Err(e) = saved {
                tracing::warn!(error = %e, "saving account health failed");
                return;
            }
            if let Err(e) = store.publish_change().await {
                tracing::warn!(error = %e, "announcing account health failed");
            }
        });
    }

    /// Marks an account here at once; call [`Scheduler::health_saved`] once the entry is in the
    /// shared store.
    pub fn set_health_pending(&self, account: &Account, health: AccountHealth) {
        *self
            .pending_health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(account.id.clone())
            .or_insert(0) += 1;
        account.rt.set_health(Some(health));
    }

    pub fn health_saved(&self, id: &str) {
        let mut pending = self.pending_health.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = pending.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                pending.remove(id);
            }
        }
    }

    fn next_stamp(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Picks the account for a request: the key's binding restricts the candidates (else the
    /// shared, non-dedicated pool); the sticky account wins when it is healthy; otherwise the best
    /// priority among healthy candidates, and within it the least used relative to its weight
    /// (least recently used among equals). Marks the choice used.
    pub fn pick(&self, pool: &AccountPool, req: &PickRequest<'_>) -> Option<Arc<Account>> {
        // Everything but health: who may serve this request at all.
        let allowed = |a: &Account| {
            a.open_to(req.binding, req.kinds)
                && (req.tried.is_empty() || !req.tried.contains(&a.id))
                && a.serves(req.model)
        };
        let healthy = |a: &Account| a.rt.available(req.model, req.now_ms, a.daily_quota_nanos);
        if let Some(sticky) = req.sticky
            && let Some(&i) = pool.index.get(sticky)
            && let Some(a) = pool.accounts.get(i)
            && allowed(a)
            && healthy(a)
        {
            self.mark_used(a);
            return Some(a.clone());
        }
        // Least used relative to weight: compare picks_a / w_a < picks_b / w_b without dividing.
        // The scan walks the compact `hot` array (one cache line per account, one pointer to its
        // runtime) and touches the full account only for the rare checks that need it.
        let mut best: Option<(usize, u64, u64)> = None; // (index, picks, stamp)
        let mut most_picks_per_weight: (u64, u64) = (0, 1);
        let mut best_priority = u32::MAX;
        let for_ccr = ccr::is_ccr_model(req.model);
        let family = Family::of(req.model);
        for (i, h) in pool.hot.iter().enumerate() {
            if h.priority > best_priority {
                break; // sorted by priority: nothing better follows
            }
            if !h.enabled
                || (req.binding.is_none() && h.dedicated)
                || h.ccr != for_ccr
                || !req.kinds.contains(h.kind)
                || !(h.needs_full_check || h.ccr || providers::default_family(h.kind, family))
            {
                continue;
            }
            if (h.needs_full_check || req.binding.is_some() || !req.tried.is_empty())
                && !pool.accounts.get(i).is_some_and(|a| allowed(a))
            {
                continue;
            }
            if !h.rt.available(req.model, req.now_ms, h.quota) {
                continue;
            }
            let picks = h.rt.picks.load(Ordering::Relaxed);
            let w = u64::from(h.weight);
            if picks.saturating_mul(most_picks_per_weight.1) > most_picks_per_weight.0.saturating_mul(w) {
                most_picks_per_weight = (picks, w);
            }
            let better = match best {
                None => true,
                Some((bi, bp, bs)) => {
                    let bw = u64::from(pool.hot[bi].weight);
                    let lhs = picks.saturating_mul(bw);
                    let rhs = bp.saturating_mul(w);
                    lhs < rhs || lhs == rhs && h.rt.last_used.load(Ordering::Relaxed) < bs
                }
            };
            if better {
                best = Some((i, picks, h.rt.last_used.load(Ordering::Relaxed)));
                best_priority = h.priority;
            }
        }
        let best = best.and_then(|(i, p, s)| pool.accounts.get(i).map(|a| (a, p, s)));
        let Some((chosen, picks, _)) = best else {
            return self.last_resort(pool, req, &allowed);
        };
        // An account back from a long absence would otherwise take every request until it has
        // caught up with the others: start it level with them instead.
        // (Fair shares keep every account within about one pick per weight unit of the others.)
        let (top, top_w) = most_picks_per_weight;
        let w = u64::from(chosen.weight);
        let level = top.saturating_mul(w) / top_w.max(1);
        if level > picks.saturating_add(2 * w) {
            chosen.rt.picks.fetch_max(level.saturating_sub(w), Ordering::Relaxed);
        }
        self.mark_used(chosen);
        Some(chosen.clone())
    }

    /// When every allowed account is out of the pool only because connections to it failed,
    /// trying the one that returns soonest beats refusing the request: one reset connection must
    /// not take the only account away. Accounts the upstream itself refused (429, 529, 5xx, 401,
    /// 403) or that are over quota keep their cooldown. Only for a request's first attempt.
    fn last_resort(
        &self,
        pool: &AccountPool,
        req: &PickRequest<'_>,
        allowed: &dyn Fn(&Account) -> bool,
    ) -> Option<Arc<Account>> {
        if !req.tried.is_empty() {
            return None;
        }
        let mut best: Option<(&Arc<Account>, i64)> = None;
        for a in &pool.accounts {
            if !allowed(a) || a.daily_quota_nanos.is_some_and(|q| a.rt.spend() >= q) {
                continue;
            }
            let Some(h) = a.rt.health(req.now_ms) else { continue };
            if h.state != crate::store::coord::HealthState::CoolingDown || h.reason != health::CONNECT_FAILED {
                continue;
            }
            let until = h.until.unwrap_or(i64::MAX);
            if best.is_none_or(|(_, u)| until < u) {
                best = Some((a, until));
            }
        }
        let (chosen, _) = best?;
        self.mark_used(chosen);
        Some(chosen.clone())
    }

    fn mark_used(&self, a: &Account) {
        a.rt.last_used.store(self.next_stamp(), Ordering::Relaxed);
        a.rt.picks.fetch_add(1, Ordering::Relaxed);
    }
}

/// The accounts of one snapshot, sorted by priority.
#[derive(Debug, Default)]
pub struct AccountPool {
    accounts: Vec<Arc<Account>>,
    /// Account id → position in `accounts`.
    index: HashMap<Arc<str>, usize>,
    /// What selection reads for every account, packed and in the same order as `accounts`.
    hot: Vec<Hot>,
}

/// The per-account fields the selection scan reads.
#[derive(Debug)]
struct Hot {
    priority: u32,
    weight: u32,
    enabled: bool,
    dedicated: bool,
    /// A model allowlist applies: check the full account.
    needs_full_check: bool,
    /// A CCR account: it serves `ccr,` models, and only those.
    ccr: bool,
    kind: AccountKind,
    quota: Option<u64>,
    rt: Arc<AccountRuntime>,
}

impl AccountPool {
    pub fn all(&self) -> &[Arc<Account>] {
        &self.accounts
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<Account>> {
        self.index.get(id).and_then(|&i| self.accounts.get(i))
    }

    /// Model names clients may ask for, when known from allowlists and maps; `None` when some
    /// enabled account serves any model.
    pub fn advertised_models(&self) -> Option<Vec<String>> {
        let mut out = std::collections::BTreeSet::new();
        for a in self.accounts.iter().filter(|a| a.enabled) {
            match &a.models {
                None => return None,
                Some(m) => out.extend(m.iter().cloned()),
            }
            out.extend(a.model_map.keys().cloned());
        }
        Some(out.into_iter().collect())
    }

    /// Whether any enabled account of `kinds` serves `model` (health aside), within a key's
    /// binding when it has one.
    pub fn serves_any(&self, model: &str, kinds: KindSet, binding: Option<&str>) -> bool {
        self.accounts
            .iter()
            .any(|a| a.open_to(binding, kinds) && a.serves(model))
    }

    /// How long (ms from `now_ms`) until the first account that serves `model` and is out of the
    /// pool for a while returns; `None` when none says (an account parked until an admin acts,
    /// or none out of the pool).
    pub fn soonest_back(&self, model: &str, kinds: KindSet, binding: Option<&str>, now_ms: i64) -> Option<i64> {
        self.accounts
            .iter()
            .filter(|a| a.open_to(binding, kinds) && a.serves(model))
            .filter_map(|a| a.rt.health(now_ms))
            // A window of another model family does not keep this model out.
            .filter(|h| health::family_covers(h.family.as_deref(), model))
            .filter_map(|h| h.until)
            .min()
            .map(|until| until - now_ms)
    }

    /// Keys of `model_map`s of enabled accounts (aliases clients may use).
    pub fn mapped_models(&self) -> Vec<String> {
        let mut out = std::collections::BTreeSet::new();
        for a in self.accounts.iter().filter(|a| a.enabled) {
            out.extend(a.model_map.keys().cloned());
        }
        out.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(s: &Scheduler, pool: &AccountPool, model: &str, tried: &[Arc<str>]) -> Option<Arc<Account>> {
        s.pick(
            pool,
            &PickRequest {
                model,
                kinds: KindSet::ALL,
                binding: None,
                sticky: None,
                tried,
                now_ms: 1,
            },
        )
    }

    fn spec(name: &str, priority: u32, models: Option<Vec<&str>>) -> AccountSpec {
        AccountSpec {
            id: name.into(),
            name: name.into(),
            kind: AccountKind::ClaudeConsole,
            base: UpstreamBase::parse("http://127.0.0.1:1").unwrap(),
            credential: Credential::Header(http::header::AUTHORIZATION, http::HeaderValue::from_static("Bearer x")),
            priority,
            enabled: true,
            models: models.map(|m| m.into_iter().map(String::from).collect()),
            model_map: [("alias".to_string(), "real".to_string())].into_iter().collect(),
            source: Source::Config,
            group: None,
            proxy: None,
            max_concurrency: None,
            daily_quota_nanos: None,
            quota_reset_minute: 0,
            weight: 1,
            cooldowns: HashMap::new(),
            tier_blacklist: Vec::new(),
        }
    }

    #[test]
    fn priority_then_least_recently_used() {
        let s = Scheduler::new();
        let pool = s.pool(vec![spec("b", 10, None), spec("c", 20, None), spec("a", 10, None)], &[]);
        let picks: Vec<String> = (0..4)
            .map(|_| pick(&s, &pool, "m", &[]).unwrap().name.to_string())
            .collect();
        assert_eq!(picks, ["a", "b", "a", "b"]);
        let tried: Vec<Arc<str>> = vec!["a".into(), "b".into()];
        assert_eq!(&*pick(&s, &pool, "m", &tried).unwrap().name, "c");
        let all: Vec<Arc<str>> = vec!["a".into(), "b".into(), "c".into()];
        assert!(pick(&s, &pool, "m", &all).is_none());
    }

    #[test]
    fn model_allowlists_and_maps() {
        let s = Scheduler::new();
        let pool = s.pool(vec![spec("x", 1, Some(vec!["only"])), spec("y", 5, None)], &[]);
        assert_eq!(&*pick(&s, &pool, "only", &[]).unwrap().name, "x");
        assert_eq!(&*pick(&s, &pool, "alias", &[]).unwrap().name, "x");
        assert_eq!(&*pick(&s, &pool, "other", &[]).unwrap().name, "y");
        assert_eq!(pool.all()[0].upstream_model("alias"), "real");
        assert_eq!(pool.all()[0].upstream_model("only"), "only");
        assert_eq!(pool.advertised_models(), None);
    }

    #[test]
    fn subscription_tiers_gate_upstream_models() {
        let s = Scheduler::new();
        let mut pro = spec("pro", 1, None);
        pro.tier_blacklist =
            crate::providers::anthropic_oauth::settings::OAuthSettings::default().tier_blacklist("pro");
        pro.model_map = [("fast".to_string(), "claude-opus-4-1-20250805".to_string())]
            .into_iter()
            .collect();
        let pool = s.pool(vec![pro, spec("console", 5, None)], &[]);
        let who = |m: &str| pick(&s, &pool, m, &[]).unwrap().name.to_string();
        assert_eq!(who("claude-opus-4-5"), "pro");
        assert_eq!(who("claude-sonnet-4-5-20250929"), "pro");
        assert_eq!(who("claude-opus-4-1-20250805"), "console", "no Opus 4.1 on Pro");
        assert_eq!(who("claude-opus-4-20250514"), "console");
        assert_eq!(who("fast"), "console", "the mapped upstream model is what counts");
    }

    #[test]
    fn stamps_survive_rebuilds() {
        let s = Scheduler::new();
        let pool = s.pool(vec![spec("a", 1, None), spec("b", 1, None)], &[]);
        assert_eq!(&*pick(&s, &pool, "m", &[]).unwrap().name, "a");
        let pool = s.pool(vec![spec("a", 1, None), spec("b", 1, None)], &[]);
        assert_eq!(&*pick(&s, &pool, "m", &[]).unwrap().name, "b");
    }
}

#[cfg(test)]
mod selection_tests {
    use super::*;
    use crate::store::coord::{AccountHealth, HealthState};

    fn spec(name: &str) -> AccountSpec {
        AccountSpec {
            id: name.into(),
            name: name.into(),
            kind: AccountKind::ClaudeConsole,
            base: UpstreamBase::parse("http://127.0.0.1:1").unwrap(),
            credential: Credential::Header(http::header::AUTHORIZATION, http::HeaderValue::from_static("Bearer x")),
            priority: 1,
            enabled: true,
            models: None,
            model_map: Default::default(),
            source: Source::Config,
            group: None,
            proxy: None,
            max_concurrency: None,
            daily_quota_nanos: None,
            quota_reset_minute: 0,
            weight: 1,
            cooldowns: HashMap::new(),
            tier_blacklist: Vec::new(),
        }
    }

    fn pick(s: &Scheduler, pool: &AccountPool, tried: &[Arc<str>]) -> Option<String> {
        s.pick(
            pool,
            &PickRequest {
                model: "m",
                kinds: KindSet::ALL,
                binding: None,
                sticky: None,
                tried,
                now_ms: 1_000,
            },
        )
        .map(|a| a.name.to_string())
    }

    fn cool(a: &Account, reason: &str) {
        a.rt.set_health(Some(AccountHealth {
            state: HealthState::CoolingDown,
            reason: reason.into(),
            since: 0,
            until: Some(60_000),
            family: None,
        }));
    }

    #[test]
    fn a_returning_account_gets_its_share_not_a_burst() {
        let s = Scheduler::new();
        let pool = s.pool(vec![spec("a"), spec("b"), spec("c")], &[]);
        cool(&pool.all()[0], "upstream 429");
        for _ in 0..1000 {
            pick(&s, &pool, &[]).unwrap();
        }
        pool.all()[0].rt.set_health(None);
        let next: Vec<String> = (0..6).map(|_| pick(&s, &pool, &[]).unwrap()).collect();
        let to_a = next.iter().filter(|n| *n == "a").count();
        assert!(to_a <= 3, "the returning account took {to_a} of 6: {next:?}");
    }

    #[test]
    fn weights_share_in_proportion() {
        let s = Scheduler::new();
        let mut heavy = spec("heavy");
        heavy.weight = 3;
        let pool = s.pool(vec![heavy, spec("light")], &[]);
        let picks: Vec<String> = (0..400).map(|_| pick(&s, &pool, &[]).unwrap()).collect();
        let h = picks.iter().filter(|n| *n == "heavy").count();
        assert!((290..=310).contains(&h), "heavy got {h} of 400");
    }

    #[test]
    fn only_connect_failures_allow_a_last_resort() {
        let s = Scheduler::new();
        let pool = s.pool(vec![spec("only")], &[]);
        cool(&pool.all()[0], health::CONNECT_FAILED);
        assert_eq!(
            pick(&s, &pool, &[]).as_deref(),
            Some("only"),
            "a reset connection does not empty the pool"
        );
        let tried: Vec<Arc<str>> = vec!["other".into()];
        assert_eq!(pick(&s, &pool, &tried), None, "not on a retry");
        cool(&pool.all()[0], "upstream 529");
        assert_eq!(pick(&s, &pool, &[]), None, "an upstream refusal keeps its cooldown");
    }
}
