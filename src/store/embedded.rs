//! The embedded store (redb): one crash-safe file, `relay.redb`, under the data directory.
//!
//! redb is synchronous, so every transaction runs on Tokio's blocking pool and the async methods
//! never block the runtime. Each method is one transaction: a write either commits whole or not at
//! all, and a caller that drops the future leaves the store consistent (the transaction still
//! finishes on the blocking pool).
//!
//! Tables:
//! - `api_keys`: key id → JSON [`ApiKeyRecord`]
//! - `api_key_hashes`: key hash → key id (the unique index behind `put_api_key`'s `Conflict`)
//! - `api_key_last_used`: key id → Unix seconds
//! - `accounts`: account id → JSON [`AccountRecord`]
//! - `usage`: encoded [`BucketKey`] → varint counters (see [`encode_bucket_key`])
//! - `usage_expiry`: expiry ‖ encoded bucket key → () (what `purge_expired_usage` scans)
//! - `admin_sessions`: token hash → JSON [`AdminSession`]
//! - `admin_users`: user name → JSON [`AdminUser`]
//! - `settings`: `panel` → JSON [`PanelSettings`]
//! - `client_sessions`: key id length (4, BE) ‖ key id ‖ session id → JSON of the session's usage
//!   (see [`StoredSession`])
//! - `client_session_index`: key id length ‖ key id ‖ last seen (8, sortable) ‖ session id → ()
//!   (a key's sessions in the order they were last seen: what listing, the per-key cap and the
//!   retention read)
//! - `log_requests`, `log_audit`: record id (`{at_ms:013}-{seq:010}`) → JSON of the record (see
//!   [`super::log`])
//! - `meta`: `schema_version` → 1

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Deserialize;
use tokio::sync::broadcast;

use super::client_sessions::{counter_fields, counters_from_fields, page_order};
use super::{
    AccountRecord, AdminSession, AdminUser, AgentUsage, ApiKeyRecord, BucketKey, Dimension, Granularity, LogKind,
    LogRecord, PanelSettings, SessionBounds, SessionCursor, SessionPage, SessionUsage, Store, StoreError, StoreResult,
    UsageCounters, log,
};

/// The file name inside the data directory.
pub const FILE_NAME: &str = "relay.redb";
/// redb's page cache. Its default (1 GiB) let the relay's memory grow by about a kilobyte per
/// request-log record until the cache was full; the hot data (keys, accounts, this hour's usage
/// buckets, the newest log pages) is a few megabytes.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const KEYS: TableDefinition<&str, &str> = TableDefinition::new("api_keys");
const KEY_HASHES: TableDefinition<&str, &str> = TableDefinition::new("api_key_hashes");
const KEY_LAST_USED: TableDefinition<&str, i64> = TableDefinition::new("api_key_last_used");
const ACCOUNTS: TableDefinition<&str, &str> = TableDefinition::new("accounts");
const USAGE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("usage");
const USAGE_EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("usage_expiry");
const SESSIONS: TableDefinition<&str, &str> = TableDefinition::new("admin_sessions");
const ADMIN_USERS: TableDefinition<&str, &str> = TableDefinition::new("admin_users");
const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");
const CLIENT_SESSIONS: TableDefinition<&[u8], &str> = TableDefinition::new("client_sessions");
const CLIENT_SESSION_INDEX: TableDefinition<&[u8], ()> = TableDefinition::new("client_session_index");

/// Change notifications kept for a slow receiver before it sees `Lagged` (it then simply reloads).
const CHANGE_CHANNEL_CAPACITY: usize = 64;

/// The embedded backend. Cheap to share behind an `Arc<dyn Store>`.
pub struct EmbeddedStore {
    /// `None` once [`EmbeddedStore::close`] released the file.
    db: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    changes: broadcast::Sender<()>,
    /// The sequence part of the next log record id.
    log_seq: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) `dir/relay.redb`. Blocking: call it at start-up, not on the hot
    /// path. Fails with `Unavailable` if another process holds the file.
    pub fn open(dir: &Path) -> StoreResult<Self> {
        Self::try_open(dir)?.ok_or_else(|| {
            StoreError::Unavailable(format!(
                "{} is already open in another process",
                dir.join(FILE_NAME).display()
            ))
        })
    }

    /// Like [`EmbeddedStore::open`], but while another process holds the file, tries again every
    /// 50 ms for up to `wait`. A zero-downtime upgrade needs this: the old process releases the
    /// file ([`EmbeddedStore::close`]) only after it has handed its listening sockets over.
    pub fn open_waiting(dir: &Path, wait: Duration) -> StoreResult<Self> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(store) = Self::try_open(dir)? {
                return Ok(store);
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "{} is still open in another process after {} s",
                    dir.join(FILE_NAME).display(),
                    wait.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `Ok(None)` when another process holds the file.
    fn try_open(dir: &Path) -> StoreResult<Option<Self>> {
        crate::private_fs::create_dir(dir)
            .map_err(|e| StoreError::Unavailable(format!("cannot create data directory {}: {e}", dir.display())))?;
        let path = dir.join(FILE_NAME);
        // Created 0600 here (redb would follow the umask); an older, wider file is narrowed.
        crate::private_fs::open_file(&path, false).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {} for the owner only: {e}", path.display()))
        })?;
        let db = match Database::builder().set_cache_size(CACHE_BYTES).create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Ok(None),
            Err(other) => return Err(db_err_at(&path, other)),
        };
        init_schema(&db).map_err(|e| match e {
            StoreError::Unavailable(m) => StoreError::Unavailable(format!("{}: {m}", path.display())),
            other => other,
        })?;
        let (changes, _) = broadcast::channel(CHANGE_CHANNEL_CAPACITY);
        Ok(Some(EmbeddedStore {
            db: RwLock::new(Some(Arc::new(db))),
            path,
            changes,
            log_seq: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }))
    }

    /// Releases the database file so that another process can open it: the old process of a
    /// zero-downtime upgrade calls this once its statistics are written. Waits (up to `wait`)
    /// for transactions still running; every later call fails with `Unavailable`.
    pub async fn close(&self, wait: Duration) -> StoreResult<()> {
        let taken = self.db.write().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut db) = taken else {
            return Ok(());
        };
        let deadline = Instant::now() + wait;
        loop {
            match Arc::try_unwrap(db) {
                // Dropping the database writes its last page and unlocks the file: blocking work.
                Ok(database) => {
                    return tokio::task::spawn_blocking(move || drop(database))
                        .await
                        .map_err(|e| StoreError::Unavailable(format!("closing the embedded store failed: {e}")));
                }
                Err(shared) if Instant::now() < deadline => {
                    db = shared;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                // The last running transaction releases the file when it ends.
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "{}: transactions still running after {} s; the file is released when they end",
                        self.path.display(),
                        wait.as_secs()
                    )));
                }
            }
        }
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs one transaction on the blocking pool.
    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> StoreResult<T> + Send + 'static,
    {
        let db = self
            .db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Unavailable(format!("{} was closed (handed over)", self.path.display())))?;
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Unavailable(format!("embedded store task failed: {e}")))?
    }
}

/// Creates every table so that read transactions can open them, and records the schema version.
fn init_schema(db: &Database) -> StoreResult<()> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        let version = meta.get("schema_version").map_err(db_err)?.map(|g| g.value());
        match version {
            None => {
                meta.insert("schema_version", SCHEMA_VERSION).map_err(db_err)?;
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::Corrupt(format!(
                    "the store was written by a newer relay (schema {v}, this relay knows {SCHEMA_VERSION})"
                )));
            }
            Some(_) => {}
        }
        txn.open_table(KEYS).map_err(db_err)?;
        txn.open_table(KEY_HASHES).map_err(db_err)?;
        txn.open_table(KEY_LAST_USED).map_err(db_err)?;
        txn.open_table(ACCOUNTS).map_err(db_err)?;
        txn.open_table(USAGE).map_err(db_err)?;
        txn.open_table(USAGE_EXPIRY).map_err(db_err)?;
        txn.open_table(SESSIONS).map_err(db_err)?;
        txn.open_table(ADMIN_USERS).map_err(db_err)?;
        txn.open_table(SETTINGS).map_err(db_err)?;
        txn.open_table(CLIENT_SESSIONS).map_err(db_err)?;
        txn.open_table(CLIENT_SESSION_INDEX).map_err(db_err)?;
        log::embedded_init(&txn)?;
    }
    txn.commit().map_err(db_err)
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(m) => StoreError::Corrupt(m),
        other => StoreError::Unavailable(format!("embedded store: {other}")),
    }
}

fn db_err_at(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    match db_err(e) {
        StoreError::Unavailable(m) => StoreError::Unavailable(format!("{}: {m}", path.display())),
        other => other,
    }
}

fn to_json<T: serde::Serialize>(what: &str, v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(format!("cannot encode {what}: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, id: &str, s: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what} {id:?}: {e}")))
}

/// Just the field `put_api_key` and `delete_api_key` need from the previous record; lenient so a
/// damaged record can still be replaced.
#[derive(Deserialize)]
struct KeyHashOnly {
    key_hash: String,
}

fn old_key_hash(json: &str) -> Option<String> {
    serde_json::from_str::<KeyHashOnly>(json).ok().map(|k| k.key_hash)
}

/// Decodes every value of a JSON table. A record this relay cannot read (for example one written
/// by a newer relay with a kind it does not know) is skipped with a warning, so that one record
/// does not take every other one down with it.
fn list_json<T: serde::de::DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&str, &str>,
    what: &str,
) -> StoreResult<Vec<T>> {
    let txn = db.begin_read().map_err(db_err)?;
    let t = txn.open_table(table).map_err(db_err)?;
    let mut out = Vec::new();
    for row in t.iter().map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        match serde_json::from_str(v.value()) {
            Ok(rec) => out.push(rec),
            Err(e) => {
                tracing::warn!(id = k.value(), error = %e, "skipping unreadable {what} record")
            }
        }
    }
    Ok(out)
}

fn get_json<T: serde::de::DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&str, &str>,
    what: &str,
    id: &str,
) -> StoreResult<Option<T>> {
    let txn = db.begin_read().map_err(db_err)?;
    let t = txn.open_table(table).map_err(db_err)?;
    let got = t.get(id).map_err(db_err)?;
    match got {
        Some(g) => from_json(what, id, g.value()).map(Some),
        None => Ok(None),
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.run(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            txn.open_table(META).map_err(db_err)?;
            Ok(())
        })
        .await
    }

    // --- API keys ---

    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>> {
        // Table order is id order.
        self.run(|db| list_json(db, KEYS, "api key")).await
    }

    async fn get_api_key(&self, id: &str) -> StoreResult<Option<ApiKeyRecord>> {
        let id = id.to_owned();
        self.run(move |db| get_json(db, KEYS, "api key", &id)).await
    }

    async fn put_api_key(&self, key: &ApiKeyRecord) -> StoreResult<()> {
        let json = to_json("api key", key)?;
        let id = key.id.clone();
        let hash = key.key_hash.clone();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut keys = txn.open_table(KEYS).map_err(db_err)?;
                let mut hashes = txn.open_table(KEY_HASHES).map_err(db_err)?;
                let owner = hashes.get(hash.as_str()).map_err(db_err)?.map(|g| g.value().to_owned());
                if let Some(owner) = owner {
                    // An index entry whose key is gone is stale, not a conflict.
                    if owner != id && keys.get(owner.as_str()).map_err(db_err)?.is_some() {
                        return Err(StoreError::Conflict(format!(
                            "api key {owner:?} already has this key hash"
                        )));
                    }
                }
                let previous = keys
                    .get(id.as_str())
                    .map_err(db_err)?
                    .and_then(|g| old_key_hash(g.value()));
                if let Some(old_hash) = previous.filter(|h| *h != hash) {
                    let points_here = hashes
                        .get(old_hash.as_str())
                        .map_err(db_err)?
                        .is_some_and(|g| g.value() == id);
                    if points_here {
                        hashes.remove(old_hash.as_str()).map_err(db_err)?;
                    }
                }
                keys.insert(id.as_str(), json.as_str()).map_err(db_err)?;
                hashes.insert(hash.as_str(), id.as_str()).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn delete_api_key(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_owned();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let deleted = {
                let mut keys = txn.open_table(KEYS).map_err(db_err)?;
                let removed = keys.remove(id.as_str()).map_err(db_err)?.map(|g| g.value().to_owned());
                match removed {
                    None => false,
                    Some(json) => {
                        let mut hashes = txn.open_table(KEY_HASHES).map_err(db_err)?;
                        if let Some(hash) = old_key_hash(&json) {
                            let points_here = hashes
                                .get(hash.as_str())
                                .map_err(db_err)?
                                .is_some_and(|g| g.value() == id);
                            if points_here {
                                hashes.remove(hash.as_str()).map_err(db_err)?;
                            }
                        }
                        let mut last_used = txn.open_table(KEY_LAST_USED).map_err(db_err)?;
                        last_used.remove(id.as_str()).map_err(db_err)?;
                        true
                    }
                }
            };
            txn.commit().map_err(db_err)?;
            Ok(deleted)
        })
        .await
    }

    async fn touch_api_keys(&self, uses: &[(String, i64)]) -> StoreResult<()> {
        if uses.is_empty() {
            return Ok(());
        }
        let uses = uses.to_vec();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let keys = txn.open_table(KEYS).map_err(db_err)?;
                let mut last_used = txn.open_table(KEY_LAST_USED).map_err(db_err)?;
                for (id, at) in &uses {
                    // A use reported after the key was deleted must not bring back a stray entry.
                    if keys.get(id.as_str()).map_err(db_err)?.is_none() {
                        continue;
                    }
                    let current = last_used.get(id.as_str()).map_err(db_err)?.map(|g| g.value());
                    if current.is_none_or(|c| c < *at) {
                        last_used.insert(id.as_str(), *at).map_err(db_err)?;
                    }
                }
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn api_key_last_used(&self) -> StoreResult<BTreeMap<String, i64>> {
        self.run(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(KEY_LAST_USED).map_err(db_err)?;
            let mut out = BTreeMap::new();
            for row in t.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                out.insert(k.value().to_owned(), v.value());
            }
            Ok(out)
        })
        .await
    }

    // --- accounts ---

    async fn list_accounts(&self) -> StoreResult<Vec<AccountRecord>> {
        self.run(|db| list_json(db, ACCOUNTS, "account")).await
    }

    async fn get_account(&self, id: &str) -> StoreResult<Option<AccountRecord>> {
        let id = id.to_owned();
        self.run(move |db| get_json(db, ACCOUNTS, "account", &id)).await
    }

    async fn put_account(&self, account: &AccountRecord) -> StoreResult<()> {
        let json = to_json("account", account)?;
        let id = account.id.clone();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            txn.open_table(ACCOUNTS)
                .map_err(db_err)?
                .insert(id.as_str(), json.as_str())
                .map_err(db_err)?;
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn delete_account(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_owned();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let deleted = txn
                .open_table(ACCOUNTS)
                .map_err(db_err)?
                .remove(id.as_str())
                .map_err(db_err)?
                .is_some();
            txn.commit().map_err(db_err)?;
            Ok(deleted)
        })
        .await
    }

    // --- usage statistics ---

    async fn add_usage(&self, batch: &[(BucketKey, UsageCounters)]) -> StoreResult<()> {
        let merged = merge_usage_batch(batch, now_unix());
        if merged.is_empty() {
            return Ok(());
        }
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut usage = txn.open_table(USAGE).map_err(db_err)?;
                let mut expiry = txn.open_table(USAGE_EXPIRY).map_err(db_err)?;
                for (bk, add) in &merged {
                    let key = encode_bucket_key(bk.dimension, bk.granularity, &bk.subject, bk.start)?;
                    let current = usage
                        .get(key.as_slice())
                        .map_err(db_err)?
                        .map(|g| decode_counters(g.value()));
                    let mut counters = match current {
                        Some(c) => c?,
                        None => {
                            if let Some(exp) = bucket_expiry(bk.granularity, bk.start) {
                                expiry.insert(expiry_key(exp, &key).as_slice(), ()).map_err(db_err)?;
                            }
                            UsageCounters::default()
                        }
                    };
                    counters.add(add);
                    usage
                        .insert(key.as_slice(), encode_counters(&counters).as_slice())
                        .map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn usage_series(
        &self,
        dimension: Dimension,
        subject: &str,
        granularity: Granularity,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<(i64, UsageCounters)>> {
        // Same range rules (and the same cap) as the Redis backend, although a range scan would not
        // need the cap: callers should not see the backends differ.
        let starts = series_bucket_starts(granularity, from, to)?;
        let (Some(first), Some(last)) = (starts.first().copied(), starts.last().copied()) else {
            return Ok(Vec::new());
        };
        let lo = encode_bucket_key(dimension, granularity, subject, first)?;
        let hi = encode_bucket_key(dimension, granularity, subject, last)?;
        let now = now_unix();
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(USAGE).map_err(db_err)?;
            let mut out = Vec::new();
            for row in t.range(lo.as_slice()..=hi.as_slice()).map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let start = decode_bucket_key(k.value())?.start;
                // Expired but not yet purged: invisible, as it is in Redis.
                if bucket_expiry(granularity, start).is_some_and(|exp| exp < now) {
                    continue;
                }
                out.push((start, decode_counters(v.value())?));
            }
            Ok(out)
        })
        .await
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
        let (Some(first), Some(last)) = (starts.first().copied(), starts.last().copied()) else {
            return Ok(BTreeMap::new());
        };
        let mut ranges = Vec::with_capacity(subjects.len());
        for s in subjects {
            ranges.push((
                s.clone(),
                encode_bucket_key(dimension, granularity, s, first)?,
                encode_bucket_key(dimension, granularity, s, last)?,
            ));
        }
        let now = now_unix();
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(USAGE).map_err(db_err)?;
            let mut out = BTreeMap::new();
            for (subject, lo, hi) in ranges {
                for row in t.range(lo.as_slice()..=hi.as_slice()).map_err(db_err)? {
                    let (k, v) = row.map_err(db_err)?;
                    let start = decode_bucket_key(k.value())?.start;
                    if bucket_expiry(granularity, start).is_some_and(|exp| exp < now) {
                        continue;
                    }
                    out.entry(subject.clone())
                        .or_insert_with(Vec::new)
                        .push((start, decode_counters(v.value())?));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn usage_totals(&self, dimension: Dimension) -> StoreResult<BTreeMap<String, UsageCounters>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(USAGE).map_err(db_err)?;
            let lo = [dimension_code(dimension), granularity_code(Granularity::Total)];
            let hi = [dimension_code(dimension), granularity_code(Granularity::Total) + 1];
            let mut out = BTreeMap::new();
            for row in t.range(lo.as_slice()..hi.as_slice()).map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let bk = decode_bucket_key(k.value())?;
                out.entry(bk.subject)
                    .or_insert_with(UsageCounters::default)
                    .add(&decode_counters(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn dump_usage(&self) -> StoreResult<Vec<(BucketKey, UsageCounters)>> {
        let now = now_unix();
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(USAGE).map_err(db_err)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let bk = decode_bucket_key(k.value())?;
                // Expired but not yet purged: invisible, as it is in Redis.
                if bucket_expiry(bk.granularity, bk.start).is_some_and(|exp| exp < now) {
                    continue;
                }
                out.push((bk, decode_counters(v.value())?));
            }
            Ok(out)
        })
        .await
    }

    async fn clear_usage(&self) -> StoreResult<u64> {
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let mut deleted = 0u64;
            {
                let mut usage = txn.open_table(USAGE).map_err(db_err)?;
                usage
                    .retain(|_, _| {
                        deleted += 1;
                        false
                    })
                    .map_err(db_err)?;
                txn.open_table(USAGE_EXPIRY)
                    .map_err(db_err)?
                    .retain(|_, _| false)
                    .map_err(db_err)?;
                txn.open_table(CLIENT_SESSIONS)
                    .map_err(db_err)?
                    .retain(|_, _| false)
                    .map_err(db_err)?;
                txn.open_table(CLIENT_SESSION_INDEX)
                    .map_err(db_err)?
                    .retain(|_, _| false)
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)?;
            Ok(deleted)
        })
        .await
    }

    /// Deletes buckets whose end + retention lies before `now`. Also sweeps admin sessions that
    /// expired by `now` (they are not counted in the result).
    async fn purge_expired_usage(&self, now: i64) -> StoreResult<u64> {
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let purged = {
                let mut usage = txn.open_table(USAGE).map_err(db_err)?;
                let mut expiry = txn.open_table(USAGE_EXPIRY).map_err(db_err)?;
                let bound = sortable_i64(now);
                let mut expired = Vec::new();
                for row in expiry.range(..bound.as_slice()).map_err(db_err)? {
                    let (k, _) = row.map_err(db_err)?;
                    expired.push(k.value().to_vec());
                }
                let mut purged = 0u64;
                for k in &expired {
                    expiry.remove(k.as_slice()).map_err(db_err)?;
                    if let Some(bucket) = k.get(8..)
                        && usage.remove(bucket).map_err(db_err)?.is_some()
                    {
                        purged += 1;
                    }
                }

                let mut sessions = txn.open_table(SESSIONS).map_err(db_err)?;
                let mut stale = Vec::new();
                for row in sessions.iter().map_err(db_err)? {
                    let (k, v) = row.map_err(db_err)?;
                    match serde_json::from_str::<AdminSession>(v.value()) {
                        Ok(s) if s.expires_at > now => {}
                        _ => stale.push(k.value().to_owned()),
                    }
                }
                for k in &stale {
                    sessions.remove(k.as_str()).map_err(db_err)?;
                }
                purged
            };
            txn.commit().map_err(db_err)?;
            Ok(purged)
        })
        .await
    }

    // --- client sessions ---

    async fn add_session_usage(&self, batch: &[SessionUsage], bounds: SessionBounds, now: i64) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let batch = batch.to_vec();
        self.run(move |db| {
            let cutoff = now.saturating_sub(bounds.retention_secs);
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut records = txn.open_table(CLIENT_SESSIONS).map_err(db_err)?;
                let mut index = txn.open_table(CLIENT_SESSION_INDEX).map_err(db_err)?;
                let mut touched = std::collections::BTreeSet::new();
                for delta in &batch {
                    let rk = session_record_key(&delta.key_id, &delta.session_id)?;
                    let stored = records
                        .get(rk.as_slice())
                        .map_err(db_err)?
                        .map(|g| decode_session(&delta.key_id, &delta.session_id, g.value()));
                    let (mut session, old_last) = match stored {
                        Some(s) => {
                            let s = s?;
                            let last = s.last_seen;
                            // A session past its retention is gone, as a Redis TTL would have it.
                            if last < cutoff {
                                (
                                    SessionUsage::new(&delta.key_id, &delta.session_id, delta.first_seen),
                                    Some(last),
                                )
                            } else {
                                (s, Some(last))
                            }
                        }
                        None => (
                            SessionUsage::new(&delta.key_id, &delta.session_id, delta.first_seen),
                            None,
                        ),
                    };
                    session.merge(delta);
                    records
                        .insert(rk.as_slice(), encode_session(&session)?.as_str())
                        .map_err(db_err)?;
                    if old_last != Some(session.last_seen) {
                        if let Some(old) = old_last {
                            index
                                .remove(session_index_key(&delta.key_id, old, &delta.session_id)?.as_slice())
                                .map_err(db_err)?;
                        }
                        index
                            .insert(
                                session_index_key(&delta.key_id, session.last_seen, &delta.session_id)?.as_slice(),
                                (),
                            )
                            .map_err(db_err)?;
                    }
                    touched.insert(delta.key_id.clone());
                }
                for key_id in &touched {
                    // Oldest first: what retention and the cap remove.
                    let (lo, hi) = session_index_range(key_id)?;
                    let mut entries = Vec::new();
                    for row in index.range(lo.as_slice()..hi.as_slice()).map_err(db_err)? {
                        let (k, _) = row.map_err(db_err)?;
                        let (_, last, session_id) = decode_session_index_key(k.value())?;
                        entries.push((last, session_id, k.value().to_vec()));
                    }
                    let live = entries.iter().filter(|(last, ..)| *last >= cutoff).count();
                    let mut over = live.saturating_sub(bounds.per_key.max(1));
                    for (last, session_id, ik) in &entries {
                        let drop_it = if *last < cutoff {
                            true
                        } else if over > 0 {
                            over -= 1;
                            true
                        } else {
                            false
                        };
                        if drop_it {
                            index.remove(ik.as_slice()).map_err(db_err)?;
                            records
                                .remove(session_record_key(key_id, session_id)?.as_slice())
                                .map_err(db_err)?;
                        }
                    }
                }
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn recent_sessions(
        &self,
        key_id: &str,
        since: i64,
        cursor: Option<&SessionCursor>,
        limit: usize,
    ) -> StoreResult<SessionPage> {
        let key_id = key_id.to_owned();
        let cursor = cursor.cloned();
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let index = txn.open_table(CLIENT_SESSION_INDEX).map_err(db_err)?;
            let records = txn.open_table(CLIENT_SESSIONS).map_err(db_err)?;
            let (lo, hi) = session_index_range(&key_id)?;
            let mut entries = Vec::new();
            for row in index.range(lo.as_slice()..hi.as_slice()).map_err(db_err)? {
                let (k, _) = row.map_err(db_err)?;
                let (_, last, session_id) = decode_session_index_key(k.value())?;
                if last >= since {
                    entries.push((last, session_id));
                }
            }
            let (page, more) = page_order(entries, cursor.as_ref(), limit);
            let mut sessions = Vec::with_capacity(page.len());
            for (_, session_id) in &page {
                let rk = session_record_key(&key_id, session_id)?;
                if let Some(g) = records.get(rk.as_slice()).map_err(db_err)? {
                    sessions.push(decode_session(&key_id, session_id, g.value())?);
                }
            }
            let next = if more {
                sessions.last().map(SessionCursor::of)
            } else {
                None
            };
            Ok(SessionPage { sessions, next })
        })
        .await
    }

    async fn session_usage(&self, key_id: &str, session_id: &str, since: i64) -> StoreResult<Option<SessionUsage>> {
        let rk = session_record_key(key_id, session_id)?;
        let (key_id, session_id) = (key_id.to_owned(), session_id.to_owned());
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let records = txn.open_table(CLIENT_SESSIONS).map_err(db_err)?;
            let got = records.get(rk.as_slice()).map_err(db_err)?;
            match got {
                Some(g) => Ok(Some(decode_session(&key_id, &session_id, g.value())?).filter(|s| s.last_seen >= since)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn purge_sessions(&self, before: i64) -> StoreResult<u64> {
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let purged = {
                let mut records = txn.open_table(CLIENT_SESSIONS).map_err(db_err)?;
                let mut index = txn.open_table(CLIENT_SESSION_INDEX).map_err(db_err)?;
                let mut stale = Vec::new();
                for row in index.iter().map_err(db_err)? {
                    let (k, _) = row.map_err(db_err)?;
                    let (key_id, last, session_id) = decode_session_index_key(k.value())?;
                    if last < before {
                        stale.push((k.value().to_vec(), key_id, session_id));
                    }
                }
                for (ik, key_id, session_id) in &stale {
                    index.remove(ik.as_slice()).map_err(db_err)?;
                    records
                        .remove(session_record_key(key_id, session_id)?.as_slice())
                        .map_err(db_err)?;
                }
                stale.len() as u64
            };
            txn.commit().map_err(db_err)?;
            Ok(purged)
        })
        .await
    }

    // --- admin sessions ---

    async fn put_session(&self, token_hash: &str, session: &AdminSession) -> StoreResult<()> {
        let json = to_json("session", session)?;
        let hash = token_hash.to_owned();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            txn.open_table(SESSIONS)
                .map_err(db_err)?
                .insert(hash.as_str(), json.as_str())
                .map_err(db_err)?;
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn get_session(&self, token_hash: &str, now: i64) -> StoreResult<Option<AdminSession>> {
        let hash = token_hash.to_owned();
        self.run(move |db| {
            let found: Option<AdminSession> = get_json(db, SESSIONS, "session", &hash)?;
            match found {
                Some(s) if s.expires_at > now => Ok(Some(s)),
                Some(_) => {
                    // Expired: remove it lazily, unless it was replaced in the meantime.
                    let txn = db.begin_write().map_err(db_err)?;
                    {
                        let mut t = txn.open_table(SESSIONS).map_err(db_err)?;
                        let still_expired = t
                            .get(hash.as_str())
                            .map_err(db_err)?
                            .map(|g| serde_json::from_str::<AdminSession>(g.value()).map(|s| s.expires_at <= now))
                            .is_some_and(|r| r.unwrap_or(true));
                        if still_expired {
                            t.remove(hash.as_str()).map_err(db_err)?;
                        }
                    }
                    txn.commit().map_err(db_err)?;
                    Ok(None)
                }
                None => Ok(None),
            }
        })
        .await
    }

    async fn delete_session(&self, token_hash: &str) -> StoreResult<()> {
        let hash = token_hash.to_owned();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            txn.open_table(SESSIONS)
                .map_err(db_err)?
                .remove(hash.as_str())
                .map_err(db_err)?;
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn list_sessions(&self, now: i64) -> StoreResult<Vec<(String, AdminSession)>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(SESSIONS).map_err(db_err)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                match serde_json::from_str::<AdminSession>(v.value()) {
                    Ok(s) if s.expires_at > now => out.push((k.value().to_string(), s)),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "skipping an unreadable admin session"),
                }
            }
            Ok(out)
        })
        .await
    }

    // --- panel settings ---

    async fn get_settings(&self) -> StoreResult<PanelSettings> {
        self.run(|db| get_json(db, SETTINGS, "settings", "panel"))
            .await
            .map(Option::unwrap_or_default)
    }

    async fn put_settings(&self, settings: &PanelSettings) -> StoreResult<()> {
        let json = to_json("settings", settings)?;
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            txn.open_table(SETTINGS)
                .map_err(db_err)?
                .insert("panel", json.as_str())
                .map_err(db_err)?;
            txn.commit().map_err(db_err)
        })
        .await
    }

    // --- admin users ---

    async fn list_admin_users(&self) -> StoreResult<Vec<AdminUser>> {
        self.run(|db| list_json(db, ADMIN_USERS, "admin user")).await
    }

    async fn get_admin_user(&self, username: &str) -> StoreResult<Option<AdminUser>> {
        let name = username.to_owned();
        self.run(move |db| get_json(db, ADMIN_USERS, "admin user", &name)).await
    }

    async fn put_admin_user(&self, user: &AdminUser) -> StoreResult<()> {
        let json = to_json("admin user", user)?;
        let name = user.username.clone();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            txn.open_table(ADMIN_USERS)
                .map_err(db_err)?
                .insert(name.as_str(), json.as_str())
                .map_err(db_err)?;
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn delete_admin_user(&self, username: &str) -> StoreResult<bool> {
        let name = username.to_owned();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let removed = txn
                .open_table(ADMIN_USERS)
                .map_err(db_err)?
                .remove(name.as_str())
                .map_err(db_err)?
                .is_some();
            txn.commit().map_err(db_err)?;
            Ok(removed)
        })
        .await
    }

    // --- bounded logs ---

    async fn append_log(&self, kind: LogKind, records: &[(i64, String)]) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let records = records.to_vec();
        let seq = self.log_seq.clone();
        self.run(move |db| log::embedded_append(db, kind, &records, &seq)).await
    }

    async fn read_log(&self, kind: LogKind, before: Option<&str>, limit: usize) -> StoreResult<Vec<LogRecord>> {
        let before = before.map(str::to_owned);
        self.run(move |db| log::embedded_read(db, kind, before.as_deref(), limit))
            .await
    }

    async fn get_log(&self, kind: LogKind, id: &str) -> StoreResult<Option<LogRecord>> {
        let id = id.to_owned();
        self.run(move |db| log::embedded_get(db, kind, &id)).await
    }

    async fn trim_log(&self, kind: LogKind, min_at_ms: i64, max_records: u64) -> StoreResult<u64> {
        self.run(move |db| log::embedded_trim(db, kind, min_at_ms, max_records))
            .await
    }

    // --- change notification ---

    async fn publish_change(&self) -> StoreResult<()> {
        // No receiver is not an error: nobody needs to reload.
        let _ = self.changes.send(());
        Ok(())
    }

    fn subscribe_changes(&self) -> broadcast::Receiver<()> {
        self.changes.subscribe()
    }
}

// --- helpers shared with the Redis backend ---
//
// They describe bucket arithmetic rather than anything redb-specific; they live here because the
// store module's own file belongs to the trait.

/// The most buckets one `usage_series` call may span.
pub(crate) const MAX_SERIES_BUCKETS: usize = 2_000;

/// Timestamps are clamped to ±2^40 s (±34,000 years) so bucket arithmetic cannot overflow.
const TS_LIMIT: i64 = 1 << 40;

pub(crate) fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The instant after which a bucket is gone: its end plus its granularity's retention (`None` for
/// buckets kept forever).
pub(crate) fn bucket_expiry(granularity: Granularity, start: i64) -> Option<i64> {
    let retention = i64::try_from(granularity.retention()?.as_secs()).unwrap_or(i64::MAX);
    Some(granularity.next_bucket(start).saturating_add(retention))
}

/// The starts of the buckets of `granularity` that lie in `[from, to)`, ascending. Errors when the
/// range spans more than [`MAX_SERIES_BUCKETS`] buckets.
pub(crate) fn series_bucket_starts(granularity: Granularity, from: i64, to: i64) -> StoreResult<Vec<i64>> {
    let from = from.clamp(-TS_LIMIT, TS_LIMIT);
    let to = to.clamp(-TS_LIMIT, TS_LIMIT.saturating_add(1));
    let mut out = Vec::new();
    if from >= to {
        return Ok(out);
    }
    let mut start = granularity.bucket_start(from);
    if start < from {
        start = granularity.next_bucket(start);
    }
    while start < to {
        if out.len() == MAX_SERIES_BUCKETS {
            // No variant of StoreError names a caller mistake; Conflict is the closest (a 4xx).
            return Err(StoreError::Conflict(format!(
                "usage range too large: more than {MAX_SERIES_BUCKETS} {} buckets; narrow the range or use a coarser granularity",
                granularity.as_str()
            )));
        }
        out.push(start);
        let next = granularity.next_bucket(start);
        if next <= start {
            break;
        }
        start = next;
    }
    Ok(out)
}

/// Sums a batch by bucket (a batch may name one bucket twice), aligns starts to their bucket, and
/// drops empty counters and buckets that are already expired at `now` (Redis would delete them as
/// soon as their `EXPIREAT` lies in the past; both backends behave the same).
pub(crate) fn merge_usage_batch(batch: &[(BucketKey, UsageCounters)], now: i64) -> BTreeMap<BucketKey, UsageCounters> {
    let mut merged: BTreeMap<BucketKey, UsageCounters> = BTreeMap::new();
    for (bk, c) in batch {
        if c.is_zero() {
            continue;
        }
        let start = bk.granularity.bucket_start(bk.start.clamp(-TS_LIMIT, TS_LIMIT));
        if bucket_expiry(bk.granularity, start).is_some_and(|exp| exp < now) {
            continue;
        }
        let key = BucketKey { start, ..bk.clone() };
        merged.entry(key).or_default().add(c);
    }
    merged
}

// --- encodings ---

fn dimension_code(d: Dimension) -> u8 {
    match d {
        Dimension::Key => 0,
        Dimension::Account => 1,
        Dimension::Model => 2,
        Dimension::KeyModel => 3,
    }
}

fn dimension_from_code(c: u8) -> Option<Dimension> {
    Dimension::STORED.into_iter().find(|d| dimension_code(*d) == c)
}

fn granularity_code(g: Granularity) -> u8 {
    match g {
        Granularity::Minute => 0,
        Granularity::Hour => 1,
        Granularity::Day => 2,
        Granularity::Month => 3,
        Granularity::Total => 4,
    }
}

fn granularity_from_code(c: u8) -> Option<Granularity> {
    Granularity::ALL.into_iter().find(|g| granularity_code(*g) == c)
}

/// Big-endian with the sign bit flipped: byte order equals numeric order.
fn sortable_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

fn from_sortable_i64(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// `dimension(1) ‖ granularity(1) ‖ subject length(4, BE) ‖ subject ‖ start(8, sortable)`.
///
/// The length prefix keeps subjects unambiguous whatever bytes they contain, and the series of one
/// (dimension, granularity, subject) is a contiguous range ordered by start; all `Total` buckets of
/// a dimension are the contiguous range under the two-byte prefix.
fn encode_bucket_key(d: Dimension, g: Granularity, subject: &str, start: i64) -> StoreResult<Vec<u8>> {
    let len = u32::try_from(subject.len())
        .map_err(|_| StoreError::Conflict("usage subject is longer than 4 GiB".to_string()))?;
    let mut k = Vec::with_capacity(14 + subject.len());
    k.push(dimension_code(d));
    k.push(granularity_code(g));
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(subject.as_bytes());
    k.extend_from_slice(&sortable_i64(start));
    Ok(k)
}

fn decode_bucket_key(k: &[u8]) -> StoreResult<BucketKey> {
    let bad = || StoreError::Corrupt("malformed usage bucket key".to_string());
    let (&[d, g], rest) = k.split_first_chunk::<2>().ok_or_else(bad)?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
    let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| bad())?;
    let subject = rest.get(..len).ok_or_else(bad)?;
    let start: [u8; 8] = rest.get(len..).and_then(|s| s.try_into().ok()).ok_or_else(bad)?;
    Ok(BucketKey {
        dimension: dimension_from_code(d).ok_or_else(bad)?,
        subject: String::from_utf8(subject.to_vec()).map_err(|_| bad())?,
        granularity: granularity_from_code(g).ok_or_else(bad)?,
        start: from_sortable_i64(start),
    })
}

fn expiry_key(expiry: i64, bucket_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + bucket_key.len());
    k.extend_from_slice(&sortable_i64(expiry));
    k.extend_from_slice(bucket_key);
    k
}

/// The counters as LEB128 varints in [`UsageCounters::fields`] order: most are small, so a bucket
/// takes a dozen bytes instead of 72. A shorter value (from an older relay) reads as zeros for the
/// missing fields; extra trailing values (from a newer one) are ignored.
fn encode_counters(c: &UsageCounters) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    for (_, mut v) in c.fields() {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    out
}

fn decode_counters(b: &[u8]) -> StoreResult<UsageCounters> {
    let mut c = UsageCounters::default();
    let mut pos = 0;
    for (name, _) in UsageCounters::default().fields() {
        if pos >= b.len() {
            break;
        }
        let mut v: u64 = 0;
        let mut shift = 0u32;
        loop {
            let byte = *b
                .get(pos)
                .ok_or_else(|| StoreError::Corrupt("truncated usage counters".to_string()))?;
            pos += 1;
            if shift >= 64 {
                return Err(StoreError::Corrupt("usage counter overflows 64 bits".to_string()));
            }
            v |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        c.set_field(name, v);
    }
    Ok(c)
}

// --- client session encodings ---

/// A client session as stored: counters as `field → value` maps, so records stay readable when
/// [`UsageCounters`] gains or loses a field.
#[derive(serde::Serialize, Deserialize)]
struct StoredSession {
    first: i64,
    last: i64,
    #[serde(default)]
    models: BTreeMap<String, BTreeMap<String, u64>>,
    #[serde(default)]
    main: BTreeMap<String, u64>,
    #[serde(default)]
    agents: BTreeMap<String, StoredAgent>,
    #[serde(default)]
    other_agents: BTreeMap<String, u64>,
}

#[derive(serde::Serialize, Deserialize)]
struct StoredAgent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent: Option<String>,
    first: i64,
    last: i64,
    #[serde(default)]
    usage: BTreeMap<String, u64>,
}

fn encode_session(s: &SessionUsage) -> StoreResult<String> {
    let stored = StoredSession {
        first: s.first_seen,
        last: s.last_seen,
        models: s.models.iter().map(|(m, c)| (m.clone(), counter_fields(c))).collect(),
        main: counter_fields(&s.main),
        agents: s
            .agents
            .iter()
            .map(|(id, a)| {
                (
                    id.clone(),
                    StoredAgent {
                        parent: a.parent.clone(),
                        first: a.first_seen,
                        last: a.last_seen,
                        usage: counter_fields(&a.usage),
                    },
                )
            })
            .collect(),
        other_agents: counter_fields(&s.other_agents),
    };
    to_json("client session", &stored)
}

fn decode_session(key_id: &str, session_id: &str, json: &str) -> StoreResult<SessionUsage> {
    let s: StoredSession = from_json("client session", session_id, json)?;
    Ok(SessionUsage {
        key_id: key_id.to_string(),
        session_id: session_id.to_string(),
        first_seen: s.first,
        last_seen: s.last,
        models: s
            .models
            .iter()
            .map(|(m, c)| (m.clone(), counters_from_fields(c)))
            .collect(),
        main: counters_from_fields(&s.main),
        agents: s
            .agents
            .into_iter()
            .map(|(id, a)| {
                let usage = counters_from_fields(&a.usage);
                (
                    id,
                    AgentUsage {
                        parent: a.parent,
                        first_seen: a.first,
                        last_seen: a.last,
                        usage,
                    },
                )
            })
            .collect(),
        other_agents: counters_from_fields(&s.other_agents),
    })
}

/// `key id length (4, BE) ‖ key id`: the start of every client-session row of a key.
fn session_key_prefix(key_id: &str) -> StoreResult<Vec<u8>> {
    let len = u32::try_from(key_id.len()).map_err(|_| StoreError::Conflict("key id is longer than 4 GiB".into()))?;
    let mut k = Vec::with_capacity(4 + key_id.len() + 8 + 40);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(key_id.as_bytes());
    Ok(k)
}

fn session_record_key(key_id: &str, session_id: &str) -> StoreResult<Vec<u8>> {
    let mut k = session_key_prefix(key_id)?;
    k.extend_from_slice(session_id.as_bytes());
    Ok(k)
}

fn session_index_key(key_id: &str, last_seen: i64, session_id: &str) -> StoreResult<Vec<u8>> {
    let mut k = session_key_prefix(key_id)?;
    k.extend_from_slice(&sortable_i64(last_seen));
    k.extend_from_slice(session_id.as_bytes());
    Ok(k)
}

/// The index rows of one key: `[prefix, prefix ‖ FF×9)` (session ids are visible ASCII).
fn session_index_range(key_id: &str) -> StoreResult<(Vec<u8>, Vec<u8>)> {
    let lo = session_key_prefix(key_id)?;
    let mut hi = lo.clone();
    hi.extend_from_slice(&[0xFF; 9]);
    Ok((lo, hi))
}

fn decode_session_index_key(k: &[u8]) -> StoreResult<(String, i64, String)> {
    let bad = || StoreError::Corrupt("malformed client session index key".to_string());
    let (len, rest) = k.split_first_chunk::<4>().ok_or_else(bad)?;
    let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| bad())?;
    let key_id = rest.get(..len).ok_or_else(bad)?;
    let rest = rest.get(len..).ok_or_else(bad)?;
    let (last, session_id) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
    Ok((
        String::from_utf8(key_id.to_vec()).map_err(|_| bad())?,
        from_sortable_i64(*last),
        String::from_utf8(session_id.to_vec()).map_err(|_| bad())?,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_compactly() {
        let mut c = UsageCounters {
            requests: 3,
            input_tokens: 1_234_567,
            cost_nanos: u64::MAX,
            ..Default::default()
        };
        let enc = encode_counters(&c);
        assert!(enc.len() < 30, "{} bytes", enc.len());
        assert_eq!(decode_counters(&enc).unwrap(), c);
        assert_eq!(decode_counters(&[]).unwrap(), UsageCounters::default());
        // A value from an older relay with fewer fields.
        c = UsageCounters {
            requests: 5,
            errors: 1,
            ..Default::default()
        };
        assert_eq!(decode_counters(&encode_counters(&c)[..2]).unwrap(), c);
        assert!(decode_counters(&[0x80]).is_err());
    }

    #[test]
    fn bucket_keys_sort_by_start_and_round_trip() {
        let a = encode_bucket_key(Dimension::Model, Granularity::Hour, "claude:opus", -3_600).unwrap();
        let b = encode_bucket_key(Dimension::Model, Granularity::Hour, "claude:opus", 0).unwrap();
        let c = encode_bucket_key(Dimension::Model, Granularity::Hour, "claude:opus", 3_600).unwrap();
        assert!(a < b && b < c);
        let other = encode_bucket_key(Dimension::Model, Granularity::Hour, "claude:opus:x", 0).unwrap();
        assert_ne!(b, other);
        let bk = decode_bucket_key(&c).unwrap();
        assert_eq!(bk.subject, "claude:opus");
        assert_eq!(bk.start, 3_600);
        assert_eq!(bk.granularity, Granularity::Hour);
        assert_eq!(bk.dimension, Dimension::Model);
        assert!(decode_bucket_key(&c[..c.len() - 1]).is_err());
    }

    #[test]
    fn series_starts_are_half_open_and_capped() {
        assert_eq!(
            series_bucket_starts(Granularity::Minute, 60, 180).unwrap(),
            vec![60, 120]
        );
        assert_eq!(
            series_bucket_starts(Granularity::Minute, 61, 181).unwrap(),
            vec![120, 180]
        );
        assert_eq!(series_bucket_starts(Granularity::Total, 0, 1).unwrap(), vec![0]);
        assert!(
            series_bucket_starts(Granularity::Total, 1, i64::MAX)
                .unwrap()
                .is_empty()
        );
        assert!(series_bucket_starts(Granularity::Minute, 10, 10).unwrap().is_empty());
        assert!(series_bucket_starts(Granularity::Minute, 0, 60 * 2_001).is_err());
        assert!(series_bucket_starts(Granularity::Day, i64::MIN, i64::MAX).is_err());
        // 2024-01-15 .. 2024-03-15: February and March start in range.
        let m = series_bucket_starts(Granularity::Month, 1_705_276_800, 1_710_460_800).unwrap();
        assert_eq!(m, vec![1_706_745_600, 1_709_251_200]);
    }

    #[tokio::test]
    async fn close_releases_the_file_for_another_opener() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.ping().await.unwrap();
        assert!(matches!(
            EmbeddedStore::open_waiting(dir.path(), Duration::from_millis(120)),
            Err(StoreError::Unavailable(_))
        ));
        store.close(Duration::from_secs(5)).await.unwrap();
        assert!(matches!(store.ping().await, Err(StoreError::Unavailable(_))));
        store.close(Duration::from_secs(5)).await.unwrap();
        let again = EmbeddedStore::open_waiting(dir.path(), Duration::from_secs(1)).unwrap();
        again.ping().await.unwrap();
    }

    #[tokio::test]
    async fn embedded_store_passes_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        super::super::contract::run_all(&store).await.unwrap();
    }
}
