//! The admin API fuzzed from its own OpenAPI document with schemathesis: the real relay (with a
//! mock OAuth provider), an admin session, and `st run` against `/admin/api/openapi.json`, with
//! checks that no answer is a server error and that every answer (status, content type, headers,
//! body) is one the document describes. Beside it, the requests that once crashed admin handlers,
//! kept as plain regression checks that need no schemathesis.
//!
//! schemathesis is found through `RELAY_SCHEMATHESIS` (the path of its `st` binary), else the
//! virtualenv that `scripts/install-schemathesis.sh` creates (`$RELAY_VENV`, by default
//! `$HOME/.cache/claude-relay/venv`), else `st` on the PATH. Without it the test fails:
//! `./scripts/test.sh` installs it. `RELAY_SCHEMATHESIS_SEED` replays a run (every run prints its
//! seed); `RELAY_SCHEMATHESIS_EXAMPLES` sets the examples per operation (default 100);
//! `RELAY_SCHEMATHESIS_ARGS` adds arguments to `st run` (e.g. `--max-time 1800` for a long run).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::oauth_mock::MockOAuth;
use support::{RelayProcess, account_yaml, client};

/// Longest a schemathesis run may take before the test kills it and fails. A run over the ~70
/// operations takes about 160 s on an idle 2-core machine; the suite runs it beside other tests.
const RUN_LIMIT: Duration = Duration::from_secs(420);

fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("RELAY_SCHEMATHESIS") {
        return PathBuf::from(p);
    }
    let venv = std::env::var_os("RELAY_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/claude-relay/venv")));
    if let Some(st) = venv.map(|v| v.join("bin/st"))
        && st.is_file()
    {
        return st;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("st").is_file() {
                return dir.join("st");
            }
        }
    }
    panic!(
        "schemathesis is not installed: run scripts/install-schemathesis.sh (./scripts/test.sh and .ci/run \
         do), or set RELAY_SCHEMATHESIS to the path of its `st` binary"
    );
}

/// A relay whose OAuth providers are the mock (so exchanges and imports reach a token and profile
/// endpoint that answers, and nothing leaves the machine), with one account and one key from the
/// config file (read-only ones).
async fn relay(mock: &MockOAuth) -> RelayProcess {
    let yaml = format!(
        "providers:\n  anthropic:\n    api_base: \"{}\"\n    oauth:\n      authorize_url: \"{}\"\n      token_url: \"{}\"\n      profile_url: \"{}\"\n      usage_url: \"{}\"\n      refresh_check: 1h\n      usage_poll: 0\n  openai:\n    codex_base: \"{}\"\n    oauth:\n      authorize_url: \"{}\"\n      token_url: \"{}\"\n      refresh_check: 1h\naccounts:\n{}",
        mock.url(),
        mock.authorize_url(),
        mock.token_url(),
        mock.profile_url(),
        mock.usage_url(),
        mock.url(),
        mock.authorize_url(),
        mock.token_url(),
        account_yaml("main", &mock.url(), "")
    );
    RelayProcess::start(&yaml).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_as_its_openapi_document_says() {
    let st = schemathesis();
    let mock = MockOAuth::start().await;
    let relay = relay(&mock).await;
    let token = relay.admin_token().await;
    let work = tempfile::tempdir().unwrap();
    let seed = std::env::var("RELAY_SCHEMATHESIS_SEED").ok();
    let examples = std::env::var("RELAY_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "100".into());

    let mut cmd = Command::new(&st);
    cmd.current_dir(work.path())
        .arg("run")
        .arg(format!("{}/admin/api/openapi.json", relay.admin()))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        // What must hold of every answer: no 5xx, and the status, content type, headers and body
        // that the document gives. Not checked: whether the API accepts every request the
        // document allows and refuses every other. Several rules span fields (`expires_at` or
        // `activate_for`; `account_id` with nothing else; OAuth accounts only through
        // their own endpoints; names are trimmed and free of control characters) and are
        // written in the descriptions, not in the schemas.
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
        ])
        // Logging out ends the session every other request uses.
        .args(["--exclude-path", "/admin/api/logout"])
        // The CRS import connects to whatever Redis the request names (a real one, for a URL
        // such as `redis://0`): its own test covers it.
        .args(["--exclude-path", "/admin/api/import/crs"])
        .args(["--max-examples", &examples])
        // One worker: CPython 3.11 can fail `ast.parse` run from two threads at once ("AST
        // constructor recursion depth mismatch"), which Hypothesis does to describe its strategies.
        .args(["--workers", "1"])
        .args(["--request-timeout", "20"])
        .args([
            "--generation-database",
            &work.path().join("hypothesis").display().to_string(),
        ])
        .arg("--no-color")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(seed) = &seed {
        cmd.args(["--seed", seed]);
    }
    let extra = std::env::var("RELAY_SCHEMATHESIS_ARGS").unwrap_or_default();
    cmd.args(extra.split_whitespace());
    // A long run asked for with extra arguments (`--max-time 1800`, say) has no limit of ours.
    let limit = if extra.trim().is_empty() {
        RUN_LIMIT
    } else {
        Duration::from_secs(24 * 3600)
    };
    let started = Instant::now();
    let child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot run schemathesis at {}: {e}; install it with scripts/install-schemathesis.sh",
            st.display()
        )
    });
    let pid = child.id();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output());
    let out = match tokio::time::timeout(limit, out).await {
        Ok(out) => out.unwrap().unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("schemathesis ran over {limit:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("schemathesis ran for {:.0?}", started.elapsed());
    let log = relay.log_text();
    assert!(
        out.status.success(),
        "schemathesis found answers that break the OpenAPI document (replay with \
         RELAY_SCHEMATHESIS_SEED=<the seed below>):\n{stdout}\n{stderr}\nrelay log (tail):\n{}",
        tail(&log, 60)
    );
    assert!(!log.contains("panicked"), "the relay panicked:\n{}", tail(&log, 60));
    eprintln!("{stdout}");
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Requests that crashed an admin handler (a dropped connection in debug builds, where integer
/// overflow panics) before they were fixed; each must now be a 400 or a success.
#[tokio::test]
async fn inputs_that_crashed_admin_handlers_are_answered() {
    let mock = MockOAuth::start().await;
    let relay = relay(&mock).await;
    let token = relay.admin_token().await;
    let c = client();
    let admin = relay.admin();
    let get = |path: String| {
        let c = c.clone();
        let token = token.clone();
        async move { c.get(path).bearer_auth(token).send().await.unwrap() }
    };
    // Usage ranges whose bucket arithmetic overflowed: `to` near i64::MIN without `from`, and
    // `from`/`to` near i64::MAX.
    for q in [
        "to=-9223372036854775808",
        "from=9223372036854775000&to=9223372036854775807",
        "granularity=day&from=9223372036854775000&to=9223372036854775807",
        "granularity=minute&from=9223372036854775000&to=9223372036854775807",
        "from=-1&to=10",
        "from=0&to=253402300800",
    ] {
        let r = get(format!("{admin}/admin/api/usage?dimension=key&id=x&{q}")).await;
        assert_eq!(r.status(), 400, "{q}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error", "{q}");
    }
    let r = get(format!(
        "{admin}/admin/api/usage?dimension=key&id=x&granularity=month&from=0&to=253402300799"
    ))
    .await;
    assert_eq!(r.status(), 400, "over 2000 buckets");
    let r = get(format!(
        "{admin}/admin/api/usage?dimension=key&id=x&granularity=month&from=253300000000&to=253402300799"
    ))
    .await;
    assert_eq!(r.status(), 200);

    // An imported token whose expiry is a large negative number (Unix seconds times 1000
    // overflowed): it reads as long expired.
    let r = c
        .post(format!("{admin}/admin/api/accounts/claude-oauth/import"))
        .bearer_auth(&token)
        .json(&json!({
            "name": "expired-import",
            "access_token": "sk-ant-oat01-imported-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "expires_at": -1e18,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // A weekly reset whose day name is cut inside a multi-byte character by byte slicing.
    let r = c
        .post(format!("{admin}/admin/api/keys"))
        .bearer_auth(&token)
        .json(&json!({"name": "wk", "cost_limits": {"weekly_usd": 1, "weekly_reset": "a日 0:00"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(!relay.log_text().contains("panicked"), "{}", relay.log_text());
}

/// Answers axum gave by itself in plain text, outside the document: a path id that is not UTF-8
/// (a 400 the `{id}` operations did not list) and a body over the 2 MiB limit (an undocumented
/// 413). Both now have the JSON error shape and are in the document.
#[tokio::test]
async fn errors_before_the_handler_have_the_json_shape() {
    let mock = MockOAuth::start().await;
    let relay = relay(&mock).await;
    let token = relay.admin_token().await;
    let c = client();
    let admin = relay.admin();
    let expect = |r: reqwest::Response, status: u16, kind: &'static str| async move {
        assert_eq!(r.status(), status);
        assert!(
            r.headers()[reqwest::header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["type"], kind, "{body}");
        assert!(
            body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    };
    for path in ["keys/%FF", "accounts/%C3%28", "accounts/%FF/reset"] {
        let url = format!("{admin}/admin/api/{path}");
        let r = if path.ends_with("reset") {
            c.post(url).bearer_auth(&token).send().await.unwrap()
        } else {
            c.get(url).bearer_auth(&token).send().await.unwrap()
        };
        expect(r, 400, "invalid_request_error").await;
    }
    let big = format!("{{\"name\":\"{}\"}}", "a".repeat(3 << 20));
    // A client of its own: the server answers before reading the whole body and closes the
    // connection, which a pooled connection would then be reused for.
    let r = client()
        .post(format!("{admin}/admin/api/keys"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    expect(r, 413, "request_too_large").await;
    // What handlers answer themselves is unchanged, and so are successes.
    let r = c
        .get(format!("{admin}/admin/api/keys/nope"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    expect(r, 404, "not_found_error").await;
    let r = c.get(format!("{admin}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
}
