//! The web panel in a real browser: the relay binary built with the cargo feature `panel`, mock
//! upstreams, seeded usage, then the journeys of `web/tests/journeys.mjs` driven through Debian's
//! Chromium by `playwright-core` (web/node_modules; `npm ci --prefix web`). Screenshots of every
//! page in both themes go to `target/panel-screenshots/` (or `RELAY_PANEL_SCREENSHOTS`).
//!
//! Also, without a browser: the panel's HTTP rules on both listeners (cache headers, ETag/304,
//! SPA fallback, refused paths, CSP, `/stats` switched off by config).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg(feature = "panel")]

mod support;

use std::path::PathBuf;

use serde_json::{Value, json};
use support::mock::MockUpstream;
use support::oauth_mock::MockOAuth;
use support::{ADMIN_PASSWORD, ALICE, RelayProcess, account_yaml, client, eventually};

const MODELS: [&str; 2] = ["claude-sonnet-4-5", "claude-haiku-4-5"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn screenshots() -> PathBuf {
    std::env::var_os("RELAY_PANEL_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo().join("target"));
            target.join("panel-screenshots")
        })
}

async fn start(mock: &MockUpstream, extra: &str) -> RelayProcess {
    start_with(mock, mock, extra).await
}

/// Accounts `main` (on `main_mock`) and `backup` (on `mock`, a lower priority), from relay.yaml.
async fn start_with(main_mock: &MockUpstream, mock: &MockUpstream, extra: &str) -> RelayProcess {
    let accounts = format!(
        "accounts:\n{}{}",
        account_yaml("main", &main_mock.url(), ""),
        account_yaml("backup", &mock.url(), ", priority: 60")
    );
    RelayProcess::start(&format!("{accounts}{extra}")).await
}

async fn admin_call(
    relay: &RelayProcess,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let mut req = client()
        .request(method, format!("{}/admin/api{path}", relay.admin()))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    assert!(res.status().is_success(), "{path}: {}", res.status());
    res.json().await.unwrap()
}

async fn message(relay: &RelayProcess, key: &str, model: &str) -> u16 {
    client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn panel_http_rules_on_both_listeners() {
    let mock = MockUpstream::start().await;
    let relay = start(&mock, "").await;
    let c = client();
    let get = |url: String| {
        let c = c.clone();
        async move { c.get(url).send().await.unwrap() }
    };
    let index = get(format!("{}/ui/", relay.admin())).await;
    assert_eq!(index.status(), 200);
    assert_eq!(index.headers()["cache-control"], "no-cache");
    assert!(
        index.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        index.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(index.headers()["x-content-type-options"], "nosniff");
    let etag = index.headers()["etag"].to_str().unwrap().to_string();
    let html = index.text().await.unwrap();
    let asset = html
        .split("src=\"")
        .nth(2)
        .or_else(|| html.split("src=\"").nth(1))
        .unwrap();
    let asset = asset.split('"').next().unwrap().to_string();
    assert!(asset.starts_with("/ui/assets/"), "{asset}");
    let js = get(format!("{}{asset}", relay.admin())).await;
    assert_eq!(js.status(), 200);
    assert_eq!(js.headers()["cache-control"], "public, max-age=31536000, immutable");
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let again = c
        .get(format!("{}/ui/", relay.admin()))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    // SPA routes get the page; missing files do not.
    let route = get(format!("{}/ui/keys", relay.admin())).await;
    assert_eq!(route.status(), 200);
    assert_eq!(route.text().await.unwrap(), html);
    assert_eq!(
        get(format!("{}/ui/assets/nope-123.js", relay.admin())).await.status(),
        404
    );
    assert_eq!(get(format!("{}/ui/a%5Cb", relay.admin())).await.status(), 400);
    assert_eq!(get(format!("{}/ui/a/..%2F..%2Fx", relay.admin())).await.status(), 400);
    let bare = c.get(format!("{}/ui", relay.admin())).send().await.unwrap();
    assert!(bare.status() == 200 || bare.url().path() == "/ui/", "{}", bare.status());
    // The API and metrics are not shadowed.
    assert_eq!(get(format!("{}/metrics", relay.admin())).await.status(), 200);
    let api = get(format!("{}/admin/api/keys", relay.admin())).await;
    assert_eq!(api.status(), 401);
    // /stats on the relay listener, with its own assets; never the admin page.
    let stats = get(format!("{}/stats", relay.base())).await;
    assert_eq!(stats.status(), 200);
    assert!(
        stats.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    let stats_html = stats.text().await.unwrap();
    assert!(stats_html.contains("/stats/assets/"), "{stats_html}");
    assert_ne!(stats_html, html);
    assert_eq!(get(format!("{}/stats/index.html", relay.base())).await.status(), 404);
    assert_eq!(get(format!("{}/ui/", relay.base())).await.status(), 404);
    drop(relay);

    // Switched off: /stats is an unknown path like any other.
    let off = start(&mock, "stats_page: false\n").await;
    assert_eq!(get(format!("{}/stats", off.base())).await.status(), 404);
}

#[tokio::test]
async fn panel_journeys_in_chromium() {
    let chromium = std::env::var("RELAY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's chromium (apt-get install -y chromium)"
    );
    assert!(
        repo().join("web/node_modules/playwright-core").is_dir(),
        "web/node_modules is missing: run `npm ci --prefix web`"
    );
    let mock = MockUpstream::start().await;
    let main_mock = MockUpstream::start().await;
    let oauth = MockOAuth::start().await;
    let providers = format!(
        "providers:\n  anthropic:\n    oauth:\n      authorize_url: \"{}\"\n      token_url: \"{}\"\n      profile_url: \"{}\"\n      usage_url: \"{}\"\n      refresh_check: 1h\n      usage_poll: 0\n",
        oauth.authorize_url(),
        oauth.token_url(),
        oauth.profile_url(),
        oauth.usage_url()
    );
    // One refused request is enough to bench an account (the health journey).
    let scheduler = "scheduler:\n  failover:\n    evidence_keys: 1\n";
    let relay = start_with(&main_mock, &mock, &format!("{providers}{scheduler}")).await;
    let token = relay.admin_token().await;
    let bob = admin_call(
        &relay,
        &token,
        reqwest::Method::POST,
        "/keys",
        Some(json!({"name": "bob"})),
    )
    .await;
    let bob_key = bob["key"].as_str().unwrap().to_string();
    // 50 requests over 2 keys and 2 models. `main` answers the first with 529, so it cools down
    // (the health journey) and `backup` serves it.
    main_mock.set_status(Some(529));
    for i in 0..50 {
        let key = if i % 2 == 0 { ALICE } else { bob_key.as_str() };
        assert_eq!(message(&relay, key, MODELS[i / 2 % 2]).await, 200);
        main_mock.set_status(None);
    }
    // `main` (the first by priority) saw only the refused request, then cooled down.
    assert_eq!(main_mock.hits(), 1);
    let summary = eventually(|| {
        let relay = &relay;
        let token = token.clone();
        async move {
            let s = admin_call(relay, &token, reqwest::Method::GET, "/usage/summary", None).await;
            (s["totals"]["requests"] == 50).then_some(s)
        }
    })
    .await;
    let cost = summary["totals"]["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0);

    let shots = screenshots();
    std::fs::create_dir_all(&shots).unwrap();
    // Async, so that the mock upstreams (on this test's runtime) keep answering meanwhile.
    let status = tokio::process::Command::new("node")
        .arg(repo().join("web/tests/journeys.mjs"))
        .env("ADMIN_URL", relay.admin())
        .env("RELAY_URL", relay.base())
        .env("MOCK_URL", mock.url())
        .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("BOB_KEY", &bob_key)
        .env("EXPECT_REQUESTS", "50")
        .env("EXPECT_COST", cost.to_string())
        .env("CHROMIUM", &chromium)
        .env("SCREENSHOT_DIR", &shots)
        .kill_on_drop(true)
        .status()
        .await
        .expect("node runs (Node.js 20+ is needed for the browser tests)");
    assert!(
        status.success(),
        "browser journeys failed; relay log:\n{}",
        relay.log_text()
    );
}
