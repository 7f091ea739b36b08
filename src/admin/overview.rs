//! `GET /admin/api/overview`: the dashboard's headline numbers in one call.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AdminState;
use super::access::Actor;
use super::routes::{ApiError, bad_request, store_error};
use super::usage::{counters_json, parse_zone};
use crate::store::{Dimension, Granularity, UsageCounters};
use crate::usage::report;

#[derive(Deserialize)]
pub struct OverviewQuery {
    tz: Option<String>,
}

/// The state an account is in on this instance, as the accounts list shows it.
pub fn account_state(state: &AdminState, a: &crate::scheduler::Account, now_ms: i64) -> &'static str {
    if !a.enabled {
        return "disabled";
    }
    let rt = state.reloader.scheduler.runtime(&a.id);
    if let Some(h) = rt.as_ref().and_then(|rt| rt.health(now_ms)) {
        return super::scheduling::state_name(h.state);
    }
    if let (Some(q), Some(rt)) = (a.daily_quota_nanos, rt.as_ref())
        && rt.spend() >= q
    {
        return "over_quota";
    }
    "active"
}

pub async fn overview(
    State(state): State<AdminState>,
    _actor: Actor,
    query: Result<Query<OverviewQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let zone = parse_zone(q.tz.as_deref())?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let now = now_ms / 1000;
    let store = &*state.store;
    let models: Vec<String> = store
        .usage_totals(Dimension::Model)
        .await
        .map_err(store_error)?
        .into_keys()
        .collect();

    let today = report::bucket_start(Granularity::Day, zone, now);
    let yesterday = report::bucket_start(Granularity::Day, zone, today - 1);
    let days = report::series(
        store,
        Dimension::Model,
        &models,
        &report::Frame {
            granularity: Granularity::Day,
            zone,
            starts: &[yesterday, today],
            to: now + 1,
        },
        now,
    )
    .await
    .map_err(store_error)?;

    // The last five minute buckets, the current one included (so a burst shows at once; the
    // rate is a little low early in a minute).
    let this_minute = Granularity::Minute.bucket_start(now);
    let minutes: Vec<i64> = (0..5).rev().map(|i| this_minute - 60 * i).collect();
    let recent = report::series(
        store,
        Dimension::Model,
        &models,
        &report::Frame {
            granularity: Granularity::Minute,
            zone: report::Zone::Utc,
            starts: &minutes,
            to: this_minute + 60,
        },
        now,
    )
    .await
    .map_err(store_error)?;
    let mut five = UsageCounters::default();
    recent.iter().for_each(|c| five.add(c));
    let tokens = five.input_tokens
        + five.output_tokens
        + five.cache_read_tokens
        + five.cache_write_5m_tokens
        + five.cache_write_1h_tokens;

    let snap = state.snapshot.load();
    let active_keys = snap
        .keys
        .iter()
        .filter(|(k, ..)| k.enabled && k.policy.expires_at.is_none_or(|e| e > now))
        .count();
    let mut by_state = Map::new();
    for a in snap.pool.all() {
        let s = account_state(&state, a, now_ms);
        let n = by_state.get(s).and_then(Value::as_u64).unwrap_or(0);
        by_state.insert(s.into(), Value::from(n + 1));
    }
    let [yesterday_c, today_c] = [days[0], days[1]];
    let (views, _) = super::live::views(&state, now_ms).await;
    let in_flight: u64 = views
        .iter()
        .flat_map(|(_, v)| v.by_key.iter().map(|(_, n)| u64::from(*n)))
        .sum();
    Ok(Json(json!({
        "tz": zone.name(),
        "today": counters_json(&today_c),
        "yesterday": counters_json(&yesterday_c),
        "rpm_5m": five.requests as f64 / 5.0,
        "tpm_5m": tokens as f64 / 5.0,
        "in_flight": in_flight,
        "instances": views.len(),
        "keys": {"active": active_keys, "total": snap.keys.len()},
        "accounts": {"total": snap.pool.all().len(), "by_state": by_state},
        "uptime_s": state.started.elapsed().as_secs(),
        // Instances on a shared store keep no registry of each other: the count is only known
        // when the store is this instance's own.
        "version": env!("CARGO_PKG_VERSION"),
        "instance": state.instance,
    }))
    .into_response())
}
