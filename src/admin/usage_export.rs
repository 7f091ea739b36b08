//! Usage across subjects: the top subjects of a dimension by a metric, the totals of chosen
//! subjects in a range, and the CSV export of their series.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AdminState;
use super::access::Actor;
use super::routes::{ApiError, bad_request, store_error};
use super::usage::{
    DEFAULT_SPAN_SECS, bucket_starts, counters_json, parse_dimension, parse_granularity, parse_range, parse_zone,
};
use crate::store::{Dimension, UsageCounters};
use crate::usage::report;

/// The most subjects `top` returns, and `ids` may name.
const MAX_ITEMS: usize = 200;

#[derive(Deserialize)]
pub struct TopQuery {
    dimension: Option<String>,
    metric: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
    limit: Option<usize>,
}

#[derive(Deserialize)]
pub struct RangeQuery {
    dimension: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
    ids: Option<String>,
}

#[derive(Deserialize)]
pub struct ExportQuery {
    dimension: Option<String>,
    ids: Option<String>,
    granularity: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
    tz: Option<String>,
}

/// Display names of keys and accounts (by id); a model is its own name.
fn names(state: &AdminState, dimension: Dimension) -> HashMap<String, String> {
    let snap = state.snapshot.load();
    match dimension {
        Dimension::Key => snap
            .keys
            .iter()
            .map(|(k, ..)| (k.id.to_string(), k.name.to_string()))
            .collect(),
        Dimension::Account => snap
            .pool
            .all()
            .iter()
            .map(|a| (a.id.to_string(), a.name.to_string()))
            .collect(),
        Dimension::Model | Dimension::KeyModel => HashMap::new(),
    }
}

fn metric_value(metric: &str, c: &UsageCounters) -> f64 {
    match metric {
        "cost" => c.cost_nanos as f64 / 1e9,
        "requests" => c.requests as f64,
        "errors" => c.errors as f64,
        _ => {
            (c.input_tokens + c.output_tokens + c.cache_read_tokens + c.cache_write_5m_tokens + c.cache_write_1h_tokens)
                as f64
        }
    }
}

/// The subjects named in `ids`, or every subject the dimension has usage for.
async fn subjects(state: &AdminState, dimension: Dimension, ids: Option<&str>) -> Result<Vec<String>, ApiError> {
    if let Some(ids) = ids {
        let list: Vec<String> = ids
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if list.is_empty() {
            return Err(bad_request("`ids` must name at least one subject"));
        }
        if list.len() > MAX_ITEMS {
            return Err(bad_request(format!("`ids` may name at most {MAX_ITEMS} subjects")));
        }
        let mut seen = std::collections::HashSet::new();
        return Ok(list.into_iter().filter(|s| seen.insert(s.clone())).collect());
    }
    Ok(state
        .store
        .usage_totals(dimension)
        .await
        .map_err(store_error)?
        .into_keys()
        .collect())
}

fn item(names: &HashMap<String, String>, id: &str, c: &UsageCounters) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("id".into(), Value::from(id));
    m.insert("name".into(), Value::from(names.get(id).map_or(id, String::as_str)));
    m.insert("totals".into(), Value::Object(counters_json(c)));
    m
}

/// `GET /admin/api/usage/top`: the subjects of a dimension with the most of a metric in a range.
pub async fn top(
    State(state): State<AdminState>,
    _actor: Actor,
    query: Result<Query<TopQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let dimension = parse_dimension(q.dimension.as_deref())?;
    let metric = q.metric.as_deref().unwrap_or("cost");
    if !["cost", "requests", "tokens", "errors"].contains(&metric) {
        return Err(bad_request(format!(
            "`metric` must be cost, requests, tokens or errors, not `{metric}`"
        )));
    }
    let limit = q.limit.unwrap_or(10);
    if !(1..=MAX_ITEMS).contains(&limit) {
        return Err(bad_request(format!("`limit` must be between 1 and {MAX_ITEMS}")));
    }
    let (from, to) = parse_range(q.from, q.to, DEFAULT_SPAN_SECS)?;
    let all = subjects(&state, dimension, None).await?;
    let now = chrono::Utc::now().timestamp();
    let totals = report::range_totals(&*state.store, dimension, &all, from, to, now)
        .await
        .map_err(store_error)?;
    let mut ranked: Vec<(&String, &UsageCounters, f64)> = totals
        .iter()
        .map(|(id, c)| (id, c, metric_value(metric, c)))
        .filter(|(_, c, _)| !c.is_zero())
        .collect();
    ranked.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(b.0)));
    let names = names(&state, dimension);
    let items: Vec<Value> = ranked
        .into_iter()
        .take(limit)
        .map(|(id, c, v)| {
            let mut m = item(&names, id, c);
            m.insert("value".into(), Value::from(v));
            Value::Object(m)
        })
        .collect();
    Ok(Json(json!({
        "dimension": dimension.as_str(),
        "metric": metric,
        "from": from,
        "to": to,
        "items": items,
    }))
    .into_response())
}

/// `GET /admin/api/usage/range`: the totals of each subject (those in `ids`, else every one with
/// usage) in a range.
pub async fn range(
    State(state): State<AdminState>,
    _actor: Actor,
    query: Result<Query<RangeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let dimension = parse_dimension(q.dimension.as_deref())?;
    let (from, to) = parse_range(q.from, q.to, DEFAULT_SPAN_SECS)?;
    let ids = subjects(&state, dimension, q.ids.as_deref()).await?;
    let now = chrono::Utc::now().timestamp();
    let totals: BTreeMap<String, UsageCounters> = report::range_totals(&*state.store, dimension, &ids, from, to, now)
        .await
        .map_err(store_error)?;
    let names = names(&state, dimension);
    let items: Vec<Value> = ids
        .iter()
        .map(|id| Value::Object(item(&names, id, &totals.get(id).copied().unwrap_or_default())))
        .collect();
    Ok(Json(json!({
        "dimension": dimension.as_str(),
        "from": from,
        "to": to,
        "items": items,
    }))
    .into_response())
}

/// A CSV field, quoted when it needs to be. Text that a spreadsheet would run as a formula (it
/// starts with `=`, `+`, `-`, `@`, a tab or a carriage return) is prefixed with `'`: names and
/// failed-login user names are chosen by people, and a CSV is opened in spreadsheets.
pub(super) fn csv_field(s: &str) -> String {
    let formula = s.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let s = if formula { format!("'{s}") } else { s.to_string() };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// The CSV columns after `start` and `subject`: the token columns, `cost_usd`, then the other
/// counters in their store order.
const LEADING: [&str; 7] = [
    "requests",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
];

fn csv_header() -> String {
    let mut cols = vec!["start", "subject"];
    cols.extend(LEADING);
    cols.push("cost_usd");
    let rest = UsageCounters::default().fields();
    cols.extend(rest.iter().map(|(n, _)| *n).filter(|n| !LEADING.contains(n)));
    cols.join(",")
}

fn csv_row(start: &str, subject: &str, c: &UsageCounters) -> String {
    let fields = c.fields();
    let mut out = vec![csv_field(start), csv_field(subject)];
    for name in LEADING {
        let v = fields.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v);
        out.push(v.to_string());
    }
    out.push((c.cost_nanos as f64 / 1e9).to_string());
    out.extend(
        fields
            .iter()
            .filter(|(n, _)| !LEADING.contains(n))
            .map(|(_, v)| v.to_string()),
    );
    out.join(",")
}

/// `GET /admin/api/usage/export.csv`: the series of each subject, one row per subject and bucket.
pub async fn export(
    State(state): State<AdminState>,
    _actor: Actor,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let dimension = parse_dimension(q.dimension.as_deref())?;
    let granularity = parse_granularity(q.granularity.as_deref())?;
    let zone = parse_zone(q.tz.as_deref())?;
    let (from, to) = parse_range(q.from, q.to, DEFAULT_SPAN_SECS)?;
    let starts = bucket_starts(granularity, zone, from, to)?;
    let ids = subjects(&state, dimension, q.ids.as_deref()).await?;
    if ids.len().saturating_mul(starts.len()) > 100_000 {
        return Err(bad_request(
            "the export would exceed 100000 rows; narrow the range, use a coarser granularity or fewer ids",
        ));
    }
    let now = chrono::Utc::now().timestamp();
    let labels: Vec<String> = starts.iter().map(|s| zone.rfc3339(*s)).collect();
    // Costs also in the display currency, when it is not USD.
    let panel = state.store.get_settings().await.map_err(store_error)?;
    let currency = super::settings::currency(&state, &panel);
    let converted = (currency.display != "USD").then(|| currency.rate());
    let mut out = csv_header();
    if converted.is_some() {
        out.push_str(&format!(",cost_{}", currency.display.to_ascii_lowercase()));
    }
    out.push('\n');
    for id in &ids {
        let series = report::series(
            &*state.store,
            dimension,
            std::slice::from_ref(id),
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
        for (label, c) in labels.iter().zip(&series) {
            out.push_str(&csv_row(label, id, c));
            if let Some(rate) = converted {
                out.push_str(&format!(",{}", c.cost_nanos as f64 / 1e9 * rate));
            }
            out.push('\n');
        }
    }
    let file = format!("usage-{}-{}.csv", dimension.as_str(), granularity.as_str());
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{file}\"")),
        ],
        out,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_columns_match_rows() {
        let h = csv_header();
        assert!(h.starts_with(
            "start,subject,requests,errors,input_tokens,output_tokens,cache_read_tokens,\
             cache_write_5m_tokens,cache_write_1h_tokens,cost_usd,cost_nanos,"
        ));
        let c = UsageCounters {
            requests: 2,
            cost_nanos: 1_500_000_000,
            ..Default::default()
        };
        let row = csv_row("2024-01-01T00:00:00Z", "a,\"b\"", &c);
        assert!(row.starts_with("2024-01-01T00:00:00Z,\"a,\"\"b\"\"\",2,0,"), "{row}");
        assert_eq!(
            h.split(',').count() + 1,
            row.split(',').count(),
            "one comma inside the quoted subject"
        );
        assert!(row.contains(",1.5,1500000000,"));
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_field("claude-sonnet-4-5"), "claude-sonnet-4-5");
    }
}
