//! One account's live token, shared by every snapshot (like the scheduler's runtimes) and read on
//! the hot path with one atomic load, with what the background work keeps beside it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::HeaderValue;
use serde_json::Value;

use super::TokenPair;

/// A token this close to its expiry counts as expired (clock skew, request time).
const EXPIRY_SKEW_MS: i64 = 60_000;

/// A token as requests use it.
pub struct Live {
    pub pair: TokenPair,
    /// `Bearer <access token>`, marked sensitive.
    pub header: HeaderValue,
    /// Unix ms.
    pub expires_at: Option<i64>,
    /// When the pair was obtained (Unix ms); orders pairs across instances.
    pub issued_at: i64,
}

impl Live {
    pub fn new(pair: TokenPair, expires_at: Option<i64>, issued_at: i64) -> Result<Live, String> {
        let mut header = HeaderValue::from_str(&format!("Bearer {}", pair.access_token))
            .map_err(|_| "the access token contains characters not allowed in a header".to_string())?;
        header.set_sensitive(true);
        Ok(Live {
            pair,
            header,
            expires_at,
            issued_at,
        })
    }

    /// Whether the access token is expired (or about to be) at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at.is_some_and(|e| e - EXPIRY_SKEW_MS <= now_ms)
    }
}

/// The live token of one account, and what the background work keeps beside it.
pub struct TokenCell {
    pub(super) live: ArcSwap<Live>,
    /// Held while this account's token is refreshed here: one refresh at a time.
    pub(super) refresh: tokio::sync::Mutex<()>,
    /// The `issued_at` of the pair the store last showed: behind the live one means the store
    /// missed a write (it is written again).
    pub(super) store_issued_at: AtomicI64,
    profile_checked_at: AtomicI64,
    last_usage_poll: AtomicI64,
    usage: Mutex<Option<Value>>,
}

impl std::fmt::Debug for TokenCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let live = self.live.load();
        f.debug_struct("TokenCell")
            .field("expires_at", &live.expires_at)
            .field("issued_at", &live.issued_at)
            .finish_non_exhaustive()
    }
}

impl TokenCell {
    pub(super) fn new(live: Live, store_issued_at: i64, profile_checked_at: i64) -> TokenCell {
        TokenCell {
            live: ArcSwap::from_pointee(live),
            refresh: tokio::sync::Mutex::new(()),
            store_issued_at: AtomicI64::new(store_issued_at),
            profile_checked_at: AtomicI64::new(profile_checked_at),
            last_usage_poll: AtomicI64::new(0),
            usage: Mutex::new(None),
        }
    }

    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// The last answer of the provider's usage endpoint, with `fetched_at` (Unix ms).
    pub fn usage(&self) -> Option<Value> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_usage(&self, usage: Value) {
        *self.usage.lock().unwrap_or_else(|p| p.into_inner()) = Some(usage);
    }

    /// Whether the account's profile is due to be read at `now_ms` (the last read, here or as the
    /// store says, is `every_ms` old); if so, counts it as read now.
    pub fn claim_profile_read(&self, now_ms: i64, every_ms: i64) -> bool {
        claim(&self.profile_checked_at, now_ms, every_ms)
    }

    /// Whether the usage endpoint is due to be polled at `now_ms`; if so, counts it as polled now.
    pub fn claim_usage_poll(&self, now_ms: i64, every_ms: i64) -> bool {
        claim(&self.last_usage_poll, now_ms, every_ms)
    }

    /// Takes a profile read the store records; reads here count too (a setup token cannot read
    /// the profile at all).
    pub(super) fn saw_profile_read(&self, at_ms: i64) {
        self.profile_checked_at.fetch_max(at_ms, Ordering::Relaxed);
    }
}

fn claim(last: &AtomicI64, now_ms: i64, every_ms: i64) -> bool {
    if now_ms - last.load(Ordering::Relaxed) >= every_ms {
        last.store(now_ms, Ordering::Relaxed);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_count_as_expired_a_minute_early() {
        let pair = TokenPair {
            access_token: "a".into(),
            refresh_token: None,
        };
        let l = Live::new(pair.clone(), Some(100_000), 0).unwrap();
        assert!(!l.expired(39_999));
        assert!(l.expired(40_000));
        assert!(!Live::new(pair, None, 0).unwrap().expired(i64::MAX));
        assert!(
            Live::new(
                TokenPair {
                    access_token: "a\nb".into(),
                    refresh_token: None
                },
                None,
                0
            )
            .is_err()
        );
    }
}
