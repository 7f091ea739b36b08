use super::*;
use crate::providers::anthropic_oauth::settings::{OAuthSettings, TIERS};

fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
}

const CONTRACT: &str = r#"
listen: 0.0.0.0:3000
admin: { listen: 127.0.0.1:3001, username: admin, password: ${RELAY_ADMIN_PASSWORD} }
store: { backend: embedded, path: ./data }
secret_key: ${RELAY_SECRET_KEY}
accounts:
  - { name: console-main, kind: claude-console, base_url: https://api.anthropic.com,
      api_key: ${ANTHROPIC_API_KEY}, priority: 50, model_map: { claude-sonnet-4-5: claude-sonnet-4-5-20250929 } }
api_keys:
  - { name: alice, key: ${ALICE_KEY} }
"#;

#[test]
fn the_documented_shape_loads_with_env_substitution() {
    let e = env(&[
        ("RELAY_ADMIN_PASSWORD", "pw: with, {yaml} chars"),
        (
            "RELAY_SECRET_KEY",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
        ("ANTHROPIC_API_KEY", "sk-ant-api03-x"),
        ("ALICE_KEY", "cr_0123456789abcdef0123"),
    ]);
    let c = Config::from_yaml(CONTRACT, &e).unwrap();
    assert_eq!(c.listen.to_string(), "0.0.0.0:3000");
    assert_eq!(c.admin.password.as_deref(), Some("pw: with, {yaml} chars"));
    assert_eq!(
        c.accounts[0].credential,
        crate::accounts::AccountCredential::ApiKey("sk-ant-api03-x".into())
    );
    assert_eq!(
        c.accounts[0].settings.model_map["claude-sonnet-4-5"],
        "claude-sonnet-4-5-20250929"
    );
    assert_eq!(c.api_keys[0].config.key.as_deref(), Some("cr_0123456789abcdef0123"));
    assert_eq!(c.store.path.as_deref(), Some(std::path::Path::new("./data")));
}

#[test]
fn errors_name_the_key() {
    let e = env(&[]);
    let err = Config::from_yaml(CONTRACT, &e).unwrap_err().to_string();
    assert!(
        err.contains("admin.password") && err.contains("RELAY_ADMIN_PASSWORD"),
        "{err}"
    );
    let err = Config::from_yaml("threads: many\n", &e).unwrap_err().to_string();
    assert!(err.contains("threads"), "{err}");
    let err = Config::from_yaml("timeouts: { connect: 5x }\n", &e)
        .unwrap_err()
        .to_string();
    assert!(err.contains("timeouts.connect") && err.contains("unit"), "{err}");
    let err = Config::from_yaml(
        "accounts:\n  - { name: a, kind: claude-console, api_key: k, base_url: ftp://x }\n",
        &e,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("accounts[0].base_url"), "{err}");
    let err = Config::from_yaml("accounts:\n  - { name: a, kind: nope, api_key: k }\n", &e)
        .unwrap_err()
        .to_string();
    assert!(err.contains("accounts[0].kind"), "{err}");
    let err = Config::from_yaml("api_keys:\n  - { name: a, key: short }\n", &e)
        .unwrap_err()
        .to_string();
    assert!(err.contains("api_keys[0].key"), "{err}");
    let err = Config::from_yaml("api_keys:\n  - { name: a, key_hash: abc }\n", &e)
        .unwrap_err()
        .to_string();
    assert!(err.contains("api_keys[0].key_hash"), "{err}");
}

#[test]
fn defaults_env_overrides_and_typed_references() {
    let c = Config::defaults(&env(&[])).unwrap();
    assert_eq!(c.listen.to_string(), "0.0.0.0:3000");
    assert_eq!(c.admin_listen.to_string(), "127.0.0.1:3001");
    assert_eq!(c.max_body_bytes, 32 * 1024 * 1024);
    assert_eq!(c.store.backend, StoreBackend::Embedded);
    let c = Config::from_yaml(
        "threads: ${T}\nlisten: ${L:-127.0.0.1:4000}\n",
        &env(&[("T", "3"), ("RELAY_ADMIN_LISTEN", "127.0.0.1:4001")]),
    )
    .unwrap();
    assert_eq!(c.threads, 3);
    assert_eq!(c.listen.to_string(), "127.0.0.1:4000");
    assert_eq!(c.admin_listen.to_string(), "127.0.0.1:4001");
    assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
    assert_eq!(Dur::parse("1h").unwrap().0, Duration::from_secs(3600));
    assert!(Dur::parse("1y").is_err());
    assert!(Dur::parse("99999999999999999999999d").is_err());
    let lit = Config::from_yaml("admin: { password: \"$${NOT_A_VAR}xyz\" }\n", &env(&[])).unwrap();
    assert_eq!(lit.admin.password.as_deref(), Some("${NOT_A_VAR}xyz"));
}

#[test]
fn the_example_providers_block_loads_and_matches_the_defaults() {
    let c = Config::from_yaml(&example_block("providers:"), &|_| None).unwrap();
    let (ex, def) = (&c.providers.anthropic.oauth, OAuthSettings::default());
    assert_eq!(
        (&ex.authorize_url, &ex.token_url, &ex.client_id, &ex.redirect_uri),
        (&def.authorize_url, &def.token_url, &def.client_id, &def.redirect_uri)
    );
    assert_eq!(ex.scopes, def.scopes);
    for tier in TIERS {
        assert_eq!(ex.tier_blacklist(tier), def.tier_blacklist(tier), "{tier}");
    }
    assert_eq!(ex.refresh_ahead, def.refresh_ahead);
    assert_eq!(
        ex.profile_url(c.providers.anthropic.api_base.as_str()),
        def.profile_url(crate::providers::anthropic::DEFAULT_API_BASE)
    );
    let (ex, def) = (&c.providers.openai, crate::config::OpenAiProvider::default());
    assert_eq!((&ex.api_base, &ex.codex_base), (&def.api_base, &def.codex_base));
    assert_eq!(format!("{:?}", ex.oauth), format!("{:?}", def.oauth));
    let (ex, def) = (&c.providers.google, crate::config::GoogleProvider::default());
    assert_eq!(
        (&ex.api_base, &ex.code_assist_base),
        (&def.api_base, &def.code_assist_base)
    );
    assert_eq!(format!("{:?}", ex.oauth), format!("{:?}", def.oauth));
}

/// The commented `# key: value` lines of conf/relay.yaml that start with `prefix`, with their
/// continuation lines, as YAML.
fn example_block(prefix: &str) -> String {
    let text = include_str!("../conf/relay.yaml");
    let start = text.find(&format!("# {prefix}")).unwrap();
    text[start..]
        .lines()
        .take_while(|l| l.starts_with(&format!("# {prefix}")) || l.starts_with("#  "))
        .map(|l| &l[2..])
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_example_connection_and_upstream_settings_are_the_defaults() {
    let c = Config::from_yaml(
        &format!(
            "{}\n{}\n{}",
            example_block("timeouts:"),
            example_block("connections:"),
            example_block("upstreams:")
        ),
        &|_| None,
    )
    .unwrap();
    let d = Config::defaults(&|_| None).unwrap();
    assert_eq!(format!("{:?}", c.timeouts), format!("{:?}", d.timeouts));
    assert_eq!(c.connections.per_ip, d.connections.per_ip);
    assert_eq!(c.deny_addresses, d.deny_addresses);
    assert_eq!(c.hide_headers, d.hide_headers);
    let err = |y: &str| Config::from_yaml(y, &|_| None).unwrap_err().to_string();
    assert!(err("upstreams: { deny_addresses: [not-a-range] }").contains("upstreams.deny_addresses[0]"));
    assert!(err("upstreams: { hide_headers: [\"bad header\"] }").contains("upstreams.hide_headers[0]"));
    assert!(err("timeouts: { request_head: 0s }").contains("timeouts.request_head"));
    assert!(err("scheduler: { failover: { evidence_keys: 0 } }").contains("evidence_keys"));
}

#[test]
fn the_example_stats_block_is_the_default_and_session_bounds_are_checked() {
    let c = Config::from_yaml(&example_block("stats:"), &|_| None).unwrap();
    let d = Config::defaults(&|_| None).unwrap();
    assert_eq!(format!("{:?}", c.stats), format!("{:?}", d.stats));
    let b = d.stats.sessions.bounds().unwrap();
    assert_eq!((b.per_key, b.retention_secs), (500, 30 * 86_400));
    let load = |y: &str| Config::from_yaml(y, &|_| None);
    for off in [
        "stats: { sessions: { per_key: 0 } }",
        "stats: { sessions: { retention: 0s } }",
    ] {
        assert_eq!(load(off).unwrap().stats.sessions.bounds(), None, "{off}");
    }
    let err = |y: &str| load(y).unwrap_err().to_string();
    assert!(err("stats: { sessions: { per_key: 100001 } }").contains("stats.sessions.per_key"));
    assert!(err("stats: { sessions: { retention: 500ms } }").contains("stats.sessions.retention"));
    assert!(err("stats: { sessions: { per_key: -1 } }").contains("per_key"));
    assert!(err("stats: { sessions: { keep: 5 } }").contains("keep"));
}

#[test]
fn provider_settings_are_checked() {
    let err = |y: &str| Config::from_yaml(y, &|_| None).unwrap_err().to_string();
    assert!(
        err("providers: { anthropic: { oauth: { token_url: 'ftp://x' } } }")
            .contains("providers.anthropic.oauth.token_url")
    );
    assert!(err("providers: { anthropic: { api_base: 'nope' } }").contains("providers.anthropic.api_base"));
    assert!(
        err("providers: { anthropic: { oauth: { tier_model_blacklist: { team: [] } } } }")
            .contains("tier_model_blacklist.team")
    );
    assert!(err("providers: { anthropic: { oauth: { scopes: [] } } }").contains("oauth.scopes"));
    assert!(err("providers: { anthropic: { oauth: { beta: 'a,b' } } }").contains("oauth.beta"));
    assert!(
        err("providers: { openai: { oauth: { token_url: 'ftp://x' } } }").contains("providers.openai.oauth.token_url")
    );
    assert!(err("providers: { openai: { oauth: { client_id: ' ' } } }").contains("providers.openai.oauth.client_id"));
    assert!(err("providers: { openai: { oauth: { scopes: ['a b'] } } }").contains("providers.openai.oauth.scopes"));
    assert!(err("providers: { openai: { oauth: { timeout: 0s } } }").contains("providers.openai.oauth.timeout"));
    assert!(err("providers: { openai: { oauth: { nope: 1 } } }").contains("nope"));
    assert!(
        err("providers: { google: { oauth: { authorize_url: 'nope' } } }")
            .contains("providers.google.oauth.authorize_url")
    );
    assert!(
        err("providers: { google: { oauth: { onboard_poll: 1ms } } }").contains("providers.google.oauth.onboard_poll")
    );
    assert!(
        err("providers: { google: { oauth: { onboard_poll: 10s, onboard_wait: 5s } } }")
            .contains("providers.google.oauth.onboard_wait")
    );
    assert!(err("providers: { google: { oauth: { client: x } } }").contains("client"));
    assert!(err("accounts: [{ name: sub, kind: claude-oauth }]").contains("setup token"));
    let c = Config::from_yaml(
        "providers: { anthropic: { api_base: 'http://127.0.0.1:9', oauth: { tier_model_blacklist: { pro: [] } } } }\naccounts: [{ name: sub, kind: claude-oauth, api_key: sk-ant-oat01-x }]",
        &|_| None,
    )
    .unwrap();
    let a = &c.accounts[0].settings;
    assert_eq!(a.base_url, None);
    assert_eq!(
        a.base_url_or(&c.providers.default_bases()).as_str(),
        "http://127.0.0.1:9",
        "accounts default to api_base"
    );
    assert!(c.providers.anthropic.oauth.tier_blacklist("pro").is_empty());
    assert!(!c.providers.anthropic.oauth.tier_blacklist("free").is_empty());
}

#[test]
fn what_the_start_would_refuse_or_skip_is_refused_here() {
    const SK: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const K: &str = "cr_0123456789abcdef0123";
    let load = |y: &str| Config::from_yaml(&format!("secret_key: {SK}\n{y}"), &|_| None);
    let err = |y: &str| load(y).unwrap_err().to_string();

    // The filter chain, checked as the start builds it.
    assert!(load("").unwrap().filters.first().is_some_and(|f| f == "key_auth"));
    assert!(err("filters: [models, key_auth]").contains("config key `filters`: the filter chain must start"));
    assert!(err("filters: [key_auth, nope]").contains("unknown filter `nope`"));
    assert!(err("filters: []").contains("`filters`"));

    // An account secret that no header can carry; surrounding space is trimmed, as when sent.
    let account = |k: &str| format!("accounts: [{{ name: a, kind: claude-console, api_key: \"{k}\" }}]");
    assert!(err(&account("sk-ant-a\\nb")).contains("config key `accounts[0].api_key`: the API key contains"));
    assert!(load(&account("sk-ant-api03-x\\n")).is_ok());
    assert!(err("accounts: [{ name: s, kind: claude-oauth, api_key: \"a\\u0001b\" }]").contains("accounts[0].api_key"));

    // One client key under two names, in every spelling.
    let hash = crate::secrets::Secrets::new(SK).unwrap().hash_client_key_hex(K);
    for (keys, field) in [
        (format!("{{ name: a, key: {K} }}, {{ name: b, key: {K} }}"), "key"),
        (
            format!(
                "{{ name: a, key_hash: {hash} }}, {{ name: b, key_hash: {} }}",
                hash.to_uppercase()
            ),
            "key_hash",
        ),
        (
            format!("{{ name: a, key: {K} }}, {{ name: b, key_hash: {hash} }}"),
            "key_hash",
        ),
        (
            format!("{{ name: a, key_hash: {hash} }}, {{ name: b, key: {K} }}"),
            "key",
        ),
    ] {
        let e = err(&format!("api_keys: [{keys}]"));
        assert!(
            e.contains(&format!(
                "config key `api_keys[1].{field}`: the same client key as api_keys[0] (`a`)"
            )),
            "{e}"
        );
    }
    let e = Config::from_yaml(
        &format!("api_keys: [{{ name: a, key: {K} }}, {{ name: b, key: {K} }}]"),
        &|_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("api_keys[1].key"), "without secret_key too: {e}");
    assert!(
        load(&format!(
            "api_keys: [{{ name: a, key: {K} }}, {{ name: b, key: {K}x }}]"
        ))
        .is_ok()
    );
    assert!(err(&format!("api_keys: [{{ name: a, key: \"{K} x\" }}]")).contains("api_keys[0].key"));

    // An admin password hash that login can verify against, and one it cannot.
    let good = {
        use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
        argon2::Argon2::default()
            .hash_password(b"a good password", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string()
    };
    assert!(load(&format!("admin: {{ password_hash: \"{good}\" }}")).is_ok());
    for bad in [
        "$argon2id$",
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
        "$argon2q$v=19$m=1,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
    ] {
        assert!(
            err(&format!("admin: {{ password_hash: \"{bad}\" }}")).contains("admin.password_hash"),
            "{bad}"
        );
    }

    // A price table the start could not load.
    assert!(err("pricing: /nonexistent/pricing.json").contains("config key `pricing`: cannot read"));
    assert!(load(&format!("pricing: {}/conf/pricing.json", env!("CARGO_MANIFEST_DIR"))).is_ok());
}

#[test]
fn the_example_admin_block_loads_and_matches_the_defaults() {
    let block = example_block("admin:");
    assert!(block.lines().count() > 5, "{block}");
    let c = Config::from_yaml(&block, &env(&[("RELAY_ADMIN_PASSWORD", "a-long-password")])).unwrap();
    let (ex, def) = (&c.admin, AdminConfig::default());
    assert_eq!(ex.listen, def.listen);
    assert_eq!(ex.session_ttl, def.session_ttl);
    let (b, d) = (ex.login_backoff, def.login_backoff);
    assert_eq!((b.after, b.base, b.max), (d.after, d.base, d.max));
}

#[test]
fn login_backoff_is_validated() {
    let c = Config::from_yaml("admin: { login_backoff: { after: 3, base: 2s, max: 1m } }\n", &env(&[])).unwrap();
    let b = c.admin.login_backoff;
    assert_eq!(
        (b.after, b.base.0, b.max.0),
        (3, Duration::from_secs(2), Duration::from_secs(60))
    );
    let c = Config::from_yaml("admin: { login_backoff: { after: 2 } }\n", &env(&[])).unwrap();
    assert_eq!(c.admin.login_backoff.max.0, Duration::from_secs(15 * 60));
    for (yaml, key) in [
        ("{ after: 0 }", "admin.login_backoff.after"),
        ("{ after: 101 }", "admin.login_backoff.after"),
        ("{ base: 500ms }", "admin.login_backoff.base"),
        ("{ base: 2m, max: 1m }", "admin.login_backoff.max"),
        ("{ max: 2d }", "admin.login_backoff.max"),
        ("{ tries: 3 }", "admin.login_backoff"),
    ] {
        let err = Config::from_yaml(&format!("admin: {{ login_backoff: {yaml} }}\n"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{yaml}: {err}");
    }
}

/// Found by the property tests: a duration written as a bare number skipped the 10-year bound
/// that `10s`-style values have (and `session_ttl: 9223372036854775807` overflowed at login).
#[test]
fn bare_number_durations_have_the_same_bound() {
    let e = env(&[]);
    let err = Config::from_yaml("admin: { session_ttl: 316224001 }\n", &e)
        .unwrap_err()
        .to_string();
    assert!(err.contains("admin.session_ttl") && err.contains("10 years"), "{err}");
    let c = Config::from_yaml("admin: { session_ttl: 316224000 }\n", &e).unwrap();
    assert_eq!(c.admin.session_ttl.0, Duration::from_secs(316_224_000));
}

/// Found by the property tests: an unclosed `${` in a comment swallowed the lines after it, up
/// to the next `}`, so that `k1` silently disappeared from the document.
#[test]
fn an_unclosed_reference_does_not_swallow_the_next_lines() {
    let e = env(&[("V", "x")]);
    let err = Config::from_yaml("# price in ${\nadmin: { username: ${V} }\n", &e)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unterminated"), "{err}");
    let c = Config::from_yaml("# see ${V}\nadmin: { username: ${V} }\n", &e).unwrap();
    assert_eq!(c.admin.username, "x");
}

#[test]
fn the_example_accounts_load() {
    let env = |k: &str| match k {
        "ANTHROPIC_API_KEY"
        | "CLAUDE_SETUP_TOKEN"
        | "AWS_ACCESS_KEY_ID"
        | "AWS_SECRET_ACCESS_KEY"
        | "AWS_BEARER_TOKEN_BEDROCK"
        | "CCR_API_KEY"
        | "OPENAI_API_KEY"
        | "AZURE_OPENAI_KEY"
        | "GEMINI_API_KEY" => Some(format!("example-{}", k.to_ascii_lowercase().replace('_', "-"))),
        _ => None,
    };
    let c = Config::from_yaml(&example_block("accounts:"), &env).unwrap();
    let kinds: Vec<&str> = c.accounts.iter().map(|a| a.settings.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "claude-console",
            "claude-oauth",
            "bedrock",
            "bedrock",
            "ccr",
            "openai",
            "azure-openai",
            "gemini-api",
            "claude-passthrough"
        ]
    );
    let byo = &c.accounts[8].settings;
    assert_eq!(
        byo.base_url_or(&c.providers.default_bases()).as_str(),
        "https://api.anthropic.com"
    );
    let gemini = &c.accounts[7].settings;
    assert_eq!(
        gemini.base_url_or(&c.providers.default_bases()).as_str(),
        "https://generativelanguage.googleapis.com"
    );
    assert_eq!(
        gemini.model_map.get("gemini-pro-latest").map(String::as_str),
        Some("gemini-2.5-pro")
    );
    let azure = &c.accounts[6].settings;
    assert_eq!(azure.api_version.as_deref(), Some("2025-04-01-preview"));
    assert_eq!(azure.deployments.get("gpt-5").map(String::as_str), Some("gpt5-prod"));
    let openai = &c.accounts[5].settings;
    assert_eq!(
        openai.base_url_or(&c.providers.default_bases()).as_str(),
        "https://api.openai.com/v1"
    );
    let us = &c.accounts[2];
    assert_eq!(
        us.settings.base_url_or(&c.providers.default_bases()).as_str(),
        "https://bedrock-runtime.us-east-1.amazonaws.com"
    );
    assert!(
        matches!(&us.credential, crate::accounts::AccountCredential::Bedrock(s) if s.session_token.is_none()),
        "an empty session token is none"
    );
    let err = |y: &str| Config::from_yaml(y, &|_| None).unwrap_err().to_string();
    assert!(
        err("accounts: [{ name: b, kind: bedrock, access_key_id: a, secret_access_key: s }]")
            .contains("accounts[0].region")
    );
    assert!(err("accounts: [{ name: b, kind: bedrock, region: us-east-1 }]").contains("accounts[0].access_key_id"));
    assert!(err("accounts: [{ name: b, kind: bedrock, region: us-east-1, api_key: k, access_key_id: a, secret_access_key: s }]").contains("not both"));
    assert!(
        err("accounts: [{ name: c, kind: claude-console, api_key: k, region: us-east-1 }]")
            .contains("accounts[0].region")
    );
    assert!(
        err("accounts: [{ name: b, kind: bedrock, region: us-east-1, api_key: k, inference_profile: mars }]")
            .contains("inference_profile")
    );
    assert!(err("accounts: [{ name: r, kind: ccr }]").contains("accounts[0].api_key"));
    assert!(err("accounts: [{ name: z, kind: azure-openai, api_key: k }]").contains("accounts[0].base_url"));
    assert!(
        err("accounts: [{ name: o, kind: openai, api_key: k, deployments: { a: b } }]")
            .contains("accounts[0].deployments")
    );
    assert!(
        err("accounts: [{ name: o, kind: gemini-api, api_key: k, project_id: p }]").contains("accounts[0].project_id")
    );
    assert!(err("accounts: [{ name: o, kind: gemini-oauth, project_id: p }]").contains("gemini-oauth/authorize"));
    assert!(
        err("accounts: [{ name: z, kind: azure-openai, api_key: k, base_url: 'https://r.openai.azure.com', api_version: 'a b' }]")
            .contains("accounts[0].api_version")
    );
    assert!(err("accounts: [{ name: o, kind: openai-oauth, api_key: k }]").contains("admin sign-in"));
    assert!(err("accounts: [{ name: o, kind: openai }]").contains("accounts[0].api_key"));
}

#[test]
fn accounts_are_read_into_typed_values_and_unknown_fields_are_refused() {
    let err = |y: &str| Config::from_yaml(y, &|_| None).unwrap_err().to_string();
    let e = err("accounts: [{ name: a, kind: ccr, api_key: k, secret: x }]");
    assert!(
        e.contains("config key `accounts[0]`") && e.contains("unknown field `secret`"),
        "{e}"
    );
    for (yaml, key) in [
        (
            "accounts: [{ name: a, kind: ccr, api_key: k, quota_reset: '24:00' }]",
            "accounts[0].quota_reset",
        ),
        (
            "accounts: [{ name: a, kind: ccr, api_key: k, cooldowns: { 6xx: 1m } }]",
            "accounts[0].cooldowns.6xx",
        ),
        (
            "accounts: [{ name: a, kind: ccr, api_key: k, proxy: 'socks5://h' }]",
            "accounts[0].proxy",
        ),
        (
            "accounts: [{ name: a, kind: ccr, api_key: k, weight: 0 }]",
            "accounts[0].weight",
        ),
        (
            "accounts: [{ name: a, kind: ccr, api_key: k, region: us-east-1 }]",
            "accounts[0].region",
        ),
        (
            "accounts: [{ name: a, kind: bedrock, region: nowhere, api_key: k }]",
            "accounts[0].region",
        ),
        (
            "accounts: [{ name: a, kind: ccr, api_key: k }, { name: ' a', kind: ccr, api_key: k }]",
            "accounts[1].name",
        ),
        ("scheduler: { cooldowns: { 529: 3651d } }", "scheduler.cooldowns.529"),
        ("api_keys: [{ name: a, key_hash: abc }]", "api_keys[0].key_hash"),
    ] {
        assert!(
            err(yaml).contains(&format!("config key `{key}`")),
            "{yaml}: {}",
            err(yaml)
        );
    }

    const SK: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let c = Config::from_yaml(
        &format!(
            "secret_key: {SK}\nscheduler: {{ cooldowns: {{ 529: 2m }} }}\n\
             accounts: [{{ name: ' a ', kind: ccr, api_key: k, cooldowns: {{ 503: 90 }}, quota_reset: '7:30', \
             proxy: 'http://u:p@127.0.0.1:3128' }}]\n\
             api_keys: [{{ name: b, key_hash: '{}' }}]",
            "AB".repeat(32)
        ),
        &|_| None,
    )
    .unwrap();
    use crate::types::CooldownClass;
    assert_eq!(
        c.scheduler.cooldowns.get(CooldownClass::Overloaded),
        Some(Duration::from_secs(120))
    );
    let a = &c.accounts[0];
    assert_eq!(a.settings.name, "a");
    assert_eq!(
        a.settings.cooldowns.get(CooldownClass::Unavailable),
        Some(Duration::from_secs(90))
    );
    assert_eq!(a.settings.quota_reset_minute(), 450);
    assert_eq!(
        a.proxy.as_ref().map(|p| p.masked()).as_deref(),
        Some("http://***@127.0.0.1:3128")
    );
    assert!(matches!(c.api_keys[0].identity, KeyIdentity::Hash(KeyHash(h)) if h == [0xab; 32]));
}

#[test]
fn audit_retention_and_currency_are_checked() {
    let e = env(&[]);
    let c = Config::from_yaml("", &e).unwrap();
    assert_eq!(c.admin.audit.retention.0, Duration::from_secs(180 * 86_400));
    assert_eq!(c.currency.display, "USD");
    let c = Config::from_yaml(
        "admin: { audit: { retention: 30d, max_records: 5000 } }\ncurrency: { display: CNY, rates: { CNY: 7.1 } }\n",
        &e,
    )
    .unwrap();
    assert_eq!((c.admin.audit.max_records, c.currency.rate()), (5000, 7.1));
    for (yaml, key) in [
        ("admin: { audit: { retention: 10m } }", "admin.audit.retention"),
        ("admin: { audit: { max_records: 10 } }", "admin.audit.max_records"),
        ("currency: { display: CNY }", "currency"),
        ("currency: { display: yen, rates: { yen: 1 } }", "currency"),
        ("currency: { rates: { EUR: -1 } }", "currency"),
        ("currency: { display: EUR, rates: { EUR: 1 }, symbol: x }", "currency"),
    ] {
        let err = Config::from_yaml(&format!("{yaml}\n"), &e).unwrap_err().to_string();
        assert!(err.contains(key), "{yaml}: {err}");
    }
}

#[test]
fn the_example_backup_block_loads_and_backups_need_a_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "a long enough passphrase\n").unwrap();
    let block = example_block("backup:").replace("/etc/claude-relay/backup-passphrase", &pass.display().to_string());
    let c = Config::from_yaml(&block, &|_| None).unwrap();
    let b = c.backup.unwrap();
    assert_eq!(b.every.0, Duration::from_secs(86_400));
    assert_eq!(b.keep, 7);
    assert_eq!(b.dir(), Path::new("./data/backups"));
    assert_eq!(b.passphrase(&|_| None).unwrap(), "a long enough passphrase");

    let c = Config::from_yaml(
        "data_dir: /srv/relay\nbackup: {}",
        &env(&[("RELAY_BACKUP_PASSPHRASE", "twelve chars")]),
    )
    .unwrap();
    assert_eq!(c.backup.unwrap().dir(), Path::new("/srv/relay/backups"));
    let err = |y: &str, e: &dyn Fn(&str) -> Option<String>| Config::from_yaml(y, e).unwrap_err().to_string();
    assert!(err("backup: {}", &|_| None).contains("backup.passphrase_file"));
    assert!(err("backup: {}", &env(&[("RELAY_BACKUP_PASSPHRASE", "short")])).contains("at least 12"));
    let ok_env = env(&[("RELAY_BACKUP_PASSPHRASE", "twelve chars")]);
    assert!(err("backup: { keep: 0 }", &ok_env).contains("backup.keep"));
    assert!(err("backup: { every: 500ms }", &ok_env).contains("backup.every"));
    assert!(err("backup: { passphrase_file: /nonexistent/pass }", &ok_env).contains("backup.passphrase_file"));
    assert!(err("backup: { often: 1h }", &ok_env).contains("often"));
}

#[test]
fn the_example_alerts_block_loads() {
    let env = |k: &str| match k {
        "SLACK_WEBHOOK_URL" => Some("https://hooks.slack.com/services/T0/B0/x".to_string()),
        "TELEGRAM_SEND_MESSAGE_URL" => Some("https://api.telegram.org/bot1:x/sendMessage".to_string()),
        _ => None,
    };
    let c = Config::from_yaml(&example_block("alerts:"), &env).unwrap();
    let a = &c.alerts;
    assert_eq!(a.webhooks.len(), 2);
    assert_eq!(a.webhooks[1].chat_id.as_deref(), Some("-1001234567890"));
    assert_eq!(
        a.error_rate.map(|r| (r.above, r.sustained.0.as_secs(), r.min_requests)),
        Some((0.2, 300, 20))
    );
    assert_eq!(a.latency.map(|r| r.p50_above.0.as_secs()), Some(10));
    let d = Config::defaults(&|_| None).unwrap().alerts;
    assert_eq!(
        (
            a.spend_threshold,
            a.key_expiring,
            a.dedup,
            a.max_per_minute,
            a.check_every
        ),
        (
            d.spend_threshold,
            d.key_expiring,
            d.dedup,
            d.max_per_minute,
            d.check_every
        )
    );
    let err = Config::from_yaml(
        "alerts: { webhooks: [{ name: x, kind: slack, url: 'nope-SECRET' }] }",
        &|_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("alerts.webhooks[0].url") && !err.contains("SECRET"),
        "{err}"
    );
}

#[test]
fn the_example_log_settings_are_the_defaults_with_a_file() {
    let c = Config::from_yaml(&example_block("log:"), &|_| None).unwrap();
    let def = Config::defaults(&|_| None).unwrap();
    assert_eq!(
        c.log.file.as_deref(),
        Some(Path::new("/var/log/claude-relay/relay.log"))
    );
    assert_eq!(
        (
            c.log.format,
            c.log.rotate,
            c.log.max_bytes,
            c.log.keep,
            c.log.access,
            c.log.level.as_str()
        ),
        (
            def.log.format,
            def.log.rotate,
            def.log.max_bytes,
            def.log.keep,
            def.log.access,
            def.log.level.as_str()
        )
    );
    assert!(def.log.file.is_none());
    for (yaml, key) in [
        ("log: { keep: 0 }", "log.keep"),
        ("log: { max_bytes: 100 }", "log.max_bytes"),
        ("log: { level: \"info,[x\" }", "log.level"),
        ("log: { file: \"\" }", "log.file"),
    ] {
        let e = Config::from_yaml(yaml, &|_| None).unwrap_err().to_string();
        assert!(e.contains(key), "{yaml}: {e}");
    }
}

#[test]
fn the_redis_backend_takes_one_node_a_sentinel_master_or_a_cluster() {
    use crate::store::redis_conn::RedisTarget;
    let load = |y: &str| Config::from_yaml(&format!("secret_key: {}\n{y}", "ab".repeat(32)), &|_| None);
    let err = |y: &str| load(y).unwrap_err().to_string();

    let c = load(
        "store:\n  backend: redis\n  sentinel: { master: mymaster, nodes: [\"redis://10.0.0.1:26379\"], password: pw, db: 2 }",
    )
    .unwrap();
    let RedisTarget::Sentinel(s) = c.store.redis_target() else {
        panic!("a sentinel target")
    };
    assert_eq!(
        (s.master.as_str(), s.nodes.len(), s.password.as_deref(), s.db),
        ("mymaster", 1, Some("pw"), 2)
    );
    let c = load("store: { backend: redis, cluster: [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"] }").unwrap();
    assert_eq!(
        c.store.redis_target(),
        RedisTarget::Cluster(vec!["redis://10.0.0.1:7000".into(), "redis://10.0.0.2:7000".into()])
    );
    let c = load("store: { backend: redis, url: \"redis://127.0.0.1:6379/0\" }").unwrap();
    assert_eq!(
        c.store.redis_target(),
        RedisTarget::Node("redis://127.0.0.1:6379/0".into())
    );

    assert!(err("store: { backend: redis, url: \"redis://a:1\", cluster: [\"redis://b:1\"] }").contains("not several"));
    assert!(err("store: { backend: redis, cluster: [] }").contains("store.cluster"));
    assert!(err("store: { backend: redis, cluster: [\"http://b:1\"] }").contains("store.cluster"));
    assert!(
        err("store: { backend: redis, sentinel: { master: \"\", nodes: [\"redis://a:1\"] } }")
            .contains("store.sentinel.master")
    );
    assert!(err("store: { backend: redis, sentinel: { master: m, nodes: [] } }").contains("store.sentinel.nodes"));
    assert!(
        err("store: { backend: redis, sentinel: { master: m, nodes: [\"redis://a:1\"], extra: 1 } }").contains("extra")
    );
    assert!(err("store: { backend: embedded, cluster: [\"redis://b:1\"] }").contains("store.cluster"));
    assert!(
        err("store: { backend: embedded, sentinel: { master: m, nodes: [\"redis://a:1\"] } }")
            .contains("store.sentinel")
    );
    assert!(err("store: { backend: redis }").contains("store.url"));
}
