//! Bedrock and CCR accounts through the real binary: recorded Claude Code and SDK requests reach a
//! mock Bedrock that verifies SigV4 independently; the client gets Anthropic events, errors and
//! exact usage and cost; failover between Bedrock and Console accounts; CCR routing both ways.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use support::bedrock_mock::{BedrockCreds, BedrockMock};
use support::mock::{MockUpstream, SSE};
use support::{ALICE, RelayProcess, account_yaml, client, eventually};

const BODY_STREAM: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const BODY_JSON: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
/// The Bedrock id the built-in price table gives `claude-sonnet-4-5` in `us-east-1`.
const SONNET_US: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";

fn bedrock_yaml(name: &str, mock: &BedrockMock, creds: &BedrockCreds, extra: &str) -> String {
    let token = creds
        .session_token
        .as_deref()
        .map(|t| format!(", session_token: \"{t}\""))
        .unwrap_or_default();
    format!(
        "  - {{ name: {name}, kind: bedrock, region: {}, base_url: \"{}\", access_key_id: {}, secret_access_key: \"{}\"{token}{extra} }}\n",
        creds.region,
        mock.url(),
        creds.access_key_id,
        creds.secret_access_key
    )
}

fn with_token() -> BedrockCreds {
    BedrockCreds {
        session_token: Some("FwoGZXIvYXdzEXAMPLE//session+token=".into()),
        ..BedrockCreds::example()
    }
}

/// The events of an SSE body: (event name, data JSON).
fn events(body: &[u8]) -> Vec<(String, Value)> {
    let text = String::from_utf8_lossy(body);
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            (name, serde_json::from_str(&data).unwrap_or(Value::Null))
        })
        .collect()
}

async fn post(relay: &RelayProcess, body: &str, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    req.body(body.to_string()).send().await.unwrap()
}

async fn usage_totals(relay: &RelayProcess, dimension: &str, id: &str, requests: u64) -> Value {
    let token = relay.admin_token().await;
    eventually(|| async {
        let v: Value = client()
            .get(format!(
                "{}/admin/api/usage?dimension={dimension}&id={id}&granularity=minute",
                relay.admin()
            ))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["totals"]["requests"] == requests).then(|| v["totals"].clone())
    })
    .await
}

#[tokio::test]
async fn streams_become_anthropic_events_signed_with_sigv4_and_priced_by_the_bedrock_id() {
    let creds = with_token();
    let mock = BedrockMock::start(creds.clone()).await;
    let relay = RelayProcess::start(&format!("accounts:\n{}", bedrock_yaml("aws", &mock, &creds, ""))).await;
    let r = post(
        &relay,
        BODY_STREAM,
        &[("anthropic-beta", "claude-code-20250219,interleaved-thinking-2025-05-14")],
    )
    .await;
    assert_eq!(r.status(), 200, "{:?}", mock.rejections());
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let body = r.bytes().await.unwrap();

    // The upstream request: the model in the path (encoded), signed, Bedrock's body.
    assert!(mock.rejections().is_empty(), "{:?}", mock.rejections());
    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(
        s.path_and_query,
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream"
    );
    assert!(
        s.header("authorization")
            .unwrap()
            .starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    );
    assert!(
        s.header("authorization")
            .unwrap()
            .contains("/us-east-1/bedrock/aws4_request")
    );
    assert_eq!(s.header("x-amz-security-token"), creds.session_token);
    assert_eq!(s.header("x-amzn-bedrock-accept").as_deref(), Some("application/json"));
    assert_eq!(s.header("x-api-key"), None, "the client's key never travels upstream");
    assert_eq!(s.header("anthropic-beta").as_deref(), Some("claude-code-20250219"));
    let sent = s.json();
    assert_eq!(sent.get("model"), None);
    assert_eq!(sent.get("stream"), None);
    assert_eq!(sent["anthropic_version"], "bedrock-2023-05-31");
    assert_eq!(sent["anthropic_beta"], json!(["interleaved-thinking-2025-05-14"]));
    assert_eq!(sent["max_tokens"], 64);

    // The client's events are the golden stream's, with the model it asked for.
    let got = events(&body);
    let golden = events(SSE);
    let names = |e: &[(String, Value)]| {
        e.iter()
            .map(|(n, _)| n.clone())
            .filter(|n| n != "ping")
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&got), names(&golden));
    for ((name, g), (_, want)) in got
        .iter()
        .filter(|(n, _)| n != "ping")
        .zip(golden.iter().filter(|(n, _)| n != "ping"))
    {
        let mut g = g.clone();
        if let Some(o) = g.as_object_mut() {
            o.remove("amazon-bedrock-invocationMetrics");
        }
        assert_eq!(&g, want, "event {name}");
    }

    // Exact usage, priced at the regional profile's price (10% over first-party).
    let t = usage_totals(&relay, "key", "config.alice", 1).await;
    assert_eq!(
        (t["input_tokens"].as_u64(), t["output_tokens"].as_u64()),
        (Some(21), Some(7)),
        "{t}"
    );
    assert_eq!(t["cache_read_tokens"], 3);
    assert_eq!(t["cache_write_5m_tokens"], 5);
    let want = 21.0 * 3.3e-6 + 7.0 * 1.65e-5 + 3.0 * 3.3e-7 + 5.0 * 4.125e-6;
    let cost = t["cost_usd"].as_f64().unwrap();
    assert!((cost - want).abs() < 1e-9, "cost {cost}, want {want}");
    let m = usage_totals(&relay, "model", SONNET_US, 1).await;
    assert_eq!(m["unpriced_requests"], 0);
}

#[tokio::test]
async fn recorded_claude_code_and_sdk_requests_reach_bedrock_and_answer_in_anthropic_shape() {
    let creds = BedrockCreds::example();
    let mock = BedrockMock::start(creds.clone()).await;
    let relay = RelayProcess::start(&format!("accounts:\n{}", bedrock_yaml("aws", &mock, &creds, ""))).await;
    let c = client();
    let mut replayed = 0;
    for name in ["claude", "claude-tool", "sdk-anthropic", "sdk-anthropic-bearer"] {
        for (method, path, _query, headers, body) in support::fixture(name) {
            if method != "POST" || !path.ends_with("/v1/messages") && !path.ends_with("/count_tokens") {
                continue;
            }
            let body = body.unwrap();
            let mut req = c.post(format!("{}{path}", relay.base()));
            for (k, v) in &headers {
                let k = k.to_ascii_lowercase();
                if ["host", "content-length", "connection", "x-api-key", "authorization"].contains(&k.as_str()) {
                    continue;
                }
                req = req.header(&k, v);
            }
            let r = req.header("x-api-key", ALICE).body(body.clone()).send().await.unwrap();
            let status = r.status();
            let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
            let got = r.bytes().await.unwrap();
            assert_eq!(
                status,
                200,
                "{name} {path}: {} {:?}",
                String::from_utf8_lossy(&got),
                mock.rejections()
            );
            let sent_json: Value = serde_json::from_str(&body).unwrap();
            let model = sent_json["model"].as_str().unwrap().to_string();
            let s = mock.seen().pop().unwrap();
            assert!(s.path_and_query.starts_with("/model/"), "{}", s.path_and_query);
            let upstream = s.json();
            if path.ends_with("/count_tokens") {
                assert!(s.path_and_query.ends_with("/count-tokens"), "{}", s.path_and_query);
                let v: Value = serde_json::from_slice(&got).unwrap();
                assert!(v["input_tokens"].as_u64().is_some(), "{v}");
            } else {
                // Every member but model and stream arrives unchanged.
                for (k, v) in sent_json.as_object().unwrap() {
                    if k != "model" && k != "stream" {
                        assert_eq!(&upstream[k], v, "{name}: member {k}");
                    }
                }
                assert_eq!(upstream["anthropic_version"], "bedrock-2023-05-31");
                if sent_json["stream"] == true {
                    assert!(ct.unwrap().starts_with("text/event-stream"));
                    let ev = events(&got);
                    assert_eq!(ev.first().map(|e| e.0.as_str()), Some("message_start"), "{name}");
                    assert_eq!(ev[0].1["message"]["model"], model.as_str(), "the client sees its model");
                    assert_eq!(ev.last().map(|e| e.0.as_str()), Some("message_stop"));
                } else {
                    let v: Value = serde_json::from_slice(&got).unwrap();
                    assert_eq!(v["type"], "message", "{v}");
                    assert_eq!(v["model"], model.as_str());
                }
            }
            replayed += 1;
        }
    }
    assert!(replayed >= 4, "replayed {replayed}");
    assert!(mock.rejections().is_empty(), "{:?}", mock.rejections());
}

#[tokio::test]
async fn a_wrong_secret_or_session_token_is_refused_by_the_independent_verifier() {
    let creds = with_token();
    let mock = BedrockMock::start(creds.clone()).await;
    let wrong_secret = BedrockCreds {
        secret_access_key: "not-the-secret".into(),
        ..creds.clone()
    };
    let wrong_token = BedrockCreds {
        session_token: Some("another-token".into()),
        ..creds.clone()
    };
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}{}",
        bedrock_yaml("bad-secret", &mock, &wrong_secret, ", priority: 1"),
        bedrock_yaml("bad-token", &mock, &wrong_token, ", priority: 2"),
    ))
    .await;
    let r = post(&relay, BODY_JSON, &[]).await;
    // Both accounts refused (403 signature mismatch, classified as an authentication failure):
    // the client gets an Anthropic-shaped error.
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert!(status == 401 || status == 403, "{status} {v}");
    assert_eq!(v["type"], "error", "{v}");
    let rejections = mock.rejections();
    assert_eq!(rejections.len(), 2, "{rejections:?}");
    assert!(
        rejections.iter().any(|r| r.to_lowercase().contains("signature")),
        "{rejections:?}"
    );
    assert!(
        rejections.iter().any(|r| r.to_lowercase().contains("token")),
        "{rejections:?}"
    );
}

#[tokio::test]
async fn bedrock_api_keys_send_a_bearer_and_count_tokens_is_answered() {
    let creds = BedrockCreds {
        api_key: Some("ABSKbedrockapikeyexample".into()),
        ..BedrockCreds::example()
    };
    let mock = BedrockMock::start(creds.clone()).await;
    let yaml = format!(
        "accounts:\n  - {{ name: key, kind: bedrock, region: us-west-2, inference_profile: none, base_url: \"{}\", api_key: ABSKbedrockapikeyexample }}\n",
        mock.url()
    );
    let relay = RelayProcess::start(&yaml).await;
    let r = post(&relay, BODY_JSON, &[]).await;
    assert_eq!(r.status(), 200, "{:?}", mock.rejections());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], "claude-sonnet-4-5");
    let s = mock.seen().pop().unwrap();
    assert_eq!(
        s.header("authorization").as_deref(),
        Some("Bearer ABSKbedrockapikeyexample")
    );
    assert_eq!(
        s.path_and_query, "/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke",
        "inference_profile: none uses the bare id"
    );
    assert_eq!(s.header("accept").as_deref(), Some("application/json"));

    let r = client()
        .post(format!("{}/v1/messages/count_tokens", relay.base()))
        .header("x-api-key", ALICE)
        .body(r#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"input_tokens": support::bedrock_mock::COUNT_TOKENS}));
}

#[tokio::test]
async fn throttling_fails_over_to_a_console_account_and_back() {
    let creds = BedrockCreds::example();
    let bedrock = BedrockMock::start(creds.clone()).await;
    let console = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}{}",
        bedrock_yaml("aws", &bedrock, &creds, ", priority: 1, cooldowns: { \"429\": 1s }"),
        account_yaml("console", &console.url(), ", priority: 50"),
    ))
    .await;
    bedrock.set_status(Some((429, "ThrottlingException")));
    let r = post(&relay, BODY_STREAM, &[]).await;
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await.unwrap();
    assert_eq!((bedrock.hits(), console.hits()), (1, 1));
    // The throttled account is parked: the next request goes straight to the console account.
    let _ = post(&relay, BODY_STREAM, &[]).await.bytes().await.unwrap();
    assert_eq!((bedrock.hits(), console.hits()), (1, 2));
    // Once its cooldown is over, Bedrock serves again.
    bedrock.set_status(None);
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let r = post(&relay, BODY_STREAM, &[]).await;
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await.unwrap();
    assert_eq!((bedrock.hits(), console.hits()), (2, 2));
}

#[tokio::test]
async fn a_validation_error_is_the_clients_and_an_exception_frame_ends_the_stream() {
    let creds = BedrockCreds::example();
    let bedrock = BedrockMock::start(creds.clone()).await;
    let console = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}{}",
        bedrock_yaml("aws", &bedrock, &creds, ", priority: 1"),
        account_yaml("console", &console.url(), ", priority: 50"),
    ))
    .await;
    // ValidationException: the request's problem, answered at once in Anthropic's shape.
    let r = post(
        &relay,
        BODY_JSON,
        &[("x-mock-status", "400"), ("x-mock-error-type", "ValidationException")],
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-relay-error-source"], "upstream");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert_eq!(console.hits(), 0, "no failover for the client's own error");
    // A body Bedrock's terms cannot carry: refused by the relay, no upstream contacted.
    let hits = bedrock.hits();
    let r = post(
        &relay,
        r#"{"model":"claude-sonnet-4-5","max_tokens":8,"anthropic_beta":"not-a-list","messages":[]}"#,
        &[],
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-relay-error-source"], "relay");
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("anthropic_beta"),
        "{v}"
    );
    assert_eq!((bedrock.hits(), console.hits()), (hits, 0));

    // A throttling exception inside the stream: an Anthropic error event, the usage so far is
    // counted, and the account stays in the pool (a throttle that names no time to wait parks
    // nothing: the next request goes to Bedrock again).
    let r = post(
        &relay,
        BODY_STREAM,
        &[("x-mock-stream-exception", "throttlingException")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let ev = events(&r.bytes().await.unwrap());
    assert_eq!(ev.first().map(|e| e.0.as_str()), Some("message_start"));
    let (name, data) = ev.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["error"]["type"], "rate_limit_error", "{data}");
    let before = bedrock.hits();
    let _ = post(&relay, BODY_STREAM, &[]).await.bytes().await.unwrap();
    assert_eq!((bedrock.hits(), console.hits()), (before + 1, 0));
    let t = usage_totals(&relay, "key", "config.alice", 4).await;
    assert_eq!(t["errors"], 3, "{t}");
}

#[tokio::test]
async fn a_truncated_event_stream_ends_with_an_error_event() {
    let creds = BedrockCreds::example();
    let bedrock = BedrockMock::start(creds.clone()).await;
    let relay = RelayProcess::start(&format!("accounts:\n{}", bedrock_yaml("aws", &bedrock, &creds, ""))).await;
    let r = post(
        &relay,
        BODY_STREAM,
        &[("x-mock-truncate", "900"), ("x-mock-chunk", "7")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let ev = events(&r.bytes().await.unwrap());
    assert_eq!(ev.first().map(|e| e.0.as_str()), Some("message_start"));
    assert_eq!(ev.last().map(|e| e.0.as_str()), Some("error"), "{ev:?}");
    let t = usage_totals(&relay, "key", "config.alice", 1).await;
    assert_eq!(t["errors"], 1, "{t}");
}

#[tokio::test]
async fn ccr_models_go_to_ccr_accounts_only_and_back_with_their_own_name() {
    let ccr = MockUpstream::start().await;
    let console = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n  - {{ name: router, kind: ccr, base_url: \"{}\", api_key: ccr-key, priority: 1 }}\n{}",
        ccr.url(),
        account_yaml("console", &console.url(), ", priority: 50"),
    ))
    .await;
    // A `ccr,` model: to CCR, without the prefix; the client sees its own name back.
    let r = post(
        &relay,
        r#"{"model":"ccr,openrouter/some-model","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], "ccr,openrouter/some-model");
    let s = ccr.seen().pop().unwrap();
    assert_eq!(s.json()["model"], "openrouter/some-model");
    assert_eq!(s.header("authorization").as_deref(), Some("Bearer ccr-key"));
    assert_eq!(console.hits(), 0);
    // Streams too.
    let r = post(
        &relay,
        r#"{"model":"ccr,claude-sonnet-4-5","max_tokens":8,"stream":true,"messages":[]}"#,
        &[],
    )
    .await;
    let ev = events(&r.bytes().await.unwrap());
    assert_eq!(ev[0].1["message"]["model"], "ccr,claude-sonnet-4-5");
    assert_eq!(ccr.seen().pop().unwrap().json()["model"], "claude-sonnet-4-5");
    // Other models never go to CCR, even though it has the better priority.
    let r = post(&relay, BODY_JSON, &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!((ccr.hits(), console.hits()), (2, 1));
    // And without a CCR account, a `ccr,` model is not served by others.
    let relay2 = RelayProcess::start(&format!("accounts:\n{}", account_yaml("console", &console.url(), ""))).await;
    let r = post(&relay2, r#"{"model":"ccr,claude-x","max_tokens":8,"messages":[]}"#, &[]).await;
    assert_eq!(r.status(), 503, "no account serves it");
    assert_eq!(console.hits(), 1);
}

#[tokio::test]
async fn the_debug_log_shows_what_is_sent_upstream_without_credentials() {
    let creds = with_token();
    let mock = BedrockMock::start(creds.clone()).await;
    let relay = RelayProcess::start_in(
        tempfile::tempdir().unwrap(),
        &format!("accounts:\n{}", bedrock_yaml("aws", &mock, &creds, "")),
        &[("RELAY_LOG", "warn,relay::upstream=debug")],
    )
    .await;
    let r = post(&relay, BODY_JSON, &[]).await;
    assert_eq!(r.status(), 200);
    let log = eventually(|| async {
        let t = relay.log_text();
        t.contains("upstream request").then_some(t)
    })
    .await;
    assert!(
        log.contains("/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke"),
        "{log}"
    );
    assert!(log.contains("x-amz-date"), "{log}");
    for secret in [
        creds.secret_access_key.as_str(),
        creds.session_token.as_deref().unwrap(),
        "Signature=",
        ALICE,
    ] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

#[tokio::test]
async fn bedrock_and_ccr_accounts_are_managed_through_the_admin_api() {
    let creds = with_token();
    let mock = BedrockMock::start(creds.clone()).await;
    let relay = RelayProcess::start("").await;
    let token = relay.admin_token().await;
    let c = client();
    let create = |body: Value| {
        let c = c.clone();
        let url = format!("{}/admin/api/accounts", relay.admin());
        let token = token.clone();
        async move {
            let r = c.post(url).bearer_auth(token).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // Refused: no region, half a key pair, both methods, a bad profile, bedrock fields elsewhere.
    for (body, field) in [
        (json!({"name": "b", "kind": "bedrock", "api_key": "k"}), "region"),
        (
            json!({"name": "b", "kind": "bedrock", "region": "us-east-1", "access_key_id": "AKID"}),
            "secret_access_key",
        ),
        (
            json!({"name": "b", "kind": "bedrock", "region": "us-east-1", "api_key": "k", "access_key_id": "a", "secret_access_key": "s"}),
            "not both",
        ),
        (
            json!({"name": "b", "kind": "bedrock", "region": "us-east-1", "api_key": "k", "inference_profile": "mars"}),
            "inference_profile",
        ),
        (
            json!({"name": "c", "kind": "claude-console", "api_key": "sk-ant-x", "region": "us-east-1"}),
            "region",
        ),
    ] {
        let (status, v) = create(body.clone()).await;
        assert_eq!(status, 400, "{body} → {v}");
        assert!(v.to_string().contains(field), "{body} → {v}");
    }
    let (status, v) = create(json!({
        "name": "aws", "kind": "bedrock", "region": "us-east-1", "base_url": mock.url(),
        "access_key_id": creds.access_key_id, "secret_access_key": creds.secret_access_key,
        "session_token": creds.session_token,
    }))
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["kind"], "bedrock");
    assert_eq!(v["region"], "us-east-1");
    assert_eq!(v["bedrock"]["auth"], "sigv4");
    assert_eq!(v["bedrock"]["session_token"], true);
    let shown = v.to_string();
    assert!(
        !shown.contains(&creds.secret_access_key) && !shown.contains("FwoGZXIv"),
        "{shown}"
    );
    // Served at once (the admin write reloads the snapshot), signed with the stored keys.
    let r = eventually(|| async {
        let r = post(&relay, BODY_JSON, &[]).await;
        (r.status() == 200).then_some(r)
    })
    .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], "claude-sonnet-4-5");
    assert!(mock.rejections().is_empty(), "{:?}", mock.rejections());
    // On its region's default endpoint, an account moves with its region.
    let (status, v) =
        create(json!({"name": "eu", "kind": "bedrock", "region": "eu-west-1", "api_key": "k", "enabled": false})).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["base_url"], "https://bedrock-runtime.eu-west-1.amazonaws.com");
    let r = c
        .patch(format!(
            "{}/admin/api/accounts/{}",
            relay.admin(),
            v["id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .json(&json!({"region": "eu-central-1", "inference_profile": "global"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["base_url"], "https://bedrock-runtime.eu-central-1.amazonaws.com");
    assert_eq!(v["inference_profile"], "global");
    // A CCR account: only `ccr,` models reach it.
    let ccr = MockUpstream::start().await;
    let (status, v) =
        create(json!({"name": "router", "kind": "ccr", "base_url": ccr.url(), "api_key": "ccr-key"})).await;
    assert_eq!(status, 201, "{v}");
    let r = eventually(|| async {
        let r = post(&relay, r#"{"model":"ccr,x","max_tokens":8,"messages":[]}"#, &[]).await;
        (r.status() == 200).then_some(r)
    })
    .await;
    let _ = r.bytes().await.unwrap();
    assert_eq!(ccr.seen().pop().unwrap().json()["model"], "x");
}
