//! The Redis store: what several relay instances share (Redis 6 or later).
//!
//! Key layout, every name under a configurable prefix `{p}` (default `relay:`):
//!
//! | key                                   | type    | content                                      |
//! |---------------------------------------|---------|----------------------------------------------|
//! | `{p}keys`                             | hash    | key id → JSON [`ApiKeyRecord`]                |
//! | `{p}keyhash`                          | hash    | key hash → key id (unique index)             |
//! | `{p}key_last_used`                    | hash    | key id → Unix seconds                        |
//! | `{p}accounts`                         | hash    | account id → JSON [`AccountRecord`]           |
//! | `{p}u:{dim}:{gran}:{start}:{subject}` | hash    | usage counters ([`UsageCounters::fields`])   |
//! | `{p}u:subjects:{dim}`                 | set     | subjects that have a `total` bucket          |
//! | `{p}session:{token hash}`             | string  | JSON [`AdminSession`], `EXPIREAT` its expiry  |
//! | `{p}sessions`                         | zset    | token hashes of admin sessions by expiry     |
//! | `{p}admin_users`                      | hash    | user name → JSON [`AdminUser`]               |
//! | `{p}settings`                         | string  | JSON [`PanelSettings`]                        |
//! | `{p}cs:{len}:{key id}:{session id}`   | hash    | one client session's usage (see `lua/add_session_usage.lua`), `EXPIREAT` last use + retention |
//! | `{p}csx:{key id}`                     | zset    | a key's client session ids by last use       |
//! | `{p}log:requests`, `{p}log:audit`     | stream  | bounded logs: fields `at` (unix ms), `d` (JSON); entry ids are the record ids |
//! | `{p}changes`                          | channel | pub/sub: keys or accounts changed            |
//!
//! `{dim}` is `key|account|model`, `{gran}` `minute|hour|day|month|total`, `{start}` the bucket
//! start in Unix seconds (`0` for `total`). The subject (a key id, account id or model name, which
//! may contain `:`) comes last, so the name is unambiguous without escaping. A usage bucket has an
//! `EXPIREAT` of its end plus its granularity's retention; `total` buckets never expire.
//!
//! On a Redis Cluster ([`super::redis_conn`]) names carry hash tags so that what a script or a
//! transaction uses together shares a slot: `{p}{catalog}keys` (and `keyhash`, `key_last_used`),
//! `{p}{usage}u:...` (every statistics key: a flush is one transaction), `{p}{admin}session:...`
//! and `{p}{admin}sessions`, and `{p}cs:{len}:{{key id}}:{session id}` with `{p}csx:{{key id}}`
//! (a key's sessions with their index; keys spread over the slots).
//!
//! Writes that must stay consistent run as Lua scripts (`lua/*.lua`, next to this file) or as one
//! `MULTI`/`EXEC` pipeline, so each trait method is atomic and costs one round trip (usage totals:
//! two).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, PushInfo, PushKind, Script};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::lifecycle::Tasks;

use super::client_sessions::{MAX_AGENTS_PER_SESSION, MAX_MODELS_PER_SESSION, counter_fields, page_order};
use super::embedded::{bucket_expiry, merge_usage_batch, now_unix, series_bucket_starts};
use super::log::{MAX_LOG_PAGE, MAX_LOG_RECORDS, invalid_cursor, parse_stream_id};
use super::redis_conn::{CONNECT_TIMEOUT, KeyNames, RESPONSE_TIMEOUT, RedisConn, RedisTarget};
use super::{
    AccountRecord, AdminSession, AdminUser, AgentUsage, ApiKeyRecord, BucketKey, Dimension, Granularity, LogKind,
    LogRecord, PanelSettings, SessionBounds, SessionCursor, SessionPage, SessionUsage, Store, StoreError, StoreResult,
    UsageCounters,
};

/// The prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "relay:";

const SUBSCRIBER_MIN_BACKOFF: Duration = Duration::from_millis(200);
const SUBSCRIBER_MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often the subscriber proves its connection is alive (a silent network loss sends no FIN).
const SUBSCRIBER_HEALTH_INTERVAL: Duration = Duration::from_secs(15);
const CHANGE_CHANNEL_CAPACITY: usize = 64;

/// The Redis backend.
pub struct RedisStore {
    conn: RedisConn,
    names: KeyNames,
    changes: broadcast::Sender<()>,
    scripts: Scripts,
    /// The Redis `CLIENT ID` of the change subscriber's current connection (-1 if unknown).
    subscriber_id: Arc<AtomicI64>,
    _subscriber: AbortOnDrop,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.names.prefix())
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

struct Scripts {
    put_api_key: Script,
    delete_api_key: Script,
    touch_api_keys: Script,
    add_session_usage: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            put_api_key: Script::new(include_str!("lua/put_api_key.lua")),
            delete_api_key: Script::new(include_str!("lua/delete_api_key.lua")),
            touch_api_keys: Script::new(include_str!("lua/touch_api_keys.lua")),
            add_session_usage: Script::new(include_str!("lua/add_session_usage.lua")),
        }
    }
}

/// Stops the change subscriber when the store goes away.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

fn to_json<T: serde::Serialize>(what: &str, v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(format!("cannot encode {what}: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, id: &str, s: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what} {id:?}: {e}")))
}

/// Decodes the values of a JSON hash, sorted by id. Unreadable records are skipped with a warning
/// (as in the embedded store) so one record a newer relay wrote cannot hide all the others.
fn decode_all<T: serde::de::DeserializeOwned>(what: &str, rows: HashMap<String, String>) -> Vec<T> {
    let rows: BTreeMap<String, String> = rows.into_iter().collect();
    let mut out = Vec::with_capacity(rows.len());
    for (id, json) in rows {
        match serde_json::from_str(&json) {
            Ok(rec) => out.push(rec),
            Err(e) => tracing::warn!(id = %id, error = %e, "skipping unreadable {what} record"),
        }
    }
    out
}

/// `pattern` with the glob characters of `SCAN MATCH` escaped.
fn glob_escape(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The bucket a usage key names, from what follows `{p}u:` (`{dim}:{gran}:{start}:{subject}`);
/// `None` for the subject sets and for names that are not buckets.
fn parse_usage_name(rest: &str) -> Option<BucketKey> {
    let mut parts = rest.splitn(4, ':');
    let (d, g, start, subject) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some(BucketKey {
        dimension: Dimension::STORED.into_iter().find(|x| x.as_str() == d)?,
        granularity: Granularity::ALL.into_iter().find(|x| x.as_str() == g)?,
        start: start.parse().ok()?,
        subject: subject.to_string(),
    })
}

fn parse_counters(key: &str, fields: HashMap<String, String>) -> StoreResult<UsageCounters> {
    let mut c = UsageCounters::default();
    for (name, value) in fields {
        let v: u64 = value
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("usage bucket {key:?}: field {name} = {value:?}")))?;
        c.set_field(&name, v);
    }
    Ok(c)
}

/// Reads a client session's hash (see `lua/add_session_usage.lua`); `None` when it is empty
/// (gone).
fn parse_session(key_id: &str, session_id: &str, fields: HashMap<String, String>) -> StoreResult<Option<SessionUsage>> {
    if fields.is_empty() {
        return Ok(None);
    }
    let bad = |name: &str, value: &str| {
        StoreError::Corrupt(format!(
            "client session {session_id:?} of key {key_id:?}: field {name} = {value:?}"
        ))
    };
    let mut s = SessionUsage::new(key_id, session_id, 0);
    for (name, value) in &fields {
        let int = || value.parse::<i64>().map_err(|_| bad(name, value));
        let count = || value.parse::<u64>().map_err(|_| bad(name, value));
        if name == "first" {
            s.first_seen = int()?;
        } else if name == "last" {
            s.last_seen = int()?;
        } else if let Some(rest) = name.strip_prefix("m:") {
            if let Some((field, model)) = rest.split_once(':') {
                s.models
                    .entry(model.to_string())
                    .or_default()
                    .set_field(field, count()?);
            }
        } else if let Some(field) = name.strip_prefix("main:") {
            s.main.set_field(field, count()?);
        } else if let Some(field) = name.strip_prefix("rest:") {
            s.other_agents.set_field(field, count()?);
        } else if let Some(rest) = name.strip_prefix("a:") {
            if let Some((field, id)) = rest.split_once(':') {
                s.agents
                    .entry(id.to_string())
                    .or_default()
                    .usage
                    .set_field(field, count()?);
            }
        } else if let Some(id) = name.strip_prefix("af:") {
            s.agents.entry(id.to_string()).or_default().first_seen = int()?;
        } else if let Some(id) = name.strip_prefix("al:") {
            s.agents.entry(id.to_string()).or_default().last_seen = int()?;
        } else if let Some(id) = name.strip_prefix("ap:") {
            s.agents.entry(id.to_string()).or_default().parent = Some(value.clone());
        }
    }
    // An agent with nothing but a parent (a partly expired write; none is expected) is left out.
    s.agents
        .retain(|_, a: &mut AgentUsage| a.last_seen != 0 || !a.usage.is_zero());
    Ok(Some(s))
}

/// A stream entry `(id, [field, value, ...])` as a log record.
fn stream_record((id, fields): (String, Vec<String>)) -> StoreResult<LogRecord> {
    let mut at_ms = None;
    let mut data = None;
    for pair in fields.chunks(2) {
        if let [name, value] = pair {
            match name.as_str() {
                "at" => at_ms = value.parse::<i64>().ok(),
                "d" => data = Some(value.clone()),
                _ => {}
            }
        }
    }
    match (at_ms, data) {
        (Some(at_ms), Some(data)) => Ok(LogRecord { id, at_ms, data }),
        _ => Err(StoreError::Corrupt(format!("log record {id:?} lacks `at` or `d`"))),
    }
}

impl RedisStore {
    /// Connects with the default key prefix `relay:`.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with_prefix(url, DEFAULT_PREFIX).await
    }

    /// Connects with a key prefix (every key and the change channel live under it). Fails with
    /// `Unavailable` if Redis does not answer, so a bad URL stops the start. The change
    /// subscription is in place when this returns: no change published afterwards is missed.
    /// Its task runs on the caller's runtime until the store is dropped.
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> StoreResult<Self> {
        Self::connect_owned(url, prefix, &Tasks::on_current_runtime()).await
    }

    /// [`RedisStore::connect_with_prefix`], with the change subscriber owned by `tasks`: it stops
    /// at their shutdown (or when the store is dropped).
    pub async fn connect_owned(url: &str, prefix: &str, tasks: &Tasks) -> StoreResult<Self> {
        Self::connect_target(&RedisTarget::Node(url.to_string()), prefix, tasks).await
    }

    /// Connects to one node, a Sentinel-watched master or a Cluster (see
    /// [`super::redis_conn`]), with the change subscriber owned by `tasks`.
    pub async fn connect_target(target: &RedisTarget, prefix: &str, tasks: &Tasks) -> StoreResult<Self> {
        let conn = RedisConn::connect(target, RESPONSE_TIMEOUT)
            .await
            .map_err(StoreError::Unavailable)?;
        let names = KeyNames::new(prefix, conn.is_cluster());
        let channel = format!("{prefix}changes");
        let subscriber_id = Arc::new(AtomicI64::new(-1));
        let source = SubscriberSource {
            conn: conn.clone(),
            target: target.clone(),
        };
        let subscription = Subscription::open(&source, 0, &channel, &subscriber_id)
            .await
            .map_err(unavailable)?;
        let (changes, _) = broadcast::channel(CHANGE_CHANNEL_CAPACITY);
        let task = tasks.spawn_loop(
            "redis change subscriber",
            run_subscriber(
                source,
                channel,
                subscription,
                changes.clone(),
                Arc::clone(&subscriber_id),
            ),
        );

        Ok(RedisStore {
            conn,
            names,
            changes,
            scripts: Scripts::new(),
            subscriber_id,
            _subscriber: AbortOnDrop(task),
        })
    }

    /// One call of `lua/add_session_usage.lua`; `index` routes it on a Cluster (every session of
    /// the batch then has that index's key id).
    async fn add_session_usage_in_slot(
        &self,
        batch: &[&SessionUsage],
        index: Option<String>,
        bounds: SessionBounds,
        now: i64,
    ) -> StoreResult<()> {
        let mut inv = self.scripts.add_session_usage.prepare_invoke();
        if let Some(index) = index {
            inv.key(index);
        }
        let (lb, rb) = self.names.tag_braces();
        inv.arg(self.names.prefix())
            .arg(now)
            .arg(bounds.retention_secs.max(1))
            .arg(bounds.per_key.max(1))
            .arg(MAX_MODELS_PER_SESSION)
            .arg(MAX_AGENTS_PER_SESSION)
            .arg(batch.len())
            .arg(lb)
            .arg(rb);
        let fields = |inv: &mut redis::ScriptInvocation<'_>, c: &UsageCounters| -> StoreResult<()> {
            let f = counter_fields(c);
            inv.arg(f.len());
            for (name, v) in f {
                let v = i64::try_from(v).map_err(|_| {
                    StoreError::Conflict(format!("usage counter {name} = {v} exceeds the Redis integer range"))
                })?;
                inv.arg(name).arg(v);
            }
            Ok(())
        };
        for s in batch {
            inv.arg(&s.key_id)
                .arg(&s.session_id)
                .arg(s.first_seen)
                .arg(s.last_seen)
                .arg(s.models.len());
            for (model, c) in &s.models {
                inv.arg(model);
                fields(&mut inv, c)?;
            }
            fields(&mut inv, &s.main)?;
            fields(&mut inv, &s.other_agents)?;
            inv.arg(s.agents.len());
            for (id, a) in &s.agents {
                inv.arg(id)
                    .arg(a.parent.as_deref().unwrap_or(""))
                    .arg(a.first_seen)
                    .arg(a.last_seen);
                fields(&mut inv, &a.usage)?;
            }
        }
        let _: i64 = inv.invoke_async(&mut self.conn()).await.map_err(unavailable)?;
        Ok(())
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        self.names.prefix()
    }

    /// The coordination state (sticky sessions, leases, account health) on the same connection
    /// and prefix.
    pub fn coordination(&self) -> super::redis_coord::RedisCoordination {
        super::redis_coord::RedisCoordination::new(self.conn.clone(), self.names.clone())
    }

    /// The Redis `CLIENT ID` of the connection that listens for changes, if known (the server may
    /// refuse `CLIENT ID` under a restrictive ACL). For tests and diagnostics: killing that client
    /// must not stop change delivery for more than a reconnection.
    pub fn change_subscriber_client_id(&self) -> Option<i64> {
        Some(self.subscriber_id.load(Ordering::Relaxed)).filter(|id| *id >= 0)
    }

    /// Seconds until a usage bucket expires (`None` if it never does); `NotFound` if it does not
    /// exist. For tests and diagnostics.
    pub async fn usage_bucket_ttl(&self, key: &BucketKey) -> StoreResult<Option<i64>> {
        let name = self.usage_key(
            key.dimension,
            key.granularity,
            key.granularity.bucket_start(key.start),
            &key.subject,
        );
        let ttl: i64 = redis::cmd("TTL")
            .arg(&name)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        match ttl {
            -2 => Err(StoreError::NotFound),
            -1 => Ok(None),
            t => Ok(Some(t)),
        }
    }

    fn key(&self, name: &str) -> String {
        self.names.plain(name)
    }

    /// The key catalog (`keys`, `keyhash`, `key_last_used`): its scripts use all three.
    fn catalog(&self, name: &str) -> String {
        self.names.grouped("catalog", name)
    }

    /// What every usage statistics key starts with. A usage flush is one transaction, so on a
    /// Cluster the statistics share one slot (they are written once per flush interval, not per
    /// request).
    fn usage_head(&self) -> String {
        self.names.grouped("usage", "u:")
    }

    fn usage_key(&self, d: Dimension, g: Granularity, start: i64, subject: &str) -> String {
        format!("{}{}:{}:{start}:{subject}", self.usage_head(), d.as_str(), g.as_str())
    }

    fn subjects_key(&self, d: Dimension) -> String {
        format!("{}subjects:{}", self.usage_head(), d.as_str())
    }

    /// One client session's hash. The key id's length makes the name unambiguous whatever either
    /// id contains; on a Cluster the key id is the hash tag (a key's sessions share its index's
    /// slot).
    fn client_session_key(&self, key_id: &str, session_id: &str) -> String {
        format!(
            "{}cs:{}:{}:{session_id}",
            self.names.prefix(),
            key_id.len(),
            self.names.tag(key_id)
        )
    }

    fn client_session_index(&self, key_id: &str) -> String {
        format!("{}csx:{}", self.names.prefix(), self.names.tag(key_id))
    }

    /// An admin session and the index of them share a slot on a Cluster.
    fn session_key(&self, token_hash: &str) -> String {
        self.names.grouped("admin", &format!("session:{token_hash}"))
    }

    fn sessions_index(&self) -> String {
        self.names.grouped("admin", "sessions")
    }

    fn log_key(&self, kind: LogKind) -> String {
        self.key(&format!("log:{}", kind.as_str()))
    }

    /// Every key name matching the glob `pattern` (SCAN, so Redis is never blocked for long; every
    /// master of a Cluster).
    async fn scan(&self, pattern: &str) -> StoreResult<Vec<String>> {
        self.conn.scan(pattern).await.map_err(unavailable)
    }

    /// A handle on the shared connection (cheap to clone; reconnects by itself).
    fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    async fn hget_json<T: serde::de::DeserializeOwned>(
        &self,
        hash: &str,
        what: &str,
        id: &str,
    ) -> StoreResult<Option<T>> {
        let json: Option<String> = redis::cmd("HGET")
            .arg(hash)
            .arg(id)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        json.map(|j| from_json(what, id, &j)).transpose()
    }

    /// Stores a JSON record under `id` in the hash `hash`.
    async fn hset_json(&self, hash: &str, id: &str, json: String) -> StoreResult<()> {
        let _: i64 = redis::cmd("HSET")
            .arg(hash)
            .arg(id)
            .arg(json)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Removes `id` from the hash `hash`; whether it was there.
    async fn hdel(&self, hash: &str, id: &str) -> StoreResult<bool> {
        let n: i64 = redis::cmd("HDEL")
            .arg(hash)
            .arg(id)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn hgetall_json<T: serde::de::DeserializeOwned>(&self, hash: &str, what: &str) -> StoreResult<Vec<T>> {
        let rows: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(hash)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(decode_all(what, rows))
    }
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> StoreResult<()> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    // --- API keys ---

    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>> {
        self.hgetall_json(&self.catalog("keys"), "api key").await
    }

    async fn get_api_key(&self, id: &str) -> StoreResult<Option<ApiKeyRecord>> {
        self.hget_json(&self.catalog("keys"), "api key", id).await
    }

    async fn put_api_key(&self, key: &ApiKeyRecord) -> StoreResult<()> {
        let json = to_json("api key", key)?;
        let reply: Vec<String> = self
            .scripts
            .put_api_key
            .key(self.catalog("keys"))
            .key(self.catalog("keyhash"))
            .arg(&key.id)
            .arg(&key.key_hash)
            .arg(json)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        match reply.as_slice() {
            [ok] if ok == "ok" => Ok(()),
            [c, owner] if c == "conflict" => Err(StoreError::Conflict(format!(
                "api key {owner:?} already has this key hash"
            ))),
            other => Err(StoreError::Corrupt(format!(
                "unexpected reply from put_api_key script: {other:?}"
            ))),
        }
    }

    async fn delete_api_key(&self, id: &str) -> StoreResult<bool> {
        let deleted: i64 = self
            .scripts
            .delete_api_key
            .key(self.catalog("keys"))
            .key(self.catalog("keyhash"))
            .key(self.catalog("key_last_used"))
            .arg(id)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(deleted == 1)
    }

    async fn touch_api_keys(&self, uses: &[(String, i64)]) -> StoreResult<()> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut invocation = self.scripts.touch_api_keys.key(self.catalog("key_last_used"));
        invocation.key(self.catalog("keys"));
        for (id, at) in uses {
            invocation.arg(id).arg(*at);
        }
        let _: i64 = invocation.invoke_async(&mut self.conn()).await.map_err(unavailable)?;
        Ok(())
    }

    async fn api_key_last_used(&self) -> StoreResult<BTreeMap<String, i64>> {
        let rows: HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(self.catalog("key_last_used"))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(rows.into_iter().collect())
    }

    // --- accounts ---

    async fn list_accounts(&self) -> StoreResult<Vec<AccountRecord>> {
        self.hgetall_json(&self.key("accounts"), "account").await
    }

    async fn get_account(&self, id: &str) -> StoreResult<Option<AccountRecord>> {
        self.hget_json(&self.key("accounts"), "account", id).await
    }

    async fn put_account(&self, account: &AccountRecord) -> StoreResult<()> {
        self.hset_json(&self.key("accounts"), &account.id, to_json("account", account)?)
            .await
    }

    async fn delete_account(&self, id: &str) -> StoreResult<bool> {
        self.hdel(&self.key("accounts"), id).await
    }

    // --- usage statistics ---

    async fn add_usage(&self, batch: &[(BucketKey, UsageCounters)]) -> StoreResult<()> {
        let merged = merge_usage_batch(batch, now_unix());
        if merged.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (bk, c) in &merged {
            let name = self.usage_key(bk.dimension, bk.granularity, bk.start, &bk.subject);
            for (field, v) in c.fields() {
                if v == 0 {
                    continue;
                }
                let v = i64::try_from(v).map_err(|_| {
                    StoreError::Conflict(format!("usage counter {field} = {v} exceeds the Redis integer range"))
                })?;
                pipe.cmd("HINCRBY").arg(&name).arg(field).arg(v).ignore();
            }
            match bucket_expiry(bk.granularity, bk.start) {
                Some(at) => {
                    pipe.cmd("EXPIREAT").arg(&name).arg(at).ignore();
                }
                None => {
                    pipe.cmd("SADD")
                        .arg(self.subjects_key(bk.dimension))
                        .arg(&bk.subject)
                        .ignore();
                }
            }
        }
        let _: () = pipe.query_async(&mut self.conn()).await.map_err(unavailable)?;
        Ok(())
    }

    async fn usage_series(
        &self,
        dimension: Dimension,
        subject: &str,
        granularity: Granularity,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<(i64, UsageCounters)>> {
        let starts = series_bucket_starts(granularity, from, to)?;
        if starts.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = starts
            .iter()
            .map(|s| self.usage_key(dimension, granularity, *s, subject))
            .collect();
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.cmd("HGETALL").arg(name);
        }
        let rows: Vec<HashMap<String, String>> = pipe.query_async(&mut self.conn()).await.map_err(unavailable)?;
        let mut out = Vec::new();
        for ((start, name), fields) in starts.into_iter().zip(&names).zip(rows) {
            if !fields.is_empty() {
                out.push((start, parse_counters(name, fields)?));
            }
        }
        Ok(out)
    }

    async fn usage_series_many(
        &self,
        dimension: Dimension,
        subjects: &[String],
        granularity: Granularity,
        from: i64,
        to: i64,
    ) -> StoreResult<BTreeMap<String, Vec<(i64, UsageCounters)>>> {
        let starts = series_bucket_starts(granularity, from, to)?;
        if starts.is_empty() || subjects.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut names = Vec::with_capacity(subjects.len() * starts.len());
        let mut pipe = redis::pipe();
        for subject in subjects {
            for start in &starts {
                let name = self.usage_key(dimension, granularity, *start, subject);
                pipe.cmd("HGETALL").arg(&name);
                names.push((subject, *start, name));
            }
        }
        let rows: Vec<HashMap<String, String>> = pipe.query_async(&mut self.conn()).await.map_err(unavailable)?;
        let mut out = BTreeMap::new();
        for ((subject, start, name), fields) in names.into_iter().zip(rows) {
            if !fields.is_empty() {
                out.entry(subject.clone())
                    .or_insert_with(Vec::new)
                    .push((start, parse_counters(&name, fields)?));
            }
        }
        Ok(out)
    }

    async fn usage_totals(&self, dimension: Dimension) -> StoreResult<BTreeMap<String, UsageCounters>> {
        let subjects: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.subjects_key(dimension))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if subjects.is_empty() {
            return Ok(BTreeMap::new());
        }
        let names: Vec<String> = subjects
            .iter()
            .map(|s| self.usage_key(dimension, Granularity::Total, 0, s))
            .collect();
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.cmd("HGETALL").arg(name);
        }
        let rows: Vec<HashMap<String, String>> = pipe.query_async(&mut self.conn()).await.map_err(unavailable)?;
        let mut out = BTreeMap::new();
        for ((subject, name), fields) in subjects.into_iter().zip(&names).zip(rows) {
            if !fields.is_empty() {
                out.insert(subject, parse_counters(name, fields)?);
            }
        }
        Ok(out)
    }

    async fn dump_usage(&self) -> StoreResult<Vec<(BucketKey, UsageCounters)>> {
        let head = self.usage_head();
        let mut buckets = Vec::new();
        for name in self.scan(&format!("{}*", glob_escape(&head))).await? {
            if let Some(bk) = name.strip_prefix(&head).and_then(parse_usage_name) {
                buckets.push((name, bk));
            }
        }
        let mut out = Vec::with_capacity(buckets.len());
        for chunk in buckets.chunks(500) {
            let mut pipe = redis::pipe();
            for (name, _) in chunk {
                pipe.cmd("HGETALL").arg(name);
            }
            let rows: Vec<HashMap<String, String>> = pipe.query_async(&mut self.conn()).await.map_err(unavailable)?;
            for ((name, bk), fields) in chunk.iter().zip(rows) {
                // Expired between the scan and the read: gone.
                if !fields.is_empty() {
                    out.push((bk.clone(), parse_counters(name, fields)?));
                }
            }
        }
        Ok(out)
    }

    async fn clear_usage(&self) -> StoreResult<u64> {
        let head = self.usage_head();
        let mut deleted = 0u64;
        for prefix in [head.clone(), self.key("cs:"), self.key("csx:")] {
            let names = self.scan(&format!("{}*", glob_escape(&prefix))).await?;
            deleted += names
                .iter()
                .filter(|n| n.strip_prefix(&head).and_then(parse_usage_name).is_some())
                .count() as u64;
            for chunk in names.chunks(500) {
                let _: i64 = redis::cmd("UNLINK")
                    .arg(chunk)
                    .query_async(&mut self.conn())
                    .await
                    .map_err(unavailable)?;
            }
        }
        Ok(deleted)
    }

    /// Redis expires buckets by their `EXPIREAT`: nothing to do.
    async fn purge_expired_usage(&self, _now: i64) -> StoreResult<u64> {
        Ok(0)
    }

    // --- client sessions ---

    async fn add_session_usage(&self, batch: &[SessionUsage], bounds: SessionBounds, now: i64) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if !self.names.cluster() {
            let all: Vec<&SessionUsage> = batch.iter().collect();
            return self.add_session_usage_in_slot(&all, None, bounds, now).await;
        }
        // On a Cluster a script's keys share one slot: one call per key id.
        let mut by_key: BTreeMap<&str, Vec<&SessionUsage>> = BTreeMap::new();
        for s in batch {
            by_key.entry(s.key_id.as_str()).or_default().push(s);
        }
        for (key_id, sessions) in by_key {
            let index = self.client_session_index(key_id);
            self.add_session_usage_in_slot(&sessions, Some(index), bounds, now)
                .await?;
        }
        Ok(())
    }

    async fn recent_sessions(
        &self,
        key_id: &str,
        since: i64,
        cursor: Option<&SessionCursor>,
        limit: usize,
    ) -> StoreResult<SessionPage> {
        // The set holds at most `per_key` members: read them all, order and page here.
        let scored: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.client_session_index(key_id))
            .arg(since)
            .arg("+inf")
            .arg("WITHSCORES")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let entries = scored.into_iter().map(|(id, score)| (score as i64, id)).collect();
        let (page, more) = page_order(entries, cursor, limit);
        if page.is_empty() {
            return Ok(SessionPage::default());
        }
        let mut pipe = redis::pipe();
        for (_, id) in &page {
            pipe.cmd("HGETALL").arg(self.client_session_key(key_id, id));
        }
        let rows: Vec<HashMap<String, String>> = pipe.query_async(&mut self.conn()).await.map_err(unavailable)?;
        let mut sessions = Vec::with_capacity(page.len());
        for ((_, id), fields) in page.iter().zip(rows) {
            // Gone between the two reads (expired or evicted): skipped.
            if let Some(s) = parse_session(key_id, id, fields)? {
                sessions.push(s);
            }
        }
        let next = if more {
            sessions.last().map(SessionCursor::of)
        } else {
            None
        };
        Ok(SessionPage { sessions, next })
    }

    async fn session_usage(&self, key_id: &str, session_id: &str, since: i64) -> StoreResult<Option<SessionUsage>> {
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.client_session_key(key_id, session_id))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(parse_session(key_id, session_id, fields)?.filter(|s| s.last_seen >= since))
    }

    /// Redis expires sessions by their `EXPIREAT`: nothing to do.
    async fn purge_sessions(&self, _before: i64) -> StoreResult<u64> {
        Ok(0)
    }

    // --- admin sessions ---

    async fn put_session(&self, token_hash: &str, session: &AdminSession) -> StoreResult<()> {
        let json = to_json("session", session)?;
        let name = self.session_key(token_hash);
        let _: () = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&name)
            .arg(json)
            .ignore()
            .cmd("EXPIREAT")
            .arg(&name)
            .arg(session.expires_at)
            .ignore()
            .cmd("ZADD")
            .arg(self.sessions_index())
            .arg(session.expires_at)
            .arg(token_hash)
            .ignore()
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get_session(&self, token_hash: &str, now: i64) -> StoreResult<Option<AdminSession>> {
        let json: Option<String> = redis::cmd("GET")
            .arg(self.session_key(token_hash))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let Some(json) = json else { return Ok(None) };
        let session: AdminSession = from_json("session", "(token hash)", &json)?;
        // Redis expires it by wall clock; the caller's clock decides too.
        Ok((session.expires_at > now).then_some(session))
    }

    async fn delete_session(&self, token_hash: &str) -> StoreResult<()> {
        let _: () = redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(self.session_key(token_hash))
            .ignore()
            .cmd("ZREM")
            .arg(self.sessions_index())
            .arg(token_hash)
            .ignore()
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn list_sessions(&self, now: i64) -> StoreResult<Vec<(String, AdminSession)>> {
        let index = self.sessions_index();
        // Expired entries leave the index here (their strings expire by themselves).
        let (hashes,): (Vec<String>,) = redis::pipe()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&index)
            .arg("-inf")
            .arg(now)
            .ignore()
            .cmd("ZRANGE")
            .arg(&index)
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let mut get = redis::cmd("MGET");
        for h in &hashes {
            get.arg(self.session_key(h));
        }
        let found: Vec<Option<String>> = get.query_async(&mut self.conn()).await.map_err(unavailable)?;
        let mut out = Vec::new();
        for (hash, json) in hashes.into_iter().zip(found) {
            let Some(json) = json else { continue };
            match from_json::<AdminSession>("session", "(token hash)", &json) {
                Ok(s) if s.expires_at > now => out.push((hash, s)),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable admin session"),
            }
        }
        Ok(out)
    }

    // --- panel settings ---

    async fn get_settings(&self) -> StoreResult<PanelSettings> {
        let json: Option<String> = redis::cmd("GET")
            .arg(self.key("settings"))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        json.map(|j| from_json("settings", "panel", &j))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    async fn put_settings(&self, settings: &PanelSettings) -> StoreResult<()> {
        let json = to_json("settings", settings)?;
        let _: () = redis::cmd("SET")
            .arg(self.key("settings"))
            .arg(json)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    // --- admin users ---

    async fn list_admin_users(&self) -> StoreResult<Vec<AdminUser>> {
        self.hgetall_json(&self.key("admin_users"), "admin user").await
    }

    async fn get_admin_user(&self, username: &str) -> StoreResult<Option<AdminUser>> {
        self.hget_json(&self.key("admin_users"), "admin user", username).await
    }

    async fn put_admin_user(&self, user: &AdminUser) -> StoreResult<()> {
        self.hset_json(&self.key("admin_users"), &user.username, to_json("admin user", user)?)
            .await
    }

    async fn delete_admin_user(&self, username: &str) -> StoreResult<bool> {
        self.hdel(&self.key("admin_users"), username).await
    }

    // --- bounded logs ---

    /// `MAXLEN ~` keeps each stream near the largest configurable size on every append (cheap: whole
    /// macro nodes go); `trim_log` applies the configured cap and retention exactly.
    async fn append_log(&self, kind: LogKind, records: &[(i64, String)]) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let key = self.log_key(kind);
        let mut pipe = redis::pipe();
        for (at_ms, data) in records {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(MAX_LOG_RECORDS)
                .arg("*")
                .arg("at")
                .arg(*at_ms)
                .arg("d")
                .arg(data.as_str())
                .ignore();
        }
        let _: () = pipe.query_async(&mut self.conn()).await.map_err(unavailable)?;
        Ok(())
    }

    async fn read_log(&self, kind: LogKind, before: Option<&str>, limit: usize) -> StoreResult<Vec<LogRecord>> {
        // The newest id strictly before `before` (XREVRANGE's `(` needs Redis 6.2; this works on 6.0).
        let end = match before {
            None => "+".to_string(),
            Some(b) => match parse_stream_id(b).ok_or_else(|| invalid_cursor(b))? {
                (0, 0) => return Ok(Vec::new()),
                (ms, 0) => format!("{}-{}", ms - 1, u64::MAX),
                (ms, seq) => format!("{ms}-{}", seq - 1),
            },
        };
        let limit = limit.min(MAX_LOG_PAGE);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
            .arg(self.log_key(kind))
            .arg(end)
            .arg("-")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        rows.into_iter().map(stream_record).collect()
    }

    async fn get_log(&self, kind: LogKind, id: &str) -> StoreResult<Option<LogRecord>> {
        if parse_stream_id(id).is_none() {
            return Ok(None);
        }
        let rows: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(self.log_key(kind))
            .arg(id)
            .arg(id)
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        rows.into_iter().next().map(stream_record).transpose()
    }

    /// Retention by entry id (the time the record reached Redis, within a flush of `at_ms`).
    async fn trim_log(&self, kind: LogKind, min_at_ms: i64, max_records: u64) -> StoreResult<u64> {
        let key = self.log_key(kind);
        let (by_age, by_count): (u64, u64) = redis::pipe()
            .cmd("XTRIM")
            .arg(&key)
            .arg("MINID")
            .arg(format!("{}-0", min_at_ms.max(0)))
            .cmd("XTRIM")
            .arg(&key)
            .arg("MAXLEN")
            .arg(max_records)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(by_age + by_count)
    }

    // --- change notification ---

    async fn publish_change(&self) -> StoreResult<()> {
        // Our own subscriber receives it too, so local receivers hear it exactly once.
        let _: i64 = redis::cmd("PUBLISH")
            .arg(self.key("changes"))
            .arg("changed")
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn subscribe_changes(&self) -> broadcast::Receiver<()> {
        self.changes.subscribe()
    }

    fn coordination(&self) -> Option<Arc<dyn super::coord::Coordination>> {
        Some(Arc::new(RedisStore::coordination(self)))
    }
}

// --- the change subscriber ---

/// Where the change subscriber connects (again): see [`RedisConn::subscriber_client`].
struct SubscriberSource {
    conn: RedisConn,
    target: RedisTarget,
}

/// A RESP3 connection subscribed to the change channel; messages arrive as pushes.
struct Subscription {
    conn: MultiplexedConnection,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
}

impl Subscription {
    async fn open(
        source: &SubscriberSource,
        attempt: usize,
        channel: &str,
        client_id: &AtomicI64,
    ) -> redis::RedisResult<Self> {
        let client: Client = source.conn.subscriber_client(&source.target, attempt).await?;
        let (tx, pushes) = mpsc::unbounded_channel();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_push_sender(tx);
        let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
        conn.subscribe(channel).await?;
        // Diagnostics only: a restrictive ACL may refuse CLIENT, which must not stop the relay.
        let id: redis::RedisResult<i64> = redis::cmd("CLIENT").arg("ID").query_async(&mut conn).await;
        client_id.store(id.unwrap_or(-1), Ordering::Relaxed);
        Ok(Subscription { conn, pushes })
    }

    /// Forwards each change message until the connection is lost.
    async fn forward(&mut self, changes: &broadcast::Sender<()>) {
        let mut health = tokio::time::interval(SUBSCRIBER_HEALTH_INTERVAL);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        health.tick().await;
        loop {
            tokio::select! {
                push = self.pushes.recv() => match push {
                    Some(PushInfo { kind: PushKind::Message, .. }) => {
                        let _ = changes.send(());
                    }
                    Some(PushInfo { kind: PushKind::Disconnection, .. }) | None => return,
                    Some(_) => {}
                },
                _ = health.tick() => {
                    let pong: redis::RedisResult<redis::Value> = redis::cmd("PING").query_async(&mut self.conn).await;
                    if let Err(e) = pong {
                        tracing::warn!(error = %e, "redis change subscription failed its health check");
                        return;
                    }
                }
            }
        }
    }
}

/// Runs until aborted (when the store is dropped): forwards changes, and when the connection drops
/// resubscribes with exponential backoff. After a reconnection it reports one change, since changes
/// published while it was away were missed and receivers should reload.
async fn run_subscriber(
    source: SubscriberSource,
    channel: String,
    mut subscription: Subscription,
    changes: broadcast::Sender<()>,
    client_id: Arc<AtomicI64>,
) {
    loop {
        subscription.forward(&changes).await;
        tracing::warn!(channel = %channel, "redis change subscription lost; reconnecting");
        let mut backoff = SUBSCRIBER_MIN_BACKOFF;
        let mut attempt = 0usize;
        subscription = loop {
            tokio::time::sleep(backoff).await;
            attempt += 1;
            match Subscription::open(&source, attempt, &channel, &client_id).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "redis change subscription: reconnect failed");
                    backoff = (backoff * 2).min(SUBSCRIBER_MAX_BACKOFF);
                }
            }
        };
        tracing::info!(channel = %channel, "redis change subscription restored");
        let _ = changes.send(());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse_and_reject_garbage() {
        let mut fields = HashMap::new();
        fields.insert("requests".to_string(), "7".to_string());
        fields.insert("cost_nanos".to_string(), "123".to_string());
        fields.insert("future_field".to_string(), "1".to_string());
        let c = parse_counters("k", fields).unwrap();
        assert_eq!(c.requests, 7);
        assert_eq!(c.cost_nanos, 123);
        let mut bad = HashMap::new();
        bad.insert("requests".to_string(), "-1".to_string());
        assert!(matches!(parse_counters("k", bad), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn unreadable_records_are_skipped_not_fatal() {
        let mut rows = HashMap::new();
        rows.insert(
            "b".to_string(),
            r#"{"username":"b","created_at":1,"expires_at":2}"#.to_string(),
        );
        rows.insert("a".to_string(), "{not json".to_string());
        let out: Vec<AdminSession> = decode_all("session", rows);
        assert_eq!(out.len(), 1);
    }
}
