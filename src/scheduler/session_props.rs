//! Property tests of session-id extraction: any body values and header bytes never panic; the
//! id is read back from each source as Claude Code, Codex and Gemini write it; the system-prompt
//! hash depends only on the cache-marked blocks.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::test_props::config;

fn raw(v: &Value) -> Box<RawValue> {
    RawValue::from_string(v.to_string()).unwrap()
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        Just(Value::from("{\"session_id\":\"s\"}")),
        Just(Value::from("user_x_account__session_")),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        let key = prop_oneof![
            Just("user_id".to_string()),
            Just("text".to_string()),
            Just("cache_control".to_string()),
            any::<String>(),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A session id as a client may send it (no `_session_` inside, so the legacy form is unambiguous).
fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        any::<String>().prop_filter("non-empty, no `_session_`", |s| !s.is_empty()
            && !s.contains("_session_")),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_values_and_headers_never_panic(
        metadata in prop::option::of(json_value()),
        system in prop::option::of(json_value()),
        pck in prop::option::of(any::<String>()),
        upi in prop::option::of(any::<String>()),
        header in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let (m, s) = (metadata.as_ref().map(raw), system.as_ref().map(raw));
        let hints = SessionHints {
            metadata: m.as_deref(),
            system: s.as_deref(),
            prompt_cache_key: pck,
            user_prompt_id: upi,
        };
        let mut h = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_bytes(&header) {
            h.insert("x-claude-code-session-id", v.clone());
            h.insert("session-id", v);
        }
        let _ = session_id(&h, &hints);
        let _ = session_id(&http::HeaderMap::new(), &hints);
    }

    #[test]
    fn claude_code_metadata_gives_its_session(sid in id(), device in any::<String>(), legacy in any::<bool>()) {
        let user_id = if legacy {
            format!("user_{}_account__session_{sid}", hex::encode(device.as_bytes()))
        } else {
            json!({"device_id": device, "account_uuid": "", "session_id": sid}).to_string()
        };
        let m = raw(&json!({"user_id": user_id}));
        let hints = SessionHints { metadata: Some(&m), ..Default::default() };
        // The JSON form is read only when it starts with `{`: a legacy id is never taken for it.
        prop_assert_eq!(session_id(&http::HeaderMap::new(), &hints), Some(format!("cc:{sid}")));
    }

    #[test]
    fn a_header_wins_over_the_body(value in "[ -~]{0,300}", sid in id()) {
        let m = raw(&json!({"user_id": json!({"session_id": sid}).to_string()}));
        let hints = SessionHints { metadata: Some(&m), ..Default::default() };
        let mut h = http::HeaderMap::new();
        h.insert("x-claude-code-session-id", http::HeaderValue::from_str(&value).unwrap());
        let trimmed = value.trim();
        let expected = if trimmed.is_empty() || trimmed.len() > 256 {
            format!("cc:{sid}")
        } else {
            format!("cc:{trimmed}")
        };
        prop_assert_eq!(session_id(&h, &hints), Some(expected));
    }

    #[test]
    fn the_system_hash_depends_only_on_cached_blocks(
        cached in prop::collection::vec(any::<String>(), 1..4),
        extra_a in prop::collection::vec(any::<String>(), 0..3),
        extra_b in prop::collection::vec(any::<String>(), 0..3),
    ) {
        let blocks = |extra: &[String]| {
            let mut v: Vec<Value> = extra.iter().map(|t| json!({"type": "text", "text": t})).collect();
            v.extend(cached.iter().map(|t| json!({"type": "text", "text": t, "cache_control": {"type": "ephemeral"}})));
            raw(&Value::Array(v))
        };
        let (a, b) = (blocks(&extra_a), blocks(&extra_b));
        let h = http::HeaderMap::new();
        let sa = session_id(&h, &SessionHints { system: Some(&a), ..Default::default() });
        let sb = session_id(&h, &SessionHints { system: Some(&b), ..Default::default() });
        prop_assert!(sa.as_deref().is_some_and(|s| s.starts_with("sys:")));
        prop_assert_eq!(sa, sb);
    }
}
