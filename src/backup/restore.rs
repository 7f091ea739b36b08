//! Restoring a backup into a store.
//!
//! - Into an empty store (no stored keys, no stored accounts, no usage): everything, exactly.
//! - Into a store that holds any of those, [`ImportMode::Refuse`] (the default) changes nothing.
//! - [`ImportMode::Replace`] deletes every stored key and account and all usage statistics
//!   (with the client sessions' usage) first, then restores as into an empty store.
//! - [`ImportMode::Merge`] writes the backup's keys and accounts over those with the same id
//!   (others stay), and adds a usage bucket only where the store has none for it (so counts are
//!   never doubled). A key whose hash another stored key already has refuses the whole import.
//!
//! Admin users and the panel's settings are restored with the rest: `Replace` deletes the stored
//! users first; `Merge` writes the backup's users over those of the same name.
//!
//! Keys and accounts of `relay.yaml` are not in the store: no mode touches them. Everything is
//! checked and sealed again under this relay's `secret_key` before the first write.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use serde_json::Value;

use super::{Backup, BackupError};
use crate::secrets::Secrets;
use crate::store::{AccountRecord, AdminUser, ApiKeyRecord, BucketKey, PanelSettings, Store, UsageCounters};

/// What to do when the store is not empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImportMode {
    #[default]
    Refuse,
    Replace,
    Merge,
}

impl ImportMode {
    pub fn parse(s: &str) -> Option<ImportMode> {
        match s {
            "refuse" => Some(ImportMode::Refuse),
            "replace" => Some(ImportMode::Replace),
            "merge" => Some(ImportMode::Merge),
            _ => None,
        }
    }
}

/// What an import wrote.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImportSummary {
    pub keys: usize,
    pub accounts: usize,
    pub usage_buckets: usize,
    /// Buckets a merge left out because the store had them already.
    pub usage_buckets_kept: usize,
    /// Admin users written (created through the API; the configuration's admin is not in a
    /// backup).
    pub users: usize,
}

/// Restores `backup` into `store` (see the module documentation for `mode`). The caller
/// announces the change to the other instances.
pub async fn restore(
    store: &dyn Store,
    secrets: &Secrets,
    backup: Backup,
    mode: ImportMode,
) -> Result<ImportSummary, BackupError> {
    let own_hash_key = secrets.client_key_hash_key();
    let mut keys = Vec::with_capacity(backup.keys.len());
    for k in backup.keys {
        let mut record: ApiKeyRecord = serde_json::from_value(Value::Object(k.record))
            .map_err(|e| BackupError::Format(format!("a key record is malformed ({e})")))?;
        record.hash_key = (k.hash_key != own_hash_key).then(|| secrets.seal(&hex::encode(k.hash_key)));
        keys.push((record, k.last_used));
    }
    let mut accounts = Vec::with_capacity(backup.accounts.len());
    for a in backup.accounts {
        let mut record = a.record;
        record.insert("secret".into(), Value::String(secrets.seal(&a.secret).0));
        if let Some(p) = &a.proxy {
            record.insert("proxy".into(), Value::String(secrets.seal(p).0));
        }
        let id = record.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        let record: AccountRecord = serde_json::from_value(Value::Object(record))
            .map_err(|e| BackupError::Format(format!("account `{id}` is malformed ({e})")))?;
        accounts.push(record);
    }
    let usage: Vec<(BucketKey, UsageCounters)> = backup.usage.iter().map(|u| (u.bucket(), u.counters)).collect();
    let users: Vec<AdminUser> = match backup.users {
        Some(v) => {
            serde_json::from_value(v).map_err(|e| BackupError::Format(format!("the users are malformed ({e})")))?
        }
        None => Vec::new(),
    };
    let settings: Option<PanelSettings> = backup
        .settings
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| BackupError::Format(format!("the settings are malformed ({e})")))?;

    let existing_keys = store.list_api_keys().await?;
    let existing_accounts = store.list_accounts().await?;
    let existing_usage = store.dump_usage().await?;
    let empty = existing_keys.is_empty() && existing_accounts.is_empty() && existing_usage.is_empty();
    if !empty && mode == ImportMode::Refuse {
        return Err(BackupError::NotEmpty(format!(
            "{} keys, {} accounts, {} usage buckets",
            existing_keys.len(),
            existing_accounts.len(),
            existing_usage.len()
        )));
    }
    let mut kept = 0;
    let usage = match mode {
        ImportMode::Merge => {
            let by_hash: HashMap<&str, &str> = existing_keys
                .iter()
                .map(|k| (k.key_hash.as_str(), k.id.as_str()))
                .collect();
            for (k, _) in &keys {
                if let Some(other) = by_hash.get(k.key_hash.as_str()).filter(|id| **id != k.id) {
                    return Err(BackupError::Conflict(format!(
                        "the backup's key `{}` has the same hash as the stored key `{other}`; nothing was imported",
                        k.id
                    )));
                }
            }
            let have: BTreeSet<BucketKey> = existing_usage.into_iter().map(|(k, _)| k).collect();
            let (new, old): (Vec<_>, Vec<_>) = usage.into_iter().partition(|(k, _)| !have.contains(k));
            kept = old.len();
            new
        }
        ImportMode::Replace => {
            for k in &existing_keys {
                store.delete_api_key(&k.id).await?;
            }
            for a in &existing_accounts {
                store.delete_account(&a.id).await?;
            }
            store.clear_usage().await?;
            for u in store.list_admin_users().await? {
                store.delete_admin_user(&u.username).await?;
            }
            store.put_settings(&PanelSettings::default()).await?;
            usage
        }
        ImportMode::Refuse => usage,
    };

    for (k, _) in &keys {
        store.put_api_key(k).await?;
    }
    let used: Vec<(String, i64)> = keys.iter().filter_map(|(k, t)| t.map(|t| (k.id.clone(), t))).collect();
    if !used.is_empty() {
        store.touch_api_keys(&used).await?;
    }
    for a in &accounts {
        store.put_account(a).await?;
    }
    for chunk in usage.chunks(1000) {
        store.add_usage(chunk).await?;
    }
    for u in &users {
        store.put_admin_user(u).await?;
    }
    if let Some(s) = &settings {
        store.put_settings(s).await?;
    }
    Ok(ImportSummary {
        keys: keys.len(),
        accounts: accounts.len(),
        usage_buckets: usage.len(),
        usage_buckets_kept: kept,
        users: users.len(),
    })
}
