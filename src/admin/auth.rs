//! Admin authentication: argon2 password hashes, bearer sessions in the store, and a limiter
//! against password guessing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};

/// Hashes a password with argon2id and a random salt (PHC string).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt)?.to_string())
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// Failed logins allowed per client IP within the window before further attempts are refused.
pub const MAX_FAILURES: u32 = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Counts failed logins per client IP (per instance).
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl LoginLimiter {
    /// `Some(seconds)` until the next attempt is allowed, when the IP is locked out.
    pub fn locked(&self, ip: IpAddr) -> Option<u64> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let (n, since) = map.get(&ip)?;
        let elapsed = since.elapsed();
        if *n >= MAX_FAILURES && elapsed < FAILURE_WINDOW {
            Some((FAILURE_WINDOW - elapsed).as_secs().max(1))
        } else {
            None
        }
    }

    pub fn fail(&self, ip: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, (_, t)| t.elapsed() < FAILURE_WINDOW);
        }
        let e = map.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAILURE_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }

    pub fn succeed(&self, ip: IpAddr) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn limiter_locks_after_failures() {
        let l = LoginLimiter::default();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(l.locked(ip).is_none());
            l.fail(ip);
        }
        assert!(l.locked(ip).is_some());
        l.succeed(ip);
        assert!(l.locked(ip).is_none());
    }
}
