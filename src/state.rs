//! The relay's shared state: the hot-path snapshot of keys and accounts (lock-free reads, replaced
//! whole on reload), the store, pricing, the usage sink and metrics.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use filters::{ClientKey, KeyDirectory};

use crate::accounts::{AccountCredential, AccountDefinition, stored};
use crate::config::{Config, KeyIdentity};
use crate::credentials::Tokens;
use crate::providers::anthropic_oauth::tokens::OAuthTokens;
use crate::providers::bedrock::BedrockAuth;
use crate::providers::gemini_oauth::tokens::GoogleTokens;
use crate::providers::openai_oauth::tokens::ChatGptTokens;
use crate::providers::{Credential, anthropic_console, openai};
use crate::scheduler::{Account, AccountPool, AccountSpec, Scheduler, Source};
use crate::secrets::Secrets;
use crate::store::{AccountKind, AccountRecord, ApiKeyRecord, OAuthMeta, Store, StoreError};

/// Keys and accounts as the hot path reads them.
#[derive(Default)]
pub struct Snapshot {
    keys_by_hash: HashMap<[u8; 32], Arc<ClientKey>>,
    /// The client-key hash keys of other relays whose keys were restored here from a backup
    /// (their plaintext is unknown, so they keep the hash they were made with).
    foreign_hash_keys: Vec<[u8; 32]>,
    /// Imported keys still under another relay's hash (SHA-256 of the key and a salt), by that hash.
    legacy_by_hash: HashMap<[u8; 32], Arc<ClientKey>>,
    /// The distinct salts of those hashes (one per import source, in practice one).
    legacy_salts: Vec<String>,
    pub keys: Vec<(Arc<ClientKey>, Source, String /* hint */, i64 /* created */)>,
    pub pool: AccountPool,
}

impl Snapshot {
    pub fn key_by_hash(&self, hash: &[u8; 32]) -> Option<&Arc<ClientKey>> {
        self.keys_by_hash.get(hash)
    }

    /// How many keys are still under a legacy hash.
    pub fn legacy_keys(&self) -> usize {
        self.legacy_by_hash.len()
    }
}

/// A key found by its legacy hash, to be re-hashed our way: its id and our hash of it.
#[derive(Debug, Clone)]
pub struct LegacyMove {
    pub id: String,
    pub key_hash: String,
    pub hint: String,
}

/// Looks keys up in the current snapshot; what the `key_auth` filter uses.
pub struct SnapshotKeys {
    pub secrets: Arc<Secrets>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Where keys found by a legacy hash are sent to be re-hashed ([`move_legacy_keys`]).
    pub legacy_moves: Option<tokio::sync::mpsc::Sender<LegacyMove>>,
}

impl KeyDirectory for SnapshotKeys {
    fn find(&self, presented: &str) -> Option<Arc<ClientKey>> {
        // Keys are long random strings; anything absurdly long is refused before hashing.
        if presented.len() > 512 {
            return None;
        }
        let h = self.secrets.hash_client_key(presented);
        let snap = self.snapshot.load();
        if let Some(k) = snap.key_by_hash(&h) {
            return Some(k.clone());
        }
        // Keys restored from another relay's backup keep the hash that relay made.
        if let Some(k) = snap.foreign_hash_keys.iter().find_map(|hk| {
            snap.key_by_hash(&crate::secrets::hash_client_key_under(hk, presented))
                .cloned()
        }) {
            return Some(k);
        }
        // Only when our own hash finds nothing: one SHA-256 per legacy salt, from memory.
        for salt in &snap.legacy_salts {
            let lh = legacy_hash(presented, salt);
            if let Some(k) = snap.legacy_by_hash.get(&lh) {
                if let Some(tx) = &self.legacy_moves {
                    // A full queue only delays the move to a later use.
                    let _ = tx.try_send(LegacyMove {
                        id: k.id.to_string(),
                        key_hash: hex::encode(h),
                        hint: crate::secrets::mask(presented),
                    });
                }
                return Some(k.clone());
            }
        }
        None
    }
}

/// A legacy key hash: SHA-256 of the key followed by the salt (Claude Relay Service's form).
fn legacy_hash(key: &str, salt: &str) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(key.as_bytes());
    h.update(salt.as_bytes());
    h.finalize().into()
}

/// Re-hashes keys found by their legacy hash: each record gets our hash and loses the legacy one
/// (so the salt it needed leaves the store with the last of them), then every instance reloads.
pub async fn move_legacy_keys(store: Arc<dyn Store>, mut rx: tokio::sync::mpsc::Receiver<LegacyMove>) {
    let mut done = std::collections::HashSet::new();
    while let Some(m) = rx.recv().await {
        if done.contains(&m.id) {
            continue;
        }
        let record = match store.get_api_key(&m.id).await {
            Ok(Some(r)) if r.legacy_hash.is_some() => r,
            Ok(_) => {
                done.insert(m.id);
                continue;
            }
            Err(e) => {
                tracing::warn!(key = %m.id, error = %e, "reading an imported key to re-hash it failed");
                continue;
            }
        };
        let moved = ApiKeyRecord {
            key_hash: m.key_hash,
            hint: m.hint,
            legacy_hash: None,
            ..record
        };
        match store.put_api_key(&moved).await {
            Ok(()) => {
                tracing::info!(key = %moved.id, "imported key re-hashed on its first use");
                done.insert(m.id);
                if let Err(e) = store.publish_change().await {
                    tracing::warn!(error = %e, "announcing a re-hashed key failed");
                }
            }
            Err(e) => tracing::warn!(key = %moved.id, error = %e, "re-hashing an imported key failed"),
        }
    }
}

/// The token machinery of the OAuth kinds: their accounts' live tokens, kept across reloads.
#[derive(Clone)]
pub struct TokenEngines {
    /// `claude-oauth` accounts, with their profile and usage reads.
    pub claude: Arc<OAuthTokens<Account>>,
    /// `openai-oauth` accounts.
    pub chatgpt: Arc<ChatGptTokens<Account>>,
    /// `gemini-oauth` accounts, with their Code Assist projects.
    pub google: Arc<GoogleTokens<Account>>,
}

impl TokenEngines {
    /// The token cells and refresh of an OAuth kind's accounts; `None` for other kinds.
    pub fn of(&self, kind: AccountKind) -> Option<&Arc<Tokens<Account>>> {
        match kind {
            AccountKind::ClaudeOauth => Some(self.claude.tokens()),
            AccountKind::OpenAiOauth => Some(self.chatgpt.tokens()),
            AccountKind::GeminiOauth => Some(self.google.tokens()),
            _ => None,
        }
    }

    /// Forgets the cells of accounts that no longer exist.
    fn retain(&self, live_ids: &std::collections::HashSet<&str>) {
        self.claude.tokens().retain(live_ids);
        self.chatgpt.tokens().retain(live_ids);
        self.google.retain(live_ids);
    }
}

/// The id under which a key or account from `relay.yaml` is known (stable across restarts).
pub fn config_id(name: &str) -> String {
    format!("config.{name}")
}

/// Builds a snapshot from the config and the store's records.
/// `oauth` holds the live tokens of OAuth accounts; without it those are left out.
pub fn build_snapshot(
    config: &Config,
    secrets: &Secrets,
    scheduler: &Scheduler,
    oauth: Option<&TokenEngines>,
    keys: Vec<ApiKeyRecord>,
    accounts: Vec<AccountRecord>,
) -> Snapshot {
    let mut snap = Snapshot::default();
    // Configured keys and accounts passed `Config::validate` and hold their values typed.
    for k in &config.api_keys {
        let c = &k.config;
        let (hash, hint) = match &k.identity {
            KeyIdentity::Plain(p) => (secrets.hash_client_key(p), crate::secrets::mask(p)),
            KeyIdentity::Hash(h) => (h.0, "(hash)".to_string()),
        };
        let ck = Arc::new(ClientKey {
            id: config_id(&c.name).into(),
            name: c.name.as_str().into(),
            enabled: c.enabled,
            bind: c.bind.as_deref().map(Arc::from),
            policy: k.policy.clone(),
        });
        snap.keys_by_hash.insert(hash, ck.clone());
        snap.keys.push((ck, Source::Config, hint, 0));
    }
    for r in keys {
        let mut hash = [0u8; 32];
        if hex::decode_to_slice(&r.key_hash, &mut hash).is_err() {
            tracing::warn!(key = %r.id, "stored key has a malformed hash; skipped");
            continue;
        }
        let legacy_salt = match &r.legacy_hash {
            None => None,
            Some(l) => match (l.scheme.as_str(), secrets.open(&l.salt)) {
                ("crs", Ok(salt)) => Some(salt),
                (_, Err(e)) => {
                    tracing::warn!(key = %r.id, error = %e, "imported key's hash salt cannot be opened; skipped");
                    continue;
                }
                (other, Ok(_)) => {
                    tracing::warn!(key = %r.id, scheme = other, "stored key has an unknown hash scheme; skipped");
                    continue;
                }
            },
        };
        if legacy_salt.is_none() && snap.keys_by_hash.contains_key(&hash) {
            tracing::warn!(key = %r.id, "stored key duplicates a configured key; the configured one wins");
            continue;
        }
        if let Some(sealed) = &r.hash_key {
            let mut hk = [0u8; 32];
            let opened = secrets
                .open(sealed)
                .ok()
                .filter(|h| hex::decode_to_slice(h, &mut hk).is_ok());
            if opened.is_none() {
                tracing::error!(key = %r.id, "stored key's hash key cannot be opened; skipped");
                continue;
            }
            if !snap.foreign_hash_keys.contains(&hk) {
                snap.foreign_hash_keys.push(hk);
            }
        }
        let ck = Arc::new(ClientKey {
            id: r.id.as_str().into(),
            name: r.name.as_str().into(),
            enabled: r.enabled,
            bind: r.bind.as_deref().map(Arc::from),
            policy: match filters::policy::KeyPolicy::compile(&r.policy) {
                Ok(p) => Arc::new(p),
                Err(e) => {
                    // Never serve a key without the limits it was given.
                    tracing::error!(key = %r.id, error = %e, "stored key has an invalid policy; skipped");
                    continue;
                }
            },
        });
        match legacy_salt {
            Some(salt) => {
                if !snap.legacy_salts.contains(&salt) {
                    snap.legacy_salts.push(salt);
                }
                snap.legacy_by_hash.insert(hash, ck.clone());
            }
            None => {
                snap.keys_by_hash.insert(hash, ck.clone());
            }
        }
        snap.keys.push((ck, Source::Admin, r.hint.clone(), r.created_at));
    }

    let mut specs = Vec::new();
    for a in &config.accounts {
        let id: Arc<str> = config_id(&a.settings.name).into();
        match account_spec(config, oauth, id, a, None, Source::Config) {
            Some(spec) => specs.push(spec),
            // Without the token machinery (`oauth`), OAuth accounts are left out.
            None if oauth.is_none()
                && matches!(
                    a.settings.kind,
                    AccountKind::ClaudeOauth | AccountKind::OpenAiOauth | AccountKind::GeminiOauth
                ) => {}
            None => {
                tracing::error!(account = %a.settings.name, "configured account has an unusable credential; skipped")
            }
        }
    }
    for r in accounts {
        // Never serve a stored account with less than it was given: one this relay cannot read
        // whole (another version's, or sealed under another secret key) is left out.
        let stored = match stored::open(&r, secrets) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(account = %r.id, error = %e, "stored account cannot be read; skipped");
                continue;
            }
        };
        let id: Arc<str> = stored.id.as_str().into();
        match account_spec(
            config,
            oauth,
            id,
            &stored.definition,
            stored.oauth.as_ref(),
            Source::Admin,
        ) {
            Some(spec) => specs.push(spec),
            None => tracing::warn!(account = %r.id, "stored account has an unusable credential; skipped"),
        }
    }
    if let Some(oauth) = oauth {
        oauth.retain(&specs.iter().map(|s| &*s.id).collect());
    }
    let bindings: Vec<&str> = snap.keys.iter().filter_map(|(k, ..)| k.bind.as_deref()).collect();
    snap.pool = scheduler.pool(specs, &bindings);
    snap
}

/// What the scheduler is given for an account; `None` when its credential cannot be opened for
/// the hot path.
fn account_spec(
    config: &Config,
    oauth: Option<&TokenEngines>,
    id: Arc<str>,
    a: &AccountDefinition,
    meta: Option<&OAuthMeta>,
    source: Source,
) -> Option<AccountSpec> {
    let s = &a.settings;
    let (credential, tier_blacklist) = credential(config, oauth, &id, a, meta)?;
    Some(AccountSpec {
        name: s.name.as_str().into(),
        kind: s.kind,
        base: s.base_url_or(&config.providers.default_bases()).upstream().clone(),
        credential,
        tier_blacklist,
        priority: s.priority,
        enabled: s.enabled,
        models: s.models.clone(),
        model_map: s.model_map.clone(),
        source,
        group: s.group.clone(),
        proxy: a.proxy.as_ref().map(|p| Arc::new(p.proxy().clone())),
        max_concurrency: s.max_concurrency,
        daily_quota_nanos: s.daily_quota_usd.map(usd_to_nanos),
        quota_reset_minute: s.quota_reset_minute(),
        weight: s.weight.unwrap_or(1),
        cooldowns: s.cooldowns.to_map(),
        id,
    })
}

fn usd_to_nanos(usd: f64) -> u64 {
    (usd * 1e9).round().max(0.0) as u64
}

/// How an account authenticates, ready for the hot path, and the models its OAuth tier may not
/// use.
fn credential(
    config: &Config,
    oauth: Option<&TokenEngines>,
    id: &Arc<str>,
    a: &AccountDefinition,
    meta: Option<&OAuthMeta>,
) -> Option<(Credential, Vec<String>)> {
    match &a.credential {
        AccountCredential::None => Some((Credential::None, Vec::new())),
        AccountCredential::ApiKey(key) => {
            let header = match a.settings.kind {
                AccountKind::OpenAi => openai::bearer(key),
                AccountKind::AzureOpenAi => openai::azure_key(key),
                AccountKind::GeminiApi => crate::providers::gemini::api_key_header(key),
                _ => anthropic_console::auth_header(key),
            };
            let (name, value) = header
                .map_err(|e| tracing::warn!(account = %id, error = %e, "unusable API key"))
                .ok()?;
            if a.settings.kind == AccountKind::AzureOpenAi {
                let target = openai::AzureTarget {
                    deployments: a.settings.deployments.clone().into_iter().collect(),
                    api_version: a.settings.api_version.clone(),
                };
                return Some((Credential::Azure(Arc::new(target), name, value), Vec::new()));
            }
            Some((Credential::Header(name, value), Vec::new()))
        }
        AccountCredential::Bedrock(secret) => {
            let region = a.settings.region.as_ref().map_or("", |r| r.as_str());
            let opened = BedrockAuth::new(region, a.settings.inference_profile.clone(), secret)
                .map_err(|e| tracing::warn!(account = %id, error = %e, "unusable Bedrock credential"))
                .ok()?;
            Some((Credential::Bedrock(Arc::new(opened)), Vec::new()))
        }
        AccountCredential::OAuth(pair) => {
            let meta = meta.cloned().unwrap_or_default();
            let cell = oauth?
                .of(a.settings.kind)?
                .cell_for(id, pair.clone(), &meta)
                .map_err(|e| tracing::warn!(account = %id, error = %e, "unusable OAuth token"))
                .ok()?;
            if a.settings.kind == AccountKind::GeminiOauth {
                // The configured project wins over the one found for the account.
                let known = a.settings.project_id.clone().or(meta.project_id);
                let project = oauth?.google.project_cell(id, known);
                return Some((Credential::GoogleOAuth(cell, project), Vec::new()));
            }
            if a.settings.kind == AccountKind::OpenAiOauth {
                let account_id = meta
                    .account_id
                    .as_deref()
                    .map(openai::chatgpt_account_header)
                    .transpose()
                    .map_err(|e| tracing::warn!(account = %id, error = %e, "unusable ChatGPT account id"))
                    .ok()?;
                return Some((Credential::OpenAiOAuth(cell, account_id), Vec::new()));
            }
            let blacklist = meta
                .tier
                .as_deref()
                .map(|t| config.providers.anthropic.oauth.tier_blacklist(t))
                .unwrap_or_default();
            Some((Credential::OAuth(cell), blacklist))
        }
    }
}

/// Loads keys and accounts from the store and swaps in a new snapshot.
pub async fn reload(
    config: &Config,
    secrets: &Secrets,
    scheduler: &Scheduler,
    oauth: &TokenEngines,
    store: &dyn Store,
    target: &ArcSwap<Snapshot>,
) -> Result<(), StoreError> {
    let keys = store.list_api_keys().await?;
    let accounts = store.list_accounts().await?;
    target.store(Arc::new(build_snapshot(
        config,
        secrets,
        scheduler,
        Some(oauth),
        keys,
        accounts,
    )));
    Ok(())
}

/// Re-reads keys and accounts from the store into the snapshot.
#[derive(Clone)]
pub struct Reloader {
    pub config: Arc<Config>,
    pub secrets: Arc<Secrets>,
    pub scheduler: Arc<Scheduler>,
    pub store: Arc<dyn Store>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Account health shared by instances, applied on every reload.
    pub coord: Arc<dyn crate::store::coord::Coordination>,
    /// Live tokens of OAuth accounts, kept across reloads.
    pub oauth: TokenEngines,
}

impl Reloader {
    pub async fn reload(&self) -> Result<(), StoreError> {
        let read_at = chrono::Utc::now().timestamp_millis();
        let health = self.coord.account_health(read_at).await;
        let result = reload(
            &self.config,
            &self.secrets,
            &self.scheduler,
            &self.oauth,
            &*self.store,
            &self.snapshot,
        )
        .await;
        // Health applies to the runtimes, which the new snapshot's accounts share.
        match health {
            Ok(h) => self.scheduler.apply_health(&h, read_at),
            Err(e) => tracing::warn!(error = %e, "reading shared account health failed"),
        }
        result
    }

    /// Follows change notifications from every instance, with a periodic reload as a safety net.
    pub async fn follow(self) {
        let mut rx = self.store.subscribe_changes();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = rx.recv() => if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r { return },
                _ = tick.tick() => {}
            }
            if let Err(e) = self.reload().await {
                tracing::warn!(error = %e, "snapshot reload failed; keeping the previous one");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LegacyKeyHash;

    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn record(id: &str, key_hash: String, legacy: Option<LegacyKeyHash>) -> ApiKeyRecord {
        ApiKeyRecord {
            id: id.into(),
            name: id.into(),
            key_hash,
            hint: String::new(),
            enabled: true,
            bind: None,
            tags: Vec::new(),
            policy: Default::default(),
            created_at: 0,
            hash_key: None,
            legacy_hash: legacy,
            extra: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_legacy_hash_is_tried_after_ours_and_asks_for_the_move() {
        let config = Config::from_yaml(&format!("secret_key: {SECRET}\n"), &|_| None).unwrap();
        let secrets = Arc::new(Secrets::new(SECRET).unwrap());
        let salt = "crs-encryption-key";
        let old = "cr_old";
        let legacy = hex::encode(legacy_hash(old, salt));
        let keys = vec![
            record("ours", secrets.hash_client_key_hex("cr_ours"), None),
            record(
                "imported",
                legacy,
                Some(LegacyKeyHash {
                    scheme: "crs".into(),
                    salt: secrets.seal(salt),
                }),
            ),
        ];
        let snap = build_snapshot(&config, &secrets, &Scheduler::new(), None, keys, Vec::new());
        assert_eq!(snap.legacy_keys(), 1);
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let dir = SnapshotKeys {
            secrets: secrets.clone(),
            snapshot: Arc::new(ArcSwap::from_pointee(snap)),
            legacy_moves: Some(tx),
        };
        assert_eq!(dir.find("cr_ours").map(|k| k.id.to_string()).as_deref(), Some("ours"));
        assert!(rx.try_recv().is_err(), "a key under our hash moves nothing");
        assert_eq!(dir.find(old).map(|k| k.id.to_string()).as_deref(), Some("imported"));
        let m = rx.try_recv().unwrap();
        assert_eq!(
            (m.id.as_str(), m.key_hash),
            ("imported", secrets.hash_client_key_hex(old))
        );
        assert!(dir.find("cr_unknown").is_none());
        // The legacy hash is SHA-256 of the key followed by the salt (CRS's construction).
        assert_eq!(
            hex::encode(legacy_hash("cr_x", "k")),
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"cr_xk"))
        );
    }
}
