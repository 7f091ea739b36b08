//! Backups of the store and their restore: `claude-relay export` / `import`, the admin API's
//! `/admin/api/export` and `/admin/api/import`, and scheduled backups ([`schedule`]).
//!
//! A backup is one JSON document (see [`format`]): client keys as stored (hashes and policies),
//! accounts with their settings, groups, and every usage bucket, readable as they are; the
//! secrets (upstream credentials, outbound proxy URLs, the client-key hash key) sealed under a key
//! derived from a passphrase, with the whole document as associated data, so that a backup is
//! useless without the passphrase, any change to it is detected, and it restores on a relay with
//! another `secret_key`.

pub mod crypto;
pub mod format;
pub mod restore;
pub mod schedule;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::secrets::Secrets;
use crate::store::{AccountRecord, BucketKey, Dimension, Granularity, Store, StoreError, UsageCounters};

pub use restore::{ImportMode, ImportSummary, restore};

/// Why a backup could not be made or restored. Messages never hold secret material.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("wrong passphrase for this backup")]
    WrongPassphrase,
    #[error("the backup was altered or damaged: it does not authenticate under its passphrase")]
    Tampered,
    #[error("not a usable backup: {0}")]
    Format(String),
    #[error("{0}")]
    Passphrase(String),
    #[error(
        "the store is not empty ({0}); restore with `replace` (wipe keys, accounts and statistics first) or `merge` (add to what is there)"
    )]
    NotEmpty(String),
    #[error("{0}")]
    Conflict(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Secret(String),
}

/// A client key as the backup holds it: the stored record (without its sealed hash key) and the
/// client-key hash key its hash was made under.
pub struct BackupKey {
    /// The stored record as JSON, `hash_key` left out.
    pub record: Map<String, Value>,
    pub hash_key: [u8; 32],
    /// Unix seconds.
    pub last_used: Option<i64>,
}

/// An account as the backup holds it: the stored record without its sealed fields, and those in
/// plaintext.
pub struct BackupAccount {
    /// The stored record as JSON, `secret` and `proxy` left out.
    pub record: Map<String, Value>,
    pub secret: String,
    pub proxy: Option<String>,
}

/// A group: which stored accounts are in it and which stored keys are bound to it. Groups live in
/// the accounts' `group` and the keys' `bind: group:<name>`; this list only shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    pub name: String,
    pub accounts: Vec<String>,
    pub keys: Vec<String>,
}

/// One usage bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageEntry {
    pub dimension: Dimension,
    pub subject: String,
    pub granularity: Granularity,
    /// Bucket start, Unix seconds UTC (0 for `total`).
    pub start: i64,
    pub counters: UsageCounters,
}

/// What a backup holds, in the clear: what [`collect`] reads from a store and [`restore`] writes.
pub struct Backup {
    pub keys: Vec<BackupKey>,
    pub accounts: Vec<BackupAccount>,
    pub groups: Vec<GroupEntry>,
    pub usage: Vec<UsageEntry>,
    /// Admin users created through the API (their argon2 password hashes; absent when none).
    pub users: Option<Value>,
    /// The panel's settings (absent when none is set).
    pub settings: Option<Value>,
}

/// Reads everything a backup holds from `store`, opening sealed values with `secrets`. An account
/// whose secret does not open (sealed under another key) fails the export: the backup would lose
/// it.
pub async fn collect(store: &dyn Store, secrets: &Secrets) -> Result<Backup, BackupError> {
    let own_hash_key = secrets.client_key_hash_key();
    let last_used = store.api_key_last_used().await?;
    let mut keys = Vec::new();
    let mut groups: BTreeMap<String, GroupEntry> = BTreeMap::new();
    for k in store.list_api_keys().await? {
        let hash_key = match &k.hash_key {
            None => own_hash_key,
            Some(sealed) => {
                let mut hk = [0u8; 32];
                secrets
                    .open(sealed)
                    .ok()
                    .filter(|h| hex::decode_to_slice(h, &mut hk).is_ok())
                    .ok_or_else(|| BackupError::Secret(format!("key `{}`: its hash key cannot be opened", k.id)))?;
                hk
            }
        };
        if let Some(g) = k.bind.as_deref().and_then(|b| b.strip_prefix("group:")) {
            group_entry(&mut groups, g).keys.push(k.id.clone());
        }
        let mut record = match serde_json::to_value(&k) {
            Ok(Value::Object(m)) => m,
            _ => return Err(BackupError::Format(format!("key `{}` cannot be encoded", k.id))),
        };
        record.remove("hash_key");
        keys.push(BackupKey {
            last_used: last_used.get(&k.id).copied(),
            record,
            hash_key,
        });
    }
    let mut accounts = Vec::new();
    for a in store.list_accounts().await? {
        let open = |what: &str, s: &crate::secrets::Sealed| {
            secrets.open(s).map_err(|e| {
                BackupError::Secret(format!(
                    "account `{}`: its {what} cannot be opened with this relay's secret_key ({e})",
                    a.id
                ))
            })
        };
        let secret = open("credential", &a.secret)?;
        let proxy = a.proxy.as_ref().map(|p| open("proxy", p)).transpose()?;
        if let Some(g) = a.settings.get("group").and_then(Value::as_str) {
            group_entry(&mut groups, g).accounts.push(a.id.clone());
        }
        accounts.push(BackupAccount {
            record: account_without_secrets(&a)?,
            secret,
            proxy,
        });
    }
    let mut usage: Vec<UsageEntry> = store
        .dump_usage()
        .await?
        .into_iter()
        .map(|(k, counters)| UsageEntry {
            dimension: k.dimension,
            subject: k.subject,
            granularity: k.granularity,
            start: k.start,
            counters,
        })
        .collect();
    let mut admin_users = store.list_admin_users().await?;
    admin_users.sort_by(|a, b| a.username.cmp(&b.username));
    let settings = store.get_settings().await?;
    usage.sort_by(|a, b| {
        (a.dimension, &a.subject, a.granularity, a.start).cmp(&(b.dimension, &b.subject, b.granularity, b.start))
    });
    Ok(Backup {
        keys,
        accounts,
        groups: groups.into_values().collect(),
        usage,
        users: if admin_users.is_empty() {
            None
        } else {
            Some(to_section("users", &admin_users)?)
        },
        settings: if settings == crate::store::PanelSettings::default() {
            None
        } else {
            Some(to_section("settings", &settings)?)
        },
    })
}

fn to_section(what: &str, v: &impl Serialize) -> Result<Value, BackupError> {
    serde_json::to_value(v).map_err(|e| BackupError::Format(format!("{what} cannot be encoded ({e})")))
}

fn group_entry<'a>(groups: &'a mut BTreeMap<String, GroupEntry>, name: &str) -> &'a mut GroupEntry {
    groups.entry(name.to_string()).or_insert_with(|| GroupEntry {
        name: name.to_string(),
        accounts: Vec::new(),
        keys: Vec::new(),
    })
}

fn account_without_secrets(a: &AccountRecord) -> Result<Map<String, Value>, BackupError> {
    let mut record = match serde_json::to_value(a) {
        Ok(Value::Object(m)) => m,
        _ => return Err(BackupError::Format(format!("account `{}` cannot be encoded", a.id))),
    };
    record.remove("secret");
    record.remove("proxy");
    Ok(record)
}

impl UsageEntry {
    pub fn bucket(&self) -> BucketKey {
        BucketKey {
            dimension: self.dimension,
            subject: self.subject.clone(),
            granularity: self.granularity,
            start: self.start,
        }
    }
}

/// Makes the backup file of `store`: [`collect`], then [`format::seal`] off the async runtime.
pub async fn export(store: &dyn Store, secrets: &Secrets, passphrase: &str) -> Result<Vec<u8>, BackupError> {
    format::check_new_passphrase(passphrase)?;
    let backup = collect(store, secrets).await?;
    let backend = store.backend();
    let passphrase = passphrase.to_string();
    tokio::task::spawn_blocking(move || format::seal(&backup, &passphrase, backend))
        .await
        .map_err(|e| BackupError::Format(format!("sealing the backup failed: {e}")))?
}

/// Reads and authenticates a backup file off the async runtime (the key derivation is slow on
/// purpose).
pub async fn open(file: Vec<u8>, passphrase: &str) -> Result<Backup, BackupError> {
    let passphrase = passphrase.to_string();
    tokio::task::spawn_blocking(move || format::open(&file, &passphrase))
        .await
        .map_err(|e| BackupError::Format(format!("opening the backup failed: {e}")))?
}

/// The file name of a backup made at `at`: `claude-relay-backup-<UTC time>.json`.
pub fn file_name(at: chrono::DateTime<chrono::Utc>) -> String {
    format!("{}{}.json", schedule::FILE_PREFIX, at.format("%Y%m%dT%H%M%SZ"))
}

/// Opens the store `config` names, for the `export` and `import` commands: the embedded file
/// only while no relay holds it; Redis while relays run on it.
pub async fn open_store(config: &crate::config::Config) -> Result<std::sync::Arc<dyn Store>, String> {
    use crate::config::StoreBackend;
    match config.store.backend {
        StoreBackend::Embedded => {
            let dir = config.store.path.clone().unwrap_or_else(|| config.data_dir.clone());
            crate::private_fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let store = crate::store::embedded::EmbeddedStore::open(&dir).map_err(|e| {
                format!(
                    "cannot open the embedded store in {} ({e}); stop the relay first, or use the admin API (/admin/api/export, /admin/api/import)",
                    dir.display()
                )
            })?;
            Ok(std::sync::Arc::new(store))
        }
        StoreBackend::Redis => {
            let target = config.store.redis_target();
            let store = crate::store::redis::RedisStore::connect_target(
                &target,
                &config.store.prefix,
                &crate::lifecycle::Tasks::on_current_runtime(),
            )
            .await
            .map_err(|e| format!("cannot connect to Redis ({}): {e}", target.describe()))?;
            Ok(std::sync::Arc::new(store))
        }
    }
}
