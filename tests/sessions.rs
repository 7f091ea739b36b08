//! Usage per client session and agent, through the real binary and the mock upstream, on the
//! embedded store and on a real Redis (`RELAY_TEST_REDIS_URL`, default `redis://127.0.0.1:6379/`;
//! each Redis test uses a fresh key prefix and deletes it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::mock::MockUpstream;
use support::{ALICE, RelayProcess, account_yaml, client, eventually, metric, redis_cleanup, redis_prefix, redis_url};

const BOB: &str = "cr_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const SONNET: &str = "claude-sonnet-4-5";
const HAIKU: &str = "claude-haiku-4-5";

fn body(model: &str, stream: bool) -> String {
    json!({"model": model, "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
}

/// Sends one Messages request with `key` and `headers`, reads the whole answer, returns the status.
async fn send(relay: &RelayProcess, key: &str, headers: &[(&str, &str)], body: String) -> u16 {
    let mut req = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let _ = r.bytes().await.unwrap();
    status
}

struct Admin {
    base: String,
    token: String,
}

impl Admin {
    async fn of(relay: &RelayProcess) -> Admin {
        Admin {
            base: relay.admin(),
            token: relay.admin_token().await,
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = client()
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    async fn sessions(&self, key: &str, query: &str) -> Value {
        let (status, v) = self.get(&format!("/admin/api/keys/{key}/sessions{query}")).await;
        assert_eq!(status, 200, "{v}");
        v
    }

    /// Waits until the key's session `id` has `requests` requests, and returns its detail.
    async fn session_with(&self, key: &str, id: &str, requests: u64) -> Value {
        eventually(|| async {
            let (status, v) = self.get(&format!("/admin/api/keys/{key}/sessions/{id}")).await;
            (status == 200 && v["totals"]["requests"] == requests).then_some(v)
        })
        .await
    }
}

fn ids(list: &Value) -> Vec<String> {
    list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn store_yaml(redis: Option<&str>) -> String {
    match redis {
        Some(prefix) => format!(
            "store: {{ backend: redis, url: \"{}\", prefix: \"{prefix}\" }}\n",
            redis_url()
        ),
        None => String::new(),
    }
}

/// A Claude Code session with a main agent, a sub-agent and a nested agent, over two models, with
/// one upstream error; a session named only in `metadata.user_id`; a Codex session header; ids
/// that are garbage; a request without a session.
async fn sessions_with_agents(store: &str) {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!("accounts:\n{}{store}", account_yaml("main", &mock.url(), ""))).await;
    let admin = Admin::of(&relay).await;
    let s1 = "0f6d3c1e-6a0b-4a57-9b7e-3f0a1f2c9d11";
    let main = [("x-claude-code-session-id", s1)];
    let agent_a = [("x-claude-code-session-id", s1), ("x-claude-code-agent-id", "agent-a")];
    let agent_b = [
        ("x-claude-code-session-id", s1),
        ("x-claude-code-agent-id", "agent-b"),
        ("x-claude-code-parent-agent-id", "agent-a"),
    ];
    assert_eq!(send(&relay, ALICE, &main, body(SONNET, true)).await, 200);
    assert_eq!(send(&relay, ALICE, &main, body(SONNET, false)).await, 200);
    assert_eq!(send(&relay, ALICE, &agent_a, body(HAIKU, true)).await, 200);
    assert_eq!(send(&relay, ALICE, &agent_b, body(SONNET, true)).await, 200);
    let failing = [("x-claude-code-session-id", s1), ("x-mock-status", "400")];
    assert_eq!(send(&relay, ALICE, &failing, body(SONNET, true)).await, 400);

    // Older Claude Code: the session only in metadata.user_id (a JSON string).
    let s2 = "7c1e2b7a-1111-4222-8333-944455556666";
    let user_id = json!({"device_id": "d".repeat(64), "account_uuid": "", "session_id": s2}).to_string();
    let with_metadata = json!({"model": SONNET, "max_tokens": 64, "stream": true,
        "metadata": {"user_id": user_id}, "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    assert_eq!(send(&relay, ALICE, &[], with_metadata).await, 200);
    // Codex names its session in `session-id`.
    assert_eq!(
        send(&relay, ALICE, &[("session-id", "codex-0199")], body(SONNET, false)).await,
        200
    );
    // Not recorded: no session, a session id with a space, one too long.
    assert_eq!(send(&relay, ALICE, &[], body(SONNET, true)).await, 200);
    let long = "x".repeat(129);
    for bad in ["not an id", long.as_str()] {
        assert_eq!(
            send(&relay, ALICE, &[("x-claude-code-session-id", bad)], body(SONNET, true)).await,
            200
        );
    }
    // A bad agent id counts under the main agent of its session.
    let s3 = "bad-agent-session";
    let bad_agent = [("x-claude-code-session-id", s3), ("x-claude-code-agent-id", "a b")];
    assert_eq!(send(&relay, ALICE, &bad_agent, body(SONNET, true)).await, 200);

    let one = admin.session_with("config.alice", s2, 1).await;
    let per_request = one["totals"]["cost_nanos"].as_u64().unwrap();
    assert!(per_request > 0, "{one}");
    assert_eq!(one["main"]["requests"], 1);
    assert_eq!(one["agents"], json!([]));

    let s = admin.session_with("config.alice", s1, 5).await;
    assert_eq!(s["key"], "config.alice");
    assert_eq!(s["id"], s1);
    let t = &s["totals"];
    assert_eq!(
        (t["errors"].as_u64(), t["unpriced_requests"].as_u64()),
        (Some(1), Some(0))
    );
    // Four answered requests of the mock's usage (the error has none).
    assert_eq!(
        (
            t["input_tokens"].as_u64(),
            t["output_tokens"].as_u64(),
            t["cache_read_tokens"].as_u64()
        ),
        (Some(84), Some(28), Some(12))
    );
    let sonnet = &s["models"][SONNET];
    assert_eq!(
        (sonnet["requests"].as_u64(), sonnet["errors"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(
        sonnet["cost_nanos"].as_u64(),
        Some(3 * per_request),
        "three priced Sonnet answers"
    );
    let haiku = &s["models"][HAIKU];
    assert_eq!(haiku["requests"], 1);
    assert!(haiku["cost_nanos"].as_u64().unwrap() > 0);
    assert_eq!(
        t["cost_nanos"].as_u64(),
        Some(3 * per_request + haiku["cost_nanos"].as_u64().unwrap())
    );
    assert!((t["cost_usd"].as_f64().unwrap() - t["cost_nanos"].as_f64().unwrap() / 1e9).abs() < 1e-12);
    // By agent: main (3, with the error), agent-a, and agent-b spawned by agent-a.
    assert_eq!(
        (s["main"]["requests"].as_u64(), s["main"]["errors"].as_u64()),
        (Some(3), Some(1))
    );
    let agents = s["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2, "{s}");
    let a = agents.iter().find(|a| a["id"] == "agent-a").unwrap();
    let b = agents.iter().find(|a| a["id"] == "agent-b").unwrap();
    assert_eq!((&a["parent"], &a["usage"]["requests"]), (&Value::Null, &json!(1)));
    assert_eq!(a["usage"]["cost_nanos"], haiku["cost_nanos"]);
    assert_eq!((&b["parent"], &b["usage"]["requests"]), (&json!("agent-a"), &json!(1)));
    assert_eq!(s["other_agents"]["requests"], 0);
    let (first, last) = (s["first_seen"].as_i64().unwrap(), s["last_seen"].as_i64().unwrap());
    let now = chrono::Utc::now().timestamp();
    assert!(first <= last && last <= now && now - first < 60, "{first} {last} {now}");

    let codex = admin.session_with("config.alice", "codex-0199", 1).await;
    assert_eq!(codex["main"]["requests"], 1);
    let bad = admin.session_with("config.alice", s3, 1).await;
    assert_eq!(
        (bad["main"]["requests"].as_u64(), bad["agents"].as_array().map(Vec::len)),
        (Some(1), Some(0))
    );

    // The listing: every recorded session once, newest first, with its totals and models; garbage
    // ids and requests without a session are not there.
    let list = admin.sessions("config.alice", "").await;
    assert_eq!(list["recording"], true);
    assert_eq!(list["next_cursor"], Value::Null);
    let mut listed = ids(&list);
    assert_eq!(listed.len(), 4, "{list}");
    let lasts: Vec<i64> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["last_seen"].as_i64().unwrap())
        .collect();
    assert!(lasts.windows(2).all(|w| w[0] >= w[1]), "newest first: {lasts:?}");
    listed.sort();
    let mut want = vec![s1.to_string(), s2.to_string(), s3.to_string(), "codex-0199".to_string()];
    want.sort();
    assert_eq!(listed, want);
    let row = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == s1)
        .unwrap();
    assert_eq!(
        (&row["totals"], &row["models"], &row["agents"]),
        (&s["totals"], &s["models"], &json!(2))
    );

    // Paging: one at a time, following next_cursor, gives the same sessions in the same order.
    let mut paged = Vec::new();
    let mut query = "?limit=1".to_string();
    loop {
        let page = admin.sessions("config.alice", &query).await;
        paged.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => {
                let c: String = url::form_urlencoded::byte_serialize(c.as_bytes()).collect();
                query = format!("?limit=1&cursor={c}");
            }
            None => break,
        }
        assert!(paged.len() <= 4, "paging does not end: {paged:?}");
    }
    assert_eq!(paged, ids(&list));
    for bad in ["?limit=0", "?limit=201", "?cursor=nope", "?limit=x"] {
        let (status, v) = admin.get(&format!("/admin/api/keys/config.alice/sessions{bad}")).await;
        assert_eq!(status, 400, "{bad}: {v}");
    }

    // Metrics: a bounded label, no session or agent ids.
    let main_requests = metric(&relay, "relay_session_requests_total{agent=\"main\"}").await;
    let sub_requests = metric(&relay, "relay_session_requests_total{agent=\"subagent\"}").await;
    assert_eq!((main_requests, sub_requests), (Some(6.0), Some(2.0)));
    let text = client()
        .get(format!("{}/metrics", relay.admin()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains(s1) && !text.contains("agent-a"), "ids in metrics");
}

#[tokio::test]
async fn sessions_and_agents_are_recorded_on_the_embedded_store() {
    sessions_with_agents("").await;
}

#[tokio::test]
async fn sessions_and_agents_are_recorded_on_redis() {
    let p = redis_prefix();
    sessions_with_agents(&store_yaml(Some(&p))).await;
    redis_cleanup(&p).await;
}

/// Two keys using the same session id have a session each; neither sees the other's.
async fn keys_see_only_their_own_sessions(store: &str) {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!(
        "api_keys:\n  - {{ name: alice, key: {ALICE} }}\n  - {{ name: bob, key: {BOB} }}\naccounts:\n{}{store}",
        account_yaml("main", &mock.url(), "")
    ))
    .await;
    let admin = Admin::of(&relay).await;
    let shared = [("x-claude-code-session-id", "shared-session")];
    for _ in 0..2 {
        assert_eq!(send(&relay, ALICE, &shared, body(SONNET, true)).await, 200);
    }
    assert_eq!(send(&relay, BOB, &shared, body(SONNET, true)).await, 200);
    let alice_only = [("x-claude-code-session-id", "alice-only")];
    assert_eq!(send(&relay, ALICE, &alice_only, body(SONNET, true)).await, 200);

    admin.session_with("config.alice", "shared-session", 2).await;
    admin.session_with("config.bob", "shared-session", 1).await;
    admin.session_with("config.alice", "alice-only", 1).await;
    assert_eq!(ids(&admin.sessions("config.bob", "").await), vec!["shared-session"]);
    let mut alice = ids(&admin.sessions("config.alice", "").await);
    alice.sort();
    assert_eq!(alice, vec!["alice-only", "shared-session"]);
    let (status, v) = admin.get("/admin/api/keys/config.bob/sessions/alice-only").await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["error"]["type"], "not_found_error");
    // An unknown key has no sessions to show, and needs a session of the admin API.
    let (status, _) = admin.get("/admin/api/keys/config.nobody/sessions").await;
    assert_eq!(status, 404);
    let (status, _) = admin.get("/admin/api/keys/config.nobody/sessions/shared-session").await;
    assert_eq!(status, 404);
    let r = client()
        .get(format!("{}/admin/api/keys/config.alice/sessions", relay.admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn keys_see_only_their_own_sessions_on_the_embedded_store() {
    keys_see_only_their_own_sessions("").await;
}

#[tokio::test]
async fn keys_see_only_their_own_sessions_on_redis() {
    let p = redis_prefix();
    keys_see_only_their_own_sessions(&store_yaml(Some(&p))).await;
    redis_cleanup(&p).await;
}

/// `per_key: 2` keeps the two most recently used sessions; `retention: 5s` drops a session five
/// seconds after its last request.
async fn sessions_are_bounded(redis: Option<&str>) {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!(
        "stats: {{ flush_interval: 100ms, sessions: {{ per_key: 2, retention: 5s }} }}\naccounts:\n{}{}",
        account_yaml("main", &mock.url(), ""),
        store_yaml(redis)
    ))
    .await;
    let admin = Admin::of(&relay).await;
    for (i, id) in ["s-1", "s-2", "s-3"].into_iter().enumerate() {
        if i > 0 {
            // Sessions are ordered by their last use, in seconds.
            tokio::time::sleep(Duration::from_millis(1_100)).await;
        }
        assert_eq!(
            send(&relay, ALICE, &[("x-claude-code-session-id", id)], body(SONNET, true)).await,
            200
        );
        admin.session_with("config.alice", id, 1).await;
    }
    let list = admin.sessions("config.alice", "").await;
    assert_eq!(ids(&list), vec!["s-3", "s-2"], "the cap evicts the least recently used");
    let (status, _) = admin.get("/admin/api/keys/config.alice/sessions/s-1").await;
    assert_eq!(status, 404);

    if let Some(prefix) = redis {
        // One hash per kept session, expiring with the retention, and the key's index.
        let c = redis::Client::open(redis_url()).unwrap();
        let mut conn = c.get_multiplexed_async_connection().await.unwrap();
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}cs*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                format!("{prefix}cs:12:config.alice:s-2"),
                format!("{prefix}cs:12:config.alice:s-3"),
                format!("{prefix}csx:config.alice"),
            ]
        );
        for k in &keys {
            let ttl: i64 = redis::cmd("TTL").arg(k).query_async(&mut conn).await.unwrap();
            assert!((0..=5).contains(&ttl), "{k}: TTL {ttl}");
        }
    }

    // Past the retention (whole seconds after the last use), the sessions are gone.
    let t = std::time::Instant::now();
    eventually(|| async { ids(&admin.sessions("config.alice", "").await).is_empty().then_some(()) }).await;
    assert!(
        t.elapsed() > Duration::from_secs(3),
        "gone too early: {:?}",
        t.elapsed()
    );
    let (status, _) = admin.get("/admin/api/keys/config.alice/sessions/s-3").await;
    assert_eq!(status, 404);
    if let Some(prefix) = redis {
        let c = redis::Client::open(redis_url()).unwrap();
        let conn = c.get_multiplexed_async_connection().await.unwrap();
        eventually(|| {
            let mut conn = conn.clone();
            async move {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{prefix}cs*"))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                keys.is_empty().then_some(())
            }
        })
        .await;
    }
    // A new request starts the session afresh: nothing of the expired one comes back.
    assert_eq!(
        send(
            &relay,
            ALICE,
            &[("x-claude-code-session-id", "s-3")],
            body(SONNET, true)
        )
        .await,
        200
    );
    let s = admin.session_with("config.alice", "s-3", 1).await;
    assert_eq!(s["totals"]["requests"], 1);
}

#[tokio::test]
async fn sessions_are_bounded_per_key_and_in_time_on_the_embedded_store() {
    sessions_are_bounded(None).await;
}

#[tokio::test]
async fn sessions_are_bounded_per_key_and_in_time_on_redis() {
    let p = redis_prefix();
    sessions_are_bounded(Some(&p)).await;
    redis_cleanup(&p).await;
}

#[tokio::test]
async fn recording_can_be_switched_off() {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!(
        "stats: {{ flush_interval: 100ms, sessions: {{ per_key: 0 }} }}\naccounts:\n{}",
        account_yaml("main", &mock.url(), "")
    ))
    .await;
    let admin = Admin::of(&relay).await;
    assert_eq!(
        send(
            &relay,
            ALICE,
            &[("x-claude-code-session-id", "off")],
            body(SONNET, true)
        )
        .await,
        200
    );
    // The statistics still count it.
    eventually(|| async {
        let (_, v) = admin.get("/admin/api/usage?dimension=key").await;
        (v["totals_by_subject"]["config.alice"]["requests"] == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let list = admin.sessions("config.alice", "").await;
    assert_eq!((&list["recording"], ids(&list).len()), (&json!(false), 0));
}

/// A client that goes away mid-stream is billed for what the relay saw, and that lands in its
/// session and agent.
#[tokio::test]
async fn a_client_that_disconnects_mid_stream_still_lands_in_its_session() {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!("accounts:\n{}", account_yaml("main", &mock.url(), ""))).await;
    let admin = Admin::of(&relay).await;
    let mut r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .header("x-claude-code-session-id", "cut-session")
        .header("x-claude-code-agent-id", "agent-cut")
        .header("x-mock-chunk", "400")
        .header("x-mock-chunk-delay-ms", "300")
        .body(body(SONNET, true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("message_start"));
    drop(r);
    let s = admin.session_with("config.alice", "cut-session", 1).await;
    let t = &s["totals"];
    assert_eq!(
        (t["input_tokens"].as_u64(), t["cache_read_tokens"].as_u64()),
        (Some(21), Some(3)),
        "the input and cache tokens of message_start: {s}"
    );
    assert_eq!(s["agents"][0]["id"], "agent-cut");
    assert_eq!(s["agents"][0]["usage"]["input_tokens"], 21);
    assert_eq!(s["main"]["requests"], 0);
}
