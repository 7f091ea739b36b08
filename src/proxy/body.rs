//! The request body: parsed once, at the top level only, into [`filters::RequestFacts`]; and the
//! one rewrite the relay makes, the top-level `model`, spliced in place so every other byte passes
//! untouched (unknown fields, `role:"system"` messages, key order, whitespace).

use std::borrow::Cow;
use std::io::Read;

use bytes::{Bytes, BytesMut};
use filters::RequestFacts;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::RelayError;

#[derive(Deserialize)]
struct TopLevel<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
    #[serde(default)]
    max_tokens: Option<serde_json::Value>,
    /// OpenAI Chat Completions' newer name of the output limit.
    #[serde(default)]
    max_completion_tokens: Option<serde_json::Value>,
    /// OpenAI Responses' output limit.
    #[serde(default)]
    max_output_tokens: Option<serde_json::Value>,
    /// Gemini's `generationConfig` (its `maxOutputTokens`).
    #[serde(borrow, default, rename = "generationConfig")]
    generation_config: Option<&'a RawValue>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow, default)]
    system: Option<&'a RawValue>,
    #[serde(default)]
    prompt_cache_key: Option<serde_json::Value>,
    #[serde(default)]
    user_prompt_id: Option<serde_json::Value>,
    #[serde(borrow, default)]
    speed: Option<&'a RawValue>,
}

/// Largest zstd window accepted in a compressed request body (8 MiB): what compressors use at
/// every standard level, without letting one request make the relay allocate 128 MiB.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// The request body with its `content-encoding` undone (gzip, deflate, br, zstd, in the order
/// they were applied), at most `limit` bytes once decoded. An encoding the relay does not know is
/// refused with 415; a body that does not decode, with 400.
pub fn decode_content(headers: &http::HeaderMap, body: Bytes, limit: usize) -> Result<Bytes, RelayError> {
    let mut codings: Vec<String> = Vec::new();
    for v in headers.get_all(http::header::CONTENT_ENCODING) {
        let v = v
            .to_str()
            .map_err(|_| RelayError::UnsupportedMediaType("Unsupported Content-Encoding".into()))?;
        codings.extend(
            v.split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty() && c != "identity"),
        );
    }
    if codings.len() > 2 {
        return Err(RelayError::UnsupportedMediaType(
            "At most two Content-Encodings are decoded".into(),
        ));
    }
    let mut data = body;
    for coding in codings.iter().rev() {
        let src = &data[..];
        data = match coding.as_str() {
            "gzip" | "x-gzip" => read_decoded(flate2::read::MultiGzDecoder::new(src), "gzip", limit)?,
            "deflate" => read_decoded(flate2::read::ZlibDecoder::new(src), "deflate", limit)?,
            "br" => read_decoded(brotli::Decompressor::new(src, 16 * 1024), "br", limit)?,
            "zstd" => {
                let mut d = zstd::stream::read::Decoder::new(src)
                    .map_err(|e| RelayError::BadRequest(format!("Request body is not valid zstd: {e}")))?;
                d.window_log_max(ZSTD_WINDOW_LOG_MAX)
                    .map_err(|e| RelayError::Internal(format!("zstd decoder: {e}")))?;
                read_decoded(d, "zstd", limit)?
            }
            other => {
                let shown: String = other.chars().take(40).collect();
                return Err(RelayError::UnsupportedMediaType(format!(
                    "Unsupported Content-Encoding `{shown}`: send the body plain, or as gzip, deflate, br or zstd"
                )));
            }
        };
    }
    Ok(data)
}

fn read_decoded(reader: impl Read, name: &str, limit: usize) -> Result<Bytes, RelayError> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| RelayError::BadRequest(format!("Request body is not valid {name}: {e}")))?;
    if out.len() > limit {
        return Err(RelayError::PayloadTooLarge(limit));
    }
    Ok(Bytes::from(out))
}

/// Longest model name accepted. Real names are far shorter (a Bedrock inference-profile ARN is
/// about 100 characters); the name becomes a statistics dimension, so it must stay bounded.
pub const MAX_MODEL_LEN: usize = 256;

/// Refuses model names no upstream uses: too long, or with spaces, control or non-ASCII
/// characters.
fn check_model(model: &str) -> Result<(), RelayError> {
    if model.len() > MAX_MODEL_LEN {
        return Err(RelayError::BadRequest(format!(
            "`model` is longer than {MAX_MODEL_LEN} characters"
        )));
    }
    if !model.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RelayError::BadRequest(
            "`model` may contain only visible ASCII characters (letters, digits and punctuation such as - . _ : / @)"
                .into(),
        ));
    }
    Ok(())
}

/// The parsed facts plus where the model value sits in the body.
pub struct ParsedBody {
    pub facts: RequestFacts,
    /// The output limit the request names, in whichever dialect's field (`max_tokens`,
    /// `max_completion_tokens`, `max_output_tokens`, `generationConfig.maxOutputTokens`).
    pub max_output: Option<u64>,
    /// Byte range of the top-level `model` value (including its quotes).
    model_span: Option<(usize, usize)>,
}

/// Parses the top level of a JSON request body. Nested values are skipped, not built.
#[cfg(test)]
pub fn parse(body: &[u8], require_model: bool) -> Result<ParsedBody, RelayError> {
    parse_with_headers(body, require_model, None)
}

/// Like [`parse`], also finding the request's session id (which may come from a header).
pub fn parse_with_headers(
    body: &[u8],
    require_model: bool,
    headers: Option<&http::HeaderMap>,
) -> Result<ParsedBody, RelayError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(RelayError::BadRequest("Request body must be a JSON object".into()));
    }
    let top: TopLevel<'_> = serde_json::from_slice(body)
        .map_err(|e| RelayError::BadRequest(format!("Request body is not valid JSON: {e}")))?;
    let (model, model_span) = match top.model {
        Some(raw) => {
            let s: String = serde_json::from_str(raw.get())
                .map_err(|_| RelayError::BadRequest("`model` must be a string".into()))?;
            let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
            (Some(s), Some((start, start + raw.get().len())))
        }
        None => (None, None),
    };
    if require_model && model.as_deref().is_none_or(|m| m.trim().is_empty()) {
        return Err(RelayError::BadRequest("`model` is required".into()));
    }
    if let Some(m) = &model {
        check_model(m)?;
    }
    let stream = match top.stream {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => b,
        Some(_) => return Err(RelayError::BadRequest("`stream` must be a boolean".into())),
    };
    let max_tokens = match top.max_tokens {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| RelayError::BadRequest("`max_tokens` must be a non-negative integer".into()))?,
        ),
    };
    // Read leniently: only `max_tokens` is checked (it is a fact); the others only bound a
    // reservation, and the upstream judges them.
    let max_output = max_tokens
        .or_else(|| top.max_completion_tokens.as_ref().and_then(serde_json::Value::as_u64))
        .or_else(|| top.max_output_tokens.as_ref().and_then(serde_json::Value::as_u64))
        .or_else(|| {
            #[derive(Deserialize)]
            struct GenerationConfig {
                #[serde(rename = "maxOutputTokens")]
                max_output_tokens: Option<u64>,
            }
            top.generation_config
                .and_then(|g| serde_json::from_str::<GenerationConfig>(g.get()).ok())
                .and_then(|g| g.max_output_tokens)
        });
    let session = headers.and_then(|h| {
        let string = |v: Option<serde_json::Value>| match v {
            Some(serde_json::Value::String(s)) => Some(s),
            _ => None,
        };
        let hints = crate::scheduler::session::SessionHints {
            metadata: top.metadata,
            system: top.system,
            prompt_cache_key: string(top.prompt_cache_key),
            user_prompt_id: string(top.user_prompt_id),
        };
        crate::scheduler::session::session_id(h, &hints)
    });
    // Read, never checked: the upstream judges the value. Decoded, so an escaped spelling
    // (`"\u0066ast"`) is fast too.
    let fast = top
        .speed
        .is_some_and(|v| serde_json::from_str::<Cow<'_, str>>(v.get()).is_ok_and(|s| s == "fast"));
    Ok(ParsedBody {
        facts: RequestFacts {
            model,
            stream,
            max_tokens,
            session,
            fast,
            reserve_nanos: None,
            input_tokens: None,
        },
        max_output,
        model_span,
    })
}

impl ParsedBody {
    /// Names the model of a request whose body does not (the Gemini API has it in the path, Code
    /// Assist's `countTokens` nested), checked like a body's. The body keeps its bytes.
    pub fn set_model(&mut self, model: String) -> Result<(), RelayError> {
        if model.trim().is_empty() {
            return Err(RelayError::BadRequest("the model is required".into()));
        }
        check_model(&model)?;
        self.facts.model = Some(model);
        self.model_span = None;
        Ok(())
    }

    /// The body with the top-level model replaced, or the original bytes when nothing changes.
    pub fn with_model(&self, body: &Bytes, upstream_model: &str) -> Bytes {
        match (&self.facts.model, self.model_span) {
            (Some(m), Some((start, end))) if m != upstream_model => {
                let encoded = serde_json::to_string(upstream_model).unwrap_or_else(|_| format!("\"{upstream_model}\""));
                let mut out = BytesMut::with_capacity(body.len() - (end - start) + encoded.len());
                out.extend_from_slice(&body[..start]);
                out.extend_from_slice(encoded.as_bytes());
                out.extend_from_slice(&body[end..]);
                out.freeze()
            }
            _ => body.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_and_errors() {
        let p = parse(
            br#"{"model":"claude-x","stream":true,"max_tokens":5,"messages":[]}"#,
            true,
        )
        .unwrap();
        assert_eq!(p.facts.model.as_deref(), Some("claude-x"));
        assert!(p.facts.stream);
        assert_eq!(p.facts.max_tokens, Some(5));
        assert!(matches!(parse(b"[1]", true), Err(RelayError::BadRequest(_))));
        assert!(matches!(parse(b"{\"model\":", true), Err(RelayError::BadRequest(_))));
        assert!(matches!(
            parse(b"{\"messages\":[]}", true),
            Err(RelayError::BadRequest(_))
        ));
        assert!(matches!(parse(b"{\"model\":5}", true), Err(RelayError::BadRequest(_))));
        assert!(matches!(
            parse(b"{\"model\":\"m\",\"stream\":\"yes\"}", true),
            Err(RelayError::BadRequest(_))
        ));
        assert!(parse(b"{\"messages\":[]}", false).is_ok());
    }

    #[test]
    fn fast_mode_is_read_from_the_body_speed() {
        let fast = |body: &[u8]| parse(body, true).unwrap().facts.fast;
        assert!(fast(br#"{"model":"claude-opus-4-8","speed":"fast","messages":[]}"#));
        assert!(fast(br#"{"model":"claude-opus-4-8","speed" : "fast"}"#));
        assert!(!fast(br#"{"model":"claude-opus-4-8","speed":"standard"}"#));
        assert!(!fast(br#"{"model":"claude-opus-4-8","speed":null}"#));
        assert!(!fast(br#"{"model":"claude-opus-4-8"}"#));
        // Nested `speed` (a tool's input schema, say) is not the request's.
        assert!(!fast(br#"{"model":"claude-opus-4-8","metadata":{"speed":"fast"}}"#));
        // An odd value is the upstream's to refuse, not the relay's.
        assert!(!fast(br#"{"model":"claude-opus-4-8","speed":5}"#));
        assert!(fast(br#"{"model":"claude-opus-4-8","speed":"\u0066ast"}"#));
    }

    #[test]
    fn the_output_limit_is_read_from_every_dialects_field() {
        let limit = |b: &str| parse(b.as_bytes(), false).unwrap().max_output;
        assert_eq!(limit(r#"{"max_tokens":5}"#), Some(5));
        assert_eq!(limit(r#"{"max_completion_tokens":6}"#), Some(6));
        assert_eq!(limit(r#"{"max_output_tokens":7}"#), Some(7));
        assert_eq!(
            limit(r#"{"generationConfig":{"temperature":1,"maxOutputTokens":8}}"#),
            Some(8)
        );
        assert_eq!(limit(r#"{"messages":[]}"#), None);
        // Only max_tokens is checked; the others are read leniently.
        assert_eq!(limit(r#"{"max_output_tokens":"x","generationConfig":5}"#), None);
    }

    #[test]
    fn compressed_bodies_are_decoded_within_the_limit() {
        use std::io::Write;
        let plain = br#"{"model":"claude-sonnet-4-5","messages":[]}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(plain).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&plain[..], 3).unwrap();
        let mut br = Vec::new();
        brotli::CompressorWriter::new(&mut br, 4096, 5, 22)
            .write_all(plain)
            .unwrap();
        let headers = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::CONTENT_ENCODING, v.parse().unwrap());
            h
        };
        for (enc, body) in [
            ("gzip", gz.clone()),
            ("zstd", zst),
            ("br", br),
            ("identity", plain.to_vec()),
        ] {
            let out = decode_content(&headers(enc), Bytes::from(body), 1024).unwrap();
            assert_eq!(&out[..], &plain[..], "{enc}");
        }
        assert!(matches!(
            decode_content(&headers("gzip"), Bytes::from(gz), 10),
            Err(RelayError::PayloadTooLarge(10))
        ));
        assert!(matches!(
            decode_content(&headers("gzip"), Bytes::from_static(plain), 1024),
            Err(RelayError::BadRequest(_))
        ));
        assert!(matches!(
            decode_content(&headers("compress"), Bytes::from_static(plain), 1024),
            Err(RelayError::UnsupportedMediaType(_))
        ));
        let none = http::HeaderMap::new();
        assert_eq!(
            &decode_content(&none, Bytes::from_static(plain), 1024).unwrap()[..],
            &plain[..]
        );
    }

    #[test]
    fn absurd_model_names_are_refused() {
        let long = format!("{{\"model\":\"{}\"}}", "m".repeat(MAX_MODEL_LEN + 1));
        assert!(matches!(parse(long.as_bytes(), true), Err(RelayError::BadRequest(_))));
        let at_limit = format!("{{\"model\":\"{}\"}}", "m".repeat(MAX_MODEL_LEN));
        assert!(parse(at_limit.as_bytes(), true).is_ok());
        for bad in [r#""claude x""#, r#""claude\n""#, r#""claudé""#, r#""a\u0000b""#] {
            let body = format!("{{\"model\":{bad}}}");
            assert!(
                matches!(parse(body.as_bytes(), true), Err(RelayError::BadRequest(_))),
                "{bad}"
            );
        }
        for good in [
            "claude-sonnet-4-5-20250929",
            "claude-sonnet-4-5[1m]",
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
            "claude-3-5-sonnet-v2@20241022",
            "anthropic/claude-3.5-sonnet",
        ] {
            let body = format!("{{\"model\":\"{good}\"}}");
            assert!(parse(body.as_bytes(), true).is_ok(), "{good}");
        }
    }

    #[test]
    fn model_rewrite_touches_nothing_else() {
        let raw = Bytes::from_static(
            br#"{ "z":1, "model" : "claude-sonnet-4-5", "messages":[{"role":"system","content":"x","model":"keep"}], "unknown":{"a":[1,2]} }"#,
        );
        let p = parse(&raw, true).unwrap();
        let out = p.with_model(&raw, "claude-sonnet-4-5-20250929");
        let expected =
            String::from_utf8_lossy(&raw).replacen("\"claude-sonnet-4-5\"", "\"claude-sonnet-4-5-20250929\"", 1);
        assert_eq!(String::from_utf8_lossy(&out), expected);
        // Unmapped: the very same buffer.
        let same = p.with_model(&raw, "claude-sonnet-4-5");
        assert_eq!(same.as_ptr(), raw.as_ptr());
    }

    #[test]
    fn escaped_model_names() {
        let raw = Bytes::from_static(br#"{"model":"a\u0062c"}"#);
        let p = parse(&raw, true).unwrap();
        assert_eq!(p.facts.model.as_deref(), Some("abc"));
        assert_eq!(&p.with_model(&raw, "x\"y")[..], br#"{"model":"x\"y"}"#);
    }
}

#[cfg(test)]
#[path = "body_props.rs"]
mod props;
