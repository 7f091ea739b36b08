//! Migration from Claude Relay Service (CRS): reads its Redis (read-only), maps its API keys,
//! accounts, account groups and usage counters to this relay's, and writes them into the
//! configured store. The same report, per item with what did not map and why, is printed by a dry
//! run and by the real one.
//!
//! - Keys keep working for their holders: CRS stores SHA-256(key ‖ ENCRYPTION_KEY), so a key is
//!   imported with that hash (see [`crate::store::LegacyKeyHash`]) and CRS's key, sealed; on
//!   first use the relay re-hashes it its own way and forgets both.
//! - Account secrets are decrypted ([`cipher`]) and sealed with this instance's secret key.
//! - Ids are derived from CRS's (`crs-<id>`), so a second run updates what the first wrote.

pub mod accounts;
pub mod cipher;
pub mod keys;
pub mod source;
pub mod usage;

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::accounts::DefaultBases;
use crate::secrets::Secrets;
use crate::store::{AccountRecord, ApiKeyRecord, BucketKey, Store, UsageCounters};

use source::Fields;

/// The id this relay gives the CRS record `crs_id`.
pub fn import_id(crs_id: &str) -> String {
    format!("crs-{crs_id}")
}

/// What happened, or would happen, to one CRS item.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Item {
    /// `key`, `account`, `group` or `usage`.
    pub item: &'static str,
    /// CRS's kind of the item (`claude-console`, ...), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crs_kind: Option<String>,
    pub crs_id: String,
    pub name: String,
    /// `imported`, or `skipped` with `reason`.
    pub outcome: &'static str,
    /// The id the item has here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What of the item did not map, or mapped with a difference.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Item {
    fn imported(item: &'static str, crs_id: &str, name: &str, id: String, notes: Vec<String>) -> Item {
        Item {
            item,
            crs_kind: None,
            crs_id: crs_id.to_string(),
            name: name.to_string(),
            outcome: "imported",
            id: Some(id),
            reason: None,
            notes,
        }
    }

    fn skipped(item: &'static str, crs_id: &str, name: &str, reason: impl Into<String>) -> Item {
        Item {
            item,
            crs_kind: None,
            crs_id: crs_id.to_string(),
            name: name.to_string(),
            outcome: "skipped",
            id: None,
            reason: Some(reason.into()),
            notes: Vec::new(),
        }
    }

    fn kind(mut self, kind: &str) -> Item {
        self.crs_kind = Some(kind.to_string());
        self
    }
}

/// Counts per item type: `(imported, skipped)`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Counts {
    pub imported: usize,
    pub skipped: usize,
}

/// The report of an import, or of what a dry run would import.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    pub dry_run: bool,
    pub keys: Counts,
    pub accounts: Counts,
    pub groups: Counts,
    /// Usage buckets (a key's or an account's day, month or all-time counters).
    pub usage_buckets: Counts,
    /// Remarks about the whole import.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub items: Vec<Item>,
}

impl Report {
    fn push(&mut self, item: Item) {
        let c = match item.item {
            "key" => &mut self.keys,
            "account" => &mut self.accounts,
            "group" => &mut self.groups,
            _ => &mut self.usage_buckets,
        };
        if item.outcome == "imported" {
            c.imported += 1;
        } else {
            c.skipped += 1;
        }
        self.items.push(item);
    }

    /// The report as text, one line per item and one per note under it.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let verb = if self.dry_run { "would import" } else { "imported" };
        let _ = writeln!(
            out,
            "CRS import{}: {verb} {} keys, {} accounts, {} groups, {} usage buckets; skipped {} keys, {} accounts, {} groups, {} usage buckets",
            if self.dry_run {
                " (dry run, nothing written)"
            } else {
                ""
            },
            self.keys.imported,
            self.accounts.imported,
            self.groups.imported,
            self.usage_buckets.imported,
            self.keys.skipped,
            self.accounts.skipped,
            self.groups.skipped,
            self.usage_buckets.skipped,
        );
        for n in &self.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        for i in self
            .items
            .iter()
            .filter(|i| i.item != "usage" || i.outcome != "imported")
        {
            let kind = i.crs_kind.as_deref().map(|k| format!(" ({k})")).unwrap_or_default();
            match (&i.id, &i.reason) {
                (_, Some(r)) => {
                    let _ = writeln!(out, "{} {}{kind} `{}`: skipped: {r}", i.item, i.crs_id, i.name);
                }
                (id, None) => {
                    let _ = writeln!(
                        out,
                        "{} {}{kind} `{}`: {} as {}",
                        i.item,
                        i.crs_id,
                        i.name,
                        if self.dry_run { "would be imported" } else { "imported" },
                        id.as_deref().unwrap_or("-")
                    );
                }
            }
            for n in &i.notes {
                let _ = writeln!(out, "    - {n}");
            }
        }
        out
    }
}

/// Why an import cannot run at all; nothing is written then.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Source(String),
    #[error(
        "the encryption key does not decrypt any of CRS's {0} encrypted account secrets: it is not CRS's ENCRYPTION_KEY; nothing was written"
    )]
    WrongKey(usize),
    #[error("writing to the relay's store failed: {0}")]
    Store(String),
}

/// What an import writes.
#[derive(Debug, Default)]
pub struct Plan {
    pub keys: Vec<ApiKeyRecord>,
    pub accounts: Vec<AccountRecord>,
    pub usage: Vec<(BucketKey, UsageCounters)>,
    pub report: Report,
}

/// What the mapping needs besides CRS's data.
pub struct Context<'a> {
    /// CRS's ENCRYPTION_KEY.
    pub encryption_key: &'a str,
    pub secrets: &'a Secrets,
    pub bases: &'a DefaultBases,
    /// What the relay's store already holds.
    pub existing_keys: &'a [ApiKeyRecord],
    pub existing_accounts: &'a [AccountRecord],
    /// Unix seconds.
    pub now: i64,
}

/// Maps CRS's data to records, without writing anything.
pub fn plan(data: &source::CrsData, cx: &Context<'_>) -> Result<Plan, ImportError> {
    let mut report = Report::default();
    let mapped = accounts::map(data, cx, &mut report)?;
    let keys = keys::map(data, cx, &mapped, &mut report);
    let usage = usage::map(data, &mapped, &keys, &mut report);
    Ok(Plan {
        keys,
        accounts: mapped.records,
        usage,
        report,
    })
}

/// Reads CRS's Redis at `redis_url` and imports it into `store` (with `dry_run`, only reports).
pub async fn import(
    redis_url: &str,
    cx_key: &str,
    secrets: &Secrets,
    bases: &DefaultBases,
    store: &dyn Store,
    dry_run: bool,
) -> Result<Report, ImportError> {
    let mut conn = source::connect(redis_url).await.map_err(ImportError::Source)?;
    let data = source::read(&mut conn).await.map_err(ImportError::Source)?;
    let store_err = |e: crate::store::StoreError| ImportError::Store(e.to_string());
    let existing_keys = store.list_api_keys().await.map_err(store_err)?;
    let existing_accounts = store.list_accounts().await.map_err(store_err)?;
    let cx = Context {
        encryption_key: cx_key,
        secrets,
        bases,
        existing_keys: &existing_keys,
        existing_accounts: &existing_accounts,
        now: chrono::Utc::now().timestamp(),
    };
    let mut plan = plan(&data, &cx)?;
    plan.report.dry_run = dry_run;
    if dry_run {
        return Ok(plan.report);
    }
    for a in &plan.accounts {
        store.put_account(a).await.map_err(store_err)?;
    }
    for k in &plan.keys {
        store.put_api_key(k).await.map_err(store_err)?;
    }
    let added = usage::top_up(store, &plan.usage).await.map_err(store_err)?;
    store.add_usage(&added).await.map_err(store_err)?;
    store.publish_change().await.map_err(store_err)?;
    Ok(plan.report)
}

// --- reading CRS's field values ---

/// A field as text: strings as they are, numbers and booleans written out; empty → `None`.
pub(crate) fn text(f: &Fields, name: &str) -> Option<String> {
    match f.get(name)? {
        Value::String(s) if !s.trim().is_empty() && s != "null" => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A boolean field (`"true"`/`true`); `default` when absent.
pub(crate) fn flag(f: &Fields, name: &str, default: bool) -> bool {
    match f.get(name) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if !s.is_empty() => s == "true",
        _ => default,
    }
}

/// A number field; absent, empty or not a number → `None`.
pub(crate) fn number(f: &Fields, name: &str) -> Option<f64> {
    match f.get(name)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|v| v.is_finite())
}

/// A field holding JSON (CRS writes arrays and objects into hash fields as JSON text).
pub(crate) fn json(f: &Fields, name: &str) -> Option<Value> {
    match f.get(name)? {
        Value::String(s) if !s.trim().is_empty() => serde_json::from_str(s).ok(),
        Value::String(_) | Value::Null => None,
        v => Some(v.clone()),
    }
}

/// Unix seconds of an ISO date or a millisecond count.
pub(crate) fn timestamp(f: &Fields, name: &str) -> Option<i64> {
    let t = text(f, name)?;
    if let Ok(ms) = t.parse::<i64>() {
        return Some(if ms > 100_000_000_000 { ms / 1000 } else { ms });
    }
    chrono::DateTime::parse_from_rfc3339(&t).ok().map(|d| d.timestamp())
}

/// A name made unique among `taken` (case as written): `name`, else `name (crs-xxxxxxxx)`.
pub(crate) fn unique_name(name: &str, crs_id: &str, taken: &mut BTreeSet<String>) -> String {
    let base: String = name.trim().chars().filter(|c| !c.is_control()).take(80).collect();
    let base = if base.is_empty() { format!("crs-{crs_id}") } else { base };
    let short: String = crs_id.chars().take(8).collect();
    let mut candidate = base.clone();
    let mut n = 1;
    while taken.contains(&candidate) {
        candidate = if n == 1 {
            format!("{base} (crs-{short})")
        } else {
            format!("{base} (crs-{short}-{n})")
        };
        n += 1;
    }
    taken.insert(candidate.clone());
    candidate
}

/// Names already used by records this import does not own.
pub(crate) fn names_taken<'a>(records: impl Iterator<Item = (&'a str, &'a str)>) -> BTreeSet<String> {
    records
        .filter(|(id, _)| !id.starts_with("crs-"))
        .map(|(_, name)| name.to_string())
        .collect()
}
