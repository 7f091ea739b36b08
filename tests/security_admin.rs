//! Security of the admin API through the real binary: the login limiter under a burst, backoff per
//! user name and client address (behind a trusted proxy too), what failed logins leave in the
//! log, sliding sessions, and the generated first-start password.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(clippy::doc_lazy_continuation, clippy::type_complexity)]
mod support;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{ADMIN_PASSWORD, RelayProcess, eventually};

/// Starts a relay whose login backoff allows 3 free failures, then waits `base`, doubling.
async fn start(base: &str, extra: &str) -> RelayProcess {
    let admin =
        format!("username: admin, password: {ADMIN_PASSWORD}, login_backoff: {{ after: 3, base: {base}, max: 15m }}");
    RelayProcess::start_with_admin(tempfile::tempdir().unwrap(), &admin, extra, &[]).await
}

/// An HTTP client whose connections leave from `from` (any address of 127.0.0.0/8 is local).
fn client_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// A login answer: status and `Retry-After` in seconds.
#[derive(Debug, Clone, Copy)]
struct Login {
    status: u16,
    retry_after: Option<u64>,
}

async fn login(c: &reqwest::Client, relay: &RelayProcess, user: &str, password: &str, xff: Option<&str>) -> Login {
    let mut rb = c
        .post(format!("{}/admin/api/login", relay.admin()))
        .json(&json!({"username": user, "password": password}));
    if let Some(x) = xff {
        rb = rb.header("x-forwarded-for", x);
    }
    let r = rb.send().await.unwrap();
    Login {
        status: r.status().as_u16(),
        retry_after: r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse().unwrap()),
    }
}

/// Logs in with the right password, waiting out the backoff when told to; returns the answer
/// and how many 429s came first.
async fn login_after_backoff(c: &reqwest::Client, relay: &RelayProcess, xff: Option<&str>) -> (Login, u32) {
    let mut refused = 0;
    loop {
        let a = login(c, relay, "admin", ADMIN_PASSWORD, xff).await;
        if a.status != 429 || refused > 5 {
            return (a, refused);
        }
        refused += 1;
        tokio::time::sleep(Duration::from_secs(a.retry_after.unwrap())).await;
    }
}

/// A field of `/proc/<pid>/status`, in KiB (`VmHWM`, `VmRSS`).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Sends 200 wrong logins at once from `from`, user names from `user(i)`; the answers.
async fn burst(relay: &RelayProcess, from: &str, user: impl Fn(usize) -> String) -> Vec<Login> {
    let c = client_from(from);
    futures_util::future::join_all((0..200).map(|i| {
        let (c, user) = (c.clone(), user(i));
        async move { login(&c, relay, &user, &format!("wrong-password-{i}"), None).await }
    }))
    .await
}

fn by_status(answers: &[Login]) -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for a in answers {
        *counts.entry(a.status).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn a_burst_of_wrong_logins_is_counted_before_verification_and_memory_stays_flat() {
    let relay = start("5s", "").await;
    let pid = relay.pid();
    let hwm_before = proc_status_kib(pid, "VmHWM");
    let rss_before = proc_status_kib(pid, "VmRSS");

    // 200 wrong passwords for one user from one address, all at once: the first 3 are verified
    // (and fail), every other one is refused without verification.
    let t = Instant::now();
    let same_user = burst(&relay, "127.0.0.1", |_| "admin".into()).await;
    let counts = by_status(&same_user);
    let rss_after_first = proc_status_kib(pid, "VmRSS");
    eprintln!(
        "same user: {counts:?} in {:?}, VmRSS {rss_after_first} KiB",
        t.elapsed()
    );
    assert!(counts.get(&401).copied().unwrap_or(0) <= 3, "{counts:?}");
    assert!(
        counts.get(&429).copied().unwrap_or(0) >= 150,
        "most are told to wait: {counts:?}"
    );
    for a in &same_user {
        assert!(matches!(a.status, 401 | 429 | 503), "{a:?}");
        if a.status != 401 {
            assert!(a.retry_after.is_some_and(|s| s >= 1), "{a:?}");
        }
    }

    // 200 user names from another address: the address's looser limit (10 x 3) bounds the
    // verifications, and they run a few at a time.
    let t = Instant::now();
    let many_users = burst(&relay, "127.0.0.3", |i| format!("user-{i}")).await;
    let counts = by_status(&many_users);
    eprintln!("many users: {counts:?} in {:?}", t.elapsed());
    assert!(counts.get(&401).copied().unwrap_or(0) <= 30, "{counts:?}");
    for a in &many_users {
        assert!(matches!(a.status, 401 | 429 | 503), "{a:?}");
        if a.status != 401 {
            assert!(a.retry_after.is_some_and(|s| s >= 1), "{a:?}");
        }
    }

    let hwm_after = proc_status_kib(pid, "VmHWM");
    let rss_after = proc_status_kib(pid, "VmRSS");
    eprintln!("VmHWM {hwm_before} -> {hwm_after} KiB, VmRSS {rss_before} -> {rss_after} KiB");
    // Two verification threads keep 19 MiB each; nothing else grows with the number of logins.
    assert!(
        hwm_after.saturating_sub(hwm_before) < 100 * 1024,
        "peak memory grew from {hwm_before} KiB to {hwm_after} KiB"
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 100 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(
        rss_after.saturating_sub(rss_after_first) < 30 * 1024,
        "the second burst's verifications added memory: {rss_after_first} KiB -> {rss_after} KiB"
    );

    // The administrator still gets in from the first address once its short delay has run.
    let (ok, _) = login_after_backoff(&client_from("127.0.0.1"), &relay, None).await;
    assert_eq!(ok.status, 200, "{ok:?}");
}

#[tokio::test]
async fn wrong_passwords_back_off_and_then_the_right_password_works() {
    let relay = start("1s", "").await;
    let c = client_from("127.0.0.1");
    // Three free failures.
    for i in 0..3 {
        let a = login(&c, &relay, "admin", "wrong-password", None).await;
        assert_eq!(a.status, 401, "attempt {}: {a:?}", i + 1);
    }
    // Then each attempt waits 1 s, 2 s...: refused (429) before, verified after.
    for wait in [1, 2] {
        let a = login(&c, &relay, "admin", "wrong-password", None).await;
        assert_eq!(a.status, 429, "{a:?}");
        let told = a.retry_after.unwrap();
        assert!((1..=wait).contains(&told), "{a:?}");
        tokio::time::sleep(Duration::from_secs(told)).await;
        let a = login(&c, &relay, "admin", "wrong-password", None).await;
        assert_eq!(a.status, 401, "after {told} s: {a:?}");
    }
    // Five failures: the right password is refused while the delay (4 s) runs, not after it.
    let early = login(&c, &relay, "admin", ADMIN_PASSWORD, None).await;
    assert_eq!(early.status, 429, "{early:?}");
    assert!(early.retry_after.is_some_and(|s| (1..=4).contains(&s)), "{early:?}");
    let (ok, refused) = login_after_backoff(&c, &relay, None).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(refused <= 1, "{refused} more refusals after waiting the announced time");
    // The success cleared the failures: a wrong password is verified again at once.
    let a = login(&c, &relay, "admin", "wrong-password", None).await;
    assert_eq!(a.status, 401, "{a:?}");
}

#[tokio::test]
async fn cycling_user_names_from_one_address_is_slowed_too() {
    let relay = start("1m", "").await;
    let c = client_from("127.0.0.4");
    // Each user name has its 3 free failures, but the address has 10 x 3 across all of them.
    for i in 0..30 {
        let a = login(&c, &relay, &format!("user-{i}"), "wrong-password", None).await;
        assert_eq!(a.status, 401, "attempt {}: {a:?}", i + 1);
    }
    let a = login(&c, &relay, "yet-another-user", "wrong-password", None).await;
    assert_eq!(a.status, 429, "{a:?}");
    assert!(a.retry_after.is_some_and(|s| (1..=60).contains(&s)), "{a:?}");
    // Another address is not slowed.
    let other = login(&client_from("127.0.0.5"), &relay, "user-0", "wrong-password", None).await;
    assert_eq!(other.status, 401, "{other:?}");
}

#[tokio::test]
async fn clients_behind_a_trusted_proxy_back_off_separately() {
    let relay = start("1m", "trusted_proxies: [127.0.0.1/32]\n").await;
    let proxy = client_from("127.0.0.1");
    let (a, b) = (Some("198.51.100.1"), Some("198.51.100.2"));
    for _ in 0..3 {
        assert_eq!(login(&proxy, &relay, "admin", "wrong-password", a).await.status, 401);
    }
    let refused = login(&proxy, &relay, "admin", ADMIN_PASSWORD, a).await;
    assert_eq!(refused.status, 429, "{refused:?}");
    // What client A writes left of the proxy's entry does not make it someone else.
    let forged = login(
        &proxy,
        &relay,
        "admin",
        ADMIN_PASSWORD,
        Some("198.51.100.2, 198.51.100.1"),
    )
    .await;
    assert_eq!(forged.status, 429, "{forged:?}");
    // Client B behind the same proxy is not delayed: its wrong password is verified, its right
    // one works.
    assert_eq!(login(&proxy, &relay, "admin", "wrong-password", b).await.status, 401);
    assert_eq!(login(&proxy, &relay, "admin", ADMIN_PASSWORD, b).await.status, 200);
    // Nor is the proxy's own address.
    assert_eq!(login(&proxy, &relay, "admin", ADMIN_PASSWORD, None).await.status, 200);
    // The failures were logged under the forwarded client's address.
    eventually(|| async {
        let log = relay.log_text();
        (log.lines()
            .filter(|l| l.contains("failed admin login") && l.contains("198.51.100.1"))
            .count()
            == 3)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let relay = start("1m", "trusted_proxies: [127.0.0.1/32]\n").await;
    // 127.0.0.2 is not a trusted proxy: whatever X-Forwarded-For it sends, it is 127.0.0.2.
    let c = client_from("127.0.0.2");
    for i in 0..3 {
        let xff = format!("203.0.113.{i}");
        assert_eq!(
            login(&c, &relay, "admin", "wrong-password", Some(&xff)).await.status,
            401
        );
    }
    let a = login(&c, &relay, "admin", ADMIN_PASSWORD, Some("203.0.113.99")).await;
    assert_eq!(a.status, 429, "a forged X-Forwarded-For escaped the backoff: {a:?}");
    eventually(|| async {
        let log = relay.log_text();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("failed admin login")).collect();
        (lines.len() == 3
            && lines
                .iter()
                .all(|l| l.contains("client=127.0.0.2") && !l.contains("203.0.113")))
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn failed_logins_are_logged_without_the_password() {
    let relay = start("1s", "").await;
    let c = client_from("127.0.0.1");
    let password = "hunter2-guess-not-for-logs";
    assert_eq!(
        login(&c, &relay, "mallory\nFAKE ENTRY", password, None).await.status,
        401
    );
    let long = format!("{}{}", "a".repeat(64), "TAIL-BEYOND-64");
    assert_eq!(login(&c, &relay, &long, password, None).await.status, 401);
    let line = |needle: String| {
        let relay = &relay;
        async move {
            relay
                .log_text()
                .lines()
                .find(|l| l.contains("failed admin login") && l.contains(&needle))
                .map(str::to_string)
        }
    };
    let first = eventually(|| line("mallory".into())).await;
    assert!(first.contains("WARN"), "{first}");
    assert!(first.contains("user=mallory\\nFAKE ENTRY"), "escaped: {first}");
    assert!(first.contains("client=127.0.0.1"), "{first}");
    let second = eventually(|| line("a".repeat(64))).await;
    assert!(!second.contains("TAIL-BEYOND-64"), "truncated: {second}");
    let log = relay.log_text();
    assert!(!log.contains(password), "the log holds the password:\n{log}");
    assert!(!log.lines().any(|l| l.starts_with("FAKE ENTRY")), "{log}");
}

#[tokio::test]
async fn a_one_minute_session_slides_on_use() {
    let admin = format!("username: admin, password: {ADMIN_PASSWORD}, session_ttl: 1m");
    let relay = RelayProcess::start_with_admin(tempfile::tempdir().unwrap(), &admin, "", &[]).await;
    let c = client_from("127.0.0.1");
    let session = || async {
        let r: serde_json::Value = c
            .post(format!("{}/admin/api/login", relay.admin()))
            .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["expires_in"], 60, "{r}");
        r["token"].as_str().unwrap().to_string()
    };
    let keys = |token: String| {
        let c = c.clone();
        let url = format!("{}/admin/api/keys", relay.admin());
        async move { c.get(url).bearer_auth(token).send().await.unwrap().status().as_u16() }
    };
    let start = Instant::now();
    let (used, idle) = (session().await, session().await);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(keys(used.clone()).await, 200);
    // 62 s after login: past the first expiry, within the one moved by the use at 20 s.
    tokio::time::sleep(Duration::from_secs(62).saturating_sub(start.elapsed())).await;
    assert_eq!(keys(idle).await, 401, "the unused session outlived its TTL");
    assert_eq!(keys(used).await, 200, "the session used at 20 s did not slide");
}

#[tokio::test]
async fn the_generated_admin_password_goes_to_a_private_file_not_the_log() {
    use std::os::unix::fs::PermissionsExt;
    let relay = RelayProcess::start_with_admin(tempfile::tempdir().unwrap(), "username: admin", "", &[]).await;
    let data = relay.dir.path().join("data");
    let file = data.join("admin-password.txt");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let password = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert_eq!(password.len(), 24, "{password}");

    let log = relay.log_text();
    assert!(!log.contains(&password), "the log holds the password:\n{log}");
    assert!(
        log.contains(&file.display().to_string()),
        "the log names the file:\n{log}"
    );
    let stored = std::fs::read_to_string(data.join("admin.json")).unwrap();
    assert!(stored.contains("$argon2id$") && !stored.contains(&password), "{stored}");

    let c = client_from("127.0.0.1");
    assert_eq!(login(&c, &relay, "admin", &password, None).await.status, 200);
    assert_eq!(login(&c, &relay, "admin", "not-the-password", None).await.status, 401);
}
