//! Admin authentication: argon2 password hashes, bearer sessions in the store, and a limiter
//! against password guessing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;

use super::Credentials;
use crate::config::LoginBackoffConfig;

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

/// Verifies like [`verify_password`], with argon2's working memory (19 MiB with the default
/// parameters) taken from `memory`, which keeps it for the next call: a thread that verifies
/// logins one after the other allocates it once.
fn verify_reusing(memory: &mut Vec<Block>, password: &str, phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else { return false };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash.as_ref()) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (Algorithm::try_from(hash.algorithm), Params::try_from(&hash)) else {
        return false;
    };
    let Ok(version) = hash.version.map(Version::try_from).transpose() else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version.unwrap_or_default(), params)
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..blocks])
        .is_ok()
        && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
}

/// How many entries each limiter table keeps at most (pairs, addresses).
pub const MAX_ENTRIES: usize = 10_000;
/// Password verifications that run at once, each on a thread of its own (each argon2
/// verification takes 19 MiB, which each thread keeps and reuses from one login to the next).
pub const VERIFY_CONCURRENCY: usize = 2;
/// Logins that may wait for a verification thread. Beyond them a login is answered 503 at once
/// instead of piling up.
pub const VERIFY_QUEUE: usize = 6;
/// A client address, across every user name, gets this many times `after` free failures.
pub const ADDRESS_FACTOR: u32 = 10;
/// User names are keyed (and logged) by at most this many characters.
pub const MAX_USER_CHARS: usize = 64;

/// Attempts of one key (a user name and client address, or a client address) and when the last
/// one was admitted.
#[derive(Clone, Copy, Debug)]
struct Entry {
    attempts: u32,
    last: Instant,
}

/// The wait after `attempts` attempts: none for the first `after`, then `base`, doubling up to
/// `max`.
fn delay(policy: &LoginBackoffConfig, after: u32, attempts: u32) -> Duration {
    if attempts < after {
        return Duration::ZERO;
    }
    let factor = 2u32.saturating_pow(attempts - after);
    policy.base.0.saturating_mul(factor).min(policy.max.0)
}

impl Entry {
    /// How long until the next attempt may start (zero when it may now).
    fn wait(&self, policy: &LoginBackoffConfig, after: u32, now: Instant) -> Duration {
        (self.last + delay(policy, after, self.attempts)).saturating_duration_since(now)
    }

    /// Whether the entry can be forgotten: its delay is over and it has been quiet for four times
    /// `max` since.
    fn stale(&self, policy: &LoginBackoffConfig, after: u32, now: Instant) -> bool {
        let quiet = policy.max.0.saturating_mul(4);
        now.saturating_duration_since(self.last) >= delay(policy, after, self.attempts) + quiet
    }
}

/// A table of entries bounded to [`MAX_ENTRIES`]: when full, stale entries go first, then the
/// least recently attempted one.
struct Table<K> {
    entries: HashMap<K, Entry>,
    after: fn(&LoginBackoffConfig) -> u32,
}

impl<K: std::hash::Hash + Eq + Clone> Table<K> {
    fn new(after: fn(&LoginBackoffConfig) -> u32) -> Self {
        Table {
            entries: HashMap::new(),
            after,
        }
    }

    fn wait(&self, key: &K, policy: &LoginBackoffConfig, now: Instant) -> Duration {
        self.entries
            .get(key)
            .map_or(Duration::ZERO, |e| e.wait(policy, (self.after)(policy), now))
    }

    /// Counts an attempt; returns the entry as it was before.
    fn count(&mut self, key: &K, policy: &LoginBackoffConfig, now: Instant) -> Option<Entry> {
        if !self.entries.contains_key(key) && self.entries.len() >= MAX_ENTRIES {
            let after = (self.after)(policy);
            self.entries.retain(|_, e| !e.stale(policy, after, now));
            if self.entries.len() >= MAX_ENTRIES
                && let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        let prev = self.entries.get(key).copied();
        let e = self
            .entries
            .entry(key.clone())
            .or_insert(Entry { attempts: 0, last: now });
        if prev.is_some_and(|p| p.stale(policy, (self.after)(policy), now)) {
            e.attempts = 0;
        }
        e.attempts = e.attempts.saturating_add(1);
        e.last = now;
        prev
    }

    /// Takes back an attempt counted at `at` (`prev` is the entry as it was before it).
    fn uncount(&mut self, key: &K, at: Instant, prev: Option<Entry>) {
        let Some(e) = self.entries.get_mut(key) else { return };
        if e.last == at {
            // No later attempt: the entry goes back to what it was.
            match prev {
                Some(p) => *e = p,
                None => {
                    self.entries.remove(key);
                }
            }
        } else {
            e.attempts = e.attempts.saturating_sub(1);
        }
    }
}

/// The key of a client address in the address table: the address, or its /64 for IPv6 (one
/// host usually holds a whole /64).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            seg[4..].fill(0);
            IpAddr::V6(seg.into())
        }
        v4 => v4,
    }
}

/// A user name as it is keyed and logged: at most [`MAX_USER_CHARS`] characters, control
/// characters escaped.
pub fn printable_user(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().take(MAX_USER_CHARS) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// An attempt counted by [`LoginLimiter::reserve`]; it stays counted as a failure unless it is
/// given back by [`LoginLimiter::succeeded`] or [`LoginLimiter::not_verified`].
#[derive(Debug)]
pub struct Reservation {
    pair: (String, IpAddr),
    address: IpAddr,
    at: Instant,
    prev_pair: Option<Entry>,
    prev_address: Option<Entry>,
}

/// Slows password guessing (per instance).
///
/// Every attempt is counted before its password is verified, so concurrent attempts cannot
/// slip past the count. Per (user name, client address), the first `after` attempts are free;
/// then each next one must wait `base`, doubling with every further failure up to `max`
/// (answered 429 with the wait meanwhile). A correct password, once admitted, succeeds and
/// clears its pair, so a delay never locks the administrator out longer than it runs. A client
/// address across all user names gets [`ADDRESS_FACTOR`] times `after` free attempts before the
/// same backoff, so cycling user names does not escape it. Both tables are bounded.
///
/// Verifications themselves are bounded too: [`VERIFY_CONCURRENCY`] threads run them, at most
/// [`VERIFY_QUEUE`] logins wait for one, and more are refused at once. Dedicated threads (rather
/// than the blocking pool) keep argon2's working memory from one verification to the next:
/// allocated afresh each time, the allocator did not reuse it, and every verification added its
/// 19 MiB to the process for good.
#[derive(Default)]
pub struct LoginLimiter {
    tables: Mutex<Tables>,
    verifiers: OnceLock<Option<SyncSender<Job>>>,
}

/// A verification: the password, the credentials, where the answer goes.
type Job = (String, Arc<Credentials>, tokio::sync::oneshot::Sender<bool>);

/// Starts the verification threads; the sender of their queue.
fn start_verifiers() -> Option<SyncSender<Job>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(VERIFY_QUEUE);
    let rx = Arc::new(Mutex::new(rx));
    let mut started = 0;
    for i in 0..VERIFY_CONCURRENCY {
        let rx = rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("admin-verify-{i}"))
            .spawn(move || {
                let mut memory = Vec::new();
                loop {
                    let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((password, credentials, reply)) = job else {
                        return;
                    };
                    let ok = verify_reusing(&mut memory, &password, &credentials.password_hash);
                    // The client may be gone; the answer is then dropped.
                    let _ = reply.send(ok);
                }
            });
        match spawned {
            Ok(_) => started += 1,
            Err(e) => tracing::error!(error = %e, "cannot start an admin password verification thread"),
        }
    }
    (started > 0).then_some(tx)
}

struct Tables {
    pairs: Table<(String, IpAddr)>,
    addresses: Table<IpAddr>,
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            pairs: Table::new(|p| p.after),
            addresses: Table::new(|p| p.after.saturating_mul(ADDRESS_FACTOR)),
        }
    }
}

impl LoginLimiter {
    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts an attempt of `user` from `ip`, or says how long to wait before one is allowed.
    pub fn reserve(&self, user: &str, ip: IpAddr, policy: &LoginBackoffConfig) -> Result<Reservation, Duration> {
        self.reserve_at(user, ip, policy, Instant::now())
    }

    fn reserve_at(
        &self,
        user: &str,
        ip: IpAddr,
        policy: &LoginBackoffConfig,
        now: Instant,
    ) -> Result<Reservation, Duration> {
        let pair = (printable_user(user), ip);
        let address = address_key(ip);
        let mut t = self.tables();
        let wait = t
            .pairs
            .wait(&pair, policy, now)
            .max(t.addresses.wait(&address, policy, now));
        if !wait.is_zero() {
            return Err(wait);
        }
        let prev_pair = t.pairs.count(&pair, policy, now);
        let prev_address = t.addresses.count(&address, policy, now);
        Ok(Reservation {
            pair,
            address,
            at: now,
            prev_pair,
            prev_address,
        })
    }

    /// The attempt succeeded: its pair is cleared, and it does not count against the address.
    pub fn succeeded(&self, r: Reservation) {
        let mut t = self.tables();
        t.pairs.entries.remove(&r.pair);
        t.addresses.uncount(&r.address, r.at, r.prev_address);
    }

    /// The attempt was not verified (the server was busy): it is given back.
    pub fn not_verified(&self, r: Reservation) {
        let mut t = self.tables();
        t.pairs.uncount(&r.pair, r.at, r.prev_pair);
        t.addresses.uncount(&r.address, r.at, r.prev_address);
    }

    /// Verifies `password` against the credentials on a verification thread. `None` when
    /// [`VERIFY_QUEUE`] logins are already waiting for one (or none could be started).
    ///
    /// A verification, once queued, runs to its end even if the client disconnects, so the
    /// bound holds for the work itself and not only for the requests waiting on it.
    pub async fn verify(&self, password: String, credentials: Arc<Credentials>) -> Option<bool> {
        let queue = self.verifiers.get_or_init(start_verifiers).as_ref()?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        queue.try_send((password, credentials, reply)).ok()?;
        Some(answer.await.unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_reusing_memory_agrees_and_keeps_the_memory() {
        let h = hash_password("correct horse").unwrap();
        let mut memory = Vec::new();
        assert!(verify_reusing(&mut memory, "correct horse", &h));
        let kept = memory.len();
        assert_eq!(kept, 19 * 1024, "the default m_cost, in 1 KiB blocks");
        assert!(!verify_reusing(&mut memory, "wrong", &h));
        assert!(verify_reusing(&mut memory, "correct horse", &h));
        assert_eq!(memory.len(), kept);
        assert!(!verify_reusing(&mut memory, "x", "not a hash"));
        // Other parameters and algorithms (a configured password_hash), smaller and larger.
        for (alg, m) in [
            (Algorithm::Argon2i, 8),
            (Algorithm::Argon2d, 1024),
            (Algorithm::Argon2id, 32 * 1024),
        ] {
            let params = Params::new(m, 1, 1, Some(24)).unwrap();
            let salt = SaltString::generate(&mut OsRng);
            let phc = Argon2::new(alg, Version::V0x10, params)
                .hash_password(b"pw-123456", &salt)
                .unwrap()
                .to_string();
            assert!(verify_password("pw-123456", &phc), "{phc}");
            assert!(verify_reusing(&mut memory, "pw-123456", &phc), "{phc}");
            assert!(!verify_reusing(&mut memory, "pw-1234567", &phc), "{phc}");
        }
        assert_eq!(memory.len(), 32 * 1024);
    }

    #[test]
    fn hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    fn policy(after: u32, base: u64, max: u64) -> LoginBackoffConfig {
        LoginBackoffConfig {
            after,
            base: crate::types::Dur(Duration::from_secs(base)),
            max: crate::types::Dur(Duration::from_secs(max)),
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_a_success_clears_the_pair() {
        let p = policy(3, 1, 10);
        let l = LoginLimiter::default();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            l.reserve_at("admin", ip, &p, t0).unwrap();
        }
        // Counted before verification: a fourth concurrent attempt already waits.
        assert_eq!(l.reserve_at("admin", ip, &p, t0).unwrap_err(), secs(1));
        let mut t = t0;
        for expected in [1, 2, 4, 8, 10, 10] {
            assert_eq!(l.reserve_at("admin", ip, &p, t).unwrap_err(), secs(expected));
            t += secs(expected);
            l.reserve_at("admin", ip, &p, t).unwrap();
        }
        // Another user name from the same address, and the same name elsewhere, are not delayed.
        l.reserve_at("root", ip, &p, t).unwrap();
        l.reserve_at("admin", "10.9.9.9".parse().unwrap(), &p, t).unwrap();
        // Once the delay is over, an attempt is admitted; its success clears the pair.
        let r = l.reserve_at("admin", ip, &p, t + secs(10)).unwrap();
        l.succeeded(r);
        for _ in 0..3 {
            l.reserve_at("admin", ip, &p, t + secs(10)).unwrap();
        }
        assert!(l.reserve_at("admin", ip, &p, t + secs(10)).is_err());
        // A long quiet period forgets the failures.
        l.reserve_at("admin", ip, &p, t + secs(10 + 10 + 40)).unwrap();
        l.reserve_at("admin", ip, &p, t + secs(10 + 10 + 40)).unwrap();
    }

    #[test]
    fn an_address_cycling_user_names_is_slowed_too() {
        let p = policy(2, 1, 60);
        let l = LoginLimiter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t = Instant::now();
        for i in 0..2 * ADDRESS_FACTOR {
            l.reserve_at(&format!("user{i}"), ip, &p, t).unwrap();
        }
        assert_eq!(l.reserve_at("someone-else", ip, &p, t).unwrap_err(), secs(1));
        // Addresses of one IPv6 /64 count together; another /64 does not.
        let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
        for i in 0..2 * ADDRESS_FACTOR {
            l.reserve_at(&format!("u{i}"), v6(&format!("2001:db8::{i:x}")), &p, t)
                .unwrap();
        }
        assert!(l.reserve_at("x", v6("2001:db8::ffff"), &p, t).is_err());
        l.reserve_at("x", v6("2001:db8:0:1::1"), &p, t).unwrap();
    }

    #[test]
    fn an_attempt_not_verified_is_given_back_and_a_success_does_not_count_for_the_address() {
        let p = policy(1, 5, 60);
        let l = LoginLimiter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t = Instant::now();
        let r = l.reserve_at("admin", ip, &p, t).unwrap();
        l.not_verified(r);
        let r = l.reserve_at("admin", ip, &p, t).unwrap();
        assert_eq!(l.reserve_at("admin", ip, &p, t).unwrap_err(), secs(5));
        l.succeeded(r);
        // Many successes from one address never add up to a delay.
        for _ in 0..3 * ADDRESS_FACTOR {
            let r = l.reserve_at("admin", ip, &p, t).unwrap();
            l.succeeded(r);
        }
        assert!(l.tables().addresses.entries.is_empty());
    }

    #[test]
    fn the_tables_stay_bounded() {
        let p = policy(5, 1, 60);
        let l = LoginLimiter::default();
        let t = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 500) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.reserve_at("admin", ip, &p, t).unwrap();
        }
        let tables = l.tables();
        assert_eq!(tables.pairs.entries.len(), MAX_ENTRIES);
        assert_eq!(tables.addresses.entries.len(), MAX_ENTRIES);
    }

    #[test]
    fn user_names_are_truncated_and_escaped() {
        assert_eq!(printable_user("admin"), "admin");
        assert_eq!(printable_user("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        assert_eq!(printable_user(&"é".repeat(100)).chars().count(), MAX_USER_CHARS);
    }
}
