#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The gateway contract: what Anthropic's documentation of LLM gateways asks of a gateway in front
//! of Claude Code ("Gateway protocol reference" and "Roll out an LLM gateway" in the Claude Code
//! docs), one test per requirement, through the real relay binary and the real Claude Code.
//!
//! Claude Code is the release `scripts/install-clients.sh` pins (`CLAUDE_CODE_VERSION`; the README
//! says which one the suite was last checked with); `RELAY_CLAUDE_CODE=/path/to/claude` runs the
//! suite against another build, so a new release is checked by running this file alone:
//! `RELAY_CLAUDE_CODE=… cargo nextest run --test gateway_contract`.
//!
//! | requirement (Anthropic's wording, shortened)                         | test |
//! |----------------------------------------------------------------------|------|
//! | `/v1/messages` matched on the path (`?beta=true`), `count_tokens`    | `claude_codes_requests_reach_the_upstream_as_it_sent_them`, `count_tokens_and_the_probes` |
//! | forward `anthropic-beta` / `anthropic-version` verbatim; headers and body fields as open lists; the system attribution block untouched | `claude_codes_requests_reach_the_upstream_as_it_sent_them` |
//! | the connectivity probes (`HEAD /`, `HEAD /api/hello`) answered       | `count_tokens_and_the_probes` |
//! | stream as the events arrive, pings and comment lines included, `content-type` kept | `streams_are_relayed_as_they_arrive_pings_and_comments_included` |
//! | return upstream errors unmodified (Claude Code's recovery matches their wording); `retry-after` and the rate-limit headers kept | `upstream_errors_and_rate_limit_headers_reach_the_client_unmodified` |
//! | model discovery: `GET /v1/models?limit=1000`, Anthropic's shape, either credential header, no redirect, under 3 s | `model_discovery_in_anthropics_shape` |
//! | session and agent headers readable for attribution (usage per session) | `claude_codes_requests_reach_the_upstream_as_it_sent_them` |
//! | the client's own credentials forwarded (pass-through), the relay key in a custom header | `pass_through_forwards_claude_codes_own_token_and_never_the_relay_key` |

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::clients::{self, clean_env, key_usage, keys_yaml, new_key, run};
use support::mock::MockUpstream;
use support::tee::{RawRequest, Tee};
use support::{RelayProcess, client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The Claude Code release this suite was last checked with (`scripts/install-clients.sh`).
const CLAUDE_CODE_VERSION: &str = "2.1.332";

/// The upstream credential of the console account.
const UPSTREAM_KEY: &str = "sk-ant-api03-upstream-account-key";

/// Request headers the relay replaces or rebuilds by design: the credential (the relay key is
/// swapped for the account's), framing, and the encoding (the usage reader needs plain bytes).
const REBUILT: [&str; 7] = [
    "x-api-key",
    "authorization",
    "host",
    "content-length",
    "accept-encoding",
    "connection",
    "transfer-encoding",
];

fn claude_code() -> PathBuf {
    match std::env::var_os("RELAY_CLAUDE_CODE") {
        Some(p) => PathBuf::from(p),
        None => clients::node_client("claude", "Claude Code", CLAUDE_CODE_VERSION),
    }
}

/// `claude -p <prompt> --output-format json` against `base` with a fresh home directory.
fn claude_cmd(home: &Path, base: &str, env: &[(&str, &str)], prompt: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(claude_code());
    clean_env(&mut cmd);
    for (k, _) in std::env::vars() {
        if k.starts_with("ANTHROPIC_") || k.starts_with("CLAUDE_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(home)
        .env("HOME", home)
        .env("ANTHROPIC_BASE_URL", base)
        .env("DISABLE_TELEMETRY", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("DISABLE_ERROR_REPORTING", "1")
        .env("CLAUDE_CODE_MAX_RETRIES", "1")
        .args(["-p", prompt, "--output-format", "json"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs Claude Code and returns its JSON result (panicking with the transcript when it has none).
async fn claude(home: &Path, base: &str, env: &[(&str, &str)], prompt: &str) -> Value {
    let out = run(claude_cmd(home, base, env, prompt), "Claude Code").await;
    let line = out.stdout.lines().rev().find(|l| l.trim_start().starts_with('{'));
    match line.and_then(|l| serde_json::from_str::<Value>(l).ok()) {
        Some(v) => v,
        None => panic!("Claude Code printed no JSON result\n{}", out.transcript()),
    }
}

fn console_account(mock: &MockUpstream) -> String {
    format!(
        "accounts:\n  - {{ name: console, kind: claude-console, base_url: \"{}\", api_key: {UPSTREAM_KEY} }}\n",
        mock.url()
    )
}

/// The requests of `tee` that are inference calls.
fn messages(requests: &[RawRequest]) -> Vec<&RawRequest> {
    requests
        .iter()
        .filter(|r| r.method == "POST" && r.target.split('?').next() == Some("/v1/messages"))
        .collect()
}

#[tokio::test]
async fn claude_codes_requests_reach_the_upstream_as_it_sent_them() {
    let mock = MockUpstream::start().await;
    let key = new_key();
    let relay = RelayProcess::start(&format!("{}{}", keys_yaml(&[("dev", &key)]), console_account(&mock))).await;
    let tee = Tee::start(([127, 0, 0, 1], relay.port).into()).await;
    let home = tempfile::tempdir().unwrap();

    let result = claude(home.path(), &tee.url(), &[("ANTHROPIC_API_KEY", &key)], "say hi").await;
    assert_eq!(result["is_error"], false, "{result:#}");
    assert_eq!(result["result"], "Hello from mock upstream!", "{result:#}");

    let sent = tee.requests();
    // The connection-warming probe reached the relay and was answered by it.
    assert!(
        sent.iter().any(|r| r.method == "HEAD"),
        "no probe: {:?}",
        sent.iter().map(|r| &r.target).collect::<Vec<_>>()
    );
    let sent = messages(&sent);
    let seen = mock.seen();
    assert!(!sent.is_empty(), "Claude Code sent no /v1/messages request");
    assert_eq!(sent.len(), seen.len(), "every inference call reached the upstream once");
    for (client, upstream) in sent.iter().zip(&seen) {
        // Matched on the path; the query (`?beta=true`) goes on as it came.
        assert_eq!(upstream.path_and_query, client.target);
        // The body, byte for byte: unknown fields, the `system` array with the attribution block
        // first and on its own, cache breakpoints, `metadata`.
        assert_eq!(
            upstream.body.as_ref(),
            client.body.as_slice(),
            "the body changed on its way"
        );
        let body: Value = serde_json::from_slice(&client.body).unwrap();
        if let Some(first) = body["system"].as_array().and_then(|s| s.first()) {
            assert!(
                first["text"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("x-anthropic-billing-header"),
                "the attribution block is the first system entry: {first}"
            );
        }
        // Every header Claude Code sent, with its value, except the ones the relay rebuilds by
        // design: an open list, whatever a new release adds.
        for (name, value) in &client.headers {
            if REBUILT.contains(&name.as_str()) {
                continue;
            }
            assert_eq!(
                upstream.header(name).as_deref(),
                Some(value.as_str()),
                "header {name} did not reach the upstream as sent"
            );
        }
        for name in ["anthropic-beta", "anthropic-version", "x-claude-code-session-id"] {
            assert!(client.header(name).is_some(), "Claude Code no longer sends {name}");
        }
        // The account's credential replaced the relay key, which went nowhere.
        assert_eq!(upstream.header("x-api-key").as_deref(), Some(UPSTREAM_KEY));
        assert_eq!(upstream.header("authorization"), None);
        for (name, value) in &upstream.headers {
            assert!(
                !value.to_str().unwrap_or("").contains(&key),
                "the relay key reached the upstream in {name}"
            );
        }
    }
    // Attribution: the relay counted the calls against the key, and against Claude Code's
    // session (`x-claude-code-session-id`, the main agent: no agent header in `-p` mode).
    let usage = key_usage(&relay, &[("dev", sent.len() as u64)]).await;
    assert!(usage["config.dev"]["output_tokens"].as_u64().unwrap() > 0, "{usage:#}");
    let session = sent[0].header("x-claude-code-session-id").unwrap().to_string();
    assert_eq!(result["session_id"], session.as_str());
    let token = relay.admin_token().await;
    let url = format!("{}/admin/api/keys/config.dev/sessions/{session}", relay.admin());
    let s: Value = support::eventually(|| async {
        let r = client().get(&url).bearer_auth(&token).send().await.unwrap();
        if r.status() != 200 {
            return None;
        }
        let v: Value = r.json().await.unwrap();
        (v["totals"]["requests"].as_u64() == Some(sent.len() as u64)).then_some(v)
    })
    .await;
    assert_eq!(s["main"]["requests"].as_u64(), Some(sent.len() as u64), "{s:#}");
    assert!(s["totals"]["cost_nanos"].as_u64().unwrap() > 0, "{s:#}");
}

#[tokio::test]
async fn count_tokens_and_the_probes() {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&console_account(&mock)).await;
    // The connection probes carry no credential; any quick answer will do, and the relay's
    // never reaches an upstream.
    for path in ["/", "/api", "/api/hello"] {
        let started = Instant::now();
        let r = client().head(format!("{}{path}", relay.base())).send().await.unwrap();
        assert_eq!(r.status(), 200, "HEAD {path}");
        assert!(started.elapsed() < Duration::from_secs(1), "HEAD {path} was slow");
    }
    assert_eq!(mock.hits(), 0);
    // count_tokens is relayed like messages, query included.
    let r = client()
        .post(format!("{}/v1/messages/count_tokens?beta=true", relay.base()))
        .header("x-api-key", support::ALICE)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "token-counting-2024-11-01")
        .body(r#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"input_tokens": 42}));
    let seen = mock.seen().pop().unwrap();
    assert_eq!(seen.path_and_query, "/v1/messages/count_tokens?beta=true");
    assert_eq!(
        seen.header("anthropic-beta").as_deref(),
        Some("token-counting-2024-11-01")
    );
}

/// An upstream that answers every request with `parts`, each written after its pause, as one
/// chunked SSE response.
async fn paced_upstream(parts: Vec<(Duration, &'static str)>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let parts = parts.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                // Head and the whole body (content-length) before answering.
                loop {
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n\
                            cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for (pause, part) in parts {
                    tokio::time::sleep(pause).await;
                    let chunk = format!("{:x}\r\n{part}\r\n", part.len());
                    if sock.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let _ = sock.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn streams_are_relayed_as_they_arrive_pings_and_comments_included() {
    let start = concat!(
        "event: message_start\n",
        r#"data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"usage":{"input_tokens":10,"output_tokens":1}}}"#,
        "\n\n",
        "event: ping\ndata: {\"type\": \"ping\"}\n\n",
        ": a comment line keeps the connection warm\n\n",
    );
    let rest = concat!(
        "event: content_block_start\n",
        r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        "\n\n",
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"late"}}"#,
        "\n\n",
        "event: ping\ndata: {\"type\": \"ping\"}\n\n",
        "event: content_block_stop\n",
        r#"data: {"type":"content_block_stop","index":0}"#,
        "\n\n",
        "event: message_delta\n",
        r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":3}}"#,
        "\n\n",
        "event: message_stop\n",
        r#"data: {"type":"message_stop"}"#,
        "\n\n",
    );
    let pause = Duration::from_millis(1500);
    let upstream = paced_upstream(vec![(Duration::ZERO, start), (pause, rest)]).await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n  - {{ name: paced, kind: claude-console, base_url: \"http://{upstream}\", api_key: {UPSTREAM_KEY} }}\n"
    ))
    .await;
    let sent_at = Instant::now();
    let mut r = client()
        .post(format!("{}/v1/messages?beta=true", relay.base()))
        .header("x-api-key", support::ALICE)
        .header("anthropic-version", "2023-06-01")
        .header("accept", "application/json")
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/event-stream; charset=utf-8",
        "content-type kept"
    );
    // The first events arrive while the upstream is still thinking: nothing is buffered.
    let mut got = Vec::new();
    while got.len() < start.len() {
        let chunk = r.chunk().await.unwrap().expect("the stream ended early");
        got.extend_from_slice(&chunk);
    }
    assert!(
        sent_at.elapsed() < pause,
        "the first events waited for the rest of the stream ({:?})",
        sent_at.elapsed()
    );
    while let Some(chunk) = r.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(
        String::from_utf8(got).unwrap(),
        format!("{start}{rest}"),
        "pings and comment lines are relayed byte for byte"
    );
}

#[tokio::test]
async fn upstream_errors_and_rate_limit_headers_reach_the_client_unmodified() {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&console_account(&mock)).await;
    let post = |body: &'static str| {
        client()
            .post(format!("{}/v1/messages?beta=true", relay.base()))
            .header("x-api-key", support::ALICE)
            .header("anthropic-version", "2023-06-01")
            .body(body)
            .send()
    };
    const BODY: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
    // The wording Claude Code's automatic recovery matches on must arrive as the upstream wrote
    // it: a prompt too long (auto-compact), a rejected thinking field, a capability token.
    for error in [
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 212345 tokens > 200000 maximum"},"request_id":"req_011"}"#,
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"thinking: Input tag 'adaptive' found using 'type' does not match any of the expected tags"},"request_id":"req_012"}"#,
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"capability_rejected: prompt_too_long"},"request_id":"req_013"}"#,
    ] {
        mock.set_status(Some(400));
        mock.set_error_body(error);
        let r = post(BODY).await.unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["request-id"], "req_mock");
        assert_eq!(r.headers()["x-relay-error-source"], "upstream");
        assert_eq!(r.text().await.unwrap(), error, "the error body was rewritten");
    }
    // A rate limit: status, body, retry-after and the unified quota headers Claude Code uses to
    // tell a plan limit from a throttle.
    let reset = (chrono::Utc::now().timestamp() + 3600).to_string();
    let unified = [
        ("anthropic-ratelimit-unified-status", "rejected"),
        ("anthropic-ratelimit-unified-reset", reset.as_str()),
        ("anthropic-ratelimit-unified-representative-claim", "five_hour"),
        ("anthropic-ratelimit-unified-5h-utilization", "1.0"),
    ];
    let limited = r#"{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed your account's rate limit. Please try again later."},"request_id":"req_014"}"#;
    mock.set_status(Some(429));
    mock.set_error_body(limited);
    mock.set_headers(&unified);
    let r = post(BODY).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    for (name, value) in unified {
        assert_eq!(r.headers()[name], value, "{name}");
    }
    assert_eq!(r.text().await.unwrap(), limited);
    // On success too, the quota headers reach Claude Code (it warns near a limit).
    let mock2 = MockUpstream::start().await;
    let relay2 = RelayProcess::start(&console_account(&mock2)).await;
    let allowed = [
        ("anthropic-ratelimit-unified-status", "allowed_warning"),
        ("anthropic-ratelimit-unified-5h-utilization", "0.96"),
    ];
    let r = client()
        .post(format!("{}/v1/messages", relay2.base()))
        .header("x-api-key", support::ALICE)
        .header("anthropic-version", "2023-06-01")
        .header("x-mock-answer-header", format!("{}={}", allowed[0].0, allowed[0].1))
        .header("x-mock-answer-header", format!("{}={}", allowed[1].0, allowed[1].1))
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for (name, value) in allowed {
        assert_eq!(r.headers()[name], value, "{name}");
    }

    // Claude Code itself shows the upstream's words (on the second relay: the first one's
    // account is parked until the window above resets).
    let home = tempfile::tempdir().unwrap();
    mock2.set_status(Some(400));
    mock2.set_error_body(
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"messages.0: the upstream's own words"},"request_id":"req_015"}"#,
    );
    let result = claude(
        home.path(),
        &relay2.base(),
        &[("ANTHROPIC_API_KEY", support::ALICE)],
        "hi",
    )
    .await;
    assert_eq!(result["is_error"], true, "{result:#}");
    assert!(
        result["result"]
            .as_str()
            .unwrap_or("")
            .contains("the upstream's own words"),
        "{result:#}"
    );
}

#[tokio::test]
async fn model_discovery_in_anthropics_shape() {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n  - {{ name: console, kind: claude-console, base_url: \"{}\", api_key: {UPSTREAM_KEY}, models: [claude-sonnet-4-6, claude-opus-4-8] }}\n",
        mock.url()
    ))
    .await;
    // Exactly one credential header, either one; no redirect; well within 3 s.
    for (name, value) in [
        ("x-api-key", support::ALICE.to_string()),
        ("authorization", format!("Bearer {}", support::ALICE)),
    ] {
        let started = Instant::now();
        let r = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .get(format!("{}/v1/models?limit=1000", relay.base()))
            .header(name, &value)
            .header("anthropic-version", "2023-06-01")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        assert!(started.elapsed() < Duration::from_secs(1));
        let v: Value = r.json().await.unwrap();
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["claude-opus-4-8", "claude-sonnet-4-6"], "{v:#}");
        for m in v["data"].as_array().unwrap() {
            assert_eq!(m["type"], "model");
            assert!(m["display_name"].is_string() && m["created_at"].is_string(), "{m}");
        }
        assert_eq!(v["has_more"], false);
        assert_eq!(v["first_id"], "claude-opus-4-8");
        assert_eq!(v["last_id"], "claude-sonnet-4-6");
    }
    assert_eq!(mock.hits(), 0, "the relay answers discovery itself");

    // Claude Code asks for them when discovery is on, and keeps what it found.
    let tee = Tee::start(([127, 0, 0, 1], relay.port).into()).await;
    let home = tempfile::tempdir().unwrap();
    let result = claude(
        home.path(),
        &tee.url(),
        &[
            ("ANTHROPIC_API_KEY", support::ALICE),
            ("CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY", "1"),
            ("ANTHROPIC_MODEL", "claude-sonnet-4-6"),
        ],
        "say hi",
    )
    .await;
    assert_eq!(result["is_error"], false, "{result:#}");
    let sent = tee.requests();
    let discovery = sent
        .iter()
        .find(|r| r.method == "GET" && r.target.starts_with("/v1/models"))
        .unwrap_or_else(|| {
            panic!(
                "no discovery call: {:?}",
                sent.iter().map(|r| &r.target).collect::<Vec<_>>()
            )
        });
    assert_eq!(discovery.target, "/v1/models?limit=1000");
    let cache = home.path().join(".claude/cache/gateway-models.json");
    let cached = support::eventually(|| async { std::fs::read_to_string(&cache).ok() }).await;
    assert!(cached.contains("claude-opus-4-8"), "{cached}");
}

#[tokio::test]
async fn pass_through_forwards_claude_codes_own_token_and_never_the_relay_key() {
    let mock = MockUpstream::start().await;
    let (member, only) = (new_key(), new_key());
    let relay = RelayProcess::start(&format!(
        "api_keys:\n  - {{ name: member, key: {member} }}\n  - {{ name: only, key: {only}, passthrough_only: true }}\n\
         accounts:\n  - {{ name: byo, kind: claude-passthrough, base_url: \"{}\" }}\n",
        mock.url()
    ))
    .await;
    let tee = Tee::start(([127, 0, 0, 1], relay.port).into()).await;
    let home = tempfile::tempdir().unwrap();
    // The team member's own subscription token (as after `claude setup-token`), the relay key in
    // a custom header.
    let own = "sk-ant-oat01-the-members-own-subscription-token";
    let relay_header = format!("x-relay-key: {member}");
    let result = claude(
        home.path(),
        &tee.url(),
        &[
            ("ANTHROPIC_AUTH_TOKEN", own),
            ("ANTHROPIC_CUSTOM_HEADERS", &relay_header),
        ],
        "say hi",
    )
    .await;
    assert_eq!(result["is_error"], false, "{result:#}");
    let sent = tee.requests();
    let sent = messages(&sent);
    let seen = mock.seen();
    assert!(!seen.is_empty());
    assert_eq!(sent.len(), seen.len());
    for (client, upstream) in sent.iter().zip(&seen) {
        assert_eq!(client.header("x-relay-key"), Some(member.as_str()));
        assert_eq!(upstream.header("authorization"), Some(format!("Bearer {own}")));
        assert_eq!(upstream.header("x-relay-key"), None);
        assert_eq!(upstream.body.as_ref(), client.body.as_slice());
        assert_eq!(
            upstream.header("anthropic-beta").as_deref(),
            client.header("anthropic-beta")
        );
        for (name, value) in &upstream.headers {
            assert!(
                !value.to_str().unwrap_or("").contains(&member),
                "relay key upstream in {name}"
            );
        }
    }
    // Limits, statistics and cost work as for any key: counted against the member's relay key.
    let usage = key_usage(&relay, &[("member", sent.len() as u64)]).await;
    assert!(usage["config.member"]["cost_nanos"].as_u64().unwrap() > 0, "{usage:#}");
    // Nothing of the member's token is kept: not in the store, not in the log.
    assert!(!relay.log_text().contains(own));
    let mut dirs = vec![relay.dir.path().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                assert!(
                    !bytes.windows(own.len()).any(|w| w == own.as_bytes()),
                    "{} holds the client's token",
                    path.display()
                );
            }
        }
    }

    // An API key works the same way (x-api-key).
    let r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-relay-key", &member)
        .header("x-api-key", "sk-ant-api03-the-members-own-key")
        .header("anthropic-version", "2023-06-01")
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let last = mock.seen().pop().unwrap();
    assert_eq!(
        last.header("x-api-key").as_deref(),
        Some("sk-ant-api03-the-members-own-key")
    );
    assert_eq!(last.header("authorization"), None);

    // Without credentials of its own a pass-through request is refused before any upstream.
    let hits = mock.hits();
    let r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-relay-key", &member)
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error", "{v}");
    // A pass-through-only key is refused as an ordinary key; an ordinary request never reaches a
    // pass-through account (it has no credential to forward).
    let r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", &only)
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("x-relay-key"), "{v}");
    let r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", &member)
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "no account for an ordinary request");
    assert_eq!(mock.hits(), hits);
    // The upstream's refusal of the member's own token is the member's: passed through, and the
    // account stays in service for the others.
    mock.set_status(Some(401));
    let r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-relay-key", &only)
        .header("authorization", "Bearer sk-ant-oat01-expired")
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["x-relay-error-source"], "upstream");
    mock.set_status(None);
    let r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-relay-key", &only)
        .header("authorization", "Bearer sk-ant-oat01-valid")
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the account was not benched by another member's 401");
}

#[tokio::test]
async fn pass_through_accounts_are_added_through_the_admin_api() {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start("").await;
    let admin = support::admin::Admin::login(&relay).await;
    // A credential does not apply to the kind.
    let a = admin
        .post(
            "/admin/api/accounts",
            json!({"name": "byo", "kind": "claude-passthrough", "base_url": mock.url(), "api_key": "sk-ant-x"}),
        )
        .await;
    support::admin::assert_400(&a, "api_key");
    let a = admin
        .post(
            "/admin/api/accounts",
            json!({"name": "byo", "kind": "claude-passthrough", "base_url": mock.url()}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.json["kind"], "claude-passthrough");
    assert!(a.json.get("api_key").is_none_or(Value::is_null), "{}", a.text);
    // It serves pass-through requests (once the snapshot has it) and nothing else.
    let send = |relay_key: bool| {
        let mut r = client()
            .post(format!("{}/v1/messages", relay.base()))
            .header("authorization", "Bearer sk-ant-oat01-own")
            .body(r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}"#);
        if relay_key {
            r = r.header("x-relay-key", support::ALICE);
        }
        r.send()
    };
    support::eventually(|| async { (send(true).await.unwrap().status() == 200).then_some(()) }).await;
    assert_eq!(mock.seen().pop().unwrap().bearer().as_deref(), Some("sk-ant-oat01-own"));
    // Without x-relay-key the bearer is taken for the relay key: it is no relay key.
    assert_eq!(send(false).await.unwrap().status(), 401);
    // It cannot become another kind.
    let id = a.json["id"].as_str().unwrap();
    let a = admin
        .call(
            reqwest::Method::PATCH,
            &format!("/admin/api/accounts/{id}"),
            Some(json!({"kind": "claude-console", "api_key": "sk-ant-x"})),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.text);
}
