//! [`Tokens`]: the token cells of one provider's accounts, and their refresh: once at a time per
//! account here, under a lock across instances, adopting a pair another instance stored, and
//! saving the new pair before the lock is released.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Live, OAuthError, TokenCell, TokenError, TokenPair, now_ms};
use crate::lifecycle::Tasks;
use crate::metrics::Metrics;
use crate::outbound::OutboundProxy;
use crate::secrets::Secrets;
use crate::store::coord::{AccountHealth, Coordination, HealthState};
use crate::store::{AccountRecord, OAuthMeta, Store};

/// The cross-instance refresh lock frees itself after this long if its holder dies.
const LOCK_TTL: Duration = Duration::from_secs(60);

/// What a token endpoint answered to a refresh.
#[derive(Debug)]
pub struct Refreshed {
    pub pair: TokenPair,
    /// Seconds.
    pub expires_in: Option<u64>,
    pub scopes: Vec<String>,
    /// Who the tokens act for, when the answer says (an OpenID id token); kept in the account's
    /// [`OAuthMeta`] beside the pair.
    pub identity: Option<Identity>,
}

/// Who a token pair acts for, as a token endpoint's id token names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The provider's account (workspace) the tokens act for: ChatGPT's account id.
    pub account_id: Option<String>,
    /// The subscription plan.
    pub plan: Option<String>,
    pub email: Option<String>,
}

impl Identity {
    /// Writes what is known into `meta`, keeping what the answer does not say.
    pub fn apply(&self, meta: &mut OAuthMeta) {
        if self.account_id.is_some() {
            meta.account_id.clone_from(&self.account_id);
        }
        if self.plan.is_some() {
            meta.plan.clone_from(&self.plan);
        }
        if self.email.is_some() {
            meta.email.clone_from(&self.email);
        }
    }
}

/// What differs per provider: its refresh grant. (The pair itself is a [`TokenPair`], sealed the
/// same way for every kind.)
#[async_trait]
pub trait Grant: Send + Sync + 'static {
    /// Trades a refresh token for a new pair, through the account's outbound proxy.
    async fn refresh(&self, refresh_token: &str, proxy: Option<&OutboundProxy>) -> Result<Refreshed, OAuthError>;

    /// The longest one call to the token endpoint may take; a refresh that another instance holds
    /// the lock for is waited for twice that (and 5 s more).
    fn timeout(&self) -> Duration;
}

/// The account a token belongs to: the scheduler's account, which sits above this module.
pub trait Holder: Send + Sync + 'static {
    fn id(&self) -> &Arc<str>;
    fn name(&self) -> &str;
    /// The account's token cell; `None` when it authenticates otherwise.
    fn token(&self) -> Option<&Arc<TokenCell>>;
    /// The outbound proxy of the account's connections, which its token calls go through too.
    fn proxy(&self) -> Option<&OutboundProxy>;
    /// Whether the account lives in the store (created through the admin API), where its tokens
    /// and profile are saved.
    fn stored(&self) -> bool;
    /// Whether the account may use its token at `now_ms`: it is enabled and not unauthorized
    /// (only an admin brings an unauthorized one back; background work leaves it alone).
    fn needs_token(&self, now_ms: i64) -> bool;
}

/// The parts of the relay that refreshes work with.
#[derive(Clone)]
pub struct Shared {
    /// Seals the pair into the account's record.
    pub secrets: Arc<Secrets>,
    pub store: Arc<dyn Store>,
    /// Holds the cross-instance refresh lock.
    pub coord: Arc<dyn Coordination>,
    pub metrics: Arc<Metrics>,
    /// Where refreshes run, as work that shutdown waits for.
    pub tasks: Tasks,
}

/// What a refused refresh does to its account: takes it out of the pool, here and on every
/// instance (the scheduler's business).
pub type OnRefused<A> = Box<dyn Fn(&A, AccountHealth) + Send + Sync>;

/// The token cells of one provider's accounts (of type `A`), and their refresh.
pub struct Tokens<A> {
    grant: Box<dyn Grant>,
    shared: Shared,
    on_refused: OnRefused<A>,
    cells: Mutex<HashMap<Arc<str>, Arc<TokenCell>>>,
}

impl<A: Holder> Tokens<A> {
    pub fn new(grant: Box<dyn Grant>, shared: Shared, on_refused: OnRefused<A>) -> Self {
        Tokens {
            grant,
            shared,
            on_refused,
            cells: Mutex::new(HashMap::new()),
        }
    }

    /// The cell of an account for a new snapshot: created on first sight, and given the store's
    /// pair when that one is newer than the live one.
    pub fn cell_for(&self, id: &Arc<str>, pair: TokenPair, meta: &OAuthMeta) -> Result<Arc<TokenCell>, String> {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cell) = cells.get(id) {
            cell.store_issued_at.store(meta.issued_at, Ordering::Relaxed);
            cell.saw_profile_read(meta.profile_checked_at.unwrap_or(0));
            let live = cell.live.load();
            if meta.issued_at > live.issued_at || (meta.issued_at == live.issued_at && pair != live.pair) {
                cell.live
                    .store(Arc::new(Live::new(pair, meta.expires_at, meta.issued_at)?));
            }
            return Ok(cell.clone());
        }
        let cell = Arc::new(TokenCell::new(
            Live::new(pair, meta.expires_at, meta.issued_at)?,
            meta.issued_at,
            meta.profile_checked_at.unwrap_or(0),
        ));
        cells.insert(id.clone(), cell.clone());
        Ok(cell)
    }

    /// Forgets the cells of accounts that no longer exist.
    pub fn retain(&self, live_ids: &HashSet<&str>) {
        self.cells
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| live_ids.contains(&**id));
    }

    pub fn cell(&self, id: &str) -> Option<Arc<TokenCell>> {
        self.cells.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// The token a request should use now: the live one, or a refreshed one when it expired.
    pub async fn credential(self: &Arc<Self>, account: &Arc<A>) -> Result<Arc<Live>, TokenError> {
        let Some(cell) = account.token() else {
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
    pub async fn refresh(self: &Arc<Self>, account: &Arc<A>, stale_issued_at: i64) -> Result<Arc<Live>, TokenError> {
        let this = self.clone();
        let account = account.clone();
        self.shared
            .tasks
            .spawn_work("oauth token refresh", async move {
                this.refresh_now(&*account, stale_issued_at).await
            })
            .await
            .unwrap_or_else(|e| {
                Err(TokenError::Refresh(OAuthError::Unavailable(format!(
                    "refresh task: {e}"
                ))))
            })
    }

    /// The background step for one account whose token is in use: writes a pair the store
    /// missed, and refreshes a token that expires within `ahead_ms`. The live token after it;
    /// `None` when a refresh was due and did not succeed (logged).
    pub async fn keep_fresh(
        self: &Arc<Self>,
        account: &Arc<A>,
        cell: &TokenCell,
        now_ms: i64,
        ahead_ms: i64,
    ) -> Option<Arc<Live>> {
        let live = cell.live();
        if live.issued_at > cell.store_issued_at.load(Ordering::Relaxed) && account.stored() {
            self.persist(account.id(), &live, |_| {}).await;
        }
        if live.pair.refresh_token.is_some() && live.expires_at.is_some_and(|e| e - ahead_ms <= now_ms) {
            return match self.refresh(account, live.issued_at).await {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(account = %account.name(), error = %e, "background token refresh did not succeed");
                    None
                }
            };
        }
        Some(live)
    }

    /// One background pass over `accounts` (this provider's): for each enabled, authorized
    /// account, [`Tokens::keep_fresh`] when `refresh` is due (else its live token as it is). The
    /// accounts whose token is usable after it, with that token.
    pub async fn keep_all_fresh(
        self: &Arc<Self>,
        accounts: &[Arc<A>],
        refresh: bool,
        ahead_ms: i64,
    ) -> Vec<(Arc<A>, Arc<Live>)> {
        let mut usable = Vec::new();
        if crate::lifecycle::draining() {
            return usable;
        }
        for account in accounts {
            let Some(cell) = account.token() else { continue };
            let now = now_ms();
            if !account.needs_token(now) {
                continue;
            }
            let live = if refresh {
                match self.keep_fresh(account, cell, now, ahead_ms).await {
                    Some(live) => live,
                    None => continue,
                }
            } else {
                cell.live()
            };
            if !live.expired(now) {
                usable.push((account.clone(), live));
            }
        }
        usable
    }

    /// Runs [`Tokens::keep_all_fresh`] every `check` until shutdown, renewing tokens that
    /// expire within `ahead`. `accounts` gives the provider's current accounts (those of the
    /// latest snapshot).
    pub async fn keep_fresh_forever(
        self: Arc<Self>,
        check: Duration,
        ahead: Duration,
        accounts: impl Fn() -> Vec<Arc<A>>,
    ) {
        let mut tick = tokio::time::interval(check.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ahead = ahead.as_millis() as i64;
        loop {
            tick.tick().await;
            self.keep_all_fresh(&accounts(), true, ahead).await;
        }
    }

    async fn refresh_now(&self, account: &A, stale_issued_at: i64) -> Result<Arc<Live>, TokenError> {
        let Some(cell) = account.token().map(|c| &**c) else {
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
        let scope = format!("oauth-refresh:{}", account.id());
        let holder = uuid::Uuid::new_v4().to_string();
        let deadline = Instant::now() + self.grant.timeout() * 2 + Duration::from_secs(5);
        loop {
            match self.shared.coord.lease_acquire(&scope, &holder, 1, LOCK_TTL).await {
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
                    tracing::warn!(account = %account.name(), error = %e, "refresh lock unavailable; refreshing without it");
                    break;
                }
            }
        }
        let result = self.refresh_locked(account, cell, stale_issued_at).await;
        if let Err(e) = self.shared.coord.lease_release(&scope, &holder).await {
            tracing::warn!(account = %account.name(), error = %e, "releasing the refresh lock failed; it expires by itself");
        }
        result
    }

    async fn refresh_locked(
        &self,
        account: &A,
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
        let metrics = &self.shared.metrics;
        match self.grant.refresh(&refresh_token, account.proxy()).await {
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
                let identity = answer.identity;
                // Written before the lock is released: the next refresh, here or elsewhere, uses
                // the rotated token.
                self.persist(account.id(), &live, |m| {
                    m.refreshed_at = Some(now);
                    if !scopes.is_empty() {
                        m.scopes = scopes.clone();
                    }
                    if let Some(i) = &identity {
                        i.apply(m);
                    }
                })
                .await;
                cell.live.store(live.clone());
                metrics.oauth_refreshes.with_label_values(&["ok"]).inc();
                tracing::info!(account = %account.name(), took_ms = started.elapsed().as_millis() as u64, expires_at = ?live.expires_at, "OAuth token refreshed");
                Ok(live)
            }
            Err(e) if e.is_refusal() => {
                metrics.oauth_refreshes.with_label_values(&["refused"]).inc();
                tracing::error!(account = %account.name(), error = %e, "OAuth token refresh refused; the account leaves the pool until it is authorized again");
                let health = AccountHealth::starting(
                    HealthState::Unauthorized,
                    format!("OAuth token refresh {e}"),
                    now_ms(),
                    None,
                );
                crate::alert_events::raise(
                    crate::alert_events::Alert::new(
                        crate::alert_events::AlertKind::RefreshFailed,
                        crate::alert_events::Severity::Critical,
                        account.name().to_string(),
                        format!(
                            "the token endpoint refused the refresh of account `{}` ({e}); it needs to be authorized again",
                            account.name()
                        ),
                    )
                    .with_details(serde_json::json!({"account": account.name().to_string(), "error": e.to_string()})),
                );
                (self.on_refused)(account, health);
                Err(TokenError::Refresh(e))
            }
            Err(e) => {
                metrics.oauth_refreshes.with_label_values(&["failed"]).inc();
                tracing::warn!(account = %account.name(), error = %e, "OAuth token refresh failed; will try again");
                Err(TokenError::Refresh(e))
            }
        }
    }

    /// Takes the store's pair when it is newer than `than_issued_at` (another instance refreshed).
    async fn adopt_from_store(&self, account: &A, cell: &TokenCell, than_issued_at: i64) -> Option<Arc<Live>> {
        let record = match self.shared.store.get_account(account.id()).await {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(account = %account.name(), error = %e, "reading the account's tokens failed");
                return None;
            }
        };
        let meta = record.oauth?;
        let live = cell.live();
        if meta.issued_at <= than_issued_at.max(live.issued_at) {
            return (live.issued_at > than_issued_at && !live.expired(now_ms())).then_some(live);
        }
        let secret = self.shared.secrets.open(&record.secret).ok()?;
        let newer = Arc::new(Live::new(TokenPair::parse(&secret), meta.expires_at, meta.issued_at).ok()?);
        cell.store_issued_at.store(meta.issued_at, Ordering::Relaxed);
        cell.live.store(newer.clone());
        (!newer.expired(now_ms())).then_some(newer)
    }

    /// Writes a pair (and whatever `edit` changes) into the account's record, retrying a few
    /// times; announces the change.
    async fn persist(&self, id: &str, live: &Live, edit: impl Fn(&mut OAuthMeta)) {
        let secrets = &self.shared.secrets;
        let saved = self
            .rewrite(id, |record| {
                let mut meta = record.oauth.take().unwrap_or_default();
                if meta.issued_at > live.issued_at {
                    return false; // something newer is there already
                }
                meta.issued_at = live.issued_at;
                meta.expires_at = live.expires_at;
                edit(&mut meta);
                record.oauth = Some(meta);
                record.secret = secrets.seal(&live.pair.to_secret());
                true
            })
            .await;
        match saved {
            Rewrite::Written => {
                if let Some(cell) = self.cell(id) {
                    cell.store_issued_at.store(live.issued_at, Ordering::Relaxed);
                }
                self.announce().await;
            }
            Rewrite::Unchanged => {}
            Rewrite::Failed => {
                tracing::error!(account = %id, "refreshed tokens are not saved yet; saving them again on the next check")
            }
        }
    }

    /// Changes the token state kept beside an account's pair (what a provider found for the
    /// account), under the locks a refresh holds (this instance's, then the one across
    /// instances): a refresh cannot save its pair between this read and this write, nor this
    /// write undo its pair. `Err` when the account's record could not be written.
    pub async fn edit_meta(&self, id: &str, name: &str, edit: impl Fn(&mut OAuthMeta)) -> Result<(), String> {
        let cell = self.cell(id);
        let _local = match &cell {
            Some(c) => Some(c.refresh.lock().await),
            None => None,
        };
        let scope = format!("oauth-refresh:{id}");
        let holder = uuid::Uuid::new_v4().to_string();
        let deadline = Instant::now() + self.grant.timeout() * 2 + Duration::from_secs(5);
        let locked = loop {
            match self.shared.coord.lease_acquire(&scope, &holder, 1, LOCK_TTL).await {
                Ok(true) => break true,
                Ok(false) if Instant::now() > deadline => {
                    return Err("another instance held the account's token lock too long".into());
                }
                Ok(false) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => {
                    tracing::warn!(account = %name, error = %e, "token lock unavailable; writing without it");
                    break false;
                }
            }
        };
        let result = self
            .rewrite(id, |record| {
                let Some(meta) = record.oauth.as_mut() else {
                    return false;
                };
                let before = meta.clone();
                edit(meta);
                *meta != before
            })
            .await;
        if locked && let Err(e) = self.shared.coord.lease_release(&scope, &holder).await {
            tracing::warn!(account = %name, error = %e, "releasing the token lock failed; it expires by itself");
        }
        match result {
            Rewrite::Written => {
                self.announce().await;
                Ok(())
            }
            Rewrite::Unchanged => Ok(()),
            Rewrite::Failed => Err("the account's record could not be written".into()),
        }
    }

    /// Tells every instance that an account's token state changed.
    async fn announce(&self) {
        if let Err(e) = self.shared.store.publish_change().await {
            tracing::warn!(error = %e, "announcing new token state failed");
        }
    }

    /// Reads the account's record, lets `change` edit it (`false`: nothing to write) and writes
    /// it back, retrying a few times.
    async fn rewrite(&self, id: &str, change: impl Fn(&mut AccountRecord) -> bool) -> Rewrite {
        let store = &self.shared.store;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            let mut record = match store.get_account(id).await {
                Ok(Some(r)) => r,
                Ok(None) => return Rewrite::Unchanged, // deleted meanwhile
                Err(e) => {
                    tracing::warn!(account = %id, error = %e, "reading the account to save its token state failed");
                    continue;
                }
            };
            if !change(&mut record) {
                return Rewrite::Unchanged;
            }
            match store.put_account(&record).await {
                Ok(()) => return Rewrite::Written,
                Err(e) => tracing::warn!(account = %id, error = %e, "saving the account's token state failed"),
            }
        }
        Rewrite::Failed
    }
}

/// What became of a record rewrite.
enum Rewrite {
    Written,
    /// Nothing to write (or the account is gone).
    Unchanged,
    Failed,
}
