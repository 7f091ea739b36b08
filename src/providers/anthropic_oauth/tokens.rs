//! Live tokens of `claude-oauth` accounts: the shared refresh machinery of [`crate::credentials`]
//! with Anthropic's refresh grant, and the background work that keeps every account's token
//! fresh and its profile (subscription tier) and usage read.
//!
//! The account type `A` is the scheduler's account, known here through [`Holder`]; what a refused
//! refresh does to it is handed in by whoever builds the tokens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;

use super::flow;
use super::settings::OAuthSettings;
use crate::credentials::client::OAuthClient;
use crate::credentials::{Grant, Holder, Live, OAuthError, OnRefused, Refreshed, Shared, TokenCell, Tokens};
use crate::outbound::OutboundProxy;
use crate::store::Store;

/// How often the profile (subscription tier) is read again.
const PROFILE_EVERY_MS: i64 = 24 * 3600 * 1000;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The refresh grant of Anthropic's token endpoint.
struct ClaudeGrant {
    client: Arc<OAuthClient>,
    settings: OAuthSettings,
}

#[async_trait]
impl Grant for ClaudeGrant {
    async fn refresh(&self, refresh_token: &str, proxy: Option<&OutboundProxy>) -> Result<Refreshed, OAuthError> {
        Ok(flow::refresh(&self.client, &self.settings, refresh_token, proxy)
            .await?
            .into())
    }

    fn timeout(&self) -> Duration {
        self.settings.timeout.0
    }
}

/// Every `claude-oauth` account's live token, and the work that keeps them fresh.
pub struct OAuthTokens<A> {
    settings: OAuthSettings,
    /// The Anthropic API, where the profile and usage endpoints are by default.
    api_base: String,
    store: Arc<dyn Store>,
    pub client: Arc<OAuthClient>,
    tokens: Arc<Tokens<A>>,
}

impl<A: Holder> OAuthTokens<A> {
    /// `on_refused` takes an account whose refresh token was refused out of the pool.
    pub fn new(settings: OAuthSettings, api_base: String, shared: Shared, on_refused: OnRefused<A>) -> Self {
        let client = Arc::new(OAuthClient::new(settings.timeout.0));
        let grant = ClaudeGrant {
            client: client.clone(),
            settings: settings.clone(),
        };
        OAuthTokens {
            settings,
            api_base,
            store: shared.store.clone(),
            client,
            tokens: Arc::new(Tokens::new(Box::new(grant), shared, on_refused)),
        }
    }

    /// The token cells of these accounts and their refresh: what snapshots and requests use.
    pub fn tokens(&self) -> &Arc<Tokens<A>> {
        &self.tokens
    }

    /// Reads the profile and returns `(tier, email)`.
    pub async fn profile(
        &self,
        access_token: &str,
        proxy: Option<&OutboundProxy>,
    ) -> Result<(Option<String>, Option<String>), OAuthError> {
        let v = self
            .client
            .get_json(
                &self.settings.profile_url(&self.api_base),
                &[("anthropic-beta", &self.settings.beta)],
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
    /// `accounts` gives the current accounts (those of the latest snapshot).
    pub async fn run(self: Arc<Self>, accounts: impl Fn() -> Vec<Arc<A>>) {
        let check = self.settings.refresh_check.0;
        let poll = self.settings.usage_poll.0;
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
            self.check_all(&accounts(), refresh_due).await;
        }
    }

    /// One pass of the background work over every `claude-oauth` account: refreshes (when
    /// `refresh_due`), then profile and usage reads that are due.
    pub async fn check_all(&self, accounts: &[Arc<A>], refresh_due: bool) {
        let ahead = self.settings.refresh_ahead.0.as_millis() as i64;
        let poll = self.settings.usage_poll.0.as_millis() as i64;
        for (account, live) in self.tokens.keep_all_fresh(accounts, refresh_due, ahead).await {
            let Some(cell) = account.token() else { continue };
            let now = now_ms();
            if account.stored() && cell.claim_profile_read(now, PROFILE_EVERY_MS) {
                self.update_profile(&*account, &live).await;
            }
            if poll > 0 && cell.claim_usage_poll(now, poll) {
                self.poll_usage(&*account, cell, &live).await;
            }
        }
    }

    async fn update_profile(&self, account: &A, live: &Live) {
        let (tier, email) = match self.profile(&live.pair.access_token, account.proxy()).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(account = %account.name(), error = %e, "reading the OAuth profile failed");
                return;
            }
        };
        let now = now_ms();
        match self.store.get_account(account.id()).await {
            Ok(Some(mut r)) => {
                let Some(meta) = r.oauth.as_mut() else { return };
                let changed = meta.tier != tier || (email.is_some() && meta.email != email);
                meta.profile_checked_at = Some(now);
                meta.tier = tier.or(meta.tier.take());
                if email.is_some() {
                    meta.email = email;
                }
                if let Err(e) = self.store.put_account(&r).await {
                    tracing::warn!(account = %account.name(), error = %e, "saving the OAuth profile failed");
                } else if changed && let Err(e) = self.store.publish_change().await {
                    tracing::warn!(error = %e, "announcing the OAuth profile failed");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(account = %account.name(), error = %e, "reading the account failed"),
        }
    }

    async fn poll_usage(&self, account: &A, cell: &TokenCell, live: &Live) {
        match self
            .client
            .get_json(
                &self.settings.usage_url(&self.api_base),
                &[("anthropic-beta", &self.settings.beta)],
                &live.pair.access_token,
                account.proxy(),
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
                cell.set_usage(Value::Object(view));
            }
            Err(e) => tracing::debug!(account = %account.name(), error = %e, "reading OAuth usage failed"),
        }
    }
}
