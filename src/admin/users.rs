//! Administrators and their sessions. The configuration's admin (`admin.username`) is always
//! there with the `admin` role and is read-only here; admins create further users with a role
//! (`admin`, `operator`, `viewer`). A change of a user's role, password or status, and the user's
//! deletion, end the user's sessions. Every signed-in user changes their own password and lists
//! and revokes their own sessions; admins see and revoke everyone's.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::access::Actor;
use super::routes::{ApiError, bad_request, conflict, json_body, not_found, read_only, store_error};
use super::{AdminState, Credentials, hash_password};
use crate::store::{AdminRole, AdminSession, AdminUser};

/// Shortest and longest password accepted for a user.
pub const MIN_PASSWORD: usize = 10;
pub const MAX_PASSWORD: usize = 256;
/// Longest user name.
pub const MAX_USERNAME: usize = 64;

fn check_username(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_USERNAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(bad_request(format!(
            "`username` must be 1 to {MAX_USERNAME} characters: letters, digits, `.`, `_`, `-` or `@`"
        )))
    }
}

fn check_password(field: &str, pw: &str) -> Result<(), ApiError> {
    let n = pw.chars().count();
    if (MIN_PASSWORD..=MAX_PASSWORD).contains(&n) {
        Ok(())
    } else {
        Err(bad_request(format!(
            "`{field}` must be {MIN_PASSWORD} to {MAX_PASSWORD} characters"
        )))
    }
}

/// Hashes a password off the async threads (argon2 takes tens of milliseconds).
async fn hashed(password: String) -> Result<String, ApiError> {
    let out = tokio::task::spawn_blocking(move || hash_password(&password)).await;
    match out {
        Ok(Ok(h)) => Ok(h),
        _ => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "the password could not be hashed".into(),
        )),
    }
}

fn is_config_admin(state: &AdminState, name: &str) -> bool {
    state.credentials.username == name
}

fn config_admin_json(state: &AdminState) -> Value {
    json!({
        "username": state.credentials.username,
        "role": "admin",
        "source": "config",
        "disabled": false,
        "created_at": null,
        "updated_at": null,
    })
}

fn user_json(u: &AdminUser) -> Value {
    json!({
        "username": u.username,
        "role": u.role,
        "source": "admin",
        "disabled": u.disabled,
        "created_at": u.created_at,
        "updated_at": u.updated_at,
    })
}

/// A user as the API shows it (never the password hash); `None` when there is none.
pub async fn view(state: &AdminState, name: &str) -> Option<Value> {
    if is_config_admin(state, name) {
        return Some(config_admin_json(state));
    }
    state
        .store
        .get_admin_user(name)
        .await
        .ok()
        .flatten()
        .map(|u| user_json(&u))
}

/// `GET /admin/api/users`: the configuration's admin first, then the others by name.
pub async fn list(State(state): State<AdminState>, _actor: Actor) -> Result<Response, ApiError> {
    let mut users = state.store.list_admin_users().await.map_err(store_error)?;
    users.sort_by(|a, b| a.username.cmp(&b.username));
    let mut out = vec![config_admin_json(&state)];
    out.extend(
        users
            .iter()
            .filter(|u| !is_config_admin(&state, &u.username))
            .map(user_json),
    );
    Ok(Json(json!({ "users": out })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    password: String,
    role: AdminRole,
}

/// `POST /admin/api/users`.
pub async fn create(State(state): State<AdminState>, _actor: Actor, body: Bytes) -> Result<Response, ApiError> {
    let req: NewUser = json_body(&body)?;
    check_username(&req.username)?;
    check_password("password", &req.password)?;
    if is_config_admin(&state, &req.username)
        || state
            .store
            .get_admin_user(&req.username)
            .await
            .map_err(store_error)?
            .is_some()
    {
        return Err(conflict(format!("a user named `{}` already exists", req.username)));
    }
    let now = chrono::Utc::now().timestamp();
    let user = AdminUser {
        username: req.username,
        role: req.role,
        password_hash: hashed(req.password).await?,
        created_at: now,
        updated_at: now,
        disabled: false,
    };
    state.store.put_admin_user(&user).await.map_err(store_error)?;
    tracing::info!(user = %user.username, role = user.role.as_str(), "admin user created");
    Ok((StatusCode::CREATED, Json(user_json(&user))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserChange {
    role: Option<AdminRole>,
    password: Option<String>,
    disabled: Option<bool>,
}

async fn stored_user(state: &AdminState, name: &str) -> Result<AdminUser, ApiError> {
    if is_config_admin(state, name) {
        return Err(read_only("user", name));
    }
    state
        .store
        .get_admin_user(name)
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found("user", name))
}

/// Ends every session of `username` but `keep` (a token hash); returns how many ended.
pub async fn end_sessions(state: &AdminState, username: &str, keep: Option<&str>) -> Result<usize, ApiError> {
    let now = chrono::Utc::now().timestamp();
    let sessions = state.store.list_sessions(now).await.map_err(store_error)?;
    let mut ended = 0;
    for (hash, s) in sessions {
        if s.username == username && Some(hash.as_str()) != keep {
            state.store.delete_session(&hash).await.map_err(store_error)?;
            ended += 1;
        }
    }
    Ok(ended)
}

/// `PATCH /admin/api/users/{username}`: role, password, disabled. Ends the user's sessions.
pub async fn update(
    State(state): State<AdminState>,
    actor: Actor,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let change: UserChange = json_body(&body)?;
    let mut user = stored_user(&state, &name).await?;
    if name == actor.username && (change.role.is_some_and(|r| r != user.role) || change.disabled == Some(true)) {
        return Err(conflict("you cannot change your own role or disable yourself"));
    }
    if let Some(pw) = &change.password {
        check_password("password", pw)?;
    }
    let mut changed = false;
    if let Some(r) = change.role {
        changed |= r != user.role;
        user.role = r;
    }
    if let Some(d) = change.disabled {
        changed |= d != user.disabled;
        user.disabled = d;
    }
    if let Some(pw) = change.password {
        user.password_hash = hashed(pw).await?;
        changed = true;
    }
    if changed {
        user.updated_at = chrono::Utc::now().timestamp();
        state.store.put_admin_user(&user).await.map_err(store_error)?;
        end_sessions(&state, &name, None).await?;
        tracing::info!(user = %name, role = user.role.as_str(), disabled = user.disabled, "admin user changed");
    }
    Ok(Json(user_json(&user)).into_response())
}

/// `DELETE /admin/api/users/{username}`: the user and their sessions.
pub async fn delete(
    State(state): State<AdminState>,
    actor: Actor,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    stored_user(&state, &name).await?;
    if name == actor.username {
        return Err(conflict("you cannot delete yourself"));
    }
    state.store.delete_admin_user(&name).await.map_err(store_error)?;
    end_sessions(&state, &name, None).await?;
    tracing::info!(user = %name, "admin user deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// `POST /admin/api/password`: the signed-in user's own password. The user's other sessions end;
/// this one goes on.
pub async fn password(State(state): State<AdminState>, actor: Actor, body: Bytes) -> Result<StatusCode, ApiError> {
    let req: PasswordChange = json_body(&body)?;
    check_password("new_password", &req.new_password)?;
    if is_config_admin(&state, &actor.username) {
        return Err(conflict(
            "this user is defined in the configuration file: set admin.password_hash (or admin.password) \
             in relay.yaml and restart",
        ));
    }
    let mut user = stored_user(&state, &actor.username).await?;
    let credentials = Arc::new(Credentials {
        username: user.username.clone(),
        password_hash: user.password_hash.clone(),
    });
    match state.login_limiter.verify(req.current_password, credentials).await {
        Some(true) => {}
        Some(false) => return Err(bad_request("`current_password` is wrong")),
        None => {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded_error",
                "too many password checks in progress; try again shortly".into(),
            ));
        }
    }
    user.password_hash = hashed(req.new_password).await?;
    user.updated_at = chrono::Utc::now().timestamp();
    state.store.put_admin_user(&user).await.map_err(store_error)?;
    end_sessions(&state, &actor.username, Some(&actor.session)).await?;
    tracing::info!(user = %actor.username, "admin password changed");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsQuery {
    /// Admins only: every user's sessions, not only their own.
    all: Option<bool>,
}

fn session_json(hash: &str, s: &AdminSession, current: &str) -> Value {
    json!({
        "id": hash,
        "username": s.username,
        "role": s.role,
        "created_at": s.created_at,
        "expires_at": s.expires_at,
        "ip": s.ip,
        "user_agent": s.user_agent,
        "current": hash == current,
    })
}

/// `GET /admin/api/sessions`: the caller's sessions (admins: `?all=true` for everyone's), newest
/// first.
pub async fn sessions(
    State(state): State<AdminState>,
    actor: Actor,
    q: Result<Query<SessionsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| bad_request(e.body_text()))?;
    let all = q.all.unwrap_or(false);
    if all && actor.role != AdminRole::Admin {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "permission_error",
            "listing every user's sessions needs the `admin` role".into(),
        ));
    }
    let now = chrono::Utc::now().timestamp();
    let mut list = state.store.list_sessions(now).await.map_err(store_error)?;
    list.retain(|(_, s)| all || s.username == actor.username);
    list.sort_by(|a, b| b.1.created_at.cmp(&a.1.created_at).then_with(|| a.0.cmp(&b.0)));
    let out: Vec<Value> = list.iter().map(|(h, s)| session_json(h, s, &actor.session)).collect();
    Ok(Json(json!({ "sessions": out })).into_response())
}

/// `DELETE /admin/api/sessions/{id}`: ends one of the caller's sessions (admins: anyone's).
/// Another user's session is not found for a non-admin.
pub async fn revoke(
    State(state): State<AdminState>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let now = chrono::Utc::now().timestamp();
    let found = if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        state.store.get_session(&id, now).await.map_err(store_error)?
    } else {
        None
    };
    match found {
        Some(s) if s.username == actor.username || actor.role == AdminRole::Admin => {
            state.store.delete_session(&id).await.map_err(store_error)?;
            Ok(StatusCode::NO_CONTENT)
        }
        _ => Err(not_found("session", &id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_passwords_are_checked() {
        assert!(check_username("ann").is_ok());
        assert!(check_username("ops.bot-1@example.com").is_ok());
        for bad in ["", "a b", "a/b", "é", &"x".repeat(MAX_USERNAME + 1)] {
            assert!(check_username(bad).is_err(), "{bad:?}");
        }
        assert!(check_password("p", "0123456789").is_ok());
        assert!(check_password("p", "012345678").is_err());
        assert!(check_password("p", &"x".repeat(MAX_PASSWORD + 1)).is_err());
    }
}
