//! Google accounts for Gemini Code Assist (`gemini-oauth`) through the real binary, against a
//! mock of Google's sign-in and token endpoint and of Code Assist: the sign-in and the import of
//! Gemini CLI's `oauth_creds.json` through the admin API, the discovery of each account's Code
//! Assist project (named by `loadCodeAssist`, or given by onboarding), token refresh in the
//! background (the refresh token kept, as Google does not rotate it), a refused refresh, and
//! re-authorization; through the relay, a refresh and a retry after a 401, and (once the dispatch
//! asks for projects it does not know) a single refresh and a single project lookup for
//! concurrent requests meeting an expired token.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The harness is shared with other suites; its own lint findings are not this suite's business.
#[allow(clippy::doc_lazy_continuation, clippy::type_complexity)]
mod support;

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use support::admin::{Admin, assert_400};
use support::google_mock::{
    CLIENT_ID, CLIENT_SECRET, EMAIL, GoogleMock, ONBOARDED_PROJECT, PROJECT, REDIRECT_URI, SCOPES, Setup, TokenRequest,
    code_assist_sse,
};
use support::{ALICE, RelayProcess, assert_near, client, eventually, now_ms, query};

const AUTHORIZE: &str = "/admin/api/accounts/gemini-oauth/authorize";
const EXCHANGE: &str = "/admin/api/accounts/gemini-oauth/exchange";
const IMPORT: &str = "/admin/api/accounts/gemini-oauth/import";
/// Where Gemini CLI sends Code Assist requests when `CODE_ASSIST_ENDPOINT` is the relay's
/// `/gemini` mount.
const STREAM_PATH: &str = "/gemini/v1internal:streamGenerateContent?alt=sse";

/// The Google provider section with every URL on the mock; onboarding is polled quickly, and the
/// background refresher stays out of the way unless `oauth` says otherwise.
fn config(mock: &GoogleMock, oauth: &str) -> String {
    format!(
        "providers:\n  google:\n    code_assist_base: \"{}\"\n    oauth:\n      authorize_url: \"{}\"\n      token_url: \"{}\"\n      onboard_poll: 100ms\n      onboard_wait: 10s\n      {}\n",
        mock.url(),
        mock.authorize_url(),
        mock.token_url(),
        if oauth.is_empty() { "refresh_check: 1h" } else { oauth }
    )
}

async fn setup() -> (GoogleMock, RelayProcess, Admin) {
    let mock = GoogleMock::start().await;
    let relay = RelayProcess::start(&config(&mock, "")).await;
    let admin = Admin::login(&relay).await;
    (mock, relay, admin)
}

fn refreshes(mock: &GoogleMock) -> Vec<TokenRequest> {
    mock.token_requests()
        .into_iter()
        .filter(|t| t.grant_type == "refresh_token")
        .collect()
}

/// The relay speaks for itself to the token endpoint: a form with Gemini CLI's client id and
/// secret, its own agent.
fn assert_token_request_manners(t: &TokenRequest) {
    assert!(
        t.header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded")),
        "{:?}",
        t.headers
    );
    assert!(
        t.header("user-agent").is_some_and(|u| u.starts_with("claude-relay/")),
        "{:?}",
        t.headers
    );
    assert_eq!(t.field("client_id").as_deref(), Some(CLIENT_ID), "{:?}", t.form);
    assert_eq!(t.field("client_secret").as_deref(), Some(CLIENT_SECRET), "{:?}", t.form);
}

fn assert_clean(mock: &GoogleMock, admin: &Admin, relay: &RelayProcess) {
    admin.assert_none_shows(|text| mock.leaked_in(text));
    let leaked = mock.leaked_in(&relay.log_text());
    assert!(leaked.is_empty(), "the relay's log shows a token: {leaked:?}");
}

/// Imports tokens as Gemini CLI's `oauth_creds.json` holds them, with the account fields `extra`:
/// the view.
async fn import_oauth_creds(admin: &Admin, mock: &GoogleMock, name: &str, expiry_date: i64, extra: Value) -> Value {
    let (access, refresh, id_token, _) = mock.issue_tokens(3600);
    let mut body = json!({
        "name": name,
        "access_token": access,
        "refresh_token": refresh,
        "scope": SCOPES,
        "token_type": "Bearer",
        "id_token": id_token,
        "expiry_date": expiry_date
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let a = admin.post(IMPORT, body).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.json["kind"], "gemini-oauth", "{}", a.text);
    a.json
}

/// The account's `oauth.project_id` once it is there.
async fn found_project(admin: &Admin, id: &str) -> String {
    eventually(|| async {
        let v = admin.account(id).await;
        v["oauth"]["project_id"].as_str().map(String::from)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_creates_an_account_whose_project_is_found_once_and_kept() {
    let (mock, mut relay, admin) = setup().await;

    // The sign-in link: Gemini CLI's client and redirect, offline access with consent, PKCE and
    // state; the client secret stays out of it.
    let before_s = now_ms() / 1000;
    let auth = admin.call(Method::POST, AUTHORIZE, None).await;
    assert_eq!(auth.status, 200, "{}", auth.text);
    assert_near(&auth.json["expires_at"], before_s + 600, 5, "authorization expires_at");
    let url = auth.json["url"].as_str().unwrap().to_string();
    let auth_id = auth.json["authorization_id"].as_str().unwrap().to_string();
    assert!(url.starts_with(&format!("{}?", mock.authorize_url())), "{url}");
    let q = query(&url);
    for (k, v) in [
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT_URI),
        ("scope", SCOPES),
        ("access_type", "offline"),
        ("prompt", "consent"),
        ("code_challenge_method", "S256"),
    ] {
        assert_eq!(q.get(k).map(String::as_str), Some(v), "{k} in {url}");
    }
    assert_eq!(q["code_challenge"].len(), 43, "{url}");
    assert!(q["state"].len() >= 16, "{url}");
    assert!(!url.contains(CLIENT_SECRET), "{url}");
    assert_400(
        &admin.post(AUTHORIZE, json!({"flow": "setup-token"})).await,
        "unknown field",
    );

    // A code that comes with another authorization's state, and another provider's
    // authorization, are refused before any exchange.
    let (code, _, location) = mock.sign_in(&url).await;
    assert!(location.starts_with(REDIRECT_URI), "{location}");
    let a = admin
        .post(
            EXCHANGE,
            json!({"authorization_id": auth_id, "code": format!("{code}#forged"), "name": "gemini-one"}),
        )
        .await;
    assert_400(&a, "state mismatch");
    let chatgpt_id = admin
        .post("/admin/api/accounts/openai-oauth/authorize", json!({}))
        .await
        .json["authorization_id"]
        .clone();
    let a = admin
        .post(
            EXCHANGE,
            json!({"authorization_id": chatgpt_id, "code": code, "name": "gemini-one"}),
        )
        .await;
    assert_400(&a, "another provider's authorization");
    assert_eq!(mock.exchange_count(), 0, "nothing was sent for a refused exchange");

    // The bare code, as Code Assist's page shows it.
    let before = now_ms();
    let created = admin
        .post(
            EXCHANGE,
            json!({"authorization_id": auth_id, "code": code, "name": "gemini-one", "priority": 5, "group": "gemini"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let v = &created.json;
    assert_eq!(v["kind"], "gemini-oauth", "{}", created.text);
    assert_eq!((v["priority"].as_i64(), v["group"].as_str()), (Some(5), Some("gemini")));
    assert_eq!(v["api_key"], Value::Null);
    assert_eq!(v["project_id"], Value::Null, "no project was configured");
    assert_eq!(
        v["base_url"].as_str().map(|s| s.trim_end_matches('/')),
        Some(mock.url().as_str()),
        "providers.google.code_assist_base is the accounts' default base_url"
    );
    let o = &v["oauth"];
    assert!(
        o["access_token"].is_string() && o["refresh_token"].is_string(),
        "{}",
        created.text
    );
    assert_eq!(o["email"], EMAIL, "{}", created.text);
    assert_eq!(o["scopes"], json!(SCOPES.split(' ').collect::<Vec<_>>()));
    assert_near(&o["expires_at"], before + 3_600_000, 60_000, "oauth.expires_at");
    assert_eq!(v["health"]["state"], "active");
    let id = v["id"].as_str().unwrap().to_string();

    let t = mock.token_requests().pop().unwrap();
    assert_eq!((t.grant_type.as_str(), t.status), ("authorization_code", 200));
    assert_token_request_manners(&t);
    assert_eq!(t.field("code").as_deref(), Some(code.as_str()));
    assert_eq!(t.field("redirect_uri").as_deref(), Some(REDIRECT_URI));
    assert!(
        t.field("code_verifier").is_some_and(|c| (43..=128).contains(&c.len())),
        "{:?}",
        t.form
    );

    // The account's project is looked up once, with its token and Gemini CLI's metadata, and
    // kept.
    assert_eq!(found_project(&admin, &id).await, PROJECT);
    let loads = mock.code_assist("loadCodeAssist");
    assert_eq!(loads.len(), 1, "one lookup");
    assert_eq!(loads[0].bearer(), mock.latest_access_token());
    assert_eq!(
        loads[0].json(),
        json!({"metadata": {"ideType": "IDE_UNSPECIFIED", "platform": "PLATFORM_UNSPECIFIED", "pluginType": "GEMINI"}})
    );
    assert!(
        mock.code_assist("onboardUser").is_empty(),
        "a known account is not onboarded"
    );

    // A project given with the sign-in is the account's: nothing is looked up.
    let auth = admin.post(AUTHORIZE, json!({})).await;
    let (_, _, location) = mock.sign_in(auth.json["url"].as_str().unwrap()).await;
    let a = admin
        .post(
            EXCHANGE,
            json!({"authorization_id": auth.json["authorization_id"], "code": location, "name": "gemini-two", "project_id": "my-own-project"}),
        )
        .await;
    assert_eq!(a.status, 201, "the callback URL: {}", a.text);
    assert_eq!(a.json["project_id"], "my-own-project", "{}", a.text);
    assert_eq!(a.json["oauth"]["project_id"], "my-own-project", "{}", a.text);
    let auth = admin.post(AUTHORIZE, json!({})).await;
    let a = admin
        .post(
            EXCHANGE,
            json!({"authorization_id": auth.json["authorization_id"], "code": "4/0Ab-not-issued", "name": "gemini-refused"}),
        )
        .await;
    assert_400(&a, "refused code");
    assert!(!admin.lists("gemini-refused").await);

    // The generic endpoint does not take this kind; a project goes to gemini-oauth accounts only.
    let a = admin
        .post(
            "/admin/api/accounts",
            json!({"name": "by-key", "kind": "gemini-oauth", "api_key": "ya29.x"}),
        )
        .await;
    assert_400(&a, "gemini-oauth through the generic endpoint");
    assert!(
        a.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/admin/api/accounts/gemini-oauth/"),
        "{}",
        a.text
    );
    let a = admin
        .post(
            "/admin/api/accounts/openai-oauth/import",
            json!({"name": "codex", "access_token": "x", "project_id": "p"}),
        )
        .await;
    assert_400(&a, "a project for another kind");

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mock.code_assist("loadCodeAssist").len(), 1, "still one lookup");
    assert_clean(&mock, &admin, &relay);

    // A new process on the same data directory has the project found (saved with the tokens).
    assert!(relay.stop().success());
    let dir = std::mem::replace(&mut relay.dir, tempfile::tempdir().unwrap());
    let relay = RelayProcess::start_in(dir, &config(&mock, ""), &[]).await;
    let admin = Admin::login(&relay).await;
    let v = admin.account(&id).await;
    assert_eq!(v["oauth"]["project_id"], PROJECT, "{v}");
    assert_eq!(v["oauth"]["email"], EMAIL, "{v}");
    assert_eq!(mock.code_assist("loadCodeAssist").len(), 1);
    assert_clean(&mock, &admin, &relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importing_gemini_cli_oauth_creds_takes_its_tokens() {
    let (mock, relay, admin) = setup().await;

    let expiry = now_ms() + 3_000_000;
    let v = import_oauth_creds(&admin, &mock, "from-gemini-cli", expiry, json!({"priority": 7})).await;
    let o = &v["oauth"];
    assert_eq!(o["email"], EMAIL, "{v}");
    assert_eq!(o["expires_at"], expiry, "expiry_date is the expiry");
    assert_eq!(o["scopes"], json!(SCOPES.split(' ').collect::<Vec<_>>()));
    assert!(o["refresh_token"].is_string(), "{v}");
    assert_eq!(v["priority"], 7);
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(found_project(&admin, &id).await, PROJECT);
    assert_eq!(mock.refresh_count(), 0);

    // Refusals: another token type, no access token, another tool's file, a malformed project,
    // an account of another kind, account fields with `account_id`.
    let (access, refresh, _, _) = mock.issue_tokens(3600);
    assert_400(
        &admin
            .post(
                IMPORT,
                json!({"name": "mac", "access_token": access, "token_type": "MAC"}),
            )
            .await,
        "a MAC token",
    );
    assert_400(
        &admin
            .post(IMPORT, json!({"name": "nothing", "refresh_token": refresh}))
            .await,
        "no access token",
    );
    assert_400(
        &admin
            .post(IMPORT, json!({"name": "claude", "claudeAiOauth": {"accessToken": "x"}}))
            .await,
        "a Claude credentials file",
    );
    assert_400(
        &admin
            .post(IMPORT, json!({"name": "codex", "tokens": {"access_token": "x"}}))
            .await,
        "Codex's auth.json",
    );
    assert_400(
        &admin
            .post(
                IMPORT,
                json!({"name": "bad-project", "access_token": access, "project_id": "not a project"}),
            )
            .await,
        "a malformed project",
    );
    let console = admin
        .post(
            "/admin/api/accounts",
            json!({"name": "console", "kind": "claude-console", "api_key": "sk-ant-api03-abcdefghijklmnop"}),
        )
        .await;
    assert_eq!(console.status, 201, "{}", console.text);
    assert_400(
        &admin
            .post(
                IMPORT,
                json!({"account_id": console.json["id"], "access_token": access}),
            )
            .await,
        "an account of another kind",
    );
    assert_400(
        &admin
            .post(
                IMPORT,
                json!({"account_id": id, "access_token": access, "project_id": "other"}),
            )
            .await,
        "account fields with account_id",
    );

    // New tokens for the account: the same account, its project looked up again (the tokens
    // may be another Google account's). (The project found is saved by now.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a = admin
        .post(
            IMPORT,
            json!({"account_id": id, "access_token": access, "refresh_token": refresh, "expiry_date": now_ms() + 3_000_000}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        (a.json["id"].as_str(), a.json["name"].as_str()),
        (Some(id.as_str()), Some("from-gemini-cli"))
    );
    assert_eq!(found_project(&admin, &id).await, PROJECT);
    eventually(|| async { (mock.code_assist("loadCodeAssist").len() == 2).then_some(()) }).await;
    assert_eq!(
        mock.code_assist("loadCodeAssist")[1].bearer().as_deref(),
        Some(access.as_str()),
        "the new token"
    );
    let list = admin.get("/admin/api/accounts").await;
    assert_eq!(list.json["accounts"].as_array().unwrap().len(), 2, "{}", list.text);
    assert_clean(&mock, &admin, &relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_new_to_code_assist_is_onboarded_on_its_default_tier() {
    let (mock, relay, admin) = setup().await;
    mock.set_setup(Setup::Onboarding { polls: 3 });

    let v = import_oauth_creds(&admin, &mock, "new-to-code-assist", now_ms() + 3_000_000, json!({})).await;
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(found_project(&admin, &id).await, ONBOARDED_PROJECT);

    assert_eq!(mock.code_assist("loadCodeAssist").len(), 1);
    let onboard = mock.code_assist("onboardUser");
    assert_eq!(onboard.len(), 1, "onboarded once");
    assert_eq!(
        onboard[0].json(),
        json!({"tierId": "free-tier", "metadata": {"ideType": "IDE_UNSPECIFIED", "platform": "PLATFORM_UNSPECIFIED", "pluginType": "GEMINI"}}),
        "the default tier"
    );
    let polls = mock.code_assist("operations");
    assert_eq!(polls.len(), 3, "the operation is asked about until it is done");
    for p in &polls {
        assert_eq!(
            (p.method.as_str(), p.path_and_query.as_str()),
            ("GET", "/v1internal/operations/onboard-mock-1")
        );
        assert_eq!(p.bearer(), onboard[0].bearer());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mock.code_assist("onboardUser").len(), 1);
    assert_clean(&mock, &admin, &relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_refresher_renews_tokens_ahead_of_expiry_and_keeps_the_refresh_token() {
    let mock = GoogleMock::start().await;
    let mut relay = RelayProcess::start(&config(&mock, "refresh_check: 1s\n      refresh_ahead: 10m")).await;
    let admin = Admin::login(&relay).await;
    let (access, refresh, id_token, _) = mock.issue_tokens(3600);
    let a = admin
        .post(
            IMPORT,
            json!({"name": "background", "access_token": access, "refresh_token": refresh, "id_token": id_token, "expiry_date": now_ms() + 120_000}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let id = a.json["id"].as_str().unwrap().to_string();

    eventually(|| async { (mock.refresh_count() >= 1).then_some(()) }).await;
    let r = &refreshes(&mock)[0];
    assert_eq!(r.status, 200);
    assert_token_request_manners(r);
    assert_eq!(r.field("refresh_token").as_deref(), Some(refresh.as_str()));
    let v = eventually(|| async {
        let v = admin.account(&id).await;
        v["oauth"]["refreshed_at"].is_i64().then_some(v)
    })
    .await;
    assert_near(
        &v["oauth"]["expires_at"],
        now_ms() + 3_600_000,
        60_000,
        "renewed expires_at",
    );
    assert!(
        v["oauth"]["refresh_token"].is_string(),
        "the refresh token is kept: {v}"
    );
    assert_eq!(v["oauth"]["email"], EMAIL, "{v}");
    assert_eq!(v["health"]["state"], "active");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(mock.refresh_count(), 1, "a renewed token is not renewed again");
    assert_clean(&mock, &admin, &relay);

    // A new process that renews tokens an hour ahead presents the same refresh token: it was
    // saved with the renewed access token.
    assert!(relay.stop().success());
    let dir = std::mem::replace(&mut relay.dir, tempfile::tempdir().unwrap());
    let relay = RelayProcess::start_in(dir, &config(&mock, "refresh_check: 1s\n      refresh_ahead: 2h"), &[]).await;
    eventually(|| async { (mock.refresh_count() >= 2).then_some(()) }).await;
    let r = &refreshes(&mock)[1];
    assert_eq!(
        (r.field("refresh_token").as_deref(), r.status),
        (Some(refresh.as_str()), 200)
    );
    let admin = Admin::login(&relay).await;
    assert_clean(&mock, &admin, &relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_marks_the_account_unauthorized_until_it_is_signed_in_again() {
    let mock = GoogleMock::start().await;
    let relay = RelayProcess::start(&config(&mock, "refresh_check: 1s\n      refresh_ahead: 10m")).await;
    let admin = Admin::login(&relay).await;
    mock.fail_refresh(Some((
        400,
        r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#.to_string(),
    )));
    let v = import_oauth_creds(&admin, &mock, "refused", now_ms() + 120_000, json!({})).await;
    let id = v["id"].as_str().unwrap().to_string();

    let v = eventually(|| async {
        let v = admin.account(&id).await;
        (v["health"]["state"] == "unauthorized").then_some(v)
    })
    .await;
    assert!(
        v["health"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("refresh") && r.contains("invalid_grant")),
        "{v}"
    );
    assert_eq!(refreshes(&mock)[0].status, 400);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(mock.refresh_count(), 1, "no new attempt with a refused refresh token");

    // Signing in again gives the same account new tokens and brings it back.
    mock.fail_refresh(None);
    let auth = admin.post(AUTHORIZE, json!({})).await;
    let (code, _, _) = mock.sign_in(auth.json["url"].as_str().unwrap()).await;
    let a = admin
        .post(
            EXCHANGE,
            json!({"authorization_id": auth.json["authorization_id"], "code": code, "account_id": id}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        (a.json["id"].as_str(), a.json["name"].as_str()),
        (Some(id.as_str()), Some("refused"))
    );
    assert_eq!(a.json["health"]["state"], "active", "{}", a.text);
    assert_eq!(a.json["oauth"]["email"], EMAIL);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(mock.refresh_count(), 1, "a fresh token is not renewed");
    assert_eq!(admin.account(&id).await["health"]["state"], "active");
    assert_clean(&mock, &admin, &relay);
}

/// A Code Assist request as Gemini CLI sends it, with `alice`'s key as its bearer token.
fn code_assist_body(prompt: &str) -> String {
    json!({
        "model": "gemini-2.5-pro",
        "project": "the-client-s-own-project",
        "user_prompt_id": "8f1c2a1e-prompt",
        "request": {
            "contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "generationConfig": {"temperature": 0, "topP": 1}
        }
    })
    .to_string()
}

async fn send_stream(http: &reqwest::Client, relay: &RelayProcess, body: &str) -> (u16, String) {
    let r = http
        .post(format!("{}{STREAM_PATH}", relay.base()))
        .bearer_auth(ALICE)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refreshed_and_the_project_found_once_for_concurrent_requests() {
    let (mock, relay, admin) = setup().await;
    mock.set_refresh_delay(Duration::from_millis(400));
    mock.set_load_delay(Duration::from_millis(400));
    // Expired: nothing is looked up at import; the first requests refresh and find the project.
    let v = import_oauth_creds(&admin, &mock, "expired", now_ms() - 60_000, json!({})).await;
    let id = v["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(mock.code_assist("loadCodeAssist").is_empty());

    let http = client();
    let bodies: Vec<String> = (0..20).map(|i| code_assist_body(&format!("request {i}"))).collect();
    let replies = join_all(bodies.iter().map(|b| send_stream(&http, &relay, b))).await;
    for (status, body) in &replies {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body, &code_assist_sse());
    }
    assert_eq!(mock.refresh_count(), 1, "one refresh for all");
    assert_eq!(
        mock.code_assist("loadCodeAssist").len(),
        1,
        "one project lookup for all"
    );
    let new_access = mock.latest_access_token().unwrap();
    let seen = mock.code_assist("streamGenerateContent");
    assert_eq!(seen.len(), 20, "no request was refused and retried");
    for s in &seen {
        assert_eq!(s.bearer().as_deref(), Some(new_access.as_str()));
        assert_eq!(
            s.json()["project"],
            PROJECT,
            "the account's project replaces the client's"
        );
    }
    assert_eq!(found_project(&admin, &id).await, PROJECT);
    assert_clean(&mock, &admin, &relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_from_code_assist_refreshes_once_and_retries_the_request() {
    let (mock, relay, admin) = setup().await;
    let v = import_oauth_creds(&admin, &mock, "revoked", now_ms() + 3_000_000, json!({})).await;
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(found_project(&admin, &id).await, PROJECT);
    let old_access = mock.code_assist("loadCodeAssist")[0].bearer().unwrap();
    mock.revoke_access_tokens();

    let body = code_assist_body("retry me");
    let (status, text) = send_stream(&client(), &relay, &body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text, code_assist_sse());
    assert_eq!(mock.refresh_count(), 1);
    let new_access = mock.latest_access_token().unwrap();
    let seen = mock.code_assist("streamGenerateContent");
    assert_eq!(seen.len(), 2, "the refused attempt and its retry");
    assert_eq!(seen[0].bearer().as_deref(), Some(old_access.as_str()));
    assert_eq!(seen[1].bearer().as_deref(), Some(new_access.as_str()));
    assert_eq!(seen[1].body, seen[0].body, "the same request again");

    let (status, text) = send_stream(&client(), &relay, &body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(mock.refresh_count(), 1, "the new token serves on");
    assert_eq!(admin.account(&id).await["health"]["state"], "active");
    assert_clean(&mock, &admin, &relay);
}

/// The usage totals of one subject, once `requests` requests are counted.
async fn usage_totals(admin: &Admin, relay: &RelayProcess, dimension: &str, id: &str, requests: u64) -> Value {
    let token = relay.admin_token().await;
    let _ = admin;
    eventually(|| async {
        let v: Value = client()
            .get(format!(
                "{}/admin/api/usage?dimension={dimension}&id={id}&granularity=minute",
                relay.admin()
            ))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["totals"]["requests"] == requests).then(|| v["totals"].clone())
    })
    .await
}

#[tokio::test]
async fn gemini_api_and_chat_clients_are_served_by_a_code_assist_account_in_its_envelope() {
    let (mock, relay, admin) = setup().await;
    let v = import_oauth_creds(&admin, &mock, "gca", now_ms() + 3_000_000, json!({})).await;
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(found_project(&admin, &id).await, PROJECT);
    let http = client();
    let request =
        json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"temperature": 0}});

    // A Gemini API stream: the events come out of Code Assist's envelope as they came.
    let r = http
        .post(format!(
            "{}/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            relay.base()
        ))
        .header("x-goog-api-key", ALICE)
        .body(request.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = r.text().await.unwrap();
    let golden = include_str!("fixtures/responses/gemini-stream-alt-sse.sse").replace("\r\n", "\n");
    assert_eq!(got, golden);

    // Not streamed.
    let r = http
        .post(format!("{}/v1beta/models/gemini-2.5-pro:generateContent", relay.base()))
        .header("x-goog-api-key", ALICE)
        .body(request.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["candidates"][0]["content"]["parts"][0]["text"], "Hello from mock upstream!",
        "{v}"
    );
    assert!(v.get("response").is_none(), "{v}");

    // Chat Completions, converted and put in the envelope.
    let r = http
        .post(format!("{}/openai/v1/chat/completions", relay.base()))
        .bearer_auth(ALICE)
        .json(&json!({"model": "gemini-2.5-pro", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"], "Hello from mock upstream!",
        "{v}"
    );
    assert_eq!(v["usage"]["prompt_tokens"], 24);

    let mut sent = mock.code_assist("streamGenerateContent");
    sent.extend(mock.code_assist("generateContent"));
    assert_eq!(sent.len(), 3);
    for s in &sent {
        let body = s.json();
        assert_eq!(body["model"], "gemini-2.5-pro", "{body}");
        assert_eq!(body["project"], PROJECT, "{body}");
        assert!(body["user_prompt_id"].as_str().is_some_and(|p| !p.is_empty()), "{body}");
        assert_eq!(body["request"]["contents"][0]["parts"][0]["text"], "hi", "{body}");
        assert!(s.header("x-goog-api-key").is_none());
    }
    assert_eq!(
        sent[0].json()["request"],
        request,
        "the Gemini API request is the envelope's, unchanged"
    );

    // Usage exact on this kind: 21 input + 3 cached + 7 out (stream), 24 + 7 twice.
    let t = usage_totals(&admin, &relay, "account", &id, 3).await;
    assert_eq!(
        (&t["input_tokens"], &t["cache_read_tokens"], &t["output_tokens"]),
        (&json!(21 + 48), &json!(3), &json!(21)),
        "{t}"
    );
    let cost = (21 + 48) * 1_250 + 3 * 125 + 21 * 10_000;
    assert_eq!(t["cost_nanos"], cost, "{t}");
    assert_clean(&mock, &admin, &relay);
}
