//! Live tokens of `gemini-oauth` accounts: the shared refresh machinery of [`crate::credentials`]
//! with Google's refresh grant, the background pass that renews each token ahead of expiry, and
//! each account's Code Assist project ([`super::project`]).
//!
//! The account type `A` is the scheduler's account, known here through [`Holder`] (and
//! [`CodeAssistHolder`] for project discovery); what a refused refresh does to it is handed in by
//! whoever builds the tokens.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::HeaderValue;

use super::flow;
use super::project::{CodeAssistHolder, Projects};
use super::settings::GoogleOAuthSettings;
use crate::credentials::client::OAuthClient;
use crate::credentials::{Grant, Holder, OAuthError, OnRefused, Refreshed, Shared, Tokens};
use crate::outbound::OutboundProxy;
use crate::providers::gemini::Project;

/// The refresh grant of Google's token endpoint: the refresh token does not rotate, and the id
/// token names the e-mail again.
struct GoogleGrant {
    client: Arc<OAuthClient>,
    settings: GoogleOAuthSettings,
}

#[async_trait]
impl Grant for GoogleGrant {
    async fn refresh(&self, refresh_token: &str, proxy: Option<&OutboundProxy>) -> Result<Refreshed, OAuthError> {
        Ok(flow::refresh(&self.client, &self.settings, refresh_token, proxy)
            .await?
            .into())
    }

    fn timeout(&self) -> Duration {
        self.settings.timeout.0
    }
}

/// Every `gemini-oauth` account's live token and Code Assist project, and the work that keeps the
/// tokens fresh.
pub struct GoogleTokens<A> {
    settings: GoogleOAuthSettings,
    pub client: Arc<OAuthClient>,
    tokens: Arc<Tokens<A>>,
    projects: Arc<Projects<A>>,
}

impl<A: Holder> GoogleTokens<A> {
    /// `on_refused` takes an account whose refresh token was refused out of the pool.
    pub fn new(settings: GoogleOAuthSettings, shared: Shared, on_refused: OnRefused<A>) -> Self {
        let client = Arc::new(OAuthClient::new(settings.timeout.0));
        let grant = GoogleGrant {
            client: client.clone(),
            settings: settings.clone(),
        };
        let tasks = shared.tasks.clone();
        let tokens = Arc::new(Tokens::new(Box::new(grant), shared, on_refused));
        GoogleTokens {
            projects: Arc::new(Projects::new(client.clone(), settings.clone(), tokens.clone(), tasks)),
            settings,
            client,
            tokens,
        }
    }

    /// The token cells of these accounts and their refresh: what snapshots and requests use.
    pub fn tokens(&self) -> &Arc<Tokens<A>> {
        &self.tokens
    }

    /// The project cell of an account for a new snapshot, given the project its record names
    /// (see [`Projects::cell_for`]).
    pub fn project_cell(&self, id: &Arc<str>, known: Option<String>) -> Arc<Project> {
        self.projects.cell_for(id, known)
    }

    /// The project an account's requests go to now, when known.
    pub fn known_project(&self, id: &str) -> Option<Arc<String>> {
        self.projects.known(id)
    }

    /// Forgets the cells of accounts that no longer exist.
    pub fn retain(&self, live_ids: &HashSet<&str>) {
        self.tokens.retain(live_ids);
        self.projects.retain(live_ids);
    }

    /// Keeps every account's token fresh until shutdown. `accounts` gives the current
    /// `gemini-oauth` accounts (those of the latest snapshot).
    pub async fn run(self: Arc<Self>, accounts: impl Fn() -> Vec<Arc<A>>) {
        let (check, ahead) = (self.settings.refresh_check.0, self.settings.refresh_ahead.0);
        self.tokens.clone().keep_fresh_forever(check, ahead, accounts).await;
    }
}

impl<A: CodeAssistHolder> GoogleTokens<A> {
    /// The Code Assist project of `account`: the known one at once; else the one discovery finds
    /// for it (once per account; concurrent callers wait for the same discovery), then kept.
    /// `bearer` is the account's live `Authorization` header. `Err` says why none was found.
    pub async fn project(&self, account: &A, bearer: &HeaderValue) -> Result<Arc<String>, String> {
        self.projects.project(account, bearer).await
    }
}
