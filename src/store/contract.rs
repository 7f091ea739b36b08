//! The contract every store backend passes.
//!
//! Test-support code compiled into the library so that unit tests and the integration tests in
//! `tests/store_contract.rs` can run the same checks on every backend. The checks never panic: each
//! returns `Err` with a message naming what failed, and the test decides how to fail.
//!
//! Run [`run_all`] on an empty store (a fresh embedded file, or a fresh Redis prefix): the checks
//! compare whole listings. Times are taken relative to the wall clock, because the Redis backend
//! expires usage buckets by the wall clock (a minute bucket written for last week is gone at once).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use super::client_sessions::{MAX_AGENTS_PER_SESSION, MAX_MODELS_PER_SESSION, OTHER_MODEL};
use super::redis::RedisStore;
use super::{
    AccountKind, AccountRecord, AdminSession, AgentUsage, ApiKeyRecord, BucketKey, Dimension, Granularity,
    SessionBounds, SessionCursor, SessionUsage, Store, StoreError, StoreResult, UsageCounters,
};
use crate::secrets::Secrets;

/// How long a published change may take to arrive.
pub const CHANGE_DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

type Check = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn eq<T: PartialEq + Debug>(what: &str, got: T, want: T) -> Check {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

fn ok<T>(what: &str, r: StoreResult<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: unexpected error: {e}"))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Runs every check, stopping at the first failure. `store` must be empty.
pub async fn run_all(store: &dyn Store) -> Check {
    let backend = store.backend();
    let tag = |name: &'static str| move |e: String| format!("[{backend} store] {name}: {e}");
    ok("ping", store.ping().await).map_err(tag("ping"))?;
    api_keys(store).await.map_err(tag("api_keys"))?;
    api_key_last_used(store).await.map_err(tag("api_key_last_used"))?;
    accounts(store).await.map_err(tag("accounts"))?;
    usage_series(store).await.map_err(tag("usage_series"))?;
    usage_totals(store).await.map_err(tag("usage_totals"))?;
    usage_series_many(store).await.map_err(tag("usage_series_many"))?;
    usage_expiry(store).await.map_err(tag("usage_expiry"))?;
    sessions(store).await.map_err(tag("sessions"))?;
    client_sessions(store).await.map_err(tag("client_sessions"))?;
    client_session_bounds(store)
        .await
        .map_err(tag("client_session_bounds"))?;
    super::log_contract::logs(store).await.map_err(tag("logs"))?;
    changes(store).await.map_err(tag("changes"))?;
    Ok(())
}

pub fn sample_key(id: &str, key_hash: &str) -> ApiKeyRecord {
    let mut extra = BTreeMap::new();
    extra.insert("rate_limit".to_string(), serde_json::json!({"rpm": 60, "window": "1m"}));
    ApiKeyRecord {
        id: id.to_string(),
        name: format!("key {id}"),
        key_hash: key_hash.to_string(),
        hint: "cr_3f9a…b71c".to_string(),
        enabled: true,
        bind: Some("group:team".to_string()),
        tags: vec!["team-a".to_string(), "批处理".to_string()],
        policy: filters::policy::KeyPolicySpec {
            model_blacklist: vec!["claude-opus-4-1".to_string()],
            ..Default::default()
        },
        created_at: 1_700_000_000,
        extra,
    }
}

/// Key CRUD, the unique key-hash index and its `Conflict`, and that unknown fields survive.
pub async fn api_keys(store: &dyn Store) -> Check {
    eq("empty list", ok("list", store.list_api_keys().await)?, vec![])?;
    eq("missing key", ok("get", store.get_api_key("k1").await)?, None)?;

    let k1 = sample_key("k1", "h1");
    ok("put k1", store.put_api_key(&k1).await)?;
    eq("get k1", ok("get k1", store.get_api_key("k1").await)?, Some(k1.clone()))?;

    // Another id with the same hash is refused, and nothing changes.
    let k2_clash = sample_key("k2", "h1");
    match store.put_api_key(&k2_clash).await {
        Err(StoreError::Conflict(_)) => {}
        other => {
            return Err(format!("put k2 with k1's hash: want Conflict, got {other:?}"));
        }
    }
    eq(
        "k2 after refused put",
        ok("get k2", store.get_api_key("k2").await)?,
        None,
    )?;

    // Replacing the same id with the same hash is fine.
    let mut k1_renamed = k1.clone();
    k1_renamed.name = "renamed".to_string();
    k1_renamed.enabled = false;
    ok("replace k1", store.put_api_key(&k1_renamed).await)?;
    eq(
        "get replaced k1",
        ok("get k1", store.get_api_key("k1").await)?,
        Some(k1_renamed.clone()),
    )?;

    // Changing k1's hash releases the old one.
    let k1_rehashed = ApiKeyRecord {
        key_hash: "h1b".to_string(),
        ..k1_renamed.clone()
    };
    ok("rehash k1", store.put_api_key(&k1_rehashed).await)?;
    let k2 = sample_key("k2", "h1");
    ok("put k2 with k1's released hash", store.put_api_key(&k2).await)?;
    match store.put_api_key(&sample_key("k3", "h1b")).await {
        Err(StoreError::Conflict(_)) => {}
        other => {
            return Err(format!("put k3 with k1's new hash: want Conflict, got {other:?}"));
        }
    }

    eq(
        "list sorted by id",
        ok("list", store.list_api_keys().await)?,
        vec![k1_rehashed.clone(), k2.clone()],
    )?;

    // Delete frees the hash for another key.
    eq("delete k2", ok("delete k2", store.delete_api_key("k2").await)?, true)?;
    eq(
        "delete k2 again",
        ok("delete k2", store.delete_api_key("k2").await)?,
        false,
    )?;
    eq("get deleted k2", ok("get k2", store.get_api_key("k2").await)?, None)?;
    let k3 = sample_key("k3", "h1");
    ok("put k3 with deleted k2's hash", store.put_api_key(&k3).await)?;

    // Clean up for the next checks.
    eq("delete k1", ok("delete k1", store.delete_api_key("k1").await)?, true)?;
    eq("delete k3", ok("delete k3", store.delete_api_key("k3").await)?, true)?;
    eq("list after deletes", ok("list", store.list_api_keys().await)?, vec![])?;
    Ok(())
}

/// Last-use times: a later time wins, within one batch and across batches; deleted keys drop out.
pub async fn api_key_last_used(store: &dyn Store) -> Check {
    for id in ["lu1", "lu2"] {
        ok(
            "put key",
            store.put_api_key(&sample_key(id, &format!("hash-{id}"))).await,
        )?;
    }
    ok("touch nothing", store.touch_api_keys(&[]).await)?;
    eq(
        "nothing used yet",
        ok("last used", store.api_key_last_used().await)?,
        BTreeMap::new(),
    )?;

    let batch = [
        ("lu1".to_string(), 100),
        ("lu1".to_string(), 50),
        ("lu2".to_string(), 70),
        ("lu1".to_string(), 90),
    ];
    ok("touch batch", store.touch_api_keys(&batch).await)?;
    let want: BTreeMap<String, i64> = [("lu1".to_string(), 100), ("lu2".to_string(), 70)].into();
    eq(
        "latest time in a batch wins",
        ok("last used", store.api_key_last_used().await)?,
        want,
    )?;

    ok("touch older", store.touch_api_keys(&[("lu1".to_string(), 99)]).await)?;
    ok(
        "touch newer",
        store.touch_api_keys(&[("lu2".to_string(), 1_700_000_000)]).await,
    )?;
    let want: BTreeMap<String, i64> = [("lu1".to_string(), 100), ("lu2".to_string(), 1_700_000_000)].into();
    eq(
        "later time wins across batches",
        ok("last used", store.api_key_last_used().await)?,
        want,
    )?;

    // A use reported for a key that does not exist (deleted meanwhile) leaves no entry.
    ok("touch unknown", store.touch_api_keys(&[("ghost".to_string(), 5)]).await)?;
    ok("delete lu2", store.delete_api_key("lu2").await)?;
    let want: BTreeMap<String, i64> = [("lu1".to_string(), 100)].into();
    eq(
        "only live keys have a last use",
        ok("last used", store.api_key_last_used().await)?,
        want,
    )?;

    ok("delete lu1", store.delete_api_key("lu1").await)?;
    eq(
        "none left",
        ok("last used", store.api_key_last_used().await)?,
        BTreeMap::new(),
    )?;
    Ok(())
}

/// Account CRUD; the sealed credential round-trips and opens to the plaintext.
pub async fn accounts(store: &dyn Store) -> Check {
    let secrets = Secrets::new(&Secrets::generate_key()).map_err(|e| format!("secrets: {e}"))?;
    let plaintext = "sk-ant-api03-contract-test-secret";
    // The store keeps the settings as they are written, fields of other relay versions included.
    let settings = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
    let a1 = AccountRecord {
        id: "a1".to_string(),
        settings: settings(serde_json::json!({
            "name": "console one",
            "kind": AccountKind::ClaudeConsole,
            "base_url": "https://api.anthropic.com",
            "priority": 10,
            "enabled": true,
            "models": ["claude-sonnet-4"],
            "model_map": {"claude-sonnet-4": "claude-sonnet-4-20250514"},
            "group": "team",
            "max_concurrency": 4,
            "daily_quota_usd": 50.0,
            "quota_reset": "00:00",
            "field_from_a_newer_relay": {"url": "socks5://127.0.0.1:1080"},
        })),
        secret: secrets.seal(plaintext),
        proxy: Some(secrets.seal("socks5://u:p@127.0.0.1:1080")),
        oauth: None,
        created_at: 1_700_000_000,
    };
    let a0 = AccountRecord {
        id: "a0".to_string(),
        settings: settings(serde_json::json!({
            "name": "console zero",
            "kind": AccountKind::ClaudeConsole,
            "base_url": "https://api.anthropic.com",
            "models": null,
            "model_map": {},
        })),
        secret: secrets.seal("another"),
        ..a1.clone()
    };

    eq("empty list", ok("list", store.list_accounts().await)?, vec![])?;
    ok("put a1", store.put_account(&a1).await)?;
    ok("put a0", store.put_account(&a0).await)?;
    let got = ok("get a1", store.get_account("a1").await)?.ok_or("a1 missing after put")?;
    eq("a1 round trip", &got, &a1)?;
    ensure!(
        !got.secret.0.contains(plaintext),
        "the stored secret contains the plaintext"
    );
    let opened = secrets
        .open(&got.secret)
        .map_err(|e| format!("open stored secret: {e}"))?;
    eq("sealed secret opens", opened.as_str(), plaintext)?;
    eq(
        "list sorted by id",
        ok("list", store.list_accounts().await)?,
        vec![a0.clone(), a1.clone()],
    )?;

    let mut a1_disabled = a1.clone();
    a1_disabled.settings.insert("enabled".into(), false.into());
    a1_disabled.settings.insert("priority".into(), 99.into());
    ok("replace a1", store.put_account(&a1_disabled).await)?;
    eq(
        "get replaced a1",
        ok("get a1", store.get_account("a1").await)?,
        Some(a1_disabled),
    )?;

    eq("delete a1", ok("delete a1", store.delete_account("a1").await)?, true)?;
    eq(
        "delete a1 again",
        ok("delete a1", store.delete_account("a1").await)?,
        false,
    )?;
    eq("get deleted a1", ok("get a1", store.get_account("a1").await)?, None)?;
    eq("delete a0", ok("delete a0", store.delete_account("a0").await)?, true)?;
    eq("list after deletes", ok("list", store.list_accounts().await)?, vec![])?;
    Ok(())
}

fn counters(requests: u64, input: u64, output: u64, cost_nanos: u64) -> UsageCounters {
    UsageCounters {
        requests,
        input_tokens: input,
        output_tokens: output,
        cost_nanos,
        ..UsageCounters::default()
    }
}

fn bucket(dimension: Dimension, subject: &str, granularity: Granularity, ts: i64) -> BucketKey {
    BucketKey {
        dimension,
        subject: subject.to_string(),
        granularity,
        start: granularity.bucket_start(ts),
    }
}

/// Adding and reading series at every granularity, across a month boundary, half-open ranges,
/// unaligned starts, duplicate buckets in one batch, and subjects containing `:`.
pub async fn usage_series(store: &dyn Store) -> Check {
    let t = now();
    let this_month = Granularity::Month.bucket_start(t);
    let last_month = Granularity::Month.bucket_start(this_month - 1);
    eq(
        "next_bucket of last month",
        Granularity::Month.next_bucket(last_month),
        this_month,
    )?;
    let model = "claude:opus-4";
    let d = Dimension::Model;

    // Last second of last month and first second of this month.
    let before = this_month - 1;
    let after = this_month;
    let c1 = counters(1, 100, 10, 1_000);
    let c2 = counters(2, 200, 20, 2_000);
    let mut batch = Vec::new();
    for g in [
        Granularity::Hour,
        Granularity::Day,
        Granularity::Month,
        Granularity::Total,
    ] {
        batch.push((bucket(d, model, g, before), c1));
        batch.push((bucket(d, model, g, after), c2));
    }
    // Minutes around now, one of them twice in the batch.
    let m0 = Granularity::Minute.bucket_start(t) - 120;
    batch.push((bucket(d, model, Granularity::Minute, m0), c1));
    batch.push((bucket(d, model, Granularity::Minute, m0 + 60), c1));
    batch.push((bucket(d, model, Granularity::Minute, m0 + 60), c2));
    // Unaligned start: lands in the bucket that contains it.
    batch.push((
        BucketKey {
            start: m0 + 120 + 59,
            ..bucket(d, model, Granularity::Minute, m0)
        },
        c2,
    ));
    // A subject that extends ours with `:` must not leak into our series.
    batch.push((bucket(d, "claude:opus-4:beta", Granularity::Minute, m0), c2));
    batch.push((bucket(d, "claude", Granularity::Minute, m0), c2));
    ok("add usage", store.add_usage(&batch).await)?;

    let mut c12 = c1;
    c12.add(&c2);
    let series = |g: Granularity, from: i64, to: i64| store.usage_series(d, model, g, from, to);

    eq(
        "minute series",
        ok("minute", series(Granularity::Minute, m0, m0 + 180).await)?,
        vec![(m0, c1), (m0 + 60, c12), (m0 + 120, c2)],
    )?;
    eq(
        "minute series is half-open",
        ok("minute", series(Granularity::Minute, m0 + 1, m0 + 120).await)?,
        vec![(m0 + 60, c12)],
    )?;
    eq(
        "hour series across the month boundary",
        ok(
            "hour",
            series(Granularity::Hour, this_month - 7_200, this_month + 7_200).await,
        )?,
        vec![(this_month - 3_600, c1), (this_month, c2)],
    )?;
    eq(
        "day series across the month boundary",
        ok(
            "day",
            series(Granularity::Day, this_month - 86_400, this_month + 86_400).await,
        )?,
        vec![(this_month - 86_400, c1), (this_month, c2)],
    )?;
    eq(
        "month series",
        ok("month", series(Granularity::Month, last_month, this_month + 1).await)?,
        vec![(last_month, c1), (this_month, c2)],
    )?;
    eq(
        "month series from inside last month",
        ok("month", series(Granularity::Month, last_month + 1, t + 1).await)?,
        vec![(this_month, c2)],
    )?;
    eq(
        "total series",
        ok("total", series(Granularity::Total, 0, 1).await)?,
        vec![(0, c12)],
    )?;
    eq(
        "empty range",
        ok("empty", series(Granularity::Day, t, t).await)?,
        vec![],
    )?;
    eq(
        "unknown subject",
        ok(
            "unknown",
            store
                .usage_series(d, "nobody", Granularity::Day, this_month - 86_400, t + 1)
                .await,
        )?,
        vec![],
    )?;
    eq(
        "other dimension",
        ok(
            "account",
            store
                .usage_series(Dimension::Account, model, Granularity::Total, 0, 1)
                .await,
        )?,
        vec![],
    )?;

    // Adding again accumulates.
    ok(
        "add again",
        store
            .add_usage(&[(bucket(d, model, Granularity::Month, after), c1)])
            .await,
    )?;
    eq(
        "month accumulates",
        ok("month", series(Granularity::Month, this_month, this_month + 1).await)?,
        vec![(this_month, c12)],
    )?;

    // Every counter survives the round trip.
    let full = UsageCounters {
        requests: 1,
        errors: 2,
        input_tokens: 3,
        output_tokens: 4,
        cache_read_tokens: 5,
        cache_write_5m_tokens: 6,
        cache_write_1h_tokens: 7,
        cost_nanos: 8_000_000_000_000,
        unpriced_requests: 9,
        partly_priced_requests: 10,
        fast_requests: 11,
        web_search_requests: 12,
    };
    ok(
        "add full",
        store
            .add_usage(&[(bucket(Dimension::Key, "full", Granularity::Day, t), full)])
            .await,
    )?;
    eq(
        "all counters round trip",
        ok(
            "day",
            store
                .usage_series(Dimension::Key, "full", Granularity::Day, t - 86_400, t + 1)
                .await,
        )?,
        vec![(Granularity::Day.bucket_start(t), full)],
    )?;

    // Zero counters and an empty batch create nothing.
    ok("add empty batch", store.add_usage(&[]).await)?;
    ok(
        "add zero",
        store
            .add_usage(&[(
                bucket(Dimension::Key, "zero", Granularity::Day, t),
                UsageCounters::default(),
            )])
            .await,
    )?;
    eq(
        "zero counters leave no bucket",
        ok(
            "zero",
            store
                .usage_series(Dimension::Key, "zero", Granularity::Day, t - 86_400, t + 1)
                .await,
        )?,
        vec![],
    )?;

    // A range wider than the backend's cap is refused, not silently truncated.
    ensure!(
        store.usage_series(d, model, Granularity::Minute, 0, t).await.is_err(),
        "a minute series over all time should be refused"
    );
    Ok(())
}

/// All-time totals per dimension (only `Total` buckets count).
pub async fn usage_totals(store: &dyn Store) -> Check {
    let t = now();
    let a = counters(1, 10, 1, 5);
    let b = counters(3, 30, 3, 15);
    let batch = vec![
        (bucket(Dimension::Key, "tk1", Granularity::Total, t), a),
        (bucket(Dimension::Key, "tk1", Granularity::Total, t - 86_400 * 400), a),
        (bucket(Dimension::Key, "tk2", Granularity::Total, t), b),
        (bucket(Dimension::Key, "tk3", Granularity::Day, t), b),
        (bucket(Dimension::Account, "ta1", Granularity::Total, t), b),
    ];
    ok("add usage", store.add_usage(&batch).await)?;
    let mut aa = a;
    aa.add(&a);

    let keys = ok("key totals", store.usage_totals(Dimension::Key).await)?;
    // Keys `full` (from usage_series) and `tk3` have day buckets only: no total.
    let want: BTreeMap<String, UsageCounters> = [("tk1".to_string(), aa), ("tk2".to_string(), b)].into();
    eq("key totals", keys, want)?;
    let want: BTreeMap<String, UsageCounters> = [("ta1".to_string(), b)].into();
    eq(
        "account totals",
        ok("account totals", store.usage_totals(Dimension::Account).await)?,
        want,
    )?;

    let models = ok("model totals", store.usage_totals(Dimension::Model).await)?;
    let names: Vec<&str> = models.keys().map(String::as_str).collect();
    eq("model subjects (from usage_series)", names, vec!["claude:opus-4"])?;
    Ok(())
}

/// Several subjects' series in one read: each as `usage_series` gives it, subjects without buckets
/// in the range absent.
pub async fn usage_series_many(store: &dyn Store) -> Check {
    let day = Granularity::Day.bucket_start(now());
    let a = counters(1, 10, 1, 5);
    let b = counters(3, 30, 3, 15);
    let batch = vec![
        (bucket(Dimension::Key, "many1", Granularity::Day, day), a),
        (bucket(Dimension::Key, "many1", Granularity::Day, day - 2 * 86_400), b),
        (bucket(Dimension::Key, "many1", Granularity::Day, day - 40 * 86_400), b),
        (bucket(Dimension::Key, "many2", Granularity::Day, day - 86_400), b),
        (bucket(Dimension::Key, "many3", Granularity::Day, day - 40 * 86_400), a),
        (bucket(Dimension::Account, "many2", Granularity::Day, day), a),
    ];
    ok("add usage", store.add_usage(&batch).await)?;
    let subjects: Vec<String> = ["many1", "many2", "many3", "many4"].map(String::from).into();
    let got = ok(
        "series of many",
        store
            .usage_series_many(
                Dimension::Key,
                &subjects,
                Granularity::Day,
                day - 29 * 86_400,
                day + 86_400,
            )
            .await,
    )?;
    let want: BTreeMap<String, Vec<(i64, UsageCounters)>> = [
        ("many1".to_string(), vec![(day - 2 * 86_400, b), (day, a)]),
        ("many2".to_string(), vec![(day - 86_400, b)]),
    ]
    .into();
    eq("series of many", got, want)?;
    let none = ok(
        "no subjects",
        store
            .usage_series_many(Dimension::Key, &[], Granularity::Day, day, day + 1)
            .await,
    )?;
    eq("no subjects", none.len(), 0)?;
    Ok(())
}

/// Expiry: buckets already past their retention are not stored; `purge_expired_usage` removes
/// buckets that expired by the given instant (the embedded store) or is a no-op (Redis, which uses
/// TTLs: see [`redis_ttls`]); totals never expire.
pub async fn usage_expiry(store: &dyn Store) -> Check {
    let t = now();
    let d = Dimension::Account;
    let s = "expiring";
    let c = counters(1, 1, 1, 1);
    let stale_minute = t - 3 * 86_400;
    let batch = vec![
        (bucket(d, s, Granularity::Minute, stale_minute), c),
        (bucket(d, s, Granularity::Minute, t), c),
        (bucket(d, s, Granularity::Hour, t), c),
        (bucket(d, s, Granularity::Day, t), c),
        (bucket(d, s, Granularity::Total, t), c),
    ];
    ok("add usage", store.add_usage(&batch).await)?;
    let minute_now = Granularity::Minute.bucket_start(t);
    eq(
        "an already-expired bucket is not visible",
        ok(
            "minute",
            store
                .usage_series(d, s, Granularity::Minute, stale_minute - 60, stale_minute + 60)
                .await,
        )?,
        vec![],
    )?;
    eq(
        "a live minute bucket is visible",
        ok(
            "minute",
            store
                .usage_series(d, s, Granularity::Minute, minute_now, minute_now + 60)
                .await,
        )?,
        vec![(minute_now, c)],
    )?;

    // Three days on, minute buckets (2-day retention) are past; hours (31 days) are not.
    let later = t + 3 * 86_400;
    let purged = ok("purge", store.purge_expired_usage(later).await)?;
    if store.backend() == "embedded" {
        ensure!(
            purged >= 1,
            "purge at now+3d removed {purged} buckets, want at least the live minute bucket"
        );
        eq(
            "purged minute bucket",
            ok(
                "minute",
                store
                    .usage_series(d, s, Granularity::Minute, minute_now, minute_now + 60)
                    .await,
            )?,
            vec![],
        )?;
        eq(
            "nothing left to purge",
            ok("purge again", store.purge_expired_usage(later).await)?,
            0,
        )?;
    }
    let hour = Granularity::Hour.bucket_start(t);
    eq(
        "hour bucket survives the purge",
        ok(
            "hour",
            store.usage_series(d, s, Granularity::Hour, hour, hour + 1).await,
        )?,
        vec![(hour, c)],
    )?;
    let far = t + 100 * 366 * 86_400;
    ok("purge far future", store.purge_expired_usage(far).await)?;
    eq(
        "total survives every purge",
        ok("total", store.usage_series(d, s, Granularity::Total, 0, 1).await)?,
        vec![(0, c)],
    )?;
    Ok(())
}

/// The Redis-specific half of [`usage_expiry`]: every bucket but `Total` carries a TTL of its end
/// plus its retention.
pub async fn redis_ttls(store: &RedisStore) -> Check {
    let t = now();
    let c = counters(1, 0, 0, 0);
    let grans = [
        Granularity::Minute,
        Granularity::Hour,
        Granularity::Day,
        Granularity::Month,
        Granularity::Total,
    ];
    let batch: Vec<(BucketKey, UsageCounters)> = grans
        .iter()
        .map(|g| (bucket(Dimension::Model, "ttl:model", *g, t), c))
        .collect();
    ok("add usage", store.add_usage(&batch).await)?;
    for (bk, _) in &batch {
        let ttl = ok("ttl", store.usage_bucket_ttl(bk).await)?;
        match bk.granularity.retention() {
            None => eq("total bucket has no TTL", ttl, None)?,
            Some(retention) => {
                let end = bk.granularity.next_bucket(bk.start);
                let want = end + retention.as_secs() as i64 - now();
                let got = ttl.ok_or_else(|| format!("{} bucket has no TTL", bk.granularity.as_str()))?;
                ensure!(
                    (got - want).abs() <= 5,
                    "{} bucket TTL {got}s, want about {want}s",
                    bk.granularity.as_str()
                );
            }
        }
    }
    Ok(())
}

/// Admin sessions: found while valid (strictly before `expires_at`), gone after, deletable.
pub async fn sessions(store: &dyn Store) -> Check {
    let t = now();
    let s1 = AdminSession {
        username: "admin".to_string(),
        created_at: t,
        expires_at: t + 3_600,
    };
    eq("missing session", ok("get", store.get_session("nope", t).await)?, None)?;
    ok("put s1", store.put_session("th1", &s1).await)?;
    eq(
        "valid session",
        ok("get", store.get_session("th1", t).await)?,
        Some(s1.clone()),
    )?;
    eq(
        "valid just before expiry",
        ok("get", store.get_session("th1", t + 3_599).await)?,
        Some(s1.clone()),
    )?;
    eq(
        "invalid at expiry",
        ok("get", store.get_session("th1", t + 3_600).await)?,
        None,
    )?;

    let expired = AdminSession {
        username: "old".to_string(),
        created_at: t - 7_200,
        expires_at: t - 10,
    };
    ok("put expired", store.put_session("th2", &expired).await)?;
    eq(
        "expired session is invisible",
        ok("get", store.get_session("th2", t).await)?,
        None,
    )?;

    // Asking with a later clock may have removed s1 (the embedded store drops expired sessions
    // lazily): put it back before checking delete.
    ok("put s1 again", store.put_session("th1", &s1).await)?;
    ok("delete s1", store.delete_session("th1").await)?;
    eq("deleted session", ok("get", store.get_session("th1", t).await)?, None)?;
    ok("delete missing", store.delete_session("th1").await)?;
    Ok(())
}

/// One request's worth of a client session: one model, counted under the main agent or a named
/// agent (with its parent).
fn session_delta(
    key: &str,
    session: &str,
    at: i64,
    model: &str,
    c: UsageCounters,
    agent: Option<(&str, Option<&str>)>,
) -> SessionUsage {
    let mut s = SessionUsage::new(key, session, at);
    s.models.insert(model.to_string(), c);
    match agent {
        None => s.main = c,
        Some((id, parent)) => {
            s.agents.insert(
                id.to_string(),
                AgentUsage {
                    parent: parent.map(str::to_string),
                    first_seen: at,
                    last_seen: at,
                    usage: c,
                },
            );
        }
    }
    s
}

const LONG: SessionBounds = SessionBounds {
    per_key: 500,
    retention_secs: 30 * 86_400,
};

/// Client sessions: usage adds up per (key, session) by model and by agent, with first and last
/// seen; keys do not see each other's sessions; listing is newest first and pages by cursor.
pub async fn client_sessions(store: &dyn Store) -> Check {
    let t = now();
    let since = t - LONG.retention_secs;
    eq(
        "no session yet",
        ok("get", store.session_usage("ck1", "s1", since).await)?,
        None,
    )?;
    let a = counters(1, 100, 10, 1_000);
    let b = counters(1, 50, 5, 0);
    let batch = vec![
        session_delta("ck1", "s1", t - 30, "claude:opus-4", a, None),
        session_delta("ck1", "s1", t - 20, "claude-haiku", b, Some(("ag-1", None))),
        session_delta("ck1", "s1", t - 10, "claude:opus-4", a, Some(("ag-2", Some("ag-1")))),
        // The same session id under another key is another session.
        session_delta("ck2", "s1", t - 5, "claude-haiku", b, None),
    ];
    ok("add", store.add_session_usage(&batch, LONG, t).await)?;
    let mut aa = a;
    aa.add(&a);
    let got = ok("get", store.session_usage("ck1", "s1", since).await)?
        .ok_or_else(|| "session ck1/s1 not found".to_string())?;
    eq("key", got.key_id.as_str(), "ck1")?;
    eq("first/last seen", (got.first_seen, got.last_seen), (t - 30, t - 10))?;
    let models: BTreeMap<String, UsageCounters> =
        [("claude:opus-4".to_string(), aa), ("claude-haiku".to_string(), b)].into();
    eq("models", got.models.clone(), models)?;
    eq("main agent", got.main, a)?;
    let agents: BTreeMap<String, AgentUsage> = [
        (
            "ag-1".to_string(),
            AgentUsage {
                parent: None,
                first_seen: t - 20,
                last_seen: t - 20,
                usage: b,
            },
        ),
        (
            "ag-2".to_string(),
            AgentUsage {
                parent: Some("ag-1".to_string()),
                first_seen: t - 10,
                last_seen: t - 10,
                usage: a,
            },
        ),
    ]
    .into();
    eq("agents", got.agents.clone(), agents)?;
    eq("other agents", got.other_agents, UsageCounters::default())?;
    let mut total = aa;
    total.add(&b);
    eq("totals", got.totals(), total)?;
    let other_key = ok("get", store.session_usage("ck2", "s1", since).await)?
        .ok_or_else(|| "session ck2/s1 not found".to_string())?;
    eq("the other key's session", other_key.totals(), b)?;

    // A later batch adds up; an earlier first use moves first_seen back; the parent sticks.
    let later = vec![
        session_delta("ck1", "s1", t - 40, "claude:opus-4", a, Some(("ag-2", None))),
        session_delta("ck1", "s1", t - 2, "claude-haiku", b, None),
    ];
    ok("add again", store.add_session_usage(&later, LONG, t).await)?;
    let got =
        ok("get", store.session_usage("ck1", "s1", since).await)?.ok_or_else(|| "session ck1/s1 gone".to_string())?;
    eq("first/last after", (got.first_seen, got.last_seen), (t - 40, t - 2))?;
    eq("opus requests", got.models["claude:opus-4"].requests, 3)?;
    eq("main requests", got.main.requests, 2)?;
    let ag2 = &got.agents["ag-2"];
    eq(
        "ag-2",
        (ag2.parent.as_deref(), ag2.first_seen, ag2.last_seen, ag2.usage.requests),
        (Some("ag-1"), t - 40, t - 10, 2),
    )?;
    eq("requests", got.totals().requests, 5)?;
    eq(
        "not visible before `since`",
        ok("get", store.session_usage("ck1", "s1", t - 1).await)?,
        None,
    )?;

    // Listing: newest first, paged; `since` hides older ones; other keys' sessions never show.
    let more: Vec<SessionUsage> = (0..4)
        .map(|i| session_delta("ck1", &format!("p{i}"), t - 100 + i, "m", b, None))
        .collect();
    ok("add more", store.add_session_usage(&more, LONG, t).await)?;
    let page = ok("list", store.recent_sessions("ck1", since, None, 3).await)?;
    let ids: Vec<&str> = page.sessions.iter().map(|s| s.session_id.as_str()).collect();
    eq("first page", ids, vec!["s1", "p3", "p2"])?;
    let cursor = page
        .next
        .clone()
        .ok_or_else(|| "no cursor after a full page".to_string())?;
    eq(
        "cursor",
        cursor.clone(),
        SessionCursor {
            last_seen: t - 98,
            session_id: "p2".to_string(),
        },
    )?;
    let page = ok("list", store.recent_sessions("ck1", since, Some(&cursor), 3).await)?;
    let ids: Vec<&str> = page.sessions.iter().map(|s| s.session_id.as_str()).collect();
    eq("second page", ids, vec!["p1", "p0"])?;
    eq("no cursor after the last page", page.next, None)?;
    eq(
        "listed sessions carry their usage",
        page.sessions.first().map(|s| s.models["m"]),
        Some(b),
    )?;
    let page = ok("list", store.recent_sessions("ck1", t - 97, None, 10).await)?;
    eq("since", page.sessions.len(), 2)?;
    let page = ok("list", store.recent_sessions("ck2", since, None, 10).await)?;
    let ids: Vec<&str> = page.sessions.iter().map(|s| s.session_id.as_str()).collect();
    eq("the other key lists only its own", ids, vec!["s1"])?;
    eq(
        "an unknown key has none",
        ok("list", store.recent_sessions("nobody", since, None, 10).await)?.sessions,
        vec![],
    )?;
    Ok(())
}

/// Client session bounds: the per-key cap drops the least recently seen, a session past the
/// retention is gone, a session keeps at most so many models and agents apart, and (embedded)
/// `purge_sessions` deletes old sessions.
pub async fn client_session_bounds(store: &dyn Store) -> Check {
    let t = now();
    let c = counters(1, 1, 1, 1);
    let cap = SessionBounds {
        per_key: 3,
        retention_secs: 3_600,
    };
    for i in 0..5 {
        let d = session_delta("bk", &format!("b{i}"), t - 50 + i, "m", c, None);
        ok("add", store.add_session_usage(&[d], cap, t).await)?;
    }
    let page = ok("list", store.recent_sessions("bk", i64::MIN, None, 10).await)?;
    let ids: Vec<&str> = page.sessions.iter().map(|s| s.session_id.as_str()).collect();
    eq("the cap keeps the most recent", ids, vec!["b4", "b3", "b2"])?;
    eq(
        "an evicted session is gone",
        ok("get", store.session_usage("bk", "b0", i64::MIN).await)?,
        None,
    )?;
    // New use of an old session moves it to the front: then the next oldest goes.
    let d = session_delta("bk", "b2", t, "m", c, None);
    let n = session_delta("bk", "b5", t - 1, "m", c, None);
    ok("add", store.add_session_usage(&[d, n], cap, t).await)?;
    let page = ok("list", store.recent_sessions("bk", i64::MIN, None, 10).await)?;
    let ids: Vec<&str> = page.sessions.iter().map(|s| s.session_id.as_str()).collect();
    eq("recent use keeps a session", ids, vec!["b2", "b5", "b4"])?;

    // Retention: a session last seen before now - retention is gone once its key is written.
    let stale = session_delta("rk", "old", t - 7_200, "m", c, None);
    let fresh = session_delta("rk", "new", t, "m", c, None);
    ok("add", store.add_session_usage(&[stale, fresh], cap, t).await)?;
    eq(
        "a stale session is not kept",
        ok("get", store.session_usage("rk", "old", i64::MIN).await)?,
        None,
    )?;
    let d = session_delta("rk", "ageing", t - 3_000, "m", c, None);
    ok("add", store.add_session_usage(&[d], cap, t).await)?;
    // 700 s on, "ageing" is past the retention: a write of the key drops it.
    let d = session_delta("rk", "new", t + 700, "m", c, None);
    ok("add", store.add_session_usage(&[d], cap, t + 700).await)?;
    let page = ok("list", store.recent_sessions("rk", i64::MIN, None, 10).await)?;
    let ids: Vec<&str> = page.sessions.iter().map(|s| s.session_id.as_str()).collect();
    eq("retention", ids, vec!["new"])?;

    // Bounds inside one session.
    let mut wide = SessionUsage::new("wk", "w", t);
    for i in 0..MAX_MODELS_PER_SESSION + 4 {
        wide.models.insert(format!("model-{i:03}"), c);
    }
    ok("add", store.add_session_usage(&[wide], LONG, t).await)?;
    let mut agents = SessionUsage::new("wk", "w", t);
    for i in 0..MAX_AGENTS_PER_SESSION + 2 {
        agents.agents.insert(
            format!("agent-{i:04}"),
            AgentUsage {
                parent: None,
                first_seen: t,
                last_seen: t,
                usage: c,
            },
        );
    }
    ok("add", store.add_session_usage(&[agents], LONG, t).await)?;
    let got = ok("get", store.session_usage("wk", "w", i64::MIN).await)?
        .ok_or_else(|| "session wk/w not found".to_string())?;
    eq("models kept apart", got.models.len(), MAX_MODELS_PER_SESSION + 1)?;
    eq(
        "models beyond the cap",
        got.models.get(OTHER_MODEL).map(|c| c.requests),
        Some(4),
    )?;
    eq("agents kept apart", got.agents.len(), MAX_AGENTS_PER_SESSION)?;
    eq("agents beyond the cap", got.other_agents.requests, 2)?;

    if store.backend() == "embedded" {
        let purged = ok("purge", store.purge_sessions(t + 1).await)?;
        ensure!(purged >= 1, "purge_sessions removed {purged} sessions, want at least 1");
        eq(
            "purged",
            ok("list", store.recent_sessions("bk", i64::MIN, None, 10).await)?.sessions,
            vec![],
        )?;
        eq(
            "nothing left to purge",
            ok("purge", store.purge_sessions(t + 1).await)?,
            0,
        )?;
    } else {
        eq("purge is a no-op", ok("purge", store.purge_sessions(t + 1).await)?, 0)?;
    }
    Ok(())
}

/// A published change reaches a receiver subscribed before it, exactly once.
pub async fn changes(store: &dyn Store) -> Check {
    let mut rx = store.subscribe_changes();
    ok("publish", store.publish_change().await)?;
    expect_change(&mut rx, "own publish").await?;
    ok("publish", store.publish_change().await)?;
    ok("publish", store.publish_change().await)?;
    expect_change(&mut rx, "second publish").await?;
    expect_change(&mut rx, "third publish").await?;
    // Nothing more should arrive.
    match tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        Err(_) => Ok(()),
        Ok(r) => Err(format!("a change arrived that nobody published: {r:?}")),
    }
}

/// Waits for one change on `rx`.
pub async fn expect_change(rx: &mut tokio::sync::broadcast::Receiver<()>, what: &str) -> Check {
    match tokio::time::timeout(CHANGE_DELIVERY_TIMEOUT, rx.recv()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{what}: change channel error: {e}")),
        Err(_) => Err(format!(
            "{what}: no change delivered within {CHANGE_DELIVERY_TIMEOUT:?}"
        )),
    }
}
