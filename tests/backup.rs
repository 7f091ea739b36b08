//! Backups through the real binary: `claude-relay export` / `import` and the admin API's
//! `/admin/api/export` / `/admin/api/import`, on the embedded store and on Redis and across them,
//! into a relay with another `secret_key`; a wrong passphrase, a changed file and a non-empty
//! store; scheduled backups, their pruning, and one writer per period on a shared Redis.
//!
//! The Redis tests use `RELAY_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/`), each under a
//! random prefix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::admin::Admin;
use support::mock::MockUpstream;
use support::openai_mock::OpenAiMock;
use support::{RelayProcess, client, eventually, redis_cleanup, redis_prefix, redis_url, relay_bin};

const PASSPHRASE: &str = "correct horse battery staple";
/// Another secret key than the one every test relay has by default.
const OTHER_SECRET: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
const CONSOLE_SECRET: &str = "sk-ant-api03-backup-console-upstream-secret";
const OPENAI_SECRET: &str = "sk-proj-backup-openai-upstream-secret";
const MESSAGES: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
const CHAT: &str = r#"{"model":"gpt-5","messages":[{"role":"user","content":"say hi"}]}"#;
/// The requests the test key may make per window.
const RATE: u64 = 3;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Backend {
    Embedded,
    Redis,
}

/// A relay's Redis prefix, if any.
struct Prefix(Option<String>);

impl Prefix {
    async fn cleanup(self) {
        if let Some(p) = self.0 {
            redis_cleanup(&p).await;
        }
    }
}

/// The `store:` (and `secret_key:`) lines of a relay on `backend`.
fn store_yaml(backend: Backend, other_secret: bool) -> (String, Prefix) {
    let mut yaml = String::new();
    if other_secret {
        yaml.push_str(&format!("secret_key: {OTHER_SECRET}\n"));
    }
    match backend {
        Backend::Embedded => (yaml, Prefix(None)),
        Backend::Redis => {
            let p = redis_prefix();
            yaml.push_str(&format!(
                "store: {{ backend: redis, url: \"{}\", prefix: \"{p}\" }}\n",
                redis_url()
            ));
            (yaml, Prefix(Some(p)))
        }
    }
}

/// `claude-relay --config <config> ARGS` with the passphrase in the environment when given.
fn cli(config: &Path, args: &[&str], passphrase: Option<&str>) -> Output {
    let mut cmd = Command::new(relay_bin());
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("RELAY_BACKUP_PASSPHRASE");
    if let Some(p) = passphrase {
        cmd.env("RELAY_BACKUP_PASSPHRASE", p);
    }
    cmd.output().unwrap()
}

fn ok(out: &Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed: {text}");
    text
}

fn failed(out: &Output, what: &str) -> String {
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{what} should have failed: {text}");
    text
}

/// What the source relay was given: its key and the two upstream mocks.
struct Source {
    relay: RelayProcess,
    prefix: Prefix,
    key: String,
    key_id: String,
    anthropic: MockUpstream,
    openai: OpenAiMock,
}

async fn messages(relay: &RelayProcess, key: &str) -> u16 {
    client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .body(MESSAGES)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn chat(relay: &RelayProcess, key: &str) -> u16 {
    client()
        .post(format!("{}/openai/v1/chat/completions", relay.base()))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(CHAT)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A relay on `backend` with a stored key (a rate limit of [`RATE`] requests an hour), a
/// `claude-console` and an `openai` account with their secrets, and served requests whose usage
/// is flushed.
async fn source(backend: Backend) -> Source {
    let anthropic = MockUpstream::start().await;
    let openai = OpenAiMock::openai(OPENAI_SECRET).await;
    let (yaml, prefix) = store_yaml(backend, false);
    let relay = RelayProcess::start(&yaml).await;
    let admin = Admin::login(&relay).await;
    let a = admin
        .post(
            "/admin/api/accounts",
            json!({"name": "console", "kind": "claude-console", "base_url": anthropic.url(),
                   "api_key": CONSOLE_SECRET, "group": "team"}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = admin
        .post(
            "/admin/api/accounts",
            json!({"name": "oa", "kind": "openai", "base_url": openai.base_url(), "api_key": OPENAI_SECRET,
                   "group": "team"}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let k = admin
        .post(
            "/admin/api/keys",
            json!({"name": "team", "bind": "group:team", "tags": ["ops"],
                   "rate_limit": {"window_minutes": 60, "requests": RATE}}),
        )
        .await;
    assert_eq!(k.status, 201, "{}", k.text);
    let key = k.json["key"].as_str().unwrap().to_string();
    // An administrator and the panel's settings travel with the backup too.
    let u = admin
        .post(
            "/admin/api/users",
            json!({"username": "olga", "password": "olga-password-1", "role": "operator"}),
        )
        .await;
    assert_eq!(u.status, 201, "{}", u.text);
    let s = admin
        .call(
            reqwest::Method::PATCH,
            "/admin/api/settings",
            Some(json!({"currency": {"display": "CNY", "rates": {"CNY": 7.1}}})),
        )
        .await;
    assert_eq!(s.status, 200, "{}", s.text);
    assert_eq!(messages(&relay, &key).await, 200);
    assert_eq!(messages(&relay, &key).await, 200);
    assert_eq!(chat(&relay, &key).await, 200);
    eventually(|| async {
        let s = admin.get("/admin/api/usage/summary").await;
        (s.json["totals"]["requests"] == 3).then_some(())
    })
    .await;
    Source {
        key_id: k.json["id"].as_str().unwrap().to_string(),
        key,
        relay,
        prefix,
        anthropic,
        openai,
    }
}

/// What a relay's statistics look like to the admin: the summary, and the minute and hour series
/// of every key, account and model (from one fixed range).
async fn statistics(relay: &RelayProcess, range: (i64, i64)) -> Value {
    let admin = Admin::login(relay).await;
    let summary = admin.get("/admin/api/usage/summary").await;
    assert_eq!(summary.status, 200, "{}", summary.text);
    let mut out = json!({"summary": summary.json});
    for (dimension, subjects) in summary.json["by_dimension"].as_object().unwrap() {
        for id in subjects.as_object().unwrap().keys() {
            for (g, span) in [("minute", 3_600), ("hour", 2 * 86_400), ("day", 5 * 86_400)] {
                let path = format!(
                    "/admin/api/usage?dimension={dimension}&id={}&granularity={g}&from={}&to={}",
                    urlencode(id),
                    range.1 - span,
                    range.1
                );
                let s = admin.get(&path).await;
                assert_eq!(s.status, 200, "{path}: {}", s.text);
                out[format!("{dimension}/{id}/{g}")] = s.json;
            }
        }
    }
    out
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// One end for every series read in a test (the start depends on the granularity).
fn range() -> (i64, i64) {
    let now = chrono::Utc::now().timestamp();
    let end = now - now.rem_euclid(60) + 120;
    (0, end)
}

/// The limits of a key as its limits view shows them.
async fn limits(relay: &RelayProcess, id: &str) -> Value {
    let admin = Admin::login(relay).await;
    let l = admin.get(&format!("/admin/api/keys/{id}/limits")).await;
    assert_eq!(l.status, 200, "{}", l.text);
    json!({"requests": l.json["rate"]["requests"]["limit"], "window_s": l.json["rate"]["window_s"]})
}

/// The statistics of `relay`, once they are `want` (an import on a running relay is seen after
/// its reload), else the last ones read after 10 s.
async fn statistics_once(relay: &RelayProcess, range: (i64, i64), want: &Value) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = statistics(relay, range).await;
        if s == *want || std::time::Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The restored relay serves like the source: the key authenticates with its limit, each
/// account reaches its mock with the original secret.
async fn serves_like_the_source(relay: &RelayProcess, src: &Source) {
    let (a0, o0) = (src.anthropic.hits(), src.openai.hits());
    assert_eq!(messages(relay, &src.key).await, 200, "{}", relay.log_text());
    assert_eq!(src.anthropic.hits(), a0 + 1);
    let seen = src.anthropic.seen().last().unwrap().header("x-api-key");
    assert_eq!(seen.as_deref(), Some(CONSOLE_SECRET));
    assert_eq!(chat(relay, &src.key).await, 200, "{}", relay.log_text());
    assert_eq!(src.openai.hits(), o0 + 1);
    assert_eq!(
        src.openai.seen().last().unwrap().bearer().as_deref(),
        Some(OPENAI_SECRET)
    );
    // The third request of the window is the last one admitted.
    assert_eq!(messages(relay, &src.key).await, 200);
    assert_eq!(messages(relay, &src.key).await, 429);
    assert_eq!(src.anthropic.hits(), a0 + 2);
}

/// The source's operator logs in to the restored relay with her password and role; the display
/// currency is the source's.
async fn users_and_settings_restored(relay: &RelayProcess) {
    let r = client()
        .post(format!("{}/admin/api/login", relay.admin()))
        .json(&json!({"username": "olga", "password": "olga-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["role"], "operator");
    let s = Admin::login(relay).await.get("/admin/api/settings").await;
    assert_eq!(s.json["currency"]["display"], "CNY", "{}", s.text);
    assert_eq!(s.json["currency"]["source"], "settings");
}

fn temp_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

/// Moves a stopped relay's directory (config, data, store) out of it, to start it again.
fn take_dir(relay: &mut RelayProcess) -> tempfile::TempDir {
    std::mem::replace(&mut relay.dir, tempfile::tempdir().unwrap())
}

/// Export with the CLI from `from`, import with the CLI into a fresh relay with another secret
/// key on `to`; the restored relay's statistics, limits and upstream secrets are the source's.
async fn cli_round_trip(from: Backend, to: Backend) {
    let mut src = source(from).await;
    let range = range();
    let before = statistics(&src.relay, range).await;
    let limits_before = limits(&src.relay, &src.key_id).await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("backup.json");
    let pass = temp_file(work.path(), "pass", &format!("{PASSPHRASE}\n"));
    if from == Backend::Embedded {
        // The embedded file is the running relay's: refused while it runs.
        let busy = cli(
            &src.relay.config_path(),
            &["export", "--out", file.to_str().unwrap()],
            Some(PASSPHRASE),
        );
        assert!(failed(&busy, "export from a running embedded relay").contains("stop the relay"));
        src.relay.stop();
    }
    let out = cli(
        &src.relay.config_path(),
        &[
            "export",
            "--out",
            file.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
        None,
    );
    ok(&out, "export");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(PASSPHRASE));
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    for secret in [CONSOLE_SECRET, OPENAI_SECRET, PASSPHRASE, &src.key] {
        assert!(!text.contains(secret), "the backup holds a plaintext secret");
    }
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["format"], "claude-relay-backup");
    assert_eq!(doc["version"], 1);
    assert_eq!(
        doc["source_backend"],
        if from == Backend::Redis { "redis" } else { "embedded" }
    );
    assert_eq!(doc["groups"][0]["name"], "team");
    assert_eq!(doc["groups"][0]["accounts"].as_array().unwrap().len(), 2);

    let (yaml, prefix) = store_yaml(to, true);
    let mut dst = RelayProcess::start(&yaml).await;
    if to == Backend::Embedded {
        dst.stop();
    }
    let out = cli(
        &dst.config_path(),
        &["import", file.to_str().unwrap()],
        Some(PASSPHRASE),
    );
    let said = ok(&out, "import");
    assert!(said.contains("1 keys, 2 accounts"), "{said}");
    let dst = if to == Backend::Embedded {
        RelayProcess::start_in(take_dir(&mut dst), &yaml, &[]).await
    } else {
        dst
    };
    assert_eq!(statistics_once(&dst, range, &before).await, before);
    users_and_settings_restored(&dst).await;
    assert_eq!(limits(&dst, &src.key_id).await, limits_before);
    assert_eq!(limits_before["requests"], RATE);
    serves_like_the_source(&dst, &src).await;
    src.prefix.cleanup().await;
    prefix.cleanup().await;
}

#[tokio::test]
async fn cli_round_trip_embedded_to_embedded() {
    cli_round_trip(Backend::Embedded, Backend::Embedded).await
}

#[tokio::test]
async fn cli_round_trip_redis_to_redis() {
    cli_round_trip(Backend::Redis, Backend::Redis).await
}

#[tokio::test]
async fn cli_round_trip_redis_to_embedded() {
    cli_round_trip(Backend::Redis, Backend::Embedded).await
}

#[tokio::test]
async fn cli_round_trip_embedded_to_redis() {
    cli_round_trip(Backend::Embedded, Backend::Redis).await
}

/// A wrong passphrase, a changed file, an unknown section and a short passphrase are refused
/// with what went wrong; an import into a store that is not empty follows its mode.
#[tokio::test]
async fn refusals_and_import_modes() {
    let src = source(Backend::Redis).await;
    let range = range();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("backup.json");
    let short = cli(
        &src.relay.config_path(),
        &["export", "--out", file.to_str().unwrap(), "--passphrase", "too short"],
        None,
    );
    assert!(failed(&short, "a short passphrase").contains("at least 12 characters"));
    let none = cli(
        &src.relay.config_path(),
        &["export", "--out", file.to_str().unwrap()],
        None,
    );
    assert!(failed(&none, "no passphrase").contains("RELAY_BACKUP_PASSPHRASE"));
    ok(
        &cli(
            &src.relay.config_path(),
            &["export", "--out", file.to_str().unwrap()],
            Some(PASSPHRASE),
        ),
        "export",
    );
    let text = std::fs::read_to_string(&file).unwrap();

    let (yaml, prefix) = store_yaml(Backend::Redis, true);
    let dst = RelayProcess::start(&yaml).await;
    let import = |path: &Path, pass: &str, mode: &[&str]| {
        let mut args = vec!["import", path.to_str().unwrap()];
        args.extend_from_slice(mode);
        cli(&dst.config_path(), &args, Some(pass))
    };
    let wrong = import(&file, "not the right passphrase", &[]);
    assert!(failed(&wrong, "a wrong passphrase").contains("wrong passphrase"));
    assert!(!String::from_utf8_lossy(&wrong.stderr).contains("not the right passphrase"));
    // One more request counted, in the readable part of the file.
    let tampered = text.replacen("\"requests\":1,", "\"requests\":2,", 1);
    assert_ne!(tampered, text);
    let tampered_file = temp_file(work.path(), "tampered.json", &tampered);
    assert!(failed(&import(&tampered_file, PASSPHRASE, &[]), "a changed file").contains("altered"));
    let unknown = temp_file(
        work.path(),
        "unknown.json",
        &text.replacen("\"sealed\"", "\"webhooks\":[],\"sealed\"", 1),
    );
    assert!(failed(&import(&unknown, PASSPHRASE, &[]), "an unknown section").contains("webhooks"));
    // Nothing was written by the refused imports.
    let admin = Admin::login(&dst).await;
    assert_eq!(
        admin.get("/admin/api/usage/summary").await.json["totals"]["requests"],
        0
    );

    ok(&import(&file, PASSPHRASE, &[]), "an import into an empty store");
    let restored = statistics_once(&dst, range, &statistics(&src.relay, range).await).await;
    let again = import(&file, PASSPHRASE, &[]);
    assert!(failed(&again, "an import into a store that is not empty").contains("not empty"));
    // Merge: keys and accounts written over by id, no bucket counted twice.
    let merged = ok(&import(&file, PASSPHRASE, &["--merge"]), "merge");
    assert!(merged.contains("0 usage buckets"), "{merged}");
    assert_eq!(statistics(&dst, range).await, restored);
    // Replace: what the store held before is gone, the backup's state is back.
    let extra = admin
        .post("/admin/api/keys", json!({"name": "later", "bind": "group:team"}))
        .await;
    assert_eq!(extra.status, 201);
    let extra_id = extra.json["id"].as_str().unwrap().to_string();
    assert_eq!(chat(&dst, extra.json["key"].as_str().unwrap()).await, 200);
    // Its usage is in the store before the replace.
    eventually(|| async {
        let s = admin.get("/admin/api/usage/summary").await;
        (s.json["totals"]["requests"] == 4).then_some(())
    })
    .await;
    ok(&import(&file, PASSPHRASE, &["--replace"]), "replace");
    assert_eq!(statistics_once(&dst, range, &restored).await, restored);
    eventually(|| async {
        let k = admin.get(&format!("/admin/api/keys/{extra_id}")).await;
        (k.status == 404).then_some(())
    })
    .await;
    serves_like_the_source(&dst, &src).await;
    src.prefix.cleanup().await;
    prefix.cleanup().await;
}

/// The admin API's export and import work like the commands, the import reloading the relay at
/// once.
#[tokio::test]
async fn admin_api_round_trip() {
    let src = source(Backend::Embedded).await;
    let range = range();
    let before = statistics(&src.relay, range).await;
    let token = src.relay.admin_token().await;
    let short = client()
        .post(format!("{}/admin/api/export", src.relay.admin()))
        .bearer_auth(&token)
        .json(&json!({"passphrase": "short"}))
        .send()
        .await
        .unwrap();
    assert_eq!(short.status(), 400);
    let r = client()
        .post(format!("{}/admin/api/export", src.relay.admin()))
        .bearer_auth(&token)
        .json(&json!({ "passphrase": PASSPHRASE }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let disposition = r.headers()["content-disposition"].to_str().unwrap().to_string();
    assert!(
        disposition.starts_with("attachment; filename=\"claude-relay-backup-"),
        "{disposition}"
    );
    let file = r.bytes().await.unwrap();
    let text = String::from_utf8_lossy(&file);
    for secret in [CONSOLE_SECRET, OPENAI_SECRET, PASSPHRASE] {
        assert!(!text.contains(secret), "the backup holds a plaintext secret");
    }

    let (yaml, prefix) = store_yaml(Backend::Redis, true);
    let dst = RelayProcess::start(&yaml).await;
    let token = dst.admin_token().await;
    let import = |mode: &str, pass: &str| {
        client()
            .post(format!("{}/admin/api/import?mode={mode}", dst.admin()))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("x-backup-passphrase", pass)
            .body(file.clone())
            .send()
    };
    let wrong = import("refuse", "not the right passphrase").await.unwrap();
    assert_eq!(wrong.status(), 400);
    let e: Value = wrong.json().await.unwrap();
    assert!(
        e["error"]["message"].as_str().unwrap().contains("wrong passphrase"),
        "{e}"
    );
    let r = import("refuse", PASSPHRASE).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["imported"]["keys"], 1, "{v}");
    assert_eq!(v["imported"]["accounts"], 2, "{v}");
    assert_eq!(v["backup"]["source_backend"], "embedded", "{v}");
    let buckets = v["imported"]["usage_buckets"].as_u64().unwrap();
    assert!(buckets > 10, "{v}");
    // Served at once: the import reloaded the relay before it answered.
    assert_eq!(statistics(&dst, range).await, before);
    serves_like_the_source(&dst, &src).await;

    let refused = import("refuse", PASSPHRASE).await.unwrap();
    assert_eq!(refused.status(), 409);
    let merged: Value = import("merge", PASSPHRASE).await.unwrap().json().await.unwrap();
    assert_eq!(merged["imported"]["usage_buckets"], 0, "{merged}");
    assert!(merged["imported"]["usage_buckets_kept"].as_u64().unwrap() >= buckets);
    let bad_mode = import("sideways", PASSPHRASE).await.unwrap();
    assert_eq!(bad_mode.status(), 400);
    prefix.cleanup().await;
}

fn backups_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("claude-relay-backup-") && n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

async fn backup_runs(relay: &RelayProcess) -> f64 {
    support::metric(relay, "relay_backup_runs_total{result=\"ok\"}")
        .await
        .unwrap_or(0.0)
}

/// Scheduled backups appear in their directory, private, readable with the passphrase, and only
/// the newest `keep` stay.
#[tokio::test]
async fn scheduled_backups_are_written_and_pruned() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("backups");
    let pass = temp_file(work.path(), "pass", PASSPHRASE);
    let relay = RelayProcess::start(&format!(
        "backup: {{ dir: {}, every: 2s, keep: 2, passphrase_file: {} }}\n",
        dir.display(),
        pass.display()
    ))
    .await;
    let admin = Admin::login(&relay).await;
    let k = admin.post("/admin/api/keys", json!({"name": "scheduled"})).await;
    assert_eq!(k.status, 201);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while backup_runs(&relay).await < 3.0 {
        assert!(std::time::Instant::now() < deadline, "{}", relay.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let names = backups_in(&dir);
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        support::metric(&relay, "relay_backup_last_success_timestamp_seconds")
            .await
            .unwrap()
            > 0.0
    );
    let newest = dir.join(names.last().unwrap());
    assert_eq!(std::fs::metadata(&newest).unwrap().permissions().mode() & 0o777, 0o600);
    let backup = claude_relay::backup::format::open(&std::fs::read(&newest).unwrap(), PASSPHRASE).unwrap();
    assert_eq!(backup.keys.len(), 1);
    assert_eq!(backup.keys[0].record["name"], "scheduled");

    // A config with scheduled backups and no passphrase does not start.
    let conf = temp_file(
        work.path(),
        "nopass.yaml",
        &format!("backup: {{ dir: {} }}\n", dir.display()),
    );
    let out = cli(&conf, &["check-config"], None);
    let e = failed(&out, "check-config without a passphrase");
    assert!(e.contains("backup.passphrase_file"), "{e}");
    assert!(ok(&cli(&conf, &["check-config"], Some(PASSPHRASE)), "check-config").contains("valid"));
}

/// Two instances on one Redis: each period's backup is written by one of them.
#[tokio::test]
async fn one_instance_writes_each_period_backup() {
    let work = tempfile::tempdir().unwrap();
    let pass = temp_file(work.path(), "pass", PASSPHRASE);
    let p = redis_prefix();
    let mut relays = Vec::new();
    for n in 0..2 {
        let dir = work.path().join(format!("backups-{n}"));
        relays.push(
            RelayProcess::start(&format!(
                "store: {{ backend: redis, url: \"{}\", prefix: \"{p}\" }}\nbackup: {{ dir: {}, every: 1s, keep: 100, passphrase_file: {} }}\n",
                redis_url(),
                dir.display(),
                pass.display()
            ))
            .await,
        );
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let a = backups_in(&work.path().join("backups-0"));
    let b = backups_in(&work.path().join("backups-1"));
    assert!(a.len() + b.len() >= 3, "{a:?} {b:?}");
    for name in &a {
        assert!(!b.contains(name), "both instances wrote {name}");
    }
    // Each run wrote one file (a run may have ended since the listing).
    let runs = backup_runs(&relays[0]).await + backup_runs(&relays[1]).await;
    assert!(runs as usize >= a.len() + b.len(), "{runs} runs, {a:?} {b:?}");
    redis_cleanup(&p).await;
}
