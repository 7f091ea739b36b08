//! CRS's per-key and per-account usage counters (daily, monthly, all-time) → this relay's usage
//! buckets of the same granularity.
//!
//! CRS dates its buckets in its `TIMEZONE_OFFSET` (UTC+8 by default); a CRS day becomes the UTC
//! day of the same date here. Writing only tops a bucket up to CRS's count, so a second import
//! adds nothing twice.

use std::collections::BTreeSet;

use chrono::{NaiveDate, TimeZone, Utc};

use super::accounts::Mapped;
use super::source::{CrsData, Fields, Period, RawUsage, UsageOwner};
use super::{Item, Report, import_id, number};
use crate::store::{ApiKeyRecord, BucketKey, Dimension, Granularity, Store, StoreResult, UsageCounters};

/// The buckets to top up; owners that were not imported are reported once each.
pub fn map(
    data: &CrsData,
    accounts: &Mapped,
    keys: &[ApiKeyRecord],
    report: &mut Report,
) -> Vec<(BucketKey, UsageCounters)> {
    let key_ids: BTreeSet<&str> = keys.iter().map(|k| k.id.as_str()).collect();
    let mut out = Vec::new();
    let mut skipped_owners = BTreeSet::new();
    let mut rows: Vec<&RawUsage> = data.usage.iter().collect();
    rows.sort_by(|a, b| (a.owner, &a.id, a.period, &a.when).cmp(&(b.owner, &b.id, b.period, &b.when)));
    for u in rows {
        let id = import_id(&u.id);
        let (dimension, known, what) = match u.owner {
            UsageOwner::Key => (Dimension::Key, key_ids.contains(id.as_str()), "key"),
            UsageOwner::Account => (Dimension::Account, accounts.names.contains_key(&u.id), "account"),
        };
        let label = format!("{what} {} {}", u.id, period_label(u));
        if !known {
            if skipped_owners.insert((u.owner, u.id.clone())) {
                report.push(Item::skipped(
                    "usage",
                    &u.id,
                    &format!("{what} usage"),
                    format!("its {what} was not imported"),
                ));
            }
            continue;
        }
        let Some((granularity, start)) = bucket(u) else {
            report.push(Item::skipped(
                "usage",
                &u.id,
                &label,
                format!("date `{}` not understood", u.when),
            ));
            continue;
        };
        let counters = counters(&u.fields, u.period == Period::Total, u.cost_usd);
        if counters.is_zero() {
            continue;
        }
        out.push((
            BucketKey {
                dimension,
                subject: id.clone(),
                granularity,
                start,
            },
            counters,
        ));
        report.push(Item::imported("usage", &u.id, &label, id, Vec::new()));
    }
    if !out.is_empty() {
        report.notes.push(
            "usage history: CRS's daily and monthly buckets are dated in its TIMEZONE_OFFSET and land on the same UTC dates here; per-model and hourly history is not imported".into(),
        );
    }
    out
}

fn period_label(u: &RawUsage) -> String {
    match u.period {
        Period::Total => "all-time".into(),
        _ => u.when.clone(),
    }
}

/// The granularity and bucket start (Unix seconds, UTC) of a CRS period.
fn bucket(u: &RawUsage) -> Option<(Granularity, i64)> {
    match u.period {
        Period::Total => Some((Granularity::Total, 0)),
        Period::Day => {
            let d = NaiveDate::parse_from_str(&u.when, "%Y-%m-%d").ok()?;
            Some((
                Granularity::Day,
                Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0)?).timestamp(),
            ))
        }
        Period::Month => {
            let d = NaiveDate::parse_from_str(&format!("{}-01", u.when), "%Y-%m-%d").ok()?;
            Some((
                Granularity::Month,
                Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0)?).timestamp(),
            ))
        }
    }
}

/// CRS's counter fields (`inputTokens`, or `totalInputTokens` in all-time hashes) as ours.
fn counters(f: &Fields, total: bool, cost_usd: Option<f64>) -> UsageCounters {
    let get = |name: &str| -> u64 {
        let field = if total {
            let mut c = name.chars();
            match c.next() {
                Some(first) => format!("total{}{}", first.to_ascii_uppercase(), c.as_str()),
                None => String::new(),
            }
        } else {
            name.to_string()
        };
        number(f, &field).map_or(0, |v| v.max(0.0) as u64)
    };
    let requests = get("requests");
    let cache_create = get("cacheCreateTokens");
    let e5 = get("ephemeral5mTokens");
    let e1 = get("ephemeral1hTokens");
    let (w5, w1) = if e5 + e1 > 0 { (e5, e1) } else { (cache_create, 0) };
    let mut c = UsageCounters {
        requests,
        input_tokens: get("inputTokens"),
        output_tokens: get("outputTokens"),
        cache_read_tokens: get("cacheReadTokens"),
        cache_write_5m_tokens: w5,
        cache_write_1h_tokens: w1,
        ..UsageCounters::default()
    };
    match cost_usd {
        Some(usd) => c.cost_nanos = (usd * 1e9).round() as u64,
        // CRS keeps no cost per account: the requests count as ones of unknown cost.
        None => c.unpriced_requests = requests,
    }
    c
}

/// What each bucket still lacks to reach CRS's counts (what the store holds already is not
/// added again).
pub async fn top_up(
    store: &dyn Store,
    buckets: &[(BucketKey, UsageCounters)],
) -> StoreResult<Vec<(BucketKey, UsageCounters)>> {
    let mut out = Vec::new();
    for (k, want) in buckets {
        let have = store
            .usage_series(k.dimension, &k.subject, k.granularity, k.start, k.start + 1)
            .await?
            .into_iter()
            .find(|(s, _)| *s == k.start)
            .map(|(_, c)| c)
            .unwrap_or_default();
        let mut delta = UsageCounters::default();
        for ((name, w), (_, h)) in want.fields().into_iter().zip(have.fields()) {
            delta.set_field(name, w.saturating_sub(h));
        }
        if !delta.is_zero() {
            out.push((k.clone(), delta));
        }
    }
    Ok(out)
}
