//! Leaf value types that several layers read and write: durations as the config writes them,
//! the error classes that put an account in cooldown, times of day. Nothing here imports from the
//! rest of the crate.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written as `250ms`, `10s`, `5m`, `1h` or `30d` (a bare number is seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration like 10s, 5m, 1h"))?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "" | "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86400.0,
            u => return Err(format!("unknown duration unit `{u}` (use ms, s, m, h or d)")),
        };
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!("`{s}` is not a valid duration"));
        }
        if secs > 10.0 * 366.0 * 86_400.0 {
            return Err(format!("`{s}` is longer than 10 years"));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            // Through `parse`, so that a bare number has the same bound as `10s`.
            Raw::N(n) => Dur::parse(&n.to_string()).map_err(serde::de::Error::custom),
            Raw::S(s) => Dur::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `HH:MM` (UTC) into minutes after midnight.
pub fn parse_hhmm(s: &str) -> Result<u32, String> {
    let (h, m) = s
        .trim()
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not a time like 00:00"))?;
    let h: u32 = h.parse().map_err(|_| format!("`{s}` is not a time like 00:00"))?;
    let m: u32 = m.parse().map_err(|_| format!("`{s}` is not a time like 00:00"))?;
    if h > 23 || m > 59 {
        return Err(format!("`{s}` is not a time of day"));
    }
    Ok(h * 60 + m)
}

/// Error classes that put an account in cooldown, as named in `scheduler.cooldowns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CooldownClass {
    /// `503`
    Unavailable,
    /// `5xx` (other server errors)
    ServerError,
    /// `529` (overloaded)
    Overloaded,
    /// `401`
    Unauthorized,
    /// `403`
    Forbidden,
    /// `429` without a usable `retry-after` or reset: 0 (the default) parks nothing, the request
    /// tries another account
    RateLimited,
    /// `429_max`: the longest a 429 may park an account
    RateLimitedMax,
    /// `connect`: connection failures
    Connect,
}

impl CooldownClass {
    pub const ALL: [CooldownClass; 8] = [
        CooldownClass::Unavailable,
        CooldownClass::ServerError,
        CooldownClass::Overloaded,
        CooldownClass::Unauthorized,
        CooldownClass::Forbidden,
        CooldownClass::RateLimited,
        CooldownClass::RateLimitedMax,
        CooldownClass::Connect,
    ];

    pub fn key(self) -> &'static str {
        match self {
            CooldownClass::Unavailable => "503",
            CooldownClass::ServerError => "5xx",
            CooldownClass::Overloaded => "529",
            CooldownClass::Unauthorized => "401",
            CooldownClass::Forbidden => "403",
            CooldownClass::RateLimited => "429",
            CooldownClass::RateLimitedMax => "429_max",
            CooldownClass::Connect => "connect",
        }
    }

    pub fn parse_key(k: &str) -> Result<CooldownClass, String> {
        CooldownClass::ALL.into_iter().find(|c| c.key() == k).ok_or_else(|| {
            let known: Vec<&str> = CooldownClass::ALL.iter().map(|c| c.key()).collect();
            format!("unknown cooldown class (known: {})", known.join(", "))
        })
    }

    /// The built-in default.
    pub fn default_duration(self) -> Duration {
        let s = match self {
            CooldownClass::Unavailable => 60,
            CooldownClass::ServerError => 300,
            CooldownClass::Overloaded => 600,
            CooldownClass::Unauthorized | CooldownClass::Forbidden | CooldownClass::RateLimitedMax => 1800,
            CooldownClass::RateLimited => 0,
            CooldownClass::Connect => 30,
        };
        Duration::from_secs(s)
    }
}
