//! The backup file, version 1: one JSON object.
//!
//! ```text
//! {
//!   "format": "claude-relay-backup", "version": 1,
//!   "created_at": "2026-01-02T03:04:05Z", "source_backend": "redis", "relay_version": "0.1.0",
//!   "kdf": {"algorithm": "argon2id", "m_cost", "t_cost", "p_cost", "salt"},
//!   "check": "<proves the passphrase>",
//!   "keys": [...], "accounts": [...], "groups": [...], "usage": [...],
//!   "users": ..., "settings": ...,          (optional sections, absent when empty)
//!   "sealed": "<AES-256-GCM of the secrets>"
//! }
//! ```
//!
//! `keys` are the stored key records (hash, policy, tags, ...) with `hash_key_index` (which of
//! the sealed client-key hash keys their hash was made under) and `last_used`; `accounts` are
//! the stored account records without `secret` and `proxy`; `usage` lists every bucket. `sealed`
//! holds, in the clear only for the passphrase, the client-key hash keys and each account's
//! credential and proxy URL. Its associated data is a SHA-256 over every other field, the sections
//! byte for byte as they are in the file: changing anything (even re-indenting a section) makes
//! the file fail to authenticate. A field this version does not know is refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::crypto::{Kdf, Keys, MIN_PASSPHRASE_CHARS};
use super::{Backup, BackupAccount, BackupError, BackupKey, GroupEntry, UsageEntry};

pub const FORMAT: &str = "claude-relay-backup";
pub const VERSION: u64 = 1;

/// The sections, in the order they enter the associated data.
const SECTIONS: [&str; 6] = ["keys", "accounts", "groups", "usage", "users", "settings"];

#[derive(Serialize)]
struct FileOut<'a> {
    format: &'static str,
    version: u64,
    created_at: &'a str,
    source_backend: &'a str,
    relay_version: &'a str,
    kdf: &'a Kdf,
    check: &'a str,
    keys: &'a RawValue,
    accounts: &'a RawValue,
    groups: &'a RawValue,
    usage: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    users: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    settings: Option<&'a RawValue>,
    sealed: &'a str,
}

/// Just enough to tell another file, or another version, from a readable backup.
#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    version: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIn<'a> {
    #[allow(dead_code)]
    format: String,
    #[allow(dead_code)]
    version: u64,
    created_at: String,
    source_backend: String,
    relay_version: String,
    kdf: Kdf,
    check: String,
    #[serde(borrow)]
    keys: &'a RawValue,
    #[serde(borrow)]
    accounts: &'a RawValue,
    #[serde(borrow)]
    groups: &'a RawValue,
    #[serde(borrow)]
    usage: &'a RawValue,
    /// Admin users created through the API (argon2 hashes).
    #[serde(default, borrow)]
    users: Option<&'a RawValue>,
    /// The panel's settings (display currency, public URL).
    #[serde(default, borrow)]
    settings: Option<&'a RawValue>,
    sealed: String,
}

/// What `sealed` holds.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sensitive {
    /// Client-key hash keys, hex; `keys[].hash_key_index` points in here.
    hash_keys: Vec<String>,
    /// Each account's credential and outbound proxy URL, by account id.
    accounts: BTreeMap<String, AccountSecrets>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountSecrets {
    secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    proxy: Option<String>,
}

/// Refuses a passphrase too short to protect a backup.
pub fn check_new_passphrase(passphrase: &str) -> Result<(), BackupError> {
    if passphrase.chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(BackupError::Passphrase(format!(
            "the backup passphrase must be at least {MIN_PASSPHRASE_CHARS} characters"
        )));
    }
    Ok(())
}

/// The associated data of `sealed`: a SHA-256 over the header fields and each section's bytes,
/// every part length-prefixed.
fn associated_data(
    header: [&str; 3],
    kdf: &Kdf,
    check: &str,
    sections: [Option<&str>; 6],
) -> Result<Vec<u8>, BackupError> {
    let mut h = Sha256::new();
    let mut part = |b: &[u8]| {
        h.update((b.len() as u64).to_be_bytes());
        h.update(b);
    };
    part(FORMAT.as_bytes());
    part(&VERSION.to_be_bytes());
    for f in header {
        part(f.as_bytes());
    }
    let kdf = serde_json::to_string(kdf).map_err(|e| BackupError::Format(e.to_string()))?;
    part(kdf.as_bytes());
    part(check.as_bytes());
    for (name, raw) in SECTIONS.iter().zip(sections) {
        part(name.as_bytes());
        match raw {
            Some(r) => part(r.as_bytes()),
            None => part(b"\0absent"),
        }
    }
    Ok(h.finalize().to_vec())
}

fn raw<T: Serialize>(v: &T) -> Result<Box<RawValue>, BackupError> {
    serde_json::value::to_raw_value(v).map_err(|e| BackupError::Format(format!("cannot encode: {e}")))
}

/// Writes `backup` as a file sealed under `passphrase`. CPU-heavy (the key derivation).
pub fn seal(backup: &Backup, passphrase: &str, source_backend: &str) -> Result<Vec<u8>, BackupError> {
    check_new_passphrase(passphrase)?;
    let mut hash_keys: Vec<[u8; 32]> = Vec::new();
    let mut keys = Vec::with_capacity(backup.keys.len());
    for k in &backup.keys {
        let index = match hash_keys.iter().position(|h| *h == k.hash_key) {
            Some(i) => i,
            None => {
                hash_keys.push(k.hash_key);
                hash_keys.len() - 1
            }
        };
        let mut record = k.record.clone();
        record.insert("hash_key_index".into(), Value::from(index));
        if let Some(t) = k.last_used {
            record.insert("last_used".into(), Value::from(t));
        }
        keys.push(Value::Object(record));
    }
    let mut secrets = BTreeMap::new();
    let mut accounts = Vec::with_capacity(backup.accounts.len());
    for a in &backup.accounts {
        let id = a
            .record
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        secrets.insert(
            id,
            AccountSecrets {
                secret: a.secret.clone(),
                proxy: a.proxy.clone(),
            },
        );
        accounts.push(Value::Object(a.record.clone()));
    }
    let sensitive = Sensitive {
        hash_keys: hash_keys.iter().map(hex::encode).collect(),
        accounts: secrets,
    };

    let created_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let relay_version = env!("CARGO_PKG_VERSION");
    let kdf = Kdf::fresh();
    let derived = Keys::derive(passphrase, &kdf)?;
    let check = derived.check_value();
    let (keys, accounts, groups, usage) = (raw(&keys)?, raw(&accounts)?, raw(&backup.groups)?, raw(&backup.usage)?);
    let users = backup.users.as_ref().map(raw).transpose()?;
    let settings = backup.settings.as_ref().map(raw).transpose()?;
    let aad = associated_data(
        [&created_at, source_backend, relay_version],
        &kdf,
        &check,
        [
            Some(keys.get()),
            Some(accounts.get()),
            Some(groups.get()),
            Some(usage.get()),
            users.as_deref().map(RawValue::get),
            settings.as_deref().map(RawValue::get),
        ],
    )?;
    let plaintext = serde_json::to_vec(&sensitive).map_err(|e| BackupError::Format(e.to_string()))?;
    let sealed = derived.seal(&plaintext, &aad)?;
    let out = FileOut {
        format: FORMAT,
        version: VERSION,
        created_at: &created_at,
        source_backend,
        relay_version,
        kdf: &kdf,
        check: &check,
        keys: &keys,
        accounts: &accounts,
        groups: &groups,
        usage: &usage,
        users: users.as_deref(),
        settings: settings.as_deref(),
        sealed: &sealed,
    };
    let mut bytes = serde_json::to_vec(&out).map_err(|e| BackupError::Format(e.to_string()))?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// What a backup file says about itself.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub created_at: String,
    pub source_backend: String,
    pub relay_version: String,
}

/// Reads, authenticates and opens a backup file. CPU-heavy (the key derivation).
pub fn open(file: &[u8], passphrase: &str) -> Result<Backup, BackupError> {
    open_with_meta(file, passphrase).map(|(b, _)| b)
}

/// [`open`], with what the file says about itself.
pub fn open_with_meta(file: &[u8], passphrase: &str) -> Result<(Backup, Meta), BackupError> {
    let header: Header = serde_json::from_slice(file)
        .map_err(|e| BackupError::Format(format!("the file is not a JSON backup document ({e})")))?;
    if header.format.as_deref() != Some(FORMAT) {
        return Err(BackupError::Format(format!(
            "not a claude-relay backup (its `format` is not `{FORMAT}`)"
        )));
    }
    match header.version {
        Some(VERSION) => {}
        Some(v) => {
            return Err(BackupError::Format(format!(
                "backup version {v} is not supported; this relay reads version {VERSION}"
            )));
        }
        None => return Err(BackupError::Format("the backup has no `version`".into())),
    }
    let f: FileIn<'_> = serde_json::from_slice(file).map_err(|e| {
        let m = e.to_string();
        if m.starts_with("unknown field") {
            BackupError::Format(format!(
                "the backup has a section this relay does not know (made by a newer relay?): {m}"
            ))
        } else {
            BackupError::Format(m)
        }
    })?;
    let derived = Keys::derive(passphrase, &f.kdf)?;
    derived.verify_check(&f.check)?;
    let aad = associated_data(
        [&f.created_at, &f.source_backend, &f.relay_version],
        &f.kdf,
        &f.check,
        [
            Some(f.keys.get()),
            Some(f.accounts.get()),
            Some(f.groups.get()),
            Some(f.usage.get()),
            f.users.map(RawValue::get),
            f.settings.map(RawValue::get),
        ],
    )?;
    let plaintext = derived.open(&f.sealed, &aad)?;
    let sensitive: Sensitive = serde_json::from_slice(&plaintext)
        .map_err(|e| BackupError::Format(format!("the sealed section is malformed ({e})")))?;
    let section = |name: &str, e: serde_json::Error| BackupError::Format(format!("section `{name}`: {e}"));

    let mut hash_keys = Vec::with_capacity(sensitive.hash_keys.len());
    for h in &sensitive.hash_keys {
        let mut hk = [0u8; 32];
        hex::decode_to_slice(h, &mut hk).map_err(|_| BackupError::Format("a hash key is malformed".into()))?;
        hash_keys.push(hk);
    }
    let raw_keys: Vec<Map<String, Value>> = serde_json::from_str(f.keys.get()).map_err(|e| section("keys", e))?;
    let mut keys = Vec::with_capacity(raw_keys.len());
    for mut record in raw_keys {
        let index = record
            .remove("hash_key_index")
            .and_then(|v| v.as_u64())
            .and_then(|i| hash_keys.get(usize::try_from(i).ok()?))
            .ok_or_else(|| BackupError::Format("a key has no valid `hash_key_index`".into()))?;
        let last_used = record.remove("last_used").and_then(|v| v.as_i64());
        keys.push(BackupKey {
            record,
            hash_key: *index,
            last_used,
        });
    }
    let raw_accounts: Vec<Map<String, Value>> =
        serde_json::from_str(f.accounts.get()).map_err(|e| section("accounts", e))?;
    let mut secrets = sensitive.accounts;
    let mut accounts = Vec::with_capacity(raw_accounts.len());
    for record in raw_accounts {
        let id = record.get("id").and_then(Value::as_str).unwrap_or_default();
        let s = secrets
            .remove(id)
            .ok_or_else(|| BackupError::Format(format!("account `{id}` has no sealed credential")))?;
        accounts.push(BackupAccount {
            record,
            secret: s.secret,
            proxy: s.proxy,
        });
    }
    let groups: Vec<GroupEntry> = serde_json::from_str(f.groups.get()).map_err(|e| section("groups", e))?;
    let usage: Vec<UsageEntry> = serde_json::from_str(f.usage.get()).map_err(|e| section("usage", e))?;
    let users = f
        .users
        .map(|r| serde_json::from_str(r.get()))
        .transpose()
        .map_err(|e| section("users", e))?;
    let settings = f
        .settings
        .map(|r| serde_json::from_str(r.get()))
        .transpose()
        .map_err(|e| section("settings", e))?;
    Ok((
        Backup {
            keys,
            accounts,
            groups,
            usage,
            users,
            settings,
        },
        Meta {
            created_at: f.created_at,
            source_backend: f.source_backend,
            relay_version: f.relay_version,
        },
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{Dimension, Granularity, UsageCounters};

    fn sample() -> Backup {
        let record: Map<String, Value> =
            serde_json::from_str(r#"{"id":"a1","name":"acc","kind":"claude-console","created_at":1}"#).unwrap();
        let key: Map<String, Value> =
            serde_json::from_str(r#"{"id":"k1","name":"key","key_hash":"ab","created_at":1}"#).unwrap();
        Backup {
            keys: vec![BackupKey {
                record: key,
                hash_key: [7; 32],
                last_used: Some(5),
            }],
            accounts: vec![BackupAccount {
                record,
                secret: "sk-ant-plaintext-secret".into(),
                proxy: Some("http://u:p@proxy:1".into()),
            }],
            groups: vec![],
            usage: vec![UsageEntry {
                dimension: Dimension::KeyModel,
                subject: "2:k1:m".into(),
                granularity: Granularity::Total,
                start: 0,
                counters: UsageCounters {
                    requests: 3,
                    ..Default::default()
                },
            }],
            users: None,
            settings: None,
        }
    }

    #[test]
    fn round_trip_hides_secrets_and_detects_changes() {
        let file = seal(&sample(), "a long enough passphrase", "embedded").unwrap();
        let text = String::from_utf8(file.clone()).unwrap();
        assert!(!text.contains("sk-ant-plaintext-secret") && !text.contains("u:p@proxy"));
        assert!(!text.contains(&hex::encode([7u8; 32])));
        let (b, meta) = open_with_meta(&file, "a long enough passphrase").unwrap();
        assert_eq!(meta.source_backend, "embedded");
        assert_eq!(b.accounts[0].secret, "sk-ant-plaintext-secret");
        assert_eq!(b.accounts[0].proxy.as_deref(), Some("http://u:p@proxy:1"));
        assert_eq!(b.keys[0].hash_key, [7; 32]);
        assert_eq!(b.keys[0].last_used, Some(5));
        assert_eq!(b.usage, sample().usage);

        assert!(matches!(
            open(&file, "another long passphrase"),
            Err(BackupError::WrongPassphrase)
        ));
        let tampered = text.replace("\"requests\":3", "\"requests\":4");
        assert!(matches!(
            open(tampered.as_bytes(), "a long enough passphrase"),
            Err(BackupError::Tampered)
        ));
        let unknown = text.replacen("\"sealed\"", "\"extra\":[],\"sealed\"", 1);
        let e = open(unknown.as_bytes(), "a long enough passphrase")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("does not know") && e.contains("extra"), "{e}");
        let v2 = text.replacen("\"version\":1", "\"version\":2", 1);
        let e = open(v2.as_bytes(), "a long enough passphrase")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("version 2"), "{e}");
    }

    #[test]
    fn short_passphrases_are_refused() {
        assert!(matches!(
            seal(&sample(), "short", "embedded"),
            Err(BackupError::Passphrase(_))
        ));
    }
}
