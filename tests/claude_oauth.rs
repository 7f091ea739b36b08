//! Claude subscription accounts (`claude-oauth`) through the real binary, against a mock of the
//! OAuth sign-in, token, profile and usage endpoints and of the Messages API: the sign-in and
//! import flows of the admin API, the bearer token and the OAuth beta flag on the way up, token
//! refresh (before a request, after a 401, in the background, across a restart and across two
//! instances on one Redis), a refused refresh, subscription tier gating and utilization.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The harness is shared with other suites; its own lint findings are not this suite's business.
#[allow(clippy::doc_lazy_continuation, clippy::type_complexity)]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use support::admin::{Admin, assert_400};
use support::mock::{Seen, json_for, stream_for};
use support::oauth_mock::{CLIENT_ID, EMAIL, MockOAuth, OAUTH_BETA};
use support::{
    ALICE, RelayProcess, assert_near, client, eventually, metric, metric_sum, now_ms, query, redis_cleanup,
    redis_prefix, redis_url,
};

const AUTHORIZE: &str = "/admin/api/accounts/claude-oauth/authorize";
const EXCHANGE: &str = "/admin/api/accounts/claude-oauth/exchange";
const IMPORT: &str = "/admin/api/accounts/claude-oauth/import";
const REDIRECT_URI: &str = "https://platform.claude.com/oauth/code/callback";
const SCOPES: [&str; 6] = [
    "org:create_api_key",
    "user:profile",
    "user:inference",
    "user:sessions:claude_code",
    "user:mcp_servers",
    "user:file_upload",
];
const SONNET: &str = "claude-sonnet-4-5";
const SETUP_TOKEN_LIFETIME_S: i64 = 31_536_000;

/// The Anthropic provider section with every URL on the mock. The background refresher stays out
/// of the way (`refresh_check: 1h`) and usage polling is off unless `settings` say otherwise.
fn config(mock: &MockOAuth, settings: &[(&str, &str)]) -> String {
    let mut oauth: Vec<(&str, &str)> = vec![("refresh_check", "1h"), ("usage_poll", "0")];
    for (k, v) in settings {
        match oauth.iter_mut().find(|(ek, _)| ek == k) {
            Some(e) => e.1 = v,
            None => oauth.push((k, v)),
        }
    }
    let mut y = format!(
        "providers:\n  anthropic:\n    api_base: \"{}\"\n    oauth:\n      authorize_url: \"{}\"\n      token_url: \"{}\"\n      profile_url: \"{}\"\n      usage_url: \"{}\"\n",
        mock.url(),
        mock.authorize_url(),
        mock.token_url(),
        mock.profile_url(),
        mock.usage_url()
    );
    for (k, v) in oauth {
        y.push_str(&format!("      {k}: {v}\n"));
    }
    y
}

/// A mock, a relay whose provider settings point at it (`settings` over the test defaults), and
/// an admin session on the relay.
async fn setup(settings: &[(&str, &str)]) -> (MockOAuth, RelayProcess, Admin) {
    let mock = MockOAuth::start().await;
    let relay = RelayProcess::start(&config(&mock, settings)).await;
    let admin = Admin::login(&relay).await;
    (mock, relay, admin)
}

/// The sign-in steps of the Claude endpoints, on an admin session.
trait ClaudeSignIn {
    /// Starts a sign-in and checks the answer's shape.
    async fn authorize(&self, body: Option<Value>) -> Value;
    /// Imports a pair as `name`, the relay told it expires at `expires_at_ms`: the view.
    async fn import(&self, name: &str, access: &str, refresh: &str, expires_at_ms: i64) -> Value;
    fn assert_no_tokens(&self, mock: &MockOAuth);
}

impl ClaudeSignIn for Admin {
    async fn authorize(&self, body: Option<Value>) -> Value {
        let a = self.call(Method::POST, AUTHORIZE, body).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert!(
            a.json["authorization_id"].as_str().is_some_and(|s| !s.is_empty()),
            "{}",
            a.text
        );
        assert!(a.json["url"].is_string(), "{}", a.text);
        a.json
    }

    async fn import(&self, name: &str, access: &str, refresh: &str, expires_at_ms: i64) -> Value {
        let a = self
            .post(
                IMPORT,
                json!({"name": name, "access_token": access, "refresh_token": refresh, "expires_at": expires_at_ms}),
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.text);
        assert_eq!(a.json["kind"], "claude-oauth", "{}", a.text);
        a.json
    }

    fn assert_no_tokens(&self, mock: &MockOAuth) {
        self.assert_none_shows(|text| mock.leaked_in(text));
    }
}

fn assert_log_clean(mock: &MockOAuth, log: &str) {
    let leaked = mock.leaked_in(log);
    assert!(leaked.is_empty(), "the relay's log shows a token: {leaked:?}");
}

fn message_body(model: &str, stream: bool) -> String {
    json!({"model": model, "max_tokens": 5, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: String,
}

/// Sends a Messages API request as `alice` (with `x-api-key` unless `headers` carry an
/// `authorization`), reading the whole answer.
async fn send_to(
    http: &reqwest::Client,
    relay: &RelayProcess,
    path: &str,
    model: &str,
    stream: bool,
    headers: &[(&str, &str)],
) -> Reply {
    let mut rb = http
        .post(format!("{}{path}", relay.base()))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization")) {
        rb = rb.header("x-api-key", ALICE);
    }
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.body(message_body(model, stream)).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.unwrap_or_default();
    Reply { status, headers, body }
}

async fn send(relay: &RelayProcess, model: &str) -> Reply {
    send_to(&client(), relay, "/v1/messages", model, false, &[]).await
}

/// A refusal by the relay itself: the Anthropic error shape and `x-relay-error-source: relay`.
fn assert_relay_refusal(r: &Reply, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    assert_eq!(
        r.headers.get("x-relay-error-source").and_then(|v| v.to_str().ok()),
        Some("relay"),
        "{what}: {:?}",
        r.headers
    );
    let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    assert_eq!(v["type"], "error", "{what}: {}", r.body);
    assert!(v["error"]["type"].is_string(), "{what}: {}", r.body);
}

/// The flags of every `anthropic-beta` header, in order.
fn betas(s: &Seen) -> Vec<String> {
    s.headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect()
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn refresh_requests(mock: &MockOAuth) -> Vec<support::oauth_mock::TokenRequest> {
    mock.token_requests()
        .into_iter()
        .filter(|t| t.grant_type == "refresh_token")
        .collect()
}

/// The relay speaks for itself to the token endpoint: JSON, and no claude-cli User-Agent.
fn assert_token_request_manners(t: &support::oauth_mock::TokenRequest) {
    assert!(
        t.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        t.headers
    );
    assert!(
        !t.header("user-agent")
            .unwrap_or_default()
            .to_ascii_lowercase()
            .contains("claude-cli"),
        "{:?}",
        t.headers
    );
    assert_eq!(t.field("client_id").as_deref(), Some(CLIENT_ID), "{}", t.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_creates_an_account_that_serves_with_its_bearer_token_and_the_oauth_beta() {
    let (mock, relay, admin) = setup(&[]).await;

    // The sign-in link.
    let before_s = now_ms() / 1000;
    let auth = admin.authorize(None).await;
    assert_eq!(auth["flow"], "oauth");
    assert_near(&auth["expires_at"], before_s + 600, 5, "authorization expires_at");
    let url = auth["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}?", mock.authorize_url())), "{url}");
    let q = query(url);
    assert_eq!(q.get("code").map(String::as_str), Some("true"), "{url}");
    assert_eq!(q.get("client_id").map(String::as_str), Some(CLIENT_ID), "{url}");
    assert_eq!(q.get("response_type").map(String::as_str), Some("code"), "{url}");
    assert_eq!(q.get("redirect_uri").map(String::as_str), Some(REDIRECT_URI), "{url}");
    assert_eq!(q.get("scope").cloned(), Some(SCOPES.join(" ")), "{url}");
    assert_eq!(
        q.get("code_challenge_method").map(String::as_str),
        Some("S256"),
        "{url}"
    );
    let challenge = q.get("code_challenge").cloned().unwrap_or_default();
    assert_eq!(challenge.len(), 43, "base64url of a SHA-256: {url}");
    assert!(
        challenge
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{url}"
    );
    assert!(q.get("state").is_some_and(|s| s.len() >= 16), "{url}");
    let other = admin.authorize(Some(json!({"flow": "oauth"}))).await;
    let q2 = query(other["url"].as_str().unwrap());
    assert_ne!(other["authorization_id"], auth["authorization_id"]);
    assert_ne!(q2["state"], q["state"]);
    assert_ne!(q2["code_challenge"], q["code_challenge"]);

    // `code#state`, as the callback page shows it.
    let (code, state, location) = mock.sign_in(url).await;
    assert!(location.starts_with(REDIRECT_URI), "{location}");
    let before = now_ms();
    let created = admin
        .post(
            EXCHANGE,
            json!({
                "authorization_id": auth["authorization_id"],
                "code": format!("{code}#{state}"),
                "name": "sub-one",
                "priority": 5,
                "group": "subs",
            }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let v = &created.json;
    assert_eq!(v["kind"], "claude-oauth", "{}", created.text);
    assert_eq!(v["name"], "sub-one");
    assert_eq!(v["api_key"], Value::Null);
    assert_eq!(v["priority"], 5);
    assert_eq!(v["group"], "subs");
    assert_eq!(v["enabled"], true);
    assert_eq!(
        v["base_url"].as_str().map(|s| s.trim_end_matches('/')),
        Some(mock.url().as_str()),
        "the API base is the accounts' default base_url"
    );
    let o = &v["oauth"];
    assert!(o["access_token"].is_string(), "{}", created.text);
    assert!(o["refresh_token"].is_string(), "{}", created.text);
    assert_near(&o["expires_at"], before + 3_600_000, 60_000, "oauth.expires_at");
    assert_eq!(o["scopes"], json!(SCOPES));
    assert_eq!(o["setup_token"], false);
    assert_eq!(o["tier"], "max", "read from the profile: {}", created.text);
    assert_eq!(o["email"], EMAIL);
    assert_eq!(v["health"]["state"], "active");
    let id = v["id"].as_str().unwrap().to_string();

    let exchanges: Vec<_> = mock
        .token_requests()
        .into_iter()
        .filter(|t| t.grant_type == "authorization_code")
        .collect();
    assert_eq!(exchanges.len(), 1);
    let t = &exchanges[0];
    assert_eq!(t.status, 200, "{}", t.body);
    assert_token_request_manners(t);
    assert_eq!(t.field("code").as_deref(), Some(code.as_str()));
    assert_eq!(t.field("state").as_deref(), Some(state.as_str()));
    assert_eq!(t.field("redirect_uri").as_deref(), Some(REDIRECT_URI));
    assert!(
        t.field("code_verifier").is_some_and(|c| (43..=128).contains(&c.len())),
        "{}",
        t.body
    );
    assert_eq!(
        t.body.get("expires_in"),
        None,
        "only the setup-token flow asks for a lifetime"
    );

    let got = admin.account(&id).await;
    assert_eq!(got["oauth"]["tier"], "max");
    assert_eq!(got["kind"], "claude-oauth");

    // The whole callback URL, and the bare code.
    for (form, name) in [("callback URL", "sub-two"), ("bare code", "sub-three")] {
        let auth = admin.authorize(Some(json!({}))).await;
        let (code, _, location) = mock.sign_in(auth["url"].as_str().unwrap()).await;
        let pasted = if form == "callback URL" { location } else { code };
        let a = admin
            .post(
                EXCHANGE,
                json!({"authorization_id": auth["authorization_id"], "code": pasted, "name": name}),
            )
            .await;
        assert_eq!(a.status, 201, "{form}: {}", a.text);
    }
    assert_eq!(mock.exchange_count(), 3);

    // Refusals: an unknown or tampered authorization never reaches the token endpoint; a code
    // the token endpoint refuses is 400; a taken name is 409.
    let auth = admin.authorize(Some(json!({}))).await;
    let auth_id = auth["authorization_id"].as_str().unwrap().to_string();
    let (code, state, _) = mock.sign_in(auth["url"].as_str().unwrap()).await;
    let code_state = format!("{code}#{state}");
    let mut tampered: Vec<char> = auth_id.chars().collect();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == 'a' { 'b' } else { 'a' };
    let tampered: String = tampered.into_iter().collect();
    for (bad_id, what) in [
        ("nope", "unknown authorization"),
        (tampered.as_str(), "tampered authorization"),
    ] {
        let a = admin
            .post(
                EXCHANGE,
                json!({"authorization_id": bad_id, "code": code_state, "name": "sub-bad"}),
            )
            .await;
        assert_400(&a, what);
    }
    assert_eq!(mock.exchange_count(), 3, "nothing was sent for a bad authorization");
    let a = admin
        .post(
            EXCHANGE,
            json!({"authorization_id": auth_id, "code": code_state, "name": "sub-one"}),
        )
        .await;
    assert_eq!(a.status, 409, "taken name: {}", a.text);
    let auth = admin.authorize(Some(json!({}))).await;
    let a = admin
        .post(
            EXCHANGE,
            json!({"authorization_id": auth["authorization_id"], "code": "not-a-code-the-mock-issued", "name": "sub-refused"}),
        )
        .await;
    assert_400(&a, "refused code");
    let message = a.json["error"]["message"].as_str().unwrap_or("").to_ascii_lowercase();
    assert!(
        message.contains("token endpoint") || message.contains("invalid_grant"),
        "the message says the token endpoint refused the code: {}",
        a.text
    );
    assert!(
        mock.token_requests()
            .iter()
            .any(|t| t.field("code").as_deref() == Some("not-a-code-the-mock-issued") && t.status == 400)
    );
    assert!(!admin.lists("sub-refused").await && !admin.lists("sub-bad").await);

    // Serving: the bearer token and the OAuth beta flag; client headers kept.
    let http = client();
    let ua = "claude-cli/2.0.14 (external, cli)";
    let r = send_to(
        &http,
        &relay,
        "/v1/messages",
        SONNET,
        false,
        &[
            (
                "anthropic-beta",
                "interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14",
            ),
            ("user-agent", ua),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap(), json_for(SONNET));
    let seen = mock.messages().last().cloned().unwrap();
    let token = seen.bearer().expect("Authorization: Bearer");
    assert!(token.starts_with("sk-ant-oat01-"), "an OAuth access token");
    assert!(mock.access_valid(&token));
    assert_eq!(seen.header("x-api-key"), None);
    assert_eq!(
        betas(&seen),
        [
            "interleaved-thinking-2025-05-14",
            "fine-grained-tool-streaming-2025-05-14",
            OAUTH_BETA
        ]
    );
    assert_eq!(seen.header("user-agent").as_deref(), Some(ua));
    assert_eq!(seen.header("anthropic-version").as_deref(), Some("2023-06-01"));

    let r = send_to(
        &http,
        &relay,
        "/v1/messages",
        SONNET,
        false,
        &[("anthropic-beta", "oauth-2025-04-20, context-1m-2025-08-07")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = mock.messages().last().cloned().unwrap();
    assert_eq!(betas(&seen), [OAUTH_BETA, "context-1m-2025-08-07"], "no duplicate");

    // A client authenticating with a bearer key and no beta header.
    let alice_bearer = format!("Bearer {ALICE}");
    let r = send_to(
        &http,
        &relay,
        "/v1/messages",
        SONNET,
        false,
        &[("authorization", alice_bearer.as_str())],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = mock.messages().last().cloned().unwrap();
    assert_eq!(seen.header("anthropic-beta").as_deref(), Some(OAUTH_BETA));
    assert_eq!(seen.headers.get_all("anthropic-beta").iter().count(), 1);
    let token = seen.bearer().expect("Authorization: Bearer");
    assert!(token.starts_with("sk-ant-oat01-") && mock.access_valid(&token));
    assert_eq!(seen.header("x-api-key"), None);

    let r = send_to(&http, &relay, "/v1/messages", SONNET, true, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body.as_bytes(), stream_for(SONNET, false).as_slice());
    let r = send_to(&http, &relay, "/v1/messages/count_tokens", SONNET, false, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap(),
        json!({"input_tokens": 42})
    );
    let seen = mock.messages().last().cloned().unwrap();
    assert_eq!(seen.path_and_query, "/v1/messages/count_tokens");
    assert!(seen.bearer().is_some_and(|t| mock.access_valid(&t)));
    assert!(betas(&seen).iter().any(|f| f == OAUTH_BETA));
    assert_eq!(mock.messages().len(), 5, "no request was refused and retried");
    assert_eq!(mock.refresh_count(), 0);

    let list = admin.get("/admin/api/accounts").await;
    let oauth_accounts = list.json["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "claude-oauth")
        .count();
    assert_eq!(oauth_accounts, 3, "{}", list.text);
    admin.assert_no_tokens(&mock);
    assert_log_clean(&mock, &relay.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setup_token_flow_asks_for_inference_only_and_a_one_year_token() {
    let (mock, relay, admin) = setup(&[]).await;

    let auth = admin.authorize(Some(json!({"flow": "setup-token"}))).await;
    assert_eq!(auth["flow"], "setup-token");
    let url = auth["url"].as_str().unwrap();
    let q = query(url);
    assert_eq!(q.get("scope").map(String::as_str), Some("user:inference"), "{url}");
    assert_eq!(q.get("client_id").map(String::as_str), Some(CLIENT_ID), "{url}");
    assert_eq!(
        q.get("code_challenge_method").map(String::as_str),
        Some("S256"),
        "{url}"
    );

    let (code, state, _) = mock.sign_in(url).await;
    let before = now_ms();
    let a = admin
        .post(
            EXCHANGE,
            json!({"authorization_id": auth["authorization_id"], "code": format!("{code}#{state}"), "name": "ci-token"}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let t = mock.token_requests().last().cloned().unwrap();
    assert_eq!(t.grant_type, "authorization_code");
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(t.body["expires_in"], SETUP_TOKEN_LIFETIME_S, "{}", t.body);
    assert_token_request_manners(&t);
    let o = &a.json["oauth"];
    assert_eq!(o["setup_token"], true, "{}", a.text);
    assert_eq!(o["refresh_token"], Value::Null, "{}", a.text);
    assert_eq!(o["scopes"], json!(["user:inference"]), "{}", a.text);
    assert_near(
        &o["expires_at"],
        before + SETUP_TOKEN_LIFETIME_S * 1000,
        120_000,
        "a year",
    );

    let r = send(&relay, SONNET).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = mock.messages().last().cloned().unwrap();
    assert_eq!(seen.bearer(), mock.latest_access_token());
    assert_eq!(mock.refresh_count(), 0);

    let bad = admin
        .call(Method::POST, AUTHORIZE, Some(json!({"flow": "bogus"})))
        .await;
    assert_400(&bad, "unknown flow");
    admin.assert_no_tokens(&mock);
    assert_log_clean(&mock, &relay.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importing_tokens_takes_claude_code_credentials_and_never_shows_them() {
    let (mock, relay, admin) = setup(&[]).await;
    let mut ids = Vec::new();

    // The relay's own shape, expires_at in Unix ms.
    let (access, refresh, expires_at) = mock.issue_tokens(3600);
    let a = admin
        .post(
            IMPORT,
            json!({"name": "flat", "access_token": access, "refresh_token": refresh, "expires_at": expires_at,
                   "scopes": ["user:inference", "user:profile"], "priority": 3}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let v = &a.json;
    assert_eq!(v["kind"], "claude-oauth");
    assert_eq!(v["api_key"], Value::Null);
    assert_eq!(v["priority"], 3);
    assert_eq!(
        v["base_url"].as_str().map(|s| s.trim_end_matches('/')),
        Some(mock.url().as_str())
    );
    assert_eq!(v["oauth"]["expires_at"], expires_at, "{}", a.text);
    assert_eq!(v["oauth"]["scopes"], json!(["user:inference", "user:profile"]));
    assert_eq!(v["oauth"]["setup_token"], false);
    assert_eq!(v["oauth"]["tier"], "max", "read from the profile: {}", a.text);
    assert_eq!(v["oauth"]["email"], EMAIL);
    assert!(v["oauth"]["access_token"].is_string() && v["oauth"]["refresh_token"].is_string());
    ids.push(v["id"].as_str().unwrap().to_string());

    // Claude Code's ~/.claude/.credentials.json.
    let (access, refresh, expires_at) = mock.issue_tokens(3600);
    let a = admin
        .post(
            IMPORT,
            json!({"name": "credentials-file", "claudeAiOauth": {
                "accessToken": access, "refreshToken": refresh, "expiresAt": expires_at,
                "scopes": ["user:inference", "user:profile", "user:sessions:claude_code"],
                "subscriptionType": "max"
            }}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.json["oauth"]["expires_at"], expires_at, "{}", a.text);
    assert_eq!(
        a.json["oauth"]["scopes"],
        json!(["user:inference", "user:profile", "user:sessions:claude_code"])
    );
    ids.push(a.json["id"].as_str().unwrap().to_string());

    // expires_at in Unix seconds and as RFC 3339; no refresh token.
    let (access, refresh, expires_at) = mock.issue_tokens(3600);
    let a = admin
        .post(
            IMPORT,
            json!({"name": "seconds", "access_token": access, "refresh_token": refresh, "expires_at": expires_at / 1000}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.json["oauth"]["expires_at"], expires_at / 1000 * 1000, "{}", a.text);
    ids.push(a.json["id"].as_str().unwrap().to_string());
    let (access, _, _) = mock.issue_tokens(3600);
    let rfc = "2030-01-02T03:04:05Z";
    let rfc_ms = chrono::DateTime::parse_from_rfc3339(rfc).unwrap().timestamp_millis();
    let a = admin
        .post(
            IMPORT,
            json!({"name": "rfc3339", "access_token": access, "expires_at": rfc}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.json["oauth"]["expires_at"], rfc_ms, "{}", a.text);
    assert_eq!(a.json["oauth"]["refresh_token"], Value::Null, "{}", a.text);
    ids.push(a.json["id"].as_str().unwrap().to_string());

    // Refusals.
    let a = admin
        .post(
            IMPORT,
            json!({"name": "no-token", "refresh_token": "sk-ant-ort01-x", "expires_at": expires_at}),
        )
        .await;
    assert_400(&a, "no access_token");
    let a = admin
        .post(
            "/admin/api/accounts",
            json!({"name": "direct", "kind": "claude-oauth", "base_url": mock.url(), "api_key": "sk-ant-oat01-direct"}),
        )
        .await;
    assert_400(&a, "claude-oauth through the generic endpoint");
    assert!(!admin.lists("no-token").await && !admin.lists("direct").await);

    assert_eq!(send(&relay, SONNET).await.status, 200);
    let seen = mock.messages().last().cloned().unwrap();
    assert!(seen.bearer().is_some_and(|t| mock.access_valid(&t)));
    for id in &ids {
        let got = admin.account(id).await;
        assert_eq!(got["kind"], "claude-oauth");
        assert_eq!(got["health"]["state"], "active", "{got}");
    }
    let list = admin.get("/admin/api/accounts").await;
    assert_eq!(list.status, 200, "{}", list.text);
    admin.assert_no_tokens(&mock);
    assert_log_clean(&mock, &relay.log_text());
    let mut files = Vec::new();
    files_under(&relay.dir.path().join("data"), &mut files);
    for f in &files {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).to_string();
        let leaked = mock.leaked_in(&text);
        assert!(leaked.is_empty(), "{} holds tokens in the clear", f.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refreshed_once_for_a_hundred_concurrent_requests() {
    let (mock, relay, admin) = setup(&[]).await;
    mock.set_refresh_delay(Duration::from_millis(400));
    let (old_access, old_refresh, _) = mock.issue_tokens(3600);
    let view = admin
        .import("expired", &old_access, &old_refresh, now_ms() - 60_000)
        .await;
    let id = view["id"].as_str().unwrap().to_string();

    let http = client();
    let before = now_ms();
    let replies = join_all((0..100).map(|i| send_to(&http, &relay, "/v1/messages", SONNET, i % 2 == 0, &[]))).await;
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(mock.refresh_count(), 1, "one refresh for all");
    let refreshes = refresh_requests(&mock);
    assert_eq!(refreshes[0].status, 200);
    assert_eq!(
        refreshes[0].field("refresh_token").as_deref(),
        Some(old_refresh.as_str())
    );
    assert_token_request_manners(&refreshes[0]);
    let new_access = mock.latest_access_token().unwrap();
    assert_ne!(new_access, old_access);
    let messages = mock.messages();
    assert_eq!(messages.len(), 100, "no request was refused and retried");
    assert!(
        messages
            .iter()
            .all(|m| m.bearer().as_deref() == Some(new_access.as_str())),
        "every request waited for the refresh and used the new token"
    );

    let v = admin.account(&id).await;
    assert_near(
        &v["oauth"]["expires_at"],
        before + 3_600_000,
        60_000,
        "renewed expires_at",
    );
    let refreshed_at = v["oauth"]["refreshed_at"].as_i64().expect("refreshed_at");
    assert!((before - 5_000..=now_ms() + 1_000).contains(&refreshed_at), "{v}");
    assert_eq!(v["health"]["state"], "active");
    admin.assert_no_tokens(&mock);
    assert_log_clean(&mock, &relay.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_for_a_token_believed_valid_refreshes_once_and_retries_the_request() {
    let (mock, relay, admin) = setup(&[]).await;
    let (old_access, old_refresh, expires_at) = mock.issue_tokens(3600);
    let view = admin.import("revoked", &old_access, &old_refresh, expires_at).await;
    let id = view["id"].as_str().unwrap().to_string();
    mock.revoke_access_tokens();

    let r = send(&relay, SONNET).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap(), json_for(SONNET));
    assert_eq!(mock.refresh_count(), 1);
    let new_access = mock.latest_access_token().unwrap();
    let messages = mock.messages();
    assert_eq!(messages.len(), 2, "the refused attempt and its retry");
    assert_eq!(messages[0].bearer().as_deref(), Some(old_access.as_str()));
    assert_eq!(messages[1].bearer().as_deref(), Some(new_access.as_str()));
    assert_eq!(messages[1].body, messages[0].body, "the same request again");
    assert_eq!(messages[1].path_and_query, messages[0].path_and_query);
    assert!(betas(&messages[1]).iter().any(|f| f == OAUTH_BETA));
    assert_eq!(messages[1].header("x-api-key"), None);

    let r = send_to(&client(), &relay, "/v1/messages", SONNET, true, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body.as_bytes(), stream_for(SONNET, false).as_slice());
    assert_eq!(mock.refresh_count(), 1);
    assert_eq!(
        mock.messages().last().unwrap().bearer().as_deref(),
        Some(new_access.as_str())
    );

    // A streamed request refused the same way is retried too.
    mock.revoke_access_tokens();
    let r = send_to(&client(), &relay, "/v1/messages", SONNET, true, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body.as_bytes(), stream_for(SONNET, false).as_slice());
    assert_eq!(mock.refresh_count(), 2);
    let newest = mock.latest_access_token().unwrap();
    let messages = mock.messages();
    assert_eq!(messages.len(), 5);
    assert_eq!(messages[3].bearer().as_deref(), Some(new_access.as_str()));
    assert_eq!(messages[4].bearer().as_deref(), Some(newest.as_str()));
    assert_eq!(messages[4].body, messages[3].body);
    let v = admin.account(&id).await;
    assert!(v["oauth"]["refreshed_at"].is_i64(), "{v}");
    assert_eq!(v["health"]["state"], "active", "{v}");
    admin.assert_no_tokens(&mock);
    assert_log_clean(&mock, &relay.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_refresher_renews_ahead_of_expiry_and_the_rotation_survives_a_restart() {
    let mock = MockOAuth::start().await;
    let yaml = config(&mock, &[("refresh_ahead", "10m"), ("refresh_check", "1s")]);
    let mut relay = RelayProcess::start(&yaml).await;
    let admin = Admin::login(&relay).await;
    let (old_access, old_refresh, expires_at) = mock.issue_tokens(120);
    let before = now_ms();
    let view = admin.import("background", &old_access, &old_refresh, expires_at).await;
    let id = view["id"].as_str().unwrap().to_string();

    eventually(|| async { (mock.refresh_count() >= 1).then_some(()) }).await;
    assert_eq!(mock.refresh_count(), 1);
    let refresh = &refresh_requests(&mock)[0];
    assert_eq!(refresh.status, 200);
    assert_eq!(refresh.field("refresh_token").as_deref(), Some(old_refresh.as_str()));
    assert_token_request_manners(refresh);
    let new_access = mock.latest_access_token().unwrap();
    let new_refresh = mock.latest_refresh_token().unwrap();
    assert!(mock.messages().is_empty(), "no request was needed");

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
    let refreshed_at = v["oauth"]["refreshed_at"].as_i64().unwrap();
    assert!((before - 1_000..=now_ms() + 1_000).contains(&refreshed_at), "{v}");

    let r = send(&relay, SONNET).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        mock.messages().last().unwrap().bearer().as_deref(),
        Some(new_access.as_str())
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(mock.refresh_count(), 1, "a renewed token is not renewed again");
    admin.assert_no_tokens(&mock);
    assert_log_clean(&mock, &relay.log_text());

    // A new process on the same data directory has the rotated refresh token.
    assert!(relay.stop().success());
    let dir = std::mem::replace(&mut relay.dir, tempfile::tempdir().unwrap());
    let relay = RelayProcess::start_in(dir, &yaml, &[]).await;
    mock.revoke_access_tokens();
    let r = send(&relay, SONNET).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(mock.refresh_count(), 2);
    let last = refresh_requests(&mock).pop().unwrap();
    assert_eq!(last.field("refresh_token").as_deref(), Some(new_refresh.as_str()));
    assert_eq!(last.status, 200, "{}", last.body);
    assert_eq!(mock.messages().last().unwrap().bearer(), mock.latest_access_token());
    let admin = Admin::login(&relay).await;
    let v = admin.account(&id).await;
    assert_eq!(v["health"]["state"], "active", "{v}");
    admin.assert_no_tokens(&mock);
    assert_log_clean(&mock, &relay.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_marks_the_account_unauthorized_until_an_admin_reset() {
    let (mock, relay, admin) = setup(&[("refresh_ahead", "1s")]).await;
    let (access, refresh, _) = mock.issue_tokens(3600);
    let expires_at = now_ms() + 2_000;
    let view = admin.import("refused", &access, &refresh, expires_at).await;
    let id = view["id"].as_str().unwrap().to_string();
    mock.fail_refresh(Some((
        400,
        r#"{"error":"invalid_grant","error_description":"Refresh token revoked"}"#.to_string(),
    )));
    let wait = expires_at + 500 - now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }

    let r = send(&relay, SONNET).await;
    assert_relay_refusal(&r, 503, "refresh refused");
    assert_eq!(mock.refresh_count(), 1);
    assert_eq!(refresh_requests(&mock)[0].status, 400);
    assert!(mock.messages().is_empty(), "an expired token is not sent");

    let v = admin.account(&id).await;
    assert_eq!(v["health"]["state"], "unauthorized", "{v}");
    assert!(
        v["health"]["reason"]
            .as_str()
            .is_some_and(|r| r.to_ascii_lowercase().contains("refresh")),
        "{v}"
    );
    assert!(
        metric_sum(&relay, "relay_oauth_refreshes_total", r#"result="refused""#).await >= 1.0,
        "relay_oauth_refreshes_total{{result=\"refused\"}}"
    );
    eventually(|| async {
        let m = metric(&relay, r#"relay_account_state{account="refused",state="unauthorized"}"#).await;
        (m == Some(1.0)).then_some(())
    })
    .await;

    let r = send(&relay, SONNET).await;
    assert_relay_refusal(&r, 503, "still unauthorized");
    assert_eq!(mock.refresh_count(), 1, "no new attempt with a refused refresh token");
    assert!(mock.messages().is_empty());
    assert_log_clean(&mock, &relay.log_text());

    mock.fail_refresh(None);
    let reset = admin.post(&format!("/admin/api/accounts/{id}/reset"), json!({})).await;
    assert_eq!(reset.status, 200, "{}", reset.text);
    assert_eq!(reset.json["health"]["state"], "active", "{}", reset.text);
    let r = send(&relay, SONNET).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(mock.refresh_count(), 2);
    assert_eq!(mock.messages().last().unwrap().bearer(), mock.latest_access_token());
    let v = admin.account(&id).await;
    assert_eq!(v["health"]["state"], "active", "{v}");
    admin.assert_no_tokens(&mock);
    assert_log_clean(&mock, &relay.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_tiers_gate_the_models_an_account_serves() {
    let (pro_mock, free_mock, open_mock) = (
        MockOAuth::start().await,
        MockOAuth::start().await,
        MockOAuth::start().await,
    );
    pro_mock.set_tier("pro");
    free_mock.set_tier("free");
    open_mock.set_tier("pro");
    let (pro_conf, free_conf) = (config(&pro_mock, &[]), config(&free_mock, &[]));
    let open_conf = config(&open_mock, &[("tier_model_blacklist", "{ pro: [] }")]);
    let (pro, free, open) = tokio::join!(
        RelayProcess::start(&pro_conf),
        RelayProcess::start(&free_conf),
        RelayProcess::start(&open_conf)
    );

    for (relay, mock, tier) in [
        (&pro, &pro_mock, "pro"),
        (&free, &free_mock, "free"),
        (&open, &open_mock, "pro"),
    ] {
        let admin = Admin::login(relay).await;
        let (access, refresh, expires_at) = mock.issue_tokens(3600);
        let v = admin
            .import(&format!("{tier}-sub"), &access, &refresh, expires_at)
            .await;
        assert_eq!(v["oauth"]["tier"], tier, "{v}");
        assert!(
            mock.profile_requests()
                .iter()
                .any(|p| p.bearer().as_deref() == Some(access.as_str()) && betas(p).iter().any(|f| f == OAUTH_BETA)),
            "the profile was read with the account's token and the beta flag"
        );
    }

    for model in ["claude-opus-4-1-20250805", "claude-opus-4-1", "claude-3-opus-20240229"] {
        assert_relay_refusal(&send(&pro, model).await, 503, &format!("pro: {model}"));
    }
    assert!(pro_mock.messages().is_empty(), "refused models never reach the API");
    for model in ["claude-opus-4-5", SONNET] {
        let r = send(&pro, model).await;
        assert_eq!(r.status, 200, "pro: {model}: {}", r.body);
    }
    assert_eq!(pro_mock.messages().len(), 2);

    for model in ["claude-opus-4-5", "claude-opus-4-1-20250805"] {
        assert_relay_refusal(&send(&free, model).await, 503, &format!("free: {model}"));
    }
    assert!(free_mock.messages().is_empty());
    let r = send(&free, SONNET).await;
    assert_eq!(r.status, 200, "free: sonnet: {}", r.body);

    let r = send(&open, "claude-opus-4-1-20250805").await;
    assert_eq!(r.status, 200, "an emptied pro list: {}", r.body);
    assert_eq!(open_mock.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utilization_headers_and_the_usage_endpoint_show_in_the_account_view() {
    let (mock, relay, admin) = setup(&[("usage_poll", "1s")]).await;
    let (access, refresh, expires_at) = mock.issue_tokens(3600);
    let view = admin.import("metered", &access, &refresh, expires_at).await;
    let id = view["id"].as_str().unwrap().to_string();
    // Never picked (a worse priority): its utilization comes from the usage endpoint alone.
    let (access2, refresh2, expires_at2) = mock.issue_tokens(3600);
    let a = admin
        .post(
            IMPORT,
            json!({"name": "polled", "access_token": access2, "refresh_token": refresh2,
                   "expires_at": expires_at2, "priority": 90}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);

    let r = send(&relay, SONNET).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = admin.account(&id).await;
    let rl = &v["ratelimit"];
    assert_eq!(rl["five_hour_utilization"], 0.25, "{v}");
    assert_eq!(rl["seven_day_utilization"], 0.5, "{v}");
    assert_eq!(rl["status"], "allowed", "{v}");

    // The refresher stays out of the way (`refresh_check: 1h`): usage polling has its own pace.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let v = loop {
        let v = admin.account(&id).await;
        if v["oauth"]["usage"]["five_hour"]["utilization"] == 42.0 {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "with usage_poll: 1s and refresh_check: 1h, the usage endpoint was read {} time(s) in 10 s; oauth.usage: {}",
            mock.usage_calls(),
            v["oauth"]["usage"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let u = &v["oauth"]["usage"];
    assert_eq!(u["five_hour"]["resets_at"], "2026-11-27T20:00:00Z", "{v}");
    assert_eq!(u["seven_day"]["utilization"], 17.0, "{v}");
    assert_eq!(u["seven_day"]["resets_at"], "2026-12-01T00:00:00Z", "{v}");
    assert_eq!(u["seven_day_opus"], Value::Null, "{v}");
    assert_eq!(u["seven_day_sonnet"]["utilization"], 3.0, "{v}");
    assert_near(&u["fetched_at"], now_ms(), 15_000, "usage.fetched_at");

    // The same figures as gauges (0 to 1): the headers where the account answered, else the
    // usage endpoint's percents.
    for (account, window, want) in [
        ("metered", "5h", 0.25),
        ("metered", "7d", 0.5),
        ("polled", "5h", 0.42),
        ("polled", "7d", 0.17),
    ] {
        let line = format!("relay_account_utilization_ratio{{account=\"{account}\",window=\"{window}\"}}");
        let got = eventually(|| async { metric(&relay, &line).await }).await;
        assert!((got - want).abs() < 1e-9, "{line} = {got}, want {want}");
    }

    eventually(|| async { (mock.usage_calls() >= 4).then_some(()) }).await; // two accounts, polled again
    let first = &mock.usage_requests()[0];
    assert_eq!(first.bearer().as_deref(), Some(access.as_str()));
    assert!(betas(first).iter().any(|f| f == OAUTH_BETA), "{:?}", first.headers);
    assert_eq!(mock.refresh_count(), 0);
    admin.assert_no_tokens(&mock);
    assert_log_clean(&mock, &relay.log_text());
}

async fn redis_answers(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let ping = async {
        let mut c = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING").query_async::<String>(&mut c).await.ok()
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), ping).await, Ok(Some(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_refresh_an_expired_token_once() {
    let url = redis_url();
    // Like the other Redis tests, this one needs a real Redis (CI starts one): it fails, not skips.
    assert!(redis_answers(&url).await, "Redis at {url} does not answer");
    let prefix = redis_prefix();
    let mock = MockOAuth::start().await;
    mock.set_refresh_delay(Duration::from_millis(500));
    let extra = format!(
        "store: {{ backend: redis, url: \"{url}\", prefix: \"{prefix}\" }}\n{}",
        config(&mock, &[])
    );
    let (a, b) = tokio::join!(RelayProcess::start(&extra), RelayProcess::start(&extra));
    let (admin_a, admin_b) = (Admin::login(&a).await, Admin::login(&b).await);
    let (old_access, old_refresh, _) = mock.issue_tokens(3600);
    admin_a
        .import("shared", &old_access, &old_refresh, now_ms() - 60_000)
        .await;
    eventually(|| async { admin_b.lists("shared").await.then_some(()) }).await;

    let http = client();
    let replies = join_all((0..100).map(|i| {
        send_to(
            &http,
            if i % 2 == 0 { &a } else { &b },
            "/v1/messages",
            SONNET,
            false,
            &[],
        )
    }))
    .await;
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(mock.refresh_count(), 1, "one refresh across both instances");
    let new_access = mock.latest_access_token().unwrap();
    let messages = mock.messages();
    assert_eq!(messages.len(), 100, "no request was refused and retried");
    assert!(
        messages
            .iter()
            .all(|m| m.bearer().as_deref() == Some(new_access.as_str()))
    );
    admin_a.assert_no_tokens(&mock);
    admin_b.assert_no_tokens(&mock);
    assert_log_clean(&mock, &a.log_text());
    assert_log_clean(&mock, &b.log_text());

    drop(a);
    drop(b);
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis_cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_during_a_refresh_does_not_lose_the_rotated_token() {
    let (mock, relay, admin) = setup(&[]).await;
    mock.set_refresh_delay(Duration::from_millis(800));
    let (_, old_refresh, _) = mock.issue_tokens(3600);
    let (old_access, _, _) = mock.issue_tokens(3600);
    let view = admin
        .import("leaver", &old_access, &old_refresh, now_ms() - 60_000)
        .await;
    let id = view["id"].as_str().unwrap().to_string();

    // The client gives up while the token endpoint is still answering.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let gone = impatient
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .header("content-type", "application/json")
        .body(message_body(SONNET, false))
        .send()
        .await;
    assert!(gone.is_err(), "the client should have timed out");

    // The refresh finishes anyway and its rotated refresh token is kept: the next request is
    // served with the new access token, without a second refresh (which the rotation would
    // refuse if the old refresh token had been used again).
    eventually(|| async { (mock.refresh_count() == 1 && mock.latest_access_token().is_some()).then_some(()) }).await;
    let v = eventually(|| async {
        let v = admin.account(&id).await;
        v["oauth"]["refreshed_at"].is_i64().then_some(v)
    })
    .await;
    assert_eq!(v["health"]["state"], "active", "{v}");
    let r = send(&relay, SONNET).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(mock.refresh_count(), 1, "no second refresh");
    let new_access = mock.latest_access_token().unwrap();
    assert_eq!(
        mock.messages().last().unwrap().bearer().as_deref(),
        Some(new_access.as_str())
    );
    assert_log_clean(&mock, &relay.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_calls_go_through_the_accounts_outbound_proxy() {
    let mock = MockOAuth::start().await;
    let proxy = support::proxies::ProxyServer::socks5(&[("pu", "pp")]).await;
    let relay = RelayProcess::start(&config(&mock, &[])).await;
    let admin = Admin::login(&relay).await;
    let (access, refresh, _) = mock.issue_tokens(3600);
    let a = admin
        .post(
            IMPORT,
            json!({"name": "proxied", "access_token": access, "refresh_token": refresh,
                   "expires_at": now_ms() - 60_000, "proxy": proxy.url(Some(("pu", "pp")))}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert!(!a.text.contains("pp@"), "the proxy password is not shown: {}", a.text);

    let r = send(&relay, SONNET).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(mock.refresh_count(), 1);
    let to_mock = |c: &support::proxies::Conn| match &c.target {
        Some(support::proxies::Target::Addr(a)) => *a == mock.addr,
        Some(support::proxies::Target::Name(h, p)) => h == "127.0.0.1" && *p == mock.addr.port(),
        None => false,
    };
    let conns = proxy.conns();
    assert!(
        conns.len() >= 2
            && conns
                .iter()
                .all(|c| to_mock(c) && c.credentials == Some(("pu".into(), "pp".into()))),
        "the refresh and the request both went through the proxy: {conns:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_without_refresh_token_is_passed_on_and_the_account_benched() {
    let (mock, relay, admin) = setup(&[]).await;
    let (access, _, expires_at) = mock.issue_tokens(3600);
    let a = admin
        .post(
            IMPORT,
            json!({"name": "setup", "access_token": access, "expires_at": expires_at}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let id = a.json["id"].as_str().unwrap().to_string();
    mock.revoke_access_tokens();

    let r = send(&relay, SONNET).await;
    assert_eq!(r.status, 401, "the upstream's refusal, as it was: {}", r.body);
    assert_eq!(
        r.headers.get("x-relay-error-source").and_then(|v| v.to_str().ok()),
        Some("upstream")
    );
    assert_eq!(mock.refresh_count(), 0, "nothing to refresh with");
    assert_eq!(mock.messages().len(), 1);
    let v = admin.account(&id).await;
    assert_eq!(v["health"]["state"], "unauthorized", "{v}");
    let r = send(&relay, SONNET).await;
    assert_relay_refusal(&r, 503, "benched account");
    assert_eq!(mock.messages().len(), 1, "the benched account is not tried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setup_token_in_the_config_file_serves_with_bearer_and_beta() {
    let mock = MockOAuth::start().await;
    let (access, _, _) = mock.issue_tokens(3600);
    let extra = format!(
        "{}accounts:\n  - {{ name: yaml-sub, kind: claude-oauth, api_key: \"{access}\" }}\n",
        config(&mock, &[])
    );
    let relay = RelayProcess::start(&extra).await;
    let r = send_to(
        &client(),
        &relay,
        "/v1/messages",
        SONNET,
        false,
        &[("anthropic-beta", "a-1")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = mock.messages();
    assert_eq!(seen[0].bearer().as_deref(), Some(access.as_str()));
    assert_eq!(betas(&seen[0]), ["a-1", OAUTH_BETA]);
    assert!(seen[0].header("x-api-key").is_none());

    let admin = Admin::login(&relay).await;
    let v = admin.account("config.yaml-sub").await;
    assert_eq!(v["kind"], "claude-oauth", "{v}");
    assert_eq!(v["api_key"], Value::Null, "{v}");
    assert_eq!(v["oauth"]["setup_token"], true, "{v}");
    assert_eq!(v["oauth"]["refresh_token"], Value::Null, "{v}");
    admin.assert_no_tokens(&mock);
    assert_log_clean(&mock, &relay.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_an_oauth_account_keeps_its_tokens_and_refuses_credential_changes() {
    let (mock, relay, admin) = setup(&[]).await;
    let (access, refresh, _) = mock.issue_tokens(3600);
    let view = admin.import("editable", &access, &refresh, now_ms() - 60_000).await;
    let id = view["id"].as_str().unwrap().to_string();
    // The request refreshes the token; the edit afterwards must not bring the old pair back.
    assert_eq!(send(&relay, SONNET).await.status, 200);
    assert_eq!(mock.refresh_count(), 1);
    let path = format!("/admin/api/accounts/{id}");
    let a = admin
        .call(Method::PATCH, &path, Some(json!({"priority": 7, "name": "renamed"})))
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json["priority"], 7);
    assert_eq!(a.json["name"], "renamed");
    assert!(a.json["oauth"]["refreshed_at"].is_i64(), "{}", a.text);
    for body in [json!({"api_key": "sk-ant-api03-x"}), json!({"kind": "claude-console"})] {
        let a = admin.call(Method::PATCH, &path, Some(body.clone())).await;
        assert_400(&a, &body.to_string());
    }
    // After the reload the edit caused, requests still use the refreshed token, with no refresh.
    let r = send(&relay, SONNET).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(mock.refresh_count(), 1);
    let new_access = mock.latest_access_token().unwrap();
    assert_eq!(
        mock.messages().last().unwrap().bearer().as_deref(),
        Some(new_access.as_str())
    );
    admin.assert_no_tokens(&mock);
}
