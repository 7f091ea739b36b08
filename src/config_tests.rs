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
