//! The coordination contract on memory and on a real Redis.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use claude_relay::store::coord::MemoryCoordination;
use claude_relay::store::coord_contract;
use claude_relay::store::redis::RedisStore;
use support::{redis_prefix, redis_url};

#[tokio::test]
async fn memory_coordination_passes_the_contract() {
    coord_contract::run_all(&MemoryCoordination::new(), "mem")
        .await
        .unwrap();
}

#[tokio::test]
async fn redis_coordination_passes_the_contract() {
    let prefix = redis_prefix();
    let store = RedisStore::connect_with_prefix(&redis_url(), &prefix)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Redis is not reachable at {} ({e}); start one, set RELAY_TEST_REDIS_URL, or run \
                 ./scripts/test.sh (it starts a private one when none answers)",
                redis_url()
            )
        });
    let c = store.coordination();
    coord_contract::run_all(&c, "redis").await.unwrap();
    // Two instances see the same leases.
    let other = RedisStore::connect_with_prefix(&redis_url(), &prefix)
        .await
        .unwrap()
        .coordination();
    use claude_relay::store::coord::Coordination;
    use std::time::Duration;
    assert!(
        c.lease_acquire("shared", "h1", 1, Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(
        !other
            .lease_acquire("shared", "h2", 1, Duration::from_secs(5))
            .await
            .unwrap()
    );
    c.lease_release("shared", "h1").await.unwrap();
    assert!(
        other
            .lease_acquire("shared", "h2", 1, Duration::from_secs(5))
            .await
            .unwrap()
    );
    other.lease_release("shared", "h2").await.unwrap();
}

/// The contract on a private three-master Redis Cluster (each lease set, sticky binding and
/// claim is one key; renewals of many lease sets go one slot at a time).
#[tokio::test]
async fn redis_cluster_coordination_passes_the_contract() {
    use claude_relay::lifecycle::Tasks;
    use claude_relay::store::redis_conn::RedisTarget;
    let cluster = support::redis_servers::RedisCluster::start();
    let store = RedisStore::connect_target(
        &RedisTarget::Cluster(cluster.urls()),
        &redis_prefix(),
        &Tasks::on_current_runtime(),
    )
    .await
    .unwrap();
    coord_contract::run_all(&store.coordination(), "redis-cluster")
        .await
        .unwrap();
}
