//! Property tests of the request-body reader and the model splice: any bytes never panic; for a
//! generated JSON object, `with_model(x)` gives valid JSON whose top-level model is `x`, every
//! other byte unchanged.

use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::test_props::config;

/// Top-level names the reader gives a type to; the generated objects leave them out (or give
/// them values of their type), so that a generated body is always accepted.
const TYPED: [&str; 7] = [
    "model",
    "stream",
    "max_tokens",
    "metadata",
    "system",
    "prompt_cache_key",
    "user_prompt_id",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        Just(Value::from("model")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            // Nested objects may well have a `model` of their own: it must stay as it is.
            prop::collection::vec((prop_oneof![Just("model".to_string()), any::<String>()], inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A JSON string literal for `s`: plain, or with every character as a `\u` escape (surrogate
/// pairs beyond the BMP), or with only the non-ASCII ones escaped.
fn string_literal(s: &str, style: u8) -> String {
    match style % 3 {
        0 => serde_json::to_string(s).unwrap(),
        _ => {
            let mut out = String::from("\"");
            for c in s.chars() {
                if style % 3 == 2 && c.is_ascii() && c != '"' && c != '\\' && !c.is_ascii_control() {
                    out.push(c);
                    continue;
                }
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            out.push('"');
            out
        }
    }
}

/// A generated request body: the text, where the model value sits in it, and its other members.
#[derive(Debug, Clone)]
struct Body {
    text: String,
    model: String,
    model_span: (usize, usize),
    others: serde_json::Map<String, Value>,
}

fn body() -> impl Strategy<Value = Body> {
    let member = (
        any::<String>().prop_filter("untyped name", |k| !TYPED.contains(&k.as_str())),
        json_value(),
    );
    (
        prop::collection::vec(member, 0..5),
        // Model names the relay accepts: visible ASCII (quotes and backslashes included, which
        // the literal styles escape); others are refused before any splice.
        "[!-~]{0,64}",
        0..6usize,
        any::<u8>(),
        prop::sample::select(vec!["", " ", "\n  ", "\t", "\r\n"]),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(members, model, at, style, ws, stream, max_tokens)| {
            let mut others = serde_json::Map::new();
            for (k, v) in members {
                others.insert(k, v);
            }
            if let Some(s) = stream {
                others.insert("stream".into(), Value::from(s));
            }
            if let Some(m) = max_tokens {
                others.insert("max_tokens".into(), Value::from(m));
            }
            let mut parts: Vec<String> = others
                .iter()
                .map(|(k, v)| format!("{}{ws}:{ws}{}", serde_json::to_string(k).unwrap(), v))
                .collect();
            let at = at.min(parts.len());
            let literal = string_literal(&model, style);
            let before: String = parts[..at].iter().map(|p| format!("{p},{ws}")).collect();
            let mut text = format!("{ws}{{{ws}{before}\"model\"{ws}:{ws}");
            let start = text.len();
            text.push_str(&literal);
            let end = text.len();
            let after: Vec<String> = parts.drain(at..).collect();
            for p in &after {
                text.push_str(&format!(",{ws}{p}"));
            }
            text.push_str(&format!("{ws}}}{ws}"));
            Body {
                text,
                model,
                model_span: (start, end),
                others,
            }
        })
}

fn without_model(v: &Value) -> serde_json::Map<String, Value> {
    let mut m = v.as_object().cloned().unwrap_or_default();
    m.remove("model");
    m
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), require in any::<bool>()) {
        let _ = parse(&bytes, require);
        let mut h = http::HeaderMap::new();
        h.insert("session-id", http::HeaderValue::from_static("s"));
        let _ = parse_with_headers(&bytes, require, Some(&h));
    }

    #[test]
    fn json_like_bytes_never_panic(v in json_value(), cut in any::<prop::sample::Index>(), junk in any::<u8>()) {
        // A valid document cut short, or with one byte changed.
        let text = format!("{{\"model\":\"m\",\"x\":{v}}}").into_bytes();
        let mut b = text[..cut.index(text.len() + 1)].to_vec();
        let _ = parse(&b, true);
        if !b.is_empty() {
            let i = cut.index(b.len());
            b[i] = junk;
            let _ = parse(&b, true);
        }
    }

    #[test]
    fn with_model_replaces_only_the_top_level_model(b in body(), to in any::<String>()) {
        let raw = Bytes::from(b.text.clone());
        let parsed = parse(&raw, false).unwrap();
        prop_assert_eq!(parsed.facts.model.as_deref(), Some(b.model.as_str()));
        let out = parsed.with_model(&raw, &to);
        let v: Value = serde_json::from_slice(&out).unwrap();
        prop_assert_eq!(v["model"].as_str(), Some(to.as_str()));
        let before: Value = serde_json::from_str(&b.text).unwrap();
        prop_assert_eq!(&without_model(&v), &without_model(&before));
        prop_assert_eq!(without_model(&before).len(), b.others.len());
        // Byte for byte: only the model's value changed (and not at all when it is the same name).
        let (start, end) = b.model_span;
        if to == b.model {
            prop_assert_eq!(&out[..], b.text.as_bytes());
        } else {
            let expected = format!("{}{}{}", &b.text[..start], serde_json::to_string(&to).unwrap(), &b.text[end..]);
            prop_assert_eq!(&out[..], expected.as_bytes());
        }
        // The rewritten body reads back with the new model (when it is one clients may send).
        if to.len() <= super::MAX_MODEL_LEN && to.bytes().all(|b| b.is_ascii_graphic()) {
            prop_assert_eq!(parse(&out, false).unwrap().facts.model, Some(to));
        }
    }
}

fn encoded_headers(encoding: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(encoding) {
        h.insert(http::header::CONTENT_ENCODING, v);
    }
    h
}

proptest! {
    #![proptest_config(config(128))]

    /// Compressed bodies are untrusted bytes: whatever they hold, decoding answers (a body within
    /// the limit, 400, 413 or 415) and never panics or grows past the limit.
    #[test]
    fn any_bytes_under_any_encoding_decode_or_are_refused(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        encoding in prop::sample::select(vec!["gzip", "x-gzip", "deflate", "br", "zstd", "identity", "gzip, br", "compress", "zstd, zstd, zstd", ""]),
        limit in 1usize..4096,
    ) {
        match super::decode_content(&encoded_headers(encoding), Bytes::from(bytes), limit) {
            Ok(out) if !matches!(encoding, "identity" | "") => prop_assert!(out.len() <= limit),
            Ok(_) => {}
            Err(e) => prop_assert!(matches!(e.status(), 400 | 413 | 415), "{:?}", e),
        }
    }

    /// What a client compressed comes back whole, whatever the codec, within the limit.
    #[test]
    fn compressed_bodies_round_trip(body in prop::collection::vec(any::<u8>(), 0..4096), codec in 0..4usize) {
        use std::io::Write;
        let (encoding, packed) = match codec {
            0 => {
                let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                w.write_all(&body).unwrap();
                ("gzip", w.finish().unwrap())
            }
            1 => {
                let mut w = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                w.write_all(&body).unwrap();
                ("deflate", w.finish().unwrap())
            }
            2 => {
                let mut out = Vec::new();
                brotli::CompressorWriter::new(&mut out, 4096, 3, 20).write_all(&body).unwrap();
                ("br", out)
            }
            _ => ("zstd", zstd::encode_all(&body[..], 1).unwrap()),
        };
        let out = super::decode_content(&encoded_headers(encoding), Bytes::from(packed.clone()), 4096).unwrap();
        prop_assert_eq!(&out[..], &body[..]);
        if !body.is_empty() {
            let e = super::decode_content(&encoded_headers(encoding), Bytes::from(packed), body.len() - 1).unwrap_err();
            prop_assert_eq!(e.status(), 413);
        }
    }
}
