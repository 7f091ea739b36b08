//! Scheduling, stickiness and failover across accounts, through the real binary and several mock
//! upstreams on sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;
use support::{client, metric};

use std::time::Duration;

use support::mock::{MockUpstream, stream_for};
use support::{ALICE, RelayProcess, account_yaml, eventually};

const BODY: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const OPUS: &str =
    r#"{"model":"claude-opus-4-1","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

async fn send(
    relay: &RelayProcess,
    key: &str,
    body: &str,
    session: Option<&str>,
) -> (u16, String, reqwest::header::HeaderMap) {
    let mut req = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", key)
        .body(body.to_string());
    if let Some(s) = session {
        req = req.header("x-claude-code-session-id", s);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.text().await.unwrap(), headers)
}

#[tokio::test]
async fn failover_moves_past_429_and_529_and_cools_the_accounts_down() {
    let (a, b, c) = (
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    );
    a.set_status(Some(429));
    b.set_status(Some(529));
    // One key's failure is enough evidence here (see security_relay for the default of two).
    let extra = format!(
        "scheduler: {{ failover: {{ evidence_keys: 1 }} }}\naccounts:\n{}{}{}",
        account_yaml("a", &a.url(), ", priority: 1"),
        account_yaml("b", &b.url(), ", priority: 2"),
        account_yaml("c", &c.url(), ", priority: 3")
    );
    let relay = RelayProcess::start(&extra).await;
    let (status, body, _) = send(&relay, ALICE, BODY, None).await;
    assert_eq!(status, 200);
    assert_eq!(body.as_bytes(), &stream_for("claude-sonnet-4-5", false)[..]);
    assert_eq!((a.hits(), b.hits(), c.hits()), (1, 1, 1));
    assert_eq!(metric(&relay, "relay_failovers_total{reason=\"429\"}").await, Some(1.0));
    assert_eq!(metric(&relay, "relay_failovers_total{reason=\"529\"}").await, Some(1.0));
    // Both refusing accounts are cooling down: the next requests go straight to c.
    for _ in 0..3 {
        assert_eq!(send(&relay, ALICE, BODY, None).await.0, 200);
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (1, 1, 4));
    let state = eventually(|| async {
        metric(&relay, "relay_account_state{account=\"b\",state=\"cooling_down\"}")
            .await
            .filter(|v| *v == 1.0)
    })
    .await;
    assert_eq!(state, 1.0);
}

#[tokio::test]
async fn when_every_account_refuses_the_client_gets_the_last_refusal_faithfully() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_status(Some(529));
    b.set_status(Some(429));
    let extra = format!(
        "scheduler: {{ failover: {{ evidence_keys: 1 }} }}\naccounts:\n{}{}",
        account_yaml("a", &a.url(), ", priority: 1"),
        account_yaml("b", &b.url(), ", priority: 2")
    );
    let relay = RelayProcess::start(&extra).await;
    let (status, body, headers) = send(&relay, ALICE, BODY, None).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "7");
    assert_eq!(headers["x-relay-error-source"], "upstream");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["request_id"], "req_mock");
    // Now both are cooling down: no account can serve.
    let (status, body, headers) = send(&relay, ALICE, BODY, None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["x-relay-error-source"], "relay");
    // b's 429 said 7 s, a's 529 parks it for minutes: the client is told when b returns.
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((6..=7).contains(&retry), "retry-after {retry}");
    assert_eq!((a.hits(), b.hits()), (1, 1));
}

#[tokio::test]
async fn unified_window_exhaustion_parks_only_the_limited_family_and_extra_usage_is_the_requests_problem() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let reset = (chrono::Utc::now().timestamp() + 3 * 3600).to_string();
    a.set_status(Some(429));
    a.set_headers(&[
        ("anthropic-ratelimit-unified-status", "rejected"),
        ("anthropic-ratelimit-unified-reset", &reset),
        ("anthropic-ratelimit-unified-representative-claim", "seven_day_opus"),
    ]);
    let extra = format!(
        "accounts:\n{}{}",
        account_yaml("a", &a.url(), ", priority: 1"),
        account_yaml("b", &b.url(), ", priority: 2")
    );
    let relay = RelayProcess::start(&extra).await;
    assert_eq!(send(&relay, ALICE, OPUS, None).await.0, 200, "opus fails over to b");
    assert_eq!((a.hits(), b.hits()), (1, 1));
    a.set_status(None);
    assert_eq!(send(&relay, ALICE, OPUS, None).await.0, 200);
    assert_eq!((a.hits(), b.hits()), (1, 2), "a stays parked for opus until the reset");
    assert_eq!(send(&relay, ALICE, BODY, None).await.0, 200);
    assert_eq!((a.hits(), b.hits()), (2, 2), "a still serves sonnet");
    let state = eventually(|| async {
        metric(&relay, "relay_account_state{account=\"a\",state=\"rate_limited\"}")
            .await
            .filter(|v| *v == 1.0)
    })
    .await;
    assert_eq!(state, 1.0);

    // A long-context request without extra usage: passed through, the account is not marked.
    b.set_status(Some(429));
    b.set_error_message("Extra usage is required for long context requests.");
    let (status, body, _) = send(&relay, ALICE, OPUS, None).await;
    assert_eq!(status, 429);
    assert!(body.contains("Extra usage"));
    b.set_status(None);
    assert_eq!(
        send(&relay, ALICE, OPUS, None).await.0,
        200,
        "b was not put out of the pool"
    );
}

/// A family Anthropic has not announced yet: the claim and the model name say it by the same
/// rule as `opus` and `sonnet`, and only that family is parked, for days if the reset says so.
#[tokio::test]
async fn a_window_of_a_family_never_seen_parks_that_family_only() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let reset = (chrono::Utc::now().timestamp() + 4 * 86_400).to_string();
    a.set_status(Some(429));
    a.set_headers(&[
        ("anthropic-ratelimit-unified-status", "rejected"),
        ("anthropic-ratelimit-unified-reset", &reset),
        ("anthropic-ratelimit-unified-representative-claim", "seven_day_mythos"),
    ]);
    let extra = format!(
        "accounts:\n{}{}",
        account_yaml("a", &a.url(), ", priority: 1"),
        account_yaml("b", &b.url(), ", priority: 2")
    );
    let relay = RelayProcess::start(&extra).await;
    let mythos = BODY.replace("claude-sonnet-4-5", "claude-mythos-5-20270101");
    assert_eq!(send(&relay, ALICE, &mythos, None).await.0, 200, "fails over to b");
    assert_eq!((a.hits(), b.hits()), (1, 1));
    a.set_status(None);
    assert_eq!(send(&relay, ALICE, &mythos, None).await.0, 200);
    assert_eq!(
        (a.hits(), b.hits()),
        (1, 2),
        "a stays parked for mythos until the reset"
    );
    assert_eq!(send(&relay, ALICE, BODY, None).await.0, 200);
    assert_eq!(send(&relay, ALICE, OPUS, None).await.0, 200);
    assert_eq!((a.hits(), b.hits()), (3, 2), "a still serves every other family");
}

#[tokio::test]
async fn sessions_stick_to_their_account_and_move_when_it_fails() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let extra = format!(
        "accounts:\n{}{}",
        account_yaml("a", &a.url(), ""),
        account_yaml("b", &b.url(), "")
    );
    let relay = RelayProcess::start(&extra).await;
    for _ in 0..4 {
        assert_eq!(send(&relay, ALICE, BODY, Some("session-one")).await.0, 200);
    }
    let first = if a.hits() == 4 { &a } else { &b };
    let other = if a.hits() == 4 { &b } else { &a };
    assert_eq!((first.hits(), other.hits()), (4, 0), "a session stays on one account");
    // Without a session, requests rotate.
    for _ in 0..2 {
        assert_eq!(send(&relay, ALICE, BODY, None).await.0, 200);
    }
    assert!(other.hits() >= 1);
    // The sticky account fails: health beats stickiness, and the session moves for good.
    let before = other.hits();
    first.set_status(Some(529));
    assert_eq!(send(&relay, ALICE, BODY, Some("session-one")).await.0, 200);
    first.set_status(None);
    for _ in 0..2 {
        assert_eq!(send(&relay, ALICE, BODY, Some("session-one")).await.0, 200);
    }
    assert_eq!(other.hits(), before + 3);
    // metadata.user_id (Claude Code's JSON string) is a session id too.
    let body = r#"{"model":"claude-sonnet-4-5","stream":true,"messages":[],"metadata":{"user_id":"{\"device_id\":\"d\",\"account_uuid\":\"\",\"session_id\":\"s2\"}"}}"#;
    let hits = (a.hits(), b.hits());
    for _ in 0..3 {
        assert_eq!(send(&relay, ALICE, body, None).await.0, 200);
    }
    let moved = (a.hits() - hits.0, b.hits() - hits.1);
    assert!(moved == (3, 0) || moved == (0, 3), "{moved:?}");
}

#[tokio::test]
async fn bindings_and_groups_keep_dedicated_accounts_for_their_keys() {
    let (shared, team1, team2, solo) = (
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    );
    let carol = "cr_cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
    let dave = "cr_dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";
    let extra = format!(
        "accounts:\n{}{}{}{}api_keys:\n  - {{ name: alice, key: {ALICE} }}\n  - {{ name: carol, key: {carol}, bind: \"group:team\" }}\n  - {{ name: dave, key: {dave}, bind: solo }}\n",
        account_yaml("shared", &shared.url(), ", priority: 1"),
        account_yaml("t1", &team1.url(), ", priority: 5, group: team"),
        account_yaml("t2", &team2.url(), ", priority: 5, group: team"),
        account_yaml("solo", &solo.url(), ", priority: 9"),
    );
    let relay = RelayProcess::start(&extra).await;
    for _ in 0..4 {
        assert_eq!(send(&relay, carol, BODY, None).await.0, 200);
        assert_eq!(send(&relay, dave, BODY, None).await.0, 200);
        assert_eq!(send(&relay, ALICE, BODY, None).await.0, 200);
    }
    assert_eq!((team1.hits(), team2.hits()), (2, 2), "carol rotates within her group");
    assert_eq!(solo.hits(), 4, "dave only uses his account");
    assert_eq!(shared.hits(), 4, "alice never uses dedicated accounts");
    // When the bound account fails, the key does not spill into the shared pool.
    solo.set_status(Some(529));
    let (status, _, headers) = send(&relay, dave, BODY, None).await;
    assert_eq!(
        (status, headers["x-relay-error-source"].to_str().unwrap()),
        (529, "upstream")
    );
    assert_eq!(shared.hits(), 4);
}

#[tokio::test]
async fn per_account_concurrency_caps_spill_to_the_next_account() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let extra = format!(
        "accounts:\n{}{}",
        account_yaml("a", &a.url(), ", priority: 1, max_concurrency: 1"),
        account_yaml("b", &b.url(), ", priority: 2")
    );
    let relay = RelayProcess::start(&extra).await;
    let url = format!("{}/v1/messages", relay.base());
    let slow = |url: String| async move {
        let r = client()
            .post(url)
            .header("x-api-key", ALICE)
            .header("x-mock-chunk", "200")
            .header("x-mock-chunk-delay-ms", "150")
            .body(BODY)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap().len())
    };
    let first = tokio::spawn(slow(url.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = tokio::spawn(slow(url.clone()));
    let (r1, r2) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!((r1.0, r2.0), (200, 200));
    assert_eq!(
        (a.hits(), b.hits()),
        (1, 1),
        "the second request went to b while a was at its cap"
    );
    // The lease was released: a serves again.
    assert_eq!(send(&relay, ALICE, BODY, None).await.0, 200);
    assert_eq!(a.hits(), 2);
}

#[tokio::test]
async fn a_daily_quota_takes_the_account_out_until_its_reset() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    // One golden request costs 187.65 µUSD; a 100 µUSD quota is spent by the first request.
    let extra = format!(
        "accounts:\n{}{}",
        account_yaml("a", &a.url(), ", priority: 1, daily_quota_usd: 0.0001"),
        account_yaml("b", &b.url(), ", priority: 2")
    );
    let relay = RelayProcess::start(&extra).await;
    assert_eq!(send(&relay, ALICE, BODY, None).await.0, 200);
    assert_eq!(a.hits(), 1);
    for _ in 0..3 {
        assert_eq!(send(&relay, ALICE, BODY, None).await.0, 200);
    }
    assert_eq!((a.hits(), b.hits()), (1, 3));
    let state = eventually(|| async {
        metric(&relay, "relay_account_state{account=\"a\",state=\"over_quota\"}")
            .await
            .filter(|v| *v == 1.0)
    })
    .await;
    assert_eq!(state, 1.0);
}

#[tokio::test]
async fn sticky_sessions_and_account_health_are_shared_through_redis() {
    let (prefix, url) = (support::redis_prefix(), support::redis_url());
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let extra = format!(
        "scheduler: {{ failover: {{ evidence_keys: 1 }} }}\nstore: {{ backend: redis, url: \"{url}\", prefix: \"{prefix}\" }}\naccounts:\n{}{}",
        account_yaml("a", &a.url(), ""),
        account_yaml("b", &b.url(), "")
    );
    let one = RelayProcess::start(&extra).await;
    let two = RelayProcess::start(&extra).await;
    assert_eq!(send(&one, ALICE, BODY, Some("shared-session")).await.0, 200);
    let on_a = a.hits() == 1;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        assert_eq!(send(&two, ALICE, BODY, Some("shared-session")).await.0, 200);
    }
    if on_a {
        assert_eq!(
            (a.hits(), b.hits()),
            (4, 0),
            "instance two follows instance one's session"
        );
    } else {
        assert_eq!(
            (a.hits(), b.hits()),
            (0, 4),
            "instance two follows instance one's session"
        );
    }
    // An account put out of the pool by one instance is out on the other.
    let (bad, good) = if on_a { (&a, &b) } else { (&b, &a) };
    bad.set_status(Some(529));
    // The session is stuck to `bad`, so this request meets the refusal and fails over.
    assert_eq!(send(&one, ALICE, BODY, Some("shared-session")).await.0, 200);
    let bad_hits = bad.hits();
    assert_eq!(bad_hits, 5, "the refusing account was tried first");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let good_before = good.hits();
    for _ in 0..3 {
        assert_eq!(send(&two, ALICE, BODY, None).await.0, 200);
    }
    assert_eq!(
        bad.hits(),
        bad_hits,
        "instance two skips the account instance one marked"
    );
    assert_eq!(good.hits(), good_before + 3);
    drop(one);
    drop(two);
    support::redis_cleanup(&prefix).await;
}

#[tokio::test]
async fn a_client_that_leaves_while_the_upstream_thinks_aborts_it_and_frees_its_lease() {
    let a = MockUpstream::start().await;
    let extra = format!("accounts:\n{}", account_yaml("a", &a.url(), ", max_concurrency: 1"));
    let relay = RelayProcess::start(&extra).await;
    let url = format!("{}/v1/messages", relay.base());
    let waiting = tokio::spawn(async move {
        client()
            .post(url)
            .header("x-api-key", ALICE)
            .header("x-mock-delay-ms", "5000")
            .body(BODY)
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metric(&relay, "relay_in_flight_requests").await, Some(1.0));
    waiting.abort(); // the client goes away before any answer
    let t = std::time::Instant::now();
    eventually(|| async { metric(&relay, "relay_in_flight_requests").await.filter(|v| *v == 0.0) }).await;
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the relay waited for the upstream: {:?}",
        t.elapsed()
    );
    // The account's only slot is free again at once.
    let (status, _, _) = send(&relay, ALICE, BODY, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(&relay, "relay_upstream_errors_total{class=\"client_gone\"}").await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_stream_that_goes_silent_ends_with_an_error_event_after_the_idle_timeout() {
    let a = MockUpstream::start().await;
    let extra = format!(
        "timeouts: {{ stream_idle: 1s }}\naccounts:\n{}",
        account_yaml("a", &a.url(), "")
    );
    let relay = RelayProcess::start(&extra).await;
    let t = std::time::Instant::now();
    let r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .header("x-mock-stall-after", "400")
        .body(BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(text.starts_with("event: message_start"));
    assert!(text.trim_end().ends_with("}"));
    assert!(
        text.contains("event: error\ndata: {\"error\":{\"message\":\"upstream stream was silent"),
        "{text}"
    );
}

/// Sends `body` with extra headers; returns the status and the body.
async fn send_with(relay: &RelayProcess, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .body(BODY);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn accounts_are_benched_only_for_the_right_reason() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let extra = format!(
        "scheduler: {{ failover: {{ evidence_keys: 1 }} }}\naccounts:\n{}{}",
        account_yaml("a", &a.url(), ", priority: 1"),
        account_yaml("b", &b.url(), ", priority: 2")
    );
    let relay = RelayProcess::start(&extra).await;

    // A 429 that names no time to wait: this request moves on, the account stays in the pool.
    a.set_status(Some(429));
    a.set_no_retry_after();
    assert_eq!(send_with(&relay, &[]).await.0, 200);
    assert_eq!((a.hits(), b.hits()), (1, 1));
    assert_eq!(send_with(&relay, &[]).await.0, 200);
    assert_eq!((a.hits(), b.hits()), (2, 2), "a is tried again: it was not parked");

    // A background call's failure (here a 429 with retry-after, which would park a for 7 s)
    // fails over but parks nothing.
    let a2 = MockUpstream::start().await;
    let b2 = MockUpstream::start().await;
    let relay2 = RelayProcess::start(&format!(
        "accounts:\n{}{}",
        account_yaml("a", &a2.url(), ", priority: 1"),
        account_yaml("b", &b2.url(), ", priority: 2")
    ))
    .await;
    a2.set_status(Some(429));
    for bg in [[("x-claude-code-request-class", "auxiliary")], [("x-app", "cli-bg")]] {
        assert_eq!(send_with(&relay2, &bg).await.0, 200);
    }
    assert_eq!((a2.hits(), b2.hits()), (2, 2), "both background calls tried a first");
    // The same answer to a foreground call parks a.
    assert_eq!(
        send_with(&relay2, &[("x-claude-code-request-class", "main")]).await.0,
        200
    );
    assert_eq!(send_with(&relay2, &[]).await.0, 200);
    assert_eq!((a2.hits(), b2.hits()), (3, 4), "parked by the foreground 429");

    // A refusal of the client's version: the client gets it exactly as it came, whatever its
    // status, and no account is touched.
    let too_old = r#"{"type":"error","error":{"type":"invalid_request_error","message":"Claude Code 2.1.224 does not support this model; version 2.1.251 or newer is required. Run 'claude update', or update the Claude desktop app, then try again.","details":{"error_code":"claude_code_version_too_old"}},"request_id":"req_old"}"#;
    let (c, d) = (MockUpstream::start().await, MockUpstream::start().await);
    let relay3 = RelayProcess::start(&format!(
        "scheduler: {{ failover: {{ evidence_keys: 1 }} }}\naccounts:\n{}{}",
        account_yaml("c", &c.url(), ", priority: 1"),
        account_yaml("d", &d.url(), ", priority: 2")
    ))
    .await;
    c.set_error_body(too_old);
    for status in [400, 403] {
        c.set_status(Some(status));
        let (got, body) = send_with(&relay3, &[]).await;
        assert_eq!((got, body.as_str()), (status, too_old));
    }
    assert_eq!((c.hits(), d.hits()), (2, 0), "never failed over, never parked");
    c.set_status(None);
    assert_eq!(send_with(&relay3, &[]).await.0, 200);
    assert_eq!((c.hits(), d.hits()), (3, 0));
}
