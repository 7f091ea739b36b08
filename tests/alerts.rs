//! Alerts through webhooks, end to end: the real binary, a mock upstream and webhook receivers on
//! real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use claude_relay::usage::TokenUsage;
use claude_relay::usage::pricing::PricingTable;
use serde_json::{Value, json};
use support::admin::Admin;
use support::mock::MockUpstream;
use support::serve::{Served, serve};
use support::{ALICE, RelayProcess, account_yaml, client, eventually, metric};

const BODY: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":1,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// A webhook receiver: records every post (path and JSON body) and answers the next status of
/// its script (200 once the script is used up), after `delay`.
struct Receiver {
    state: Arc<ReceiverState>,
    _served: Served,
}

struct ReceiverState {
    posts: Mutex<Vec<(String, Value)>>,
    script: Mutex<VecDeque<u16>>,
    delay: Duration,
}

async fn receive(State(state): State<Arc<ReceiverState>>, uri: Uri, body: Bytes) -> StatusCode {
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.posts.lock().unwrap().push((uri.path().to_string(), json));
    tokio::time::sleep(state.delay).await;
    let status = state.script.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    async fn start(script: &[u16], delay: Duration) -> Receiver {
        let state = Arc::new(ReceiverState {
            posts: Mutex::new(Vec::new()),
            script: Mutex::new(script.iter().copied().collect()),
            delay,
        });
        let router = Router::new().fallback(receive).with_state(state.clone());
        Receiver {
            _served: serve(router).await,
            state,
        }
    }

    /// The webhook URL for `path`; the path stands for the secret part of a real webhook URL.
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self._served.addr)
    }

    /// The first body posted with `event`, waiting up to 15 s for it.
    async fn wait_for(&self, event: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(b) = self.events(event).pop() {
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "no {event} alert; received: {:?}",
                self.posts()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn posts(&self) -> Vec<(String, Value)> {
        self.state.posts.lock().unwrap().clone()
    }

    /// The bodies posted whose generic `event` is `event`.
    fn events(&self, event: &str) -> Vec<Value> {
        self.posts()
            .into_iter()
            .map(|(_, b)| b)
            .filter(|b| b["event"] == event)
            .collect()
    }
}

async fn send(relay: &RelayProcess, key: &str) -> u16 {
    client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", key)
        .body(BODY)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `relay_alert_deliveries_total` of one webhook and outcome (labels as exposed: by name).
async fn deliveries(relay: &RelayProcess, webhook: &str, outcome: &str) -> Option<f64> {
    metric(
        relay,
        &format!("relay_alert_deliveries_total{{outcome=\"{outcome}\",webhook=\"{webhook}\"}}"),
    )
    .await
}

/// Fails if the relay's log or an admin answer shows one of the secret webhook paths.
fn assert_no_secret(relay: &RelayProcess, admin_answers: &[&str], secrets: &[&str]) {
    let log = relay.log_text();
    for s in secrets {
        assert!(!log.contains(s), "the log shows a webhook URL ({s}):\n{log}");
        for a in admin_answers {
            assert!(!a.contains(s), "an admin answer shows a webhook URL ({s}): {a}");
        }
    }
}

#[tokio::test]
async fn an_account_benched_and_back_raises_one_alert_each_and_repeats_are_deduplicated() {
    let upstream = MockUpstream::start().await;
    upstream.set_status(Some(529));
    let hook = Receiver::start(&[], Duration::ZERO).await;
    let extra = format!(
        "scheduler: {{ failover: {{ evidence_keys: 1 }}, cooldowns: {{ \"529\": 2s }} }}\naccounts:\n{}alerts:\n  webhooks:\n    - {{ name: ops, kind: generic, url: \"{}\" }}\n  dedup: 1h\n",
        account_yaml("main", &upstream.url(), ""),
        hook.url("/services/T000/B000/SECRET-ops")
    );
    let relay = RelayProcess::start(&extra).await;

    assert_eq!(send(&relay, ALICE).await, 529);
    let down = eventually(|| async { hook.events("account_unhealthy").pop() }).await;
    assert_eq!(down["subject"], "main");
    assert_eq!(down["severity"], "warning");
    assert_eq!(down["details"]["account"], "main");
    assert_eq!(down["details"]["state"], "cooling_down");
    assert!(down["message"].as_str().unwrap().contains("main"), "{down}");
    assert!(down["at"].as_str().unwrap().ends_with('Z'), "{down}");
    assert!(down["instance"].is_string(), "{down}");

    // The upstream recovers; once the cooldown ends the account serves again.
    upstream.set_status(None);
    eventually(|| async { (send(&relay, ALICE).await == 200).then_some(()) }).await;
    let up = eventually(|| async { hook.events("account_recovered").pop() }).await;
    assert_eq!(up["subject"], "main");
    assert_eq!(up["severity"], "info");

    // The same trouble again within `dedup`: raised, not sent.
    upstream.set_status(Some(529));
    assert_eq!(send(&relay, ALICE).await, 529);
    eventually(|| async { deliveries(&relay, "ops", "deduplicated").await.filter(|v| *v == 1.0) }).await;
    assert_eq!(
        metric(&relay, "relay_alerts_total{event=\"account_unhealthy\"}").await,
        Some(2.0)
    );
    assert_eq!(deliveries(&relay, "ops", "ok").await, Some(2.0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hook.events("account_unhealthy").len(), 1);
    assert_eq!(hook.events("account_recovered").len(), 1);

    let admin = Admin::login(&relay).await;
    let list = admin.get("/admin/api/alerts").await;
    assert_eq!(list.status, 200, "{}", list.text);
    let w = &list.json["webhooks"][0];
    assert_eq!(w["name"], "ops");
    assert_eq!(w["kind"], "generic");
    assert_eq!(w["url"], "http://127.0.0.1/…");
    assert_eq!(w["events"].as_array().unwrap().len(), 7);
    assert_eq!(w["deliveries"]["ok"], 2);
    assert_eq!(w["deliveries"]["deduplicated"], 1);
    let recent = list.json["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 3, "{}", list.text);
    assert_eq!(recent[0]["event"], "account_unhealthy");
    assert_eq!(recent[0]["deliveries"]["ops"]["outcome"], "deduplicated");
    assert_eq!(recent[1]["event"], "account_recovered");
    assert_eq!(recent[1]["deliveries"]["ops"]["outcome"], "ok");
    assert_eq!(recent[1]["deliveries"]["ops"]["status"], 200);
    assert_no_secret(&relay, &[&list.text], &["SECRET-ops"]);
}

/// The cost of one mock answer (nano-USD): 21 input, 7 output, 3 cache read, 5 cache write.
fn answer_cost() -> u64 {
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

/// A daily cap (nano-USD) and a number of requests of `BODY` such that every one of them is
/// admitted and together they spend between 80% and 100% of the cap.
fn cap_reached_at_90_percent() -> (u64, u64) {
    let pricing = PricingTable::builtin().unwrap();
    let estimate =
        claude_relay::usage::estimate::reserve_nanos(&pricing, "claude-sonnet-4-5", BODY.len(), Some(1), false)
            .unwrap();
    let cost = answer_cost();
    for n in 1..200u64 {
        let cap = n * cost * 10 / 9;
        // With a margin: the admission compares against the cap itself.
        if (n - 1) * cost + estimate < cap * 99 / 100 {
            return (cap, n);
        }
    }
    panic!("no cap found");
}

#[tokio::test]
async fn threshold_alerts_are_retried_shaped_per_service_and_never_slow_requests() {
    let upstream = MockUpstream::start().await;
    let flaky = Receiver::start(&[500, 500], Duration::ZERO).await;
    let chat = Receiver::start(&[], Duration::ZERO).await;
    // A webhook that takes far longer than any request: deliveries to it hang.
    let stuck = Receiver::start(&[], Duration::from_secs(60)).await;
    let (cap, spends) = cap_reached_at_90_percent();
    let now = chrono::Utc::now();
    let soon = (now + chrono::Duration::hours(2)).to_rfc3339();
    let later = (now + chrono::Duration::days(10)).to_rfc3339();
    let key = |name: &str| {
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        format!("cr_{hex:0>64}")
    };
    let extra = format!(
        "accounts:\n{}api_keys:\n  - {{ name: alice, key: {ALICE} }}\n  - {{ name: soon, key: {}, expires_at: \"{soon}\" }}\n  - {{ name: later, key: {}, expires_at: \"{later}\" }}\n  - {{ name: spender, key: {}, cost_limits: {{ daily_usd: {:.9} }} }}\n\
         alerts:\n  check_every: 1s\n  webhooks:\n\
         \x20   - {{ name: flaky, kind: generic, url: \"{}\", events: [key_expiring] }}\n\
         \x20   - {{ name: chat, kind: slack, url: \"{}\", events: [spend_threshold] }}\n\
         \x20   - {{ name: stuck, kind: discord, url: \"{}\" }}\n\
         \x20   - {{ name: lark, kind: feishu, url: \"{}\", events: [latency] }}\n\
         \x20   - {{ name: dc, kind: discord, url: \"{}\", events: [latency] }}\n",
        account_yaml("main", &upstream.url(), ""),
        key("soon"),
        key("later"),
        key("spender"),
        cap as f64 / 1e9,
        flaky.url("/hook/SECRET-flaky"),
        chat.url("/hook/SECRET-chat"),
        stuck.url("/hook/SECRET-stuck"),
        chat.url("/feishu/SECRET-lark"),
        chat.url("/discord/SECRET-dc"),
    );
    let relay = RelayProcess::start(&extra).await;

    // key_expiring: the key that expires in 2 h, not the one in 10 days; the webhook refuses
    // twice with a 500 and takes the third try (after 1 s and 4 s).
    let delivered = Instant::now();
    eventually(|| async { (flaky.posts().len() == 3).then_some(()) }).await;
    assert!(
        delivered.elapsed() >= Duration::from_secs(4),
        "{:?}",
        delivered.elapsed()
    );
    let posts = flaky.posts();
    assert!(posts.iter().all(|(path, b)| path == "/hook/SECRET-flaky"
        && b["event"] == "key_expiring"
        && b["subject"] == "key soon"
        && b["details"]["key"] == "soon"));
    eventually(|| async { deliveries(&relay, "flaky", "ok").await.filter(|v| *v == 1.0) }).await;
    assert_eq!(deliveries(&relay, "flaky", "failed").await, Some(0.0));

    // Requests while deliveries to `stuck` hang: as fast as before, and all answered.
    let mut before = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(send(&relay, ALICE).await, 200);
        before.push(t.elapsed());
    }
    // spend_threshold: the key's daily spend reaches 90% of its cap.
    for _ in 0..spends {
        assert_eq!(send(&relay, &key("spender")).await, 200);
    }
    let spent = eventually(|| async {
        chat.posts()
            .into_iter()
            .find(|(path, _)| path == "/hook/SECRET-chat")
            .map(|(_, b)| b)
    })
    .await;
    let text = spent["text"].as_str().unwrap();
    assert_eq!(spent.as_object().unwrap().len(), 1, "slack: only `text`: {spent}");
    assert!(
        text.contains("spend_threshold") && text.contains("`spender`") && text.contains("daily"),
        "{text}"
    );
    eventually(|| async { (stuck.posts().len() >= 2).then_some(()) }).await;
    let mut during = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(send(&relay, ALICE).await, 200);
        during.push(t.elapsed());
    }
    let worst_before = before.iter().max().unwrap();
    let worst_during = during.iter().max().unwrap();
    assert!(
        *worst_during < *worst_before + Duration::from_millis(500),
        "requests slowed while a webhook hangs: {before:?} then {during:?}"
    );

    // The test endpoint: feishu and discord shapes at the receiver, an unknown name is a 404.
    let admin = Admin::login(&relay).await;
    let lark = admin.post("/admin/api/alerts/test", json!({"webhook": "lark"})).await;
    assert_eq!(lark.status, 200, "{}", lark.text);
    assert_eq!(lark.json["outcome"], "ok");
    assert_eq!(lark.json["status"], 200);
    assert_eq!(lark.json["attempts"], 1);
    let dc = admin.post("/admin/api/alerts/test", json!({"webhook": "dc"})).await;
    assert_eq!(dc.json["outcome"], "ok", "{}", dc.text);
    let posts = chat.posts();
    let feishu = &posts.iter().find(|(p, _)| p == "/feishu/SECRET-lark").unwrap().1;
    assert_eq!(feishu["msg_type"], "text");
    assert!(
        feishu["content"]["text"].as_str().unwrap().contains("test alert"),
        "{feishu}"
    );
    let discord = &posts.iter().find(|(p, _)| p == "/discord/SECRET-dc").unwrap().1;
    assert!(discord["content"].as_str().unwrap().contains("test alert"), "{discord}");
    assert_eq!(discord.as_object().unwrap().len(), 1, "{discord}");
    let missing = admin.post("/admin/api/alerts/test", json!({"webhook": "nope"})).await;
    assert_eq!(missing.status, 404, "{}", missing.text);
    let bad = admin.post("/admin/api/alerts/test", json!({"hook": "lark"})).await;
    assert_eq!(bad.status, 400, "{}", bad.text);

    let list = admin.get("/admin/api/alerts").await;
    assert_eq!(list.status, 200);
    let names: Vec<&str> = list.json["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["flaky", "chat", "stuck", "lark", "dc"]);
    assert!(
        metric(&relay, "relay_alerts_total{event=\"spend_threshold\"}").await >= Some(1.0),
        "spend alert counted"
    );
    assert_no_secret(
        &relay,
        &[&list.text, &lark.text, &dc.text],
        &[
            "SECRET-flaky",
            "SECRET-chat",
            "SECRET-stuck",
            "SECRET-lark",
            "SECRET-dc",
        ],
    );
}

#[tokio::test]
async fn instances_sharing_redis_send_an_alert_once() {
    let upstream = MockUpstream::start().await;
    let hook = Receiver::start(&[], Duration::ZERO).await;
    let prefix = support::redis_prefix();
    let soon = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let extra = format!(
        "store: {{ backend: redis, url: \"{}\", prefix: \"{prefix}\" }}\naccounts:\n{}api_keys:\n  - {{ name: alice, key: {ALICE}, expires_at: \"{soon}\" }}\nalerts:\n  check_every: 1s\n  webhooks:\n    - {{ name: ops, kind: generic, url: \"{}\" }}\n",
        support::redis_url(),
        account_yaml("main", &upstream.url(), ""),
        hook.url("/hook/SECRET-shared")
    );
    let a = RelayProcess::start(&extra).await;
    let b = RelayProcess::start(&extra).await;
    // Both instances raise it (each at its first check); one claim wins.
    for relay in [&a, &b] {
        eventually(|| async {
            metric(relay, "relay_alerts_total{event=\"key_expiring\"}")
                .await
                .filter(|v| *v >= 1.0)
        })
        .await;
    }
    eventually(|| async {
        let ok = deliveries(&a, "ops", "ok").await? + deliveries(&b, "ops", "ok").await?;
        let dup = deliveries(&a, "ops", "deduplicated").await? + deliveries(&b, "ops", "deduplicated").await?;
        (ok == 1.0 && dup == 1.0).then_some(())
    })
    .await;
    assert_eq!(hook.events("key_expiring").len(), 1);
    assert_eq!(hook.events("key_expiring")[0]["subject"], "key alice");
    support::redis_cleanup(&prefix).await;
}

#[tokio::test]
async fn a_refused_token_refresh_raises_refresh_failed_and_account_unhealthy() {
    use support::oauth_mock::MockOAuth;
    let mock = MockOAuth::start().await;
    let hook = Receiver::start(&[], Duration::ZERO).await;
    let extra = format!(
        "providers:\n  anthropic:\n    api_base: \"{}\"\n    oauth: {{ authorize_url: \"{}\", token_url: \"{}\", profile_url: \"{}\", usage_url: \"{}\", refresh_check: 1h, usage_poll: 0, refresh_ahead: 1s }}\nalerts:\n  webhooks:\n    - {{ name: ops, kind: generic, url: \"{}\", events: [refresh_failed, account_unhealthy] }}\n",
        mock.url(),
        mock.authorize_url(),
        mock.token_url(),
        mock.profile_url(),
        mock.usage_url(),
        hook.url("/hook/SECRET-oauth")
    );
    let relay = RelayProcess::start(&extra).await;
    let admin = Admin::login(&relay).await;
    let (access, refresh, _) = mock.issue_tokens(3600);
    let expires_at = support::now_ms() + 1_500;
    let imported = admin
        .post(
            "/admin/api/accounts/claude-oauth/import",
            json!({"name": "sub", "access_token": access, "refresh_token": refresh, "expires_at": expires_at}),
        )
        .await;
    assert_eq!(imported.status, 201, "{}", imported.text);
    mock.fail_refresh(Some((
        400,
        r#"{"error":"invalid_grant","error_description":"Refresh token revoked"}"#.to_string(),
    )));
    tokio::time::sleep(Duration::from_millis(
        (expires_at + 500 - support::now_ms()).max(0) as u64
    ))
    .await;
    assert_eq!(send(&relay, ALICE).await, 503);

    let refused = eventually(|| async { hook.events("refresh_failed").pop() }).await;
    assert_eq!(refused["subject"], "sub");
    assert_eq!(refused["severity"], "critical");
    assert!(
        refused["message"].as_str().unwrap().contains("invalid_grant"),
        "{refused}"
    );
    let down = eventually(|| async { hook.events("account_unhealthy").pop() }).await;
    assert_eq!(down["subject"], "sub");
    assert_eq!(down["details"]["state"], "unauthorized");
    assert_eq!(down["severity"], "critical");
    let log = relay.log_text();
    assert!(!log.contains("SECRET-oauth") && !log.contains(&refresh), "{log}");
}

#[tokio::test]
async fn error_rate_and_latency_over_their_thresholds_raise_alerts() {
    let upstream = MockUpstream::start().await;
    let hook = Receiver::start(&[], Duration::ZERO).await;
    // Any upstream answer takes longer than 1 ms to the histogram (its first bucket is 5 ms).
    let extra = format!(
        "accounts:\n{}alerts:\n  check_every: 1s\n  error_rate: {{ above: 0.5, for: 2s, min_requests: 4 }}\n  latency: {{ p50_above: 1ms, for: 2s }}\n  webhooks:\n    - {{ name: ops, kind: generic, url: \"{}\" }}\n",
        account_yaml("main", &upstream.url(), ""),
        hook.url("/hook/SECRET-rates")
    );
    let relay = RelayProcess::start(&extra).await;
    assert_eq!(send(&relay, ALICE).await, 200);
    upstream.set_status(Some(500));
    for _ in 0..4 {
        assert_eq!(send(&relay, ALICE).await, 500);
    }
    let rate = hook.wait_for("error_rate").await;
    assert_eq!(rate["subject"], "relay");
    assert_eq!(rate["details"]["errors"], 4);
    // The readiness probes of /health count as requests too.
    assert!(rate["details"]["requests"].as_u64().unwrap() >= 5, "{rate}");
    let slow = hook.wait_for("latency").await;
    assert_eq!(slow["subject"], "relay");
    assert!(slow["details"]["p50_s"].as_f64().unwrap() >= 0.005, "{slow}");
    // Each is raised once while it holds (then again after `dedup`).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(hook.events("error_rate").len(), 1);
    assert_eq!(hook.events("latency").len(), 1);
}

#[tokio::test]
async fn a_webhook_gets_at_most_max_per_minute_deliveries() {
    let upstream = MockUpstream::start().await;
    let hook = Receiver::start(&[], Duration::ZERO).await;
    let soon = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let key = |name: &str| {
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        format!("cr_{hex:0>64}")
    };
    let extra = format!(
        "accounts:\n{}api_keys:\n  - {{ name: one, key: {}, expires_at: \"{soon}\" }}\n  - {{ name: two, key: {}, expires_at: \"{soon}\" }}\n  - {{ name: three, key: {}, expires_at: \"{soon}\" }}\nalerts:\n  max_per_minute: 2\n  webhooks:\n    - {{ name: ops, kind: generic, url: \"{}\" }}\n",
        account_yaml("main", &upstream.url(), ""),
        key("one"),
        key("two"),
        key("three"),
        hook.url("/hook/SECRET-rate")
    );
    let relay = RelayProcess::start(&extra).await;
    eventually(|| async {
        let ok = deliveries(&relay, "ops", "ok").await?;
        let limited = deliveries(&relay, "ops", "rate_limited").await?;
        (ok == 2.0 && limited == 1.0).then_some(())
    })
    .await;
    assert_eq!(hook.events("key_expiring").len(), 2);
    assert_eq!(
        metric(&relay, "relay_alerts_total{event=\"key_expiring\"}").await,
        Some(3.0)
    );
}
