//! The request log: one metadata record per relayed request (`usage::request_log`), newest first,
//! filtered while the store's pages are scanned, and its CSV export.
//!
//! Filters are applied to the records as they are read, so a page scans at most [`MAX_SCAN`]
//! records: a filter that matches rarely returns fewer items than asked for, with a `next_cursor`
//! to continue from where the scan stopped.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AdminState;
use super::access::Actor;
use super::routes::{ApiError, bad_request, store_error};
use crate::store::{LogKind, LogRecord, Store, StoreResult};
use crate::usage::request_log::RequestRecord;

/// Records one listing call reads from the store at most.
pub const MAX_SCAN: usize = 20_000;
/// Rows the CSV export writes at most.
pub const MAX_EXPORT_ROWS: usize = 100_000;
/// Records read from the store per round trip.
const PAGE: usize = 1_000;
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;
/// The end of year 9999 in Unix seconds (as the usage API's bound).
const MAX_TIMESTAMP: i64 = 253_402_300_799;
const MAX_FILTER_CHARS: usize = 200;

#[derive(Deserialize)]
pub struct ListQuery {
    from: Option<i64>,
    to: Option<i64>,
    key: Option<String>,
    account: Option<String>,
    model: Option<String>,
    status: Option<String>,
    stream: Option<bool>,
    error: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// Which records a listing or an export keeps.
#[derive(Debug, Default)]
struct Filter {
    /// Unix ms, inclusive.
    from_ms: Option<i64>,
    /// Unix ms, exclusive.
    to_ms: Option<i64>,
    key: Option<String>,
    account: Option<String>,
    model: Option<String>,
    status: Option<StatusFilter>,
    stream: Option<bool>,
    error: Option<ErrorFilter>,
}

#[derive(Debug, Clone, Copy)]
enum StatusFilter {
    Exact(u16),
    /// `4xx`: the hundreds digit.
    Class(u16),
}

#[derive(Debug)]
enum ErrorFilter {
    /// Every request that did not end `ok`.
    Any,
    /// Every request that ended `ok`.
    None,
    /// Requests with this error reason.
    Reason(String),
}

fn text_filter(name: &str, v: Option<String>) -> Result<Option<String>, ApiError> {
    match v {
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if v.chars().count() > MAX_FILTER_CHARS => Err(bad_request(format!(
            "`{name}` must be at most {MAX_FILTER_CHARS} characters"
        ))),
        other => Ok(other),
    }
}

impl Filter {
    fn parse(q: &mut ListQuery) -> Result<Filter, ApiError> {
        for (name, v) in [("from", q.from), ("to", q.to)] {
            if v.is_some_and(|t| !(0..=MAX_TIMESTAMP).contains(&t)) {
                return Err(bad_request(format!(
                    "`{name}` must be a Unix time in seconds between 0 and {MAX_TIMESTAMP}"
                )));
            }
        }
        if let (Some(f), Some(t)) = (q.from, q.to)
            && f >= t
        {
            return Err(bad_request("`from` must be before `to`"));
        }
        let status = match q.status.take().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(parse_status(&s)?),
        };
        let error = match text_filter("error", q.error.take())? {
            None => None,
            Some(e) if e == "any" => Some(ErrorFilter::Any),
            Some(e) if e == "none" => Some(ErrorFilter::None),
            Some(e) => Some(ErrorFilter::Reason(e)),
        };
        Ok(Filter {
            from_ms: q.from.map(|s| s * 1000),
            to_ms: q.to.map(|s| s * 1000),
            key: text_filter("key", q.key.take())?,
            account: text_filter("account", q.account.take())?,
            model: text_filter("model", q.model.take())?,
            status,
            stream: q.stream,
            error,
        })
    }

    fn keeps(&self, r: &RequestRecord) -> bool {
        let is = |want: &Option<String>, got: Option<&str>| want.as_deref().is_none_or(|w| Some(w) == got);
        self.from_ms.is_none_or(|f| r.at_ms >= f)
            && self.to_ms.is_none_or(|t| r.at_ms < t)
            && is(&self.key, r.key_id.as_deref())
            && is(&self.account, r.account_id.as_deref())
            && self
                .model
                .as_deref()
                .is_none_or(|m| r.model.as_deref() == Some(m) || r.upstream_model.as_deref() == Some(m))
            && self.status.is_none_or(|s| match s {
                StatusFilter::Exact(c) => r.status == c,
                StatusFilter::Class(c) => r.status / 100 == c,
            })
            && self.stream.is_none_or(|s| r.stream == s)
            && match &self.error {
                None => true,
                Some(ErrorFilter::Any) => r.outcome != crate::usage::request_log::outcome::OK,
                Some(ErrorFilter::None) => r.outcome == crate::usage::request_log::outcome::OK,
                Some(ErrorFilter::Reason(e)) => r.error.as_deref() == Some(e),
            }
    }

    /// Whether every record from this id on (older) is before `from`: ids start with the time the
    /// record was appended, which is never before the request's start.
    fn past_the_start(&self, id: &str) -> bool {
        let id_ms = id.split('-').next().and_then(|ms| ms.parse::<i64>().ok());
        matches!((self.from_ms, id_ms), (Some(f), Some(ms)) if ms < f)
    }
}

fn parse_status(s: &str) -> Result<StatusFilter, ApiError> {
    let bad = || {
        bad_request(format!(
            "`status` must be a status code (100 to 599) or a class like `5xx`, not `{s}`"
        ))
    };
    if let Some(class) = s.strip_suffix("xx") {
        let c: u16 = class.parse().map_err(|_| bad())?;
        return if (1..=5).contains(&c) && class.len() == 1 {
            Ok(StatusFilter::Class(c))
        } else {
            Err(bad())
        };
    }
    match s.parse::<u16>() {
        Ok(c) if (100..=599).contains(&c) && s.len() == 3 => Ok(StatusFilter::Exact(c)),
        _ => Err(bad()),
    }
}

/// A stored record as the API shows it: its JSON with its id first; `None` when it cannot be read
/// (a record of another relay version that lost a field).
fn decode(rec: &LogRecord) -> Option<(RequestRecord, Value)> {
    let parsed: RequestRecord = serde_json::from_str(&rec.data).ok()?;
    let mut value = serde_json::to_value(&parsed).ok()?;
    if let Value::Object(m) = &mut value {
        let mut out = serde_json::Map::with_capacity(m.len() + 1);
        out.insert("id".into(), Value::from(rec.id.as_str()));
        out.append(m);
        value = Value::Object(out);
    }
    Some((parsed, value))
}

/// What one scan found: the kept records, and where to continue (`None`: the log is exhausted).
struct Scan {
    items: Vec<(String, RequestRecord, Value)>,
    scanned: usize,
    next_cursor: Option<String>,
    /// The scan stopped at its bound before it found `limit` records.
    bounded: bool,
}

/// Reads records older than `cursor`, newest first, keeping those `filter` keeps, until `limit`
/// are kept, `max_scan` were read, or the log (or the time range) ends.
async fn scan(
    store: &dyn Store,
    filter: &Filter,
    cursor: Option<String>,
    limit: usize,
    max_scan: usize,
) -> StoreResult<Scan> {
    let mut out = Scan {
        items: Vec::new(),
        scanned: 0,
        next_cursor: None,
        bounded: false,
    };
    let mut before = cursor;
    loop {
        let want = PAGE.min(max_scan - out.scanned);
        let page = store.read_log(LogKind::Requests, before.as_deref(), want).await?;
        let full = page.len() == want;
        for rec in page {
            out.scanned += 1;
            if filter.past_the_start(&rec.id) {
                return Ok(out);
            }
            if let Some((parsed, value)) = decode(&rec)
                && filter.keeps(&parsed)
            {
                out.items.push((rec.id.clone(), parsed, value));
                if out.items.len() == limit {
                    out.next_cursor = Some(rec.id);
                    return Ok(out);
                }
            }
            before = Some(rec.id);
        }
        if !full {
            return Ok(out);
        }
        if out.scanned >= max_scan {
            out.bounded = true;
            out.next_cursor = before;
            return Ok(out);
        }
    }
}

/// `GET /admin/api/requests`: the request log, newest first.
pub async fn list(
    State(state): State<AdminState>,
    _actor: Actor,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(mut q) = query.map_err(|e| bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(bad_request(format!("`limit` must be between 1 and {MAX_LIMIT}")));
    }
    let filter = Filter::parse(&mut q)?;
    let cursor = q.cursor.filter(|c| !c.is_empty());
    let found = scan(&*state.store, &filter, cursor, limit, MAX_SCAN)
        .await
        .map_err(store_error)?;
    let items: Vec<Value> = found.items.into_iter().map(|(_, _, v)| v).collect();
    Ok(Json(json!({
        "items": items,
        "next_cursor": found.next_cursor,
        "scanned": found.scanned,
        "scan_limit_reached": found.bounded,
        "enabled": state.config.request_log.enabled,
    }))
    .into_response())
}

/// `GET /admin/api/requests/{id}`: one record.
pub async fn get(State(state): State<AdminState>, _actor: Actor, Path(id): Path<String>) -> Result<Response, ApiError> {
    let rec = state.store.get_log(LogKind::Requests, &id).await.map_err(store_error)?;
    match rec.as_ref().and_then(decode) {
        Some((_, value)) => Ok(Json(value).into_response()),
        None => {
            let shown: String = id.chars().take(64).collect();
            Err(ApiError(
                StatusCode::NOT_FOUND,
                "not_found_error",
                format!("no request log record with id `{shown}`"),
            ))
        }
    }
}

/// The CSV columns, in order: the record's id, then the fields of [`RequestRecord`].
pub const CSV_COLUMNS: [&str; 28] = [
    "id",
    "at_ms",
    "request_id",
    "key_id",
    "key_name",
    "account_id",
    "account_name",
    "dialect",
    "endpoint",
    "model",
    "upstream_model",
    "stream",
    "status",
    "outcome",
    "error",
    "error_source",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
    "cost_usd",
    "ttfb_ms",
    "duration_ms",
    "failover_hops",
    "user_agent",
    "client_ip",
];

/// A CSV field: quoted when it holds a separator, a quote or a line break; a leading `=`, `+`,
/// `-` or `@` is prefixed with `'` so a spreadsheet does not run it as a formula.
fn csv_field(v: &Value) -> String {
    let s = match v {
        Value::Null => return String::new(),
        Value::String(s) => {
            if s.starts_with(['=', '+', '-', '@']) {
                format!("'{s}")
            } else {
                s.clone()
            }
        }
        other => other.to_string(),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn csv_row(v: &Value) -> String {
    let mut row = CSV_COLUMNS
        .iter()
        .map(|c| csv_field(v.get(*c).unwrap_or(&Value::Null)))
        .collect::<Vec<_>>()
        .join(",");
    row.push('\n');
    row
}

/// `GET /admin/api/requests/export.csv`: the records the same filters keep, as CSV, streamed
/// while the log is read (at most [`MAX_EXPORT_ROWS`] rows).
pub async fn export(
    State(state): State<AdminState>,
    _actor: Actor,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(mut q) = query.map_err(|e| bad_request(e.body_text()))?;
    let filter = Filter::parse(&mut q)?;
    let cursor = q.cursor.filter(|c| !c.is_empty());
    // The first page is read before answering, so a bad cursor or a store failure is a proper
    // error status rather than a cut download.
    let first = scan(&*state.store, &filter, cursor, MAX_EXPORT_ROWS, PAGE)
        .await
        .map_err(store_error)?;
    struct Pos {
        store: std::sync::Arc<dyn Store>,
        filter: Filter,
        first: Option<Scan>,
        rows: usize,
        header: bool,
        /// Where the next scan starts; `None` once the log is exhausted.
        next: Option<String>,
    }
    let pos = Pos {
        store: state.store.clone(),
        filter,
        rows: 0,
        header: true,
        next: None,
        first: Some(first),
    };
    let stream = futures_util::stream::unfold(pos, |mut pos| async move {
        if pos.header {
            pos.header = false;
            let mut h = CSV_COLUMNS.join(",");
            h.push('\n');
            return Some((Ok::<_, std::io::Error>(h), pos));
        }
        let found = match pos.first.take() {
            Some(s) => s,
            None => {
                let cursor = pos.next.take()?;
                if pos.rows >= MAX_EXPORT_ROWS {
                    return None;
                }
                match scan(&*pos.store, &pos.filter, Some(cursor), MAX_EXPORT_ROWS - pos.rows, PAGE).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "request log export stopped: store read failed");
                        return None;
                    }
                }
            }
        };
        let mut chunk = String::with_capacity(found.items.len() * 300);
        for (_, _, v) in &found.items {
            chunk.push_str(&csv_row(v));
        }
        pos.rows += found.items.len();
        // A scan stops at its bound (continue), at the row limit, or at the end of the log.
        pos.next = if found.bounded && pos.rows < MAX_EXPORT_ROWS {
            found.next_cursor
        } else {
            None
        };
        Some((Ok(chunk), pos))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"requests.csv\"".to_string(),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse() {
        assert!(matches!(parse_status("200"), Ok(StatusFilter::Exact(200))));
        assert!(matches!(parse_status("5xx"), Ok(StatusFilter::Class(5))));
        for bad in ["", "99", "600", "0200", "6xx", "xx", "55xx", "20x", "abc"] {
            assert!(parse_status(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(csv_field(&json!("a,b")), "\"a,b\"");
        assert_eq!(csv_field(&json!("say \"hi\"")), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field(&json!("=cmd()")), "'=cmd()");
        assert_eq!(csv_field(&json!(null)), "");
        assert_eq!(csv_field(&json!(1.5)), "1.5");
        assert_eq!(csv_field(&json!(true)), "true");
    }
}
