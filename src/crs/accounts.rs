//! CRS accounts and account groups → this relay's accounts (a group is the `group` of its
//! members here).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::cipher::{self, CipherError, Key};
use super::source::{CrsData, CrsKind, Fields, RawAccount};
use super::{
    Context, ImportError, Item, Report, flag, import_id, json, names_taken, number, text, timestamp, unique_name,
};
use crate::accounts::{
    AccountCredential, AccountDefinition, AccountSettings, BaseUrl, ProxyUrl, Region, TimeOfDay, stored,
};
use crate::credentials::TokenPair;
use crate::providers::bedrock::BedrockSecret;
use crate::store::{AccountKind, AccountRecord, OAuthMeta};

/// The accounts mapped, and what keys and usage need to know of them.
#[derive(Debug, Default)]
pub struct Mapped {
    pub records: Vec<AccountRecord>,
    /// CRS account id → the account's name here (keys bind by name).
    pub names: BTreeMap<String, String>,
    /// CRS group id → the group's name here.
    pub groups: BTreeMap<String, String>,
}

/// Decryption with the derived keys cached per salt (scrypt is slow on purpose).
struct Decryptor<'a> {
    encryption_key: &'a str,
    keys: BTreeMap<&'static str, Key>,
    attempts: usize,
    successes: usize,
}

impl Decryptor<'_> {
    fn key(&mut self, salt: &'static str) -> Key {
        let k = self.encryption_key;
        *self.keys.entry(salt).or_insert_with(|| cipher::scrypt_key(k, salt))
    }

    fn count(&mut self, r: Result<String, CipherError>) -> Result<String, CipherError> {
        self.attempts += 1;
        if r.is_ok() {
            self.successes += 1;
        }
        r
    }

    /// A field encrypted with the kind's scrypt key; a value without `:` is taken as CRS's old
    /// unencrypted form, as CRS itself does.
    fn field(&mut self, a: &RawAccount, name: &str) -> Result<Option<String>, String> {
        let Some(v) = text(&a.fields, name) else {
            return Ok(None);
        };
        if !v.contains(':') {
            return Ok(Some(v));
        }
        let key = self.key(a.kind.salt());
        self.count(cipher::decrypt(&key, &v))
            .map(Some)
            .map_err(|e| format!("`{name}` {e}"))
    }

    /// Bedrock's `{encrypted, iv}` objects (SHA-256 key), or a plain object of old records.
    fn bedrock(&mut self, a: &RawAccount, name: &str) -> Result<Option<Value>, String> {
        let Some(v) = json(&a.fields, name) else {
            return Ok(None);
        };
        match (
            v.get("encrypted").and_then(Value::as_str),
            v.get("iv").and_then(Value::as_str),
        ) {
            (Some(ct), Some(iv)) => {
                let key = cipher::sha256_key(self.encryption_key);
                let plain = self
                    .count(cipher::decrypt_parts(&key, iv, ct))
                    .map_err(|e| format!("`{name}` {e}"))?;
                serde_json::from_str(&plain)
                    .map(Some)
                    .map_err(|_| format!("`{name}` is not JSON once decrypted"))
            }
            _ => Ok(Some(v)),
        }
    }
}

/// Maps every account and group; fails when secrets exist and none decrypts (a wrong key).
pub fn map(data: &CrsData, cx: &Context<'_>, report: &mut Report) -> Result<Mapped, ImportError> {
    let mut dec = Decryptor {
        encryption_key: cx.encryption_key,
        keys: BTreeMap::new(),
        attempts: 0,
        successes: 0,
    };
    let mut out = Mapped::default();
    let mut taken = names_taken(cx.existing_accounts.iter().map(|r| {
        (
            r.id.as_str(),
            r.settings.get("name").and_then(Value::as_str).unwrap_or(""),
        )
    }));
    let mut groups_taken: BTreeSet<String> = cx
        .existing_accounts
        .iter()
        .filter(|r| !r.id.starts_with("crs-"))
        .filter_map(|r| r.settings.get("group").and_then(Value::as_str).map(str::to_string))
        .collect();

    // Groups first: an account's group here is the first CRS group (by name) listing it.
    let mut member_of: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut groups: Vec<_> = data.groups.iter().collect();
    groups.sort_by_key(|g| (text(&g.fields, "name").unwrap_or_default(), g.id.clone()));
    for g in groups {
        let crs_name = text(&g.fields, "name").unwrap_or_else(|| g.id.clone());
        let name = unique_name(&crs_name, &g.id, &mut groups_taken);
        let mut notes = Vec::new();
        if name != crs_name {
            notes.push(format!("renamed to `{name}`: the name is taken here"));
        }
        if text(&g.fields, "description").is_some() {
            notes.push("description not imported: groups here have none".into());
        }
        notes.push(format!("{} member account(s) in CRS", g.members.len()));
        for m in &g.members {
            member_of.entry(m.as_str()).or_default().push(name.clone());
        }
        out.groups.insert(g.id.clone(), name.clone());
        let mut item = Item::imported("group", &g.id, &crs_name, format!("group:{name}"), notes);
        if let Some(p) = text(&g.fields, "platform") {
            item = item.kind(&p);
        }
        report.push(item);
    }

    let mut items = Vec::new();
    for a in &data.accounts {
        let crs_name = text(&a.fields, "name").unwrap_or_else(|| a.id.clone());
        let existing = cx.existing_accounts.iter().find(|r| r.id == import_id(&a.id));
        match account(a, &mut dec, cx, member_of.get(a.id.as_str()), existing) {
            Ok((mut def, oauth, mut notes)) => {
                let name = unique_name(&crs_name, &a.id, &mut taken);
                if name != crs_name {
                    notes.push(format!("renamed to `{name}`: the name is taken here"));
                }
                def.settings.name = name.clone();
                let record = match record(a, def, oauth, existing, cx) {
                    Ok(r) => r,
                    Err(e) => {
                        items.push(Item::skipped("account", &a.id, &crs_name, e).kind(a.kind.name()));
                        continue;
                    }
                };
                out.names.insert(a.id.clone(), name);
                items.push(Item::imported("account", &a.id, &crs_name, record.id.clone(), notes).kind(a.kind.name()));
                out.records.push(record);
            }
            Err(reason) => items.push(Item::skipped("account", &a.id, &crs_name, reason).kind(a.kind.name())),
        }
    }
    if dec.attempts > 0 && dec.successes == 0 {
        return Err(ImportError::WrongKey(dec.attempts));
    }
    for i in items {
        report.push(i);
    }
    Ok(out)
}

/// The record to write: a new one, or the existing one updated. An OAuth account imported before
/// keeps its stored tokens: the relay may have refreshed them since, which rotates the refresh
/// token CRS still holds.
fn record(
    a: &RawAccount,
    def: AccountDefinition,
    oauth: Option<OAuthMeta>,
    existing: Option<&AccountRecord>,
    cx: &Context<'_>,
) -> Result<AccountRecord, String> {
    let created = timestamp(&a.fields, "createdAt").unwrap_or(cx.now);
    let mut r = stored::new_record(import_id(&a.id), &def, cx.secrets, created)?;
    r.oauth = oauth;
    if let Some(old) = existing
        && matches!(&def.credential, AccountCredential::OAuth(_))
        && old.oauth.is_some()
    {
        r.secret = old.secret.clone();
        r.oauth = old.oauth.clone();
    }
    Ok(r)
}

type MappedAccount = (AccountDefinition, Option<OAuthMeta>, Vec<String>);

/// One account's definition and OAuth state, with notes; or why it cannot be imported.
fn account(
    a: &RawAccount,
    dec: &mut Decryptor<'_>,
    cx: &Context<'_>,
    groups: Option<&Vec<String>>,
    existing: Option<&AccountRecord>,
) -> Result<MappedAccount, String> {
    let f = &a.fields;
    let mut notes = Vec::new();
    let kind = match a.kind {
        CrsKind::Claude => AccountKind::ClaudeOauth,
        CrsKind::ClaudeConsole => AccountKind::ClaudeConsole,
        CrsKind::Bedrock => AccountKind::Bedrock,
        CrsKind::Ccr => AccountKind::Ccr,
        CrsKind::Gemini => AccountKind::GeminiOauth,
        CrsKind::GeminiApi => AccountKind::GeminiApi,
        CrsKind::OpenAi => AccountKind::OpenAiOauth,
        CrsKind::OpenAiResponses => AccountKind::OpenAi,
        CrsKind::Azure => AccountKind::AzureOpenAi,
        CrsKind::Droid => return Err("Droid (Factory.ai) accounts are not supported by this relay".into()),
    };
    if a.kind == CrsKind::Gemini && text(f, "oauthProvider").as_deref() == Some("antigravity") {
        return Err("Antigravity sign-ins are not supported (only Gemini CLI's Code Assist sign-in)".into());
    }
    let active = flag(f, "isActive", true);
    let schedulable = flag(f, "schedulable", true);
    if !schedulable && active {
        notes.push("not schedulable in CRS: imported disabled".into());
    }
    if let Some(s) = text(f, "status").filter(|s| s != "active" && s != "created") {
        notes.push(format!("CRS status `{s}` not carried over"));
    }
    if text(f, "accountType").as_deref() == Some("dedicated") {
        notes.push("dedicated in CRS: here an account leaves the shared pool once a key binds to it".into());
    }
    let mut s = AccountSettings {
        // Set by the caller to a name unique here (checked the same way: 1 to 100 characters).
        name: "crs".into(),
        kind,
        base_url: None,
        priority: number(f, "priority").map_or(50, |p| p.clamp(0.0, 1000.0) as u32),
        enabled: active && schedulable,
        models: None,
        model_map: BTreeMap::new(),
        group: None,
        max_concurrency: None,
        daily_quota_usd: None,
        quota_reset: None,
        weight: None,
        cooldowns: Default::default(),
        region: None,
        inference_profile: None,
        api_version: None,
        deployments: BTreeMap::new(),
        project_id: None,
    };
    if let Some(gs) = groups {
        s.group = gs.first().cloned();
        if gs.len() > 1 {
            notes.push(format!(
                "in {} CRS groups: here only in `{}` (an account has one group)",
                gs.len(),
                gs[0]
            ));
        }
    }
    models(f, &mut s, &mut notes);
    if let Some(c) = number(f, "maxConcurrentTasks").filter(|c| *c >= 1.0) {
        s.max_concurrency = Some(c as u32);
    }
    if let Some(q) = number(f, "dailyQuota").filter(|q| *q > 0.0) {
        s.daily_quota_usd = Some(q);
        if let Some(t) = text(f, "quotaResetTime") {
            match TimeOfDay::parse(&t) {
                Ok(t) => s.quota_reset = Some(t),
                Err(_) => notes.push(format!("quotaResetTime `{t}` not understood: resets at 00:00")),
            }
            notes.push("daily quota resets at quotaResetTime in UTC here (CRS: its TIMEZONE_OFFSET)".into());
        }
    }
    let proxy = proxy(f, &mut notes);
    let mut oauth = None;
    let credential = match a.kind {
        CrsKind::ClaudeConsole | CrsKind::Ccr => {
            s.base_url = Some(base(f, "apiUrl", &["/v1/messages"])?.unwrap_or_else(|| cx.bases.anthropic.clone()));
            api_key(dec, a)?
        }
        CrsKind::GeminiApi => {
            s.base_url = Some(base(f, "baseUrl", &[])?.unwrap_or_else(|| cx.bases.gemini.clone()));
            api_key(dec, a)?
        }
        CrsKind::OpenAiResponses => {
            s.base_url = Some(match text(f, "baseApi") {
                Some(b) => {
                    let b = b.trim_end_matches('/').trim_end_matches("/responses");
                    let b = if b.ends_with("/v1") {
                        b.to_string()
                    } else {
                        format!("{b}/v1")
                    };
                    BaseUrl::parse(&b).map_err(|e| format!("`baseApi`: {e}"))?
                }
                None => cx.bases.openai.clone(),
            });
            api_key(dec, a)?
        }
        CrsKind::Azure => {
            s.base_url = Some(base(f, "azureEndpoint", &[])?.ok_or("`azureEndpoint` is missing")?);
            s.api_version = Some(text(f, "apiVersion").unwrap_or_else(|| "2024-02-01".into()));
            if let Some(d) = text(f, "deploymentName") {
                match &s.models {
                    Some(ms) => s.deployments = ms.iter().map(|m| (m.clone(), d.clone())).collect(),
                    None => notes.push(format!(
                        "deployment `{d}` not mapped: with no supported models listed, each model goes to a deployment of its own name"
                    )),
                }
            }
            api_key(dec, a)?
        }
        CrsKind::Bedrock => {
            let region = text(f, "region").unwrap_or_else(|| "us-east-1".into());
            s.region = Some(Region::parse(&region).map_err(|e| format!("`region`: {e}"))?);
            if let Some(m) = text(f, "defaultModel") {
                notes.push(format!(
                    "defaultModel `{m}` not imported: models are mapped by name here"
                ));
            }
            let mut secret = BedrockSecret {
                access_key_id: None,
                secret_access_key: None,
                session_token: None,
                api_key: None,
            };
            if let Some(c) = dec.bedrock(a, "awsCredentials")? {
                let get = |k: &str| {
                    c.get(k)
                        .and_then(Value::as_str)
                        .filter(|v| !v.is_empty())
                        .map(str::to_string)
                };
                secret.access_key_id = get("accessKeyId");
                secret.secret_access_key = get("secretAccessKey");
                secret.session_token = get("sessionToken");
            }
            if let Some(t) = dec.bedrock(a, "bearerToken")? {
                secret.api_key = t.get("token").and_then(Value::as_str).map(str::to_string);
            }
            if secret.access_key_id.is_none() && secret.api_key.is_none() {
                return Err("no AWS credentials (CRS falls back to its environment's; give them here)".into());
            }
            AccountCredential::Bedrock(secret)
        }
        CrsKind::Claude | CrsKind::Gemini | CrsKind::OpenAi => {
            let (pair, meta) = oauth_tokens(a, dec, &mut s, &mut notes)?;
            oauth = Some(meta);
            AccountCredential::OAuth(pair)
        }
        CrsKind::Droid => return Err("unsupported".into()),
    };
    if kind != AccountKind::Bedrock && s.base_url.is_none() {
        s.base_url = Some(s.base_url_or(cx.bases).clone());
    }
    s.validate().map_err(|e| e.to_string())?;
    credential.validate().map_err(|e| e.to_string())?;
    if existing.is_some() {
        notes.push("updates the account a previous import wrote".into());
    }
    Ok((
        AccountDefinition {
            settings: s,
            credential,
            proxy,
        },
        oauth,
        notes,
    ))
}

fn api_key(dec: &mut Decryptor<'_>, a: &RawAccount) -> Result<AccountCredential, String> {
    match dec.field(a, "apiKey")? {
        Some(k) => Ok(AccountCredential::ApiKey(k)),
        None => Err("`apiKey` is missing".into()),
    }
}

/// A base URL field, with CRS's path suffixes (which this relay adds itself) taken off.
fn base(f: &Fields, name: &str, suffixes: &[&str]) -> Result<Option<BaseUrl>, String> {
    let Some(mut b) = text(f, name) else { return Ok(None) };
    b = b.trim_end_matches('/').to_string();
    for sfx in suffixes {
        if let Some(s) = b.strip_suffix(sfx) {
            b = s.to_string();
        }
    }
    BaseUrl::parse(&b).map(Some).map_err(|e| format!("`{name}`: {e}"))
}

/// `supportedModels`: a list (the models served) or a mapping (requested → upstream; its keys are
/// the models served).
fn models(f: &Fields, s: &mut AccountSettings, notes: &mut Vec<String>) {
    match json(f, "supportedModels") {
        Some(Value::Array(list)) => {
            let ms: Vec<String> = list.iter().filter_map(Value::as_str).map(str::to_string).collect();
            if !ms.is_empty() {
                s.models = Some(ms);
            }
        }
        Some(Value::Object(map)) if !map.is_empty() => {
            let mut served = Vec::new();
            for (from, to) in map {
                served.push(from.clone());
                if let Some(to) = to.as_str()
                    && to != from
                {
                    s.model_map.insert(from.clone(), to.to_string());
                }
            }
            s.models = Some(served);
        }
        Some(Value::Object(_)) | None => {}
        Some(_) => notes.push("supportedModels not understood: the account serves every model".into()),
    }
}

/// CRS's proxy object → a proxy URL (SOCKS5 resolves names at the proxy, as CRS's `socks5h`).
fn proxy(f: &Fields, notes: &mut Vec<String>) -> Option<ProxyUrl> {
    let p = json(f, "proxy")?;
    let host = p.get("host").and_then(Value::as_str).filter(|h| !h.is_empty())?;
    let port = p
        .get("port")
        .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()));
    let scheme = match p.get("type").and_then(Value::as_str).unwrap_or("socks5") {
        "socks5" | "socks5h" => "socks5h",
        "http" => "http",
        other => {
            notes.push(format!(
                "proxy of type `{other}` not supported: imported without a proxy"
            ));
            return None;
        }
    };
    let enc = |v: &str| -> String {
        v.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let auth = match (
        p.get("username").and_then(Value::as_str),
        p.get("password").and_then(Value::as_str),
    ) {
        (Some(u), pw) if !u.is_empty() => format!("{}:{}@", enc(u), enc(pw.unwrap_or(""))),
        _ => String::new(),
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let url = format!("{scheme}://{auth}{host}:{}", port.unwrap_or(1080));
    match ProxyUrl::parse(&url) {
        Ok(p) => Some(p),
        Err(e) => {
            notes.push(format!("proxy not usable ({e}): imported without a proxy"));
            None
        }
    }
}

/// The token pair and its state of an OAuth account.
fn oauth_tokens(
    a: &RawAccount,
    dec: &mut Decryptor<'_>,
    s: &mut AccountSettings,
    notes: &mut Vec<String>,
) -> Result<(TokenPair, OAuthMeta), String> {
    let f = &a.fields;
    let access = dec.field(a, "accessToken")?;
    let refresh = dec.field(a, "refreshToken")?;
    let access = access.ok_or("`accessToken` is missing")?;
    let mut meta = OAuthMeta {
        expires_at: timestamp(f, "expiresAt").map(|t| t * 1000),
        scopes: text(f, "scopes")
            .map(|v| {
                v.split([' ', ','])
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        setup_token: refresh.is_none(),
        issued_at: timestamp(f, "lastRefreshAt")
            .or_else(|| timestamp(f, "createdAt"))
            .map_or(0, |t| t * 1000),
        ..OAuthMeta::default()
    };
    match a.kind {
        CrsKind::Claude => {
            if let Some(info) = json(f, "subscriptionInfo") {
                let yes = |k: &str| info.get(k).and_then(Value::as_bool).unwrap_or(false);
                meta.tier = if yes("hasClaudeMax") {
                    Some("max".into())
                } else if yes("hasClaudePro") {
                    Some("pro".into())
                } else {
                    info.get("accountType")
                        .and_then(Value::as_str)
                        .map(|t| t.trim_start_matches("claude_").to_string())
                };
            }
            if f.contains_key("email") {
                meta.email = dec.field(a, "email").ok().flatten();
            }
        }
        CrsKind::OpenAi => {
            meta.account_id = text(f, "accountId").or_else(|| text(f, "chatgptUserId"));
            meta.plan = text(f, "planType");
        }
        CrsKind::Gemini => {
            if let Some(p) = text(f, "projectId") {
                s.project_id = Some(p);
            } else if let Some(p) = text(f, "tempProjectId") {
                meta.project_id = Some(p);
            }
        }
        _ => {}
    }
    if refresh.is_none() {
        notes.push("no refresh token: the access token serves until it expires".into());
    }
    Ok((
        TokenPair {
            access_token: access,
            refresh_token: refresh,
        },
        meta,
    ))
}
