//! Administrators with roles, their sessions and passwords, and the audit trail, through the real
//! binary: every documented admin endpoint is called as each role, and each answer is checked
//! against what the role may do; changes leave audit records with field diffs and no secrets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{ADMIN_PASSWORD, RelayProcess, client, redis_cleanup, redis_prefix, redis_url};

const ROUTES: &str = include_str!("../src/admin/openapi.json");

struct Caller {
    base: String,
    token: String,
}

async fn login(relay: &RelayProcess, user: &str, password: &str) -> reqwest::Response {
    client()
        .post(format!("{}/admin/api/login", relay.admin()))
        .header("user-agent", "roles-test/1.0")
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap()
}

impl Caller {
    async fn new(relay: &RelayProcess, user: &str, password: &str) -> Caller {
        let r = login(relay, user, password).await;
        assert_eq!(r.status(), 200, "login of {user}");
        let v: Value = r.json().await.unwrap();
        Caller {
            base: relay.admin(),
            token: v["token"].as_str().unwrap().to_string(),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut rb = client()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

/// What a role may call: `Some(true)` allowed, `Some(false)` refused, by method and route.
fn allowed(role: &str, method: &str, route: &str) -> bool {
    let rank = |r: &str| match r {
        "viewer" => 0,
        "operator" => 1,
        _ => 2,
    };
    let own = [
        "/admin/api/me",
        "/admin/api/logout",
        "/admin/api/password",
        "/admin/api/sessions",
        "/admin/api/sessions/{id}",
    ];
    if own.contains(&route) {
        return true;
    }
    let admin_only = ["users", "settings", "audit", "export", "import", "alerts"]
        .iter()
        .any(|p| {
            let p = format!("/admin/api/{p}");
            route == p || route.starts_with(&format!("{p}/"))
        })
        || route.ends_with("export.csv");
    let need = if admin_only {
        2
    } else if method == "get" {
        0
    } else if ["/admin/api/keys", "/admin/api/accounts", "/admin/api/groups"]
        .iter()
        .any(|p| route == *p || route.starts_with(&format!("{p}/")))
    {
        1
    } else {
        2
    };
    rank(role) >= need
}

/// Every documented admin route as each role: a refused call is 403 `permission_error` and
/// changes nothing; an allowed one is never 401 or 403.
async fn every_route_as_each_role(relay: &RelayProcess) {
    let admin = Caller::new(relay, "admin", ADMIN_PASSWORD).await;
    for (name, role) in [("vera", "viewer"), ("otto", "operator"), ("ada", "admin")] {
        let (s, v) = admin
            .call(
                Method::POST,
                "/admin/api/users",
                Some(json!({"username": name, "password": format!("{name}-password-1"), "role": role})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["role"], role);
        assert!(v.get("password_hash").is_none(), "{v}");
    }
    let doc: Value = serde_json::from_str(ROUTES).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (name, role) in [("vera", "viewer"), ("otto", "operator"), ("ada", "admin")] {
        let me = Caller::new(relay, name, &format!("{name}-password-1")).await;
        let (s, v) = me.call(Method::GET, "/admin/api/me", None).await;
        assert_eq!((s.as_u16(), v["role"].as_str()), (200, Some(role)), "{v}");
        for (route, item) in paths {
            if !route.starts_with("/admin/api/") || route == "/admin/api/login" || route == "/admin/api/logout" {
                continue;
            }
            for method in item.as_object().unwrap().keys() {
                if method == "parameters" {
                    continue;
                }
                // Placeholders that name nothing: an allowed write is then a 404 or 400, never a
                // change; a refused one must be 403 whatever it names.
                let path = route
                    .replace("{id}", "no-such-id")
                    .replace("{name}", "no-such-group")
                    .replace("{username}", "no-such-user")
                    .replace("{session_id}", "no-such-session");
                let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let body = (m != Method::GET && m != Method::DELETE).then(|| json!({}));
                let (s, v) = me.call(m, &path, body).await;
                let ok = allowed(role, method, route);
                if ok {
                    assert!(
                        s != StatusCode::FORBIDDEN && s != StatusCode::UNAUTHORIZED,
                        "{role} {method} {route}: {s} {v}"
                    );
                } else {
                    assert_eq!(s, StatusCode::FORBIDDEN, "{role} {method} {route}: {v}");
                    assert_eq!(v["error"]["type"], "permission_error", "{v}");
                    assert!(v["error"]["message"].as_str().unwrap().contains(role), "{v}");
                }
            }
        }
    }

    // Real calls, beyond placeholders: the viewer reads keys but cannot create one; the operator
    // creates, changes and deletes one but cannot create users or export; the admin does.
    let viewer = Caller::new(relay, "vera", "vera-password-1").await;
    let operator = Caller::new(relay, "otto", "otto-password-1").await;
    assert_eq!(viewer.call(Method::GET, "/admin/api/keys", None).await.0, 200);
    let (s, _) = viewer
        .call(Method::POST, "/admin/api/keys", Some(json!({"name": "by-viewer"})))
        .await;
    assert_eq!(s, 403);
    let (s, key) = operator
        .call(Method::POST, "/admin/api/keys", Some(json!({"name": "by-operator"})))
        .await;
    assert_eq!(s, 201, "{key}");
    let id = key["id"].as_str().unwrap().to_string();
    let (s, _) = operator
        .call(
            Method::PATCH,
            &format!("/admin/api/keys/{id}"),
            Some(json!({"name": "by-operator-2", "rate_limit": {"requests": 60, "window_minutes": 1}})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = operator
        .call(
            Method::POST,
            "/admin/api/users",
            Some(json!({"username": "x", "password": "0123456789", "role": "admin"})),
        )
        .await;
    assert_eq!(s, 403);
    assert_eq!(
        operator.call(Method::GET, "/admin/api/usage/export.csv", None).await.0,
        403
    );
    assert_eq!(
        admin
            .call(
                Method::GET,
                "/admin/api/usage/export.csv?dimension=key&granularity=day",
                None
            )
            .await
            .0,
        200
    );
    let (s, _) = viewer
        .call(Method::DELETE, &format!("/admin/api/keys/{id}"), None)
        .await;
    assert_eq!(s, 403);
    let (s, _) = operator
        .call(Method::DELETE, &format!("/admin/api/keys/{id}"), None)
        .await;
    assert_eq!(s, 204);

    // The audit trail names each change with its actor, role and diff; refusals are recorded too.
    let (s, trail) = admin
        .call(Method::GET, "/admin/api/audit?target=by-operator-2&limit=50", None)
        .await;
    assert_eq!(s, 200, "{trail}");
    let records = trail["records"].as_array().unwrap();
    let actions: Vec<&str> = records.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["key.delete", "key.update"], "{trail}");
    let update = &records[1];
    assert_eq!(update["actor"], "otto");
    assert_eq!(update["role"], "operator");
    assert_eq!(update["status"], 200);
    assert_eq!(update["ip"], "127.0.0.1");
    let changes = update["changes"].as_array().unwrap();
    assert!(
        changes.contains(&json!({"field": "name", "from": "by-operator", "to": "by-operator-2"})),
        "{changes:?}"
    );
    assert!(
        changes
            .iter()
            .any(|c| c["field"].as_str().unwrap().starts_with("rate_limit")),
        "{changes:?}"
    );
    let (_, created) = admin
        .call(
            Method::GET,
            &format!("/admin/api/audit?target={id}&action=key.create"),
            None,
        )
        .await;
    let created = &created["records"][0];
    assert_eq!(created["actor"], "otto");
    assert!(
        created["changes"]
            .as_array()
            .unwrap()
            .contains(&json!({"field": "name", "from": null, "to": "by-operator"})),
        "{created}"
    );
    let (_, refused) = admin
        .call(Method::GET, "/admin/api/audit?actor=vera&action=key", None)
        .await;
    let refused: Vec<(&str, u64)> = refused["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["action"].as_str().unwrap(), r["status"].as_u64().unwrap()))
        .collect();
    assert!(refused.contains(&("key.create", 403)), "{refused:?}");
    assert!(refused.contains(&("key.delete", 403)), "{refused:?}");
    // The export was recorded; the user creations name their users and never a password.
    let (_, exports) = admin
        .call(Method::GET, "/admin/api/audit?action=usage.export", None)
        .await;
    let exports: Vec<(&str, u64)> = exports["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["actor"].as_str().unwrap(), r["status"].as_u64().unwrap()))
        .collect();
    assert!(
        exports.contains(&("admin", 200)) && exports.contains(&("otto", 403)),
        "{exports:?}"
    );
    let (_, users) = admin
        .call(Method::GET, "/admin/api/audit?action=user.create", None)
        .await;
    let text = users.to_string();
    assert!(text.contains("\"ada\"") && text.contains("\"vera\""), "{text}");
    for name in ["vera", "otto", "ada"] {
        assert!(!text.contains(&format!("{name}-password-1")), "{text}");
    }
    assert!(!text.contains("argon2"), "{text}");
}

/// Logins (good and bad) are audited; a role change ends the user's sessions; a password change
/// ends the others but not the current one; sessions are listed and revoked.
async fn sessions_and_passwords(relay: &RelayProcess) {
    let admin = Caller::new(relay, "admin", ADMIN_PASSWORD).await;
    let (s, _) = admin
        .call(
            Method::POST,
            "/admin/api/users",
            Some(json!({"username": "sam", "password": "sam-password-1", "role": "operator"})),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(login(relay, "sam", "wrong-password").await.status(), 401);
    let a = Caller::new(relay, "sam", "sam-password-1").await;
    let b = Caller::new(relay, "sam", "sam-password-1").await;
    let (s, mine) = a.call(Method::GET, "/admin/api/sessions", None).await;
    assert_eq!(s, 200);
    let mine = mine["sessions"].as_array().unwrap().clone();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(mine.iter().all(|s| s["username"] == "sam" && s["role"] == "operator"));
    assert_eq!(mine.iter().filter(|s| s["current"] == true).count(), 1);
    assert_eq!(mine[0]["user_agent"], "roles-test/1.0");
    assert_eq!(a.call(Method::GET, "/admin/api/sessions?all=true", None).await.0, 403);
    let (_, all) = admin.call(Method::GET, "/admin/api/sessions?all=true", None).await;
    assert!(all["sessions"].as_array().unwrap().len() >= 3, "{all}");

    // Password change: wrong current refused; then b's session ends, a's goes on.
    let (s, _) = a
        .call(
            Method::POST,
            "/admin/api/password",
            Some(json!({"current_password": "nope-nope-nope", "new_password": "sam-password-2"})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, v) = a
        .call(
            Method::POST,
            "/admin/api/password",
            Some(json!({"current_password": "sam-password-1", "new_password": "sam-password-2"})),
        )
        .await;
    assert_eq!(s, 204, "{v}");
    assert_eq!(a.call(Method::GET, "/admin/api/me", None).await.0, 200);
    assert_eq!(b.call(Method::GET, "/admin/api/me", None).await.0, 401);
    assert_eq!(login(relay, "sam", "sam-password-1").await.status(), 401);
    let c = Caller::new(relay, "sam", "sam-password-2").await;

    // Revoking one's own other session.
    let (_, list) = a.call(Method::GET, "/admin/api/sessions", None).await;
    let other = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == false)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        a.call(Method::DELETE, &format!("/admin/api/sessions/{other}"), None)
            .await
            .0,
        204
    );
    assert_eq!(c.call(Method::GET, "/admin/api/me", None).await.0, 401);
    // Someone else's session is not found for a non-admin.
    let (_, admins) = admin.call(Method::GET, "/admin/api/sessions", None).await;
    let admin_session = admins["sessions"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        a.call(Method::DELETE, &format!("/admin/api/sessions/{admin_session}"), None)
            .await
            .0,
        404
    );

    // A role change ends the user's sessions; the next login carries the new role.
    let (s, v) = admin
        .call(Method::PATCH, "/admin/api/users/sam", Some(json!({"role": "viewer"})))
        .await;
    assert_eq!((s.as_u16(), v["role"].as_str()), (200, Some("viewer")), "{v}");
    assert_eq!(a.call(Method::GET, "/admin/api/me", None).await.0, 401);
    let d = Caller::new(relay, "sam", "sam-password-2").await;
    assert_eq!(d.call(Method::GET, "/admin/api/me", None).await.1["role"], "viewer");
    // Disabled: cannot log in; deleted: gone.
    admin
        .call(Method::PATCH, "/admin/api/users/sam", Some(json!({"disabled": true})))
        .await;
    assert_eq!(login(relay, "sam", "sam-password-2").await.status(), 401);
    assert_eq!(d.call(Method::GET, "/admin/api/me", None).await.0, 401);
    assert_eq!(admin.call(Method::DELETE, "/admin/api/users/sam", None).await.0, 204);
    assert_eq!(admin.call(Method::DELETE, "/admin/api/users/sam", None).await.0, 404);
    // The configuration's admin is read-only here.
    assert_eq!(
        admin
            .call(Method::PATCH, "/admin/api/users/admin", Some(json!({"role": "viewer"})))
            .await
            .0,
        409
    );
    assert_eq!(admin.call(Method::DELETE, "/admin/api/users/admin", None).await.0, 409);

    // Logins are in the trail, failed ones with the name tried, never a password.
    let (_, trail) = admin
        .call(Method::GET, "/admin/api/audit?actor=sam&action=login", None)
        .await;
    let rows: Vec<(String, u64)> = trail["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["action"].as_str().unwrap().to_string(), r["status"].as_u64().unwrap()))
        .collect();
    assert!(rows.contains(&("login.failed".into(), 401)), "{rows:?}");
    assert!(rows.contains(&("login".into(), 200)), "{rows:?}");
    let (_, all) = admin.call(Method::GET, "/admin/api/audit?limit=1000", None).await;
    let text = all.to_string();
    for secret in [
        "sam-password-1",
        "sam-password-2",
        "wrong-password",
        "nope-nope-nope",
        ADMIN_PASSWORD,
    ] {
        assert!(!text.contains(secret), "{secret} in the audit log");
    }
    let (_, pw) = admin
        .call(Method::GET, "/admin/api/audit?action=password.change", None)
        .await;
    assert_eq!(pw["records"][0]["request"]["new_password"], "[redacted]", "{pw}");

    // CSV export with the same filter, newest first, one row per record.
    let r = client()
        .get(format!("{}/admin/api/audit/export.csv?actor=sam", relay.admin()))
        .bearer_auth(&admin.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csv = r.text().await.unwrap();
    let (_, json_rows) = admin
        .call(Method::GET, "/admin/api/audit?actor=sam&limit=1000", None)
        .await;
    assert_eq!(
        csv.lines().count(),
        1 + json_rows["records"].as_array().unwrap().len(),
        "{csv}"
    );
    assert!(csv.starts_with("time,actor,role,ip,action,"));

    // Cursor paging returns every record once.
    let mut cursor: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let q = cursor.as_ref().map_or(String::new(), |c| format!("&cursor={c}"));
        let (_, page) = admin
            .call(Method::GET, &format!("/admin/api/audit?limit=3{q}"), None)
            .await;
        for r in page["records"].as_array().unwrap() {
            seen.push(r["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let total = all["records"].as_array().unwrap().len();
    assert!(seen.len() >= total, "{} < {total}", seen.len());
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no record twice");
    assert_eq!(
        admin.call(Method::GET, "/admin/api/audit?cursor=zzz", None).await.0,
        400
    );
}

#[tokio::test]
async fn roles_sessions_and_audit_on_the_embedded_store() {
    let relay = RelayProcess::start("").await;
    every_route_as_each_role(&relay).await;
    sessions_and_passwords(&relay).await;
}

#[tokio::test]
async fn roles_sessions_and_audit_on_redis() {
    let prefix = redis_prefix();
    let relay = RelayProcess::start(&format!(
        "store: {{ backend: redis, url: \"{}\", prefix: \"{prefix}\" }}\n",
        redis_url()
    ))
    .await;
    every_route_as_each_role(&relay).await;
    sessions_and_passwords(&relay).await;
    drop(relay);
    redis_cleanup(&prefix).await;
}

/// The display currency: from relay.yaml, overridden in the settings and back; shown by `/me` and
/// in the usage CSV beside USD.
#[tokio::test]
async fn a_display_currency_comes_from_the_config_or_the_settings() {
    let relay = RelayProcess::start("currency: { display: EUR, rates: { EUR: 0.5, CNY: 7.0 } }\n").await;
    let admin = Caller::new(&relay, "admin", ADMIN_PASSWORD).await;
    let (_, me) = admin.call(Method::GET, "/admin/api/me", None).await;
    assert_eq!(me["currency"], json!({"code": "EUR", "rate": 0.5}));
    let (_, s) = admin.call(Method::GET, "/admin/api/settings", None).await;
    assert_eq!(s["currency"]["source"], "config");
    for bad in [
        json!({"currency": {"display": "GBP", "rates": {"EUR": 0.9}}}),
        json!({"currency": {"display": "usd"}}),
        json!({"currency": {"display": "CNY", "rates": {"CNY": 0}}}),
        json!({"public_base_url": "relay.example.com"}),
    ] {
        let (st, v) = admin
            .call(Method::PATCH, "/admin/api/settings", Some(bad.clone()))
            .await;
        assert_eq!(st, 400, "{bad}: {v}");
    }
    let (st, s) = admin
        .call(
            Method::PATCH,
            "/admin/api/settings",
            Some(json!({"currency": {"display": "CNY", "rates": {"CNY": 7.25}}, "public_base_url": "https://relay.example.com/"})),
        )
        .await;
    assert_eq!(st, 200, "{s}");
    assert_eq!(s["currency"]["source"], "settings");
    assert_eq!(s["public_base_url"], "https://relay.example.com");
    let (_, me) = admin.call(Method::GET, "/admin/api/me", None).await;
    assert_eq!(me["currency"], json!({"code": "CNY", "rate": 7.25}));
    // The usage CSV gains the cost in the display currency.
    let csv = client()
        .get(format!(
            "{}/admin/api/usage/export.csv?dimension=key&granularity=day",
            relay.admin()
        ))
        .bearer_auth(&admin.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert_eq!(header.last(), Some(&"cost_cny"), "{csv}");
    let usd_col = header.iter().position(|c| *c == "cost_usd").unwrap();
    for row in csv.lines().skip(1) {
        let cols: Vec<&str> = row.split(',').collect();
        let usd: f64 = cols[usd_col].parse().unwrap();
        let cny: f64 = cols.last().unwrap().parse().unwrap();
        assert!((cny - usd * 7.25).abs() < 1e-9, "{row}");
    }
    // The change is audited with its diff; null goes back to relay.yaml's.
    let (_, trail) = admin.call(Method::GET, "/admin/api/audit?action=settings", None).await;
    let changes = trail["records"][0]["changes"].to_string();
    assert!(
        changes.contains("currency.display") && changes.contains("CNY"),
        "{trail}"
    );
    let (_, s) = admin
        .call(Method::PATCH, "/admin/api/settings", Some(json!({"currency": null})))
        .await;
    assert_eq!(s["currency"]["display"], "EUR");
    assert_eq!(
        s["public_base_url"], "https://relay.example.com",
        "an absent field stays"
    );
}

/// `GET /admin/api/system`: the configuration file in use, the store and its health, this
/// instance among the instances; a viewer may read it.
#[tokio::test]
async fn the_system_view_names_the_config_file_and_the_store() {
    let relay = RelayProcess::start("").await;
    let admin = Caller::new(&relay, "admin", ADMIN_PASSWORD).await;
    admin
        .call(
            Method::POST,
            "/admin/api/users",
            Some(json!({"username": "vic", "password": "vic-password-1", "role": "viewer"})),
        )
        .await;
    let viewer = Caller::new(&relay, "vic", "vic-password-1").await;
    let (s, v) = viewer.call(Method::GET, "/admin/api/system", None).await;
    assert_eq!(s, 200, "{v}");
    let conf = std::fs::canonicalize(relay.config_path()).unwrap();
    assert_eq!(v["config_file"], conf.display().to_string());
    assert_eq!(v["store"]["backend"], "embedded");
    assert_eq!(v["store"]["reachable"], true);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let (_, me) = admin.call(Method::GET, "/admin/api/me", None).await;
    assert!(v["instances"].as_array().unwrap().contains(&me["instance"]), "{v}");
    assert_eq!(v["listeners"]["relay"], relay.base().trim_start_matches("http://"));
}
