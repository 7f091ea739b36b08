//! The admin API through real interfaces: the `claude-relay` binary on random ports, real HTTP, a
//! mock Anthropic upstream on a socket. Admin writes must take effect on the relay at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The harness is shared with other suites; its own lint findings are not this suite's business.
#[allow(clippy::doc_lazy_continuation, clippy::type_complexity)]
mod support;
use support::client;

use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::mock::MockUpstream;
use support::{ADMIN_PASSWORD, ALICE, RelayProcess, account_yaml, eventually};

const BODY_JSON: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
const BODY_STREAM: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// An admin API client with a session token.
struct Admin {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// A response: status, body as JSON (`Null` when not JSON), raw body text.
struct Answer {
    status: StatusCode,
    json: Value,
    text: String,
    headers: reqwest::header::HeaderMap,
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
        answer(rb.send().await.unwrap()).await
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
    async fn delete(&self, path: &str) -> Answer {
        self.call(Method::DELETE, path, None).await
    }
}

async fn answer(r: reqwest::Response) -> Answer {
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        json,
        text,
        headers,
    }
}

/// Asserts the admin error shape `{"error":{"type","message"}}` with this status and type.
fn assert_error(a: &Answer, status: u16, kind: &str) {
    assert_eq!(a.status.as_u16(), status, "body: {}", a.text);
    assert_eq!(a.json["error"]["type"], kind, "body: {}", a.text);
    assert!(
        a.json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "body: {}",
        a.text
    );
}

/// Sends one relay request with this client key; returns the status.
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

async fn relay_with_account(mock: &MockUpstream) -> RelayProcess {
    RelayProcess::start(&format!("accounts:\n{}", account_yaml("main", &mock.url(), ""))).await
}

/// Every file under `dir`, recursively.
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
async fn login_sessions_logout_and_lockout() {
    let relay = RelayProcess::start("").await;
    let c = client();
    let login = |password: &'static str| {
        let c = c.clone();
        let url = format!("{}/admin/api/login", relay.admin());
        async move {
            answer(
                c.post(url)
                    .json(&json!({"username": "admin", "password": password}))
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };

    // No token, a malformed header, an unknown token: 401 everywhere.
    let keys_url = format!("{}/admin/api/keys", relay.admin());
    let a = answer(c.get(&keys_url).send().await.unwrap()).await;
    assert_error(&a, 401, "authentication_error");
    let a = answer(
        c.get(&keys_url)
            .header("authorization", "Basic abc")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&a, 401, "authentication_error");
    let a = answer(c.get(&keys_url).bearer_auth("f".repeat(64)).send().await.unwrap()).await;
    assert_error(&a, 401, "authentication_error");
    for path in [
        "/admin/api/accounts",
        "/admin/api/usage?dimension=key",
        "/admin/api/usage/summary",
    ] {
        let a = answer(c.get(format!("{}{path}", relay.admin())).send().await.unwrap()).await;
        assert_error(&a, 401, "authentication_error");
    }

    // Wrong password, wrong user.
    assert_error(&login("wrong-password").await, 401, "authentication_error");
    let a = answer(
        c.post(format!("{}/admin/api/login", relay.admin()))
            .json(&json!({"username": "root", "password": ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&a, 401, "authentication_error");

    // Success: a token that works, until logout.
    let ok = login(ADMIN_PASSWORD).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let token = ok.json["token"].as_str().unwrap().to_string();
    assert!(ok.json["expires_in"].as_i64().unwrap() > 0);
    let a = answer(c.get(&keys_url).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let out = c
        .post(format!("{}/admin/api/logout", relay.admin()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    let a = answer(c.get(&keys_url).bearer_auth(&token).send().await.unwrap()).await;
    assert_error(&a, 401, "authentication_error");
    let out = c
        .post(format!("{}/admin/api/logout", relay.admin()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 401, "logging out twice");

    // The successful login cleared the earlier failures: five more are answered 401, the sixth
    // must wait (backoff), and is refused without checking, even with the right password.
    for i in 0..5 {
        let a = login("wrong-password").await;
        assert_eq!(a.status, 401, "attempt {}: {}", i + 1, a.text);
    }
    let locked = login(ADMIN_PASSWORD).await;
    assert_error(&locked, 429, "rate_limit_error");
    let wait: u64 = locked.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(wait > 0 && wait <= 15 * 60, "retry-after {wait}");
}

#[tokio::test]
async fn created_key_is_shown_once_and_works_at_once() {
    let mock = MockUpstream::start().await;
    let relay = relay_with_account(&mock).await;
    let admin = Admin::login(&relay).await;

    let created = admin.post("/admin/api/keys", json!({"name": "bob"})).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let key = created.json["key"].as_str().unwrap().to_string();
    assert!(
        key.len() == 67
            && key.starts_with("cr_")
            && key[3..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{key}"
    );
    let id = created.json["id"].as_str().unwrap().to_string();
    assert!(uuid_like(&id), "{id}");
    assert_eq!(created.json["name"], "bob");
    assert_eq!(created.json["enabled"], true);
    assert_eq!(created.json["source"], "admin");
    assert!(created.json["created_at"].as_i64().unwrap() > 1_600_000_000);
    assert_eq!(created.json["last_used_at"], Value::Null);
    let hint = created.json["hint"].as_str().unwrap();
    assert!(hint.starts_with("cr_") && hint.len() < key.len(), "{hint}");
    assert!(created.json.get("key_hash").is_none());

    // Never again: neither the list nor the key itself shows the plaintext or a hash.
    let list = admin.get("/admin/api/keys").await;
    assert_eq!(list.status, 200);
    let one = admin.get(&format!("/admin/api/keys/{id}")).await;
    assert_eq!(one.status, 200);
    for a in [&list, &one] {
        assert!(!a.text.contains(&key), "plaintext leaked: {}", a.text);
        assert!(!a.text.contains(&key[3..]), "plaintext leaked: {}", a.text);
        assert!(!a.text.contains("key_hash"), "{}", a.text);
    }
    assert!(one.json.get("key").is_none());
    assert_eq!(one.json["hint"], hint);
    let listed: Vec<&Value> = list.json["keys"].as_array().unwrap().iter().collect();
    assert!(listed.iter().any(|k| k["id"] == id.as_str() && k["name"] == "bob"));

    // It works against the relay immediately, and then shows when it was last used.
    assert_eq!(relay_status(&relay, &key).await, 200);
    assert_eq!(mock.hits(), 1);
    eventually(|| async {
        let a = admin.get(&format!("/admin/api/keys/{id}")).await;
        a.json["last_used_at"].as_i64().map(|_| ())
    })
    .await;

    // Disabled: refused by the relay at once, without reaching the upstream.
    let off = admin
        .patch(&format!("/admin/api/keys/{id}"), json!({"enabled": false}))
        .await;
    assert_eq!(off.status, 200, "{}", off.text);
    assert_eq!(off.json["enabled"], false);
    assert!(!off.text.contains(&key));
    assert_eq!(relay_status(&relay, &key).await, 401);

    // Renamed and enabled again.
    let on = admin
        .patch(
            &format!("/admin/api/keys/{id}"),
            json!({"enabled": true, "name": "bobby"}),
        )
        .await;
    assert_eq!(on.status, 200, "{}", on.text);
    assert_eq!(on.json["name"], "bobby");
    assert_eq!(relay_status(&relay, &key).await, 200);

    // Deleted: gone from the relay and from the API.
    let del = admin.delete(&format!("/admin/api/keys/{id}")).await;
    assert_eq!(del.status, 204, "{}", del.text);
    assert_eq!(relay_status(&relay, &key).await, 401);
    assert_error(
        &admin.get(&format!("/admin/api/keys/{id}")).await,
        404,
        "not_found_error",
    );
    assert_error(
        &admin.delete(&format!("/admin/api/keys/{id}")).await,
        404,
        "not_found_error",
    );
    assert_error(
        &admin
            .patch(&format!("/admin/api/keys/{id}"), json!({"enabled": true}))
            .await,
        404,
        "not_found_error",
    );
    assert_eq!(mock.hits(), 2, "refused requests must not reach the upstream");

    // The configured key was untouched by all this.
    assert_eq!(relay_status(&relay, ALICE).await, 200);

    // Only the key's hash was ever stored, and the log does not hold it either.
    let mut files = Vec::new();
    files_under(&relay.dir.path().join("data"), &mut files);
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !contains(&bytes, &key.as_bytes()[3..]),
            "{} holds the plaintext client key",
            f.display()
        );
    }
    assert!(
        !relay.log_text().contains(&key[3..]),
        "the log holds the plaintext client key"
    );
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[tokio::test]
async fn configured_keys_and_accounts_are_read_only_and_names_unique() {
    let mock = MockUpstream::start().await;
    let relay = relay_with_account(&mock).await;
    let admin = Admin::login(&relay).await;

    let list = admin.get("/admin/api/keys").await;
    let alice = list.json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "alice")
        .unwrap()
        .clone();
    assert_eq!(alice["id"], "config.alice");
    assert_eq!(alice["source"], "config");
    assert_eq!(alice["enabled"], true);
    assert!(!list.text.contains(ALICE), "configured key leaked: {}", list.text);
    let one = admin.get("/admin/api/keys/config.alice").await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json["source"], "config");

    let a = admin
        .patch("/admin/api/keys/config.alice", json!({"enabled": false}))
        .await;
    assert_error(&a, 409, "conflict_error");
    assert!(a.json["error"]["message"].as_str().unwrap().contains("relay.yaml"));
    assert_error(
        &admin.delete("/admin/api/keys/config.alice").await,
        409,
        "conflict_error",
    );
    assert_eq!(relay_status(&relay, ALICE).await, 200, "alice still works");

    // Key names are unique across the config and the store.
    assert_error(
        &admin.post("/admin/api/keys", json!({"name": "alice"})).await,
        409,
        "conflict_error",
    );
    let carol = admin.post("/admin/api/keys", json!({"name": "carol"})).await;
    assert_eq!(carol.status, 201);
    assert_error(
        &admin.post("/admin/api/keys", json!({"name": "carol"})).await,
        409,
        "conflict_error",
    );
    let dave = admin
        .post("/admin/api/keys", json!({"name": "dave", "enabled": false}))
        .await;
    assert_eq!(dave.status, 201);
    assert_eq!(dave.json["enabled"], false);
    let dave_key = dave.json["key"].as_str().unwrap();
    assert_eq!(relay_status(&relay, dave_key).await, 401, "created disabled");
    let dave_id = dave.json["id"].as_str().unwrap();
    assert_error(
        &admin
            .patch(&format!("/admin/api/keys/{dave_id}"), json!({"name": "carol"}))
            .await,
        409,
        "conflict_error",
    );
    let same = admin
        .patch(&format!("/admin/api/keys/{dave_id}"), json!({"name": "dave"}))
        .await;
    assert_eq!(same.status, 200, "keeping one's own name is no conflict");

    // The configured account: listed, masked, read-only, its name taken.
    let accounts = admin.get("/admin/api/accounts").await;
    assert_eq!(accounts.status, 200);
    let main = &accounts.json["accounts"][0];
    assert_eq!(main["id"], "config.main");
    assert_eq!(main["source"], "config");
    assert_eq!(main["kind"], "claude-console");
    assert_eq!(main["base_url"], mock.url().as_str());
    let masked = main["api_key"].as_str().unwrap();
    assert!(masked.contains('…'), "{masked}");
    assert!(
        !accounts.text.contains("sk-ant-api03-upstream-main"),
        "secret leaked: {}",
        accounts.text
    );
    assert_error(
        &admin
            .patch("/admin/api/accounts/config.main", json!({"enabled": false}))
            .await,
        409,
        "conflict_error",
    );
    assert_error(
        &admin.delete("/admin/api/accounts/config.main").await,
        409,
        "conflict_error",
    );
    let dup = admin
        .post(
            "/admin/api/accounts",
            json!({"name": "main", "kind": "claude-console", "api_key": "sk-ant-api03-other"}),
        )
        .await;
    assert_error(&dup, 409, "conflict_error");
}

#[tokio::test]
async fn account_created_through_the_api_serves_at_once_and_its_key_stays_secret() {
    let mock = MockUpstream::start().await;
    // No accounts in the config: only the one created below can serve.
    let relay = RelayProcess::start("").await;
    let admin = Admin::login(&relay).await;
    assert_ne!(relay_status(&relay, ALICE).await, 200, "no account yet");

    let secret = "sk-ant-api03-created-through-admin-9f8e7d6c5b4a";
    let created = admin
        .post(
            "/admin/api/accounts",
            json!({
                "name": "via-api",
                "kind": "claude-console",
                "base_url": mock.url(),
                "api_key": secret,
                "priority": 10,
                "model_map": {"claude-sonnet-4-5": "claude-sonnet-4-5-20250929"},
            }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert!(!created.text.contains(secret), "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_string();
    assert!(uuid_like(&id));
    assert_eq!(created.json["source"], "admin");
    assert_eq!(created.json["priority"], 10);
    assert_eq!(created.json["enabled"], true);
    assert_eq!(created.json["models"], Value::Null);
    assert_eq!(created.json["base_url"], mock.url().as_str());
    assert_eq!(created.json["api_key"], "sk-a…5b4a");

    // The relay uses it for the very next request, with the account's credential.
    assert_eq!(relay_status(&relay, ALICE).await, 200);
    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-api-key").as_deref(), Some(secret));
    assert_eq!(
        seen[0].json()["model"],
        "claude-sonnet-4-5-20250929",
        "model_map applied"
    );

    // Listing and reading show the masked form only.
    for path in ["/admin/api/accounts".to_string(), format!("/admin/api/accounts/{id}")] {
        let a = admin.get(&path).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert!(!a.text.contains(secret), "secret leaked by {path}: {}", a.text);
        assert!(!a.text.contains("created-through-admin"), "{}", a.text);
        assert!(a.text.contains("sk-a…5b4a"), "{}", a.text);
    }

    // Nothing under the data directory holds the plaintext credential.
    let mut files = Vec::new();
    files_under(&relay.dir.path().join("data"), &mut files);
    assert!(!files.is_empty());
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "{} holds the plaintext upstream key",
            f.display()
        );
    }

    assert!(
        !relay.log_text().contains(secret),
        "the log holds the plaintext upstream key"
    );

    // Replacing the credential takes effect at once too.
    let secret2 = "sk-ant-api03-replacement-key-0000aaaa1111";
    let upd = admin
        .patch(
            &format!("/admin/api/accounts/{id}"),
            json!({"api_key": secret2, "models": null}),
        )
        .await;
    assert_eq!(upd.status, 200, "{}", upd.text);
    assert!(!upd.text.contains(secret2));
    assert_eq!(upd.json["api_key"], "sk-a…1111");
    assert_eq!(relay_status(&relay, ALICE).await, 200);
    assert_eq!(mock.seen()[1].header("x-api-key").as_deref(), Some(secret2));

    // Disabled, then deleted: the relay has nothing to send to.
    let off = admin
        .patch(&format!("/admin/api/accounts/{id}"), json!({"enabled": false}))
        .await;
    assert_eq!(off.status, 200);
    assert_ne!(relay_status(&relay, ALICE).await, 200);
    assert_eq!(mock.hits(), 2);
    assert_eq!(admin.delete(&format!("/admin/api/accounts/{id}")).await.status, 204);
    assert_error(
        &admin.get(&format!("/admin/api/accounts/{id}")).await,
        404,
        "not_found_error",
    );
    let list = admin.get("/admin/api/accounts").await;
    assert_eq!(list.json["accounts"], json!([]));
}

#[tokio::test]
async fn usage_reports_relayed_requests() {
    let mock = MockUpstream::start().await;
    let relay = relay_with_account(&mock).await;
    let admin = Admin::login(&relay).await;
    let c = client();
    for _ in 0..3 {
        let r = c
            .post(format!("{}/v1/messages", relay.base()))
            .header("x-api-key", ALICE)
            .header("content-type", "application/json")
            .body(BODY_STREAM)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }

    // Statistics are flushed every 200 ms in tests.
    let usage = eventually(|| async {
        let a = admin
            .get("/admin/api/usage?dimension=key&id=config.alice&granularity=minute")
            .await;
        (a.status == 200 && a.json["totals"]["requests"] == 3).then_some(a.json)
    })
    .await;
    let t = &usage["totals"];
    assert_eq!(t["input_tokens"], 63, "{usage}");
    assert_eq!(t["output_tokens"], 21);
    assert_eq!(t["cache_read_tokens"], 9);
    assert_eq!(t["cache_write_5m_tokens"], 15);
    assert_eq!(t["cache_write_1h_tokens"], 0);
    assert_eq!(t["errors"], 0);
    assert!(t["cost_usd"].as_f64().unwrap() > 0.0, "{usage}");
    assert_eq!(usage["dimension"], "key");
    assert_eq!(usage["id"], "config.alice");
    assert_eq!(usage["granularity"], "minute");
    let to = usage["to"].as_i64().unwrap();
    assert_eq!(usage["from"].as_i64().unwrap(), to - 24 * 3600, "default range: a day");
    let series = usage["series"].as_array().unwrap();
    assert!((1440..=1441).contains(&series.len()), "{}", series.len());
    let sum: u64 = series.iter().map(|b| b["requests"].as_u64().unwrap()).sum();
    assert_eq!(sum, 3, "totals are the sum of the series");
    assert!(
        series
            .windows(2)
            .all(|w| w[1]["start"].as_i64() > w[0]["start"].as_i64())
    );

    // Hourly (the default granularity), by model and by account.
    let model = admin.get("/admin/api/usage?dimension=model&id=claude-sonnet-4-5").await;
    assert_eq!(model.status, 200, "{}", model.text);
    assert_eq!(model.json["granularity"], "hour");
    assert_eq!(model.json["totals"]["requests"], 3);
    assert!(model.json["totals"]["cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(model.json["totals"]["unpriced_requests"], 0);
    let account = admin
        .get("/admin/api/usage?dimension=account&id=config.main&granularity=day")
        .await;
    assert_eq!(account.json["totals"]["output_tokens"], 21, "{}", account.text);

    // Explicit range around now, and a range with nothing in it.
    let now = chrono_now();
    let ranged = admin
        .get(&format!(
            "/admin/api/usage?dimension=key&id=config.alice&granularity=hour&from={}&to={}",
            now - 7200,
            now + 60
        ))
        .await;
    assert_eq!(ranged.json["totals"]["requests"], 3, "{}", ranged.text);
    let empty = admin
        .get("/admin/api/usage?dimension=key&id=config.alice&granularity=day&from=86400&to=864000")
        .await;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.json["totals"]["requests"], 0);
    assert_eq!(empty.json["series"].as_array().unwrap().len(), 9);

    // Without an id: all-time totals of every subject.
    let by_key = admin.get("/admin/api/usage?dimension=key").await;
    assert_eq!(by_key.status, 200);
    assert_eq!(by_key.json["dimension"], "key");
    assert_eq!(by_key.json["totals_by_subject"]["config.alice"]["requests"], 3);
    assert_eq!(by_key.json["totals_by_subject"]["config.alice"]["input_tokens"], 63);

    let summary = admin.get("/admin/api/usage/summary").await;
    assert_eq!(summary.status, 200, "{}", summary.text);
    assert_eq!(summary.json["totals"]["requests"], 3);
    assert!(summary.json["totals"]["cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(
        summary.json["by_dimension"]["model"]["claude-sonnet-4-5"]["requests"],
        3
    );
    assert_eq!(summary.json["by_dimension"]["account"]["config.main"]["requests"], 3);
    assert_eq!(summary.json["names"]["config.alice"], "alice");
    assert_eq!(summary.json["names"]["config.main"], "main");
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn validation_errors_are_400_with_the_error_shape() {
    let relay = RelayProcess::start("").await;
    let admin = Admin::login(&relay).await;

    let long = "x".repeat(101);
    for body in [
        json!({}),
        json!({"name": ""}),
        json!({"name": "   "}),
        json!({"name": long}),
        json!({"name": 5}),
        json!({"name": "ok", "enabled": "yes"}),
        json!({"name": "ok", "key": "cr_chosen_by_client"}),
        json!(["name"]),
    ] {
        let a = admin.post("/admin/api/keys", body.clone()).await;
        assert_error(&a, 400, "invalid_request_error");
        assert!(!a.json["error"]["message"].as_str().unwrap().is_empty(), "{body}");
    }
    let unknown = admin
        .post("/admin/api/keys", json!({"name": "ok", "colour": "red"}))
        .await;
    assert_error(&unknown, 400, "invalid_request_error");
    assert!(unknown.text.contains("colour"), "names the field: {}", unknown.text);

    // Not JSON at all, or nothing.
    for raw in ["{name: x}", ""] {
        let a = answer(
            client()
                .post(format!("{}/admin/api/keys", relay.admin()))
                .bearer_auth(&admin.token)
                .header("content-type", "application/json")
                .body(raw)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(&a, 400, "invalid_request_error");
    }

    let ok = admin.post("/admin/api/keys", json!({"name": &long[..100]})).await;
    assert_eq!(ok.status, 201, "100 characters are fine: {}", ok.text);
    let id = ok.json["id"].as_str().unwrap();
    for body in [json!({"name": ""}), json!({"enabled": 1}), json!({"hint": "x"})] {
        let a = admin.patch(&format!("/admin/api/keys/{id}"), body).await;
        assert_error(&a, 400, "invalid_request_error");
    }

    let good = json!({"name": "acct", "kind": "claude-console", "base_url": "http://127.0.0.1:9", "api_key": "sk-ant-api03-x"});
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = good.clone();
        b.as_object_mut().unwrap().remove(k);
        b
    };
    for body in [
        with("base_url", json!("ftp://example.com")),
        with("base_url", json!("not a url")),
        with("base_url", json!("https://user:pw@example.com")),
        with("kind", json!("bedrock")),
        with("api_key", json!("")),
        with("api_key", json!("sk-ant\nsplit")),
        with("name", json!("")),
        with("priority", json!(-1)),
        with("models", json!([""])),
        with("model_map", json!({"a": ""})),
        with("secret", json!("x")),
        without("api_key"),
        without("kind"),
        without("name"),
    ] {
        let a = admin.post("/admin/api/accounts", body.clone()).await;
        assert_eq!(a.status, 400, "{body} → {}", a.text);
        assert_error(&a, 400, "invalid_request_error");
    }
    let acct = admin.post("/admin/api/accounts", good.clone()).await;
    assert_eq!(acct.status, 201, "{}", acct.text);
    let aid = acct.json["id"].as_str().unwrap();
    for body in [
        json!({"base_url": "gopher://x"}),
        json!({"api_key": " "}),
        json!({"id": "other"}),
        json!({"priority": "high"}),
    ] {
        let a = admin.patch(&format!("/admin/api/accounts/{aid}"), body.clone()).await;
        assert_eq!(a.status, 400, "{body} → {}", a.text);
        assert_error(&a, 400, "invalid_request_error");
    }

    // Unknown ids.
    assert_error(&admin.get("/admin/api/accounts/nope").await, 404, "not_found_error");
    assert_error(
        &admin.patch("/admin/api/accounts/nope", json!({"enabled": false})).await,
        404,
        "not_found_error",
    );
    assert_error(&admin.delete("/admin/api/accounts/nope").await, 404, "not_found_error");
    assert_error(
        &admin.get("/admin/api/keys/config.nobody").await,
        404,
        "not_found_error",
    );

    // Usage parameters.
    for q in [
        "",
        "?dimension=user",
        "?dimension=key&id=config.alice&granularity=week",
        "?dimension=key&id=config.alice&granularity=total",
        "?dimension=key&id=config.alice&from=100&to=100",
        "?dimension=key&id=config.alice&from=200&to=100",
        "?dimension=key&id=config.alice&from=abc",
        "?dimension=key&id=config.alice&granularity=minute&from=0&to=120001",
        "?dimension=key&id=",
    ] {
        let a = admin.get(&format!("/admin/api/usage{q}")).await;
        assert_error(&a, 400, "invalid_request_error");
    }
    let max = admin
        .get("/admin/api/usage?dimension=key&id=config.alice&granularity=minute&from=0&to=120000")
        .await;
    assert_eq!(max.status, 200, "2000 buckets are fine: {}", max.text);
    assert_eq!(max.json["series"].as_array().unwrap().len(), 2000);

    // Unknown endpoints and methods answer in the same shape.
    assert_error(&admin.get("/admin/api/nothing").await, 404, "not_found_error");
    let a = admin.call(Method::PUT, "/admin/api/keys", Some(json!({}))).await;
    assert_eq!(a.status, 405);
}

#[tokio::test]
async fn openapi_describes_every_route() {
    let relay = RelayProcess::start("").await;
    let c = client();
    let r = c
        .get(format!("{}/admin/api/openapi.json", relay.admin()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "served without a session");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();

    let expected = [
        ("get", "/health"),
        ("get", "/metrics"),
        ("get", "/admin/api/openapi.json"),
        ("post", "/admin/api/login"),
        ("post", "/admin/api/logout"),
        ("get", "/admin/api/keys"),
        ("post", "/admin/api/keys"),
        ("get", "/admin/api/keys/{id}"),
        ("patch", "/admin/api/keys/{id}"),
        ("delete", "/admin/api/keys/{id}"),
        ("get", "/admin/api/keys/{id}/sessions"),
        ("get", "/admin/api/keys/{id}/sessions/{session_id}"),
        ("get", "/admin/api/accounts"),
        ("post", "/admin/api/accounts"),
        ("get", "/admin/api/accounts/{id}"),
        ("patch", "/admin/api/accounts/{id}"),
        ("delete", "/admin/api/accounts/{id}"),
        ("post", "/admin/api/accounts/{id}/reset"),
        ("get", "/admin/api/accounts/{id}/events"),
        ("post", "/admin/api/accounts/{id}/refresh"),
        ("post", "/admin/api/accounts/{id}/test"),
        ("get", "/admin/api/me"),
        ("post", "/admin/api/keys/batch"),
        ("get", "/admin/api/keys/{id}/limits"),
        ("get", "/admin/api/keys/{id}/models"),
        ("post", "/admin/api/keys/{id}/rotate"),
        ("get", "/admin/api/groups"),
        ("post", "/admin/api/groups/{name}/rename"),
        ("post", "/admin/api/accounts/claude-oauth/authorize"),
        ("post", "/admin/api/accounts/claude-oauth/exchange"),
        ("post", "/admin/api/accounts/claude-oauth/import"),
        ("post", "/admin/api/accounts/openai-oauth/authorize"),
        ("post", "/admin/api/accounts/openai-oauth/exchange"),
        ("post", "/admin/api/accounts/openai-oauth/import"),
        ("post", "/admin/api/accounts/gemini-oauth/authorize"),
        ("post", "/admin/api/accounts/gemini-oauth/exchange"),
        ("post", "/admin/api/accounts/gemini-oauth/import"),
        ("get", "/admin/api/usage"),
        ("get", "/admin/api/usage/summary"),
        ("get", "/admin/api/usage/global"),
        ("get", "/admin/api/usage/top"),
        ("get", "/admin/api/usage/range"),
        ("get", "/admin/api/usage/export.csv"),
        ("get", "/admin/api/overview"),
        ("get", "/admin/api/live"),
        ("post", "/admin/api/password"),
        ("get", "/admin/api/sessions"),
        ("delete", "/admin/api/sessions/{id}"),
        ("get", "/admin/api/users"),
        ("post", "/admin/api/users"),
        ("patch", "/admin/api/users/{username}"),
        ("delete", "/admin/api/users/{username}"),
        ("get", "/admin/api/settings"),
        ("patch", "/admin/api/settings"),
        ("get", "/admin/api/system"),
        ("get", "/admin/api/audit"),
        ("get", "/admin/api/audit/export.csv"),
        ("post", "/admin/api/export"),
        ("post", "/admin/api/import"),
        ("get", "/admin/api/alerts"),
        ("post", "/admin/api/alerts/test"),
        ("post", "/admin/api/import/crs"),
        ("get", "/admin/api/requests"),
        ("get", "/admin/api/requests/{id}"),
        ("get", "/admin/api/requests/export.csv"),
    ];
    for (m, p) in expected {
        assert!(doc["paths"][p][m].is_object(), "{m} {p} is not documented");
    }

    // Every documented operation is served: without a session each answers something other
    // than "no such route" (404) or "wrong method" (405).
    let mut count = 0;
    for (p, item) in paths {
        for m in item.as_object().unwrap().keys() {
            if m == "parameters" {
                continue;
            }
            let path = p
                .replace("{id}", "some-id")
                .replace("{session_id}", "some-session")
                .replace("{name}", "some-group")
                .replace("{username}", "some-user");
            let url = format!("{}{}", relay.admin(), path);
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            let r = c.request(method, &url).send().await.unwrap();
            let s = r.status().as_u16();
            assert!(s != 404 && s != 405, "{m} {p} documented but answers {s}");
            let op = &item[m];
            assert!(op["responses"].is_object(), "{m} {p} has no responses");
            if op["security"] != json!([]) {
                assert_eq!(s, 401, "{m} {p} must require a session");
            }
            count += 1;
        }
    }
    assert_eq!(count, expected.len(), "documented operations");
}
