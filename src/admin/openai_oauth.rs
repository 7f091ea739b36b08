//! Connecting ChatGPT subscriptions for Codex (`openai-oauth` accounts):
//! - `POST /admin/api/accounts/openai-oauth/authorize` starts an authorization and answers the URL
//!   to open (OpenAI's sign-in, as Codex CLI opens it) and an opaque authorization id;
//! - `POST /admin/api/accounts/openai-oauth/exchange` takes that id and the code (bare, or the whole
//!   callback URL `http://localhost:1455/auth/callback?code=…&state=…`, whose state must match),
//!   exchanges it and stores the account;
//! - `POST /admin/api/accounts/openai-oauth/import` stores tokens obtained elsewhere: Codex's
//!   `~/.codex/auth.json` as it is, or the plain fields.
//!
//! Both of the last two take the usual account fields, or `account_id` to give an existing
//! `openai-oauth` account new tokens (which also clears an `unauthorized` mark); see
//! [`super::oauth`] for what they share with the Claude endpoints. The ChatGPT account id (sent as
//! `chatgpt-account-id`), the plan and the e-mail come from the id token. Tokens are sealed at once
//! and only ever shown masked.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use serde_json::{Map, Value};

use super::AdminState;
use super::access::Actor;
use super::oauth::{
    authorize_plain, exchange_error, expiry, fields_or_existing, fresh_meta, imported_pair, now_ms, read_exchange,
    scopes, store_tokens, string_field, target,
};
use super::routes::{ApiError, bad_request};
use crate::credentials::{Identity, TokenPair};
use crate::providers::openai;
use crate::providers::openai_oauth::flow::{self, Flow};
use crate::store::{AccountKind, OAuthMeta};

const KIND: AccountKind = AccountKind::OpenAiOauth;

pub async fn authorize(State(state): State<AdminState>, _actor: Actor, body: Bytes) -> Result<Response, ApiError> {
    authorize_plain(&state, &body, |st, now_s| {
        flow::start(&st.config.providers.openai.oauth, &st.secrets, now_s)
    })
    .await
}

pub async fn exchange(State(state): State<AdminState>, _actor: Actor, body: Bytes) -> Result<Response, ApiError> {
    let x = read_exchange::<Flow>(&state, KIND, &body).await?;
    let answer = flow::exchange(
        &state.reloader.oauth.chatgpt.client,
        &state.config.providers.openai.oauth,
        &x.pending,
        &x.code,
        x.target.proxy(),
    )
    .await
    .map_err(exchange_error)?;
    tracing::info!("ChatGPT sign-in code exchanged");
    let meta = fresh_meta(answer.expires_in, answer.scopes);
    save(&state, x.target, answer.pair, meta, &answer.identity).await
}

/// The fields an import takes besides the account's: Codex's `auth.json` as it is
/// (`OPENAI_API_KEY`, `tokens`, `last_refresh`) or the plain ones.
pub(super) const IMPORT_FIELDS: [&str; 9] = [
    "tokens",
    "OPENAI_API_KEY",
    "last_refresh",
    "access_token",
    "refresh_token",
    "id_token",
    "chatgpt_account_id",
    "expires_at",
    "scopes",
];

pub async fn import(State(state): State<AdminState>, _actor: Actor, body: Bytes) -> Result<Response, ApiError> {
    let (mut taken, fields) = fields_or_existing(&body, KIND, &IMPORT_FIELDS)?;
    from_auth_json(&mut taken)?;
    let access = string_field(&mut taken, "access_token")?
        .ok_or_else(|| bad_request("invalid body: missing field `access_token` (or `tokens.access_token`)"))?;
    let refresh = string_field(&mut taken, "refresh_token")?;
    let id_token = string_field(&mut taken, "id_token")?;
    let given_id = string_field(&mut taken, "chatgpt_account_id")?;
    let expires_at = match expiry(taken.remove("expires_at"))? {
        Some(e) => Some(e),
        None => flow::expiry_s(&access).map(|s| s.saturating_mul(1000)),
    };
    let scopes = scopes(&mut taken)?;
    let pair = imported_pair(access, refresh, expires_at)?;
    let mut identity = flow::identity(id_token.as_deref(), &pair.access_token);
    if given_id.is_some() {
        identity.account_id = given_id;
    }
    let target = target(&state, KIND, &mut taken, fields).await?;
    let meta = OAuthMeta {
        expires_at,
        scopes,
        issued_at: now_ms(),
        ..OAuthMeta::default()
    };
    save(&state, target, pair, meta, &identity).await
}

/// Codex's `auth.json`: `{"OPENAI_API_KEY": null, "tokens": {"id_token", "access_token",
/// "refresh_token", "account_id"}, "last_refresh": "…"}`; its tokens become the plain fields (which
/// win when both are given). An API key login (no `tokens`) is no subscription.
fn from_auth_json(taken: &mut Map<String, Value>) -> Result<(), ApiError> {
    let api_key = taken.remove("OPENAI_API_KEY");
    match taken.remove("last_refresh") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(_) => return Err(bad_request("invalid body at `last_refresh`: expected a string")),
    }
    let tokens = match taken.remove("tokens") {
        None | Some(Value::Null) => {
            if matches!(api_key, Some(Value::String(_))) && !taken.contains_key("access_token") {
                return Err(bad_request(
                    "this auth.json is an API key login, not a ChatGPT sign-in: add the key as an `openai` account",
                ));
            }
            return Ok(());
        }
        Some(Value::Object(t)) => t,
        Some(_) => return Err(bad_request("invalid body at `tokens`: expected an object")),
    };
    for (from, to) in [
        ("access_token", "access_token"),
        ("refresh_token", "refresh_token"),
        ("id_token", "id_token"),
        ("account_id", "chatgpt_account_id"),
    ] {
        if let Some(v) = tokens.get(from) {
            taken.entry(to).or_insert_with(|| v.clone());
        }
    }
    Ok(())
}

/// Keeps whom the tokens act for beside them and stores the account.
async fn save(
    state: &AdminState,
    target: super::oauth::Target,
    pair: TokenPair,
    mut meta: OAuthMeta,
    identity: &Identity,
) -> Result<Response, ApiError> {
    if let Some(id) = &identity.account_id {
        openai::chatgpt_account_header(id).map_err(bad_request)?;
    } else {
        tracing::warn!("the ChatGPT tokens name no account id; requests go without chatgpt-account-id");
    }
    identity.apply(&mut meta);
    store_tokens(state, target, pair, meta).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn taken(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn codex_auth_json_becomes_the_plain_fields() {
        let mut t = taken(json!({
            "OPENAI_API_KEY": null,
            "tokens": {"id_token": "i", "access_token": "a", "refresh_token": "r", "account_id": "acc"},
            "last_refresh": "2026-11-27T10:00:00Z"
        }));
        from_auth_json(&mut t).unwrap();
        assert_eq!(
            Value::Object(t),
            json!({"id_token": "i", "access_token": "a", "refresh_token": "r", "chatgpt_account_id": "acc"})
        );
        let mut plain = taken(json!({"access_token": "a", "tokens": {"access_token": "b"}}));
        from_auth_json(&mut plain).unwrap();
        assert_eq!(plain["access_token"], "a", "the plain field wins");
        assert!(from_auth_json(&mut taken(json!({"OPENAI_API_KEY": "sk-x", "tokens": null}))).is_err());
        assert!(from_auth_json(&mut taken(json!({"tokens": "x"}))).is_err());
        assert!(from_auth_json(&mut taken(json!({"last_refresh": 5}))).is_err());
    }
}
