//! The audit trail: one record per admin action (logins, and every change, export and import),
//! with who (user, role, client address), what (action, target, a field-level diff) and the
//! outcome. Secrets never reach it: fields that hold them are redacted in request bodies and
//! diffs alike.
//!
//! [`super::access::guard`] calls [`around`] for every audited route, so no handler can forget
//! its record. The diff compares the target's admin view (which masks secrets already) before and
//! after the change; a request body is kept, redacted, when it is small JSON.
//!
//! Records go to the store's bounded audit log; [`trim_forever`] applies the retention.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AdminState;
use super::access::Actor;
use super::routes::{ApiError, bad_request, store_error};
use super::usage_export::csv_field;
use crate::store::{LogKind, LogRecord};

/// Request bodies up to this size are kept (redacted) in the record.
const MAX_KEPT_BODY: usize = 16 * 1024;
/// The admin API's body limit (axum's default), which the guard applies while it reads a body.
const MAX_BODY: usize = 2 * 1024 * 1024;
/// Fields of an admin view that change without an admin action: left out of diffs.
const VOLATILE: [&str; 6] = [
    "health",
    "ratelimit",
    "in_flight",
    "spend_today_usd",
    "last_used_at",
    "expires_in",
];

/// The user a login response names (the guard knows no actor before a login).
#[derive(Clone, Debug)]
pub struct LoginAttempt(pub String);

/// Whether a field name holds a secret: its value never enters a record. Names are compared
/// without case, `_` or `-`, so `refresh_token`, `refreshToken` and `Refresh-Token` are alike.
pub fn is_secret(name: &str) -> bool {
    let n: String = name
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    const PARTS: [&str; 10] = [
        "password",
        "secret",
        "passphrase",
        "credential",
        "privatekey",
        "cookie",
        "authorization",
        "codeverifier",
        "encryptionkey",
        "sessionkey",
    ];
    const NAMES: [&str; 6] = ["key", "apikey", "xapikey", "code", "plaintext", "keyhash"];
    PARTS.iter().any(|p| n.contains(p)) || NAMES.contains(&n.as_str()) || n.ends_with("token")
}

/// Whether a string value is itself a credential or carries one: a URL with a user and password
/// (an outbound proxy), a PEM block, or a token with a provider's prefix.
fn secret_value(v: &str) -> bool {
    const PREFIXES: [&str; 6] = ["sk-", "cr_", "ya29.", "AKIA", "ASIA", "1//"];
    let userinfo = v.split_once("://").is_some_and(|(_, rest)| {
        rest.split(['/', '?', '#'])
            .next()
            .is_some_and(|auth| auth.contains('@'))
    });
    userinfo || v.contains("-----BEGIN") || PREFIXES.iter().any(|p| v.starts_with(p))
}

/// Replaces the value of every secret field (at any depth), and every string that is a secret
/// itself, with `"[redacted]"`.
pub fn redact(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                if is_secret(k) {
                    if !val.is_null() {
                        *val = Value::String("[redacted]".into());
                    }
                } else {
                    redact(val);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact),
        Value::String(s) if secret_value(s) => *s = "[redacted]".into(),
        _ => {}
    }
}

/// Flattens a JSON value into `path → leaf` (objects by `.`; arrays are leaves, compared whole).
fn flatten(prefix: &str, v: &Value, out: &mut Map<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, val) in m {
                if prefix.is_empty() && VOLATILE.contains(&k.as_str()) {
                    continue;
                }
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, val, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// The fields that differ between two views, as `{field, from, to}`; a secret field's change
/// is shown without its values.
pub fn diff(before: &Value, after: &Value) -> Vec<Value> {
    let (mut a, mut b) = (Map::new(), Map::new());
    flatten("", before, &mut a);
    flatten("", after, &mut b);
    let mut fields: Vec<&String> = a.keys().chain(b.keys()).collect();
    fields.sort();
    fields.dedup();
    let mut out = Vec::new();
    for f in fields {
        let (from, to) = (a.get(f).unwrap_or(&Value::Null), b.get(f).unwrap_or(&Value::Null));
        if from == to {
            continue;
        }
        let secret = f.split('.').any(is_secret);
        let shown = |v: &Value| {
            if (secret || v.as_str().is_some_and(secret_value)) && !v.is_null() {
                Value::String("[redacted]".into())
            } else {
                v.clone()
            }
        };
        out.push(json!({"field": f, "from": shown(from), "to": shown(to)}));
    }
    out
}

fn singular(resource: &str) -> &str {
    match resource {
        "keys" => "key",
        "accounts" => "account",
        "users" => "user",
        "groups" => "group",
        "sessions" => "session",
        "requests" => "request",
        other => other,
    }
}

/// The action of a route, e.g. `key.create`, `key.rotate`, `account.claude-oauth.exchange`,
/// `usage.export`, `login`.
pub fn action(method: &Method, route: &str) -> String {
    let rest = route.strip_prefix("/admin/api/").unwrap_or(route);
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let Some(first) = segs.first() else {
        return "unknown".into();
    };
    let mut parts = vec![singular(first).to_string()];
    let literals: Vec<&str> = segs[1..].iter().copied().filter(|s| !s.starts_with('{')).collect();
    for l in &literals {
        parts.push(l.strip_suffix(".csv").unwrap_or(l).to_string());
    }
    let single = ["login", "logout", "export", "import"].contains(first);
    if literals.is_empty() && !single {
        let verb = match *method {
            Method::POST if *first == "password" => "change",
            Method::POST => "create",
            Method::PATCH => "update",
            Method::PUT => "replace",
            Method::DELETE => "delete",
            _ => "read",
        };
        parts.push(verb.into());
    }
    parts.join(".")
}

/// The target of a route: `(type, id)` from its first path parameter.
fn target(route: &str, path: &str) -> Option<(String, String)> {
    let r: Vec<&str> = route.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    let i = r.iter().position(|s| s.starts_with('{'))?;
    let id = p.get(i)?;
    let id = percent_encoding::percent_decode_str(id)
        .decode_utf8_lossy()
        .into_owned();
    Some((singular(r.get(i.checked_sub(1)?)?).to_string(), id))
}

/// What an action was done with: a record's `target`.
fn target_json(kind: &str, id: &str, view: Option<&Value>) -> Value {
    let name = view.and_then(|v| v.get("name").or_else(|| v.get("username"))).cloned();
    json!({"type": kind, "id": id, "name": name})
}

/// The admin view of a target, as its GET endpoint answers it (secrets masked).
async fn view(state: &AdminState, actor: &Actor, kind: &str, id: &str) -> Option<Value> {
    let response = match kind {
        "key" => super::keys::get(State(state.clone()), actor.clone(), Path(id.to_string())).await,
        "account" => super::accounts::get(State(state.clone()), actor.clone(), Path(id.to_string())).await,
        "user" => return super::users::view(state, id).await,
        "settings" => return super::settings::view_json(state).await.ok(),
        _ => return None,
    };
    json_of(response.ok()?).await
}

async fn json_of(response: Response) -> Option<Value> {
    let bytes = axum::body::to_bytes(response.into_body(), MAX_BODY).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Who acted, from where, on what route: what every record of one request shares.
pub struct Context {
    at_ms: i64,
    actor: Option<Actor>,
    ip: String,
    user_agent: Option<String>,
    method: Method,
    route: String,
    path: String,
}

impl Context {
    pub fn new(state: &AdminState, peer: SocketAddr, req: &Request, route: &str, actor: Option<Actor>) -> Context {
        let ip = crate::net::client_ip(peer.ip(), req.headers(), &state.config.trusted_proxies);
        let user_agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(200).collect());
        Context {
            at_ms: chrono::Utc::now().timestamp_millis(),
            actor,
            ip: ip.to_string(),
            user_agent,
            method: req.method().clone(),
            route: route.to_string(),
            path: req.uri().path().to_string(),
        }
    }

    fn record(&self, status: StatusCode) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("at".into(), json!(self.at_ms));
        m.insert("actor".into(), json!(self.actor.as_ref().map(|a| &a.username)));
        m.insert("role".into(), json!(self.actor.as_ref().map(|a| a.role.as_str())));
        m.insert("ip".into(), json!(self.ip));
        m.insert("user_agent".into(), json!(self.user_agent));
        m.insert("action".into(), json!(action(&self.method, &self.route)));
        m.insert("method".into(), json!(self.method.as_str()));
        m.insert("path".into(), json!(self.path));
        m.insert("status".into(), json!(status.as_u16()));
        m.insert("ok".into(), json!(status.is_success()));
        m
    }
}

/// Appends one record to the audit log. A store failure is logged: the action has happened and
/// its answer is not withheld.
async fn append(state: &AdminState, at_ms: i64, record: Map<String, Value>) {
    let text = Value::Object(record).to_string();
    if let Err(e) = state.store.append_log(LogKind::Audit, &[(at_ms, text)]).await {
        tracing::warn!(error = %e, "an admin action could not be written to the audit log");
    }
}

/// Records a call refused for its role.
pub async fn refused(state: &AdminState, ctx: Context, status: StatusCode) {
    let mut r = ctx.record(status);
    if let Some((kind, id)) = target(&ctx.route, &ctx.path) {
        r.insert("target".into(), target_json(&kind, &id, None));
    }
    append(state, ctx.at_ms, r).await;
}

/// Whether a route's request body is read into the record (small JSON bodies of every audited
/// route but imports, which are files).
fn keeps_body(route: &str) -> bool {
    !route.starts_with("/admin/api/import")
}

/// Runs an audited request and records it: the target's view before and after, the redacted
/// body, the status.
pub async fn around(
    state: &AdminState,
    peer: SocketAddr,
    req: Request,
    route: &str,
    actor: Option<Actor>,
    next: Next,
) -> Response {
    let mut ctx = Context::new(state, peer, &req, route, actor.clone());
    let (parts, body) = req.into_parts();
    let (req, kept) = if keeps_body(route) {
        let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
            return ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "the request body is over 2 MiB".into(),
            )
            .into_response();
        };
        let kept = (bytes.len() <= MAX_KEPT_BODY)
            .then(|| serde_json::from_slice::<Value>(&bytes).ok())
            .flatten()
            .map(|mut v| {
                redact(&mut v);
                v
            });
        (Request::from_parts(parts, Body::from(bytes)), kept)
    } else {
        (Request::from_parts(parts, body), None)
    };
    let mut tgt = target(route, &ctx.path);
    if route == "/admin/api/settings" {
        tgt = Some(("settings".into(), "settings".into()));
    }
    let before = match (&actor, &tgt) {
        (Some(a), Some((kind, id))) => view(state, a, kind, id).await,
        _ => None,
    };
    let response = next.run(req).await;
    let status = response.status();
    if let Some(LoginAttempt(user)) = response.extensions().get::<LoginAttempt>() {
        ctx.actor = Some(Actor {
            username: user.clone(),
            role: crate::store::AdminRole::Viewer,
            session: String::new(),
        });
    }
    let mut record = ctx.record(status);
    if ctx.route == "/admin/api/login" {
        record.insert("role".into(), Value::Null);
        if !status.is_success() {
            record.insert("action".into(), json!("login.failed"));
        }
    }
    // A creation names its target in its answer.
    let (response, created) = if tgt.is_none() && ctx.method == Method::POST && status.is_success() {
        created_target(route, response).await
    } else {
        (response, None)
    };
    if created.is_some() {
        tgt = created;
    }
    let after = match (&actor, &tgt) {
        (Some(a), Some((kind, id))) if ctx.method != Method::DELETE && status.is_success() => {
            view(state, a, kind, id).await
        }
        _ => None,
    };
    if let Some((kind, id)) = &tgt {
        record.insert(
            "target".into(),
            target_json(kind, id, after.as_ref().or(before.as_ref())),
        );
    }
    if status.is_success() {
        match (&before, &after) {
            (Some(b), Some(a)) => {
                record.insert("changes".into(), Value::Array(diff(b, a)));
            }
            (None, Some(a)) => {
                record.insert("changes".into(), Value::Array(diff(&json!({}), a)));
            }
            (Some(b), None) if ctx.method == Method::DELETE => {
                record.insert("changes".into(), Value::Array(diff(b, &json!({}))));
            }
            _ => {}
        }
    }
    if let Some(body) = kept {
        record.insert("request".into(), body);
    }
    append(state, ctx.at_ms, record).await;
    response
}

/// The target a creation answered with (`id`, `username` or `account.id` in its JSON body), and
/// the response rebuilt around the body it read.
async fn created_target(route: &str, response: Response) -> (Response, Option<(String, String)>) {
    let kind = match route {
        "/admin/api/keys" => "key",
        "/admin/api/users" => "user",
        r if r == "/admin/api/accounts" || (r.starts_with("/admin/api/accounts/") && !r.contains('{')) => "account",
        _ => return (response, None),
    };
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !is_json {
        return (response, None);
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 4 * MAX_BODY).await else {
        return (Response::from_parts(parts, Body::empty()), None);
    };
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let id = v
        .get("id")
        .or_else(|| v.get("username"))
        .or_else(|| v.pointer("/account/id"))
        .and_then(Value::as_str)
        .map(str::to_string);
    (
        Response::from_parts(parts, Body::from(bytes)),
        id.map(|id| (kind.to_string(), id)),
    )
}

// --- reading the trail ---

/// Records per page when the query does not say, and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Records one listing reads at most while it filters; past them it answers what it found with
/// a cursor to go on from.
const MAX_SCANNED: usize = 50_000;
/// Rows of a CSV export at most.
const MAX_EXPORT: usize = 100_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Unix seconds, inclusive.
    from: Option<i64>,
    /// Unix seconds, exclusive.
    to: Option<i64>,
    actor: Option<String>,
    /// An action, or its prefix before a `.` (`key` matches `key.create`).
    action: Option<String>,
    /// A target id or name.
    target: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

impl AuditQuery {
    fn matches(&self, r: &Value) -> bool {
        let at_s = r["at"].as_i64().unwrap_or(0).div_euclid(1000);
        if self.from.is_some_and(|f| at_s < f) || self.to.is_some_and(|t| at_s >= t) {
            return false;
        }
        if let Some(a) = &self.actor
            && r["actor"].as_str() != Some(a.as_str())
        {
            return false;
        }
        if let Some(a) = &self.action {
            let act = r["action"].as_str().unwrap_or("");
            if act != a && !act.starts_with(&format!("{a}.")) {
                return false;
            }
        }
        if let Some(t) = &self.target {
            let id = r["target"]["id"].as_str();
            let name = r["target"]["name"].as_str();
            if id != Some(t.as_str()) && name != Some(t.as_str()) {
                return false;
            }
        }
        true
    }
}

/// One page of matching records, newest first, and the cursor after it.
async fn page(state: &AdminState, q: &AuditQuery, limit: usize) -> Result<(Vec<Value>, Option<String>), ApiError> {
    let mut cursor = q.cursor.clone();
    let mut found = Vec::new();
    let mut scanned = 0usize;
    let from_ms = q.from.map(|f| f.saturating_mul(1000));
    loop {
        let batch: Vec<LogRecord> = state
            .store
            .read_log(LogKind::Audit, cursor.as_deref(), 500)
            .await
            .map_err(store_error)?;
        let Some(last) = batch.last() else {
            return Ok((found, None));
        };
        cursor = Some(last.id.clone());
        let exhausted = batch.len() < 500;
        let mut older_than_range = false;
        for rec in &batch {
            scanned += 1;
            if from_ms.is_some_and(|f| rec.at_ms < f) {
                older_than_range = true;
                break;
            }
            let Ok(mut v) = serde_json::from_str::<Value>(&rec.data) else {
                continue;
            };
            if q.matches(&v) {
                v["id"] = json!(rec.id);
                found.push(v);
                if found.len() == limit {
                    return Ok((found, Some(rec.id.clone())));
                }
            }
        }
        if exhausted || older_than_range {
            return Ok((found, None));
        }
        if scanned >= MAX_SCANNED {
            return Ok((found, cursor));
        }
    }
}

/// Whether a cursor has the shape of a log record id (`<digits>-<digits>`).
fn cursor_shape(c: &str) -> bool {
    c.len() <= 40
        && c.split_once('-').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|x| x.is_ascii_digit())
                && b.bytes().all(|x| x.is_ascii_digit())
        })
}

fn query(q: Result<Query<AuditQuery>, QueryRejection>) -> Result<AuditQuery, ApiError> {
    let Query(q) = q.map_err(|e| bad_request(e.body_text()))?;
    if q.cursor.as_deref().is_some_and(|c| !cursor_shape(c)) {
        return Err(bad_request("`cursor` is not one this API returned (`next_cursor`)"));
    }
    if let (Some(f), Some(t)) = (q.from, q.to)
        && f >= t
    {
        return Err(bad_request("`from` must be before `to`"));
    }
    Ok(q)
}

/// `GET /admin/api/audit`: records newest first, filtered, with a cursor.
pub async fn list(
    State(state): State<AdminState>,
    _actor: Actor,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(bad_request(format!("`limit` must be between 1 and {MAX_LIMIT}")));
    }
    let (records, next) = page(&state, &q, limit).await?;
    Ok(Json(json!({"records": records, "next_cursor": next})).into_response())
}

const CSV_HEADER: &str = "time,actor,role,ip,action,target_type,target_id,target_name,status,ok,changes,user_agent";

fn csv_row(r: &Value) -> String {
    let s = |v: &Value| v.as_str().map(csv_field).unwrap_or_default();
    let time = chrono::DateTime::from_timestamp_millis(r["at"].as_i64().unwrap_or(0))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    let changes = r.get("changes").map(|c| csv_field(&c.to_string())).unwrap_or_default();
    [
        time,
        s(&r["actor"]),
        s(&r["role"]),
        s(&r["ip"]),
        s(&r["action"]),
        s(&r["target"]["type"]),
        s(&r["target"]["id"]),
        s(&r["target"]["name"]),
        r["status"].to_string(),
        r["ok"].to_string(),
        changes,
        s(&r["user_agent"]),
    ]
    .join(",")
}

/// `GET /admin/api/audit/export.csv`: the filtered records as CSV, newest first.
pub async fn export(
    State(state): State<AdminState>,
    _actor: Actor,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let mut q = query(q)?;
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    let mut rows = 0;
    loop {
        let (records, next) = page(&state, &q, MAX_LIMIT).await?;
        for r in &records {
            out.push_str(&csv_row(r));
            out.push('\n');
        }
        rows += records.len();
        match next {
            Some(c) if rows < MAX_EXPORT => q.cursor = Some(c),
            _ => break,
        }
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"audit.csv\""),
        ],
        out,
    )
        .into_response())
}

/// Applies the audit log's retention and cap now, then every hour (run as a server task, which
/// shutdown cancels).
pub async fn trim_forever(store: std::sync::Arc<dyn crate::store::Store>, config: crate::config::AuditConfig) {
    loop {
        let min_ms = chrono::Utc::now()
            .timestamp_millis()
            .saturating_sub(i64::try_from(config.retention.0.as_millis()).unwrap_or(i64::MAX));
        match store.trim_log(LogKind::Audit, min_ms, config.max_records).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, "audit log trimmed"),
            Err(e) => tracing::warn!(error = %e, "the audit log could not be trimmed"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_named_by_route() {
        assert_eq!(action(&Method::POST, "/admin/api/keys"), "key.create");
        assert_eq!(action(&Method::PATCH, "/admin/api/keys/{id}"), "key.update");
        assert_eq!(action(&Method::DELETE, "/admin/api/accounts/{id}"), "account.delete");
        assert_eq!(action(&Method::POST, "/admin/api/keys/{id}/rotate"), "key.rotate");
        assert_eq!(action(&Method::POST, "/admin/api/keys/batch"), "key.batch");
        assert_eq!(
            action(&Method::POST, "/admin/api/accounts/claude-oauth/exchange"),
            "account.claude-oauth.exchange"
        );
        assert_eq!(action(&Method::GET, "/admin/api/usage/export.csv"), "usage.export");
        assert_eq!(action(&Method::POST, "/admin/api/login"), "login");
        assert_eq!(action(&Method::POST, "/admin/api/password"), "password.change");
        assert_eq!(action(&Method::DELETE, "/admin/api/sessions/{id}"), "session.delete");
        assert_eq!(action(&Method::POST, "/admin/api/groups/{name}/rename"), "group.rename");
    }

    #[test]
    fn targets_come_from_the_first_parameter() {
        assert_eq!(
            target("/admin/api/keys/{id}/rotate", "/admin/api/keys/k_1/rotate"),
            Some(("key".into(), "k_1".into()))
        );
        assert_eq!(
            target("/admin/api/groups/{name}/rename", "/admin/api/groups/team%20a/rename"),
            Some(("group".into(), "team a".into()))
        );
        assert_eq!(target("/admin/api/keys", "/admin/api/keys"), None);
    }

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let mut v = json!({
            "name": "a", "api_key": "sk-1", "password": "pw", "limits": {"max_tokens": 5},
            "oauth": {"refresh_token": "rt", "access_token": "at", "expires_at": 1},
            "list": [{"secret_access_key": "s"}], "code": "c", "key": "cr_x", "models": ["m"]
        });
        redact(&mut v);
        let text = v.to_string();
        for s in ["sk-1", "\"pw\"", "\"rt\"", "\"at\"", "\"s\"", "\"c\"", "cr_x"] {
            assert!(!text.contains(s), "{s} in {text}");
        }
        assert_eq!(v["limits"]["max_tokens"], 5);
        assert_eq!(v["oauth"]["expires_at"], 1);
        assert_eq!(v["name"], "a");
        // Camel case (Claude Code's credentials file), proxies with a password, bare tokens.
        let mut v = json!({
            "claudeAiOauth": {"accessToken": "a1", "refreshToken": "r1", "expiresAt": 5, "scopes": ["user:inference"]},
            "proxy": "socks5://user:secretpw@10.0.0.1:1080", "base_url": "https://api.example.com/v1",
            "note": "sk-ant-api03-xyz", "models": ["claude-sonnet-4-5"]
        });
        redact(&mut v);
        let text = v.to_string();
        for s in ["a1", "r1", "secretpw", "sk-ant"] {
            assert!(!text.contains(s), "{s} in {text}");
        }
        assert_eq!(v["claudeAiOauth"]["expiresAt"], 5);
        assert_eq!(v["base_url"], "https://api.example.com/v1");
        assert_eq!(v["models"][0], "claude-sonnet-4-5");
    }

    #[test]
    fn diffs_name_fields_and_hide_secret_values() {
        let before = json!({"name": "a", "enabled": true, "limits": {"rpm": 60}, "api_key": "sk-…ab",
            "health": {"state": "active"}, "tags": ["x"]});
        let after = json!({"name": "b", "enabled": true, "limits": {"rpm": 120, "tpm": 5}, "api_key": "sk-…cd",
            "health": {"state": "cooling_down"}, "tags": ["x", "y"]});
        let d = diff(&before, &after);
        let fields: Vec<&str> = d.iter().map(|c| c["field"].as_str().unwrap()).collect();
        assert_eq!(fields, ["api_key", "limits.rpm", "limits.tpm", "name", "tags"]);
        assert_eq!(d[0]["from"], "[redacted]");
        assert_eq!(d[1], json!({"field": "limits.rpm", "from": 60, "to": 120}));
        assert_eq!(d[2]["from"], Value::Null);
        assert!(!Value::Array(d).to_string().contains("…ab"));
    }

    #[test]
    fn csv_rows_follow_the_header() {
        let r = json!({"at": 1_700_000_000_000i64, "actor": "=evil", "role": "admin", "ip": "::1",
            "action": "key.update", "target": {"type": "key", "id": "k1", "name": "a,b"}, "status": 200,
            "ok": true, "changes": [{"field": "name", "from": "a", "to": "b"}], "user_agent": null});
        let row = csv_row(&r);
        assert!(
            row.starts_with("2023-11-14T22:13:20.000Z,'=evil,admin,::1,key.update,key,k1,\"a,b\",200,true,"),
            "{row}"
        );
        assert_eq!(CSV_HEADER.split(',').count(), 12);
    }
}
