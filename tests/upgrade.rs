//! Zero-downtime upgrade: under steady load, a second `claude-relay --upgrade` takes over the
//! listening sockets of the running one (Pingora's hand-over over `upgrade_sock`), the old one gets
//! SIGQUIT and exits by itself once drained. No request may fail, and the usage of every request
//! must be in the store exactly once, including requests the old process finished after it had
//! released the embedded store (they travel through the usage spool), and so must each request's
//! record in the request log (through the request log's spool).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::mock::{MockUpstream, json_for, stream_for};
use support::{ALICE, RelayProcess, account_yaml, redis_cleanup, redis_prefix, redis_url};

const MODEL: &str = "claude-sonnet-4-5";
const BODY_STREAM: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const BODY_JSON: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
/// Input tokens the mock reports per request.
const INPUT_PER_REQUEST: u64 = 21;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Json,
    Stream,
    /// 100-byte chunks every 100 ms: about 1.5 s, so some are in flight across the hand-over.
    SlowStream,
}

/// Client tasks sending requests back to back until stopped, each with its own keep-alive pool.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<[AtomicU64; 3]>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(base: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let failures = Arc::new(Mutex::new(Vec::new()));
        // Two clients only ever send slow streams, four alternate quick JSON and stream requests.
        let plans: [&[Kind]; 6] = [
            &[Kind::SlowStream],
            &[Kind::SlowStream],
            &[Kind::Json, Kind::Stream],
            &[Kind::Stream, Kind::Json],
            &[Kind::Json],
            &[Kind::Stream],
        ];
        let tasks = plans
            .into_iter()
            .map(|plan| {
                let (stop, ok, failures, base) = (stop.clone(), ok.clone(), failures.clone(), base.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(30))
                        .build()
                        .unwrap();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let kind = plan[i % plan.len()];
                        i += 1;
                        match one_request(&client, &base, kind).await {
                            Ok(()) => {
                                ok[kind as usize].fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.lock().unwrap().push(format!("{kind:?}: {e}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    fn ok_total(&self) -> u64 {
        self.ok.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    /// Stops the clients (each finishes its current request); returns (ok per kind, failures).
    async fn finish(self) -> ([u64; 3], Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let ok = [0, 1, 2].map(|k| self.ok[k].load(Ordering::Relaxed));
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (ok, failures)
    }
}

async fn one_request(client: &reqwest::Client, base: &str, kind: Kind) -> Result<(), String> {
    let mut req = client
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", ALICE)
        .header("content-type", "application/json");
    req = match kind {
        Kind::Json => req.body(BODY_JSON),
        Kind::Stream => req.body(BODY_STREAM),
        Kind::SlowStream => req
            .header("x-mock-chunk", "100")
            .header("x-mock-chunk-delay-ms", "100")
            .body(BODY_STREAM),
    };
    let r = req.send().await.map_err(|e| format!("send: {e:?}"))?;
    let status = r.status();
    let body = r.bytes().await.map_err(|e| format!("body ({status}): {e:?}"))?;
    if status != 200 {
        return Err(format!("status {status}: {}", String::from_utf8_lossy(&body)));
    }
    let complete = match kind {
        Kind::Json => serde_json::from_slice::<serde_json::Value>(&body).ok() == Some(json_for(MODEL)),
        Kind::Stream | Kind::SlowStream => body[..] == stream_for(MODEL, false)[..],
    };
    if !complete {
        return Err(format!("incomplete body: {}", String::from_utf8_lossy(&body)));
    }
    Ok(())
}

/// Polls the admin `/health` every 10 ms (a fresh connection each time) and keeps the longest
/// time between two answers: refused connections and answers delayed alike.
struct AdminGap {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Duration>,
}

impl AdminGap {
    fn watch(admin: String) -> AdminGap {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let (mut longest, mut last_ok) = (Duration::ZERO, Instant::now());
            while !s.load(Ordering::Relaxed) {
                let up = client
                    .get(format!("{admin}/health"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if up {
                    longest = longest.max(last_ok.elapsed());
                    last_ok = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            longest.max(last_ok.elapsed())
        });
        AdminGap { stop, task }
    }

    async fn finish(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// The day-granularity usage of `config.alice` through the admin API of whichever process serves.
async fn alice_usage(relay: &RelayProcess) -> Option<serde_json::Value> {
    let token = relay.admin_token().await;
    let now = chrono::Utc::now().timestamp();
    let r = reqwest::Client::new()
        .get(format!(
            "{}/admin/api/usage?dimension=key&id=config.alice&granularity=day&from={}&to={}",
            relay.admin(),
            now - 2 * 86_400,
            now + 86_400
        ))
        .bearer_auth(token)
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    let v: serde_json::Value = r.json().await.ok()?;
    Some(v["totals"].clone())
}

/// How many records the request log holds (every page), through the serving process's admin API.
async fn request_log_records(relay: &RelayProcess) -> Option<u64> {
    let token = relay.admin_token().await;
    let client = reqwest::Client::new();
    let (mut n, mut cursor) = (0u64, None::<String>);
    loop {
        let c = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let r = client
            .get(format!("{}/admin/api/requests?limit=500{c}", relay.admin()))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?;
        if r.status() != 200 {
            return None;
        }
        let v: serde_json::Value = r.json().await.ok()?;
        n += v["items"].as_array()?.len() as u64;
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Some(n),
        }
    }
}

/// Runs the whole scenario on a relay configured with `extra`; returns the new process's log.
async fn upgrade_under_load(extra: &str) -> String {
    let t0 = Instant::now();
    let mock = MockUpstream::start().await;
    let mut old = RelayProcess::start(&format!(
        "shutdown_grace: 30s\naccounts:\n{}{extra}",
        account_yaml("main", &mock.url(), "")
    ))
    .await;
    let load = Load::start(old.base());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(load.failures.lock().unwrap().is_empty(), "failures before the upgrade");
    let before = load.ok_total();
    assert!(before > 20, "the load runs ({before} requests)");

    // Step 1: the new process, waiting on the upgrade socket for the listening sockets.
    let mut new = old.spawn_upgrade().await;
    // Step 2: SIGQUIT to the old one.
    let t_quit = Instant::now();
    old.signal("QUIT");
    let admin_gap = AdminGap::watch(old.admin());

    // The old process exits by itself once its last request is done.
    let status = old.wait_exit(Duration::from_secs(40)).await;
    let old_exit = t_quit.elapsed();
    assert!(status.success(), "old process: {status:?}\n{}", old.log_text());
    assert!(new.try_wait().is_none(), "new process died:\n{}", new.log_text());
    let at_old_exit = load.ok_total();

    // The new process keeps serving alone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, failures) = load.finish().await;
    let total: u64 = ok.iter().sum();
    assert!(
        failures.is_empty(),
        "{} failed requests (of {}): {:#?}\n(IncompleteMessage or ConnectionReset here means keep-alive connections \
         reused at the moment the old process closed them: its answers must disable keep-alive while \
         `claude_relay::server::draining()`)\nold log:\n{}\nnew log:\n{}",
        failures.len(),
        total + failures.len() as u64,
        failures,
        strip_ansi(&old.log_text()),
        strip_ansi(&new.log_text())
    );
    assert!(total > at_old_exit + 10, "requests after the old process exited");
    let admin_gap = admin_gap.finish().await;
    assert!(admin_gap < Duration::from_secs(5), "admin API away for {admin_gap:?}");
    assert!(new.try_wait().is_none(), "new process died:\n{}", new.log_text());

    // Every request counted once: through the new process's admin API, from its store.
    let deadline = Instant::now() + Duration::from_secs(30);
    let totals = loop {
        let t = alice_usage(&old).await;
        if let Some(t) = t.as_ref().filter(|t| t["requests"].as_u64() >= Some(total)) {
            break t.clone();
        }
        assert!(
            Instant::now() < deadline,
            "usage never reached {total} requests: {t:?}\nold log:\n{}\nnew log:\n{}",
            old.log_text(),
            new.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Stay a little longer: a late double count would show now.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let totals_later = alice_usage(&old).await.unwrap();
    assert_eq!(totals, totals_later, "usage still moving");
    assert_eq!(totals["requests"].as_u64(), Some(total), "{totals}");
    assert_eq!(
        totals["input_tokens"].as_u64(),
        Some(INPUT_PER_REQUEST * total),
        "{totals}"
    );
    assert_eq!(totals["output_tokens"].as_u64(), Some(7 * total), "{totals}");
    assert_eq!(totals["errors"].as_u64(), Some(0), "{totals}");
    // One request-log record per request, none lost and none twice.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = request_log_records(&old).await;
        if n == Some(total) {
            break;
        }
        assert!(
            Instant::now() < deadline && n.is_none_or(|n| n < total),
            "the request log holds {n:?} records for {total} requests\nold log:\n{}\nnew log:\n{}",
            old.log_text(),
            new.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let new_log = new.log_text();
    eprintln!(
        "upgrade under load: {total} requests (json {}, stream {}, slow stream {}), {} before the upgrade; \
         old process exited {:.2} s after SIGQUIT; admin API away for {} ms at most; whole test {:.1} s",
        ok[0],
        ok[1],
        ok[2],
        before,
        old_exit.as_secs_f64(),
        admin_gap.as_millis(),
        t0.elapsed().as_secs_f64()
    );
    assert!(new.stop().success(), "new process:\n{new_log}");
    new_log
}

#[tokio::test]
async fn embedded_store_upgrade_under_load_loses_no_request_and_no_usage() {
    let new_log = upgrade_under_load("").await;
    // The old process's last requests went through the spool, which the new one added.
    let spooled = logged_sum(&new_log, "usage spool file added", "events=");
    eprintln!("usage events that crossed the upgrade through the spool: {spooled}");
    assert!(spooled > 0, "no usage went through the spool:\n{new_log}");
    let records = logged_sum(&new_log, "request log spool file added", "records=");
    eprintln!("request log records that crossed the upgrade through the spool: {records}");
    assert!(records > 0, "no request log record went through the spool:\n{new_log}");
}

/// The sum of the numbers after `field` on the log's lines that say `message`.
fn logged_sum(log: &str, message: &str, field: &str) -> u64 {
    strip_ansi(log)
        .lines()
        .filter(|l| l.contains(message))
        .filter_map(|l| l.split(field).nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The log without its colour codes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test]
async fn redis_store_upgrade_under_load_loses_no_request_and_no_usage() {
    let prefix = redis_prefix();
    let new_log = upgrade_under_load(&format!(
        "store: {{ backend: redis, url: \"{}\", prefix: \"{prefix}\" }}\n",
        redis_url()
    ))
    .await;
    assert!(!new_log.contains("usage spool file added"), "redis needs no spool");
    redis_cleanup(&prefix).await;
}

/// `scripts/upgrade.sh` does the whole dance (finding the old process by its pid file), and both
/// processes tell systemd who they are over `NOTIFY_SOCKET` (`Type=notify`, `NotifyAccess=all`).
/// A connection the old process accepted before the hand-over whose request arrives only after
/// its listeners stopped (a client still in its TLS handshake, or slow to write) is answered, not
/// closed unanswered.
#[tokio::test]
async fn a_connection_accepted_before_the_listeners_stop_is_answered_after_they_stop() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockUpstream::start().await;
    let mut old = RelayProcess::start(&format!(
        "shutdown_grace: 30s\naccounts:\n{}",
        account_yaml("main", &mock.url(), "")
    ))
    .await;
    // Accepted by the old process: the new one does not have the listening sockets yet.
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", old.port)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut new = old.spawn_upgrade().await;
    old.signal("QUIT");
    // The old listeners stop 5 s after SIGQUIT; then the old process waits for what is in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !old.log_text().contains("handed over: waiting for in-flight requests") {
        assert!(Instant::now() < deadline, "no hand-over:\n{}", old.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: {ALICE}\r\nanthropic-version: 2023-06-01\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY_JSON}",
        BODY_JSON.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        matches!(read, Ok(Ok(_))) && answer.starts_with("HTTP/1.1 200"),
        "{read:?}: {answer:?}\nold log:\n{}",
        old.log_text()
    );
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert!(
        answer.contains("message_stop") || answer.contains("\"usage\""),
        "{answer}"
    );
    // And the old process still exits by itself.
    let status = old.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "old process: {status:?}\n{}", old.log_text());
    assert!(new.try_wait().is_none(), "new process died:\n{}", new.log_text());
}

#[tokio::test]
async fn upgrade_script_hands_over_and_the_new_process_becomes_systemds_main_process() {
    let mock = MockUpstream::start().await;
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_path = notify_dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let notify_env = notify_path.to_str().unwrap().to_string();
    let mut old = RelayProcess::start_in(
        tempfile::tempdir().unwrap(),
        &format!("accounts:\n{}", account_yaml("main", &mock.url(), "")),
        &[("NOTIFY_SOCKET", &notify_env)],
    )
    .await;
    let recv = |what: &str| {
        let mut buf = [0u8; 512];
        let n = notify
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {what} notification: {e}"));
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert_eq!(recv("start"), format!("READY=1\nMAINPID={}", old.pid()));
    let pid_file = old.dir.path().join("data").join("claude-relay.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        old.pid().to_string()
    );

    let log = old.dir.path().join("upgrade-script.log");
    let logf = std::fs::File::create(&log).unwrap();
    let script = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/upgrade.sh"))
        .args(["--bin", env!("CARGO_BIN_EXE_claude-relay"), "--", "--config"])
        .arg(old.config_path())
        .env("NOTIFY_SOCKET", &notify_env)
        .env("RELAY_LOG", "info")
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .status()
        .unwrap();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(script.success(), "upgrade.sh failed:\n{}", log_text());
    let new_pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert_ne!(new_pid, old.pid());
    assert_eq!(recv("upgrade"), format!("READY=1\nMAINPID={new_pid}"));

    // The old process goes by itself; the new one serves relay and admin.
    assert!(old.wait().success(), "{}", old.log_text());
    let r = reqwest::Client::new()
        .post(format!("{}/v1/messages", old.base()))
        .header("x-api-key", ALICE)
        .body(BODY_JSON)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(alice_usage(&old).await.is_some(), "admin API of the new process");
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), new_pid.to_string());

    // Not our child: stop it by its pid; it removes its pid file on the way out.
    std::process::Command::new("kill")
        .args(["-TERM", &new_pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while pid_file.exists() {
        assert!(Instant::now() < deadline, "new process did not stop:\n{}", log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn upgrade_socket_path_defaults_under_the_data_dir_and_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("relay.yaml");
    let run = |yaml: &str, cmd: &str| {
        std::fs::write(&conf, yaml).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_claude-relay"))
            .args(["--config", conf.to_str().unwrap(), cmd])
            .output()
            .unwrap()
    };
    let out = run("data_dir: /srv/relay\n", "paths");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("upgrade_sock=/srv/relay/upgrade.sock\n"), "{text}");
    assert!(text.contains("pid_file=/srv/relay/claude-relay.pid\n"), "{text}");
    let out = run(&format!("upgrade_sock: /{}/u.sock\n", "x".repeat(110)), "check-config");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upgrade_sock"));
}
