//! The relay core through real interfaces: the `claude-relay` binary on random ports, a mock
//! Anthropic upstream on a socket, real HTTP clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;
use support::{client, metric};

use std::time::{Duration, Instant};

use support::mock::{MockUpstream, json_for, stream_for};
use support::{ALICE, RelayProcess, account_yaml, eventually};

const BODY_STREAM: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const BODY_JSON: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;

async fn relay_with(mock: &MockUpstream, extra: &str) -> RelayProcess {
    RelayProcess::start(&format!("accounts:\n{}{extra}", account_yaml("main", &mock.url(), ""))).await
}

#[tokio::test]
async fn streams_byte_identical_with_credentials_swapped() {
    let mock = MockUpstream::start().await;
    let relay = relay_with(&mock, "").await;
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
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(r.headers()["request-id"], "req_mock");
    let body = r.bytes().await.unwrap();
    assert_eq!(&body[..], &stream_for("claude-sonnet-4-5", false)[..]);

    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.path_and_query, "/v1/messages?beta=true");
    assert_eq!(s.header("x-api-key").as_deref(), Some("sk-ant-api03-upstream-main"));
    assert_eq!(
        s.header("authorization"),
        None,
        "client credentials must not travel upstream"
    );
    assert_eq!(
        s.header("anthropic-beta").as_deref(),
        Some("claude-code-20250219,interleaved-thinking-2025-05-14")
    );
    assert_eq!(s.header("anthropic-version").as_deref(), Some("2023-06-01"));
    assert_eq!(s.header("x-claude-code-session-id").as_deref(), Some("sess-1"));
    assert_eq!(s.header("x-unknown-header").as_deref(), Some("kept"));
    assert_eq!(s.header("accept-encoding").as_deref(), Some("identity"));
    assert_eq!(&s.body[..], BODY_STREAM.as_bytes(), "body must pass untouched");
}

#[tokio::test]
async fn every_prefix_and_key_location_works() {
    let mock = MockUpstream::start().await;
    let relay = relay_with(&mock, "").await;
    let c = client();
    for prefix in ["", "/api", "/claude"] {
        let r = c
            .post(format!("{}{prefix}/v1/messages", relay.base()))
            .bearer_auth(ALICE)
            .body(BODY_JSON)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "prefix {prefix:?}");
    }
    for (h, v) in [("x-goog-api-key", ALICE.to_string()), ("api-key", ALICE.to_string())] {
        let r = c
            .post(format!("{}/v1/messages", relay.base()))
            .header(h, v)
            .body(BODY_JSON)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{h}");
    }
    let r = c
        .post(format!("{}/v1/messages?key={ALICE}&beta=true", relay.base()))
        .body(BODY_JSON)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let last = mock.seen().pop().unwrap();
    assert_eq!(
        last.path_and_query, "/v1/messages?beta=true",
        "the relay key must not travel in the query"
    );
    assert_eq!(mock.hits(), 6);
}

#[tokio::test]
async fn non_streaming_answer_and_count_tokens() {
    let mock = MockUpstream::start().await;
    let relay = relay_with(&mock, "").await;
    let r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .body(BODY_JSON)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v, json_for("claude-sonnet-4-5"));

    let r = client()
        .post(format!("{}/api/v1/messages/count_tokens", relay.base()))
        .header("x-api-key", ALICE)
        .body(r#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["input_tokens"], 42);
    assert_eq!(mock.seen()[1].path_and_query, "/v1/messages/count_tokens");
}

#[tokio::test]
async fn refusals_are_anthropic_shaped_and_never_reach_the_upstream() {
    let mock = MockUpstream::start().await;
    let relay = relay_with(&mock, "max_body_bytes: 100000\n").await;
    let c = client();
    let url = format!("{}/v1/messages", relay.base());
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (c.post(&url).body(BODY_JSON), 401, "authentication_error"),
        (
            c.post(&url)
                .header("x-api-key", "cr_wrong_key_0000000000")
                .body(BODY_JSON),
            401,
            "authentication_error",
        ),
        (
            c.post(&url).header("x-api-key", ALICE).body("{not json"),
            400,
            "invalid_request_error",
        ),
        (
            c.post(&url).header("x-api-key", ALICE).body(r#"{"messages":[]}"#),
            400,
            "invalid_request_error",
        ),
        (
            c.post(&url).header("x-api-key", ALICE).body("[1,2]"),
            400,
            "invalid_request_error",
        ),
        (
            c.post(&url).header("x-api-key", ALICE).body("x".repeat(200_000)),
            413,
            "request_too_large",
        ),
        (
            c.post(format!("{}/v1/nothing", relay.base()))
                .header("x-api-key", ALICE),
            404,
            "not_found_error",
        ),
        (c.get(&url).header("x-api-key", ALICE), 405, "invalid_request_error"),
    ];
    for (req, status, kind) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status);
        assert_eq!(r.headers()["x-relay-error-source"], "relay");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], kind, "{v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(mock.hits(), 0, "no refusal may contact the upstream");
    // A streamed (chunked, no content-length) oversized body is refused too, once the relay has
    // read past the limit.
    let big = futures_util::stream::iter((0..11).map(|_| Ok::<_, std::io::Error>(vec![b' '; 10_000])));
    let r = c
        .post(&url)
        .header("x-api-key", ALICE)
        .body(reqwest::Body::wrap_stream(big))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let text = metric(&relay, "relay_rejections_total{reason=\"invalid_key\"}").await;
    assert_eq!(text, Some(1.0));
}

#[tokio::test]
async fn upstream_trouble_maps_to_502_503_504_and_errors_pass_through() {
    // No account serves the model: 503.
    let relay = RelayProcess::start("").await;
    let r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .body(BODY_JSON)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-relay-error-source"], "relay");
    assert!(r.headers().contains_key("retry-after"));
    drop(relay);

    // Unreachable upstream: 502.
    // Port 1 on loopback: nothing listens there, so connections are refused at once.
    let dead = "http://127.0.0.1:1".to_string();
    let relay = RelayProcess::start(&format!("accounts:\n{}", account_yaml("dead", &dead, ""))).await;
    let r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .body(BODY_JSON)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "api_error");
    drop(relay);

    // Slow upstream: 504 after the response-head timeout.
    let mock = MockUpstream::start().await;
    let relay = relay_with(&mock, "timeouts: { response_head: 1s }\n").await;
    let t = Instant::now();
    let r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .header("x-mock-delay-ms", "5000")
        .body(BODY_JSON)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(t.elapsed() < Duration::from_secs(4));

    // An upstream error is passed through with its status, retry-after and body.
    let r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .header("x-mock-status", "429")
        .body(BODY_JSON)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    assert_eq!(r.headers()["x-relay-error-source"], "upstream");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["request_id"], "req_mock");
}

#[tokio::test]
async fn a_connect_failure_moves_to_the_next_account() {
    let mock = MockUpstream::start().await;
    // Port 1 on loopback: nothing listens there, so connections are refused at once.
    let dead = "http://127.0.0.1:1".to_string();
    let extra = format!(
        "accounts:\n{}{}",
        account_yaml("first", &dead, ", priority: 1"),
        account_yaml("second", &mock.url(), ", priority: 2")
    );
    let relay = RelayProcess::start(&extra).await;
    let r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .body(BODY_STREAM)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        &r.bytes().await.unwrap()[..],
        &stream_for("claude-sonnet-4-5", false)[..]
    );
    assert_eq!(
        mock.seen()[0].header("x-api-key").as_deref(),
        Some("sk-ant-api03-upstream-second")
    );
}

#[tokio::test]
async fn model_map_rewrites_only_the_model_and_the_client_sees_its_own_name() {
    let mock = MockUpstream::start().await;
    let relay = relay_with(&mock, "").await;
    drop(relay);
    let extra = format!(
        "accounts:\n{}",
        account_yaml(
            "main",
            &mock.url(),
            ", model_map: { claude-sonnet-4-5: claude-sonnet-4-5-20250929 }"
        )
    );
    let relay = RelayProcess::start(&extra).await;
    let body = r#"{"model":"claude-sonnet-4-5", "stream":true,"messages":[{"role":"system","content":"sys"},{"role":"user","content":"hi"}],"unknown_field":{"model":"x"}}"#;
    let r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = r.bytes().await.unwrap();
    assert_eq!(
        &got[..],
        &stream_for("claude-sonnet-4-5", false)[..],
        "the client sees the name it asked for"
    );
    let sent = &mock.seen()[0].body;
    assert_eq!(
        String::from_utf8_lossy(sent),
        body.replacen("\"claude-sonnet-4-5\"", "\"claude-sonnet-4-5-20250929\"", 1),
        "only the top-level model changes"
    );
    let r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .body(BODY_JSON)
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["model"], "claude-sonnet-4-5");
    assert_eq!(mock.seen()[1].json()["model"], "claude-sonnet-4-5-20250929");
    // Usage is recorded under the upstream model, which the price table knows.
    let out = eventually(|| async {
        metric(
            &relay,
            "relay_tokens_total{kind=\"output\",model=\"claude-sonnet-4-5-20250929\"}",
        )
        .await
        .filter(|v| *v >= 14.0)
    })
    .await;
    assert_eq!(out, 14.0);
}

#[tokio::test]
async fn recorded_client_requests_replay_untouched() {
    let mock = MockUpstream::start().await;
    let relay = relay_with(&mock, "").await;
    let c = client();
    let mut replayed = 0;
    for name in [
        "claude",
        "claude-tool",
        "claude-interactive-tui",
        "sdk-anthropic",
        "sdk-anthropic-bearer",
    ] {
        for (method, path, query, headers, body) in support::fixture(name) {
            if method != "POST" || !path.ends_with("/v1/messages") && !path.ends_with("/count_tokens") {
                continue;
            }
            let body = body.unwrap();
            let mut url = format!("{}{path}", relay.base());
            if !query.is_empty() {
                url.push('?');
                url.push_str(
                    &query
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join("&"),
                );
            }
            let mut req = c.post(&url);
            for (k, v) in &headers {
                let k = k.to_ascii_lowercase();
                if ["host", "content-length", "connection", "x-api-key", "authorization"].contains(&k.as_str())
                    || k.starts_with("x-mock")
                {
                    continue;
                }
                req = req.header(&k, v);
            }
            let had_bearer = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
            req = if had_bearer {
                req.bearer_auth(ALICE)
            } else {
                req.header("x-api-key", ALICE)
            };
            let r = req.body(body.clone()).send().await.unwrap();
            assert_eq!(r.status(), 200, "{name} {path}");
            let _ = r.bytes().await.unwrap();
            let seen = mock.seen().pop().unwrap();
            assert_eq!(seen.body.len(), body.len(), "{name}: body length");
            assert!(seen.body == body.as_bytes(), "{name}: body must pass byte for byte");
            for (k, v) in &headers {
                let k = k.to_ascii_lowercase();
                if k.starts_with("anthropic-")
                    || k.starts_with("x-stainless-")
                    || k == "user-agent"
                    || k == "x-app"
                    || k == "x-claude-code-session-id"
                {
                    assert_eq!(seen.header(&k).as_deref(), Some(v.as_str()), "{name}: header {k}");
                }
            }
            assert_eq!(seen.header("x-api-key").as_deref(), Some("sk-ant-api03-upstream-main"));
            replayed += 1;
        }
    }
    assert!(replayed >= 6, "replayed only {replayed} recorded requests");
}

#[tokio::test]
async fn local_endpoints_answer_without_upstream() {
    let mock = MockUpstream::start().await;
    let relay = relay_with(&mock, "").await;
    let c = client();
    for p in ["/", "/api"] {
        let r = c.head(format!("{}{p}", relay.base())).send().await.unwrap();
        assert_eq!(r.status(), 200, "HEAD {p}");
    }
    let r = c.get(format!("{}/v1/models", relay.base())).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{}/api/v1/models", relay.base()))
        .header("x-api-key", ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["has_more"], false);
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"claude-sonnet-4-5"), "{ids:?}");
    assert!(v["data"][0]["type"] == "model");
    assert_eq!(mock.hits(), 0);
}

#[tokio::test]
async fn large_bodies_and_expect_continue() {
    let mock = MockUpstream::start().await;
    let relay = relay_with(&mock, "").await;
    for size in [70_000usize, 1_100_000, 5_000_000] {
        let filler = "a".repeat(size);
        let body = format!(
            r#"{{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{{"role":"user","content":"{filler}"}}]}}"#
        );
        let t = Instant::now();
        // curl sends Expect: 100-continue for large bodies; do the same by hand.
        let r = client()
            .post(format!("{}/v1/messages", relay.base()))
            .header("x-api-key", ALICE)
            .header("expect", "100-continue")
            .body(body.clone())
            .send()
            .await;
        let r = r.unwrap();
        assert_eq!(r.status(), 200, "size {size}");
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "size {size} took {:?}",
            t.elapsed()
        );
        assert_eq!(mock.seen().pop().unwrap().body.len(), body.len());
    }
}

#[tokio::test]
async fn usage_is_recorded_per_key_account_and_model_with_cost() {
    let mock = MockUpstream::start().await;
    let relay = relay_with(&mock, "").await;
    for body in [BODY_STREAM, BODY_JSON] {
        let r = client()
            .post(format!("{}/v1/messages", relay.base()))
            .header("x-api-key", ALICE)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
    }
    let input = eventually(|| async {
        metric(&relay, "relay_tokens_total{kind=\"input\",model=\"claude-sonnet-4-5\"}")
            .await
            .filter(|v| *v >= 42.0)
    })
    .await;
    assert_eq!(input, 42.0);
    assert_eq!(
        metric(
            &relay,
            "relay_tokens_total{kind=\"output\",model=\"claude-sonnet-4-5\"}"
        )
        .await,
        Some(14.0)
    );
    assert_eq!(
        metric(
            &relay,
            "relay_tokens_total{kind=\"cache_read\",model=\"claude-sonnet-4-5\"}"
        )
        .await,
        Some(6.0)
    );
    assert_eq!(
        metric(
            &relay,
            "relay_tokens_total{kind=\"cache_write_5m\",model=\"claude-sonnet-4-5\"}"
        )
        .await,
        Some(10.0)
    );
    // 2 × (21×3e-6 + 7×15e-6 + 3×0.3e-6 + 5×3.75e-6) = 2 × 187.65e-6 USD = 375,300 nano-USD
    assert_eq!(
        metric(&relay, "relay_cost_nano_usd_total{model=\"claude-sonnet-4-5\"}").await,
        Some(375_300.0)
    );
    assert!(metric(&relay, "relay_requests_total{endpoint=\"messages\",status=\"200\"}").await == Some(2.0));
    let text = client()
        .get(format!("{}/metrics", relay.admin()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "relay_upstream_duration_seconds_bucket",
        "relay_upstream_ttfb_seconds_bucket",
        "relay_overhead_seconds_bucket",
        "relay_in_flight_requests",
        "relay_store_duration_seconds_bucket",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
    // The binary's allocator (jemalloc) reports its heap: live objects, their pages, the pages
    // in RAM.
    let allocator = |kind: &str| {
        support::metric_in(&text, &format!("relay_allocator_bytes{{kind=\"{kind}\"}} "))
            .unwrap_or_else(|| panic!("no allocator figure {kind}:\n{text}"))
    };
    let (allocated, active, resident) = (allocator("allocated"), allocator("active"), allocator("resident"));
    assert!(allocated > 1e6, "allocated {allocated}");
    assert!(
        active >= allocated && resident >= active,
        "{allocated} {active} {resident}"
    );
    assert!(allocator("retained") >= 0.0);
}

/// Reads the persisted usage totals of a stopped relay's embedded store.
async fn stored_totals(
    dir: &std::path::Path,
) -> std::collections::BTreeMap<String, claude_relay::store::UsageCounters> {
    use claude_relay::store::{Dimension, Store, embedded::EmbeddedStore};
    let store = EmbeddedStore::open(&dir.join("data")).unwrap();
    store.usage_totals(Dimension::Key).await.unwrap()
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_is_still_billed_for_what_was_seen() {
    let mock = MockUpstream::start().await;
    let mut relay = relay_with(&mock, "").await;
    let mut r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .header("x-mock-chunk", "400")
        .header("x-mock-chunk-delay-ms", "300")
        .body(BODY_STREAM)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("message_start"));
    drop(r); // the client goes away after message_start
    let input =
        eventually(|| async { metric(&relay, "relay_tokens_total{kind=\"input\",model=\"claude-sonnet-4-5\"}").await })
            .await;
    assert_eq!(input, 21.0, "input tokens of message_start are counted");
    relay.stop();
    let totals = stored_totals(relay.dir.path()).await;
    let alice = &totals["config.alice"];
    assert_eq!(
        (alice.requests, alice.input_tokens, alice.cache_read_tokens),
        (1, 21, 3)
    );
}

/// A relay that stopped the normal way: `main` returned 0 after the last statistics were written,
/// and the pid file is gone.
fn assert_stopped_cleanly(relay: &RelayProcess, status: std::process::ExitStatus) {
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", relay.log_text());
    let log = relay.log_text();
    let (flushed, stopped) = (
        log.find("writing the last usage statistics"),
        log.rfind("claude-relay stopped"),
    );
    assert!(
        flushed.is_some() && flushed < stopped,
        "no clean stop in the log:\n{log}"
    );
    assert!(
        !relay.dir.path().join("data").join("claude-relay.pid").exists(),
        "pid file left behind"
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_streams_keeps_their_usage_and_exits_once_drained() {
    let mock = MockUpstream::start().await;
    // A long grace period: the relay must still exit as soon as the last stream is done.
    let mut relay = relay_with(&mock, "shutdown_grace: 600s\n").await;
    let url = format!("{}/v1/messages", relay.base());
    let slow = tokio::spawn(async move {
        let r = client()
            .post(url)
            .header("x-api-key", ALICE)
            .header("x-mock-chunk", "100")
            .header("x-mock-chunk-delay-ms", "100")
            .body(BODY_STREAM)
            .send()
            .await
            .unwrap();
        r.bytes().await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    relay.signal("TERM");
    // New connections are refused while the stream finishes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", relay.port)).await.is_err(),
        "listener still open"
    );
    assert!(relay.try_wait().is_none(), "exited with a stream in flight");
    let body = slow.await.unwrap();
    let stream_done = t.elapsed();
    assert_eq!(
        &body[..],
        &stream_for("claude-sonnet-4-5", false)[..],
        "the in-flight stream completes"
    );
    let status = relay.wait();
    let exited = t.elapsed();
    assert_stopped_cleanly(&relay, status);
    assert!(exited < Duration::from_secs(5), "exit took {exited:?}");
    eprintln!("busy relay: stream done {stream_done:?} after SIGTERM, exit {exited:?} after SIGTERM");
    let totals = stored_totals(relay.dir.path()).await;
    let alice = &totals["config.alice"];
    assert_eq!((alice.requests, alice.input_tokens, alice.output_tokens), (1, 21, 7));
    assert!(alice.cost_nanos > 0);
}

#[tokio::test]
async fn an_idle_relay_stops_at_once_on_sigterm() {
    let mut relay = RelayProcess::start("shutdown_grace: 600s\n").await;
    let t = Instant::now();
    let status = relay.stop();
    let took = t.elapsed();
    assert_stopped_cleanly(&relay, status);
    eprintln!("idle relay: exit {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(2), "exit took {took:?}");
}

/// A stream still running at the end of the grace period is cut; the relay then exits 0 at once,
/// and the usage the stream had shown (its `message_start`, the first 433 bytes) is written
/// before it does.
#[tokio::test]
async fn a_stream_still_running_at_the_end_of_the_grace_period_is_cut_and_billed() {
    let mock = MockUpstream::start().await;
    let mut relay = relay_with(&mock, "shutdown_grace: 1s\n").await;
    let mut r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .header("x-mock-stall-after", "600")
        .body(BODY_STREAM)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("message_start"));
    let t = Instant::now();
    relay.signal("TERM");
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        let mut n = 0;
        while let Ok(Some(c)) = r.chunk().await {
            n += c.len();
        }
        n
    })
    .await
    .expect("the stalled stream was not cut");
    let cut = t.elapsed();
    let status = relay.wait();
    let exited = t.elapsed();
    assert_stopped_cleanly(&relay, status);
    assert!(
        cut >= Duration::from_millis(900),
        "cut after {cut:?}, before the grace period ended"
    );
    assert!(exited < Duration::from_secs(4), "exit took {exited:?}");
    assert!(first.len() + rest <= 600, "{rest} more bytes after the stall");
    let totals = stored_totals(relay.dir.path()).await;
    let alice = &totals["config.alice"];
    assert_eq!(
        (alice.requests, alice.input_tokens, alice.cache_read_tokens),
        (1, 21, 3),
        "{alice:?}"
    );
}

/// SIGINT stops at once, also while SIGTERM's grace period waits for a request.
#[tokio::test]
async fn sigint_during_the_grace_period_stops_at_once() {
    let mock = MockUpstream::start().await;
    let mut relay = relay_with(&mock, "shutdown_grace: 600s\n").await;
    let mut r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .header("x-mock-stall-after", "600")
        .body(BODY_STREAM)
        .send()
        .await
        .unwrap();
    let _ = r.chunk().await.unwrap().unwrap();
    relay.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(relay.try_wait().is_none(), "exited with a stream in flight");
    let t = Instant::now();
    relay.signal("INT");
    let status = relay.wait();
    assert_stopped_cleanly(&relay, status);
    assert!(t.elapsed() < Duration::from_secs(3), "exit took {:?}", t.elapsed());
    let totals = stored_totals(relay.dir.path()).await;
    assert_eq!(totals["config.alice"].requests, 1);
}

#[test]
fn bad_config_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (yaml, needle) in [
        ("listen: nowhere\n", "listen"),
        (
            "accounts:\n  - { name: a, kind: claude-console }\n",
            "accounts[0].api_key",
        ),
        (
            "accounts:\n  - { name: a, kind: claude-console, api_key: k, priority: high }\n",
            "accounts[0].priority",
        ),
        ("nonsense_key: 1\n", "nonsense_key"),
        (
            "api_keys:\n  - { name: a, key: ${RELAY_TEST_UNSET_VAR} }\n",
            "RELAY_TEST_UNSET_VAR",
        ),
        (
            "store: { backend: redis, url: \"redis://127.0.0.1:6379\" }\n",
            "secret_key",
        ),
    ] {
        let conf = dir.path().join("bad.yaml");
        std::fs::write(&conf, yaml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_claude-relay"))
            .args(["--config", conf.to_str().unwrap(), "check-config"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{yaml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "`{yaml}` → {err}");
    }
}

/// The one established connection accepted on `port` (127.0.0.1): the relay's end of it (its
/// address) and the TCP segments with data it has brought, from `ss -ti` (iproute2), which
/// reads the kernel's `TCP_INFO` counters without unsafe code.
fn upstream_connection(port: u16) -> (String, u32) {
    let out = std::process::Command::new("ss")
        .args(["-tinH", "state", "established", &format!("( sport = :{port} )")])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    let local = format!("127.0.0.1:{port}");
    let peers: Vec<&str> = words.windows(2).filter(|w| w[0] == local).map(|w| w[1]).collect();
    let counts: Vec<u32> = words
        .iter()
        .filter_map(|w| w.strip_prefix("data_segs_in:"))
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        peers.len() == 1 && counts.len() == 1,
        "one connection to the upstream: {text}"
    );
    (peers[0].to_string(), counts[0])
}

#[tokio::test]
async fn an_upstream_request_leaves_in_one_write_and_its_connection_serves_the_next() {
    let mock = MockUpstream::start().await;
    let relay = relay_with(&mock, "").await;
    let large = format!(
        r#"{{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "b".repeat(200_000)
    );
    let c = client();
    let mut last: Option<(String, u32)> = None;
    for body in [
        BODY_JSON.to_string(),
        large,
        BODY_STREAM.replace("\"stream\":true", "\"stream\":false"),
    ] {
        let r = c
            .post(format!("{}/v1/messages", relay.base()))
            .header("x-api-key", ALICE)
            .header("anthropic-version", "2023-06-01")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let answer: serde_json::Value = r.json().await.unwrap();
        assert_eq!(answer["usage"]["input_tokens"], 21);
        assert_eq!(
            mock.seen().pop().unwrap().body,
            body.as_bytes(),
            "the body arrives whole and untouched"
        );
        let (peer, segments) = upstream_connection(mock.addr.port());
        if let Some((last_peer, last_segments)) = &last {
            assert_eq!(&peer, last_peer, "the connection is kept between requests");
            // The head and the body leave in one write: a small request arrives in one segment
            // (loopback's hold 64 KB), where a write for the head and one for the body make two.
            if body.len() < 1000 {
                assert_eq!(
                    segments - last_segments,
                    1,
                    "segments of a request of {} bytes",
                    body.len()
                );
            }
        } else {
            assert_eq!(segments, 1, "segments of the first request");
        }
        last = Some((peer, segments));
    }
    assert_eq!(mock.seen().len(), 3);
}
