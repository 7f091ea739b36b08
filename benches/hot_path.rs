//! Micro-benchmarks of the per-request hot path before the body is read: finding the caller's key
//! in the in-memory snapshot (keyed HMAC-SHA256 of the presented key + one hash-map probe), and the
//! filter chain's header phase with the built-in `key_auth` filter.
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
use claude_relay::scheduler::Scheduler;
use claude_relay::secrets::Secrets;
use claude_relay::state::{SnapshotKeys, build_snapshot};
use claude_relay::store::ApiKeyRecord;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use filters::{FilterContext, FilterDeps, KeyDirectory, RouteInfo, Service};

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
            hint: String::new(),
            enabled: true,
            bind: None,
            created_at: 0,
            extra: Default::default(),
        })
        .collect();
    let snapshot = build_snapshot(&config, &secrets, &Scheduler::new(), stored, Vec::new());
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
        Poll::Pending => unreachable!("the built-in header filters never wait"),
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
            .build(&["key_auth".to_string()], &FilterDeps { keys })
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

criterion_group!(benches, key_lookup, filter_chain);
criterion_main!(benches);
