//! Per-key restrictions and limits: the configured shape ([`KeyPolicySpec`], the same in
//! `relay.yaml`, the store and the admin API) and its compiled, ready-to-check form
//! ([`KeyPolicy`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Service;

/// A client restriction: a predefined client id or a User-Agent pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClientSpec {
    /// `claude_code`, `gemini_cli` or `codex`.
    Predefined(String),
    /// `{ user_agent: "regex" }`
    Pattern { user_agent: String },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub window_minutes: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// A sliding window (the last `window_minutes` before each request, like a subscription's
    /// 5-hour window) instead of a fixed one aligned to the epoch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rolling: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostLimitsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly_usd: Option<f64>,
    /// `mon 00:00` (UTC); the weekly window starts then. Default `mon 00:00`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly_reset: Option<String>,
    /// Spend cap per calendar month (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_usd: Option<f64>,
    /// End a stream whose running cost would take the key past a cap (else a request admitted
    /// within its reservation always runs to its end).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hard_cap: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencySpec {
    pub limit: u32,
    /// Requests that may wait for a slot (0: refuse at once).
    #[serde(default)]
    pub queue: u32,
    #[serde(default = "default_queue_timeout_ms")]
    pub queue_timeout_ms: u64,
}

fn default_queue_timeout_ms() -> u64 {
    10_000
}

/// Whether a key may ask for Anthropic's fast mode (`speed: "fast"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FastMode {
    #[default]
    Allow,
    Deny,
}

/// The per-key restrictions as written in `relay.yaml` and stored. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPolicySpec {
    /// `claude`, `gemini`, `openai`; absent = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// `30d`, `12h`: the key expires this long after its first use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activate_for: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<ClientSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_deny: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_blacklist: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_allowlist: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_limits: Option<CostLimitsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencySpec>,
    /// The key may only be used in pass-through mode: sent in `x-relay-key`, with the client's
    /// own Anthropic credentials forwarded to a `claude-passthrough` account.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passthrough_only: bool,
    /// `allow` (the default) or `deny`: a denied key's requests for fast mode get a 403.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_mode: Option<FastMode>,
    /// Largest prompt a request may send, in (estimated) input tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u64>,
}

impl KeyPolicySpec {
    pub fn is_empty(&self) -> bool {
        *self == KeyPolicySpec::default()
    }
}

/// Rate window limits, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub window: Duration,
    pub requests: Option<u64>,
    pub tokens: Option<u64>,
    /// nano-USD
    pub cost_nanos: Option<u64>,
    /// Sliding rather than fixed.
    pub rolling: bool,
}

/// Spend caps, compiled (nano-USD).
#[derive(Debug, Clone, PartialEq)]
pub struct CostLimits {
    pub daily_nanos: Option<u64>,
    pub total_nanos: Option<u64>,
    pub weekly_nanos: Option<u64>,
    pub monthly_nanos: Option<u64>,
    /// Weekday (0 = Monday) and minute of day (UTC) when the week starts.
    pub weekly_reset: (u32, u32),
    pub hard_cap: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Concurrency {
    pub limit: u32,
    pub queue: u32,
    pub queue_timeout: Duration,
}

/// A compiled client restriction.
#[derive(Debug, Clone)]
pub struct ClientRule {
    /// The predefined id or the pattern, for messages.
    pub name: String,
    pub user_agent: regex::Regex,
    /// Services this client may reach (a Claude-Code-only key cannot use the OpenAI endpoints).
    pub services: Vec<Service>,
}

/// The per-key restrictions, compiled once when the snapshot is built.
#[derive(Debug, Clone, Default)]
pub struct KeyPolicy {
    pub permissions: Option<Vec<Service>>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub activate_for: Option<Duration>,
    pub clients: Vec<ClientRule>,
    pub ip_allow: Vec<ipnet::IpNet>,
    pub ip_deny: Vec<ipnet::IpNet>,
    pub model_blacklist: Vec<String>,
    pub model_allowlist: Option<Vec<String>>,
    pub rate_limit: Option<RateLimit>,
    pub cost_limits: Option<CostLimits>,
    pub concurrency: Option<Concurrency>,
    /// Only pass-through requests (the key in `x-relay-key`) may use the key.
    pub passthrough_only: bool,
    /// Requests asking for fast mode are refused.
    pub deny_fast_mode: bool,
    pub max_input_tokens: Option<u64>,
}

impl KeyPolicy {
    /// Whether a request of this key must reserve its estimated cost at admission: it has a
    /// spend cap or a cost window.
    pub fn reserves_cost(&self) -> bool {
        self.cost_limits.as_ref().is_some_and(CostLimits::any)
            || self.rate_limit.as_ref().is_some_and(|r| r.cost_nanos.is_some())
    }
}

impl CostLimits {
    /// At least one cap is set.
    pub fn any(&self) -> bool {
        self.daily_nanos.is_some()
            || self.weekly_nanos.is_some()
            || self.monthly_nanos.is_some()
            || self.total_nanos.is_some()
    }
}

fn usd(v: f64, what: &str) -> Result<u64, String> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("{what} must be a non-negative number of USD"));
    }
    Ok((v * 1e9).round() as u64)
}

/// Parses `30d`, `12h`, `90m`, `45s`.
pub fn parse_period(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a period like 30d or 12h"))?;
    let secs = match unit {
        "d" => n.saturating_mul(86_400),
        "h" => n.saturating_mul(3_600),
        "m" => n.saturating_mul(60),
        "s" => n,
        _ => return Err(format!("`{s}` is not a period like 30d or 12h")),
    };
    if secs == 0 || secs > 10 * 366 * 86_400 {
        return Err(format!("`{s}` must be between 1s and 10 years"));
    }
    Ok(Duration::from_secs(secs))
}

/// Parses `mon 00:00` into (weekday 0 = Monday, minute of day).
pub fn parse_weekly_reset(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("`{s}` is not a weekly reset like \"mon 00:00\"");
    let (day, time) = s.trim().split_once(' ').ok_or_else(bad)?;
    let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let d = days
        .iter()
        // `get`: the third byte may fall inside a multi-byte character (no day then).
        .position(|x| day.get(..day.len().min(3)).is_some_and(|d| x.eq_ignore_ascii_case(d)))
        .ok_or_else(bad)?;
    let (h, m) = time.trim().split_once(':').ok_or_else(bad)?;
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok((d as u32, h * 60 + m))
}

/// The predefined clients: their User-Agent pattern and the services they use.
pub fn predefined_client(id: &str) -> Option<(&'static str, Vec<Service>)> {
    match id {
        "claude_code" => Some((r"^claude-cli/\d+\.\d+\.\d+", vec![Service::Claude])),
        "gemini_cli" => Some((r"^GeminiCLI(-[a-z]+)?/\d+\.\d+\.\d+", vec![Service::Gemini])),
        "codex" => Some((
            r"^(codex_cli_rs|codex_exec|codex_vscode)/\d+\.\d+\.\d+",
            vec![Service::OpenAI],
        )),
        _ => None,
    }
}

impl KeyPolicy {
    /// Whether the key's model rules (blacklist, then allowlist) let it use `model`, compared
    /// as [`crate::builtin_policy::policy_model_name`] writes it.
    pub fn allows_model(&self, model: &str) -> bool {
        use crate::builtin_policy::{model_entry_matches, policy_model_name};
        if self.model_blacklist.is_empty() && self.model_allowlist.is_none() {
            return true;
        }
        let m = policy_model_name(model);
        !self.model_blacklist.iter().any(|e| model_entry_matches(e, &m))
            && self
                .model_allowlist
                .as_ref()
                .is_none_or(|allow| allow.iter().any(|e| model_entry_matches(e, &m)))
    }

    /// Compiles a spec; the error names the field and the reason.
    pub fn compile(spec: &KeyPolicySpec) -> Result<KeyPolicy, String> {
        let permissions = match &spec.permissions {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|p| match p.as_str() {
                        "claude" => Ok(Service::Claude),
                        "gemini" => Ok(Service::Gemini),
                        "openai" => Ok(Service::OpenAI),
                        other => Err(format!(
                            "permissions: unknown service `{other}` (claude, gemini, openai)"
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let expires_at = match &spec.expires_at {
            None => None,
            Some(t) => Some(
                chrono::DateTime::parse_from_rfc3339(t)
                    .map_err(|_| format!("expires_at: `{t}` is not an RFC 3339 time like 2027-01-01T00:00:00Z"))?
                    .timestamp(),
            ),
        };
        let activate_for = match &spec.activate_for {
            None => None,
            Some(p) => Some(parse_period(p).map_err(|e| format!("activate_for: {e}"))?),
        };
        if expires_at.is_some() && activate_for.is_some() {
            return Err("expires_at and activate_for: give one of them".into());
        }
        let mut clients = Vec::new();
        for c in &spec.clients {
            clients.push(match c {
                ClientSpec::Predefined(id) => {
                    let (pattern, services) = predefined_client(id).ok_or_else(|| {
                        format!("clients: unknown client `{id}` (claude_code, gemini_cli, codex, or {{ user_agent: regex }})")
                    })?;
                    let user_agent = regex::Regex::new(pattern).map_err(|e| format!("clients: {e}"))?;
                    ClientRule { name: id.clone(), user_agent, services }
                }
                ClientSpec::Pattern { user_agent } => ClientRule {
                    name: user_agent.clone(),
                    user_agent: regex::RegexBuilder::new(user_agent)
                        .size_limit(1 << 20)
                        .build()
                        .map_err(|e| format!("clients: bad user_agent pattern: {e}"))?,
                    services: vec![Service::Claude, Service::Gemini, Service::OpenAI],
                },
            });
        }
        let net = |list: &[String], what: &str| -> Result<Vec<ipnet::IpNet>, String> {
            list.iter()
                .map(|s| {
                    s.parse::<ipnet::IpNet>()
                        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| format!("{what}: `{s}` is not an IP address or CIDR range"))
                })
                .collect()
        };
        let rate_limit = match &spec.rate_limit {
            None => None,
            Some(r) => {
                if r.window_minutes == 0 || r.window_minutes > 10_080 {
                    return Err("rate_limit.window_minutes: must be between 1 and 10080".into());
                }
                if r.requests.is_none() && r.tokens.is_none() && r.cost_usd.is_none() {
                    return Err("rate_limit: set at least one of requests, tokens, cost_usd".into());
                }
                Some(RateLimit {
                    window: Duration::from_secs(u64::from(r.window_minutes) * 60),
                    requests: r.requests,
                    tokens: r.tokens,
                    cost_nanos: r.cost_usd.map(|v| usd(v, "rate_limit.cost_usd")).transpose()?,
                    rolling: r.rolling,
                })
            }
        };
        let cost_limits = match &spec.cost_limits {
            None => None,
            Some(c) => {
                let caps = CostLimits {
                    daily_nanos: c.daily_usd.map(|v| usd(v, "cost_limits.daily_usd")).transpose()?,
                    total_nanos: c.total_usd.map(|v| usd(v, "cost_limits.total_usd")).transpose()?,
                    weekly_nanos: c.weekly_usd.map(|v| usd(v, "cost_limits.weekly_usd")).transpose()?,
                    monthly_nanos: c.monthly_usd.map(|v| usd(v, "cost_limits.monthly_usd")).transpose()?,
                    weekly_reset: match &c.weekly_reset {
                        Some(r) => parse_weekly_reset(r).map_err(|e| format!("cost_limits.weekly_reset: {e}"))?,
                        None => (0, 0),
                    },
                    hard_cap: c.hard_cap,
                };
                if caps.hard_cap && !caps.any() {
                    return Err(
                        "cost_limits.hard_cap: needs a cap to hold (daily_usd, weekly_usd, monthly_usd or total_usd)"
                            .into(),
                    );
                }
                Some(caps)
            }
        };
        if spec.max_input_tokens == Some(0) {
            return Err("max_input_tokens: must be at least 1".into());
        }
        let concurrency = match &spec.concurrency {
            None => None,
            Some(c) => {
                if c.limit == 0 {
                    return Err("concurrency.limit: must be at least 1".into());
                }
                Some(Concurrency {
                    limit: c.limit,
                    queue: c.queue,
                    queue_timeout: Duration::from_millis(c.queue_timeout_ms.min(600_000)),
                })
            }
        };
        Ok(KeyPolicy {
            permissions,
            expires_at,
            activate_for,
            clients,
            ip_allow: net(&spec.ip_allow, "ip_allow")?,
            ip_deny: net(&spec.ip_deny, "ip_deny")?,
            model_blacklist: spec.model_blacklist.clone(),
            model_allowlist: spec.model_allowlist.clone(),
            rate_limit,
            cost_limits,
            passthrough_only: spec.passthrough_only,
            concurrency,
            deny_fast_mode: spec.fast_mode == Some(FastMode::Deny),
            max_input_tokens: spec.max_input_tokens,
        })
    }
}
