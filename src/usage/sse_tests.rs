use super::*;
use crate::usage::{Billing, Geo, ServiceTier, Speed};

const PLAIN: &[u8] = include_bytes!("../../tests/fixtures/responses/anthropic-messages-stream.sse");
const TOOL_USE: &[u8] = include_bytes!("../../tests/fixtures/responses/anthropic-messages-stream-tool-use.sse");

/// Everything the parser reports, for comparing runs.
#[derive(Debug, PartialEq)]
pub(super) struct Report {
    pub(super) usage: TokenUsage,
    pub(super) model: Option<String>,
    pub(super) stop: bool,
    pub(super) saw_usage: bool,
    pub(super) error: Option<(String, String)>,
}

pub(super) fn report(p: &SseUsageParser) -> Report {
    Report {
        usage: p.usage(),
        model: p.model().map(str::to_owned),
        stop: p.saw_message_stop(),
        saw_usage: p.saw_usage(),
        error: p.error(),
    }
}

fn parse_whole(bytes: &[u8]) -> Report {
    let mut p = SseUsageParser::new();
    p.feed(bytes);
    report(&p)
}

fn parse_chunks(bytes: &[u8], size: usize) -> Report {
    let mut p = SseUsageParser::new();
    for chunk in bytes.chunks(size) {
        p.feed(chunk);
    }
    report(&p)
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

/// Both golden streams: message_start reports input 21, cache write 5 (split 5m 5 / 1h 0), cache
/// read 3, output 1; the final message_delta repeats the prompt fields and says output 7.
fn golden_report() -> Report {
    Report {
        usage: TokenUsage {
            input: 21,
            output: 7,
            cache_read: 3,
            cache_write_5m: 5,
            cache_write_1h: 0,
            reasoning: 0,
            billing: crate::usage::Billing::NONE,
        },
        model: Some("claude-sonnet-4-5".to_owned()),
        stop: true,
        saw_usage: true,
        error: None,
    }
}

/// Same result at every two-way split point, every chunk size 1..=64, LF and CRLF.
fn assert_split_invariant(stream: &[u8], expected: &Report) {
    for bytes in [stream.to_vec(), to_crlf(stream)] {
        assert_eq!(&parse_whole(&bytes), expected);
        for split in 0..=bytes.len() {
            let mut p = SseUsageParser::new();
            p.feed(&bytes[..split]);
            p.feed(&bytes[split..]);
            assert_eq!(&report(&p), expected, "split at {split}");
        }
        for size in 1..=64 {
            assert_eq!(&parse_chunks(&bytes, size), expected, "chunks of {size}");
        }
    }
}

#[test]
fn golden_stream() {
    assert_eq!(parse_whole(PLAIN), golden_report());
}

#[test]
fn golden_stream_with_tool_use() {
    assert_eq!(parse_whole(TOOL_USE), golden_report());
}

#[test]
fn golden_streams_at_every_split_and_chunk_size() {
    assert_split_invariant(PLAIN, &golden_report());
    assert_split_invariant(TOOL_USE, &golden_report());
}

#[test]
fn usage_after_message_start_only() {
    // Cut right after message_start: its usage, no stop.
    let end = memmem::find(PLAIN, b"event: content_block_start").unwrap();
    let r = parse_whole(&PLAIN[..end]);
    assert_eq!(
        r.usage,
        TokenUsage {
            input: 21,
            output: 1,
            cache_read: 3,
            cache_write_5m: 5,
            cache_write_1h: 0,
            reasoning: 0,
            billing: crate::usage::Billing::NONE,
        }
    );
    assert!(r.saw_usage);
    assert!(!r.stop);
}

#[test]
fn nothing_seen_before_the_first_event() {
    let p = SseUsageParser::new();
    assert_eq!(p.usage(), TokenUsage::default());
    assert!(!p.saw_usage() && !p.saw_message_stop());
    assert_eq!(p.model(), None);
    assert_eq!(p.error(), None);
}

const START_SPLIT: &str = "event: message_start\n\
    data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-opus-4-1\",\"content\":[],\"usage\":{\"input_tokens\":10,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":0,\"cache_creation\":{\"ephemeral_5m_input_tokens\":10,\"ephemeral_1h_input_tokens\":90},\"output_tokens\":1}}}\n\n";

#[test]
fn message_delta_usage_is_cumulative_last_wins() {
    let stream = format!(
        "{START_SPLIT}\
         event: message_delta\n\
         data: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":null}},\"usage\":{{\"output_tokens\":10}}}}\n\n\
         event: message_delta\n\
         data: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}},\"usage\":{{\"output_tokens\":25,\"input_tokens\":12}}}}\n\n\
         event: message_stop\n\
         data: {{\"type\":\"message_stop\"}}\n\n"
    );
    let expected = Report {
        usage: TokenUsage {
            input: 12,
            output: 25,
            cache_read: 0,
            cache_write_5m: 10,
            cache_write_1h: 90,
            reasoning: 0,
            billing: crate::usage::Billing::NONE,
        },
        model: Some("claude-opus-4-1".to_owned()),
        stop: true,
        saw_usage: true,
        error: None,
    };
    assert_split_invariant(stream.as_bytes(), &expected);
}

#[test]
fn delta_cache_total_keeps_a_matching_split_and_overrides_a_different_one() {
    let delta = |total: u64| {
        format!(
            "event: message_delta\n\
             data: {{\"type\":\"message_delta\",\"usage\":{{\"cache_creation_input_tokens\":{total},\"output_tokens\":2}}}}\n\n"
        )
    };
    // Same total as message_start's split: the split stands.
    let same = parse_whole(format!("{START_SPLIT}{}", delta(100)).as_bytes());
    assert_eq!((same.usage.cache_write_5m, same.usage.cache_write_1h), (10, 90));
    // A new total: it wins; the known 1h share stays, the rest is 5m.
    let more = parse_whole(format!("{START_SPLIT}{}", delta(150)).as_bytes());
    assert_eq!((more.usage.cache_write_5m, more.usage.cache_write_1h), (60, 90));
    let less = parse_whole(format!("{START_SPLIT}{}", delta(40)).as_bytes());
    assert_eq!((less.usage.cache_write_5m, less.usage.cache_write_1h), (0, 40));
    // A split in the delta overrides.
    let split = parse_whole(
        format!(
            "{START_SPLIT}event: message_delta\n\
             data: {{\"type\":\"message_delta\",\"usage\":{{\"cache_creation_input_tokens\":100,\"cache_creation\":{{\"ephemeral_5m_input_tokens\":0,\"ephemeral_1h_input_tokens\":100}}}}}}\n\n"
        )
        .as_bytes(),
    );
    assert_eq!((split.usage.cache_write_5m, split.usage.cache_write_1h), (0, 100));
}

#[test]
fn missing_cache_creation_object_counts_all_writes_as_5m() {
    let stream = "event: message_start\n\
        data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-3-5-haiku-20241022\",\"usage\":{\"input_tokens\":4,\"cache_creation_input_tokens\":1500,\"cache_read_input_tokens\":7,\"output_tokens\":1}}}\n\n\
        event: message_delta\n\
        data: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":3}}\n\n";
    let r = parse_whole(stream.as_bytes());
    assert_eq!(
        r.usage,
        TokenUsage {
            input: 4,
            output: 3,
            cache_read: 7,
            cache_write_5m: 1500,
            cache_write_1h: 0,
            reasoning: 0,
            billing: crate::usage::Billing::NONE,
        }
    );
    assert!(!r.stop);
}

#[test]
fn null_usage_fields_read_as_absent() {
    let stream = "event: message_start\n\
        data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":4,\"cache_creation_input_tokens\":null,\"cache_read_input_tokens\":null,\"cache_creation\":null,\"output_tokens\":1}}}\n\n\
        event: message_delta\n\
        data: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":null,\"output_tokens\":9}}\n\n";
    let r = parse_whole(stream.as_bytes());
    assert_eq!(
        r.usage,
        TokenUsage {
            input: 4,
            output: 9,
            ..TokenUsage::default()
        }
    );
    assert_eq!(r.model, None);
}

#[test]
fn error_event_after_http_200() {
    let stream = format!(
        "{START_SPLIT}\
         event: ping\n\
         data: {{\"type\": \"ping\"}}\n\n\
         event: error\n\
         data: {{\"type\": \"error\", \"error\": {{\"type\": \"overloaded_error\", \"message\": \"Overloaded \\\"now\\\"\"}}}}\n\n\
         event: error\n\
         data: {{\"type\":\"error\",\"error\":{{\"type\":\"api_error\",\"message\":\"later\"}}}}\n\n"
    );
    let expected = Report {
        usage: TokenUsage {
            input: 10,
            output: 1,
            cache_read: 0,
            cache_write_5m: 10,
            cache_write_1h: 90,
            reasoning: 0,
            billing: crate::usage::Billing::NONE,
        },
        model: Some("claude-opus-4-1".to_owned()),
        stop: false,
        saw_usage: true,
        // The first error is kept; the JSON escapes are decoded.
        error: Some(("overloaded_error".to_owned(), "Overloaded \"now\"".to_owned())),
    };
    assert_split_invariant(stream.as_bytes(), &expected);
}

#[test]
fn error_event_without_details() {
    let r = parse_whole(b"event: error\ndata: {\"type\":\"error\"}\n\n");
    assert_eq!(r.error, Some((String::new(), String::new())));
    assert!(!r.saw_usage);
}

#[test]
fn ping_and_unknown_events_anywhere_are_ignored() {
    let stream = format!(
        "event: ping\ndata: {{\"type\":\"ping\"}}\n\n\
         : a comment line\n\
         id: 7\n\
         retry: 1000\n\n\
         {START_SPLIT}\
         event: ping\ndata: {{\"type\":\"ping\"}}\n\n\
         event: future_event\n\
         data: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":999}}}}\n\n\
         event: content_block_delta\n\
         data: {{\"type\":\"content_block_delta\",\"delta\":{{\"text\":\"\\\"type\\\":\\\"message_delta\\\"\"}}}}\n\n\
         event: message_delta\n\
         data:{{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":5}}}}\n\n\
         event: ping\ndata: {{\"type\":\"ping\"}}\n\n\
         event:message_stop\n\
         data:{{\"type\":\"message_stop\"}}\n\n\
         event: ping\ndata: {{\"type\":\"ping\"}}\n\n"
    );
    let expected = Report {
        usage: TokenUsage {
            input: 10,
            output: 5,
            cache_read: 0,
            cache_write_5m: 10,
            cache_write_1h: 90,
            reasoning: 0,
            billing: crate::usage::Billing::NONE,
        },
        model: Some("claude-opus-4-1".to_owned()),
        stop: true,
        saw_usage: true,
        error: None,
    };
    assert_split_invariant(stream.as_bytes(), &expected);
}

#[test]
fn data_lines_without_event_names() {
    let stream = "data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n\
        data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\n\
        data: {\"type\": \"message_delta\", \"usage\": {\"output_tokens\": 4}}\n\n\
        data: {\"type\":\"message_stop\"}\n\n";
    let expected = Report {
        usage: TokenUsage {
            input: 3,
            output: 4,
            ..TokenUsage::default()
        },
        model: Some("claude-sonnet-4-5".to_owned()),
        stop: true,
        saw_usage: true,
        error: None,
    };
    assert_split_invariant(stream.as_bytes(), &expected);
}

#[test]
fn escaped_model_name_is_decoded() {
    let r = parse_whole(
        b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\\u002dx\"}}\n\n",
    );
    assert_eq!(r.model.as_deref(), Some("claude-x"));
    assert!(!r.saw_usage);
}

#[test]
fn malformed_json_is_ignored() {
    let stream = format!(
        "{START_SPLIT}event: message_delta\ndata: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":\n\n\
         event: message_delta\ndata: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":-1}}}}\n\n"
    );
    let r = parse_whole(stream.as_bytes());
    assert_eq!(r.usage.output, 1);
}

/// A `data:` line of `len` bytes (without newline) for a message_delta with output `tokens`,
/// padded inside the JSON.
fn padded_delta(len: usize, tokens: u64) -> String {
    let head = format!("data: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":{tokens}}},\"pad\":\"");
    let tail = "\"}";
    let pad = len - head.len() - tail.len();
    format!("{head}{}{tail}", "x".repeat(pad))
}

#[test]
fn a_line_over_the_cap_is_skipped_not_buffered() {
    let over = padded_delta(MAX_LINE + 1, 500);
    let at_cap = padded_delta(MAX_LINE, 7);
    for line_end in ["\n", "\r\n"] {
        let stream = format!(
            "{START_SPLIT}event: message_delta\n{over}{line_end}{line_end}\
             event: message_delta\n{at_cap}{line_end}{line_end}"
        );
        let stream = stream.as_bytes();
        for size in [1, 7, 4096, 65536, MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, stream.len()] {
            let mut p = SseUsageParser::new();
            for chunk in stream.chunks(size) {
                p.feed(chunk);
                assert!(p.carry.len() <= MAX_LINE + 1);
            }
            // The over-long delta (500) was skipped; the one at the cap (7) was read.
            assert_eq!(p.usage().output, 7, "chunks of {size}");
            assert!(p.carry.capacity() <= KEEP_CAPACITY);
        }
        // Cut inside the over-long line, then a new stream of lines: only that line is lost.
        let over = padded_delta(MAX_LINE + 2, 500);
        let mut p = SseUsageParser::new();
        p.feed(START_SPLIT.as_bytes());
        p.feed(b"event: message_delta\n");
        p.feed(&over.as_bytes()[..MAX_LINE + 1]);
        // Could still be MAX_LINE bytes and a `\r`.
        assert_eq!(p.carry.len(), MAX_LINE + 1);
        p.feed(&over.as_bytes()[MAX_LINE + 1..]);
        assert!(p.skipping && p.carry.is_empty());
        p.feed(
            format!(
                "{line_end}{line_end}event: message_delta\n{}{line_end}",
                padded_delta(100, 9)
            )
            .as_bytes(),
        );
        assert_eq!(p.usage().output, 9);
    }
}

#[test]
fn irrelevant_long_lines_are_never_copied() {
    let text = "y".repeat(3 * MAX_LINE);
    let line = format!(
        "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"delta\":{{\"text\":\"{text}\"}}}}\n\n"
    );
    let mut p = SseUsageParser::new();
    p.feed(START_SPLIT.as_bytes());
    for chunk in line.as_bytes().chunks(1000) {
        p.feed(chunk);
        assert!(p.carry.len() < 16, "carried {} bytes", p.carry.len());
    }
    p.feed(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    assert!(p.saw_message_stop());
    assert_eq!(p.usage().input, 10);
}

#[test]
fn record_end_split_between_cr_and_lf() {
    // The blank line `\r\n` split after `\r` must still end the record: otherwise the data line
    // after it would be taken for the previous (ping) event's.
    let mut p = SseUsageParser::new();
    p.feed(b"event: ping\r\ndata: {\"type\":\"ping\"}\r\n\r");
    p.feed(b"\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\r\n\r\n");
    assert_eq!(p.usage().output, 3);
}

#[test]
fn non_streaming_json_body() {
    let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":21,"cache_creation_input_tokens":300,"cache_read_input_tokens":3,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":200},"output_tokens":7,"service_tier":"standard"}}"#;
    let (usage, model) = parse_json_usage(body).unwrap();
    assert_eq!(
        usage,
        TokenUsage {
            input: 21,
            output: 7,
            cache_read: 3,
            cache_write_5m: 100,
            cache_write_1h: 200,
            reasoning: 0,
            billing: crate::usage::Billing::NONE,
        }
    );
    assert_eq!(model.as_deref(), Some("claude-sonnet-4-5-20250929"));

    let no_split = br#"{"model":"m","usage":{"input_tokens":1,"cache_creation_input_tokens":50,"output_tokens":2}}"#;
    let (usage, _) = parse_json_usage(no_split).unwrap();
    assert_eq!((usage.cache_write_5m, usage.cache_write_1h), (50, 0));

    let no_model = br#"{"usage":{"input_tokens":1,"output_tokens":2}}"#;
    assert_eq!(parse_json_usage(no_model).unwrap().1, None);

    let error = br#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#;
    assert_eq!(parse_json_usage(error), None);
    assert_eq!(parse_json_usage(b"not json"), None);
    assert_eq!(parse_json_usage(b""), None);
}

/// Found by the property tests: a split near u64::MAX followed by a total without its split
/// overflowed the sum (a panic in debug builds, a wrapped comparison in release).
#[test]
fn huge_cache_split_then_a_bare_total_does_not_overflow() {
    let stream = b"event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"cache_creation\":{\"ephemeral_5m_input_tokens\":18446744073709551615,\"ephemeral_1h_input_tokens\":1842}}}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"usage\":{\"cache_creation_input_tokens\":36173}}\n\n";
    let r = parse_whole(stream);
    assert_eq!(r.usage.cache_write_1h, 1842);
    assert_eq!(r.usage.cache_write_5m, 36173 - 1842);
}

/// A stream whose `message_start` says how it runs (speed, geography, tier) and whose final
/// `message_delta` carries the cumulative server tool counts.
const BILLED: &[u8] = b"event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-opus-4-8\",\"content\":[],\"usage\":{\"input_tokens\":100,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1,\"service_tier\":\"standard\",\"inference_geo\":\"us\",\"speed\":\"fast\"}}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":5,\"server_tool_use\":{\"web_search_requests\":1}}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":100,\"output_tokens\":40,\"server_tool_use\":{\"web_search_requests\":3,\"web_fetch_requests\":2,\"code_execution_requests\":1}}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

#[test]
fn speed_geography_tier_and_server_tools_are_read_cumulatively() {
    let r = parse_whole(BILLED);
    assert_eq!((r.usage.input, r.usage.output), (100, 40));
    assert_eq!(
        r.usage.billing,
        Billing {
            speed: Speed::Fast,
            geo: Geo::Us,
            tier: ServiceTier::Standard,
            // The last server_tool_use object replaces the earlier one: 3 searches, not 4.
            web_searches: 3,
            web_fetches: 2,
            other_server_tools: 1,
        }
    );
    assert_split_invariant(BILLED, &r);
}

#[test]
fn billing_fields_in_a_json_answer() {
    let body = br#"{"model":"claude-opus-4-8","usage":{"input_tokens":8,"output_tokens":12,"speed":"fast","inference_geo":"global","service_tier":"priority","server_tool_use":{"web_search_requests":0,"web_fetch_requests":2}}}"#;
    let (u, _) = parse_json_usage(body).unwrap();
    assert_eq!(
        u.billing,
        Billing {
            speed: Speed::Fast,
            geo: Geo::Global,
            tier: ServiceTier::Other,
            web_searches: 0,
            web_fetches: 2,
            other_server_tools: 0,
        }
    );
    // Absent, null: nothing beyond tokens; `standard` speed is reported as such.
    let (u, _) = parse_json_usage(
        br#"{"usage":{"input_tokens":1,"speed":null,"inference_geo":null,"service_tier":null,"server_tool_use":null}}"#,
    )
    .unwrap();
    assert_eq!(u.billing, Billing::NONE);
    let (u, _) = parse_json_usage(br#"{"usage":{"input_tokens":1,"speed":"standard"}}"#).unwrap();
    assert_eq!(u.billing.speed, Speed::Standard);
}

#[test]
fn unknown_billing_values_are_kept_as_unknown_not_dropped() {
    let (u, _) = parse_json_usage(
        br#"{"usage":{"input_tokens":1,"speed":"turbo","inference_geo":"eu","service_tier":"batch","server_tool_use":{"web_search_requests":2,"tool_search_requests":4,"bash_requests":"x","web_fetch_requests":-1}}}"#,
    )
    .unwrap();
    assert_eq!(u.input, 1, "odd values do not cost the token counts");
    assert_eq!(u.billing.speed, Speed::Unknown);
    assert_eq!(u.billing.geo, Geo::Unknown);
    assert_eq!(u.billing.tier, ServiceTier::Other);
    assert_eq!(u.billing.web_searches, 2);
    // 4 tool searches, an unreadable count (one), and a web fetch count that is no count (one).
    assert_eq!(u.billing.other_server_tools, 6);
    assert_eq!(u.billing.web_fetches, 0);
    // Values of the wrong type: unknown, and the tokens still count.
    let (u, _) =
        parse_json_usage(br#"{"usage":{"input_tokens":3,"speed":1,"inference_geo":{},"server_tool_use":[1]}}"#)
            .unwrap();
    assert_eq!(u.input, 3);
    assert_eq!((u.billing.speed, u.billing.geo), (Speed::Unknown, Geo::Unknown));
    assert_eq!(u.billing.other_server_tools, 0);
}
