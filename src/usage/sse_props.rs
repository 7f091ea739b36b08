//! Property tests of the usage reader: any bytes at any chunking never panic and read the same as
//! when fed whole; a generated Messages stream reads the usage it was generated with, whatever the
//! chunking, with `message_delta` usage cumulative (the last value of each field wins).

use proptest::prelude::*;

use super::tests::{Report, report};
use super::*;
use crate::test_props::{bytes_and_cuts, chunks, config, cuts};

fn read(parts: &[&[u8]]) -> Report {
    let mut p = SseUsageParser::new();
    for part in parts {
        p.feed(part);
    }
    report(&p)
}

/// A usage field as an upstream may write it.
#[derive(Debug, Clone, Copy)]
enum Field {
    Absent,
    Null,
    Value(u64),
}

impl Field {
    fn write(self, name: &str, out: &mut Vec<String>) {
        match self {
            Field::Absent => {}
            Field::Null => out.push(format!("\"{name}\":null")),
            Field::Value(v) => out.push(format!("\"{name}\":{v}")),
        }
    }

    fn apply(self, to: &mut u64) {
        if let Field::Value(v) = self {
            *to = v;
        }
    }
}

/// The cache-write part of a usage object.
#[derive(Debug, Clone, Copy)]
enum CacheWrite {
    Absent,
    /// The `cache_creation` split (each side may be missing), with or without the total.
    Split {
        m5: Field,
        h1: Field,
        total: bool,
    },
    /// `cache_creation_input_tokens` alone.
    Total(u64),
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    input: Field,
    output: Field,
    cache_read: Field,
    cache: CacheWrite,
}

impl Usage {
    fn json(&self) -> String {
        let mut f = Vec::new();
        self.input.write("input_tokens", &mut f);
        self.output.write("output_tokens", &mut f);
        self.cache_read.write("cache_read_input_tokens", &mut f);
        match self.cache {
            CacheWrite::Absent => {}
            CacheWrite::Split { m5, h1, total } => {
                let n = |x: Field| if let Field::Value(v) = x { v } else { 0 };
                if total && let Some(t) = n(m5).checked_add(n(h1)) {
                    f.push(format!("\"cache_creation_input_tokens\":{t}"));
                }
                let mut split = Vec::new();
                m5.write("ephemeral_5m_input_tokens", &mut split);
                h1.write("ephemeral_1h_input_tokens", &mut split);
                f.push(format!("\"cache_creation\":{{{}}}", split.join(",")));
            }
            CacheWrite::Total(t) => f.push(format!("\"cache_creation_input_tokens\":{t}")),
        }
        format!("{{{}}}", f.join(","))
    }

    /// The documented reading: every field present overrides; a total without its split keeps a
    /// split that sums to it, otherwise the known 1h share stays (capped by the total) and the
    /// rest counts as 5m.
    fn apply(&self, u: &mut TokenUsage) {
        self.input.apply(&mut u.input);
        self.output.apply(&mut u.output);
        self.cache_read.apply(&mut u.cache_read);
        match self.cache {
            CacheWrite::Absent => {}
            CacheWrite::Split { m5, h1, .. } => {
                m5.apply(&mut u.cache_write_5m);
                h1.apply(&mut u.cache_write_1h);
            }
            CacheWrite::Total(t) => {
                if u.cache_write_5m.checked_add(u.cache_write_1h) != Some(t) {
                    u.cache_write_1h = u.cache_write_1h.min(t);
                    u.cache_write_5m = t - u.cache_write_1h;
                }
            }
        }
    }
}

fn count() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0..100_000u64, 1 => any::<u64>(), 1 => Just(u64::MAX)]
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        1 => Just(Field::Absent),
        1 => Just(Field::Null),
        4 => count().prop_map(Field::Value),
    ]
}

fn usage() -> impl Strategy<Value = Usage> {
    let cache = prop_oneof![
        Just(CacheWrite::Absent),
        (field(), field(), any::<bool>()).prop_map(|(m5, h1, total)| CacheWrite::Split { m5, h1, total }),
        count().prop_map(CacheWrite::Total),
    ];
    (field(), field(), field(), cache).prop_map(|(input, output, cache_read, cache)| Usage {
        input,
        output,
        cache_read,
        cache,
    })
}

/// Text a content block may carry, including text that looks like the events that matter.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        Just("\"message_delta\" data: {\"usage\":{\"output_tokens\":999}}\n\nevent: message_stop\n".to_string()),
        Just("\r\n\r\n\"error\"".to_string()),
    ]
}

#[derive(Debug, Clone)]
struct Stream {
    model: String,
    start: Usage,
    texts: Vec<String>,
    deltas: Vec<Usage>,
    crlf: bool,
    event_lines: bool,
    space: bool,
}

impl Stream {
    fn bytes(&self) -> Vec<u8> {
        let eol = if self.crlf { "\r\n" } else { "\n" };
        let sp = if self.space { " " } else { "" };
        let mut out = String::new();
        let mut event = |name: &str, data: String| {
            if self.event_lines {
                out.push_str(&format!("event:{sp}{name}{eol}"));
            }
            out.push_str(&format!("data:{sp}{data}{eol}{eol}"));
        };
        let model = serde_json::to_string(&self.model).unwrap();
        event(
            "message_start",
            format!(
                r#"{{"type":"message_start","message":{{"id":"msg_1","type":"message","role":"assistant","model":{model},"content":[],"stop_reason":null,"usage":{}}}}}"#,
                self.start.json()
            ),
        );
        event(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.into(),
        );
        for (i, t) in self.texts.iter().enumerate() {
            if i % 3 == 1 {
                event("ping", r#"{"type": "ping"}"#.into());
            }
            let t = serde_json::to_string(t).unwrap();
            event(
                "content_block_delta",
                format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":{t}}}}}"#),
            );
        }
        event(
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#.into(),
        );
        for d in &self.deltas {
            event(
                "message_delta",
                format!(
                    r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn","stop_sequence":null}},"usage":{}}}"#,
                    d.json()
                ),
            );
        }
        event("message_stop", r#"{"type":"message_stop"}"#.into());
        out.into_bytes()
    }

    fn expected(&self) -> Report {
        let mut usage = TokenUsage::default();
        self.start.apply(&mut usage);
        for d in &self.deltas {
            d.apply(&mut usage);
        }
        Report {
            usage,
            model: Some(self.model.clone()),
            stop: true,
            saw_usage: true,
            error: None,
        }
    }
}

fn stream() -> impl Strategy<Value = Stream> {
    (
        any::<String>(),
        usage(),
        prop::collection::vec(text(), 0..6),
        prop::collection::vec(usage(), 0..4),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(model, start, texts, deltas, crlf, event_lines, space)| Stream {
            model,
            start,
            texts,
            deltas,
            crlf,
            event_lines,
            space,
        })
}

fn stream_and_cuts() -> impl Strategy<Value = (Stream, Vec<u8>, Vec<usize>)> {
    stream().prop_flat_map(|s| {
        let b = s.bytes();
        let n = b.len();
        (Just(s), Just(b), cuts(n))
    })
}

/// Pieces of SSE that matter to the parser, for inputs that reach its interesting states.
fn sse_soup() -> impl Strategy<Value = Vec<u8>> {
    const PIECES: &[&str] = &[
        "event: message_start",
        "event: message_delta",
        "event: message_stop",
        "event: error",
        "event: ping",
        "event:",
        "data: ",
        "data:",
        "dat",
        r#"{"type":"message_start","message":{"model":"m","usage":{"input_tokens":3,"cache_creation_input_tokens":7}}}"#,
        r#"{"type":"message_delta","usage":{"output_tokens":5,"cache_creation_input_tokens":2}}"#,
        r#"{"type":"message_delta","usage":{"cache_creation":{"ephemeral_5m_input_tokens":18446744073709551615,"ephemeral_1h_input_tokens":1}}}"#,
        r#"{"type":"error","error":{"type":"overloaded_error","message":"x"}}"#,
        r#"{"usage":{"input_tokens":1}}"#,
        "\"message_",
        "\"error\"",
        "\n",
        "\r\n",
        "\r",
        " ",
    ];
    let piece = prop_oneof![
        4 => prop::sample::select(PIECES).prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

fn soup_and_cuts() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    sse_soup().prop_flat_map(|b| {
        let n = b.len();
        (Just(b), cuts(n))
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_bytes_at_any_chunking_read_as_when_whole((bytes, at) in bytes_and_cuts(512)) {
        prop_assert_eq!(read(&chunks(&bytes, &at)), read(&[&bytes]));
    }

    #[test]
    fn sse_like_bytes_at_any_chunking_read_as_when_whole((bytes, at) in soup_and_cuts()) {
        prop_assert_eq!(read(&chunks(&bytes, &at)), read(&[&bytes]));
    }

    #[test]
    fn generated_streams_read_their_usage_at_any_chunking((s, bytes, at) in stream_and_cuts()) {
        let expected = s.expected();
        prop_assert_eq!(&read(&[&bytes]), &expected);
        prop_assert_eq!(&read(&chunks(&bytes, &at)), &expected);
        // One byte at a time.
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(&read(&bytewise), &expected);
    }

    #[test]
    fn json_usage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_json_usage(&bytes);
    }

    #[test]
    fn json_usage_reads_a_generated_body(model in any::<String>(), u in usage()) {
        let body = format!(
            r#"{{"id":"msg_1","type":"message","model":{},"content":[{{"type":"text","text":"hi"}}],"usage":{}}}"#,
            serde_json::to_string(&model).unwrap(),
            u.json()
        );
        let mut expected = TokenUsage::default();
        u.apply(&mut expected);
        prop_assert_eq!(parse_json_usage(body.as_bytes()), Some((expected, Some(model))));
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// Every two-way split of a generated stream (quadratic, hence fewer cases).
    #[test]
    fn generated_streams_read_their_usage_at_every_split(s in stream()) {
        let bytes = s.bytes();
        let expected = s.expected();
        for at in 0..=bytes.len() {
            prop_assert_eq!(&read(&[&bytes[..at], &bytes[at..]]), &expected, "split at {}", at);
        }
    }
}
