//! The admin API's scheduling side through the real binary: account scheduling fields (group,
//! sealed outbound proxy, caps, quota, weight, cooldowns), key bindings, live account health and
//! the reset that brings an account back, against mock upstreams on sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The harness is shared with other suites; its own lint findings are not this suite's business.
#[allow(clippy::doc_lazy_continuation, clippy::type_complexity)]
mod support;
use support::client;

use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::mock::MockUpstream;
use support::{ALICE, RelayProcess, account_yaml};

const BODY_JSON: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;

struct Admin {
    base: String,
    token: String,
    http: reqwest::Client,
}

struct Answer {
    status: StatusCode,
    json: Value,
    text: String,
}

impl Admin {
    async fn login(relay: &RelayProcess) -> Admin {
        Admin {
            base: relay.admin(),
            token: relay.admin_token().await,
            http: client(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer { status, json, text }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(body)).await
    }
    async fn patch(&self, path: &str, body: Value) -> Answer {
        self.call(Method::PATCH, path, Some(body)).await
    }

    /// One account from the list, by name.
    async fn account(&self, name: &str) -> Value {
        let list = self.get("/admin/api/accounts").await;
        assert_eq!(list.status, 200, "{}", list.text);
        list.json["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("no account {name} in {}", list.text))
            .clone()
    }
}

fn assert_400(a: &Answer, what: &str) {
    assert_eq!(a.status, 400, "{what} → {}", a.text);
    assert_eq!(a.json["error"]["type"], "invalid_request_error", "{what} → {}", a.text);
    assert!(
        a.json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what} → {}",
        a.text
    );
}

async fn relay_status(relay: &RelayProcess, key: &str) -> u16 {
    client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(BODY_JSON)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn proxy_credentials_are_sealed_and_never_shown() {
    let relay = RelayProcess::start("").await;
    let admin = Admin::login(&relay).await;
    let mut answers = Vec::new();

    let created = admin
        .post(
            "/admin/api/accounts",
            json!({
                "name": "behind-proxy",
                "kind": "claude-console",
                "base_url": "http://127.0.0.1:9",
                "api_key": "sk-ant-api03-proxied-account-key",
                "proxy": "socks5://user:secretpw@127.0.0.1:1080",
                "group": "team",
                "max_concurrency": 2,
                "daily_quota_usd": 5.5,
                "quota_reset": "7:30",
                "weight": 3,
                "cooldowns": {"529": "2m", "connect": 45},
            }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let a = &created.json;
    assert_eq!(a["proxy"], "socks5://***@127.0.0.1:1080");
    assert_eq!(a["group"], "team");
    assert_eq!(a["max_concurrency"], 2);
    assert_eq!(a["daily_quota_usd"], 5.5);
    assert_eq!(a["quota_reset"], "07:30", "normalised");
    assert_eq!(a["weight"], 3);
    assert_eq!(
        a["cooldowns"],
        json!({"529": "2m", "connect": "45s"}),
        "a number of seconds is shown as a duration, as configured accounts show theirs"
    );
    assert_eq!(a["health"]["state"], "active");
    assert_eq!(a["health"]["until"], Value::Null);
    assert_eq!(a["in_flight"], 0);
    assert_eq!(a["ratelimit"], Value::Null);
    assert_eq!(a["spend_today_usd"], 0.0, "quota set: spend shown");
    assert!(a.get("error").is_none(), "{}", created.text);
    let id = a["id"].as_str().unwrap().to_string();
    answers.push(created.text.clone());

    for path in ["/admin/api/accounts".to_string(), format!("/admin/api/accounts/{id}")] {
        let got = admin.get(&path).await;
        assert_eq!(got.status, 200, "{}", got.text);
        assert!(got.text.contains("socks5://***@127.0.0.1:1080"), "{}", got.text);
        answers.push(got.text);
    }

    // A change of another field keeps the proxy; a new proxy replaces it; null clears it.
    let renamed = admin
        .patch(&format!("/admin/api/accounts/{id}"), json!({"priority": 7}))
        .await;
    assert_eq!(renamed.json["proxy"], "socks5://***@127.0.0.1:1080");
    answers.push(renamed.text);
    let http = admin
        .patch(
            &format!("/admin/api/accounts/{id}"),
            json!({"proxy": "http://other:secretpw@127.0.0.1:3128", "quota_reset": null, "cooldowns": null}),
        )
        .await;
    assert_eq!(http.status, 200, "{}", http.text);
    assert_eq!(http.json["proxy"], "http://***@127.0.0.1:3128");
    assert_eq!(http.json["quota_reset"], Value::Null);
    assert_eq!(http.json["cooldowns"], json!({}));
    assert_eq!(http.json["group"], "team", "absent fields stay");
    answers.push(http.text);
    let bad = admin
        .patch(
            &format!("/admin/api/accounts/{id}"),
            json!({"proxy": "ftp://user:secretpw@127.0.0.1:21"}),
        )
        .await;
    assert_400(&bad, "ftp proxy");
    answers.push(bad.text);

    for a in &answers {
        assert!(!a.contains("secretpw"), "proxy password leaked: {a}");
    }

    let mut files = Vec::new();
    files_under(&relay.dir.path().join("data"), &mut files);
    assert!(!files.is_empty());
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !contains(&bytes, b"secretpw"),
            "{} holds the proxy password",
            f.display()
        );
    }
    assert!(
        !relay.log_text().contains("secretpw"),
        "the log holds the proxy password"
    );

    let cleared = admin
        .patch(
            &format!("/admin/api/accounts/{id}"),
            json!({"proxy": null, "group": null, "max_concurrency": null, "daily_quota_usd": null, "weight": null}),
        )
        .await;
    assert_eq!(cleared.status, 200, "{}", cleared.text);
    for f in [
        "proxy",
        "group",
        "max_concurrency",
        "daily_quota_usd",
        "weight",
        "spend_today_usd",
    ] {
        assert_eq!(cleared.json[f], Value::Null, "{f}: {}", cleared.text);
    }
}

#[tokio::test]
async fn configured_accounts_and_keys_show_their_scheduling_fields() {
    let mock = MockUpstream::start().await;
    let bound = "cr_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let extra = format!(
        "accounts:\n{}api_keys:\n  - {{ name: alice, key: {ALICE} }}\n  - {{ name: bob, key: {bound}, bind: \"group:g\" }}\n",
        account_yaml(
            "conf",
            &mock.url(),
            ", group: g, proxy: \"socks5://cu:confsecret@127.0.0.1:1081\", max_concurrency: 4, daily_quota_usd: 10, quota_reset: \"05:00\", weight: 2, cooldowns: { \"529\": 90s, \"5xx\": 1h }"
        ),
    );
    let relay = RelayProcess::start(&extra).await;
    let admin = Admin::login(&relay).await;
    let got = admin.get("/admin/api/accounts/config.conf").await;
    assert_eq!(got.status, 200, "{}", got.text);
    let a = &got.json;
    assert_eq!(a["source"], "config");
    assert_eq!(a["group"], "g");
    assert_eq!(a["proxy"], "socks5://***@127.0.0.1:1081");
    assert_eq!(a["max_concurrency"], 4);
    assert_eq!(a["daily_quota_usd"], 10.0);
    assert_eq!(a["quota_reset"], "05:00");
    assert_eq!(a["weight"], 2);
    assert_eq!(a["cooldowns"], json!({"529": "90s", "5xx": "1h"}));
    assert_eq!(a["health"]["state"], "active");
    assert_eq!(a["spend_today_usd"], 0.0);
    assert!(!got.text.contains("confsecret"), "{}", got.text);
    let list = admin.get("/admin/api/accounts").await;
    assert!(!list.text.contains("confsecret"), "{}", list.text);

    // Read-only: scheduling fields of a configured account cannot be changed here.
    let a = admin
        .patch("/admin/api/accounts/config.conf", json!({"weight": 5}))
        .await;
    assert_eq!(a.status, 409, "{}", a.text);

    let bob = admin.get("/admin/api/keys/config.bob").await;
    assert_eq!(bob.json["bind"], "group:g");
    let alice = admin.get("/admin/api/keys/config.alice").await;
    assert_eq!(alice.json["bind"], Value::Null);
}

#[tokio::test]
async fn a_refusing_account_cools_down_and_a_reset_brings_it_back() {
    let (first, second, third) = (
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    );
    first.set_status(Some(529));
    // One key's failures are enough evidence here: this is about the cooldown and its reset.
    let extra = format!(
        "scheduler: {{ failover: {{ evidence_keys: 1 }} }}\naccounts:\n{}{}",
        account_yaml("first", &first.url(), ", priority: 1"),
        account_yaml("second", &second.url(), ", priority: 2"),
    );
    let relay = RelayProcess::start(&extra).await;
    let admin = Admin::login(&relay).await;
    assert_eq!(admin.account("first").await["health"]["state"], "active");

    let before = now_ms();
    assert_eq!(relay_status(&relay, ALICE).await, 200, "failed over to the second");
    let after = now_ms();
    assert_eq!((first.hits(), second.hits()), (1, 1));

    let a = admin.account("first").await;
    let h = &a["health"];
    assert_eq!(h["state"], "cooling_down", "{a}");
    assert_eq!(h["reason"], "upstream 529", "{a}");
    assert_eq!(h["family"], Value::Null);
    let since = h["since"].as_i64().unwrap();
    assert!(
        (before - 1_000..=after + 1_000).contains(&since),
        "since {since} in {before}..{after}"
    );
    let until = h["until"].as_i64().unwrap();
    let ten_min = 600_000;
    assert!(
        (before + ten_min - 5_000..=after + ten_min + 5_000).contains(&until),
        "until {until} ≈ now + 10 min"
    );
    assert_eq!(a["in_flight"], 0);
    assert_eq!(admin.account("second").await["health"]["state"], "active");

    // While it cools down, requests skip it even though its upstream is fine again.
    first.set_status(None);
    assert_eq!(relay_status(&relay, ALICE).await, 200);
    assert_eq!((first.hits(), second.hits()), (1, 2));

    let reset = admin.post("/admin/api/accounts/config.first/reset", json!({})).await;
    assert_eq!(reset.status, 200, "{}", reset.text);
    assert_eq!(reset.json["id"], "config.first");
    assert_eq!(reset.json["health"]["state"], "active", "{}", reset.text);
    assert_eq!(reset.json["health"]["until"], Value::Null);
    assert_eq!(admin.account("first").await["health"]["state"], "active");
    assert_eq!(relay_status(&relay, ALICE).await, 200);
    assert_eq!(
        (first.hits(), second.hits()),
        (2, 2),
        "the next request reaches it again"
    );

    // The same for an account created through the API, with its own cooldown override.
    third.set_status(Some(529));
    let created = admin
        .post(
            "/admin/api/accounts",
            json!({
                "name": "third",
                "kind": "claude-console",
                "base_url": third.url(),
                "api_key": "sk-ant-api03-third-account",
                "priority": 0,
                "cooldowns": {"529": "3m"},
            }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_string();
    let before = now_ms();
    assert_eq!(relay_status(&relay, ALICE).await, 200);
    let after = now_ms();
    assert_eq!(third.hits(), 1);
    let got = admin.get(&format!("/admin/api/accounts/{id}")).await;
    assert_eq!(got.json["health"]["state"], "cooling_down", "{}", got.text);
    let until = got.json["health"]["until"].as_i64().unwrap();
    assert!(
        (before + 180_000 - 5_000..=after + 180_000 + 5_000).contains(&until),
        "the account's own 3m override: {until}"
    );
    third.set_status(None);
    let reset = admin.post(&format!("/admin/api/accounts/{id}/reset"), json!({})).await;
    assert_eq!(reset.status, 200, "{}", reset.text);
    assert_eq!(reset.json["health"]["state"], "active");
    assert_eq!(reset.json["name"], "third");
    assert_eq!(relay_status(&relay, ALICE).await, 200);
    assert_eq!(third.hits(), 2);

    // Resetting an account that is fine is harmless; an unknown one is 404.
    assert_eq!(
        admin
            .post("/admin/api/accounts/config.second/reset", json!({}))
            .await
            .status,
        200
    );
    let none = admin.post("/admin/api/accounts/nope/reset", json!({})).await;
    assert_eq!(none.status, 404, "{}", none.text);
    assert_eq!(none.json["error"]["type"], "not_found_error");
    let anon = client()
        .post(format!("{}/admin/api/accounts/config.first/reset", relay.admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
}

#[tokio::test]
async fn a_key_bound_through_the_api_uses_only_its_account() {
    let (shared, dedicated, team) = (
        MockUpstream::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    );
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}",
        account_yaml("shared", &shared.url(), ", priority: 1")
    ))
    .await;
    let admin = Admin::login(&relay).await;
    let account = |name: &str, url: String, extra: Value| {
        let mut b = json!({
            "name": name,
            "kind": "claude-console",
            "base_url": url,
            "api_key": format!("sk-ant-api03-{name}-key"),
            "priority": 50,
        });
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let d = admin
        .post("/admin/api/accounts", account("dedicated", dedicated.url(), json!({})))
        .await;
    assert_eq!(d.status, 201, "{}", d.text);
    let t = admin
        .post(
            "/admin/api/accounts",
            account("team-1", team.url(), json!({"group": "team"})),
        )
        .await;
    assert_eq!(t.status, 201, "{}", t.text);

    let key = admin
        .post("/admin/api/keys", json!({"name": "bound", "bind": " dedicated "}))
        .await;
    assert_eq!(key.status, 201, "{}", key.text);
    assert_eq!(key.json["bind"], "dedicated");
    let key_id = key.json["id"].as_str().unwrap().to_string();
    let plaintext = key.json["key"].as_str().unwrap().to_string();
    let listed = admin.get("/admin/api/keys").await;
    let row = listed.json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == key_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["bind"], "dedicated");

    for _ in 0..3 {
        assert_eq!(relay_status(&relay, &plaintext).await, 200);
        assert_eq!(relay_status(&relay, ALICE).await, 200);
    }
    assert_eq!(dedicated.hits(), 3, "the bound key uses only its account");
    assert_eq!(shared.hits(), 3, "alice never uses the dedicated account");
    assert_eq!(team.hits(), 0);

    // Rebound to a group, then unbound.
    let g = admin
        .patch(&format!("/admin/api/keys/{key_id}"), json!({"bind": "group:team"}))
        .await;
    assert_eq!(g.status, 200, "{}", g.text);
    assert_eq!(g.json["bind"], "group:team");
    assert_eq!(relay_status(&relay, &plaintext).await, 200);
    assert_eq!((dedicated.hits(), team.hits()), (3, 1));

    let name_only = admin
        .patch(&format!("/admin/api/keys/{key_id}"), json!({"name": "renamed"}))
        .await;
    assert_eq!(name_only.json["bind"], "group:team", "absent bind stays");

    let free = admin
        .patch(&format!("/admin/api/keys/{key_id}"), json!({"bind": null}))
        .await;
    assert_eq!(free.status, 200, "{}", free.text);
    assert_eq!(free.json["bind"], Value::Null);
    assert_eq!(relay_status(&relay, &plaintext).await, 200);
    assert_eq!(
        (shared.hits(), dedicated.hits(), team.hits()),
        (4, 3, 1),
        "unbound: the shared pool by priority"
    );

    // A binding to an account that does not exist yet is accepted (it may be created later);
    // the key then has no account to use.
    let later = admin
        .patch(&format!("/admin/api/keys/{key_id}"), json!({"bind": "not-yet"}))
        .await;
    assert_eq!(later.status, 200, "{}", later.text);
    assert_ne!(relay_status(&relay, &plaintext).await, 200);
    assert_eq!(shared.hits(), 4);
}

#[tokio::test]
async fn bad_scheduling_fields_are_400() {
    let relay = RelayProcess::start("").await;
    let admin = Admin::login(&relay).await;

    let good = json!({"name": "acct", "kind": "claude-console", "base_url": "http://127.0.0.1:9", "api_key": "sk-ant-api03-x"});
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    let bad = [
        ("group", json!("")),
        ("group", json!("  ")),
        ("group", json!(5)),
        ("proxy", json!("ftp://127.0.0.1:21")),
        ("proxy", json!("socks5://127.0.0.1")),
        ("proxy", json!("not a url")),
        ("proxy", json!("http://127.0.0.1:8080/path")),
        ("max_concurrency", json!(0)),
        ("max_concurrency", json!(-1)),
        ("max_concurrency", json!(1.5)),
        ("daily_quota_usd", json!(0)),
        ("daily_quota_usd", json!(-3)),
        ("daily_quota_usd", json!("5")),
        ("quota_reset", json!("24:00")),
        ("quota_reset", json!("12:60")),
        ("quota_reset", json!("noon")),
        ("quota_reset", json!("")),
        ("weight", json!(0)),
        ("weight", json!(-2)),
        ("cooldowns", json!({"999": "1m"})),
        ("cooldowns", json!({"529": "soon"})),
        ("cooldowns", json!({"529": "10y"})),
        ("cooldowns", json!({"529": "-5m"})),
        ("cooldowns", json!({"529": "99999999999999999999999d"})),
        ("cooldowns", json!({"529": true})),
        ("cooldowns", json!(["529"])),
    ];
    for (k, v) in &bad {
        let a = admin.post("/admin/api/accounts", with(k, v.clone())).await;
        assert_400(&a, &format!("POST {k}: {v}"));
    }
    let named = admin
        .post("/admin/api/accounts", with("quota_reset", json!("25:00")))
        .await;
    assert!(
        named.text.contains("quota_reset"),
        "the error names the field: {}",
        named.text
    );
    let named = admin
        .post("/admin/api/accounts", with("cooldowns", json!({"42": "1m"})))
        .await;
    assert!(named.text.contains("cooldowns.42"), "{}", named.text);

    let created = admin.post("/admin/api/accounts", good.clone()).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_string();
    for (k, v) in &bad {
        let a = admin
            .patch(&format!("/admin/api/accounts/{id}"), json!({ *k: v.clone() }))
            .await;
        assert_400(&a, &format!("PATCH {k}: {v}"));
    }
    // Nothing of the refused changes was applied.
    let same = admin.get(&format!("/admin/api/accounts/{id}")).await;
    for f in [
        "group",
        "proxy",
        "max_concurrency",
        "daily_quota_usd",
        "quota_reset",
        "weight",
    ] {
        assert_eq!(same.json[f], Value::Null, "{f}: {}", same.text);
    }
    assert_eq!(same.json["cooldowns"], json!({}));

    for bind in [
        json!(""),
        json!("   "),
        json!("group:"),
        json!("group:  "),
        json!(7),
        json!("a\nb"),
    ] {
        let a = admin
            .post("/admin/api/keys", json!({"name": "k", "bind": bind.clone()}))
            .await;
        assert_400(&a, &format!("POST key bind {bind}"));
    }
    let k = admin.post("/admin/api/keys", json!({"name": "k"})).await;
    assert_eq!(k.status, 201, "{}", k.text);
    assert_eq!(k.json["bind"], Value::Null);
    let kid = k.json["id"].as_str().unwrap();
    for bind in [json!(""), json!("group:"), json!(["x"])] {
        let a = admin
            .patch(&format!("/admin/api/keys/{kid}"), json!({"bind": bind.clone()}))
            .await;
        assert_400(&a, &format!("PATCH key bind {bind}"));
    }
}

#[tokio::test]
async fn a_reset_on_one_instance_brings_the_account_back_on_every_instance() {
    let (prefix, url) = (support::redis_prefix(), support::redis_url());
    let (bad, good) = (MockUpstream::start().await, MockUpstream::start().await);
    bad.set_status(Some(529));
    let extra = format!(
        "scheduler: {{ failover: {{ evidence_keys: 1 }} }}\nstore: {{ backend: redis, url: \"{url}\", prefix: \"{prefix}\" }}\naccounts:\n{}{}",
        account_yaml("bad", &bad.url(), ", priority: 1"),
        account_yaml("good", &good.url(), ", priority: 2"),
    );
    let one = RelayProcess::start(&extra).await;
    let two = RelayProcess::start(&extra).await;
    let (admin_one, admin_two) = (Admin::login(&one).await, Admin::login(&two).await);

    assert_eq!(relay_status(&one, ALICE).await, 200);
    assert_eq!((bad.hits(), good.hits()), (1, 1));
    // Instance two learns of the cooldown through the shared store.
    support::eventually(|| async {
        let a = admin_two.account("bad").await;
        (a["health"]["state"] == "cooling_down").then_some(())
    })
    .await;
    assert_eq!(admin_two.account("bad").await["health"]["reason"], "upstream 529");

    bad.set_status(None);
    let reset = admin_two.post("/admin/api/accounts/config.bad/reset", json!({})).await;
    assert_eq!(reset.status, 200, "{}", reset.text);
    assert_eq!(reset.json["health"]["state"], "active");
    // Instance one follows the announcement.
    support::eventually(|| async {
        let a = admin_one.account("bad").await;
        (a["health"]["state"] == "active").then_some(())
    })
    .await;
    assert_eq!(relay_status(&one, ALICE).await, 200);
    assert_eq!((bad.hits(), good.hits()), (2, 1), "instance one uses the account again");

    drop(one);
    drop(two);
    support::redis_cleanup(&prefix).await;
}
