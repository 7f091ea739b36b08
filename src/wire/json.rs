//! Splicing a JSON body's top-level `model` without re-serialising the rest.

use bytes::{Bytes, BytesMut};

/// Replaces the top-level string `model` of a JSON object; every other byte is untouched. A body
/// without one is returned as it is.
pub fn replace_model(body: &Bytes, requested_model: &str) -> Bytes {
    #[derive(serde::Deserialize)]
    struct Top<'a> {
        #[serde(borrow, default)]
        model: Option<&'a serde_json::value::RawValue>,
    }
    let Ok(Top { model: Some(raw) }) = serde_json::from_slice::<Top<'_>>(body) else {
        return body.clone();
    };
    if !raw.get().starts_with('"') {
        return body.clone();
    }
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    let end = start + raw.get().len();
    let encoded = serde_json::to_string(requested_model).unwrap_or_default();
    if body[start..end] == *encoded.as_bytes() {
        return body.clone();
    }
    let mut out = BytesMut::with_capacity(body.len() - (end - start) + encoded.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(encoded.as_bytes());
    out.extend_from_slice(&body[end..]);
    out.freeze()
}
