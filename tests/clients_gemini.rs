#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The real Gemini clients, unmodified, through the real relay binary, against the Gemini mock
//! upstream (`support::gemini_mock`): Gemini CLI (0.61.0) in API-key mode and in Code Assist
//! ("Login with Google") mode, the google-genai Python SDK (3.6.1), and the openai Python SDK
//! (3.57.0) asking for a Gemini model. They are installed by `scripts/install-clients.sh`; a test
//! fails, naming that script, when its client is missing.
//!
//! Each test checks what the client printed, what reached the mock (paths, credentials, bodies
//! against what the client sent, read through a `Tee`), and the usage the relay recorded for the
//! client's key, exactly: the mock answers every generation with fixed token counts.
//!
//! Gemini CLI runs with a throwaway HOME and `general.maxAttempts: 1`,
//! `general.retryFetchErrors: false`, so a failure surfaces in seconds instead of minutes of
//! retries. (A 429 carrying Google's `RetryInfo` is still waited out and tried again: see
//! `gemini_cli_waits_out_googles_retry_delay_while_the_account_rests`.)

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use claude_relay::usage::TokenUsage;
use claude_relay::usage::pricing::PricingTable;
use serde_json::{Value, json};
use support::RelayProcess;
use support::clients::{self, Run, clean_env, key_usage, keys_yaml, new_key};
use support::gemini_mock::{self, GeminiMock, Usage, Wire};
use support::tee::{RawRequest, Tee};

const GEMINI_CLI_VERSION: &str = "0.61.0";
const GENAI_PY_VERSION: &str = "3.6.1";
const OPENAI_PY_VERSION: &str = "3.57.0";

/// The longest one Gemini CLI run may take: it answers in seconds when the relay works, and
/// fails in seconds when it does not (no retries).
const CLI_TIMEOUT: Duration = Duration::from_secs(45);

// ------------------------------------------------------------------------------------------
// Gemini CLI
// ------------------------------------------------------------------------------------------

fn gemini_cli() -> PathBuf {
    clients::node_client("gemini", "Gemini CLI", GEMINI_CLI_VERSION)
}

/// How Gemini CLI authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `GEMINI_API_KEY` + `GOOGLE_GEMINI_BASE_URL`, `selectedType: gemini-api-key`.
    ApiKey,
    /// `GOOGLE_GENAI_USE_GCA` + `GOOGLE_CLOUD_ACCESS_TOKEN` + `CODE_ASSIST_ENDPOINT`,
    /// `selectedType: oauth-personal`.
    CodeAssist,
}

/// A directory for one Gemini CLI run: HOME with the settings, and a workspace.
struct CliDirs {
    _root: tempfile::TempDir,
    home: PathBuf,
    work: PathBuf,
    /// TMPDIR: where the CLI writes its error reports.
    tmp: PathBuf,
}

impl CliDirs {
    fn new(mode: Mode) -> CliDirs {
        let root = tempfile::tempdir().unwrap();
        let home = root.path().join("home");
        let work = root.path().join("work");
        let tmp = root.path().join("tmp");
        std::fs::create_dir_all(home.join(".gemini")).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        let selected = match mode {
            Mode::ApiKey => "gemini-api-key",
            Mode::CodeAssist => "oauth-personal",
        };
        let settings = json!({
            "security": {"auth": {"selectedType": selected}},
            "privacy": {"usageStatisticsEnabled": false},
            "telemetry": {"enabled": false},
            "general": {"enableAutoUpdate": false, "enableAutoUpdateNotification": false,
                        "maxAttempts": 1, "retryFetchErrors": false}
        });
        std::fs::write(
            home.join(".gemini/settings.json"),
            serde_json::to_string_pretty(&settings).unwrap(),
        )
        .unwrap();
        CliDirs {
            _root: root,
            home,
            work,
            tmp,
        }
    }
}

/// What one Gemini CLI run printed: its JSON output (`{"session_id", "response", "stats"}`).
struct CliRun {
    run: Run,
    json: Value,
}

impl CliRun {
    fn response(&self) -> &str {
        self.json["response"].as_str().unwrap_or_default()
    }
}

/// Runs `gemini -p PROMPT --output-format json` in `dirs.work` against `base` with `key`, and
/// fails unless it succeeded with JSON output.
async fn run_cli(mode: Mode, base: &str, key: &str, dirs: &CliDirs, prompt: &str) -> CliRun {
    let run = spawn_cli(mode, base, key, dirs, prompt).await;
    assert!(run.status.success(), "Gemini CLI failed:\n{}", run.transcript());
    let json: Value = serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("Gemini CLI printed no JSON ({e}):\n{}", run.transcript()));
    CliRun { run, json }
}

/// Runs `gemini -p PROMPT --output-format json` to its end, whatever the outcome.
async fn spawn_cli(mode: Mode, base: &str, key: &str, dirs: &CliDirs, prompt: &str) -> Run {
    let bin = gemini_cli();
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(["-p", prompt, "--output-format", "json"])
        .current_dir(&dirs.work)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &dirs.home)
        .env("TERM", "dumb")
        .env("LANG", "C.UTF-8")
        .env("TMPDIR", &dirs.tmp)
        .env("GEMINI_CLI_TRUST_WORKSPACE", "true");
    clean_env(&mut cmd);
    match mode {
        Mode::ApiKey => {
            cmd.env("GEMINI_API_KEY", key).env("GOOGLE_GEMINI_BASE_URL", base);
        }
        Mode::CodeAssist => {
            cmd.env("GOOGLE_GENAI_USE_GCA", "true")
                .env("GOOGLE_CLOUD_ACCESS_TOKEN", key)
                .env("CODE_ASSIST_ENDPOINT", base);
        }
    }
    let run = clients::run_for(cmd, "gemini -p", CLI_TIMEOUT).await;
    eprintln!("gemini -p ({mode:?}) took {:?}", run.elapsed);
    run
}

/// A file in the workspace holding a fresh secret; its path and the secret.
fn secret_file(dirs: &CliDirs) -> (PathBuf, String) {
    let secret = format!("gemini-secret-{}", uuid::Uuid::new_v4().simple());
    let path = dirs.work.join("hello.txt");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    (path, secret)
}

/// A mock that answers a request declaring `read_file` by calling it on `path`.
async fn tool_mock(path: &Path) -> GeminiMock {
    GeminiMock::builder()
        .tool_call("read_file", json!({"file_path": path.to_str().unwrap()}))
        .start()
        .await
}

/// Checks a tool round trip as the mock saw it: one generation answered with the call of
/// `read_file`, and a later one carrying its result (the file's secret) under the call's id;
/// the CLI's final answer is the mock's text.
fn assert_tool_round_trip(mock: &GeminiMock, cli: &CliRun, secret: &str) {
    let answers = mock.answers();
    let calls: Vec<&gemini_mock::Answered> = answers.iter().filter(|a| a.function_call.is_some()).collect();
    assert_eq!(
        calls.len(),
        1,
        "one tool call expected: {answers:#?}\n{}",
        cli.run.transcript()
    );
    let call = calls[0].function_call.clone().unwrap();
    let with_result: Vec<gemini_mock::Request> = mock
        .generations()
        .into_iter()
        .filter(|r| !r.function_responses().is_empty())
        .collect();
    assert_eq!(with_result.len(), 1, "{}", cli.run.transcript());
    let responses = with_result[0].function_responses();
    assert_eq!(responses.len(), 1, "{responses:?}");
    let fr = &responses[0];
    assert_eq!(fr["name"], "read_file", "{fr}");
    assert_eq!(fr["id"], call["id"], "the result names another call: {fr}");
    assert!(
        fr["response"].to_string().contains(secret),
        "the tool result lacks the file's content: {fr}"
    );
    // The call went back as the model's turn before the result.
    let contents = with_result[0].contents();
    let model_turn = &contents[contents.len() - 2];
    assert_eq!(model_turn["role"], "model", "{model_turn}");
    assert!(
        model_turn["parts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["functionCall"]["id"] == call["id"]),
        "{model_turn}"
    );
    assert_eq!(cli.response().trim(), mock.text(), "{}", cli.run.transcript());
}

/// Checks what the mock answered: every content call succeeded, with the mock's usage.
fn successful_generations(mock: &GeminiMock) -> Vec<gemini_mock::Answered> {
    let answers = mock.answers();
    assert!(
        answers.iter().all(|a| a.status == 200),
        "a content call failed at the mock: {answers:#?}"
    );
    answers.into_iter().filter(|a| a.rpc != "countTokens").collect()
}

// ------------------------------------------------------------------------------------------
// Usage
// ------------------------------------------------------------------------------------------

/// What the relay records for answers of the mock: per answer, input without the cached part,
/// output with the thoughts, cache reads; the cost of each at its model's price.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Recorded {
    requests: u64,
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
    cost_nanos: u64,
    unpriced: u64,
}

impl Recorded {
    fn of(totals: &Value, key: &str) -> Recorded {
        let t = &totals[format!("config.{key}")];
        let n = |f: &str| t[f].as_u64().unwrap_or_else(|| panic!("no {f} for {key}: {totals:#}"));
        Recorded {
            requests: n("requests"),
            input: n("input_tokens"),
            output: n("output_tokens"),
            cache_read: n("cache_read_tokens"),
            cache_write: n("cache_write_5m_tokens") + n("cache_write_1h_tokens"),
            cost_nanos: n("cost_nanos"),
            unpriced: n("unpriced_requests"),
        }
    }

    /// What the relay must record for these answers (priced as the model the mock saw).
    fn expected(answers: &[gemini_mock::Answered]) -> Recorded {
        let table = PricingTable::builtin().unwrap();
        let mut r = Recorded::default();
        for a in answers {
            let u = a.usage.expect("a generation answered with usage");
            let (input, output, cache_read) = u.relay_terms();
            r.requests += 1;
            r.input += input;
            r.output += output;
            r.cache_read += cache_read;
            let tokens = TokenUsage {
                input,
                output,
                cache_read,
                cache_write_5m: 0,
                cache_write_1h: 0,
                reasoning: u.thoughts,
                billing: claude_relay::usage::Billing::NONE,
            };
            match table.cost_nanos(&a.model, &tokens) {
                Some(c) => r.cost_nanos += c,
                None => r.unpriced += 1,
            }
        }
        r
    }
}

/// Waits for the usage of `key` to reach the requests of `answers`, and checks it against them.
async fn assert_usage(relay: &RelayProcess, key: &str, answers: &[gemini_mock::Answered]) {
    let expected = Recorded::expected(answers);
    assert!(expected.requests > 0);
    let totals = key_usage(relay, &[(key, expected.requests)]).await;
    assert_eq!(Recorded::of(&totals, key), expected, "usage of {key}: {totals:#}");
    assert_eq!(totals[format!("config.{key}")]["errors"], 0, "{totals:#}");
}

// ------------------------------------------------------------------------------------------
// Gemini CLI straight at the mock: the mock speaks what the CLI expects, on both wires
// ------------------------------------------------------------------------------------------

/// Without the relay, Gemini CLI completes a tool round trip against the mock in either mode;
/// so when a test through the relay fails, the mock is not why.
#[tokio::test]
async fn gemini_cli_runs_against_the_mock_itself() {
    for mode in [Mode::ApiKey, Mode::CodeAssist] {
        let dirs = CliDirs::new(mode);
        let (path, secret) = secret_file(&dirs);
        let key = new_key();
        let mock = GeminiMock::builder()
            .api_key(&key)
            .access_token(&key)
            .tool_call("read_file", json!({"file_path": path.to_str().unwrap()}))
            .start()
            .await;
        let cli = run_cli(mode, &mock.url(), &key, &dirs, "Show me what hello.txt says.").await;
        assert_tool_round_trip(&mock, &cli, &secret);
        let wires: Vec<Option<Wire>> = mock.requests().iter().map(|r| r.wire()).collect();
        let expected = match mode {
            Mode::ApiKey => Wire::Api,
            Mode::CodeAssist => Wire::CodeAssist,
        };
        assert!(wires.iter().all(|w| *w == Some(expected)), "{mode:?}: {wires:?}");
        successful_generations(&mock);
    }
}

// ------------------------------------------------------------------------------------------
// Gemini CLI through the relay
// ------------------------------------------------------------------------------------------

/// A relay with these keys and one `gemini-api` account on `mock` (`extra`: more of the
/// account's settings, YAML flow-mapping entries).
async fn relay_on_gemini_api(keys: &[(&str, &str)], mock: &GeminiMock, extra: &str) -> RelayProcess {
    RelayProcess::start(&format!(
        "{}accounts:\n  - {{ name: gem, kind: gemini-api, api_key: \"{}\", base_url: \"{}\"{extra} }}\n",
        keys_yaml(keys),
        mock.api_key(),
        mock.url()
    ))
    .await
}

/// The generations of a recording (`tests/fixtures/NAME.jsonl`): (method, model, top-level
/// fields of the Gemini request), the model and method from the path (Gemini API) or the
/// envelope (Code Assist).
fn recorded_generations(name: &str) -> Vec<(String, String, Vec<String>)> {
    support::fixture(name)
        .into_iter()
        .filter_map(|(_, path, _, _, body)| {
            let body: Value = serde_json::from_str(body.as_deref().unwrap_or("null")).unwrap();
            let (model, rpc, request) = match path.strip_prefix("/v1internal:") {
                Some(rpc) => (
                    body["model"].as_str()?.to_string(),
                    rpc.to_string(),
                    body["request"].clone(),
                ),
                None => {
                    let (_, rest) = path.split_once("/models/")?;
                    let (m, rpc) = rest.split_once(':')?;
                    (m.to_string(), rpc.to_string(), body)
                }
            };
            rpc.contains("enerateContent")
                .then(|| (rpc, model, top_fields(&request)))
        })
        .collect()
}

fn top_fields(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    k.sort();
    k
}

/// The generations the mock saw, as [`recorded_generations`] lists a recording's; `session_id`
/// (Code Assist's own field, which the Gemini API refuses) left out.
fn seen_generations(mock: &GeminiMock) -> Vec<(String, String, Vec<String>)> {
    mock.generations()
        .iter()
        .map(|r| {
            let mut fields = top_fields(r.gemini());
            fields.retain(|f| f != "session_id");
            (r.rpc().unwrap(), r.model().unwrap(), fields)
        })
        .collect()
}

/// The recording's generations with `session_id` left out of the fields.
fn without_session_id(mut g: Vec<(String, String, Vec<String>)>) -> Vec<(String, String, Vec<String>)> {
    for (_, _, fields) in &mut g {
        fields.retain(|f| f != "session_id");
    }
    g
}

/// No request that reached the mock carried the client's key, in a header or the query.
fn assert_key_stays_home(mock: &GeminiMock, key: &str) {
    for r in mock.requests() {
        assert!(
            !r.query.as_deref().unwrap_or("").contains(key)
                && r.headers.values().all(|v| !v.to_str().unwrap_or("").contains(key)),
            "the client key went upstream: {} {:?}",
            r.target(),
            r.headers
        );
    }
}

/// Every request that reached the mock is a Gemini API call with the account's key.
fn assert_gemini_api_calls(mock: &GeminiMock) {
    for r in mock.requests() {
        assert_eq!(r.wire(), Some(Wire::Api), "{}", r.target());
        assert_eq!(
            r.header("x-goog-api-key").as_deref(),
            Some(mock.api_key()),
            "{}",
            r.target()
        );
        if r.is_stream() {
            assert_eq!(r.query.as_deref(), Some("alt=sse"), "{}", r.target());
        }
    }
}

/// The Gemini CLI's own count of the tokens of its calls equals the mock's (the usage reached
/// it unchanged).
fn assert_cli_saw_the_usage(cli: &CliRun, answers: &[gemini_mock::Answered]) {
    let (mut prompt, mut candidates, mut thoughts, mut cached) = (0, 0, 0, 0);
    for m in cli.json["stats"]["models"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
    {
        let t = &m["tokens"];
        prompt += t["prompt"].as_u64().unwrap_or(0);
        candidates += t["candidates"].as_u64().unwrap_or(0);
        thoughts += t["thoughts"].as_u64().unwrap_or(0);
        cached += t["cached"].as_u64().unwrap_or(0);
    }
    let sum = |f: fn(&Usage) -> u64| answers.iter().map(|a| f(&a.usage.unwrap())).sum::<u64>();
    assert_eq!(
        (prompt, candidates, thoughts, cached),
        (
            sum(|u| u.prompt),
            sum(|u| u.candidates),
            sum(|u| u.thoughts),
            sum(|u| u.cached)
        ),
        "the CLI's token stats: {:#}",
        cli.json["stats"]
    );
}

/// The Gemini API requests the client sent through the tee, as (path below `/gemini`, body).
fn client_api_calls(tee: &Tee) -> Vec<(String, Vec<u8>)> {
    tee.requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| {
            let target = r.target.strip_prefix("/gemini").unwrap_or(&r.target).to_string();
            (target, r.body)
        })
        .collect()
}

/// In API-key mode the relay passes each call on unchanged: the mock got exactly the paths and
/// the bytes Gemini CLI sent (through `/gemini`).
fn assert_passed_through(mock: &GeminiMock, tee: &Tee) {
    let mut sent = client_api_calls(tee);
    let mut got: Vec<(String, Vec<u8>)> = mock.requests().iter().map(|r| (r.target(), r.raw.to_vec())).collect();
    sent.sort();
    got.sort();
    let show = |v: &[(String, Vec<u8>)]| {
        v.iter()
            .map(|(t, b)| format!("{t} ({} bytes)", b.len()))
            .collect::<Vec<_>>()
    };
    assert_eq!(show(&got), show(&sent), "the mock did not get what the CLI sent");
    assert!(got == sent, "a body was changed on the way");
}

#[tokio::test]
async fn gemini_cli_api_key_mode_through_the_relay() {
    gemini_cli();
    let mock = GeminiMock::start().await;
    let key = new_key();
    let relay = relay_on_gemini_api(&[("cli", &key)], &mock, "").await;
    let tee = Tee::start(([127, 0, 0, 1], relay.port).into()).await;
    let dirs = CliDirs::new(Mode::ApiKey);

    let cli = run_cli(Mode::ApiKey, &format!("{}/gemini", tee.url()), &key, &dirs, "say hi").await;
    assert_eq!(cli.response().trim(), mock.text(), "{}", cli.run.transcript());

    assert_gemini_api_calls(&mock);
    assert_key_stays_home(&mock, &key);
    assert_passed_through(&mock, &tee);
    // The router's call, then the streamed answer, as recorded.
    assert_eq!(seen_generations(&mock), recorded_generations("gemini"));
    let answers = successful_generations(&mock);
    assert_cli_saw_the_usage(&cli, &answers);
    assert_usage(&relay, "cli", &answers).await;
}

#[tokio::test]
async fn gemini_cli_api_key_mode_runs_a_tool_round_trip_through_the_relay() {
    gemini_cli();
    let dirs = CliDirs::new(Mode::ApiKey);
    let (path, secret) = secret_file(&dirs);
    let mock = tool_mock(&path).await;
    let key = new_key();
    let relay = relay_on_gemini_api(&[("cli", &key)], &mock, "").await;
    let tee = Tee::start(([127, 0, 0, 1], relay.port).into()).await;

    let cli = run_cli(
        Mode::ApiKey,
        &format!("{}/gemini", tee.url()),
        &key,
        &dirs,
        "Show me what hello.txt says.",
    )
    .await;
    assert_tool_round_trip(&mock, &cli, &secret);
    assert_gemini_api_calls(&mock);
    assert_key_stays_home(&mock, &key);
    assert_passed_through(&mock, &tee);
    assert_eq!(seen_generations(&mock), recorded_generations("gemini-tool"));
    let answers = successful_generations(&mock);
    assert_cli_saw_the_usage(&cli, &answers);
    assert_usage(&relay, "cli", &answers).await;
}

/// The Code Assist calls Gemini CLI sent through the tee: (method after `v1internal:`, body).
fn client_code_assist_calls(tee: &Tee) -> Vec<(String, Value)> {
    tee.requests()
        .into_iter()
        .filter_map(|r: RawRequest| {
            let path = r.target.split('?').next().unwrap_or("").to_string();
            let rpc = path.strip_prefix("/gemini/v1internal:")?.to_string();
            Some((rpc, serde_json::from_slice(&r.body).unwrap_or(Value::Null)))
        })
        .collect()
}

/// Each Code Assist generation the CLI sent reached the mock as a Gemini API call of the same
/// method for the envelope's model, carrying the envelope's request (less `session_id`).
fn assert_unwrapped(mock: &GeminiMock, tee: &Tee) {
    let sent: Vec<(String, Value)> = client_code_assist_calls(tee)
        .into_iter()
        .filter(|(rpc, _)| rpc.contains("enerateContent"))
        .collect();
    let got = mock.generations();
    assert_eq!(
        got.len(),
        sent.len(),
        "sent: {:?}\ngot: {:?}",
        sent.iter()
            .map(|(r, b)| format!("{r} {}", b["model"]))
            .collect::<Vec<_>>(),
        got.iter().map(|r| r.target()).collect::<Vec<_>>()
    );
    for (rpc, envelope) in &sent {
        let model = envelope["model"].as_str().unwrap();
        let mut inner = envelope["request"].clone();
        inner.as_object_mut().unwrap().remove("session_id");
        let found = got.iter().any(|r| {
            r.rpc().as_deref() == Some(rpc.as_str()) && r.model().as_deref() == Some(model) && r.body == inner
        });
        assert!(
            found,
            "no Gemini API call carried the {rpc} request for {model}; the mock got {:?}",
            got.iter().map(|r| r.target()).collect::<Vec<_>>()
        );
    }
    // The relay answered the setup calls itself.
    let setup: Vec<String> = client_code_assist_calls(tee)
        .into_iter()
        .map(|(rpc, _)| rpc)
        .filter(|rpc| !rpc.contains("enerateContent"))
        .collect();
    assert!(setup.iter().any(|r| r == "loadCodeAssist"), "{setup:?}");
}

#[tokio::test]
async fn gemini_cli_code_assist_mode_on_a_gemini_api_account() {
    gemini_cli();
    let mock = GeminiMock::start().await;
    let key = new_key();
    let relay = relay_on_gemini_api(&[("cli", &key)], &mock, "").await;
    let tee = Tee::start(([127, 0, 0, 1], relay.port).into()).await;
    let dirs = CliDirs::new(Mode::CodeAssist);

    let cli = run_cli(
        Mode::CodeAssist,
        &format!("{}/gemini", tee.url()),
        &key,
        &dirs,
        "say hi",
    )
    .await;
    assert_eq!(cli.response().trim(), mock.text(), "{}", cli.run.transcript());

    assert_gemini_api_calls(&mock);
    assert_key_stays_home(&mock, &key);
    assert_unwrapped(&mock, &tee);
    assert_eq!(
        seen_generations(&mock),
        without_session_id(recorded_generations("gemini-gca"))
    );
    let answers = successful_generations(&mock);
    assert_cli_saw_the_usage(&cli, &answers);
    assert_usage(&relay, "cli", &answers).await;
}

#[tokio::test]
async fn gemini_cli_code_assist_mode_runs_a_tool_round_trip_on_a_gemini_api_account() {
    gemini_cli();
    let dirs = CliDirs::new(Mode::CodeAssist);
    let (path, secret) = secret_file(&dirs);
    let mock = tool_mock(&path).await;
    let key = new_key();
    let relay = relay_on_gemini_api(&[("cli", &key)], &mock, "").await;
    let tee = Tee::start(([127, 0, 0, 1], relay.port).into()).await;

    let cli = run_cli(
        Mode::CodeAssist,
        &format!("{}/gemini", tee.url()),
        &key,
        &dirs,
        "Show me what hello.txt says.",
    )
    .await;
    assert_tool_round_trip(&mock, &cli, &secret);
    assert_gemini_api_calls(&mock);
    assert_key_stays_home(&mock, &key);
    assert_unwrapped(&mock, &tee);
    assert_eq!(
        seen_generations(&mock),
        without_session_id(recorded_generations("gemini-gca-tool"))
    );
    let answers = successful_generations(&mock);
    assert_cli_saw_the_usage(&cli, &answers);
    assert_usage(&relay, "cli", &answers).await;
}

/// A stream silent for longer than the keep-alive interval: the relay fills the silence with
/// blank lines, and Gemini CLI and google-genai read through them.
#[tokio::test]
async fn silent_gemini_streams_are_kept_alive_and_the_clients_read_through() {
    gemini_cli();
    python();
    let pause = Duration::from_millis(1500);
    let mock = GeminiMock::builder().first_event_delay(pause).start().await;
    let (cli_key, sdk_key, raw_key) = (new_key(), new_key(), new_key());
    let relay = RelayProcess::start(&format!(
        "timeouts: {{ stream_keepalive: 200ms }}\n{}accounts:\n  - {{ name: gem, kind: gemini-api, api_key: \"{}\", base_url: \"{}\" }}\n",
        keys_yaml(&[("cli", &cli_key), ("genai_stream", &sdk_key), ("raw", &raw_key)]),
        mock.api_key(),
        mock.url()
    ))
    .await;

    // What a client receives before the first event: blank lines only, several of them.
    let started = std::time::Instant::now();
    let r = support::client()
        .post(format!(
            "{}/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            relay.base()
        ))
        .header("x-goog-api-key", &raw_key)
        .json(&json!({"contents": [{"role": "user", "parts": [{"text": "say hi"}]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(started.elapsed() >= pause);
    let (before, _) = body.split_once("data:").unwrap_or_else(|| panic!("no event: {body:?}"));
    assert!(
        before.len() >= 3 && before.bytes().all(|b| b == b'\n'),
        "the silence was not kept alive with blank lines: {before:?}"
    );

    let out = run_sdk(json!({
        "gemini_base": format!("{}/gemini", relay.base()),
        "model": "gemini-2.5-flash",
        "keys": {"genai_stream": sdk_key},
        "steps": ["genai_stream"],
    }))
    .await;
    assert_eq!(out["genai_stream"]["text"], mock.text(), "{out:#}");
    assert_genai_usage(&out["genai_stream"]["usage"], mock.usage());

    let dirs = CliDirs::new(Mode::ApiKey);
    let cli = run_cli(
        Mode::ApiKey,
        &format!("{}/gemini", relay.base()),
        &cli_key,
        &dirs,
        "say hi",
    )
    .await;
    assert_eq!(cli.response().trim(), mock.text(), "{}", cli.run.transcript());

    let answers = successful_generations(&mock);
    assert_usage(&relay, "raw", &answers[..1]).await;
    assert_usage(&relay, "genai_stream", &answers[1..2]).await;
    assert_usage(&relay, "cli", &answers[2..]).await;
}

/// Google's 429 with a `RetryInfo` reaches Gemini CLI as Google sent it: the CLI waits the
/// delay Google asked for (even with `maxAttempts: 1`) and tries again. Meanwhile the account
/// rests: another client is refused by the relay (no account free) without the upstream being
/// asked. Then the CLI's retry gets through.
#[tokio::test]
async fn gemini_cli_waits_out_googles_retry_delay_while_the_account_rests() {
    gemini_cli();
    let mock = GeminiMock::builder()
        .fail_next(1, 429, gemini_mock::resource_exhausted("5s"))
        .start()
        .await;
    let (key, other) = (new_key(), new_key());
    let relay = relay_on_gemini_api(&[("cli", &key), ("other", &other)], &mock, "").await;
    let base = format!("{}/gemini", relay.base());
    // Logged in before the rest starts (a login hashes a password: slow on a loaded machine).
    let admin = support::admin::Admin::login(&relay).await;

    let dirs = CliDirs::new(Mode::ApiKey);
    let cli = tokio::spawn({
        let (base, key) = (base.clone(), key.clone());
        async move { spawn_cli(Mode::ApiKey, &base, &key, &dirs, "say hi").await }
    });
    support::eventually(|| async { (!mock.answers().is_empty()).then_some(()) }).await;
    assert_eq!(mock.answers()[0].status, 429);
    // The account rests exactly the delay Google gave.
    let health = support::eventually(|| async {
        let list = admin.get("/admin/api/accounts").await;
        let account = list.json["accounts"]
            .as_array()?
            .iter()
            .find(|a| a["name"] == "gem")?
            .clone();
        let health = account["health"].clone();
        (health["state"].is_string() && health["state"] != "active").then_some(health)
    })
    .await;
    assert_eq!(health["state"], "rate_limited", "{health}");
    let rest = health["until"].as_i64().unwrap() - health["since"].as_i64().unwrap();
    assert!((5000..=5100).contains(&rest), "the account rests {rest} ms: {health}");

    let r = support::client()
        .post(format!("{base}/v1beta/models/gemini-2.5-flash:generateContent"))
        .header("x-goog-api-key", &other)
        .json(&json!({"contents": [{"role": "user", "parts": [{"text": "say hi"}]}]}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let retry_after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    // The relay's "no account free now" (503, or a 429), in Google's shape, saying when the
    // resting account returns.
    assert!(status == 503 || status == 429, "{status} {body}");
    assert!((1..=5).contains(&retry_after), "retry-after {retry_after}");
    assert_eq!(body["error"]["code"], status.as_u16(), "{body}");
    assert!(
        matches!(
            body["error"]["status"].as_str(),
            Some("UNAVAILABLE" | "RESOURCE_EXHAUSTED")
        ),
        "{body}"
    );
    assert_eq!(mock.answers().len(), 1, "the resting account was asked");

    let run = cli.await.unwrap();
    assert!(run.status.success(), "{}", run.transcript());
    assert!(
        run.stderr.contains("Suggested retry after 5s"),
        "the CLI did not see Google's retry delay:\n{}",
        run.transcript()
    );
    assert!(run.elapsed >= Duration::from_secs(5), "{:?}", run.elapsed);
    let json: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(json["response"].as_str().unwrap_or("").trim(), mock.text());
    let statuses: Vec<u16> = mock.answers().iter().map(|a| a.status).collect();
    assert_eq!(statuses, [429, 200, 200]);
}

// ------------------------------------------------------------------------------------------
// Gemini CLI in Code Assist mode on a gemini-oauth account
// ------------------------------------------------------------------------------------------

const GEMINI_OAUTH_IMPORT: &str = "/admin/api/accounts/gemini-oauth/import";

/// A relay with these keys whose Google settings point at `mock` (Code Assist and the token
/// endpoint), the background token refresher out of the way; accounts come by import.
async fn relay_for_gemini_oauth(keys: &[(&str, &str)], mock: &GeminiMock) -> RelayProcess {
    RelayProcess::start(&format!(
        "{}providers:\n  google:\n    code_assist_base: \"{}\"\n    oauth: {{ token_url: \"{}\", refresh_check: 1h }}\n",
        keys_yaml(keys),
        mock.url(),
        mock.token_url()
    ))
    .await
}

/// Imports a `gemini-oauth` account on `mock` through the admin API: Gemini CLI's
/// `oauth_creds.json` fields beside the account's settings (`project_id` when given).
async fn import_gemini_oauth(relay: &RelayProcess, mock: &GeminiMock, project_id: Option<&str>) {
    let admin = support::admin::Admin::login(relay).await;
    let mut body = json!({
        "name": "gca",
        "base_url": mock.url(),
        "access_token": mock.access_token(),
        "refresh_token": mock.refresh_token(),
        "scope": gemini_mock::SCOPES,
        "token_type": "Bearer",
        "expiry_date": support::now_ms() + 3_600_000,
    });
    if let Some(p) = project_id {
        body["project_id"] = json!(p);
    }
    let a = admin.post(GEMINI_OAUTH_IMPORT, body).await;
    assert!(a.status.is_success(), "import: {} {}", a.status, a.text);
    assert!(
        !a.text.contains(mock.access_token()) && !a.text.contains(mock.refresh_token()),
        "the import answer shows a token: {}",
        a.text
    );
}

/// The Code Assist calls other than content calls that reached the mock.
fn setup_calls(mock: &GeminiMock) -> Vec<String> {
    mock.requests()
        .iter()
        .filter_map(|r| r.rpc())
        .filter(|rpc| {
            !matches!(
                rpc.as_str(),
                "generateContent" | "streamGenerateContent" | "countTokens"
            )
        })
        .collect()
}

/// Every request that reached the mock is a Code Assist call with the account's Google token,
/// and every generation names the account's project (not the one the relay showed the client).
fn assert_code_assist_calls(mock: &GeminiMock) {
    for r in mock.requests() {
        assert_eq!(r.wire(), Some(Wire::CodeAssist), "{}", r.target());
        assert_eq!(r.bearer().as_deref(), Some(mock.access_token()), "{}", r.target());
        if r.is_generation() {
            assert_eq!(r.project().as_deref(), Some(mock.project()), "{}", r.target());
        }
    }
}

/// Each Code Assist generation the CLI sent reached the mock with the same method, model,
/// prompt id and request; only the project may differ.
fn assert_forwarded(mock: &GeminiMock, tee: &Tee) {
    let sent: Vec<(String, Value)> = client_code_assist_calls(tee)
        .into_iter()
        .filter(|(rpc, _)| rpc.contains("enerateContent"))
        .collect();
    let got = mock.generations();
    assert_eq!(
        got.len(),
        sent.len(),
        "{:?}",
        got.iter().map(|r| r.target()).collect::<Vec<_>>()
    );
    for (rpc, envelope) in &sent {
        let found = got.iter().any(|r| {
            r.rpc().as_deref() == Some(rpc.as_str())
                && r.body["model"] == envelope["model"]
                && r.body["user_prompt_id"] == envelope["user_prompt_id"]
                && r.body["request"] == envelope["request"]
        });
        assert!(
            found,
            "no Code Assist call carried the {rpc} request for {}",
            envelope["model"]
        );
    }
}

#[tokio::test]
async fn gemini_cli_code_assist_mode_on_a_gemini_oauth_account() {
    gemini_cli();
    let mock = GeminiMock::start().await;
    let key = new_key();
    let relay = relay_for_gemini_oauth(&[("cli", &key)], &mock).await;
    import_gemini_oauth(&relay, &mock, Some(mock.project())).await;
    let tee = Tee::start(([127, 0, 0, 1], relay.port).into()).await;
    let dirs = CliDirs::new(Mode::CodeAssist);

    let cli = run_cli(
        Mode::CodeAssist,
        &format!("{}/gemini", tee.url()),
        &key,
        &dirs,
        "say hi",
    )
    .await;
    assert_eq!(cli.response().trim(), mock.text(), "{}", cli.run.transcript());

    // The project was given: Code Assist got content calls only.
    assert!(setup_calls(&mock).is_empty(), "{:?}", setup_calls(&mock));
    assert_code_assist_calls(&mock);
    assert_key_stays_home(&mock, &key);
    assert_forwarded(&mock, &tee);
    assert_eq!(
        seen_generations(&mock),
        without_session_id(recorded_generations("gemini-gca"))
    );
    let answers = successful_generations(&mock);
    assert_cli_saw_the_usage(&cli, &answers);
    assert_usage(&relay, "cli", &answers).await;
}

/// The account is imported without a project: the relay finds it with `loadCodeAssist`.
#[tokio::test]
async fn gemini_cli_code_assist_mode_runs_a_tool_round_trip_on_a_gemini_oauth_account() {
    gemini_cli();
    let dirs = CliDirs::new(Mode::CodeAssist);
    let (path, secret) = secret_file(&dirs);
    let mock = tool_mock(&path).await;
    let key = new_key();
    let relay = relay_for_gemini_oauth(&[("cli", &key)], &mock).await;
    import_gemini_oauth(&relay, &mock, None).await;
    let tee = Tee::start(([127, 0, 0, 1], relay.port).into()).await;

    let cli = run_cli(
        Mode::CodeAssist,
        &format!("{}/gemini", tee.url()),
        &key,
        &dirs,
        "Show me what hello.txt says.",
    )
    .await;
    assert_tool_round_trip(&mock, &cli, &secret);
    // The project was asked of Code Assist once, and every generation named it.
    assert_eq!(setup_calls(&mock), ["loadCodeAssist"]);
    assert_code_assist_calls(&mock);
    assert_key_stays_home(&mock, &key);
    assert_forwarded(&mock, &tee);
    let answers = successful_generations(&mock);
    assert_cli_saw_the_usage(&cli, &answers);
    assert_usage(&relay, "cli", &answers).await;
}

/// The Gemini API clients (Gemini CLI in API-key mode, google-genai) and a Chat Completions
/// client reach an imported `gemini-oauth` account: each request goes to Code Assist in its
/// envelope, with the account's project and the model from the client's path.
#[tokio::test]
async fn gemini_api_and_chat_clients_reach_a_gemini_oauth_account() {
    gemini_cli();
    python();
    let mock = GeminiMock::start().await;
    let (cli_key, sdk_key, chat_key) = (new_key(), new_key(), new_key());
    let relay = relay_for_gemini_oauth(
        &[
            ("cli", &cli_key),
            ("genai_generate", &sdk_key),
            ("chat_stream", &chat_key),
        ],
        &mock,
    )
    .await;
    import_gemini_oauth(&relay, &mock, Some(mock.project())).await;
    let tee = Tee::start(([127, 0, 0, 1], relay.port).into()).await;

    let dirs = CliDirs::new(Mode::ApiKey);
    let cli = run_cli(
        Mode::ApiKey,
        &format!("{}/gemini", tee.url()),
        &cli_key,
        &dirs,
        "say hi",
    )
    .await;
    assert_eq!(cli.response().trim(), mock.text(), "{}", cli.run.transcript());
    let cli_calls = mock.generations().len();
    assert_eq!(cli_calls, 2, "the router's call and the answer");

    let out = run_sdk(json!({
        "gemini_base": format!("{}/gemini", tee.url()),
        "openai_base": format!("{}/openai/v1", relay.base()),
        "model": "gemini-2.5-flash",
        "keys": {"genai_generate": sdk_key, "chat_stream": chat_key},
        "steps": ["genai_generate", "chat_stream"],
    }))
    .await;
    assert_eq!(out["genai_generate"]["text"], mock.text(), "{out:#}");
    assert_genai_usage(&out["genai_generate"]["usage"], mock.usage());
    assert_eq!(out["chat_stream"]["content"], mock.text(), "{out:#}");
    assert_eq!(out["chat_stream"]["usage"]["total_tokens"], mock.usage().total());

    // Code Assist calls only, with the account's token and project; each Gemini API request the
    // clients sent is the envelope's request, for the model of its path.
    assert_code_assist_calls(&mock);
    for key in [&cli_key, &sdk_key, &chat_key] {
        assert_key_stays_home(&mock, key);
    }
    let got = mock.generations();
    assert_eq!(got.len(), cli_calls + 2);
    for (target, body) in client_api_calls(&tee) {
        let (path, _) = target.split_once('?').unwrap_or((&target, ""));
        let Some((_, rest)) = path.split_once("/models/") else {
            continue;
        };
        let (model, rpc) = rest.split_once(':').unwrap();
        let sent: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            got.iter().any(|r| r.rpc().as_deref() == Some(rpc)
                && r.model().as_deref() == Some(model)
                && r.body["request"] == sent),
            "no Code Assist call carried the {rpc} request for {model}"
        );
    }
    let chat = &got[cli_calls + 1];
    assert_eq!(chat.rpc().as_deref(), Some("streamGenerateContent"));
    assert_eq!(chat.model().as_deref(), Some("gemini-2.5-flash"));
    assert_eq!(
        chat.contents(),
        [json!({"role": "user", "parts": [{"text": "say hi"}]})]
    );

    let answers = successful_generations(&mock);
    assert_usage(&relay, "cli", &answers[..cli_calls]).await;
    assert_usage(&relay, "genai_generate", &answers[cli_calls..cli_calls + 1]).await;
    assert_usage(&relay, "chat_stream", &answers[cli_calls + 1..]).await;
}

// ------------------------------------------------------------------------------------------
// The Python SDKs
// ------------------------------------------------------------------------------------------

/// Runs the steps named in `cfg["steps"]` with the real SDKs and prints one JSON object with what
/// each step saw (or the error it raised).
const SDK_SCRIPT: &str = r#"
import json, sys, traceback

cfg = json.load(open(sys.argv[1]))
out = {}

def genai_client(step):
    from google import genai
    return genai.Client(api_key=cfg["keys"][step],
                        http_options={"base_url": cfg["gemini_base"], "timeout": 20000,
                                      "retry_options": {"attempts": 1}})

def usage(u):
    return None if u is None else u.model_dump(exclude_none=True)

def genai_generate():
    import google.genai
    out["genai_version"] = google.genai.__version__
    c = genai_client("genai_generate")
    r = c.models.generate_content(model=cfg["model"], contents="say hi")
    return {"text": r.text, "usage": usage(r.usage_metadata), "finish": str(r.candidates[0].finish_reason)}

def genai_stream():
    text, last, chunks = "", None, 0
    c = genai_client("genai_stream")
    for ch in c.models.generate_content_stream(model=cfg["model"], contents="say hi"):
        chunks += 1
        text += ch.text or ""
        if ch.usage_metadata is not None:
            last = usage(ch.usage_metadata)
    return {"text": text, "usage": last, "chunks": chunks}

def genai_count():
    c = genai_client("genai_count")
    r = c.models.count_tokens(model=cfg["model"], contents="say hi")
    return {"total_tokens": r.total_tokens}

def genai_refused():
    from google.genai import errors
    c = genai_client("genai_refused")
    try:
        c.models.generate_content(model=cfg["model"], contents="say hi")
    except errors.APIError as e:
        return {"refused": {"code": e.code, "status": e.status, "message": e.message}}
    return {"refused": None}

def openai_client(step):
    import openai
    out["openai_version"] = openai.__version__
    return openai.OpenAI(base_url=cfg["openai_base"], api_key=cfg["keys"][step], max_retries=0, timeout=20)


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "say hi"}]

def chat():
    c = openai_client("chat")
    r = c.chat.completions.create(
        model=cfg["model"], messages=MESSAGES, max_tokens=100, temperature=0.5)
    m = r.choices[0].message
    return {"content": m.content, "reasoning": (m.model_extra or {}).get("reasoning_content"),
            "finish_reason": r.choices[0].finish_reason,
            "usage": r.usage.model_dump(), "model": r.model, "object": r.object}

def chat_stream():
    c = openai_client("chat_stream")
    s = c.chat.completions.create(
        model=cfg["model"], messages=MESSAGES, max_tokens=100, temperature=0.5,
        stream=True, stream_options={"include_usage": True})
    r = {"content": "", "reasoning": None, "finish_reason": None, "usage": None, "model": None}
    for ch in s:
        r["model"] = ch.model
        if ch.usage is not None:
            r["usage"] = ch.usage.model_dump()
        for c in ch.choices:
            if c.delta.content:
                r["content"] += c.delta.content
            thought = (c.delta.model_extra or {}).get("reasoning_content")
            if thought:
                r["reasoning"] = (r["reasoning"] or "") + thought
            if c.finish_reason:
                r["finish_reason"] = c.finish_reason
    return r

TOOLS = [{"type": "function", "function": {
    "name": "read_file", "description": "Read a file",
    "parameters": {"type": "object", "properties": {"file_path": {"type": "string"}},
                   "required": ["file_path"]}}}]

def tool():
    c = openai_client("tool")
    messages = [{"role": "user", "content": "What is in /tmp/x?"}]
    s = c.chat.completions.create(model=cfg["model"], messages=messages, tools=TOOLS, stream=True,
                                  stream_options={"include_usage": True})
    calls, finish, content = {}, None, ""
    for ch in s:
        for ch_c in ch.choices:
            d = ch_c.delta
            content += d.content or ""
            for tc in d.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    call["id"] = tc.id
                if tc.function and tc.function.name:
                    call["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    call["arguments"] += tc.function.arguments
            if ch_c.finish_reason:
                finish = ch_c.finish_reason
    calls = [calls[k] for k in sorted(calls)]
    messages.append({"role": "assistant", "content": content or None, "tool_calls": [
        {"id": k["id"], "type": "function", "function": {"name": k["name"], "arguments": k["arguments"]}}
        for k in calls]})
    for k in calls:
        messages.append({"role": "tool", "tool_call_id": k["id"], "content": cfg["tool_result"]})
    r = c.chat.completions.create(model=cfg["model"], messages=messages, tools=TOOLS)
    return {"first": {"calls": calls, "finish_reason": finish, "content": content},
            "second": {"content": r.choices[0].message.content, "finish_reason": r.choices[0].finish_reason}}

for step in cfg["steps"]:
    try:
        out[step] = globals()[step]()
    except Exception as e:
        out[step] = {"error": {"class": type(e).__name__, "message": str(e), "trace": traceback.format_exc()}}
print(json.dumps(out))
"#;

/// The virtualenv's python with both SDKs.
fn python() -> PathBuf {
    clients::python_with(&[("google-genai", GENAI_PY_VERSION), ("openai", OPENAI_PY_VERSION)])
}

/// Runs [`SDK_SCRIPT`] with `cfg` and returns its JSON, failing on any step's error.
async fn run_sdk(cfg: Value) -> Value {
    let py = python();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("sdk.py");
    let cfg_path = dir.path().join("cfg.json");
    std::fs::write(&script, SDK_SCRIPT).unwrap();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let mut cmd = tokio::process::Command::new(py);
    cmd.arg(&script).arg(&cfg_path).current_dir(dir.path());
    clean_env(&mut cmd);
    cmd.env("PYTHONDONTWRITEBYTECODE", "1");
    let r = clients::run(cmd, "the SDK script").await;
    assert!(r.status.success(), "the SDK script failed:\n{}", r.transcript());
    let out: Value = serde_json::from_str(r.stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("SDK output is not JSON ({e}):\n{}", r.transcript()));
    for step in cfg["steps"].as_array().unwrap() {
        let s = &out[step.as_str().unwrap()];
        assert!(s["error"].is_null(), "SDK step {step} failed: {s:#}");
    }
    eprintln!("SDK script took {:?}", r.elapsed);
    out
}

/// The SDK's view of a `usageMetadata` (snake_case names) is the mock's.
fn assert_genai_usage(u: &Value, want: Usage) {
    assert_eq!(u["prompt_token_count"], want.prompt, "{u}");
    assert_eq!(u["candidates_token_count"], want.candidates, "{u}");
    assert_eq!(u["thoughts_token_count"], want.thoughts, "{u}");
    assert_eq!(u["cached_content_token_count"], want.cached, "{u}");
    assert_eq!(u["total_token_count"], want.total(), "{u}");
}

#[tokio::test]
async fn genai_sdk_generates_streams_and_counts_through_the_relay() {
    python();
    let mock = GeminiMock::start().await;
    let steps = ["genai_generate", "genai_stream", "genai_count", "genai_refused"];
    let keys: Vec<(String, String)> = steps.iter().map(|s| (s.to_string(), new_key())).collect();
    let key_refs: Vec<(&str, &str)> = keys.iter().map(|(n, k)| (n.as_str(), k.as_str())).collect();
    let relay = relay_on_gemini_api(
        &key_refs,
        &mock,
        ", model_map: { gemini-2.5-flash: gemini-2.5-flash-lite }",
    )
    .await;
    let tee = Tee::start(([127, 0, 0, 1], relay.port).into()).await;
    let cfg = |steps: &[&str]| {
        json!({
            "gemini_base": format!("{}/gemini", tee.url()),
            "model": "gemini-2.5-flash",
            "keys": keys.iter().map(|(n, k)| (n.clone(), json!(k))).collect::<serde_json::Map<String, Value>>(),
            "steps": steps,
        })
    };

    let out = run_sdk(cfg(&steps[..3])).await;
    assert_eq!(out["genai_version"], GENAI_PY_VERSION);
    let g = &out["genai_generate"];
    assert_eq!(g["text"], mock.text(), "{g:#}");
    assert_eq!(g["finish"], "FinishReason.STOP", "{g:#}");
    assert_genai_usage(&g["usage"], mock.usage());
    let s = &out["genai_stream"];
    assert_eq!(s["text"], mock.text(), "{s:#}");
    assert!(s["chunks"].as_u64().unwrap() > 1, "{s:#}");
    assert_genai_usage(&s["usage"], mock.usage());
    assert_eq!(out["genai_count"]["total_tokens"], gemini_mock::COUNT_TOKENS);

    // The SDK's v1 paths, with the mapped model, the account's key and the SDK's bodies.
    let seen = mock.requests();
    assert_eq!(
        seen.iter().map(|r| r.target()).collect::<Vec<_>>(),
        [
            "/v1/models/gemini-2.5-flash-lite:generateContent",
            "/v1/models/gemini-2.5-flash-lite:streamGenerateContent?alt=sse",
            "/v1/models/gemini-2.5-flash-lite:countTokens",
        ]
    );
    assert_gemini_api_calls(&mock);
    for (_, key) in &keys {
        assert_key_stays_home(&mock, key);
    }
    let sent = client_api_calls(&tee);
    assert_eq!(
        sent.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
        [
            "/v1/models/gemini-2.5-flash:generateContent",
            "/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            "/v1/models/gemini-2.5-flash:countTokens",
        ]
    );
    for (r, (target, body)) in seen.iter().zip(&sent) {
        assert_eq!(r.raw.as_ref(), body.as_slice(), "{target}: the body was changed");
    }
    // The recorded SDK made the same calls.
    let recorded: Vec<String> = support::fixture("sdk-genai")
        .into_iter()
        .map(|(_, path, _, _, _)| path.rsplit(':').next().unwrap().to_string())
        .collect();
    let mut ours: Vec<String> = seen.iter().map(|r| r.rpc().unwrap()).collect();
    ours.sort();
    let mut recorded_sorted = recorded.clone();
    recorded_sorted.sort();
    assert_eq!(ours, recorded_sorted);

    // Usage: one generation per key, priced as the mapped model; countTokens is not counted.
    let answers = successful_generations(&mock);
    assert_usage(&relay, "genai_generate", &answers[..1]).await;
    assert_usage(&relay, "genai_stream", &answers[1..2]).await;
    let totals = key_usage(&relay, &[("genai_generate", 1)]).await;
    assert!(
        totals["config.genai_count"]["requests"].as_u64().unwrap_or(0) == 0,
        "countTokens was counted: {totals:#}"
    );

    // Google's 400 reaches the SDK as it came; it is the request's fault, so the account serves
    // the next request at once.
    let message = "mock: * GenerateContentRequest.generation_config.max_output_tokens: must be positive";
    mock.fail_next(1, 400, gemini_mock::invalid_argument(message));
    let out = run_sdk(cfg(&["genai_refused", "genai_generate"])).await;
    let refused = &out["genai_refused"]["refused"];
    assert_eq!(refused["code"], 400, "{out:#}");
    assert_eq!(refused["status"], "INVALID_ARGUMENT", "{out:#}");
    assert_eq!(refused["message"], message, "{out:#}");
    assert_eq!(out["genai_generate"]["text"], mock.text(), "{out:#}");

    // Google's 429 with a RetryInfo reaches the SDK as it came.
    mock.fail_next(1, 429, gemini_mock::resource_exhausted("30s"));
    let out = run_sdk(cfg(&["genai_refused"])).await;
    let refused = &out["genai_refused"]["refused"];
    assert_eq!(refused["code"], 429, "{out:#}");
    assert_eq!(refused["status"], "RESOURCE_EXHAUSTED", "{out:#}");
    let statuses: Vec<u16> = mock.answers().iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 200, 200, 400, 200, 429]);
}

#[tokio::test]
async fn openai_sdk_chat_and_a_tool_round_trip_reach_a_gemini_api_account() {
    python();
    let mock = GeminiMock::builder()
        .tool_call("read_file", json!({"file_path": "/tmp/x"}))
        .start()
        .await;
    let tool_result = format!("tool-result-{}", uuid::Uuid::new_v4().simple());
    let steps = ["chat", "chat_stream", "tool"];
    let keys: Vec<(String, String)> = steps.iter().map(|s| (s.to_string(), new_key())).collect();
    let key_refs: Vec<(&str, &str)> = keys.iter().map(|(n, k)| (n.as_str(), k.as_str())).collect();
    let relay = relay_on_gemini_api(&key_refs, &mock, "").await;

    let out = run_sdk(json!({
        "openai_base": format!("{}/openai/v1", relay.base()),
        "model": "gemini-2.5-flash",
        "keys": keys.iter().map(|(n, k)| (n.clone(), json!(k))).collect::<serde_json::Map<String, Value>>(),
        "steps": steps,
        "tool_result": tool_result,
    }))
    .await;
    assert_eq!(out["openai_version"], OPENAI_PY_VERSION);

    // The text without the thought, which is the reasoning; OpenAI's usage: every prompt token,
    // the cached ones apart, the thoughts inside the completion tokens.
    let u = mock.usage();
    for step in ["chat", "chat_stream"] {
        let c = &out[step];
        assert_eq!(c["content"], mock.text(), "{step}: {c:#}");
        assert_eq!(c["reasoning"], gemini_mock::THOUGHT, "{step}: {c:#}");
        assert_eq!(c["finish_reason"], "stop", "{step}: {c:#}");
        assert_eq!(c["model"], "gemini-2.5-flash", "{step}: {c:#}");
        let usage = &c["usage"];
        assert_eq!(usage["prompt_tokens"], u.prompt, "{step}: {usage}");
        assert_eq!(usage["completion_tokens"], u.candidates + u.thoughts, "{step}: {usage}");
        assert_eq!(usage["total_tokens"], u.total(), "{step}: {usage}");
        assert_eq!(
            usage["prompt_tokens_details"]["cached_tokens"], u.cached,
            "{step}: {usage}"
        );
        assert_eq!(
            usage["completion_tokens_details"]["reasoning_tokens"], u.thoughts,
            "{step}: {usage}"
        );
    }
    assert_eq!(out["chat"]["object"], "chat.completion");

    // Gemini API calls: the system message as the system instruction, the user's turn, the
    // sampling settings.
    let seen = mock.requests();
    assert_eq!(
        seen.iter().map(|r| r.target()).collect::<Vec<_>>(),
        [
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            "/v1beta/models/gemini-2.5-flash:generateContent",
        ]
    );
    assert_gemini_api_calls(&mock);
    for (_, key) in &keys {
        assert_key_stays_home(&mock, key);
    }
    for r in &seen[..2] {
        let b = &r.body;
        let system: String = b["systemInstruction"]["parts"]
            .as_array()
            .unwrap_or_else(|| panic!("no systemInstruction: {b}"))
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect();
        assert_eq!(system, "Be brief.", "{b}");
        assert_eq!(
            b["contents"],
            json!([{"role": "user", "parts": [{"text": "say hi"}]}]),
            "{b}"
        );
        assert_eq!(b["generationConfig"]["maxOutputTokens"], 100, "{b}");
        assert_eq!(b["generationConfig"]["temperature"], 0.5, "{b}");
    }

    // The tool call: the mock's call (its id, name and arguments) reaches the SDK, and the SDK's
    // result goes back as the function's response under the same id.
    let call = mock.answers()[2]
        .function_call
        .clone()
        .expect("the mock called the tool");
    let t = &out["tool"];
    assert_eq!(t["first"]["finish_reason"], "tool_calls", "{t:#}");
    let calls = t["first"]["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{t:#}");
    assert_eq!(calls[0]["id"], call["id"], "{t:#}");
    assert_eq!(calls[0]["name"], "read_file");
    let args: Value = serde_json::from_str(calls[0]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, call["args"]);
    assert_eq!(t["second"]["content"], mock.text(), "{t:#}");
    assert_eq!(t["second"]["finish_reason"], "stop", "{t:#}");
    assert_eq!(seen[2].function_names(), ["read_file"], "{}", seen[2].body);
    let contents = seen[3].contents();
    assert_eq!(contents.len(), 3, "{}", seen[3].body);
    let called = &contents[1]["parts"][0]["functionCall"];
    assert_eq!(contents[1]["role"], "model");
    assert_eq!(
        (&called["id"], &called["name"], &called["args"]),
        (&call["id"], &call["name"], &call["args"])
    );
    let responses = seen[3].function_responses();
    assert_eq!(contents[2]["role"], "user");
    assert_eq!(responses.len(), 1, "{}", seen[3].body);
    assert_eq!(responses[0]["id"], call["id"]);
    assert_eq!(responses[0]["name"], "read_file");
    assert!(
        responses[0]["response"].to_string().contains(&tool_result),
        "{}",
        responses[0]
    );

    let answers = successful_generations(&mock);
    assert_usage(&relay, "chat", &answers[..1]).await;
    assert_usage(&relay, "chat_stream", &answers[1..2]).await;
    assert_usage(&relay, "tool", &answers[2..4]).await;
}
