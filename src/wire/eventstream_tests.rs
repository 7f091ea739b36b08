use super::*;

/// Bedrock's `invoke-with-response-stream` answer as recorded: nine `chunk` events.
pub(crate) const BEDROCK_STREAM: &[u8] =
    include_bytes!("../../tests/fixtures/responses/bedrock-invoke-with-response-stream.eventstream");

/// Encodes one frame with string headers, independently of the decoder (for tests that need
/// frames the fixture does not have).
pub(crate) fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        h.push(7);
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = (PRELUDE_LEN + h.len() + payload.len() + 4) as u32;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// A Bedrock `chunk` event frame.
pub(crate) fn event_frame(payload: &[u8]) -> Vec<u8> {
    frame(
        &[
            (":event-type", "chunk"),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload,
    )
}

/// A modeled exception frame, as Bedrock ends a stream on throttling and the like.
pub(crate) fn exception_frame(kind: &str, message: &str) -> Vec<u8> {
    let payload = serde_json::json!({ "message": message }).to_string();
    frame(
        &[
            (":exception-type", kind),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        payload.as_bytes(),
    )
}

/// Every message of `parts` pushed one after another, draining after each push; the error that
/// stopped decoding, if any.
fn decode(parts: &[&[u8]]) -> (Vec<Message>, Option<FrameError>) {
    let mut d = EventStreamDecoder::new();
    let mut out = Vec::new();
    for part in parts {
        d.push(part);
        loop {
            match d.next_message() {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

#[test]
fn the_recorded_stream_is_nine_chunk_events() {
    let (messages, err) = decode(&[BEDROCK_STREAM]);
    assert_eq!(err, None);
    assert_eq!(messages.len(), 9);
    for m in &messages {
        assert_eq!(m.kind, MessageKind::Event);
        assert_eq!(m.event_type, "chunk");
        assert_eq!(m.error_message, None);
        assert!(m.payload.starts_with(br#"{"bytes": ""#), "{:?}", m.payload);
    }
}

#[test]
fn every_split_point_and_bytewise_decode_the_same() {
    let (whole, _) = decode(&[BEDROCK_STREAM]);
    for at in 0..=BEDROCK_STREAM.len() {
        let (split, err) = decode(&[&BEDROCK_STREAM[..at], &BEDROCK_STREAM[at..]]);
        assert_eq!(err, None, "split at {at}");
        assert_eq!(split, whole, "split at {at}");
    }
    let bytewise: Vec<&[u8]> = BEDROCK_STREAM.chunks(1).collect();
    assert_eq!(decode(&bytewise), (whole, None));
}

#[test]
fn partial_frames_are_reported() {
    let mut d = EventStreamDecoder::new();
    assert!(!d.has_partial());
    d.push(&BEDROCK_STREAM[..5]);
    assert_eq!(d.next_message(), Ok(None));
    assert!(d.has_partial());
    let first_len = u32::from_be_bytes([
        BEDROCK_STREAM[0],
        BEDROCK_STREAM[1],
        BEDROCK_STREAM[2],
        BEDROCK_STREAM[3],
    ]) as usize;
    d.push(&BEDROCK_STREAM[5..first_len]);
    assert!(d.next_message().unwrap().is_some());
    assert_eq!(d.next_message(), Ok(None));
    assert!(!d.has_partial());
}

#[test]
fn exception_and_error_frames() {
    let mut bytes = exception_frame("throttlingException", "slow down");
    bytes.extend(frame(
        &[
            (":message-type", "error"),
            (":error-code", "InternalFailure"),
            (":error-message", "boom"),
        ],
        b"",
    ));
    let (messages, err) = decode(&[&bytes]);
    assert_eq!(err, None);
    assert_eq!(
        messages,
        vec![
            Message {
                kind: MessageKind::Exception,
                event_type: "throttlingException".into(),
                error_message: None,
                payload: Bytes::from_static(br#"{"message":"slow down"}"#),
            },
            Message {
                kind: MessageKind::Error,
                event_type: "InternalFailure".into(),
                error_message: Some("boom".into()),
                payload: Bytes::new(),
            },
        ]
    );
}

#[test]
fn headers_of_other_types_are_skipped() {
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::Message as SmithyMessage;
    let m = SmithyMessage::new(&b"{}"[..])
        .add_header(Header::new("flag", HeaderValue::Bool(true)))
        .add_header(Header::new(":event-type", HeaderValue::Int32(7)))
        .add_header(Header::new(":message-type", HeaderValue::String("event".into())))
        .add_header(Header::new("id", HeaderValue::Uuid(42)));
    let mut bytes = Vec::new();
    write_message_to(&m, &mut bytes).unwrap();
    let (messages, err) = decode(&[&bytes]);
    assert_eq!(err, None);
    assert_eq!(messages[0].kind, MessageKind::Event);
    // Not a string: read as missing.
    assert_eq!(messages[0].event_type, "");
}

#[test]
fn a_corrupted_payload_byte_fails_the_message_checksum() {
    let mut bytes = BEDROCK_STREAM.to_vec();
    bytes[200] ^= 1;
    let (messages, err) = decode(&[&bytes]);
    assert!(messages.is_empty());
    assert!(matches!(err, Some(FrameError::Invalid(_))), "{err:?}");
}

#[test]
fn a_corrupted_prelude_fails_before_the_frame_is_whole() {
    let mut bytes = BEDROCK_STREAM.to_vec();
    bytes[2] ^= 0x40;
    let (messages, err) = decode(&[&bytes[..PRELUDE_LEN]]);
    assert!(messages.is_empty());
    assert_eq!(err, Some(FrameError::PreludeChecksum));
}

#[test]
fn errors_are_sticky() {
    let mut bytes = BEDROCK_STREAM.to_vec();
    bytes[200] ^= 1;
    let mut d = EventStreamDecoder::new();
    d.push(&bytes);
    let first = d.next_message().unwrap_err();
    d.push(BEDROCK_STREAM);
    assert_eq!(d.next_message(), Err(first));
    assert!(!d.has_partial());
}

/// A prelude declaring `total` bytes with `headers` bytes of headers, its CRC right.
fn prelude(total: u32, headers: u32) -> Vec<u8> {
    let mut p = total.to_be_bytes().to_vec();
    p.extend_from_slice(&headers.to_be_bytes());
    let crc = crc32fast::hash(&p);
    p.extend_from_slice(&crc.to_be_bytes());
    p
}

#[test]
fn frame_size_limits() {
    let over = (MAX_FRAME + 1) as u32;
    assert_eq!(
        decode(&[&prelude(over, 0)]).1,
        Some(FrameError::TooLarge(u64::from(over)))
    );
    assert_eq!(
        decode(&[&prelude(u32::MAX, 0)]).1,
        Some(FrameError::TooLarge(u64::from(u32::MAX)))
    );
    assert_eq!(
        decode(&[&prelude(15, 0)]).1,
        Some(FrameError::BadLength { total: 15, headers: 0 })
    );
    assert_eq!(
        decode(&[&prelude(20, 5)]).1,
        Some(FrameError::BadLength { total: 20, headers: 5 })
    );
    // Exactly the limit is waited for.
    let (messages, err) = decode(&[&prelude(MAX_FRAME as u32, 0)]);
    assert!(messages.is_empty());
    assert_eq!(err, None);
}

#[test]
fn an_empty_frame_has_no_message_type() {
    assert_eq!(decode(&[&frame(&[], b"")]).1, Some(FrameError::NoMessageType));
    assert_eq!(
        decode(&[&frame(&[(":message-type", "gossip")], b"")]).1,
        Some(FrameError::UnknownMessageType("gossip".into()))
    );
}

mod props {
    use proptest::prelude::*;

    use super::*;
    use crate::test_props::{bytes_and_cuts, chunks, config, cuts};

    fn frames() -> impl Strategy<Value = Vec<u8>> {
        let one = prop_oneof![
            3 => prop::collection::vec(any::<u8>(), 0..300).prop_map(|p| event_frame(&p)),
            1 => (any::<String>(), any::<String>()).prop_map(|(k, m)| exception_frame(&k, &m)),
        ];
        prop::collection::vec(one, 0..8).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn any_chunking_decodes_as_whole(
            (bytes, at) in frames().prop_flat_map(|b| { let n = b.len(); (Just(b), cuts(n)) })
        ) {
            let whole = decode(&[&bytes]);
            prop_assert_eq!(&whole.1, &None);
            prop_assert_eq!(decode(&chunks(&bytes, &at)), whole);
        }

        #[test]
        fn any_bytes_never_panic((bytes, at) in bytes_and_cuts(512)) {
            let whole = decode(&[&bytes]);
            prop_assert_eq!(decode(&chunks(&bytes, &at)), whole);
        }
    }
}
