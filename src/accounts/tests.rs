use serde_json::json;

use super::*;
use crate::secrets::Secrets;
use crate::store::AccountRecord;

/// The field names serde's derive gives a struct (what it accepts and writes).
pub(crate) fn derived_fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
            unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

#[test]
fn the_field_lists_are_the_types_fields() {
    assert_eq!(derived_fields::<AccountSettings>(), AccountSettings::FIELDS);
    let all: Vec<&str> = AccountSettings::FIELDS
        .iter()
        .chain(&CredentialFields::NAMES)
        .chain(&["proxy"])
        .copied()
        .collect();
    assert_eq!(AccountInput::FIELDS.to_vec(), all);
    // Each is accepted as an input field, and nothing else is.
    for f in AccountInput::FIELDS {
        let e = serde_json::from_value::<AccountInput>(json!({ f: "?" }))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!e.contains("unknown field"), "{f}: {e}");
    }
}

fn input(v: serde_json::Value) -> Result<AccountInput, String> {
    serde_path_to_error::deserialize(v).map_err(|e| format!("{} → {}", e.path(), e.inner()))
}

#[test]
fn an_input_refuses_unknown_and_repeated_fields_naming_them() {
    let e = input(json!({"name": "a", "kind": "ccr", "api_key": "k", "secret": "x"})).unwrap_err();
    assert!(e.contains("unknown field `secret`") && e.contains("`proxy`"), "{e}");
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str("{ name: a, kind: ccr, api_key: k, nope: 1 }").unwrap();
    let e = serde_path_to_error::deserialize::<_, AccountInput>(yaml).unwrap_err();
    assert!(e.to_string().contains("unknown field `nope`"), "{e}");
    let e = serde_json::from_str::<AccountInput>(r#"{"name":"a","kind":"ccr","api_key":"k","api_key":"l"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("duplicate field `api_key`"), "{e}");
    let e = serde_json::from_str::<AccountInput>(r#"{"name":"a","kind":"ccr","name":"b"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("duplicate field `name`"), "{e}");
}

#[test]
fn every_value_is_typed_where_it_is_read_and_the_error_names_it() {
    for (v, at) in [
        (json!({"base_url": "ftp://x"}), "base_url"),
        (json!({"cooldowns": {"6xx": "1m"}}), "cooldowns.6xx"),
        (json!({"cooldowns": {"529": "soon"}}), "cooldowns.529"),
        (json!({"quota_reset": "24:00"}), "quota_reset"),
        (json!({"proxy": "socks5://h"}), "proxy"),
        (json!({"region": "Mars"}), "region"),
        (json!({"inference_profile": "moon"}), "inference_profile"),
        (json!({"priority": -1}), "priority"),
        (json!({"kind": "nope"}), "kind"),
        (json!({"api_key": 5}), "api_key"),
    ] {
        let mut doc = json!({"name": "a", "kind": "claude-console", "api_key": "k"});
        for (k, x) in v.as_object().unwrap() {
            doc[k] = x.clone();
        }
        let e = input(doc).unwrap_err();
        assert!(e.starts_with(&format!("{at} →")), "{v}: {e}");
    }
    let a = input(json!({
        "name": " a ", "kind": "claude-console", "api_key": "k", "base_url": " http://127.0.0.1:9/p ",
        "group": " g ", "quota_reset": "7:5", "cooldowns": {"529": 90}, "proxy": "socks5://u:p@127.0.0.1:1080"
    }))
    .unwrap();
    let s = &a.settings;
    assert_eq!((s.name.as_str(), s.group.as_deref()), ("a", Some("g")));
    assert_eq!(s.base_url.as_ref().unwrap().upstream().path_prefix, "/p");
    assert_eq!(s.quota_reset_minute(), 7 * 60 + 5);
    assert_eq!(
        s.cooldowns.get(crate::types::CooldownClass::Overloaded),
        Some(std::time::Duration::from_secs(90))
    );
    assert_eq!(a.proxy.unwrap().proxy().port, 1080);
}

#[test]
fn validate_names_the_field() {
    let base = json!({"name": "a", "kind": "claude-console", "api_key": "sk-ant-x"});
    for (v, field) in [
        (json!({"name": " "}), "name"),
        (json!({"name": "a\u{7}b"}), "name"),
        (json!({"name": "x".repeat(101)}), "name"),
        (json!({"models": ["m", " "]}), "models"),
        (json!({"model_map": {"a": ""}}), "model_map"),
        (json!({"group": ""}), "group"),
        (json!({"max_concurrency": 0}), "max_concurrency"),
        (json!({"daily_quota_usd": 0}), "daily_quota_usd"),
        (json!({"daily_quota_usd": -1.5}), "daily_quota_usd"),
        (json!({"weight": 0}), "weight"),
        (json!({"region": "us-east-1"}), "region"),
        (json!({"inference_profile": "us"}), "inference_profile"),
        (json!({"access_key_id": "AKIA"}), "access_key_id"),
        (json!({"api_key": null}), "api_key"),
        (json!({"api_key": "sk-ant-a\nb"}), "api_key"),
        (json!({"kind": "bedrock"}), "region"),
        (
            json!({"kind": "bedrock", "region": "us-east-1", "api_key": null}),
            "access_key_id",
        ),
        (
            json!({"kind": "bedrock", "region": "us-east-1", "access_key_id": "A"}),
            "access_key_id",
        ),
        (
            json!({"kind": "bedrock", "region": "us-east-1", "api_key": "a b"}),
            "api_key",
        ),
    ] {
        let mut doc = base.clone();
        for (k, x) in v.as_object().unwrap() {
            doc[k] = x.clone();
        }
        let e = input(doc).unwrap().validate().unwrap_err();
        assert_eq!(e.field, field, "{v}: {e}");
    }
    let bedrock = input(json!({"name": "b", "kind": "bedrock", "region": "eu-west-1", "api_key": "bk"}))
        .unwrap()
        .validate()
        .unwrap();
    let api = super::DefaultBases {
        anthropic: BaseUrl::anthropic(),
        openai: BaseUrl::known("https://api.openai.com/v1"),
        codex: BaseUrl::known("https://chatgpt.com/backend-api/codex"),
        gemini: BaseUrl::known("https://generativelanguage.googleapis.com"),
        code_assist: BaseUrl::known("https://cloudcode-pa.googleapis.com"),
    };
    assert_eq!(
        bedrock.settings.base_url_or(&api).as_str(),
        "https://bedrock-runtime.eu-west-1.amazonaws.com"
    );
}

fn secrets() -> Secrets {
    Secrets::new(&Secrets::generate_key()).unwrap()
}

#[test]
fn a_stored_account_is_written_as_before_and_read_back_whole() {
    let s = secrets();
    let a = input(json!({
        "name": "acct", "kind": "claude-console", "base_url": "http://127.0.0.1:9", "api_key": "sk-ant-api03-x",
        "proxy": "socks5://u:p@127.0.0.1:1080", "group": "team", "max_concurrency": 2, "daily_quota_usd": 5.5,
        "quota_reset": "07:30", "weight": 3, "cooldowns": {"529": "2m", "connect": "45s"}
    }))
    .unwrap()
    .validate()
    .unwrap();
    let r = stored::new_record("id1".into(), &a, &s, 1_700_000_000).unwrap();
    let written = serde_json::to_string(&r).unwrap();
    let (secret, proxy) = (&r.secret.0, &r.proxy.as_ref().unwrap().0);
    assert_eq!(
        written,
        format!(
            r#"{{"id":"id1","name":"acct","kind":"claude-console","base_url":"http://127.0.0.1:9","secret":"{secret}","priority":50,"enabled":true,"models":null,"model_map":{{}},"group":"team","proxy":"{proxy}","max_concurrency":2,"daily_quota_usd":5.5,"quota_reset":"07:30","weight":3,"cooldowns":{{"529":"2m","connect":"45s"}},"created_at":1700000000}}"#
        ),
        "the layout records have always had"
    );
    let back: AccountRecord = serde_json::from_str(&written).unwrap();
    let opened = stored::open(&back, &s).unwrap();
    assert_eq!(opened.definition, a);
    assert_eq!((opened.id.as_str(), opened.created_at), ("id1", 1_700_000_000));
}

#[test]
fn a_stored_record_keeps_what_this_relay_does_not_know_and_refuses_what_it_cannot_read() {
    let s = secrets();
    let mut r: AccountRecord = serde_json::from_value(json!({
        "id": "x", "name": "n", "kind": "ccr", "base_url": "http://h", "secret": s.seal("k"),
        "created_at": 0, "field_from_a_newer_relay": [1]
    }))
    .unwrap();
    let mut settings = stored::settings(&r).unwrap();
    assert_eq!(
        (settings.priority, settings.enabled),
        (50, true),
        "defaults of old records"
    );
    settings.weight = Some(2);
    stored::set_settings(&mut r, &settings).unwrap();
    assert_eq!(r.settings["field_from_a_newer_relay"], json!([1]));
    assert_eq!(r.settings["weight"], json!(2));
    assert!(stored::open(&r, &s).is_ok());

    // A value this relay cannot read: the account is not served with less than it was given.
    r.settings.insert("cooldowns".into(), json!({"504": "1m"}));
    let e = stored::open(&r, &s).unwrap_err();
    assert!(e.contains("`cooldowns.504`"), "{e}");
    // Nor one sealed under another key.
    r.settings.remove("cooldowns");
    assert!(stored::open(&r, &secrets()).is_err());
    r.proxy = Some(s.seal("ftp://u:p@h:1"));
    assert!(stored::open(&r, &s).unwrap_err().contains("proxy"));
}
