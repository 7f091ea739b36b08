//! The body Bedrock's `InvokeModel` takes for Anthropic models: the Messages request without
//! `model` (it is in the path) and `stream` (the path says it), with
//! `"anthropic_version":"bedrock-2023-05-31"`, and the client's `anthropic-beta` flags in an
//! `anthropic_beta` array. Every other field passes through byte for byte, in the client's order.

use std::fmt;

use bytes::Bytes;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The `anthropic_version` Bedrock expects.
pub const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

/// A JSON object's top-level members in order, values left unparsed.
struct Members<'a>(Vec<(std::borrow::Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Members<'a>, M::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    let v: &'de RawValue = m.next_value()?;
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The beta flags of the client's `anthropic-beta` header lines, in order.
pub fn header_betas(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(String::from)
        .collect()
}

/// The `InvokeModel` body for a Messages request body. `betas` are the header's flags, added
/// after any the body already lists, each once. `max_tokens` is set when the body has none and
/// `default_max_tokens` is given (counting tokens needs a complete invocation body).
pub fn invoke_body(body: &[u8], betas: &[String], default_max_tokens: Option<u64>) -> Result<Vec<u8>, String> {
    let members: Members<'_> =
        serde_json::from_slice(body).map_err(|e| format!("the request body is not a JSON object: {e}"))?;
    let mut out = Vec::with_capacity(body.len() + 96);
    out.push(b'{');
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
    };
    let mut all_betas: Vec<String> = Vec::new();
    let mut has_version = false;
    let mut has_max_tokens = false;
    for (k, v) in &members.0 {
        match k.as_ref() {
            "model" | "stream" => continue,
            "anthropic_beta" => {
                let listed: Vec<String> = serde_json::from_str(v.get())
                    .map_err(|_| "`anthropic_beta` must be an array of strings".to_string())?;
                all_betas.extend(listed);
                continue;
            }
            "anthropic_version" => has_version = true,
            "max_tokens" => has_max_tokens = true,
            _ => {}
        }
        sep(&mut out);
        serde_json::to_writer(&mut out, k.as_ref()).map_err(|e| e.to_string())?;
        out.push(b':');
        out.extend_from_slice(v.get().as_bytes());
    }
    if !has_version {
        sep(&mut out);
        out.extend_from_slice(br#""anthropic_version":""#);
        out.extend_from_slice(ANTHROPIC_VERSION.as_bytes());
        out.push(b'"');
    }
    if let (false, Some(n)) = (has_max_tokens, default_max_tokens) {
        sep(&mut out);
        out.extend_from_slice(format!(r#""max_tokens":{n}"#).as_bytes());
    }
    for b in betas {
        if !all_betas.contains(b) {
            all_betas.push(b.clone());
        }
    }
    if !all_betas.is_empty() {
        sep(&mut out);
        out.extend_from_slice(br#""anthropic_beta":"#);
        serde_json::to_writer(&mut out, &all_betas).map_err(|e| e.to_string())?;
    }
    out.push(b'}');
    Ok(out)
}

/// The `CountTokens` body: the invocation body, base64-encoded, under `input.invokeModel.body`.
pub fn count_tokens_body(invoke: &[u8]) -> Bytes {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(invoke);
    Bytes::from(format!(r#"{{"input":{{"invokeModel":{{"body":"{b64}"}}}}}}"#))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn model_and_stream_leave_version_and_betas_arrive_the_rest_is_untouched() {
        let body = br#"{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi \u00e9"}],"stream":true,"max_tokens":64,"anthropic_beta":["a"],"x_unknown":{"k":[1,2.50]}}"#;
        let out = invoke_body(body, &["a".into(), "b".into()], None).unwrap();
        let s = String::from_utf8(out.clone()).unwrap();
        // Unknown members and string escapes are kept byte for byte, in order.
        assert!(
            s.starts_with(
                r#"{"messages":[{"role":"user","content":"hi \u00e9"}],"max_tokens":64,"x_unknown":{"k":[1,2.50]}"#
            ),
            "{s}"
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.get("model"), None);
        assert_eq!(v.get("stream"), None);
        assert_eq!(v["anthropic_version"], ANTHROPIC_VERSION);
        assert_eq!(v["anthropic_beta"], json!(["a", "b"]));
    }

    #[test]
    fn max_tokens_is_added_only_when_asked_and_missing() {
        let out = invoke_body(br#"{"model":"m","messages":[]}"#, &[], Some(1)).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"messages": [], "anthropic_version": ANTHROPIC_VERSION, "max_tokens": 1})
        );
        let out = invoke_body(br#"{"max_tokens":5,"anthropic_version":"x"}"#, &[], Some(1)).unwrap();
        assert_eq!(out, br#"{"max_tokens":5,"anthropic_version":"x"}"#);
        assert!(invoke_body(b"[1]", &[], None).is_err());
        assert!(invoke_body(br#"{"anthropic_beta":"x"}"#, &[], None).is_err());
    }

    #[test]
    fn header_flags_are_split_and_trimmed() {
        let mut h = http::HeaderMap::new();
        h.append("anthropic-beta", "a, b".parse().unwrap());
        h.append("anthropic-beta", "c,".parse().unwrap());
        assert_eq!(header_betas(&h), ["a", "b", "c"]);
    }

    #[test]
    fn count_tokens_wraps_the_invocation() {
        use base64::Engine as _;
        let b = count_tokens_body(br#"{"messages":[]}"#);
        let v: Value = serde_json::from_slice(&b).unwrap();
        let inner = base64::engine::general_purpose::STANDARD
            .decode(v["input"]["invokeModel"]["body"].as_str().unwrap())
            .unwrap();
        assert_eq!(inner, br#"{"messages":[]}"#);
    }
}
