//! CRS API keys → this relay's client keys, with their limits, expiry, permissions, model and
//! client restrictions and binding.

use std::collections::BTreeSet;

use filters::policy::{ClientSpec, ConcurrencySpec, CostLimitsSpec, KeyPolicy, KeyPolicySpec, RateLimitSpec};
use serde_json::Value;

use super::accounts::Mapped;
use super::source::{CrsData, Fields};
use super::{Context, Item, Report, flag, import_id, json, names_taken, number, text, timestamp, unique_name};
use crate::store::{ApiKeyRecord, LegacyKeyHash};

/// The scheme name of CRS's key hash in [`LegacyKeyHash`].
pub const SCHEME: &str = "crs";

/// CRS's binding fields, in the order the one binding a key has here is chosen.
const BINDINGS: [&str; 7] = [
    "claudeAccountId",
    "claudeConsoleAccountId",
    "bedrockAccountId",
    "geminiAccountId",
    "openaiAccountId",
    "azureOpenaiAccountId",
    "droidAccountId",
];

/// Maps every key; what cannot be imported is reported.
pub fn map(data: &CrsData, cx: &Context<'_>, accounts: &Mapped, report: &mut Report) -> Vec<ApiKeyRecord> {
    let mut taken = names_taken(cx.existing_keys.iter().map(|r| (r.id.as_str(), r.name.as_str())));
    // Sealed once: every imported key carries the same salt.
    let salt = cx.secrets.seal(cx.encryption_key);
    let mut hashes: BTreeSet<String> = cx
        .existing_keys
        .iter()
        .filter(|r| !r.id.starts_with("crs-"))
        .map(|r| r.key_hash.clone())
        .collect();
    let mut out = Vec::new();
    let mut fields: Vec<&Fields> = data.keys.iter().collect();
    fields.sort_by_key(|f| (text(f, "createdAt"), text(f, "id")));
    for f in fields {
        let crs_id = text(f, "id").unwrap_or_default();
        let crs_name = text(f, "name").unwrap_or_else(|| crs_id.clone());
        if crs_id.is_empty() || crs_id.contains(':') {
            report.push(Item::skipped(
                "key",
                &crs_id,
                &crs_name,
                "the record has no usable `id`",
            ));
            continue;
        }
        if flag(f, "isDeleted", false) {
            report.push(Item::skipped("key", &crs_id, &crs_name, "deleted in CRS"));
            continue;
        }
        let hash = match text(f, "apiKey").map(|h| h.to_ascii_lowercase()) {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => h,
            _ => {
                report.push(Item::skipped(
                    "key",
                    &crs_id,
                    &crs_name,
                    "`apiKey` is not CRS's SHA-256 key hash",
                ));
                continue;
            }
        };
        if !hashes.insert(hash.clone()) {
            report.push(Item::skipped(
                "key",
                &crs_id,
                &crs_name,
                "the same key already exists here",
            ));
            continue;
        }
        let mut notes = Vec::new();
        let (policy, enabled) = match policy(f, &mut notes) {
            Ok(p) => p,
            Err(e) => {
                report.push(Item::skipped("key", &crs_id, &crs_name, e));
                continue;
            }
        };
        let bind = binding(f, accounts, &mut notes);
        let name = unique_name(&crs_name, &crs_id, &mut taken);
        if name != crs_name {
            notes.push(format!("renamed to `{name}`: the name is taken here"));
        }
        for (field, what) in [
            ("description", "description"),
            ("userId", "owner user"),
            ("serviceRates", "per-key service rates"),
            ("icon", "icon"),
        ] {
            if text(f, field).is_some_and(|v| v != "{}") {
                notes.push(format!("{what} not imported: keys here have no place for it"));
            }
        }
        if flag(f, "enableOpenAIResponsesPayloadRules", false) {
            notes.push("OpenAI Responses payload rules not imported".into());
        }
        let id = import_id(&crs_id);
        let mut record = ApiKeyRecord {
            id: id.clone(),
            name,
            key_hash: hash,
            hint: "cr_… (from CRS)".into(),
            enabled,
            bind,
            tags: tags(f),
            policy,
            created_at: timestamp(f, "createdAt").unwrap_or(cx.now),
            hash_key: None,
            legacy_hash: Some(LegacyKeyHash {
                scheme: SCHEME.into(),
                salt: salt.clone(),
            }),
            extra: Default::default(),
        };
        // A key already moved to this relay's hash (used since an earlier import) keeps it.
        if let Some(old) = cx.existing_keys.iter().find(|r| r.id == id) {
            if old.legacy_hash.is_none() {
                record.key_hash = old.key_hash.clone();
                record.hint = old.hint.clone();
                record.legacy_hash = None;
                notes.push("already in use here: keeps its re-hashed form".into());
            }
            record.extra = old.extra.clone();
        }
        report.push(Item::imported("key", &crs_id, &crs_name, id, notes));
        out.push(record);
    }
    out
}

fn tags(f: &Fields) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(Value::Array(list)) = json(f, "tags") {
        for t in list.iter().filter_map(Value::as_str).map(str::trim) {
            if !t.is_empty()
                && t.chars().count() <= 40
                && !t.chars().any(char::is_control)
                && !out.iter().any(|o| o == t)
            {
                out.push(t.to_string());
            }
        }
    }
    out.truncate(16);
    out
}

/// The key's binding here: the first CRS binding that maps (an account by name, a group as
/// `group:<name>`); the others are reported.
fn binding(f: &Fields, accounts: &Mapped, notes: &mut Vec<String>) -> Option<String> {
    let mut chosen: Option<String> = None;
    for field in BINDINGS {
        let Some(v) = text(f, field) else { continue };
        let target = if let Some(g) = v.strip_prefix("group:") {
            accounts.groups.get(g).map(|n| format!("group:{n}"))
        } else {
            let id = v
                .strip_prefix("responses:")
                .or_else(|| v.strip_prefix("api:"))
                .unwrap_or(&v);
            accounts.names.get(id).cloned()
        };
        match (target, &chosen) {
            (Some(t), None) => chosen = Some(t),
            (Some(t), Some(c)) => notes.push(format!(
                "binding `{field}` → `{t}` dropped: a key has one binding here (kept `{c}`)"
            )),
            (None, _) => notes.push(format!(
                "binding `{field}` dropped: its account or group was not imported"
            )),
        }
    }
    chosen
}

/// The key's restrictions and limits, and whether it is enabled.
fn policy(f: &Fields, notes: &mut Vec<String>) -> Result<(KeyPolicySpec, bool), String> {
    let mut p = KeyPolicySpec::default();
    let mut enabled = flag(f, "isActive", true);

    // Permissions: an array, "all", or a comma list; empty = every service.
    let perms: Vec<String> = match json(f, "permissions") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => match text(f, "permissions") {
            Some(s) if s != "all" => s
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
            _ => Vec::new(),
        },
    };
    let known: Vec<String> = perms
        .iter()
        .filter(|p| matches!(p.as_str(), "claude" | "gemini" | "openai"))
        .cloned()
        .collect();
    if known.len() != perms.len() {
        notes.push("droid permission dropped: Droid is not served here".into());
    }
    if !perms.is_empty() {
        if known.is_empty() {
            enabled = false;
            notes.push("no service it may use is served here: imported disabled".into());
        } else {
            p.permissions = Some(known);
        }
    }

    // Expiry: fixed, or from first use (activation mode, not yet activated).
    let mode = text(f, "expirationMode").unwrap_or_else(|| "fixed".into());
    if mode == "activation" && !flag(f, "isActivated", false) {
        let n = number(f, "activationDays").filter(|d| *d >= 1.0).unwrap_or(30.0) as u64;
        let unit = if text(f, "activationUnit").as_deref() == Some("hours") {
            "h"
        } else {
            "d"
        };
        p.activate_for = Some(format!("{n}{unit}"));
    } else if let Some(t) = timestamp(f, "expiresAt")
        && let Some(d) = chrono::DateTime::from_timestamp(t, 0)
    {
        p.expires_at = Some(d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }

    if let Some(c) = number(f, "concurrencyLimit").filter(|c| *c >= 1.0) {
        p.concurrency = Some(ConcurrencySpec {
            limit: c as u32,
            queue: 0,
            queue_timeout_ms: 10_000,
        });
    }
    let window = number(f, "rateLimitWindow").filter(|w| *w >= 1.0);
    let requests = number(f, "rateLimitRequests").filter(|r| *r >= 1.0).map(|r| r as u64);
    let tokens = number(f, "tokenLimit").filter(|r| *r >= 1.0).map(|r| r as u64);
    let cost = number(f, "rateLimitCost").filter(|c| *c > 0.0);
    match window {
        Some(w) if requests.is_some() || tokens.is_some() || cost.is_some() => {
            p.rate_limit = Some(RateLimitSpec {
                window_minutes: w as u32,
                requests,
                tokens,
                cost_usd: if tokens.is_some() { None } else { cost },
                rolling: false,
            });
            if tokens.is_some() && cost.is_some() {
                notes.push("rateLimitCost not imported: CRS ignores it when tokenLimit is set".into());
            }
        }
        None if requests.is_some() || tokens.is_some() || cost.is_some() => {
            notes.push("rate limits without a rateLimitWindow not imported (CRS does not apply them either)".into());
        }
        _ => {}
    }
    let daily = number(f, "dailyCostLimit").filter(|c| *c > 0.0);
    let total = number(f, "totalCostLimit").filter(|c| *c > 0.0);
    let weekly = number(f, "weeklyOpusCostLimit").filter(|c| *c > 0.0);
    if daily.is_some() || total.is_some() || weekly.is_some() {
        let mut c = CostLimitsSpec {
            daily_usd: daily,
            total_usd: total,
            weekly_usd: weekly,
            ..Default::default()
        };
        if weekly.is_some() {
            let day = number(f, "weeklyResetDay").map_or(1, |d| (d as usize).clamp(1, 7));
            let hour = number(f, "weeklyResetHour").map_or(0, |h| (h as u32).min(23));
            let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
            c.weekly_reset = Some(format!("{} {hour:02}:00", days[day - 1]));
            notes.push("weekly cost limit counts every model here (CRS: Claude models only), and resets in UTC".into());
        }
        p.cost_limits = Some(c);
    }
    if flag(f, "enableModelRestriction", false)
        && let Some(Value::Array(models)) = json(f, "restrictedModels")
    {
        p.model_blacklist = models.iter().filter_map(Value::as_str).map(str::to_string).collect();
    }
    if flag(f, "enableClientRestriction", false)
        && let Some(Value::Array(clients)) = json(f, "allowedClients")
    {
        for c in clients.iter().filter_map(Value::as_str) {
            match c {
                "claude_code" | "gemini_cli" => p.clients.push(ClientSpec::Predefined(c.into())),
                "codex_cli" => p.clients.push(ClientSpec::Predefined("codex".into())),
                other => notes.push(format!("allowed client `{other}` is not known here: dropped")),
            }
        }
        if p.clients.is_empty() {
            enabled = false;
            notes.push("no allowed client is known here: imported disabled".into());
        }
    }
    KeyPolicy::compile(&p).map_err(|e| format!("its limits do not map: {e}"))?;
    Ok((p, enabled))
}
