//! The per-key restriction filters: `permissions`, `expiry`, `clients`, `ip` and `models`.
//!
//! Each reads the compiled [`KeyPolicy`](crate::policy::KeyPolicy) of the key that `key_auth`
//! found and does nothing when the key has no rule of its kind, so a chain with every filter costs
//! an unrestricted key a few field reads. Refusals say what the caller may know about its own key
//! (the services or clients it allows), never the rules themselves (no CIDR ranges, no lists of
//! other models) and never anything about other keys.
//!
//! | filter        | phase        | refusal            | reasons                       |
//! |---------------|--------------|--------------------|-------------------------------|
//! | `permissions` | `on_headers` | 403 permission     | `permission`                  |
//! | `expiry`      | `on_headers` | 401 authentication | `expired_key`                 |
//! | `clients`     | `on_headers` | 403 permission     | `client_not_allowed`          |
//! | `ip`          | `on_headers` | 403 permission     | `ip_denied`, `ip_not_allowed` |
//! | `models`      | `on_request` | 403 permission     | `model_not_allowed`, `fast_mode_denied` |
//!
//! `models` also holds the key's `fast_mode: deny`: a Messages request whose body asks for fast
//! mode (`speed: "fast"`) is refused. Only the body decides, never the `fast-mode-…` beta header,
//! which Claude Code keeps sending after its first fast turn. The other endpoints cannot carry
//! fast mode (the Chat Completions conversion drops `speed`), so they are not checked.
//!
//! `expiry` fails closed: when the limit backend cannot say when an activation-mode key was
//! first used, the request gets a 503 (`limits_unavailable`, `retry-after: 1`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::{Filter, FilterContext, LimitBackend, Registry, RejectKind, Rejection, Service};

/// Registers the five policy filters under their names.
pub fn register(r: &mut Registry) {
    r.register("permissions", |_| Ok(Arc::new(Permissions) as Arc<dyn Filter>));
    r.register("expiry", |deps| {
        Ok(Arc::new(Expiry::new(deps.limits.clone())) as Arc<dyn Filter>)
    });
    r.register("clients", |_| Ok(Arc::new(Clients) as Arc<dyn Filter>));
    r.register("ip", |_| Ok(Arc::new(IpRules) as Arc<dyn Filter>));
    r.register("models", |_| Ok(Arc::new(Models) as Arc<dyn Filter>));
}

fn service_name(s: Service) -> &'static str {
    match s {
        Service::Claude => "claude",
        Service::Gemini => "gemini",
        Service::OpenAI => "openai",
    }
}

/// Services by key: the route's service must be one the key is permitted (absent = all). A key
/// may always read its own usage (`key_usage`), whatever services it may use.
pub struct Permissions;

#[async_trait]
impl Filter for Permissions {
    fn name(&self) -> &str {
        "permissions"
    }

    async fn on_headers(&self, cx: &mut FilterContext<'_>) -> Result<(), Rejection> {
        let Some(key) = &cx.key else { return Ok(()) };
        if cx.route.endpoint == "key_usage" {
            return Ok(());
        }
        match &key.policy.permissions {
            Some(allowed) if !allowed.contains(&cx.route.service) => Err(Rejection::new(
                403,
                RejectKind::Permission,
                "permission",
                format!(
                    "This API key is not permitted to use the {} API",
                    service_name(cx.route.service)
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Unix seconds now.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// A fixed expiry date, or expiry a period after first use. The first use is recorded in the
/// limit backend (the store shared by instances, so every instance agrees on it) and remembered
/// here, so a key costs that round trip once per instance.
pub struct Expiry {
    limits: Arc<dyn LimitBackend>,
    /// Activation time (Unix s) by key id.
    activations: Mutex<HashMap<Arc<str>, i64>>,
    clock: Clock,
}

impl Expiry {
    pub fn new(limits: Arc<dyn LimitBackend>) -> Self {
        Self::with_clock(limits, Arc::new(|| chrono::Utc::now().timestamp()))
    }

    /// With a custom clock (tests, benchmarks).
    pub fn with_clock(limits: Arc<dyn LimitBackend>, clock: Clock) -> Self {
        Expiry {
            limits,
            activations: Mutex::new(HashMap::new()),
            clock,
        }
    }

    fn cached(&self, key_id: &str) -> Option<i64> {
        self.activations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key_id)
            .copied()
    }
}

fn expired() -> Rejection {
    Rejection::new(401, RejectKind::Authentication, "expired_key", "API key has expired")
}

#[async_trait]
impl Filter for Expiry {
    fn name(&self) -> &str {
        "expiry"
    }

    async fn on_headers(&self, cx: &mut FilterContext<'_>) -> Result<(), Rejection> {
        let Some(key) = &cx.key else { return Ok(()) };
        let policy = &key.policy;
        if policy.expires_at.is_none() && policy.activate_for.is_none() {
            return Ok(());
        }
        let now = (self.clock)();
        if let Some(at) = policy.expires_at
            && now >= at
        {
            return Err(expired());
        }
        if let Some(period) = policy.activate_for {
            let activated = match self.cached(&key.id) {
                Some(t) => t,
                None => {
                    // Fail closed: without the shared first-use time the key's age is unknown.
                    let t = self.limits.activate(&key.id, now).await.map_err(|_| {
                        let mut r = Rejection::new(
                            503,
                            RejectKind::RateLimited,
                            "limits_unavailable",
                            "The relay cannot check this API key's validity right now; retry shortly",
                        );
                        r.retry_after = Some(1);
                        r
                    })?;
                    self.activations
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key.id.clone(), t);
                    t
                }
            };
            let period = i64::try_from(period.as_secs()).unwrap_or(i64::MAX);
            if activated.saturating_add(period) <= now {
                return Err(expired());
            }
        }
        Ok(())
    }
}

/// The User-Agent allowlist: a restricted key is served only to its clients, and only on the
/// endpoints of their services (a Claude-Code-only key cannot use the OpenAI-compatible ones).
pub struct Clients;

#[async_trait]
impl Filter for Clients {
    fn name(&self) -> &str {
        "clients"
    }

    async fn on_headers(&self, cx: &mut FilterContext<'_>) -> Result<(), Rejection> {
        let Some(key) = &cx.key else { return Ok(()) };
        let rules = &key.policy.clients;
        if rules.is_empty() {
            return Ok(());
        }
        let ua = cx
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let service = cx.route.service;
        if rules
            .iter()
            .any(|r| r.services.contains(&service) && r.user_agent.is_match(ua))
        {
            return Ok(());
        }
        // The key's own rules, by name: predefined ids with their services; custom patterns are
        // not echoed.
        let mut allowed: Vec<String> = Vec::new();
        let mut custom = false;
        for r in rules {
            if crate::policy::predefined_client(&r.name).is_some() {
                let services: Vec<&str> = r.services.iter().map(|s| service_name(*s)).collect();
                allowed.push(format!("{} ({} API)", r.name, services.join(", ")));
            } else {
                custom = true;
            }
        }
        if custom {
            allowed.push("clients matching a custom User-Agent rule".into());
        }
        Err(Rejection::new(
            403,
            RejectKind::Permission,
            "client_not_allowed",
            format!(
                "Client not allowed: this API key accepts requests only from {}",
                allowed.join(", ")
            ),
        ))
    }
}

/// The IP allow- and denylists, against the client address the relay resolved (through trusted
/// proxies). An IPv4-mapped IPv6 peer (`::ffff:a.b.c.d`) is matched as the IPv4 address.
pub struct IpRules;

/// Whether an address is in one of `nets`, an IPv4 address matching IPv4 rules and rules written
/// in IPv4-mapped IPv6 form (`::ffff:10.0.0.0/104`) alike.
fn net_matches(nets: &[ipnet::IpNet], ip: IpAddr) -> bool {
    let v4 = ip.to_canonical();
    let mapped = match v4 {
        IpAddr::V4(a) => IpAddr::V6(a.to_ipv6_mapped()),
        v6 => v6,
    };
    nets.iter().any(|n| n.contains(&v4) || n.contains(&mapped))
}

#[async_trait]
impl Filter for IpRules {
    fn name(&self) -> &str {
        "ip"
    }

    async fn on_headers(&self, cx: &mut FilterContext<'_>) -> Result<(), Rejection> {
        let Some(key) = &cx.key else { return Ok(()) };
        let policy = &key.policy;
        if policy.ip_allow.is_empty() && policy.ip_deny.is_empty() {
            return Ok(());
        }
        let not_allowed = || {
            Rejection::new(
                403,
                RejectKind::Permission,
                "ip_not_allowed",
                "This API key may not be used from this IP address",
            )
        };
        // A key with IP rules is refused when the relay cannot tell the caller's address.
        let Some(ip) = cx.client_ip else {
            return Err(not_allowed());
        };
        if net_matches(&policy.ip_deny, ip) {
            return Err(Rejection::new(
                403,
                RejectKind::Permission,
                "ip_denied",
                "This API key may not be used from this IP address",
            ));
        }
        if !policy.ip_allow.is_empty() && !net_matches(&policy.ip_allow, ip) {
            return Err(not_allowed());
        }
        Ok(())
    }
}

/// The model black- and allowlists, compared after the decorations that do not change which
/// model runs are removed (see [`policy_model_name`]). A list entry without a date covers every
/// name of that model: its dated snapshots (`claude-opus-4-1` covers `claude-opus-4-1-20250805`),
/// its `-latest` alias, and for a Claude model whose minor version is 0 the `-0` alias
/// (`claude-opus-4` covers `claude-opus-4-0` and `claude-opus-4-20250514`, not `claude-opus-4-1`
/// or `claude-opus-4-5`, which are other models). A dated entry covers that snapshot only. An
/// entry ending in `*` covers every model starting with what precedes it.
pub struct Models;

/// A model name as the model lists compare it: without surrounding space and letter case, a
/// `[1m]`-style suffix, a provider path (`anthropic/`, `bedrock/`, `bedrock/us-east-1/`,
/// `vertex_ai/`, a Bedrock ARN), a Bedrock region and vendor prefix (`us.anthropic.`,
/// `anthropic.`), a Bedrock version suffix (`-v1:0`) and a Vertex version (`@20250805` becomes
/// `-20250805`, `@default` goes).
pub fn policy_model_name(model: &str) -> String {
    let mut out = strip_decoration(model);
    if let Some(at) = out.find('@') {
        let suffix = out[at + 1..].to_owned();
        out.truncate(at);
        if is_date(&suffix) {
            out.push('-');
            out.push_str(&suffix);
        }
    }
    let kept = strip_bedrock_version(&out).len();
    out.truncate(kept);
    out
}

/// Lower case, without a `[…]` suffix, a provider path, or a Bedrock region and vendor prefix.
fn strip_decoration(model: &str) -> String {
    let mut s = model.trim();
    if s.ends_with(']')
        && let Some(open) = s.rfind('[')
    {
        s = &s[..open];
    }
    if let Some(slash) = s.rfind('/') {
        s = &s[slash + 1..];
    }
    let mut out = s.trim().to_ascii_lowercase();
    // `anthropic.` at the start, or after a region label (`us.`, `eu.`, `apac.`, `global.`).
    if let Some(pos) = out.find("anthropic.")
        && (pos == 0
            || (out.as_bytes().get(pos - 1) == Some(&b'.')
                && out[..pos - 1].bytes().all(|b| b.is_ascii_lowercase() || b == b'-')))
    {
        out.drain(..pos + "anthropic.".len());
    }
    out
}

fn is_date(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Removes a Bedrock version suffix (`-v1:0`, `-v1`, `-v2:0:200k`), but not from names whose
/// version is the model's name (`claude-v2:1`, `claude-instant-v1`).
fn strip_bedrock_version(s: &str) -> &str {
    let Some(pos) = s.rfind("-v") else { return s };
    let mut parts = s[pos + 2..].split(':');
    let version_ok = parts
        .next()
        .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
    let tail_ok = parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    let base = &s[..pos];
    if version_ok && tail_ok && base.bytes().any(|b| b.is_ascii_digit()) {
        base
    } else {
        s
    }
}

/// A name in [`policy_model_name`] form split into the model it names and its snapshot date:
/// `claude-opus-4-1-20250805` is (`claude-opus-4-1`, 20250805); `-latest` names no snapshot; the
/// alias of a Claude model with minor version 0 names the model itself (`claude-opus-4-0` and
/// `claude-opus-4-0-20250514` are `claude-opus-4`). Only a `-0` after a number is such a minor
/// version, so `claude-opus-4-1` stays itself.
fn model_identity(name: &str) -> (&str, Option<&str>) {
    let (mut base, date) = match name.rsplit_once('-') {
        Some((b, d)) if is_date(d) => (b, Some(d)),
        Some((b, "latest")) => (b, None),
        _ => (name, None),
    };
    if base.starts_with("claude-")
        && let Some(b) = base.strip_suffix("-0")
        && b.rsplit('-')
            .next()
            .is_some_and(|seg| !seg.is_empty() && seg.bytes().all(|c| c.is_ascii_digit()))
    {
        base = b;
    }
    (base, date)
}

/// Whether a list entry covers the requested model (already in [`policy_model_name`] form): the
/// same model and, when the entry is dated, the same snapshot (see [`Models`]).
pub fn model_entry_matches(entry: &str, model: &str) -> bool {
    if let Some(prefix) = entry.trim().strip_suffix('*') {
        return model.starts_with(&strip_decoration(prefix));
    }
    let entry = policy_model_name(entry);
    if entry.is_empty() {
        return false;
    }
    if model == entry {
        return true;
    }
    let (entry_model, entry_date) = model_identity(&entry);
    let (model, date) = model_identity(model);
    entry_model == model && (entry_date.is_none() || entry_date == date)
}

#[async_trait]
impl Filter for Models {
    fn name(&self) -> &str {
        "models"
    }

    async fn on_request(&self, cx: &mut FilterContext<'_>) -> Result<(), Rejection> {
        let Some(key) = &cx.key else { return Ok(()) };
        let policy = &key.policy;
        if policy.deny_fast_mode
            && cx.route.service == Service::Claude
            && cx.route.endpoint == "messages"
            && cx.facts.is_some_and(|f| f.fast)
        {
            return Err(Rejection::new(
                403,
                RejectKind::Permission,
                "fast_mode_denied",
                "This API key may not use fast mode; send the request without `speed: \"fast\"`",
            ));
        }
        if policy.model_blacklist.is_empty() && policy.model_allowlist.is_none() {
            return Ok(());
        }
        let requested = cx.facts.and_then(|f| f.model.as_deref());
        let refuse = |shown: &str| {
            Rejection::new(
                403,
                RejectKind::Permission,
                "model_not_allowed",
                format!("This API key may not use the model `{shown}`"),
            )
        };
        let Some(requested) = requested else {
            // Nothing to compare; a request without a model cannot satisfy an allowlist.
            return match policy.model_allowlist {
                Some(_) => Err(Rejection::new(
                    403,
                    RejectKind::Permission,
                    "model_not_allowed",
                    "This API key may use only certain models; name one in the request",
                )),
                None => Ok(()),
            };
        };
        if !policy.allows_model(requested) {
            // The requested name is the caller's own; shown trimmed and bounded.
            let shown: String = requested.trim().chars().take(200).collect();
            return Err(refuse(&shown));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "builtin_policy_tests.rs"]
mod tests;
