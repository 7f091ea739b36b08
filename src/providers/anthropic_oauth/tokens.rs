//! Live OAuth tokens: one [`TokenCell`] per `claude-oauth` account, shared by every snapshot
//! (like the scheduler's runtimes), read on the hot path with one atomic load.
//!
//! A token is refreshed ahead of expiry by [`OAuthTokens::run`], or on demand by a request that
//! meets an expired token or a 401. Whatever triggers it, a refresh runs once at a time per
//! account: a local mutex (so 100 requests on this instance wait for one refresh), then a lock in
//! the coordination store (so instances sharing Redis do too), and before calling the token
//! endpoint the store is read again, since another instance may have finished a refresh a moment
//! ago. The new pair is written to the store before the lock is released, so a rotated refresh
//! token is never used twice nor lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::HeaderValue;
use serde_json::Value;

use super::TokenPair;
use super::flow::{OAuthClient, OAuthError};
use crate::config::Config;
use crate::lifecycle::Tasks;
use crate::metrics::Metrics;
use crate::scheduler::{Account, Scheduler};
use crate::secrets::Secrets;
use crate::state::Snapshot;
use crate::store::coord::{AccountHealth, Coordination, HealthState};
use crate::store::{OAuthMeta, Store};

/// A token this close to its expiry counts as expired (clock skew, request time).
const EXPIRY_SKEW_MS: i64 = 60_000;
/// The cross-instance refresh lock frees itself after this long if its holder dies.
const LOCK_TTL: Duration = Duration::from_secs(60);
/// How often the profile (subscription tier) is read again.
const PROFILE_EVERY_MS: i64 = 24 * 3600 * 1000;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A token as requests use it.
pub struct Live {
    pub pair: TokenPair,
    /// `Bearer <access token>`, marked sensitive.
    pub header: HeaderValue,
    /// Unix ms.
    pub expires_at: Option<i64>,
    /// When the pair was obtained (Unix ms); orders pairs across instances.
    pub issued_at: i64,
}

impl Live {
    pub fn new(pair: TokenPair, expires_at: Option<i64>, issued_at: i64) -> Result<Live, String> {
        let mut header = HeaderValue::from_str(&format!("Bearer {}", pair.access_token))
            .map_err(|_| "the access token contains characters not allowed in a header".to_string())?;
        header.set_sensitive(true);
        Ok(Live {
            pair,
            header,
            expires_at,
            issued_at,
        })
    }

    /// Whether the access token is expired (or about to be) at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at.is_some_and(|e| e - EXPIRY_SKEW_MS <= now_ms)
    }
}

/// The live token of one account, and what the background work keeps beside it.
pub struct TokenCell {
    live: ArcSwap<Live>,
    refresh: tokio::sync::Mutex<()>,
    /// The `issued_at` of the pair the store last showed: behind the live one means the store
    /// missed a write (it is written again).
    store_issued_at: AtomicI64,
    profile_checked_at: AtomicI64,
    last_usage_poll: AtomicI64,
    usage: Mutex<Option<Value>>,
}

impl std::fmt::Debug for TokenCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let live = self.live.load();
        f.debug_struct("TokenCell")
            .field("expires_at", &live.expires_at)
            .field("issued_at", &live.issued_at)
            .finish_non_exhaustive()
    }
}

impl TokenCell {
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// The last answer of the usage endpoint, with `fetched_at` (Unix ms).
    pub fn usage(&self) -> Option<Value> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Why an account has no usable token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token expired and the account has no refresh token")]
    NoRefreshToken,
    #[error("token refresh {0}")]
    Refresh(OAuthError),
    #[error("another instance is refreshing the token and did not finish in time")]
    LockTimeout,
    #[error("this process is handing over to a new one, which refreshes tokens from now on")]
    HandingOver,
}

impl TokenError {
    /// Whether the account's grant is dead (only an admin brings it back).
    pub fn is_permanent(&self) -> bool {
        match self {
            TokenError::NoRefreshToken => true,
            TokenError::Refresh(e) => e.is_refusal(),
            TokenError::LockTimeout | TokenError::HandingOver => false,
        }
    }
}

/// Every `claude-oauth` account's live token, and the work that keeps them fresh.
pub struct OAuthTokens {
    config: Arc<Config>,
    secrets: Arc<Secrets>,
    store: Arc<dyn Store>,
    coord: Arc<dyn Coordination>,
    scheduler: Arc<Scheduler>,
    metrics: Arc<Metrics>,
    /// Where refreshes and health writes run, as work that shutdown waits for.
    tasks: Tasks,
    pub client: OAuthClient,
    cells: Mutex<HashMap<Arc<str>, Arc<TokenCell>>>,
}

impl OAuthTokens {
    pub fn new(
        config: Arc<Config>,
        secrets: Arc<Secrets>,
        store: Arc<dyn Store>,
        coord: Arc<dyn Coordination>,
        scheduler: Arc<Scheduler>,
        metrics: Arc<Metrics>,
        tasks: Tasks,
    ) -> Self {
        let client = OAuthClient::new(config.providers.anthropic.oauth.timeout.0);
        OAuthTokens {
            config,
            secrets,
            store,
            coord,
            scheduler,
            metrics,
            tasks,
            client,
            cells: Mutex::new(HashMap::new()),
        }
    }

    fn cfg(&self) -> &super::settings::OAuthSettings {
        &self.config.providers.anthropic.oauth
    }

    /// The cell of an account for a new snapshot: created on first sight, and given the store's
    /// pair when that one is newer than the live one.
    pub fn cell_for(&self, id: &Arc<str>, pair: TokenPair, meta: &OAuthMeta) -> Result<Arc<TokenCell>, String> {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cell) = cells.get(id) {
            cell.store_issued_at.store(meta.issued_at, Ordering::Relaxed);
            // Local attempts count too (a setup token cannot read the profile at all).
            cell.profile_checked_at
                .fetch_max(meta.profile_checked_at.unwrap_or(0), Ordering::Relaxed);
            let live = cell.live.load();
            if meta.issued_at > live.issued_at || (meta.issued_at == live.issued_at && pair != live.pair) {
                cell.live
                    .store(Arc::new(Live::new(pair, meta.expires_at, meta.issued_at)?));
            }
            return Ok(cell.clone());
        }
        let cell = Arc::new(TokenCell {
            live: ArcSwap::from_pointee(Live::new(pair, meta.expires_at, meta.issued_at)?),
            refresh: tokio::sync::Mutex::new(()),
            store_issued_at: AtomicI64::new(meta.issued_at),
            profile_checked_at: AtomicI64::new(meta.profile_checked_at.unwrap_or(0)),
            last_usage_poll: AtomicI64::new(0),
            usage: Mutex::new(None),
        });
        cells.insert(id.clone(), cell.clone());
        Ok(cell)
    }

    /// Forgets the cells of accounts that no longer exist.
    pub fn retain(&self, live_ids: &std::collections::HashSet<&str>) {
        self.cells
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| live_ids.contains(&**id));
    }

    pub fn cell(&self, id: &str) -> Option<Arc<TokenCell>> {
        self.cells.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// The token a request should use now: the live one, or a refreshed one when it expired.
    pub async fn credential(self: &Arc<Self>, account: &Arc<Account>) -> Result<Arc<Live>, TokenError> {
        let Some(cell) = account.oauth() else {
            return Err(TokenError::NoRefreshToken);
        };
        let live = cell.live();
        if !live.expired(now_ms()) {
            return Ok(live);
        }
        self.refresh(account, live.issued_at).await
    }

    /// Replaces the token that `stale_issued_at` names, once: if another task or instance already
    /// did, its pair is returned. The refresh runs as its own task, so a caller that goes away
    /// (a client that disconnects, a background loop stopped at shutdown) cannot interrupt it
    /// between the token endpoint's answer and the saving of the rotated refresh token; shutdown
    /// waits for it.
    pub async fn refresh(
        self: &Arc<Self>,
        account: &Arc<Account>,
        stale_issued_at: i64,
    ) -> Result<Arc<Live>, TokenError> {
        let this = self.clone();
        let account = account.clone();
        self.tasks
            .spawn_work("oauth token refresh", async move {
                this.refresh_now(&account, stale_issued_at).await
            })
            .await
            .unwrap_or_else(|e| {
                Err(TokenError::Refresh(OAuthError::Unavailable(format!(
                    "refresh task: {e}"
                ))))
            })
    }

    async fn refresh_now(&self, account: &Account, stale_issued_at: i64) -> Result<Arc<Live>, TokenError> {
        let Some(cell) = account.oauth().map(|c| &**c) else {
            return Err(TokenError::NoRefreshToken);
        };
        let _local = cell.refresh.lock().await;
        let current = cell.live();
        if current.issued_at != stale_issued_at && !current.expired(now_ms()) {
            return Ok(current);
        }
        if let Some(newer) = self.adopt_from_store(account, cell, stale_issued_at).await {
            return Ok(newer);
        }
        if current.pair.refresh_token.is_none() {
            return Err(TokenError::NoRefreshToken);
        }
        if crate::lifecycle::draining() {
            // The new process owns the store from now on: a refresh here could not save the
            // rotated refresh token, and losing it would lock the account out.
            return Err(TokenError::HandingOver);
        }
        let scope = format!("oauth-refresh:{}", account.id);
        let holder = uuid::Uuid::new_v4().to_string();
        let deadline = Instant::now() + self.cfg().timeout.0 * 2 + Duration::from_secs(5);
        loop {
            match self.coord.lease_acquire(&scope, &holder, 1, LOCK_TTL).await {
                Ok(true) => break,
                Ok(false) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if let Some(newer) = self.adopt_from_store(account, cell, stale_issued_at).await {
                        return Ok(newer);
                    }
                    if Instant::now() > deadline {
                        return Err(TokenError::LockTimeout);
                    }
                }
                Err(e) => {
                    // Without the shared store there is no one to race with that could be told.
                    tracing::warn!(account = %account.name, error = %e, "refresh lock unavailable; refreshing without it");
                    break;
                }
            }
        }
        let result = self.refresh_locked(account, cell, stale_issued_at).await;
        if let Err(e) = self.coord.lease_release(&scope, &holder).await {
            tracing::warn!(account = %account.name, error = %e, "releasing the refresh lock failed; it expires by itself");
        }
        result
    }

    async fn refresh_locked(
        &self,
        account: &Account,
        cell: &TokenCell,
        stale_issued_at: i64,
    ) -> Result<Arc<Live>, TokenError> {
        // Another instance may have finished just before the lock was ours.
        if let Some(newer) = self.adopt_from_store(account, cell, stale_issued_at).await {
            return Ok(newer);
        }
        let current = cell.live();
        let Some(refresh_token) = current.pair.refresh_token.clone() else {
            return Err(TokenError::NoRefreshToken);
        };
        let started = Instant::now();
        match self
            .client
            .refresh(self.cfg(), &refresh_token, account.proxy.as_deref())
            .await
        {
            Ok(answer) => {
                let now = now_ms();
                let pair = TokenPair {
                    access_token: answer.pair.access_token,
                    // Not every grant rotates the refresh token.
                    refresh_token: answer.pair.refresh_token.or(Some(refresh_token)),
                };
                let expires_at = answer.expires_in.map(|s| now + (s as i64).saturating_mul(1000));
                let live = Arc::new(
                    Live::new(pair, expires_at, now).map_err(|e| TokenError::Refresh(OAuthError::Unavailable(e)))?,
                );
                let scopes = answer.scopes;
                // Written before the lock is released: the next refresh, here or elsewhere, uses
                // the rotated token.
                self.persist(&account.id, &live, |m| {
                    m.refreshed_at = Some(now);
                    if !scopes.is_empty() {
                        m.scopes = scopes.clone();
                    }
                })
                .await;
                cell.live.store(live.clone());
                self.metrics.oauth_refreshes.with_label_values(&["ok"]).inc();
                tracing::info!(account = %account.name, took_ms = started.elapsed().as_millis() as u64, expires_at = ?live.expires_at, "OAuth token refreshed");
                Ok(live)
            }
            Err(e) if e.is_refusal() => {
                self.metrics.oauth_refreshes.with_label_values(&["refused"]).inc();
                tracing::error!(account = %account.name, error = %e, "OAuth token refresh refused; the account leaves the pool until it is authorized again");
                let health = AccountHealth::starting(
                    HealthState::Unauthorized,
                    format!("OAuth token refresh {e}"),
                    now_ms(),
                    None,
                );
                self.scheduler
                    .mark_shared(account, health, self.coord.clone(), self.store.clone(), &self.tasks);
                Err(TokenError::Refresh(e))
            }
            Err(e) => {
                self.metrics.oauth_refreshes.with_label_values(&["failed"]).inc();
                tracing::warn!(account = %account.name, error = %e, "OAuth token refresh failed; will try again");
                Err(TokenError::Refresh(e))
            }
        }
    }

    /// Takes the store's pair when it is newer than `than_issued_at` (another instance refreshed).
    async fn adopt_from_store(&self, account: &Account, cell: &TokenCell, than_issued_at: i64) -> Option<Arc<Live>> {
        let record = match self.store.get_account(&account.id).await {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(account = %account.name, error = %e, "reading the account's tokens failed");
                return None;
            }
        };
        let meta = record.oauth?;
        let live = cell.live();
        if meta.issued_at <= than_issued_at.max(live.issued_at) {
            return (live.issued_at > than_issued_at && !live.expired(now_ms())).then_some(live);
        }
        let secret = self.secrets.open(&record.secret).ok()?;
        let newer = Arc::new(Live::new(TokenPair::parse(&secret), meta.expires_at, meta.issued_at).ok()?);
        cell.store_issued_at.store(meta.issued_at, Ordering::Relaxed);
        cell.live.store(newer.clone());
        (!newer.expired(now_ms())).then_some(newer)
    }

    /// Writes a pair (and whatever `edit` changes) into the account's record, retrying a few
    /// times; announces the change.
    async fn persist(&self, id: &str, live: &Live, edit: impl Fn(&mut OAuthMeta)) {
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            let mut record = match self.store.get_account(id).await {
                Ok(Some(r)) => r,
                Ok(None) => return, // deleted meanwhile
                Err(e) => {
                    tracing::warn!(account = %id, error = %e, "reading the account to save its tokens failed");
                    continue;
                }
            };
            let mut meta = record.oauth.take().unwrap_or_default();
            if meta.issued_at > live.issued_at {
                return; // something newer is there already
            }
            meta.issued_at = live.issued_at;
            meta.expires_at = live.expires_at;
            edit(&mut meta);
            record.oauth = Some(meta);
            record.secret = self.secrets.seal(&live.pair.to_secret());
            match self.store.put_account(&record).await {
                Ok(()) => {
                    if let Some(cell) = self.cell(id) {
                        cell.store_issued_at.store(live.issued_at, Ordering::Relaxed);
                    }
                    if let Err(e) = self.store.publish_change().await {
                        tracing::warn!(error = %e, "announcing new tokens failed");
                    }
                    return;
                }
                Err(e) => tracing::warn!(account = %id, error = %e, "saving refreshed tokens failed"),
            }
        }
        tracing::error!(account = %id, "refreshed tokens are not saved yet; saving them again on the next check");
    }

    /// Reads the profile and returns `(tier, email)`.
    pub async fn profile(
        &self,
        access_token: &str,
        proxy: Option<&crate::outbound::OutboundProxy>,
    ) -> Result<(Option<String>, Option<String>), OAuthError> {
        let api = &self.config.providers.anthropic;
        let v = self
            .client
            .get_json(
                &api.oauth.profile_url(api.api_base.as_str()),
                &api.oauth.beta,
                access_token,
                proxy,
            )
            .await?;
        let email = v["account"]["email"]
            .as_str()
            .or_else(|| v["account"]["email_address"].as_str())
            .map(String::from);
        Ok((super::tier_of(&v).map(String::from), email))
    }

    /// Keeps every account's token fresh, and its profile and usage read, until shutdown.
    pub async fn run(self: Arc<Self>, snapshot: Arc<ArcSwap<Snapshot>>) {
        let check = self.cfg().refresh_check.0;
        let poll = self.cfg().usage_poll.0;
        // Wake for whichever is due first; each kind of work keeps its own period.
        let period = if poll.is_zero() { check } else { check.min(poll) };
        let mut tick = tokio::time::interval(period.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_check: Option<Instant> = None;
        loop {
            tick.tick().await;
            let refresh_due = last_check.is_none_or(|t| t.elapsed() + Duration::from_millis(50) >= check);
            if refresh_due {
                last_check = Some(Instant::now());
            }
            self.check_all(&snapshot.load_full(), refresh_due).await;
        }
    }

    /// One pass of the background work over every `claude-oauth` account: refreshes (when
    /// `refresh_due`), then profile and usage reads that are due.
    pub async fn check_all(self: &Arc<Self>, snap: &Snapshot, refresh_due: bool) {
        let ahead = self.cfg().refresh_ahead.0.as_millis() as i64;
        let poll = self.cfg().usage_poll.0.as_millis() as i64;
        if crate::lifecycle::draining() {
            return;
        }
        for account in snap.pool.all() {
            let Some(cell) = account.oauth() else { continue };
            let now = now_ms();
            if !account.enabled
                || account
                    .rt
                    .health(now)
                    .is_some_and(|h| h.state == HealthState::Unauthorized)
            {
                continue;
            }
            let mut live = cell.live();
            if refresh_due && live.issued_at > cell.store_issued_at.load(Ordering::Relaxed) && account.source_is_store()
            {
                self.persist(&account.id, &live, |_| {}).await;
            }
            if refresh_due && live.pair.refresh_token.is_some() && live.expires_at.is_some_and(|e| e - ahead <= now) {
                match self.refresh(account, live.issued_at).await {
                    Ok(l) => live = l,
                    Err(e) => {
                        tracing::warn!(account = %account.name, error = %e, "background token refresh did not succeed");
                        continue;
                    }
                }
            }
            if live.expired(now) {
                continue;
            }
            if account.source_is_store() && now - cell.profile_checked_at.load(Ordering::Relaxed) >= PROFILE_EVERY_MS {
                cell.profile_checked_at.store(now, Ordering::Relaxed);
                self.update_profile(account, &live).await;
            }
            if poll > 0 && now - cell.last_usage_poll.load(Ordering::Relaxed) >= poll {
                cell.last_usage_poll.store(now, Ordering::Relaxed);
                self.poll_usage(account, cell, &live).await;
            }
        }
    }

    async fn update_profile(&self, account: &Account, live: &Live) {
        let (tier, email) = match self.profile(&live.pair.access_token, account.proxy.as_deref()).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(account = %account.name, error = %e, "reading the OAuth profile failed");
                return;
            }
        };
        let now = now_ms();
        match self.store.get_account(&account.id).await {
            Ok(Some(mut r)) => {
                let Some(meta) = r.oauth.as_mut() else { return };
                let changed = meta.tier != tier || (email.is_some() && meta.email != email);
                meta.profile_checked_at = Some(now);
                meta.tier = tier.or(meta.tier.take());
                if email.is_some() {
                    meta.email = email;
                }
                if let Err(e) = self.store.put_account(&r).await {
                    tracing::warn!(account = %account.name, error = %e, "saving the OAuth profile failed");
                } else if changed && let Err(e) = self.store.publish_change().await {
                    tracing::warn!(error = %e, "announcing the OAuth profile failed");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(account = %account.name, error = %e, "reading the account failed"),
        }
    }

    async fn poll_usage(&self, account: &Account, cell: &TokenCell, live: &Live) {
        let api = &self.config.providers.anthropic;
        match self
            .client
            .get_json(
                &api.oauth.usage_url(api.api_base.as_str()),
                &api.oauth.beta,
                &live.pair.access_token,
                account.proxy.as_deref(),
            )
            .await
        {
            Ok(v) => {
                let mut view = serde_json::Map::new();
                for w in ["five_hour", "seven_day", "seven_day_opus", "seven_day_sonnet"] {
                    let window = &v[w];
                    let entry = if window.is_object() {
                        serde_json::json!({
                            "utilization": window["utilization"],
                            "resets_at": window["resets_at"],
                        })
                    } else {
                        Value::Null
                    };
                    view.insert(w.into(), entry);
                }
                view.insert("fetched_at".into(), now_ms().into());
                *cell.usage.lock().unwrap_or_else(|p| p.into_inner()) = Some(Value::Object(view));
            }
            Err(e) => tracing::debug!(account = %account.name, error = %e, "reading OAuth usage failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_count_as_expired_a_minute_early() {
        let pair = TokenPair {
            access_token: "a".into(),
            refresh_token: None,
        };
        let l = Live::new(pair.clone(), Some(100_000), 0).unwrap();
        assert!(!l.expired(39_999));
        assert!(l.expired(40_000));
        assert!(!Live::new(pair, None, 0).unwrap().expired(i64::MAX));
        assert!(
            Live::new(
                TokenPair {
                    access_token: "a\nb".into(),
                    refresh_token: None
                },
                None,
                0
            )
            .is_err()
        );
    }
}
