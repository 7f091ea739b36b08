//! Usage statistics for the dashboard: a time series of one subject (a key, an account or a
//! model), all-time totals of every subject of a dimension, and a summary of all dimensions.
//!
//! Counters are rendered with the store's field names plus `cost_usd` (from integer nano-USD).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AdminState;
use super::access::Actor;
use super::routes::{ApiError, bad_request, store_error};
use crate::store::{Dimension, Granularity, UsageCounters};
use crate::usage::report::{self, Zone};

pub const DEFAULT_SPAN_SECS: i64 = 24 * 3600;

pub use crate::usage::report::MAX_TIMESTAMP;

#[derive(Deserialize)]
pub struct UsageQuery {
    dimension: Option<String>,
    id: Option<String>,
    granularity: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
    tz: Option<String>,
}

/// The counters as a JSON object: every store field, and `cost_usd`.
pub fn counters_json(c: &UsageCounters) -> Map<String, Value> {
    let mut m = Map::new();
    for (name, v) in c.fields() {
        m.insert(name.to_string(), Value::from(v));
    }
    m.insert("cost_usd".into(), Value::from(c.cost_nanos as f64 / 1e9));
    m
}

pub fn by_subject(totals: &BTreeMap<String, UsageCounters>) -> Map<String, Value> {
    totals
        .iter()
        .map(|(s, c)| (s.clone(), Value::Object(counters_json(c))))
        .collect()
}

pub fn parse_dimension(s: Option<&str>) -> Result<Dimension, ApiError> {
    let s = s.ok_or_else(|| bad_request("`dimension` is required: key, account or model"))?;
    Dimension::ALL
        .into_iter()
        .find(|d| d.as_str() == s)
        .ok_or_else(|| bad_request(format!("`dimension` must be key, account or model, not `{s}`")))
}

pub fn parse_granularity(s: Option<&str>) -> Result<Granularity, ApiError> {
    let Some(s) = s else {
        return Ok(Granularity::Hour);
    };
    [
        Granularity::Minute,
        Granularity::Hour,
        Granularity::Day,
        Granularity::Month,
    ]
    .into_iter()
    .find(|g| g.as_str() == s)
    .ok_or_else(|| bad_request(format!("`granularity` must be minute, hour, day or month, not `{s}`")))
}

/// The starts of the buckets of `g` in `zone` that overlap `[from, to)`, or an error past
/// [`MAX_BUCKETS`].
pub fn bucket_starts(g: Granularity, zone: Zone, from: i64, to: i64) -> Result<Vec<i64>, ApiError> {
    report::bucket_starts(g, zone, from, to).map_err(bad_request)
}

/// The zone of a `tz` parameter (UTC without one).
pub fn parse_zone(tz: Option<&str>) -> Result<Zone, ApiError> {
    tz.map_or(Ok(Zone::Utc), |t| Zone::parse(t).map_err(bad_request))
}

/// `from` and `to` of a query, checked; `to` defaults to now and `from` to `span` before `to`.
pub fn parse_range(from: Option<i64>, to: Option<i64>, span: i64) -> Result<(i64, i64), ApiError> {
    for (name, v) in [("from", from), ("to", to)] {
        if v.is_some_and(|t| !(0..=MAX_TIMESTAMP).contains(&t)) {
            return Err(bad_request(format!(
                "`{name}` must be a Unix time between 0 and {MAX_TIMESTAMP}"
            )));
        }
    }
    let to = to.unwrap_or_else(|| chrono::Utc::now().timestamp());
    let from = from.unwrap_or(to - span);
    if from < 0 {
        return Err(bad_request("`from` must not be negative"));
    }
    if from >= to {
        return Err(bad_request("`from` must be before `to`"));
    }
    Ok((from, to))
}

/// Dense series points (`start` and the counters) and their totals.
pub fn points(starts: &[i64], counters: &[UsageCounters]) -> (Vec<Value>, UsageCounters) {
    let mut totals = UsageCounters::default();
    let points = starts
        .iter()
        .zip(counters)
        .map(|(s, c)| {
            totals.add(c);
            let mut m = Map::new();
            m.insert("start".into(), Value::from(*s));
            m.extend(counters_json(c));
            Value::Object(m)
        })
        .collect();
    (points, totals)
}

/// `GET /admin/api/usage`: with `id`, the series of that subject; without, the all-time totals
/// of every subject of the dimension.
pub async fn series(
    State(state): State<AdminState>,
    _actor: Actor,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let dimension = parse_dimension(q.dimension.as_deref())?;
    let granularity = parse_granularity(q.granularity.as_deref())?;

    let Some(id) = q.id else {
        let totals = state.store.usage_totals(dimension).await.map_err(store_error)?;
        return Ok(Json(json!({
            "dimension": dimension.as_str(),
            "totals_by_subject": by_subject(&totals),
        }))
        .into_response());
    };
    if id.is_empty() {
        return Err(bad_request("`id` must not be empty"));
    }

    let zone = parse_zone(q.tz.as_deref())?;
    let (from, to) = parse_range(q.from, q.to, DEFAULT_SPAN_SECS)?;
    let starts = bucket_starts(granularity, zone, from, to)?;
    let now = chrono::Utc::now().timestamp();
    let counters = report::series(
        &*state.store,
        dimension,
        std::slice::from_ref(&id),
        &report::Frame {
            granularity,
            zone,
            starts: &starts,
            to,
        },
        now,
    )
    .await
    .map_err(store_error)?;
    // Dense: one entry per bucket, zeros where nothing was recorded, so charts need no gap logic.
    let (series, totals) = points(&starts, &counters);
    Ok(Json(json!({
        "dimension": dimension.as_str(),
        "id": id,
        "granularity": granularity.as_str(),
        "from": from,
        "to": to,
        "tz": zone.name(),
        "totals": counters_json(&totals),
        "series": series,
    }))
    .into_response())
}

#[derive(Deserialize)]
pub struct GlobalQuery {
    granularity: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
    tz: Option<String>,
}

/// `GET /admin/api/usage/global`: the series of all usage together (the sum over models, which
/// counts every request once).
pub async fn global(
    State(state): State<AdminState>,
    _actor: Actor,
    query: Result<Query<GlobalQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let granularity = parse_granularity(q.granularity.as_deref())?;
    let zone = parse_zone(q.tz.as_deref())?;
    let (from, to) = parse_range(q.from, q.to, DEFAULT_SPAN_SECS)?;
    let starts = bucket_starts(granularity, zone, from, to)?;
    let models: Vec<String> = state
        .store
        .usage_totals(Dimension::Model)
        .await
        .map_err(store_error)?
        .into_keys()
        .collect();
    let now = chrono::Utc::now().timestamp();
    let counters = report::series(
        &*state.store,
        Dimension::Model,
        &models,
        &report::Frame {
            granularity,
            zone,
            starts: &starts,
            to,
        },
        now,
    )
    .await
    .map_err(store_error)?;
    let (points, totals) = points(&starts, &counters);
    Ok(Json(json!({
        "granularity": granularity.as_str(),
        "from": from,
        "to": to,
        "tz": zone.name(),
        "points": points,
        "totals": counters_json(&totals),
    }))
    .into_response())
}

/// `GET /admin/api/usage/summary`: all-time totals of every subject of every dimension, the grand
/// total, and display names of the keys and accounts that still exist.
pub async fn summary(State(state): State<AdminState>, _actor: Actor) -> Result<Response, ApiError> {
    let mut by_dimension = Map::new();
    let mut grand = UsageCounters::default();
    for d in Dimension::ALL {
        let totals = state.store.usage_totals(d).await.map_err(store_error)?;
        // Every request is counted under exactly one key, so the key dimension sums to the total.
        if d == Dimension::Key {
            totals.values().for_each(|c| grand.add(c));
        }
        by_dimension.insert(d.as_str().into(), Value::Object(by_subject(&totals)));
    }
    let snap = state.snapshot.load();
    let mut names = Map::new();
    for (k, ..) in &snap.keys {
        names.insert(k.id.to_string(), Value::from(k.name.as_ref()));
    }
    for a in snap.pool.all() {
        names.insert(a.id.to_string(), Value::from(a.name.as_ref()));
    }
    Ok(Json(json!({
        "totals": counters_json(&grand),
        "by_dimension": by_dimension,
        "names": names,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::report::MAX_BUCKETS;

    #[test]
    fn counters_render_every_field_and_cost() {
        let c = UsageCounters {
            requests: 3,
            cost_nanos: 1_500_000_000,
            ..Default::default()
        };
        let m = counters_json(&c);
        for (name, _) in c.fields() {
            assert!(m.contains_key(name), "{name}");
        }
        assert_eq!(m["requests"], 3);
        assert_eq!(m["cost_usd"], 1.5);
    }

    #[test]
    fn bucket_ranges_are_bounded_and_aligned() {
        let u = Zone::Utc;
        let s = bucket_starts(Granularity::Hour, u, 3_600 + 5, 3 * 3_600).unwrap();
        assert_eq!(s, vec![3_600, 7_200]);
        let s = bucket_starts(Granularity::Minute, u, 0, 60 * MAX_BUCKETS as i64).unwrap();
        assert_eq!(s.len(), MAX_BUCKETS);
        assert!(bucket_starts(Granularity::Minute, u, 0, 60 * MAX_BUCKETS as i64 + 1).is_err());
        // The last accepted range ends without overflow at every granularity (huge `from`/`to`
        // overflowed the bucket arithmetic before they were bounded).
        for g in [
            Granularity::Minute,
            Granularity::Hour,
            Granularity::Day,
            Granularity::Month,
        ] {
            assert!(bucket_starts(g, u, MAX_TIMESTAMP - 3_600, MAX_TIMESTAMP).is_ok());
        }
        // Calendar months: 2024-01-15 .. 2024-03-02 touches January, February and March.
        let s = bucket_starts(Granularity::Month, u, 1_705_276_800, 1_709_337_600).unwrap();
        assert_eq!(s, vec![1_704_067_200, 1_706_745_600, 1_709_251_200]);
    }

    #[test]
    fn parameters_are_checked() {
        assert!(parse_dimension(None).is_err());
        assert!(parse_dimension(Some("user")).is_err());
        assert_eq!(parse_dimension(Some("model")).unwrap(), Dimension::Model);
        assert_eq!(parse_granularity(None).unwrap(), Granularity::Hour);
        assert!(parse_granularity(Some("total")).is_err());
        assert!(parse_granularity(Some("week")).is_err());
    }
}
