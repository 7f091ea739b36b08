//! Sticky-session ids: which conversation a request belongs to, so it returns to the account that
//! holds its prompt cache.
//!
//! Sources, first found wins: the `x-claude-code-session-id` header; `metadata.user_id` (Claude
//! Code's JSON string `{"device_id","account_uuid","session_id"}`, or the older
//! `user_<hex>_account_<uuid>_session_<uuid>`); Codex's `session-id` header (`session_id` from
//! older Codex versions and the tools made for them) or `prompt_cache_key`;
//! Gemini's `user_prompt_id`; else a hash of the cache-marked system prompt.

use http::HeaderName;
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// What the body parser hands over for session detection.
#[derive(Default)]
pub struct SessionHints<'a> {
    pub metadata: Option<&'a RawValue>,
    pub system: Option<&'a RawValue>,
    pub prompt_cache_key: Option<String>,
    pub user_prompt_id: Option<String>,
}

/// The names looked up on every request, parsed once.
const SESSION_ID: HeaderName = HeaderName::from_static("x-claude-code-session-id");
const CODEX_SESSION_ID: HeaderName = HeaderName::from_static("session-id");
const CODEX_OLD_SESSION_ID: HeaderName = HeaderName::from_static("session_id");

fn header<'h>(h: &'h http::HeaderMap, name: &HeaderName) -> Option<&'h str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= 256)
}

/// The session id of a request, if any can be found.
pub fn session_id(headers: &http::HeaderMap, hints: &SessionHints<'_>) -> Option<String> {
    if let Some(s) = header(headers, &SESSION_ID) {
        return Some(format!("cc:{s}"));
    }
    if let Some(s) = hints.metadata.and_then(from_metadata) {
        return Some(format!("cc:{s}"));
    }
    if let Some(s) = header(headers, &CODEX_SESSION_ID).or_else(|| header(headers, &CODEX_OLD_SESSION_ID)) {
        return Some(format!("codex:{s}"));
    }
    if let Some(s) = hints.prompt_cache_key.as_deref().filter(|s| !s.is_empty()) {
        return Some(format!("codex:{s}"));
    }
    if let Some(s) = hints.user_prompt_id.as_deref().filter(|s| !s.is_empty()) {
        return Some(format!("gemini:{s}"));
    }
    hints.system.and_then(cached_system_hash).map(|h| format!("sys:{h}"))
}

fn from_metadata(raw: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct Meta {
        user_id: Option<String>,
    }
    let user_id = serde_json::from_str::<Meta>(raw.get()).ok()?.user_id?;
    // Current Claude Code: a JSON object serialised into the string.
    if user_id.trim_start().starts_with('{') {
        #[derive(Deserialize)]
        struct Inner {
            session_id: Option<String>,
        }
        return serde_json::from_str::<Inner>(&user_id)
            .ok()?
            .session_id
            .filter(|s| !s.is_empty());
    }
    // Older releases: user_<hash>_account_<uuid>_session_<uuid>.
    user_id
        .rsplit_once("_session_")
        .map(|(_, s)| s.to_string())
        .filter(|s| !s.is_empty())
}

/// A hash of the system prompt blocks that carry `cache_control`: conversations sharing a cached
/// prefix land on the account that holds it.
fn cached_system_hash(raw: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct Block<'a> {
        #[serde(borrow, default)]
        text: Option<std::borrow::Cow<'a, str>>,
        #[serde(default)]
        cache_control: Option<serde::de::IgnoredAny>,
    }
    let blocks: Vec<Block<'_>> = serde_json::from_str(raw.get()).ok()?;
    let mut h = Sha256::new();
    let mut any = false;
    for b in blocks.iter().filter(|b| b.cache_control.is_some()) {
        if let Some(t) = &b.text {
            h.update(t.as_bytes());
            h.update([0u8]);
            any = true;
        }
    }
    any.then(|| hex::encode(&h.finalize()[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn sources_in_order() {
        let mut h = http::HeaderMap::new();
        let meta = raw(r#"{"user_id":"{\"device_id\":\"d\",\"account_uuid\":\"\",\"session_id\":\"s-json\"}"}"#);
        let hints = SessionHints {
            metadata: Some(&meta),
            ..Default::default()
        };
        assert_eq!(session_id(&h, &hints).as_deref(), Some("cc:s-json"));
        h.insert("x-claude-code-session-id", "s-header".parse().unwrap());
        assert_eq!(session_id(&h, &hints).as_deref(), Some("cc:s-header"));
        let legacy = raw(r#"{"user_id":"user_abc_account__session_1234-5678"}"#);
        let hints = SessionHints {
            metadata: Some(&legacy),
            ..Default::default()
        };
        assert_eq!(
            session_id(&http::HeaderMap::new(), &hints).as_deref(),
            Some("cc:1234-5678")
        );
        let hints = SessionHints {
            prompt_cache_key: Some("pck".into()),
            ..Default::default()
        };
        assert_eq!(
            session_id(&http::HeaderMap::new(), &hints).as_deref(),
            Some("codex:pck")
        );
        let mut codex = http::HeaderMap::new();
        codex.insert("session_id", "older-codex".parse().unwrap());
        assert_eq!(session_id(&codex, &hints).as_deref(), Some("codex:older-codex"));
        codex.insert("session-id", "codex".parse().unwrap());
        assert_eq!(session_id(&codex, &hints).as_deref(), Some("codex:codex"));
        let hints = SessionHints {
            user_prompt_id: Some("upi".into()),
            ..Default::default()
        };
        assert_eq!(
            session_id(&http::HeaderMap::new(), &hints).as_deref(),
            Some("gemini:upi")
        );
    }

    #[test]
    fn system_prompt_hash_uses_only_cached_blocks() {
        let a = raw(
            r#"[{"type":"text","text":"billing 1"},{"type":"text","text":"You are X","cache_control":{"type":"ephemeral"}}]"#,
        );
        let b = raw(
            r#"[{"type":"text","text":"billing 2"},{"type":"text","text":"You are X","cache_control":{"type":"ephemeral"}}]"#,
        );
        let none = raw(r#"[{"type":"text","text":"You are X"}]"#);
        let h = http::HeaderMap::new();
        let sa = session_id(
            &h,
            &SessionHints {
                system: Some(&a),
                ..Default::default()
            },
        );
        let sb = session_id(
            &h,
            &SessionHints {
                system: Some(&b),
                ..Default::default()
            },
        );
        assert!(sa.is_some());
        assert_eq!(sa, sb);
        assert_eq!(
            session_id(
                &h,
                &SessionHints {
                    system: Some(&none),
                    ..Default::default()
                }
            ),
            None
        );
        let text = raw(r#""a plain string system prompt""#);
        assert_eq!(
            session_id(
                &h,
                &SessionHints {
                    system: Some(&text),
                    ..Default::default()
                }
            ),
            None
        );
    }
}

#[cfg(test)]
#[path = "session_props.rs"]
mod props;
