//! Per-key restrictions through the real binary: permissions, expiry (fixed date and activation on
//! first use), client allowlist, IP allow/deny (with trusted proxies) and model lists. Every
//! refusal is the Anthropic error shape, says the relay refused, never reaches the upstream, and is
//! counted by reason on the admin `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;
use support::client;

use std::time::Duration;

use support::mock::MockUpstream;
use support::{RelayProcess, account_yaml};

const BODY: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
const CLAUDE_CODE_UA: &str = "claude-cli/2.1.197 (external, cli)";

/// A distinct valid client key per name.
fn key_of(name: &str) -> String {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("cr_{hex:0>64}")
}

/// The relay with one account on `mock`, the given `api_keys:` entries (YAML flow maps, one a
/// line, without the leading `- `) and more config.
async fn relay(mock: &MockUpstream, keys: &[&str], extra: &str) -> RelayProcess {
    RelayProcess::start(&config(mock, keys, extra)).await
}

fn config(mock: &MockUpstream, keys: &[&str], extra: &str) -> String {
    let mut yaml = format!("accounts:\n{}api_keys:\n", account_yaml("main", &mock.url(), ""));
    for k in keys {
        yaml.push_str(&format!("  - {k}\n"));
    }
    yaml.push_str(extra);
    yaml
}

/// `- { name: NAME, key: <its key>, REST }`
fn key_line(name: &str, rest: &str) -> String {
    let sep = if rest.is_empty() { "" } else { ", " };
    format!("{{ name: {name}, key: {}{sep}{rest} }}", key_of(name))
}

async fn send(relay: &RelayProcess, name: &str, headers: &[(&str, &str)], body: &str) -> reqwest::Response {
    let mut rb = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", key_of(name))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.send().await.unwrap()
}

fn body_for(model: &str) -> String {
    format!(r#"{{"model":"{model}","max_tokens":16,"messages":[{{"role":"user","content":"hi"}}]}}"#)
}

/// Asserts a relay refusal in the Anthropic shape; returns its message.
async fn assert_refused(r: reqwest::Response, status: u16, error_type: &str) -> String {
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["x-relay-error-source"], "relay");
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], error_type, "{v}");
    v["error"]["message"].as_str().unwrap().to_string()
}

async fn assert_passes(r: reqwest::Response) {
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
}

async fn rejections(relay: &RelayProcess, reason: &str) -> u64 {
    let line = format!("relay_rejections_total{{reason=\"{reason}\"}} ");
    support::metric(relay, &line).await.map_or(0, |v| v as u64)
}

#[tokio::test]
async fn permissions_by_service() {
    let mock = MockUpstream::start().await;
    let relay = relay(
        &mock,
        &[
            &key_line("gem", "permissions: [gemini, openai]"),
            &key_line("cla", "permissions: [claude]"),
            &key_line("any", ""),
        ],
        "",
    )
    .await;
    let msg = assert_refused(send(&relay, "gem", &[], BODY).await, 403, "permission_error").await;
    assert!(msg.contains("claude"), "{msg}");
    // Header-only endpoints of the service are refused too.
    let r = client()
        .get(format!("{}/v1/models", relay.base()))
        .header("x-api-key", key_of("gem"))
        .send()
        .await
        .unwrap();
    assert_refused(r, 403, "permission_error").await;
    assert_eq!(mock.hits(), 0, "a refusal never reaches the upstream");

    assert_passes(send(&relay, "cla", &[], BODY).await).await;
    assert_passes(send(&relay, "any", &[], BODY).await).await;
    assert_eq!(mock.hits(), 2);
    assert_eq!(rejections(&relay, "permission").await, 2);
}

#[tokio::test]
async fn fixed_expiry_date() {
    let mock = MockUpstream::start().await;
    let relay = relay(
        &mock,
        &[
            &key_line("old", "expires_at: 2020-01-01T00:00:00Z"),
            &key_line("new", "expires_at: 2999-01-01T00:00:00Z"),
        ],
        "",
    )
    .await;
    let msg = assert_refused(send(&relay, "old", &[], BODY).await, 401, "authentication_error").await;
    assert_eq!(msg, "API key has expired");
    assert_eq!(mock.hits(), 0);
    assert_passes(send(&relay, "new", &[], BODY).await).await;
    assert_eq!(rejections(&relay, "expired_key").await, 1);
}

#[tokio::test]
async fn activation_on_first_use() {
    let mock = MockUpstream::start().await;
    let relay = relay(
        &mock,
        &[
            &key_line("trial", "activate_for: 1s"),
            &key_line("later", "activate_for: 1s"),
        ],
        "",
    )
    .await;
    // Configured long ago does not count: the period runs from the first request.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_passes(send(&relay, "trial", &[], BODY).await).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let msg = assert_refused(send(&relay, "trial", &[], BODY).await, 401, "authentication_error").await;
    assert_eq!(msg, "API key has expired");
    assert_eq!(mock.hits(), 1);
    // Each key has its own first use.
    assert_passes(send(&relay, "later", &[], BODY).await).await;
    assert_eq!(rejections(&relay, "expired_key").await, 1);
}

#[tokio::test]
async fn activation_survives_a_restart_on_the_embedded_store() {
    let mock = MockUpstream::start().await;
    let trial = key_line("trial", "activate_for: 2s");
    let yaml = config(&mock, &[&trial], "");
    let mut first = RelayProcess::start(&yaml).await;
    assert_passes(send(&first, "trial", &[], BODY).await).await;
    first.stop();
    let dir = std::mem::replace(&mut first.dir, tempfile::tempdir().unwrap());
    drop(first);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Same data directory, new process: the first use is remembered, so the key has expired.
    let second = RelayProcess::start_in(dir, &yaml, &[]).await;
    assert_refused(send(&second, "trial", &[], BODY).await, 401, "authentication_error").await;
    assert_eq!(mock.hits(), 1);
}

#[tokio::test]
async fn clients_by_user_agent() {
    let mock = MockUpstream::start().await;
    let relay = relay(
        &mock,
        &[
            &key_line("cc", "clients: [claude_code]"),
            &key_line("gem", "clients: [gemini_cli]"),
            &key_line("custom", r#"clients: [{ user_agent: "^my-tool/\\d+" }]"#),
        ],
        "",
    )
    .await;
    assert_passes(send(&relay, "cc", &[("user-agent", CLAUDE_CODE_UA)], BODY).await).await;
    let msg = assert_refused(
        send(&relay, "cc", &[("user-agent", "curl/8")], BODY).await,
        403,
        "permission_error",
    )
    .await;
    assert!(msg.contains("claude_code"), "{msg}");
    assert_refused(send(&relay, "cc", &[], BODY).await, 403, "permission_error").await;
    // A Gemini CLI key cannot use the Claude endpoints, not even with the Gemini CLI's agent.
    assert_refused(
        send(&relay, "gem", &[("user-agent", "GeminiCLI/0.1.5 (linux; x64)")], BODY).await,
        403,
        "permission_error",
    )
    .await;
    assert_refused(
        send(&relay, "gem", &[("user-agent", CLAUDE_CODE_UA)], BODY).await,
        403,
        "permission_error",
    )
    .await;
    assert_passes(send(&relay, "custom", &[("user-agent", "my-tool/3")], BODY).await).await;
    let msg = assert_refused(
        send(&relay, "custom", &[("user-agent", CLAUDE_CODE_UA)], BODY).await,
        403,
        "permission_error",
    )
    .await;
    assert!(!msg.contains("my-tool"), "custom patterns are not echoed: {msg}");
    assert_eq!(mock.hits(), 2);
    assert_eq!(rejections(&relay, "client_not_allowed").await, 5);
}

#[tokio::test]
async fn ip_rules_on_the_peer_address() {
    let mock = MockUpstream::start().await;
    let relay = relay(
        &mock,
        &[
            &key_line("local", r#"ip_allow: ["127.0.0.1/32"]"#),
            &key_line("ten", r#"ip_allow: ["10.0.0.0/8", "::1/128"]"#),
            &key_line("noloop", r#"ip_deny: ["127.0.0.0/8"]"#),
        ],
        "",
    )
    .await;
    assert_passes(send(&relay, "local", &[], BODY).await).await;
    let msg = assert_refused(send(&relay, "ten", &[], BODY).await, 403, "permission_error").await;
    assert!(!msg.contains("10."), "ranges are not echoed: {msg}");
    assert_refused(send(&relay, "noloop", &[], BODY).await, 403, "permission_error").await;
    // Without trusted proxies, X-Forwarded-For is the client's word and is ignored.
    assert_refused(
        send(&relay, "ten", &[("x-forwarded-for", "10.1.2.3")], BODY).await,
        403,
        "permission_error",
    )
    .await;
    assert_eq!(mock.hits(), 1);
    assert_eq!(rejections(&relay, "ip_not_allowed").await, 2);
    assert_eq!(rejections(&relay, "ip_denied").await, 1);
}

#[tokio::test]
async fn ip_rules_through_trusted_proxies() {
    let mock = MockUpstream::start().await;
    let relay = relay(
        &mock,
        &[
            &key_line("ten", r#"ip_allow: ["10.0.0.0/8"]"#),
            &key_line("noten", r#"ip_deny: ["10.0.0.0/8"]"#),
            &key_line("local", r#"ip_allow: ["127.0.0.1/32"]"#),
        ],
        "trusted_proxies: [127.0.0.1/32]\n",
    )
    .await;
    let xff = [("x-forwarded-for", "10.1.2.3")];
    assert_passes(send(&relay, "ten", &xff, BODY).await).await;
    assert_refused(send(&relay, "noten", &xff, BODY).await, 403, "permission_error").await;
    // The client is 10.1.2.3 now, not the proxy.
    assert_refused(send(&relay, "local", &xff, BODY).await, 403, "permission_error").await;
    // A forged hop left of an untrusted one does not count: the nearest untrusted address wins.
    let forged = [("x-forwarded-for", "10.9.9.9, 192.0.2.1")];
    assert_refused(send(&relay, "ten", &forged, BODY).await, 403, "permission_error").await;
    // Without the header the trusted peer itself is the client.
    assert_passes(send(&relay, "local", &[], BODY).await).await;
    assert_eq!(mock.hits(), 2);
    assert_eq!(rejections(&relay, "ip_denied").await, 1);
    assert_eq!(rejections(&relay, "ip_not_allowed").await, 2);
}

#[tokio::test]
async fn model_blacklist_and_allowlist() {
    let mock = MockUpstream::start().await;
    let relay = relay(
        &mock,
        &[
            &key_line("noopus", "model_blacklist: [claude-opus-4-1]"),
            &key_line("sonnet", "model_allowlist: [claude-sonnet-4-5]"),
        ],
        "",
    )
    .await;
    for model in [
        "claude-opus-4-1",
        "Claude-Opus-4-1",
        "anthropic/claude-opus-4-1",
        "claude-opus-4-1-20250805",
        "claude-opus-4-1[1m]",
        "us.anthropic.claude-opus-4-1-20250805-v1:0",
    ] {
        let msg = assert_refused(
            send(&relay, "noopus", &[], &body_for(model)).await,
            403,
            "permission_error",
        )
        .await;
        assert!(msg.contains(model), "{msg}");
    }
    // count_tokens is checked too.
    let r = client()
        .post(format!("{}/v1/messages/count_tokens", relay.base()))
        .header("x-api-key", key_of("noopus"))
        .body(body_for("claude-opus-4-1"))
        .send()
        .await
        .unwrap();
    assert_refused(r, 403, "permission_error").await;
    assert_passes(send(&relay, "noopus", &[], BODY).await).await;

    assert_passes(send(&relay, "sonnet", &[], &body_for("claude-sonnet-4-5-20250929")).await).await;
    assert_refused(
        send(&relay, "sonnet", &[], &body_for("claude-haiku-4-5")).await,
        403,
        "permission_error",
    )
    .await;
    assert_eq!(mock.hits(), 2);
    assert_eq!(rejections(&relay, "model_not_allowed").await, 8);
}

/// The issue's key shape with every restriction: the default chain runs every filter in its order,
/// and an explicit `filters:` list decides which run.
#[tokio::test]
async fn chain_order_and_explicit_filter_lists() {
    let mock = MockUpstream::start().await;
    let bob = key_line(
        "bob",
        r#"permissions: [gemini], clients: [claude_code], ip_allow: ["10.0.0.0/8"], model_blacklist: [claude-opus-4-1]"#,
    );
    let relay_default = relay(&mock, &[&bob], "").await;
    assert_refused(send(&relay_default, "bob", &[], BODY).await, 403, "permission_error").await;
    assert_eq!(rejections(&relay_default, "permission").await, 1);
    drop(relay_default);

    // Only key auth and the model list: the other rules are not checked.
    let relay_models = relay(&mock, &[&bob], "filters: [key_auth, models]\n").await;
    assert_passes(send(&relay_models, "bob", &[], BODY).await).await;
    assert_refused(
        send(&relay_models, "bob", &[], &body_for("claude-opus-4-1")).await,
        403,
        "permission_error",
    )
    .await;
    // Configured order: the IP rule before the client rule.
    let relay_ordered = relay(&mock, &[&bob], "filters: [key_auth, ip, clients]\n").await;
    assert_refused(send(&relay_ordered, "bob", &[], BODY).await, 403, "permission_error").await;
    assert_eq!(rejections(&relay_ordered, "ip_not_allowed").await, 1);
    assert_eq!(rejections(&relay_ordered, "client_not_allowed").await, 0);
    assert_eq!(mock.hits(), 1);
}

mod redis_backend {
    //! Activation with several instances on one Redis: the first use is recorded in the shared
    //! store, so every instance expires the key at the same moment.
    use super::*;
    use crate::support::{redis_cleanup, redis_prefix, redis_url};

    #[tokio::test]
    async fn expiry_and_activation_shared_by_instances() {
        let prefix = redis_prefix();
        let mock = MockUpstream::start().await;
        let store = format!(
            "store: {{ backend: redis, url: \"{}\", prefix: \"{prefix}\" }}\n",
            redis_url()
        );
        let keys = [
            key_line("trial", "activate_for: 1s"),
            key_line("old", "expires_at: 2020-01-01T00:00:00Z"),
        ];
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let a = relay(&mock, &keys, &store).await;
        let b = relay(&mock, &keys, &store).await;

        assert_refused(send(&b, "old", &[], BODY).await, 401, "authentication_error").await;
        // First use on A only.
        assert_passes(send(&a, "trial", &[], BODY).await).await;
        tokio::time::sleep(Duration::from_millis(2100)).await;
        // B never saw the key, yet knows it was activated on A more than a second ago.
        let msg = assert_refused(send(&b, "trial", &[], BODY).await, 401, "authentication_error").await;
        assert_eq!(msg, "API key has expired");
        assert_refused(send(&a, "trial", &[], BODY).await, 401, "authentication_error").await;
        // A restarted instance still knows the first use.
        drop(a);
        let c = relay(&mock, &keys, &store).await;
        assert_refused(send(&c, "trial", &[], BODY).await, 401, "authentication_error").await;
        assert_eq!(mock.hits(), 1);
        assert_eq!(rejections(&b, "expired_key").await, 2);

        drop(b);
        drop(c);
        tokio::time::sleep(Duration::from_millis(100)).await;
        redis_cleanup(&prefix).await;
    }
}
