use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use super::*;
use crate::policy::{ClientSpec, FastMode, KeyPolicy, KeyPolicySpec};
use crate::{Admission, ClientKey, RequestFacts, RouteInfo};

fn key(spec: KeyPolicySpec) -> Arc<ClientKey> {
    Arc::new(ClientKey {
        id: "k1".into(),
        name: "bob".into(),
        enabled: true,
        bind: None,
        policy: Arc::new(KeyPolicy::compile(&spec).unwrap()),
    })
}

/// Runs one phase of `filter` for `key` and the request described by the rest.
struct Req<'a> {
    service: Service,
    ua: Option<&'a str>,
    ip: Option<&'a str>,
    model: Option<&'a str>,
    endpoint: &'static str,
    /// The body asks for fast mode.
    fast: bool,
}

impl Default for Req<'_> {
    fn default() -> Self {
        Req {
            service: Service::Claude,
            ua: None,
            ip: Some("127.0.0.1"),
            model: Some("claude-sonnet-4-5"),
            endpoint: "messages",
            fast: false,
        }
    }
}

async fn run(filter: &dyn Filter, key: &Arc<ClientKey>, req: Req<'_>) -> Result<(), Rejection> {
    let mut headers = http::HeaderMap::new();
    if let Some(ua) = req.ua {
        headers.insert(http::header::USER_AGENT, ua.parse().unwrap());
    }
    let facts = RequestFacts {
        model: req.model.map(String::from),
        fast: req.fast,
        ..Default::default()
    };
    let mut holds = Vec::new();
    let mut cx = FilterContext {
        route: RouteInfo {
            service: req.service,
            endpoint: req.endpoint,
        },
        headers: &headers,
        query: None,
        client_ip: req.ip.map(|s| s.parse().unwrap()),
        key: Some(key.clone()),
        facts: Some(&facts),
        holds: &mut holds,
    };
    filter.on_headers(&mut cx).await?;
    filter.on_request(&mut cx).await
}

fn reason(r: Result<(), Rejection>) -> Option<(u16, &'static str)> {
    r.err().map(|e| (e.status, e.reason))
}

#[tokio::test]
async fn unrestricted_keys_pass_every_filter() {
    let k = key(KeyPolicySpec::default());
    let limits: Arc<dyn LimitBackend> = Arc::new(CountingLimits::default());
    let filters: Vec<Arc<dyn Filter>> = vec![
        Arc::new(Permissions),
        Arc::new(Expiry::new(limits)),
        Arc::new(Clients),
        Arc::new(IpRules),
        Arc::new(Models),
    ];
    for f in &filters {
        let r = Req {
            ip: None,
            model: None,
            ..Default::default()
        };
        assert!(run(f.as_ref(), &k, r).await.is_ok(), "{}", f.name());
    }
}

#[tokio::test]
async fn fast_mode_deny_refuses_fast_messages_requests_only() {
    let fast = |endpoint: &'static str, service: Service| Req {
        endpoint,
        service,
        fast: true,
        ..Default::default()
    };
    let denied = key(KeyPolicySpec {
        fast_mode: Some(FastMode::Deny),
        ..Default::default()
    });
    let e = run(&Models, &denied, fast("messages", Service::Claude))
        .await
        .unwrap_err();
    assert_eq!(
        (e.status, e.kind, e.reason),
        (403, RejectKind::Permission, "fast_mode_denied")
    );
    assert!(e.message.contains("fast mode"), "{}", e.message);
    // Standard requests of the same key pass.
    assert!(run(&Models, &denied, Req::default()).await.is_ok());
    // Endpoints that cannot carry fast mode are not checked (the Chat conversion drops `speed`;
    // counting tokens is free).
    for (endpoint, service) in [
        ("chat_completions", Service::OpenAI),
        ("count_tokens", Service::Claude),
        ("generate_content", Service::Gemini),
    ] {
        assert!(
            run(&Models, &denied, fast(endpoint, service)).await.is_ok(),
            "{endpoint}"
        );
    }
    // Denied before the model lists are read, and with them.
    let both = key(KeyPolicySpec {
        fast_mode: Some(FastMode::Deny),
        model_allowlist: Some(vec!["claude-sonnet-4-5".into()]),
        ..Default::default()
    });
    assert_eq!(
        reason(run(&Models, &both, fast("messages", Service::Claude)).await),
        Some((403, "fast_mode_denied"))
    );
    // `allow` and no setting allow it.
    for spec in [
        KeyPolicySpec {
            fast_mode: Some(FastMode::Allow),
            ..Default::default()
        },
        KeyPolicySpec::default(),
    ] {
        assert!(
            run(&Models, &key(spec), fast("messages", Service::Claude))
                .await
                .is_ok()
        );
    }
}

#[test]
fn fast_mode_spec_reads_allow_and_deny_only() {
    let spec: KeyPolicySpec = serde_json::from_str(r#"{"fast_mode":"deny"}"#).unwrap();
    assert!(KeyPolicy::compile(&spec).unwrap().deny_fast_mode);
    let spec: KeyPolicySpec = serde_json::from_str(r#"{"fast_mode":"allow"}"#).unwrap();
    assert!(!KeyPolicy::compile(&spec).unwrap().deny_fast_mode);
    assert!(serde_json::from_str::<KeyPolicySpec>(r#"{"fast_mode":"off"}"#).is_err());
    assert!(serde_json::from_str::<KeyPolicySpec>(r#"{"fast_mode":true}"#).is_err());
    // Written back as set.
    let v = serde_json::to_value(KeyPolicySpec {
        fast_mode: Some(FastMode::Deny),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(v, serde_json::json!({"fast_mode": "deny"}));
}

#[tokio::test]
async fn permissions_by_service() {
    let k = key(KeyPolicySpec {
        permissions: Some(vec!["gemini".into(), "openai".into()]),
        ..Default::default()
    });
    let e = run(&Permissions, &k, Req::default()).await.unwrap_err();
    assert_eq!(
        (e.status, e.kind, e.reason),
        (403, RejectKind::Permission, "permission")
    );
    assert!(e.message.contains("claude"), "{}", e.message);
    for service in [Service::Gemini, Service::OpenAI] {
        let r = Req {
            service,
            ..Default::default()
        };
        assert!(run(&Permissions, &k, r).await.is_ok());
    }
    // An empty list permits nothing.
    let k = key(KeyPolicySpec {
        permissions: Some(vec![]),
        ..Default::default()
    });
    assert_eq!(
        reason(run(&Permissions, &k, Req::default()).await),
        Some((403, "permission"))
    );
}

/// Counts activations; the first activation time of each key wins, like the real backends.
#[derive(Default)]
struct CountingLimits {
    calls: AtomicUsize,
    first: Mutex<HashMap<String, i64>>,
    fail: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl LimitBackend for CountingLimits {
    async fn admit(&self, _: &ClientKey, _: &str, _: u64, _: i64) -> Result<Admission, String> {
        Ok(Admission::Admitted)
    }
    async fn charge(&self, _: &ClientKey, _: u64, _: u64, _: i64) -> Result<(), String> {
        Ok(())
    }
    async fn release(&self, _: &str, _: &str) -> Result<(), String> {
        Ok(())
    }
    async fn activate(&self, key_id: &str, now_s: i64) -> Result<i64, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err("store down".into());
        }
        Ok(*self.first.lock().unwrap().entry(key_id.to_string()).or_insert(now_s))
    }
}

fn test_clock(start: i64) -> (Arc<AtomicI64>, Clock) {
    let now = Arc::new(AtomicI64::new(start));
    let n = now.clone();
    (now, Arc::new(move || n.load(Ordering::SeqCst)))
}

#[tokio::test]
async fn fixed_expiry_date() {
    let k = key(KeyPolicySpec {
        expires_at: Some("2027-01-01T00:00:00Z".into()),
        ..Default::default()
    });
    let at = 1_798_761_600; // 2027-01-01T00:00:00Z
    let limits = Arc::new(CountingLimits::default());
    let (now, clock) = test_clock(at - 1);
    let f = Expiry::with_clock(limits.clone(), clock);
    assert!(run(&f, &k, Req::default()).await.is_ok());
    now.store(at, Ordering::SeqCst);
    let e = run(&f, &k, Req::default()).await.unwrap_err();
    assert_eq!(
        (e.status, e.kind, e.reason),
        (401, RejectKind::Authentication, "expired_key")
    );
    assert_eq!(e.message, "API key has expired");
    // A fixed date never touches the backend.
    assert_eq!(limits.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn activation_on_first_use_is_cached_per_key() {
    let k = key(KeyPolicySpec {
        activate_for: Some("1h".into()),
        ..Default::default()
    });
    let limits = Arc::new(CountingLimits::default());
    let (now, clock) = test_clock(1_000_000);
    let f = Expiry::with_clock(limits.clone(), clock);
    assert!(run(&f, &k, Req::default()).await.is_ok());
    now.store(1_000_000 + 3_599, Ordering::SeqCst);
    assert!(run(&f, &k, Req::default()).await.is_ok());
    assert_eq!(
        limits.calls.load(Ordering::SeqCst),
        1,
        "one round trip per key and instance"
    );
    now.store(1_000_000 + 3_600, Ordering::SeqCst);
    assert_eq!(reason(run(&f, &k, Req::default()).await), Some((401, "expired_key")));

    // Another instance (a fresh filter) learns the first use from the shared backend.
    let (_, clock) = test_clock(1_000_000 + 3_600);
    let other = Expiry::with_clock(limits.clone(), clock);
    assert_eq!(
        reason(run(&other, &k, Req::default()).await),
        Some((401, "expired_key"))
    );
}

#[tokio::test]
async fn activation_fails_closed_when_the_backend_is_down() {
    let k = key(KeyPolicySpec {
        activate_for: Some("1d".into()),
        ..Default::default()
    });
    let limits = Arc::new(CountingLimits::default());
    limits.fail.store(true, Ordering::SeqCst);
    let f = Expiry::new(limits.clone());
    let e = run(&f, &k, Req::default()).await.unwrap_err();
    assert_eq!(
        (e.status, e.reason, e.retry_after),
        (503, "limits_unavailable", Some(1))
    );
    // Nothing was cached: the next request asks again and passes once the backend answers.
    limits.fail.store(false, Ordering::SeqCst);
    assert!(run(&f, &k, Req::default()).await.is_ok());
    assert_eq!(limits.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn clients_by_user_agent_and_service() {
    let k = key(KeyPolicySpec {
        clients: vec![ClientSpec::Predefined("claude_code".into())],
        ..Default::default()
    });
    let cc = "claude-cli/2.1.197 (external, cli)";
    let ok = Req {
        ua: Some(cc),
        ..Default::default()
    };
    assert!(run(&Clients, &k, ok).await.is_ok());
    for ua in [
        Some("curl/8.5.0"),
        None,
        Some("GeminiCLI/0.1.5 (linux; x64)"),
        Some("x claude-cli/2.1.1"),
    ] {
        let r = Req {
            ua,
            ..Default::default()
        };
        let e = run(&Clients, &k, r).await.unwrap_err();
        assert_eq!(
            (e.status, e.kind, e.reason),
            (403, RejectKind::Permission, "client_not_allowed")
        );
        assert!(e.message.contains("claude_code"), "{}", e.message);
    }
    // Claude Code's User-Agent does not open the OpenAI or Gemini endpoints.
    for service in [Service::OpenAI, Service::Gemini] {
        let r = Req {
            service,
            ua: Some(cc),
            ..Default::default()
        };
        assert_eq!(reason(run(&Clients, &k, r).await), Some((403, "client_not_allowed")));
    }

    let k = key(KeyPolicySpec {
        clients: vec![
            ClientSpec::Predefined("gemini_cli".into()),
            ClientSpec::Predefined("codex".into()),
            ClientSpec::Pattern {
                user_agent: "^my-secret-tool/".into(),
            },
        ],
        ..Default::default()
    });
    let gemini = Req {
        service: Service::Gemini,
        ua: Some("GeminiCLI/0.1.5 (linux; x64)"),
        ..Default::default()
    };
    assert!(run(&Clients, &k, gemini).await.is_ok());
    let codex = Req {
        service: Service::OpenAI,
        ua: Some("codex_cli_rs/0.40.0 (Mac OS 15.6.0; arm64)"),
        ..Default::default()
    };
    assert!(run(&Clients, &k, codex).await.is_ok());
    // A custom pattern may reach every service.
    let custom = Req {
        ua: Some("my-secret-tool/1"),
        ..Default::default()
    };
    assert!(run(&Clients, &k, custom).await.is_ok());
    // Codex on a Gemini endpoint: the User-Agent matched one rule, the service another.
    let mixed = Req {
        service: Service::Gemini,
        ua: Some("codex_exec/0.40.0"),
        ..Default::default()
    };
    let e = run(&Clients, &k, mixed).await.unwrap_err();
    assert_eq!(e.reason, "client_not_allowed");
    assert!(
        e.message.contains("gemini_cli") && e.message.contains("codex"),
        "{}",
        e.message
    );
    // Custom patterns are not echoed.
    assert!(!e.message.contains("my-secret-tool"), "{}", e.message);
}

#[tokio::test]
async fn ip_allow_and_deny_v4_and_v6() {
    let k = key(KeyPolicySpec {
        ip_allow: vec!["10.0.0.0/8".into(), "2001:db8::/32".into(), "192.168.1.7".into()],
        ip_deny: vec!["10.9.0.0/16".into(), "2001:db8:dead::/48".into()],
        ..Default::default()
    });
    let at = |ip: &'static str| Req {
        ip: Some(ip),
        ..Default::default()
    };
    for ip in ["10.1.2.3", "2001:db8::1", "192.168.1.7", "::ffff:10.1.2.3"] {
        assert!(run(&IpRules, &k, at(ip)).await.is_ok(), "{ip}");
    }
    for ip in ["10.9.1.1", "::ffff:10.9.1.1", "2001:db8:dead::5"] {
        let e = run(&IpRules, &k, at(ip)).await.unwrap_err();
        assert_eq!(
            (e.status, e.kind, e.reason),
            (403, RejectKind::Permission, "ip_denied"),
            "{ip}"
        );
        assert!(!e.message.contains("10."), "no ranges in messages: {}", e.message);
    }
    for ip in ["127.0.0.1", "192.168.1.8", "::1", "::ffff:127.0.0.1", "2001:db9::1"] {
        assert_eq!(
            reason(run(&IpRules, &k, at(ip)).await),
            Some((403, "ip_not_allowed")),
            "{ip}"
        );
    }
    // Unknown client address with rules set: refused.
    let unknown = Req {
        ip: None,
        ..Default::default()
    };
    assert_eq!(reason(run(&IpRules, &k, unknown).await), Some((403, "ip_not_allowed")));

    // A denylist alone lets everything else through, but not an unknown address.
    let k = key(KeyPolicySpec {
        ip_deny: vec!["127.0.0.0/8".into()],
        ..Default::default()
    });
    assert!(run(&IpRules, &k, at("10.0.0.1")).await.is_ok());
    assert_eq!(
        reason(run(&IpRules, &k, at("127.0.0.1")).await),
        Some((403, "ip_denied"))
    );
    assert_eq!(
        reason(run(&IpRules, &k, at("::ffff:127.0.0.1")).await),
        Some((403, "ip_denied"))
    );
    let unknown = Req {
        ip: None,
        ..Default::default()
    };
    assert!(run(&IpRules, &k, unknown).await.is_err());

    // A rule written in IPv4-mapped form matches the plain IPv4 peer too.
    let k = key(KeyPolicySpec {
        ip_allow: vec!["::ffff:10.0.0.0/104".into()],
        ..Default::default()
    });
    assert!(run(&IpRules, &k, at("10.3.3.3")).await.is_ok());
    assert!(run(&IpRules, &k, at("::ffff:10.3.3.3")).await.is_ok());
    assert!(run(&IpRules, &k, at("11.0.0.1")).await.is_err());
}

#[test]
fn model_names_lose_their_decorations() {
    for (raw, want) in [
        ("claude-opus-4-1", "claude-opus-4-1"),
        ("  Claude-Opus-4-1 ", "claude-opus-4-1"),
        ("claude-opus-4-1[1m]", "claude-opus-4-1"),
        ("anthropic/claude-opus-4-1", "claude-opus-4-1"),
        (
            "bedrock/us.anthropic.claude-opus-4-1-20250805-v1:0",
            "claude-opus-4-1-20250805",
        ),
        (
            "bedrock/us-east-1/anthropic.claude-opus-4-1-20250805-v1:0",
            "claude-opus-4-1-20250805",
        ),
        (
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "claude-sonnet-4-5-20250929",
        ),
        (
            "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "claude-sonnet-4-5-20250929",
        ),
        ("vertex_ai/claude-opus-4-1@20250805", "claude-opus-4-1-20250805"),
        ("claude-sonnet-4-5@default", "claude-sonnet-4-5"),
        (
            "arn:aws:bedrock:us-east-1:123:inference-profile/us.anthropic.claude-opus-4-1-20250805-v1:0",
            "claude-opus-4-1-20250805",
        ),
        ("claude-instant-v1", "claude-instant-v1"),
        ("gpt-4o", "gpt-4o"),
    ] {
        assert_eq!(policy_model_name(raw), want, "{raw}");
    }
    let m = |s| policy_model_name(s);
    assert!(model_entry_matches("claude-opus-4-1", &m("claude-opus-4-1-20250805")));
    assert!(model_entry_matches("Claude-Opus-4-1", &m("CLAUDE-OPUS-4-1")));
    assert!(model_entry_matches("claude-3-5-sonnet", &m("claude-3-5-sonnet-latest")));
    assert!(model_entry_matches(
        "bedrock/us.anthropic.claude-opus-4-1-v1:0",
        &m("claude-opus-4-1")
    ));
    assert!(!model_entry_matches("claude-opus-4", &m("claude-opus-4-1")));
    assert!(model_entry_matches("claude-opus-4", &m("claude-opus-4-20250514")));
    assert!(!model_entry_matches("claude-opus-4-1-20250805", &m("claude-opus-4-1")));
    assert!(model_entry_matches(
        "claude-opus-*",
        &m("vertex_ai/claude-opus-4-1@20250805")
    ));
    assert!(!model_entry_matches("claude-opus-*", &m("claude-sonnet-4-5")));
    assert!(!model_entry_matches("", &m("claude-opus-4-1")));
}

#[tokio::test]
async fn model_blacklist_and_allowlist() {
    let k = key(KeyPolicySpec {
        model_blacklist: vec!["claude-opus-4-1".into()],
        ..Default::default()
    });
    let model = |m: &'static str| Req {
        model: Some(m),
        ..Default::default()
    };
    for m in [
        "claude-opus-4-1",
        "CLAUDE-OPUS-4-1",
        "anthropic/claude-opus-4-1",
        "claude-opus-4-1[1m]",
        "us.anthropic.claude-opus-4-1-20250805-v1:0",
        "vertex_ai/claude-opus-4-1@20250805",
        "claude-opus-4-1-20250805",
    ] {
        let e = run(&Models, &k, model(m)).await.unwrap_err();
        assert_eq!(
            (e.status, e.kind, e.reason),
            (403, RejectKind::Permission, "model_not_allowed"),
            "{m}"
        );
        assert!(e.message.contains(m.trim()), "{}", e.message);
    }
    for m in ["claude-sonnet-4-5", "claude-opus-4-5", "claude-opus-4"] {
        assert!(run(&Models, &k, model(m)).await.is_ok(), "{m}");
    }
    // No model in the body: nothing to refuse on a blacklist.
    let none = Req {
        model: None,
        ..Default::default()
    };
    assert!(run(&Models, &k, none).await.is_ok());

    let k = key(KeyPolicySpec {
        model_blacklist: vec!["claude-sonnet-4-5-20250929".into()],
        model_allowlist: Some(vec!["claude-sonnet-*".into(), "claude-haiku-4-5".into()]),
        ..Default::default()
    });
    for m in [
        "claude-sonnet-4-5",
        "claude-haiku-4-5-20251001",
        "bedrock/claude-sonnet-4",
    ] {
        assert!(run(&Models, &k, model(m)).await.is_ok(), "{m}");
    }
    for m in ["claude-opus-4-1", "claude-sonnet-4-5-20250929", "claude-haiku-4"] {
        assert_eq!(
            reason(run(&Models, &k, model(m)).await),
            Some((403, "model_not_allowed")),
            "{m}"
        );
    }
    let none = Req {
        model: None,
        ..Default::default()
    };
    assert_eq!(reason(run(&Models, &k, none).await), Some((403, "model_not_allowed")));
}

#[test]
fn an_entry_covers_the_aliases_of_its_model_and_no_other_model() {
    let covers = |entry: &str, model: &str| model_entry_matches(entry, &policy_model_name(model));
    // Anthropic's names of one model: the `-0` alias (a minor version 0), dated snapshots (also
    // behind the alias), `-latest`, and their provider spellings.
    for model in [
        "claude-opus-4",
        "claude-opus-4-0",
        "claude-opus-4-20250514",
        "claude-opus-4-0-20250514",
        "claude-opus-4-latest",
        "CLAUDE-OPUS-4-0",
        "anthropic/claude-opus-4-0",
        "us.anthropic.claude-opus-4-20250514-v1:0",
        "vertex_ai/claude-opus-4@20250514",
        "claude-opus-4-0[1m]",
    ] {
        assert!(covers("claude-opus-4", model), "claude-opus-4 covers {model}");
        assert!(covers("claude-opus-4-0", model), "claude-opus-4-0 covers {model}");
    }
    assert!(covers("claude-sonnet-4", "claude-sonnet-4-0"));
    assert!(covers("claude-sonnet-4-0", "claude-sonnet-4-20250514"));
    assert!(covers("claude-3-7-sonnet", "claude-3-7-sonnet-latest"));
    assert!(covers("claude-3-7-sonnet-latest", "claude-3-7-sonnet-20250219"));
    assert!(covers("claude-3-7-sonnet-latest", "claude-3-7-sonnet"));
    // Other models: a later minor version is not an alias.
    for model in [
        "claude-opus-4-1",
        "claude-opus-4-1-20250805",
        "claude-opus-4-5",
        "claude-opus-4-5-20251101",
        "claude-opus-4-10",
        "claude-opus-40",
        "claude-opus-4-01",
        "claude-sonnet-4-0",
    ] {
        assert!(!covers("claude-opus-4", model), "claude-opus-4 must not cover {model}");
        assert!(
            !covers("claude-opus-4-0", model),
            "claude-opus-4-0 must not cover {model}"
        );
    }
    assert!(!covers("claude-opus-4-1", "claude-opus-4"));
    assert!(!covers("claude-opus-4-1", "claude-opus-4-0"));
    assert!(!covers("claude-3-7-sonnet", "claude-3-5-sonnet-latest"));
    // A dated entry names that snapshot only (with or without the `-0`).
    assert!(covers("claude-opus-4-20250514", "claude-opus-4-0-20250514"));
    assert!(covers("claude-opus-4-0-20250514", "claude-opus-4-20250514"));
    assert!(!covers("claude-opus-4-20250514", "claude-opus-4-20990101"));
    assert!(!covers("claude-opus-4-20250514", "claude-opus-4-0"));
    // The `-0` alias is Anthropic's naming: other vendors' names are compared as they are.
    assert!(!covers("gpt-4", "gpt-4-0"));
}

#[tokio::test]
async fn a_blacklisted_model_is_refused_under_its_aliases() {
    let k = key(KeyPolicySpec {
        model_blacklist: vec!["claude-opus-4".into()],
        ..Default::default()
    });
    let model = |m: &'static str| Req {
        model: Some(m),
        ..Default::default()
    };
    for m in ["claude-opus-4-0", "claude-opus-4-20250514", "claude-opus-4-latest"] {
        assert_eq!(
            reason(run(&Models, &k, model(m)).await),
            Some((403, "model_not_allowed")),
            "{m}"
        );
    }
    for m in ["claude-opus-4-1", "claude-opus-4-5", "claude-sonnet-4-0"] {
        assert!(run(&Models, &k, model(m)).await.is_ok(), "{m}");
    }
    // An allowlist naming the alias admits the model under every name, and nothing else.
    let k = key(KeyPolicySpec {
        model_allowlist: Some(vec!["claude-sonnet-4-0".into()]),
        ..Default::default()
    });
    for m in ["claude-sonnet-4", "claude-sonnet-4-20250514", "claude-sonnet-4-0"] {
        assert!(run(&Models, &k, model(m)).await.is_ok(), "{m}");
    }
    for m in ["claude-sonnet-4-5", "claude-sonnet-4-1"] {
        assert_eq!(
            reason(run(&Models, &k, model(m)).await),
            Some((403, "model_not_allowed")),
            "{m}"
        );
    }
}

#[tokio::test]
async fn registered_under_their_names_in_the_chain() {
    let deps = crate::FilterDeps {
        keys: Arc::new(NoKeys),
        limits: Arc::new(CountingLimits::default()),
    };
    let order: Vec<String> = ["key_auth", "permissions", "expiry", "clients", "ip", "models"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let chain = Registry::with_builtins().build(&order, &deps).unwrap();
    assert_eq!(chain.names(), order);
}

struct NoKeys;
impl crate::KeyDirectory for NoKeys {
    fn find(&self, _: &str) -> Option<Arc<ClientKey>> {
        None
    }
}
