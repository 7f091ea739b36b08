//! `GET /admin/api/system`: what an operator checks first: the version, how long this instance
//! has run, the instances sharing its store, the store's health, the configuration file in use,
//! the listeners and where the data lives.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AdminState;
use super::access::Actor;
use super::routes::ApiError;

pub async fn system(State(state): State<AdminState>, _actor: Actor) -> Result<Response, ApiError> {
    let t = std::time::Instant::now();
    let ping = state.store.ping().await;
    let latency_ms = t.elapsed().as_secs_f64() * 1000.0;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let (views, partial) = super::live::views(&state, now_ms).await;
    let mut instances: Vec<&str> = views.iter().map(|(id, _)| id.as_str()).collect();
    instances.sort_unstable();
    let uptime = state.started.elapsed();
    let c = &state.config;
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "instance": state.instance,
        "pid": std::process::id(),
        "uptime_s": uptime.as_secs(),
        "started_at": now_ms / 1000 - i64::try_from(uptime.as_secs()).unwrap_or(0),
        "instances": instances,
        "instances_partial": partial,
        "store": {
            "backend": state.store.backend(),
            "reachable": ping.is_ok(),
            "latency_ms": latency_ms,
            "error": ping.err().map(|e| e.to_string()),
        },
        "config_file": c.file.as_ref().map(|p| p.display().to_string()),
        "data_dir": c.data_dir.display().to_string(),
        "listeners": { "relay": c.listen.to_string(), "admin": c.admin_listen.to_string() },
        "threads": c.threads,
        "panel": cfg!(feature = "panel"),
        "stats_page": c.stats_page,
        "audit": {
            "retention_s": c.admin.audit.retention.0.as_secs(),
            "max_records": c.admin.audit.max_records,
        },
        "metrics_path": "/metrics",
    }))
    .into_response())
}
