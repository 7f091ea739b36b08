//! The mock Bedrock runtime checked on its own: its SigV4 verifier against AWS's published
//! `get-vanilla` example and against the requests boto3 and Claude Code (AWS JS SDK) really signed;
//! then the mock over its socket: what it accepts and refuses, and what it answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use claude_relay::convert::bedrock_stream::BedrockToAnthropicSse;
use claude_relay::usage::TokenUsage;
use claude_relay::wire::eventstream::{EventStreamDecoder, MessageKind};
use support::bedrock_mock::{
    BEDROCK_NS, BedrockCreds, BedrockMock, COUNT_TOKENS, SigV4Check, SigV4Error, amz_date, canonical_uri, events_for,
    sign, stream_for, verify_sigv4,
};
use support::client;

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const MODEL_ID: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";
const MODEL_PATH: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0";
const BODY: &str =
    r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":64,"messages":[{"role":"user","content":"say hi"}]}"#;

fn at(amz: &str) -> DateTime<Utc> {
    NaiveDateTime::parse_from_str(amz, "%Y%m%dT%H%M%SZ").unwrap().and_utc()
}

fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

// ---------------------------------------------------------------------------------------------
// The verifier, without a socket

/// AWS's SigV4 test suite, `get-vanilla`: `GET /` to `example.amazonaws.com`, signed for
/// `us-east-1`/`service` at 20150830T123600Z.
const VANILLA_AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";

fn vanilla_check() -> SigV4Check<'static> {
    SigV4Check {
        access_key_id: AKID,
        secret_access_key: SECRET,
        session_token: None,
        region: "us-east-1",
        service: "service",
        now: at("20150830T123600Z"),
    }
}

fn vanilla_headers(auth: &str) -> HeaderMap {
    header_map(&[
        ("host", "example.amazonaws.com"),
        ("x-amz-date", "20150830T123600Z"),
        ("authorization", auth),
    ])
}

#[test]
fn get_vanilla_is_accepted() {
    let r = verify_sigv4(&vanilla_check(), "GET", "/", &vanilla_headers(VANILLA_AUTH), b"");
    assert_eq!(r, Ok(()));
}

#[test]
fn get_vanilla_modified_is_refused() {
    let check = vanilla_check();
    // Another signature.
    let bad = VANILLA_AUTH.replace("fbf31", "fbf32");
    assert!(matches!(
        verify_sigv4(&check, "GET", "/", &vanilla_headers(&bad), b""),
        Err(SigV4Error::Mismatch { .. })
    ));
    // Another path, method, signed header value, body, secret.
    let ok = vanilla_headers(VANILLA_AUTH);
    assert!(verify_sigv4(&check, "GET", "/x", &ok, b"").is_err());
    assert!(verify_sigv4(&check, "POST", "/", &ok, b"").is_err());
    assert!(verify_sigv4(&check, "GET", "/", &ok, b"x").is_err());
    let mut other_host = ok.clone();
    other_host.insert("host", HeaderValue::from_static("example.amazonaws.co"));
    assert!(verify_sigv4(&check, "GET", "/", &other_host, b"").is_err());
    let wrong_secret = SigV4Check {
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEZ",
        ..vanilla_check()
    };
    assert!(verify_sigv4(&wrong_secret, "GET", "/", &ok, b"").is_err());
    // A signature whose Mismatch names the canonical request the suite publishes.
    let Err(SigV4Error::Mismatch {
        canonical_request,
        string_to_sign,
    }) = verify_sigv4(&check, "GET", "/", &vanilla_headers(&bad), b"")
    else {
        panic!()
    };
    assert_eq!(
        canonical_request,
        "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        string_to_sign,
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
    );
}

#[test]
fn scope_date_and_key_checks() {
    let ok = vanilla_headers(VANILLA_AUTH);
    let check = |f: fn(&mut SigV4Check<'static>)| {
        let mut c = vanilla_check();
        f(&mut c);
        verify_sigv4(&c, "GET", "/", &ok, b"")
    };
    assert!(matches!(
        check(|c| c.access_key_id = "AKIDOTHER"),
        Err(SigV4Error::UnknownAccessKey(_))
    ));
    assert!(matches!(
        check(|c| c.region = "eu-west-1"),
        Err(SigV4Error::WrongScope(_))
    ));
    assert!(matches!(
        check(|c| c.service = "bedrock"),
        Err(SigV4Error::WrongScope(_))
    ));
    assert!(matches!(
        check(|c| c.now = at("20150830T124200Z")),
        Err(SigV4Error::StaleDate(_))
    ));
    assert!(matches!(
        check(|c| c.now = at("20150830T123000Z")),
        Err(SigV4Error::StaleDate(_))
    ));
    // Within five minutes either way.
    assert_eq!(check(|c| c.now = at("20150830T124000Z")), Ok(()));
    assert!(matches!(
        check(|c| c.session_token = Some("token")),
        Err(SigV4Error::SecurityToken(_))
    ));
}

#[test]
fn the_canonical_uri_encodes_the_received_path_again() {
    assert_eq!(
        canonical_uri("/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream"),
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%253A0/invoke-with-response-stream"
    );
    assert_eq!(canonical_uri("/model/a:0/invoke"), "/model/a%3A0/invoke");
    assert_eq!(canonical_uri("/"), "/");
}

/// One recorded request: method, raw path with query, headers, raw body, declared body length.
struct Recorded {
    method: String,
    raw_path: String,
    headers: HeaderMap,
    body: Vec<u8>,
    body_len: usize,
}

fn recorded(name: &str) -> Vec<Recorded> {
    let path = format!("{}/tests/fixtures/{name}.jsonl", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            #[derive(serde::Deserialize)]
            struct Line<'a> {
                method: String,
                raw_path: String,
                headers: std::collections::BTreeMap<String, String>,
                #[serde(borrow, default)]
                body: Option<&'a serde_json::value::RawValue>,
                body_len: usize,
            }
            let line: Line<'_> = serde_json::from_str(l).unwrap();
            let mut headers = HeaderMap::new();
            for (k, v) in &line.headers {
                headers.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            Recorded {
                method: line.method,
                raw_path: line.raw_path,
                headers,
                body: line.body.map(|b| b.get().as_bytes().to_vec()).unwrap_or_default(),
                body_len: line.body_len,
            }
        })
        .collect()
}

fn check_for<'a>(r: &Recorded, token: Option<&'a str>) -> SigV4Check<'a> {
    SigV4Check {
        access_key_id: AKID,
        secret_access_key: SECRET,
        session_token: token,
        region: "us-east-1",
        service: "bedrock",
        now: at(r.headers["x-amz-date"].to_str().unwrap()),
    }
}

/// boto3 signs the body's hash (it sends no `x-amz-content-sha256`): the recording kept the body
/// bytes as sent (Python's separators, the declared length).
#[test]
fn boto3_recorded_signatures_verify() {
    let requests = recorded("sdk-bedrock");
    assert_eq!(requests.len(), 3);
    for r in &requests {
        assert!(!r.headers.contains_key("x-amz-content-sha256"));
        assert_eq!(r.body.len(), r.body_len, "{}", r.raw_path);
        assert!(r.raw_path.contains("%3A"), "{}", r.raw_path);
        let check = check_for(r, Some("mock-session-token"));
        assert_eq!(
            verify_sigv4(&check, &r.method, &r.raw_path, &r.headers, &r.body),
            Ok(()),
            "{}",
            r.raw_path
        );
        // One byte of the body changed.
        let mut body = r.body.clone();
        body[10] ^= 1;
        assert!(verify_sigv4(&check, &r.method, &r.raw_path, &r.headers, &body).is_err());
        // The path signed once-encoded only: refused (the double-encoding is what AWS checks).
        let decoded = r.raw_path.replace("%3A", ":");
        assert!(verify_sigv4(&check, &r.method, &decoded, &r.headers, &r.body).is_err());
        // Without the session token.
        assert!(matches!(
            verify_sigv4(&check_for(r, None), &r.method, &r.raw_path, &r.headers, &r.body),
            Err(SigV4Error::SecurityToken(_))
        ));
    }
}

/// Claude Code's AWS JS SDK sends `x-amz-content-sha256` and a raw `:` in the path; the
/// recording re-serialised the body, so the signed hash header is used as is.
#[test]
fn claude_code_recorded_signatures_verify() {
    let requests = recorded("claude-bedrock");
    assert_eq!(requests.len(), 5);
    for r in &requests {
        assert!(r.headers.contains_key("x-amz-content-sha256"));
        let check = check_for(r, None);
        assert_eq!(
            verify_sigv4(&check, &r.method, &r.raw_path, &r.headers, b""),
            Ok(()),
            "{}",
            r.raw_path
        );
        let mut headers = r.headers.clone();
        headers.insert("x-amz-date", HeaderValue::from_static("20261127T121400Z"));
        assert!(verify_sigv4(&check, &r.method, &r.raw_path, &headers, b"").is_err());
    }
    // One with a query string (`?type=SYSTEM_DEFINED`) and a GET.
    assert!(requests.iter().any(|r| r.method == "GET" && r.raw_path.contains('?')));
    // And a model id with a raw `:`.
    assert!(
        requests
            .iter()
            .any(|r| r.raw_path.contains("v1:0/invoke-with-response-stream"))
    );
}

// ---------------------------------------------------------------------------------------------
// The mock over its socket

fn creds() -> BedrockCreds {
    BedrockCreds {
        session_token: Some("mock-session-token".into()),
        ..BedrockCreds::example()
    }
}

/// A request signed the way botocore signs it, with `creds` and `service`, dated `when`.
struct Signed<'a> {
    mock: &'a BedrockMock,
    creds: BedrockCreds,
    service: &'a str,
    when: DateTime<Utc>,
    path: String,
    /// The path signed, when not `path` (to sign one path and send another).
    signed_path: Option<String>,
    body: String,
    /// Unsigned headers added after signing.
    extra: Vec<(&'a str, String)>,
    /// Leave `x-amz-security-token` out of the signed headers (still sent).
    unsigned_token: bool,
}

impl<'a> Signed<'a> {
    fn new(mock: &'a BedrockMock, operation: &str) -> Signed<'a> {
        Signed {
            mock,
            creds: creds(),
            service: "bedrock",
            when: Utc::now(),
            path: format!("/model/{MODEL_PATH}/{operation}"),
            signed_path: None,
            body: BODY.into(),
            extra: Vec::new(),
            unsigned_token: false,
        }
    }

    fn header(mut self, name: &'a str, value: &str) -> Self {
        self.extra.push((name, value.to_owned()));
        self
    }

    async fn send(self) -> reqwest::Response {
        let date = amz_date(self.when);
        let host = self.mock.host();
        let mut signed: Vec<(&str, &str)> = vec![
            ("content-type", "application/json"),
            ("host", &host),
            ("x-amz-date", &date),
            ("x-amzn-bedrock-accept", "application/json"),
        ];
        let token = self.creds.session_token.clone();
        if let Some(t) = &token
            && !self.unsigned_token
        {
            signed.push(("x-amz-security-token", t));
        }
        let signed_path = self.signed_path.as_deref().unwrap_or(&self.path);
        let auth = sign(
            &self.creds,
            self.service,
            "POST",
            signed_path,
            &signed,
            self.body.as_bytes(),
        );
        let mut rb = client()
            .post(format!("{}{}", self.mock.url(), self.path))
            .header("authorization", auth)
            .body(self.body.clone());
        for (k, v) in signed.iter().filter(|(k, _)| *k != "host") {
            rb = rb.header(*k, *v);
        }
        if self.unsigned_token
            && let Some(t) = &token
        {
            rb = rb.header("x-amz-security-token", t);
        }
        for (k, v) in &self.extra {
            rb = rb.header(*k, v);
        }
        rb.send().await.unwrap()
    }
}

/// Every message of an event-stream body.
fn messages(body: &[u8]) -> Vec<claude_relay::wire::eventstream::Message> {
    let mut d = EventStreamDecoder::new();
    d.push(body);
    let mut out = Vec::new();
    while let Some(m) = d.next_message().unwrap() {
        out.push(m);
    }
    assert!(!d.has_partial());
    out
}

const GOLDEN_USAGE: TokenUsage = TokenUsage {
    input: 21,
    output: 7,
    cache_read: 3,
    cache_write_5m: 5,
    cache_write_1h: 0,
    reasoning: 0,
    billing: claude_relay::usage::Billing::NONE,
};

#[tokio::test]
async fn a_signed_stream_request_gets_the_golden_events() {
    let mock = BedrockMock::start(creds()).await;
    let r = Signed::new(&mock, "invoke-with-response-stream").send().await;
    assert_eq!(r.status(), 200, "{:?}", mock.rejections());
    assert_eq!(r.headers()["content-type"], "application/vnd.amazon.eventstream");
    assert!(r.headers().contains_key("x-amzn-requestid"));
    let body = r.bytes().await.unwrap();
    assert_eq!(&body[..], &stream_for(MODEL_ID, false, None)[..]);
    let ms = messages(&body);
    let events = events_for(MODEL_ID, false);
    assert_eq!(ms.len(), events.len());
    assert!(
        ms.iter()
            .all(|m| m.kind == MessageKind::Event && m.event_type == "chunk")
    );
    assert!(events[0].1.contains(&format!("\"model\":\"{MODEL_ID}\"")));
    assert!(events.iter().all(|(k, _)| k != "ping"));
    assert!(events.last().unwrap().1.contains("amazon-bedrock-invocationMetrics"));
    // Through the relay's transducer: the golden stream's events without ping, the model the
    // client asked for, the golden usage.
    let mut t = BedrockToAnthropicSse::new(Some("claude-sonnet-4-5"));
    let mut sse = t.push(&body).to_vec();
    sse.extend_from_slice(&t.finish());
    let golden: String = std::str::from_utf8(support::mock::SSE)
        .unwrap()
        .split_inclusive("\n\n")
        .filter(|e| !e.starts_with("event: ping"))
        .collect::<String>()
        .replace(
            r#"{"type":"message_stop"}"#,
            &format!(
                r#"{{"type":"message_stop","amazon-bedrock-invocationMetrics":{}}}"#,
                support::bedrock_mock::INVOCATION_METRICS
            ),
        );
    assert_eq!(String::from_utf8(sse).unwrap(), golden);
    assert_eq!(t.usage(), GOLDEN_USAGE);
    // Recorded with the path as sent.
    let seen = mock.seen();
    assert_eq!(
        seen[0].path_and_query,
        format!("/model/{MODEL_PATH}/invoke-with-response-stream")
    );
    assert_eq!(
        seen[0].header("x-amz-security-token").as_deref(),
        Some("mock-session-token")
    );
}

#[tokio::test]
async fn invoke_and_count_tokens() {
    let mock = BedrockMock::start(creds()).await;
    let r = Signed::new(&mock, "invoke").send().await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-amzn-bedrock-input-token-count"], "21");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["model"], MODEL_ID);
    assert_eq!(v["usage"]["output_tokens"], 7);

    use base64::Engine;
    let mut s = Signed::new(&mock, "count-tokens");
    s.body =
        serde_json::json!({"input": {"invokeModel": {"body": base64::engine::general_purpose::STANDARD.encode(BODY)}}})
            .to_string();
    let r = s.send().await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v, serde_json::json!({ "inputTokens": COUNT_TOKENS }));
    // The Messages body itself is not a CountTokens request.
    let r = Signed::new(&mock, "count-tokens").send().await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn bodies_bedrock_refuses() {
    let mock = BedrockMock::start(creds()).await;
    for body in [
        r#"{"model":"claude-sonnet-4-5","anthropic_version":"bedrock-2023-05-31","max_tokens":1,"messages":[]}"#,
        r#"{"stream":true,"anthropic_version":"bedrock-2023-05-31","max_tokens":1,"messages":[]}"#,
        r#"{"max_tokens":1,"messages":[]}"#,
        "not json",
    ] {
        let mut s = Signed::new(&mock, "invoke");
        s.body = body.into();
        let r = s.send().await;
        assert_eq!(r.status(), 400, "{body}");
        assert!(
            r.headers()["x-amzn-errortype"]
                .to_str()
                .unwrap()
                .starts_with("ValidationException:")
        );
    }
}

async fn assert_refused(r: reqwest::Response, kind: &str) -> String {
    assert_eq!(r.status(), 403);
    let t = r.headers()["x-amzn-errortype"].to_str().unwrap().to_owned();
    assert!(t.starts_with(&format!("{kind}:")), "{t}");
    let v: serde_json::Value = r.json().await.unwrap();
    v["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn bad_signatures_are_refused() {
    let mock = BedrockMock::start(creds()).await;
    let op = "invoke-with-response-stream";

    let mut s = Signed::new(&mock, op);
    s.creds.secret_access_key = "not-the-secret".into();
    let m = assert_refused(s.send().await, "InvalidSignatureException").await;
    assert!(
        m.starts_with("The request signature we calculated does not match"),
        "{m}"
    );

    let mut s = Signed::new(&mock, op);
    s.creds.access_key_id = "AKIDUNKNOWN".into();
    assert_refused(s.send().await, "InvalidSignatureException").await;

    let mut s = Signed::new(&mock, op);
    s.creds.region = "eu-west-1".into();
    assert_refused(s.send().await, "InvalidSignatureException").await;

    let mut s = Signed::new(&mock, op);
    s.service = "bedrock-runtime";
    assert_refused(s.send().await, "InvalidSignatureException").await;

    let mut s = Signed::new(&mock, op);
    s.when = Utc::now() - TimeDelta::minutes(6);
    let m = assert_refused(s.send().await, "InvalidSignatureException").await;
    assert!(m.starts_with("Signature expired"), "{m}");

    let mut s = Signed::new(&mock, op);
    s.creds.session_token = Some("other-token".into());
    assert_refused(s.send().await, "InvalidSignatureException").await;

    let mut s = Signed::new(&mock, op);
    s.creds.session_token = None;
    assert_refused(s.send().await, "InvalidSignatureException").await;

    let mut s = Signed::new(&mock, op);
    s.unsigned_token = true;
    assert_refused(s.send().await, "InvalidSignatureException").await;

    // The canonical URI encoded once only (signed as if the path had a raw `:`) while `%3A` is
    // sent: AWS encodes the received path again, so this is refused.
    let mut s = Signed::new(&mock, op);
    s.signed_path = Some(format!("/model/{MODEL_ID}/{op}"));
    assert_refused(s.send().await, "InvalidSignatureException").await;

    // A signed header changed after signing.
    let mut s = Signed::new(&mock, op);
    s.extra.push(("x-amzn-bedrock-accept", "*/*".into()));
    assert_refused(s.send().await, "InvalidSignatureException").await;

    let r = client()
        .post(format!("{}/model/{MODEL_PATH}/{op}", mock.url()))
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_refused(r, "MissingAuthenticationTokenException").await;

    let reasons = mock.rejections();
    let expected = [
        "signature mismatch",
        "unknown access key id",
        "wrong credential scope",
        "wrong credential scope",
        "x-amz-date",
        "security token: wrong token",
        "security token: missing",
        "security token: x-amz-security-token is not signed",
        "signature mismatch",
        "signature mismatch",
        "no authorization",
    ];
    assert_eq!(reasons.len(), expected.len(), "{reasons:#?}");
    for (reason, prefix) in reasons.iter().zip(expected) {
        assert!(reason.starts_with(prefix), "{reason} / {prefix}");
    }
    assert_eq!(mock.hits(), 11);
}

#[tokio::test]
async fn the_raw_colon_path_and_unsigned_extra_headers_are_fine() {
    let mock = BedrockMock::start(creds()).await;
    let mut s = Signed::new(&mock, "invoke");
    s.path = format!("/model/{MODEL_ID}/invoke");
    let r = s.header("x-mock-ignored", "1").send().await;
    assert_eq!(r.status(), 200, "{:?}", mock.rejections());
    assert_eq!(mock.seen()[0].path_and_query, format!("/model/{MODEL_ID}/invoke"));
}

#[tokio::test]
async fn bedrock_api_keys() {
    let mock = BedrockMock::start(BedrockCreds {
        api_key: Some("ABSKmockkey".into()),
        ..creds()
    })
    .await;
    let url = format!("{}/model/{MODEL_PATH}/invoke", mock.url());
    let r = client()
        .post(&url)
        .bearer_auth("ABSKmockkey")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .post(&url)
        .bearer_auth("ABSKother")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_refused(r, "AccessDeniedException").await;
    // SigV4 still works beside it.
    assert_eq!(Signed::new(&mock, "invoke").send().await.status(), 200);

    // Without a configured key, no bearer is accepted.
    let plain = BedrockMock::start(creds()).await;
    let r = client()
        .post(format!("{}/model/{MODEL_PATH}/invoke", plain.url()))
        .bearer_auth("ABSKmockkey")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn injected_faults() {
    let mock = BedrockMock::start(creds()).await;
    let op = "invoke-with-response-stream";

    let r = Signed::new(&mock, op)
        .header("x-mock-status", "429")
        .header("x-mock-error-type", "ThrottlingException")
        .send()
        .await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers()["x-amzn-errortype"],
        format!("ThrottlingException:{BEDROCK_NS}")
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["message"].is_string());

    let r = Signed::new(&mock, op).header("x-mock-status", "503").send().await;
    assert_eq!(r.status(), 503);
    assert!(
        r.headers()["x-amzn-errortype"]
            .to_str()
            .unwrap()
            .starts_with("ServiceUnavailableException:")
    );

    let r = Signed::new(&mock, op)
        .header("x-mock-stream-exception", "throttlingException")
        .send()
        .await;
    assert_eq!(r.status(), 200);
    let ms = messages(&r.bytes().await.unwrap());
    assert_eq!(ms.len(), 2);
    assert_eq!(ms[1].kind, MessageKind::Exception);
    assert_eq!(ms[1].event_type, "throttlingException");

    let whole = stream_for(MODEL_ID, false, None);
    let r = Signed::new(&mock, op).header("x-mock-chunk", "7").send().await;
    assert_eq!(&r.bytes().await.unwrap()[..], &whole[..]);

    let r = Signed::new(&mock, op).header("x-mock-truncate", "100").send().await;
    assert_eq!(&r.bytes().await.unwrap()[..], &whole[..100]);

    let r = Signed::new(&mock, op).header("x-mock-tool", "1").send().await;
    let body = r.bytes().await.unwrap();
    assert_eq!(&body[..], &stream_for(MODEL_ID, true, None)[..]);
    let mut t = BedrockToAnthropicSse::new(None);
    let sse = String::from_utf8(t.push(&body).to_vec()).unwrap();
    assert!(sse.contains("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\""), "{sse}");
    assert!(t.finish().is_empty());

    mock.set_status(Some((429, "ThrottlingException")));
    for operation in [op, "invoke", "count-tokens"] {
        let r = Signed::new(&mock, operation).send().await;
        assert_eq!(r.status(), 429);
        assert!(
            r.headers()["x-amzn-errortype"]
                .to_str()
                .unwrap()
                .starts_with("ThrottlingException:")
        );
    }
    mock.set_status(None);
    assert_eq!(Signed::new(&mock, "invoke").send().await.status(), 200);
}
