//! The request body: parsed once, at the top level only, into [`filters::RequestFacts`]; and the
//! one rewrite the relay makes, the top-level `model`, spliced in place so every other byte passes
//! untouched (unknown fields, `role:"system"` messages, key order, whitespace).

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
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow, default)]
    system: Option<&'a RawValue>,
    #[serde(default)]
    prompt_cache_key: Option<serde_json::Value>,
    #[serde(default)]
    user_prompt_id: Option<serde_json::Value>,
}

/// The parsed facts plus where the model value sits in the body.
pub struct ParsedBody {
    pub facts: RequestFacts,
    /// Byte range of the top-level `model` value (including its quotes).
    model_span: Option<(usize, usize)>,
}

/// Parses the top level of a JSON request body. Nested values are skipped, not built.
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
    Ok(ParsedBody {
        facts: RequestFacts {
            model,
            stream,
            max_tokens,
            session,
        },
        model_span,
    })
}

impl ParsedBody {
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
