//! Splicing a JSON body's top-level string values (`model`, Code Assist's `project`) without
//! re-serialising the rest.

use bytes::{Bytes, BytesMut};

/// Replaces the top-level string `model` of a JSON object; every other byte is untouched. A body
/// without one is returned as it is.
pub fn replace_model(body: &Bytes, requested_model: &str) -> Bytes {
    match top_string_span(body, "model") {
        Some(Some(span)) if body[span.0] == b'"' => splice(body, span, requested_model),
        _ => body.clone(),
    }
}

/// Sets the top-level string `key` of a JSON object: replaced in place when present (a non-string
/// value included), else added as the object's first member. A body that is not a JSON object is
/// returned as it is.
pub fn set_top_string(body: &Bytes, key: &str, value: &str) -> Bytes {
    match top_string_span(body, key) {
        Some(Some(span)) => splice(body, span, value),
        Some(None) => {
            let Some(open) = body.iter().position(|b| *b == b'{') else {
                return body.clone();
            };
            let rest_empty = body[open + 1..]
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_none_or(|b| *b == b'}');
            let member = format!(
                "{}:{}{}",
                serde_json::to_string(key).unwrap_or_default(),
                serde_json::to_string(value).unwrap_or_default(),
                if rest_empty { "" } else { "," }
            );
            let mut out = BytesMut::with_capacity(body.len() + member.len());
            out.extend_from_slice(&body[..=open]);
            out.extend_from_slice(member.as_bytes());
            out.extend_from_slice(&body[open + 1..]);
            out.freeze()
        }
        None => body.clone(),
    }
}

/// `None`: not a JSON object; `Some(None)`: no such member; else the byte range of its value.
fn top_string_span(body: &[u8], key: &str) -> Option<Option<(usize, usize)>> {
    let map: std::collections::HashMap<std::borrow::Cow<'_, str>, &serde_json::value::RawValue> =
        serde_json::from_slice(body).ok()?;
    Some(map.get(key).map(|raw| {
        let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
        (start, start + raw.get().len())
    }))
}

fn splice(body: &Bytes, (start, end): (usize, usize), value: &str) -> Bytes {
    let encoded = serde_json::to_string(value).unwrap_or_default();
    if body[start..end] == *encoded.as_bytes() {
        return body.clone();
    }
    let mut out = BytesMut::with_capacity(body.len() - (end - start) + encoded.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(encoded.as_bytes());
    out.extend_from_slice(&body[end..]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_top_level_strings_only() {
        let b = Bytes::from_static(br#"{"model": "a", "request": {"model": "x"}, "project": 1}"#);
        assert_eq!(
            &replace_model(&b, "b")[..],
            br#"{"model": "b", "request": {"model": "x"}, "project": 1}"#
        );
        assert_eq!(
            &set_top_string(&b, "project", "p-1")[..],
            br#"{"model": "a", "request": {"model": "x"}, "project": "p-1"}"#
        );
        let b = Bytes::from_static(br#" {"model":"a"}"#);
        assert_eq!(
            &set_top_string(&b, "project", "p")[..],
            br#" {"project":"p","model":"a"}"#
        );
        assert_eq!(
            &set_top_string(&Bytes::from_static(b"{ }"), "k", "v")[..],
            br#"{"k":"v" }"#
        );
        let not_object = Bytes::from_static(b"[1]");
        assert_eq!(set_top_string(&not_object, "k", "v"), not_object);
        let numeric = Bytes::from_static(br#"{"model":1}"#);
        assert_eq!(replace_model(&numeric, "x"), numeric);
    }
}
