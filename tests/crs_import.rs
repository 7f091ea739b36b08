//! `claude-relay import-crs`: a real Redis filled the way Claude Relay Service fills it (its key
//! names, hash fields, and secrets encrypted by Node's crypto exactly as CRS does: see
//! `tests/fixtures/crs/make_secrets.js`), imported through the real binary into both store
//! backends; the relay then serves the imported keys and accounts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Output;

use claude_relay::store::Store;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::mock::MockUpstream;
use support::{RelayProcess, SECRET, eventually, redis_cleanup, redis_prefix, redis_url};

/// The client keys CRS handed out (plaintext known to their holders only).
const MAIN: &str = "cr_1111111111111111111111111111111111111111111111111111111111111111";
const LIMITED: &str = "cr_2222222222222222222222222222222222222222222222222222222222222222";
const GROUPED: &str = "cr_3333333333333333333333333333333333333333333333333333333333333333";
const DELETED: &str = "cr_4444444444444444444444444444444444444444444444444444444444444444";

const KEY_MAIN: &str = "0a000000-0000-4000-8000-000000000001";
const KEY_LIMITED: &str = "0a000000-0000-4000-8000-000000000002";
const KEY_GROUPED: &str = "0a000000-0000-4000-8000-000000000003";
const KEY_DELETED: &str = "0a000000-0000-4000-8000-000000000004";
const CONSOLE_A: &str = "0b000000-0000-4000-8000-00000000000a";
const CONSOLE_B: &str = "0b000000-0000-4000-8000-00000000000b";
const GROUP: &str = "0c000000-0000-4000-8000-000000000001";

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/crs/secrets.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn crs_url(db: u32) -> String {
    format!("{}/{db}", redis_url().trim_end_matches('/'))
}

async fn crs_conn(db: u32) -> MultiplexedConnection {
    let c = redis::Client::open(crs_url(db)).unwrap();
    let mut conn = c.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
    conn
}

async fn hset(c: &mut MultiplexedConnection, key: &str, fields: &[(&str, String)]) {
    let mut cmd = redis::cmd("HSET");
    cmd.arg(key);
    for (k, v) in fields {
        cmd.arg(*k).arg(v);
    }
    let _: () = cmd.query_async(c).await.unwrap();
}

async fn cmd(c: &mut MultiplexedConnection, args: &[&str]) {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: () = cmd.query_async(c).await.unwrap();
}

/// CRS's key hash: SHA-256(key ‖ ENCRYPTION_KEY), hex.
fn crs_hash(key: &str, encryption_key: &str) -> String {
    hex::encode(Sha256::digest(format!("{key}{encryption_key}").as_bytes()))
}

fn s(v: &str) -> String {
    v.to_string()
}

fn day(offset_days: i64) -> (String, i64) {
    let now = chrono::Utc::now().timestamp();
    let start = now - now.rem_euclid(86_400) + offset_days * 86_400;
    let d = chrono::DateTime::from_timestamp(start, 0).unwrap();
    (d.format("%Y-%m-%d").to_string(), start)
}

/// Fills CRS's Redis: 4 keys (one deleted), 11 accounts of 11 kinds (two unsupported), a group,
/// usage counters.
async fn fill(c: &mut MultiplexedConnection, mock_a: &str, mock_b: &str) {
    let fx = fixture();
    let k = fx["encryption_key"].as_str().unwrap();
    let e = |n: &str| fx["encrypted"][n].as_str().unwrap().to_string();
    let created = s("2026-01-02T03:04:05.000Z");

    // API keys.
    let key = |id: &str, plain: &str, name: &str| {
        vec![
            ("id", s(id)),
            ("name", s(name)),
            ("apiKey", crs_hash(plain, k)),
            ("isActive", s("true")),
            ("createdAt", created.clone()),
            ("permissions", s("[]")),
            ("expirationMode", s("fixed")),
            ("expiresAt", s("2099-01-01T00:00:00.000Z")),
            ("concurrencyLimit", s("0")),
            ("rateLimitWindow", s("0")),
            ("rateLimitRequests", s("0")),
            ("tokenLimit", s("0")),
            ("dailyCostLimit", s("0")),
            ("claudeAccountId", s("")),
            ("claudeConsoleAccountId", s("")),
            ("geminiAccountId", s("")),
        ]
    };
    let mut main = key(KEY_MAIN, MAIN, "Team Alpha");
    main.extend([
        ("claudeConsoleAccountId", s(CONSOLE_A)),
        ("permissions", s(r#"["claude"]"#)),
        ("concurrencyLimit", s("2")),
        ("tags", s(r#"["team-a","imported"]"#)),
        ("description", s("the team's key")),
        ("enableModelRestriction", s("true")),
        ("restrictedModels", s(r#"["claude-opus-4-1"]"#)),
        ("dailyCostLimit", s("5")),
        ("weeklyOpusCostLimit", s("20")),
        ("weeklyResetDay", s("3")),
        ("weeklyResetHour", s("6")),
    ]);
    hset(c, &format!("apikey:{KEY_MAIN}"), &main).await;
    let mut limited = key(KEY_LIMITED, LIMITED, "Limited");
    limited.extend([
        ("claudeConsoleAccountId", s(CONSOLE_A)),
        ("rateLimitWindow", s("60")),
        ("rateLimitRequests", s("2")),
    ]);
    hset(c, &format!("apikey:{KEY_LIMITED}"), &limited).await;
    let mut grouped = key(KEY_GROUPED, GROUPED, "Grouped");
    grouped.extend([
        ("claudeAccountId", format!("group:{GROUP}")),
        ("geminiAccountId", s("0b000000-0000-4000-8000-0000000000e1")),
        ("permissions", s(r#"["claude","droid"]"#)),
        ("enableClientRestriction", s("true")),
        ("allowedClients", s(r#"["claude_code","droid_cli"]"#)),
        ("expirationMode", s("activation")),
        ("isActivated", s("false")),
        ("activationDays", s("30")),
        ("activationUnit", s("days")),
    ]);
    hset(c, &format!("apikey:{KEY_GROUPED}"), &grouped).await;
    let mut deleted = key(KEY_DELETED, DELETED, "Gone");
    deleted.push(("isDeleted", s("true")));
    hset(c, &format!("apikey:{KEY_DELETED}"), &deleted).await;
    hset(
        c,
        "apikey:hash_map",
        &[
            (crs_hash(MAIN, k).as_str(), s(KEY_MAIN)),
            (crs_hash(LIMITED, k).as_str(), s(KEY_LIMITED)),
        ],
    )
    .await;
    cmd(c, &["ZADD", "apikey:idx:createdAt", "1", KEY_MAIN]).await;

    // Accounts.
    let common = |id: &str, name: &str, active: bool| {
        vec![
            ("id", s(id)),
            ("name", s(name)),
            ("description", s("")),
            ("priority", s("50")),
            ("isActive", active.to_string()),
            ("schedulable", s("true")),
            ("accountType", s("shared")),
            ("status", s("active")),
            ("createdAt", created.clone()),
            ("proxy", s("")),
        ]
    };
    let mut a = common(CONSOLE_A, "Console A", true);
    a.extend([
        ("platform", s("claude-console")),
        ("apiUrl", format!("{mock_a}/v1/messages")),
        ("apiKey", e("console_api_key")),
        ("supportedModels", s("{}")),
        ("maxConcurrentTasks", s("0")),
        ("dailyQuota", s("0")),
        ("quotaResetTime", s("00:00")),
    ]);
    hset(c, &format!("claude_console_account:{CONSOLE_A}"), &a).await;
    let mut b = common(CONSOLE_B, "Console B", true);
    b.extend([
        ("priority", s("1")),
        ("apiUrl", s(mock_b)),
        ("apiKey", e("console_api_key")),
        (
            "supportedModels",
            s(r#"{"claude-sonnet-4-5":"claude-sonnet-4-5-20250929"}"#),
        ),
        ("maxConcurrentTasks", s("3")),
    ]);
    hset(c, &format!("claude_console_account:{CONSOLE_B}"), &b).await;
    cmd(c, &["SADD", "claude_console_account:index", CONSOLE_A, CONSOLE_B]).await;

    let mut oauth = common("0b000000-0000-4000-8000-0000000000c1", "Claude Max", true);
    oauth.extend([
        ("schedulable", s("false")),
        ("accessToken", e("claude_access")),
        ("refreshToken", e("claude_refresh")),
        ("expiresAt", (support::now_ms() + 86_400_000).to_string()),
        ("scopes", s("user:inference user:profile")),
        ("subscriptionInfo", s(r#"{"hasClaudeMax":true,"hasClaudePro":false}"#)),
        (
            "proxy",
            s(r#"{"type":"socks5","host":"127.0.0.1","port":1080,"username":"u","password":"p@ss"}"#),
        ),
    ]);
    hset(c, "claude:account:0b000000-0000-4000-8000-0000000000c1", &oauth).await;
    let mut ccr = common("0b000000-0000-4000-8000-0000000000c2", "CCR", false);
    ccr.extend([("apiUrl", s("https://ccr.example.com")), ("apiKey", e("ccr_api_key"))]);
    hset(c, "ccr_account:0b000000-0000-4000-8000-0000000000c2", &ccr).await;
    let bedrock = json!({
        "id": "0b000000-0000-4000-8000-0000000000d1", "name": "Bedrock West", "region": "us-west-2",
        "isActive": false, "schedulable": true, "priority": 50, "accountType": "shared",
        "credentialType": "access_key", "type": "bedrock", "createdAt": created,
        "awsCredentials": fx["encrypted"]["bedrock_aws"],
        "defaultModel": "us.anthropic.claude-sonnet-4-20250514-v1:0"
    });
    cmd(
        c,
        &[
            "SET",
            "bedrock_account:0b000000-0000-4000-8000-0000000000d1",
            &bedrock.to_string(),
        ],
    )
    .await;
    let mut gapi = common("0b000000-0000-4000-8000-0000000000e1", "Gemini Key", false);
    gapi.extend([
        ("apiKey", e("gemini_api_key")),
        ("baseUrl", s("https://generativelanguage.googleapis.com")),
    ]);
    hset(c, "gemini_api_account:0b000000-0000-4000-8000-0000000000e1", &gapi).await;
    let mut resp = common("0b000000-0000-4000-8000-0000000000e2", "Responses", false);
    resp.extend([
        ("apiKey", e("responses_api_key")),
        ("baseApi", s("https://api.openai.com")),
    ]);
    hset(
        c,
        "openai_responses_account:0b000000-0000-4000-8000-0000000000e2",
        &resp,
    )
    .await;
    let mut azure = common("0b000000-0000-4000-8000-0000000000e3", "Azure", false);
    azure.extend([
        ("apiKey", e("azure_api_key")),
        ("azureEndpoint", s("https://res.openai.azure.com")),
        ("apiVersion", s("2024-02-01")),
        ("deploymentName", s("gpt4o-dep")),
        ("supportedModels", s(r#"["gpt-4o"]"#)),
    ]);
    hset(c, "azure_openai:account:0b000000-0000-4000-8000-0000000000e3", &azure).await;
    let mut codex = common("0b000000-0000-4000-8000-0000000000e4", "Codex", false);
    codex.extend([
        ("accessToken", e("openai_access")),
        ("refreshToken", e("openai_refresh")),
        ("accountId", s("acct-123")),
        ("expiresAt", (support::now_ms() + 86_400_000).to_string()),
    ]);
    hset(c, "openai:account:0b000000-0000-4000-8000-0000000000e4", &codex).await;
    let mut anti = common("0b000000-0000-4000-8000-0000000000f1", "Antigravity", false);
    anti.extend([("oauthProvider", s("antigravity")), ("accessToken", e("claude_access"))]);
    hset(c, "gemini_account:0b000000-0000-4000-8000-0000000000f1", &anti).await;
    hset(
        c,
        "droid:account:0b000000-0000-4000-8000-0000000000f2",
        &common("0b000000-0000-4000-8000-0000000000f2", "Droid", true),
    )
    .await;

    // A group with Console B.
    hset(
        c,
        &format!("account_group:{GROUP}"),
        &[
            ("id", s(GROUP)),
            ("name", s("Team")),
            ("platform", s("claude")),
            ("description", s("the team")),
        ],
    )
    .await;
    cmd(c, &["SADD", &format!("account_group_members:{GROUP}"), CONSOLE_B]).await;
    cmd(c, &["SADD", "account_groups", GROUP]).await;

    // Usage: two days and the all-time totals of the main key, a day of Console A.
    let (yesterday, _) = day(-1);
    let (today, _) = day(0);
    let fields = |req: u64, input: u64, output: u64| {
        vec![
            ("requests", req.to_string()),
            ("inputTokens", input.to_string()),
            ("outputTokens", output.to_string()),
            ("cacheCreateTokens", s("50")),
            ("cacheReadTokens", s("30")),
            ("ephemeral5mTokens", s("40")),
            ("ephemeral1hTokens", s("10")),
            ("allTokens", (input + output + 80).to_string()),
        ]
    };
    hset(c, &format!("usage:daily:{KEY_MAIN}:{yesterday}"), &fields(7, 1000, 200)).await;
    hset(c, &format!("usage:daily:{KEY_MAIN}:{today}"), &fields(3, 100, 20)).await;
    cmd(c, &["SET", &format!("usage:cost:daily:{KEY_MAIN}:{yesterday}"), "1.25"]).await;
    hset(
        c,
        &format!("usage:{KEY_MAIN}"),
        &[
            ("totalRequests", s("10")),
            ("totalInputTokens", s("1100")),
            ("totalOutputTokens", s("220")),
        ],
    )
    .await;
    hset(
        c,
        &format!("account_usage:daily:{CONSOLE_A}:{yesterday}"),
        &fields(7, 1000, 200),
    )
    .await;
    hset(c, &format!("usage:daily:{KEY_DELETED}:{yesterday}"), &fields(1, 1, 1)).await;
}

async fn dbsize(c: &mut MultiplexedConnection) -> u64 {
    redis::cmd("DBSIZE").query_async(c).await.unwrap()
}

/// Runs `claude-relay --config <conf> import-crs ...` with CRS's key in the environment.
fn import(conf: &std::path::Path, db: u32, key: &str, extra: &[&str]) -> Output {
    std::process::Command::new(support::relay_bin())
        .arg("--config")
        .arg(conf)
        .arg("import-crs")
        .arg("--redis")
        .arg(crs_url(db))
        .args(extra)
        .env("CRS_ENCRYPTION_KEY", key)
        .env("RELAY_LOG", "info")
        .output()
        .unwrap()
}

fn json_report(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn assert_no_secret(text: &str) {
    let fx = fixture();
    for (name, v) in fx["plaintext"].as_object().unwrap() {
        assert!(!text.contains(v.as_str().unwrap()), "{name} leaked: {text}");
    }
    assert!(
        !text.contains(fx["encryption_key"].as_str().unwrap()),
        "the CRS key leaked"
    );
}

fn assert_counts(r: &Value) {
    assert_eq!(r["keys"], json!({"imported": 3, "skipped": 1}), "{r:#}");
    assert_eq!(r["accounts"], json!({"imported": 9, "skipped": 2}), "{r:#}");
    assert_eq!(r["groups"], json!({"imported": 1, "skipped": 0}), "{r:#}");
    let skipped = |crs_id: &str| {
        r["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["crs_id"] == crs_id && i["outcome"] == "skipped" && i["item"] != "usage")
            .map(|i| i["reason"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{crs_id} not skipped: {r:#}"))
    };
    assert!(skipped(KEY_DELETED).contains("deleted"));
    assert!(skipped("0b000000-0000-4000-8000-0000000000f2").contains("Droid"));
    assert!(skipped("0b000000-0000-4000-8000-0000000000f1").contains("Antigravity"));
    let grouped = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["crs_id"] == KEY_GROUPED)
        .unwrap();
    let notes = grouped["notes"].to_string();
    assert!(
        notes.contains("droid permission dropped") && notes.contains("droid_cli"),
        "{notes}"
    );
    assert!(
        notes.contains("geminiAccountId"),
        "the second binding is reported: {notes}"
    );
}

async fn post(relay: &RelayProcess, key: &str) -> u16 {
    support::client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", key)
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn our_hash(key: &str) -> String {
    claude_relay::secrets::Secrets::new(SECRET)
        .unwrap()
        .hash_client_key_hex(key)
}

/// Checks the imported usage through the admin API (before the relay served anything).
async fn assert_usage(relay: &RelayProcess) {
    let token = relay.admin_token().await;
    let c = support::client();
    let get = |q: String| {
        let c = c.clone();
        let token = token.clone();
        let url = format!("{}/admin/api/usage?{q}", relay.admin());
        async move {
            c.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let main = format!("crs-{KEY_MAIN}");
    let totals = get("dimension=key".into()).await;
    assert_eq!(totals["totals_by_subject"][&main]["requests"], 10, "{totals:#}");
    assert_eq!(totals["totals_by_subject"][&main]["input_tokens"], 1100, "{totals:#}");
    let (_, from) = day(-1);
    let series = get(format!(
        "dimension=key&id={main}&granularity=day&from={from}&to={}",
        from + 2 * 86_400
    ))
    .await;
    assert_eq!(series["totals"]["requests"], 10, "{series:#}");
    assert_eq!(series["totals"]["output_tokens"], 220, "{series:#}");
    assert_eq!(series["totals"]["cache_write_5m_tokens"], 80, "{series:#}");
    assert_eq!(series["totals"]["cost_nanos"], 1_250_000_000u64, "{series:#}");
    let acct = get(format!(
        "dimension=account&id=crs-{CONSOLE_A}&granularity=day&from={from}&to={}",
        from + 2 * 86_400
    ))
    .await;
    assert_eq!(acct["totals"]["requests"], 7, "{acct:#}");
}

#[tokio::test]
async fn crs_import_into_the_embedded_store() {
    const DB: u32 = 11;
    let mut crs = crs_conn(DB).await;
    let mock_a = MockUpstream::start().await;
    let mock_b = MockUpstream::start().await;
    fill(&mut crs, &mock_a.url(), &mock_b.url()).await;
    let keys_before = dbsize(&mut crs).await;
    let fx = fixture();
    let crs_key = fx["encryption_key"].as_str().unwrap();

    let work = tempfile::tempdir().unwrap();
    let store_dir = work.path().join("store");
    let conf = work.path().join("import.yaml");
    std::fs::write(
        &conf,
        format!(
            "secret_key: {SECRET}\ndata_dir: {}\nstore: {{ backend: embedded, path: {} }}\n",
            work.path().join("data").display(),
            store_dir.display()
        ),
    )
    .unwrap();
    let stored = || async {
        let s = claude_relay::store::embedded::EmbeddedStore::open(&store_dir).unwrap();
        (s.list_api_keys().await.unwrap(), s.list_accounts().await.unwrap())
    };

    // A dry run reports and writes nothing.
    let dry = import(&conf, DB, crs_key, &["--dry-run", "--json"]);
    assert_no_secret(&String::from_utf8_lossy(&dry.stdout));
    assert_no_secret(&String::from_utf8_lossy(&dry.stderr));
    let report = json_report(&dry);
    assert_eq!(report["dry_run"], true);
    assert_counts(&report);
    assert_eq!(stored().await, (vec![], vec![]), "a dry run writes nothing");

    // A wrong key is refused, naming the problem, and writes nothing.
    let wrong = import(&conf, DB, "not-the-crs-key", &[]);
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        err.contains("does not decrypt") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(stored().await, (vec![], vec![]));

    // The import, twice: the second run updates what the first wrote.
    let text = import(&conf, DB, crs_key, &[]);
    assert!(text.status.success(), "{}", String::from_utf8_lossy(&text.stderr));
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert_no_secret(&text);
    assert!(text.contains("imported 3 keys, 9 accounts, 1 groups"), "{text}");
    assert!(text.contains("not supported"), "{text}");
    let again = json_report(&import(&conf, DB, crs_key, &["--json"]));
    assert_counts(&again);
    assert_eq!(dbsize(&mut crs).await, keys_before, "CRS's Redis is only read");

    let (keys, accounts) = stored().await;
    assert_eq!((keys.len(), accounts.len()), (3, 9));
    let main = keys.iter().find(|k| k.id == format!("crs-{KEY_MAIN}")).unwrap();
    assert_eq!(main.key_hash, crs_hash(MAIN, crs_key), "imported under CRS's hash");
    assert!(main.legacy_hash.is_some());
    assert_eq!(main.name, "Team Alpha");
    assert_eq!(main.tags, vec!["team-a", "imported"]);
    assert_eq!(main.bind.as_deref(), Some("Console A"));
    let policy = serde_json::to_value(&main.policy).unwrap();
    assert_eq!(policy["permissions"], json!(["claude"]));
    assert_eq!(policy["concurrency"]["limit"], 2);
    assert_eq!(policy["model_blacklist"], json!(["claude-opus-4-1"]));
    assert_eq!(policy["cost_limits"]["weekly_reset"], "wed 06:00");
    assert_eq!(policy["expires_at"], "2099-01-01T00:00:00Z");
    let grouped = keys.iter().find(|k| k.id == format!("crs-{KEY_GROUPED}")).unwrap();
    assert_eq!(grouped.bind.as_deref(), Some("group:Team"));
    let gp = serde_json::to_value(&grouped.policy).unwrap();
    assert_eq!(
        (gp["activate_for"].clone(), gp["clients"].clone()),
        (json!("30d"), json!(["claude_code"]))
    );
    let b = accounts.iter().find(|a| a.id == format!("crs-{CONSOLE_B}")).unwrap();
    assert_eq!(b.settings["group"], "Team");
    assert_eq!(
        b.settings["model_map"]["claude-sonnet-4-5"],
        "claude-sonnet-4-5-20250929"
    );
    assert_eq!(b.settings["max_concurrency"], 3);
    let oauth = accounts.iter().find(|a| a.settings["kind"] == "claude-oauth").unwrap();
    assert_eq!(oauth.settings["enabled"], false, "not schedulable in CRS");
    assert!(oauth.proxy.is_some());
    assert_eq!(oauth.oauth.as_ref().unwrap().tier.as_deref(), Some("max"));
    let kinds: std::collections::BTreeSet<String> = accounts
        .iter()
        .map(|a| a.settings["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds.len(),
        8,
        "two Console accounts, and one of each other kind: {kinds:?}"
    );

    // The relay on the imported store.
    let extra = format!("store: {{ backend: embedded, path: {} }}\n", store_dir.display());
    let mut relay = RelayProcess::start(&extra).await;
    assert_usage(&relay).await;

    // A CRS key works, relayed to its bound account with the decrypted upstream key.
    assert_eq!(post(&relay, MAIN).await, 200);
    let seen = mock_a.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("x-api-key").as_deref(),
        fx["plaintext"]["console_api_key"].as_str()
    );
    assert_eq!(mock_b.hits(), 0, "the binding holds");
    // Its limits hold: two requests an hour.
    assert_eq!(post(&relay, LIMITED).await, 200);
    assert_eq!(post(&relay, LIMITED).await, 200);
    assert_eq!(post(&relay, LIMITED).await, 429);
    // A deleted key and a wrong key do not.
    assert_eq!(post(&relay, DELETED).await, 401);

    // After its first use the key is under our hash, and the legacy form is gone.
    let token = relay.admin_token().await;
    let hint = claude_relay::secrets::mask(MAIN);
    eventually(|| {
        let token = token.clone();
        let url = format!("{}/admin/api/keys/crs-{KEY_MAIN}", relay.admin());
        let hint = hint.clone();
        async move {
            let v: Value = support::client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["hint"] == hint.as_str()).then_some(())
        }
    })
    .await;
    assert_eq!(post(&relay, MAIN).await, 200, "works after the move");
    relay.stop();
    let (keys, _) = stored().await;
    let main = keys.iter().find(|k| k.id == format!("crs-{KEY_MAIN}")).unwrap();
    assert_eq!(main.key_hash, our_hash(MAIN));
    assert!(main.legacy_hash.is_none());
    // The limited key moved too; the grouped one, never used, still waits.
    let grouped = keys.iter().find(|k| k.id == format!("crs-{KEY_GROUPED}")).unwrap();
    assert!(grouped.legacy_hash.is_some());

    // A re-import keeps the moved key's hash.
    assert_counts(&json_report(&import(&conf, DB, crs_key, &["--json"])));
    let (keys, _) = stored().await;
    let main = keys.iter().find(|k| k.id == format!("crs-{KEY_MAIN}")).unwrap();
    assert_eq!(
        (main.key_hash.clone(), main.legacy_hash.is_none()),
        (our_hash(MAIN), true)
    );

    // And after a restart it still works.
    let relay = RelayProcess::start(&extra).await;
    assert_eq!(post(&relay, MAIN).await, 200);
    assert_eq!(mock_a.hits(), 5);
    drop(relay);
    let _: () = redis::cmd("FLUSHDB").query_async(&mut crs).await.unwrap();
}

#[tokio::test]
async fn crs_import_into_the_redis_store() {
    const DB: u32 = 12;
    let mut crs = crs_conn(DB).await;
    let mock_a = MockUpstream::start().await;
    let mock_b = MockUpstream::start().await;
    fill(&mut crs, &mock_a.url(), &mock_b.url()).await;
    let crs_key = fixture()["encryption_key"].as_str().unwrap().to_string();
    let prefix = redis_prefix();
    let store_yaml = format!(
        "store: {{ backend: redis, url: \"{}\", prefix: \"{prefix}\" }}\n",
        redis_url()
    );

    let work = tempfile::tempdir().unwrap();
    let conf = work.path().join("import.yaml");
    std::fs::write(
        &conf,
        format!(
            "secret_key: {SECRET}\ndata_dir: {}\n{store_yaml}",
            work.path().join("data").display()
        ),
    )
    .unwrap();
    let key_file = work.path().join("crs.key");
    std::fs::write(&key_file, format!("{crs_key}\n")).unwrap();
    let out = std::process::Command::new(support::relay_bin())
        .arg("--config")
        .arg(&conf)
        .args(["import-crs", "--redis", &crs_url(DB), "--json", "--encryption-key-file"])
        .arg(&key_file)
        .output()
        .unwrap();
    let report = json_report(&out);
    assert_eq!(report["dry_run"], false);
    assert_counts(&report);

    let store = claude_relay::store::redis::RedisStore::connect_with_prefix(&redis_url(), &prefix)
        .await
        .unwrap();
    assert_eq!(store.list_accounts().await.unwrap().len(), 9);
    let relay = RelayProcess::start(&store_yaml).await;
    assert_usage(&relay).await;

    // The same through the admin API: a dry run answers the report; a wrong key is a 400.
    let token = relay.admin_token().await;
    let call = |body: Value| {
        let url = format!("{}/admin/api/import/crs", relay.admin());
        let token = token.clone();
        async move {
            support::client()
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let r = call(json!({"redis_url": crs_url(DB), "encryption_key": crs_key, "dry_run": true})).await;
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["dry_run"], true);
    assert_counts(&report);
    let r = call(json!({"redis_url": crs_url(DB), "encryption_key": "wrong"})).await;
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("does not decrypt"), "{body}");
    assert_no_secret(&relay.log_text());
    assert_eq!(post(&relay, MAIN).await, 200);
    assert_eq!(
        mock_a.seen()[0].header("x-api-key").as_deref(),
        fixture()["plaintext"]["console_api_key"].as_str()
    );
    let moved = eventually(|| async {
        let k = store.get_api_key(&format!("crs-{KEY_MAIN}")).await.ok()??;
        k.legacy_hash.is_none().then_some(k)
    })
    .await;
    assert_eq!(moved.key_hash, our_hash(MAIN));
    assert_eq!(post(&relay, MAIN).await, 200);
    drop(relay);
    redis_cleanup(&prefix).await;
    let _: () = redis::cmd("FLUSHDB").query_async(&mut crs).await.unwrap();
}
