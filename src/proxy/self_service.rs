//! `GET /v1/key/usage` (also under `/api`): the calling key's own usage, for the key
//! self-service page. The key is authenticated by the filter chain's head phase like any relay
//! call; this answers only about that key, within a small per-key budget of calls per minute.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use filters::{ClientKey, RejectKind, Rejection};
use serde_json::{Map, Value, json};

use super::Relay;
use super::error::RelayError;
use crate::store::{Dimension, Granularity, UsageCounters};
use crate::usage::report::{self, MAX_TIMESTAMP, Zone};

/// Calls per key in the current minute, on this instance.
#[derive(Default)]
pub struct Budget {
    used: Mutex<HashMap<Arc<str>, (i64, u32)>>,
}

impl Budget {
    /// Takes one call of `key`'s budget at `now` (Unix seconds); `Err(seconds to wait)` when spent.
    pub fn take(&self, key: &Arc<str>, per_minute: u32, now: i64) -> Result<(), u64> {
        let minute = now.div_euclid(60);
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if used.len() > 10_000 {
            used.retain(|_, (m, _)| *m == minute);
        }
        let e = used.entry(key.clone()).or_insert((minute, 0));
        if e.0 != minute {
            *e = (minute, 0);
        }
        if e.1 >= per_minute {
            return Err((60 - now.rem_euclid(60)).max(1) as u64);
        }
        e.1 += 1;
        Ok(())
    }
}

fn bad(m: impl Into<String>) -> RelayError {
    RelayError::BadRequest(m.into())
}

fn counters(c: &UsageCounters) -> Map<String, Value> {
    let mut m = Map::new();
    for (name, v) in c.fields() {
        m.insert(name.to_string(), Value::from(v));
    }
    m.insert("cost_usd".into(), Value::from(c.cost_nanos as f64 / 1e9));
    m
}

fn store_failed(e: crate::store::StoreError) -> RelayError {
    tracing::warn!(error = %e, "self-service usage: store read failed");
    RelayError::Internal("usage statistics are unavailable right now".into())
}

/// The answer for `key` (already authenticated), or the error to send.
pub async fn answer(relay: &Relay, key: Option<&ClientKey>, query: Option<&str>) -> Result<Bytes, RelayError> {
    let cfg = relay.config.stats.self_service;
    if !cfg.enabled {
        return Err(RelayError::NotFound(
            "No such endpoint: the key usage endpoint is switched off".into(),
        ));
    }
    let Some(key) = key else {
        // The chain always names the key of an admitted request; refuse if it did not.
        return Err(RelayError::Rejected(Rejection::new(
            401,
            RejectKind::Authentication,
            "missing_key",
            "an API key is required",
        )));
    };
    let now = chrono::Utc::now().timestamp();
    if let Err(wait) = relay.self_service.take(&key.id, cfg.per_minute, now) {
        let mut r = Rejection::new(
            429,
            RejectKind::RateLimited,
            "self_service_rate",
            format!("too many usage queries; at most {} per minute", cfg.per_minute),
        );
        r.retry_after = Some(wait);
        return Err(RelayError::Rejected(r));
    }

    let mut granularity = Granularity::Hour;
    let (mut from, mut to, mut zone) = (None, None, Zone::Utc);
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "granularity" => {
                granularity = match &*v {
                    "hour" => Granularity::Hour,
                    "day" => Granularity::Day,
                    other => return Err(bad(format!("`granularity` must be hour or day, not `{other}`"))),
                }
            }
            "from" | "to" => {
                let t: i64 = v.parse().map_err(|_| bad(format!("`{k}` must be a Unix time")))?;
                if !(0..=MAX_TIMESTAMP).contains(&t) {
                    return Err(bad(format!("`{k}` must be a Unix time between 0 and {MAX_TIMESTAMP}")));
                }
                if k == "from" {
                    from = Some(t);
                } else {
                    to = Some(t);
                }
            }
            "tz" => zone = Zone::parse(&v).map_err(bad)?,
            _ => {}
        }
    }
    let to = to.unwrap_or(now);
    let default_span = if granularity == Granularity::Day {
        30 * 86_400
    } else {
        86_400
    };
    let from = from.unwrap_or(to - default_span).max(0);
    if from >= to {
        return Err(bad("`from` must be before `to`"));
    }
    let starts = report::bucket_starts(granularity, zone, from, to).map_err(bad)?;
    let store = &*relay.store;
    let me = [key.id.to_string()];
    let points = report::series(
        store,
        Dimension::Key,
        &me,
        &report::Frame {
            granularity,
            zone,
            starts: &starts,
            to,
        },
        now,
    )
    .await
    .map_err(store_failed)?;
    let series: Vec<Value> = starts
        .iter()
        .zip(&points)
        .map(|(s, c)| {
            let mut m = Map::new();
            m.insert("start".into(), Value::from(*s));
            m.extend(counters(c));
            Value::Object(m)
        })
        .collect();

    // Today (from local midnight), the last 7 and 30 days (whole local days, today included).
    let today_start = report::bucket_start(Granularity::Day, zone, now);
    let mut periods = Map::new();
    for (name, days) in [("today", 1i64), ("d7", 7), ("d30", 30)] {
        let start = zone.midnight(zone.date_at(today_start + 3600) - chrono::Duration::days(days - 1));
        let days = report::bucket_starts(Granularity::Day, zone, start, now + 1).map_err(bad)?;
        let sum = report::series(
            store,
            Dimension::Key,
            &me,
            &report::Frame {
                granularity: Granularity::Day,
                zone,
                starts: &days,
                to: now + 1,
            },
            now,
        )
        .await
        .map_err(store_failed)?
        .iter()
        .fold(UsageCounters::default(), |mut a, c| {
            a.add(c);
            a
        });
        periods.insert(name.into(), Value::Object(counters(&sum)));
    }

    // The range's usage per model (as the series counts it: whole hours while they are kept).
    let mut by_model = Map::new();
    for (model, c) in report::key_models(store, &key.id, from, to, now)
        .await
        .map_err(store_failed)?
    {
        by_model.insert(model, Value::Object(counters(&c)));
    }

    let now_ms = chrono::Utc::now().timestamp_millis();
    let peek = relay.limits.peek(key, now_ms).await.map_err(|e| {
        tracing::warn!(error = %e, "self-service usage: reading the key's limit counters failed");
        RelayError::Internal("the limit counters cannot be read right now".into())
    })?;
    let limits = (relay.limits_view)(&key.policy, &peek, now_ms.div_euclid(1000));
    let p = &key.policy;
    let hint = relay
        .snapshot
        .load()
        .keys
        .iter()
        .find(|(k, ..)| k.id == key.id)
        .map(|(_, _, hint, _)| hint.clone());
    let permissions: Option<Vec<&str>> = p.permissions.as_ref().map(|ps| {
        ps.iter()
            .map(|s| match s {
                filters::Service::Claude => "claude",
                filters::Service::Gemini => "gemini",
                filters::Service::OpenAI => "openai",
            })
            .collect()
    });
    let body = json!({
        "key": {
            "name": key.name.as_ref(),
            "hint": hint,
            "enabled": key.enabled,
            "expires_at": p.expires_at,
            "permissions": permissions,
            "models": p.model_allowlist,
        },
        "limits": limits,
        "granularity": granularity.as_str(),
        "from": from,
        "to": to,
        "tz": zone.name(),
        "usage": periods,
        "series": series,
        "by_model": by_model,
    });
    Ok(Bytes::from(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_per_key_and_per_minute() {
        let b = Budget::default();
        let (k1, k2): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        for _ in 0..3 {
            assert!(b.take(&k1, 3, 120).is_ok());
        }
        assert_eq!(b.take(&k1, 3, 130), Err(50));
        assert!(b.take(&k2, 3, 130).is_ok());
        assert!(b.take(&k1, 3, 180).is_ok());
    }
}
