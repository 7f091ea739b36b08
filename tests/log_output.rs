//! The relay's own log through the real binary: JSON lines in a file rotated by size with the
//! oldest files deleted, the access line of each relayed request (named like its request-log
//! record, never a credential or a body), access lines switched off, and a log file the relay
//! cannot write stopping the start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(clippy::doc_lazy_continuation, clippy::type_complexity)]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::admin::Admin;
use support::mock::MockUpstream;
use support::{ALICE, RelayProcess, account_yaml, client, eventually, free_port, relay_bin};

/// Put in every request body: no log line may show it.
const BODY_MARKER: &str = "body-marker-51c0de";

async fn send(relay: &RelayProcess, request_id: Option<&str>) -> u16 {
    let mut req = client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(
            json!({"model": "claude-sonnet-4-5", "max_tokens": 64,
                   "messages": [{"role": "user", "content": format!("hi {BODY_MARKER}")}]})
            .to_string(),
        );
    if let Some(id) = request_id {
        req = req.header("x-request-id", id);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    r.bytes().await.unwrap();
    status
}

/// The files in `dir`, by name.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every line of `file` as JSON; panics on a line that is not a JSON object.
fn json_lines(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v.is_object(), "{l}");
            v
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_rotate_by_size_and_access_lines_name_requests_without_secrets() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let mut relay = RelayProcess::start_in(
        dir,
        &format!(
            "accounts:\n{}log: {{ format: json, file: {}, rotate: size, max_bytes: 4096, keep: 2 }}\n",
            account_yaml("main", &upstream.url(), ""),
            logs.join("relay.log").display()
        ),
        &[],
    )
    .await;
    let admin = Admin::login(&relay).await;
    for i in 0..40 {
        assert_eq!(send(&relay, Some(&format!("load-{i}"))).await, 200);
    }
    assert_eq!(send(&relay, Some("trace-me-123")).await, 200);
    // No request id from the client: the access line and the request log give it the same one.
    assert_eq!(send(&relay, None).await, 200);
    let current = logs.join("relay.log");
    let last = eventually(|| async {
        let lines = json_lines(&current);
        lines
            .iter()
            .rev()
            .find(|l| l["target"] == "access")
            .filter(|l| l["request_id"].as_str().is_some_and(|id| id.starts_with("req_")))
            .cloned()
    })
    .await;
    let record = eventually(|| async {
        let r = admin.get("/admin/api/requests?limit=1").await;
        r.json["items"][0]
            .as_object()
            .filter(|r| r["request_id"].as_str().is_some_and(|id| id.starts_with("req_")))
            .cloned()
    })
    .await;
    assert_eq!(record["request_id"], last["request_id"], "{record:?}\n{last}");
    for field in [
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "status",
        "account_name",
    ] {
        assert_eq!(record[field], last[field], "{field}: {record:?}\n{last}");
    }

    assert!(relay.stop().success());
    // Standard error holds nothing but what precedes the log's setup.
    let stderr = relay.log_text();
    assert!(!stderr.contains("claude-relay starting"), "{stderr}");

    // The current file and the two newest rotated ones; older ones were deleted.
    assert_eq!(files(&logs), ["relay.log", "relay.log.1", "relay.log.2"]);
    let mut access = Vec::new();
    let mut messages = Vec::new();
    for name in files(&logs) {
        let path = logs.join(&name);
        let text = std::fs::read_to_string(&path).unwrap();
        for secret in [ALICE, "sk-ant-api03-upstream-main", BODY_MARKER] {
            assert!(!text.contains(secret), "{name} shows {secret}:\n{text}");
        }
        if name != "relay.log" {
            // A rotated file was cut after it passed the size, at a line's end.
            let len = std::fs::metadata(&path).unwrap().len();
            assert!((4096..4096 + 2048).contains(&len), "{name}: {len} bytes");
        }
        for line in json_lines(&path) {
            assert!(line["timestamp"].is_string() && line["level"].is_string(), "{line}");
            if line["target"] == "access" {
                access.push(line);
            } else if let Some(m) = line["message"].as_str() {
                messages.push(m.to_string());
            }
        }
    }
    // 42 access lines were written; the deleted files held the oldest of them.
    assert!(access.len() < 42, "{}", access.len());
    let traced = access
        .iter()
        .find(|l| l["request_id"] == "trace-me-123")
        .expect("the traced request's access line");
    assert_eq!(traced["key_name"], "alice");
    assert_eq!(traced["account_name"], "main");
    assert_eq!(traced["status"], 200);
    assert_eq!(traced["outcome"], "ok");
    assert_eq!(traced["model"], "claude-sonnet-4-5");
    assert_eq!(traced["dialect"], "anthropic");
    assert_eq!(traced["stream"], false);
    assert_eq!(traced["message"], "request");
    assert!(
        traced["latency_ms"].is_u64() && traced["input_tokens"].is_u64(),
        "{traced}"
    );
    assert!(traced.get("error").is_none(), "{traced}");
    assert!(messages.iter().any(|m| m == "claude-relay stopped"), "{messages:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_switch_off_and_text_goes_to_the_file() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay-text.log");
    let mut relay = RelayProcess::start_in(
        dir,
        &format!(
            "accounts:\n{}log: {{ file: {}, access: false }}\n",
            account_yaml("main", &upstream.url(), ""),
            file.display()
        ),
        &[],
    )
    .await;
    for _ in 0..3 {
        assert_eq!(send(&relay, None).await, 200);
    }
    assert!(relay.stop().success());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("claude-relay starting") && text.contains("claude-relay stopped"),
        "{text}"
    );
    assert!(!text.contains(" access:"), "{text}");
    // Text, not JSON; no colour codes in a file.
    assert!(
        text.lines().all(|l| !l.starts_with('{') && !l.contains('\u{1b}')),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_on_standard_error_by_default() {
    let upstream = MockUpstream::start().await;
    let mut relay = RelayProcess::start(&format!("accounts:\n{}", account_yaml("main", &upstream.url(), ""))).await;
    assert_eq!(send(&relay, Some("stderr-line-1")).await, 200);
    assert!(relay.stop().success());
    let text = relay.log_text();
    let line = text
        .lines()
        .find(|l| l.contains("stderr-line-1"))
        .unwrap_or_else(|| panic!("no access line:\n{text}"));
    assert!(line.contains(" access: request"), "{line}");
    assert!(
        line.contains("key_name=\"alice\"") && line.contains("status=200"),
        "{line}"
    );
    assert!(!text.contains(ALICE) && !text.contains(BODY_MARKER), "{text}");
}

/// Runs `claude-relay run` on `log_yaml` and waits for it to exit; returns its code and output.
fn run_until_exit(dir: &Path, log_yaml: &str) -> (Option<i32>, String) {
    let conf = dir.join("relay.yaml");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{}\nadmin: {{ listen: 127.0.0.1:{}, username: admin, password: x-long-enough-password }}\n\
             data_dir: {}\nsecret_key: {}\n{log_yaml}",
            free_port(),
            free_port(),
            dir.join("data").display(),
            support::SECRET
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(relay_bin())
        .arg("--config")
        .arg(&conf)
        .arg("run")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the relay did not stop for {log_yaml}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn bad_log_settings_stop_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let cases = [
        (
            format!("log: {{ file: {}/relay.log }}\n", blocker.display()),
            "log.file",
        ),
        (format!("log: {{ file: {} }}\n", dir.path().display()), "log.file"),
        ("log: { keep: 0 }\n".to_string(), "log.keep"),
        ("log: { rotate: size, max_bytes: 10 }\n".to_string(), "log.max_bytes"),
        ("log: { level: \"info,[bad\" }\n".to_string(), "log.level"),
        ("log: { format: xml }\n".to_string(), "format"),
        ("log: { rotate: weekly }\n".to_string(), "rotate"),
    ];
    for (yaml, key) in cases {
        let (code, out) = run_until_exit(dir.path(), &yaml);
        assert_eq!(code, Some(2), "{yaml}: {out}");
        assert!(out.contains(key), "{yaml}: {out}");
        assert!(!out.contains("panicked"), "{yaml}: {out}");
    }
}
