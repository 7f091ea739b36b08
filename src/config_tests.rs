use super::*;

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
    assert_eq!(c.accounts[0].api_key.as_deref(), Some("sk-ant-api03-x"));
    assert_eq!(
        c.accounts[0].model_map["claude-sonnet-4-5"],
        "claude-sonnet-4-5-20250929"
    );
    assert_eq!(c.api_keys[0].key.as_deref(), Some("cr_0123456789abcdef0123"));
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
    let text = include_str!("../conf/relay.yaml");
    let start = text.find("# providers:").unwrap();
    let block: Vec<&str> = text[start..]
        .lines()
        .take_while(|l| l.starts_with("# providers:") || l.starts_with("#  "))
        .map(|l| &l[2..])
        .collect();
    let c = Config::from_yaml(&block.join("\n"), &|_| None).unwrap();
    let (ex, def) = (&c.providers.anthropic.oauth, OAuthConfig::default());
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
        ex.profile_url(&c.providers.anthropic.api_base),
        def.profile_url(DEFAULT_ANTHROPIC_BASE)
    );
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
    assert!(err("accounts: [{ name: sub, kind: claude-oauth }]").contains("setup token"));
    let c = Config::from_yaml(
        "providers: { anthropic: { api_base: 'http://127.0.0.1:9', oauth: { tier_model_blacklist: { pro: [] } } } }\naccounts: [{ name: sub, kind: claude-oauth, api_key: sk-ant-oat01-x }]",
        &|_| None,
    )
    .unwrap();
    assert_eq!(
        c.accounts[0].base_url.as_deref(),
        Some("http://127.0.0.1:9"),
        "accounts default to api_base"
    );
    assert!(c.providers.anthropic.oauth.tier_blacklist("pro").is_empty());
    assert!(!c.providers.anthropic.oauth.tier_blacklist("free").is_empty());
}

#[test]
fn the_example_admin_block_loads_and_matches_the_defaults() {
    let text = include_str!("../conf/relay.yaml");
    let start = text.find("# admin:").unwrap();
    let block: Vec<&str> = text[start..]
        .lines()
        .take_while(|l| l.starts_with("# admin:") || l.starts_with("#  "))
        .map(|l| &l[2..])
        .collect();
    assert!(block.len() > 5, "{block:?}");
    let c = Config::from_yaml(&block.join("\n"), &env(&[("RELAY_ADMIN_PASSWORD", "a-long-password")])).unwrap();
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
