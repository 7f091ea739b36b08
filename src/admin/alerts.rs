//! `/admin/api/alerts`: the webhooks (URLs masked), their delivery counters and the recent
//! alerts; `/admin/api/alerts/test` sends a test alert to one webhook.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AdminState;
use super::access::Actor;
use super::routes::{ApiError, json_body, not_found};

pub async fn overview(State(state): State<AdminState>, _actor: Actor) -> Result<Response, ApiError> {
    let alerts = &state.alerts;
    let c = alerts.config();
    let dropped = state
        .metrics
        .alert_deliveries
        .with_label_values(&["*", "dropped"])
        .get();
    Ok(Json(json!({
        "webhooks": alerts.webhooks(),
        "settings": {
            "spend_threshold": c.spend_threshold,
            "key_expiring_s": c.key_expiring.0.as_secs(),
            "error_rate": c.error_rate.map(|r| json!({"above": r.above, "for_s": r.sustained.0.as_secs(), "min_requests": r.min_requests})),
            "latency": c.latency.map(|r| json!({"p50_above_s": r.p50_above.0.as_secs_f64(), "for_s": r.sustained.0.as_secs()})),
            "dedup_s": c.dedup.0.as_secs(),
            "max_per_minute": c.max_per_minute,
            "check_every_s": c.check_every.0.as_secs(),
        },
        "dropped": dropped,
        "recent": alerts.recent(),
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestBody {
    webhook: String,
}

pub async fn test(State(state): State<AdminState>, _actor: Actor, body: Bytes) -> Result<Response, ApiError> {
    let body: TestBody = json_body(&body)?;
    let delivery = state
        .alerts
        .send_test(&body.webhook)
        .await
        .ok_or_else(|| not_found("webhook", &body.webhook))?;
    Ok(Json(json!({
        "webhook": body.webhook,
        "outcome": delivery.outcome,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "error": delivery.error,
    }))
    .into_response())
}
