//! Reading Claude Relay Service's Redis, read-only: only SCAN, TYPE, GET, HGETALL and SMEMBERS
//! are sent. What is read is kept as CRS wrote it; the other modules map it.

use std::collections::BTreeMap;

use redis::aio::MultiplexedConnection;
use serde_json::Value;

/// One CRS record's fields. Hash fields are strings; Bedrock's JSON records keep their types.
pub type Fields = BTreeMap<String, Value>;

/// The kinds of account CRS keeps, each under its own key prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CrsKind {
    Claude,
    ClaudeConsole,
    Bedrock,
    Ccr,
    Gemini,
    GeminiApi,
    OpenAi,
    OpenAiResponses,
    Azure,
    Droid,
}

impl CrsKind {
    pub const ALL: [CrsKind; 10] = [
        CrsKind::Claude,
        CrsKind::ClaudeConsole,
        CrsKind::Bedrock,
        CrsKind::Ccr,
        CrsKind::Gemini,
        CrsKind::GeminiApi,
        CrsKind::OpenAi,
        CrsKind::OpenAiResponses,
        CrsKind::Azure,
        CrsKind::Droid,
    ];

    /// The Redis key prefix of its records (`<prefix><id>`).
    pub fn prefix(self) -> &'static str {
        match self {
            CrsKind::Claude => "claude:account:",
            CrsKind::ClaudeConsole => "claude_console_account:",
            CrsKind::Bedrock => "bedrock_account:",
            CrsKind::Ccr => "ccr_account:",
            CrsKind::Gemini => "gemini_account:",
            CrsKind::GeminiApi => "gemini_api_account:",
            CrsKind::OpenAi => "openai:account:",
            CrsKind::OpenAiResponses => "openai_responses_account:",
            CrsKind::Azure => "azure_openai:account:",
            CrsKind::Droid => "droid:account:",
        }
    }

    /// CRS's name for the kind (its `platform`), for the report.
    pub fn name(self) -> &'static str {
        match self {
            CrsKind::Claude => "claude",
            CrsKind::ClaudeConsole => "claude-console",
            CrsKind::Bedrock => "bedrock",
            CrsKind::Ccr => "ccr",
            CrsKind::Gemini => "gemini",
            CrsKind::GeminiApi => "gemini-api",
            CrsKind::OpenAi => "openai",
            CrsKind::OpenAiResponses => "openai-responses",
            CrsKind::Azure => "azure-openai",
            CrsKind::Droid => "droid",
        }
    }

    /// The scrypt salt CRS derives this kind's encryption key with.
    pub fn salt(self) -> &'static str {
        match self {
            CrsKind::Claude | CrsKind::Bedrock => "salt",
            CrsKind::ClaudeConsole => "claude-console-salt",
            CrsKind::Ccr => "ccr-account-salt",
            CrsKind::Gemini => "gemini-account-salt",
            CrsKind::GeminiApi => "gemini-api-salt",
            CrsKind::OpenAi => "openai-account-salt",
            CrsKind::OpenAiResponses => "openai-responses-salt",
            CrsKind::Azure => "azure-openai-account-default-salt",
            CrsKind::Droid => "droid-account-salt",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RawAccount {
    pub kind: CrsKind,
    pub id: String,
    pub fields: Fields,
}

#[derive(Debug, Clone)]
pub struct RawGroup {
    pub id: String,
    pub fields: Fields,
    pub members: Vec<String>,
}

/// Whose counters a usage hash holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UsageOwner {
    Key,
    Account,
}

/// How long a usage hash counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Period {
    /// `YYYY-MM-DD`
    Day,
    /// `YYYY-MM`
    Month,
    /// All time.
    Total,
}

#[derive(Debug, Clone)]
pub struct RawUsage {
    pub owner: UsageOwner,
    pub id: String,
    pub period: Period,
    /// The date part of the key (empty for `Total`).
    pub when: String,
    pub fields: Fields,
    /// Spend in USD from CRS's cost counters for the same owner and period, when kept.
    pub cost_usd: Option<f64>,
}

/// Everything the import reads.
#[derive(Debug, Default)]
pub struct CrsData {
    pub keys: Vec<Fields>,
    pub accounts: Vec<RawAccount>,
    pub groups: Vec<RawGroup>,
    pub usage: Vec<RawUsage>,
}

fn unavailable(e: redis::RedisError) -> String {
    format!("reading CRS's Redis failed: {e}")
}

/// Connects to CRS's Redis (`redis://host:port/db`).
pub async fn connect(url: &str) -> Result<MultiplexedConnection, String> {
    // The URL may hold a password: errors name only what went wrong.
    let client = redis::Client::open(url).map_err(|e| format!("invalid CRS Redis URL: {:?}", e.kind()))?;
    match tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.get_multiplexed_async_connection(),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("cannot connect to CRS's Redis: {e}")),
        Err(_) => Err("cannot connect to CRS's Redis: no answer within 10 s".into()),
    }
}

async fn scan(c: &mut MultiplexedConnection, pattern: &str) -> Result<Vec<String>, String> {
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(c)
            .await
            .map_err(unavailable)?;
        out.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    out.sort();
    out.dedup();
    Ok(out)
}

async fn key_type(c: &mut MultiplexedConnection, key: &str) -> Result<String, String> {
    redis::cmd("TYPE").arg(key).query_async(c).await.map_err(unavailable)
}

async fn hash(c: &mut MultiplexedConnection, key: &str) -> Result<Fields, String> {
    let m: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(key)
        .query_async(c)
        .await
        .map_err(unavailable)?;
    Ok(m.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
}

async fn string(c: &mut MultiplexedConnection, key: &str) -> Result<Option<String>, String> {
    redis::cmd("GET").arg(key).query_async(c).await.map_err(unavailable)
}

/// A record id after `prefix`: one path segment, not one of CRS's index keys.
fn record_id<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    let id = key.strip_prefix(prefix)?;
    (!id.is_empty() && !id.contains(':') && id != "index" && id != "hash_map").then_some(id)
}

/// A record's fields: a hash, or a JSON object kept as a string (Bedrock).
async fn record(c: &mut MultiplexedConnection, key: &str) -> Result<Option<Fields>, String> {
    match key_type(c, key).await?.as_str() {
        "hash" => Ok(Some(hash(c, key).await?)),
        "string" => {
            let Some(text) = string(c, key).await? else {
                return Ok(None);
            };
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(m)) => Ok(Some(m.into_iter().collect())),
                _ => Ok(None),
            }
        }
        _ => Ok(None),
    }
}

/// Reads keys, accounts, groups and usage counters.
pub async fn read(c: &mut MultiplexedConnection) -> Result<CrsData, String> {
    let mut data = CrsData::default();
    for key in scan(c, "apikey:*").await? {
        if record_id(&key, "apikey:").is_some() && key_type(c, &key).await? == "hash" {
            data.keys.push(hash(c, &key).await?);
        }
    }
    for kind in CrsKind::ALL {
        for key in scan(c, &format!("{}*", kind.prefix())).await? {
            let Some(id) = record_id(&key, kind.prefix()) else {
                continue;
            };
            if let Some(fields) = record(c, &key).await? {
                data.accounts.push(RawAccount {
                    kind,
                    id: id.to_string(),
                    fields,
                });
            }
        }
    }
    for key in scan(c, "account_group:*").await? {
        let Some(id) = record_id(&key, "account_group:") else {
            continue;
        };
        if key_type(c, &key).await? != "hash" {
            continue;
        }
        let fields = hash(c, &key).await?;
        let mut members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("account_group_members:{id}"))
            .query_async(c)
            .await
            .map_err(unavailable)?;
        members.sort();
        data.groups.push(RawGroup {
            id: id.to_string(),
            fields,
            members,
        });
    }
    read_usage(c, &mut data).await?;
    Ok(data)
}

/// A counter kept as a string (`INCRBYFLOAT`), in USD.
async fn cost(c: &mut MultiplexedConnection, key: &str) -> Result<Option<f64>, String> {
    let v: Option<String> = match key_type(c, key).await?.as_str() {
        "string" => string(c, key).await?,
        _ => None,
    };
    Ok(v.and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|f| f.is_finite() && *f >= 0.0))
}

async fn read_usage(c: &mut MultiplexedConnection, data: &mut CrsData) -> Result<(), String> {
    // (pattern prefix, owner, period); the id and the date follow the prefix.
    let families = [
        ("usage:daily:", UsageOwner::Key, Period::Day),
        ("usage:monthly:", UsageOwner::Key, Period::Month),
        ("account_usage:daily:", UsageOwner::Account, Period::Day),
        ("account_usage:monthly:", UsageOwner::Account, Period::Month),
    ];
    for (prefix, owner, period) in families {
        for key in scan(c, &format!("{prefix}*")).await? {
            let Some(rest) = key.strip_prefix(prefix) else { continue };
            // `{id}:{date}`; ids are UUIDs, dates have no `:`.
            let Some((id, when)) = rest.rsplit_once(':') else {
                continue;
            };
            if id.is_empty() || id.contains(':') || key_type(c, &key).await? != "hash" {
                continue;
            }
            let cost_key = match (owner, period) {
                (UsageOwner::Key, Period::Day) => Some(format!("usage:cost:daily:{id}:{when}")),
                (UsageOwner::Key, Period::Month) => Some(format!("usage:cost:monthly:{id}:{when}")),
                _ => None,
            };
            let cost_usd = match cost_key {
                Some(k) => cost(c, &k).await?,
                None => None,
            };
            data.usage.push(RawUsage {
                owner,
                id: id.to_string(),
                period,
                when: when.to_string(),
                fields: hash(c, &key).await?,
                cost_usd,
            });
        }
    }
    for (prefix, owner) in [("usage:", UsageOwner::Key), ("account_usage:", UsageOwner::Account)] {
        for key in scan(c, &format!("{prefix}*")).await? {
            let Some(id) = record_id(&key, prefix) else { continue };
            if key_type(c, &key).await? != "hash" {
                continue;
            }
            let cost_usd = match owner {
                UsageOwner::Key => cost(c, &format!("usage:cost:total:{id}")).await?,
                UsageOwner::Account => None,
            };
            data.usage.push(RawUsage {
                owner,
                id: id.to_string(),
                period: Period::Total,
                when: String::new(),
                fields: hash(c, &key).await?,
                cost_usd,
            });
        }
    }
    Ok(())
}
