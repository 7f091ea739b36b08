//! `POST /admin/api/accounts/{id}/test` through HTTP against the real binary: the NDJSON lines of
//! a test in order with the reply text a mock upstream streamed, the account's model map applied,
//! an upstream refusal reported without touching the account's health, the OpenAI and Gemini
//! wires through the same seam, an account behind an outbound proxy, and the requests refused
//! before anything is sent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use support::admin::Admin;
use support::mock::MockUpstream;
use support::openai_mock::OpenAiMock;
use support::proxies::ProxyServer;
use support::{RelayProcess, account_yaml, client};

/// Runs a test and returns its answer's status, content type and lines.
async fn run_test(relay: &RelayProcess, id: &str, body: Value) -> (u16, String, Vec<Value>) {
    let token = relay.admin_token().await;
    let r = client()
        .post(format!("{}/admin/api/accounts/{id}/test", relay.admin()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = r.text().await.unwrap();
    let lines = if status == 200 {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?} is not JSON: {e}")))
            .collect()
    } else {
        vec![serde_json::from_str(&text).unwrap()]
    };
    (status, ct, lines)
}

fn types(lines: &[Value]) -> Vec<&str> {
    lines.iter().map(|l| l["type"].as_str().unwrap()).collect()
}

fn joined_text(lines: &[Value]) -> String {
    lines
        .iter()
        .filter(|l| l["type"] == "text")
        .map(|l| l["text"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_console_account_streams_its_reply_with_the_model_mapped() {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}",
        account_yaml(
            "main",
            &mock.url(),
            ", model_map: { claude-haiku-4-5: claude-haiku-4-5-20251001 }"
        )
    ))
    .await;
    let (status, ct, lines) = run_test(&relay, "config.main", json!({"prompt": "ping"})).await;
    assert_eq!(status, 200, "{lines:?}");
    assert_eq!(ct, "application/x-ndjson");
    let t = types(&lines);
    assert_eq!(t.first(), Some(&"start"), "{lines:?}");
    assert_eq!(t[1], "status", "{lines:?}");
    assert_eq!(t.last(), Some(&"done"), "{lines:?}");
    assert!(t[2..t.len() - 1].iter().all(|t| *t == "text"), "{lines:?}");
    assert_eq!(lines[0]["model"], "claude-haiku-4-5", "the default model: {lines:?}");
    assert_eq!(lines[0]["upstream_model"], "claude-haiku-4-5-20251001");
    assert_eq!(lines[1]["status"], 200);
    assert!(lines[1]["ttfb_ms"].as_u64().is_some(), "{lines:?}");
    assert_eq!(joined_text(&lines), "Hello from mock upstream!");
    let done = lines.last().unwrap();
    assert_eq!(done["ok"], true, "{done}");
    assert_eq!(done["status"], 200);
    assert!(done["duration_ms"].as_u64().is_some());
    assert_eq!(done["usage"]["output_tokens"], 7, "{done}");
    assert!(done["usage"]["input_tokens"].as_u64().unwrap() > 0, "{done}");

    // The mock saw one small streamed Messages request, with the account's key and mapped model.
    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path_and_query, "/v1/messages");
    assert_eq!(
        seen[0].header("x-api-key").as_deref(),
        Some("sk-ant-api03-upstream-main")
    );
    let body = seen[0].json();
    assert_eq!(body["model"], "claude-haiku-4-5-20251001");
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], 32);
    assert_eq!(body["messages"][0]["content"][0]["text"], "ping", "{body}");

    // A model named by the admin goes through the map too (or as it is, when unmapped).
    let (_, _, lines) = run_test(&relay, "config.main", json!({"model": "claude-sonnet-4-5"})).await;
    assert_eq!(lines[0]["upstream_model"], "claude-sonnet-4-5");
    assert_eq!(mock.seen()[1].json()["model"], "claude-sonnet-4-5");

    // Nothing of it was charged to a key or counted as usage.
    let admin = Admin::login(&relay).await;
    let usage = admin.get("/admin/api/usage/summary").await;
    assert_eq!(usage.status, 200, "{}", usage.text);
    assert_eq!(usage.json["totals"]["requests"], 0, "{}", usage.text);
}

#[tokio::test]
async fn an_upstream_refusal_ends_the_test_and_leaves_the_health_alone() {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!(
        "scheduler: {{ failover: {{ evidence_keys: 1 }} }}\naccounts:\n{}",
        account_yaml("main", &mock.url(), "")
    ))
    .await;
    let admin = Admin::login(&relay).await;
    let before = admin.account("config.main").await;
    for (code, message) in [(529, "Overloaded right now"), (401, "invalid x-api-key")] {
        mock.set_status(Some(code));
        mock.set_error_message(message);
        let (status, _, lines) = run_test(&relay, "config.main", json!({})).await;
        assert_eq!(status, 200);
        assert_eq!(types(&lines), ["start", "status", "done"], "{lines:?}");
        assert_eq!(lines[1]["status"], code);
        let done = &lines[2];
        assert_eq!(done["ok"], false, "{done}");
        assert_eq!(done["status"], code);
        assert_eq!(done["message"], message, "{done}");
        assert!(!done.to_string().contains("sk-ant-api03"), "{done}");
    }
    let after = admin.account("config.main").await;
    assert_eq!(after["health"], before["health"], "{after}");
    assert_eq!(after["health"]["state"], "active", "{after}");
    let events = admin.get("/admin/api/accounts/config.main/events").await;
    assert_eq!(events.json, json!({"events": []}));
}

#[tokio::test]
async fn requests_refused_before_anything_is_sent() {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}  - {{ name: off, kind: claude-console, base_url: \"{}\", api_key: sk-ant-api03-upstream-off, enabled: false }}\n",
        account_yaml("main", &mock.url(), ""),
        mock.url()
    ))
    .await;
    let (status, _, body) = run_test(&relay, "nope", json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(body[0]["error"]["type"], "not_found_error");
    let (status, _, body) = run_test(&relay, "config.main", json!({"model": 3})).await;
    assert_eq!(status, 400);
    assert!(
        body[0]["error"]["message"].as_str().unwrap().contains("model"),
        "{body:?}"
    );
    let (status, _, _) = run_test(&relay, "config.main", json!({"extra": 1})).await;
    assert_eq!(status, 400);
    let (status, _, _) = run_test(&relay, "config.main", json!({"prompt": "x".repeat(4001)})).await;
    assert_eq!(status, 400);
    assert_eq!(mock.hits(), 0);
    // Without a session, nothing.
    let r = client()
        .post(format!("{}/admin/api/accounts/config.main/test", relay.admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A disabled account can be tested.
    let (status, _, lines) = run_test(&relay, "config.off", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(lines.last().unwrap()["ok"], true, "{lines:?}");
    assert_eq!(mock.hits(), 1);
}

#[tokio::test]
async fn an_openai_account_is_tested_through_the_same_seam() {
    let mock = OpenAiMock::openai("sk-openai-upstream").await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n  - {{ name: oa, kind: openai, base_url: \"{}\", api_key: {}, models: [gpt-5-mini, gpt-5], model_map: {{ gpt-5: gpt-5-2025-08-07 }} }}\n",
        mock.base_url(),
        mock.state.key
    ))
    .await;
    let (status, _, lines) = run_test(&relay, "config.oa", json!({"model": "gpt-5"})).await;
    assert_eq!(status, 200);
    assert_eq!(types(&lines)[..2], ["start", "status"], "{lines:?}");
    assert_eq!(lines[0]["upstream_model"], "gpt-5-2025-08-07");
    assert_eq!(joined_text(&lines), "Hello from mock upstream!");
    let done = lines.last().unwrap();
    assert_eq!(done["ok"], true, "{done}");
    assert_eq!(done["usage"]["output_tokens"], 7, "{done}");
    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].path_and_query.ends_with("/chat/completions"),
        "{}",
        seen[0].path_and_query
    );
    assert_eq!(seen[0].json()["model"], "gpt-5-2025-08-07");
    assert_eq!(seen[0].bearer().as_deref(), Some("sk-openai-upstream"));
    // The default model is one the account lists.
    let (_, _, lines) = run_test(&relay, "config.oa", json!({})).await;
    assert_eq!(lines[0]["model"], "gpt-5", "{lines:?}");
}

#[tokio::test]
async fn a_test_goes_through_the_accounts_outbound_proxy() {
    let mock = MockUpstream::start().await;
    let proxy = ProxyServer::socks5(&[]).await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}",
        account_yaml("main", &mock.url(), &format!(", proxy: \"{}\"", proxy.url(None)))
    ))
    .await;
    let (status, _, lines) = run_test(&relay, "config.main", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(lines.last().unwrap()["ok"], true, "{lines:?}");
    assert_eq!(mock.hits(), 1);
    assert!(!proxy.conns().is_empty(), "the test did not go through the proxy");
}

#[tokio::test]
async fn an_unreachable_upstream_is_an_error_line() {
    let port = support::free_port();
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}",
        account_yaml("main", &format!("http://127.0.0.1:{port}"), "")
    ))
    .await;
    let admin = Admin::login(&relay).await;
    let (status, _, lines) = run_test(&relay, "config.main", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(types(&lines), ["start", "error"], "{lines:?}");
    assert!(lines[1]["message"].as_str().unwrap().contains("connect"), "{lines:?}");
    assert_eq!(admin.account("config.main").await["health"]["state"], "active");
}

#[tokio::test]
async fn a_gemini_api_account_is_tested_with_its_default_model() {
    let mock = support::gemini_mock::GeminiMock::start().await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n  - {{ name: gem, kind: gemini-api, base_url: \"{}\", api_key: {} }}\n",
        mock.url(),
        support::gemini_mock::API_KEY
    ))
    .await;
    let (status, _, lines) = run_test(&relay, "config.gem", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(lines[0]["model"], "gemini-2.5-flash", "{lines:?}");
    assert_eq!(lines[1]["status"], 200, "{lines:?}");
    assert_eq!(joined_text(&lines), mock.text());
    let done = lines.last().unwrap();
    assert_eq!(done["ok"], true, "{done}");
    assert!(done["usage"]["output_tokens"].as_u64().unwrap() > 0, "{done}");
    let generations = mock.generations();
    assert_eq!(generations.len(), 1);
    assert!(
        generations[0].path.contains("gemini-2.5-flash:streamGenerateContent"),
        "{}",
        generations[0].path
    );
    assert_eq!(generations[0].query.as_deref(), Some("alt=sse"));
}
