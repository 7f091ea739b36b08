//! Backups through the admin API: `POST /admin/api/export` answers a backup file of the store;
//! `POST /admin/api/import` restores one (see `crate::backup::restore` for the modes), then every
//! instance reloads.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AdminState;
use super::access::Actor;
use super::routes::{ApiError, bad_request, conflict, json_body, store_error, write};
use crate::backup::{self, BackupError, ImportMode};

/// The header an import's passphrase comes in.
pub const PASSPHRASE_HEADER: &str = "x-backup-passphrase";
/// The largest backup file an import takes.
pub const IMPORT_BODY_LIMIT: usize = 512 * 1024 * 1024;

fn backup_error(e: BackupError) -> ApiError {
    match e {
        BackupError::Store(e) => store_error(e),
        e @ (BackupError::NotEmpty(_) | BackupError::Conflict(_) | BackupError::Secret(_)) => conflict(e.to_string()),
        e => bad_request(e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportRequest {
    passphrase: String,
}

/// `POST /admin/api/export` `{"passphrase"}`: the store's backup, as a file download.
pub async fn export(State(state): State<AdminState>, _actor: Actor, body: Bytes) -> Result<Response, ApiError> {
    let req: ExportRequest = json_body(&body)?;
    let file = backup::export(state.store.as_ref(), &state.secrets, &req.passphrase)
        .await
        .map_err(backup_error)?;
    tracing::info!(bytes = file.len(), "admin exported a backup");
    let name = backup::file_name(chrono::Utc::now());
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        file,
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct ImportQuery {
    mode: Option<String>,
}

/// `POST /admin/api/import?mode=refuse|replace|merge` with the backup file as the body and its
/// passphrase in `x-backup-passphrase`: restores it, then every instance reloads.
pub async fn import(
    State(state): State<AdminState>,
    _actor: Actor,
    headers: HeaderMap,
    Query(q): Query<ImportQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mode = match q.mode.as_deref() {
        None => ImportMode::Refuse,
        Some(m) => ImportMode::parse(m).ok_or_else(|| bad_request("`mode` must be `refuse`, `replace` or `merge`"))?,
    };
    let passphrase = headers
        .get(PASSPHRASE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            bad_request(format!(
                "the backup's passphrase goes in the `{PASSPHRASE_HEADER}` header"
            ))
        })?
        .to_string();
    let (contents, meta) = tokio::task::spawn_blocking(move || backup::format::open_with_meta(&body, &passphrase))
        .await
        .map_err(|_| bad_request("the backup could not be read"))?
        .map_err(backup_error)?;
    let summary = write(&state, move |st| async move {
        backup::restore(st.store.as_ref(), &st.secrets, contents, mode)
            .await
            .map_err(backup_error)
    })
    .await?;
    tracing::info!(
        keys = summary.keys,
        accounts = summary.accounts,
        usage_buckets = summary.usage_buckets,
        ?mode,
        "admin imported a backup"
    );
    Ok(Json(json!({ "imported": summary, "backup": meta })).into_response())
}
