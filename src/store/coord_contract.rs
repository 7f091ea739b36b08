//! The contract every [`Coordination`] implementation passes. Each check returns a message naming
//! what failed; integration tests run them against memory and a real Redis.

use std::time::Duration;

use super::coord::{AccountHealth, Coordination, HealthState};

fn check(cond: bool, what: &str) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(format!("coordination contract: {what}"))
    }
}

fn ok<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Result<T, String> {
    r.map_err(|e| format!("coordination contract: {what}: {e}"))
}

/// Runs every check. `ns` isolates the keys of one run (sessions, scopes, accounts).
pub async fn run_all(c: &dyn Coordination, ns: &str) -> Result<(), String> {
    sticky(c, ns).await?;
    leases(c, ns).await?;
    sticky_and_lease(c, ns).await?;
    health(c, ns).await?;
    live(c, ns).await?;
    claims(c, ns).await?;
    Ok(())
}

pub async fn sticky(c: &dyn Coordination, ns: &str) -> Result<(), String> {
    let s = format!("{ns}-session");
    check(
        ok("get missing", c.sticky_get(&s, Duration::from_secs(5)).await)?.is_none(),
        "unknown session is unbound",
    )?;
    ok("set", c.sticky_set(&s, "acct-1", Duration::from_millis(300)).await)?;
    check(
        ok("get", c.sticky_get(&s, Duration::from_millis(600)).await)?.as_deref() == Some("acct-1"),
        "bound",
    )?;
    // The get renewed the binding to 600 ms: still there after the first 300 ms.
    tokio::time::sleep(Duration::from_millis(400)).await;
    check(
        ok("get renewed", c.sticky_get(&s, Duration::from_millis(200)).await)?.as_deref() == Some("acct-1"),
        "a get renews the binding",
    )?;
    tokio::time::sleep(Duration::from_millis(350)).await;
    check(
        ok("get expired", c.sticky_get(&s, Duration::from_secs(5)).await)?.is_none(),
        "bindings expire",
    )?;
    ok("rebind", c.sticky_set(&s, "acct-2", Duration::from_secs(5)).await)?;
    check(
        ok("get rebound", c.sticky_get(&s, Duration::from_secs(5)).await)?.as_deref() == Some("acct-2"),
        "rebind",
    )
}

/// The sticky lookup with the candidate account's lease: taken when the session is unbound or
/// bound to that account, not asked for when it is bound to another, refused at the cap.
pub async fn sticky_and_lease(c: &dyn Coordination, ns: &str) -> Result<(), String> {
    use super::coord::LeaseAsk;
    let s = format!("{ns}-sl-session");
    let scope = format!("{ns}-sl-scope");
    let ttl = Duration::from_secs(5);
    let ask = |account, holder| LeaseAsk {
        account,
        scope: &scope,
        holder,
        limit: 2,
        ttl,
    };
    let got = ok("unbound", c.sticky_get_and_lease(&s, ttl, &ask("acct-a", "h1")).await)?;
    check(
        got == (None, true),
        &format!("an unbound session takes the slot: {got:?}"),
    )?;
    ok("bind", c.sticky_set(&s, "acct-a", ttl).await)?;
    let got = ok(
        "bound here",
        c.sticky_get_and_lease(&s, ttl, &ask("acct-a", "h2")).await,
    )?;
    check(
        got == (Some("acct-a".into()), true),
        &format!("bound to the candidate: binding and slot: {got:?}"),
    )?;
    ok("release", c.lease_release(&scope, "h2").await)?;
    let got = ok(
        "bound elsewhere",
        c.sticky_get_and_lease(&s, ttl, &ask("acct-b", "h3")).await,
    )?;
    check(
        got == (Some("acct-a".into()), false),
        &format!("bound to another account: no slot asked: {got:?}"),
    )?;
    check(
        ok("count", c.lease_count(&scope).await)? == 1,
        "only h1 holds a slot (h3 was not given one)",
    )?;
    ok("fill", c.lease_acquire(&scope, "h4", 2, ttl).await)?;
    let got = ok("full", c.sticky_get_and_lease(&s, ttl, &ask("acct-a", "h5")).await)?;
    check(
        got == (Some("acct-a".into()), false),
        &format!("at the cap: binding, no slot: {got:?}"),
    )?;
    ok("cleanup", c.lease_release(&scope, "h1").await)?;
    ok("cleanup", c.lease_release(&scope, "h4").await)
}

pub async fn leases(c: &dyn Coordination, ns: &str) -> Result<(), String> {
    let scope = format!("{ns}-scope");
    let ttl = Duration::from_secs(10);
    check(ok("a", c.lease_acquire(&scope, "a", 2, ttl).await)?, "first slot")?;
    check(
        ok("a again", c.lease_acquire(&scope, "a", 2, ttl).await)?,
        "same holder keeps its slot",
    )?;
    check(ok("b", c.lease_acquire(&scope, "b", 2, ttl).await)?, "second slot")?;
    check(
        !ok("c", c.lease_acquire(&scope, "c", 2, ttl).await)?,
        "third holder refused at limit 2",
    )?;
    check(ok("count", c.lease_count(&scope).await)? == 2, "two live slots")?;
    ok("release a", c.lease_release(&scope, "a").await)?;
    check(
        ok("c after release", c.lease_acquire(&scope, "c", 2, ttl).await)?,
        "a released slot is free",
    )?;
    // Expiry: a short lease frees itself; renewal keeps it.
    // Two lease sets renewed in one call (on a Redis Cluster they may live on two nodes).
    let short = format!("{ns}-short");
    let short2 = format!("{ns}-short-2");
    check(
        ok("x", c.lease_acquire(&short, "x", 1, Duration::from_millis(300)).await)?,
        "short lease",
    )?;
    check(
        ok("x2", c.lease_acquire(&short2, "x", 1, Duration::from_millis(300)).await)?,
        "second short lease",
    )?;
    check(
        !ok("y", c.lease_acquire(&short, "y", 1, Duration::from_millis(300)).await)?,
        "full",
    )?;
    ok(
        "renew",
        c.lease_renew(
            &[(short.clone(), "x".to_string()), (short2.clone(), "x".to_string())],
            Duration::from_millis(800),
        )
        .await,
    )?;
    tokio::time::sleep(Duration::from_millis(450)).await;
    check(
        !ok(
            "y after renew",
            c.lease_acquire(&short, "y", 1, Duration::from_millis(300)).await,
        )?,
        "renewed",
    )?;
    check(
        !ok(
            "y2 after renew",
            c.lease_acquire(&short2, "y", 1, Duration::from_millis(300)).await,
        )?,
        "both renewed",
    )?;
    ok("cleanup", c.lease_release(&short2, "x").await)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    check(
        ok(
            "y after expiry",
            c.lease_acquire(&short, "y", 1, Duration::from_secs(5)).await,
        )?,
        "expired lease freed",
    )?;
    // Renewing a lease that is gone does not bring it back.
    ok(
        "renew gone",
        c.lease_renew(&[(short.clone(), "x".to_string())], Duration::from_secs(5))
            .await,
    )?;
    check(
        ok("count short", c.lease_count(&short).await)? == 1,
        "renew does not resurrect",
    )?;
    ok("cleanup", c.lease_release(&short, "y").await)?;
    ok("cleanup", c.lease_release(&scope, "b").await)?;
    ok("cleanup", c.lease_release(&scope, "c").await)?;
    check(ok("count after", c.lease_count(&scope).await)? == 0, "all released")
}

pub async fn health(c: &dyn Coordination, ns: &str) -> Result<(), String> {
    let now = chrono::Utc::now().timestamp_millis();
    let a = format!("{ns}-acct-a");
    let b = format!("{ns}-acct-b");
    let h = AccountHealth {
        state: HealthState::RateLimited,
        reason: "upstream 429".into(),
        since: now,
        until: Some(now + 60_000),
        family: Some("opus".into()),
    };
    ok("put a", c.put_account_health(&a, &h).await)?;
    let expired = AccountHealth {
        until: Some(now - 1),
        ..h.clone()
    };
    ok("put b", c.put_account_health(&b, &expired).await)?;
    let all = ok("list", c.account_health(now).await)?;
    check(all.get(&a) == Some(&h), "entry round-trips")?;
    check(!all.contains_key(&b), "expired entries are not listed")?;
    let blocked = AccountHealth {
        state: HealthState::Blocked,
        until: None,
        family: None,
        ..h.clone()
    };
    ok("put blocked", c.put_account_health(&b, &blocked).await)?;
    check(
        ok("list2", c.account_health(now + 10_000_000).await)?.contains_key(&b),
        "no `until`: stays",
    )?;
    ok("clear a", c.clear_account_health(&a).await)?;
    ok("clear b", c.clear_account_health(&b).await)?;
    let all = ok("list3", c.account_health(now).await)?;
    check(!all.contains_key(&a) && !all.contains_key(&b), "cleared")
}

pub async fn live(c: &dyn Coordination, ns: &str) -> Result<(), String> {
    let now = chrono::Utc::now().timestamp_millis();
    let (a, b) = (format!("{ns}-instance-a"), format!("{ns}-instance-b"));
    ok("put a", c.put_instance_live(&a, r#"{"n": 1}"#, now + 5_000).await)?;
    ok("put b", c.put_instance_live(&b, "{}", now - 1).await)?;
    let all = ok("list", c.instances_live(now).await)?;
    check(
        all.get(&a).map(String::as_str) == Some(r#"{"n": 1}"#),
        "a view round-trips",
    )?;
    check(!all.contains_key(&b), "an expired view is not listed")?;
    ok("replace a", c.put_instance_live(&a, r#"{"n": 2}"#, now + 5_000).await)?;
    let all = ok("list2", c.instances_live(now).await)?;
    check(
        all.get(&a).map(String::as_str) == Some(r#"{"n": 2}"#),
        "the next view replaces it",
    )?;
    let later = ok("list3", c.instances_live(now + 6_000).await)?;
    check(
        !later.contains_key(&a),
        "a view expires when its instance stops publishing",
    )
}

pub async fn claims(c: &dyn Coordination, ns: &str) -> Result<(), String> {
    let (a, b) = (format!("{ns}-claim-a"), format!("{ns}-claim-b"));
    check(
        ok("first claim", c.claim_once(&a, Duration::from_millis(300)).await)?,
        "the first claim wins",
    )?;
    check(
        !ok("second claim", c.claim_once(&a, Duration::from_millis(300)).await)?,
        "a second claim within the ttl loses",
    )?;
    check(
        ok("other key", c.claim_once(&b, Duration::from_secs(5)).await)?,
        "claims of other keys are independent",
    )?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    check(
        ok("after expiry", c.claim_once(&a, Duration::from_millis(300)).await)?,
        "a claim can be made again once the last one expired",
    )
}
