//! Property tests of the OpenAI usage readers: any bytes at any chunking never panic and read the
//! same as when fed whole.

use proptest::prelude::*;

use super::tests::{read_chat, read_responses};
use crate::test_props::{bytes_and_cuts, chunks, config, cuts};

/// Pieces of OpenAI SSE that reach the readers' interesting states.
fn soup() -> impl Strategy<Value = Vec<u8>> {
    const PIECES: &[&str] = &[
        "event: response.completed",
        "event: response.failed",
        "event: response.output_text.delta",
        "event: error",
        "event:",
        "data: ",
        "data:",
        "dat",
        "[DONE]",
        r#"{"type":"response.completed","response":{"usage":{"input_tokens":3,"output_tokens":5}}}"#,
        r#"{"type":"response.failed","response":{"error":{"code":"c","message":"m"}}}"#,
        r#"{"type":"response.output_text.delta","delta":"\"usage\":{"}"#,
        r#"{"type":"error","code":"x","message":"y"}"#,
        r#"{"response":{"usage":{"input_tokens":1}}}"#,
        r#"{"id":"c","model":"gpt-5","choices":[{"delta":{"content":"hi"}}],"usage":null}"#,
        r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":4}}}"#,
        r#"{"error":{"message":"m","type":"t"}}"#,
        "\"usage\":",
        "\"model\":",
        "\"error\":",
        "{",
        "\"",
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
    soup().prop_flat_map(|b| {
        let n = b.len();
        (Just(b), cuts(n))
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn chat_any_bytes_at_any_chunking_read_as_when_whole((bytes, at) in bytes_and_cuts(512)) {
        prop_assert_eq!(read_chat(&chunks(&bytes, &at)), read_chat(&[&bytes]));
    }

    #[test]
    fn chat_sse_like_bytes_at_any_chunking_read_as_when_whole((bytes, at) in soup_and_cuts()) {
        prop_assert_eq!(read_chat(&chunks(&bytes, &at)), read_chat(&[&bytes]));
    }

    #[test]
    fn responses_any_bytes_at_any_chunking_read_as_when_whole((bytes, at) in bytes_and_cuts(512)) {
        prop_assert_eq!(read_responses(&chunks(&bytes, &at)), read_responses(&[&bytes]));
    }

    #[test]
    fn responses_sse_like_bytes_at_any_chunking_read_as_when_whole((bytes, at) in soup_and_cuts()) {
        prop_assert_eq!(read_responses(&chunks(&bytes, &at)), read_responses(&[&bytes]));
    }
}
