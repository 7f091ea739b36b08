//! The contract of the bounded logs ([`super::Store::append_log`] and the rest), run by
//! [`super::contract::run_all`] on every backend. Like the rest of the contract, checks return
//! `Err` with a message instead of panicking.

use super::{LogKind, LogRecord, Store, StoreError, StoreResult};

type Check = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn ok<T>(what: &str, r: StoreResult<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: unexpected error: {e}"))
}

fn datas(records: &[LogRecord]) -> Vec<&str> {
    records.iter().map(|r| r.data.as_str()).collect()
}

/// Appending, paging newest first, lookup by id, malformed ids, separate kinds, and trimming by
/// count and by age.
pub async fn logs(store: &dyn Store) -> Check {
    let now = chrono::Utc::now().timestamp_millis();
    for kind in LogKind::ALL {
        let empty = ok("read empty", store.read_log(kind, None, 10).await)?;
        ensure!(empty.is_empty(), "a fresh {kind:?} log holds {empty:?}");
    }
    let first: Vec<(i64, String)> = (0..3)
        .map(|i| (now - 10 + i, format!(r#"{{"n":{i},"text":"é ✓ \"q\""}}"#)))
        .collect();
    ok("append", store.append_log(LogKind::Requests, &first).await)?;
    let second = vec![(now - 5, r#"{"n":3}"#.to_string()), (now - 5, r#"{"n":4}"#.to_string())];
    ok("append", store.append_log(LogKind::Requests, &second).await)?;
    ok("append nothing", store.append_log(LogKind::Requests, &[]).await)?;
    ok(
        "append audit",
        store
            .append_log(LogKind::Audit, &[(now, r#"{"audit":true}"#.to_string())])
            .await,
    )?;

    let all = ok("read all", store.read_log(LogKind::Requests, None, 100).await)?;
    let want = [
        r#"{"n":4}"#,
        r#"{"n":3}"#,
        r#"{"n":2,"text":"é ✓ \"q\""}"#,
        r#"{"n":1,"text":"é ✓ \"q\""}"#,
        r#"{"n":0,"text":"é ✓ \"q\""}"#,
    ];
    ensure!(datas(&all) == want, "newest first: got {:?}", datas(&all));
    ensure!(all[4].at_ms == now - 10, "at_ms of the oldest: {}", all[4].at_ms);
    ensure!(all[0].at_ms == now - 5, "at_ms of the newest: {}", all[0].at_ms);
    let mut ids: Vec<&str> = all.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    ensure!(ids.len() == 5, "ids are not unique: {all:?}");

    // Paging: each page strictly before the last id of the previous one.
    let p1 = ok("page 1", store.read_log(LogKind::Requests, None, 2).await)?;
    ensure!(p1 == all[..2], "page 1: {p1:?}");
    let p2 = ok("page 2", store.read_log(LogKind::Requests, Some(&p1[1].id), 2).await)?;
    ensure!(p2 == all[2..4], "page 2: {p2:?}");
    let p3 = ok("page 3", store.read_log(LogKind::Requests, Some(&p2[1].id), 2).await)?;
    ensure!(p3 == all[4..], "page 3: {p3:?}");
    let p4 = ok("page 4", store.read_log(LogKind::Requests, Some(&p3[0].id), 2).await)?;
    ensure!(p4.is_empty(), "past the oldest: {p4:?}");
    let none = ok("limit 0", store.read_log(LogKind::Requests, None, 0).await)?;
    ensure!(none.is_empty(), "limit 0 gave {none:?}");

    // Lookup by id, in its own kind only.
    let got = ok("get", store.get_log(LogKind::Requests, &all[2].id).await)?;
    ensure!(got.as_ref() == Some(&all[2]), "get {}: {got:?}", all[2].id);
    let other = ok("get other kind", store.get_log(LogKind::Audit, &all[2].id).await)?;
    ensure!(other.is_none(), "a requests id found in the audit log: {other:?}");
    let audit = ok("read audit", store.read_log(LogKind::Audit, None, 10).await)?;
    ensure!(datas(&audit) == [r#"{"audit":true}"#], "audit log: {audit:?}");

    // Malformed ids: a clean error for a cursor, nothing for a lookup.
    for bad in [
        "",
        "x",
        "12-",
        "-3",
        "1-2-3",
        "../etc",
        "99999999999999999999999999-1",
        "１２-３",
    ] {
        match store.read_log(LogKind::Requests, Some(bad), 10).await {
            Err(StoreError::Invalid(_)) => {}
            other => return Err(format!("read_log before {bad:?}: {other:?}")),
        }
        let got = ok("get malformed", store.get_log(LogKind::Requests, bad).await)?;
        ensure!(got.is_none(), "get {bad:?}: {got:?}");
    }

    // The cap keeps the newest.
    let went = ok("trim by count", store.trim_log(LogKind::Requests, 0, 3).await)?;
    ensure!(went == 2, "trim to 3 of 5 removed {went}");
    let left = ok("read after trim", store.trim_log(LogKind::Requests, 0, 3).await)?;
    ensure!(left == 0, "a second trim removed {left}");
    let kept = ok("read after trim", store.read_log(LogKind::Requests, None, 100).await)?;
    ensure!(kept == all[..3], "after the cap: {kept:?}");
    // Retention: nothing is older than an hour ago; everything is older than a minute from now.
    let went = ok(
        "trim by age",
        store.trim_log(LogKind::Requests, now - 3_600_000, 100).await,
    )?;
    ensure!(went == 0, "an hour's retention removed {went}");
    let went = ok(
        "trim by age",
        store.trim_log(LogKind::Requests, now + 60_000, 100).await,
    )?;
    ensure!(went == 3, "trimming everything removed {went}");
    let kept = ok("read after trim", store.read_log(LogKind::Requests, None, 100).await)?;
    ensure!(kept.is_empty(), "after the retention: {kept:?}");
    let audit_after = ok("read audit", store.read_log(LogKind::Audit, None, 10).await)?;
    ensure!(audit_after == audit, "trimming requests touched the audit log");

    // A batch in one call keeps its order, and paging sees every record once.
    let batch: Vec<(i64, String)> = (0..1200).map(|i| (now, format!(r#"{{"i":{i}}}"#))).collect();
    ok("append batch", store.append_log(LogKind::Requests, &batch).await)?;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = ok("page", store.read_log(LogKind::Requests, cursor.as_deref(), 500).await)?;
        let Some(last) = page.last() else { break };
        cursor = Some(last.id.clone());
        seen.extend(page.into_iter().map(|r| r.data));
    }
    let want: Vec<String> = batch.iter().rev().map(|(_, d)| d.clone()).collect();
    ensure!(
        seen == want,
        "paging a batch of 1200 saw {} records, out of order or not",
        seen.len()
    );
    let went = ok("clean up", store.trim_log(LogKind::Requests, 0, 0).await)?;
    ensure!(went == 1200, "trimming to 0 removed {went}");
    ok("clean up", store.trim_log(LogKind::Audit, 0, 0).await)?;
    Ok(())
}
