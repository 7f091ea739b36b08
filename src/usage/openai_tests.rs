use super::*;

const CHAT: &[u8] = include_bytes!("../../tests/fixtures/responses/openai-chat-stream-include-usage.sse");
const RESPONSES: &[u8] = include_bytes!("../../tests/fixtures/responses/openai-responses-stream.sse");
const RESPONSES_CALL: &[u8] =
    include_bytes!("../../tests/fixtures/responses/openai-responses-stream-function-call.sse");

/// All three recordings bill prompt 24 (3 of them cached) and output 7.
const GOLDEN: TokenUsage = TokenUsage {
    input: 21,
    output: 7,
    cache_read: 3,
    cache_write_5m: 0,
    cache_write_1h: 0,
    reasoning: 0,
    billing: crate::usage::Billing::NONE,
};

#[derive(Debug, PartialEq)]
pub(super) struct ChatReport {
    pub(super) usage: TokenUsage,
    pub(super) saw_usage: bool,
    pub(super) done: bool,
    pub(super) error: Option<(String, String)>,
    pub(super) model: Option<String>,
}

pub(super) fn chat_report(p: &ChatSseUsage) -> ChatReport {
    ChatReport {
        usage: p.usage(),
        saw_usage: p.saw_usage(),
        done: p.saw_done(),
        error: p.error(),
        model: p.model().map(str::to_owned),
    }
}

#[derive(Debug, PartialEq)]
pub(super) struct ResponsesReport {
    pub(super) usage: TokenUsage,
    pub(super) saw_usage: bool,
    pub(super) completed: bool,
    pub(super) error: Option<(String, String)>,
}

pub(super) fn responses_report(p: &ResponsesSseUsage) -> ResponsesReport {
    ResponsesReport {
        usage: p.usage(),
        saw_usage: p.saw_usage(),
        completed: p.completed(),
        error: p.error(),
    }
}

pub(super) fn read_chat(parts: &[&[u8]]) -> ChatReport {
    let mut p = ChatSseUsage::new();
    for part in parts {
        p.feed(part);
    }
    chat_report(&p)
}

pub(super) fn read_responses(parts: &[&[u8]]) -> ResponsesReport {
    let mut p = ResponsesSseUsage::new();
    for part in parts {
        p.feed(part);
    }
    responses_report(&p)
}

fn to_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for &b in bytes {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// The same report whole, at every two-way split, and in chunks of 1..=64 bytes; LF and CRLF.
fn assert_split_invariant<R: PartialEq + std::fmt::Debug>(stream: &[u8], expected: &R, read: fn(&[&[u8]]) -> R) {
    for bytes in [stream.to_vec(), to_crlf(stream)] {
        assert_eq!(&read(&[&bytes]), expected);
        for k in 0..=bytes.len() {
            assert_eq!(&read(&[&bytes[..k], &bytes[k..]]), expected, "split at {k}");
        }
        for size in 1..=64 {
            let parts: Vec<&[u8]> = bytes.chunks(size).collect();
            assert_eq!(&read(&parts), expected, "chunks of {size}");
        }
    }
}

fn golden_chat() -> ChatReport {
    ChatReport {
        usage: GOLDEN,
        saw_usage: true,
        done: true,
        error: None,
        model: Some("gpt-5".to_owned()),
    }
}

fn golden_responses() -> ResponsesReport {
    ResponsesReport {
        usage: GOLDEN,
        saw_usage: true,
        completed: true,
        error: None,
    }
}

#[test]
fn chat_recording() {
    assert_eq!(read_chat(&[CHAT]), golden_chat());
}

#[test]
fn chat_recording_at_every_split() {
    assert_split_invariant(CHAT, &golden_chat(), read_chat);
}

#[test]
fn chat_cut_before_the_usage_chunk() {
    let end = memmem::find(CHAT, b"data: {\"id\":\"chatcmpl-mock07a8584d31be49689b4169ae\",\"object\":\"chat.completion.chunk\",\"created\":1795781428,\"model\":\"gpt-5\",\"system_fingerprint\":\"fp_mock\",\"choices\":[]").unwrap();
    let expected = ChatReport {
        usage: TokenUsage::default(),
        saw_usage: false,
        done: false,
        error: None,
        model: Some("gpt-5".to_owned()),
    };
    assert_split_invariant(&CHAT[..end], &expected, read_chat);
    // Cut inside the usage line: the line never ended, nothing is read from it.
    let r = read_chat(&[&CHAT[..end + 300]]);
    assert!(!r.saw_usage);
}

#[test]
fn chat_error_line() {
    let stream = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-5\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n\
        data: {\"error\": {\"message\": \"Rate limit \\\"reached\\\"\", \"type\": \"rate_limit_error\", \"param\": null, \"code\": \"rate_limit_exceeded\"}}\n\n\
        data: {\"error\":{\"message\":\"later\",\"type\":\"server_error\"}}\n\n";
    let expected = ChatReport {
        usage: TokenUsage::default(),
        saw_usage: false,
        done: false,
        error: Some(("rate_limit_error".to_owned(), "Rate limit \"reached\"".to_owned())),
        model: Some("gpt-5".to_owned()),
    };
    assert_split_invariant(stream.as_bytes(), &expected, read_chat);
    // Without a type, the code names it.
    let r = read_chat(&[b"data: {\"error\":{\"message\":\"m\",\"type\":null,\"code\":429}}\n"]);
    assert_eq!(r.error, Some(("429".to_owned(), "m".to_owned())));
}

#[test]
fn chat_usage_with_spaces_reasoning_and_last_wins() {
    // Some servers write JSON with spaces, and report usage on more than one chunk.
    let stream = "data: {\"id\": \"c\", \"model\": \"m\\u002d1\", \"choices\": [{\"delta\": {\"content\": \"\\\"usage\\\": {\"}}], \"usage\": null}\n\n\
        data: {\"id\": \"c\", \"choices\": [], \"usage\": {\"prompt_tokens\": 10, \"completion_tokens\": 1}}\n\n\
        data: {\"id\": \"c\", \"choices\": [], \"usage\" :\n";
    let r = read_chat(&[stream.as_bytes()]);
    assert_eq!(r.usage.output, 1);
    let stream = format!(
        "{stream}data: {{\"choices\":[],\"usage\":  {{\"prompt_tokens\":100,\"completion_tokens\":40,\"total_tokens\":140,\
         \"prompt_tokens_details\":{{\"cached_tokens\":64}},\"completion_tokens_details\":{{\"reasoning_tokens\":32}}}}}}\n\ndata: [DONE]\n\n"
    );
    let expected = ChatReport {
        usage: TokenUsage {
            input: 36,
            output: 40,
            cache_read: 64,
            reasoning: 32,
            ..TokenUsage::default()
        },
        saw_usage: true,
        done: true,
        error: None,
        model: Some("m-1".to_owned()),
    };
    assert_split_invariant(stream.as_bytes(), &expected, read_chat);
}

#[test]
fn chat_cached_beyond_the_prompt_saturates() {
    let r = read_chat(&[b"data: {\"usage\":{\"prompt_tokens\":5,\"prompt_tokens_details\":{\"cached_tokens\":9}}}\n"]);
    assert_eq!((r.usage.input, r.usage.cache_read), (0, 9));
}

#[test]
fn chat_other_lines_are_ignored() {
    let stream = ": keep-alive\n\
        event: error\n\
        id: {\"usage\":{\"prompt_tokens\":5}}\n\
        data:{\"model\":null,\"usage\":{\"prompt_tokens\":2}}\n\
        data:[DONE]\r\n";
    let expected = ChatReport {
        usage: TokenUsage {
            input: 2,
            ..TokenUsage::default()
        },
        saw_usage: true,
        done: true,
        error: None,
        model: None,
    };
    assert_split_invariant(stream.as_bytes(), &expected, read_chat);
}

#[test]
fn chat_content_lines_are_never_copied() {
    let text = "y".repeat(3 * MAX_LINE);
    let line = format!(
        "data: {{\"id\":\"c\",\"model\":\"gpt-5\",\"choices\":[{{\"delta\":{{\"content\":\"{text}\"}}}}],\"usage\":null}}\n\n"
    );
    let mut p = ChatSseUsage::new();
    for chunk in line.as_bytes().chunks(1000) {
        p.feed(chunk);
        assert!(p.usage_key.value.len() + p.error_key.value.len() < 16);
        // Only the model's value, up to its cap.
        assert!(p.model_key.value.len() <= MODEL_CAP);
    }
    p.feed(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n");
    // The over-long line was skipped, its model with it.
    assert_eq!(p.model(), None);
    assert_eq!((p.usage().input, p.usage().output), (3, 4));
    assert!(p.saw_done());
}

#[test]
fn chat_line_over_the_cap_is_skipped() {
    let pad = "x".repeat(MAX_LINE);
    let stream = format!(
        "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":500}},\"pad\":\"{pad}\"}}\n\
         data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":7}}}}\n"
    );
    for size in [1000, MAX_LINE, stream.len()] {
        let mut p = ChatSseUsage::new();
        for chunk in stream.as_bytes().chunks(size) {
            p.feed(chunk);
        }
        assert_eq!(p.usage().input, 7, "chunks of {size}");
    }
    // At the cap exactly, the line is read.
    let head = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9},\"pad\":\"";
    let line = format!("{head}{}\"}}", "x".repeat(MAX_LINE - head.len() - 2));
    assert_eq!(line.len(), MAX_LINE);
    for end in ["\n", "\r\n"] {
        let r = read_chat(&[format!("{line}{end}").as_bytes()]);
        assert_eq!(r.usage.input, 9);
    }
}

#[test]
fn chat_json_body() {
    let body = br#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-5","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":24,"completion_tokens":7,"total_tokens":31,"prompt_tokens_details":{"cached_tokens":3},"completion_tokens_details":{"reasoning_tokens":2}}}"#;
    assert_eq!(parse_chat_json_usage(body), Some(TokenUsage { reasoning: 2, ..GOLDEN }));
    assert_eq!(
        parse_chat_json_usage(br#"{"error":{"message":"bad","type":"invalid_request_error"}}"#),
        None
    );
    assert_eq!(parse_chat_json_usage(br#"{"usage":null}"#), None);
    assert_eq!(parse_chat_json_usage(b"not json"), None);
}

#[test]
fn responses_recordings() {
    assert_eq!(read_responses(&[RESPONSES]), golden_responses());
    assert_eq!(read_responses(&[RESPONSES_CALL]), golden_responses());
}

#[test]
fn responses_recordings_at_every_split() {
    assert_split_invariant(RESPONSES, &golden_responses(), read_responses);
    assert_split_invariant(RESPONSES_CALL, &golden_responses(), read_responses);
}

#[test]
fn responses_cut_before_completion() {
    let end = memmem::find(RESPONSES, b"event: response.completed").unwrap();
    let expected = ResponsesReport {
        usage: TokenUsage::default(),
        saw_usage: false,
        completed: false,
        error: None,
    };
    assert_split_invariant(&RESPONSES[..end], &expected, read_responses);
}

/// The recording with its `event:` lines removed: the data lines tell their type themselves.
#[test]
fn responses_without_event_names() {
    let unnamed: Vec<u8> = RESPONSES
        .split_inclusive(|&b| b == b'\n')
        .filter(|line| !line.starts_with(b"event:"))
        .flatten()
        .copied()
        .collect();
    assert_split_invariant(&unnamed, &golden_responses(), read_responses);
}

#[test]
fn responses_irrelevant_lines_are_skipped_by_their_first_bytes() {
    let text = "y".repeat(3 * MAX_LINE);
    let stream = format!(
        "event: response.output_text.delta\n\
         data: {{\"type\":\"response.output_text.delta\",\"delta\":\"{text}\"}}\n\n\
         data: {{\"type\":\"response.output_item.done\",\"item\":{{\"encrypted_content\":\"{text}\"}}}}\n\n"
    );
    let mut p = ResponsesSseUsage::new();
    for chunk in stream.as_bytes().chunks(1000) {
        p.feed(chunk);
        assert!(p.held() < 64, "held {} bytes", p.held());
    }
    assert!(!p.saw_usage());
}

#[test]
fn responses_incomplete_and_failed() {
    let stream = "event: response.incomplete\n\
        data: {\"type\":\"response.incomplete\",\"response\":{\"status\":\"incomplete\",\"incomplete_details\":{\"reason\":\"max_output_tokens\"},\"usage\":{\"input_tokens\":50,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":16,\"output_tokens_details\":{\"reasoning_tokens\":16}}}}\n\n";
    let expected = ResponsesReport {
        usage: TokenUsage {
            input: 50,
            output: 16,
            reasoning: 16,
            ..TokenUsage::default()
        },
        saw_usage: true,
        completed: false,
        error: None,
    };
    assert_split_invariant(stream.as_bytes(), &expected, read_responses);

    let stream = "event: response.failed\n\
        data: {\"type\":\"response.failed\",\"response\":{\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"The model failed\"},\"usage\":{\"input_tokens\":8,\"output_tokens\":0}}}\n\n";
    let expected = ResponsesReport {
        usage: TokenUsage {
            input: 8,
            ..TokenUsage::default()
        },
        saw_usage: true,
        completed: false,
        error: Some(("server_error".to_owned(), "The model failed".to_owned())),
    };
    assert_split_invariant(stream.as_bytes(), &expected, read_responses);
}

#[test]
fn responses_error_events() {
    // OpenAI writes the error flat; some servers nest it. The first one is kept.
    let stream = "event: error\n\
        data: {\"type\":\"error\",\"code\":\"rate_limit_exceeded\",\"message\":\"Slow down\",\"param\":null,\"sequence_number\":1}\n\n\
        event: error\n\
        data: {\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"later\"}}\n\n";
    let expected = ResponsesReport {
        usage: TokenUsage::default(),
        saw_usage: false,
        completed: false,
        error: Some(("rate_limit_exceeded".to_owned(), "Slow down".to_owned())),
    };
    assert_split_invariant(stream.as_bytes(), &expected, read_responses);
    let r = read_responses(&[b"data: {\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"code\":null,\"message\":\"bad\"}}\n\n"]);
    assert_eq!(r.error, Some(("invalid_request_error".to_owned(), "bad".to_owned())));
}

#[test]
fn responses_named_events_decide_over_the_data() {
    // A usage object in a data line of an event that does not carry usage is not read.
    let stream = "event: response.output_text.delta\n\
        data: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":5}}}\n\n\
        event: response.completed\n\
        data: {\"response\":{\"usage\":{\"input_tokens\":6}}}\n\n";
    let expected = ResponsesReport {
        usage: TokenUsage {
            input: 6,
            ..TokenUsage::default()
        },
        saw_usage: true,
        completed: true,
        error: None,
    };
    assert_split_invariant(stream.as_bytes(), &expected, read_responses);
}

/// A `response.completed` line of `len` bytes whose usage says `input`, the output padded before
/// the usage (as OpenAI orders the response object).
fn padded_completed(len: usize, input: u64, named: bool) -> String {
    let head = "data: {\"type\":\"response.completed\",\"response\":{\"output\":[{\"type\":\"message\",\"content\":[{\"text\":\"";
    let tail = format!(
        "\"}}]}}],\"tools\":[{{\"parameters\":{{\"properties\":{{\"usage\":{{\"type\":\"string\"}}}}}}}}],\"usage\":{{\"input_tokens\":{input},\"output_tokens\":2}},\"user\":null,\"metadata\":{{\"usage\":\"x\"}}}}}}"
    );
    let pad = len - head.len() - tail.len();
    let event = if named { "event: response.completed\n" } else { "" };
    format!("{event}{head}{}{tail}", "x".repeat(pad))
}

#[test]
fn an_over_long_final_event_still_yields_its_usage() {
    for named in [true, false] {
        for len in [MAX_LINE, MAX_LINE + 1, 3 * MAX_LINE] {
            for end in ["\n", "\r\n"] {
                let stream = format!("{}{end}{end}", padded_completed(len, 11, named));
                for size in [1000, MAX_LINE - 1, MAX_LINE + 2, stream.len()] {
                    let mut p = ResponsesSseUsage::new();
                    for chunk in stream.as_bytes().chunks(size) {
                        p.feed(chunk);
                        assert!(p.held() <= MAX_LINE + 2 + LONG_TAIL * 2 + HEAD);
                    }
                    let r = responses_report(&p);
                    assert_eq!(r.usage.input, 11, "len {len}, chunks of {size}, named {named}");
                    assert_eq!(r.usage.output, 2);
                    assert!(r.completed);
                }
            }
        }
    }
}

#[test]
fn responses_json_body() {
    let body = br#"{"id":"resp_1","object":"response","status":"completed","output":[],"tools":[{"type":"function","parameters":{"properties":{"usage":{"type":"string"}}}}],"usage":{"input_tokens":24,"input_tokens_details":{"cached_tokens":3},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":4},"total_tokens":31}}"#;
    assert_eq!(
        parse_responses_json_usage(body),
        Some(TokenUsage { reasoning: 4, ..GOLDEN })
    );
    assert_eq!(parse_responses_json_usage(br#"{"id":"resp_1","usage":null}"#), None);
    assert_eq!(parse_responses_json_usage(b"{"), None);
}

#[test]
fn line_start_of_responses_lines() {
    let wanted = |kind: &[u8]| kind == b"response.completed";
    let read = |start: &str, named| responses_line_start(start.as_bytes(), named, wanted);
    assert_eq!(read("", None), LineStart::Read);
    assert_eq!(read("\r", None), LineStart::Read);
    assert_eq!(read("ev", None), LineStart::Read);
    assert_eq!(read("event: anything", Some(false)), LineStart::Read);
    assert_eq!(read(": comment", None), LineStart::Skip);
    assert_eq!(read("id: 4", None), LineStart::Skip);
    assert_eq!(read("data: {\"type\":\"x\"", Some(true)), LineStart::Read);
    assert_eq!(
        read("data: {\"type\":\"response.completed\"", Some(false)),
        LineStart::Skip
    );
    assert_eq!(read("data: {\"type\":\"response.compl", None), LineStart::Read);
    assert_eq!(read("data: {\"type\":\"response.completed\"", None), LineStart::Read);
    assert_eq!(
        read("data: {\"type\":\"response.output_text.delta\"", None),
        LineStart::Skip
    );
    assert_eq!(read("data: {\"response\":{", None), LineStart::Read);
    assert_eq!(read("data: {\"ty", None), LineStart::Read);
}
