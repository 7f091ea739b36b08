//! `relay.yaml`: the configuration file, `${VAR}` substitution from the environment, environment
//! overrides, and validation at start.
//!
//! Loading runs in two steps (the raw file shape with `deny_unknown_fields`, then [`Config::validate`])
//! so that a bad value stops the start with a message naming the key and the reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::accounts::{AccountDefinition, AccountInput, Cooldowns};
use crate::types::Dur;

#[path = "config_providers.rs"]
mod providers_config;
pub use providers_config::{AnthropicProvider, GoogleProvider, OpenAiProvider, ProvidersConfig};
#[path = "config_alerts.rs"]
mod alerts_config;
pub use alerts_config::{AlertsConfig, ErrorRateRule, LatencyRule, WebhookConfig, WebhookKind};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file is not valid YAML: {0}")]
    Yaml(String),
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The file as written. Every section is optional; absent means the default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address of the client-facing relay listener.
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub store: StoreConfig,
    /// Where the relay keeps its generated secret key and admin password (and the embedded store,
    /// unless `store.path` says otherwise).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// The Unix socket over which a new process (`--upgrade`) takes over the listening sockets of
    /// the running one; default `<data_dir>/upgrade.sock`.
    #[serde(default)]
    pub upgrade_sock: Option<PathBuf>,
    /// Seals stored secrets and keys the client-key hash. Generated into the data directory when
    /// absent (single instance); required with the redis backend.
    #[serde(default)]
    pub secret_key: Option<String>,
    /// Worker threads of the relay listener.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Largest accepted request body; larger bodies get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Path of the price table (conf/pricing.json format); the built-in table when absent.
    #[serde(default)]
    pub pricing: Option<PathBuf>,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// How long in-flight requests may run on after SIGTERM.
    #[serde(default = "default_grace")]
    pub shutdown_grace: Dur,
    #[serde(default)]
    pub stats: StatsConfig,
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    /// Upstream accounts: their settings, credential and outbound proxy.
    #[serde(default)]
    pub accounts: Vec<AccountInput>,
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// Filter chain order; the default chain when absent.
    #[serde(default)]
    pub filters: Option<Vec<String>>,
    /// Peers whose `X-Forwarded-For` is believed when finding the client's IP (CIDR ranges).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Whether the relay listener serves the key self-service page at `/stats` (a binary built
    /// with the cargo feature `panel`).
    #[serde(default = "default_true")]
    pub stats_page: bool,
    /// Where upstream providers are reached.
    #[serde(default)]
    pub providers: ProvidersConfig,
    #[serde(default)]
    pub connections: ConnectionsConfig,
    #[serde(default)]
    pub upstreams: UpstreamsConfig,
    /// A currency shown beside USD, with rates (the panel's settings may override it).
    #[serde(default)]
    pub currency: crate::store::DisplayCurrency,
    /// HTTPS on the relay listener.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Scheduled backups of the store; none when absent.
    #[serde(default)]
    pub backup: Option<BackupConfig>,
    /// Webhooks that receive alerts, and what raises them.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// The request log: one metadata record per relayed request.
    #[serde(default)]
    pub request_log: RequestLogConfig,
    /// The process log: format, file and rotation, the access lines.
    #[serde(default)]
    pub log: LogConfig,
}

/// `tls` and `admin.tls`: the listener serves HTTPS (ALPN `h2`, `http/1.1`) with this certificate
/// chain and key (PEM), read again when the files change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, the server's certificate first (certbot's `fullchain.pem`).
    pub cert: PathBuf,
    /// Its private key (certbot's `privkey.pem`).
    pub key: PathBuf,
    /// How often the files are checked for a renewed certificate.
    #[serde(default = "default_tls_reload_every")]
    pub reload_every: Dur,
}

impl TlsConfig {
    pub fn files(&self) -> crate::tls::CertFiles {
        crate::tls::CertFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

fn default_tls_reload_every() -> Dur {
    Dur(Duration::from_secs(10))
}

/// Checks `section` (`tls`, `admin.tls`): the period, and that its files can be served.
fn check_tls(section: &str, tls: &TlsConfig) -> Result<(), ConfigError> {
    if tls.reload_every.0 < Duration::from_secs(1) {
        return Err(invalid(format!("{section}.reload_every"), "must be at least 1s"));
    }
    crate::tls::load(&tls.files())
        .map(drop)
        .map_err(|e| invalid(format!("{section}.{}", e.part.key_name()), e.to_string()))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    #[serde(default = "default_admin_user")]
    pub username: String,
    /// Plaintext password (usually `${RELAY_ADMIN_PASSWORD}`); hashed at start, never kept.
    #[serde(default)]
    pub password: Option<String>,
    /// An argon2 PHC string instead of a plaintext password.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Idle lifetime of an admin session; each use extends it.
    #[serde(default = "default_session_ttl")]
    pub session_ttl: Dur,
    /// How failed logins slow down further attempts.
    #[serde(default)]
    pub login_backoff: LoginBackoffConfig,
    /// HTTPS on the admin listener.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How long the audit log keeps admin actions, and how many at most.
    #[serde(default)]
    pub audit: AuditConfig,
}

/// `admin.audit`: the audit log's retention and cap.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default = "default_audit_retention")]
    pub retention: Dur,
    #[serde(default = "default_audit_max_records")]
    pub max_records: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            retention: default_audit_retention(),
            max_records: default_audit_max_records(),
        }
    }
}

fn default_audit_retention() -> Dur {
    Dur(Duration::from_secs(180 * 86_400))
}
fn default_audit_max_records() -> u64 {
    1_000_000
}

/// Backoff after failed admin logins, per (user name, client address): `after` failures are free,
/// then each next attempt waits `base`, doubling with every further failure up to `max`. A client
/// address, across every user name, gets ten times as many free failures before the same backoff.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBackoffConfig {
    #[serde(default = "default_backoff_after")]
    pub after: u32,
    #[serde(default = "default_backoff_base")]
    pub base: Dur,
    #[serde(default = "default_backoff_max")]
    pub max: Dur,
}

impl Default for LoginBackoffConfig {
    fn default() -> Self {
        LoginBackoffConfig {
            after: default_backoff_after(),
            base: default_backoff_base(),
            max: default_backoff_max(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            username: default_admin_user(),
            password: None,
            password_hash: None,
            session_ttl: default_session_ttl(),
            login_backoff: LoginBackoffConfig::default(),
            audit: AuditConfig::default(),
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default)]
    pub backend: StoreBackend,
    /// Directory of the embedded store.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `redis://` or `rediss://` URL of the redis backend (one node).
    #[serde(default)]
    pub url: Option<String>,
    /// The redis backend is the master these Sentinels watch (instead of `url`).
    #[serde(default)]
    pub sentinel: Option<crate::store::redis_conn::SentinelConfig>,
    /// The redis backend is a Redis Cluster: URLs of some of its nodes (instead of `url`).
    #[serde(default)]
    pub cluster: Option<Vec<String>>,
    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[serde(default = "default_redis_prefix")]
    pub prefix: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Embedded,
            path: None,
            url: None,
            sentinel: None,
            cluster: None,
            prefix: default_redis_prefix(),
        }
    }
}

impl StoreConfig {
    /// Where the redis backend is (checked at load: exactly one of `url`, `sentinel`, `cluster`).
    pub fn redis_target(&self) -> crate::store::redis_conn::RedisTarget {
        use crate::store::redis_conn::RedisTarget;
        if let Some(s) = &self.sentinel {
            RedisTarget::Sentinel(s.clone())
        } else if let Some(nodes) = &self.cluster {
            RedisTarget::Cluster(nodes.clone())
        } else {
            RedisTarget::Node(self.url.clone().unwrap_or_default())
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    Embedded,
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// TCP and TLS connection setup to an upstream.
    #[serde(default = "default_connect")]
    pub connect: Dur,
    /// From the request sent to the upstream's response head.
    #[serde(default = "default_head")]
    pub response_head: Dur,
    /// Longest silence between two chunks of a streamed response.
    #[serde(default = "default_idle")]
    pub stream_idle: Dur,
    /// While a Gemini stream is silent (a long "thinking" phase), a blank line (or an SSE comment,
    /// for a Chat Completions client) every this often keeps proxies from cutting it; clients
    /// ignore it. `0s` sends none.
    #[serde(default = "default_stream_keepalive")]
    pub stream_keepalive: Dur,
    /// A new client connection must deliver its whole first request head within this time.
    #[serde(default = "default_request_head")]
    pub request_head: Dur,
    /// A client connection idle between requests is closed after this time; its next request
    /// head must be complete by then.
    #[serde(default = "default_keepalive_idle")]
    pub keepalive_idle: Dur,
    /// Longest pause while a request body arrives (no progress: 408 and the connection closes).
    #[serde(default = "default_request_body_idle")]
    pub request_body_idle: Dur,
    /// The whole request body must arrive within this time.
    #[serde(default = "default_request_body")]
    pub request_body: Dur,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            connect: default_connect(),
            response_head: default_head(),
            stream_idle: default_idle(),
            stream_keepalive: default_stream_keepalive(),
            request_head: default_request_head(),
            keepalive_idle: default_keepalive_idle(),
            request_body_idle: default_request_body_idle(),
            request_body: default_request_body(),
        }
    }
}

fn default_request_head() -> Dur {
    Dur(Duration::from_secs(15))
}
fn default_keepalive_idle() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_request_body_idle() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_request_body() -> Dur {
    Dur(Duration::from_secs(300))
}

/// Limits on client connections to the relay listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Open connections allowed per client address (0: no limit). Peers in `trusted_proxies`
    /// are exempt: every client behind them shares their address.
    #[serde(default = "default_per_ip")]
    pub per_ip: u32,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            per_ip: default_per_ip(),
        }
    }
}

fn default_per_ip() -> u32 {
    256
}

/// What the relay refuses to reach upstream, and what of an upstream's answer it keeps from
/// clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamsConfig {
    /// Address ranges no account (or its outbound proxy) may connect to, checked on every
    /// resolved address. By default the link-local and cloud metadata addresses.
    #[serde(default = "default_deny_addresses")]
    pub deny_addresses: Vec<String>,
    /// Upstream response headers never passed to clients: they identify the account behind the
    /// relay (its organization) to every tenant.
    #[serde(default = "default_hide_headers")]
    pub hide_headers: Vec<String>,
}

impl Default for UpstreamsConfig {
    fn default() -> Self {
        UpstreamsConfig {
            deny_addresses: default_deny_addresses(),
            hide_headers: default_hide_headers(),
        }
    }
}

/// Link-local ranges (cloud metadata at 169.254.169.254), AWS's IPv6 metadata address and
/// Alibaba Cloud's metadata address.
pub const DEFAULT_DENY_ADDRESSES: [&str; 4] =
    ["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32"];
/// Headers naming the upstream organization or setting its cookies.
pub const DEFAULT_HIDE_HEADERS: [&str; 4] = [
    "anthropic-organization-id",
    "openai-organization",
    "openai-project",
    "set-cookie",
];

fn default_deny_addresses() -> Vec<String> {
    DEFAULT_DENY_ADDRESSES.iter().map(|s| s.to_string()).collect()
}
fn default_hide_headers() -> Vec<String> {
    DEFAULT_HIDE_HEADERS.iter().map(|s| s.to_string()).collect()
}

/// `trusted_proxies`-style entries: an IP address or a CIDR range.
fn parse_nets(key: &str, entries: &[String]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    entries
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.parse::<ipnet::IpNet>()
                .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    invalid(
                        format!("{key}[{i}]"),
                        format!("`{t}` is not an IP address or CIDR range"),
                    )
                })
        })
        .collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsConfig {
    /// How often aggregated usage is written to the store.
    #[serde(default = "default_flush")]
    pub flush_interval: Dur,
    /// Usage per client session (Claude Code, Codex) and agent.
    #[serde(default)]
    pub sessions: SessionStatsConfig,
    /// `GET /v1/key/usage` on the relay listener: a key reads its own usage.
    #[serde(default)]
    pub self_service: SelfServiceConfig,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            flush_interval: default_flush(),
            sessions: SessionStatsConfig::default(),
            self_service: SelfServiceConfig::default(),
        }
    }
}

/// `stats.self_service`: whether keys may read their own usage on the relay listener, and how
/// many such calls one key may make per minute (on each instance).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfServiceConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_self_service_per_minute")]
    pub per_minute: u32,
}

impl Default for SelfServiceConfig {
    fn default() -> Self {
        SelfServiceConfig {
            enabled: true,
            per_minute: default_self_service_per_minute(),
        }
    }
}

fn default_self_service_per_minute() -> u32 {
    60
}

/// `request_log`: one metadata record per relayed request (never a body), kept for `retention`
/// and at most `max_records` of them.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLogConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_request_log_retention")]
    pub retention: Dur,
    #[serde(default = "default_request_log_records")]
    pub max_records: u64,
}

impl Default for RequestLogConfig {
    fn default() -> Self {
        RequestLogConfig {
            enabled: true,
            retention: default_request_log_retention(),
            max_records: default_request_log_records(),
        }
    }
}

fn default_request_log_retention() -> Dur {
    Dur(Duration::from_secs(7 * 86_400))
}

fn default_request_log_records() -> u64 {
    1_000_000
}

pub use crate::logging::{LogConfig, LogFormat, LogRotate};

/// The most sessions `stats.sessions.per_key` may keep per key.
pub const MAX_SESSIONS_PER_KEY: usize = 100_000;

/// `stats.sessions`: how many recent client sessions are kept per key, and for how long. `0` for
/// either switches recording off.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionStatsConfig {
    #[serde(default = "default_sessions_per_key")]
    pub per_key: usize,
    #[serde(default = "default_session_retention")]
    pub retention: Dur,
}

impl Default for SessionStatsConfig {
    fn default() -> Self {
        SessionStatsConfig {
            per_key: default_sessions_per_key(),
            retention: default_session_retention(),
        }
    }
}

impl SessionStatsConfig {
    /// The store's bounds, or `None` when sessions are not recorded.
    pub fn bounds(&self) -> Option<crate::store::SessionBounds> {
        let retention_secs = i64::try_from(self.retention.0.as_secs()).unwrap_or(i64::MAX);
        (self.per_key > 0 && retention_secs > 0).then_some(crate::store::SessionBounds {
            per_key: self.per_key,
            retention_secs,
        })
    }
}

fn default_sessions_per_key() -> usize {
    500
}

fn default_session_retention() -> Dur {
    Dur(Duration::from_secs(30 * 86_400))
}

/// The environment variable a backup passphrase may come from.
pub const BACKUP_PASSPHRASE_ENV: &str = "RELAY_BACKUP_PASSPHRASE";
/// The shortest backup passphrase accepted.
pub const MIN_BACKUP_PASSPHRASE_CHARS: usize = 12;

/// `backup`: scheduled backups of the store into a directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Where backups are written; default `<data_dir>/backups`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// How often (periods aligned on UTC; with several instances on one Redis, one of them
    /// writes each period's backup).
    #[serde(default = "default_backup_every")]
    pub every: Dur,
    /// How many backups are kept (the newest).
    #[serde(default = "default_backup_keep")]
    pub keep: usize,
    /// A file holding the passphrase the backups are sealed with; else `RELAY_BACKUP_PASSPHRASE`.
    #[serde(default)]
    pub passphrase_file: Option<PathBuf>,
}

fn default_backup_every() -> Dur {
    Dur(Duration::from_secs(86_400))
}

fn default_backup_keep() -> usize {
    7
}

impl BackupConfig {
    /// The directory backups go to (set by validation).
    pub fn dir(&self) -> &Path {
        self.dir.as_deref().unwrap_or(Path::new("backups"))
    }

    /// The passphrase: from `passphrase_file` when set, else from `RELAY_BACKUP_PASSPHRASE`.
    /// Read at every backup, so the file can change without a restart.
    pub fn passphrase(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        let p = match &self.passphrase_file {
            Some(f) => read_passphrase_file(f)?,
            None => env(BACKUP_PASSPHRASE_ENV)
                .filter(|p| !p.is_empty())
                .ok_or_else(|| format!("no passphrase: set `passphrase_file` or {BACKUP_PASSPHRASE_ENV}"))?,
        };
        if p.chars().count() < MIN_BACKUP_PASSPHRASE_CHARS {
            return Err(format!(
                "the passphrase must be at least {MIN_BACKUP_PASSPHRASE_CHARS} characters"
            ));
        }
        Ok(p)
    }
}

/// A passphrase file's content without its line end.
pub fn read_passphrase_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let p = text.strip_suffix('\n').unwrap_or(&text);
    let p = p.strip_suffix('\r').unwrap_or(p);
    if p.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(p.to_string())
}

/// The keyed hash of a client key: 64 hex digits in the file (either case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(pub [u8; 32]);

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out)
            .map_err(|_| serde::de::Error::custom("must be 64 hex digits (see `claude-relay hash-key`)"))?;
        Ok(KeyHash(out))
    }
}

/// How a configured client key is recognised: by its plaintext (hashed with the secret key at
/// start), or by its hash.
#[derive(Debug, Clone)]
pub enum KeyIdentity {
    Plain(String),
    Hash(KeyHash),
}

/// A client key from the file, checked: how it is recognised, and its restrictions compiled.
#[derive(Debug, Clone)]
pub struct ConfiguredKey {
    pub config: ApiKeyConfig,
    pub identity: KeyIdentity,
    pub policy: std::sync::Arc<filters::policy::KeyPolicy>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub name: String,
    /// The plaintext key (usually `${ALICE_KEY}`).
    #[serde(default)]
    pub key: Option<String>,
    /// Or its hash, as printed by `claude-relay hash-key`.
    #[serde(default)]
    pub key_hash: Option<KeyHash>,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Dedicated binding: an account name, or `group:<name>`.
    #[serde(default)]
    pub bind: Option<String>,
    #[serde(default)]
    pub permissions: Option<Vec<String>>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub activate_for: Option<String>,
    #[serde(default)]
    pub clients: Vec<filters::policy::ClientSpec>,
    #[serde(default)]
    pub ip_allow: Vec<String>,
    #[serde(default)]
    pub ip_deny: Vec<String>,
    #[serde(default)]
    pub model_blacklist: Vec<String>,
    #[serde(default)]
    pub model_allowlist: Option<Vec<String>>,
    #[serde(default)]
    pub rate_limit: Option<filters::policy::RateLimitSpec>,
    #[serde(default)]
    pub cost_limits: Option<filters::policy::CostLimitsSpec>,
    #[serde(default)]
    pub concurrency: Option<filters::policy::ConcurrencySpec>,
    /// Only usable in pass-through mode (the key in `x-relay-key`).
    #[serde(default)]
    pub passthrough_only: bool,
    #[serde(default)]
    pub fast_mode: Option<filters::policy::FastMode>,
    #[serde(default)]
    pub max_input_tokens: Option<u64>,
}

impl ApiKeyConfig {
    /// The key's restrictions in their stored shape.
    pub fn policy_spec(&self) -> filters::policy::KeyPolicySpec {
        filters::policy::KeyPolicySpec {
            permissions: self.permissions.clone(),
            expires_at: self.expires_at.clone(),
            activate_for: self.activate_for.clone(),
            clients: self.clients.clone(),
            ip_allow: self.ip_allow.clone(),
            ip_deny: self.ip_deny.clone(),
            model_blacklist: self.model_blacklist.clone(),
            model_allowlist: self.model_allowlist.clone(),
            rate_limit: self.rate_limit.clone(),
            cost_limits: self.cost_limits.clone(),
            concurrency: self.concurrency.clone(),
            passthrough_only: self.passthrough_only,
            fast_mode: self.fast_mode,
            max_input_tokens: self.max_input_tokens,
        }
    }
}

/// Account selection, stickiness and failover.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// How long a session stays on its account after its last request.
    #[serde(default = "default_sticky_ttl")]
    pub sticky_ttl: Dur,
    #[serde(default)]
    pub failover: FailoverConfig,
    /// Cooldown per error class: "503", "5xx", "529", "401", "403", "429_max" (cap for retry-after),
    /// "429" (when no retry-after), "connect".
    #[serde(default)]
    pub cooldowns: Cooldowns,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            sticky_ttl: default_sticky_ttl(),
            failover: FailoverConfig::default(),
            cooldowns: Cooldowns::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverConfig {
    /// Accounts tried for one request, the first included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// No new attempt starts after this much time since the request arrived.
    #[serde(default = "default_budget")]
    pub budget: Dur,
    /// Upstream statuses (answered before any byte reached the client) that move the request on.
    #[serde(default = "default_failover_statuses")]
    pub statuses: Vec<u16>,
    /// A failure a request could cause itself (403, 5xx, 529) takes an account out of the pool
    /// only once requests of this many different client keys met it within `evidence_window`
    /// (1: at the first failure).
    #[serde(default = "default_evidence_keys")]
    pub evidence_keys: u32,
    #[serde(default = "default_evidence_window")]
    pub evidence_window: Dur,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            max_attempts: default_max_attempts(),
            budget: default_budget(),
            statuses: default_failover_statuses(),
            evidence_keys: default_evidence_keys(),
            evidence_window: default_evidence_window(),
        }
    }
}

fn default_evidence_keys() -> u32 {
    2
}
fn default_evidence_window() -> Dur {
    Dur(Duration::from_secs(600))
}

fn default_sticky_ttl() -> Dur {
    Dur(Duration::from_secs(3600))
}
fn default_max_attempts() -> u32 {
    3
}
fn default_budget() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_failover_statuses() -> Vec<u16> {
    vec![429, 529, 500, 502, 503, 504, 401, 403]
}

fn default_listen() -> String {
    "0.0.0.0:3000".into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:3001".into()
}
fn default_admin_user() -> String {
    "admin".into()
}
fn default_session_ttl() -> Dur {
    Dur(Duration::from_secs(12 * 3600))
}
fn default_backoff_after() -> u32 {
    5
}
fn default_backoff_base() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_backoff_max() -> Dur {
    Dur(Duration::from_secs(15 * 60))
}
fn default_redis_prefix() -> String {
    "relay:".into()
}
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(8))
}
fn default_max_body() -> usize {
    32 * 1024 * 1024
}
fn default_grace() -> Dur {
    Dur(Duration::from_secs(600))
}
fn default_connect() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_head() -> Dur {
    Dur(Duration::from_secs(600))
}
fn default_idle() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_stream_keepalive() -> Dur {
    Dur(Duration::from_secs(15))
}
fn default_flush() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_true() -> bool {
    true
}

/// The filter chain when `filters:` is absent. A filter with nothing configured for a key is a
/// no-op for it.
/// Built-in filters available in this build (the default chain keeps DEFAULT_FILTERS' order).
pub const IMPLEMENTED_FILTERS: [&str; 9] = [
    "key_auth",
    "permissions",
    "expiry",
    "clients",
    "ip",
    "models",
    "rate_limit",
    "cost_limits",
    "concurrency",
];

pub const DEFAULT_FILTERS: [&str; 9] = [
    "key_auth",
    "permissions",
    "expiry",
    "clients",
    "ip",
    "models",
    "rate_limit",
    "cost_limits",
    "concurrency",
];

/// The filters `filters:` may name: the built-in ones, and custom filters registered here. The
/// validation and the start both use it, so they agree on which names exist.
pub fn filter_registry() -> filters::Registry {
    filters::Registry::with_builtins()
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub admin: AdminConfig,
    pub store: StoreConfig,
    pub data_dir: PathBuf,
    pub upgrade_sock: PathBuf,
    pub secret_key: Option<String>,
    pub threads: usize,
    pub max_body_bytes: usize,
    pub pricing: Option<PathBuf>,
    pub timeouts: TimeoutsConfig,
    pub shutdown_grace: Duration,
    pub stats: StatsConfig,
    pub scheduler: SchedulerConfig,
    pub accounts: Vec<AccountDefinition>,
    pub api_keys: Vec<ConfiguredKey>,
    pub filters: Vec<String>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `stats_page`: the key self-service page at `/stats` on the relay listener.
    pub stats_page: bool,
    /// `currency`: the display currency beside USD and its rates.
    pub currency: crate::store::DisplayCurrency,
    /// The file this configuration was read from (`None`: built-in defaults).
    pub file: Option<PathBuf>,
    pub providers: ProvidersConfig,
    pub connections: ConnectionsConfig,
    /// Address ranges upstream connections may not reach (`upstreams.deny_addresses`).
    pub deny_addresses: Vec<ipnet::IpNet>,
    /// Upstream response headers kept from clients (`upstreams.hide_headers`).
    pub hide_headers: Vec<http::HeaderName>,
    /// HTTPS on the relay listener (`tls`; the admin listener's is `admin.tls`).
    pub tls: Option<TlsConfig>,
    /// Scheduled backups (`backup`), its `dir` resolved.
    pub backup: Option<BackupConfig>,
    pub alerts: AlertsConfig,
    /// `request_log`: the per-request metadata log.
    pub request_log: RequestLogConfig,
    /// `log`: the process log's format, file, rotation and access lines.
    pub log: LogConfig,
    /// What validation found worth saying without refusing the configuration; logged once the
    /// log is set up.
    pub warnings: Vec<String>,
}

/// `${VAR}` references are swapped for YAML-safe placeholders before parsing (so they work
/// anywhere, including inside flow mappings like `{ key: ${ALICE_KEY} }`), then substituted in the
/// parsed strings, so a value's characters can never change the YAML's structure.
const PLACEHOLDER: &str = "__relay_env_";

fn protect(text: &str) -> Result<(String, Vec<String>), ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut refs = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        if i > 0 && rest.as_bytes()[i - 1] == b'$' {
            out.push_str(&rest[..i + 2]);
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        // A reference ends on its own line: an unclosed `${` (in a comment, say) must not swallow
        // the lines after it up to some later `}`.
        let end = rest[i..]
            .find(['}', '\n'])
            .filter(|&j| rest.as_bytes()[i + j] == b'}')
            .ok_or_else(|| {
                ConfigError::Yaml("unterminated `${` in the config (a reference must end on its line)".into())
            })?
            + i;
        out.push_str(&format!("{PLACEHOLDER}{}__", refs.len()));
        refs.push(rest[i..=end].to_string());
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok((out, refs))
}

fn substitute(
    v: &mut serde_yaml_ng::Value,
    path: &str,
    refs: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    use serde_yaml_ng::Value;
    match v {
        Value::String(s) if s.contains(PLACEHOLDER) || s.contains("$${") => {
            let mut restored = s.clone();
            for (i, r) in refs.iter().enumerate().rev() {
                restored = restored.replace(&format!("{PLACEHOLDER}{i}__"), r);
            }
            let whole = refs.contains(&restored);
            let value = substitute_str(&restored, env).map_err(|r| invalid(path, r))?;
            // A value that is nothing but one reference takes the type it reads as (numbers, booleans).
            *v = match (whole, serde_yaml_ng::from_str::<Value>(&value)) {
                (true, Ok(parsed @ (Value::Number(_) | Value::Bool(_)))) => parsed,
                _ => Value::String(value),
            };
        }
        Value::Sequence(seq) => {
            for (i, item) in seq.iter_mut().enumerate() {
                substitute(item, &format!("{path}[{i}]"), refs, env)?;
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let name = k.as_str().unwrap_or("?");
                let p = if path.is_empty() {
                    name.to_string()
                } else {
                    format!("{path}.{name}")
                };
                substitute(item, &p, refs, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

pub fn substitute_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if i > 0 && rest.as_bytes()[i - 1] == b'$' {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let end = rest[i..]
            .find('}')
            .ok_or_else(|| format!("unterminated `${{` in `{s}`"))?
            + i;
        let expr = &rest[i + 2..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{expr}}}` is not a valid variable reference"));
        }
        match (env(name), default) {
            (Some(v), _) if !v.is_empty() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            (Some(_), None) => return Err(format!("environment variable {name} is empty")),
            (None, None) => return Err(format!("environment variable {name} is not set")),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Refuses a client key listed twice under different names (by `key`, by `key_hash`, or by a
/// `key` whose hash another entry gives): the snapshot keeps one entry per key, so the other's
/// restrictions would silently not apply.
fn check_unique_client_keys(keys: &[ApiKeyConfig], secret_key: Option<&str>) -> Result<(), ConfigError> {
    // Without `secret_key` every entry is a plaintext `key` (a `key_hash` needs it), and equal
    // plaintexts are exactly equal hashes.
    let secrets = secret_key.and_then(|k| crate::secrets::Secrets::new(k).ok());
    let mut seen: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        let (field, identity) = match (&k.key, &k.key_hash, &secrets) {
            (Some(p), _, Some(s)) => ("key", s.hash_client_key(p).to_vec()),
            (Some(p), _, None) => ("key", p.as_bytes().to_vec()),
            (None, Some(h), _) => ("key_hash", h.0.to_vec()),
            (None, None, _) => continue,
        };
        if let Some(&first) = seen.get(&identity) {
            return Err(invalid(
                format!("api_keys[{i}].{field}"),
                format!(
                    "the same client key as api_keys[{first}] (`{}`); a key may be listed only once, \
                     or one entry's restrictions would not apply",
                    keys[first].name
                ),
            ));
        }
        seen.insert(identity, i);
    }
    Ok(())
}

impl Config {
    /// Reads, substitutes and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut c = Config::from_yaml(&text, &|k| std::env::var(k).ok())?;
        c.file = Some(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()));
        Ok(c)
    }

    /// The configuration used when no file exists: every default.
    pub fn defaults(env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Config::from_yaml("{}", env)
    }

    pub fn from_yaml(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let (protected, refs) = protect(text)?;
        let mut value: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&protected).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        if value.is_null() {
            value = serde_yaml_ng::Value::Mapping(Default::default());
        }
        substitute(&mut value, "", &refs, env)?;
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            invalid(
                if key == "." { "(top level)".to_string() } else { key },
                e.into_inner().to_string(),
            )
        })?;
        Config::validate(raw, env)
    }

    fn validate(mut raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        // Environment overrides, for containers and systemd units.
        if let Some(v) = env("RELAY_LISTEN") {
            raw.listen = v;
        }
        if let Some(v) = env("RELAY_ADMIN_LISTEN") {
            raw.admin.listen = v;
        }
        if let Some(v) = env("RELAY_DATA_DIR") {
            raw.data_dir = Some(PathBuf::from(v));
        }
        if let Some(v) = env("RELAY_REDIS_URL") {
            raw.store.backend = StoreBackend::Redis;
            raw.store.url = Some(v);
            raw.store.sentinel = None;
            raw.store.cluster = None;
        }
        if raw.secret_key.is_none() {
            raw.secret_key = env("RELAY_SECRET_KEY").filter(|s| !s.is_empty());
        }
        if raw.admin.password.is_none() && raw.admin.password_hash.is_none() {
            raw.admin.password = env("RELAY_ADMIN_PASSWORD").filter(|s| !s.is_empty());
        }

        let listen: SocketAddr = raw.listen.parse().map_err(|_| {
            invalid(
                "listen",
                format!("`{}` is not an address like 0.0.0.0:3000", raw.listen),
            )
        })?;
        let admin_listen: SocketAddr = raw.admin.listen.parse().map_err(|_| {
            invalid(
                "admin.listen",
                format!("`{}` is not an address like 127.0.0.1:3001", raw.admin.listen),
            )
        })?;
        if listen == admin_listen {
            return Err(invalid("admin.listen", "must differ from `listen`"));
        }
        if raw.admin.username.trim().is_empty() {
            return Err(invalid("admin.username", "must not be empty"));
        }
        if let Some(p) = &raw.admin.password
            && p.len() < 8
        {
            return Err(invalid("admin.password", "must be at least 8 characters"));
        }
        if let Some(h) = &raw.admin.password_hash {
            // Login verifies against the same string; one without a usable algorithm, parameters
            // and hash would refuse every password.
            let usable = argon2::PasswordHash::new(h).is_ok_and(|p| {
                p.hash.is_some()
                    && argon2::Algorithm::try_from(p.algorithm).is_ok()
                    && argon2::Params::try_from(&p).is_ok()
            });
            if !h.starts_with("$argon2") || !usable {
                return Err(invalid(
                    "admin.password_hash",
                    "must be an argon2 PHC string ($argon2id$...)",
                ));
            }
        }
        if raw.admin.audit.retention.0 < Duration::from_secs(3600) {
            return Err(invalid("admin.audit.retention", "must be at least 1h"));
        }
        if raw.admin.audit.max_records < 1000 {
            return Err(invalid("admin.audit.max_records", "must be at least 1000"));
        }
        if let Some(t) = &raw.tls {
            check_tls("tls", t)?;
        }
        if let Some(t) = &raw.admin.tls {
            check_tls("admin.tls", t)?;
        }
        if raw.admin.session_ttl.0 < Duration::from_secs(60) {
            return Err(invalid("admin.session_ttl", "must be at least 1m"));
        }
        let backoff = raw.admin.login_backoff;
        if backoff.after == 0 || backoff.after > 100 {
            return Err(invalid("admin.login_backoff.after", "must be between 1 and 100"));
        }
        if backoff.base.0 < Duration::from_secs(1) {
            return Err(invalid("admin.login_backoff.base", "must be at least 1s"));
        }
        if backoff.max.0 < backoff.base.0 || backoff.max.0 > Duration::from_secs(86_400) {
            return Err(invalid(
                "admin.login_backoff.max",
                "must be at least `base` and at most 1d",
            ));
        }
        if raw.threads == 0 || raw.threads > 256 {
            return Err(invalid("threads", "must be between 1 and 256"));
        }
        if raw.max_body_bytes < 1024 {
            return Err(invalid("max_body_bytes", "must be at least 1024"));
        }
        if let Some(k) = &raw.secret_key {
            crate::secrets::Secrets::new(k).map_err(|e| invalid("secret_key", e.to_string()))?;
        }
        if let Some(p) = &raw.pricing {
            // The start loads it and stops when it cannot.
            crate::usage::pricing::PricingTable::load(p).map_err(|e| invalid("pricing", e.to_string()))?;
        }
        match raw.store.backend {
            StoreBackend::Redis => {
                let redis_url = |u: &str| u.starts_with("redis://") || u.starts_with("rediss://");
                let given = [
                    raw.store.url.is_some(),
                    raw.store.sentinel.is_some(),
                    raw.store.cluster.is_some(),
                ];
                if given.iter().filter(|g| **g).count() > 1 {
                    return Err(invalid(
                        "store",
                        "give one of `url` (one node), `sentinel` or `cluster`, not several",
                    ));
                }
                if let Some(s) = &raw.store.sentinel {
                    if s.master.trim().is_empty() {
                        return Err(invalid("store.sentinel.master", "must name the monitored master"));
                    }
                    if s.nodes.is_empty() || !s.nodes.iter().all(|n| redis_url(n)) {
                        return Err(invalid(
                            "store.sentinel.nodes",
                            "must list the Sentinels as redis:// or rediss:// URLs",
                        ));
                    }
                } else if let Some(nodes) = &raw.store.cluster {
                    if nodes.is_empty() || !nodes.iter().all(|n| redis_url(n)) {
                        return Err(invalid(
                            "store.cluster",
                            "must list cluster nodes as redis:// or rediss:// URLs",
                        ));
                    }
                } else if !redis_url(raw.store.url.as_deref().unwrap_or("")) {
                    return Err(invalid(
                        "store.url",
                        "the redis backend needs a redis:// or rediss:// URL (or `sentinel`, or `cluster`)",
                    ));
                }
                if raw.secret_key.is_none() {
                    return Err(invalid(
                        "secret_key",
                        "is required with the redis backend: every instance sharing the store must use the same key",
                    ));
                }
            }
            StoreBackend::Embedded => {
                if raw.store.url.is_some() {
                    return Err(invalid("store.url", "only applies to `backend: redis`"));
                }
                if raw.store.sentinel.is_some() {
                    return Err(invalid("store.sentinel", "only applies to `backend: redis`"));
                }
                if raw.store.cluster.is_some() {
                    return Err(invalid("store.cluster", "only applies to `backend: redis`"));
                }
            }
        }
        for (name, d) in [
            ("timeouts.connect", raw.timeouts.connect),
            ("timeouts.response_head", raw.timeouts.response_head),
            ("timeouts.stream_idle", raw.timeouts.stream_idle),
            ("timeouts.request_head", raw.timeouts.request_head),
            ("timeouts.keepalive_idle", raw.timeouts.keepalive_idle),
            ("timeouts.request_body_idle", raw.timeouts.request_body_idle),
            ("timeouts.request_body", raw.timeouts.request_body),
            ("stats.flush_interval", raw.stats.flush_interval),
        ] {
            if d.0.is_zero() {
                return Err(invalid(name, "must be greater than zero"));
            }
        }

        if raw.stats.sessions.per_key > MAX_SESSIONS_PER_KEY {
            return Err(invalid(
                "stats.sessions.per_key",
                format!("must be at most {MAX_SESSIONS_PER_KEY} (0 switches session recording off)"),
            ));
        }
        let retention = raw.stats.sessions.retention.0;
        if !retention.is_zero() && retention < Duration::from_secs(1) {
            return Err(invalid(
                "stats.sessions.retention",
                "must be at least 1s (0 switches session recording off)",
            ));
        }

        if raw.request_log.max_records == 0 || raw.request_log.max_records > crate::store::log::MAX_LOG_RECORDS {
            return Err(invalid(
                "request_log.max_records",
                format!(
                    "must be between 1 and {} (`enabled: false` switches the log off)",
                    crate::store::log::MAX_LOG_RECORDS
                ),
            ));
        }
        let retention = raw.request_log.retention.0;
        if retention < Duration::from_secs(1) || retention > Duration::from_secs(3_660 * 86_400) {
            return Err(invalid("request_log.retention", "must be between 1s and 3660d"));
        }

        providers_config::validate(&raw.providers)?;
        let mut names = std::collections::HashSet::new();
        let mut accounts = Vec::with_capacity(raw.accounts.len());
        for (i, a) in raw.accounts.into_iter().enumerate() {
            let a = a
                .validate()
                .map_err(|e| invalid(format!("accounts[{i}].{}", e.field), e.reason))?;
            if !names.insert(a.settings.name.clone()) {
                return Err(invalid(
                    format!("accounts[{i}].name"),
                    format!("duplicate account name `{}`", a.settings.name),
                ));
            }
            accounts.push(a);
        }

        let mut key_names = std::collections::HashSet::new();
        for (i, k) in raw.api_keys.iter().enumerate() {
            let key = |f: &str| format!("api_keys[{i}].{f}");
            if k.name.trim().is_empty() {
                return Err(invalid(key("name"), "must not be empty"));
            }
            if !key_names.insert(k.name.clone()) {
                return Err(invalid(key("name"), format!("duplicate key name `{}`", k.name)));
            }
            match (&k.key, &k.key_hash) {
                (Some(p), None) => {
                    if p.len() < 16 {
                        return Err(invalid(key("key"), "must be at least 16 characters"));
                    }
                    // Clients present keys in a header, trimmed; any other character would make
                    // the key impossible to use.
                    if !p.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(invalid(
                            key("key"),
                            "must be printable ASCII without spaces or control characters",
                        ));
                    }
                }
                (None, Some(_)) => {
                    if raw.secret_key.is_none() {
                        return Err(invalid(
                            key("key_hash"),
                            "needs `secret_key` in the config: the hash is keyed by it",
                        ));
                    }
                }
                (Some(_), Some(_)) => return Err(invalid(key("key"), "give either `key` or `key_hash`, not both")),
                (None, None) => return Err(invalid(key("key"), "one of `key` or `key_hash` is required")),
            }
        }

        check_unique_client_keys(&raw.api_keys, raw.secret_key.as_deref())?;

        if raw.scheduler.failover.evidence_keys == 0 || raw.scheduler.failover.evidence_keys > 16 {
            return Err(invalid("scheduler.failover.evidence_keys", "must be between 1 and 16"));
        }
        if raw.scheduler.failover.evidence_window.0.is_zero() {
            return Err(invalid(
                "scheduler.failover.evidence_window",
                "must be greater than zero",
            ));
        }
        if raw.scheduler.failover.max_attempts == 0 || raw.scheduler.failover.max_attempts > 20 {
            return Err(invalid("scheduler.failover.max_attempts", "must be between 1 and 20"));
        }
        if let Some(s) = raw
            .scheduler
            .failover
            .statuses
            .iter()
            .find(|s| !(400..=599).contains(*s))
        {
            return Err(invalid(
                "scheduler.failover.statuses",
                format!("{s} is not an HTTP error status"),
            ));
        }
        let account_names: std::collections::HashSet<&str> =
            accounts.iter().map(|a| a.settings.name.as_str()).collect();
        let groups: std::collections::HashSet<&str> =
            accounts.iter().filter_map(|a| a.settings.group.as_deref()).collect();
        let mut warnings = Vec::new();
        for (i, k) in raw.api_keys.iter().enumerate() {
            if let Some(b) = &k.bind {
                match b.strip_prefix("group:") {
                    Some(g) if g.trim().is_empty() => {
                        return Err(invalid(format!("api_keys[{i}].bind"), "group name must not be empty"));
                    }
                    Some(g) if !groups.contains(g) => {
                        warnings.push(format!(
                            "api_keys[{i}] ({}): bound to group {g}, which no configured account has yet",
                            k.name
                        ));
                    }
                    None if !account_names.contains(b.as_str()) => {
                        warnings.push(format!(
                            "api_keys[{i}] ({}): bound to account {b}, which is not in the config (it may be created through the admin API)",
                            k.name
                        ));
                    }
                    _ => {}
                }
            }
        }

        let mut api_keys = Vec::with_capacity(raw.api_keys.len());
        for (i, k) in raw.api_keys.into_iter().enumerate() {
            let policy = filters::policy::KeyPolicy::compile(&k.policy_spec())
                .map_err(|e| invalid(format!("api_keys[{i}]"), e))?;
            let identity = match (&k.key, k.key_hash) {
                (Some(p), _) => KeyIdentity::Plain(p.clone()),
                (None, Some(h)) => KeyIdentity::Hash(h),
                (None, None) => {
                    return Err(invalid(
                        format!("api_keys[{i}].key"),
                        "one of `key` or `key_hash` is required",
                    ));
                }
            };
            api_keys.push(ConfiguredKey {
                config: k,
                identity,
                policy: std::sync::Arc::new(policy),
            });
        }
        raw.currency.validate().map_err(|r| invalid("currency", r))?;
        let trusted_proxies = parse_nets("trusted_proxies", &raw.trusted_proxies)?;
        let deny_addresses = parse_nets("upstreams.deny_addresses", &raw.upstreams.deny_addresses)?;
        let hide_headers = raw
            .upstreams
            .hide_headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                http::HeaderName::from_bytes(h.trim().as_bytes()).map_err(|_| {
                    invalid(
                        format!("upstreams.hide_headers[{i}]"),
                        format!("`{h}` is not a header name"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let filters = match raw.filters {
            Some(f) => f,
            None => DEFAULT_FILTERS
                .iter()
                .filter(|f| IMPLEMENTED_FILTERS.contains(f))
                .map(|s| s.to_string())
                .collect(),
        };
        // The same check the start's chain building makes, without its runtime dependencies.
        filter_registry()
            .check_order(&filters)
            .map_err(|e| invalid("filters", e))?;

        raw.alerts.validate()?;
        let data_dir = raw.data_dir.unwrap_or_else(|| PathBuf::from("./data"));
        let upgrade_sock = raw.upgrade_sock.unwrap_or_else(|| data_dir.join("upgrade.sock"));
        // A Unix socket path holds at most 107 bytes (Pingora would panic on a longer one).
        if upgrade_sock.as_os_str().len() > 107 {
            return Err(invalid(
                "upgrade_sock",
                "a Unix socket path must be at most 107 bytes long",
            ));
        }
        let backup = match raw.backup {
            None => None,
            Some(mut b) => {
                if b.every.0 < Duration::from_secs(1) {
                    return Err(invalid("backup.every", "must be at least 1s"));
                }
                if b.keep == 0 || b.keep > 10_000 {
                    return Err(invalid("backup.keep", "must be between 1 and 10000"));
                }
                if b.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
                    return Err(invalid("backup.dir", "must not be empty"));
                }
                b.passphrase(env).map_err(|e| invalid("backup.passphrase_file", e))?;
                b.dir = Some(b.dir.take().unwrap_or_else(|| data_dir.join("backups")));
                Some(b)
            }
        };
        let log = raw.log;
        if log.keep == 0 || log.keep > 10_000 {
            return Err(invalid("log.keep", "must be between 1 and 10000"));
        }
        if log.max_bytes < 4096 {
            return Err(invalid("log.max_bytes", "must be at least 4096"));
        }
        if log.file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            return Err(invalid("log.file", "must not be empty"));
        }
        if let Err(e) = log.level.parse::<tracing_subscriber::EnvFilter>() {
            return Err(invalid("log.level", format!("not a level filter: {e}")));
        }
        let mut store = raw.store;
        if store.backend == StoreBackend::Embedded && store.path.is_none() {
            store.path = Some(data_dir.clone());
        }

        Ok(Config {
            listen,
            admin_listen,
            admin: raw.admin,
            store,
            data_dir,
            upgrade_sock,
            secret_key: raw.secret_key,
            threads: raw.threads,
            max_body_bytes: raw.max_body_bytes,
            pricing: raw.pricing,
            timeouts: raw.timeouts,
            shutdown_grace: raw.shutdown_grace.0,
            stats: raw.stats,
            scheduler: raw.scheduler,
            accounts,
            api_keys,
            filters,
            trusted_proxies,
            stats_page: raw.stats_page,
            currency: raw.currency,
            file: None,
            providers: raw.providers,
            connections: raw.connections,
            deny_addresses,
            hide_headers,
            tls: raw.tls,
            backup,
            alerts: raw.alerts,
            request_log: raw.request_log,
            log,
            warnings,
        })
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "config_props.rs"]
mod props;
