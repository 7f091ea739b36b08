use super::*;

const CHAT: &[u8] = include_bytes!("../../tests/fixtures/responses/openai-chat-stream-include-usage.sse");

const GOLDEN: TokenUsage = TokenUsage {
    input: 21,
    output: 7,
    cache_read: 3,
    cache_write_5m: 0,
    cache_write_1h: 0,
    reasoning: 0,
    billing: crate::usage::Billing::NONE,
};

fn request(body: &str, model: &str) -> (String, bool) {
    let (out, injected) = passthrough_request(body.as_bytes(), model).unwrap();
    (String::from_utf8(out.to_vec()).unwrap(), injected)
}

#[test]
fn model_is_spliced_and_other_bytes_kept() {
    let body = r#"{ "model" : "gpt-5", "messages":[{"role":"user","content":"say \"model\":\"gpt-5\""}], "stream": true, "stream_options": {"include_usage": true} }"#;
    let (out, injected) = request(body, "gpt-5-2025-08-07");
    assert_eq!(out, body.replacen(r#""gpt-5""#, r#""gpt-5-2025-08-07""#, 1));
    assert!(!injected);
    // Same name: the body as it came.
    assert_eq!(request(body, "gpt-5"), (body.to_owned(), false));
    // An escaped name is a name like any other.
    let (out, _) = request(r#"{"model":"gpt\u002d5","messages":[]}"#, "m");
    assert_eq!(out, r#"{"model":"m","messages":[]}"#);
}

#[test]
fn usage_is_asked_for_a_stream_that_did_not() {
    // No stream_options: inserted first.
    let (out, injected) = request(r#"{"model":"gpt-5","stream":true,"messages":[]}"#, "up");
    assert_eq!(
        out,
        r#"{"stream_options":{"include_usage":true},"model":"up","stream":true,"messages":[]}"#
    );
    assert!(injected);
    // null: replaced.
    let (out, injected) = request(r#"{"model":"up","stream":true,"stream_options":null}"#, "up");
    assert_eq!(
        out,
        r#"{"model":"up","stream":true,"stream_options":{"include_usage":true}}"#
    );
    assert!(injected);
    // Other options kept; include_usage false turned true.
    let (out, injected) = request(
        r#"{"model":"up","stream":true,"stream_options":{"include_obfuscation":false,"include_usage":false}}"#,
        "up",
    );
    assert_eq!(
        out,
        r#"{"model":"up","stream":true,"stream_options":{"include_obfuscation":false,"include_usage":true}}"#
    );
    assert!(injected);
    // Not streamed: untouched.
    let body = r#"{"model":"up","stream":false,"messages":[]}"#;
    assert_eq!(request(body, "up"), (body.to_owned(), false));
    let body = r#"{"model":"up","messages":[]}"#;
    assert_eq!(request(body, "up"), (body.to_owned(), false));
    // Not an object: the upstream's to refuse.
    let body = r#"{"model":"up","stream":true,"stream_options":"x"}"#;
    assert_eq!(request(body, "up"), (body.to_owned(), false));
}

#[test]
fn a_missing_model_is_inserted() {
    assert_eq!(request("{}", "up"), (r#"{"model":"up"}"#.to_owned(), false));
    assert_eq!(
        request(" {\"stream\":true}", "up"),
        (
            r#" {"model":"up","stream_options":{"include_usage":true},"stream":true}"#.to_owned(),
            true
        )
    );
}

#[test]
fn a_body_that_is_not_an_object_is_refused() {
    for body in ["", "[]", "nope", r#"{"model":"a","model":"b"}"#] {
        assert!(passthrough_request(body.as_bytes(), "up").is_err(), "{body}");
    }
}

/// Runs a stream split at `cuts` through a pass-through; returns what the client got.
fn run(p: &mut ChatSsePassThrough, stream: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain([&stream.len()]) {
        if let Some(b) = p.push(Bytes::copy_from_slice(&stream[at..cut])) {
            assert!(!b.is_empty());
            out.extend_from_slice(&b);
        }
        at = cut;
    }
    if let Some(b) = p.finish() {
        out.extend_from_slice(&b);
    }
    out
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

/// The output at every two-way split and byte by byte is `expected`; the usage is the recording's.
fn assert_at_every_split(strip: bool, rename: Option<(&str, &str)>, stream: &[u8], expected: &[u8]) {
    for k in 0..=stream.len() {
        let mut p = ChatSsePassThrough::new(strip, rename);
        assert_eq!(
            String::from_utf8(run(&mut p, stream, &[k])).unwrap(),
            String::from_utf8(expected.to_vec()).unwrap(),
            "split at {k}"
        );
        assert_eq!(p.usage(), GOLDEN);
        assert!(!p.failed());
    }
    let mut p = ChatSsePassThrough::new(strip, rename);
    let bytes: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(run(&mut p, stream, &bytes), expected);
    assert!(p.reader().saw_done());
}

/// The recording without its usage-only chunk and the blank line after it.
fn without_usage_chunk(stream: &[u8]) -> Vec<u8> {
    let usage = memmem::find(stream, br#""choices":[],"usage":{"#).unwrap();
    let start = memchr::memrchr(b'\n', &stream[..usage]).unwrap() + 1;
    let end = memmem::find(&stream[start..], b"data: [DONE]").unwrap() + start;
    [&stream[..start], &stream[end..]].concat()
}

#[test]
fn bytes_pass_untouched_when_nothing_is_edited() {
    for stream in [CHAT.to_vec(), to_crlf(CHAT)] {
        assert_at_every_split(false, None, &stream, &stream);
        // Renaming to the same name is no rename.
        assert_at_every_split(false, Some(("gpt-5", "gpt-5")), &stream, &stream);
        // A rename that never matches changes nothing either.
        assert_at_every_split(false, Some(("gpt-4o", "alias")), &stream, &stream);
    }
}

#[test]
fn the_same_bytes_are_passed_on_without_a_copy() {
    let chunk = Bytes::from_static(CHAT);
    let mut p = ChatSsePassThrough::new(false, None);
    assert_eq!(p.push(chunk.clone()).unwrap().as_ptr(), chunk.as_ptr());
    // Editing lines, a chunk of whole lines in which nothing changes is not copied either.
    let mut p = ChatSsePassThrough::new(true, Some(("gpt-4o", "alias")));
    let first = memmem::find(CHAT, b"\n\n").unwrap() + 2;
    let head = chunk.slice(..first);
    assert_eq!(p.push(head.clone()).unwrap().as_ptr(), head.as_ptr());
    assert_eq!(p.push(Bytes::new()), None);
}

#[test]
fn strip_usage_removes_exactly_the_usage_chunk() {
    for stream in [CHAT.to_vec(), to_crlf(CHAT)] {
        let expected = without_usage_chunk(&stream);
        assert!(memmem::find(&expected, b"\"usage\":{").is_none());
        assert_at_every_split(true, None, &stream, &expected);
    }
}

#[test]
fn rename_puts_the_clients_model_back() {
    let renamed = String::from_utf8(CHAT.to_vec())
        .unwrap()
        .replace(r#""model":"gpt-5""#, r#""model":"my-alias""#);
    assert_at_every_split(false, Some(("gpt-5", "my-alias")), CHAT, renamed.as_bytes());
    let both = without_usage_chunk(renamed.as_bytes());
    assert_at_every_split(true, Some(("gpt-5", "my-alias")), CHAT, &both);
    let crlf = to_crlf(CHAT);
    assert_at_every_split(true, Some(("gpt-5", "my-alias")), &crlf, &to_crlf(&both));
}

#[test]
fn rename_with_spaces_and_only_in_data_lines() {
    let stream = b"id: \"model\":\"up\"\ndata: {\"id\": \"c\", \"model\": \"up\", \"choices\": [{\"delta\": {\"content\": \"\\\"model\\\":\\\"up\\\"\"}}]}\n\n";
    let mut p = ChatSsePassThrough::new(false, Some(("up", "client")));
    let out = run(&mut p, stream, &[]);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "id: \"model\":\"up\"\ndata: {\"id\": \"c\", \"model\": \"client\", \"choices\": [{\"delta\": {\"content\": \"\\\"model\\\":\\\"up\\\"\"}}]}\n\n"
    );
}

#[test]
fn usage_on_a_chunk_with_choices_is_not_stripped() {
    let stream = b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":1}}\n\n\
data: {\"choices\":[],\"usage\":null}\n\ndata: [DONE]\n\n";
    let mut p = ChatSsePassThrough::new(true, None);
    assert_eq!(run(&mut p, stream, &[]), stream);
    assert_eq!(p.usage().input, 1);
}

#[test]
fn an_unfinished_last_line_is_released_at_the_end() {
    let stream = b"data: {\"model\":\"up\",\"choices\":[]}\n\ndata: {\"model\":\"up\"";
    let mut p = ChatSsePassThrough::new(true, Some(("up", "c")));
    assert_eq!(
        run(&mut p, stream, &[10]),
        b"data: {\"model\":\"c\",\"choices\":[]}\n\ndata: {\"model\":\"c\""
    );
    // An unfinished usage chunk is still the relay's.
    let stream = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}";
    let mut p = ChatSsePassThrough::new(true, None);
    assert_eq!(run(&mut p, stream, &[5]), b"");
}

#[test]
fn an_error_line_fails_the_stream() {
    let stream = b"data: {\"error\":{\"message\":\"Overloaded\",\"type\":\"server_error\"}}\n\n";
    let mut p = ChatSsePassThrough::new(true, None);
    assert_eq!(run(&mut p, stream, &[]), stream);
    assert!(p.failed());
}

mod props {
    use proptest::prelude::*;

    use super::*;
    use crate::test_props::{bytes_and_cuts, chunks, config, cuts};

    fn pass(parts: &[&[u8]], strip: bool, rename: Option<(&str, &str)>) -> (Vec<u8>, TokenUsage) {
        let mut p = ChatSsePassThrough::new(strip, rename);
        let mut out = Vec::new();
        for part in parts {
            out.extend_from_slice(&p.push(Bytes::copy_from_slice(part)).unwrap_or_default());
        }
        out.extend_from_slice(&p.finish().unwrap_or_default());
        (out, p.usage())
    }

    /// The recording with arbitrary bytes spliced in somewhere, and cut points within it.
    fn stream_and_cuts() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
        (bytes_and_cuts(256), 0..=CHAT.len()).prop_flat_map(|((bytes, _), at)| {
            let stream = [&CHAT[..at], &bytes, &CHAT[at..]].concat();
            let n = stream.len();
            (Just(stream), cuts(n))
        })
    }

    proptest! {
        #![proptest_config(config(128))]

        #[test]
        fn any_chunking_passes_as_when_whole((stream, at) in stream_and_cuts()) {
            let parts = chunks(&stream, &at);
            for (strip, rename) in [(false, None), (true, None), (true, Some(("gpt-5", "alias")))] {
                prop_assert_eq!(pass(&parts, strip, rename), pass(&[&stream], strip, rename));
            }
            prop_assert_eq!(pass(&parts, false, None).0, stream);
        }
    }
}
