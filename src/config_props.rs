//! Property tests of config loading: any text and any generated document load or fail with an
//! error, never a panic; a loaded config keeps its durations within the documented bound; and
//! `${VAR}` substitution of any value never changes the YAML's structure.

use proptest::prelude::*;
use serde_yaml_ng::{Mapping, Value};

use super::*;
use crate::test_props::config;

/// Strings that reach the corners of the parsers: separators, multi-byte characters at the
/// places where a parser may slice, YAML syntax, and anything at all.
fn tricky() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zé日 :0-9.\\-/@\\[\\]%#{}$]{0,12}",
        // Two words, multi-byte characters first: where `split_once` and byte slicing meet.
        "[a-zé日]{1,4} [0-9:日]{0,6}",
        any::<String>(),
        Just(String::new()),
        Just("  ".to_string()),
    ]
}

/// One of the valid `examples`, or a tricky string.
fn text_or(examples: &'static [&'static str]) -> BoxedStrategy<Value> {
    prop_oneof![
        6 => prop::sample::select(examples).prop_map(|s| Value::from(s.to_string())),
        1 => tricky().prop_map(Value::from),
    ]
    .boxed()
}

fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => (1..100u64).prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(Value::from),
    ]
    .boxed()
}

fn duration() -> BoxedStrategy<Value> {
    prop_oneof![
        text_or(&["10s", "250ms", "5m", "1h", "30d", "1.5h", "0s", "3660d", "1e3s"]),
        number(),
    ]
    .boxed()
}

/// A mapping with each of `fields` present or not.
fn mapping(fields: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    let parts: Vec<BoxedStrategy<Option<(&'static str, Value)>>> = fields
        .into_iter()
        .map(|(k, s)| prop::option::of(s.prop_map(move |v| (k, v))).boxed())
        .collect();
    parts
        .prop_map(|kv| {
            let mut m = Mapping::new();
            for (k, v) in kv.into_iter().flatten() {
                m.insert(Value::from(k), v);
            }
            Value::Mapping(m)
        })
        .boxed()
}

fn list(item: BoxedStrategy<Value>, max: usize) -> BoxedStrategy<Value> {
    prop::collection::vec(item, 0..max).prop_map(Value::Sequence).boxed()
}

fn string_map(keys: &'static [&'static str], value: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop::collection::vec((text_or(keys), value), 0..3)
        .prop_map(|kv| Value::Mapping(kv.into_iter().collect()))
        .boxed()
}

const COOLDOWN_KEYS: &[&str] = &["503", "5xx", "529", "401", "403", "429", "429_max", "connect"];

fn account() -> BoxedStrategy<Value> {
    mapping(vec![
        ("name", text_or(&["main", "b", "console-main"])),
        ("kind", text_or(&["claude-console", "claude-oauth"])),
        (
            "base_url",
            text_or(&[
                "https://api.anthropic.com",
                "http://127.0.0.1:9/v1",
                "http://[::1]:8080",
            ]),
        ),
        ("api_key", text_or(&["sk-ant-api03-x", "sk-ant-oat01-x"])),
        ("priority", number()),
        ("enabled", any::<bool>().prop_map(Value::from).boxed()),
        ("models", list(text_or(&["claude-sonnet-4-5", "claude-*"]), 3)),
        (
            "model_map",
            string_map(&["claude-sonnet-4-5"], text_or(&["claude-sonnet-4-5-20250929"])),
        ),
        ("group", text_or(&["team-a"])),
        (
            "proxy",
            text_or(&[
                "socks5://u:p@127.0.0.1:1080",
                "http://127.0.0.1:3128",
                "socks5://%ff@h:1",
            ]),
        ),
        ("max_concurrency", number()),
        ("daily_quota_usd", number()),
        ("quota_reset", text_or(&["00:00", "23:59", "24:00", "7:5"])),
        ("weight", number()),
        ("cooldowns", string_map(COOLDOWN_KEYS, duration())),
    ])
}

fn api_key() -> BoxedStrategy<Value> {
    let client = prop_oneof![
        text_or(&["claude_code", "gemini_cli", "codex"]),
        mapping(vec![("user_agent", text_or(&["^claude-cli/", "(a+)+$", "["]))]),
    ]
    .boxed();
    mapping(vec![
        ("name", text_or(&["alice", "bob"])),
        (
            "key",
            text_or(&["cr_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]),
        ),
        (
            "key_hash",
            text_or(&["0000000000000000000000000000000000000000000000000000000000000000"]),
        ),
        ("enabled", any::<bool>().prop_map(Value::from).boxed()),
        ("bind", text_or(&["main", "group:team-a", "group:"])),
        ("permissions", list(text_or(&["claude", "gemini", "openai"]), 3)),
        ("expires_at", text_or(&["2027-01-01T00:00:00Z", "2027-01-01"])),
        ("activate_for", text_or(&["30d", "12h", "0d", "99999999999999999999d"])),
        ("clients", list(client, 2)),
        ("ip_allow", list(text_or(&["10.0.0.0/8", "::1", "1.2.3.4/33"]), 2)),
        ("ip_deny", list(text_or(&["192.168.1.1"]), 2)),
        ("model_blacklist", list(text_or(&["claude-opus-*"]), 2)),
        ("model_allowlist", list(text_or(&["claude-*"]), 2)),
        (
            "rate_limit",
            mapping(vec![
                ("window_minutes", number()),
                ("requests", number()),
                ("tokens", number()),
                ("cost_usd", number()),
            ]),
        ),
        (
            "cost_limits",
            mapping(vec![
                ("daily_usd", number()),
                ("weekly_usd", number()),
                ("total_usd", number()),
                ("weekly_reset", text_or(&["mon 00:00", "Sunday 23:59", "fri 7:30"])),
            ]),
        ),
        (
            "concurrency",
            mapping(vec![
                ("limit", number()),
                ("queue", number()),
                ("queue_timeout_ms", number()),
            ]),
        ),
    ])
}

/// A whole config document, every section optional, values mostly valid.
fn document() -> BoxedStrategy<Value> {
    let admin = mapping(vec![
        ("listen", text_or(&["127.0.0.1:3001", "[::1]:3001", "0.0.0.0:3000"])),
        ("username", text_or(&["admin"])),
        ("password", text_or(&["a long password"])),
        (
            "password_hash",
            text_or(&["$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"]),
        ),
        ("session_ttl", duration()),
    ]);
    let store = mapping(vec![
        ("backend", text_or(&["embedded", "redis"])),
        ("path", text_or(&["./data"])),
        ("url", text_or(&["redis://127.0.0.1:6379/0", "rediss://h"])),
        ("prefix", text_or(&["relay:"])),
    ]);
    let timeouts = mapping(vec![
        ("connect", duration()),
        ("response_head", duration()),
        ("stream_idle", duration()),
    ]);
    let scheduler = mapping(vec![
        ("sticky_ttl", duration()),
        (
            "failover",
            mapping(vec![
                ("max_attempts", number()),
                ("budget", duration()),
                ("statuses", list(number(), 3)),
            ]),
        ),
        ("cooldowns", string_map(COOLDOWN_KEYS, duration())),
    ]);
    let oauth = mapping(vec![
        ("token_url", text_or(&["http://127.0.0.1:9/v1/oauth/token"])),
        ("scopes", list(text_or(&["user:inference"]), 2)),
        ("setup_token_lifetime", duration()),
        ("refresh_ahead", duration()),
        ("usage_poll", duration()),
        ("timeout", duration()),
        (
            "tier_model_blacklist",
            string_map(&["free", "pro", "max"], list(text_or(&["claude-opus-*"]), 2)),
        ),
    ]);
    let providers = mapping(vec![(
        "anthropic",
        mapping(vec![
            ("api_base", text_or(&["https://api.anthropic.com"])),
            ("oauth", oauth),
        ]),
    )]);
    mapping(vec![
        ("listen", text_or(&["0.0.0.0:3000", "127.0.0.1:3000"])),
        ("admin", admin),
        ("store", store),
        ("data_dir", text_or(&["./data", "/tmp/x"])),
        (
            "secret_key",
            text_or(&["0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"]),
        ),
        ("threads", number()),
        ("max_body_bytes", number()),
        ("timeouts", timeouts),
        ("shutdown_grace", duration()),
        ("stats", mapping(vec![("flush_interval", duration())])),
        ("scheduler", scheduler),
        ("accounts", list(account(), 3)),
        ("api_keys", list(api_key(), 3)),
        ("filters", list(text_or(&["key_auth", "ip"]), 2)),
        ("trusted_proxies", list(text_or(&["10.0.0.0/8", "127.0.0.1"]), 2)),
        ("providers", providers),
    ])
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// Every duration of a loaded config.
fn durations(c: &Config) -> Vec<(&'static str, Duration)> {
    let o = &c.providers.anthropic.oauth;
    let mut d = vec![
        ("admin.session_ttl", c.admin.session_ttl.0),
        ("shutdown_grace", c.shutdown_grace),
        ("timeouts.connect", c.timeouts.connect.0),
        ("timeouts.response_head", c.timeouts.response_head.0),
        ("timeouts.stream_idle", c.timeouts.stream_idle.0),
        ("stats.flush_interval", c.stats.flush_interval.0),
        ("scheduler.sticky_ttl", c.scheduler.sticky_ttl.0),
        ("scheduler.failover.budget", c.scheduler.failover.budget.0),
        ("oauth.setup_token_lifetime", o.setup_token_lifetime.0),
        ("oauth.refresh_ahead", o.refresh_ahead.0),
        ("oauth.refresh_check", o.refresh_check.0),
        ("oauth.usage_poll", o.usage_poll.0),
        ("oauth.timeout", o.timeout.0),
    ];
    d.extend(c.scheduler.cooldowns.iter().map(|(_, v)| ("scheduler.cooldowns", v)));
    for a in &c.accounts {
        d.extend(a.settings.cooldowns.iter().map(|(_, v)| ("accounts.cooldowns", v)));
    }
    d
}

/// The longest duration a config may hold (as `Dur::parse` says).
const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 86_400);

/// How a generated document may write a `${VAR}` reference.
#[derive(Debug, Clone)]
enum Site {
    /// `k: ${V}`, `k: "${V}"`, `k: '${V}'`: the whole value.
    Whole(u8),
    /// `k: { a: ${V}, b: 1 }`
    FlowMap,
    /// `k: [ ${V}, x ]`
    FlowSeq,
    /// `k:` then `  - ${V}` on the next line.
    BlockSeq,
    /// `k: pre-${V}-post`, with an escaped `$${V}` after it.
    Embedded,
    /// `k: ${V:-default}` with V unset.
    Default(String),
    /// A comment line (which may hold `${`).
    Comment(String),
}

fn site() -> impl Strategy<Value = Site> {
    prop_oneof![
        (0..3u8).prop_map(Site::Whole),
        Just(Site::FlowMap),
        Just(Site::FlowSeq),
        Just(Site::BlockSeq),
        Just(Site::Embedded),
        "[a-z0-9 :,#'\"\\[\\]-]{0,10}".prop_map(Site::Default),
        prop_oneof![
            "[a-z ${}:#]{0,12}",
            Just("price in ${".to_string()),
            Just("${A}".to_string())
        ]
        .prop_map(Site::Comment),
    ]
}

/// Values an environment variable may hold, YAML syntax included.
fn env_value() -> impl Strategy<Value = String> {
    const PIECES: &[&str] = &[
        ": ",
        "#",
        "- ",
        "{",
        "}",
        "[",
        "]",
        ", ",
        "'",
        "\"",
        "\n",
        "\n  x: 1\n",
        "${X}",
        "$${X}",
        "&a",
        "*a",
        "!!str ",
        "|",
        ">",
        "true",
        "1",
        "0x1F",
        "~",
        "null",
        ".inf",
        "...",
        "---",
        "\t",
        "%",
        "@",
        "`",
        "?",
        "__relay_env_0__",
    ];
    prop_oneof![
        any::<String>(),
        prop::collection::vec(prop::sample::select(PIECES), 1..6).prop_map(|v| v.concat()),
    ]
    .prop_filter("non-empty (an empty variable is an error)", |s| !s.is_empty())
}

/// The value a whole-value reference takes: a number or boolean when it reads as one.
fn typed(v: &str) -> Value {
    match serde_yaml_ng::from_str::<Value>(v) {
        Ok(parsed @ (Value::Number(_) | Value::Bool(_))) => parsed,
        _ => Value::from(v.to_string()),
    }
}

/// The document text for `sites` (variable `V{i}` at site `i`) and the value it must load as.
fn templated(sites: &[Site], values: &[String]) -> (String, Value) {
    let mut text = String::from("# a comment with ${A_VAR_IN_A_COMMENT}\n");
    let mut expected = Mapping::new();
    for (i, (s, v)) in sites.iter().zip(values).enumerate() {
        let k = format!("k{i}");
        let (line, value) = match s {
            Site::Whole(q) => {
                let r = match q {
                    0 => format!("${{V{i}}}"),
                    1 => format!("\"${{V{i}}}\""),
                    _ => format!("'${{V{i}}}'"),
                };
                (format!("{k}: {r}\n"), typed(v))
            }
            Site::FlowMap => {
                let mut m = Mapping::new();
                m.insert("a".into(), typed(v));
                m.insert("b".into(), Value::from(1));
                (format!("{k}: {{ a: ${{V{i}}}, b: 1 }}\n"), Value::Mapping(m))
            }
            Site::FlowSeq => (
                format!("{k}: [ ${{V{i}}}, x ]\n"),
                Value::Sequence(vec![typed(v), Value::from("x")]),
            ),
            Site::BlockSeq => (format!("{k}:\n  - ${{V{i}}}\n"), Value::Sequence(vec![typed(v)])),
            Site::Embedded => (
                format!("{k}: pre-${{V{i}}}-post-$${{V{i}}}\n"),
                Value::from(format!("pre-{v}-post-${{V{i}}}")),
            ),
            Site::Default(d) => (format!("{k}: ${{UNSET{i}:-{d}}}\n"), typed(d)),
            Site::Comment(c) => {
                text.push_str(&format!("# {c}\n"));
                continue;
            }
        };
        text.push_str(&line);
        expected.insert(Value::from(k), value);
    }
    (text, Value::Mapping(expected))
}

/// The document after substitution: the first steps of [`Config::from_yaml`].
fn substituted(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Value, ConfigError> {
    let (protected, refs) = protect(text)?;
    let mut value: Value = serde_yaml_ng::from_str(&protected).map_err(|e| ConfigError::Yaml(e.to_string()))?;
    if value.is_null() {
        value = Value::Mapping(Mapping::new());
    }
    substitute(&mut value, "", &refs, env)?;
    Ok(value)
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn any_text_loads_or_fails_without_panicking(text in any::<String>()) {
        let _ = Config::from_yaml(&text, &no_env);
    }

    #[test]
    fn yaml_like_text_loads_or_fails_without_panicking(
        pieces in prop::collection::vec(prop_oneof![
            prop::sample::select(&[
                "listen: ", "admin:", "\n", "  ", "- ", ": ", "{", "}", "[", "]", ", ", "${A}", "${", "$${",
                "&x ", "*x", "<<: *x", "!!binary ", "'", "\"", "accounts:\n  - name: a\n    kind: claude-console\n",
                "api_keys:\n  - { name: k, key: cr_aaaaaaaaaaaaaaaaaaaa, cost_limits: { weekly_reset: ",
                "session_ttl: ", "10s", "#",
            ][..]).prop_map(str::to_string),
            tricky(),
        ], 0..24),
    ) {
        let env = |k: &str| (k == "A").then(|| "a: b".to_string());
        let _ = Config::from_yaml(&pieces.concat(), &env);
    }

    #[test]
    fn generated_documents_load_or_fail_without_panicking(doc in document()) {
        let text = serde_yaml_ng::to_string(&doc).unwrap();
        if let Ok(c) = Config::from_yaml(&text, &no_env) {
            for (name, d) in durations(&c) {
                prop_assert!(d <= MAX_DURATION, "{} = {:?} is over 10 years", name, d);
            }
        }
    }

    #[test]
    fn substitution_never_changes_the_structure(
        sv in prop::collection::vec((site(), env_value()), 1..6),
    ) {
        let (sites, values): (Vec<Site>, Vec<String>) = sv.into_iter().unzip();
        let (text, expected) = templated(&sites, &values);
        let env = |k: &str| k.strip_prefix('V').and_then(|i| i.parse::<usize>().ok()).and_then(|i| values.get(i).cloned());
        match substituted(&text, &env) {
            Ok(got) => prop_assert_eq!(got, expected, "for\n{}", text),
            // Only an unterminated `${` (here, in a comment) may make the document fail.
            Err(e) => prop_assert!(
                sites.iter().any(|s| matches!(s, Site::Comment(c) if c.contains("${"))),
                "{} for\n{}", e, text
            ),
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// The same through the whole loader: values with YAML syntax land in the fields that
    /// reference them, and nowhere else.
    #[test]
    fn substituted_values_land_in_their_fields(
        password in env_value().prop_filter("8 chars or more", |s| s.len() >= 8),
        // Client keys are visible ASCII (clients send them in a header), account secrets
        // anything a header value may hold; both full of YAML syntax.
        key in "[!-~]{16,48}",
        api_key in "[!-~][ -~]{0,40}",
    ) {
        let text = "admin: { password: ${PW} }\napi_keys:\n  - { name: alice, key: \"${KEY}\" }\naccounts:\n  - name: a\n    kind: claude-console\n    api_key: ${AK}\n";
        let env = |k: &str| match k {
            "PW" => Some(password.clone()),
            "KEY" => Some(key.clone()),
            "AK" => Some(api_key.clone()),
            _ => None,
        };
        match Config::from_yaml(text, &env) {
            Ok(c) => {
                prop_assert_eq!(c.admin.password.as_deref(), Some(password.as_str()));
                prop_assert_eq!(c.api_keys.len(), 1);
                prop_assert_eq!(c.api_keys[0].config.key.as_deref(), Some(key.as_str()));
                prop_assert_eq!(c.accounts.len(), 1);
                // Sent trimmed, as it is kept.
                prop_assert_eq!(
                    &c.accounts[0].credential,
                    &crate::accounts::AccountCredential::ApiKey(api_key.trim().to_string())
                );
            }
            // A value that reads as a number or boolean takes that type, which a string field
            // refuses: the only way such a config may fail.
            Err(e) => prop_assert!(
                [&password, &key, &api_key].iter().any(|v| !matches!(typed(v), Value::String(_))),
                "{}", e
            ),
        }
    }
}

/// A config that loads, with every section and field that has a parser of its own.
const FULL: &str = r#"
listen: 127.0.0.1:3000
admin: { listen: 127.0.0.1:3001, username: admin, password: a long password, session_ttl: 1h }
secret_key: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
data_dir: ./data
threads: 2
max_body_bytes: 1048576
timeouts: { connect: 10s, response_head: 60s, stream_idle: 30s }
shutdown_grace: 5s
stats: { flush_interval: 2s }
scheduler:
  sticky_ttl: 1h
  failover: { max_attempts: 3, budget: 30s, statuses: [429, 503] }
  cooldowns: { "503": 1m, 429_max: 30m }
trusted_proxies: [10.0.0.0/8, 127.0.0.1]
filters: [key_auth, ip]
providers:
  anthropic:
    api_base: https://api.anthropic.com
    oauth:
      token_url: http://127.0.0.1:9/v1/oauth/token
      scopes: [user:inference]
      setup_token_lifetime: 365d
      refresh_ahead: 10m
      refresh_check: 1m
      usage_poll: 5m
      timeout: 10s
      tier_model_blacklist: { pro: [claude-opus-4] }
accounts:
  - name: main
    kind: claude-console
    base_url: https://api.anthropic.com/v1
    api_key: sk-ant-api03-x
    priority: 50
    enabled: true
    models: [claude-sonnet-4-5]
    model_map: { claude-sonnet-4-5: claude-sonnet-4-5-20250929 }
    group: team-a
    proxy: socks5://user:pass@127.0.0.1:1080
    max_concurrency: 2
    daily_quota_usd: 5
    quota_reset: "07:30"
    weight: 2
    cooldowns: { "429": 1m }
api_keys:
  - name: alice
    key: cr_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
    enabled: true
    bind: main
    permissions: [claude]
    activate_for: 30d
    clients: [claude_code, { user_agent: "^my-tool/" }]
    ip_allow: [10.0.0.0/8]
    ip_deny: [10.0.0.1]
    model_blacklist: [claude-opus-*]
    model_allowlist: [claude-*]
    rate_limit: { window_minutes: 5, requests: 10, tokens: 1000, cost_usd: 1.5 }
    cost_limits: { daily_usd: 1, weekly_usd: 5, total_usd: 10, weekly_reset: "mon 00:00" }
    concurrency: { limit: 2, queue: 1, queue_timeout_ms: 1000 }
  - name: bob
    key_hash: "0000000000000000000000000000000000000000000000000000000000000000"
    expires_at: "2027-01-01T00:00:00Z"
    bind: "group:team-a"
"#;

/// Where a scalar sits in a document.
#[derive(Debug, Clone)]
enum Seg {
    Key(Value),
    Index(usize),
}

fn leaves(v: &Value, at: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match v {
        Value::Mapping(m) => {
            for (k, item) in m {
                at.push(Seg::Key(k.clone()));
                leaves(item, at, out);
                at.pop();
            }
        }
        Value::Sequence(s) => {
            for (i, item) in s.iter().enumerate() {
                at.push(Seg::Index(i));
                leaves(item, at, out);
                at.pop();
            }
        }
        _ => out.push(at.clone()),
    }
}

fn at_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let Some((first, rest)) = path.split_first() else {
        return Some(v);
    };
    let next = match (first, v) {
        (Seg::Key(k), Value::Mapping(m)) => m.get_mut(k)?,
        (Seg::Index(i), Value::Sequence(s)) => s.get_mut(*i)?,
        _ => return None,
    };
    at_mut(next, rest)
}

fn replacement() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => tricky().prop_map(Value::from),
        1 => number(),
        1 => any::<bool>().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => prop::collection::vec(tricky().prop_map(Value::from), 0..3).prop_map(Value::Sequence),
    ]
}

#[test]
fn the_full_document_loads() {
    let c = Config::from_yaml(FULL, &no_env).unwrap();
    assert_eq!(c.accounts.len(), 1);
    assert_eq!(c.api_keys.len(), 2);
}

proptest! {
    #![proptest_config(config(24))]

    /// Each field of a valid config in turn, given any value: every field's parser is reached.
    #[test]
    fn any_value_in_each_field_loads_or_fails_without_panicking(value in replacement()) {
        let doc: Value = serde_yaml_ng::from_str(FULL).unwrap();
        let mut paths = Vec::new();
        leaves(&doc, &mut Vec::new(), &mut paths);
        for path in &paths {
            let mut doc = doc.clone();
            *at_mut(&mut doc, path).unwrap() = value.clone();
            let text = serde_yaml_ng::to_string(&doc).unwrap();
            if let Ok(c) = Config::from_yaml(&text, &no_env) {
                for (name, d) in durations(&c) {
                    prop_assert!(d <= MAX_DURATION, "{} = {:?} is over 10 years", name, d);
                }
            }
        }
    }
}
