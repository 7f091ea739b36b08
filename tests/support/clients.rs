//! Running real clients against a test relay: finding the pinned clients that
//! `scripts/install-clients.sh` installs (failing, naming that script, when one is missing),
//! running them with a deadline, and reading back the usage the relay recorded per key.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::RelayProcess;

pub const INSTALL: &str = "run scripts/install-clients.sh";

/// The longest a client run may take before it is killed and the test fails.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

pub fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is not set");
    PathBuf::from(home).join(".cache/claude-relay")
}

/// The virtualenv's python (`RELAY_VENV`, default `~/.cache/claude-relay/venv`) with these
/// Python distributions at these versions; panics naming the install script when one is missing.
pub fn python_with(dists: &[(&str, &str)]) -> PathBuf {
    let venv = std::env::var_os("RELAY_VENV").map_or_else(|| cache_dir().join("venv"), PathBuf::from);
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "no Python virtualenv at {}: {INSTALL} (RELAY_VENV names another)",
        venv.display()
    );
    for (dist, wanted) in dists {
        let out = std::process::Command::new(&py)
            .args([
                "-c",
                "import sys, importlib.metadata as m; print(m.version(sys.argv[1]))",
                dist,
            ])
            .output()
            .unwrap();
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success() && version == *wanted,
            "the {dist} Python package {wanted} is not installed in {} (found {:?}): {INSTALL}",
            venv.display(),
            if version.is_empty() { "none" } else { &version }
        );
    }
    py
}

/// The npm-installed client `bin` (`$RELAY_CLIENTS/node/node_modules/.bin/<bin>`, default
/// `~/.cache/claude-relay/clients`) whose `--version` names `version`; panics naming the install
/// script when it is missing or another version.
pub fn node_client(bin: &str, what: &str, version: &str) -> PathBuf {
    let clients = std::env::var_os("RELAY_CLIENTS").map_or_else(|| cache_dir().join("clients"), PathBuf::from);
    let path = clients.join("node/node_modules/.bin").join(bin);
    assert!(
        path.exists(),
        "{what} is not installed at {}: {INSTALL} (RELAY_CLIENTS names another directory)",
        path.display()
    );
    let out = std::process::Command::new(&path).arg("--version").output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && said.contains(version),
        "{what} {version} is needed at {} (it says {:?}, {}): {INSTALL}",
        path.display(),
        said.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    path
}

/// A client process's environment without proxies, so loopback calls go straight to the relay,
/// and without the clients' own settings of endpoint and key, so only the test's apply.
pub fn clean_env(cmd: &mut tokio::process::Command) {
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "GOOGLE_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_GEMINI_BASE_URL",
        "GOOGLE_GENAI_USE_VERTEXAI",
        "GOOGLE_GENAI_USE_GCA",
        "GOOGLE_CLOUD_ACCESS_TOKEN",
        "CODE_ASSIST_ENDPOINT",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
}

pub struct Run {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// stdout and stderr, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "exit: {}\nstdout:\n{}\nstderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to its end, killing it (and failing) after `limit`.
pub async fn run_for(mut cmd: tokio::process::Command, what: &str, limit: Duration) -> Run {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let child = cmd.spawn().unwrap();
    let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => out.unwrap(),
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    };
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        elapsed: started.elapsed(),
    }
}

/// Runs `cmd` to its end, killing it (and failing) after [`CLIENT_TIMEOUT`].
pub async fn run(cmd: tokio::process::Command, what: &str) -> Run {
    run_for(cmd, what, CLIENT_TIMEOUT).await
}

/// A fresh client key (`cr_` + 64 hex digits).
pub fn new_key() -> String {
    format!("cr_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// `api_keys:` with these (name, key) pairs.
pub fn keys_yaml(keys: &[(&str, &str)]) -> String {
    let mut y = String::from("api_keys:\n");
    for (name, key) in keys {
        y.push_str(&format!("  - {{ name: {name}, key: {key} }}\n"));
    }
    y
}

/// Waits until the relay has written usage for every key in `keys` with the given request
/// counts, then returns the all-time totals by key id (`config.<name>`).
pub async fn key_usage(relay: &RelayProcess, keys: &[(&str, u64)]) -> Value {
    let token = relay.admin_token().await;
    let url = format!("{}/admin/api/usage?dimension=key", relay.admin());
    let mut last = Value::Null;
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let v: Value = super::client()
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let totals = v["totals_by_subject"].clone();
            if keys
                .iter()
                .all(|(name, n)| totals[format!("config.{name}")]["requests"].as_u64() == Some(*n))
            {
                return totals;
            }
            last = totals;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("usage for {keys:?} not recorded within 10 s; by key: {last:#}"))
}
