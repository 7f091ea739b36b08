//! Per-key limits through the real binary: rate windows (requests, tokens, cost; fixed and
//! rolling), spend caps (daily, weekly, monthly, total) with the reservations that keep requests
//! in flight within them, `hard_cap`, `max_input_tokens` and concurrency with its queue, on the
//! embedded backend and on Redis, where two instances share them exactly. Every refusal says the
//! relay refused, carries `retry-after` where a retry can succeed, and never reaches the upstream.
//!
//! The Redis tests use `RELAY_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/`), each under a
//! random prefix; the round-trip count starts a private `redis-server` (`RELAY_TEST_REDIS_SERVER`,
//! default `redis-server` on the PATH) so that no other client's commands are counted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;
use support::client;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use claude_relay::limits::redis::RedisLimits;
use claude_relay::store::redis_conn::RedisTarget;
use claude_relay::usage::TokenUsage;
use claude_relay::usage::pricing::PricingTable;
use support::mock::MockUpstream;
use support::redis_servers::{RedisCluster, RedisNode, RedisSentinels};
use support::{RelayProcess, account_yaml, eventually, redis_cleanup, redis_prefix, redis_url};

const BODY: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
const STREAM_BODY: &str =
    r#"{"model":"claude-sonnet-4-5","stream":true,"max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
/// A slow stream: the golden stream (1.4 KB) in 100-byte writes 100 ms apart, about 1.4 s.
const SLOW: &[(&str, &str)] = &[("x-mock-chunk", "100"), ("x-mock-chunk-delay-ms", "100")];
/// A stream that sends its first 200 bytes and then stays silent: it holds its slot until the
/// client leaves.
const STALLED: &[(&str, &str)] = &[("x-mock-stall-after", "200")];
/// Tokens of one mock answer: 21 input + 3 cache read + 5 cache write + 7 output.
const TOKENS: u64 = 36;

/// The cost of one mock answer (nano-USD).
fn cost() -> u64 {
    let usage = TokenUsage {
        input: 21,
        output: 7,
        cache_read: 3,
        cache_write_5m: 5,
        cache_write_1h: 0,
        reasoning: 0,
        billing: claude_relay::usage::Billing::NONE,
    };
    PricingTable::builtin()
        .unwrap()
        .cost_nanos("claude-sonnet-4-5", &usage)
        .unwrap()
}

/// `times` mock answers' cost in USD, as written in the config.
fn usd(times: f64) -> String {
    format!("{:.9}", cost() as f64 * times / 1e9)
}

/// What the relay reserves for a request with this body (nano-USD): its estimate.
fn estimate(body: &str) -> u64 {
    let pricing = PricingTable::builtin().unwrap();
    let max_output = serde_json::from_str::<serde_json::Value>(body).unwrap()["max_tokens"].as_u64();
    claude_relay::usage::estimate::reserve_nanos(&pricing, "claude-sonnet-4-5", body.len(), max_output, false).unwrap()
}

/// A cap (USD, as written in the config) that admits `n` requests of `BODY` one after the other
/// and refuses the next: `n - 1` charged answers plus one estimate fit, `n` answers plus one
/// estimate do not (an answer costs less than its estimate).
fn cap_for(n: f64) -> String {
    let nanos = (n - 0.5) * cost() as f64 + estimate(BODY) as f64;
    format!("{:.9}", nanos / 1e9)
}

/// nano-USD as written in the config.
fn nanos_usd(nanos: u64) -> String {
    format!("{:.9}", nanos as f64 / 1e9)
}

/// A distinct valid client key per name.
fn key_of(name: &str) -> String {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("cr_{hex:0>64}")
}

/// `{ name: NAME, key: <its key>, REST }`
fn key_line(name: &str, rest: &str) -> String {
    format!("{{ name: {name}, key: {}, {rest} }}", key_of(name))
}

fn config(mock: &MockUpstream, keys: &[String], extra: &str) -> String {
    let mut yaml = format!("accounts:\n{}api_keys:\n", account_yaml("main", &mock.url(), ""));
    for k in keys {
        yaml.push_str(&format!("  - {k}\n"));
    }
    yaml.push_str(extra);
    yaml
}

/// Where the limits live: the embedded store's memory, or Redis (under a fresh prefix).
#[derive(Debug, Clone, Copy)]
enum Backend {
    Embedded,
    Redis,
}

/// A relay's Redis prefix, if any; its keys are deleted by [`Prefix::cleanup`].
struct Prefix(Option<String>);

impl Prefix {
    async fn cleanup(self) {
        if let Some(p) = self.0 {
            redis_cleanup(&p).await;
        }
    }
}

/// The relay with one account on `mock`, the given keys and more config, on `backend`.
async fn relay_on(backend: Backend, mock: &MockUpstream, keys: &[String], extra: &str) -> (RelayProcess, Prefix) {
    match backend {
        Backend::Embedded => (RelayProcess::start(&config(mock, keys, extra)).await, Prefix(None)),
        Backend::Redis => {
            let p = redis_prefix();
            let yaml = format!("{}{extra}", redis_config(mock, &redis_url(), &p, keys));
            (RelayProcess::start(&yaml).await, Prefix(Some(p)))
        }
    }
}

/// Runs each listed `async fn(Backend)` as one test per backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_embedded {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Backend::Embedded).await
            })*
        }
        mod on_redis {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Backend::Redis).await
            })*
        }
    };
}

on_both_backends!(
    rate_window_admits_its_requests_then_429_with_retry_after,
    token_and_cost_windows_and_spend_caps_refuse_once_charged_usage_reaches_them,
    token_windows_overshoot_by_at_most_the_requests_in_flight,
    reservations_keep_twenty_parallel_streams_within_the_cap,
    a_reservation_is_freed_when_the_client_disconnects,
    monthly_cap_refuses_a_request_that_does_not_fit,
    a_rolling_window_refuses_until_its_oldest_request_slides_out,
    max_input_tokens_refuses_large_prompts_in_the_callers_dialect,
    hard_cap_ends_a_stream_that_crosses_the_cap_and_bills_it,
    concurrency_slot_is_held_while_streaming_and_freed_however_the_request_ends,
    a_queued_request_waits_for_the_slot_and_the_queue_is_bounded,
);

async fn send_to(base: &str, name: &str, headers: &[(&str, &str)], body: &str) -> reqwest::Response {
    let mut rb = client()
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", key_of(name))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.send().await.unwrap()
}

async fn send(relay: &RelayProcess, name: &str, headers: &[(&str, &str)], body: &str) -> reqwest::Response {
    send_to(&relay.base(), name, headers, body).await
}

/// Sends a request, reads the whole answer, and waits a moment so that its charge (which runs
/// once the response is over) is in before the next admission. Returns the status.
async fn complete(relay: &RelayProcess, name: &str) -> u16 {
    let r = send(relay, name, &[], BODY).await;
    let status = r.status().as_u16();
    let _ = r.bytes().await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    status
}

/// Asserts a relay refusal in the Anthropic shape; returns its `retry-after`.
async fn assert_refused(r: reqwest::Response, status: u16, error_type: &str) -> Option<u64> {
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["x-relay-error-source"], "relay");
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], error_type, "{v}");
    retry
}

async fn rejections(relay: &RelayProcess, reason: &str) -> u64 {
    let line = format!("relay_rejections_total{{reason=\"{reason}\"}} ");
    support::metric(relay, &line).await.map_or(0, |v| v as u64)
}

/// Waits, when needed, until at least `secs` remain in the current one-minute window (windows
/// are aligned to the epoch), so a test does not straddle two windows.
async fn room_in_minute(secs: u64) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let left = 60_000 - now % 60_000;
    if left < secs * 1000 {
        tokio::time::sleep(Duration::from_millis(left + 200)).await;
    }
}

/// Polls until a request of `name` is admitted (answered 200), for up to `within`; returns how
/// long that took.
async fn admitted_within(relay: &RelayProcess, name: &str, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let r = send(relay, name, &[], BODY).await;
        let status = r.status();
        let _ = r.bytes().await;
        if status == 200 {
            return t.elapsed();
        }
        assert_eq!(status, 429, "only the concurrency limit may refuse here");
        assert!(t.elapsed() < within, "not admitted within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// --- every limit, on both backends ---

async fn rate_window_admits_its_requests_then_429_with_retry_after(backend: Backend) {
    let mock = MockUpstream::start().await;
    let (relay, prefix) = relay_on(
        backend,
        &mock,
        &[key_line("rw", "rate_limit: { window_minutes: 1, requests: 3 }")],
        "",
    )
    .await;
    room_in_minute(20).await;
    for _ in 0..3 {
        assert_eq!(send(&relay, "rw", &[], BODY).await.status(), 200);
    }
    let retry = assert_refused(send(&relay, "rw", &[], BODY).await, 429, "rate_limit_error").await;
    let retry = retry.expect("retry-after on a rate window refusal");
    assert!(
        (1..=60).contains(&retry),
        "retry-after {retry} is the rest of the window"
    );
    // Streaming requests are refused the same way.
    assert_refused(send(&relay, "rw", &[], STREAM_BODY).await, 429, "rate_limit_error").await;
    assert_eq!(mock.hits(), 3, "a refusal never reaches the upstream");
    assert_eq!(rejections(&relay, "rate_limit").await, 2);
    drop(relay);
    prefix.cleanup().await;
}

async fn token_and_cost_windows_and_spend_caps_refuse_once_charged_usage_reaches_them(backend: Backend) {
    let mock = MockUpstream::start().await;
    let (relay, prefix) = relay_on(
        backend,
        &mock,
        &[
            // 100 tokens: 0, 36 and 72 charged at admission pass; 108 refuses.
            key_line("tok", "rate_limit: { window_minutes: 1, tokens: 100 }"),
            // Cost limits reserve each request's estimate: 3 (2) requests fit, one after the other.
            key_line(
                "cst",
                &format!("rate_limit: {{ window_minutes: 1, cost_usd: {} }}", cap_for(3.0)),
            ),
            key_line("day", &format!("cost_limits: {{ daily_usd: {} }}", cap_for(2.0))),
            key_line(
                "wek",
                &format!(
                    "cost_limits: {{ weekly_usd: {}, weekly_reset: \"mon 00:00\" }}",
                    cap_for(2.0)
                ),
            ),
            key_line("tot", &format!("cost_limits: {{ total_usd: {} }}", cap_for(2.0))),
        ],
        "",
    )
    .await;
    room_in_minute(30).await;
    for name in ["tok", "cst"] {
        for _ in 0..3 {
            assert_eq!(complete(&relay, name).await, 200, "{name}");
        }
        let retry = assert_refused(send(&relay, name, &[], BODY).await, 429, "rate_limit_error").await;
        assert!(retry.is_some_and(|s| (1..=60).contains(&s)), "{name}: {retry:?}");
    }
    for (name, reason) in [
        ("day", "daily_cost_limit"),
        ("wek", "weekly_cost_limit"),
        ("tot", "total_cost_limit"),
    ] {
        for _ in 0..2 {
            assert_eq!(complete(&relay, name).await, 200, "{name}");
        }
        let retry = assert_refused(send(&relay, name, &[], BODY).await, 402, "billing_error").await;
        match name {
            "tot" => assert_eq!(retry, None, "a spent total never comes back"),
            "day" => assert!(retry.is_some_and(|s| s <= 86_400)),
            _ => assert!(retry.is_some_and(|s| s <= 7 * 86_400)),
        }
        assert_eq!(rejections(&relay, reason).await, 1, "{reason}");
    }
    assert_eq!(mock.hits(), 3 + 3 + 2 + 2 + 2);
    assert_eq!(rejections(&relay, "rate_limit").await, 2);
    drop(relay);
    prefix.cleanup().await;
}

/// Tokens are charged when a request completes, so requests admitted together all run: a token
/// window's overshoot is at most what the requests in flight use (here the concurrency limit, 4).
/// (Cost limits reserve instead: see the next test.)
async fn token_windows_overshoot_by_at_most_the_requests_in_flight(backend: Backend) {
    let mock = MockUpstream::start().await;
    let (relay, prefix) = relay_on(
        backend,
        &mock,
        &[key_line(
            "btok",
            "rate_limit: { window_minutes: 1, tokens: 50 }, concurrency: { limit: 4 }",
        )],
        "",
    )
    .await;
    room_in_minute(30).await;
    let base = relay.base();
    let burst: Vec<_> = (0..10)
        .map(|_| {
            let base = base.clone();
            tokio::spawn(async move {
                let r = send_to(&base, "btok", SLOW, STREAM_BODY).await;
                let status = r.status().as_u16();
                let _ = r.bytes().await;
                status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in burst {
        statuses.push(t.await.unwrap());
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count() as u64;
    assert_eq!(admitted, 4, "the limit was not reached at admission: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 6, "{statuses:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // All four ran to their end and were charged: over the limit, by less than 4 requests.
    assert!(admitted * TOKENS > 50 && admitted * TOKENS - 50 < 4 * TOKENS);
    assert_refused(send(&relay, "btok", &[], BODY).await, 429, "rate_limit_error").await;
    assert_eq!(mock.hits(), 4);
    assert_eq!(rejections(&relay, "concurrency_limit").await, 6);
    drop(relay);
    prefix.cleanup().await;
}

/// The cost the usage statistics recorded for a key (nano-USD), once they show `requests`.
async fn recorded_cost(relay: &RelayProcess, key: &str, requests: u64) -> u64 {
    let admin = support::admin::Admin::login(relay).await;
    let path = format!("/admin/api/usage?dimension=key&id=config.{key}&granularity=day");
    let totals = eventually(|| {
        let (admin, path) = (&admin, &path);
        async move {
            let a = admin.get(path).await;
            (a.status == 200 && a.json["totals"]["requests"] == requests).then(|| a.json["totals"].clone())
        }
    })
    .await;
    (totals["cost_usd"].as_f64().unwrap() * 1e9).round() as u64
}

/// 20 slow streams of one key at once, spread over `relays`: the reservations admit only as many
/// as the cap holds, the rest are refused (402: the rest is reserved by requests in flight), and
/// what was charged stays within the cap. Returns how many ran.
async fn twenty_streams_within_the_cap(relays: &[&RelayProcess], mock: &MockUpstream, name: &'static str) -> u64 {
    let answers = burst(relays, 20, name, SLOW, STREAM_BODY).await;
    let mut ok = 0;
    let mut refused = 0;
    for (status, r) in answers {
        match status {
            200 => {
                ok += 1;
                assert!(
                    r.bytes().await.unwrap().len() > 1000,
                    "an admitted stream runs to its end"
                );
            }
            402 => {
                refused += 1;
                assert_eq!(r.headers()["x-relay-error-source"], "relay");
                assert_eq!(
                    r.headers()["retry-after"],
                    "1",
                    "the room comes back as the streams end"
                );
                let v: serde_json::Value = r.json().await.unwrap();
                assert_eq!(v["error"]["type"], "billing_error");
                let msg = v["error"]["message"].as_str().unwrap();
                assert!(msg.contains("reserved by this key's requests in flight"), "{msg}");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let cap = 3 * estimate(STREAM_BODY) + estimate(STREAM_BODY) / 2;
    assert_eq!((ok, refused), (3, 17), "three estimates fit under the cap at once");
    assert_eq!(mock.hits() as u64, ok);
    let mut refusals = 0;
    for r in relays {
        refusals += rejections(r, "daily_cost_limit").await;
    }
    assert_eq!(refusals, 17);
    let charged = recorded_cost(relays[0], name, ok).await;
    assert_eq!(charged, ok * cost());
    assert!(charged <= cap, "{charged} charged, cap {cap}");
    ok
}

/// The cap of [`twenty_streams_within_the_cap`]: three and a half estimates.
fn twenty_streams_cap() -> String {
    nanos_usd(3 * estimate(STREAM_BODY) + estimate(STREAM_BODY) / 2)
}

async fn reservations_keep_twenty_parallel_streams_within_the_cap(backend: Backend) {
    let mock = MockUpstream::start().await;
    let (relay, prefix) = relay_on(
        backend,
        &mock,
        &[key_line(
            "par20",
            &format!("cost_limits: {{ daily_usd: {} }}", twenty_streams_cap()),
        )],
        "",
    )
    .await;
    twenty_streams_within_the_cap(&[&relay], &mock, "par20").await;
    drop(relay);
    prefix.cleanup().await;
}

async fn a_reservation_is_freed_when_the_client_disconnects(backend: Backend) {
    let mock = MockUpstream::start().await;
    // One estimate fits at a time.
    let cap = nanos_usd(estimate(STREAM_BODY) * 3 / 2);
    let (relay, prefix) = relay_on(
        backend,
        &mock,
        &[key_line("resv", &format!("cost_limits: {{ total_usd: {cap} }}"))],
        "",
    )
    .await;
    // A stream of about 7 s: the relay notices the client left at its next write.
    let slower = [("x-mock-chunk", "20"), ("x-mock-chunk-delay-ms", "100")];
    let mut r = send(&relay, "resv", &slower, STREAM_BODY).await;
    assert_eq!(r.status(), 200);
    assert!(r.chunk().await.unwrap().is_some());
    let retry = assert_refused(send(&relay, "resv", &[], STREAM_BODY).await, 402, "billing_error").await;
    assert_eq!(retry, Some(1), "a total cap held by requests in flight comes back");
    drop(r);
    let t = Instant::now();
    loop {
        let r = send(&relay, "resv", &[], STREAM_BODY).await;
        let status = r.status();
        let _ = r.bytes().await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 402);
        assert!(
            t.elapsed() < Duration::from_millis(1200),
            "the reservation was not freed at the disconnect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mock.hits(), 2);
    drop(relay);
    prefix.cleanup().await;
}

async fn monthly_cap_refuses_a_request_that_does_not_fit(backend: Backend) {
    let mock = MockUpstream::start().await;
    let (relay, prefix) = relay_on(
        backend,
        &mock,
        &[key_line(
            "mon",
            &format!("cost_limits: {{ monthly_usd: {} }}", cap_for(1.0)),
        )],
        "",
    )
    .await;
    assert_eq!(complete(&relay, "mon").await, 200);
    let r = send(&relay, "mon", &[], BODY).await;
    assert_eq!(r.status(), 402);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=31 * 86_400).contains(&retry), "until the month ends: {retry}");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "billing_error");
    let msg = v["error"]["message"].as_str().unwrap();
    // Not reached, but this request's estimate does not fit in what is left: it is told so.
    assert!(
        msg.starts_with("Monthly cost limit: this request may cost up to $"),
        "{msg}"
    );
    assert!(msg.contains("max_tokens"), "{msg}");
    assert_eq!(rejections(&relay, "monthly_cost_limit").await, 1);
    assert_eq!(mock.hits(), 1);
    drop(relay);
    prefix.cleanup().await;
}

async fn a_rolling_window_refuses_until_its_oldest_request_slides_out(backend: Backend) {
    let mock = MockUpstream::start().await;
    let (relay, prefix) = relay_on(
        backend,
        &mock,
        &[key_line(
            "roll",
            "rate_limit: { window_minutes: 1, requests: 2, rolling: true }",
        )],
        "",
    )
    .await;
    let first = Instant::now();
    assert_eq!(complete(&relay, "roll").await, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(complete(&relay, "roll").await, 200);
    let retry = assert_refused(send(&relay, "roll", &[], BODY).await, 429, "rate_limit_error").await;
    let retry = retry.expect("retry-after on a rolling window refusal");
    // When the first request leaves the window: a minute after it, not at a minute boundary.
    let expected = 60.0 - first.elapsed().as_secs_f64();
    assert!(
        (retry as f64 - expected).abs() <= 1.5,
        "retry-after {retry}, the first request leaves in {expected:.1}s"
    );
    assert_eq!(mock.hits(), 2);
    drop(relay);
    prefix.cleanup().await;
}

async fn max_input_tokens_refuses_large_prompts_in_the_callers_dialect(backend: Backend) {
    let mock = MockUpstream::start().await;
    let (relay, prefix) = relay_on(backend, &mock, &[key_line("small", "max_input_tokens: 1000")], "").await;
    // About 1,250 tokens of text (5,000 characters) is refused...
    let long = "word ".repeat(1000);
    let body = serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 16,
        "messages": [{"role": "user", "content": long}]})
    .to_string();
    let r = send(&relay, "small", &[], &body).await;
    assert_refused(r, 400, "invalid_request_error").await;
    // ...700 tokens (2,800 characters: a bound from the size alone would say 1,400) passes.
    let body = serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 16,
        "messages": [{"role": "user", "content": "word ".repeat(560)}]})
    .to_string();
    let r = send(&relay, "small", &[], &body).await;
    assert_eq!(r.status(), 200);
    // In OpenAI's shape for a Chat Completions client.
    let chat = serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 16,
        "messages": [{"role": "user", "content": long}]})
    .to_string();
    let r = client()
        .post(format!("{}/v1/chat/completions", relay.base()))
        .header("authorization", format!("Bearer {}", key_of("small")))
        .header("content-type", "application/json")
        .body(chat)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-relay-error-source"], "relay");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("allows 1000"), "{v}");
    assert_eq!(mock.hits(), 1, "refusals never reach the upstream");
    assert_eq!(rejections(&relay, "max_input_tokens").await, 2);
    drop(relay);
    prefix.cleanup().await;
}

/// A stream asked with `max_tokens: 1`, whose answer (the mock ignores it) costs more than its
/// estimate: with `hard_cap`, the relay ends it where the cost passes the cap.
const HARD_CAP_BODY: &str =
    r#"{"model":"claude-sonnet-4-5","stream":true,"max_tokens":1,"messages":[{"role":"user","content":"hi"}]}"#;

async fn hard_cap_ends_a_stream_that_crosses_the_cap_and_bills_it(backend: Backend) {
    let mock = MockUpstream::start().await;
    let est = estimate(HARD_CAP_BODY);
    assert!(
        est < cost(),
        "the answer must cost more than its estimate: {est} vs {}",
        cost()
    );
    // Admitted (the estimate fits); the answer's cost passes the cap at its last usage event.
    let cap = nanos_usd(est + (cost() - est) / 2);
    let (relay, prefix) = relay_on(
        backend,
        &mock,
        &[
            key_line("hard", &format!("cost_limits: {{ daily_usd: {cap}, hard_cap: true }}")),
            key_line("soft", &format!("cost_limits: {{ daily_usd: {cap} }}")),
        ],
        "",
    )
    .await;
    let r = send(
        &relay,
        "hard",
        &[("x-mock-chunk", "200"), ("x-mock-chunk-delay-ms", "20")],
        HARD_CAP_BODY,
    )
    .await;
    assert_eq!(r.status(), 200);
    let body = String::from_utf8(r.bytes().await.unwrap().to_vec()).unwrap();
    assert!(body.contains("event: message_start"), "{body}");
    assert!(!body.contains("message_stop"), "the stream ended early: {body}");
    // The last event is an error event, whole, after whole events.
    let last = body.trim_end().rsplit("\n\n").next().unwrap();
    assert!(last.starts_with("event: error\ndata: "), "{body}");
    let v: serde_json::Value = serde_json::from_str(last.split_once("data: ").unwrap().1).unwrap();
    assert_eq!(v["error"]["type"], "billing_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cost limit was reached"),
        "{v}"
    );
    for event in body.trim_end().split("\n\n") {
        let data = event.split_once("data: ").unwrap().1;
        serde_json::from_str::<serde_json::Value>(data).unwrap_or_else(|e| panic!("{e}: {event}"));
    }
    // The usage seen is billed, and the cap now refuses.
    assert_eq!(recorded_cost(&relay, "hard", 1).await, cost());
    assert_refused(send(&relay, "hard", &[], HARD_CAP_BODY).await, 402, "billing_error").await;
    assert_eq!(rejections(&relay, "hard_cap").await, 1);
    // Without hard_cap the same stream runs to its end.
    let r = send(&relay, "soft", &[], HARD_CAP_BODY).await;
    assert!(
        String::from_utf8(r.bytes().await.unwrap().to_vec())
            .unwrap()
            .contains("message_stop")
    );
    drop(relay);
    prefix.cleanup().await;
}

async fn concurrency_slot_is_held_while_streaming_and_freed_however_the_request_ends(backend: Backend) {
    let mock = MockUpstream::start().await;
    let (relay, prefix) = relay_on(
        backend,
        &mock,
        &[key_line("one", "concurrency: { limit: 1 }")],
        "timeouts: { stream_idle: 1s }\n",
    )
    .await;

    // Completion.
    let first = send(&relay, "one", SLOW, STREAM_BODY).await;
    assert_eq!(first.status(), 200);
    let retry = assert_refused(send(&relay, "one", &[], BODY).await, 429, "rate_limit_error").await;
    assert_eq!(retry, Some(1));
    assert_eq!(mock.hits(), 1, "the refusal did not reach the upstream");
    let body = first.bytes().await.unwrap();
    assert!(body.len() > 1000);
    admitted_within(&relay, "one", Duration::from_secs(2)).await;

    // Client disconnect mid-stream.
    let mut r = send(&relay, "one", SLOW, STREAM_BODY).await;
    assert_eq!(r.status(), 200);
    assert!(r.chunk().await.unwrap().is_some());
    assert_refused(send(&relay, "one", &[], BODY).await, 429, "rate_limit_error").await;
    drop(r);
    let took = admitted_within(&relay, "one", Duration::from_secs(3)).await;
    assert!(
        took < Duration::from_millis(1200),
        "freed at the disconnect, not at the stream's end: {took:?}"
    );

    // An upstream error answer.
    let r = send(&relay, "one", &[("x-mock-status", "400")], BODY).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-relay-error-source"], "upstream");
    let _ = r.bytes().await;
    admitted_within(&relay, "one", Duration::from_secs(2)).await;

    // An upstream stream cut mid-way.
    let r = send(
        &relay,
        "one",
        &[
            ("x-mock-truncate", "300"),
            ("x-mock-chunk", "100"),
            ("x-mock-chunk-delay-ms", "50"),
        ],
        STREAM_BODY,
    )
    .await;
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await;
    admitted_within(&relay, "one", Duration::from_secs(2)).await;

    // An upstream that falls silent mid-stream holds the slot until the stream times out
    // (`timeouts.stream_idle`, 1 s here), then gives it back.
    let r = send(&relay, "one", STALLED, STREAM_BODY).await;
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_refused(send(&relay, "one", &[], BODY).await, 429, "rate_limit_error").await;
    let _ = r.bytes().await;
    admitted_within(&relay, "one", Duration::from_secs(2)).await;
    assert!(rejections(&relay, "concurrency_limit").await >= 3);
    drop(relay);
    prefix.cleanup().await;
}

async fn a_queued_request_waits_for_the_slot_and_the_queue_is_bounded(backend: Backend) {
    let mock = MockUpstream::start().await;
    let (relay, prefix) = relay_on(
        backend,
        &mock,
        &[
            key_line("q", "concurrency: { limit: 1, queue: 1, queue_timeout_ms: 3000 }"),
            key_line("qt", "concurrency: { limit: 1, queue: 1, queue_timeout_ms: 300 }"),
        ],
        "",
    )
    .await;
    let first = send(&relay, "q", SLOW, STREAM_BODY).await;
    assert_eq!(first.status(), 200);
    let started = Instant::now();
    let base = relay.base();
    let second = tokio::spawn(async move {
        let r = send_to(&base, "q", &[], BODY).await;
        (r.status().as_u16(), Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The queue holds one: a third request is refused at once.
    let t = Instant::now();
    assert_refused(send(&relay, "q", &[], BODY).await, 429, "rate_limit_error").await;
    assert!(t.elapsed() < Duration::from_millis(500));
    let _ = first.bytes().await.unwrap();
    let first_done = Instant::now();
    let (status, answered) = second.await.unwrap();
    assert_eq!(status, 200, "the queued request got the slot");
    assert!(answered >= first_done, "it was answered after the first one ended");
    assert!(answered.duration_since(started) > Duration::from_millis(800));
    assert_eq!(mock.hits(), 2);

    // A queued request that does not get a slot in time is refused.
    let held = send(&relay, "qt", STALLED, STREAM_BODY).await;
    assert_eq!(held.status(), 200);
    let t = Instant::now();
    let retry = assert_refused(send(&relay, "qt", &[], BODY).await, 429, "rate_limit_error").await;
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(retry, Some(1));
    drop(held);
    drop(relay);
    prefix.cleanup().await;
}

#[tokio::test]
async fn spend_caps_survive_a_restart() {
    let mock = MockUpstream::start().await;
    let yaml = config(
        &mock,
        &[key_line(
            "cap",
            &format!(
                "cost_limits: {{ daily_usd: {}, total_usd: {} }}",
                cap_for(2.0),
                usd(100.0)
            ),
        )],
        "",
    );
    let mut relay = RelayProcess::start(&yaml).await;
    for _ in 0..2 {
        assert_eq!(complete(&relay, "cap").await, 200);
    }
    assert_refused(send(&relay, "cap", &[], BODY).await, 402, "billing_error").await;
    assert!(relay.stop().success());
    // The same data directory: the spend is read back from the usage statistics.
    let dir = std::mem::replace(&mut relay.dir, tempfile::tempdir().unwrap());
    let relay = RelayProcess::start_in(dir, &yaml, &[]).await;
    assert_refused(send(&relay, "cap", &[], BODY).await, 402, "billing_error").await;
    assert_eq!(mock.hits(), 2);
}

#[tokio::test]
async fn key_limits_through_the_admin_api() {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!("accounts:\n{}", account_yaml("main", &mock.url(), ""))).await;
    let token = relay.admin_token().await;
    let c = client();
    let keys = format!("{}/admin/api/keys", relay.admin());

    // Invalid values are refused, naming the field.
    for (body, field) in [
        (
            serde_json::json!({"name": "x", "rate_limit": {"window_minutes": 0, "requests": 1}}),
            "rate_limit.window_minutes",
        ),
        (
            serde_json::json!({"name": "x", "concurrency": {"limit": 0}}),
            "concurrency.limit",
        ),
        (
            serde_json::json!({"name": "x", "cost_limits": {"weekly_usd": 1, "weekly_reset": "someday"}}),
            "cost_limits.weekly_reset",
        ),
        (
            serde_json::json!({"name": "x", "rate_limit": {"window_minutes": 1, "request": 1}}),
            "rate_limit",
        ),
        (serde_json::json!({"name": "x", "rate_limits": {}}), "rate_limits"),
        (
            serde_json::json!({"name": "x", "max_input_tokens": 0}),
            "max_input_tokens",
        ),
        (
            serde_json::json!({"name": "x", "cost_limits": {"hard_cap": true}}),
            "cost_limits.hard_cap",
        ),
        (
            serde_json::json!({"name": "x", "cost_limits": {"monthly_usd": -2}}),
            "cost_limits.monthly_usd",
        ),
        (
            serde_json::json!({"name": "x", "rate_limit": {"window_minutes": 1, "requests": 1, "rolling": "yes"}}),
            "rate_limit",
        ),
    ] {
        let r = c.post(&keys).bearer_auth(&token).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let v: serde_json::Value = r.json().await.unwrap();
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(field), "{field} not named in: {msg}");
    }

    let created: serde_json::Value = c
        .post(&keys)
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "name": "limited",
            "rate_limit": {"window_minutes": 1, "requests": 2},
            "cost_limits": {"daily_usd": 5, "weekly_reset": "wed 12:00"},
            "concurrency": {"limit": 2, "queue": 1, "queue_timeout_ms": 500},
            "max_input_tokens": 200000,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let plaintext = created["key"].as_str().unwrap().to_string();
    assert_eq!(
        created["rate_limit"],
        serde_json::json!({"window_minutes": 1, "requests": 2})
    );
    assert_eq!(created["cost_limits"]["weekly_reset"], "wed 12:00");
    assert_eq!(created["concurrency"]["queue_timeout_ms"], 500);
    assert_eq!(created["max_input_tokens"], 200000);
    assert!(
        created["cost_limits"].get("hard_cap").is_none(),
        "false flags are absent"
    );
    assert!(created.get("permissions").is_none(), "fields not set are absent");

    // The limit applies at once.
    room_in_minute(20).await;
    let call = || {
        c.post(format!("{}/v1/messages", relay.base()))
            .header("x-api-key", &plaintext)
            .body(BODY)
            .send()
    };
    assert_eq!(call().await.unwrap().status(), 200);
    assert_eq!(call().await.unwrap().status(), 200);
    assert_refused(call().await.unwrap(), 429, "rate_limit_error").await;

    // PATCH replaces a field whole and `null` removes one; the others stay.
    let r = c
        .patch(format!("{keys}/{id}"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"rate_limit": null, "concurrency": {"limit": 3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v.get("rate_limit").is_none());
    assert_eq!(
        v["concurrency"],
        serde_json::json!({"limit": 3, "queue": 0, "queue_timeout_ms": 10000})
    );
    assert_eq!(v["cost_limits"]["daily_usd"], 5.0);
    let got: serde_json::Value = c
        .get(format!("{keys}/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["concurrency"]["limit"], 3);
    assert_eq!(call().await.unwrap().status(), 200, "the window is gone with its field");
    let r = c
        .patch(format!("{keys}/{id}"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"cost_limits": {"daily_usd": -1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cost_limits.daily_usd")
    );

    let list: serde_json::Value = c
        .get(&keys)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list["keys"].as_array().unwrap().iter().any(|k| k["name"] == "limited"));
}

// --- Redis: two instances sharing one Redis ---

fn redis_config(mock: &MockUpstream, url: &str, prefix: &str, keys: &[String]) -> String {
    // Written out here (not through `SharedStore`) for the tests that need the URL itself.
    config(
        mock,
        keys,
        &format!("store: {{ backend: redis, url: \"{url}\", prefix: \"{prefix}\" }}\n"),
    )
}

/// Sends `n` requests at once, alternating between the relays; returns their statuses, read as
/// soon as each head arrives, and the responses (for streams still running).
async fn burst(
    relays: &[&RelayProcess],
    n: usize,
    name: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
) -> Vec<(u16, reqwest::Response)> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let base = relays[i % relays.len()].base();
            tokio::spawn(async move {
                let r = send_to(&base, name, headers, body).await;
                (r.status().as_u16(), r)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The store two instances share: the test Redis under a fresh prefix, or a private three-master
/// Redis Cluster.
struct SharedStore {
    yaml: String,
    prefix: String,
    cluster: Option<RedisCluster>,
}

impl SharedStore {
    fn redis() -> SharedStore {
        let p = redis_prefix();
        SharedStore {
            yaml: format!(
                "store: {{ backend: redis, url: \"{}\", prefix: \"{p}\" }}\n",
                redis_url()
            ),
            prefix: p,
            cluster: None,
        }
    }

    fn cluster() -> SharedStore {
        let p = redis_prefix();
        let cluster = RedisCluster::start();
        SharedStore {
            yaml: cluster.store_yaml(&p),
            prefix: p,
            cluster: Some(cluster),
        }
    }

    async fn cleanup(self) {
        if self.cluster.is_none() {
            redis_cleanup(&self.prefix).await;
        }
    }
}

/// Runs each listed `async fn(SharedStore)` as one test on the test Redis and one on a private
/// Redis Cluster.
macro_rules! on_shared_stores {
    ($($name:ident),* $(,)?) => {
        mod shared_on_redis {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::SharedStore::redis()).await
            })*
        }
        mod shared_on_a_cluster {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::SharedStore::cluster()).await
            })*
        }
    };
}

on_shared_stores!(
    two_instances_admit_exactly_k_requests_per_window,
    two_instances_run_exactly_k_streams_at_once,
    reservations_keep_twenty_parallel_streams_of_one_key_within_its_cap_on_two_instances,
);

async fn two_instances_admit_exactly_k_requests_per_window(shared: SharedStore) {
    let mock = MockUpstream::start().await;
    let yaml = config(
        &mock,
        &[key_line("shared", "rate_limit: { window_minutes: 1, requests: 7 }")],
        &shared.yaml,
    );
    let a = RelayProcess::start(&yaml).await;
    let b = RelayProcess::start(&yaml).await;
    room_in_minute(20).await;
    let answers = burst(&[&a, &b], 40, "shared", &[], BODY).await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let refused = answers.iter().filter(|(s, _)| *s == 429).count();
    assert_eq!((ok, refused), (7, 33));
    for (s, r) in answers {
        if s == 429 {
            assert!(r.headers().contains_key("retry-after"));
        }
    }
    assert_eq!(mock.hits(), 7);
    assert_eq!(
        rejections(&a, "rate_limit").await + rejections(&b, "rate_limit").await,
        33
    );
    shared.cleanup().await;
}

async fn two_instances_run_exactly_k_streams_at_once(shared: SharedStore) {
    let mock = MockUpstream::start().await;
    let yaml = config(&mock, &[key_line("par", "concurrency: { limit: 3 }")], &shared.yaml);
    let a = RelayProcess::start(&yaml).await;
    let b = RelayProcess::start(&yaml).await;
    for round in 0..2 {
        let answers = burst(&[&a, &b], 12, "par", SLOW, STREAM_BODY).await;
        let ok = answers.iter().filter(|(s, _)| *s == 200).count();
        let refused = answers.iter().filter(|(s, _)| *s == 429).count();
        assert_eq!((ok, refused), (3, 9), "round {round}");
        for (s, r) in answers {
            let body = r.bytes().await.unwrap();
            if s == 200 {
                assert!(body.len() > 1000, "the admitted streams ran to their end");
            }
        }
        // Released on completion (a guard spawns the release): wait for it.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(mock.hits(), 6);
    shared.cleanup().await;
}

/// The issue's test: 20 parallel slow streams of one key on two instances sharing one Redis stay
/// within the key's cap (reservations are exact across instances), and the refusals happened.
async fn reservations_keep_twenty_parallel_streams_of_one_key_within_its_cap_on_two_instances(shared: SharedStore) {
    let mock = MockUpstream::start().await;
    let yaml = config(
        &mock,
        &[key_line(
            "two20",
            &format!("cost_limits: {{ daily_usd: {} }}", twenty_streams_cap()),
        )],
        &shared.yaml,
    );
    let a = RelayProcess::start(&yaml).await;
    let b = RelayProcess::start(&yaml).await;
    twenty_streams_within_the_cap(&[&a, &b], &mock, "two20").await;
    shared.cleanup().await;
}

/// Two instances on a Sentinel-watched master: a rate window stays exact across a failover. The
/// relays follow the new master (a request may be refused with 503 while they move over, never
/// admitted uncounted), and what was counted before the failover still counts after it.
#[tokio::test]
async fn two_instances_on_sentinel_keep_a_rate_window_exact_across_a_failover() {
    let sentinels = RedisSentinels::start();
    let mock = MockUpstream::start().await;
    let yaml = config(
        &mock,
        &[key_line("fo", "rate_limit: { window_minutes: 1, requests: 10 }")],
        &sentinels.store_yaml(&redis_prefix()),
    );
    let a = RelayProcess::start(&yaml).await;
    let b = RelayProcess::start(&yaml).await;
    room_in_minute(40).await;
    let before = burst(&[&a, &b], 4, "fo", &[], BODY).await;
    assert!(before.iter().all(|(s, _)| *s == 200));
    let old = sentinels.master_port();
    let new = sentinels.failover();
    assert_ne!(old, new);
    let (mut ok, mut unavailable) = (4, 0);
    let mut refused_by = [false, false];
    for i in 0..200 {
        let r = send(if i % 2 == 0 { &a } else { &b }, "fo", &[], BODY).await;
        match r.status().as_u16() {
            200 => ok += 1,
            429 => refused_by[i % 2] = true,
            503 => unavailable += 1,
            other => panic!("unexpected status {other}"),
        }
        let _ = r.bytes().await;
        if refused_by == [true, true] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refused_by, [true, true], "both instances reach the window's end");
    assert_eq!(
        ok, 10,
        "exactly the window's requests ({unavailable} refused while moving over)"
    );
    assert_eq!(mock.hits(), 10);
}

/// On a Cluster, the limit state of different keys spreads over the masters (each key's state
/// in its own slot).
#[tokio::test]
async fn limits_of_many_keys_spread_over_the_masters_of_a_cluster() {
    use filters::policy::{KeyPolicy, KeyPolicySpec};
    use filters::{Admission, ClientKey, LimitBackend};
    let cluster = RedisCluster::start();
    let p = redis_prefix();
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(claude_relay::store::embedded::EmbeddedStore::open(dir.path()).unwrap());
    let limits = RedisLimits::connect(&RedisTarget::Cluster(cluster.urls()), &p, store, Duration::from_secs(5))
        .await
        .unwrap();
    let spec: KeyPolicySpec = serde_json::from_value(serde_json::json!({
        "rate_limit": {"window_minutes": 1, "requests": 5},
        "concurrency": {"limit": 1},
    }))
    .unwrap();
    let policy = std::sync::Arc::new(KeyPolicy::compile(&spec).unwrap());
    let before = cluster.key_counts();
    for i in 0..30 {
        let key = ClientKey {
            id: format!("spread-{i}").into(),
            name: "spread".into(),
            enabled: true,
            bind: None,
            policy: policy.clone(),
        };
        let admitted = limits.admit(&key, "h", 0, support::now_ms()).await.unwrap();
        assert!(matches!(admitted, Admission::Admitted), "{i}");
        let second = limits.admit(&key, "h2", 0, support::now_ms()).await.unwrap();
        assert!(matches!(second, Admission::Refused(_)), "one slot per key: {i}");
    }
    let after = cluster.key_counts();
    let grew = before.iter().zip(&after).filter(|(b, a)| a > b).count();
    assert_eq!(grew, 3, "keys per master before {before:?}, after {after:?}");
    // The held slots of all 30 keys (on three masters) are renewed.
    assert_eq!(limits.renew_held().await.unwrap(), 30);
}

/// A killed instance's reservations run out with their lease, like its slots.
#[tokio::test]
async fn a_killed_instance_gives_its_reservations_back_after_the_lease_time() {
    let (url, p) = (redis_url(), redis_prefix());
    let mock = MockUpstream::start().await;
    let cap = nanos_usd(estimate(STREAM_BODY) * 3 / 2);
    let yaml = redis_config(
        &mock,
        &url,
        &p,
        &[key_line("rlease", &format!("cost_limits: {{ total_usd: {cap} }}"))],
    );
    let env = [("RELAY_CONCURRENCY_LEASE_TTL", "2s")];
    let a = RelayProcess::start_in(tempfile::tempdir().unwrap(), &yaml, &env).await;
    let b = RelayProcess::start_in(tempfile::tempdir().unwrap(), &yaml, &env).await;
    let held = send(&a, "rlease", STALLED, STREAM_BODY).await;
    assert_eq!(held.status(), 200);
    // Renewed while the stream runs.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_refused(send(&b, "rlease", &[], STREAM_BODY).await, 402, "billing_error").await;
    a.signal("KILL");
    let killed = Instant::now();
    drop(held);
    loop {
        let r = send(&b, "rlease", &[], BODY).await;
        let status = r.status();
        let _ = r.bytes().await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 402);
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "the reservation never ran out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        killed.elapsed() <= Duration::from_millis(2600),
        "{:?}",
        killed.elapsed()
    );
    redis_cleanup(&p).await;
}

/// The memory backend and the Lua script answer the same sequence of admissions and settlements
/// alike: reservations, caps, windows (fixed and rolling) and their refusals.
#[tokio::test]
async fn memory_and_redis_backends_agree() {
    use claude_relay::limits::MemoryLimits;
    use filters::policy::KeyPolicySpec;
    use filters::{Admission, LimitBackend, Reservation};

    let p = redis_prefix();
    let (redis, _) = limits_on_redis(&p).await;
    let memory = MemoryLimits::new();
    let backends: [(&str, &dyn LimitBackend); 2] = [("memory", &memory), ("redis", &redis)];

    /// What an admission answered, comparable across backends.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Admitted,
        Reserved(u64),
        Refused(u16, &'static str, String, Option<bool>),
    }
    let seen = |a: Admission| match a {
        Admission::Admitted => Seen::Admitted,
        Admission::Reserved { room_nanos } => Seen::Reserved(room_nanos),
        // The first words say which case it is (reached, reserved, too large).
        Admission::Refused(r) => Seen::Refused(
            r.status,
            r.reason,
            r.message.split(';').next().unwrap().chars().take(40).collect(),
            // Whether it says to retry in a second (what is left is reserved), else later.
            r.retry_after.map(|s| s == 1),
        ),
    };
    room_in_minute(10).await;
    let cases = [
        r#"{"cost_limits":{"daily_usd":0.000001,"weekly_usd":0.000002,"monthly_usd":0.0000015,"total_usd":0.000003}}"#,
        r#"{"rate_limit":{"window_minutes":1,"requests":3,"cost_usd":0.000001}}"#,
        r#"{"rate_limit":{"window_minutes":1,"requests":3,"cost_usd":0.000001,"rolling":true}}"#,
        r#"{"rate_limit":{"window_minutes":1,"tokens":10,"rolling":true},"cost_limits":{"total_usd":0.000001}}"#,
    ];
    for (i, spec) in cases.iter().enumerate() {
        let spec: KeyPolicySpec = serde_json::from_str(spec).unwrap();
        let mut answers: Vec<Vec<Seen>> = Vec::new();
        for (_, b) in backends {
            let key = limit_key(&format!("par{i}"), "par", &spec);
            let now = || chrono::Utc::now().timestamp_millis();
            let mut out = Vec::new();
            // 400 of 1000 nano-USD at a time: two fit, the third is refused as reserved.
            let r1 = seen(b.admit(&key, "h1", 400, now()).await.unwrap());
            let r2 = seen(b.admit(&key, "h2", 400, now()).await.unwrap());
            out.push(r1);
            out.push(r2);
            out.push(seen(b.admit(&key, "h3", 400, now()).await.unwrap()));
            // More than the whole cap: too large.
            out.push(seen(b.admit(&key, "h4", 5_000, now()).await.unwrap()));
            // Settled at 300 and 8 tokens; freed without a charge.
            let res = |h: &str| Reservation {
                holder: h.into(),
                nanos: 400,
            };
            b.settle(&key, Some(&res("h1")), None, 8, 300, now()).await.unwrap();
            b.unreserve(&key.id, &res("h2")).await.unwrap();
            out.push(seen(b.admit(&key, "h5", 600, now()).await.unwrap()));
            b.settle(
                &key,
                Some(&Reservation {
                    holder: "h5".into(),
                    nanos: 600,
                }),
                None,
                8,
                700,
                now(),
            )
            .await
            .unwrap();
            // 1000 spent: reached.
            out.push(seen(b.admit(&key, "h6", 1, now()).await.unwrap()));
            answers.push(out);
        }
        assert_eq!(answers[0], answers[1], "case {i}: memory vs redis");
        println!("case {i}: {:?}", answers[0]);
    }
    // A settlement frees the concurrency slot it names (and only that one).
    let spec: KeyPolicySpec =
        serde_json::from_str(r#"{"concurrency":{"limit":2},"rate_limit":{"window_minutes":1,"tokens":1000}}"#).unwrap();
    let mut answers: Vec<Vec<Seen>> = Vec::new();
    for (_, b) in backends {
        let key = limit_key("slots", "slots", &spec);
        let mut out = vec![
            seen(b.admit(&key, "s1", 0, support::now_ms()).await.unwrap()),
            seen(b.admit(&key, "s2", 0, support::now_ms()).await.unwrap()),
            seen(b.admit(&key, "s3", 0, support::now_ms()).await.unwrap()),
        ];
        b.settle(&key, None, Some("s1"), 5, 0, support::now_ms()).await.unwrap();
        out.push(seen(b.admit(&key, "s4", 0, support::now_ms()).await.unwrap()));
        out.push(seen(b.admit(&key, "s5", 0, support::now_ms()).await.unwrap()));
        // Without charge or reservation, the slot alone.
        b.settle(&key, None, Some("s2"), 0, 0, support::now_ms()).await.unwrap();
        out.push(seen(b.admit(&key, "s6", 0, support::now_ms()).await.unwrap()));
        answers.push(out);
    }
    assert_eq!(answers[0], answers[1], "slots: memory vs redis");
    assert_eq!(
        answers[0].iter().filter(|a| **a == Seen::Admitted).count(),
        4,
        "{:?}",
        answers[0]
    );
    redis_cleanup(&p).await;
}

#[tokio::test]
async fn a_killed_instance_gives_its_slots_back_after_the_lease_time() {
    let (url, p) = (redis_url(), redis_prefix());
    let mock = MockUpstream::start().await;
    let yaml = redis_config(&mock, &url, &p, &[key_line("lease", "concurrency: { limit: 2 }")]);
    let env = [("RELAY_CONCURRENCY_LEASE_TTL", "2s")];
    let a = RelayProcess::start_in(tempfile::tempdir().unwrap(), &yaml, &env).await;
    let b = RelayProcess::start_in(tempfile::tempdir().unwrap(), &yaml, &env).await;

    // A holds both slots with streams that stay open.
    let s1 = send(&a, "lease", STALLED, STREAM_BODY).await;
    let s2 = send(&a, "lease", STALLED, STREAM_BODY).await;
    assert_eq!((s1.status().as_u16(), s2.status().as_u16()), (200, 200));
    assert_refused(send(&b, "lease", &[], BODY).await, 429, "rate_limit_error").await;
    // Held longer than the lease time: A renews them.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_refused(send(&b, "lease", &[], BODY).await, 429, "rate_limit_error").await;

    a.signal("KILL");
    let killed = Instant::now();
    drop((s1, s2));
    // Still held right after the kill (nobody released them)...
    assert_refused(send(&b, "lease", &[], BODY).await, 429, "rate_limit_error").await;
    // ...and back within the lease time.
    let took = admitted_within(&b, "lease", Duration::from_secs(5)).await;
    let since_kill = killed.elapsed();
    assert!(
        since_kill <= Duration::from_millis(2600),
        "slots came back {since_kill:?} after the kill"
    );
    assert!(took > Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let both = burst(&[&b], 2, "lease", STALLED, STREAM_BODY).await;
    assert!(both.iter().all(|(s, _)| *s == 200), "both slots are back");
    drop(both);
    redis_cleanup(&p).await;
}

/// A fixed window's counters in Redis expire one window after the window ends when only
/// admissions write them (a key without token or cost limits): idle keys leave nothing behind.
#[tokio::test]
async fn a_fixed_windows_counters_on_redis_expire_one_window_after_it_ends() {
    let (url, p) = (redis_url(), redis_prefix());
    let mock = MockUpstream::start().await;
    let yaml = redis_config(
        &mock,
        &url,
        &p,
        &[key_line("ttl", "rate_limit: { window_minutes: 1, requests: 1000 }")],
    );
    let relay = RelayProcess::start(&yaml).await;
    room_in_minute(20).await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let rate = format!("{p}limit:rate:config.ttl");
    for i in 0..3 {
        // Only admissions write this key's window (no token or cost limit: nothing to charge).
        assert_eq!(complete(&relay, "ttl").await, 200);
        let (pttl, start): (i64, i64) = redis::pipe()
            .cmd("PTTL")
            .arg(&rate)
            .cmd("HGET")
            .arg(&rate)
            .arg("start")
            .query_async(&mut c)
            .await
            .unwrap();
        let now_ms = chrono::Utc::now().timestamp_millis();
        // Not before the window's end plus one window (less the time since the last write), never
        // more than two windows from now.
        assert!(pttl > 0, "request {i}: the window's hash has no expiry ({pttl})");
        assert!(pttl <= 120_000, "request {i}: {pttl} ms");
        assert!(
            now_ms + pttl >= start + 120_000 - 2_000,
            "request {i}: expires at {} for a window from {start}",
            now_ms + pttl
        );
    }
    drop(relay);
    redis_cleanup(&p).await;
}

#[tokio::test]
async fn spend_caps_on_redis_survive_lost_counters_and_restarts() {
    let (url, p) = (redis_url(), redis_prefix());
    let mock = MockUpstream::start().await;
    let yaml = redis_config(
        &mock,
        &url,
        &p,
        &[key_line(
            "rcap",
            &format!("cost_limits: {{ daily_usd: {}, weekly_usd: 1000 }}", cap_for(2.0)),
        )],
    );
    let mut a = RelayProcess::start(&yaml).await;
    let mut b = RelayProcess::start(&yaml).await;
    assert_eq!(complete(&a, "rcap").await, 200);
    assert_eq!(complete(&b, "rcap").await, 200);
    assert_refused(send(&a, "rcap", &[], BODY).await, 402, "billing_error").await;
    assert_refused(send(&b, "rcap", &[], BODY).await, 402, "billing_error").await;
    // Stopped gracefully: both write their last usage statistics.
    assert!(a.stop().success());
    assert!(b.stop().success());
    // Lose the counters; a new instance reads the spend back from the usage statistics.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let deleted: i64 = redis::cmd("DEL")
        .arg(format!("{p}limit:spend:config.rcap"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let a = RelayProcess::start(&yaml).await;
    assert_refused(send(&a, "rcap", &[], BODY).await, 402, "billing_error").await;
    assert_eq!(mock.hits(), 2);
    redis_cleanup(&p).await;
}

/// A private Redis server, so that its command statistics count only this test's relay.
struct PrivateRedis {
    node: RedisNode,
}

/// The SHA1 the relay's `EVALSHA` calls name a script by.
fn script_sha(script: &str) -> String {
    redis::Script::new(script).get_hash().to_string()
}

/// A client key with the policy `spec`, for the tests that call a limit backend directly.
fn limit_key(id: &str, name: &str, spec: &filters::policy::KeyPolicySpec) -> filters::ClientKey {
    filters::ClientKey {
        id: id.into(),
        name: name.into(),
        enabled: true,
        bind: None,
        policy: std::sync::Arc::new(filters::policy::KeyPolicy::compile(spec).unwrap()),
    }
}

/// The Redis limit backend on the test Redis under prefix `p` (5 s leases), and a connection
/// of the test's own to look at what it wrote.
async fn limits_on_redis(p: &str) -> (RedisLimits, redis::aio::MultiplexedConnection) {
    let url = redis_url();
    let store = std::sync::Arc::new(
        claude_relay::store::redis::RedisStore::connect_with_prefix(&url, p)
            .await
            .unwrap(),
    );
    let limits = RedisLimits::connect(&RedisTarget::Node(url.clone()), p, store, Duration::from_secs(5))
        .await
        .unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    (limits, client.get_multiplexed_async_connection().await.unwrap())
}

/// `redis-cli monitor` on a private Redis, writing to a file until stopped.
struct Monitor {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Monitor {
    /// Every command Redis ran while the monitor was on, one MONITOR line each (`<s>.<us> [db
    /// addr] "cmd" ...`; commands run by scripts show as `[0 lua]`).
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl PrivateRedis {
    async fn start() -> PrivateRedis {
        PrivateRedis {
            node: RedisNode::start(),
        }
    }

    fn url(&self) -> String {
        self.node.url()
    }

    /// Starts `MONITOR` (its file in `dir`) and returns once it is on.
    async fn monitor(&self, dir: &std::path::Path) -> Monitor {
        let log = dir.join("monitor.log");
        let child = Command::new("redis-cli")
            .args(["-p", &self.node.port().to_string(), "monitor"])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        eventually(|| async { std::fs::read_to_string(&log).ok().filter(|s| s.starts_with("OK")) }).await;
        Monitor { child, log }
    }

    /// `cmdstat_<name>` calls from `INFO commandstats`, and the server's time (µs) at that very
    /// moment: both are read in one transaction, so no command runs between them.
    async fn calls(&self) -> (std::collections::HashMap<String, u64>, u64) {
        let client = redis::Client::open(self.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let (info, (secs, micros)): (String, (u64, u64)) = redis::pipe()
            .atomic()
            .cmd("INFO")
            .arg("commandstats")
            .cmd("TIME")
            .query_async(&mut c)
            .await
            .unwrap();
        let calls = info
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
                Some((name.to_string(), calls.parse().ok()?))
            })
            .collect();
        (calls, secs * 1_000_000 + micros)
    }
}

/// With every limit set, a sticky session and an account with a concurrency cap, one request
/// costs two scripts on Redis before the upstream (the key's admission; the session's binding
/// with the account's lease) and, after the response, one settlement script (charge, reservation
/// and concurrency slot together) and the account lease's `ZREM`. Counted twice: `INFO commandstats` before and
/// after, and `MONITOR` to tell the admission script from the other scripts the relay runs.
#[tokio::test]
async fn one_redis_round_trip_admits_a_request_with_every_limit() {
    let redis_server = PrivateRedis::start().await;
    let url = redis_server.url();
    let p = redis_prefix();
    let mock = MockUpstream::start().await;
    let yaml = redis_config(
        &mock,
        &url,
        &p,
        &[key_line(
            "all",
            "rate_limit: { window_minutes: 60, requests: 100000, tokens: 100000000, cost_usd: 1000 }, \
             cost_limits: { daily_usd: 1000, weekly_usd: 1000, total_usd: 1000 }, \
             concurrency: { limit: 8, queue: 4, queue_timeout_ms: 1000 }",
        )],
    )
    .replacen(
        "api_key: sk-ant-api03-upstream-main",
        "api_key: sk-ant-api03-upstream-main, max_concurrency: 50",
        1,
    ) + "stats: { flush_interval: 2s }\n";
    // (The usage flushes are scripts too: at the tests' usual 200 ms they would be about one for
    // every two requests of this run.)
    assert!(yaml.contains("max_concurrency: 50"));
    let relay = RelayProcess::start(&yaml).await;
    // Warm-up: loads the scripts and reads the key's recorded spend once.
    for _ in 0..2 {
        let r = send(&relay, "all", &[("x-claude-code-session-id", "rt-session")], BODY).await;
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let admit_sha = script_sha(include_str!("../src/limits/lua/admit.lua"));
    let settle_sha = script_sha(include_str!("../src/limits/lua/settle.lua"));
    let sticky_lease_sha = script_sha(include_str!("../src/store/lua/sticky_lease.lua"));
    let monitor = redis_server.monitor(relay.dir.path()).await;
    let (before, before_us) = redis_server.calls().await;

    const N: u64 = 40;
    for i in 0..N {
        let body = if i % 2 == 0 { BODY } else { STREAM_BODY };
        let r = send(&relay, "all", &[("x-claude-code-session-id", "rt-session")], body).await;
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (after, after_us) = redis_server.calls().await;
    // Let MONITOR print everything up to that moment before it stops.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = monitor.stop();

    let delta = |cmd: &str| after.get(cmd).copied().unwrap_or(0) - before.get(cmd).copied().unwrap_or(0);
    let scripts = delta("evalsha") + delta("eval");
    // Commands clients sent (not the ones scripts ran, shown as `[0 lua]`) between the two
    // commandstats readings: MONITOR lines start with the server time, `1732712345.123456`.
    let in_window = |l: &str| {
        let ts = l.split_whitespace().next().and_then(|t| {
            let (s, us) = t.split_once('.')?;
            Some(s.parse::<u64>().ok()? * 1_000_000 + us.parse::<u64>().ok()?)
        });
        ts.is_some_and(|t| t > before_us && t <= after_us)
    };
    let sent: Vec<&str> = log.lines().filter(|l| !l.contains(" lua]") && in_window(l)).collect();
    let count = |pred: &dyn Fn(&str) -> bool| sent.iter().filter(|l| pred(&l.to_lowercase())).count() as u64;
    let admissions = count(&|l| l.contains("\"evalsha\"") && l.contains(&admit_sha));
    let all_scripts = count(&|l| l.contains("\"evalsha\"") || l.contains("\"eval\""));
    let releases = count(&|l| l.contains("\"zrem\"") && l.contains("limit:inflight:"));
    let settles = count(&|l| l.contains("\"evalsha\"") && l.contains(&settle_sha));
    let sticky_leases = count(&|l| l.contains("\"evalsha\"") && l.contains(&sticky_lease_sha));
    let lease_releases = count(&|l| l.contains("\"zrem\"") && l.contains("lease:account:"));
    println!(
        "{N} requests: {scripts} script calls in commandstats ({admissions} admissions, {settles} settlements, \
         {sticky_leases} bindings with leases, {} others: usage flushes); {releases} separate releases, \
         {lease_releases} account lease releases",
        all_scripts - admissions - settles - sticky_leases
    );
    assert_eq!(admissions, N, "exactly one admission script per request");
    assert_eq!(
        scripts, all_scripts,
        "MONITOR saw every script call that commandstats counted"
    );
    assert_eq!(
        settles, N,
        "one settlement (reservation freed, usage charged) per request"
    );
    assert_eq!(releases, 0, "the settlement frees the slot: no release of its own");
    assert_eq!(
        sticky_leases, N,
        "one script for the session's binding and the account's lease per request"
    );
    assert_eq!(lease_releases, N, "one account lease release per request");
    // Any other script is the periodic usage writer's (last-used times), not per request.
    assert!(
        scripts - admissions - settles - sticky_leases < N / 2,
        "{scripts} scripts for {N} requests"
    );
    assert_eq!(mock.hits() as u64, N + 2);
}

/// The store calls of one request go in two round trips, one before the upstream and one after,
/// however slow the link to Redis: the key's admission goes out together with the session's
/// binding and the account's lease, and the settlement together with the release of the
/// account's lease. Redis sits behind a link that holds every byte 40 ms each way (an 80 ms round
/// trip): `MONITOR` (on Redis itself) sees each pair arrive within a few milliseconds, where one
/// call waiting for the other's answer would put a round trip between them; and a request takes
/// one round trip, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calls_before_and_after_the_upstream_share_one_round_trip_each() {
    const DELAY: Duration = Duration::from_millis(40);
    let redis_server = PrivateRedis::start().await;
    let link = support::redis_servers::SlowLink::start(redis_server.node.port(), DELAY).await;
    let p = redis_prefix();
    let mock = MockUpstream::start().await;
    let yaml = redis_config(
        &mock,
        &link.url(),
        &p,
        &[
            key_line(
                "all",
                "rate_limit: { window_minutes: 60, requests: 100000, tokens: 100000000, cost_usd: 1000 }, \
                 cost_limits: { daily_usd: 1000, weekly_usd: 1000, total_usd: 1000 }, \
                 concurrency: { limit: 8 }",
            ),
            key_line("plain", ""),
        ],
    )
    .replacen(
        "api_key: sk-ant-api03-upstream-main",
        "api_key: sk-ant-api03-upstream-main, max_concurrency: 50",
        1,
    );
    assert!(yaml.contains("max_concurrency: 50"));
    let relay = RelayProcess::start(&yaml).await;
    let session = [("x-claude-code-session-id", "slow-link-session")];
    // Warm-up: loads the scripts, reads the key's recorded spend, binds the sessions.
    for name in ["all", "all", "plain", "plain"] {
        let r = send(&relay, name, &session, BODY).await;
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let admit_sha = script_sha(include_str!("../src/limits/lua/admit.lua"));
    let settle_sha = script_sha(include_str!("../src/limits/lua/settle.lua"));
    let sticky_lease_sha = script_sha(include_str!("../src/store/lua/sticky_lease.lua"));
    let monitor = redis_server.monitor(relay.dir.path()).await;

    // Requests of the key with every limit, and of a key without limits (whose only store call
    // before the upstream is the session's binding with the account's lease), in turn.
    const N: usize = 6;
    let (mut took, mut took_plain) = (Vec::new(), Vec::new());
    for i in 0..2 * N {
        let body = if i % 4 < 2 { BODY } else { STREAM_BODY };
        let (name, into) = if i % 2 == 0 {
            ("all", &mut took)
        } else {
            ("plain", &mut took_plain)
        };
        let started = Instant::now();
        let r = send(&relay, name, &session, body).await;
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
        into.push(started.elapsed());
        // The settlement runs after the answer; let it land before the next request.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The first request of a conversation binds its session: that write is not waited for.
    let mut took_new = Vec::new();
    for i in 0..3 {
        let fresh = format!("slow-link-new-{i}");
        let started = Instant::now();
        let r = send(&relay, "all", &[("x-claude-code-session-id", fresh.as_str())], BODY).await;
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
        took_new.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let log = monitor.stop();

    // When each client call reached Redis (ms), from MONITOR lines `<s>.<us> [db addr] "cmd" ...`.
    let at = |pred: &dyn Fn(&str) -> bool| -> Vec<f64> {
        log.lines()
            .filter(|l| !l.contains(" lua]") && pred(&l.to_lowercase()))
            .filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
            .map(|t| t * 1000.0)
            .collect()
    };
    let admissions = at(&|l| l.contains(&admit_sha));
    let bindings = at(&|l| l.contains(&sticky_lease_sha));
    let settles = at(&|l| l.contains(&settle_sha));
    let lease_releases = at(&|l| l.contains("\"zrem\"") && l.contains("lease:account:"));
    // The key without limits has bindings and lease releases too: only those of the key with
    // limits are paired, each within half a round trip of its admission or settlement.
    let near = |of: &[f64], xs: Vec<f64>| -> Vec<f64> {
        xs.into_iter()
            .filter(|t| of.iter().any(|s| (s - t).abs() < 40.0))
            .collect()
    };
    let bindings = near(&admissions, bindings);
    let lease_releases = near(&settles, lease_releases);
    for (what, a, b) in [
        ("admission and binding with lease", &admissions, &bindings),
        ("settlement and lease release", &settles, &lease_releases),
    ] {
        // The key with limits' requests, and the three of new sessions.
        assert_eq!(a.len(), N + 3, "{what}: {a:?} {b:?}");
        assert_eq!(b.len(), N + 3, "{what}: {a:?} {b:?}");
        let apart: Vec<f64> = a.iter().zip(b.iter()).map(|(x, y)| x - y).collect();
        println!("{what}: arrived {apart:.1?} ms apart");
        // One waiting for the other would put a whole round trip (80 ms) between them.
        assert!(
            apart.iter().all(|d| d.abs() < 25.0),
            "{what}: arrived {apart:?} ms apart\n{log}"
        );
    }
    took.sort();
    took_plain.sort();
    let (median, median_plain) = (took[N / 2], took_plain[N / 2]);
    println!("requests took {took:?}; without limits {took_plain:?}");
    let rtt = 2 * DELAY;
    assert!(median_plain >= rtt, "the link delays every store call: {took_plain:?}");
    // A second round trip would add 80 ms.
    assert!(
        median < median_plain + rtt / 2,
        "the admission adds no round trip to the binding and lease: {took:?} against {took_plain:?}"
    );
    took_new.sort();
    println!("first requests of new sessions took {took_new:?}");
    assert!(
        took_new[1] < median_plain + rtt / 2,
        "binding a new session adds no round trip: {took_new:?} against {took_plain:?}"
    );
    assert_eq!(mock.hits(), 2 * N + 4 + 3);
}

/// A request asks for its account's slot while its key is being admitted, except when the key
/// was refused here lately: a client that keeps sending requests its key refuses does not keep
/// taking slots of the account (which would crowd out other keys' requests).
#[tokio::test]
async fn a_key_refused_lately_takes_no_account_slot_before_it_is_admitted() {
    let redis_server = PrivateRedis::start().await;
    let p = redis_prefix();
    let mock = MockUpstream::start().await;
    let yaml = redis_config(
        &mock,
        &redis_server.url(),
        &p,
        &[key_line("once", "rate_limit: { window_minutes: 60, requests: 1 }")],
    )
    .replacen(
        "api_key: sk-ant-api03-upstream-main",
        "api_key: sk-ant-api03-upstream-main, max_concurrency: 5",
        1,
    );
    let relay = RelayProcess::start(&yaml).await;
    assert_eq!(complete(&relay, "once").await, 200);
    let monitor = redis_server.monitor(relay.dir.path()).await;
    for _ in 0..5 {
        assert_eq!(complete(&relay, "once").await, 429);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = monitor.stop();
    let admit_sha = script_sha(include_str!("../src/limits/lua/admit.lua"));
    let sent = |pred: &dyn Fn(&str) -> bool| {
        log.lines()
            .filter(|l| !l.contains(" lua]") && pred(&l.to_lowercase()))
            .count()
    };
    assert_eq!(sent(&|l| l.contains(&admit_sha)), 5, "{log}");
    // The first refusal had taken the slot (and gave it back); the four after it took none.
    let takes = sent(&|l| l.contains("\"evalsha\"") && l.contains("lease:account:"));
    let gives = sent(&|l| l.contains("\"zrem\"") && l.contains("lease:account:"));
    assert_eq!((takes, gives), (1, 1), "{log}");
    assert_eq!(mock.hits(), 1);
}

/// The admission script computes days and weeks on the Redis clock in Lua; they must be the ones
/// the Rust side (memory backend, spend seeds) uses. Also: activation is first-write-wins, and
/// held slots are renewed.
#[tokio::test]
async fn redis_backend_agrees_with_the_rust_calendar() {
    use filters::policy::KeyPolicySpec;
    use filters::{Admission, LimitBackend};

    let p = redis_prefix();
    let (limits, mut c) = limits_on_redis(&p).await;
    for (i, reset) in ["mon 00:00", "wed 12:30", "sun 23:59", "thu 00:01"].iter().enumerate() {
        let spec: KeyPolicySpec = serde_json::from_value(serde_json::json!({
            "cost_limits": {"daily_usd": 1, "weekly_usd": 0, "weekly_reset": reset},
            "concurrency": {"limit": 1},
        }))
        .unwrap();
        let key = limit_key(&format!("cal{i}"), "cal", &spec);
        let now_s = chrono::Utc::now().timestamp();
        // A weekly cap of 0 is spent at once: the refusal says when the week ends.
        let Admission::Refused(r) = limits.admit(&key, "h", 0, now_s * 1000).await.unwrap() else {
            panic!("a zero weekly cap refuses");
        };
        assert_eq!(r.reason, "weekly_cost_limit");
        let (wd, minute) = filters::policy::parse_weekly_reset(reset).unwrap();
        let week = claude_relay::limits::week_start(now_s, wd, minute);
        let stored: (i64, i64) = redis::cmd("HMGET")
            .arg(format!("{p}limit:spend:cal{i}"))
            .arg("day_start")
            .arg("week_start")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(stored, (claude_relay::limits::day_start(now_s), week), "{reset}");
        let expected = week + 7 * 86_400 - now_s;
        let got = r.retry_after.unwrap() as i64;
        assert!(
            (expected - 1..=expected + 1).contains(&got),
            "{reset}: {got} vs {expected}"
        );
    }

    // First use wins, on every instance.
    assert_eq!(limits.activate("act", 1000).await.unwrap(), 1000);
    assert_eq!(limits.activate("act", 2000).await.unwrap(), 1000);

    // A held slot is renewed, a released one is gone.
    let spec: KeyPolicySpec = serde_json::from_value(serde_json::json!({"concurrency": {"limit": 1}})).unwrap();
    let key = limit_key("slot", "slot", &spec);
    assert!(matches!(
        limits.admit(&key, "h1", 0, 0).await.unwrap(),
        Admission::Admitted
    ));
    let score = |c: &mut redis::aio::MultiplexedConnection| {
        let mut c = c.clone();
        let k = format!("{p}limit:inflight:slot");
        async move {
            redis::cmd("ZSCORE")
                .arg(k)
                .arg("0:h1")
                .query_async::<Option<f64>>(&mut c)
                .await
                .unwrap()
        }
    };
    let first = score(&mut c).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(limits.renew_held().await.unwrap(), 1);
    assert!(score(&mut c).await.unwrap() > first, "renewed");
    assert!(matches!(
        limits.admit(&key, "h2", 0, 0).await.unwrap(),
        Admission::Refused(_)
    ));
    limits.release("slot", "h1").await.unwrap();
    assert_eq!(score(&mut c).await, None);
    assert_eq!(limits.renew_held().await.unwrap(), 0);
    redis_cleanup(&p).await;
}

/// A key's spend on Redis is one `total` and a base per period. A spend hash written before the
/// bases (`day`, `week`, `month` of their own) is read as it stands and rewritten with bases; a
/// settlement then adds to `total` alone, and each period's spend follows. A charge that finds a
/// fixed window's hash gone (expired) leaves it with an expiry again. The requests in flight keep
/// the sum of their reservations beside them, which an expired lease and a request freed without
/// a settlement leave exactly; the month's bounds the relay sends are checked against Redis's clock.
#[tokio::test]
async fn limits_on_redis_keep_the_spend_as_a_total_and_the_reserved_sum_beside_the_requests_in_flight() {
    use filters::policy::KeyPolicySpec;
    use filters::{Admission, LimitBackend, Reservation};

    let p = redis_prefix();
    let (limits, mut c) = limits_on_redis(&p).await;
    // Not across midnight (UTC): the day's spend starts again then.
    let left = 86_400 - chrono::Utc::now().timestamp().rem_euclid(86_400);
    if left < 10 {
        tokio::time::sleep(Duration::from_secs(left as u64 + 1)).await;
    }
    let now_s = chrono::Utc::now().timestamp();
    let spend = format!("{p}limit:spend:legacy");
    let (day, week, month) = (
        claude_relay::limits::day_start(now_s),
        claude_relay::limits::week_start(now_s, 0, 0),
        claude_relay::limits::month_start(now_s),
    );
    let _: () = redis::cmd("HSET")
        .arg(&spend)
        .arg(&[
            ("day_start", day),
            ("day", 400_000_000),
            ("week_start", week),
            ("week", 500_000_000),
            ("month_start", month),
            ("month", 600_000_000),
            ("total", 700_000_000),
        ])
        .query_async(&mut c)
        .await
        .unwrap();
    let spec: KeyPolicySpec = serde_json::from_value(serde_json::json!({
        "rate_limit": {"window_minutes": 1, "tokens": 1_000_000},
        "cost_limits": {"daily_usd": 1, "weekly_usd": 10, "monthly_usd": 10, "total_usd": 10, "weekly_reset": "mon 00:00"},
        "concurrency": {"limit": 2},
    }))
    .unwrap();
    let key = limit_key("legacy", "legacy", &spec);
    let peek = limits.peek(&key, now_s * 1000).await.unwrap();
    assert_eq!(
        (peek.day_nanos, peek.week_nanos, peek.month_nanos, peek.total_nanos),
        (400_000_000, 500_000_000, 600_000_000, 700_000_000)
    );
    // The day's $0.40 is read: $0.50 more leaves $0.10 under the daily cap.
    let admitted = limits.admit(&key, "h1", 500_000_000, now_s * 1000).await.unwrap();
    assert!(
        matches!(
            admitted,
            Admission::Reserved {
                room_nanos: 100_000_000
            }
        ),
        "{admitted:?}"
    );
    let fields: std::collections::HashMap<String, i64> =
        redis::cmd("HGETALL").arg(&spend).query_async(&mut c).await.unwrap();
    assert_eq!(fields.get("day"), None, "{fields:?}");
    assert_eq!(fields["total"] - fields["day_base"], 400_000_000, "{fields:?}");
    let inflight: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(format!("{p}limit:inflight:legacy"))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(inflight.len(), 2, "{inflight:?}");
    assert_eq!(
        inflight[0],
        ("~reserved".to_string(), -500_000_000.0),
        "the sum beside the members"
    );
    assert_eq!(
        inflight[1].0, "500000000:h1",
        "one member holds the slot and the reservation"
    );
    let peek = limits.peek(&key, now_s * 1000).await.unwrap();
    assert_eq!((peek.in_flight, peek.reserved_nanos), (1, 500_000_000));

    // The window's hash is gone (as when it expired) when the charge arrives.
    let rate = format!("{p}limit:rate:legacy");
    let _: () = redis::cmd("DEL").arg(&rate).query_async(&mut c).await.unwrap();
    let held = Reservation {
        holder: "h1".into(),
        nanos: 500_000_000,
    };
    limits
        .settle(&key, Some(&held), Some("h1"), 20, 300_000_000, now_s * 1000)
        .await
        .unwrap();
    let pttl: i64 = redis::cmd("PTTL").arg(&rate).query_async(&mut c).await.unwrap();
    assert!((1..=120_000).contains(&pttl), "the window's hash expires ({pttl})");
    let after: std::collections::HashMap<String, i64> =
        redis::cmd("HGETALL").arg(&spend).query_async(&mut c).await.unwrap();
    assert_eq!(after["total"], 1_000_000_000);
    for base in ["day_base", "week_base", "month_base"] {
        assert_eq!(after[base], fields[base], "a settlement writes the total only");
    }
    let peek = limits.peek(&key, now_s * 1000).await.unwrap();
    assert_eq!(
        (peek.day_nanos, peek.week_nanos, peek.month_nanos, peek.total_nanos),
        (700_000_000, 800_000_000, 900_000_000, 1_000_000_000)
    );
    assert_eq!((peek.in_flight, peek.reserved_nanos), (0, 0));
    // $0.70 spent today: $0.40 more does not fit under the daily cap.
    let Admission::Refused(r) = limits.admit(&key, "h2", 400_000_000, now_s * 1000).await.unwrap() else {
        panic!("over the daily cap");
    };
    assert_eq!(r.reason, "daily_cost_limit");
    // The window's first charge sets its expiry again; a later one keeps the expiry it has.
    for (i, holder) in ["h3", "h4"].into_iter().enumerate() {
        assert!(matches!(
            limits.admit(&key, holder, 100_000_000, now_s * 1000).await.unwrap(),
            Admission::Reserved { .. }
        ));
        if i == 1 {
            let _: () = redis::cmd("PEXPIRE")
                .arg(&rate)
                .arg(90_000)
                .query_async(&mut c)
                .await
                .unwrap();
        }
        let held = Reservation {
            holder: holder.into(),
            nanos: 100_000_000,
        };
        limits
            .settle(&key, Some(&held), Some(holder), 5, 1, now_s * 1000)
            .await
            .unwrap();
    }
    let pttl: i64 = redis::cmd("PTTL").arg(&rate).query_async(&mut c).await.unwrap();
    assert!(pttl <= 90_000, "not set again ({pttl})");

    // A lease that ran out (its instance stopped renewing it) leaves the sum at the next
    // admission; a request freed without a settlement leaves it at once.
    let flight = format!("{p}limit:inflight:legacy");
    let spec: KeyPolicySpec =
        serde_json::from_value(serde_json::json!({"cost_limits": {"total_usd": 10}, "concurrency": {"limit": 2}}))
            .unwrap();
    let capped = limit_key("legacy", "legacy", &spec);
    let total_left = 10_000_000_000 - 1_000_000_002;
    for (holder, nanos) in [("e1", 2_000_000_000u64), ("e2", 3_000_000_000)] {
        let a = limits.admit(&capped, holder, nanos, now_s * 1000).await.unwrap();
        assert!(matches!(a, Admission::Reserved { .. }), "{a:?}");
    }
    let peek = limits.peek(&capped, now_s * 1000).await.unwrap();
    assert_eq!((peek.in_flight, peek.reserved_nanos), (2, 5_000_000_000));
    // Full: a third request waits for a slot.
    assert!(matches!(
        limits.admit(&capped, "e3", 1, now_s * 1000).await.unwrap(),
        Admission::Refused(_)
    ));
    let _: () = redis::cmd("ZADD")
        .arg(&flight)
        .arg("XX")
        .arg(1)
        .arg("2000000000:e1")
        .query_async(&mut c)
        .await
        .unwrap();
    let peek = limits.peek(&capped, now_s * 1000).await.unwrap();
    assert_eq!(
        (peek.in_flight, peek.reserved_nanos),
        (1, 3_000_000_000),
        "read-only, expired skipped"
    );
    let a = limits.admit(&capped, "e3", 1_000_000_000, now_s * 1000).await.unwrap();
    let Admission::Reserved { room_nanos } = a else {
        panic!("{a:?}")
    };
    assert_eq!(room_nanos, total_left - 3_000_000_000 - 1_000_000_000);
    let sum: f64 = redis::cmd("ZSCORE")
        .arg(&flight)
        .arg("~reserved")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        sum, -4_000_000_000.0,
        "e1's amount left the sum when its member was dropped"
    );
    let e2 = Reservation {
        holder: "e2".into(),
        nanos: 3_000_000_000,
    };
    limits.unreserve("legacy", &e2).await.unwrap();
    limits.release("legacy", "e2").await.unwrap();
    let peek = limits.peek(&capped, now_s * 1000).await.unwrap();
    assert_eq!((peek.in_flight, peek.reserved_nanos), (1, 1_000_000_000));

    // The month's bounds come with the call, by the relay's clock; when Redis's clock is outside
    // them (here the relay's is a year behind), the script works the month out itself.
    let spec: KeyPolicySpec = serde_json::from_value(serde_json::json!({"cost_limits": {"monthly_usd": 0}})).unwrap();
    let key = limit_key("month", "month", &spec);
    for relay_now_s in [now_s, now_s - 365 * 86_400] {
        let Admission::Refused(r) = limits.admit(&key, "m", 0, relay_now_s * 1000).await.unwrap() else {
            panic!("a zero monthly cap refuses");
        };
        assert_eq!(r.reason, "monthly_cost_limit");
        let now_s = chrono::Utc::now().timestamp();
        let expected = claude_relay::limits::next_month_start(now_s) - now_s;
        let got = r.retry_after.unwrap() as i64;
        assert!((expected - 2..=expected + 1).contains(&got), "{got} vs {expected}");
    }
    redis_cleanup(&p).await;
}
