//! Connecting Google accounts for Gemini Code Assist (`gemini-oauth` accounts):
//! - `POST /admin/api/accounts/gemini-oauth/authorize` starts an authorization and answers the URL
//!   to open (Google's sign-in, as Gemini CLI opens it without a browser at hand) and an opaque
//!   authorization id;
//! - `POST /admin/api/accounts/gemini-oauth/exchange` takes that id and the code that Code
//!   Assist's page shows after the sign-in (or the callback URL that carries it), exchanges it and
//!   stores the account;
//! - `POST /admin/api/accounts/gemini-oauth/import` stores tokens obtained elsewhere: Gemini CLI's
//!   `~/.gemini/oauth_creds.json` as it is, or the plain fields.
//!
//! Both of the last two take the usual account fields (`project_id` among them), or `account_id`
//! to give an existing `gemini-oauth` account new tokens (which also clears an `unauthorized`
//! mark); see [`super::oauth`] for what they share with the other kinds. The e-mail comes from the
//! id token. An account without `project_id` has its Code Assist project looked up right after it
//! is stored (in the background; the account view shows it once found), else by its first
//! request. Tokens are sealed at once and only ever shown masked.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::AdminState;
use super::access::Actor;
use super::oauth::{
    Target, authorize_plain, exchange_error, expiry, fields_or_existing, fresh_meta, imported_pair, now_ms,
    read_exchange, scopes, stored_tokens, string_field, target,
};
use super::routes::{ApiError, bad_request};
use crate::credentials::TokenPair;
use crate::providers::gemini_oauth::flow::{self, Flow};
use crate::store::{AccountKind, OAuthMeta};

const KIND: AccountKind = AccountKind::GeminiOauth;

pub async fn authorize(State(state): State<AdminState>, _actor: Actor, body: Bytes) -> Result<Response, ApiError> {
    authorize_plain(&state, &body, |st, now_s| {
        flow::start(&st.config.providers.google.oauth, &st.secrets, now_s)
    })
    .await
}

pub async fn exchange(State(state): State<AdminState>, _actor: Actor, body: Bytes) -> Result<Response, ApiError> {
    let x = read_exchange::<Flow>(&state, KIND, &body).await?;
    let answer = flow::exchange(
        &state.reloader.oauth.google.client,
        &state.config.providers.google.oauth,
        &x.pending,
        &x.code,
        x.target.proxy(),
    )
    .await
    .map_err(exchange_error)?;
    tracing::info!("Google sign-in code exchanged");
    if answer.pair.refresh_token.is_none() {
        tracing::warn!("Google answered no refresh token; the account stops working when its access token expires");
    }
    let mut meta = fresh_meta(answer.expires_in, answer.scopes);
    meta.email = answer.email;
    save(&state, x.target, answer.pair, meta).await
}

/// The fields an import takes besides the account's: Gemini CLI's `oauth_creds.json` as it is
/// (`access_token`, `refresh_token`, `scope`, `token_type`, `id_token`, `expiry_date` in Unix
/// ms), and the plain `expires_at` and `scopes` of the other kinds.
pub(super) const IMPORT_FIELDS: [&str; 8] = [
    "access_token",
    "refresh_token",
    "scope",
    "token_type",
    "id_token",
    "expiry_date",
    "expires_at",
    "scopes",
];

pub async fn import(State(state): State<AdminState>, _actor: Actor, body: Bytes) -> Result<Response, ApiError> {
    let (mut taken, fields) = fields_or_existing(&body, KIND, &IMPORT_FIELDS)?;
    from_oauth_creds(&mut taken)?;
    let access = string_field(&mut taken, "access_token")?
        .ok_or_else(|| bad_request("invalid body: missing field `access_token`"))?;
    let refresh = string_field(&mut taken, "refresh_token")?;
    let id_token = string_field(&mut taken, "id_token")?;
    let expires_at = expiry(taken.remove("expires_at"))?;
    let scopes = scopes(&mut taken)?;
    let pair = imported_pair(access, refresh, expires_at)?;
    let target = target(&state, KIND, &mut taken, fields).await?;
    let meta = OAuthMeta {
        expires_at,
        scopes,
        email: id_token.as_deref().and_then(flow::email),
        issued_at: now_ms(),
        ..OAuthMeta::default()
    };
    save(&state, target, pair, meta).await
}

/// Gemini CLI's `oauth_creds.json`: its `expiry_date` and `scope` become the plain `expires_at`
/// and `scopes` (which win when both are given); a token type other than `Bearer` is refused.
fn from_oauth_creds(taken: &mut Map<String, Value>) -> Result<(), ApiError> {
    match taken.remove("token_type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t.trim().eq_ignore_ascii_case("bearer") => {}
        Some(_) => {
            return Err(bad_request(
                "invalid body at `token_type`: only Bearer tokens are taken",
            ));
        }
    }
    for (from, to) in [("expiry_date", "expires_at"), ("scope", "scopes")] {
        if let Some(v) = taken.remove(from) {
            taken.entry(to).or_insert(v);
        }
    }
    Ok(())
}

/// Stores the account, then looks up its Code Assist project in the background when it has none
/// yet.
async fn save(state: &AdminState, target: Target, pair: TokenPair, meta: OAuthMeta) -> Result<Response, ApiError> {
    let (status, view) = stored_tokens(state, target, pair, meta).await?;
    find_project_soon(state, &view.id);
    Ok((status, Json(view)).into_response())
}

/// Starts the discovery of the account's project, unless it has one or its token needs a
/// refresh first (its first request then finds the project).
fn find_project_soon(state: &AdminState, id: &str) {
    let google = state.reloader.oauth.google.clone();
    if google.known_project(id).is_some() {
        return;
    }
    let Some(account) = state.reloader.snapshot.load().pool.by_id(id).cloned() else {
        return;
    };
    let Some(live) = account.oauth().map(|c| c.live()) else {
        return;
    };
    if live.expired(now_ms()) {
        return;
    }
    state.tasks.spawn_work("code assist project lookup", async move {
        // The outcome is logged by the discovery.
        let _ = google.project(&account, &live.header).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gemini_cli_oauth_creds_become_the_plain_fields() {
        let mut t = json!({
            "access_token": "ya29.a", "refresh_token": "1//r", "scope": "a b", "token_type": "Bearer",
            "id_token": "i", "expiry_date": 1_764_000_000_000_i64
        })
        .as_object()
        .cloned()
        .unwrap();
        from_oauth_creds(&mut t).unwrap();
        assert_eq!(
            Value::Object(t),
            json!({"access_token": "ya29.a", "refresh_token": "1//r", "scopes": "a b", "id_token": "i", "expires_at": 1_764_000_000_000_i64})
        );
        let mut plain = json!({"expires_at": 1, "expiry_date": 2}).as_object().cloned().unwrap();
        from_oauth_creds(&mut plain).unwrap();
        assert_eq!(plain["expires_at"], 1, "the plain field wins");
        let mut mac = json!({"token_type": "MAC"}).as_object().cloned().unwrap();
        assert!(from_oauth_creds(&mut mac).is_err());
    }
}
