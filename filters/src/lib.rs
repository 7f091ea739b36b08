//! The relay's request filter chain.
//!
//! A [`Filter`] is a policy that runs at fixed phases of a relayed request. Every phase is a trait
//! method with a no-op default, so a filter implements only what it needs:
//!
//! ```text
//!  request head ──► on_headers  (once; before the body is read: key auth, client, IP, permissions)
//!  body parsed  ──► on_request  (once; the body's facts are known: models, rates, spend, leases)
//!  upstream attempts (the dispatch's failover loop; filters do not run per attempt yet)
//!  finished     ──► on_complete (once, after the last attempt: usage, charging)
//! ```
//!
//! A filter refuses a request by returning a [`Rejection`]; the chain stops at the first one, so
//! `?` short-circuits, and the relay renders it in the caller's API dialect. A rejection never
//! reaches an upstream.
//!
//! Filters are built by name from a [`Registry`] and ordered by the `filters:` list of the config.
//! A custom plugin is any type implementing [`Filter`], registered under its own name with
//! [`Registry::register`] before the chain is built.

use std::any::Any;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderName;
use http::header::AUTHORIZATION;

mod builtin_limits;
pub mod builtin_policy;
pub mod policy;

/// A client key as the filters see it: the runtime form of a stored key record.
#[derive(Debug, Clone)]
pub struct ClientKey {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub enabled: bool,
    /// Dedicated binding: an account name or `group:<name>`; the scheduler serves the key only
    /// from there.
    pub bind: Option<Arc<str>>,
    /// Restrictions and limits.
    pub policy: Arc<policy::KeyPolicy>,
}

/// Finds the client key a caller presented. Implemented by the relay over its in-memory snapshot.
pub trait KeyDirectory: Send + Sync {
    fn find(&self, presented: &str) -> Option<Arc<ClientKey>>;
}

/// Which upstream family an endpoint belongs to (for permissions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Claude,
    Gemini,
    OpenAI,
}

/// What the filters know about the route of a request.
#[derive(Debug, Clone, Copy)]
pub struct RouteInfo {
    pub service: Service,
    /// A stable endpoint name, e.g. `messages`, `count_tokens`, `models`.
    pub endpoint: &'static str,
}

/// What the relay parsed from the request body, once.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    pub model: Option<String>,
    pub stream: bool,
    pub max_tokens: Option<u64>,
    /// The conversation this request belongs to, when the relay can tell (sticky sessions).
    pub session: Option<String>,
    /// The body asks for fast mode: top-level `speed: "fast"` (Anthropic Messages). The
    /// `fast-mode-…` beta header alone does not: Claude Code keeps sending it after one fast turn.
    pub fast: bool,
    /// The relay's bound on what this request can cost (nano-USD): its estimated input and its
    /// output cap, priced at the model's price without cache discounts. `None` when the model has
    /// no price; such a request reserves nothing. The relay fills it only for keys that reserve
    /// (see [`policy::KeyPolicy::reserves_cost`]).
    pub reserve_nanos: Option<u64>,
    /// The prompt's size in input tokens, estimated from the body (no tokenizer), for
    /// `max_input_tokens`.
    pub input_tokens: Option<u64>,
}

/// The class of a refusal; the relay maps it to the dialect's error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    InvalidRequest,
    Authentication,
    Permission,
    NotFound,
    RateLimited,
    Billing,
}

/// A refusal: the HTTP status, its class, a message for the caller, and a low-cardinality reason
/// for metrics.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub status: u16,
    pub kind: RejectKind,
    pub message: String,
    /// Seconds until a retry may succeed (sent as `retry-after`).
    pub retry_after: Option<u64>,
    /// Metrics label, e.g. `missing_key`, `invalid_key`, `disabled_key`.
    pub reason: &'static str,
}

impl Rejection {
    pub fn new(status: u16, kind: RejectKind, reason: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            status,
            kind,
            message: message.into(),
            retry_after: None,
            reason,
        }
    }
}

/// The view of a request a filter gets in one phase.
pub struct FilterContext<'a> {
    pub route: RouteInfo,
    pub headers: &'a http::HeaderMap,
    /// The raw query string, if any.
    pub query: Option<&'a str>,
    pub client_ip: Option<IpAddr>,
    /// Set by the key authentication filter; later filters read it.
    pub key: Option<Arc<ClientKey>>,
    /// Present from the request phase on.
    pub facts: Option<&'a RequestFacts>,
    /// Values a filter keeps alive until the request ends (leases, guards). Dropped after
    /// `on_complete`, also when the request fails or the client disconnects.
    pub holds: &'a mut Vec<Box<dyn Any + Send + Sync>>,
}

/// What a filter sees once the request is over.
pub struct CompletionContext<'a> {
    pub route: RouteInfo,
    pub key: Option<&'a Arc<ClientKey>>,
    pub facts: Option<&'a RequestFacts>,
    /// The status sent to the client (0 when nothing was sent).
    pub status: u16,
    /// All tokens of the request (input, output, cache reads and writes).
    pub tokens: u64,
    /// Its cost in nano-USD (0 when unknown).
    pub cost_nanos: u64,
    /// What the filters kept in [`FilterContext::holds`] (reservations settle through them).
    pub holds: &'a [Box<dyn Any + Send + Sync>],
}

/// Spend reserved for a request at admission, freed when it settles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Unique per request, across instances.
    pub holder: String,
    pub nanos: u64,
}

/// Put in [`FilterContext::holds`] for a key with `cost_limits.hard_cap`: how much the request
/// may cost before it would take the key past a cap (its reservation plus the room that was
/// left at its admission). The relay ends a stream whose running cost goes over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpendCeiling {
    pub nanos: u64,
}

/// What a key's limit counters hold at one instant, read by [`LimitBackend::peek`] without
/// changing them. Periods that ended count as empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitPeek {
    /// The rate window's requests, tokens and cost (nano-USD).
    pub requests: u64,
    pub tokens: u64,
    pub cost_nanos: u64,
    /// When the fixed rate window ends (ms); `None` for a rolling one or without a window.
    pub window_ends_ms: Option<i64>,
    /// Spend (nano-USD) this day, week (from the key's weekly reset), calendar month, and in all.
    pub day_nanos: u64,
    pub week_nanos: u64,
    pub month_nanos: u64,
    pub total_nanos: u64,
    /// Concurrency slots held.
    pub in_flight: u64,
    /// Spend reserved by requests in flight (nano-USD).
    pub reserved_nanos: u64,
}

/// What the limit filters keep their counters in: the store shared by every instance (one round
/// trip per admission) or memory for a single instance.
#[async_trait]
pub trait LimitBackend: Send + Sync {
    /// Checks and reserves, atomically and in one round trip, every rate window, spend cap and
    /// concurrency slot of the key's policy; `holder` names the concurrency slot to take and the
    /// request (unique across instances). With `reserve_nanos > 0` and a key with spend caps or a
    /// cost window, the request is admitted only when that much more fits under every cap beside
    /// what was spent and what the requests in flight reserved; it is then held under `holder`
    /// ([`Admission::Reserved`]) until [`LimitBackend::settle`] or [`LimitBackend::unreserve`].
    async fn admit(&self, key: &ClientKey, holder: &str, reserve_nanos: u64, now_ms: i64) -> Result<Admission, String>;
    /// Adds a finished request's tokens and cost to the key's windows and spend.
    async fn charge(&self, key: &ClientKey, tokens: u64, cost_nanos: u64, now_ms: i64) -> Result<(), String>;
    /// Charges a finished request, frees its reservation and its concurrency slot (`slot`: the
    /// holder it was admitted with), in one call (one round trip).
    async fn settle(
        &self,
        key: &ClientKey,
        reservation: Option<&Reservation>,
        slot: Option<&str>,
        tokens: u64,
        cost_nanos: u64,
        now_ms: i64,
    ) -> Result<(), String> {
        self.charge(key, tokens, cost_nanos, now_ms).await?;
        if let Some(r) = reservation {
            self.unreserve(&key.id, r).await?;
        }
        match slot {
            Some(holder) => self.release(&key.id, holder).await,
            None => Ok(()),
        }
    }
    /// Frees a reservation without charging (the request ended without settling).
    async fn unreserve(&self, _key_id: &str, _reservation: &Reservation) -> Result<(), String> {
        Ok(())
    }
    /// Frees the key's concurrency slot held by `holder`.
    async fn release(&self, key_id: &str, holder: &str) -> Result<(), String>;
    /// Records the first use of an activation-mode key; returns when it was activated (Unix s),
    /// the same on every instance.
    async fn activate(&self, key_id: &str, now_s: i64) -> Result<i64, String>;
    /// The key's counters now, read without changing them (one round trip on a shared store).
    async fn peek(&self, _key: &ClientKey, _now_ms: i64) -> Result<LimitPeek, String> {
        Err("this limit backend cannot be read".into())
    }
}

/// The answer of [`LimitBackend::admit`].
#[derive(Debug, Clone)]
pub enum Admission {
    Admitted,
    /// Admitted, and the request's estimated cost is reserved; `room_nanos` is what was left
    /// under the tightest cost limit after it (for `hard_cap`).
    Reserved {
        room_nanos: u64,
    },
    Refused(Rejection),
}

#[async_trait]
pub trait Filter: Send + Sync {
    /// The name this filter is registered and configured under.
    fn name(&self) -> &str;

    /// Runs once, before the request body is read.
    async fn on_headers(&self, _cx: &mut FilterContext<'_>) -> Result<(), Rejection> {
        Ok(())
    }

    /// Runs once, after the body was read and parsed.
    async fn on_request(&self, _cx: &mut FilterContext<'_>) -> Result<(), Rejection> {
        Ok(())
    }

    /// Runs once after the last upstream attempt, whatever the outcome.
    async fn on_complete(&self, _cx: &CompletionContext<'_>) {}
}

/// The filters of the relay in their configured order.
#[derive(Clone, Default)]
pub struct Chain {
    filters: Vec<Arc<dyn Filter>>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Chain {
    pub fn new(filters: Vec<Arc<dyn Filter>>) -> Self {
        Chain { filters }
    }

    pub fn names(&self) -> Vec<&str> {
        self.filters.iter().map(|f| f.name()).collect()
    }

    pub async fn run_headers(&self, cx: &mut FilterContext<'_>) -> Result<(), Rejection> {
        for f in &self.filters {
            f.on_headers(cx).await?;
        }
        Ok(())
    }

    pub async fn run_request(&self, cx: &mut FilterContext<'_>) -> Result<(), Rejection> {
        for f in &self.filters {
            f.on_request(cx).await?;
        }
        Ok(())
    }

    pub async fn run_complete(&self, cx: &CompletionContext<'_>) {
        for f in &self.filters {
            f.on_complete(cx).await;
        }
    }
}

/// What built-in and custom filters may be built from.
#[derive(Clone)]
pub struct FilterDeps {
    pub keys: Arc<dyn KeyDirectory>,
    pub limits: Arc<dyn LimitBackend>,
}

type Factory = Box<dyn Fn(&FilterDeps) -> Result<Arc<dyn Filter>, String> + Send + Sync>;

/// Filter factories by name. [`Registry::with_builtins`] knows the relay's own filters.
pub struct Registry {
    factories: HashMap<String, Factory>,
}

impl Registry {
    pub fn empty() -> Self {
        Registry {
            factories: HashMap::new(),
        }
    }

    pub fn with_builtins() -> Self {
        let mut r = Registry::empty();
        r.register("key_auth", |deps| {
            Ok(Arc::new(KeyAuth::new(deps.keys.clone())) as Arc<dyn Filter>)
        });
        builtin_policy::register(&mut r);
        builtin_limits::register(&mut r);
        r
    }

    /// Adds (or replaces) a filter factory under `name`.
    pub fn register<F>(&mut self, name: &str, factory: F)
    where
        F: Fn(&FilterDeps) -> Result<Arc<dyn Filter>, String> + Send + Sync + 'static,
    {
        self.factories.insert(name.to_string(), Box::new(factory));
    }

    pub fn knows(&self, name: &str) -> bool {
        self.factories.contains_key(name)
    }

    /// Checks a chain order without building it (no runtime dependencies needed): `key_auth`
    /// first, every name known, none twice. [`Registry::build`] runs the same check.
    pub fn check_order(&self, order: &[String]) -> Result<(), String> {
        if order.first().map(String::as_str) != Some("key_auth") {
            return Err("the filter chain must start with `key_auth`".into());
        }
        let mut seen = std::collections::HashSet::new();
        for name in order {
            if !seen.insert(name.as_str()) {
                return Err(format!("filter `{name}` is listed twice"));
            }
            if !self.knows(name) {
                let mut known: Vec<&str> = self.factories.keys().map(String::as_str).collect();
                known.sort_unstable();
                return Err(format!("unknown filter `{name}` (known: {})", known.join(", ")));
            }
        }
        Ok(())
    }

    /// Builds the chain in the given order. `key_auth` must come first: every later filter relies
    /// on knowing the key.
    pub fn build(&self, order: &[String], deps: &FilterDeps) -> Result<Chain, String> {
        self.check_order(order)?;
        let mut filters = Vec::with_capacity(order.len());
        for name in order {
            let factory = self
                .factories
                .get(name)
                .ok_or_else(|| format!("unknown filter `{name}`"))?;
            filters.push(factory(deps).map_err(|e| format!("filter `{name}`: {e}"))?);
        }
        Ok(Chain::new(filters))
    }
}

/// The header in which a pass-through client sends its relay key, its `authorization` or
/// `x-api-key` then carrying its own Anthropic credentials.
pub const RELAY_KEY_HEADER: &str = "x-relay-key";

/// The names [`presented_key`] looks up, parsed once rather than on every lookup.
const RELAY_KEY: HeaderName = HeaderName::from_static(RELAY_KEY_HEADER);
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");
const API_KEY: HeaderName = HeaderName::from_static("api-key");

fn header<'h>(h: &'h http::HeaderMap, name: &HeaderName) -> Option<&'h str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Whether the request is a pass-through request: its relay key came in [`RELAY_KEY_HEADER`],
/// so its credential headers are the client's own, for the upstream.
pub fn is_passthrough(headers: &http::HeaderMap) -> bool {
    headers.contains_key(RELAY_KEY)
}

/// Where a caller's key is found, in order; the first present wins. A pass-through request's
/// key is in [`RELAY_KEY_HEADER`] only.
pub fn presented_key<'a>(headers: &'a http::HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    if is_passthrough(headers) {
        return header(headers, &RELAY_KEY);
    }
    if let Some(k) = header(headers, &X_API_KEY) {
        return Some(k);
    }
    if let Some(a) = header(headers, &AUTHORIZATION) {
        let k = a
            .strip_prefix("Bearer ")
            .or_else(|| a.strip_prefix("bearer "))
            .unwrap_or(a)
            .trim();
        if !k.is_empty() {
            return Some(k);
        }
    }
    if let Some(k) = header(headers, &X_GOOG_API_KEY) {
        return Some(k);
    }
    if let Some(k) = header(headers, &API_KEY) {
        return Some(k);
    }
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("key="))
        .filter(|k| !k.is_empty())
}

/// Authenticates the caller by its key and records the key for later filters.
pub struct KeyAuth {
    keys: Arc<dyn KeyDirectory>,
}

impl KeyAuth {
    pub fn new(keys: Arc<dyn KeyDirectory>) -> Self {
        KeyAuth { keys }
    }
}

#[async_trait]
impl Filter for KeyAuth {
    fn name(&self) -> &str {
        "key_auth"
    }

    async fn on_headers(&self, cx: &mut FilterContext<'_>) -> Result<(), Rejection> {
        let Some(presented) = presented_key(cx.headers, cx.query) else {
            return Err(Rejection::new(
                401,
                RejectKind::Authentication,
                "missing_key",
                "Missing API key: send it in x-api-key or Authorization: Bearer",
            ));
        };
        let Some(key) = self.keys.find(presented) else {
            return Err(Rejection::new(
                401,
                RejectKind::Authentication,
                "invalid_key",
                "Invalid API key",
            ));
        };
        if !key.enabled {
            return Err(Rejection::new(
                401,
                RejectKind::Authentication,
                "disabled_key",
                "API key is disabled",
            ));
        }
        if is_passthrough(cx.headers) {
            if header(cx.headers, &AUTHORIZATION).is_none() && header(cx.headers, &X_API_KEY).is_none() {
                return Err(Rejection::new(
                    401,
                    RejectKind::Authentication,
                    "missing_own_credentials",
                    "x-relay-key names your relay key; send your own Anthropic credentials too \
                     (Authorization: Bearer or x-api-key), they are forwarded to Anthropic",
                ));
            }
        } else if key.policy.passthrough_only {
            return Err(Rejection::new(
                403,
                RejectKind::Permission,
                "passthrough_only",
                "This API key is for pass-through use only: send it in the x-relay-key header, \
                 with your own Anthropic credentials in Authorization or x-api-key",
            ));
        }
        cx.key = Some(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
