//! The panel's usage, overview, live and self-service endpoints through the real binary and the
//! mock upstream, on the embedded store and on a real Redis (`RELAY_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379/`; each Redis test uses a fresh key prefix and deletes it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(clippy::doc_lazy_continuation, clippy::type_complexity)]
mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::admin::Admin;
use support::mock::MockUpstream;
use support::{ALICE, RelayProcess, account_yaml, client, eventually, redis_cleanup, redis_prefix, redis_url};

const BOB: &str = "cr_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const GEM: &str = "cr_dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";
const OLD: &str = "cr_cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

fn body(stream: bool) -> String {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
}

async fn send(relay: &RelayProcess, key: &str, stream: bool) -> u16 {
    let r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(body(stream))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    r.bytes().await.unwrap();
    s
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The start of the local day at `ts` in a zone `offset` seconds east of UTC.
fn local_midnight(ts: i64, offset: i64) -> i64 {
    (ts + offset).div_euclid(86_400) * 86_400 - offset
}

async fn relay(store: &str) -> (MockUpstream, RelayProcess) {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}api_keys:\n  - {{ name: alice, key: {ALICE}, rate_limit: {{ window_minutes: 60, requests: 100 }}, \
         cost_limits: {{ daily_usd: 50 }}, concurrency: {{ limit: 4 }} }}\n  - {{ name: bob, key: {BOB} }}\n  \
         - {{ name: old, key: {OLD}, expires_at: 2020-01-01T00:00:00Z }}\n  \
         - {{ name: gem, key: {GEM}, permissions: [gemini] }}\n\
         stats: {{ flush_interval: 200ms, self_service: {{ per_minute: 5 }} }}\n{store}",
        account_yaml("main", &mock.url(), "")
    ))
    .await;
    (mock, relay)
}

fn store_yaml(prefix: Option<&str>) -> String {
    prefix.map_or(String::new(), |p| {
        format!(
            "store: {{ backend: redis, url: \"{}\", prefix: \"{p}\" }}\n",
            redis_url()
        )
    })
}

/// Alice sends three streams, Bob one answer; every view agrees on them.
async fn usage_views(store: &str) {
    let (_mock, relay) = relay(store).await;
    let admin = Admin::login(&relay).await;
    for _ in 0..3 {
        assert_eq!(send(&relay, ALICE, true).await, 200);
    }
    assert_eq!(send(&relay, BOB, false).await, 200);
    for (id, n) in [("config.alice", 3), ("config.bob", 1)] {
        eventually(|| async {
            let a = admin
                .get(&format!("/admin/api/usage?dimension=key&id={id}&granularity=minute"))
                .await;
            (a.json["totals"]["requests"] == n).then_some(())
        })
        .await;
    }
    let t = now();

    // All usage together, with the default range and an explicit one.
    let g = admin.get("/admin/api/usage/global?granularity=minute").await;
    assert_eq!(g.status, 200, "{}", g.text);
    assert_eq!(g.json["totals"]["requests"], 4, "{}", g.text);
    assert_eq!(g.json["tz"], "UTC");
    let points = g.json["points"].as_array().unwrap();
    assert!((1440..=1441).contains(&points.len()));
    let sum: u64 = points.iter().map(|p| p["requests"].as_u64().unwrap()).sum();
    assert_eq!(sum, 4);
    let past = admin
        .get("/admin/api/usage/global?granularity=hour&from=86400&to=172800")
        .await;
    assert_eq!(past.json["totals"]["requests"], 0);
    assert_eq!(past.json["points"].as_array().unwrap().len(), 24);

    // Time zones: the day bucket starts at local midnight, which is not UTC midnight.
    for (tz, offset, name) in [
        ("%2B14:00", 14 * 3600, "+14:00"),
        ("Asia/Shanghai", 8 * 3600, "Asia/Shanghai"),
        ("-09:30", -(9 * 3600 + 1800), "-09:30"),
    ] {
        let a = admin
            .get(&format!(
                "/admin/api/usage?dimension=key&id=config.alice&granularity=day&tz={tz}"
            ))
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.json["tz"], name);
        let series = a.json["series"].as_array().unwrap();
        let used: Vec<&Value> = series.iter().filter(|b| b["requests"].as_u64() > Some(0)).collect();
        assert_eq!(used.len(), 1, "{}", a.text);
        assert_eq!(used[0]["requests"], 3);
        // Half-hour offsets count each hour in the local day holding its middle; an hour whose
        // middle is still to come (after the series' end) counts in the series' last day.
        let expected = if offset % 3600 == 0 {
            local_midnight(t, offset)
        } else {
            let to = a.json["to"].as_i64().unwrap();
            local_midnight((t - t.rem_euclid(3600) + 1800).min(to), offset)
        };
        assert_eq!(used[0]["start"], expected, "{tz}: {}", a.text);
        assert_ne!(used[0]["start"], local_midnight(t, 0), "differs from the UTC day");
        let g = admin
            .get(&format!("/admin/api/usage/global?granularity=day&tz={tz}"))
            .await;
        assert_eq!(g.json["totals"]["requests"], 4, "{}", g.text);
    }
    let utc = admin
        .get("/admin/api/usage?dimension=key&id=config.alice&granularity=day")
        .await;
    let used: Vec<&Value> = utc.json["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["requests"].as_u64() > Some(0))
        .collect();
    assert_eq!(used[0]["start"], local_midnight(t, 0));
    for bad in ["Mars/Base", "%2B25:00", "8"] {
        let a = admin.get(&format!("/admin/api/usage/global?tz={bad}")).await;
        assert_eq!(a.status, 400, "{bad}: {}", a.text);
    }

    // Top subjects, largest first, with names; limit.
    for metric in ["requests", "cost", "tokens"] {
        let top = admin
            .get(&format!("/admin/api/usage/top?dimension=key&metric={metric}"))
            .await;
        assert_eq!(top.status, 200, "{}", top.text);
        let items = top.json["items"].as_array().unwrap();
        assert_eq!(items.len(), 2, "{}", top.text);
        assert_eq!(items[0]["id"], "config.alice");
        assert_eq!(items[0]["name"], "alice");
        assert_eq!(items[1]["id"], "config.bob");
        assert!(items[0]["value"].as_f64() > items[1]["value"].as_f64(), "{}", top.text);
    }
    let top = admin
        .get("/admin/api/usage/top?dimension=key&metric=requests&limit=1")
        .await;
    assert_eq!(top.json["items"].as_array().unwrap().len(), 1);
    assert_eq!(top.json["items"][0]["value"], 3.0);
    assert_eq!(top.json["items"][0]["totals"]["requests"], 3);
    let top = admin.get("/admin/api/usage/top?dimension=model&metric=requests").await;
    assert_eq!(top.json["items"][0]["name"], "claude-sonnet-4-5");
    let top = admin.get("/admin/api/usage/top?dimension=account").await;
    assert_eq!(top.json["items"][0]["name"], "main", "{}", top.text);
    assert_eq!(top.json["metric"], "cost");
    assert_eq!(
        admin.get("/admin/api/usage/top?dimension=key&limit=0").await.status,
        400
    );
    assert_eq!(
        admin.get("/admin/api/usage/top?dimension=key&metric=x").await.status,
        400
    );

    // Range totals of chosen subjects, in the order asked; an empty range.
    let r = admin
        .get(&format!(
            "/admin/api/usage/range?dimension=key&ids=config.bob,config.alice,nobody&from={}&to={}",
            t - 3 * 3600,
            t + 60
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let items = r.json["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["id"], "config.bob");
    assert_eq!(items[0]["totals"]["requests"], 1);
    assert_eq!(items[1]["totals"]["requests"], 3);
    assert_eq!(items[2]["name"], "nobody");
    assert_eq!(items[2]["totals"]["requests"], 0);
    let r = admin
        .get("/admin/api/usage/range?dimension=key&from=86400&to=172800")
        .await;
    assert!(
        r.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["totals"]["requests"] == 0)
    );
    assert_eq!(
        admin
            .get("/admin/api/usage/range?dimension=key&from=5&to=5")
            .await
            .status,
        400
    );
    // The widest ranges read only where buckets can exist.
    let r = admin
        .get("/admin/api/usage/range?dimension=key&ids=config.alice&from=0&to=253402300799")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["items"][0]["totals"]["requests"], 3, "{}", r.text);
    let m = admin
        .get("/admin/api/usage?dimension=key&id=config.alice&granularity=month&from=0&tz=Asia/Shanghai")
        .await;
    assert_eq!(m.status, 200, "{}", m.text);
    assert_eq!(m.json["totals"]["requests"], 3, "{}", m.text);

    // CSV: the same numbers as the JSON series.
    let (from, to) = (t - 3 * 3600, t + 60);
    let r = client()
        .get(format!(
            "{}/admin/api/usage/export.csv?dimension=key&ids=config.alice,config.bob&granularity=hour&from={from}&to={to}&tz=Asia/Shanghai",
            relay.admin()
        ))
        .bearer_auth(relay.admin_token().await)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    let text = r.text().await.unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(
        header[..10],
        [
            "start",
            "subject",
            "requests",
            "errors",
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_5m_tokens",
            "cache_write_1h_tokens",
            "cost_usd"
        ]
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    for id in ["config.alice", "config.bob"] {
        let json = admin
            .get(&format!(
                "/admin/api/usage?dimension=key&id={id}&granularity=hour&from={from}&to={to}&tz=Asia/Shanghai"
            ))
            .await;
        let series = json.json["series"].as_array().unwrap();
        let mine: Vec<&Vec<&str>> = rows.iter().filter(|r| r[1] == id).collect();
        assert_eq!(mine.len(), series.len(), "{text}");
        for (row, point) in mine.iter().zip(series) {
            let start = chrono::DateTime::parse_from_rfc3339(row[0]).unwrap();
            assert!(row[0].ends_with("+08:00"), "{}", row[0]);
            assert_eq!(start.timestamp(), point["start"].as_i64().unwrap());
            for (i, col) in header.iter().enumerate().skip(2) {
                let v: f64 = row[i].parse().unwrap();
                assert_eq!(v, point[*col].as_f64().unwrap(), "{id} {col}");
            }
        }
    }

    // The overview.
    let o = admin.get("/admin/api/overview").await;
    assert_eq!(o.status, 200, "{}", o.text);
    assert_eq!(o.json["today"]["requests"], 4, "{}", o.text);
    assert!(o.json["yesterday"]["requests"].is_u64());
    assert_eq!(o.json["keys"], json!({"active": 3, "total": 4}));
    assert_eq!(o.json["accounts"], json!({"total": 1, "by_state": {"active": 1}}));
    assert!(o.json["version"].as_str().is_some_and(|v| !v.is_empty()));
    assert!(o.json["instance"].as_str().is_some_and(|v| !v.is_empty()));
    assert!(o.json["uptime_s"].is_u64() && o.json["in_flight"].is_u64());
    assert!(o.json["rpm_5m"].is_number() && o.json["tpm_5m"].is_number());
    let o = admin.get("/admin/api/overview?tz=Pacific/Kiritimati").await;
    assert_eq!(o.json["tz"], "Pacific/Kiritimati");
    assert_eq!(o.json["today"]["requests"], 4, "{}", o.text);
    // The last five minute buckets, the current one included.
    assert_eq!(o.json["rpm_5m"].as_f64(), Some(0.8), "{}", o.text);
    assert!(o.json["tpm_5m"].as_f64().unwrap() > 0.0);

    // Self-service: each key sees itself, through either path and either header.
    let me = |path: &'static str, key: &'static str, bearer: bool| {
        let base = relay.base();
        async move {
            let rb = client().get(format!("{base}{path}"));
            let rb = if bearer {
                rb.bearer_auth(key)
            } else {
                rb.header("x-api-key", key)
            };
            let r = rb.send().await.unwrap();
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            let json: Value = r.json().await.unwrap_or(Value::Null);
            (status, json, retry)
        }
    };
    let (s, a, _) = me("/api/v1/key/usage?granularity=hour", ALICE, false).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["key"]["name"], "alice");
    assert_eq!(a["usage"]["today"]["requests"], 3, "{a}");
    assert_eq!(a["usage"]["d7"]["requests"], 3);
    assert_eq!(a["usage"]["d30"]["requests"], 3);
    let sum: u64 = a["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, 3);
    // Its usage per model over the same range.
    let by_model = a["by_model"].as_object().unwrap();
    assert_eq!(by_model.len(), 1, "{a}");
    assert_eq!(by_model["claude-sonnet-4-5"]["requests"], 3, "{a}");
    assert_eq!(
        by_model["claude-sonnet-4-5"]["cost_usd"], a["usage"]["today"]["cost_usd"],
        "{a}"
    );
    // Its limits with what they have used, as the admin's limits view shows them.
    let l = &a["limits"];
    assert_eq!(l["rate"]["requests"]["limit"], 100, "{a}");
    assert_eq!(l["rate"]["requests"]["used"], 3, "{a}");
    assert!(l["rate"]["resets_at"].as_i64().unwrap() > now(), "{a}");
    let spent = l["spend"]["daily"]["spent_usd"].as_f64().unwrap();
    assert!(spent > 0.0 && l["spend"]["daily"]["limit_usd"] == 50.0, "{a}");
    assert_eq!(l["concurrency"], json!({"in_flight": 0, "limit": 4}), "{a}");
    let admin_view = admin.get("/admin/api/keys/config.alice/limits").await;
    assert_eq!(
        admin_view.json["spend"]["daily"]["spent_usd"],
        l["spend"]["daily"]["spent_usd"]
    );
    let (s, b, _) = me("/v1/key/usage?granularity=day&tz=Asia/Shanghai", BOB, true).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["key"]["name"], "bob");
    assert_eq!(b["usage"]["today"]["requests"], 1, "{b}");
    assert_eq!(b["tz"], "Asia/Shanghai");
    assert!(!b.to_string().contains("alice"), "{b}");
    // Refusals in the caller's shape, like a relay call's.
    let (s, e, _) = me("/v1/key/usage", "cr_nope", false).await;
    assert_eq!(s, 401);
    assert_eq!(e["type"], "error", "{e}");
    let relayed = send(&relay, OLD, false).await;
    let (s, e, _) = me("/v1/key/usage", OLD, false).await;
    assert_eq!(s, relayed, "{e}");
    assert!(s == 401 || s == 403, "{s}");
    let r = client()
        .get(format!("{}/v1/key/usage", relay.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (s, e, _) = me("/v1/key/usage?granularity=minute", ALICE, false).await;
    assert_eq!(s, 400, "{e}");
    // The per-key budget: 5 a minute; Bob's budget is his own.
    let mut limited = None;
    for _ in 0..12 {
        let (s, e, retry) = me("/v1/key/usage", ALICE, false).await;
        if s == 429 {
            limited = Some((e, retry));
            break;
        }
        assert_eq!(s, 200);
    }
    let (e, retry) = limited.expect("the budget ran out");
    assert_eq!(e["error"]["type"], "rate_limit_error", "{e}");
    let wait: u64 = retry.unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait));
    let (s, _, _) = me("/v1/key/usage", BOB, false).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn usage_views_on_the_embedded_store() {
    usage_views(&store_yaml(None)).await;
}

#[tokio::test]
async fn usage_views_on_redis() {
    let p = redis_prefix();
    usage_views(&store_yaml(Some(&p))).await;
    redis_cleanup(&p).await;
}

/// Alice's stream, its chunks `delay_ms` apart, running in the background; its status when done.
fn slow_stream(relay: &RelayProcess, delay_ms: u64) -> tokio::task::JoinHandle<u16> {
    let base = relay.base();
    tokio::spawn(async move {
        let r = client()
            .post(format!("{base}/v1/messages"))
            .header("x-api-key", ALICE)
            .header("content-type", "application/json")
            .header("x-mock-chunk", "40")
            .header("x-mock-chunk-delay-ms", delay_ms.to_string())
            .body(body(true))
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        r.bytes().await.unwrap();
        s
    })
}

/// A slow stream is in flight for its key and account while it runs, then in the recent list.
#[tokio::test]
async fn live_shows_a_slow_stream() {
    let (_mock, relay) = relay("").await;
    let admin = Admin::login(&relay).await;
    let l = admin.get("/admin/api/live").await;
    assert_eq!(l.status, 200, "{}", l.text);
    assert_eq!(l.json["in_flight"]["total"], 0);
    let stream = slow_stream(&relay, 100);
    let l = eventually(|| async {
        let l = admin.get("/admin/api/live").await;
        (l.json["in_flight"]["total"] == 1 && l.json["in_flight"]["by_account"][0]["n"] == 1).then_some(l)
    })
    .await;
    assert_eq!(
        l.json["in_flight"]["by_key"],
        json!([{"id": "config.alice", "name": "alice", "n": 1}])
    );
    assert_eq!(l.json["in_flight"]["by_account"][0]["name"], "main");
    let o = admin.get("/admin/api/overview").await;
    assert_eq!(o.json["in_flight"], 1);
    assert!(!stream.is_finished(), "the stream should still run");
    assert_eq!(stream.await.unwrap(), 200);
    assert_eq!(send(&relay, "cr_nope", false).await, 401);
    let l = eventually(|| async {
        let l = admin.get("/admin/api/live").await;
        (l.json["in_flight"]["total"] == 0 && l.json["recent"].as_array().unwrap().len() == 2).then_some(l)
    })
    .await;
    assert_eq!(l.json["in_flight"]["by_account"], json!([]));
    let recent = &l.json["recent"];
    assert_eq!(recent[0]["status"], 401, "newest first: {recent}");
    assert_eq!(recent[0]["key"], Value::Null);
    let r = &recent[1];
    assert_eq!(r["key"], "config.alice");
    assert_eq!(r["account"], "config.main");
    assert_eq!(r["model"], "claude-sonnet-4-5");
    assert_eq!(r["status"], 200);
    assert!(r["duration_ms"].as_u64().unwrap() >= 100, "{r}");
    assert!(r["tokens"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(l.json["last_minute"]["requests"], 2);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Two instances on one Redis: the admin API of either shows the other's stream in flight, its
/// finished request among the recent ones, and counts both instances.
#[tokio::test]
async fn live_merges_the_instances_of_one_redis() {
    let prefix = redis_prefix();
    let (_mock, a) = relay(&store_yaml(Some(&prefix))).await;
    let (_mock_b, b) = relay(&store_yaml(Some(&prefix))).await;
    let admin_b = Admin::login(&b).await;
    let stream = slow_stream(&a, 150);
    // Seen from B within the publishing interval (and the 10 s bound of `eventually`).
    let l = eventually(|| async {
        let l = admin_b.get("/admin/api/live").await;
        (l.json["in_flight"]["total"] == 1).then_some(l)
    })
    .await;
    assert_eq!(l.status, 200, "{}", l.text);
    assert_eq!(l.json["partial"], false);
    assert_eq!(l.json["instances"].as_array().unwrap().len(), 2, "{}", l.text);
    assert_eq!(
        l.json["instances"][0]["id"], l.json["instance"],
        "the answering instance first"
    );
    assert_eq!(l.json["instances"][0]["in_flight"], 0, "{}", l.text);
    assert_eq!(l.json["instances"][1]["in_flight"], 1, "{}", l.text);
    assert_eq!(
        l.json["in_flight"]["by_key"],
        json!([{"id": "config.alice", "name": "alice", "n": 1}])
    );
    let o = admin_b.get("/admin/api/overview").await;
    assert_eq!(o.json["instances"], 2, "{}", o.text);
    assert_eq!(o.json["in_flight"], 1, "{}", o.text);
    // The accounts list counts the other instance's request on the account too.
    let accounts = admin_b.get("/admin/api/accounts").await;
    let main = accounts.json["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "main")
        .unwrap()
        .clone();
    assert_eq!(main["in_flight"], 1, "{main}");
    assert!(!stream.is_finished(), "the stream should still run");
    assert_eq!(stream.await.unwrap(), 200);
    assert_eq!(send(&b, BOB, false).await, 200);
    let l = eventually(|| async {
        let l = admin_b.get("/admin/api/live").await;
        (l.json["in_flight"]["total"] == 0 && l.json["recent"].as_array().unwrap().len() == 2).then_some(l)
    })
    .await;
    let recent = &l.json["recent"];
    assert_eq!(
        recent[0]["key"], "config.bob",
        "newest first across instances: {recent}"
    );
    assert_eq!(recent[1]["key"], "config.alice", "{recent}");
    assert_eq!(l.json["last_minute"]["requests"], 2);
    drop(a);
    // A stopped instance drops out once its last view expires.
    eventually(|| async {
        let o = admin_b.get("/admin/api/overview").await;
        (o.json["instances"] == 1).then_some(())
    })
    .await;
    redis_cleanup(&prefix).await;
}

async fn send_model(relay: &RelayProcess, key: &str, model: &str) -> u16 {
    let r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(json!({"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}).to_string())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    r.bytes().await.unwrap();
    s
}

/// A key's usage per model in a range, its recent requests on this instance, and what the panel
/// needs to know about the instance (count, uptime, the relay's address).
async fn key_detail(store: &str) {
    let (_mock, relay) = relay(store).await;
    let admin = Admin::login(&relay).await;
    for model in ["claude-sonnet-4-5", "claude-sonnet-4-5", "claude-haiku-4-5"] {
        assert_eq!(send_model(&relay, ALICE, model).await, 200);
    }
    assert_eq!(send_model(&relay, BOB, "claude-sonnet-4-5").await, 200);
    let m = eventually(|| async {
        let m = admin.get("/admin/api/keys/config.alice/models").await;
        (m.json["items"].as_array().map(Vec::len) == Some(2)
            && m.json["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["totals"]["requests"].as_u64().unwrap())
                .sum::<u64>()
                == 3)
            .then_some(m)
    })
    .await;
    assert_eq!(m.status, 200, "{}", m.text);
    assert_eq!(m.json["id"], "config.alice");
    let by: std::collections::HashMap<&str, &Value> = m.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["model"].as_str().unwrap(), &i["totals"]))
        .collect();
    assert_eq!(by["claude-sonnet-4-5"]["requests"], 2, "{}", m.text);
    assert_eq!(by["claude-haiku-4-5"]["requests"], 1, "{}", m.text);
    assert!(by["claude-sonnet-4-5"]["output_tokens"].as_u64().unwrap() > 0);
    // Most expensive first; the models' sums are the key's own total.
    let costs: Vec<f64> = m.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["totals"]["cost_usd"].as_f64().unwrap())
        .collect();
    assert!(costs.windows(2).all(|w| w[0] >= w[1]), "{costs:?}");
    let key = admin.get("/admin/api/usage/range?dimension=key&ids=config.alice").await;
    let total = key.json["items"][0]["totals"]["cost_usd"].as_f64().unwrap();
    assert!((costs.iter().sum::<f64>() - total).abs() < 1e-9, "{costs:?} {total}");
    // Bob's request may have been written by a later flush than Alice's.
    let b = eventually(|| async {
        let b = admin.get("/admin/api/keys/config.bob/models").await;
        (b.json["items"].as_array().map(Vec::len) == Some(1)).then_some(b)
    })
    .await;
    assert_eq!(b.json["items"][0]["model"], "claude-sonnet-4-5");
    // A range before the requests holds nothing; a bad range is refused in the API's shape.
    let t = now();
    let past = admin
        .get(&format!(
            "/admin/api/keys/config.alice/models?from={}&to={}",
            t - 7200,
            t - 3600
        ))
        .await;
    assert_eq!(past.json["items"], json!([]), "{}", past.text);
    let bad = admin.get("/admin/api/keys/config.alice/models?from=10&to=5").await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert!(bad.json["error"]["message"].is_string(), "{}", bad.text);
    let none = admin.get("/admin/api/keys/nope/models").await;
    assert_eq!(none.json["items"], json!([]));

    // This instance's recent requests of one key.
    let l = admin.get("/admin/api/live?key=config.bob").await;
    assert_eq!(l.status, 200, "{}", l.text);
    let recent = l.json["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 1, "{}", l.text);
    assert_eq!(recent[0]["key"], "config.bob");
    let l = admin.get("/admin/api/live?key=config.alice").await;
    assert_eq!(l.json["recent"].as_array().unwrap().len(), 3, "{}", l.text);
    let l = admin.get("/admin/api/live").await;
    assert_eq!(l.json["recent"].as_array().unwrap().len(), 4, "{}", l.text);

    let o = admin.get("/admin/api/overview").await;
    assert_eq!(o.json["instances"], 1, "one instance, on either store: {}", o.text);
    assert!(o.json["uptime_s"].is_u64());
    let me = admin.get("/admin/api/me").await;
    let port = relay.base().rsplit(':').next().unwrap().to_string();
    let listen = me.json["relay_listen"].as_str().unwrap();
    assert!(listen.ends_with(&format!(":{port}")), "{listen} vs {}", relay.base());
}

#[tokio::test]
async fn key_detail_on_the_embedded_store() {
    key_detail("").await;
}

#[tokio::test]
async fn key_detail_on_redis() {
    let p = redis_prefix();
    key_detail(&store_yaml(Some(&p))).await;
    redis_cleanup(&p).await;
}
