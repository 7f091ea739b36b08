//! Per-account outbound proxies through the real `claude-relay` binary: SOCKS5 (remote DNS,
//! RFC 1929 credentials) and HTTP CONNECT (`Proxy-Authorization: Basic`), against tiny real proxies
//! and the mock upstream. The upstream is addressed as `localhost`, so a proxy that receives the
//! name (not an address) proves the name was resolved by the proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;
use support::client;

use std::time::Duration;

use support::mock::{MockUpstream, json_for, stream_for};
use support::proxies::{Kind, ProxyServer, Target, basic};
use support::{ALICE, RelayProcess, account_yaml, free_port, metric_sum};

const SONNET: &str = "claude-sonnet-4-5";
const HAIKU: &str = "claude-haiku-4-5";
/// A password distinctive enough to search the relay's log and answers for.
const PASS: &str = "Pr0xyPa55-zq81x";

fn body(model: &str, stream: bool) -> String {
    format!(r#"{{"model":"{model}","max_tokens":64,"stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#)
}

async fn post(relay: &RelayProcess, model: &str, stream: bool) -> reqwest::Response {
    client()
        .post(format!("{}/v1/messages", relay.base()))
        .header("x-api-key", ALICE)
        .header("anthropic-version", "2023-06-01")
        .body(body(model, stream))
        .send()
        .await
        .unwrap()
}

/// A request that must succeed through the proxy, streamed or not, with the answer intact. It
/// returns once the relay has finished the request, not only once the client has read the
/// answer (`relay_requests_total` is counted in the logging phase, and Pingora hands the upstream
/// connection back to its pool before that phase): the pooled tunnel is then back in the pool for
/// the next request, which the connection-count assertions rely on.
async fn ok(relay: &RelayProcess, model: &str, stream: bool) {
    let before = metric_sum(relay, "relay_requests_total", "").await;
    let r = post(relay, model, stream).await;
    assert_eq!(r.status(), 200, "log:\n{}", relay.log_text());
    let got = r.bytes().await.unwrap();
    if stream {
        assert_eq!(&got[..], &stream_for(model, false)[..]);
    } else {
        let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(v, json_for(model));
    }
    support::eventually(|| async { (metric_sum(relay, "relay_requests_total", "").await > before).then_some(()) })
        .await;
}

/// An account whose upstream is the mock, addressed by the name `localhost`, behind `proxy`.
fn account(name: &str, mock: &MockUpstream, proxy: &str, extra: &str) -> String {
    let url = format!("http://localhost:{}", mock.addr.port());
    account_yaml(name, &url, &format!(", proxy: \"{proxy}\"{extra}"))
}

async fn start_proxy(kind: Kind, users: &[(&str, &str)]) -> ProxyServer {
    ProxyServer::start(kind, users).await
}

/// The proxy saw a tunnel to the name `localhost` (not an address) at the mock's port, with
/// these credentials.
fn assert_tunnel(proxy: &ProxyServer, mock: &MockUpstream, user: Option<(&str, &str)>) {
    let conns = proxy.conns();
    assert!(!conns.is_empty(), "the proxy saw no connection");
    let port = mock.addr.port();
    for c in conns {
        assert_eq!(c.target, Some(Target::Name("localhost".into(), port)));
        match proxy.kind {
            Kind::Socks5 => {
                assert_eq!(c.credentials, user.map(|(u, p)| (u.to_string(), p.to_string())));
            }
            Kind::HttpConnect => {
                assert_eq!(
                    c.request_line.as_deref(),
                    Some(format!("CONNECT localhost:{port} HTTP/1.1").as_str())
                );
                assert_eq!(c.host_header, Some(format!("localhost:{port}")));
                assert_eq!(c.proxy_authorization, user.map(|(u, p)| basic(u, p)));
            }
        }
    }
}

async fn tunnels_streaming_and_json(kind: Kind) {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(kind, &[("relay", PASS)]).await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}",
        account("main", &mock, &proxy.url(Some(("relay", PASS))), "")
    ))
    .await;
    ok(&relay, SONNET, true).await;
    ok(&relay, SONNET, false).await;
    let seen = mock.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.path_and_query, "/v1/messages");
        assert_eq!(s.header("x-api-key").as_deref(), Some("sk-ant-api03-upstream-main"));
        assert_eq!(s.header("host"), Some(format!("localhost:{}", mock.addr.port())));
    }
    assert_tunnel(&proxy, &mock, Some(("relay", PASS)));
}

async fn sequential_requests_reuse_one_tunnel(kind: Kind) {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(kind, &[("relay", PASS)]).await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}",
        account("main", &mock, &proxy.url(Some(("relay", PASS))), "")
    ))
    .await;
    for i in 0..5 {
        ok(&relay, SONNET, i % 2 == 0).await;
    }
    assert_eq!(mock.hits(), 5);
    assert_eq!(
        proxy.connections(),
        1,
        "5 sequential requests must share one pooled tunnel: {:?}",
        proxy.conns()
    );
    assert_tunnel(&proxy, &mock, Some(("relay", PASS)));
}

/// Account `one` serves only Sonnet, `two` only Haiku, so each request's account is known.
async fn alternate_between_two_accounts(relay: &RelayProcess, mock: &MockUpstream) {
    for i in 0..6 {
        let model = if i % 2 == 0 { SONNET } else { HAIKU };
        ok(relay, model, i % 3 == 0).await;
    }
    let seen = mock.seen();
    assert_eq!(seen.len(), 6);
    for s in seen {
        let want = if s.json()["model"] == SONNET { "one" } else { "two" };
        assert_eq!(s.header("x-api-key"), Some(format!("sk-ant-api03-upstream-{want}")));
    }
}

async fn accounts_behind_different_proxies_use_their_own(kind: Kind) {
    let mock = MockUpstream::start().await;
    let p1 = start_proxy(kind, &[("one", "pass-one")]).await;
    let p2 = start_proxy(kind, &[("two", "pass-two")]).await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}{}",
        account(
            "one",
            &mock,
            &p1.url(Some(("one", "pass-one"))),
            &format!(", models: [{SONNET}]")
        ),
        account(
            "two",
            &mock,
            &p2.url(Some(("two", "pass-two"))),
            &format!(", models: [{HAIKU}]")
        ),
    ))
    .await;
    alternate_between_two_accounts(&relay, &mock).await;
    assert_eq!(
        (p1.connections(), p2.connections()),
        (1, 1),
        "{:?} / {:?}",
        p1.conns(),
        p2.conns()
    );
    assert_tunnel(&p1, &mock, Some(("one", "pass-one")));
    assert_tunnel(&p2, &mock, Some(("two", "pass-two")));
}

/// The same proxy address with other credentials is another pool group: pingora's pool hash does
/// not see the custom L4 connector, so only the peer's `group_key` keeps these apart.
async fn same_proxy_other_credentials_do_not_share_connections(kind: Kind) {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(kind, &[("one", "pass-one"), ("two", "pass-two")]).await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}{}",
        account(
            "one",
            &mock,
            &proxy.url(Some(("one", "pass-one"))),
            &format!(", models: [{SONNET}]")
        ),
        account(
            "two",
            &mock,
            &proxy.url(Some(("two", "pass-two"))),
            &format!(", models: [{HAIKU}]")
        ),
    ))
    .await;
    alternate_between_two_accounts(&relay, &mock).await;
    let conns = proxy.conns();
    assert_eq!(conns.len(), 2, "one pooled tunnel per account: {conns:?}");
    let mut users: Vec<String> = conns
        .iter()
        .map(|c| match kind {
            Kind::Socks5 => c.credentials.clone().unwrap().0,
            Kind::HttpConnect => c.proxy_authorization.clone().unwrap(),
        })
        .collect();
    users.sort();
    let mut want = match kind {
        Kind::Socks5 => vec!["one".to_string(), "two".to_string()],
        Kind::HttpConnect => vec![basic("one", "pass-one"), basic("two", "pass-two")],
    };
    want.sort();
    assert_eq!(users, want);
}

async fn without_credentials(kind: Kind) {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(kind, &[]).await;
    let relay = RelayProcess::start(&format!("accounts:\n{}", account("main", &mock, &proxy.url(None), ""))).await;
    ok(&relay, SONNET, true).await;
    assert_eq!(mock.hits(), 1);
    assert_tunnel(&proxy, &mock, None);
}

/// A 502 in the Anthropic error shape, said by the relay, with no trace of the password in the
/// answer or the log. Returns the error message.
async fn assert_502(relay: &RelayProcess, mock: &MockUpstream) -> String {
    let r = post(relay, SONNET, true).await;
    assert_eq!(r.status(), 502, "log:\n{}", relay.log_text());
    assert_eq!(r.headers()["x-relay-error-source"], "relay");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let text = r.text().await.unwrap();
    assert!(!text.contains(PASS), "the answer leaks the proxy password: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "api_error");
    let message = v["error"]["message"].as_str().unwrap().to_string();
    assert_eq!(mock.hits(), 0);
    // Give the log a moment to reach the file, then make sure the password is not in it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = relay.log_text();
    assert!(!log.contains(PASS), "the relay log leaks the proxy password:\n{log}");
    message
}

async fn wrong_credentials_answer_502(kind: Kind) {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(kind, &[("relay", "the-right-one")]).await;
    let relay = RelayProcess::start(&format!(
        "accounts:\n{}",
        account("main", &mock, &proxy.url(Some(("relay", PASS))), "")
    ))
    .await;
    let message = assert_502(&relay, &mock).await;
    // The proxy was asked with the configured (wrong) credentials and refused.
    let conns = proxy.conns();
    assert_eq!(conns.len(), 1, "{conns:?}");
    match kind {
        Kind::Socks5 => assert_eq!(conns[0].credentials, Some(("relay".into(), PASS.into()))),
        Kind::HttpConnect => assert_eq!(conns[0].proxy_authorization, Some(basic("relay", PASS))),
    }
    // The failure names the proxy, masked.
    let named = format!(
        "{}://***@{}",
        if kind == Kind::Socks5 { "socks5" } else { "http" },
        proxy.addr
    );
    let log = relay.log_text();
    assert!(
        message.contains(&named) || log.contains(&named),
        "neither the answer ({message}) nor the log names {named}:\n{log}"
    );
}

async fn dead_proxy_answers_502(kind: Kind) {
    let mock = MockUpstream::start().await;
    let scheme = if kind == Kind::Socks5 { "socks5" } else { "http" };
    let dead = format!("{scheme}://relay:{PASS}@127.0.0.1:{}", free_port());
    let relay = RelayProcess::start(&format!("accounts:\n{}", account("main", &mock, &dead, ""))).await;
    assert_502(&relay, &mock).await;
}

#[tokio::test]
async fn socks5_tunnels_streaming_and_json_with_remote_dns_and_credentials() {
    tunnels_streaming_and_json(Kind::Socks5).await;
}

#[tokio::test]
async fn socks5_sequential_requests_reuse_one_tunnel() {
    sequential_requests_reuse_one_tunnel(Kind::Socks5).await;
}

#[tokio::test]
async fn socks5_accounts_behind_different_proxies_use_their_own() {
    accounts_behind_different_proxies_use_their_own(Kind::Socks5).await;
}

#[tokio::test]
async fn socks5_same_proxy_other_credentials_do_not_share_connections() {
    same_proxy_other_credentials_do_not_share_connections(Kind::Socks5).await;
}

#[tokio::test]
async fn socks5_without_credentials_uses_no_auth() {
    without_credentials(Kind::Socks5).await;
}

#[tokio::test]
async fn socks5_wrong_credentials_answer_502_without_leaking_the_password() {
    wrong_credentials_answer_502(Kind::Socks5).await;
}

#[tokio::test]
async fn socks5_dead_proxy_answers_502() {
    dead_proxy_answers_502(Kind::Socks5).await;
}

#[tokio::test]
async fn http_connect_tunnels_streaming_and_json_with_credentials() {
    tunnels_streaming_and_json(Kind::HttpConnect).await;
}

#[tokio::test]
async fn http_connect_sequential_requests_reuse_one_tunnel() {
    sequential_requests_reuse_one_tunnel(Kind::HttpConnect).await;
}

#[tokio::test]
async fn http_connect_accounts_behind_different_proxies_use_their_own() {
    accounts_behind_different_proxies_use_their_own(Kind::HttpConnect).await;
}

#[tokio::test]
async fn http_connect_same_proxy_other_credentials_do_not_share_connections() {
    same_proxy_other_credentials_do_not_share_connections(Kind::HttpConnect).await;
}

#[tokio::test]
async fn http_connect_without_credentials() {
    without_credentials(Kind::HttpConnect).await;
}

#[tokio::test]
async fn http_connect_wrong_credentials_answer_502_without_leaking_the_password() {
    wrong_credentials_answer_502(Kind::HttpConnect).await;
}

#[tokio::test]
async fn http_connect_dead_proxy_answers_502() {
    dead_proxy_answers_502(Kind::HttpConnect).await;
}
