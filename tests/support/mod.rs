//! Test support: the real `claude-relay` binary on random ports with a temporary config and data
//! directory, and a mock upstream on a real socket.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod admin;
pub mod bedrock_mock;
pub mod chatgpt_mock;
pub mod clients;
pub mod gemini_mock;
pub mod google_mock;
pub mod mock;
pub mod oauth_mock;
pub mod openai_mock;
pub mod proxies;
pub mod redis_servers;
pub mod scripted;
pub mod serve;
pub mod tee;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub const ADMIN_PASSWORD: &str = "test-admin-password";
/// A client key present in every test config as `alice`.
pub const ALICE: &str = "cr_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// The `claude-relay` binary the tests start: the one Cargo built for this test, or
/// `RELAY_TEST_BIN` when set (to test a copy of the binary kept elsewhere).
pub fn relay_bin() -> String {
    std::env::var("RELAY_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_claude-relay").to_string())
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Fails unless `v` is an integer within `tolerance` of `expected`.
pub fn assert_near(v: &serde_json::Value, expected: i64, tolerance: i64, what: &str) {
    let got = v.as_i64().unwrap_or_else(|| panic!("{what}: not an integer: {v}"));
    assert!(
        (got - expected).abs() <= tolerance,
        "{what}: {got} is not within {tolerance} of {expected}"
    );
}

/// The query parameters of a URL.
pub fn query(url: &str) -> std::collections::HashMap<String, String> {
    url::Url::parse(url).unwrap().query_pairs().into_owned().collect()
}

/// An HTTP client with a timeout, so a stuck relay fails a test instead of hanging it.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The value of the first `/metrics` line of the relay's admin listener that starts with
/// `line_prefix` (a metric name with its labels).
pub async fn metric(relay: &RelayProcess, line_prefix: &str) -> Option<f64> {
    let text = client()
        .get(format!("{}/metrics", relay.admin()))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    metric_in(&text, line_prefix)
}

/// The value of the first line of a `/metrics` text that starts with `line_prefix`.
pub fn metric_in(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The sum of the `/metrics` lines of `name` (all its label sets) whose labels contain `label`.
pub async fn metric_sum(relay: &RelayProcess, name: &str, label: &str) -> f64 {
    let text = client()
        .get(format!("{}/metrics", relay.admin()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The admin settings every test relay gets unless it asks for others.
fn default_admin() -> String {
    format!("username: admin, password: {ADMIN_PASSWORD}")
}

/// A port for a relay to listen on. Taken below Linux's ephemeral range (32768 and up by
/// default), so that no socket the OS numbers itself (a mock bound to port 0, the local end of an
/// outgoing connection) can take it between this check and the relay's bind; random, so that
/// test processes running at once rarely pick the same one. A port is never handed out twice in
/// one test process (a relay's listener and admin listener once drew the same one).
pub fn free_port() -> u16 {
    use rand::Rng;
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let port = rng.gen_range(20_000..32_000);
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct RelayProcess {
    child: Option<Child>,
    pub port: u16,
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    /// Whether the relay listener serves HTTPS (a top-level `tls:` in the config).
    pub https: bool,
    /// Whether the admin listener serves HTTPS (`tls:` in the admin settings).
    pub admin_https: bool,
}

/// A client that trusts any certificate: for readiness checks and helpers that do not test TLS.
fn any_cert_client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

impl RelayProcess {
    pub fn base(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
    pub fn admin(&self) -> String {
        let scheme = if self.admin_https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.admin_port)
    }
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts the relay with the common settings plus `extra` YAML (accounts, more keys...).
    /// `extra` may contain `api_keys_extra:`-free YAML; the `alice` key is always present unless
    /// `extra` defines `api_keys:` itself.
    pub async fn start(extra: &str) -> RelayProcess {
        Self::start_in(tempfile::tempdir().unwrap(), extra, &[]).await
    }

    pub async fn start_in(dir: tempfile::TempDir, extra: &str, env: &[(&str, &str)]) -> RelayProcess {
        Self::start_with(dir, &default_admin(), extra, env, None).await
    }

    /// [`RelayProcess::start_in`] with the process's umask set to `umask` (by a shell that then
    /// execs the relay, so the pid is the relay's).
    pub async fn start_in_umask(
        dir: tempfile::TempDir,
        extra: &str,
        env: &[(&str, &str)],
        umask: &str,
    ) -> RelayProcess {
        Self::start_with(dir, &default_admin(), extra, env, Some(umask)).await
    }

    /// Like [`RelayProcess::start_in`], with `admin` as the admin settings other than `listen`
    /// (YAML flow-mapping entries, e.g. `username: admin, session_ttl: 1m`).
    pub async fn start_with_admin(
        dir: tempfile::TempDir,
        admin: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> RelayProcess {
        Self::start_with(dir, admin, extra, env, None).await
    }

    async fn start_with(
        dir: tempfile::TempDir,
        admin: &str,
        extra: &str,
        env: &[(&str, &str)],
        umask: Option<&str>,
    ) -> RelayProcess {
        let port = free_port();
        let admin_port = free_port();
        let mut yaml = format!(
            "listen: 127.0.0.1:{port}\nadmin: {{ listen: 127.0.0.1:{admin_port}, {admin} }}\nthreads: 2\ndata_dir: {}\n",
            dir.path().join("data").display()
        );
        if !extra.contains("secret_key:") {
            yaml.push_str(&format!("secret_key: {SECRET}\n"));
        }
        if !extra.contains("stats:") {
            yaml.push_str("stats: { flush_interval: 200ms }\n");
        }
        if !extra.contains("shutdown_grace:") {
            yaml.push_str("shutdown_grace: 5s\n");
        }
        if !extra.contains("api_keys:") {
            yaml.push_str(&format!("api_keys:\n  - {{ name: alice, key: {ALICE} }}\n"));
        }
        yaml.push_str(extra);
        if !extra.contains("store:") {
            yaml.push_str(&format!(
                "store: {{ backend: embedded, path: {} }}\n",
                dir.path().join("data").display()
            ));
        }
        let conf = dir.path().join("relay.yaml");
        std::fs::write(&conf, yaml).unwrap();
        let log = dir.path().join("relay.log");
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = with_umask(&relay_bin(), umask);
        cmd.arg("--config")
            .arg(&conf)
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .stdin(Stdio::null());
        cmd.env("RELAY_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let p = RelayProcess {
            child: Some(child),
            port,
            admin_port,
            dir,
            log,
            https: extra.lines().any(|l| l.starts_with("tls:")),
            admin_https: admin.contains("tls:"),
        };
        p.wait_ready().await;
        p
    }

    async fn wait_ready(&self) {
        let client = any_cert_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let relay = client.get(format!("{}/health", self.base())).send().await;
            let admin = client.get(format!("{}/health", self.admin())).send().await;
            if relay.is_ok_and(|r| r.status() == 200) && admin.is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!("relay did not become ready; log:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Sends SIGTERM and waits for the process to exit (returns its exit status).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait()
    }

    pub fn wait(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("relay did not exit; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Logs into the admin API and returns a bearer token.
    pub async fn admin_token(&self) -> String {
        let r: serde_json::Value = any_cert_client()
            .post(format!("{}/admin/api/login", self.admin()))
            .json(&serde_json::json!({"username": "admin", "password": ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["token"].as_str().expect("login token").to_string()
    }
}

impl RelayProcess {
    /// The config file this relay was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("relay.yaml")
    }

    /// Starts another `claude-relay` on this relay's config (same ports, same data directory)
    /// with `args` added, e.g. `--upgrade`, logging to `log_name` in the same directory. It is not
    /// waited for; it is killed on drop.
    pub fn spawn_sibling(&self, args: &[&str], log_name: &str) -> Sibling {
        let log = self.dir.path().join(log_name);
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(relay_bin())
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .stdin(Stdio::null())
            .env("RELAY_LOG", "info")
            .spawn()
            .unwrap();
        Sibling {
            child: Some(child),
            log,
        }
    }

    /// Whether the process has exited (without waiting); its status if so.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// Step 1 of a zero-downtime upgrade: a new process started with `--upgrade` (log
    /// `relay-new.log`), returned once it waits on the upgrade socket for the listening sockets.
    pub async fn spawn_upgrade(&self) -> Sibling {
        let sock = self.dir.path().join("data").join("upgrade.sock");
        let mut new = self.spawn_sibling(&["--upgrade"], "relay-new.log");
        let deadline = Instant::now() + Duration::from_secs(15);
        while !sock.exists() {
            assert!(new.try_wait().is_none(), "new process exited:\n{}", new.log_text());
            assert!(Instant::now() < deadline, "no upgrade socket:\n{}", new.log_text());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        new
    }

    /// Waits up to `limit` for the process to exit by itself; its status.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_wait() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "old process did not exit:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A second relay process started by [`RelayProcess::spawn_sibling`].
pub struct Sibling {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Sibling {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }
    /// Sends SIGTERM and waits (up to 30 s) for the exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.try_wait() {
                self.child.take();
                return s;
            }
            if Instant::now() > deadline {
                panic!("relay did not exit; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sibling {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A command running `bin`, under `umask` when given (`sh` sets it, then execs `bin`).
pub fn with_umask(bin: &str, umask: Option<&str>) -> Command {
    match umask {
        None => Command::new(bin),
        Some(m) => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(format!("umask {m} && exec \"$0\" \"$@\"")).arg(bin);
            c
        }
    }
}

/// One console account named `main` pointing at `url`.
pub fn account_yaml(name: &str, url: &str, extra: &str) -> String {
    format!(
        "  - {{ name: {name}, kind: claude-console, base_url: \"{url}\", api_key: sk-ant-api03-upstream-{name}{extra} }}\n"
    )
}

/// Polls `f` until it returns `Some`, for up to 10 s.
pub async fn eventually<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("condition not reached within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Redis the Redis tests use: `RELAY_TEST_REDIS_URL`, default `redis://127.0.0.1:6379/`.
/// `scripts/test.sh` sets it to a private `redis-server` it starts when none answers there.
pub fn redis_url() -> String {
    std::env::var("RELAY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// A fresh key prefix, `relaytest:<uuid>:`, so that tests sharing one Redis never meet.
pub fn redis_prefix() -> String {
    format!("relaytest:{}:", uuid::Uuid::new_v4().simple())
}

/// Deletes every key under `prefix` (ours, without glob characters) on [`redis_url`].
pub async fn redis_cleanup(prefix: &str) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(&mut c).await.unwrap();
    }
}

/// Raw fixture lines from `tests/fixtures/NAME.jsonl`: (method, path, query, headers, raw body).
/// One recorded request: method, path, query pairs, header pairs, raw JSON body.
pub type FixtureRequest = (
    String,
    String,
    Vec<(String, String)>,
    Vec<(String, String)>,
    Option<String>,
);

pub fn fixture(name: &str) -> Vec<FixtureRequest> {
    #[derive(serde::Deserialize)]
    struct Line<'a> {
        method: String,
        path: String,
        #[serde(default)]
        query: serde_json::Map<String, serde_json::Value>,
        headers: serde_json::Map<String, serde_json::Value>,
        #[serde(borrow, default)]
        body: Option<&'a serde_json::value::RawValue>,
    }
    let path = format!("{}/tests/fixtures/{name}.jsonl", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let line: Line<'_> = serde_json::from_str(l).unwrap();
            let q = line
                .query
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect();
            let h = line
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect();
            (line.method, line.path, q, h, line.body.map(|b| b.get().to_string()))
        })
        .collect()
}
