//! The relay on the redis backend: two instances sharing one real Redis.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use claude_relay::store::{Dimension, Store, redis::RedisStore};
use support::mock::MockUpstream;
use support::{ALICE, RelayProcess, account_yaml, eventually, redis_cleanup, redis_prefix, redis_url};

#[tokio::test]
async fn two_instances_share_keys_accounts_and_usage_through_redis() {
    let p = redis_prefix();
    let mock = MockUpstream::start().await;
    let extra = format!(
        "store: {{ backend: redis, url: \"{}\", prefix: \"{p}\" }}\naccounts:\n{}",
        redis_url(),
        account_yaml("main", &mock.url(), "")
    );
    let a = RelayProcess::start(&extra).await;
    let b = RelayProcess::start(&extra).await;
    let c = reqwest::Client::new();

    // A key created through instance A's admin API works on instance B at once (pub/sub reload).
    let token = a.admin_token().await;
    let created: serde_json::Value = c
        .post(format!("{}/admin/api/keys", a.admin()))
        .bearer_auth(&token)
        .json(&serde_json::json!({"name": "shared"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().expect("plaintext key once").to_string();
    let status = eventually(|| {
        let c = c.clone();
        let url = format!("{}/v1/messages", b.base());
        let key = key.clone();
        async move {
            let r = c
                .post(url)
                .header("x-api-key", key)
                .body(r#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#)
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(200)
        }
    })
    .await;
    assert_eq!(status, 200);

    // Both instances record usage into the same Redis.
    for relay in [&a, &b] {
        let r = c
            .post(format!("{}/v1/messages", relay.base()))
            .header("x-api-key", ALICE)
            .body(r#"{"model":"claude-sonnet-4-5","stream":true,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
    }
    let store = RedisStore::connect_with_prefix(&redis_url(), &p).await.unwrap();
    let alice = eventually(|| async {
        let t = store.usage_totals(Dimension::Key).await.ok()?;
        t.get("config.alice").filter(|c| c.requests == 2).copied()
    })
    .await;
    assert_eq!(
        (alice.input_tokens, alice.output_tokens, alice.cache_read_tokens),
        (42, 14, 6)
    );
    let models = store.usage_totals(Dimension::Model).await.unwrap();
    assert_eq!(models["claude-sonnet-4-5"].requests, 3);
    // The admin session from A is valid on B: sessions live in the store.
    let r = c
        .get(format!("{}/admin/api/keys", b.admin()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    drop(a);
    drop(b);
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis_cleanup(&p).await;
}

/// On Redis the relay runs more background tasks (the change subscriber, lease and slot
/// renewals): SIGTERM still stops an idle relay at once, with exit status 0, its statistics
/// written.
#[tokio::test]
async fn a_relay_on_redis_stops_at_once_on_sigterm_with_its_usage_written() {
    let p = redis_prefix();
    let mock = MockUpstream::start().await;
    let extra = format!(
        "shutdown_grace: 600s\nstore: {{ backend: redis, url: \"{}\", prefix: \"{p}\" }}\naccounts:\n{}",
        redis_url(),
        account_yaml("main", &mock.url(), "")
    );
    let mut relay = RelayProcess::start(&extra).await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await.unwrap();
    let t = std::time::Instant::now();
    let status = relay.stop();
    let took = t.elapsed();
    assert_eq!(status.code(), Some(0), "{}", relay.log_text());
    assert!(took < Duration::from_secs(2), "exit took {took:?}");
    assert!(
        !relay.log_text().contains("did not stop in time"),
        "{}",
        relay.log_text()
    );
    let store = RedisStore::connect_with_prefix(&redis_url(), &p).await.unwrap();
    let totals = store.usage_totals(Dimension::Key).await.unwrap();
    assert_eq!(totals["config.alice"].requests, 1, "written before the exit");
    redis_cleanup(&p).await;
}
