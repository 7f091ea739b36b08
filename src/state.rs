//! The relay's shared state: the hot-path snapshot of keys and accounts (lock-free reads, replaced
//! whole on reload), the store, pricing, the usage sink and metrics.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use filters::{ClientKey, KeyDirectory};

use crate::config::Config;
use crate::providers::anthropic_oauth::TokenPair;
use crate::providers::anthropic_oauth::tokens::OAuthTokens;
use crate::providers::bedrock::models::Profile;
use crate::providers::bedrock::{BedrockAuth, BedrockSecret};
use crate::providers::{Credential, UpstreamBase, anthropic_console};
use crate::proxy::outbound::OutboundProxy;
use crate::scheduler::{AccountPool, AccountSpec, CooldownClass, Scheduler, Source, parse_hhmm};
use crate::secrets::Secrets;
use crate::store::{AccountKind, AccountRecord, ApiKeyRecord, OAuthMeta, Store, StoreError};

/// Keys and accounts as the hot path reads them.
#[derive(Default)]
pub struct Snapshot {
    keys_by_hash: HashMap<[u8; 32], Arc<ClientKey>>,
    pub keys: Vec<(Arc<ClientKey>, Source, String /* hint */, i64 /* created */)>,
    pub pool: AccountPool,
}

impl Snapshot {
    pub fn key_by_hash(&self, hash: &[u8; 32]) -> Option<&Arc<ClientKey>> {
        self.keys_by_hash.get(hash)
    }
}

/// Looks keys up in the current snapshot; what the `key_auth` filter uses.
pub struct SnapshotKeys {
    pub secrets: Arc<Secrets>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
}

impl KeyDirectory for SnapshotKeys {
    fn find(&self, presented: &str) -> Option<Arc<ClientKey>> {
        // Keys are long random strings; anything absurdly long is refused before hashing.
        if presented.len() > 512 {
            return None;
        }
        let h = self.secrets.hash_client_key(presented);
        self.snapshot.load().key_by_hash(&h).cloned()
    }
}

/// The id under which a key or account from `relay.yaml` is known (stable across restarts).
pub fn config_id(name: &str) -> String {
    format!("config.{name}")
}

/// Builds a snapshot from the config and the store's records.
/// `oauth` holds the live tokens of `claude-oauth` accounts; without it those are left out.
pub fn build_snapshot(
    config: &Config,
    secrets: &Secrets,
    scheduler: &Scheduler,
    oauth: Option<&OAuthTokens>,
    keys: Vec<ApiKeyRecord>,
    accounts: Vec<AccountRecord>,
) -> Snapshot {
    let mut snap = Snapshot::default();
    // Configured keys and accounts passed `Config::validate`, which refuses everything that is
    // skipped below; the checks stay so that a key or account is left out (logged) rather than
    // served with less than it was given.
    for k in &config.api_keys {
        let hash = match (&k.key, &k.key_hash) {
            (Some(p), _) => secrets.hash_client_key(p),
            (None, Some(h)) => {
                let mut out = [0u8; 32];
                if hex::decode_to_slice(h, &mut out).is_err() {
                    tracing::error!(key = %k.name, "configured key has a malformed key_hash; skipped");
                    continue;
                }
                out
            }
            (None, None) => continue,
        };
        if snap.keys_by_hash.contains_key(&hash) {
            tracing::error!(key = %k.name, "configured key duplicates another configured key; skipped");
            continue;
        }
        let policy = match filters::policy::KeyPolicy::compile(&k.policy_spec()) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                tracing::error!(key = %k.name, error = %e, "configured key has an invalid policy; skipped");
                continue;
            }
        };
        let hint = k
            .key
            .as_deref()
            .map(crate::secrets::mask)
            .unwrap_or_else(|| "(hash)".into());
        let ck = Arc::new(ClientKey {
            id: config_id(&k.name).into(),
            name: k.name.as_str().into(),
            enabled: k.enabled,
            bind: k.bind.as_deref().map(Arc::from),
            policy,
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
        if snap.keys_by_hash.contains_key(&hash) {
            tracing::warn!(key = %r.id, "stored key duplicates a configured key; the configured one wins");
            continue;
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
        snap.keys_by_hash.insert(hash, ck.clone());
        snap.keys.push((ck, Source::Admin, r.hint.clone(), r.created_at));
    }

    let mut specs = Vec::new();
    for a in &config.accounts {
        let base = a.base_url.as_deref().unwrap_or(&config.providers.anthropic.api_base);
        let Ok(base) = UpstreamBase::parse(base) else {
            tracing::error!(account = %a.name, "configured account has an invalid base_url; skipped");
            continue;
        };
        // Never send an account's traffic around the proxy it was given.
        let proxy = match a.proxy.as_deref().map(OutboundProxy::parse).transpose() {
            Ok(p) => p.map(Arc::new),
            Err(_) => {
                tracing::error!(account = %a.name, "configured account has an unusable proxy; skipped");
                continue;
            }
        };
        let secret = match a.kind {
            AccountKind::Bedrock => a.bedrock_secret().to_secret(),
            _ => a.api_key.clone().unwrap_or_default(),
        };
        let id: Arc<str> = config_id(&a.name).into();
        let bedrock = BedrockPlace {
            region: a.region.as_deref(),
            profile: a.inference_profile.clone(),
        };
        let Some(cred) = credential(config, oauth, &id, a.kind, &secret, None, &bedrock) else {
            if oauth.is_some() || a.kind != AccountKind::ClaudeOauth {
                tracing::error!(account = %a.name, "configured account has an unusable credential; skipped");
            }
            continue;
        };
        specs.push(AccountSpec {
            id,
            name: a.name.as_str().into(),
            kind: a.kind,
            base,
            credential: cred.credential,
            tier_blacklist: cred.tier_blacklist,
            priority: a.priority,
            enabled: a.enabled,
            models: a.models.clone(),
            model_map: a.model_map.clone(),
            source: Source::Config,
            group: a.group.clone(),
            proxy,
            max_concurrency: a.max_concurrency,
            daily_quota_nanos: a.daily_quota_usd.map(usd_to_nanos),
            quota_reset_minute: a.quota_reset.as_deref().and_then(|r| parse_hhmm(r).ok()).unwrap_or(0),
            weight: a.weight.unwrap_or(1),
            cooldowns: a
                .cooldowns
                .iter()
                .filter_map(|(k, d)| CooldownClass::parse_key(k).ok().map(|c| (c, d.0)))
                .collect(),
        });
    }
    for r in accounts {
        let Ok(base) = UpstreamBase::parse(&r.base_url) else {
            tracing::warn!(account = %r.id, "stored account has an invalid base_url; skipped");
            continue;
        };
        let secret = match secrets.open(&r.secret) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(account = %r.id, error = %e, "cannot open stored account secret; skipped");
                continue;
            }
        };
        let id: Arc<str> = r.id.as_str().into();
        let profile = match r.inference_profile.as_deref().map(Profile::parse).transpose() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(account = %r.id, error = %e, "stored account has an unusable inference profile; skipped");
                continue;
            }
        };
        let bedrock = BedrockPlace {
            region: r.region.as_deref(),
            profile,
        };
        let Some(cred) = credential(config, oauth, &id, r.kind, &secret, r.oauth.as_ref(), &bedrock) else {
            tracing::warn!(account = %r.id, "stored account has an unusable credential; skipped");
            continue;
        };
        specs.push(AccountSpec {
            id,
            name: r.name.as_str().into(),
            kind: r.kind,
            base,
            credential: cred.credential,
            tier_blacklist: cred.tier_blacklist,
            priority: r.priority,
            enabled: r.enabled,
            models: r.models,
            model_map: r.model_map,
            source: Source::Admin,
            group: r.group,
            proxy: match &r.proxy {
                Some(sealed) => match secrets.open(sealed).map(|p| OutboundProxy::parse(&p)) {
                    Ok(Ok(p)) => Some(Arc::new(p)),
                    _ => {
                        tracing::error!(account = %r.id, "stored account has an unusable proxy; skipped");
                        continue;
                    }
                },
                None => None,
            },
            max_concurrency: r.max_concurrency,
            daily_quota_nanos: r.daily_quota_usd.map(usd_to_nanos),
            quota_reset_minute: r.quota_reset.as_deref().and_then(|q| parse_hhmm(q).ok()).unwrap_or(0),
            weight: r.weight.unwrap_or(1),
            cooldowns: r
                .cooldowns
                .iter()
                .filter_map(|(k, d)| {
                    let c = CooldownClass::parse_key(k).ok()?;
                    let d = crate::config::Dur::parse(d).ok()?;
                    Some((c, d.0))
                })
                .collect(),
        });
    }
    if let Some(oauth) = oauth {
        oauth.retain(&specs.iter().map(|s| &*s.id).collect());
    }
    let bindings: Vec<&str> = snap.keys.iter().filter_map(|(k, ..)| k.bind.as_deref()).collect();
    snap.pool = scheduler.pool(specs, &bindings);
    snap
}

fn usd_to_nanos(usd: f64) -> u64 {
    (usd * 1e9).round().max(0.0) as u64
}

/// How an account authenticates, ready for the hot path.
struct OpenCredential {
    credential: Credential,
    tier_blacklist: Vec<String>,
}

/// Where a Bedrock account serves: its region and inference profile.
struct BedrockPlace<'a> {
    region: Option<&'a str>,
    profile: Option<Profile>,
}

fn credential(
    config: &Config,
    oauth: Option<&OAuthTokens>,
    id: &Arc<str>,
    kind: AccountKind,
    secret: &str,
    meta: Option<&OAuthMeta>,
    bedrock: &BedrockPlace<'_>,
) -> Option<OpenCredential> {
    let plain = |credential| {
        Some(OpenCredential {
            credential,
            tier_blacklist: Vec::new(),
        })
    };
    match kind {
        AccountKind::ClaudeConsole | AccountKind::Ccr => {
            let (name, value) = anthropic_console::auth_header(secret).ok()?;
            plain(Credential::Header(name, value))
        }
        AccountKind::Bedrock => {
            let opened = BedrockSecret::parse(secret)
                .and_then(|s| BedrockAuth::new(bedrock.region.unwrap_or_default(), bedrock.profile.clone(), &s))
                .map_err(|e| tracing::warn!(account = %id, error = %e, "unusable Bedrock credential"))
                .ok()?;
            plain(Credential::Bedrock(Arc::new(opened)))
        }
        AccountKind::ClaudeOauth => {
            let meta = meta.cloned().unwrap_or_default();
            let cell = oauth?
                .cell_for(id, TokenPair::parse(secret), &meta)
                .map_err(|e| tracing::warn!(account = %id, error = %e, "unusable OAuth token"))
                .ok()?;
            Some(OpenCredential {
                credential: Credential::OAuth(cell),
                tier_blacklist: meta
                    .tier
                    .as_deref()
                    .map(|t| config.providers.anthropic.oauth.tier_blacklist(t))
                    .unwrap_or_default(),
            })
        }
    }
}

/// Loads keys and accounts from the store and swaps in a new snapshot.
pub async fn reload(
    config: &Config,
    secrets: &Secrets,
    scheduler: &Scheduler,
    oauth: &OAuthTokens,
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
    /// Live tokens of `claude-oauth` accounts, kept across reloads.
    pub oauth: Arc<OAuthTokens>,
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
