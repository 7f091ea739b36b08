//! Seeds usage statistics for the web panel's measurement (`benches/panel/`): `--days` days of
//! usage for the given keys and accounts over a few models, written straight into a store the
//! way the relay's statistics writer writes them (every dimension and granularity it keeps,
//! retention applied), so the
//! panel's pages and APIs can be timed against a realistic history.
//!
//! ```text
//! cargo run --release --example panel_seed -- --ids ids.json --days 90 \
//!     (--embedded DATA_DIR | --redis URL --prefix PREFIX)
//! ```
//!
//! `ids.json` is `{"keys": [id, ...], "accounts": [id, ...]}`. Each key is active a few hours of
//! most days (deterministic pseudo-random, so runs are comparable); each request goes to one of
//! the accounts and one of the models. The embedded store must not be open in a relay meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use claude_relay::store::embedded::EmbeddedStore;
use claude_relay::store::redis::RedisStore;
use claude_relay::store::{BucketKey, Dimension, Granularity, Store, UsageCounters};

const MODELS: [(&str, u64, u64); 4] = [
    // (model, input $/MTok, output $/MTok), for a plausible cost.
    ("claude-sonnet-4-5", 3, 15),
    ("claude-haiku-4-5", 1, 5),
    ("claude-opus-4-1", 15, 75),
    ("gpt-5", 1, 10),
];

/// A small deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ids: serde_json::Value =
        serde_json::from_slice(&std::fs::read(arg(&args, "--ids").expect("--ids FILE")).expect("read --ids"))
            .expect("--ids is JSON");
    let list = |k: &str| -> Vec<String> {
        ids[k]
            .as_array()
            .expect("ids lists")
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let (keys, accounts) = (list("keys"), list("accounts"));
    let days: i64 = arg(&args, "--days").map_or(90, |d| d.parse().expect("--days N"));
    let store: Arc<dyn Store> = if let Some(dir) = arg(&args, "--embedded") {
        Arc::new(EmbeddedStore::open(&PathBuf::from(dir)).expect("open the embedded store"))
    } else {
        let url = arg(&args, "--redis").expect("--embedded DIR or --redis URL");
        let prefix = arg(&args, "--prefix").unwrap_or_else(|| "relay:".into());
        Arc::new(
            RedisStore::connect_with_prefix(&url, &prefix)
                .await
                .expect("connect to Redis"),
        )
    };

    let started = Instant::now();
    let now = chrono::Utc::now().timestamp();
    let first_hour = (now - days * 86_400).div_euclid(3600) * 3600;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut requests, mut buckets) = (0u64, 0usize);
    // One day at a time: every key's requests of that day, expanded into every bucket they
    // touch, merged, then written in one call.
    for day in 0..days + 1 {
        let mut batch: HashMap<BucketKey, UsageCounters> = HashMap::new();
        for (ki, key) in keys.iter().enumerate() {
            // Most keys are used on most days; a tenth of them rarely.
            let active = if ki % 10 == 0 {
                rng.below(10) == 0
            } else {
                rng.below(10) < 8
            };
            if !active {
                continue;
            }
            for _ in 0..1 + rng.below(4) {
                let hour = first_hour + day * 86_400 + rng.below(24) as i64 * 3600;
                if hour > now {
                    continue;
                }
                let minute = hour + rng.below(60) as i64 * 60;
                let (model, pin, pout) = MODELS[rng.below(MODELS.len() as u64) as usize];
                let account = &accounts[(ki + rng.below(3) as usize) % accounts.len()];
                let n = 1 + rng.below(20);
                let input = n * (500 + rng.below(20_000));
                let output = n * (50 + rng.below(2_000));
                let cache_read = n * rng.below(30_000);
                let c = UsageCounters {
                    requests: n,
                    errors: u64::from(rng.below(50) == 0),
                    input_tokens: input,
                    output_tokens: output,
                    cache_read_tokens: cache_read,
                    cost_nanos: input * pin * 1000 + output * pout * 1000 + cache_read * pin * 100,
                    ..Default::default()
                };
                requests += n;
                let key_model = Dimension::key_model_subject(key, model);
                for (dimension, subject) in [
                    (Dimension::Key, key.as_str()),
                    (Dimension::Model, model),
                    (Dimension::Account, account.as_str()),
                    (Dimension::KeyModel, key_model.as_str()),
                ] {
                    for granularity in Granularity::ALL {
                        // Per key and model: no minute buckets, as the statistics writer keeps it.
                        if dimension == Dimension::KeyModel && granularity == Granularity::Minute {
                            continue;
                        }
                        let start = granularity.bucket_start(minute);
                        if granularity
                            .retention()
                            .is_some_and(|r| granularity.next_bucket(start) + i64::try_from(r.as_secs()).unwrap() < now)
                        {
                            continue;
                        }
                        let k = BucketKey {
                            dimension,
                            subject: subject.to_string(),
                            granularity,
                            start,
                        };
                        batch.entry(k).or_default().add(&c);
                    }
                }
            }
        }
        let batch: Vec<(BucketKey, UsageCounters)> = batch.into_iter().collect();
        buckets += batch.len();
        for chunk in batch.chunks(20_000) {
            store.add_usage(chunk).await.expect("write usage");
        }
    }
    println!(
        "seeded {requests} requests over {days} days for {} keys and {} accounts: {buckets} bucket writes in {:.1} s",
        keys.len(),
        accounts.len(),
        started.elapsed().as_secs_f64()
    );
}
