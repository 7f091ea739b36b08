//! Usage read back for reports: series and range totals of one or several subjects, with day
//! and month buckets that start at local midnight in a time zone.
//!
//! The store keeps UTC buckets only. In another zone, day and month buckets are built from hour
//! buckets: exact for zones whose offset is a whole number of hours. For offsets with half or
//! quarter hours (Asia/Kolkata, Australia/Adelaide, Asia/Kathmandu) each hour goes to the local
//! day that holds its middle, so a day boundary can be off by up to 45 minutes. Hour buckets are
//! kept 31 days ([`Granularity::retention`]); before that, the UTC day buckets are used, each
//! counted in the local day that holds its midday (exact only in UTC).

use std::collections::BTreeMap;

use chrono::{Datelike, FixedOffset, NaiveDate, Offset, TimeZone, Utc};

use crate::store::{Dimension, Granularity, Store, StoreError, UsageCounters};

/// The most buckets one series may span.
pub const MAX_BUCKETS: usize = 2000;

/// The latest `from` or `to` accepted: 9999-12-31T23:59:59Z (bucket arithmetic stays in range).
pub const MAX_TIMESTAMP: i64 = 253_402_300_799;

/// A time zone: an IANA name or a fixed offset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Zone {
    Utc,
    Fixed(FixedOffset),
    Named(chrono_tz::Tz),
}

impl Zone {
    /// `UTC`, `Z`, `+08:00`, `-05:30`, `+0800` or an IANA name such as `Asia/Shanghai`.
    pub fn parse(s: &str) -> Result<Zone, String> {
        let t = s.trim();
        if t.is_empty() || t.eq_ignore_ascii_case("utc") || t == "Z" || t == "Etc/UTC" {
            return Ok(Zone::Utc);
        }
        if let Some(sign) = t.chars().next().filter(|c| *c == '+' || *c == '-') {
            let digits: String = t[1..].chars().filter(|c| *c != ':').collect();
            let ok = digits.len() == 4 && digits.chars().all(|c| c.is_ascii_digit()) || digits.len() == 2;
            let (h, m) = match (ok, digits.get(..2), digits.get(2..)) {
                (true, Some(h), Some(m)) => (
                    h.parse::<i32>().ok(),
                    if m.is_empty() { Some(0) } else { m.parse::<i32>().ok() },
                ),
                _ => (None, None),
            };
            let (Some(h), Some(m)) = (h, m) else {
                return Err(format!("`tz`: `{s}` is not an offset like +08:00"));
            };
            if h > 14 || m > 59 {
                return Err(format!("`tz`: offset `{s}` is out of range"));
            }
            let secs = (h * 3600 + m * 60) * if sign == '-' { -1 } else { 1 };
            return FixedOffset::east_opt(secs)
                .map(|o| if secs == 0 { Zone::Utc } else { Zone::Fixed(o) })
                .ok_or_else(|| format!("`tz`: offset `{s}` is out of range"));
        }
        t.parse::<chrono_tz::Tz>().map(Zone::Named).map_err(|_| {
            format!("`tz`: `{s}` is not an IANA time zone name (like Asia/Shanghai) or an offset (like +08:00)")
        })
    }

    /// The offset from UTC, in seconds, at `ts`.
    pub fn offset_at(self, ts: i64) -> i64 {
        let Some(t) = Utc.timestamp_opt(ts, 0).single() else {
            return 0;
        };
        match self {
            Zone::Utc => 0,
            Zone::Fixed(o) => i64::from(o.local_minus_utc()),
            Zone::Named(z) => i64::from(z.offset_from_utc_datetime(&t.naive_utc()).fix().local_minus_utc()),
        }
    }

    /// The local date at `ts`.
    pub fn date_at(self, ts: i64) -> NaiveDate {
        let local = ts.saturating_add(self.offset_at(ts));
        Utc.timestamp_opt(local, 0)
            .single()
            .map_or(NaiveDate::MIN, |t| t.date_naive())
    }

    /// The first instant of local date `d` (after a gap at midnight, the first instant that exists).
    pub fn midnight(self, d: NaiveDate) -> i64 {
        let naive = d.and_hms_opt(0, 0, 0).unwrap_or_default();
        let guess = naive.and_utc().timestamp();
        match self {
            Zone::Utc => guess,
            Zone::Fixed(o) => guess - i64::from(o.local_minus_utc()),
            Zone::Named(z) => {
                // A day may start after a gap (DST at midnight): step forward to a local time that exists.
                for minutes in [0i64, 30, 60, 90, 120] {
                    let t = naive + chrono::Duration::minutes(minutes);
                    if let Some(l) = z.from_local_datetime(&t).earliest() {
                        return l.timestamp();
                    }
                }
                guess
            }
        }
    }

    /// The name the zone was asked by, for answers.
    pub fn name(self) -> String {
        match self {
            Zone::Utc => "UTC".into(),
            Zone::Fixed(o) => o.to_string(),
            Zone::Named(z) => z.name().into(),
        }
    }

    /// RFC 3339 of `ts` in this zone.
    pub fn rfc3339(self, ts: i64) -> String {
        let off = self.offset_at(ts);
        let o = FixedOffset::east_opt(off as i32).unwrap_or(FixedOffset::east_opt(0).unwrap_or_else(|| Utc.fix()));
        match Utc.timestamp_opt(ts, 0).single() {
            Some(t) => t.with_timezone(&o).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            None => ts.to_string(),
        }
    }
}

/// The start of the bucket of `g` that holds `ts`, in `zone` (minutes and hours as in UTC:
/// whole-hour zones share them).
pub fn bucket_start(g: Granularity, zone: Zone, ts: i64) -> i64 {
    match (g, zone) {
        (_, Zone::Utc) | (Granularity::Minute | Granularity::Hour | Granularity::Total, _) => g.bucket_start(ts),
        (Granularity::Day, z) => z.midnight(z.date_at(ts)),
        (Granularity::Month, z) => {
            let d = z.date_at(ts);
            z.midnight(d.with_day(1).unwrap_or(d))
        }
    }
}

/// The start of the bucket after the one starting at `start`.
pub fn next_bucket(g: Granularity, zone: Zone, start: i64) -> i64 {
    match (g, zone) {
        (_, Zone::Utc) | (Granularity::Minute | Granularity::Hour | Granularity::Total, _) => g.next_bucket(start),
        (Granularity::Day, z) => {
            // Local days last 23 to 25 hours: the day of a point well inside the next one.
            let d = z.date_at(start + 3 * 3600);
            z.midnight(d.succ_opt().unwrap_or(d))
        }
        (Granularity::Month, z) => {
            let d = z.date_at(start + 3 * 3600);
            let (y, m) = if d.month() == 12 {
                (d.year() + 1, 1)
            } else {
                (d.year(), d.month() + 1)
            };
            z.midnight(NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(d))
        }
    }
}

/// The starts of the buckets that overlap `[from, to)`; `Err` past [`MAX_BUCKETS`].
pub fn bucket_starts(g: Granularity, zone: Zone, from: i64, to: i64) -> Result<Vec<i64>, String> {
    let mut out = Vec::new();
    let mut start = bucket_start(g, zone, from);
    while start < to {
        if out.len() == MAX_BUCKETS {
            return Err(format!(
                "the range spans more than {MAX_BUCKETS} {} buckets; narrow it or use a coarser granularity",
                g.as_str()
            ));
        }
        out.push(start);
        let next = next_bucket(g, zone, start);
        if next <= start {
            break;
        }
        start = next;
    }
    Ok(out)
}

/// Whether buckets of `g` in `zone` are the store's own.
fn native(g: Granularity, zone: Zone) -> bool {
    zone == Zone::Utc || matches!(g, Granularity::Minute | Granularity::Hour)
}

/// The longest a bucket of `g` lasts, in seconds.
fn bucket_len(g: Granularity) -> i64 {
    match g {
        Granularity::Minute => 60,
        Granularity::Hour => 3_600,
        Granularity::Day => 86_400,
        Granularity::Month => 31 * 86_400,
        Granularity::Total => i64::MAX / 4,
    }
}

/// The stored buckets of one subject whose start lies in `[from, to)`: only where buckets can
/// exist (within the retention, not in the future) and in pieces the store accepts.
async fn read(
    store: &dyn Store,
    dimension: Dimension,
    subject: &str,
    g: Granularity,
    from: i64,
    to: i64,
    now: i64,
) -> Result<Vec<(i64, UsageCounters)>, StoreError> {
    let len = bucket_len(g);
    let keep = g.retention().map_or(MAX_TIMESTAMP, |d| d.as_secs() as i64);
    let lo = from.max(now.saturating_sub(keep).saturating_sub(2 * len));
    // A little into the future: another instance's clock may run ahead.
    let hi = to.min(now.saturating_add(2 * len));
    let mut out = Vec::new();
    let mut a = lo;
    while a < hi {
        let b = hi.min(a.saturating_add(len.saturating_mul(MAX_BUCKETS as i64 - 2)));
        out.extend(store.usage_series(dimension, subject, g, a, b).await?);
        a = b;
    }
    Ok(out)
}

/// The buckets a series is read into.
pub struct Frame<'a> {
    pub granularity: Granularity,
    pub zone: Zone,
    /// Bucket starts, as [`bucket_starts`] gives them.
    pub starts: &'a [i64],
    /// The end of the range, exclusive.
    pub to: i64,
}

/// The usage of `subjects` together in each bucket of `frame`.
pub async fn series(
    store: &dyn Store,
    dimension: Dimension,
    subjects: &[String],
    frame: &Frame<'_>,
    now: i64,
) -> Result<Vec<UsageCounters>, StoreError> {
    let Frame {
        granularity: g,
        zone,
        starts,
        to,
    } = *frame;
    let mut out = vec![UsageCounters::default(); starts.len()];
    let Some(&first) = starts.first() else {
        return Ok(out);
    };
    let slot = |ts: i64| starts.partition_point(|s| *s <= ts).checked_sub(1);
    for subject in subjects {
        if native(g, zone) {
            for (s, c) in read(store, dimension, subject, g, first, to, now).await? {
                if let Some(i) = slot(s) {
                    out[i].add(&c);
                }
            }
            continue;
        }
        // Hours where they are all kept, UTC days before (see the module's notes).
        let hour_keep = Granularity::Hour.retention().map_or(0, |d| d.as_secs() as i64);
        let boundary = Granularity::Day.bucket_start(now - hour_keep) + 86_400;
        if first < boundary {
            let days = read(
                store,
                dimension,
                subject,
                Granularity::Day,
                first - 86_400,
                boundary.min(to),
                now,
            )
            .await?;
            for (s, c) in days {
                if let Some(i) = slot(s + 43_200).filter(|_| s + 43_200 >= first) {
                    out[i].add(&c);
                }
            }
        }
        let hours = read(
            store,
            dimension,
            subject,
            Granularity::Hour,
            first.max(boundary),
            to,
            now,
        )
        .await?;
        for (s, c) in hours {
            if let Some(i) = slot(s + 1_800) {
                out[i].add(&c);
            }
        }
    }
    Ok(out)
}

/// One key's usage per model in `[from, to)` (counted as [`range_totals`] counts), most
/// expensive first, then most requests, then by name; models without usage in the range left out.
pub async fn key_models(
    store: &dyn Store,
    key_id: &str,
    from: i64,
    to: i64,
    now: i64,
) -> Result<Vec<(String, UsageCounters)>, StoreError> {
    // Every model ever counted (a short list: unknown names fold into `other`), under this key:
    // reading the key×model subjects of every key would grow with the number of keys.
    let prefix = Dimension::key_model_prefix(key_id);
    let subjects: Vec<String> = store
        .usage_totals(Dimension::Model)
        .await?
        .into_keys()
        .map(|model| format!("{prefix}{model}"))
        .collect();
    let totals = range_totals(store, Dimension::KeyModel, &subjects, from, to, now).await?;
    let mut rows: Vec<(String, UsageCounters)> = totals
        .into_iter()
        .filter(|(_, c)| !c.is_zero())
        .map(|(s, c)| (s[prefix.len()..].to_string(), c))
        .collect();
    rows.sort_by(|a, b| {
        b.1.cost_nanos
            .cmp(&a.1.cost_nanos)
            .then(b.1.requests.cmp(&a.1.requests))
            .then(a.0.cmp(&b.0))
    });
    Ok(rows)
}

/// The first start of a `g` bucket at or after `t`.
fn ceil_start(g: Granularity, t: i64) -> i64 {
    let s = g.bucket_start(t);
    if s < t { g.next_bucket(s) } else { s }
}

/// The segments `(granularity, from, to)` whose whole buckets add up to the usage of `[from, to)`
/// (see [`range_totals`]): each stretch of fine buckets is read as the coarser buckets it holds
/// whole (days inside a run of hours, months inside a run of days), so a month of hours is about
/// thirty day buckets and two partial days of hours, not 720 hour buckets.
pub fn range_segments(from: i64, to: i64, now: i64) -> Vec<(Granularity, i64, i64)> {
    let keep = |g: Granularity| g.retention().map_or(0, |d| d.as_secs() as i64);
    let hour_b = Granularity::Day.bucket_start(now - keep(Granularity::Hour)) + 86_400;
    let day_b = Granularity::Month.next_bucket(Granularity::Month.bucket_start(now - keep(Granularity::Day) + 86_400));
    let mut out = Vec::new();
    // Fine buckets that start in [a, b), as coarse ones where whole coarse buckets fit.
    let mut cover = |fine: Granularity, coarse: Granularity, a: i64, b: i64| {
        if a >= b {
            return;
        }
        let (first, end) = (ceil_start(fine, a), ceil_start(fine, b));
        let (ca, cb) = (ceil_start(coarse, first), coarse.bucket_start(end));
        if ca < cb {
            out.push((fine, first, ca));
            out.push((coarse, ca, cb));
            out.push((fine, cb, end));
        } else {
            out.push((fine, first, end));
        }
    };
    // Months are the coarsest buckets: read as they are.
    cover(Granularity::Month, Granularity::Month, from, to.min(day_b));
    cover(Granularity::Day, Granularity::Month, from.max(day_b), to.min(hour_b));
    cover(Granularity::Hour, Granularity::Day, from.max(hour_b), to);
    out.retain(|(_, a, b)| a < b);
    out
}

/// The usage of each subject in `[from, to)`: whole hours that start in the range while hour
/// buckets are kept (31 days), whole UTC days before, and before the day retention (400 days)
/// whole calendar months that start in the range. Read as [`range_segments`] cuts it, every
/// subject of a segment in one store call.
pub async fn range_totals(
    store: &dyn Store,
    dimension: Dimension,
    subjects: &[String],
    from: i64,
    to: i64,
    now: i64,
) -> Result<BTreeMap<String, UsageCounters>, StoreError> {
    let mut out: BTreeMap<String, UsageCounters> =
        subjects.iter().map(|s| (s.clone(), UsageCounters::default())).collect();
    for (g, a, b) in range_segments(from, to, now) {
        for (subject, rows) in read_many(store, dimension, subjects, g, a, b, now).await? {
            if let Some(c) = out.get_mut(&subject) {
                for (_, x) in rows {
                    c.add(&x);
                }
            }
        }
    }
    Ok(out)
}

/// [`read`] for many subjects at once, in calls of at most [`READ_MANY_SUBJECTS`] subjects.
async fn read_many(
    store: &dyn Store,
    dimension: Dimension,
    subjects: &[String],
    g: Granularity,
    from: i64,
    to: i64,
    now: i64,
) -> Result<BTreeMap<String, Vec<(i64, UsageCounters)>>, StoreError> {
    let len = bucket_len(g);
    let keep = g.retention().map_or(MAX_TIMESTAMP, |d| d.as_secs() as i64);
    let lo = from.max(now.saturating_sub(keep).saturating_sub(2 * len));
    let hi = to.min(now.saturating_add(2 * len));
    let mut out: BTreeMap<String, Vec<(i64, UsageCounters)>> = BTreeMap::new();
    let mut a = lo;
    while a < hi {
        let b = hi.min(a.saturating_add(len.saturating_mul(MAX_BUCKETS as i64 - 2)));
        for chunk in subjects.chunks(READ_MANY_SUBJECTS) {
            for (subject, rows) in store.usage_series_many(dimension, chunk, g, a, b).await? {
                out.entry(subject).or_default().extend(rows);
            }
        }
        a = b;
    }
    Ok(out)
}

/// Subjects per store call of [`read_many`] (a bound on one Redis pipeline's size).
const READ_MANY_SUBJECTS: usize = 500;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_segments_cover_the_same_hours_with_coarser_buckets() {
        let now = 1_710_100_800; // 2024-03-10T20:00Z
        let from = now - 30 * 86_400 + 1800; // mid-hour: the first whole hour starts after it
        let segs = range_segments(from, now, now);
        // Every hour that starts in the range is in exactly one segment, nothing else is.
        let mut hours = Vec::new();
        for (g, a, b) in &segs {
            let mut t = *a;
            while t < *b {
                assert_eq!(g.bucket_start(t), t, "{g:?} segment starts on a bucket: {segs:?}");
                let next = g.next_bucket(t);
                let mut h = t;
                while h < next {
                    hours.push(h);
                    h += 3600;
                }
                t = next;
            }
        }
        let want: Vec<i64> = (0..30 * 24 - 1).map(|i| from + 1800 + i * 3600).collect();
        assert_eq!(hours, want);
        assert!(segs.len() <= 3, "{segs:?}");
        let buckets: i64 = segs
            .iter()
            .map(|(g, a, b)| (b - a) / if *g == Granularity::Day { 86_400 } else { 3600 })
            .sum();
        assert!(
            buckets < 80,
            "about 29 days and 2 partial days of hours, not 720 hours: {segs:?}"
        );
        // A range shorter than a day stays in hours.
        assert_eq!(
            range_segments(now - 7200, now, now),
            vec![(Granularity::Hour, now - 7200, now)]
        );
    }

    #[test]
    fn zones_parse() {
        assert_eq!(Zone::parse("UTC").unwrap(), Zone::Utc);
        assert_eq!(Zone::parse("+00:00").unwrap(), Zone::Utc);
        assert_eq!(Zone::parse("+08:00").unwrap().offset_at(0), 8 * 3600);
        assert_eq!(Zone::parse("-0530").unwrap().offset_at(0), -(5 * 3600 + 1800));
        assert_eq!(Zone::parse("+08").unwrap().offset_at(0), 8 * 3600);
        assert_eq!(Zone::parse("Asia/Shanghai").unwrap().offset_at(0), 8 * 3600);
        assert!(Zone::parse("Mars/Base").is_err());
        assert!(Zone::parse("+25:00").is_err());
        assert!(Zone::parse("+8:0").is_err());
    }

    #[test]
    fn local_days_start_at_local_midnight() {
        let z = Zone::parse("Asia/Shanghai").unwrap();
        // 2024-03-10T20:00Z is 2024-03-11 04:00 in Shanghai; the day starts 2024-03-10T16:00Z.
        let ts = 1_710_100_800;
        assert_eq!(bucket_start(Granularity::Day, z, ts), 1_710_086_400);
        assert_eq!(next_bucket(Granularity::Day, z, 1_710_086_400), 1_710_086_400 + 86_400);
        // New York on the day DST starts (2024-03-10) lasts 23 hours.
        let ny = Zone::parse("America/New_York").unwrap();
        let start = bucket_start(Granularity::Day, ny, 1_710_086_400);
        assert_eq!(start, 1_710_046_800);
        assert_eq!(next_bucket(Granularity::Day, ny, start) - start, 23 * 3600);
        // Months: March 2024 in Shanghai starts 2024-02-29T16:00Z.
        assert_eq!(bucket_start(Granularity::Month, z, ts), 1_709_222_400);
        assert_eq!(z.rfc3339(1_710_086_400), "2024-03-11T00:00:00+08:00");
        assert_eq!(Zone::Utc.rfc3339(0), "1970-01-01T00:00:00Z");
        assert!(bucket_starts(Granularity::Day, z, 0, MAX_TIMESTAMP).is_err());
    }
}
