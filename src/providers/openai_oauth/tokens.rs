//! Live tokens of `openai-oauth` accounts: the shared refresh machinery of [`crate::credentials`]
//! with OpenAI's refresh grant, and the background pass that renews each token ahead of expiry.
//!
//! The account type `A` is the scheduler's account, known here through [`Holder`]; what a refused
//! refresh does to it is handed in by whoever builds the tokens.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::flow;
use super::settings::OpenAiOAuthSettings;
use crate::credentials::client::OAuthClient;
use crate::credentials::{Grant, Holder, OAuthError, OnRefused, Refreshed, Shared, Tokens};
use crate::outbound::OutboundProxy;

/// The refresh grant of OpenAI's token endpoint: the refresh token rotates, and the new id token
/// says again whom the tokens act for.
struct ChatGptGrant {
    client: Arc<OAuthClient>,
    settings: OpenAiOAuthSettings,
}

#[async_trait]
impl Grant for ChatGptGrant {
    async fn refresh(&self, refresh_token: &str, proxy: Option<&OutboundProxy>) -> Result<Refreshed, OAuthError> {
        Ok(flow::refresh(&self.client, &self.settings, refresh_token, proxy)
            .await?
            .into())
    }

    fn timeout(&self) -> Duration {
        self.settings.timeout.0
    }
}

/// Every `openai-oauth` account's live token, and the work that keeps them fresh.
pub struct ChatGptTokens<A> {
    settings: OpenAiOAuthSettings,
    pub client: Arc<OAuthClient>,
    tokens: Arc<Tokens<A>>,
}

impl<A: Holder> ChatGptTokens<A> {
    /// `on_refused` takes an account whose refresh token was refused out of the pool.
    pub fn new(settings: OpenAiOAuthSettings, shared: Shared, on_refused: OnRefused<A>) -> Self {
        let client = Arc::new(OAuthClient::new(settings.timeout.0));
        let grant = ChatGptGrant {
            client: client.clone(),
            settings: settings.clone(),
        };
        ChatGptTokens {
            settings,
            client,
            tokens: Arc::new(Tokens::new(Box::new(grant), shared, on_refused)),
        }
    }

    /// The token cells of these accounts and their refresh: what snapshots and requests use.
    pub fn tokens(&self) -> &Arc<Tokens<A>> {
        &self.tokens
    }

    /// Keeps every account's token fresh until shutdown. `accounts` gives the current
    /// `openai-oauth` accounts (those of the latest snapshot).
    pub async fn run(self: Arc<Self>, accounts: impl Fn() -> Vec<Arc<A>>) {
        let (check, ahead) = (self.settings.refresh_check.0, self.settings.refresh_ahead.0);
        self.tokens.clone().keep_fresh_forever(check, ahead, accounts).await;
    }
}
