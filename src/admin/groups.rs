//! Account groups: the `group` of accounts and the `bind: group:<name>` of keys, listed together
//! and renamed together.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AdminState;
use super::access::Actor;
use super::routes::{ApiError, bad_request, conflict, json_body, not_found, store_error, write};
use super::scheduling::{live_view, valid_bind};
use crate::accounts::stored;
use crate::state::config_id;

#[derive(Default)]
struct Group {
    accounts: Vec<Value>,
    keys: Vec<Value>,
}

/// `GET /admin/api/groups`: every group an account is in or a key is bound to, by name.
pub async fn list(State(state): State<AdminState>, _actor: Actor) -> Result<Response, ApiError> {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let account = |id: String, s: &crate::accounts::AccountSettings| json!({"id": id, "name": s.name, "kind": s.kind, "state": live_view(&state, &id, s).health.state});
    for a in &state.config.accounts {
        if let Some(g) = &a.settings.group {
            let v = account(config_id(&a.settings.name), &a.settings);
            groups.entry(g.clone()).or_default().accounts.push(v);
        }
    }
    let mut records = state.store.list_accounts().await.map_err(store_error)?;
    records.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
    for r in &records {
        if let Ok(s) = stored::settings(r)
            && let Some(g) = &s.group
        {
            let v = account(r.id.clone(), &s);
            groups.entry(g.clone()).or_default().accounts.push(v);
        }
    }
    let key = |id: String, name: &str| json!({"id": id, "name": name});
    for k in &state.config.api_keys {
        if let Some(g) = k.config.bind.as_deref().and_then(|b| b.strip_prefix("group:")) {
            let v = key(config_id(&k.config.name), &k.config.name);
            groups.entry(g.to_string()).or_default().keys.push(v);
        }
    }
    let mut keys = state.store.list_api_keys().await.map_err(store_error)?;
    keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.name.cmp(&b.name)));
    for k in &keys {
        if let Some(g) = k.bind.as_deref().and_then(|b| b.strip_prefix("group:")) {
            let v = key(k.id.clone(), &k.name);
            groups.entry(g.to_string()).or_default().keys.push(v);
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(name, g)| json!({"name": name, "accounts": g.accounts, "keys": g.keys}))
        .collect();
    Ok(Json(json!({ "groups": groups })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rename {
    to: String,
}

/// `POST /admin/api/groups/{name}/rename` `{"to"}`: moves every stored account of the group and
/// every stored key bound to it to the new name, in one write. A group that a `relay.yaml` account
/// or key names cannot be renamed here (409): the file would still name it.
pub async fn rename(
    State(state): State<AdminState>,
    _actor: Actor,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: Rename = json_body(&body)?;
    // The same rules as a key's `bind: group:<name>`.
    let to = valid_bind(&format!("group:{}", req.to))
        .map_err(|e| bad_request(e.2.replace("`bind`", "`to`")))?
        .trim_start_matches("group:")
        .to_string();
    let in_config = state
        .config
        .accounts
        .iter()
        .any(|a| a.settings.group.as_deref() == Some(&name))
        || state
            .config
            .api_keys
            .iter()
            .any(|k| k.config.bind.as_deref() == Some(&format!("group:{name}")));
    if in_config {
        return Err(ApiError(
            axum::http::StatusCode::CONFLICT,
            "invalid_request_error",
            format!("group `{name}` is named in relay.yaml; rename it there"),
        ));
    }
    if to == name {
        return Err(conflict(format!("group `{name}` already has that name")));
    }
    let from = name.clone();
    let target = to.clone();
    let (accounts, keys) = write(&state, move |st| async move {
        let mut accounts = 0usize;
        for mut r in st.store.list_accounts().await.map_err(store_error)? {
            let Ok(mut s) = stored::settings(&r) else { continue };
            if s.group.as_deref() != Some(&from) {
                continue;
            }
            s.group = Some(target.clone());
            stored::set_settings(&mut r, &s).map_err(bad_request)?;
            // A refresh may have rotated an OAuth account's tokens since the list was read: keep
            // the newest (as an account update does).
            if let Some(fresh) = st.store.get_account(&r.id).await.map_err(store_error)? {
                r.secret = fresh.secret;
                r.oauth = fresh.oauth;
            }
            st.store.put_account(&r).await.map_err(store_error)?;
            accounts += 1;
        }
        let mut keys = 0usize;
        let old_bind = format!("group:{from}");
        for mut k in st.store.list_api_keys().await.map_err(store_error)? {
            if k.bind.as_deref() == Some(&old_bind) {
                k.bind = Some(format!("group:{target}"));
                st.store.put_api_key(&k).await.map_err(store_error)?;
                keys += 1;
            }
        }
        if accounts + keys == 0 {
            return Err(not_found("group", &from));
        }
        Ok((accounts, keys))
    })
    .await?;
    tracing::info!(from = %name, to = %to, accounts, keys, "admin renamed a group");
    Ok(Json(json!({"name": to, "accounts": accounts, "keys": keys})).into_response())
}
