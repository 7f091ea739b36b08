//! What a hostile key holder or a stranger on the network can do to the relay listener, through
//! the real binary: bounded client input, compressed bodies, classification that one client
//! cannot abuse, loops and denied upstream addresses, slow clients, secrets in trace logs,
//! Pingora-level errors in the client's shape, pipelining.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::mock::MockUpstream;
use support::{ALICE, RelayProcess, account_yaml, client, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BOB: &str = "cr_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn keys_yaml() -> String {
    format!("api_keys:\n  - {{ name: alice, key: {ALICE} }}\n  - {{ name: bob, key: {BOB} }}\n")
}

fn messages(model: &str) -> Value {
    json!({"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
}

async fn post(relay: &RelayProcess, key: &str, body: &Value, extra: &[(&str, &str)]) -> (u16, Value) {
    let mut req = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(body);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The health state of every account, by name, as the admin API shows it.
async fn account_states(relay: &RelayProcess) -> Vec<(String, String)> {
    let token = relay.admin_token().await;
    let v: Value = client()
        .get(format!("{}/admin/api/accounts", relay.admin()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["health"]["state"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn absurd_model_names_are_refused_and_unknown_ones_stay_bounded_in_statistics() {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!("accounts:\n{}", account_yaml("main", &mock.url(), ""))).await;

    // An 8 MB name: refused before any upstream sees it, in Anthropic's shape.
    let (status, body) = post(&relay, ALICE, &messages(&"m".repeat(8 << 20)), &[]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, _) = post(&relay, ALICE, &messages("claude sonnet\n"), &[]).await;
    assert_eq!(status, 400);
    assert_eq!(mock.hits(), 0);

    // Names nobody knows: at most 100 a day become statistics dimensions; the rest go to `other`.
    for i in 0..110 {
        let (status, _) = post(&relay, ALICE, &messages(&format!("made-up-model-{i}")), &[]).await;
        assert_eq!(status, 200);
    }
    let token = relay.admin_token().await;
    let models = eventually(|| {
        let (url, token) = (format!("{}/admin/api/usage/summary", relay.admin()), token.clone());
        async move {
            let v: Value = client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let total = v["totals"]["requests"].as_u64()?;
            (total >= 110).then(|| v["by_dimension"]["model"].as_object().unwrap().clone())
        }
    })
    .await;
    assert_eq!(models.len(), 101, "{:?}", models.keys().collect::<Vec<_>>());
    assert_eq!(models["other"]["requests"], 10);
    assert!(models.contains_key("made-up-model-0"));
    assert!(!models.contains_key("made-up-model-109"));
}

#[tokio::test]
async fn compressed_request_bodies_are_decoded_or_refused_clearly() {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!("accounts:\n{}", account_yaml("main", &mock.url(), ""))).await;
    let plain = serde_json::to_vec(&messages("claude-sonnet-4-5")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    let mut br = Vec::new();
    brotli::CompressorWriter::new(&mut br, 4096, 5, 22)
        .write_all(&plain)
        .unwrap();

    let send = |encoding: &'static str, body: Vec<u8>| {
        let url = format!("{}/v1/messages", relay.base());
        async move {
            let r = client()
                .post(url)
                .header("x-api-key", ALICE)
                .header("content-type", "application/json")
                .header("content-encoding", encoding)
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    for (encoding, body) in [("gzip", gz.clone()), ("zstd", zst), ("br", br)] {
        let (status, answer) = send(encoding, body).await;
        assert_eq!(status, 200, "{encoding}: {answer}");
        let seen = mock.seen().pop().unwrap();
        assert_eq!(seen.json(), messages("claude-sonnet-4-5"), "{encoding}");
        assert_eq!(seen.header("content-encoding"), None, "{encoding}");
    }
    let hits = mock.hits();
    // A body that is not what its header says, and an encoding the relay does not decode.
    let (status, answer) = send("gzip", plain.clone()).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"].as_str().unwrap().contains("gzip"),
        "{answer}"
    );
    let (status, answer) = send("compress", gz).await;
    assert_eq!(status, 415, "{answer}");
    assert_eq!(answer["type"], "error");
    assert_eq!(mock.hits(), hits);
}

#[tokio::test]
async fn upstream_organization_headers_do_not_reach_clients() {
    let mock = MockUpstream::start().await;
    mock.set_headers(&[
        ("anthropic-organization-id", "org-secret-tenant"),
        ("set-cookie", "__cf_bm=abc; path=/"),
    ]);
    let relay = RelayProcess::start(&format!("accounts:\n{}", account_yaml("main", &mock.url(), ""))).await;
    for stream in [false, true] {
        let mut body = messages("claude-sonnet-4-5");
        body["stream"] = json!(stream);
        let r = client()
            .post(format!("{}/v1/messages", relay.base()))
            .header("x-api-key", ALICE)
            .header("x-mock-answer-header", "anthropic-organization-id=org-secret-tenant")
            .header("x-mock-answer-header", "set-cookie=__cf_bm=abc; path=/")
            .header("x-mock-answer-header", "x-upstream-note=kept")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers().get("anthropic-organization-id").is_none(),
            "stream={stream}"
        );
        assert!(r.headers().get("set-cookie").is_none(), "stream={stream}");
        assert_eq!(r.headers()["x-upstream-note"], "kept");
    }
    // Refusals replayed from the upstream are cleaned the same way.
    let r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .header("x-mock-status", "400")
        .json(&messages("claude-sonnet-4-5"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("anthropic-organization-id").is_none());
}

#[tokio::test]
async fn one_keys_request_problem_does_not_bench_shared_accounts() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let relay = RelayProcess::start(&format!(
        "{}accounts:\n{}{}",
        keys_yaml(),
        account_yaml("first", &a.url(), ", priority: 1"),
        account_yaml("second", &b.url(), ", priority: 2"),
    ))
    .await;
    // A header the upstream reacts to makes every account answer 529: the request's problem.
    let (status, body) = post(
        &relay,
        ALICE,
        &messages("claude-sonnet-4-5"),
        &[("x-mock-status", "529")],
    )
    .await;
    assert_eq!(status, 529, "{body}");
    assert_eq!((a.hits(), b.hits()), (1, 1), "tried on the next account, then answered");
    for (name, state) in account_states(&relay).await {
        assert_eq!(state, "active", "{name} must stay in the pool");
    }
    let (status, _) = post(&relay, BOB, &messages("claude-sonnet-4-5"), &[]).await;
    assert_eq!(status, 200, "another key is served");
    assert_eq!(a.hits(), 2, "by the first account, still in the pool");

    // The same with a single account and a 5xx the request provokes.
    let solo = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!(
        "{}accounts:\n{}",
        keys_yaml(),
        account_yaml("solo", &solo.url(), "")
    ))
    .await;
    let (status, _) = post(
        &relay,
        ALICE,
        &messages("claude-sonnet-4-5"),
        &[("x-mock-status", "500")],
    )
    .await;
    assert_eq!(status, 500);
    let (status, _) = post(&relay, BOB, &messages("claude-sonnet-4-5"), &[]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_failing_account_is_benched_on_evidence_from_two_keys() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_status(Some(529));
    let relay = RelayProcess::start(&format!(
        "{}accounts:\n{}{}",
        keys_yaml(),
        account_yaml("broken", &a.url(), ", priority: 1"),
        account_yaml("healthy", &b.url(), ", priority: 2"),
    ))
    .await;
    // Alice's request fails on the broken account and is served by the next: one key's evidence.
    let (status, _) = post(&relay, ALICE, &messages("claude-sonnet-4-5"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(a.hits(), 1);
    assert!(account_states(&relay).await.iter().all(|(_, s)| s == "active"));
    // Alice again is no new evidence; Bob's request is.
    let (status, _) = post(&relay, ALICE, &messages("claude-sonnet-4-5"), &[]).await;
    assert_eq!(status, 200);
    let (status, _) = post(&relay, BOB, &messages("claude-sonnet-4-5"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(a.hits(), 3);
    let states = account_states(&relay).await;
    assert!(states.contains(&("broken".into(), "cooling_down".into())), "{states:?}");
    let (status, _) = post(&relay, ALICE, &messages("claude-sonnet-4-5"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(a.hits(), 3, "the benched account is skipped");
}

#[tokio::test]
async fn an_account_pointing_at_the_relay_is_stopped_as_a_loop() {
    let relay = RelayProcess::start("").await;
    let token = relay.admin_token().await;
    // The account's key is a valid client key of the relay itself.
    let r = client()
        .post(format!("{}/admin/api/accounts", relay.admin()))
        .bearer_auth(&token)
        .json(&json!({"name": "loop", "kind": "claude-console", "api_key": ALICE, "base_url": relay.base()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let started = Instant::now();
    let (status, body) = post(&relay, ALICE, &messages("claude-sonnet-4-5"), &[]).await;
    assert_eq!(status, 508, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already passed through")
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn denied_upstream_addresses_are_never_connected() {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!(
        "upstreams: {{ deny_addresses: [127.0.0.0/8, 169.254.0.0/16] }}\naccounts:\n{}",
        account_yaml("internal", &mock.url(), "")
    ))
    .await;
    let (status, body) = post(&relay, ALICE, &messages("claude-sonnet-4-5"), &[]).await;
    assert!(status == 502 || status == 503, "{status} {body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("denied"), "{body}");
    assert_eq!(mock.hits(), 0);

    // By default, cloud metadata addresses are denied.
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}",
        account_yaml("metadata", "http://169.254.169.254", "")
    ))
    .await;
    let started = Instant::now();
    let (status, body) = post(&relay, ALICE, &messages("claude-sonnet-4-5"), &[]).await;
    assert!(status == 502 || status == 503, "{status} {body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("denied"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused without trying to connect"
    );
}

/// Reads until the peer closes; the bytes read, and whether it closed within `within`.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_and_addresses_capped() {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!(
        "timeouts: {{ request_head: 1s, keepalive_idle: 1s, request_body_idle: 1s }}\nconnections: {{ per_ip: 8 }}\naccounts:\n{}",
        account_yaml("main", &mock.url(), "")
    ))
    .await;
    let addr = format!("127.0.0.1:{}", relay.port);

    // A head dripped byte by byte: cut at the head deadline although bytes keep coming.
    let mut drip = TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();
    let head = b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: ";
    let mut closed = false;
    for b in head.iter().cycle().take(40) {
        if drip.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut probe = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), drip.read(&mut probe)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "a dripped head must be cut");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    // An idle keep-alive connection after an answer: closed after keepalive_idle.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(
        closed && started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A body that stops arriving: 408 in the client's shape, then the connection closes.
    let mut body = TcpStream::connect(&addr).await.unwrap();
    body.write_all(
        format!("POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {ALICE}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"model\":")
            .as_bytes(),
    )
    .await
    .unwrap();
    let (answer, closed) = read_until_closed(&mut body, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"type\":\"error\""), "{text}");
    assert!(closed);
    assert_eq!(mock.hits(), 0);

    // Eight open connections from one address; the ninth is closed at once.
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
        held.push(s);
    }
    let mut ninth = TcpStream::connect(&addr).await.unwrap();
    let _ = ninth.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let (answer, closed) = read_until_closed(&mut ninth, Duration::from_millis(500)).await;
    assert!(closed && answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    drop(held);
    let counted = support::metric(&relay, "relay_connections_closed_total{reason=\"per_ip\"}").await;
    assert!(counted.unwrap_or(0.0) >= 1.0);
    // Once they are gone (cut as idle, or closed by us), the address may connect again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = client().get(format!("{}/health", relay.base())).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn two_thousand_dripping_connections_are_cut_and_their_memory_returned() {
    let relay = RelayProcess::start("timeouts: { request_head: 2s }\nconnections: { per_ip: 0 }\n").await;
    let addr = format!("127.0.0.1:{}", relay.port);
    let before = rss_kib(relay.pid());
    let mut conns = Vec::new();
    for _ in 0..2000 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-filler: ")
            .await
            .unwrap();
        conns.push(s);
    }
    let during = rss_kib(relay.pid());
    // All of them are cut by the head deadline, whatever the client does.
    let started = Instant::now();
    for s in conns.iter_mut() {
        let (_, closed) = read_until_closed(s, Duration::from_secs(6)).await;
        assert!(closed);
    }
    assert!(started.elapsed() < Duration::from_secs(8));
    drop(conns);
    // The allocator hands freed memory back to the system over some seconds (jemalloc's decay).
    let mut after = rss_kib(relay.pid());
    for _ in 0..60 {
        if after <= before + 24 * 1024 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = rss_kib(relay.pid());
    }
    eprintln!("relay RSS: before {before} KiB, with 2000 connections {during} KiB, after {after} KiB");
    assert!(
        after <= before + 24 * 1024,
        "memory must return: before {before} KiB, during {during} KiB, after {after} KiB"
    );
    let r = client().get(format!("{}/health", relay.base())).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn trace_logs_carry_no_client_or_upstream_key() {
    // One account over plain HTTP/1.1, one over HTTPS with HTTP/2 (its own log lines).
    let mock = MockUpstream::start().await;
    let ca = support::serve::TestCa::new();
    let tls_mock = MockUpstream::start_tls(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_in(
        dir,
        &format!(
            "api_keys:\n  - {{ name: alice, key: {ALICE} }}\n  - {{ name: bob, key: {BOB}, bind: tls }}\naccounts:\n{}{}",
            account_yaml("main", &mock.url(), ", priority: 1"),
            account_yaml("tls", &tls_mock.url(), ", priority: 2"),
        ),
        &[("RELAY_LOG", "trace"), ("SSL_CERT_FILE", ca.ca_path().to_str().unwrap())],
    )
    .await;
    let body = messages("claude-sonnet-4-5");
    client()
        .post(format!("{}/v1/messages?beta=true", relay.base()))
        .header("x-api-key", ALICE)
        .json(&body)
        .send()
        .await
        .unwrap();
    client()
        .post(format!("{}/v1/messages?key={ALICE}", relay.base()))
        .json(&body)
        .send()
        .await
        .unwrap();
    client()
        .post(format!("{}/v1/messages", relay.base()))
        .bearer_auth(ALICE)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(mock.hits(), 3);
    // Bob's key is bound to the HTTPS account.
    let r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", BOB)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(tls_mock.hits() >= 1, "the HTTPS account served");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = relay.log_text();
    assert!(log.contains("TRACE"), "the log runs at trace level");
    assert!(log.contains("[redacted]"), "trace lines show where secrets were");
    for secret in [&ALICE[3..], &BOB[3..], "upstream-main", "upstream-tls"] {
        assert!(!log.contains(secret), "`{secret}` reached the log");
    }
}

#[tokio::test]
async fn pingora_level_refusals_answer_in_the_clients_shape() {
    let relay = RelayProcess::start("").await;
    let addr = format!("127.0.0.1:{}", relay.port);

    // A malformed head (Pingora refuses it before any hook of ours runs).
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"POST /v1/messages HTTP/1.1\r\nbad header line\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    let json_start = text.find("\r\n\r\n").unwrap() + 4;
    let body: Value = serde_json::from_str(&text[json_start..]).unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    // CONNECT: 405 with Allow and a body.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 405"), "{text}");
    assert!(text.contains("\r\nallow: "), "{text}");
    assert!(text.contains("\"type\":\"error\""), "{text}");

    // A wrong method on a relay route: 405 with Allow.
    let r = client()
        .put(format!("{}/v1/messages", relay.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let r = client()
        .delete(format!("{}/v1/models", relay.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");
}

#[tokio::test]
async fn pipelined_requests_are_all_answered_in_order() {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!("accounts:\n{}", account_yaml("main", &mock.url(), ""))).await;
    let body = serde_json::to_string(&messages("claude-sonnet-4-5")).unwrap();
    let post = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {ALICE}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(format!("127.0.0.1:{}", relay.port)).await.unwrap();
    let batch = format!(
        "{post}GET /health HTTP/1.1\r\nhost: x\r\n\r\n{post}GET /nowhere HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    );
    s.write_all(batch.as_bytes()).await.unwrap();
    let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed);
    let text = String::from_utf8_lossy(&answer);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "200", "404"], "{text}");
    assert_eq!(mock.hits(), 2);
}
