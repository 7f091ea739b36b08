//! ChatGPT subscription accounts for Codex (`openai-oauth`) through the real binary, against a
//! mock of OpenAI's sign-in and token endpoint and of the Codex backend: the sign-in and the
//! import of Codex's `auth.json` through the admin API, a Responses request reaching the backend
//! with the account's token and ChatGPT account id, token refresh (a single one for concurrent
//! requests meeting an expired token, one after a 401), a refused refresh, and re-authorization.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The harness is shared with other suites; its own lint findings are not this suite's business.
#[allow(clippy::doc_lazy_continuation, clippy::type_complexity)]
mod support;

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use support::admin::{Admin, assert_400};
use support::chatgpt_mock::{
    ACCOUNT_ID, CLIENT_ID, ChatGptMock, EMAIL, PLAN, REDIRECT_URI, RESPONSES_SSE, SCOPES, TokenRequest,
};
use support::{ALICE, RelayProcess, assert_near, client, eventually, now_ms, query};

const AUTHORIZE: &str = "/admin/api/accounts/openai-oauth/authorize";
const EXCHANGE: &str = "/admin/api/accounts/openai-oauth/exchange";
const IMPORT: &str = "/admin/api/accounts/openai-oauth/import";
const MODEL: &str = "gpt-5-codex";

/// The OpenAI provider section with every URL on the mock; the background refresher stays out of
/// the way unless `oauth` says otherwise.
fn config(mock: &ChatGptMock, oauth: &str) -> String {
    format!(
        "providers:\n  openai:\n    codex_base: \"{}\"\n    oauth:\n      authorize_url: \"{}\"\n      token_url: \"{}\"\n      {}\n",
        mock.url(),
        mock.authorize_url(),
        mock.token_url(),
        if oauth.is_empty() { "refresh_check: 1h" } else { oauth }
    )
}

async fn setup() -> (ChatGptMock, RelayProcess, Admin) {
    let mock = ChatGptMock::start().await;
    let relay = RelayProcess::start(&config(&mock, "")).await;
    let admin = Admin::login(&relay).await;
    (mock, relay, admin)
}

/// A Responses request as Codex CLI sends it: the system prompt as a developer message, no
/// `instructions`, `store: false`, the session as `prompt_cache_key`.
fn codex_body(prompt: &str) -> String {
    json!({
        "model": MODEL,
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are a coding agent running in the Codex CLI."}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": prompt}]}
        ],
        "tools": [{"type": "web_search"}],
        "tool_choice": "auto",
        "parallel_tool_calls": true,
        "reasoning": {"summary": "auto"},
        "store": false,
        "stream": true,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "01a21cec-c9b5-7493-9dc2-2ea61ee9724b"
    })
    .to_string()
}

const CODEX_HEADERS: [(&str, &str); 4] = [
    ("originator", "codex_exec"),
    (
        "user-agent",
        "codex_exec/0.171.0 (Debian 12.0.0; x86_64) dumb (codex_exec; 0.171.0)",
    ),
    ("session-id", "01a21cec-c9b5-7493-9dc2-2ea61ee9724b"),
    ("x-codex-beta-features", "remote_compaction_v2"),
];

struct Reply {
    status: u16,
    body: String,
}

/// `POST /openai/v1/responses` as Codex sends it, with `alice`'s key as its bearer token.
async fn send(http: &reqwest::Client, relay: &RelayProcess, body: &str) -> Reply {
    let mut rb = http
        .post(format!("{}/openai/v1/responses", relay.base()))
        .bearer_auth(ALICE)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream");
    for (k, v) in CODEX_HEADERS {
        rb = rb.header(k, v);
    }
    let r = rb.body(body.to_string()).send().await.unwrap();
    let status = r.status().as_u16();
    Reply {
        status,
        body: r.text().await.unwrap_or_default(),
    }
}

fn refreshes(mock: &ChatGptMock) -> Vec<TokenRequest> {
    mock.token_requests()
        .into_iter()
        .filter(|t| t.grant_type == "refresh_token")
        .collect()
}

/// The relay speaks for itself to the token endpoint: a form, Codex's client, its own agent.
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
}

fn assert_clean(mock: &ChatGptMock, admin: &Admin, relay: &RelayProcess) {
    admin.assert_none_shows(|text| mock.leaked_in(text));
    let leaked = mock.leaked_in(&relay.log_text());
    assert!(leaked.is_empty(), "the relay's log shows a token: {leaked:?}");
}

/// Imports tokens as Codex's `auth.json` holds them: the view.
async fn import_auth_json(admin: &Admin, name: &str, access: &str, refresh: &str, id_token: &str) -> Value {
    let a = admin
        .post(
            IMPORT,
            json!({
                "name": name,
                "OPENAI_API_KEY": null,
                "tokens": {"id_token": id_token, "access_token": access, "refresh_token": refresh, "account_id": ACCOUNT_ID},
                "last_refresh": "2026-11-27T10:00:00.000000Z"
            }),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.json["kind"], "openai-oauth", "{}", a.text);
    a.json
}

/// Imports a pair that the relay is told expires at `expires_at_ms`: the account id.
async fn import_expiring(
    admin: &Admin,
    mock: &ChatGptMock,
    name: &str,
    expires_at_ms: i64,
) -> (String, String, String) {
    let (access, refresh, id_token, _) = mock.issue_tokens(3600);
    let a = admin
        .post(
            IMPORT,
            json!({"name": name, "access_token": access, "refresh_token": refresh, "id_token": id_token, "expires_at": expires_at_ms}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    (a.json["id"].as_str().unwrap().to_string(), access, refresh)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_creates_an_account_that_serves_codex_with_its_token_and_chatgpt_account() {
    let (mock, relay, admin) = setup().await;

    // The sign-in link: Codex's client, redirect and extra parameters, PKCE and state.
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
        ("code_challenge_method", "S256"),
        ("id_token_add_organizations", "true"),
        ("codex_cli_simplified_flow", "true"),
    ] {
        assert_eq!(q.get(k).map(String::as_str), Some(v), "{k} in {url}");
    }
    assert_eq!(q["code_challenge"].len(), 43, "{url}");
    assert!(q["state"].len() >= 16, "{url}");
    let empty = admin.post(AUTHORIZE, json!({})).await;
    assert_eq!(empty.status, 200, "{}", empty.text);
    assert_ne!(query(empty.json["url"].as_str().unwrap())["state"], q["state"]);
    assert_400(
        &admin.post(AUTHORIZE, json!({"flow": "setup-token"})).await,
        "unknown field",
    );

    // The callback URL with another authorization's state is refused before any exchange.
    let (code, state, location) = mock.sign_in(&url).await;
    assert!(location.starts_with(REDIRECT_URI), "{location}");
    let forged = location.replace(&format!("state={state}"), "state=forged");
    assert_ne!(forged, location);
    let a = admin
        .post(
            EXCHANGE,
            json!({"authorization_id": auth_id, "code": forged, "name": "chatgpt-one"}),
        )
        .await;
    assert_400(&a, "state mismatch");
    assert!(
        a.json["error"]["message"].as_str().unwrap().contains("state"),
        "{}",
        a.text
    );
    let claude_id = admin
        .post("/admin/api/accounts/claude-oauth/authorize", json!({}))
        .await
        .json["authorization_id"]
        .clone();
    let a = admin
        .post(
            EXCHANGE,
            json!({"authorization_id": claude_id, "code": code, "name": "chatgpt-one"}),
        )
        .await;
    assert_400(&a, "another provider's authorization");
    assert_eq!(mock.exchange_count(), 0, "nothing was sent for a refused exchange");

    // The whole callback URL.
    let before = now_ms();
    let created = admin
        .post(
            EXCHANGE,
            json!({"authorization_id": auth_id, "code": location, "name": "chatgpt-one", "priority": 5, "group": "codex"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let v = &created.json;
    assert_eq!(v["kind"], "openai-oauth", "{}", created.text);
    assert_eq!((v["priority"].as_i64(), v["group"].as_str()), (Some(5), Some("codex")));
    assert_eq!(v["api_key"], Value::Null);
    assert_eq!(
        v["base_url"].as_str().map(|s| s.trim_end_matches('/')),
        Some(mock.url().as_str()),
        "providers.openai.codex_base is the accounts' default base_url"
    );
    let o = &v["oauth"];
    assert!(
        o["access_token"].is_string() && o["refresh_token"].is_string(),
        "{}",
        created.text
    );
    assert_eq!(o["chatgpt_account_id"], ACCOUNT_ID, "{}", created.text);
    assert_eq!(o["plan"], PLAN);
    assert_eq!(o["email"], EMAIL);
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

    // A bare code; a code the token endpoint refuses.
    let auth = admin.post(AUTHORIZE, json!({})).await;
    let (code, _, _) = mock.sign_in(auth.json["url"].as_str().unwrap()).await;
    let a = admin
        .post(
            EXCHANGE,
            json!({"authorization_id": auth.json["authorization_id"], "code": code, "name": "chatgpt-two"}),
        )
        .await;
    assert_eq!(a.status, 201, "bare code: {}", a.text);
    let auth = admin.post(AUTHORIZE, json!({})).await;
    let a = admin
        .post(
            EXCHANGE,
            json!({"authorization_id": auth.json["authorization_id"], "code": "ac_not-issued", "name": "chatgpt-refused"}),
        )
        .await;
    assert_400(&a, "refused code");
    assert!(!admin.lists("chatgpt-refused").await);

    // The generic endpoint does not take this kind.
    let a = admin
        .post(
            "/admin/api/accounts",
            json!({"name": "by-key", "kind": "openai-oauth", "api_key": "sk-x"}),
        )
        .await;
    assert_400(&a, "openai-oauth through the generic endpoint");
    assert!(
        a.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/admin/api/accounts/openai-oauth/"),
        "{}",
        a.text
    );
    let a = admin
        .call(
            Method::PATCH,
            &format!("/admin/api/accounts/{id}"),
            Some(json!({"api_key": "sk-x"})),
        )
        .await;
    assert_400(&a, "a key for an openai-oauth account");

    // A Responses request as Codex sends it reaches the backend with the account's token and
    // ChatGPT account id; everything else as the client sent it.
    let body = codex_body("say hi");
    let r = send(&client(), &relay, &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body.as_bytes(), RESPONSES_SSE, "the stream passes byte for byte");
    let seen = mock.responses();
    assert_eq!(seen.len(), 1, "no request was refused and retried");
    let s = &seen[0];
    assert_eq!(s.path_and_query, "/responses");
    let token = s.bearer().expect("Authorization: Bearer");
    assert!(mock.access_valid(&token), "the account's access token");
    assert_eq!(s.header("chatgpt-account-id").as_deref(), Some(ACCOUNT_ID));
    assert_eq!(s.body.as_ref(), body.as_bytes(), "the body as the client sent it");
    for (k, v) in CODEX_HEADERS {
        assert_eq!(s.header(k).as_deref(), Some(v), "{k}");
    }
    assert!(
        !format!("{:?}", s.headers).contains(ALICE),
        "the relay key stays with the relay"
    );
    assert_eq!(mock.refresh_count(), 0);

    // The request is recorded against the account (statistics are flushed every 200 ms).
    let usage = eventually(|| async {
        let a = admin
            .get(&format!(
                "/admin/api/usage?dimension=account&id={id}&granularity=minute"
            ))
            .await;
        (a.status == 200 && a.json["totals"]["requests"] == 1).then_some(a.json)
    })
    .await;
    assert_eq!(usage["totals"]["errors"], 0, "{usage}");
    // The golden stream's `response.completed`: 24 input tokens of which 3 cached, 7 output;
    // priced as gpt-5 (1.25e-6 input, 1.25e-7 cached, 1e-5 output per token).
    let t = &usage["totals"];
    assert_eq!(
        (&t["input_tokens"], &t["cache_read_tokens"], &t["output_tokens"]),
        (&serde_json::json!(21), &serde_json::json!(3), &serde_json::json!(7)),
        "{usage}"
    );
    assert_eq!(t["cost_nanos"], 21 * 1250 + 3 * 125 + 7 * 10_000, "{usage}");
    let v = admin.account(&id).await;
    assert_eq!(
        v["ratelimit"]["five_hour_utilization"], 0.125,
        "Codex's usage headers: {v}"
    );
    assert_clean(&mock, &admin, &relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importing_codex_auth_json_takes_its_tokens_and_chatgpt_account() {
    let (mock, relay, admin) = setup().await;

    let (access, refresh, id_token, expires_at) = mock.issue_tokens(3600);
    let v = import_auth_json(&admin, "from-codex", &access, &refresh, &id_token).await;
    let o = &v["oauth"];
    assert_eq!(o["chatgpt_account_id"], ACCOUNT_ID, "{v}");
    assert_eq!(o["plan"], PLAN);
    assert_eq!(o["email"], EMAIL);
    assert_near(&o["expires_at"], expires_at, 1_000, "the access token's own expiry");
    assert!(o["refresh_token"].is_string());
    let id = v["id"].as_str().unwrap().to_string();

    let r = send(&client(), &relay, &codex_body("hello")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = mock.responses().pop().unwrap();
    assert_eq!(seen.bearer().as_deref(), Some(access.as_str()));
    assert_eq!(seen.header("chatgpt-account-id").as_deref(), Some(ACCOUNT_ID));
    assert_eq!(mock.refresh_count(), 0);

    // The plain fields; the account id given outright.
    let (access, refresh, _, _) = mock.issue_tokens(3600);
    let a = admin
        .post(
            IMPORT,
            json!({"name": "plain", "access_token": access, "refresh_token": refresh, "chatgpt_account_id": ACCOUNT_ID, "priority": 7}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.json["oauth"]["chatgpt_account_id"], ACCOUNT_ID, "{}", a.text);
    assert_eq!(a.json["priority"], 7);

    // Refusals: an API key login, no access token, a Claude field, an account of another kind.
    let a = admin
        .post(
            IMPORT,
            json!({"name": "key-login", "OPENAI_API_KEY": "sk-proj-abc", "tokens": null}),
        )
        .await;
    assert_400(&a, "an API key login");
    assert_400(
        &admin.post(IMPORT, json!({"name": "nothing", "tokens": {}})).await,
        "no access token",
    );
    assert_400(
        &admin
            .post(IMPORT, json!({"name": "claude", "claudeAiOauth": {"accessToken": "x"}}))
            .await,
        "a Claude credentials file",
    );
    let console = admin
        .post(
            "/admin/api/accounts",
            json!({"name": "console", "kind": "claude-console", "api_key": "sk-ant-api03-abcdefghijklmnop"}),
        )
        .await;
    assert_eq!(console.status, 201, "{}", console.text);
    let a = admin
        .post(
            IMPORT,
            json!({"account_id": console.json["id"], "access_token": access}),
        )
        .await;
    assert_400(&a, "an account of another kind");
    let a = admin
        .post(
            IMPORT,
            json!({"account_id": id, "access_token": access, "name": "renamed"}),
        )
        .await;
    assert_400(&a, "account fields with account_id");
    assert_clean(&mock, &admin, &relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refreshed_once_for_concurrent_requests() {
    let (mock, relay, admin) = setup().await;
    mock.set_refresh_delay(Duration::from_millis(400));
    let (id, old_access, old_refresh) = import_expiring(&admin, &mock, "expired", now_ms() - 60_000).await;

    let http = client();
    let before = now_ms();
    let bodies: Vec<String> = (0..40).map(|i| codex_body(&format!("request {i}"))).collect();
    let replies = join_all(bodies.iter().map(|b| send(&http, &relay, b))).await;
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body.as_bytes(), RESPONSES_SSE);
    }
    assert_eq!(mock.refresh_count(), 1, "one refresh for all");
    let refresh = &refreshes(&mock)[0];
    assert_eq!(refresh.status, 200);
    assert_token_request_manners(refresh);
    assert_eq!(refresh.field("refresh_token").as_deref(), Some(old_refresh.as_str()));
    assert_eq!(refresh.field("scope").as_deref(), Some(SCOPES));
    let new_access = mock.latest_access_token().unwrap();
    assert_ne!(new_access, old_access);
    let seen = mock.responses();
    assert_eq!(seen.len(), 40, "no request was refused and retried");
    assert!(
        seen.iter().all(|s| s.bearer().as_deref() == Some(new_access.as_str())
            && s.header("chatgpt-account-id").as_deref() == Some(ACCOUNT_ID)),
        "every request waited for the refresh and used the new token"
    );

    let v = admin.account(&id).await;
    assert_near(
        &v["oauth"]["expires_at"],
        before + 3_600_000,
        60_000,
        "renewed expires_at",
    );
    assert!(
        v["oauth"]["refreshed_at"].as_i64().is_some_and(|t| t >= before - 5_000),
        "{v}"
    );
    assert_eq!(v["oauth"]["chatgpt_account_id"], ACCOUNT_ID, "{v}");
    assert_eq!(v["health"]["state"], "active");

    // The rotated refresh token is the one the next refresh presents.
    let rotated = mock.latest_refresh_token().unwrap();
    mock.revoke_access_tokens();
    let r = send(&http, &relay, &codex_body("after rotation")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(mock.refresh_count(), 2);
    assert_eq!(
        refreshes(&mock)[1].field("refresh_token").as_deref(),
        Some(rotated.as_str())
    );
    assert_clean(&mock, &admin, &relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_from_the_backend_refreshes_once_and_retries_the_request() {
    let (mock, relay, admin) = setup().await;
    let (id, old_access, _) = import_expiring(&admin, &mock, "revoked", now_ms() + 3_600_000).await;
    mock.revoke_access_tokens();

    let body = codex_body("retry me");
    let r = send(&client(), &relay, &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body.as_bytes(), RESPONSES_SSE);
    assert_eq!(mock.refresh_count(), 1);
    let new_access = mock.latest_access_token().unwrap();
    let seen = mock.responses();
    assert_eq!(seen.len(), 2, "the refused attempt and its retry");
    assert_eq!(seen[0].bearer().as_deref(), Some(old_access.as_str()));
    assert_eq!(seen[1].bearer().as_deref(), Some(new_access.as_str()));
    assert_eq!(seen[1].body, seen[0].body, "the same request again");
    assert_eq!(seen[1].header("chatgpt-account-id").as_deref(), Some(ACCOUNT_ID));

    let r = send(&client(), &relay, &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(mock.refresh_count(), 1, "the new token serves on");
    assert_eq!(mock.responses().len(), 3);
    let v = admin.account(&id).await;
    assert_eq!(v["health"]["state"], "active", "{v}");
    assert_clean(&mock, &admin, &relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_marks_the_account_unauthorized_until_it_is_signed_in_again() {
    let (mock, relay, admin) = setup().await;
    let (id, _, _) = import_expiring(&admin, &mock, "refused", now_ms() - 60_000).await;
    mock.fail_refresh(Some((
        400,
        r#"{"error":"invalid_grant","error_description":"Refresh token revoked"}"#.to_string(),
    )));

    let r = send(&client(), &relay, &codex_body("refused")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(mock.refresh_count(), 1);
    assert_eq!(refreshes(&mock)[0].status, 400);
    assert!(mock.responses().is_empty(), "an expired token is not sent");
    let v = admin.account(&id).await;
    assert_eq!(v["health"]["state"], "unauthorized", "{v}");
    assert!(
        v["health"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("refresh") && r.contains("invalid_grant")),
        "{v}"
    );
    let r = send(&client(), &relay, &codex_body("still refused")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(mock.refresh_count(), 1, "no new attempt with a refused refresh token");

    // Signing in again gives the same account new tokens and brings it back.
    mock.fail_refresh(None);
    let auth = admin.post(AUTHORIZE, json!({})).await;
    let (_, _, location) = mock.sign_in(auth.json["url"].as_str().unwrap()).await;
    let a = admin
        .post(
            EXCHANGE,
            json!({"authorization_id": auth.json["authorization_id"], "code": location, "account_id": id}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json["id"], id.as_str());
    assert_eq!(a.json["name"], "refused");
    assert_eq!(a.json["health"]["state"], "active", "{}", a.text);
    assert_eq!(a.json["oauth"]["chatgpt_account_id"], ACCOUNT_ID);
    let r = send(&client(), &relay, &codex_body("back")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        mock.responses().last().unwrap().bearer(),
        mock.latest_access_token(),
        "the new sign-in's token"
    );
    assert_eq!(mock.refresh_count(), 1);
    let list = admin.get("/admin/api/accounts").await;
    assert_eq!(list.json["accounts"].as_array().unwrap().len(), 1, "{}", list.text);

    // An authorization is for one exchange only: the code it led to is spent.
    let a = admin
        .post(
            EXCHANGE,
            json!({"authorization_id": auth.json["authorization_id"], "code": location, "account_id": id}),
        )
        .await;
    assert_400(&a, "a spent code");
    assert_clean(&mock, &admin, &relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_refresher_renews_tokens_ahead_of_expiry() {
    let mock = ChatGptMock::start().await;
    let relay = RelayProcess::start(&config(&mock, "refresh_check: 1s\n      refresh_ahead: 10m")).await;
    let admin = Admin::login(&relay).await;
    let (id, _, old_refresh) = import_expiring(&admin, &mock, "background", now_ms() + 120_000).await;

    eventually(|| async { (mock.refresh_count() >= 1).then_some(()) }).await;
    let refresh = &refreshes(&mock)[0];
    assert_eq!(refresh.field("refresh_token").as_deref(), Some(old_refresh.as_str()));
    assert!(mock.responses().is_empty(), "no request was needed");
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
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(mock.refresh_count(), 1, "a renewed token is not renewed again");
    assert_clean(&mock, &admin, &relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_reach_a_chatgpt_account_converted_to_responses() {
    let (mock, relay, admin) = setup().await;
    let (access, refresh, id_token, _) = mock.issue_tokens(3600);
    import_auth_json(&admin, "chatgpt", &access, &refresh, &id_token).await;
    let chat = |stream: bool| {
        json!({
            "model": MODEL,
            "stream": stream,
            "stream_options": if stream { json!({"include_usage": true}) } else { json!(null) },
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "say hi"}
            ]
        })
        .to_string()
    };
    let post = |body: String| {
        client()
            .post(format!("{}/openai/v1/chat/completions", relay.base()))
            .bearer_auth(ALICE)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // Not streamed: the backend streams anyway; the client gets one chat.completion.
    let r = post(chat(false)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{:?}",
        r.headers()
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert_eq!(v["model"], MODEL, "{v}");
    assert_eq!(
        v["choices"][0]["message"]["content"], "Hello from mock upstream!",
        "{v}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], 24, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 7, "{v}");
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 3, "{v}");
    // What the backend received: a Responses request, streamed, not stored, the system prompt as
    // a developer message in place, the account's token.
    let seen = mock.responses().pop().unwrap();
    assert_eq!(seen.path_and_query, "/responses");
    assert_eq!(seen.bearer().as_deref(), Some(access.as_str()));
    let b = seen.json();
    assert_eq!(
        (&b["model"], &b["stream"], &b["store"]),
        (&json!(MODEL), &json!(true), &json!(false)),
        "{b}"
    );
    assert!(b.get("messages").is_none() && b.get("instructions").is_none(), "{b}");
    assert_eq!(b["input"][0]["role"], "developer", "{b}");
    assert_eq!(b["input"][0]["content"][0]["text"], "Be brief.", "{b}");
    assert_eq!(b["input"][1]["role"], "user", "{b}");

    // Streamed: chunks, the usage chunk asked for, [DONE].
    let r = post(chat(true)).await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello from mock upstream!");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let usage = chunks.iter().find(|c| c["usage"].is_object()).expect("a usage chunk");
    assert_eq!(usage["usage"]["prompt_tokens"], 24, "{usage}");

    // Both are billed: 2 × (21 input, 3 cached, 7 output) at gpt-5-codex's prices.
    let usage = eventually(|| async {
        let a = admin
            .get("/admin/api/usage?dimension=key&id=config.alice&granularity=minute")
            .await;
        (a.status == 200 && a.json["totals"]["requests"] == 2).then_some(a.json)
    })
    .await;
    let t = &usage["totals"];
    assert_eq!(
        (
            &t["input_tokens"],
            &t["cache_read_tokens"],
            &t["output_tokens"],
            &t["errors"]
        ),
        (&json!(42), &json!(6), &json!(14), &json!(0)),
        "{usage}"
    );
    assert_clean(&mock, &admin, &relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_codex_backend_cannot_take_goes_to_an_account_that_can() {
    let mock = ChatGptMock::start().await;
    let anthropic = support::mock::MockUpstream::start().await;
    // A Claude-wire account that also serves the Codex model (an Anthropic-compatible gateway),
    // after the ChatGPT account.
    let relay = RelayProcess::start(&format!(
        "{}accounts:\n{}",
        config(&mock, ""),
        support::account_yaml(
            "gateway",
            &anthropic.url(),
            &format!(", priority: 200, models: [{MODEL}]")
        )
    ))
    .await;
    let admin = Admin::login(&relay).await;
    let (access, refresh, id_token, _) = mock.issue_tokens(3600);
    let v = import_auth_json(&admin, "chatgpt", &access, &refresh, &id_token).await;
    assert_eq!(v["priority"], 50, "{v}");
    let chat = |stop: bool| {
        let mut b = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
        if stop {
            b["stop"] = json!(["\n\n"]);
        }
        client()
            .post(format!("{}/v1/chat/completions", relay.base()))
            .bearer_auth(ALICE)
            .body(b.to_string())
            .send()
    };
    // Without `stop`, the ChatGPT account (the better priority) serves.
    let r = chat(false).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!((mock.responses().len(), anthropic.hits()), (1, 0));
    // `stop` has no Responses equivalent: the Codex backend's account is passed over (not
    // marked), and the gateway serves it as Anthropic's stop_sequences.
    let r = chat(true).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert_eq!((mock.responses().len(), anthropic.hits()), (1, 1));
    let sent = anthropic.seen().pop().unwrap().json();
    assert_eq!(sent["stop_sequences"], json!(["\n\n"]), "{sent}");
    let r = chat(false).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(mock.responses().len(), 2, "the ChatGPT account was not benched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_account_can_take_is_refused_naming_what_cannot_be_converted() {
    let (mock, relay, admin) = setup().await;
    let (access, refresh, id_token, _) = mock.issue_tokens(3600);
    import_auth_json(&admin, "chatgpt", &access, &refresh, &id_token).await;
    let body = json!({"model": MODEL, "stop": "x", "messages": [{"role": "user", "content": "hi"}]});
    let r = client()
        .post(format!("{}/openai/v1/chat/completions", relay.base()))
        .bearer_auth(ALICE)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("stop"), "{v}");
    assert!(mock.responses().is_empty());
}
