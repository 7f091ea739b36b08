//! Bounded logs: request metadata and the admin audit trail.
//!
//! A log is an append-only sequence of JSON records, each with an id the store assigns. Ids sort by
//! time (newest last), so paging is "the `limit` records before this id". Retention and a cap on
//! the number of records bound what a log keeps ([`super::Store::trim_log`]).
//!
//! The embedded store keeps each log in a redb table keyed by a fixed-width id,
//! `{at_ms:013}-{seq:010}` (what [`EmbeddedLogId`] reads and writes); the Redis store keeps one
//! stream per log whose entry ids (`{ms}-{seq}`) are the record ids.

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{StoreError, StoreResult};

/// Which bounded log: request metadata, or the admin audit trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogKind {
    Requests,
    Audit,
}

impl LogKind {
    pub const ALL: [LogKind; 2] = [LogKind::Requests, LogKind::Audit];

    pub fn as_str(self) -> &'static str {
        match self {
            LogKind::Requests => "requests",
            LogKind::Audit => "audit",
        }
    }
}

/// One record of a log: its id (assigned by the store; ids sort by time, newest last, and are unique
/// across instances), when it happened (unix ms), and its JSON text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub id: String,
    pub at_ms: i64,
    pub data: String,
}

/// The most records a log may be configured to keep (the Redis backend's approximate bound on
/// every append).
pub const MAX_LOG_RECORDS: u64 = 10_000_000;

/// The most records one `read_log` call returns.
pub const MAX_LOG_PAGE: usize = 10_000;

/// The embedded store's record id: `{at_ms:013}-{seq:010}`, fixed width so that the byte order of
/// ids is their time order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EmbeddedLogId {
    pub at_ms: i64,
    pub seq: u64,
}

/// The largest time an embedded id can hold (13 digits: until the year 2286).
const MAX_ID_MS: i64 = 9_999_999_999_999;
const MAX_ID_SEQ: u64 = 9_999_999_999;

impl EmbeddedLogId {
    pub fn encode(self) -> String {
        let mut id = String::with_capacity(24);
        push_digits(&mut id, self.at_ms.clamp(0, MAX_ID_MS) as u64, 13);
        id.push('-');
        push_digits(&mut id, self.seq.min(MAX_ID_SEQ), 10);
        id
    }

    /// Reads an id this store wrote; `None` for anything else.
    pub fn parse(id: &str) -> Option<EmbeddedLogId> {
        let (ms, seq) = id.split_once('-')?;
        if ms.len() != 13 || seq.len() != 10 || !all_digits(ms) || !all_digits(seq) {
            return None;
        }
        Some(EmbeddedLogId {
            at_ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// `n`'s last `width` decimal digits, zero-padded (every append writes ids: no formatter).
fn push_digits(out: &mut String, n: u64, width: u32) {
    out.extend(
        (0..width)
            .rev()
            .map(|i| char::from(b'0' + (n / 10u64.pow(i) % 10) as u8)),
    );
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A Redis stream entry id `{ms}-{seq}`, both parts unsigned 64-bit; `None` for anything else.
pub fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    if ms.len() > 20 || seq.len() > 20 || !all_digits(ms) || !all_digits(seq) {
        return None;
    }
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The error of a `before` cursor this store did not issue.
pub fn invalid_cursor(id: &str) -> StoreError {
    let shown: String = id.chars().take(40).collect();
    StoreError::Invalid(format!("`{shown}` is not a log record id"))
}

// --- the embedded implementation (redb), called from `embedded.rs` on the blocking pool ---

const REQUESTS_TABLE: TableDefinition<&str, &str> = TableDefinition::new("log_requests");
const AUDIT_TABLE: TableDefinition<&str, &str> = TableDefinition::new("log_audit");

fn table(kind: LogKind) -> TableDefinition<'static, &'static str, &'static str> {
    match kind {
        LogKind::Requests => REQUESTS_TABLE,
        LogKind::Audit => AUDIT_TABLE,
    }
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(m) => StoreError::Corrupt(m),
        other => StoreError::Unavailable(format!("embedded store: {other}")),
    }
}

/// Creates the log tables (so that read transactions find them).
pub(crate) fn embedded_init(txn: &redb::WriteTransaction) -> StoreResult<()> {
    for kind in LogKind::ALL {
        txn.open_table(table(kind)).map_err(db_err)?;
    }
    Ok(())
}

/// Appends in one transaction. A record whose id is taken (two records in one millisecond, or a
/// clock that went back across a restart) takes the next free sequence number.
pub(crate) fn embedded_append(
    db: &Database,
    kind: LogKind,
    records: &[(i64, String)],
    seq: &std::sync::atomic::AtomicU64,
) -> StoreResult<()> {
    let mut txn = db.begin_write().map_err(db_err)?;
    // Request records are not worth a disk sync each batch: they become durable with the store's
    // next durable commit (the statistics flush commits every flush interval while requests
    // arrive), so a crash loses at most the last seconds of the request log, never a key, an
    // account, usage or an audit record (those commit durably).
    if kind == LogKind::Requests {
        txn.set_durability(redb::Durability::None)
            .map_err(|e| StoreError::Unavailable(format!("embedded store: {e}")))?;
    }
    {
        let mut t = txn.open_table(table(kind)).map_err(db_err)?;
        for (at_ms, data) in records {
            let mut id = EmbeddedLogId {
                at_ms: (*at_ms).clamp(0, MAX_ID_MS),
                seq: seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % (MAX_ID_SEQ + 1),
            };
            let mut key = id.encode();
            while t.get(key.as_str()).map_err(db_err)?.is_some() {
                id.seq = (id.seq + 1) % (MAX_ID_SEQ + 1);
                key = id.encode();
            }
            t.insert(key.as_str(), data.as_str()).map_err(db_err)?;
        }
    }
    txn.commit().map_err(db_err)
}

fn record(id: &str, data: &str) -> StoreResult<LogRecord> {
    let parsed = EmbeddedLogId::parse(id).ok_or_else(|| StoreError::Corrupt(format!("log record id {id:?}")))?;
    Ok(LogRecord {
        id: id.to_string(),
        at_ms: parsed.at_ms,
        data: data.to_string(),
    })
}

pub(crate) fn embedded_read(
    db: &Database,
    kind: LogKind,
    before: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<LogRecord>> {
    let before = match before {
        Some(b) => Some(EmbeddedLogId::parse(b).ok_or_else(|| invalid_cursor(b))?.encode()),
        None => None,
    };
    let txn = db.begin_read().map_err(db_err)?;
    let t = txn.open_table(table(kind)).map_err(db_err)?;
    let limit = limit.min(MAX_LOG_PAGE);
    let mut out = Vec::with_capacity(limit.min(1024));
    let rows = match &before {
        Some(b) => t.range::<&str>(..b.as_str()).map_err(db_err)?,
        None => t.iter().map_err(db_err)?,
    };
    for row in rows.rev().take(limit) {
        let (k, v) = row.map_err(db_err)?;
        out.push(record(k.value(), v.value())?);
    }
    Ok(out)
}

pub(crate) fn embedded_get(db: &Database, kind: LogKind, id: &str) -> StoreResult<Option<LogRecord>> {
    let Some(parsed) = EmbeddedLogId::parse(id) else {
        return Ok(None);
    };
    let key = parsed.encode();
    let txn = db.begin_read().map_err(db_err)?;
    let t = txn.open_table(table(kind)).map_err(db_err)?;
    let got = t.get(key.as_str()).map_err(db_err)?;
    got.map(|g| record(&key, g.value())).transpose()
}

pub(crate) fn embedded_trim(db: &Database, kind: LogKind, min_at_ms: i64, max_records: u64) -> StoreResult<u64> {
    let txn = db.begin_write().map_err(db_err)?;
    let removed = {
        let mut t = txn.open_table(table(kind)).map_err(db_err)?;
        let mut removed = 0u64;
        // Ids start with their time, so "older than min_at_ms" is one key range.
        let bound = EmbeddedLogId {
            at_ms: min_at_ms.clamp(0, MAX_ID_MS),
            seq: 0,
        }
        .encode();
        if min_at_ms > 0 {
            t.retain_in::<&str, _>(..bound.as_str(), |_, _| {
                removed += 1;
                false
            })
            .map_err(db_err)?;
        }
        let len = t.len().map_err(db_err)?;
        for _ in max_records..len {
            if t.pop_first().map_err(db_err)?.is_none() {
                break;
            }
            removed += 1;
        }
        removed
    };
    txn.commit().map_err(db_err)?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_ids_round_trip_and_sort_by_time() {
        let a = EmbeddedLogId {
            at_ms: 1_700_000_000_000,
            seq: 7,
        };
        assert_eq!(a.encode(), "1700000000000-0000000007");
        assert_eq!(EmbeddedLogId::parse(&a.encode()), Some(a));
        let b = EmbeddedLogId {
            at_ms: 1_700_000_000_001,
            seq: 0,
        };
        assert!(a.encode() < b.encode());
        let (low, high) = (
            EmbeddedLogId { at_ms: -5, seq: 0 },
            EmbeddedLogId {
                at_ms: i64::MAX,
                seq: u64::MAX,
            },
        );
        assert_eq!(low.encode(), "0000000000000-0000000000");
        assert_eq!(high.encode(), "9999999999999-9999999999");
        for bad in [
            "",
            "-",
            "1700000000000",
            "1700000000000-7",
            "17000000000x0-0000000007",
            "+700000000000-0000000007",
            "1700000000000-00000000070",
            "1-2-3",
            "١٧٠٠٠٠٠٠٠٠٠٠٠-0000000007",
        ] {
            assert_eq!(EmbeddedLogId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn stream_ids_are_checked() {
        assert_eq!(parse_stream_id("1700000000000-3"), Some((1_700_000_000_000, 3)));
        for bad in ["", "1", "1-", "-1", "a-1", "1-2-3", "99999999999999999999999-1", "1 -2"] {
            assert_eq!(parse_stream_id(bad), None, "{bad:?}");
        }
    }
}
