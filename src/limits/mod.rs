//! Per-key limit counters behind [`filters::LimitBackend`]: rate windows (requests, tokens, cost
//! per window of N minutes, fixed windows aligned to the epoch), spend caps (daily, weekly, total)
//! and concurrency slots, plus the first-use time of activation-mode keys.
//!
//! Requests and concurrency are counted atomically at admission. Tokens and cost are known only
//! when a response completes: admission checks what was charged so far, completion charges. So a
//! key may overshoot a token or cost limit by the requests admitted while earlier ones were still
//! running (at most its concurrency, or the requests of one window when it has no concurrency cap).

pub mod memory;

pub use memory::MemoryLimits;

/// The fixed window of `window_ms` containing `now_ms`: (start, end).
pub fn window_bounds(now_ms: i64, window_ms: i64) -> (i64, i64) {
    let start = now_ms - now_ms.rem_euclid(window_ms.max(1));
    (start, start + window_ms)
}

/// Start (Unix s) of the UTC day containing `now_s`.
pub fn day_start(now_s: i64) -> i64 {
    now_s - now_s.rem_euclid(86_400)
}

/// Start (Unix s) of the week containing `now_s` for a reset at `weekday` (0 = Monday) and
/// `minute` of the day, UTC.
pub fn week_start(now_s: i64, weekday: u32, minute: u32) -> i64 {
    // 1970-01-01 was a Thursday (weekday 3 with Monday = 0).
    let day = now_s.div_euclid(86_400);
    let today = (day + 3).rem_euclid(7);
    let mut start_day = day - (today - i64::from(weekday)).rem_euclid(7);
    let mut start = start_day * 86_400 + i64::from(minute) * 60;
    if start > now_s {
        start_day -= 7;
        start = start_day * 86_400 + i64::from(minute) * 60;
    }
    start
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weeks_start_at_their_reset() {
        // 2026-11-23 is a Monday.
        let monday = chrono::NaiveDate::from_ymd_opt(2026, 11, 23)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp();
        assert_eq!(week_start(monday + 5 * 86_400, 0, 0), monday);
        assert_eq!(week_start(monday, 0, 0), monday);
        assert_eq!(week_start(monday - 1, 0, 0), monday - 7 * 86_400);
        // Reset Wednesday 12:00; on Monday we are in the week that began last Wednesday.
        assert_eq!(week_start(monday + 3600, 2, 720), monday - 5 * 86_400 + 43_200);
        assert_eq!(window_bounds(125_000, 60_000), (120_000, 180_000));
    }
}
