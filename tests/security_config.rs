//! Configuration that must not pass silently, model lists that must cover a model's aliases, and
//! a data directory that must be private, all through the real binary.
//!
//! - `check-config` and the start run one validation: a configuration the start would refuse or
//!   serve with less than it says (a filter chain not starting with `key_auth`, an upstream secret
//!   that cannot be sent in a header, one client key under two names...) is refused by both, with
//!   the same message naming the key.
//! - `model_blacklist: [claude-opus-4]` also refuses `claude-opus-4-0` and the dated snapshots,
//!   never `claude-opus-4-1`.
//! - Under umask 022 the data and store directories are created 0700 and the files in them 0600.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::mock::MockUpstream;
use support::{ADMIN_PASSWORD, ALICE, RelayProcess, SECRET, account_yaml, client, free_port, with_umask};

const BIN: &str = env!("CARGO_BIN_EXE_claude-relay");

/// A runnable config: free ports, the test secret key, a data directory under `dir`, the admin
/// block's credentials from `admin_auth`, then `rest`.
fn config(dir: &Path, admin_auth: &str, rest: &str) -> PathBuf {
    let yaml = format!(
        "listen: 127.0.0.1:{}\nadmin: {{ listen: 127.0.0.1:{}, {admin_auth} }}\nsecret_key: {SECRET}\nthreads: 1\ndata_dir: {}\n{rest}",
        free_port(),
        free_port(),
        dir.join("data").display()
    );
    let path = dir.join("relay.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn password() -> String {
    format!("password: {ADMIN_PASSWORD}")
}

fn check_config(conf: &Path) -> Output {
    Command::new(BIN)
        .args(["--config", conf.to_str().unwrap(), "check-config"])
        .output()
        .unwrap()
}

/// Starts the relay on `conf` and waits (up to 20 s) for it to exit; a relay that starts serving
/// instead fails the test.
fn start_expecting_refusal(conf: &Path) -> (Option<i32>, String) {
    let err = conf.with_extension("start.log");
    let mut child = Command::new(BIN)
        .args(["--config", conf.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), std::fs::read_to_string(&err).unwrap());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the relay started on a configuration check-config refuses; log:\n{}",
                std::fs::read_to_string(&err).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The line that reports the invalid configuration.
fn config_error(stderr: &str) -> String {
    stderr
        .lines()
        .find(|l| l.contains("invalid configuration"))
        .unwrap_or_else(|| panic!("no configuration error in:\n{stderr}"))
        .to_string()
}

/// `rest` (with the admin block's `admin_auth`) is refused by check-config and by the start, with
/// one message naming `key` and containing `reason`; returns that message.
fn refused_by_both(admin_auth: &str, rest: &str, key: &str, reason: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let conf = config(dir.path(), admin_auth, rest);
    let out = check_config(&conf);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "check-config accepted:\n{rest}\n{stderr}");
    let checked = config_error(&stderr);
    assert!(
        checked.contains(&format!("config key `{key}`")) && checked.contains(reason),
        "`{rest}` → {checked}"
    );
    let (code, log) = start_expecting_refusal(&conf);
    assert_eq!(code, Some(2), "{log}");
    assert_eq!(config_error(&log), checked, "the start and check-config disagree");
    assert!(!dir.path().join("data").exists(), "a refused start touched nothing");
    checked
}

fn console_account(api_key: &str) -> String {
    format!(
        "accounts:\n  - {{ name: main, kind: claude-console, base_url: \"http://127.0.0.1:9\", api_key: \"{api_key}\" }}\n"
    )
}

#[test]
fn a_filter_chain_not_starting_with_key_auth_is_refused_by_check_config_and_start() {
    refused_by_both(
        &password(),
        "filters: [permissions, key_auth, models]\n",
        "filters",
        "must start with `key_auth`",
    );
    refused_by_both(
        &password(),
        "filters: [key_auth, modles]\n",
        "filters",
        "unknown filter `modles`",
    );
    refused_by_both(
        &password(),
        "filters: [key_auth, models, models]\n",
        "filters",
        "listed twice",
    );
}

#[test]
fn an_upstream_secret_that_cannot_be_sent_in_a_header_is_refused() {
    let msg = refused_by_both(
        &password(),
        &console_account("sk-ant-api03-first\\nsecond"),
        "accounts[0].api_key",
        "not allowed in a header",
    );
    assert!(!msg.contains("sk-ant-api03-first"), "the secret is not shown: {msg}");
    refused_by_both(
        &password(),
        &console_account("plain-key\\x7f"),
        "accounts[0].api_key",
        "not allowed in a header",
    );
    refused_by_both(
        &password(),
        "accounts:\n  - { name: sub, kind: claude-oauth, api_key: \"sk-ant-oat01-a\\rb\" }\n",
        "accounts[0].api_key",
        "not allowed in a header",
    );
}

#[test]
fn one_client_key_under_two_names_is_refused() {
    let hash = claude_relay::secrets::Secrets::new(SECRET)
        .unwrap()
        .hash_client_key_hex(ALICE);
    // The same `key` twice: the second entry would replace the first and its restrictions.
    let msg = refused_by_both(
        &password(),
        &format!(
            "api_keys:\n  - {{ name: alice, key: {ALICE}, model_blacklist: [claude-opus-4] }}\n  - {{ name: bob, key: {ALICE} }}\n"
        ),
        "api_keys[1].key",
        "same client key as api_keys[0] (`alice`)",
    );
    assert!(!msg.contains(ALICE), "the key is not shown: {msg}");
    // The same `key_hash` twice, whatever the hex digits' case.
    refused_by_both(
        &password(),
        &format!(
            "api_keys:\n  - {{ name: alice, key_hash: {hash}, permissions: [gemini] }}\n  - {{ name: bob, key_hash: {} }}\n",
            hash.to_uppercase()
        ),
        "api_keys[1].key_hash",
        "same client key as api_keys[0] (`alice`)",
    );
    // A `key` and the `key_hash` of the same key.
    refused_by_both(
        &password(),
        &format!(
            "api_keys:\n  - {{ name: alice, key: {ALICE}, ip_allow: [10.0.0.0/8] }}\n  - {{ name: bob, key_hash: {hash} }}\n"
        ),
        "api_keys[1].key_hash",
        "same client key as api_keys[0] (`alice`)",
    );
}

#[test]
fn other_values_the_start_would_refuse_or_ignore_are_refused() {
    // A client key no client can present (clients send it in a header, trimmed).
    refused_by_both(
        &password(),
        &format!("api_keys:\n  - {{ name: alice, key: \"{ALICE} \" }}\n"),
        "api_keys[0].key",
        "printable ASCII",
    );
    // A price table the start cannot load.
    refused_by_both(
        &password(),
        "pricing: /nonexistent/pricing.json\n",
        "pricing",
        "cannot read pricing file",
    );
    // A password hash no login could verify against.
    refused_by_both(
        "password_hash: \"$argon2id$not-a-phc-string\"",
        "",
        "admin.password_hash",
        "argon2 PHC string",
    );
    // Bad values of the kinds the snapshot used to skip quietly.
    for (rest, key) in [
        (
            "accounts:\n  - { name: main, kind: claude-console, api_key: sk-ant-api03-x, proxy: \"ftp://proxy:21\" }\n",
            "accounts[0].proxy",
        ),
        (
            "api_keys:\n  - { name: alice, key_hash: not-hex }\n",
            "api_keys[0].key_hash",
        ),
        (
            &format!("api_keys:\n  - {{ name: alice, key: {ALICE}, ip_allow: [10.0.0.0/33] }}\n"),
            "api_keys[0]",
        ),
        (
            "accounts:\n  - { name: main, kind: claude-console, api_key: sk-ant-api03-x, cooldowns: { \"6xx\": 1m } }\n",
            "accounts[0].cooldowns.6xx",
        ),
        (
            "scheduler: { cooldowns: { sometimes: 1m } }\n",
            "scheduler.cooldowns.sometimes",
        ),
    ] {
        refused_by_both(&password(), rest, key, "");
    }
}

#[tokio::test]
async fn a_good_configuration_passes_check_config_and_starts() {
    let mock = MockUpstream::start().await;
    let other = "cr_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let hash = claude_relay::secrets::Secrets::new(SECRET)
        .unwrap()
        .hash_client_key_hex("cr_cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc");
    let rest = format!(
        "accounts:\n{}  - {{ name: proxied, kind: claude-console, base_url: \"{}\", api_key: \"  sk-ant-api03-trimmed \", enabled: false, proxy: \"socks5://u:p@127.0.0.1:9\", cooldowns: {{ \"429\": 1m }} }}\n\
         api_keys:\n  - {{ name: alice, key: {ALICE}, model_blacklist: [claude-opus-4] }}\n  - {{ name: bob, key: {other} }}\n  - {{ name: carol, key_hash: {hash} }}\n\
         filters: [key_auth, permissions, models, rate_limit]\n\
         pricing: {}/conf/pricing.json\n",
        account_yaml("main", &mock.url(), ", priority: 10"),
        mock.url(),
        env!("CARGO_MANIFEST_DIR"),
    );
    let dir = tempfile::tempdir().unwrap();
    let out = check_config(&config(dir.path(), &password(), &rest));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "configuration is valid\n");

    let relay = RelayProcess::start(&rest).await;
    let r = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", other)
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn post_model(relay: &RelayProcess, model: &str) -> reqwest::Response {
    client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"model":"{model}","max_tokens":16,"messages":[{{"role":"user","content":"hi"}}]}}"#
        ))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_blacklisted_model_is_refused_under_its_aliases_but_not_other_versions() {
    let mock = MockUpstream::start().await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}api_keys:\n  - {{ name: alice, key: {ALICE}, model_blacklist: [claude-opus-4] }}\n",
        account_yaml("main", &mock.url(), "")
    ))
    .await;
    for model in [
        "claude-opus-4-0",
        "claude-opus-4-20250514",
        "claude-opus-4-latest",
        "claude-opus-4",
    ] {
        let r = post_model(&relay, model).await;
        assert_eq!(r.status(), 403, "{model}");
        assert_eq!(r.headers()["x-relay-error-source"], "relay");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], "permission_error", "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(model), "{v}");
    }
    assert_eq!(mock.hits(), 0, "a refusal never reaches the upstream");
    // Other Opus versions are other models: the blacklist does not touch them.
    for model in ["claude-opus-4-1", "claude-opus-4-5-20251101"] {
        let r = post_model(&relay, model).await;
        let status = r.status();
        assert_eq!(status, 200, "{model}: {}", r.text().await.unwrap());
    }
    assert_eq!(mock.hits(), 2);
    let seen: Vec<String> = mock
        .seen()
        .iter()
        .map(|s| s.json()["model"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, ["claude-opus-4-1", "claude-opus-4-5-20251101"]);
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Every file and directory under `dir` (itself included) is for its owner only, except `allowed`
/// names.
fn assert_private_tree(dir: &Path, allowed: &[&str]) {
    assert_eq!(mode(dir) & 0o077, 0, "{} is {:o}", dir.display(), mode(dir));
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if allowed.contains(&name.as_str()) {
            continue;
        }
        if path.is_dir() {
            assert_private_tree(&path, allowed);
        } else {
            assert_eq!(mode(&path) & 0o077, 0, "{} is {:o}", path.display(), mode(&path));
        }
    }
}

#[tokio::test]
async fn data_and_store_directories_and_their_files_are_private_under_umask_022() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let relay = RelayProcess::start_in_umask(
        dir,
        &format!(
            "accounts:\n{}api_keys:\n  - {{ name: alice, key: {ALICE}, activate_for: 30d }}\nstore: {{ backend: embedded, path: {} }}\n",
            account_yaml("main", &mock.url(), ""),
            store.display()
        ),
        &[],
        "022",
    )
    .await;
    // One request: the key's activation time and its usage are written.
    let r = post_model(&relay, "claude-sonnet-4-5").await;
    assert_eq!(r.status(), 200);
    let data = relay.dir.path().join("data");
    support::eventually(|| async { data.join("activations.json").exists().then_some(()) }).await;

    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&store), 0o700);
    assert_eq!(mode(&store.join("relay.redb")), 0o600);
    assert_eq!(mode(&data.join("activations.json")), 0o600);
    // The pid file holds only a process id, by convention readable; the directory keeps others out.
    assert_private_tree(&data, &["claude-relay.pid"]);
    assert_private_tree(&store, &[]);
}

#[tokio::test]
async fn existing_files_are_narrowed_and_an_existing_directory_keeps_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // What an older version left under umask 022.
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, contents) in [("relay.redb", ""), ("activations.json", "{}")] {
        std::fs::write(data.join(name), contents).unwrap();
        std::fs::set_permissions(data.join(name), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let relay = RelayProcess::start_in_umask(dir, "", &[], "022").await;
    assert_eq!(mode(&data.join("relay.redb")), 0o600);
    assert_eq!(mode(&data.join("activations.json")), 0o600);
    // The directory is the operator's (or systemd's): not changed, but the log says so.
    assert_eq!(mode(&data), 0o755);
    let log = relay.log_text();
    assert!(log.contains("other users may enter it"), "{log}");
}

#[tokio::test]
async fn a_first_start_without_secrets_writes_them_privately_under_umask_022() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (port, admin_port) = (free_port(), free_port());
    let conf = dir.path().join("relay.yaml");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\nadmin: {{ listen: 127.0.0.1:{admin_port} }}\nthreads: 1\ndata_dir: {}\nshutdown_grace: 1s\n",
            data.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("relay.log");
    let logf = std::fs::File::create(&log).unwrap();
    let mut child = with_umask(BIN, Some("022"))
        .arg("--config")
        .arg(&conf)
        .env_remove("RELAY_SECRET_KEY")
        .env_remove("RELAY_ADMIN_PASSWORD")
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the relay exited ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        let admin = client()
            .get(format!("http://127.0.0.1:{admin_port}/health"))
            .send()
            .await;
        if admin.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "{}", std::fs::read_to_string(&log).unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("secret.key")), 0o600);
    assert_eq!(mode(&data.join("admin.json")), 0o600);
    assert_eq!(mode(&data.join("relay.redb")), 0o600);
    assert_private_tree(&data, &["claude-relay.pid"]);
    child.kill().unwrap();
    child.wait().unwrap();
}
