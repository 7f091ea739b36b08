use super::*;
use crate::wire::eventstream::tests::{BEDROCK_STREAM, event_frame, exception_frame, frame};

/// What the recorded Bedrock stream must become: its nine events as Anthropic SSE.
const EXPECTED: &[u8] =
    include_bytes!("../../tests/fixtures/responses/bedrock-invoke-with-response-stream.expected.sse");

/// The model id Bedrock names in the recorded `message_start`.
const BEDROCK_MODEL: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";

/// The recorded usage: input 21, cache write 5 (all 5m), cache read 3, output 7.
const GOLDEN_USAGE: TokenUsage = TokenUsage {
    input: 21,
    output: 7,
    cache_read: 3,
    cache_write_5m: 5,
    cache_write_1h: 0,
    reasoning: 0,
    billing: crate::usage::Billing::NONE,
};

/// Everything a run tells, for comparing runs.
#[derive(Debug, PartialEq)]
struct Run {
    /// What each push returned, then what finish returned.
    pushed: Vec<Bytes>,
    finished: Bytes,
    usage: TokenUsage,
    exception: Option<(String, String)>,
    stop: bool,
}

impl Run {
    /// All the bytes the client got.
    fn sse(&self) -> Vec<u8> {
        let mut all: Vec<u8> = self.pushed.iter().flat_map(|b| b.iter().copied()).collect();
        all.extend_from_slice(&self.finished);
        all
    }

    fn text(&self) -> String {
        String::from_utf8(self.sse()).unwrap()
    }
}

fn run_with(parts: &[&[u8]], model: Option<&str>) -> Run {
    let mut t = BedrockToAnthropicSse::new(model);
    let pushed = parts.iter().map(|p| t.push(p)).collect();
    let finished = t.finish();
    Run {
        pushed,
        finished,
        usage: t.usage(),
        exception: t.exception().map(|(k, m)| (k.to_owned(), m.to_owned())),
        stop: t.saw_message_stop(),
    }
}

fn run(parts: &[&[u8]]) -> Run {
    run_with(parts, None)
}

/// The frames of an event-stream, by their declared lengths.
fn frames_of(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let (f, rest) = bytes.split_at(len);
        out.push(f);
        bytes = rest;
    }
    out
}

/// A Bedrock `chunk` frame wrapping the Anthropic event `json`.
fn chunk_frame(json: &str) -> Vec<u8> {
    let payload = serde_json::json!({ "bytes": BASE64.encode(json), "p": "abcdefghij" }).to_string();
    event_frame(payload.as_bytes())
}

/// The SSE event written for `json`.
fn sse_event(kind: &str, json: &str) -> String {
    format!("event: {kind}\ndata: {json}\n\n")
}

/// The Anthropic error event written for an error of `kind`.
fn error_event(kind: &str, message: &str) -> String {
    format!(
        "event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"{kind}\",\"message\":{}}}}}\n\n",
        serde_json::to_string(message).unwrap()
    )
}

#[test]
fn the_recorded_stream_becomes_the_golden_sse() {
    let r = run(&[BEDROCK_STREAM]);
    assert_eq!(r.text(), String::from_utf8(EXPECTED.to_vec()).unwrap());
    // Events that arrive together leave together.
    assert_eq!(r.pushed, vec![Bytes::from_static(EXPECTED)]);
    assert!(r.finished.is_empty());
    assert_eq!(r.usage, GOLDEN_USAGE);
    assert_eq!(r.exception, None);
    assert!(r.stop);
}

#[test]
fn the_golden_sse_is_what_the_usage_reader_expects() {
    let mut p = SseUsageParser::new();
    p.feed(EXPECTED);
    assert_eq!(p.usage(), GOLDEN_USAGE);
    assert_eq!(p.model(), Some(BEDROCK_MODEL));
    assert!(p.saw_message_stop());
    let events: Vec<&str> = std::str::from_utf8(EXPECTED)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(
        events,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
}

#[test]
fn every_split_point_and_bytewise_give_the_golden_sse() {
    let whole = run(&[BEDROCK_STREAM]);
    for at in 0..=BEDROCK_STREAM.len() {
        let split = run(&[&BEDROCK_STREAM[..at], &BEDROCK_STREAM[at..]]);
        assert_eq!(split.sse(), EXPECTED, "split at {at}");
        assert_eq!(split.usage, whole.usage, "split at {at}");
        assert!(split.stop && split.exception.is_none(), "split at {at}");
    }
    let bytewise: Vec<&[u8]> = BEDROCK_STREAM.chunks(1).collect();
    let r = run(&bytewise);
    assert_eq!(r.sse(), EXPECTED);
    assert_eq!(r.usage, GOLDEN_USAGE);
    // Each event leaves with the byte that completes its frame, whole.
    let nonempty: Vec<&Bytes> = r.pushed.iter().filter(|b| !b.is_empty()).collect();
    assert_eq!(nonempty.len(), 9);
    assert!(
        nonempty
            .iter()
            .all(|b| b.starts_with(b"event: ") && b.ends_with(b"\n\n"))
    );
}

#[test]
fn the_client_model_replaces_only_message_start_model() {
    let r = run_with(&[BEDROCK_STREAM], Some("claude-sonnet-4-5"));
    let expected = String::from_utf8(EXPECTED.to_vec()).unwrap().replacen(
        &format!("\"model\":\"{BEDROCK_MODEL}\""),
        "\"model\":\"claude-sonnet-4-5\"",
        1,
    );
    assert_ne!(expected.as_bytes(), EXPECTED);
    assert_eq!(r.text(), expected);
    assert_eq!(r.usage, GOLDEN_USAGE);
    // A name that needs escaping is written as a JSON string.
    let r = run_with(&[BEDROCK_STREAM], Some("a\"b"));
    assert!(r.text().contains(r#""model":"a\"b","content""#), "{}", r.text());
}

#[test]
fn message_start_without_a_model_is_left_alone() {
    let json = r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":4}}}"#;
    let r = run_with(&[&chunk_frame(json)], Some("claude"));
    assert!(r.text().starts_with(&sse_event("message_start", json)));
}

#[test]
fn invocation_metrics_stand_in_for_missing_usage() {
    let mut bytes = chunk_frame(r#"{"type":"message_start","message":{"model":"m"}}"#);
    bytes.extend(chunk_frame(
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"}}"#,
    ));
    bytes.extend(chunk_frame(
        r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":11,"outputTokenCount":4,"cacheReadInputTokenCount":2,"cacheWriteInputTokenCount":6}}"#,
    ));
    let r = run(&[&bytes]);
    assert_eq!(
        r.usage,
        TokenUsage {
            input: 11,
            output: 4,
            cache_read: 2,
            cache_write_5m: 6,
            cache_write_1h: 0,
            reasoning: 0,
            billing: crate::usage::Billing::NONE,
        }
    );
    assert!(r.stop);
    assert!(r.finished.is_empty());
}

#[test]
fn events_usage_wins_over_invocation_metrics() {
    let mut bytes = chunk_frame(r#"{"type":"message_start","message":{"usage":{"input_tokens":5,"output_tokens":1}}}"#);
    bytes.extend(chunk_frame(
        r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":999,"outputTokenCount":999}}"#,
    ));
    let r = run(&[&bytes]);
    assert_eq!(
        r.usage,
        TokenUsage {
            input: 5,
            output: 1,
            ..TokenUsage::default()
        }
    );
}

#[test]
fn an_exception_after_message_start_becomes_an_error_event() {
    let frames = frames_of(BEDROCK_STREAM);
    let mut bytes = frames[0].to_vec();
    bytes.extend(exception_frame("throttlingException", "Too many tokens, please wait."));
    // Whatever follows is ignored.
    for f in &frames[1..] {
        bytes.extend_from_slice(f);
    }
    let start = String::from_utf8(EXPECTED.to_vec()).unwrap();
    let start = &start[..start.find("event: content_block_start").unwrap()];
    let expected = format!(
        "{start}{}",
        error_event("rate_limit_error", "Too many tokens, please wait.")
    );
    for at in 0..=bytes.len() {
        let r = run(&[&bytes[..at], &bytes[at..]]);
        assert_eq!(r.text(), expected, "split at {at}");
        assert_eq!(
            r.exception,
            Some((
                "throttlingException".to_owned(),
                "Too many tokens, please wait.".to_owned()
            ))
        );
        assert!(!r.stop);
        assert!(r.finished.is_empty());
        // message_start's usage was read.
        assert_eq!(r.usage.input, 21);
        assert_eq!(r.usage.output, 1);
    }
}

#[test]
fn nothing_is_emitted_after_an_exception() {
    let mut t = BedrockToAnthropicSse::new(None);
    let out = t.push(&exception_frame("serviceUnavailableException", "busy"));
    assert_eq!(
        String::from_utf8(out.to_vec()).unwrap(),
        error_event("overloaded_error", "busy")
    );
    assert!(t.push(BEDROCK_STREAM).is_empty());
    assert!(t.finish().is_empty());
    assert!(t.finish().is_empty());
    assert_eq!(t.exception(), Some(("serviceUnavailableException", "busy")));
}

#[test]
fn an_error_frame_becomes_an_api_error() {
    let bytes = frame(
        &[
            (":message-type", "error"),
            (":error-code", "InternalFailure"),
            (":error-message", "something broke"),
        ],
        b"",
    );
    let r = run(&[&bytes]);
    assert_eq!(r.text(), error_event("api_error", "something broke"));
    assert_eq!(
        r.exception,
        Some(("InternalFailure".to_owned(), "something broke".to_owned()))
    );
}

#[test]
fn exception_types_map_to_anthropic_error_types() {
    for (bedrock, anthropic) in [
        ("throttlingException", "rate_limit_error"),
        ("ThrottlingException", "rate_limit_error"),
        (
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            "rate_limit_error",
        ),
        ("serviceUnavailableException", "overloaded_error"),
        ("validationException", "invalid_request_error"),
        ("modelTimeoutException", "timeout_error"),
        ("accessDeniedException", "permission_error"),
        ("resourceNotFoundException", "not_found_error"),
        ("internalServerException", "api_error"),
        ("modelStreamErrorException", "api_error"),
        ("somethingNewException", "api_error"),
        ("", "api_error"),
    ] {
        assert_eq!(anthropic_error_type(bedrock), anthropic, "{bedrock}");
    }
}

#[test]
fn exception_messages() {
    assert_eq!(exception_message(br#"{"message":"m"}"#, "x"), "m");
    assert_eq!(exception_message(br#"{"Message":"M"}"#, "x"), "M");
    assert_eq!(exception_message(b" plain text ", "x"), "plain text");
    assert_eq!(exception_message(b"", "throttlingException"), "throttlingException");
}

#[test]
fn a_stream_cut_inside_a_frame_ends_with_an_error_event() {
    let cut = &BEDROCK_STREAM[..BEDROCK_STREAM.len() - 10];
    let r = run(&[cut]);
    let expected = String::from_utf8(EXPECTED.to_vec()).unwrap();
    let before_stop = &expected[..expected.find("event: message_stop").unwrap()];
    assert_eq!(String::from_utf8(r.pushed.concat()).unwrap(), before_stop);
    assert_eq!(
        String::from_utf8(r.finished.to_vec()).unwrap(),
        error_event("api_error", "Upstream stream ended inside an event-stream frame")
    );
    assert!(!r.stop);
    assert_eq!(r.exception, None);
    // The last message_delta's usage was read.
    assert_eq!(r.usage, GOLDEN_USAGE);
}

#[test]
fn a_stream_cut_between_frames_before_message_stop_ends_with_an_error_event() {
    let frames = frames_of(BEDROCK_STREAM);
    let cut: Vec<u8> = frames[..frames.len() - 1].concat();
    let r = run(&[&cut]);
    assert_eq!(
        String::from_utf8(r.finished.to_vec()).unwrap(),
        error_event("api_error", "Upstream stream ended before message_stop")
    );
    assert!(!r.stop);
    // An empty answer too.
    let r = run(&[]);
    assert_eq!(
        r.text(),
        error_event("api_error", "Upstream stream ended before message_stop")
    );
}

#[test]
fn a_corrupted_byte_ends_with_an_api_error() {
    let frames = frames_of(BEDROCK_STREAM);
    let two = frames[0].len() + frames[1].len();
    let mut bytes = BEDROCK_STREAM.to_vec();
    // Inside the third frame's payload.
    bytes[two + 150] ^= 0x20;
    let r = run(&[&bytes]);
    let text = r.text();
    let expected = String::from_utf8(EXPECTED.to_vec()).unwrap();
    let first_two = &expected[..expected.find("event: content_block_delta").unwrap()];
    assert!(text.starts_with(first_two), "{text}");
    let rest = &text[first_two.len()..];
    assert!(
        rest.starts_with("event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"Upstream stream unreadable: "),
        "{rest}"
    );
    assert_eq!(rest.matches("event:").count(), 1);
    assert!(r.finished.is_empty());
    assert!(!r.stop);
}

#[test]
fn an_unreadable_chunk_payload_ends_with_an_api_error() {
    for payload in [&br#"{"bytes":"not base64!"}"#[..], b"not json", br#"{"p":"x"}"#] {
        let r = run(&[&event_frame(payload)]);
        assert_eq!(
            r.text(),
            error_event("api_error", "Upstream sent an unreadable stream event")
        );
    }
}

#[test]
fn ping_and_unknown_events_pass_through() {
    let ping = r#"{"type": "ping"}"#;
    let odd = r#"{"index":0,"type":"content_block_stop"}"#;
    let future = r#"{"type":"something_new","x":[1,2]}"#;
    let mut bytes = chunk_frame(ping);
    bytes.extend(chunk_frame(odd));
    bytes.extend(chunk_frame(future));
    // A frame of another event type is skipped.
    bytes.extend(frame(&[(":event-type", "metadata"), (":message-type", "event")], b"{}"));
    let r = run(&[&bytes]);
    assert_eq!(
        String::from_utf8(r.pushed.concat()).unwrap(),
        format!(
            "{}{}{}",
            sse_event("ping", ping),
            sse_event("content_block_stop", odd),
            sse_event("something_new", future)
        )
    );
}

#[test]
fn newlines_in_an_event_json_stay_on_one_data_line() {
    let json = "{\"type\":\"content_block_delta\",\r\n\"delta\":{\"text\":\"a\\nb\"}}";
    let r = run(&[&chunk_frame(json)]);
    assert_eq!(
        String::from_utf8(r.pushed.concat()).unwrap(),
        sse_event(
            "content_block_delta",
            "{\"type\":\"content_block_delta\",  \"delta\":{\"text\":\"a\\nb\"}}"
        )
    );
}

#[test]
fn unpadded_base64_is_read() {
    let json = r#"{"type":"ping"}"#;
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(json);
    let payload = format!(r#"{{"bytes":"{b64}"}}"#);
    let r = run(&[&event_frame(payload.as_bytes())]);
    assert_eq!(String::from_utf8(r.pushed.concat()).unwrap(), sse_event("ping", json));
}

mod props {
    use proptest::prelude::*;

    use super::*;
    use crate::test_props::{chunks, config, cuts};

    /// The recorded stream, possibly with an exception after one of its frames, possibly cut.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let n = frames_of(BEDROCK_STREAM).len();
        (
            prop::option::of(0..n),
            prop::option::of(0..BEDROCK_STREAM.len() + 200),
            prop::option::of(0..BEDROCK_STREAM.len()),
        )
            .prop_map(|(exception_after, cut, corrupt)| {
                let mut bytes = Vec::new();
                for (i, f) in frames_of(BEDROCK_STREAM).into_iter().enumerate() {
                    bytes.extend_from_slice(f);
                    if exception_after == Some(i) {
                        bytes.extend(exception_frame("throttlingException", "slow down"));
                    }
                }
                if let Some(at) = corrupt {
                    bytes[at] ^= 0x01;
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut);
                }
                bytes
            })
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn any_chunking_gives_the_same_output(
            (bytes, at) in stream().prop_flat_map(|b| { let n = b.len(); (Just(b), cuts(n)) })
        ) {
            let whole = run(&[&bytes]);
            let chunked = run(&chunks(&bytes, &at));
            prop_assert_eq!(chunked.sse(), whole.sse());
            prop_assert_eq!(chunked.usage, whole.usage);
            prop_assert_eq!(&chunked.exception, &whole.exception);
            prop_assert_eq!(chunked.stop, whole.stop);
            // At most one error event, and one whenever message_stop was not reached.
            let text = whole.text();
            let errors = text.matches("event: error\n").count();
            prop_assert!(errors <= 1 && (whole.stop || errors == 1), "{}", text);
        }
    }
}
