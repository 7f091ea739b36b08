use super::*;

struct Dir(Vec<ClientKey>);
impl KeyDirectory for Dir {
    fn find(&self, presented: &str) -> Option<Arc<ClientKey>> {
        self.0.iter().find(|k| &*k.id == presented).cloned().map(Arc::new)
    }
}

struct NoLimits;
#[async_trait]
impl LimitBackend for NoLimits {
    async fn admit(&self, _: &ClientKey, _: &str, _: u64, _: i64) -> Result<Admission, String> {
        Ok(Admission::Admitted)
    }
    async fn charge(&self, _: &ClientKey, _: u64, _: u64, _: i64) -> Result<(), String> {
        Ok(())
    }
    async fn release(&self, _: &str, _: &str) -> Result<(), String> {
        Ok(())
    }
    async fn activate(&self, _: &str, now_s: i64) -> Result<i64, String> {
        Ok(now_s)
    }
}

fn deps() -> FilterDeps {
    FilterDeps {
        limits: Arc::new(NoLimits),
        keys: Arc::new(Dir(vec![
            ClientKey {
                id: "good".into(),
                name: "a".into(),
                enabled: true,
                bind: None,
                policy: Default::default(),
            },
            ClientKey {
                id: "off".into(),
                name: "b".into(),
                enabled: false,
                bind: None,
                policy: Default::default(),
            },
        ])),
    }
}

fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, v.parse().unwrap());
    }
    h
}

async fn run(chain: &Chain, h: &http::HeaderMap, q: Option<&str>) -> Result<Option<Arc<ClientKey>>, Rejection> {
    let mut holds = Vec::new();
    let mut cx = FilterContext {
        route: RouteInfo {
            service: Service::Claude,
            endpoint: "messages",
        },
        headers: h,
        query: q,
        client_ip: None,
        key: None,
        facts: None,
        holds: &mut holds,
    };
    chain.run_headers(&mut cx).await?;
    Ok(cx.key)
}

#[test]
fn key_location_order() {
    let h = headers(&[("authorization", "Bearer b"), ("x-api-key", "a")]);
    assert_eq!(presented_key(&h, None), Some("a"));
    let h = headers(&[("authorization", "Bearer b"), ("x-goog-api-key", "g")]);
    assert_eq!(presented_key(&h, None), Some("b"));
    let h = headers(&[("x-goog-api-key", "g"), ("api-key", "z")]);
    assert_eq!(presented_key(&h, None), Some("g"));
    let h = headers(&[("api-key", "z")]);
    assert_eq!(presented_key(&h, Some("key=q")), Some("z"));
    assert_eq!(presented_key(&headers(&[]), Some("alt=sse&key=q")), Some("q"));
    assert_eq!(presented_key(&headers(&[("x-api-key", "  ")]), None), None);
}

#[tokio::test]
async fn key_auth_accepts_and_refuses() {
    let chain = Registry::with_builtins().build(&["key_auth".into()], &deps()).unwrap();
    let ok = run(&chain, &headers(&[("x-api-key", "good")]), None).await.unwrap();
    assert_eq!(ok.unwrap().name.as_ref(), "a");
    let e = run(&chain, &headers(&[]), None).await.unwrap_err();
    assert_eq!((e.status, e.reason), (401, "missing_key"));
    let e = run(&chain, &headers(&[("x-api-key", "nope")]), None).await.unwrap_err();
    assert_eq!((e.status, e.reason), (401, "invalid_key"));
    let e = run(&chain, &headers(&[("x-api-key", "off")]), None).await.unwrap_err();
    assert_eq!((e.status, e.reason), (401, "disabled_key"));
}

struct DenyHeader;
#[async_trait]
impl Filter for DenyHeader {
    fn name(&self) -> &str {
        "deny_header"
    }
    async fn on_headers(&self, cx: &mut FilterContext<'_>) -> Result<(), Rejection> {
        if cx.headers.contains_key("x-forbidden") {
            return Err(Rejection::new(
                403,
                RejectKind::Permission,
                "header_rule",
                "forbidden header",
            ));
        }
        Ok(())
    }
}

#[tokio::test]
async fn custom_filters_register_by_name_and_run_in_order() {
    let mut reg = Registry::with_builtins();
    reg.register("deny_header", |_| Ok(Arc::new(DenyHeader) as Arc<dyn Filter>));
    let chain = reg.build(&["key_auth".into(), "deny_header".into()], &deps()).unwrap();
    assert_eq!(chain.names(), vec!["key_auth", "deny_header"]);
    let e = run(&chain, &headers(&[("x-api-key", "good"), ("x-forbidden", "1")]), None)
        .await
        .unwrap_err();
    assert_eq!(e.status, 403);
    // key_auth runs first, so an unauthenticated caller learns nothing about later rules.
    let e = run(&chain, &headers(&[("x-forbidden", "1")]), None).await.unwrap_err();
    assert_eq!(e.status, 401);
}

#[test]
fn chain_building_errors_are_clear() {
    let reg = Registry::with_builtins();
    assert!(
        reg.build(&["nope".into()], &deps())
            .unwrap_err()
            .contains("start with `key_auth`")
    );
    let e = reg.build(&["key_auth".into(), "nope".into()], &deps()).unwrap_err();
    assert!(e.contains("unknown filter `nope`"), "{e}");
    let e = reg.build(&["key_auth".into(), "key_auth".into()], &deps()).unwrap_err();
    assert!(e.contains("twice"), "{e}");
    // The same answers without building (what config validation uses).
    for order in [
        vec!["nope".to_string()],
        vec!["permissions".into(), "key_auth".into()],
        vec!["key_auth".into(), "nope".into()],
        vec!["key_auth".into(), "key_auth".into()],
        vec![],
    ] {
        assert_eq!(
            reg.check_order(&order).unwrap_err(),
            reg.build(&order, &deps()).unwrap_err(),
            "{order:?}"
        );
    }
    assert!(reg.check_order(&["key_auth".into(), "models".into()]).is_ok());
}

/// Found by the config property tests: a day whose third byte falls inside a multi-byte character
/// panicked (byte slicing) instead of being refused, in relay.yaml and through the admin API.
#[test]
fn weekly_reset_with_a_multibyte_day_is_refused_not_a_panic() {
    use crate::policy::parse_weekly_reset;
    assert!(parse_weekly_reset("a日 0:00").is_err());
    assert!(parse_weekly_reset("éé 00:00").is_err());
    assert_eq!(parse_weekly_reset("Monday 07:30"), Ok((0, 450)));
    assert_eq!(parse_weekly_reset("sun 23:59"), Ok((6, 23 * 60 + 59)));
}
