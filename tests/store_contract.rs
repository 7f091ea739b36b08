//! Runs the store contract (`claude_relay::store::contract`) on both backends, plus what only one
//! backend can show: the embedded file survives a reopen; two Redis instances on one prefix share
//! data and hear each other's changes.
//!
//! The Redis tests need a Redis 6+ at `redis://127.0.0.1:6379/` (or `RELAY_TEST_REDIS_URL`;
//! `scripts/test.sh` starts a private one when none answers). They fail, not skip, when it is
//! unreachable. Each uses a random key prefix and deletes its keys.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use futures_util::FutureExt;

use claude_relay::lifecycle::Tasks;
use claude_relay::store::contract;
use claude_relay::store::embedded::EmbeddedStore;
use claude_relay::store::redis::RedisStore;
use claude_relay::store::redis_conn::{RedisTarget, SentinelConfig};
use claude_relay::store::{
    AdminSession, BucketKey, Dimension, Granularity, SessionBounds, SessionUsage, Store, UsageCounters,
};
use support::redis_servers::{RedisCluster, RedisSentinels, SENTINEL_MASTER};
use support::redis_url;

fn random_prefix() -> String {
    format!("relay-test-{}:", uuid::Uuid::new_v4().simple())
}

async fn connect_redis(prefix: &str) -> RedisStore {
    let url = redis_url();
    match RedisStore::connect_with_prefix(&url, prefix).await {
        Ok(s) => s,
        Err(e) => panic!(
            "Redis is not reachable at {url} ({e}). The Redis store tests need a Redis 6+ server: start one \
             (e.g. `redis-server` or `docker run -p 6379:6379 redis:7`) or point RELAY_TEST_REDIS_URL at one; \
             `./scripts/test.sh` starts a private one when none answers."
        ),
    }
}

/// Deletes every key under `prefix` (the prefix is ours and has no glob characters).
async fn delete_prefix(prefix: &str) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(500)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

async fn count_prefix(prefix: &str) -> usize {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.len()
}

#[tokio::test]
async fn embedded_store_passes_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.backend(), "embedded");
    contract::run_all(&store).await.unwrap();
}

/// The relay's resident memory, from `/proc/self/statm` (pages × 4 KiB).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

/// 100 MB of request-log records go into the embedded store; the process keeps far less of them
/// in memory (redb's page cache is bounded: `embedded::CACHE_BYTES`), and they are all readable.
#[tokio::test]
async fn embedded_store_memory_stays_bounded_while_the_request_log_grows() {
    use claude_relay::store::LogKind;
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let record = format!("{{\"pad\":\"{}\"}}", "x".repeat(1000));
    let batch: Vec<(i64, String)> = (0..1000).map(|i| (1_700_000_000_000 + i, record.clone())).collect();
    store.append_log(LogKind::Requests, &batch).await.unwrap();
    let before = rss_bytes();
    for _ in 0..100 {
        store.append_log(LogKind::Requests, &batch).await.unwrap();
    }
    let grown = rss_bytes().saturating_sub(before);
    let written = 100 * 1000 * record.len() as u64;
    println!(
        "resident memory grew by {} MB, {} MB written",
        grown >> 20,
        written >> 20
    );
    assert!(
        grown < written / 2,
        "resident memory grew by {} MB while {} MB of records were written",
        grown >> 20,
        written >> 20
    );
    assert_eq!(store.read_log(LogKind::Requests, None, 5).await.unwrap().len(), 5);
}

#[tokio::test]
async fn embedded_store_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now().timestamp();
    let key = contract::sample_key("persisted", "persisted-hash");
    let day = BucketKey {
        dimension: Dimension::Key,
        subject: "persisted".to_string(),
        granularity: Granularity::Day,
        start: Granularity::Day.bucket_start(now),
    };
    let usage = UsageCounters {
        requests: 4,
        output_tokens: 400,
        ..Default::default()
    };
    let session = AdminSession {
        username: "admin".to_string(),
        created_at: now,
        expires_at: now + 3_600,
        role: claude_relay::store::AdminRole::Admin,
        ip: None,
        user_agent: None,
    };
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert!(store.path().ends_with("relay.redb"));
        store.put_api_key(&key).await.unwrap();
        store.touch_api_keys(&[("persisted".to_string(), now)]).await.unwrap();
        store.add_usage(&[(day.clone(), usage)]).await.unwrap();
        store.put_session("token-hash", &session).await.unwrap();
        // A second open of the same file while the first is alive is refused, not corrupting.
        assert!(EmbeddedStore::open(dir.path()).is_err());
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.get_api_key("persisted").await.unwrap(), Some(key.clone()));
    assert_eq!(store.api_key_last_used().await.unwrap().get("persisted"), Some(&now));
    assert_eq!(
        store
            .usage_series(Dimension::Key, "persisted", Granularity::Day, day.start, day.start + 1)
            .await
            .unwrap(),
        vec![(day.start, usage)]
    );
    assert_eq!(store.get_session("token-hash", now).await.unwrap(), Some(session));
    // The hash index survived too.
    assert!(
        store
            .put_api_key(&contract::sample_key("other", "persisted-hash"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn embedded_store_concurrent_usage_adds_are_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    concurrent_adds(store).await;
}

async fn concurrent_adds(store: std::sync::Arc<dyn Store>) {
    let now = chrono::Utc::now().timestamp();
    let bk = BucketKey {
        dimension: Dimension::Model,
        subject: "concurrent".to_string(),
        granularity: Granularity::Hour,
        start: Granularity::Hour.bucket_start(now),
    };
    let one = UsageCounters {
        requests: 1,
        input_tokens: 10,
        ..Default::default()
    };
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        let bk = bk.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                store
                    .add_usage(&[
                        (bk.clone(), one),
                        (
                            BucketKey {
                                granularity: Granularity::Total,
                                start: 0,
                                ..bk.clone()
                            },
                            one,
                        ),
                    ])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let series = store
        .usage_series(
            Dimension::Model,
            "concurrent",
            Granularity::Hour,
            bk.start,
            bk.start + 1,
        )
        .await
        .unwrap();
    assert_eq!(
        series,
        vec![(
            bk.start,
            UsageCounters {
                requests: 80,
                input_tokens: 800,
                ..Default::default()
            }
        )]
    );
    let totals = store.usage_totals(Dimension::Model).await.unwrap();
    assert_eq!(totals.get("concurrent").map(|c| c.requests), Some(80));
}

#[tokio::test]
async fn redis_store_passes_the_contract() {
    let prefix = random_prefix();
    let store = connect_redis(&prefix).await;
    assert_eq!(store.backend(), "redis");
    let result = contract::run_all(&store).await;
    let ttls = contract::redis_ttls(&store).await;
    let used = count_prefix(&prefix).await;
    delete_prefix(&prefix).await;
    assert_eq!(count_prefix(&prefix).await, 0, "cleanup left keys behind");
    result.unwrap();
    ttls.unwrap();
    assert!(used > 0, "the contract wrote nothing under {prefix}");
}

#[tokio::test]
async fn redis_store_concurrent_usage_adds_are_not_lost() {
    let prefix = random_prefix();
    let store = std::sync::Arc::new(connect_redis(&prefix).await);
    let outcome = tokio::spawn(concurrent_adds(store)).await;
    delete_prefix(&prefix).await;
    outcome.unwrap();
}

#[tokio::test]
async fn redis_instances_on_one_prefix_share_data_and_changes() {
    let prefix = random_prefix();
    let a = connect_redis(&prefix).await;
    let b = connect_redis(&prefix).await;
    let other = connect_redis(&random_prefix()).await;

    let outcome = async {
        let mut rx_a = a.subscribe_changes();
        let mut rx_b = b.subscribe_changes();
        let mut rx_other = other.subscribe_changes();

        a.put_api_key(&contract::sample_key("shared", "shared-hash"))
            .await
            .unwrap();
        a.publish_change().await.unwrap();
        contract::expect_change(&mut rx_b, "b hears a's change").await.unwrap();
        contract::expect_change(&mut rx_a, "a hears its own change")
            .await
            .unwrap();
        assert_eq!(
            b.get_api_key("shared").await.unwrap().map(|k| k.key_hash),
            Some("shared-hash".to_string())
        );
        // The hash index is shared too.
        assert!(
            b.put_api_key(&contract::sample_key("clash", "shared-hash"))
                .await
                .is_err()
        );

        b.publish_change().await.unwrap();
        contract::expect_change(&mut rx_a, "a hears b's change").await.unwrap();
        contract::expect_change(&mut rx_b, "b hears its own change")
            .await
            .unwrap();

        // Another prefix is another relay cluster: it hears nothing.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), rx_other.recv())
                .await
                .is_err(),
            "a store on another prefix received our change"
        );
        assert_eq!(other.get_api_key("shared").await.unwrap(), None);
    };
    // Clean up even when an assertion fails.
    let outcome = std::panic::AssertUnwindSafe(outcome).catch_unwind().await;
    delete_prefix(&prefix).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn redis_change_subscription_survives_a_killed_connection() {
    let prefix = random_prefix();
    let a = connect_redis(&prefix).await;
    let b = connect_redis(&prefix).await;
    let outcome = async {
        let mut rx = a.subscribe_changes();
        let id = a
            .change_subscriber_client_id()
            .expect("CLIENT ID of the subscriber connection");
        let client = redis::Client::open(redis_url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(killed, 1);
        // The subscriber reconnects and reports one change (it may have missed some).
        contract::expect_change(&mut rx, "change reported after resubscribing")
            .await
            .unwrap();
        assert_ne!(a.change_subscriber_client_id(), Some(id));
        b.publish_change().await.unwrap();
        contract::expect_change(&mut rx, "change delivered on the new connection")
            .await
            .unwrap();
    };
    let outcome = std::panic::AssertUnwindSafe(outcome).catch_unwind().await;
    delete_prefix(&prefix).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn redis_connect_to_nothing_fails_clearly() {
    // A port nobody listens on: connecting must fail with Unavailable, not hang or panic.
    let started = std::time::Instant::now();
    let err = RedisStore::connect_with_prefix("redis://127.0.0.1:1/", &random_prefix())
        .await
        .unwrap_err();
    assert!(
        matches!(err, claude_relay::store::StoreError::Unavailable(_)),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

// --- beyond one node: a Redis Cluster and a Sentinel-watched master ---

async fn connect_target(target: &RedisTarget, prefix: &str) -> RedisStore {
    RedisStore::connect_target(target, prefix, &Tasks::on_current_runtime())
        .await
        .unwrap()
}

/// The whole contract on a private three-master Cluster; two stores on it share data and hear
/// each other's changes whatever node their subscriber is on, and the data spreads over the
/// masters (each script's keys in one slot, different keys in different slots).
#[tokio::test]
async fn redis_cluster_store_passes_the_contract() {
    let cluster = RedisCluster::start();
    let target = RedisTarget::Cluster(cluster.urls());
    let prefix = random_prefix();
    let store = connect_target(&target, &prefix).await;
    contract::run_all(&store).await.unwrap();
    contract::redis_ttls(&store).await.unwrap();
    concurrent_adds(std::sync::Arc::new(connect_target(&target, &random_prefix()).await)).await;

    // A second instance: its change subscriber is on another node than the publisher's.
    let a = connect_target(&RedisTarget::Cluster(cluster.urls()), &prefix).await;
    let mut rotated = cluster.urls();
    rotated.rotate_left(1);
    let b = connect_target(&RedisTarget::Cluster(rotated), &prefix).await;
    let mut rx_b = b.subscribe_changes();
    a.put_api_key(&contract::sample_key("shared", "shared-hash"))
        .await
        .unwrap();
    a.publish_change().await.unwrap();
    contract::expect_change(&mut rx_b, "b hears a's change").await.unwrap();
    assert!(
        b.put_api_key(&contract::sample_key("clash", "shared-hash"))
            .await
            .is_err(),
        "the key-hash index is shared"
    );
    // Client sessions of many keys: each key's sessions share its slot, the keys spread.
    let now = chrono::Utc::now().timestamp();
    let batch: Vec<SessionUsage> = (0..30)
        .map(|i| {
            let mut s = SessionUsage::new(&format!("key-{i}"), "session-1", now);
            s.main.requests = 1;
            s
        })
        .collect();
    let bounds = SessionBounds {
        per_key: 10,
        retention_secs: 3600,
    };
    a.add_session_usage(&batch, bounds, now).await.unwrap();
    for i in [0, 17, 29] {
        let got = b.session_usage(&format!("key-{i}"), "session-1", 0).await.unwrap();
        assert_eq!(got.map(|s| s.main.requests), Some(1), "key-{i}");
    }
    let counts = cluster.key_counts();
    assert!(
        counts.iter().filter(|n| **n > 0).count() >= 2,
        "keys on one master only: {counts:?}"
    );
}

#[tokio::test]
async fn redis_sentinel_store_passes_the_contract_and_follows_a_failover() {
    let sentinels = RedisSentinels::start();
    let target = RedisTarget::Sentinel(SentinelConfig {
        master: SENTINEL_MASTER.to_string(),
        nodes: sentinels
            .sentinel_ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect(),
        username: None,
        password: None,
        db: 0,
    });
    let prefix = random_prefix();
    let store = connect_target(&target, &prefix).await;
    contract::run_all(&store).await.unwrap();
    let other = connect_target(&target, &prefix).await;
    let mut rx = other.subscribe_changes();

    store
        .put_api_key(&contract::sample_key("before", "before-hash"))
        .await
        .unwrap();
    sentinels.failover();
    // Writes reach the new master: the first may fail while the connection moves over.
    let written = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if store
                .put_api_key(&contract::sample_key("after", "after-hash"))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(written.is_ok(), "no write reached the new master");
    assert!(
        other.get_api_key("before").await.unwrap().is_some(),
        "replicated before the failover"
    );
    assert!(other.get_api_key("after").await.unwrap().is_some());
    store.publish_change().await.unwrap();
    contract::expect_change(&mut rx, "a change after the failover is heard")
        .await
        .unwrap();
}
