//! Micro-benchmarks of the per-request hot path before the body is read: finding the caller's key
//! in the in-memory snapshot (keyed HMAC-SHA256 of the presented key + one hash-map probe), the
//! filter chain's header phase with the built-in `key_auth` filter, the whole chain (every phase)
//! with every built-in filter and a key that has every restriction and limit (memory limits)
//! against `key_auth` alone, account selection (`Scheduler::pick`) among 1,000 accounts, and the
//! request log's push of a finished request's entry.
//!
//! Usage accounting (SSE parser, pricing) has its own bench, `benches/usage.rs`. Body facts are not
//! benched here: `proxy::body` is private to the crate.
//!
//! Run: `cargo bench --bench hot_path` (add `-- --quick` for a short pass).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use arc_swap::ArcSwap;
use claude_relay::config::Config;
use claude_relay::providers::UpstreamBase;
use claude_relay::scheduler::{AccountPool, AccountSpec, PickRequest, Scheduler, Source};
use claude_relay::secrets::Secrets;
use claude_relay::state::{SnapshotKeys, build_snapshot};
use claude_relay::store::coord::{AccountHealth, HealthState};
use claude_relay::store::{AccountKind, ApiKeyRecord, KindSet};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use filters::{CompletionContext, FilterContext, FilterDeps, KeyDirectory, RequestFacts, RouteInfo, Service};

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// The key defined in the config; always present, so it is the "hit" key of every snapshot size.
const CONFIG_KEY: &str = "cr_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
/// A well-formed key that is in no snapshot.
const MISSING_KEY: &str = "cr_ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

/// A key directory over a snapshot holding `n` keys: one from the config, `n - 1` stored ones.
/// Returns it with one stored key's plaintext (or the config key when `n == 1`).
fn directory(n: usize) -> (SnapshotKeys, String) {
    let yaml = format!("secret_key: {SECRET}\napi_keys:\n  - {{ name: bench, key: {CONFIG_KEY} }}\n");
    let config = Config::from_yaml(&yaml, &|_| None).expect("bench config is valid");
    let secrets = Arc::new(Secrets::new(SECRET).expect("bench secret is valid"));
    let plaintext = |i: usize| format!("cr_{i:064x}");
    let stored: Vec<ApiKeyRecord> = (1..n)
        .map(|i| ApiKeyRecord {
            id: format!("key-{i}"),
            name: format!("key {i}"),
            key_hash: secrets.hash_client_key_hex(&plaintext(i)),
            hash_key: None,
            hint: String::new(),
            enabled: true,
            bind: None,
            tags: Vec::new(),
            policy: Default::default(),
            created_at: 0,
            legacy_hash: None,
            extra: Default::default(),
        })
        .collect();
    let snapshot = build_snapshot(&config, &secrets, &Scheduler::new(), None, stored, Vec::new());
    assert_eq!(snapshot.keys.len(), n, "every generated key made it into the snapshot");
    let stored_hit = if n > 1 {
        plaintext(n / 2)
    } else {
        CONFIG_KEY.to_string()
    };
    (
        SnapshotKeys {
            secrets,
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            legacy_moves: None,
        },
        stored_hit,
    )
}

fn key_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("key_lookup");
    for n in [1usize, 1_000, 10_000] {
        let (keys, stored_hit) = directory(n);
        assert!(keys.find(CONFIG_KEY).is_some() && keys.find(&stored_hit).is_some());
        assert!(keys.find(MISSING_KEY).is_none());
        group.bench_with_input(BenchmarkId::new("hit", n), &n, |b, _| {
            b.iter(|| keys.find(black_box(stored_hit.as_str())))
        });
        group.bench_with_input(BenchmarkId::new("miss", n), &n, |b, _| {
            b.iter(|| keys.find(black_box(MISSING_KEY)))
        });
    }
    group.finish();
}

/// Polls a future that never waits (the chain's header phase with built-in filters) to completion
/// without a runtime, so the number is the chain's own cost.
fn run_ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("the built-in filters never wait here (memory limits, no refusal)"),
    }
}

fn filter_chain(c: &mut Criterion) {
    let mut group = c.benchmark_group("filter_chain_headers");
    let route = RouteInfo {
        service: Service::Claude,
        endpoint: "messages",
    };
    for n in [1usize, 10_000] {
        let (keys, stored_hit) = directory(n);
        let keys: Arc<dyn KeyDirectory> = Arc::new(keys);
        let chain = filters::Registry::with_builtins()
            .build(
                &["key_auth".to_string()],
                &FilterDeps {
                    keys,
                    limits: Arc::new(claude_relay::limits::MemoryLimits::new()),
                },
            )
            .expect("key_auth chain builds");

        // Headers as Claude Code sends them (the ones that matter here plus typical company).
        let mut headers = http::HeaderMap::new();
        for (k, v) in [
            ("host", "127.0.0.1:3000"),
            ("content-type", "application/json"),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "claude-code-20250219,interleaved-thinking-2025-05-14"),
            ("user-agent", "claude-cli/2.0.0 (external, cli)"),
            ("x-app", "cli"),
            ("accept", "application/json"),
        ] {
            headers.insert(k, http::HeaderValue::from_static(v));
        }
        let mut hit = headers.clone();
        hit.insert("x-api-key", http::HeaderValue::from_str(&stored_hit).unwrap());
        let mut bearer = headers.clone();
        bearer.insert(
            "authorization",
            http::HeaderValue::from_str(&format!("Bearer {stored_hit}")).unwrap(),
        );
        let mut miss = headers.clone();
        miss.insert("x-api-key", http::HeaderValue::from_static(MISSING_KEY));
        let none = headers;

        let cases: [(&str, &http::HeaderMap, bool); 4] = [
            ("x_api_key_hit", &hit, true),
            ("bearer_hit", &bearer, true),
            ("invalid_key", &miss, false),
            ("missing_key", &none, false),
        ];
        for (name, h, ok) in cases {
            let run = || {
                let mut holds = Vec::new();
                let mut cx = FilterContext {
                    route,
                    headers: black_box(h),
                    query: None,
                    client_ip: None,
                    key: None,
                    facts: None,
                    holds: &mut holds,
                };
                let r = run_ready(chain.run_headers(&mut cx));
                (r.is_ok(), cx.key.is_some())
            };
            assert_eq!(run(), (ok, ok), "{name}: unexpected chain outcome");
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| b.iter(run));
        }
    }
    group.finish();
}

/// One request through every phase of the chain (head, request, completion, then the end of the
/// request drops its holds), for a key with every restriction and limit: the chain of every
/// built-in filter (`all_filters`) against `key_auth` alone (`key_auth_only`), same key and
/// request. The target: at most 10 µs more per request. The limits are the memory backend
/// (the embedded store's); the key's windows are large enough never to refuse, so each request is
/// admitted, counted, charged and its concurrency slot taken and released.
fn full_chain(c: &mut Criterion) {
    let mut group = c.benchmark_group("filter_chain_request");
    let yaml = format!(
        "secret_key: {SECRET}\napi_keys:\n  - {{ name: bench, key: {CONFIG_KEY}, permissions: [claude], \
         expires_at: \"2099-01-01T00:00:00Z\", clients: [claude_code, {{ user_agent: \"^my-tool/\" }}], \
         ip_allow: [10.0.0.0/8, \"::1/128\"], ip_deny: [10.9.0.0/16], model_blacklist: [claude-opus-4-1], \
         rate_limit: {{ window_minutes: 1, requests: 1000000000000, tokens: 1000000000000000, cost_usd: 1000000 }}, \
         cost_limits: {{ daily_usd: 1000000, weekly_usd: 1000000, total_usd: 1000000 }}, \
         concurrency: {{ limit: 4, queue: 2 }} }}\n"
    );
    let config = Config::from_yaml(&yaml, &|_| None).expect("bench config is valid");
    let secrets = Arc::new(Secrets::new(SECRET).expect("bench secret is valid"));
    let snapshot = build_snapshot(&config, &secrets, &Scheduler::new(), None, Vec::new(), Vec::new());
    let keys: Arc<dyn KeyDirectory> = Arc::new(SnapshotKeys {
        secrets,
        snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
        legacy_moves: None,
    });
    let mut headers = http::HeaderMap::new();
    for (k, v) in [
        ("host", "127.0.0.1:3000"),
        ("content-type", "application/json"),
        ("anthropic-version", "2023-06-01"),
        ("user-agent", "claude-cli/2.0.0 (external, cli)"),
        ("x-api-key", CONFIG_KEY),
    ] {
        headers.insert(k, http::HeaderValue::from_static(v));
    }
    let facts = RequestFacts {
        model: Some("claude-sonnet-4-5".into()),
        stream: true,
        max_tokens: Some(1024),
        session: None,
        ..RequestFacts::default()
    };
    let route = RouteInfo {
        service: Service::Claude,
        endpoint: "messages",
    };
    let ip: std::net::IpAddr = "10.1.2.3".parse().unwrap();
    let all: Vec<String> = claude_relay::config::DEFAULT_FILTERS
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (name, order) in [("key_auth_only", vec!["key_auth".to_string()]), ("all_filters", all)] {
        let chain = filters::Registry::with_builtins()
            .build(
                &order,
                &FilterDeps {
                    keys: keys.clone(),
                    limits: Arc::new(claude_relay::limits::MemoryLimits::new()),
                },
            )
            .expect("chain builds");
        let run = || {
            let mut holds = Vec::new();
            let mut cx = FilterContext {
                route,
                headers: black_box(&headers),
                query: None,
                client_ip: Some(ip),
                key: None,
                facts: None,
                holds: &mut holds,
            };
            run_ready(chain.run_headers(&mut cx)).expect("head phase passes");
            cx.facts = Some(&facts);
            run_ready(chain.run_request(&mut cx)).expect("request phase passes");
            let key = cx.key.take();
            run_ready(chain.run_complete(&CompletionContext {
                route,
                key: key.as_ref(),
                facts: Some(&facts),
                status: 200,
                tokens: 36,
                cost_nanos: 187_650,
                holds: &holds,
            }));
            let held = holds.len();
            drop(holds);
            held
        };
        assert_eq!(
            run(),
            if name == "all_filters" { 2 } else { 0 },
            "{name}: slot guard held"
        );
        group.bench_function(name, |b| b.iter(run));
    }
    group.finish();
}

/// "Now" for the scheduler benches (Unix ms); cooldowns end a year later.
const NOW_MS: i64 = 1_760_000_000_000;
const YEAR_MS: i64 = 365 * 24 * 3600 * 1000;

/// `n` enabled, shared (unbound) accounts of the same priority and weight that serve any model,
/// named `acct-0000`… so the pool's order (priority, then name) is the index order.
fn account_specs(n: usize) -> Vec<AccountSpec> {
    let base = UpstreamBase::parse("http://127.0.0.1:9").unwrap();
    (0..n)
        .map(|i| {
            let name: Arc<str> = format!("acct-{i:04}").into();
            AccountSpec {
                id: format!("id-{i:04}").into(),
                name,
                kind: AccountKind::ClaudeConsole,
                base: base.clone(),
                credential: claude_relay::providers::Credential::Header(
                    http::HeaderName::from_static("x-api-key"),
                    http::HeaderValue::from_static("sk-ant-api03-bench"),
                ),
                priority: 10,
                enabled: true,
                models: None,
                model_map: Default::default(),
                source: Source::Config,
                group: None,
                proxy: None,
                max_concurrency: None,
                daily_quota_nanos: None,
                quota_reset_minute: 0,
                weight: 1,
                cooldowns: Default::default(),
                tier_blacklist: Vec::new(),
            }
        })
        .collect()
}

/// A scheduler and its pool of `n` accounts; every account whose index satisfies `cooling` is
/// put in a cooldown that ends a year after [`NOW_MS`].
fn scheduler_pool(n: usize, cooling: impl Fn(usize) -> bool) -> (Scheduler, AccountPool) {
    let sched = Scheduler::new();
    let pool = sched.pool(account_specs(n), &[]);
    assert_eq!(pool.all().len(), n);
    for (i, a) in pool.all().iter().enumerate() {
        assert_eq!(&*a.name, format!("acct-{i:04}"), "pool order is the index order");
        if cooling(i) {
            a.rt.set_health(Some(AccountHealth {
                state: HealthState::CoolingDown,
                reason: "upstream 429".into(),
                since: NOW_MS,
                until: Some(NOW_MS + YEAR_MS),
                family: None,
            }));
        }
    }
    (sched, pool)
}

/// `Scheduler::pick` as the dispatch calls it for a request without a key binding and with
/// nothing tried yet. The target: at most 5 µs per selection among 1,000 accounts.
///
/// - `all_healthy`: every account is eligible, so the pick scans all of them (one priority).
/// - `900_cooling`: 900 of 1,000 are cooling down (every account whose index is not a multiple of
///   10); the scan still visits all 1,000 and rejects 900 on their `blocked_until_ms`.
/// - `sticky_hit`: the request's session is stuck to a healthy account, the last one in pool order
///   (worst case of the linear search by id); the pick returns it without the scan.
/// - `sticky_cooling`: the session's account is cooling down (one of the 900), so the pick pays
///   the search by id and then the scan.
///
/// Picks mark the chosen account used, so the pool rotates as it does in service.
fn account_selection(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduler_pick");
    let model = "claude-sonnet-4-5";
    let tried: Vec<Arc<str>> = Vec::new();
    let pick = |sched: &Scheduler, pool: &AccountPool, sticky: Option<&str>| {
        sched.pick(
            black_box(pool),
            &PickRequest {
                model: black_box(model),
                kinds: KindSet::ALL,
                binding: None,
                sticky: black_box(sticky),
                tried: &tried,
                now_ms: black_box(NOW_MS),
            },
        )
    };
    for n in [10usize, 1_000] {
        let (sched, pool) = scheduler_pool(n, |_| false);
        // Every account gets its turn: least used first, then least recently used.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..n {
            seen.insert(pick(&sched, &pool, None).unwrap().id.clone());
        }
        assert_eq!(seen.len(), n, "all-healthy picks rotate over every account");
        group.bench_with_input(BenchmarkId::new("all_healthy", n), &n, |b, _| {
            b.iter(|| pick(&sched, &pool, None))
        });
    }

    let n = 1_000;
    let cooling = |i: usize| !i.is_multiple_of(10);
    let (sched, pool) = scheduler_pool(n, cooling);
    for _ in 0..2 * n {
        let a = pick(&sched, &pool, None).unwrap();
        assert!(a.rt.health(NOW_MS).is_none(), "a cooling account was picked");
    }
    group.bench_with_input(BenchmarkId::new("900_cooling", n), &n, |b, _| {
        b.iter(|| pick(&sched, &pool, None))
    });

    let (sched, pool) = scheduler_pool(n, |_| false);
    let last = pool.all()[n - 1].id.clone();
    assert_eq!(pick(&sched, &pool, Some(&last)).unwrap().id, last);
    group.bench_with_input(BenchmarkId::new("sticky_hit", n), &n, |b, _| {
        b.iter(|| pick(&sched, &pool, Some(&last)))
    });

    let (sched, pool) = scheduler_pool(n, cooling);
    let stuck = pool.all()[n - 1].id.clone();
    assert!(cooling(n - 1));
    let a = pick(&sched, &pool, Some(&stuck)).unwrap();
    assert!(a.id != stuck && a.rt.health(NOW_MS).is_none());
    group.bench_with_input(BenchmarkId::new("sticky_cooling", n), &n, |b, _| {
        b.iter(|| pick(&sched, &pool, Some(&stuck)))
    });
    group.finish();
}

/// The request log's share of the request path: building a finished request's entry (the clones
/// and the two client headers copied) and pushing it onto the writer's queue. The queue is emptied
/// every 4,096 pushes, as the writer does every 250 ms.
fn request_log_push(c: &mut Criterion) {
    use claude_relay::usage::request_log::{RequestEntry, Retention, client_text, pipeline};
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn claude_relay::store::Store> =
        Arc::new(claude_relay::store::embedded::EmbeddedStore::open(dir.path()).unwrap());
    let metrics = Arc::new(claude_relay::metrics::Metrics::new().unwrap());
    let (sink, _writer) = pipeline(
        store,
        metrics,
        Retention {
            max_age: std::time::Duration::from_secs(86_400),
            max_records: 1_000,
        },
    );
    let key_id: Arc<str> = "config.alice".into();
    let key_name: Arc<str> = "alice".into();
    let account: (Arc<str>, Arc<str>) = ("acc-1".into(), "main".into());
    let ua = b"claude-cli/2.0.14 (external, cli)";
    let mut n = 0u32;
    c.bench_function("request_log/entry_and_push", |b| {
        b.iter(|| {
            let entry = RequestEntry {
                started_ms: 1_765_000_000_000,
                request_id: client_text(b"req_0123456789abcdef", 128),
                key_id: Some(key_id.clone()),
                key_name: Some(key_name.clone()),
                account_id: Some(account.0.clone()),
                account_name: Some(account.1.clone()),
                dialect: "anthropic",
                endpoint: "messages",
                model: Some(Arc::from("claude-sonnet-4-5")),
                upstream_model: Some(Arc::from("claude-sonnet-4-5")),
                stream: true,
                status: 200,
                ttfb_ms: Some(12),
                duration_ms: 900,
                user_agent: client_text(ua, 200),
                client_ip: Some(std::net::IpAddr::from([127, 0, 0, 1])),
                ..Default::default()
            };
            sink.push(black_box(entry));
            n += 1;
            if n.is_multiple_of(4096) {
                sink.clear_queue();
            }
        })
    });
}

criterion_group!(
    benches,
    key_lookup,
    filter_chain,
    full_chain,
    account_selection,
    request_log_push
);
criterion_main!(benches);
