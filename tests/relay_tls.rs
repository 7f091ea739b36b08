//! The relay's HTTPS upstream path through the real binary, as the real Anthropic API is reached:
//! TLS with the base URL's host as SNI, certificate verification against the trust store
//! (`SSL_CERT_FILE` replaces the system store), ALPN `h2` and HTTP/2 on the wire, for console
//! accounts and for subscription (OAuth) accounts whose token refresh also goes over HTTPS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;

use reqwest::Version;
use serde_json::{Value, json};
use support::mock::{MockUpstream, Seen, json_for, stream_for};
use support::oauth_mock::{MockOAuth, OAUTH_BETA};
use support::serve::TestCa;
use support::{ALICE, RelayProcess, account_yaml, client};

const BODY_STREAM: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const BODY_JSON: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
const IMPORT: &str = "/admin/api/accounts/claude-oauth/import";

/// A relay whose trust store is only the CA certificate(s) in `ca_file`.
async fn relay_trusting(ca_file: &Path, extra: &str) -> RelayProcess {
    let ca = ca_file.to_str().unwrap();
    RelayProcess::start_in(tempfile::tempdir().unwrap(), extra, &[("SSL_CERT_FILE", ca)]).await
}

/// `POST /v1/messages` through the relay with the client key, as the SDKs send it.
async fn post_messages(relay: &RelayProcess, body: &'static str) -> reqwest::Response {
    post_messages_with(relay, &[], body).await
}

/// [`post_messages`] with `headers` added (the mock's `x-mock-*` steering).
async fn post_messages_with(relay: &RelayProcess, headers: &[(&str, &str)], body: &'static str) -> reqwest::Response {
    let mut rb = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .header("anthropic-version", "2023-06-01");
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.body(body).send().await.unwrap()
}

fn console_account(mock: &MockUpstream) -> String {
    format!("accounts:\n{}", account_yaml("main", &mock.url(), ""))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The request reached the mock over HTTP/2 with `:authority` = the base URL's host and port
/// (Pingora turns the `Host` header into `:authority` on HTTP/2).
fn assert_h2_to(s: &Seen, port: u16, log: &str) {
    assert_eq!(s.version, Version::HTTP_2, "ALPN h2 expected; relay log:\n{log}");
    let expected = format!("localhost:{port}");
    assert_eq!(s.authority.as_deref(), Some(expected.as_str()), "{:?}", s.headers);
    if let Some(host) = s.header("host") {
        assert_eq!(host, expected, "a Host header next to :authority must agree with it");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_account_over_https_speaks_h2_byte_identical_with_credentials_swapped() {
    let ca = TestCa::new();
    let mock = MockUpstream::start_tls(&ca).await;
    let port = mock.addr.port();
    assert_eq!(mock.url(), format!("https://localhost:{port}"));
    let relay = relay_trusting(ca.ca_path(), &console_account(&mock)).await;

    let r = client()
        .post(format!("{}/api/v1/messages?beta=true", relay.base()))
        .header("x-api-key", ALICE)
        .header("authorization", format!("Bearer {ALICE}"))
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "claude-code-20250219,interleaved-thinking-2025-05-14")
        .header("x-claude-code-session-id", "sess-1")
        .header("x-unknown-header", "kept")
        .header("accept-encoding", "gzip, br")
        .body(BODY_STREAM)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.bytes().await.unwrap();
    assert_eq!(
        status,
        200,
        "{}; relay log:\n{}",
        String::from_utf8_lossy(&body),
        relay.log_text()
    );
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(headers["request-id"], "req_mock");
    assert_eq!(&body[..], &stream_for("claude-sonnet-4-5", false)[..]);

    let r = post_messages(&relay, BODY_JSON).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["request-id"], "req_mock");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json_for("claude-sonnet-4-5"));

    let seen = mock.seen();
    assert_eq!(seen.len(), 2);
    let log = relay.log_text();
    for s in &seen {
        assert_h2_to(s, port, &log);
        assert_eq!(s.method, "POST");
        assert_eq!(s.header("x-api-key").as_deref(), Some("sk-ant-api03-upstream-main"));
        assert_eq!(
            s.header("authorization"),
            None,
            "client credentials must not travel upstream"
        );
        assert_eq!(s.header("anthropic-version").as_deref(), Some("2023-06-01"));
        assert_eq!(s.header("accept-encoding").as_deref(), Some("identity"));
        for hop in ["connection", "keep-alive", "transfer-encoding", "upgrade"] {
            assert_eq!(s.header(hop), None, "{hop} is not allowed on HTTP/2");
        }
    }
    let s = &seen[0];
    assert_eq!(s.path_and_query, "/v1/messages?beta=true");
    assert_eq!(
        s.header("anthropic-beta").as_deref(),
        Some("claude-code-20250219,interleaved-thinking-2025-05-14")
    );
    assert_eq!(s.header("x-claude-code-session-id").as_deref(), Some("sess-1"));
    assert_eq!(s.header("x-unknown-header").as_deref(), Some("kept"));
    assert_eq!(&s.body[..], BODY_STREAM.as_bytes(), "body must pass untouched");
    let s = &seen[1];
    assert_eq!(s.path_and_query, "/v1/messages");
    assert_eq!(&s.body[..], BODY_JSON.as_bytes(), "body must pass untouched");
}

/// Requests in flight together share one HTTP/2 connection to the upstream instead of a TLS
/// connection each, and every one of them is answered in full. The burst reaches a cold
/// upstream: the requests that arrive while the first connection is still in its handshake wait
/// for it and share it rather than open connections of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_streams_opens_one_upstream_h2_connection_and_shares_it() {
    let ca = TestCa::new();
    let mock = MockUpstream::start_tls(&ca).await;
    let relay = relay_trusting(ca.ca_path(), &console_account(&mock)).await;

    const N: usize = 24;
    // About 13 writes 40 ms apart: the streams overlap for about half a second.
    let slow = [("x-mock-chunk", "100"), ("x-mock-chunk-delay-ms", "40")];
    let burst = || {
        futures_util::future::join_all((0..N).map(|_| async {
            let r = post_messages_with(&relay, &slow, BODY_STREAM).await;
            (r.status(), r.text().await.unwrap())
        }))
    };
    let started = std::time::Instant::now();
    let answers = burst().await;
    let elapsed = started.elapsed();
    for (status, text) in &answers {
        assert_eq!(*status, 200, "{text}");
        assert!(text.contains("message_stop"), "incomplete stream: {text}");
    }
    // Overlapping: all of them together took far less than one after the other.
    assert!(elapsed < std::time::Duration::from_secs(4), "{elapsed:?}");
    let log = relay.log_text();
    // One connection, or two when a request looked in the pool in the instant another had taken
    // the connection out to open its stream; one per stream in flight without sharing.
    let cold = mock.connections();
    assert!(
        cold <= 2,
        "{cold} upstream connections for {N} streams in flight; relay log:\n{log}"
    );

    // A second burst finds the pooled connection(s) and opens none.
    for (status, text) in burst().await {
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("message_stop"), "incomplete stream: {text}");
    }
    let log = relay.log_text();
    assert!(
        mock.connections() <= cold + 1,
        "{} upstream connections after a second burst; relay log:\n{log}",
        mock.connections()
    );
    let seen = mock.seen();
    assert_eq!(seen.len(), 2 * N);
    for s in &seen {
        assert_h2_to(s, mock.addr.port(), &log);
    }
}

/// When the connection a burst waits for cannot be opened, the requests that waited fail over
/// at once instead of each trying the unreachable upstream again in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_a_connection_that_fails_fail_over_at_once() {
    let ca = TestCa::new();
    let mock = MockUpstream::start_tls(&ca).await;
    // Accepts TCP connections and never answers the TLS handshake.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    let config = format!(
        "timeouts: {{ connect: 1s }}\naccounts:\n{}{}",
        account_yaml("silent", &format!("https://localhost:{silent_port}"), ", priority: 1"),
        account_yaml("main", &mock.url(), ", priority: 2"),
    );
    let relay = relay_trusting(ca.ca_path(), &config).await;

    const N: usize = 8;
    let started = std::time::Instant::now();
    let answers = futures_util::future::join_all((0..N).map(|_| async {
        let r = post_messages(&relay, BODY_JSON).await;
        (r.status(), r.text().await.unwrap())
    }))
    .await;
    let elapsed = started.elapsed();
    let log = relay.log_text();
    for (status, text) in &answers {
        assert_eq!(*status, 200, "{text}\n{log}");
    }
    assert_eq!(
        mock.seen().len(),
        N,
        "every request failed over to the reachable account"
    );
    // One handshake attempt for the whole burst, and one connect timeout of waiting, not N.
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "{log}");
    assert!(elapsed < std::time::Duration::from_secs(3), "{elapsed:?}\n{log}");
}

/// A client that stops reading a long answer does not hold up the other streams of its HTTP/2
/// connection: the data waiting for it fills its own stream's window, never the connection's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_stall_its_connections_other_streams() {
    let ca = TestCa::new();
    let mock = MockUpstream::start_tls(&ca).await;
    let relay = relay_trusting(ca.ca_path(), &console_account(&mock)).await;
    assert_eq!(post_messages(&relay, BODY_JSON).await.status(), 200);

    // 24 MB of events: more than the stream's window (8 MiB) and the sockets' buffers together.
    let stalled = post_messages_with(&relay, &[("x-mock-padding", "24000000")], BODY_STREAM).await;
    assert_eq!(stalled.status(), 200);
    // Not read: give the upstream time to fill everything that can be filled.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    let started = std::time::Instant::now();
    let other = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let r = post_messages(&relay, BODY_STREAM).await;
        (r.status(), r.text().await.unwrap())
    })
    .await
    .unwrap_or_else(|_| panic!("the second stream stalled; relay log:\n{}", relay.log_text()));
    assert_eq!(other.0, 200);
    assert!(other.1.contains("message_stop"), "{}", other.1);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Both streams were on the one connection.
    assert_eq!(mock.connections(), 1);
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_certificate_from_an_untrusted_ca_is_refused() {
    let ca = TestCa::new();
    let mock = MockUpstream::start_tls(&ca).await;
    // The trust store is another CA only, so nothing on the system can vouch for the mock.
    let other = TestCa::new();
    let relay = relay_trusting(other.ca_path(), &console_account(&mock)).await;

    for body in [BODY_JSON, BODY_STREAM] {
        let r = post_messages(&relay, body).await;
        let status = r.status();
        let source = r.headers().get("x-relay-error-source").cloned();
        let text = r.text().await.unwrap();
        assert_eq!(status, 502, "{text}; relay log:\n{}", relay.log_text());
        assert_eq!(source.as_ref().and_then(|v| v.to_str().ok()), Some("relay"), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(v["type"], "error", "{text}");
        assert_eq!(v["error"]["type"], "api_error", "{text}");
    }
    assert_eq!(mock.hits(), 0, "no request may pass an unverified TLS handshake");
    let log = relay.log_text();
    assert!(
        log.contains("invalid peer certificate") && log.contains("SNI: localhost"),
        "the relay refused the certificate itself; log:\n{log}"
    );
}

/// The Anthropic provider section with every URL on the mock (HTTPS), the background refresher
/// and usage polling out of the way.
fn oauth_config(mock: &MockOAuth) -> String {
    format!(
        "providers:\n  anthropic:\n    api_base: \"{}\"\n    oauth:\n      authorize_url: \"{}\"\n      token_url: \"{}\"\n      profile_url: \"{}\"\n      usage_url: \"{}\"\n      refresh_check: 1h\n      usage_poll: 0\n",
        mock.url(),
        mock.authorize_url(),
        mock.token_url(),
        mock.profile_url(),
        mock.usage_url()
    )
}

fn bearer(s: &Seen) -> Option<String> {
    s.header("authorization")
        .and_then(|v| v.strip_prefix("Bearer ").map(String::from))
}

fn has_oauth_beta(s: &Seen) -> bool {
    s.headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|f| f.trim() == OAUTH_BETA)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_oauth_token_is_refreshed_over_https_and_the_new_bearer_goes_over_h2() {
    let ca = TestCa::new();
    let mock = MockOAuth::start_tls(&ca).await;
    let port = mock.addr.port();
    let https = format!("https://localhost:{port}");
    for url in [
        mock.url(),
        mock.authorize_url(),
        mock.token_url(),
        mock.profile_url(),
        mock.usage_url(),
    ] {
        assert!(url.starts_with(&https), "{url}");
    }
    let relay = relay_trusting(ca.ca_path(), &oauth_config(&mock)).await;

    let (old_access, old_refresh, _) = mock.issue_tokens(3600);
    let r = client()
        .post(format!("{}{IMPORT}", relay.admin()))
        .bearer_auth(relay.admin_token().await)
        .json(
            &json!({"name": "tls-sub", "access_token": old_access, "refresh_token": old_refresh,
                      "expires_at": now_ms() - 60_000}),
        )
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 201, "{text}; relay log:\n{}", relay.log_text());

    let r = post_messages(&relay, BODY_JSON).await;
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}; relay log:\n{}", relay.log_text());
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json_for("claude-sonnet-4-5")
    );

    assert_eq!(mock.refresh_count(), 1, "exactly one refresh");
    let refreshes: Vec<_> = mock
        .token_requests()
        .into_iter()
        .filter(|t| t.grant_type == "refresh_token")
        .collect();
    assert_eq!(refreshes.len(), 1);
    assert_eq!(refreshes[0].status, 200, "{}", refreshes[0].body);
    assert_eq!(
        refreshes[0].field("refresh_token").as_deref(),
        Some(old_refresh.as_str())
    );
    let new_access = mock.latest_access_token().unwrap();
    assert_ne!(new_access, old_access);

    // A streamed request on the renewed token needs no further refresh.
    let r = post_messages(&relay, BODY_STREAM).await;
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    assert_eq!(&body[..], &stream_for("claude-sonnet-4-5", false)[..]);
    assert_eq!(mock.refresh_count(), 1, "a renewed token is not renewed again");

    let messages = mock.messages();
    assert_eq!(messages.len(), 2, "no request was refused and retried");
    let log = relay.log_text();
    for m in &messages {
        assert_h2_to(m, port, &log);
        assert_eq!(bearer(m).as_deref(), Some(new_access.as_str()), "{:?}", m.headers);
        assert!(has_oauth_beta(m), "{:?}", m.headers);
        assert_eq!(m.header("x-api-key"), None);
    }
    assert!(mock.unknown_requests().is_empty(), "{:?}", mock.unknown_requests());
}
