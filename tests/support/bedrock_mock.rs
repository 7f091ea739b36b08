//! A mock Bedrock runtime on a real socket. It checks every request's authentication the way AWS
//! does, with a SigV4 verifier written here from the specification (not the signer the relay
//! uses), or a Bedrock API key as `Authorization: Bearer`. It answers:
//! - `POST /model/{id}/invoke-with-response-stream`: `application/vnd.amazon.eventstream` frames
//!   carrying the events of the golden Anthropic stream (`tests/fixtures/responses/`), each base64
//!   in a `chunk` event `{"bytes":…,"p":…}`, with `message_start`'s model set to `{id}`, no `ping`,
//!   and `amazon-bedrock-invocationMetrics` added to `message_stop`;
//! - `POST /model/{id}/invoke`: the Anthropic Messages JSON (model `{id}`);
//! - `POST /model/{id}/count-tokens`: `{"inputTokens":42}` for an `{"input":{"invokeModel":
//!   {"body":<base64>}}}` or `{"input":{"converse":…}}` request.
//!
//! An invoke body must be Bedrock's Anthropic body: JSON with `anthropic_version`, without `model`
//! or `stream` (Bedrock answers 400 `ValidationException` otherwise).
//!
//! Faults are asked for by request headers, which the relay forwards like any unknown header:
//! - `x-mock-status: N` (with `x-mock-error-type: ThrottlingException`, else a type that fits N):
//!   HTTP N, `{"message":…}`, `x-amzn-ErrorType: <type>:http://internal.amazon.com/coral/com.amazon.bedrock/`
//! - `x-mock-stream-exception: throttlingException`: one exception frame after `message_start`,
//!   then the end
//! - `x-mock-chunk: N` / `x-mock-chunk-delay-ms: N`: the event-stream in N-byte writes
//! - `x-mock-truncate: N`: only the first N bytes of the event-stream
//! - `x-mock-tool`: the tool-use golden stream instead of the text one (for `invoke`, the tool-use
//!   JSON)
//!
//! [`BedrockMock::set_status`] makes every authenticated request fail (for failover tests).
//! Every request is recorded as a [`Seen`], its path as received (percent-encoding kept);
//! [`BedrockMock::rejections`] tells why each refused request was refused.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri, Version};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, NaiveDateTime, Utc};
use futures_util::stream;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::mock::{SSE, SSE_TOOL, Seen, json_for, json_tool_for};
use super::serve::{Served, serve};

/// The `x-amzn-ErrorType` namespace of Bedrock's own errors.
pub const BEDROCK_NS: &str = "http://internal.amazon.com/coral/com.amazon.bedrock/";
/// The `x-amzn-ErrorType` namespace of authentication errors.
pub const CORAL_NS: &str = "http://internal.amazon.com/coral/com.amazon.coral.service/";
/// How far `x-amz-date` may be from now.
pub const MAX_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(5);
/// What `count-tokens` answers.
pub const COUNT_TOKENS: u64 = 42;

/// The credentials the mock accepts.
#[derive(Clone, Debug)]
pub struct BedrockCreds {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// When set, SigV4 requests must carry it, signed, as `x-amz-security-token`; when not, they
    /// must carry none.
    pub session_token: Option<String>,
    /// When set, `Authorization: Bearer <api_key>` is accepted too.
    pub api_key: Option<String>,
    pub region: String,
}

impl BedrockCreds {
    /// AWS's documentation example keys (those of the recorded requests), in `us-east-1`.
    pub fn example() -> BedrockCreds {
        BedrockCreds {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
            api_key: None,
            region: "us-east-1".into(),
        }
    }
}

pub struct BedrockMockState {
    pub creds: BedrockCreds,
    /// The service name of the credential scope: `bedrock`.
    pub service: String,
    pub seen: Mutex<Vec<Seen>>,
    /// Why each refused request was refused, in order.
    pub rejections: Mutex<Vec<String>>,
    /// Answer every authenticated request with this status and error type.
    pub fixed_status: Mutex<Option<(u16, String)>>,
}

pub struct BedrockMock {
    pub addr: SocketAddr,
    pub state: Arc<BedrockMockState>,
    _served: Served,
}

impl BedrockMock {
    /// A mock accepting `creds` on a random port of 127.0.0.1 (plain HTTP/1.1).
    pub async fn start(creds: BedrockCreds) -> BedrockMock {
        let state = Arc::new(BedrockMockState {
            creds,
            service: "bedrock".into(),
            seen: Mutex::default(),
            rejections: Mutex::default(),
            fixed_status: Mutex::default(),
        });
        let router = Router::new()
            .fallback(handle)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(state.clone());
        let served = serve(router).await;
        BedrockMock {
            addr: served.addr,
            state,
            _served: served,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// The `host` a client signs for this mock.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
    pub fn hits(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }
    pub fn rejections(&self) -> Vec<String> {
        self.state.rejections.lock().unwrap().clone()
    }
    /// `Some((429, "ThrottlingException"))`: every authenticated request fails so; `None`: back
    /// to normal.
    pub fn set_status(&self, s: Option<(u16, &str)>) {
        *self.state.fixed_status.lock().unwrap() = s.map(|(n, t)| (n, t.to_owned()));
    }
}

// ---------------------------------------------------------------------------------------------
// SigV4 verification

/// What a SigV4 signature is checked against.
#[derive(Clone, Debug)]
pub struct SigV4Check<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub session_token: Option<&'a str>,
    pub region: &'a str,
    pub service: &'a str,
    pub now: DateTime<Utc>,
}

/// Why a request's SigV4 authentication fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SigV4Error {
    Malformed(String),
    UnknownAccessKey(String),
    WrongScope(String),
    StaleDate(String),
    SecurityToken(String),
    /// The signature differs: the canonical request and string to sign the mock computed.
    Mismatch {
        canonical_request: String,
        string_to_sign: String,
    },
}

impl std::fmt::Display for SigV4Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SigV4Error::Malformed(m) => write!(f, "malformed authorization: {m}"),
            SigV4Error::UnknownAccessKey(k) => write!(f, "unknown access key id {k:?}"),
            SigV4Error::WrongScope(s) => write!(f, "wrong credential scope {s:?}"),
            SigV4Error::StaleDate(d) => write!(f, "x-amz-date {d} too far from now"),
            SigV4Error::SecurityToken(m) => write!(f, "security token: {m}"),
            SigV4Error::Mismatch {
                canonical_request,
                string_to_sign,
            } => write!(
                f,
                "signature mismatch; canonical request:\n{canonical_request}\nstring to sign:\n{string_to_sign}"
            ),
        }
    }
}

/// The parts of an `AWS4-HMAC-SHA256` authorization header.
#[derive(Debug)]
struct Authorization<'a> {
    access_key_id: &'a str,
    /// `date/region/service/aws4_request`.
    scope: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, SigV4Error> {
    let malformed = |m: &str| SigV4Error::Malformed(m.to_owned());
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| malformed("not AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or_else(|| malformed(part))?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => return Err(malformed(part)),
        }
    }
    let credential = credential.ok_or_else(|| malformed("no Credential"))?;
    let (access_key_id, scope) = credential.split_once('/').ok_or_else(|| malformed(credential))?;
    let scope_parts: Vec<&str> = scope.split('/').collect();
    let [date, region, service, terminator] = scope_parts[..] else {
        return Err(SigV4Error::WrongScope(scope.to_owned()));
    };
    if terminator != "aws4_request" {
        return Err(SigV4Error::WrongScope(scope.to_owned()));
    }
    Ok(Authorization {
        access_key_id,
        scope,
        date,
        region,
        service,
        signed_headers: signed
            .ok_or_else(|| malformed("no SignedHeaders"))?
            .split(';')
            .collect(),
        signature: signature.ok_or_else(|| malformed("no Signature"))?,
    })
}

/// RFC 3986 percent-encoding of everything but the unreserved characters, as SigV4 wants.
pub fn uri_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `%XX` sequences decoded (anything else kept as is).
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// The canonical URI of a path as received: every segment encoded again (so `%3A` becomes
/// `%253A`), as AWS does for every service but S3.
pub fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    path.split('/')
        .map(|segment| uri_encode(segment.as_bytes()))
        .collect::<Vec<_>>()
        .join("/")
}

/// The canonical query string: each name and value decoded then encoded once, sorted.
pub fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (uri_encode(&percent_decode(k)), uri_encode(&percent_decode(v)))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A header's canonical value: every value of the header, trimmed, inner runs of spaces made one,
/// joined by commas; `None` when the request lacks it.
fn canonical_header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The hex signature of `string_to_sign` under `secret` for the scope `date/region/service`.
pub fn signature(secret: &str, date: &str, region: &str, service: &str, string_to_sign: &str) -> String {
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    hex::encode(hmac(&key, string_to_sign.as_bytes()))
}

/// The canonical request of a request signed over `signed_headers` (`None` when one of them is
/// missing from the request).
pub fn canonical_request(
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    signed_headers: &[&str],
    body: &[u8],
) -> Result<String, String> {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let mut canonical_headers = String::new();
    for name in signed_headers {
        let value = canonical_header_value(headers, name).ok_or_else(|| format!("signed header {name} is missing"))?;
        let _ = writeln!(canonical_headers, "{name}:{value}");
    }
    let payload_hash = match headers.get("x-amz-content-sha256") {
        Some(v) => v.to_str().map_err(|e| e.to_string())?.to_owned(),
        None => sha256_hex(body),
    };
    Ok(format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{}\n{payload_hash}",
        canonical_uri(path),
        canonical_query(query),
        signed_headers.join(";")
    ))
}

/// Checks the SigV4 `Authorization` of a request against `check`. The payload hash is
/// `x-amz-content-sha256` when sent (see [`check_content_sha256`]), else the body's.
pub fn verify_sigv4(
    check: &SigV4Check<'_>,
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), SigV4Error> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let value = header("authorization").ok_or_else(|| SigV4Error::Malformed("no authorization".into()))?;
    let auth = parse_authorization(value)?;
    if auth.access_key_id != check.access_key_id {
        return Err(SigV4Error::UnknownAccessKey(auth.access_key_id.to_owned()));
    }
    if auth.region != check.region || auth.service != check.service {
        return Err(SigV4Error::WrongScope(auth.scope.to_owned()));
    }
    for required in ["host", "x-amz-date"] {
        if !auth.signed_headers.contains(&required) {
            return Err(SigV4Error::Malformed(format!("{required} is not signed")));
        }
    }
    let amz_date = header("x-amz-date").ok_or_else(|| SigV4Error::Malformed("no x-amz-date".into()))?;
    let at = NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|_| SigV4Error::Malformed(format!("x-amz-date {amz_date:?}")))?
        .and_utc();
    if (check.now - at).abs() > MAX_SKEW {
        return Err(SigV4Error::StaleDate(amz_date.to_owned()));
    }
    if !amz_date.starts_with(auth.date) || auth.date.len() != 8 {
        return Err(SigV4Error::WrongScope(auth.scope.to_owned()));
    }
    match (check.session_token, header("x-amz-security-token")) {
        (None, None) => {}
        (Some(want), Some(got)) if want == got => {
            if !auth.signed_headers.contains(&"x-amz-security-token") {
                return Err(SigV4Error::SecurityToken("x-amz-security-token is not signed".into()));
            }
        }
        (Some(_), Some(_)) => return Err(SigV4Error::SecurityToken("wrong token".into())),
        (Some(_), None) => return Err(SigV4Error::SecurityToken("missing".into())),
        (None, Some(_)) => return Err(SigV4Error::SecurityToken("unexpected".into())),
    }
    let canonical_request = canonical_request(method, path_and_query, headers, &auth.signed_headers, body)
        .map_err(SigV4Error::Malformed)?;
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{}\n{}",
        auth.scope,
        sha256_hex(canonical_request.as_bytes())
    );
    let expected = signature(
        check.secret_access_key,
        auth.date,
        auth.region,
        auth.service,
        &string_to_sign,
    );
    if expected != auth.signature {
        return Err(SigV4Error::Mismatch {
            canonical_request,
            string_to_sign,
        });
    }
    Ok(())
}

/// `x-amz-content-sha256`, when sent, must be the body's hash (or `UNSIGNED-PAYLOAD`).
pub fn check_content_sha256(headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    match headers.get("x-amz-content-sha256").map(|v| v.to_str().unwrap_or("")) {
        None | Some("UNSIGNED-PAYLOAD") => Ok(()),
        Some(v) if v == sha256_hex(body) => Ok(()),
        Some(v) => Err(format!("x-amz-content-sha256 {v} is not the body's hash")),
    }
}

/// An `Authorization` value signing a request, for tests that talk to the mock directly.
/// `headers` must hold every header to sign (lowercase names), `host` and `x-amz-date`
/// included; they are signed in sorted order.
pub fn sign(
    creds: &BedrockCreds,
    service: &str,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> String {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let mut names: Vec<&str> = headers.iter().map(|(k, _)| *k).collect();
    names.sort_unstable();
    names.dedup();
    let amz_date = headers.iter().find(|(k, _)| *k == "x-amz-date").unwrap().1;
    let date = &amz_date[..8];
    let scope = format!("{date}/{}/{service}/aws4_request", creds.region);
    let canonical = canonical_request(method, path_and_query, &map, &names, body).unwrap();
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let sig = signature(&creds.secret_access_key, date, &creds.region, service, &string_to_sign);
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={}, Signature={sig}",
        creds.access_key_id,
        names.join(";")
    )
}

/// `now` as `x-amz-date` writes it.
pub fn amz_date(now: DateTime<Utc>) -> String {
    now.format("%Y%m%dT%H%M%SZ").to_string()
}

// ---------------------------------------------------------------------------------------------
// Event-stream encoding (by hand, independent of the relay's decoder)

/// One event-stream frame with string headers.
pub fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(u8::try_from(name.len()).unwrap());
        h.extend_from_slice(name.as_bytes());
        h.push(7); // string
        h.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = u32::try_from(12 + h.len() + payload.len() + 4).unwrap();
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&u32::try_from(h.len()).unwrap().to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// A `chunk` event carrying the Anthropic event `json`, padded like Bedrock's.
pub fn chunk_frame(json: &str, padding: usize) -> Vec<u8> {
    let p = &"abcdefghijklmnopqrstuvwxyz"[..padding.min(26)];
    let payload = serde_json::json!({ "bytes": B64.encode(json), "p": p }).to_string();
    frame(
        &[
            (":event-type", "chunk"),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.as_bytes(),
    )
}

/// An exception frame as Bedrock ends a stream with (`kind` e.g. `throttlingException`).
pub fn exception_frame(kind: &str, message: &str) -> Vec<u8> {
    let payload = serde_json::json!({ "message": message }).to_string();
    frame(
        &[
            (":exception-type", kind),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        payload.as_bytes(),
    )
}

/// The Bedrock invocation metrics the mock adds to `message_stop` (the golden stream's usage).
pub const INVOCATION_METRICS: &str = r#"{"inputTokenCount":21,"outputTokenCount":7,"invocationLatency":123,"firstByteLatency":45,"cacheReadInputTokenCount":3,"cacheWriteInputTokenCount":5}"#;

/// The Anthropic events the mock streams for `model_id`, as `(type, json)`: the golden stream's
/// (tool use or not) without `ping`, `message_start`'s model set to `model_id`, `message_stop`
/// carrying [`INVOCATION_METRICS`].
pub fn events_for(model_id: &str, tool: bool) -> Vec<(String, String)> {
    let golden = std::str::from_utf8(if tool { SSE_TOOL } else { SSE }).unwrap();
    let mut out = Vec::new();
    for record in golden.split("\n\n") {
        let data = record.lines().find_map(|l| l.strip_prefix("data: "));
        let Some(data) = data else { continue };
        let event: serde_json::Value = serde_json::from_str(data).unwrap();
        let kind = event["type"].as_str().unwrap().to_owned();
        let json = match kind.as_str() {
            "ping" => continue,
            "message_start" => {
                let golden_model = event["message"]["model"].as_str().unwrap().to_owned();
                data.replacen(
                    &format!("\"model\":{}", serde_json::to_string(&golden_model).unwrap()),
                    &format!("\"model\":{}", serde_json::to_string(model_id).unwrap()),
                    1,
                )
            }
            "message_stop" => {
                let trimmed = data.trim_end().strip_suffix('}').unwrap();
                format!("{trimmed},\"amazon-bedrock-invocationMetrics\":{INVOCATION_METRICS}}}")
            }
            _ => data.to_owned(),
        };
        out.push((kind, json));
    }
    out
}

/// The event-stream body the mock answers for `model_id`; with `exception`, only `message_start`
/// and then that exception.
pub fn stream_for(model_id: &str, tool: bool, exception: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (kind, json)) in events_for(model_id, tool).iter().enumerate() {
        out.extend(chunk_frame(json, 1 + i % 10));
        if let Some(exception) = exception
            && kind == "message_start"
        {
            out.extend(exception_frame(exception, &format!("mock {exception}")));
            break;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Serving

const REQUEST_ID: &str = "00000000-mock-4000-8000-bedrock00001";

fn num(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.parse().ok()
}

/// An AWS REST-JSON error answer.
pub fn aws_error(status: u16, kind: &str, namespace: &str, message: &str) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-amzn-RequestId", REQUEST_ID)
        .header("x-amzn-ErrorType", format!("{kind}:{namespace}"))
        .body(Body::from(serde_json::json!({ "message": message }).to_string()))
        .unwrap()
}

/// The Bedrock error type usual for an HTTP status.
fn error_type_for(status: u16) -> &'static str {
    match status {
        400 => "ValidationException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

/// `None` when the request is authenticated; the 403 answer otherwise.
fn authenticate(
    state: &BedrockMockState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<Response> {
    let reject = |reason: String, kind: &str, message: &str| {
        state.rejections.lock().unwrap().push(reason);
        Some(aws_error(403, kind, CORAL_NS, message))
    };
    let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return reject(
            "no authorization".into(),
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        );
    };
    if let Some(key) = auth.strip_prefix("Bearer ") {
        return match &state.creds.api_key {
            Some(want) if want == key.trim() => None,
            _ => reject(
                format!("unknown bearer key {key:?}"),
                "AccessDeniedException",
                "Authentication failed: Please make sure your API Key is valid.",
            ),
        };
    }
    let check = SigV4Check {
        access_key_id: &state.creds.access_key_id,
        secret_access_key: &state.creds.secret_access_key,
        session_token: state.creds.session_token.as_deref(),
        region: &state.creds.region,
        service: &state.service,
        now: Utc::now(),
    };
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    if let Err(e) = verify_sigv4(&check, method.as_str(), path_and_query, headers, body) {
        let message = match &e {
            SigV4Error::StaleDate(d) => format!("Signature expired: {d} is now earlier or later than the allowed 5 minutes."),
            SigV4Error::UnknownAccessKey(_) | SigV4Error::SecurityToken(_) => {
                "The security token included in the request is invalid.".to_owned()
            }
            _ => "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.".to_owned(),
        };
        return reject(e.to_string(), "InvalidSignatureException", &message);
    }
    if let Err(e) = check_content_sha256(headers, body) {
        return reject(
            e,
            "InvalidSignatureException",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        );
    }
    None
}

/// Bedrock's checks of an Anthropic invoke body.
fn validate_invoke_body(body: &[u8]) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| "Malformed input request, please reformat your input and try again.".to_owned())?;
    let o = v.as_object().ok_or("Malformed input request: expected an object")?;
    for extraneous in ["model", "stream"] {
        if o.contains_key(extraneous) {
            return Err(format!(
                "Malformed input request: #: extraneous key [{extraneous}] is not permitted, please reformat your input and try again."
            ));
        }
    }
    if !o.get("anthropic_version").is_some_and(serde_json::Value::is_string) {
        return Err(
            "Malformed input request: #: required key [anthropic_version] not found, please reformat your input and try again."
                .to_owned(),
        );
    }
    Ok(())
}

/// The CountTokens request shape: `{"input":{"invokeModel":{"body":<base64 JSON>}}}` or
/// `{"input":{"converse":{…}}}`.
fn validate_count_tokens_body(body: &[u8]) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("malformed request: {e}"))?;
    if v["input"]["converse"].is_object() {
        return Ok(());
    }
    let inner = v["input"]["invokeModel"]["body"]
        .as_str()
        .ok_or("input must have invokeModel.body or converse")?;
    let decoded = B64.decode(inner).map_err(|_| "invokeModel.body is not base64")?;
    validate_invoke_body(&decoded)
}

async fn handle(
    State(state): State<Arc<BedrockMockState>>,
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state
        .seen
        .lock()
        .unwrap()
        .push(Seen::new(&method, &uri, version, &headers, &body));
    if let Some(denied) = authenticate(&state, &method, &uri, &headers, &body) {
        return denied;
    }
    let fixed = state.fixed_status.lock().unwrap().clone();
    let injected = num(&headers, "x-mock-status").map(|n| {
        let kind = headers
            .get("x-mock-error-type")
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| error_type_for(n as u16).to_owned(), str::to_owned);
        (n as u16, kind)
    });
    if let Some((status, kind)) = fixed.or(injected) {
        return aws_error(status, &kind, BEDROCK_NS, &format!("mock {status} {kind}"));
    }
    let path = uri.path();
    let route = path
        .strip_prefix("/model/")
        .and_then(|rest| rest.rsplit_once('/'))
        .filter(|_| method == Method::POST);
    let Some((raw_id, operation)) = route else {
        return aws_error(404, "UnknownOperationException", CORAL_NS, "mock: unknown operation");
    };
    let model_id = String::from_utf8_lossy(&percent_decode(raw_id)).into_owned();
    match operation {
        "invoke-with-response-stream" | "invoke" => {
            if let Err(m) = validate_invoke_body(&body) {
                return aws_error(400, "ValidationException", BEDROCK_NS, &m);
            }
        }
        "count-tokens" => {
            if let Err(m) = validate_count_tokens_body(&body) {
                return aws_error(400, "ValidationException", BEDROCK_NS, &m);
            }
            return Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("x-amzn-RequestId", REQUEST_ID)
                .body(Body::from(
                    serde_json::json!({ "inputTokens": COUNT_TOKENS }).to_string(),
                ))
                .unwrap();
        }
        _ => return aws_error(404, "UnknownOperationException", CORAL_NS, "mock: unknown operation"),
    }
    if operation == "invoke" {
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("x-amzn-RequestId", REQUEST_ID)
            .header("X-Amzn-Bedrock-Input-Token-Count", "21")
            .header("X-Amzn-Bedrock-Output-Token-Count", "7")
            .header("X-Amzn-Bedrock-Invocation-Latency", "123")
            .body(Body::from(
                if headers.contains_key("x-mock-tool") {
                    json_tool_for(&model_id)
                } else {
                    json_for(&model_id)
                }
                .to_string(),
            ))
            .unwrap();
    }
    let exception = headers
        .get("x-mock-stream-exception")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut full = stream_for(&model_id, headers.contains_key("x-mock-tool"), exception.as_deref());
    if let Some(n) = num(&headers, "x-mock-truncate") {
        full.truncate(n as usize);
    }
    let chunk = num(&headers, "x-mock-chunk").unwrap_or(full.len().max(1) as u64).max(1) as usize;
    let delay = Duration::from_millis(num(&headers, "x-mock-chunk-delay-ms").unwrap_or(0));
    let parts: Vec<Bytes> = full.chunks(chunk).map(Bytes::copy_from_slice).collect();
    let s = stream::unfold((parts.into_iter(), true), move |(mut it, first)| async move {
        if !first && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        it.next().map(|b| (Ok::<Bytes, std::io::Error>(b), (it, false)))
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/vnd.amazon.eventstream")
        .header("x-amzn-RequestId", REQUEST_ID)
        .header("X-Amzn-Bedrock-Content-Type", "application/json")
        .body(Body::from_stream(s))
        .unwrap()
}
