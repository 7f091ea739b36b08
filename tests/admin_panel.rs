//! The admin endpoints the web panel uses for keys, groups and the session, through HTTP against
//! the real binary: the keys list paged, searched, sorted and filtered with its usage columns,
//! a key's limit counters (on the embedded store and on Redis), rotation, batches, groups and
//! `me`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use support::admin::Admin;
use support::mock::MockUpstream;
use support::{RelayProcess, account_yaml, client, eventually, redis_cleanup, redis_prefix, redis_url};

const BODY: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
const STREAM_BODY: &str =
    r#"{"model":"claude-sonnet-4-5","stream":true,"max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;

async fn call(relay: &RelayProcess, key: &str, headers: &[(&str, &str)], body: &str) -> reqwest::Response {
    let mut rb = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.send().await.unwrap()
}

fn names(list: &Value) -> Vec<String> {
    list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_string())
        .collect()
}

/// Creates `count` keys `{prefix}1…` in one batch; their (id, plaintext).
async fn batch_create(admin: &Admin, prefix: &str, count: u64, policy: Value) -> Vec<(String, String)> {
    let mut create = json!({"count": count, "name_prefix": prefix});
    create
        .as_object_mut()
        .unwrap()
        .extend(policy.as_object().unwrap().clone());
    let a = admin.post("/admin/api/keys/batch", json!({ "create": create })).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let results = a.json["results"].as_array().unwrap();
    assert_eq!(results.len() as u64, count);
    results
        .iter()
        .map(|r| {
            assert_eq!(r["ok"], true, "{r}");
            (
                r["id"].as_str().unwrap().to_string(),
                r["key"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn keys_list_pages_searches_sorts_filters_and_shows_usage() {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!("accounts:\n{}", account_yaml("main", &mock.url(), ""))).await;
    let admin = Admin::login(&relay).await;
    let mut keys = batch_create(&admin, "team-", 100, json!({})).await;
    keys.extend(batch_create(&admin, "solo-", 20, json!({"model_blacklist": ["x"]})).await);
    assert_eq!(keys.len(), 120);

    // Disable 5 and expire 3 in batches.
    let disabled: Vec<&str> = keys[..5].iter().map(|k| k.0.as_str()).collect();
    let a = admin
        .post(
            "/admin/api/keys/batch",
            json!({"ids": disabled, "patch": {"enabled": false}}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.json["results"].as_array().unwrap().iter().all(|r| r["ok"] == true));
    let expired: Vec<&str> = keys[5..8].iter().map(|k| k.0.as_str()).collect();
    let a = admin
        .post(
            "/admin/api/keys/batch",
            json!({"ids": expired, "patch": {"expires_at": "2020-01-01T00:00:00Z"}}),
        )
        .await;
    assert!(
        a.json["results"].as_array().unwrap().iter().all(|r| r["ok"] == true),
        "{}",
        a.text
    );
    // A configured key in a batch is refused alone.
    let a = admin
        .post(
            "/admin/api/keys/batch",
            json!({"ids": ["config.alice", keys[9].0], "patch": {"enabled": true}}),
        )
        .await;
    let r = a.json["results"].as_array().unwrap();
    assert_eq!(
        (r[0]["ok"].clone(), r[1]["ok"].clone()),
        (json!(false), json!(true)),
        "{}",
        a.text
    );
    assert!(r[0]["error"].as_str().unwrap().contains("relay.yaml"), "{}", a.text);

    // Unpaged: every key (120 + the configured one), as before, with the new fields.
    let all = admin.get("/admin/api/keys").await;
    assert_eq!(all.json["keys"].as_array().unwrap().len(), 121);
    assert_eq!(all.json["total"], 121);
    // Pages of 50: 50, 50, 21, then nothing.
    let mut seen = Vec::new();
    for (page, n) in [(1, 50), (2, 50), (3, 21), (4, 0)] {
        let p = admin.get(&format!("/admin/api/keys?page={page}&per_page=50")).await;
        assert_eq!(p.status, 200, "{}", p.text);
        assert_eq!(
            (
                p.json["total"].clone(),
                p.json["page"].clone(),
                p.json["per_page"].clone()
            ),
            (json!(121), json!(page), json!(50))
        );
        assert_eq!(p.json["keys"].as_array().unwrap().len(), n, "page {page}");
        seen.extend(names(&p.json));
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 121, "pages overlap or miss keys");

    // Search, sort, status.
    let s = admin.get("/admin/api/keys?q=SOLO-1&sort=name&order=asc").await;
    assert_eq!(
        names(&s.json),
        [
            "solo-1", "solo-10", "solo-11", "solo-12", "solo-13", "solo-14", "solo-15", "solo-16", "solo-17",
            "solo-18", "solo-19"
        ]
    );
    assert_eq!(s.json["total"], 11);
    let s = admin.get("/admin/api/keys?sort=name&order=desc&per_page=2").await;
    assert_eq!(names(&s.json), ["team-99", "team-98"]);
    let s = admin.get("/admin/api/keys?status=disabled").await;
    assert_eq!(s.json["total"], 5, "{}", s.text);
    let s = admin.get("/admin/api/keys?status=expired").await;
    assert_eq!(s.json["total"], 3, "{}", s.text);
    let s = admin.get("/admin/api/keys?status=enabled&q=team").await;
    assert_eq!(s.json["total"], 92, "{}", s.text);
    for bad in [
        "sort=cost",
        "order=up",
        "status=off",
        "page=0",
        "per_page=0",
        "per_page=501",
        "page=x",
    ] {
        let a = admin.get(&format!("/admin/api/keys?{bad}")).await;
        support::admin::assert_400(&a, bad);
    }

    // Usage columns: 3 requests with solo-7, 1 with solo-8.
    let (id7, key7) = keys[106].clone();
    let (id8, key8) = keys[107].clone();
    for _ in 0..3 {
        assert_eq!(call(&relay, &key7, &[], BODY).await.status(), 200);
    }
    assert_eq!(call(&relay, &key8, &[], BODY).await.status(), 200);
    let top = eventually(|| async {
        let t = admin.get("/admin/api/keys?sort=cost_today&order=desc&per_page=3").await;
        (t.json["keys"][0]["usage"]["today"]["requests"] == 3 && t.json["keys"][1]["usage"]["d30"]["requests"] == 1)
            .then_some(t.json)
    })
    .await;
    assert_eq!(top["keys"][0]["id"], id7.as_str());
    assert_eq!(top["keys"][1]["id"], id8.as_str());
    let c7 = top["keys"][0]["usage"]["today"]["cost_usd"].as_f64().unwrap();
    let c8 = top["keys"][1]["usage"]["d30"]["cost_usd"].as_f64().unwrap();
    assert!(c7 > 0.0 && (c7 - 3.0 * c8).abs() < 1e-9, "{c7} {c8}");
    assert_eq!(top["keys"][0]["usage"]["d30"], top["keys"][0]["usage"]["today"]);
    assert_eq!(top["keys"][2]["usage"]["today"]["requests"], 0);
    // The page's usage also comes with other sorts.
    let p = admin.get("/admin/api/keys?q=solo-7&per_page=5").await;
    assert_eq!(p.json["keys"][0]["usage"]["today"]["requests"], 3, "{}", p.text);

    // Batch delete.
    let gone: Vec<&str> = keys[110..120].iter().map(|k| k.0.as_str()).collect();
    let a = admin
        .post("/admin/api/keys/batch", json!({"ids": gone, "delete": true}))
        .await;
    assert!(
        a.json["results"].as_array().unwrap().iter().all(|r| r["ok"] == true),
        "{}",
        a.text
    );
    assert_eq!(admin.get("/admin/api/keys?per_page=1").await.json["total"], 111);
    assert_eq!(call(&relay, &keys[115].1, &[], BODY).await.status(), 401);
    let a = admin
        .post("/admin/api/keys/batch", json!({"ids": [keys[110].0], "delete": true}))
        .await;
    assert_eq!(a.json["results"][0]["ok"], false);
    support::admin::assert_400(
        &admin.post("/admin/api/keys/batch", json!({"ids": ["a"]})).await,
        "no operation",
    );
    support::admin::assert_400(
        &admin
            .post(
                "/admin/api/keys/batch",
                json!({"create": {"count": 0, "name_prefix": "z"}}),
            )
            .await,
        "count 0",
    );
}

/// Tags file keys under teams or projects: set at creation (one by one or in a batch), replaced
/// or cleared by an update, listed with the key, filtered on exactly and found by search.
#[tokio::test]
async fn keys_have_tags_to_filter_and_search_by() {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!("accounts:\n{}", account_yaml("main", &mock.url(), ""))).await;
    let admin = Admin::login(&relay).await;
    let a = admin
        .post(
            "/admin/api/keys",
            json!({"name": "ta", "tags": [" team-a ", "批处理", "team-a"]}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.json["tags"], json!(["team-a", "批处理"]), "trimmed, duplicates once");
    let id = a.json["id"].as_str().unwrap().to_string();
    batch_create(&admin, "tb-", 2, json!({"tags": ["team-b"]})).await;
    let names = |v: &Value| -> Vec<String> {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap().to_string())
            .collect()
    };
    let l = admin.get("/admin/api/keys?tag=team-b").await;
    assert_eq!(l.status, 200, "{}", l.text);
    assert_eq!(names(&l.json), ["tb-1", "tb-2"], "{}", l.text);
    assert_eq!(l.json["total"], 2);
    let l = admin.get("/admin/api/keys?tag=team").await;
    assert_eq!(l.json["total"], 0, "a tag filter is an exact match: {}", l.text);
    let l = admin.get("/admin/api/keys?q=%E6%89%B9").await;
    assert_eq!(names(&l.json), ["ta"], "search finds tags: {}", l.text);
    assert_eq!(l.json["keys"][0]["tags"], json!(["team-a", "批处理"]));
    // An update replaces them; an empty list clears them; the key's other fields stay.
    let u = admin
        .patch(&format!("/admin/api/keys/{id}"), json!({"tags": ["team-b"]}))
        .await;
    assert_eq!(u.status, 200, "{}", u.text);
    assert_eq!(u.json["tags"], json!(["team-b"]));
    assert_eq!(admin.get("/admin/api/keys?tag=team-b").await.json["total"], 3);
    let u = admin
        .patch(&format!("/admin/api/keys/{id}"), json!({"enabled": false}))
        .await;
    assert_eq!(u.json["tags"], json!(["team-b"]), "untouched when absent");
    let u = admin.patch(&format!("/admin/api/keys/{id}"), json!({"tags": []})).await;
    assert_eq!(u.json["tags"], json!([]));
    // Bad tags are refused in the admin API's error shape, and nothing changes.
    for bad in [
        json!([""]),
        json!(["x".repeat(41)]),
        json!(["a\u{7}b"]),
        json!((0..17).map(|i| format!("t{i}")).collect::<Vec<_>>()),
    ] {
        let r = admin.post("/admin/api/keys", json!({"name": "bad", "tags": bad})).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert_eq!(r.json["error"]["type"], "invalid_request_error", "{}", r.text);
        let r = admin
            .patch(&format!("/admin/api/keys/{id}"), json!({"tags": bad}))
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
    }
    assert_eq!(admin.get("/admin/api/keys?q=bad").await.json["total"], 0);
    // Keys from relay.yaml have none.
    let c = admin.get("/admin/api/keys?q=alice").await;
    assert_eq!(c.json["keys"][0]["tags"], json!([]), "{}", c.text);
}

#[tokio::test]
async fn rotation_replaces_the_secret_and_keeps_the_key() {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!("accounts:\n{}", account_yaml("main", &mock.url(), ""))).await;
    let admin = Admin::login(&relay).await;
    let created = admin
        .post("/admin/api/keys", json!({"name": "r", "model_blacklist": ["m"]}))
        .await;
    let (id, old) = (
        created.json["id"].as_str().unwrap(),
        created.json["key"].as_str().unwrap(),
    );
    assert_eq!(call(&relay, old, &[], BODY).await.status(), 200);
    let r = admin.post(&format!("/admin/api/keys/{id}/rotate"), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let new = r.json["key"].as_str().unwrap();
    assert_ne!(new, old);
    assert_eq!(r.json["id"], id);
    assert_eq!(r.json["model_blacklist"], json!(["m"]));
    assert_ne!(r.json["hint"], created.json["hint"]);
    assert_eq!(call(&relay, old, &[], BODY).await.status(), 401);
    assert_eq!(call(&relay, new, &[], BODY).await.status(), 200);
    let c = admin.post("/admin/api/keys/config.alice/rotate", json!({})).await;
    assert_eq!(c.status, 409, "{}", c.text);
    assert_eq!(admin.post("/admin/api/keys/nope/rotate", json!({})).await.status, 404);
}

#[tokio::test]
async fn groups_are_listed_and_renamed_and_me_names_the_session() {
    let mock = MockUpstream::start().await;
    let yaml = format!(
        "accounts:\n{}{}",
        account_yaml("cfg", &mock.url(), ", group: fixed"),
        "api_keys:\n  - { name: alice, key: cr_00000000000000000000000000000000000000000000000000000000000000a1, bind: \"group:fixed\" }\n"
    );
    let relay = RelayProcess::start(&yaml).await;
    let admin = Admin::login(&relay).await;
    let me = admin.get("/admin/api/me").await;
    assert_eq!(me.status, 200, "{}", me.text);
    assert_eq!(me.json["username"], "admin");
    assert!(me.json["expires_at"].as_i64().unwrap() > chrono::Utc::now().timestamp());
    assert_eq!(me.json["version"], env!("CARGO_PKG_VERSION"));
    // The same instance id every admin answer that names one gives (`/overview`, `/live`).
    let overview = admin.get("/admin/api/overview").await;
    let instance = me.json["instance"].as_str().unwrap();
    assert!(!instance.is_empty());
    assert_eq!(overview.json["instance"].as_str(), Some(instance), "{}", overview.text);
    assert_eq!(
        client()
            .get(format!("{}/admin/api/me", relay.admin()))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    let acc = admin
        .post(
            "/admin/api/accounts",
            json!({"name": "a1", "kind": "claude-console", "base_url": mock.url(), "api_key": "sk-ant-api03-x", "group": "blue"}),
        )
        .await;
    assert_eq!(acc.status, 201, "{}", acc.text);
    let key = admin
        .post("/admin/api/keys", json!({"name": "k1", "bind": "group:blue"}))
        .await;
    let g = admin.get("/admin/api/groups").await;
    assert_eq!(g.status, 200, "{}", g.text);
    let groups = g.json["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{}", g.text);
    assert_eq!(groups[0]["name"], "blue");
    assert_eq!(groups[0]["accounts"][0]["name"], "a1");
    assert_eq!(groups[0]["accounts"][0]["kind"], "claude-console");
    assert_eq!(groups[0]["accounts"][0]["state"], "active");
    assert_eq!(groups[0]["keys"][0]["id"], key.json["id"]);
    assert_eq!(groups[1]["name"], "fixed");
    assert_eq!(groups[1]["keys"][0]["name"], "alice");

    let r = admin
        .post("/admin/api/groups/blue/rename", json!({"to": "green"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json, json!({"name": "green", "accounts": 1, "keys": 1}));
    assert_eq!(admin.account(acc.json["id"].as_str().unwrap()).await["group"], "green");
    let k = admin
        .get(&format!("/admin/api/keys/{}", key.json["id"].as_str().unwrap()))
        .await;
    assert_eq!(k.json["bind"], "group:green");
    // The key still reaches its group's account.
    assert_eq!(
        call(&relay, key.json["key"].as_str().unwrap(), &[], BODY)
            .await
            .status(),
        200
    );
    assert_eq!(
        admin
            .post("/admin/api/groups/fixed/rename", json!({"to": "x"}))
            .await
            .status,
        409
    );
    assert_eq!(
        admin
            .post("/admin/api/groups/none/rename", json!({"to": "x"}))
            .await
            .status,
        404
    );
    support::admin::assert_400(
        &admin.post("/admin/api/groups/green/rename", json!({"to": " "})).await,
        "blank",
    );
}

#[derive(Clone, Copy)]
enum Backend {
    Embedded,
    Redis,
}

#[tokio::test]
async fn limits_peek_on_embedded() {
    limits_peek(Backend::Embedded).await
}

#[tokio::test]
async fn limits_peek_on_redis() {
    limits_peek(Backend::Redis).await
}

async fn limits_peek(backend: Backend) {
    let mock = MockUpstream::start().await;
    let prefix = redis_prefix();
    let mut yaml = format!("accounts:\n{}", account_yaml("main", &mock.url(), ""));
    if let Backend::Redis = backend {
        yaml.push_str(&format!(
            "store: {{ backend: redis, url: \"{}\", prefix: \"{prefix}\" }}\n",
            redis_url()
        ));
    }
    let relay = RelayProcess::start(&yaml).await;
    let admin = Admin::login(&relay).await;
    let k = admin
        .post(
            "/admin/api/keys",
            json!({"name": "lim", "rate_limit": {"window_minutes": 60, "requests": 10, "cost_usd": 5.0},
                   "cost_limits": {"daily_usd": 10.0, "monthly_usd": 50.0}, "concurrency": {"limit": 3}}),
        )
        .await;
    assert_eq!(k.status, 201, "{}", k.text);
    let (id, key) = (
        k.json["id"].as_str().unwrap().to_string(),
        k.json["key"].as_str().unwrap().to_string(),
    );
    let path = format!("/admin/api/keys/{id}/limits");
    let l = admin.get(&path).await;
    assert_eq!(l.status, 200, "{}", l.text);
    assert_eq!(l.json["rate"]["requests"], json!({"used": 0, "limit": 10}));
    assert_eq!(l.json["rate"]["window_s"], 3600);
    assert_eq!(l.json["concurrency"], json!({"in_flight": 0, "limit": 3}));
    for _ in 0..2 {
        assert_eq!(call(&relay, &key, &[], BODY).await.status(), 200);
    }
    // Both requests settled: their spend charged and their reservations freed (a request is
    // settled just after its last byte reached the client).
    let l = eventually(|| async {
        let l = admin.get(&path).await;
        (l.json["spend"]["daily"]["spent_usd"].as_f64().unwrap() > 0.0 && l.json["reserved_usd"] == 0.0)
            .then_some(l.json)
    })
    .await;
    assert_eq!(l["rate"]["requests"]["used"], 2, "{l}");
    assert_eq!(l["rate"]["tokens"]["limit"], Value::Null);
    let spent = l["spend"]["daily"]["spent_usd"].as_f64().unwrap();
    assert_eq!(l["rate"]["cost_usd"]["used"].as_f64().unwrap(), spent);
    assert_eq!(l["spend"]["monthly"]["spent_usd"].as_f64().unwrap(), spent);
    assert_eq!(l["spend"]["daily"]["limit_usd"], 10.0);
    assert_eq!(l["spend"]["weekly"]["limit_usd"], Value::Null);
    assert!(l["spend"]["daily"]["resets_at"].as_i64().unwrap() > chrono::Utc::now().timestamp());
    assert_eq!(l["reserved_usd"], 0.0);
    // Peeking changes nothing.
    assert_eq!(admin.get(&path).await.json["rate"]["requests"]["used"], 2);

    // A slow stream holds a slot and a reservation while it runs.
    let relay_base = relay.base();
    let key2 = key.clone();
    let stream = tokio::spawn(async move {
        let r = client()
            .post(format!("{relay_base}/v1/messages"))
            .header("x-api-key", key2)
            .header("content-type", "application/json")
            .header("x-mock-chunk", "100")
            .header("x-mock-chunk-delay-ms", "150")
            .body(STREAM_BODY)
            .send()
            .await
            .unwrap();
        r.bytes().await.unwrap();
    });
    let during = eventually(|| async {
        let l = admin.get(&path).await;
        (l.json["concurrency"]["in_flight"] == 1).then_some(l.json)
    })
    .await;
    assert!(during["reserved_usd"].as_f64().unwrap() > 0.0, "{during}");
    assert_eq!(during["rate"]["requests"]["used"], 3);
    stream.await.unwrap();
    let after = eventually(|| async {
        let l = admin.get(&path).await;
        (l.json["concurrency"]["in_flight"] == 0 && l.json["reserved_usd"] == 0.0).then_some(l.json)
    })
    .await;
    assert!(after["spend"]["daily"]["spent_usd"].as_f64().unwrap() > spent);
    assert_eq!(admin.get("/admin/api/keys/nope/limits").await.status, 404);
    let alice = admin.get("/admin/api/keys/config.alice/limits").await;
    assert_eq!(
        alice.json,
        json!({"rate": null, "spend": null, "concurrency": null, "reserved_usd": 0.0})
    );
    if let Backend::Redis = backend {
        redis_cleanup(&prefix).await;
    }
}

#[tokio::test]
async fn events_record_a_529_and_its_reset() {
    let mock = MockUpstream::start().await;
    // One key's failures are enough evidence to mark the account.
    let relay = RelayProcess::start(&format!(
        "scheduler: {{ failover: {{ evidence_keys: 1 }} }}\naccounts:\n{}",
        account_yaml("main", &mock.url(), "")
    ))
    .await;
    let admin = Admin::login(&relay).await;
    let path = "/admin/api/accounts/config.main/events";
    assert_eq!(admin.get(path).await.json, json!({"events": []}));
    let r = call(&relay, support::ALICE, &[("x-mock-status", "529")], BODY).await;
    assert!(r.status().is_server_error(), "{}", r.status());
    let e = eventually(|| async {
        let e = admin.get(path).await;
        (!e.json["events"].as_array().unwrap().is_empty()).then_some(e.json)
    })
    .await;
    assert_eq!(e["events"][0]["state"], "cooling_down", "{e}");
    assert!(e["events"][0]["reason"].as_str().unwrap().contains("529"), "{e}");
    assert!(e["events"][0]["until"].as_i64().unwrap() > chrono::Utc::now().timestamp() - 1);
    // The mark reaches the store in the background; a reset in the same instant can be overtaken
    // by that write (a known race), so the reset comes once it has landed.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let r = admin.post("/admin/api/accounts/config.main/reset", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let e = admin.get(path).await.json;
    assert_eq!(e["events"].as_array().unwrap().len(), 2, "{e}");
    assert_eq!(e["events"][0]["state"], "active");
    assert_eq!(e["events"][1]["state"], "cooling_down");
    assert_eq!(admin.get("/admin/api/accounts/nope/events").await.status, 404);
}

#[tokio::test]
async fn refresh_renews_an_oauth_token_on_demand() {
    use support::oauth_mock::MockOAuth;
    let mock = MockOAuth::start().await;
    let yaml = format!(
        "providers:\n  anthropic:\n    api_base: \"{}\"\n    oauth:\n      authorize_url: \"{}\"\n      token_url: \"{}\"\n      profile_url: \"{}\"\n      usage_url: \"{}\"\n      refresh_check: 1h\n      usage_poll: 0\naccounts:\n{}",
        mock.url(),
        mock.authorize_url(),
        mock.token_url(),
        mock.profile_url(),
        mock.usage_url(),
        account_yaml("plain", &mock.url(), ""),
    );
    let relay = RelayProcess::start(&yaml).await;
    let admin = Admin::login(&relay).await;
    let (access, refresh, expires_ms) = mock.issue_tokens(3600);
    let a = admin
        .post(
            "/admin/api/accounts/claude-oauth/import",
            json!({"name": "sub", "access_token": access, "refresh_token": refresh, "expires_at": expires_ms}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let id = a.json["id"].as_str().unwrap();
    let before = mock.refresh_count();
    let r = admin
        .post(&format!("/admin/api/accounts/{id}/refresh"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["ok"], true);
    assert!(r.json["expires_at"].as_i64().unwrap() > chrono::Utc::now().timestamp());
    assert_eq!(mock.refresh_count(), before + 1);
    assert_ne!(mock.latest_access_token().unwrap(), access);
    // A refused refresh is the error.
    mock.fail_refresh(Some((400, r#"{"error":"invalid_grant"}"#.into())));
    let r = admin
        .post(&format!("/admin/api/accounts/{id}/refresh"), json!({}))
        .await;
    assert_eq!(r.status, 502, "{}", r.text);
    let c = admin.post("/admin/api/accounts/config.plain/refresh", json!({})).await;
    assert_eq!(c.status, 400, "{}", c.text);
    assert_eq!(
        admin.post("/admin/api/accounts/nope/refresh", json!({})).await.status,
        404
    );
    admin.assert_none_shows(|t| mock.leaked_in(t));
}
