//! The request log through the real binary and mock upstreams, on the embedded store and on a real
//! Redis (`RELAY_TEST_REDIS_URL`, default `redis://127.0.0.1:6379/`; each Redis test uses a fresh
//! key prefix and deletes it): the record of each kind of request, filters, cursor paging and the
//! CSV export, the cap and the retention, and `enabled: false`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(clippy::doc_lazy_continuation, clippy::type_complexity)]
mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::admin::Admin;
use support::mock::MockUpstream;
use support::{ALICE, RelayProcess, account_yaml, client, eventually, metric, redis_cleanup, redis_prefix, redis_url};

const BOB: &str = "cr_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
/// Put in every request body: no record may show it.
const BODY_MARKER: &str = "body-marker-7f3a9c";

#[derive(Clone, Copy, Debug)]
enum Backend {
    Embedded,
    Redis,
}

/// The `store:` line of a backend (a fresh Redis prefix), and the prefix to clean up.
fn store_yaml(backend: Backend) -> (String, Option<String>) {
    match backend {
        Backend::Embedded => (String::new(), None),
        Backend::Redis => {
            let p = redis_prefix();
            (
                format!(
                    "store: {{ backend: redis, url: \"{}\", prefix: \"{p}\" }}\n",
                    redis_url()
                ),
                Some(p),
            )
        }
    }
}

fn body(model: &str, stream: bool) -> String {
    json!({"model": model, "max_tokens": 64, "stream": stream,
           "messages": [{"role": "user", "content": format!("hi {BODY_MARKER}")}]})
    .to_string()
}

/// Sends one Messages request; returns its status. `headers` are added as they are.
async fn send(relay: &RelayProcess, key: &str, model: &str, stream: bool, headers: &[(&str, &str)]) -> u16 {
    let mut req = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(body(model, stream));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    r.bytes().await.unwrap();
    s
}

/// Every record the log holds (pages of 500), newest first.
async fn all_records(admin: &Admin, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let c = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let r = admin.get(&format!("/admin/api/requests?limit=500{query}{c}")).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.json);
        out.extend(r.json["items"].as_array().unwrap().iter().cloned());
        match r.json["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// Waits until the log holds `n` records; returns them.
async fn wait_for(admin: &Admin, n: usize) -> Vec<Value> {
    eventually(|| async {
        let all = all_records(admin, "").await;
        (all.len() == n).then_some(all)
    })
    .await
}

fn by_request_id<'a>(records: &'a [Value], id: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["request_id"] == id)
        .unwrap_or_else(|| panic!("no record of {id} in {records:#?}"))
}

async fn start(backend: Backend, extra: &str) -> (RelayProcess, Option<String>) {
    let (store, prefix) = store_yaml(backend);
    let relay = RelayProcess::start(&format!("{extra}{store}")).await;
    (relay, prefix)
}

async fn records_of_each_kind_of_request(backend: Backend) {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let (mut relay, prefix) = start(
        backend,
        &format!(
            "accounts:\n{}{}api_keys:\n  - {{ name: alice, key: {ALICE} }}\n  \
             - {{ name: bob, key: {BOB}, model_blacklist: [claude-opus-4-1] }}\n",
            account_yaml("a", &a.url(), ", priority: 1"),
            account_yaml("b", &b.url(), ", priority: 2"),
        ),
    )
    .await;
    let admin = Admin::login(&relay).await;
    let ua = format!("test-client/1.0 {}", "x".repeat(300));

    // Streamed and not.
    assert_eq!(
        send(
            &relay,
            ALICE,
            "claude-sonnet-4-5",
            true,
            &[("x-request-id", "req-stream"), ("user-agent", &ua)]
        )
        .await,
        200
    );
    assert_eq!(
        send(
            &relay,
            ALICE,
            "claude-sonnet-4-5",
            false,
            &[("x-request-id", "req-json")]
        )
        .await,
        200
    );
    // Refused by the relay: a model the key may not use.
    assert_eq!(
        send(
            &relay,
            BOB,
            "claude-opus-4-1",
            false,
            &[("x-request-id", "req-refused")]
        )
        .await,
        403
    );
    // The first account is overloaded: one hop to the second.
    a.set_status(Some(529));
    assert_eq!(
        send(
            &relay,
            ALICE,
            "claude-sonnet-4-5",
            false,
            &[("x-request-id", "req-failover")]
        )
        .await,
        200
    );
    // Both fail: the client gets the upstream's 5xx.
    b.set_status(Some(503));
    let failed = send(
        &relay,
        ALICE,
        "claude-sonnet-4-5",
        false,
        &[("x-request-id", "req-upstream-5xx")],
    )
    .await;
    assert!(failed >= 500, "{failed}");
    a.set_status(None);
    b.set_status(None);
    // The client goes away after the first chunk.
    let mut r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .header("x-request-id", "req-gone")
        .header("x-mock-chunk", "400")
        .header("x-mock-chunk-delay-ms", "300")
        .body(body("claude-sonnet-4-5", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.chunk().await.unwrap().unwrap();
    drop(r);

    let records = wait_for(&admin, 6).await;
    let s = by_request_id(&records, "req-stream");
    assert_eq!(
        (
            &s["key_id"],
            &s["key_name"],
            &s["account_name"],
            &s["dialect"],
            &s["endpoint"]
        ),
        (
            &json!("config.alice"),
            &json!("alice"),
            &json!("a"),
            &json!("anthropic"),
            &json!("messages")
        ),
        "{s:#}"
    );
    assert_eq!(
        (
            &s["model"],
            &s["upstream_model"],
            &s["stream"],
            &s["status"],
            &s["outcome"]
        ),
        (
            &json!("claude-sonnet-4-5"),
            &json!("claude-sonnet-4-5"),
            &json!(true),
            &json!(200),
            &json!("ok")
        )
    );
    assert_eq!(
        (&s["error"], &s["error_source"], &s["failover_hops"]),
        (&Value::Null, &Value::Null, &json!(0))
    );
    assert!(
        s["input_tokens"].as_u64().unwrap() > 0 && s["output_tokens"].as_u64().unwrap() > 0,
        "{s:#}"
    );
    assert!(s["cost_usd"].as_f64().unwrap() > 0.0);
    assert!(s["ttfb_ms"].as_u64().unwrap() <= s["duration_ms"].as_u64().unwrap());
    assert_eq!(s["user_agent"].as_str().unwrap().len(), 200, "truncated");
    assert_eq!(s["client_ip"], "127.0.0.1");
    assert!(s["id"].as_str().is_some_and(|id| !id.is_empty()));
    let now = chrono::Utc::now().timestamp_millis();
    assert!((now - 60_000..=now).contains(&s["at_ms"].as_i64().unwrap()));

    let j = by_request_id(&records, "req-json");
    assert_eq!(
        (&j["stream"], &j["status"], &j["outcome"]),
        (&json!(false), &json!(200), &json!("ok"))
    );

    let refused = by_request_id(&records, "req-refused");
    assert_eq!(
        (
            &refused["status"],
            &refused["outcome"],
            &refused["error_source"],
            &refused["key_name"]
        ),
        (&json!(403), &json!("error"), &json!("relay"), &json!("bob"))
    );
    assert!(refused["error"].as_str().is_some_and(|e| !e.is_empty()), "{refused:#}");
    assert_eq!(
        (&refused["account_id"], &refused["input_tokens"]),
        (&Value::Null, &json!(0))
    );

    let hop = by_request_id(&records, "req-failover");
    assert_eq!(
        (
            &hop["status"],
            &hop["account_name"],
            &hop["failover_hops"],
            &hop["outcome"]
        ),
        (&json!(200), &json!("b"), &json!(1), &json!("ok"))
    );
    let bad = by_request_id(&records, "req-upstream-5xx");
    assert_eq!(
        (&bad["error_source"], &bad["outcome"], &bad["failover_hops"]),
        (&json!("upstream"), &json!("error"), &json!(1)),
        "{bad:#}"
    );
    assert_eq!(bad["status"].as_u64().unwrap() / 100, 5);

    let gone = by_request_id(&records, "req-gone");
    assert_eq!(
        (&gone["outcome"], &gone["stream"]),
        (&json!("client_disconnected"), &json!(true))
    );
    assert!(
        gone["input_tokens"].as_u64().unwrap() > 0,
        "usage that reached the relay: {gone:#}"
    );

    // One record by id; unknown and malformed ids are 404.
    let one = admin
        .get(&format!("/admin/api/requests/{}", s["id"].as_str().unwrap()))
        .await;
    assert_eq!((one.status.as_u16(), &one.json), (200, s));
    for unknown in ["0000000000001-0000000000", "1-0", "not-an-id", "%2e%2e"] {
        assert_eq!(
            admin
                .get(&format!("/admin/api/requests/{unknown}"))
                .await
                .status
                .as_u16(),
            404,
            "{unknown}"
        );
    }

    // Tokens and cost equal the usage statistics of the key.
    let totals = eventually(|| async {
        let r = admin
            .get("/admin/api/usage/range?dimension=key&ids=config.alice&from=0")
            .await;
        let t = r.json["items"][0]["totals"].clone();
        (t["requests"] == 5).then_some(t)
    })
    .await;
    let alice: Vec<&Value> = records.iter().filter(|r| r["key_id"] == "config.alice").collect();
    assert_eq!(alice.len(), 5);
    for (field, total) in [
        ("input_tokens", "input_tokens"),
        ("output_tokens", "output_tokens"),
        ("cache_read_tokens", "cache_read_tokens"),
        ("cache_write_5m_tokens", "cache_write_5m_tokens"),
        ("cache_write_1h_tokens", "cache_write_1h_tokens"),
    ] {
        let sum: u64 = alice.iter().map(|r| r[field].as_u64().unwrap()).sum();
        assert_eq!(sum, totals[total].as_u64().unwrap(), "{field}");
    }
    let cost: f64 = alice.iter().map(|r| r["cost_usd"].as_f64().unwrap_or(0.0)).sum();
    assert!(
        (cost - totals["cost_usd"].as_f64().unwrap()).abs() < 1e-9,
        "{cost} vs {totals}"
    );

    // No body and no secret in any record, in JSON or CSV.
    let token = relay.admin_token().await;
    let csv = export(&relay, &token, "").await;
    let text = format!("{}\n{csv}", serde_json::to_string(&records).unwrap());
    for secret in [BODY_MARKER, ALICE, BOB, "sk-ant-api03-upstream", "hi body"] {
        assert!(!text.contains(secret), "`{secret}` leaked into the request log");
    }
    assert!(
        metric(&relay, "relay_request_log_records_total{result=\"written\"}")
            .await
            .unwrap()
            >= 6.0
    );
    relay.stop();
    if let Some(p) = prefix {
        redis_cleanup(&p).await;
    }
}

/// The CSV export's body.
async fn export(relay: &RelayProcess, token: &str, query: &str) -> String {
    let r = client()
        .get(format!("{}/admin/api/requests/export.csv?{query}", relay.admin()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    r.text().await.unwrap()
}

fn ids(records: &[Value]) -> Vec<String> {
    records.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

async fn filters_paging_and_csv(backend: Backend) {
    let mock = MockUpstream::start().await;
    let (mut relay, prefix) = start(
        backend,
        &format!(
            "accounts:\n{}api_keys:\n  - {{ name: alice, key: {ALICE} }}\n  \
             - {{ name: bob, key: {BOB}, model_blacklist: [claude-opus-4-1] }}\n",
            account_yaml("main", &mock.url(), ""),
        ),
    )
    .await;
    let admin = Admin::login(&relay).await;
    let token = relay.admin_token().await;
    let t0 = chrono::Utc::now().timestamp();
    // 12 requests: alice streams every third, bob sends the rest, 2 of them refused.
    for i in 0..12 {
        let id = format!("r{i:02}");
        let (key, model) = match i % 4 {
            3 if i < 8 => (BOB, "claude-opus-4-1"),
            3 => (BOB, "claude-sonnet-4-5"),
            _ => (ALICE, "claude-sonnet-4-5"),
        };
        send(&relay, key, model, i % 3 == 0, &[("x-request-id", id.as_str())]).await;
    }
    let all = wait_for(&admin, 12).await;
    let order: Vec<&str> = all.iter().map(|r| r["request_id"].as_str().unwrap()).collect();
    let want: Vec<String> = (0..12).rev().map(|i| format!("r{i:02}")).collect();
    assert_eq!(order, want, "newest first");

    // Paging: pages of 5 join into the whole list; the last has no cursor.
    let mut paged = Vec::new();
    let mut cursor = String::new();
    for expect in [5, 5, 2] {
        let r = admin.get(&format!("/admin/api/requests?limit=5{cursor}")).await;
        assert_eq!(r.json["items"].as_array().unwrap().len(), expect, "{}", r.json);
        paged.extend(r.json["items"].as_array().unwrap().iter().cloned());
        cursor = match r.json["next_cursor"].as_str() {
            Some(c) => format!("&cursor={c}"),
            None => String::new(),
        };
    }
    assert_eq!(ids(&paged), ids(&all));
    // The last full page may leave a cursor that reads nothing more.
    if !cursor.is_empty() {
        let r = admin.get(&format!("/admin/api/requests?limit=5{cursor}")).await;
        assert_eq!(r.json["items"], json!([]));
    }

    let expect = |f: &dyn Fn(&Value) -> bool| ids(&all.iter().filter(|r| f(r)).cloned().collect::<Vec<_>>());
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("&key=config.bob", expect(&|r| r["key_id"] == "config.bob")),
        ("&stream=true", expect(&|r| r["stream"] == true)),
        (
            "&stream=false&key=config.alice",
            expect(&|r| r["stream"] == false && r["key_id"] == "config.alice"),
        ),
        ("&status=403", expect(&|r| r["status"] == 403)),
        ("&status=2xx", expect(&|r| r["status"] == 200)),
        ("&error=any", expect(&|r| r["outcome"] != "ok")),
        ("&error=none", expect(&|r| r["outcome"] == "ok")),
        ("&model=claude-opus-4-1", expect(&|r| r["model"] == "claude-opus-4-1")),
        ("&account=nobody", vec![]),
        (
            &*Box::leak(format!("&from={t0}&to={}", t0 + 3600).into_boxed_str()),
            ids(&all),
        ),
        (&*Box::leak(format!("&to={t0}").into_boxed_str()), vec![]),
    ];
    for (q, want) in &cases {
        assert!(
            !want.is_empty() || q.contains("nobody") || q.contains("&to="),
            "{q} selects something"
        );
        let got = ids(&all_records(&admin, q).await);
        assert_eq!(&got, want, "filter {q}");
        // Paged by 1, the same records.
        let mut one_by_one = Vec::new();
        let mut c = String::new();
        loop {
            let r = admin.get(&format!("/admin/api/requests?limit=1{q}{c}")).await;
            one_by_one.extend(ids(r.json["items"].as_array().unwrap()));
            match r.json["next_cursor"].as_str() {
                Some(n) => c = format!("&cursor={n}"),
                None => break,
            }
        }
        assert_eq!(&one_by_one, want, "filter {q}, one by one");
        // The CSV holds the same records in the same order, one row each.
        let csv = export(&relay, &token, q.trim_start_matches('&')).await;
        let mut lines = csv.lines();
        assert!(lines.next().unwrap().starts_with("id,at_ms,request_id,key_id,"));
        let csv_ids: Vec<String> = lines.map(|l| l.split(',').next().unwrap().to_string()).collect();
        assert_eq!(&csv_ids, want, "csv {q}");
    }
    // A CSV row carries the JSON's values.
    let csv = export(&relay, &token, "key=config.alice&status=200").await;
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    let first = all.iter().find(|r| r["key_id"] == "config.alice").unwrap();
    for (name, value) in header.iter().zip(&row) {
        let want = match &first[*name] {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        assert_eq!(*value, want, "column {name}");
    }

    // Bad parameters are 400s.
    for q in [
        "cursor=nonsense",
        "cursor=1-2-3",
        "status=6xx",
        "status=20",
        "limit=0",
        "limit=501",
        "stream=maybe",
        "from=10&to=5",
        "from=-1",
    ] {
        let r = admin.get(&format!("/admin/api/requests?{q}")).await;
        assert_eq!(r.status.as_u16(), 400, "{q}: {}", r.json);
        let r = client()
            .get(format!("{}/admin/api/requests/export.csv?{q}", relay.admin()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if q.starts_with("limit") {
            continue;
        }
        assert_eq!(r.status(), 400, "export {q}");
    }
    // Without a session: 401.
    let r = client()
        .get(format!("{}/admin/api/requests", relay.admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    relay.stop();
    if let Some(p) = prefix {
        redis_cleanup(&p).await;
    }
}

async fn cap_and_retention(backend: Backend) {
    let mock = MockUpstream::start().await;
    let accounts = format!("accounts:\n{}", account_yaml("main", &mock.url(), ""));
    let (mut relay, prefix) = start(backend, &format!("{accounts}request_log: {{ max_records: 5 }}\n")).await;
    let admin = Admin::login(&relay).await;
    for i in 0..12 {
        send(
            &relay,
            ALICE,
            "claude-sonnet-4-5",
            false,
            &[("x-request-id", &format!("c{i:02}"))],
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The cap keeps the newest five.
    let kept = eventually(|| async {
        let all = all_records(&admin, "").await;
        (all.len() == 5 && all[0]["request_id"] == "c11").then_some(all)
    })
    .await;
    let order: Vec<&str> = kept.iter().map(|r| r["request_id"].as_str().unwrap()).collect();
    assert_eq!(order, ["c11", "c10", "c09", "c08", "c07"]);
    relay.stop();
    if let Some(p) = prefix {
        redis_cleanup(&p).await;
    }

    // Retention: records older than two seconds go.
    let (mut relay, prefix) = start(backend, &format!("{accounts}request_log: {{ retention: 2s }}\n")).await;
    let admin = Admin::login(&relay).await;
    for i in 0..3 {
        send(
            &relay,
            ALICE,
            "claude-sonnet-4-5",
            false,
            &[("x-request-id", &format!("t{i}"))],
        )
        .await;
    }
    wait_for(&admin, 3).await;
    wait_for(&admin, 0).await;
    relay.stop();
    if let Some(p) = prefix {
        redis_cleanup(&p).await;
    }
}

async fn disabled_writes_nothing(backend: Backend) {
    let mock = MockUpstream::start().await;
    let (mut relay, prefix) = start(
        backend,
        &format!(
            "accounts:\n{}request_log: {{ enabled: false }}\n",
            account_yaml("main", &mock.url(), "")
        ),
    )
    .await;
    let admin = Admin::login(&relay).await;
    for stream in [true, false] {
        assert_eq!(send(&relay, ALICE, "claude-sonnet-4-5", stream, &[]).await, 200);
    }
    // The usage is counted; the log stays empty.
    eventually(|| async {
        let r = admin
            .get("/admin/api/usage/range?dimension=key&ids=config.alice&from=0")
            .await;
        (r.json["items"][0]["totals"]["requests"] == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = admin.get("/admin/api/requests").await;
    assert_eq!(
        (r.status.as_u16(), &r.json["items"], &r.json["enabled"]),
        (200, &json!([]), &json!(false))
    );
    assert_eq!(
        metric(&relay, "relay_request_log_records_total{result=\"written\"}").await,
        Some(0.0)
    );
    relay.stop();
    if let Some(p) = prefix {
        redis_cleanup(&p).await;
    }
}

#[tokio::test]
async fn records_of_each_kind_of_request_embedded() {
    records_of_each_kind_of_request(Backend::Embedded).await;
}

#[tokio::test]
async fn records_of_each_kind_of_request_redis() {
    records_of_each_kind_of_request(Backend::Redis).await;
}

#[tokio::test]
async fn filters_paging_and_csv_embedded() {
    filters_paging_and_csv(Backend::Embedded).await;
}

#[tokio::test]
async fn filters_paging_and_csv_redis() {
    filters_paging_and_csv(Backend::Redis).await;
}

#[tokio::test]
async fn cap_and_retention_embedded() {
    cap_and_retention(Backend::Embedded).await;
}

#[tokio::test]
async fn cap_and_retention_redis() {
    cap_and_retention(Backend::Redis).await;
}

#[tokio::test]
async fn disabled_writes_nothing_embedded() {
    disabled_writes_nothing(Backend::Embedded).await;
}

#[tokio::test]
async fn disabled_writes_nothing_redis() {
    disabled_writes_nothing(Backend::Redis).await;
}
