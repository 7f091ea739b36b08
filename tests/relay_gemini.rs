//! The Gemini dialects through the real binary: Gemini CLI's recorded requests in API-key mode and
//! in Code Assist mode, and google-genai's, against a `gemini-api` upstream on a socket. What the
//! upstream receives (model in the path, the account's key, Code Assist's envelope taken off),
//! what the client gets back (bytes as they came, or in the envelope), usage and cost, Google's
//! errors and how they bench accounts, the setup calls the relay answers, model lists and stream
//! keep-alives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use serde_json::{Value, json};
use support::scripted::{Reply, ScriptedUpstream};
use support::{ALICE, RelayProcess, client, eventually, fixture};

const UP_KEY: &str = "AIza-mock-upstream-key-0001";
const UP_KEY_2: &str = "AIza-mock-upstream-key-0002";

/// gemini-2.5-pro's prices in `conf/pricing.json` (nano-USD per token): input, cache read, output.
const PRO: [u64; 3] = [1_250, 125, 10_000];

/// The recorded Gemini answer: 24 prompt tokens of which 3 cached, 7 candidates.
const STREAM: &[u8] = include_bytes!("fixtures/responses/gemini-stream-alt-sse.sse");

fn gemini_yaml(name: &str, url: &str, key: &str, extra: &str) -> String {
    format!("  - {{ name: {name}, kind: gemini-api, base_url: \"{url}\", api_key: {key}{extra} }}\n")
}

/// A complete Gemini answer with usage.
fn answer_json(text: &str, prompt: u64, cached: u64, candidates: u64, thoughts: u64) -> Value {
    json!({
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {
            "promptTokenCount": prompt, "cachedContentTokenCount": cached,
            "candidatesTokenCount": candidates, "thoughtsTokenCount": thoughts,
            "totalTokenCount": prompt + candidates + thoughts
        },
        "modelVersion": "gemini-2.5-pro",
        "responseId": "resp-1"
    })
}

fn google_error(code: u16, status: &str, message: &str, retry: Option<&str>) -> Reply {
    let mut e = json!({"error": {"code": code, "message": message, "status": status}});
    if let Some(d) = retry {
        e["error"]["details"] = json!([
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": d}
        ]);
    }
    Reply {
        status: code,
        content_type: "application/json; charset=UTF-8",
        body: Bytes::from(e.to_string()),
    }
}

async fn post(relay: &RelayProcess, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, Vec<u8>) {
    let mut req = client()
        .post(format!("{}{path}", relay.base()))
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.body(body.to_string()).send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, r.bytes().await.unwrap().to_vec())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(b)))
}

/// The recorded client request: (path with query, headers to replay, body).
fn recorded(name: &str, index: usize) -> (String, Vec<(String, String)>, String) {
    let (_, path, query, headers, body) = fixture(name).swap_remove(index);
    let q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let path = if q.is_empty() {
        path
    } else {
        format!("{path}?{}", q.join("&"))
    };
    let headers = headers
        .into_iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "host" | "content-length" | "connection" | "x-goog-api-key" | "authorization" | "accept-encoding"
            )
        })
        .collect();
    (path, headers, body.unwrap())
}

async fn replay(relay: &RelayProcess, name: &str, index: usize, auth: (&str, &str)) -> (u16, String, Vec<u8>) {
    let (path, headers, body) = recorded(name, index);
    let mut h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    h.push(auth);
    post(relay, &format!("/gemini{path}"), &h, &body).await
}

/// The usage totals of one subject, once `requests` requests are counted.
async fn totals(relay: &RelayProcess, dimension: &str, id: &str, requests: u64) -> Value {
    let token = relay.admin_token().await;
    eventually(|| async {
        let v: Value = client()
            .get(format!(
                "{}/admin/api/usage?dimension={dimension}&id={id}&granularity=minute",
                relay.admin()
            ))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["totals"]["requests"] == requests).then(|| v["totals"].clone())
    })
    .await
}

fn assert_usage(t: &Value, input: u64, cache_read: u64, output: u64, cost_nanos: u64) {
    assert_eq!(t["input_tokens"], input, "input: {t}");
    assert_eq!(t["cache_read_tokens"], cache_read, "cache read: {t}");
    assert_eq!(t["output_tokens"], output, "output: {t}");
    assert_eq!(t["cost_nanos"], cost_nanos, "cost: {t}");
    assert_eq!(t["unpriced_requests"], 0, "{t}");
}

fn assert_no_relay_key(s: &support::mock::Seen) {
    for (k, v) in s.headers.iter() {
        assert!(!v.to_str().unwrap_or("").contains("cr_"), "relay key leaked in {k}");
    }
    assert!(!s.path_and_query.contains("key="), "{}", s.path_and_query);
}

#[tokio::test]
async fn gemini_cli_api_key_mode_passes_through_with_the_model_in_the_path() {
    let up = ScriptedUpstream::start(vec![
        Reply::json(&answer_json("{\"complexity_score\": 10}", 100, 0, 5, 20)),
        Reply::sse(STREAM),
    ])
    .await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}",
        gemini_yaml(
            "g1",
            &up.url(),
            UP_KEY,
            ", model_map: { gemini-3.8-flash: gemini-2.5-pro }"
        )
    ))
    .await;

    // The router call (not streamed) and the main call (streamed), as Gemini CLI sent them.
    let (status, ct, body) = replay(&relay, "gemini", 0, ("x-goog-api-key", ALICE)).await;
    assert_eq!(status, 200, "{}", text(&body));
    assert!(ct.starts_with("application/json"), "{ct}");
    assert_eq!(json_of(&body), answer_json("{\"complexity_score\": 10}", 100, 0, 5, 20));
    let (status, ct, body) = replay(&relay, "gemini", 1, ("x-goog-api-key", ALICE)).await;
    assert_eq!(status, 200, "{}", text(&body));
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    assert_eq!(body, STREAM, "the stream passes byte for byte");

    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].path_and_query,
        "/v1beta/models/gemini-3.5-flash-lite:generateContent"
    );
    assert_eq!(
        seen[1].path_and_query, "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
        "the model map changes the path"
    );
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.header("x-goog-api-key").as_deref(), Some(UP_KEY));
        assert_no_relay_key(s);
        // The body passes byte for byte: the model is not in it.
        assert_eq!(text(&s.body), recorded("gemini", i).2);
        assert!(
            s.header("user-agent").unwrap().starts_with("GeminiCLI"),
            "client headers pass"
        );
    }

    // Thoughts are output tokens. The streamed request is billed by the model the account served.
    let t = totals(&relay, "key", "config.alice", 2).await;
    assert_eq!(t["output_tokens"], 25 + 7, "{t}");
    assert_eq!(t["input_tokens"], 100 + 21, "{t}");
    assert_eq!(t["cache_read_tokens"], 3, "{t}");
    let models = totals(&relay, "model", "gemini-2.5-pro", 1).await;
    assert_usage(&models, 21, 3, 7, 21 * PRO[0] + 3 * PRO[1] + 7 * PRO[2]);
}

#[tokio::test]
async fn google_genai_keys_in_any_place_and_api_versions_are_kept() {
    let count = Reply::json(&json!({"totalTokens": 3}));
    let up = ScriptedUpstream::start(vec![
        Reply::sse(STREAM),
        Reply::json(&answer_json("hi", 4, 0, 2, 0)),
        count.clone(),
        Reply::json(&answer_json("hi", 4, 0, 2, 0)),
        Reply::json(&answer_json("hi", 4, 0, 2, 0)),
    ])
    .await;
    let relay = RelayProcess::start(&format!("accounts:\n{}", gemini_yaml("g1", &up.url(), UP_KEY, ""))).await;
    for i in 0..3 {
        let (status, _, body) = replay(&relay, "sdk-genai", i, ("x-goog-api-key", ALICE)).await;
        assert_eq!(status, 200, "{i}: {}", text(&body));
        if i == 2 {
            assert_eq!(json_of(&body), json!({"totalTokens": 3}));
        }
    }
    // The key as `?key=` and as a bearer token, at the root mount point.
    let body = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;
    let (status, _, got) = post(
        &relay,
        &format!("/v1beta/models/gemini-2.5-flash:generateContent?key={ALICE}"),
        &[],
        body,
    )
    .await;
    assert_eq!(status, 200, "{}", text(&got));
    let auth = format!("Bearer {ALICE}");
    let (status, _, got) = post(
        &relay,
        "/v1/models/gemini-2.5-flash:generateContent",
        &[("authorization", &auth)],
        body,
    )
    .await;
    assert_eq!(status, 200, "{}", text(&got));

    let seen = up.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path_and_query.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            "/v1/models/gemini-2.5-flash:generateContent",
            "/v1/models/gemini-2.5-flash:countTokens",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "/v1/models/gemini-2.5-flash:generateContent",
        ]
    );
    for s in &seen {
        assert_eq!(s.header("x-goog-api-key").as_deref(), Some(UP_KEY));
        assert_no_relay_key(s);
    }
    // countTokens is free; the four others are billed.
    let t = totals(&relay, "key", "config.alice", 4).await;
    assert_eq!(t["output_tokens"], 7 + 2 * 3, "{t}");
}

#[tokio::test]
async fn code_assist_mode_is_served_by_a_gemini_api_account() {
    let wrapped_answer = answer_json("{\"complexity_score\": 3}", 50, 0, 4, 6);
    let up = ScriptedUpstream::start(vec![Reply::json(&wrapped_answer), Reply::sse(STREAM)]).await;
    let relay = RelayProcess::start(&format!("accounts:\n{}", gemini_yaml("g1", &up.url(), UP_KEY, ""))).await;
    let bearer = format!("Bearer {ALICE}");
    let auth = ("authorization", bearer.as_str());

    // The setup calls, answered by the relay: a project, a tier, no quota buckets.
    let (status, _, body) = replay(&relay, "gemini-gca", 0, auth).await;
    assert_eq!(status, 200, "{}", text(&body));
    let load = json_of(&body);
    assert!(load["cloudaicompanionProject"].is_string(), "{load}");
    assert!(load["currentTier"]["id"].is_string(), "{load}");
    for i in [1, 2] {
        let (status, _, body) = replay(&relay, "gemini-gca", i, auth).await;
        assert_eq!(status, 200, "{i}: {}", text(&body));
        json_of(&body);
    }
    // Without the key, refused in Google's shape.
    let (status, _, body) = post(&relay, "/gemini/v1internal:loadCodeAssist", &[], "{}").await;
    assert_eq!(status, 401);
    assert_eq!(json_of(&body)["error"]["status"], "UNAUTHENTICATED", "{}", text(&body));

    // generateContent and streamGenerateContent: unwrapped for the Gemini API, answers wrapped.
    let (status, _, body) = replay(&relay, "gemini-gca", 5, auth).await;
    assert_eq!(status, 200, "{}", text(&body));
    assert_eq!(json_of(&body), json!({"response": wrapped_answer}));
    let (status, ct, body) = replay(&relay, "gemini-gca", 7, auth).await;
    assert_eq!(status, 200, "{}", text(&body));
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let events: Vec<Value> = text(&body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| json_of(d.as_bytes()))
        .collect();
    let upstream: Vec<Value> = text(STREAM)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| json_of(d.as_bytes()))
        .collect();
    assert_eq!(events.len(), 4);
    for (got, want) in events.iter().zip(&upstream) {
        assert_eq!(got, &json!({"response": want}));
    }

    let seen = up.seen();
    assert_eq!(seen.len(), 2, "setup calls never reach an upstream");
    assert_eq!(
        seen[0].path_and_query,
        "/v1beta/models/gemini-3.1-flash-lite:generateContent"
    );
    assert_eq!(
        seen[1].path_and_query,
        "/v1beta/models/gemini-3-flash:streamGenerateContent?alt=sse"
    );
    for (s, i) in seen.iter().zip([5, 7]) {
        let sent = json_of(&s.body);
        let mut want = json_of(recorded("gemini-gca", i).2.as_bytes())["request"].clone();
        want.as_object_mut().unwrap().remove("session_id");
        assert_eq!(sent, want, "the Gemini API gets the inner request");
        assert_eq!(s.header("x-goog-api-key").as_deref(), Some(UP_KEY));
        assert_no_relay_key(s);
    }
    let t = totals(&relay, "key", "config.alice", 2).await;
    assert_eq!(t["input_tokens"], 50 + 21, "{t}");
    assert_eq!(t["output_tokens"], 10 + 7, "{t}");
}

#[tokio::test]
async fn google_errors_fail_over_bench_accounts_for_their_retry_delay_and_reach_clients_in_googles_shape() {
    let a = ScriptedUpstream::start(vec![
        google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded", Some("30s")),
        google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.", None),
    ])
    .await;
    let b = ScriptedUpstream::start(vec![
        Reply::json(&answer_json("from b", 4, 0, 2, 0)),
        google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.", None),
        google_error(503, "UNAVAILABLE", "The model is overloaded.", None),
    ])
    .await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}{}",
        gemini_yaml("a", &a.url(), UP_KEY, ", priority: 1"),
        gemini_yaml("b", &b.url(), UP_KEY_2, ", priority: 2")
    ))
    .await;
    let body = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;
    let path = "/gemini/v1beta/models/gemini-2.5-pro:generateContent";
    let key = [("x-goog-api-key", ALICE)];

    // a's 429 with a RetryInfo fails over to b and parks a for 30 s.
    let started = support::now_ms();
    let (status, _, got) = post(&relay, path, &key, body).await;
    assert_eq!(status, 200, "{}", text(&got));
    assert_eq!(json_of(&got)["candidates"][0]["content"]["parts"][0]["text"], "from b");
    let token = relay.admin_token().await;
    let view: Value = client()
        .get(format!("{}/admin/api/accounts/config.a", relay.admin()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["health"]["state"], "rate_limited", "{view}");
    support::assert_near(
        &view["health"]["until"],
        started + 30_000,
        3_000,
        "a parked for the retry delay",
    );

    // b's 400 is the request's problem: the client gets it as it came, b is not benched.
    let (status, _, got) = post(&relay, path, &key, body).await;
    assert_eq!(status, 400);
    assert_eq!(json_of(&got)["error"]["status"], "INVALID_ARGUMENT", "{}", text(&got));
    // b's 503 with a parked: nothing left; the client gets Google's answer.
    let (status, _, got) = post(&relay, path, &key, body).await;
    assert_eq!(status, 503, "{}", text(&got));
    assert_eq!(json_of(&got)["error"]["status"], "UNAVAILABLE");

    // The relay's own refusals are in Google's shape too.
    let (status, _, got) = post(&relay, path, &[("x-goog-api-key", "cr_wrong")], body).await;
    assert_eq!(status, 401);
    assert_eq!(json_of(&got)["error"]["code"], 401, "{}", text(&got));
    let (status, _, got) = post(&relay, path, &key, "{not json").await;
    assert_eq!(status, 400);
    assert_eq!(json_of(&got)["error"]["status"], "INVALID_ARGUMENT", "{}", text(&got));
    let (status, _, got) = post(&relay, "/gemini/v1beta/models/gemini-2.5-pro:embedContent", &key, body).await;
    assert_eq!(status, 404);
    assert_eq!(json_of(&got)["error"]["status"], "NOT_FOUND", "{}", text(&got));
    assert_eq!(a.remaining(), 1, "a stayed parked");
}

#[tokio::test]
async fn model_lists_in_geminis_shape() {
    let up = ScriptedUpstream::start(vec![]).await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}",
        gemini_yaml(
            "g1",
            &up.url(),
            UP_KEY,
            ", models: [gemini-2.5-pro, gemini-2.5-flash], model_map: { gemini-fast: gemini-2.5-flash }"
        )
    ))
    .await;
    let get = |path: &'static str| {
        let url = format!("{}{path}", relay.base());
        async move {
            let r = client().get(url).header("x-goog-api-key", ALICE).send().await.unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
        }
    };
    let (status, body) = get("/gemini/v1beta/models").await;
    assert_eq!(status, 200);
    let names: Vec<String> = json_of(&body)["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["models/gemini-2.5-flash", "models/gemini-2.5-pro", "models/gemini-fast"]
    );
    let (status, body) = get("/gemini/v1/models/gemini-2.5-pro").await;
    assert_eq!(status, 200, "{}", text(&body));
    let m = json_of(&body);
    assert_eq!(m["name"], "models/gemini-2.5-pro");
    assert!(m["supportedGenerationMethods"].as_array().unwrap().len() >= 2);
    let (status, body) = get("/gemini/v1beta/models/gpt-5").await;
    assert_eq!(status, 404, "{}", text(&body));
    assert_eq!(json_of(&body)["error"]["status"], "NOT_FOUND");
}

/// An upstream that is silent for `pause` before it streams the recorded answer.
async fn slow_upstream(pause: Duration) -> support::serve::Served {
    let router = axum::Router::new().fallback(move || async move {
        let stream = futures_util::stream::unfold(0u8, move |step| async move {
            match step {
                0 => {
                    tokio::time::sleep(pause).await;
                    Some((Ok::<_, std::io::Error>(Bytes::from_static(STREAM)), 1))
                }
                _ => None,
            }
        });
        axum::response::Response::builder()
            .status(200)
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(stream))
            .unwrap()
    });
    support::serve::serve(router).await
}

#[tokio::test]
async fn silent_streams_are_kept_alive_with_blank_lines_between_events() {
    let up = slow_upstream(Duration::from_millis(1_300)).await;
    let url = format!("http://{}", up.addr);
    let relay = RelayProcess::start(&format!(
        "timeouts: {{ stream_keepalive: 300ms }}\naccounts:\n{}",
        gemini_yaml("g1", &url, UP_KEY, "")
    ))
    .await;
    let started = Instant::now();
    let r = client()
        .post(format!(
            "{}/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            relay.base()
        ))
        .header("x-goog-api-key", ALICE)
        .body(r#"{"contents":[{"role":"user","parts":[{"text":"think"}]}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut r = r;
    let first = r.chunk().await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(1_000),
        "a keep-alive before the answer"
    );
    assert_eq!(&first[..], b"\n");
    let mut rest = first.to_vec();
    while let Some(c) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    let blanks = rest.iter().take_while(|b| **b == b'\n').count();
    assert!((3..=5).contains(&blanks), "{blanks} keep-alives in 1.3 s at 300 ms");
    assert_eq!(&rest[blanks..], STREAM, "then the answer as it came");
}

#[tokio::test]
async fn code_assist_prompts_stick_to_their_account_and_long_prompts_pay_the_long_context_price() {
    let replies = |n| {
        (0..n)
            .map(|_| Reply::json(&answer_json("ok", 250_000, 10_000, 100, 50)))
            .collect()
    };
    let a = ScriptedUpstream::start(replies(6)).await;
    let b = ScriptedUpstream::start(replies(6)).await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}{}",
        gemini_yaml("a", &a.url(), UP_KEY, ""),
        gemini_yaml("b", &b.url(), UP_KEY_2, "")
    ))
    .await;
    let bearer = format!("Bearer {ALICE}");
    let send = |prompt_id: &'static str| {
        let relay = &relay;
        let bearer = bearer.clone();
        async move {
            let body = json!({
                "model": "gemini-2.5-pro", "project": "mine", "user_prompt_id": prompt_id,
                "request": {"contents": [{"role": "user", "parts": [{"text": "long"}]}]}
            });
            let (status, _, got) = post(
                relay,
                "/gemini/v1internal:generateContent",
                &[("authorization", &bearer)],
                &body.to_string(),
            )
            .await;
            assert_eq!(status, 200, "{}", text(&got));
        }
    };
    for _ in 0..3 {
        send("prompt-1").await;
    }
    let (first, other) = if a.seen().len() == 3 { (&a, &b) } else { (&b, &a) };
    assert_eq!(first.seen().len(), 3, "one prompt, one account");
    assert_eq!(other.seen().len(), 0);
    send("prompt-2").await;
    assert_eq!(other.seen().len(), 1, "another prompt may go to the other account");

    // 250k prompt tokens (10k cached) are above the 200k tier: every kind at its long price.
    let t = totals(&relay, "key", "config.alice", 4).await;
    let one = 240_000 * 2_500 + 10_000 * 250 + 150 * 15_000;
    assert_usage(&t, 4 * 240_000, 4 * 10_000, 4 * 150, 4 * one);
}

#[tokio::test]
async fn keys_without_the_gemini_permission_are_refused_in_googles_shape() {
    let up = ScriptedUpstream::start(vec![]).await;
    let relay = RelayProcess::start(&format!(
        "api_keys:\n  - {{ name: alice, key: {ALICE}, permissions: [claude] }}\naccounts:\n{}",
        gemini_yaml("g1", &up.url(), UP_KEY, "")
    ))
    .await;
    let (status, _, got) = post(
        &relay,
        "/gemini/v1beta/models/gemini-2.5-pro:generateContent",
        &[("x-goog-api-key", ALICE)],
        r#"{"contents":[]}"#,
    )
    .await;
    assert_eq!(status, 403, "{}", text(&got));
    assert_eq!(json_of(&got)["error"]["status"], "PERMISSION_DENIED", "{}", text(&got));
    let bearer = format!("Bearer {ALICE}");
    let (status, _, got) = post(
        &relay,
        "/gemini/v1internal:loadCodeAssist",
        &[("authorization", &bearer)],
        "{}",
    )
    .await;
    assert_eq!(status, 403, "{}", text(&got));
    assert!(up.seen().is_empty());
}

const TOOL_STREAM: &[u8] = include_bytes!("fixtures/responses/gemini-stream-function-call.sse");

/// The `data:` payloads of a Chat Completions stream, `[DONE]` last.
fn chat_events(body: &[u8]) -> Vec<String> {
    text(body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn chat_completions_reach_gemini_models_converted_both_ways() {
    let up = ScriptedUpstream::start(vec![
        Reply::sse(STREAM),
        Reply::json(&answer_json("plain answer", 40, 8, 6, 4)),
        Reply::sse(TOOL_STREAM),
        google_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.", None),
    ])
    .await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}",
        gemini_yaml("g1", &up.url(), UP_KEY, ", model_map: { my-gemini: gemini-2.5-pro }")
    ))
    .await;
    let bearer = format!("Bearer {ALICE}");
    let auth = [("authorization", bearer.as_str())];

    // Streamed, with usage asked for: the chunks carry the client's model and the usage.
    let body = json!({"model": "my-gemini", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]});
    let (status, ct, got) = post(&relay, "/openai/v1/chat/completions", &auth, &body.to_string()).await;
    assert_eq!(status, 200, "{}", text(&got));
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let events = chat_events(&got);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| json_of(e.as_bytes()))
        .collect();
    let said: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(said, "Hello from mock upstream!");
    assert!(chunks.iter().all(|c| c["model"] == "my-gemini"), "{chunks:?}");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["prompt_tokens"], 24, "{usage}");
    assert_eq!(usage["completion_tokens"], 7);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 3);

    // Not streamed, through the Gemini-only mount point.
    let body = json!({"model": "gemini-2.5-pro", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, got) = post(&relay, "/openai/gemini/v1/chat/completions", &auth, &body.to_string()).await;
    assert_eq!(status, 200, "{}", text(&got));
    let v = json_of(&got);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "plain answer");
    assert_eq!(
        v["usage"]["completion_tokens"], 10,
        "thoughts are completion tokens: {v}"
    );
    assert_eq!(v["usage"]["completion_tokens_details"]["reasoning_tokens"], 4);

    // A tool call.
    let body = json!({"model": "gemini-2.5-pro", "stream": true,
        "messages": [{"role": "user", "content": "list the files"}],
        "tools": [{"type": "function", "function": {"name": "exec_command", "description": "run",
            "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}}]});
    let (status, _, got) = post(&relay, "/v1/chat/completions", &auth, &body.to_string()).await;
    assert_eq!(status, 200, "{}", text(&got));
    let events = chat_events(&got);
    let calls: Vec<Value> = events
        .iter()
        .filter(|e| e.starts_with('{'))
        .map(|e| json_of(e.as_bytes()))
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1, "{events:?}");
    assert_eq!(calls[0]["function"]["name"], "exec_command");
    let args = json_of(calls[0]["function"]["arguments"].as_str().unwrap().as_bytes());
    assert_eq!(args["cmd"], "ls -la");
    assert!(
        events.iter().any(|e| e.contains("\"finish_reason\":\"tool_calls\"")),
        "{events:?}"
    );

    // Google's refusal reaches the Chat client in OpenAI's shape.
    let (status, _, got) = post(&relay, "/openai/v1/chat/completions", &auth, &body.to_string()).await;
    assert_eq!(status, 400, "{}", text(&got));
    let v = json_of(&got);
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("invalid argument"),
        "{v}"
    );

    // A Claude model on the Gemini-only mount point is not served there.
    let body = json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, got) = post(&relay, "/openai/gemini/v1/chat/completions", &auth, &body.to_string()).await;
    assert_eq!(status, 404, "{}", text(&got));

    let seen = up.seen();
    assert_eq!(
        seen[0].path_and_query,
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    );
    assert_eq!(seen[1].path_and_query, "/v1beta/models/gemini-2.5-pro:generateContent");
    let sent = json_of(&seen[0].body);
    assert_eq!(sent["systemInstruction"]["parts"][0]["text"], "be brief", "{sent}");
    assert_eq!(sent["contents"][0]["parts"][0]["text"], "hi");
    assert!(sent.get("model").is_none() && sent.get("messages").is_none(), "{sent}");
    assert_eq!(json_of(&seen[1].body)["generationConfig"]["maxOutputTokens"], 100);
    let tools = &json_of(&seen[2].body)["tools"][0]["functionDeclarations"][0];
    assert_eq!(tools["name"], "exec_command", "{tools}");
    for s in &seen {
        assert_eq!(s.header("x-goog-api-key").as_deref(), Some(UP_KEY));
        assert_no_relay_key(s);
    }

    // Billed as Gemini: 21+3+7 (stream), 32+8+10 (JSON), 57+0+39 (tool stream), the 400 free.
    let t = totals(&relay, "model", "gemini-2.5-pro", 4).await;
    assert_usage(
        &t,
        21 + 32 + 57,
        3 + 8,
        7 + 10 + 39,
        (21 + 32 + 57) * PRO[0] + 11 * PRO[1] + (7 + 10 + 39) * PRO[2],
    );
}

#[tokio::test]
async fn code_assist_count_tokens_reaches_a_gemini_api_account_unwrapped_and_is_free() {
    let up = ScriptedUpstream::start(vec![Reply::json(&json!({"totalTokens": 12}))]).await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}",
        gemini_yaml(
            "g1",
            &up.url(),
            UP_KEY,
            ", model_map: { gemini-fast: gemini-2.5-flash }"
        )
    ))
    .await;
    // As Gemini CLI's Code Assist client writes it: the model inside the request.
    let body = json!({"request": {"model": "models/gemini-fast", "contents": [{"role": "user", "parts": [{"text": "count me"}]}]}});
    let bearer = format!("Bearer {ALICE}");
    let (status, _, got) = post(
        &relay,
        "/gemini/v1internal:countTokens",
        &[("authorization", &bearer)],
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{}", text(&got));
    assert_eq!(json_of(&got), json!({"totalTokens": 12}));
    let seen = up.seen();
    assert_eq!(seen[0].path_and_query, "/v1beta/models/gemini-2.5-flash:countTokens");
    assert_eq!(
        json_of(&seen[0].body),
        json!({"contents": [{"role": "user", "parts": [{"text": "count me"}]}]}),
        "the Gemini API gets the contents, without the model the path names"
    );
    // Without a model it is the client's problem, said in Google's shape.
    let (status, _, got) = post(
        &relay,
        "/gemini/v1internal:countTokens",
        &[("authorization", &bearer)],
        r#"{"request":{"contents":[]}}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(json_of(&got)["error"]["status"], "INVALID_ARGUMENT", "{}", text(&got));
    assert_eq!(up.seen().len(), 1);
}
