//! Persistent state behind one domain-level trait.
//!
//! The [`Store`] trait speaks in the relay's own terms (API keys, accounts, usage buckets, admin
//! sessions), never in raw key/value operations, so each backend is free to lay its data out the way
//! that suits it. Two backends implement it:
//! - [`embedded::EmbeddedStore`]: the default, a single crash-safe file under the data directory
//!   (redb), nothing to install;
//! - [`redis::RedisStore`]: what several relay instances share.
//!
//! Both pass the same contract suite in [`contract`]. Only this module knows key names in Redis or
//! table names in the embedded file.

pub mod client_sessions;
pub mod contract;
pub mod coord;
pub mod coord_contract;
pub mod embedded;
pub mod log;
pub mod log_contract;
pub mod redis;
pub mod redis_conn;
pub mod redis_coord;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::secrets::Sealed;

pub use self::log::{LogKind, LogRecord};
pub use client_sessions::{AgentUsage, SessionBounds, SessionCursor, SessionPage, SessionUsage};

/// Errors from a store backend. The message never contains secret material.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store backend unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    /// The caller passed something the store cannot use (a log cursor it did not issue).
    #[error("invalid: {0}")]
    Invalid(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A client API key as persisted. The plaintext key is never stored: only its keyed hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Stable identifier (a UUID for keys created through the admin API).
    pub id: String,
    pub name: String,
    /// Hex HMAC-SHA256 of the plaintext key under the server secret.
    pub key_hash: String,
    /// The client-key hash key `key_hash` was made under, sealed, when it is not this relay's
    /// own: a key restored from the backup of a relay with another `secret_key` (whose plaintext
    /// is unknown here, so it cannot be hashed again). `None`: this relay's own hash key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<Sealed>,
    /// A short, non-secret hint for display, e.g. `cr_3f9a…b71c`.
    #[serde(default)]
    pub hint: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Dedicated binding: an account name or `group:<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// Labels an administrator files the key under (a team, a project), to find and filter it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Restrictions and limits.
    #[serde(default, skip_serializing_if = "filters::policy::KeyPolicySpec::is_empty")]
    pub policy: filters::policy::KeyPolicySpec,
    /// Unix seconds.
    pub created_at: i64,
    /// Set while `key_hash` is another relay's hash of the key rather than ours (a key imported
    /// from Claude Relay Service): the relay then finds the key by that hash, and on its first use
    /// re-hashes it our way and drops this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_hash: Option<LegacyKeyHash>,
    /// Fields added by later features are kept here verbatim so older and newer relays can share one
    /// store without losing each other's data.
    #[serde(default, flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// How a legacy `key_hash` was made, and what it needs to be checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegacyKeyHash {
    /// `crs`: SHA-256 of the key followed by `salt`, hex (Claude Relay Service's key hash, salted
    /// with its `ENCRYPTION_KEY`).
    pub scheme: String,
    /// The salt, sealed: the relay needs it to recognise the key, and only until the key's first
    /// use.
    pub salt: Sealed,
}

/// What kind of upstream an account is, and so how it is addressed and authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccountKind {
    /// An Anthropic API key (Console) for the Anthropic API or any Anthropic-compatible base URL.
    ClaudeConsole,
    /// A Claude subscription (Pro/Max) connected through Anthropic's OAuth flow.
    ClaudeOauth,
    /// An Anthropic-compatible upstream (Claude Code Router and the like) for `ccr,` models.
    Ccr,
    /// AWS Bedrock: SigV4 credentials or a Bedrock API key, in one region.
    Bedrock,
    /// The OpenAI API or any OpenAI-compatible server: Chat Completions and Responses, bearer key.
    #[serde(rename = "openai")]
    OpenAi,
    /// Azure OpenAI: deployments per model, `api-key` header, `api-version` query.
    #[serde(rename = "azure-openai")]
    AzureOpenAi,
    /// A ChatGPT subscription for Codex, connected through OpenAI's sign-in: Responses only.
    #[serde(rename = "openai-oauth")]
    OpenAiOauth,
    /// The Gemini API (`generativelanguage.googleapis.com` or compatible) with an API key.
    GeminiApi,
    /// A Google account for Gemini Code Assist (`cloudcode-pa.googleapis.com`), connected through
    /// Google's sign-in.
    GeminiOauth,
    /// No credential of its own: forwards each client's own Anthropic credentials (its OAuth
    /// bearer or API key) unchanged to an Anthropic-compatible base URL. Serves only requests
    /// whose relay key came in `x-relay-key`, and only those.
    ClaudePassthrough,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::ClaudeConsole => "claude-console",
            AccountKind::ClaudeOauth => "claude-oauth",
            AccountKind::Ccr => "ccr",
            AccountKind::Bedrock => "bedrock",
            AccountKind::OpenAi => "openai",
            AccountKind::AzureOpenAi => "azure-openai",
            AccountKind::OpenAiOauth => "openai-oauth",
            AccountKind::GeminiApi => "gemini-api",
            AccountKind::GeminiOauth => "gemini-oauth",
            AccountKind::ClaudePassthrough => "claude-passthrough",
        }
    }

    /// Every kind, in the order the admin API lists them.
    pub const ALL: [AccountKind; 10] = [
        AccountKind::ClaudeConsole,
        AccountKind::ClaudeOauth,
        AccountKind::Ccr,
        AccountKind::Bedrock,
        AccountKind::OpenAi,
        AccountKind::AzureOpenAi,
        AccountKind::OpenAiOauth,
        AccountKind::GeminiApi,
        AccountKind::GeminiOauth,
        AccountKind::ClaudePassthrough,
    ];

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of account kinds: the kinds a request can be sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindSet(u16);

impl KindSet {
    pub const ALL: KindSet = KindSet(u16::MAX);
    pub const NONE: KindSet = KindSet(0);

    pub fn of(kinds: &[AccountKind]) -> KindSet {
        KindSet(kinds.iter().fold(0, |acc, k| acc | k.bit()))
    }

    pub fn contains(self, kind: AccountKind) -> bool {
        self.0 & kind.bit() != 0
    }

    pub fn with(self, kind: AccountKind) -> KindSet {
        KindSet(self.0 | kind.bit())
    }

    pub fn intersect(self, other: KindSet) -> KindSet {
        KindSet(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// The non-secret state of an OAuth account's tokens (`claude-oauth`, `openai-oauth`). The tokens
/// themselves are in the account's sealed `secret`, written together with this in one record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OAuthMeta {
    /// When the access token expires (Unix ms); `None` when unknown.
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// A long-lived token from the setup-token flow (no refresh token).
    #[serde(default)]
    pub setup_token: bool,
    /// Subscription tier from the profile endpoint: `free`, `pro` or `max`.
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    /// When the current token pair was obtained (Unix ms): a record with a later one holds newer
    /// tokens.
    #[serde(default)]
    pub issued_at: i64,
    /// When a refresh last produced the tokens (Unix ms).
    #[serde(default)]
    pub refreshed_at: Option<i64>,
    /// When the profile was last read (Unix ms).
    #[serde(default)]
    pub profile_checked_at: Option<i64>,
    /// The provider's account the tokens act for (`openai-oauth`: the ChatGPT account id, sent as
    /// `chatgpt-account-id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// The subscription plan the provider names (`openai-oauth`: ChatGPT's plan type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// `gemini-oauth`: the Code Assist project found for the account (`loadCodeAssist`, or
    /// `onboardUser`) when its settings name none; kept so it is looked up once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
}

/// An upstream account as persisted: its settings, and its credential and outbound proxy sealed
/// (AES-256-GCM).
///
/// The store does not read the settings: they are the JSON of `accounts::AccountSettings` (name,
/// kind, base_url, priority, ...), kept as written, with any field another relay version added,
/// and the relay reads them when it loads the record. A record is written with its fields in the
/// order they have always had, so records written by this version and by earlier ones are alike.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AccountRecord {
    pub id: String,
    /// The account's settings (every field not named below).
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// The sealed credential (for `claude-console` and `ccr`, the API key; for `claude-oauth`,
    /// the token pair as JSON; for `bedrock`, its keys or API key as JSON).
    pub secret: Sealed,
    /// The sealed outbound proxy URL (it may carry credentials).
    #[serde(default)]
    pub proxy: Option<Sealed>,
    /// Token state of a `claude-oauth` account.
    #[serde(default)]
    pub oauth: Option<OAuthMeta>,
    /// Unix seconds.
    pub created_at: i64,
}

impl AccountRecord {
    /// The settings' field names in their written order, each followed by the record's own
    /// fields that come after it: `(settings field, own fields after it)`.
    const ORDER: [(&'static str, &'static [&'static str]); 15] = [
        ("name", &[]),
        ("kind", &[]),
        ("base_url", &["secret"]),
        ("priority", &[]),
        ("enabled", &[]),
        ("models", &[]),
        ("model_map", &[]),
        ("group", &["proxy"]),
        ("max_concurrency", &[]),
        ("daily_quota_usd", &[]),
        ("quota_reset", &[]),
        ("weight", &[]),
        ("cooldowns", &["oauth"]),
        ("region", &[]),
        ("inference_profile", &["created_at"]),
    ];
}

impl Serialize for AccountRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &self.id)?;
        for (field, after) in AccountRecord::ORDER {
            if let Some(v) = self.settings.get(field) {
                m.serialize_entry(field, v)?;
            }
            for own in after {
                match *own {
                    "secret" => m.serialize_entry("secret", &self.secret)?,
                    "proxy" => {
                        if let Some(p) = &self.proxy {
                            m.serialize_entry("proxy", p)?;
                        }
                    }
                    "oauth" => {
                        if let Some(o) = &self.oauth {
                            m.serialize_entry("oauth", o)?;
                        }
                    }
                    _ => m.serialize_entry("created_at", &self.created_at)?,
                }
            }
        }
        // Fields of other relay versions, after the known ones.
        let own = ["id", "secret", "proxy", "oauth", "created_at"];
        for (k, v) in &self.settings {
            if !AccountRecord::ORDER.iter().any(|(f, _)| f == k) && !own.contains(&k.as_str()) {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

fn default_true() -> bool {
    true
}

pub fn default_priority() -> u32 {
    50
}

/// Which subject a usage bucket belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dimension {
    Key,
    Account,
    Model,
    /// One model's usage under one key: the subject is [`Dimension::key_model_subject`]. Kept
    /// in hour, day, month and total buckets (no minutes).
    #[serde(rename = "key_model")]
    KeyModel,
}

impl Dimension {
    /// The dimensions every request is counted under once each.
    pub const ALL: [Dimension; 3] = [Dimension::Key, Dimension::Account, Dimension::Model];
    /// Every dimension the store keeps.
    pub const STORED: [Dimension; 4] = [
        Dimension::Key,
        Dimension::Account,
        Dimension::Model,
        Dimension::KeyModel,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Key => "key",
            Dimension::Account => "account",
            Dimension::Model => "model",
            Dimension::KeyModel => "key_model",
        }
    }

    /// The subject of `model` under `key_id` in [`Dimension::KeyModel`]: it starts with
    /// [`Dimension::key_model_prefix`], whose length field makes it unambiguous whatever the id holds.
    pub fn key_model_subject(key_id: &str, model: &str) -> String {
        format!("{}{model}", Self::key_model_prefix(key_id))
    }

    /// What the [`Dimension::KeyModel`] subjects of one key start with.
    pub fn key_model_prefix(key_id: &str) -> String {
        format!("{}:{key_id}:", key_id.len())
    }
}

/// Time granularity of a usage bucket. `Total` is the all-time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Minute,
    Hour,
    Day,
    Month,
    Total,
}

impl Granularity {
    pub const ALL: [Granularity; 5] = [
        Granularity::Minute,
        Granularity::Hour,
        Granularity::Day,
        Granularity::Month,
        Granularity::Total,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
            Granularity::Month => "month",
            Granularity::Total => "total",
        }
    }

    /// How long buckets of this granularity are kept before they expire by themselves.
    pub fn retention(self) -> Option<Duration> {
        const DAY: u64 = 86_400;
        match self {
            Granularity::Minute => Some(Duration::from_secs(2 * DAY)),
            Granularity::Hour => Some(Duration::from_secs(31 * DAY)),
            Granularity::Day => Some(Duration::from_secs(400 * DAY)),
            Granularity::Month => Some(Duration::from_secs(5 * 366 * DAY)),
            Granularity::Total => None,
        }
    }

    /// The start (Unix seconds, UTC) of the bucket that contains `ts`. Months are calendar months.
    pub fn bucket_start(self, ts: i64) -> i64 {
        use chrono::{Datelike, TimeZone, Utc};
        match self {
            Granularity::Minute => ts - ts.rem_euclid(60),
            Granularity::Hour => ts - ts.rem_euclid(3_600),
            Granularity::Day => ts - ts.rem_euclid(86_400),
            Granularity::Month => match Utc.timestamp_opt(ts, 0).single() {
                Some(t) => Utc
                    .with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
                    .single()
                    .map_or(0, |m| m.timestamp()),
                None => 0,
            },
            Granularity::Total => 0,
        }
    }

    /// The start of the bucket after the one starting at `start`.
    pub fn next_bucket(self, start: i64) -> i64 {
        use chrono::{Datelike, TimeZone, Utc};
        match self {
            Granularity::Minute => start + 60,
            Granularity::Hour => start + 3_600,
            Granularity::Day => start + 86_400,
            Granularity::Month => match Utc.timestamp_opt(start, 0).single() {
                Some(t) => {
                    let (y, m) = if t.month() == 12 {
                        (t.year() + 1, 1)
                    } else {
                        (t.year(), t.month() + 1)
                    };
                    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
                        .single()
                        .map_or(i64::MAX, |n| n.timestamp())
                }
                None => i64::MAX,
            },
            Granularity::Total => i64::MAX,
        }
    }
}

/// Counters of one usage bucket. Cost is kept in integer nano-USD so that sums are exact and
/// Redis `HINCRBY` can add them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageCounters {
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_5m_tokens: u64,
    pub cache_write_1h_tokens: u64,
    /// Cost of the requests whose model had a price, in nano-USD (1e-9 USD).
    pub cost_nanos: u64,
    /// Requests whose cost is unknown (no price for the model). Their tokens are still counted.
    pub unpriced_requests: u64,
    /// Requests of a priced model whose usage reported something the price table has no price
    /// for (a server tool, a service tier, fast mode or a geography without its price): counted
    /// in `cost_nanos` without that part.
    #[serde(default)]
    pub partly_priced_requests: u64,
    /// Requests the upstream served in fast mode (`usage.speed: "fast"`).
    #[serde(default)]
    pub fast_requests: u64,
    /// Server-side web searches.
    #[serde(default)]
    pub web_search_requests: u64,
}

impl UsageCounters {
    pub fn add(&mut self, o: &UsageCounters) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cache_read_tokens += o.cache_read_tokens;
        self.cache_write_5m_tokens += o.cache_write_5m_tokens;
        self.cache_write_1h_tokens += o.cache_write_1h_tokens;
        self.cost_nanos += o.cost_nanos;
        self.unpriced_requests += o.unpriced_requests;
        self.partly_priced_requests += o.partly_priced_requests;
        self.fast_requests += o.fast_requests;
        self.web_search_requests += o.web_search_requests;
    }

    pub fn is_zero(&self) -> bool {
        *self == UsageCounters::default()
    }

    /// The field names and values, in a fixed order (the Redis hash field names; the embedded
    /// store's encoding, so new fields go last).
    pub fn fields(&self) -> [(&'static str, u64); 12] {
        [
            ("requests", self.requests),
            ("errors", self.errors),
            ("input_tokens", self.input_tokens),
            ("output_tokens", self.output_tokens),
            ("cache_read_tokens", self.cache_read_tokens),
            ("cache_write_5m_tokens", self.cache_write_5m_tokens),
            ("cache_write_1h_tokens", self.cache_write_1h_tokens),
            ("cost_nanos", self.cost_nanos),
            ("unpriced_requests", self.unpriced_requests),
            ("partly_priced_requests", self.partly_priced_requests),
            ("fast_requests", self.fast_requests),
            ("web_search_requests", self.web_search_requests),
        ]
    }

    /// Sets one field by its name (see [`UsageCounters::fields`]); unknown names are ignored.
    pub fn set_field(&mut self, name: &str, v: u64) {
        match name {
            "requests" => self.requests = v,
            "errors" => self.errors = v,
            "input_tokens" => self.input_tokens = v,
            "output_tokens" => self.output_tokens = v,
            "cache_read_tokens" => self.cache_read_tokens = v,
            "cache_write_5m_tokens" => self.cache_write_5m_tokens = v,
            "cache_write_1h_tokens" => self.cache_write_1h_tokens = v,
            "cost_nanos" => self.cost_nanos = v,
            "unpriced_requests" => self.unpriced_requests = v,
            "partly_priced_requests" => self.partly_priced_requests = v,
            "fast_requests" => self.fast_requests = v,
            "web_search_requests" => self.web_search_requests = v,
            _ => {}
        }
    }
}

/// Identifies one usage bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketKey {
    pub dimension: Dimension,
    /// Key id, account id or model name.
    pub subject: String,
    pub granularity: Granularity,
    /// Bucket start, Unix seconds UTC (0 for `Total`).
    pub start: i64,
}

/// What an administrator may do: `viewer` reads, `operator` also changes keys, accounts and
/// groups, `admin` does everything (users, settings, exports, imports, the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminRole {
    Viewer,
    Operator,
    Admin,
}

impl AdminRole {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::Viewer => "viewer",
            AdminRole::Operator => "operator",
            AdminRole::Admin => "admin",
        }
    }
}

fn admin_role() -> AdminRole {
    AdminRole::Admin
}

/// An administrator created through the admin API. (The configuration's admin is not stored: it
/// is always there, with the `admin` role.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminUser {
    pub username: String,
    pub role: AdminRole,
    /// argon2 PHC string.
    pub password_hash: String,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// A disabled user cannot log in.
    #[serde(default)]
    pub disabled: bool,
}

/// A currency shown beside US dollars: its ISO 4217 code and exchange rates (units of each
/// currency per US dollar). Costs are counted in USD; this only converts what is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisplayCurrency {
    #[serde(default = "usd_code")]
    pub display: String,
    #[serde(default)]
    pub rates: BTreeMap<String, f64>,
}

fn usd_code() -> String {
    "USD".into()
}

impl Default for DisplayCurrency {
    fn default() -> Self {
        DisplayCurrency {
            display: usd_code(),
            rates: BTreeMap::new(),
        }
    }
}

impl DisplayCurrency {
    /// Codes are three capital letters; rates are positive and finite; the display currency is
    /// USD or has a rate.
    pub fn validate(&self) -> Result<(), String> {
        let code = |c: &str| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase());
        if !code(&self.display) {
            return Err(format!(
                "`display` {:?} is not a currency code (three capital letters, e.g. CNY)",
                self.display
            ));
        }
        for (c, r) in &self.rates {
            if !code(c) {
                return Err(format!("rate for {c:?}: not a currency code (three capital letters)"));
            }
            if !(r.is_finite() && *r > 0.0) {
                return Err(format!("rate for {c}: must be a positive number (units per US dollar)"));
            }
        }
        if self.display != "USD" && !self.rates.contains_key(&self.display) {
            return Err(format!("`display` is {} but `rates` has no rate for it", self.display));
        }
        Ok(())
    }

    /// Units of the display currency per US dollar (1 for USD).
    pub fn rate(&self) -> f64 {
        if self.display == "USD" {
            1.0
        } else {
            self.rates.get(&self.display).copied().unwrap_or(1.0)
        }
    }
}

/// Settings changed in the admin panel. Each one set here overrides the configuration's value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PanelSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<DisplayCurrency>,
    /// The address clients reach the relay at (`https://relay.example.com`), for the setup
    /// snippets; without it the panel uses the address it is served from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_base_url: Option<String>,
}

/// An admin session, found by the SHA-256 of its bearer token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminSession {
    pub username: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; a session is valid strictly before this instant.
    pub expires_at: i64,
    /// The role the user had at login. A change of role, password or status ends the user's
    /// sessions, so this stays the user's role for the session's life. (Sessions from before roles
    /// existed belonged to the configuration's admin.)
    #[serde(default = "admin_role")]
    pub role: AdminRole,
    /// Where the login came from (client address and User-Agent), for the session list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// The domain-level store. Every method is cancel-safe from the caller's point of view: a dropped
/// future leaves the store consistent (each write is atomic on its own).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Backend name for logs and health (`embedded` or `redis`).
    fn backend(&self) -> &'static str;

    /// A cheap round trip that proves the backend answers.
    async fn ping(&self) -> StoreResult<()>;

    // --- API keys ---
    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>>;
    async fn get_api_key(&self, id: &str) -> StoreResult<Option<ApiKeyRecord>>;
    /// Creates or replaces the key with this id. Fails with `Conflict` if another key has the
    /// same `key_hash`.
    async fn put_api_key(&self, key: &ApiKeyRecord) -> StoreResult<()>;
    /// Returns whether a key was deleted.
    async fn delete_api_key(&self, id: &str) -> StoreResult<bool>;
    /// Records when keys were last used, `(key id, unix seconds)`; a later time wins.
    async fn touch_api_keys(&self, uses: &[(String, i64)]) -> StoreResult<()>;
    /// Last-use times for every key that has one.
    async fn api_key_last_used(&self) -> StoreResult<BTreeMap<String, i64>>;

    // --- accounts ---
    async fn list_accounts(&self) -> StoreResult<Vec<AccountRecord>>;
    async fn get_account(&self, id: &str) -> StoreResult<Option<AccountRecord>>;
    async fn put_account(&self, account: &AccountRecord) -> StoreResult<()>;
    async fn delete_account(&self, id: &str) -> StoreResult<bool>;

    // --- usage statistics ---
    /// Adds the counters to their buckets. Buckets expire by themselves after their granularity's
    /// retention, counted from the end of the bucket.
    async fn add_usage(&self, batch: &[(BucketKey, UsageCounters)]) -> StoreResult<()>;
    /// Buckets of one subject and granularity whose start lies in `[from, to)`, ascending by
    /// start. Missing buckets are simply absent.
    async fn usage_series(
        &self,
        dimension: Dimension,
        subject: &str,
        granularity: Granularity,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<(i64, UsageCounters)>>;
    /// [`Store::usage_series`] of each of `subjects` (a subject without buckets is absent), in one
    /// read for all of them (one pipeline on Redis): a page of keys costs one round trip, not one
    /// per key.
    async fn usage_series_many(
        &self,
        dimension: Dimension,
        subjects: &[String],
        granularity: Granularity,
        from: i64,
        to: i64,
    ) -> StoreResult<BTreeMap<String, Vec<(i64, UsageCounters)>>>;
    /// The all-time totals of every subject of a dimension.
    async fn usage_totals(&self, dimension: Dimension) -> StoreResult<BTreeMap<String, UsageCounters>>;
    /// Removes expired buckets now (the Redis backend relies on TTLs and may do nothing).
    async fn purge_expired_usage(&self, now: i64) -> StoreResult<u64>;
    /// Every usage bucket still kept (of every dimension and granularity), with its counters, in
    /// no particular order: what a backup holds.
    async fn dump_usage(&self) -> StoreResult<Vec<(BucketKey, UsageCounters)>>;
    /// Deletes every usage bucket and every client session's usage (a restore that replaces the
    /// store's statistics). Returns how many buckets were deleted.
    async fn clear_usage(&self) -> StoreResult<u64>;

    // --- client sessions (usage per Claude Code / Codex session of a key) ---
    /// Adds each session's usage to the stored session of its (key, session id) (see
    /// [`SessionUsage::merge`] for the per-session bounds). Then, for every key in the batch,
    /// drops the sessions last seen before `now - bounds.retention_secs` and, past
    /// `bounds.per_key`, the least recently seen ones. Sessions expire by themselves after the
    /// retention, counted from their last use.
    async fn add_session_usage(&self, batch: &[SessionUsage], bounds: SessionBounds, now: i64) -> StoreResult<()>;
    /// The sessions of a key last seen at or after `since`, most recently seen first (then by
    /// session id, descending), starting after `cursor`, at most `limit`.
    async fn recent_sessions(
        &self,
        key_id: &str,
        since: i64,
        cursor: Option<&SessionCursor>,
        limit: usize,
    ) -> StoreResult<SessionPage>;
    /// One session of a key, if it was last seen at or after `since`.
    async fn session_usage(&self, key_id: &str, session_id: &str, since: i64) -> StoreResult<Option<SessionUsage>>;
    /// Deletes the sessions of every key last seen before `before` (the Redis backend relies on
    /// TTLs and may do nothing). Returns how many were deleted.
    async fn purge_sessions(&self, before: i64) -> StoreResult<u64>;

    // --- admin sessions ---
    async fn put_session(&self, token_hash: &str, session: &AdminSession) -> StoreResult<()>;
    async fn get_session(&self, token_hash: &str, now: i64) -> StoreResult<Option<AdminSession>>;
    async fn delete_session(&self, token_hash: &str) -> StoreResult<()>;
    /// Every session still valid at `now`, with its token hash.
    async fn list_sessions(&self, now: i64) -> StoreResult<Vec<(String, AdminSession)>>;

    // --- panel settings ---
    async fn get_settings(&self) -> StoreResult<PanelSettings>;
    async fn put_settings(&self, settings: &PanelSettings) -> StoreResult<()>;

    // --- admin users ---
    async fn list_admin_users(&self) -> StoreResult<Vec<AdminUser>>;
    async fn get_admin_user(&self, username: &str) -> StoreResult<Option<AdminUser>>;
    /// Creates or replaces the user with this name.
    async fn put_admin_user(&self, user: &AdminUser) -> StoreResult<()>;
    /// Returns whether a user was deleted.
    async fn delete_admin_user(&self, username: &str) -> StoreResult<bool>;

    // --- bounded logs (see [`log`]) ---
    /// Appends records (each `(at_ms, json)`), in one round trip.
    async fn append_log(&self, kind: LogKind, records: &[(i64, String)]) -> StoreResult<()>;
    /// Records newest first, strictly older than the record `before` (an id this store returned), at
    /// most `limit`. A `before` this store could not have issued is `Invalid`.
    async fn read_log(&self, kind: LogKind, before: Option<&str>, limit: usize) -> StoreResult<Vec<LogRecord>>;
    /// One record by id (`None` for an unknown or malformed id).
    async fn get_log(&self, kind: LogKind, id: &str) -> StoreResult<Option<LogRecord>>;
    /// Drops records older than `min_at_ms` and all but the newest `max_records`; returns how many went.
    async fn trim_log(&self, kind: LogKind, min_at_ms: i64, max_records: u64) -> StoreResult<u64>;

    // --- change notification ---
    /// Tells every instance sharing this store that keys or accounts changed.
    async fn publish_change(&self) -> StoreResult<()>;
    /// A receiver that yields once per change published by any instance (including this one).
    fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<()>;

    /// The coordination state shared with the other instances on this store, when the backend is
    /// shared; `None` for a single-instance backend (the relay then keeps it in memory).
    fn coordination(&self) -> Option<std::sync::Arc<dyn coord::Coordination>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the relay has always written it (every optional field set, and a field of a
    /// newer relay): it loads, and is written back byte for byte.
    const RECORD: &str = r#"{"id":"a1","name":"sub","kind":"claude-oauth","base_url":"https://api.anthropic.com","secret":"v1:c2VjcmV0","priority":50,"enabled":true,"models":null,"model_map":{},"group":"team","proxy":"v1:cHJveHk=","max_concurrency":2,"daily_quota_usd":5.5,"quota_reset":"07:30","weight":3,"cooldowns":{"529":"2m","connect":"45"},"oauth":{"expires_at":1,"scopes":["user:inference"],"setup_token":false,"tier":"max","email":null,"issued_at":2,"refreshed_at":null,"profile_checked_at":null},"region":"us-east-1","inference_profile":"us","created_at":1700000000,"zz_from_a_newer_relay":{"x":1}}"#;

    #[test]
    fn account_records_keep_their_bytes() {
        let r: AccountRecord = serde_json::from_str(RECORD).unwrap();
        assert_eq!(r.id, "a1");
        assert_eq!(r.secret.0, "v1:c2VjcmV0");
        assert_eq!(r.proxy.as_ref().map(|p| p.0.as_str()), Some("v1:cHJveHk="));
        assert_eq!(r.oauth.as_ref().and_then(|o| o.tier.as_deref()), Some("max"));
        assert_eq!(r.settings["name"], "sub");
        assert_eq!(r.settings["zz_from_a_newer_relay"]["x"], 1);
        assert!(!r.settings.contains_key("secret") && !r.settings.contains_key("created_at"));
        assert_eq!(serde_json::to_string(&r).unwrap(), RECORD);

        // The smallest record: no optional field.
        let min = r#"{"id":"b","name":"n","kind":"ccr","base_url":"http://h","secret":"v1:eA==","priority":1,"enabled":false,"models":["m"],"model_map":{"a":"b"},"created_at":0}"#;
        let r: AccountRecord = serde_json::from_str(min).unwrap();
        assert_eq!((&r.proxy, &r.oauth), (&None, &None));
        assert_eq!(serde_json::to_string(&r).unwrap(), min);
    }
}
