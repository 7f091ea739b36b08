//! Fast mode and the usage fields that cost money, through the real binary: `speed` and the
//! fast-mode beta pass untouched and are never added; a key's `fast_mode: deny` refuses fast
//! requests in the caller's dialect; the cost in the admin usage API follows what the answer's
//! `usage` reports (fast speed, US-only inference, web searches), and what the price table cannot
//! price shows as partly priced instead of free.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::bedrock_mock::{BedrockCreds, BedrockMock};
use support::mock::MockUpstream;
use support::{ALICE, RelayProcess, account_yaml, client, eventually, metric};

const FAST_BETA: &str = "fast-mode-2026-02-01";
const BOB: &str = "cr_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// claude-opus-4-8's prices in `conf/pricing.json` (nano-USD per token): input, cache read,
/// cache write 5m, output.
const OPUS_4_8: [u64; 4] = [5_000, 500, 6_250, 25_000];
/// claude-sonnet-4-5's.
const SONNET_4_5: [u64; 4] = [3_000, 300, 3_750, 15_000];

/// What the mock's answer (21 input, 3 cache read, 5 cache write 5m, 7 output) costs.
fn golden_cost(p: [u64; 4]) -> u64 {
    21 * p[0] + 3 * p[1] + 5 * p[2] + 7 * p[3]
}

fn body(model: &str, stream: bool, speed: Option<&str>) -> String {
    // Key order and spacing as a client might send them: the upstream must get these bytes.
    let speed = speed.map(|s| format!(", \"speed\": \"{s}\"")).unwrap_or_default();
    format!(
        "{{\"model\": \"{model}\",\"max_tokens\":64{speed},\"stream\":{stream},\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}"
    )
}

async fn post(relay: &RelayProcess, key: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client()
        .post(format!("{}{path}", relay.base()))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(body.to_string()).send().await.unwrap()
}

/// Posts a Messages request and reads the whole answer, which must be a 200.
async fn ok(relay: &RelayProcess, key: &str, body: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let r = post(relay, key, "/v1/messages", body, headers).await;
    let status = r.status();
    let bytes = r.bytes().await.unwrap().to_vec();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    bytes
}

/// The all-time usage totals of a config key once `requests` requests are counted (and nothing
/// more arrives).
async fn totals(relay: &RelayProcess, key_name: &str, requests: u64) -> Value {
    let token = relay.admin_token().await;
    let url = format!(
        "{}/admin/api/usage?dimension=key&id=config.{key_name}&granularity=minute",
        relay.admin()
    );
    let get = || async {
        client()
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .json::<Value>()
            .await
            .ok()
    };
    let got = eventually(|| async {
        let v = get().await?;
        (v["totals"]["requests"] == requests).then(|| v["totals"].clone())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get().await.unwrap()["totals"], got, "usage still moving");
    got
}

fn keys_yaml(extra_keys: &str) -> String {
    format!("api_keys:\n  - {{ name: alice, key: {ALICE} }}\n{extra_keys}")
}

async fn relay_with(mock: &MockUpstream, extra_keys: &str) -> RelayProcess {
    RelayProcess::start(&format!(
        "{}accounts:\n{}",
        keys_yaml(extra_keys),
        account_yaml("main", &mock.url(), "")
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_requests_pass_untouched_and_are_priced_at_the_fast_rate_the_usage_reports() {
    let mock = MockUpstream::start().await;
    let relay = relay_with(&mock, "").await;
    let beta = format!("claude-code-20250219,{FAST_BETA}");

    // Non-streaming: `usage.speed` in the answer.
    let json_body = body("claude-opus-4-8", false, Some("fast"));
    ok(
        &relay,
        ALICE,
        &json_body,
        &[("anthropic-beta", &beta), ("x-mock-usage", r#"{"speed":"fast"}"#)],
    )
    .await;
    // Streaming: `speed` in message_start's usage only; the final message_delta does not repeat it.
    let stream_body = body("claude-opus-4-8", true, Some("fast"));
    let answer = ok(
        &relay,
        ALICE,
        &stream_body,
        &[("anthropic-beta", &beta), ("x-mock-usage-start", r#"{"speed":"fast"}"#)],
    )
    .await;
    assert!(
        String::from_utf8_lossy(&answer).contains(r#""speed":"fast""#),
        "the client sees the usage as sent"
    );

    let seen = mock.seen();
    assert_eq!(seen.len(), 2);
    for (s, sent) in seen.iter().zip([&json_body, &stream_body]) {
        assert_eq!(
            s.body.as_ref(),
            sent.as_bytes(),
            "the body byte for byte, `speed` included"
        );
        assert_eq!(s.header("anthropic-beta").as_deref(), Some(beta.as_str()));
    }

    let t = totals(&relay, "alice", 2).await;
    // $10 / $50 per MTok: twice the standard rate, cache multipliers on top.
    assert_eq!(t["cost_nanos"], 2 * 2 * golden_cost(OPUS_4_8), "{t}");
    assert_eq!(t["fast_requests"], 2, "{t}");
    assert_eq!(t["partly_priced_requests"], 0, "{t}");
    assert_eq!(t["unpriced_requests"], 0, "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_beta_header_alone_is_not_fast_and_the_usage_decides_the_price() {
    let mock = MockUpstream::start().await;
    let relay = relay_with(&mock, "").await;
    // Claude Code keeps the beta header after a fast turn and drops only `speed`: standard.
    ok(
        &relay,
        ALICE,
        &body("claude-opus-4-8", true, None),
        &[("anthropic-beta", FAST_BETA)],
    )
    .await;
    // Fast asked for, and the upstream says it ran at standard speed: standard.
    ok(
        &relay,
        ALICE,
        &body("claude-opus-4-8", false, Some("fast")),
        &[
            ("anthropic-beta", FAST_BETA),
            ("x-mock-usage", r#"{"speed":"standard"}"#),
        ],
    )
    .await;
    let t = totals(&relay, "alice", 2).await;
    assert_eq!(t["cost_nanos"], 2 * golden_cost(OPUS_4_8), "{t}");
    assert_eq!(t["fast_requests"], 0, "{t}");
    assert_eq!(t["partly_priced_requests"], 0, "{t}");

    // Fast asked for and the answer names no speed: the standard part counts, and the request
    // shows as partly priced rather than silently standard.
    ok(
        &relay,
        ALICE,
        &body("claude-opus-4-8", false, Some("fast")),
        &[("anthropic-beta", FAST_BETA)],
    )
    .await;
    let t = totals(&relay, "alice", 3).await;
    assert_eq!(t["cost_nanos"], 3 * golden_cost(OPUS_4_8), "{t}");
    assert_eq!(t["partly_priced_requests"], 1, "{t}");
    assert_eq!(
        metric(&relay, "relay_unpriced_usage_total{part=\"speed\"}").await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_account_kind_adds_speed_or_the_fast_beta() {
    // Console account: nothing added to a plain request.
    let mock = MockUpstream::start().await;
    let relay = relay_with(&mock, "").await;
    let plain = body("claude-opus-4-8", true, None);
    ok(&relay, ALICE, &plain, &[]).await;
    ok(&relay, ALICE, &plain, &[("anthropic-beta", "claude-code-20250219")]).await;
    let seen = mock.seen();
    assert_eq!(seen[0].body.as_ref(), plain.as_bytes());
    assert_eq!(seen[0].header("anthropic-beta"), None);
    assert_eq!(seen[1].body.as_ref(), plain.as_bytes());
    assert_eq!(
        seen[1].header("anthropic-beta").as_deref(),
        Some("claude-code-20250219")
    );
    let t = totals(&relay, "alice", 2).await;
    assert_eq!(t["fast_requests"], 0, "{t}");
    drop(relay);

    // A model map rewrites `model` only: `speed` and the rest stay as sent.
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!(
        "{}accounts:\n{}",
        keys_yaml(""),
        account_yaml("main", &mock.url(), ", model_map: { claude-opus-4-8: claude-opus-5 }")
    ))
    .await;
    ok(
        &relay,
        ALICE,
        &body("claude-opus-4-8", false, Some("fast")),
        &[("anthropic-beta", FAST_BETA), ("x-mock-usage", r#"{"speed":"fast"}"#)],
    )
    .await;
    let s = &mock.seen()[0];
    assert_eq!(
        String::from_utf8_lossy(&s.body),
        body("claude-opus-5", false, Some("fast")),
        "only the model changed"
    );
    assert_eq!(s.header("anthropic-beta").as_deref(), Some(FAST_BETA));
    let t = totals(&relay, "alice", 1).await;
    // Priced as the model the upstream served (same prices as 4.8, fast too).
    assert_eq!(t["cost_nanos"], 2 * golden_cost(OPUS_4_8), "{t}");
    drop(relay);

    // Bedrock has no fast mode: `speed` passes in the invoke body as sent, and the beta flag goes
    // where Bedrock reads flags (`anthropic_beta`); nothing is added to a plain request.
    let creds = BedrockCreds::example();
    let bedrock = BedrockMock::start(creds.clone()).await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n  - {{ name: aws, kind: bedrock, region: {}, base_url: \"{}\", access_key_id: {}, secret_access_key: \"{}\" }}\n",
        creds.region,
        bedrock.url(),
        creds.access_key_id,
        creds.secret_access_key
    ))
    .await;
    ok(
        &relay,
        ALICE,
        &body("claude-sonnet-4-5", false, Some("fast")),
        &[("anthropic-beta", FAST_BETA)],
    )
    .await;
    ok(&relay, ALICE, &body("claude-sonnet-4-5", false, None), &[]).await;
    let seen = bedrock.seen();
    assert_eq!(seen.len(), 2, "{:?}", bedrock.rejections());
    let fast = seen[0].json();
    assert_eq!(fast["speed"], "fast", "{fast}");
    assert_eq!(fast["anthropic_beta"], json!([FAST_BETA]), "{fast}");
    let plain = seen[1].json();
    assert_eq!(plain.get("speed"), None, "{plain}");
    assert_eq!(plain.get("anthropic_beta"), None, "{plain}");
    assert_eq!(seen[1].header("anthropic-beta"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_denied_fast_mode_gets_a_403_in_its_dialect_and_nothing_reaches_the_upstream() {
    let mock = MockUpstream::start().await;
    let relay = relay_with(&mock, &format!("  - {{ name: bob, key: {BOB}, fast_mode: deny }}\n")).await;

    let r = post(
        &relay,
        BOB,
        "/v1/messages",
        &body("claude-opus-4-8", true, Some("fast")),
        &[("anthropic-beta", FAST_BETA)],
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-relay-error-source"], "relay");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "permission_error", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("fast mode"), "{v}");
    assert_eq!(mock.hits(), 0, "a refusal never reaches an upstream");
    assert_eq!(
        metric(&relay, "relay_rejections_total{reason=\"fast_mode_denied\"}").await,
        Some(1.0)
    );

    // The same key without `speed` (the beta header alone says nothing) is served; so is a key
    // without the rule asking for fast mode.
    ok(
        &relay,
        BOB,
        &body("claude-opus-4-8", false, None),
        &[("anthropic-beta", FAST_BETA)],
    )
    .await;
    ok(&relay, ALICE, &body("claude-opus-4-8", false, Some("fast")), &[]).await;
    assert_eq!(mock.hits(), 2);

    // Chat Completions cannot carry fast mode: the conversion to Messages drops `speed`, so the
    // request is served at standard speed and not refused.
    let r = client()
        .post(format!("{}/v1/chat/completions", relay.base()))
        .bearer_auth(BOB)
        .json(&json!({"model": "claude-opus-4-8", "speed": "fast", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let sent = mock.seen()[2].json();
    assert_eq!(sent.get("speed"), None, "{sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_mode_is_a_key_field_in_the_admin_api() {
    let mock = MockUpstream::start().await;
    let relay = relay_with(&mock, "").await;
    let admin = support::admin::Admin::login(&relay).await;
    let created = admin
        .post("/admin/api/keys", json!({"name": "carol", "fast_mode": "deny"}))
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.json["fast_mode"], "deny");
    let key = created.json["key"].as_str().unwrap().to_string();
    let id = created.json["id"].as_str().unwrap().to_string();
    let r = post(
        &relay,
        &key,
        "/v1/messages",
        &body("claude-opus-4-8", false, Some("fast")),
        &[],
    )
    .await;
    assert_eq!(r.status(), 403);
    // Bad values are a 400 that names the field; `null` removes the rule.
    let bad = admin
        .post("/admin/api/keys", json!({"name": "dave", "fast_mode": "sometimes"}))
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert!(bad.text.contains("fast_mode"), "{}", bad.text);
    let patched = admin
        .call(
            reqwest::Method::PATCH,
            &format!("/admin/api/keys/{id}"),
            Some(json!({"fast_mode": null})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(patched.json.get("fast_mode"), None, "{}", patched.text);
    // Once the change reached the snapshot, the key is served.
    eventually(|| async {
        let r = post(
            &relay,
            &key,
            "/v1/messages",
            &body("claude-opus-4-8", false, Some("fast")),
            &[],
        )
        .await;
        (r.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_searches_us_inference_and_unpriced_parts_in_the_admin_usage() {
    let mock = MockUpstream::start().await;
    let relay = relay_with(
        &mock,
        &format!(
            "  - {{ name: bob, key: {BOB} }}\n  - {{ name: carol, key: cr_{} }}\n",
            "c".repeat(64)
        ),
    )
    .await;
    let carol = format!("cr_{}", "c".repeat(64));

    // Web searches: $10 per 1,000 on top of the tokens; web fetches are free.
    let tools = r#"{"server_tool_use":{"web_search_requests":2,"web_fetch_requests":3}}"#;
    ok(
        &relay,
        ALICE,
        &body("claude-sonnet-4-5", false, None),
        &[("x-mock-usage", tools)],
    )
    .await;
    ok(
        &relay,
        ALICE,
        &body("claude-sonnet-4-5", true, None),
        &[("x-mock-usage", tools)],
    )
    .await;
    let t = totals(&relay, "alice", 2).await;
    assert_eq!(t["cost_nanos"], 2 * (golden_cost(SONNET_4_5) + 2 * 10_000_000), "{t}");
    assert_eq!(t["web_search_requests"], 4, "{t}");
    assert_eq!(t["partly_priced_requests"], 0, "{t}");

    // US-only inference: 1.1× every token kind, stacked with fast mode.
    ok(
        &relay,
        BOB,
        &body("claude-opus-4-8", true, None),
        &[("x-mock-usage-start", r#"{"inference_geo":"us"}"#)],
    )
    .await;
    ok(
        &relay,
        BOB,
        &body("claude-opus-4-8", false, Some("fast")),
        &[("x-mock-usage", r#"{"inference_geo":"us","speed":"fast"}"#)],
    )
    .await;
    let t = totals(&relay, "bob", 2).await;
    let standard = golden_cost(OPUS_4_8);
    assert_eq!(t["cost_nanos"], standard * 11 / 10 + standard * 22 / 10, "{t}");
    assert_eq!(
        (&t["fast_requests"], &t["partly_priced_requests"]),
        (&json!(1), &json!(0)),
        "{t}"
    );

    // A server tool without a price, and the priority tier: the tokens are priced, the request
    // shows as partly priced, never as fully paid.
    ok(
        &relay,
        &carol,
        &body("claude-sonnet-4-5", true, None),
        &[(
            "x-mock-usage",
            r#"{"server_tool_use":{"web_search_requests":1,"code_execution_requests":1}}"#,
        )],
    )
    .await;
    ok(
        &relay,
        &carol,
        &body("claude-sonnet-4-5", false, None),
        &[("x-mock-usage", r#"{"service_tier":"priority"}"#)],
    )
    .await;
    let t = totals(&relay, "carol", 2).await;
    assert_eq!(t["cost_nanos"], 2 * golden_cost(SONNET_4_5) + 10_000_000, "{t}");
    assert_eq!(t["partly_priced_requests"], 2, "{t}");
    assert_eq!(t["unpriced_requests"], 0, "{t}");
    assert_eq!(t["web_search_requests"], 1, "{t}");
    for part in ["server_tool_use", "service_tier"] {
        assert_eq!(
            metric(&relay, &format!("relay_unpriced_usage_total{{part=\"{part}\"}}")).await,
            Some(1.0),
            "{part}"
        );
    }
    // The model dimension adds up the same way.
    let token = relay.admin_token().await;
    let summary: Value = client()
        .get(format!(
            "{}/admin/api/usage?dimension=model&id=claude-sonnet-4-5&granularity=minute",
            relay.admin()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary["totals"]["partly_priced_requests"], 2, "{summary}");
    assert_eq!(summary["totals"]["web_search_requests"], 5, "{summary}");
}
