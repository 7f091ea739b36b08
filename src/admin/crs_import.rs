//! `POST /admin/api/import/crs`: the `import-crs` command through the admin API, for a relay whose
//! embedded store the command cannot open while it runs.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AdminState;
use super::access::Actor;
use super::routes::{ApiError, bad_request, json_body};
use crate::crs::ImportError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// CRS's Redis, `redis://[:password@]host:port/db`.
    redis_url: String,
    /// CRS's ENCRYPTION_KEY; never stored as given, never logged.
    encryption_key: String,
    #[serde(default)]
    dry_run: bool,
}

pub async fn import(State(state): State<AdminState>, _actor: Actor, body: Bytes) -> Result<Response, ApiError> {
    let req: ImportRequest = json_body(&body)?;
    if !(req.redis_url.starts_with("redis://") || req.redis_url.starts_with("rediss://")) {
        return Err(bad_request("`redis_url` must be a redis:// or rediss:// URL"));
    }
    if req.encryption_key.is_empty() {
        return Err(bad_request("`encryption_key` must not be empty"));
    }
    let report = crate::crs::import(
        &req.redis_url,
        &req.encryption_key,
        &state.secrets,
        &state.config.providers.default_bases(),
        &*state.store,
        req.dry_run,
    )
    .await
    .map_err(|e| match e {
        ImportError::WrongKey(_) => bad_request(e.to_string()),
        ImportError::Source(m) => ApiError(StatusCode::BAD_GATEWAY, "api_error", m),
        ImportError::Store(m) => {
            tracing::error!(error = %m, "CRS import: writing to the store failed");
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                "the store could not be written".into(),
            )
        }
    })?;
    tracing::info!(
        dry_run = report.dry_run,
        keys = report.keys.imported,
        accounts = report.accounts.imported,
        "admin imported from Claude Relay Service"
    );
    Ok(Json(report).into_response())
}
