//! Secret handling: sealing credentials at rest (AES-256-GCM), hashing client keys (HMAC-SHA256),
//! generating client keys, and masking secrets for display.
//!
//! One 32-byte server secret feeds both uses through domain-separated derivations, so a leaked
//! key hash says nothing about the sealing key and vice versa.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The prefix of every client key the relay issues.
pub const CLIENT_KEY_PREFIX: &str = "cr_";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret_key must be at least 32 characters (or 64 hex digits)")]
    WeakKey,
    #[error("sealed value cannot be opened: wrong secret_key or corrupted data")]
    Open,
    #[error("sealed value is malformed")]
    Malformed,
}

/// A credential sealed with AES-256-GCM: `v1:` + base64(nonce ‖ ciphertext ‖ tag).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sealed(pub String);

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealed(..)")
    }
}

/// The server's secret material, derived from the configured `secret_key`.
#[derive(Clone)]
pub struct Secrets {
    seal: Aes256Gcm,
    key_hmac: HmacSha256,
    /// The key of `key_hmac`, for backups: keys restored on a relay with another `secret_key`
    /// keep authenticating under it.
    hash_key: [u8; 32],
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secrets(..)")
    }
}

/// Domain-separated sub-key: SHA-256(label ‖ 0 ‖ secret).
fn derive(secret: &[u8], label: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(label);
    h.update([0u8]);
    h.update(secret);
    h.finalize().into()
}

impl Secrets {
    /// Builds the secrets from the configured key: 64 hex digits are taken as 32 raw bytes, anything
    /// else of at least 32 characters is used as a passphrase.
    pub fn new(secret_key: &str) -> Result<Self, SecretError> {
        let raw: Vec<u8> = match hex::decode(secret_key) {
            Ok(b) if b.len() == 32 => b,
            _ if secret_key.len() >= 32 => secret_key.as_bytes().to_vec(),
            _ => return Err(SecretError::WeakKey),
        };
        let seal_key = derive(&raw, b"claude-relay/seal/v1");
        let hash_key = derive(&raw, b"claude-relay/client-key-hash/v1");
        let seal = Aes256Gcm::new_from_slice(&seal_key).map_err(|_| SecretError::WeakKey)?;
        let key_hmac = <HmacSha256 as Mac>::new_from_slice(&hash_key).map_err(|_| SecretError::WeakKey)?;
        Ok(Secrets {
            seal,
            key_hmac,
            hash_key,
        })
    }

    /// A fresh random secret key (64 hex digits) for first start.
    pub fn generate_key() -> String {
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        hex::encode(b)
    }

    pub fn seal(&self, plaintext: &str) -> Sealed {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        // Encryption with a valid key and nonce only fails for absurd lengths (> 64 GiB).
        let ct = self
            .seal
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: b"claude-relay",
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(12 + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Sealed(format!("v1:{}", B64.encode(out)))
    }

    pub fn open(&self, sealed: &Sealed) -> Result<String, SecretError> {
        let b64 = sealed.0.strip_prefix("v1:").ok_or(SecretError::Malformed)?;
        let raw = B64.decode(b64).map_err(|_| SecretError::Malformed)?;
        if raw.len() < 12 + 16 {
            return Err(SecretError::Malformed);
        }
        let (nonce, ct) = raw.split_at(12);
        let pt = self
            .seal
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: b"claude-relay",
                },
            )
            .map_err(|_| SecretError::Open)?;
        String::from_utf8(pt).map_err(|_| SecretError::Malformed)
    }

    /// The keyed hash under which a client key is stored and looked up.
    pub fn hash_client_key(&self, plaintext: &str) -> [u8; 32] {
        let mut mac = self.key_hmac.clone();
        mac.update(plaintext.as_bytes());
        mac.finalize().into_bytes().into()
    }

    pub fn hash_client_key_hex(&self, plaintext: &str) -> String {
        hex::encode(self.hash_client_key(plaintext))
    }

    /// The key under which client keys are hashed (secret: it travels only sealed).
    pub fn client_key_hash_key(&self) -> [u8; 32] {
        self.hash_key
    }
}

/// The keyed hash of a client key under another relay's client-key hash key (see
/// [`Secrets::client_key_hash_key`]).
pub fn hash_client_key_under(hash_key: &[u8; 32], plaintext: &str) -> [u8; 32] {
    // HMAC accepts keys of any length: the error branch is never taken.
    let Ok(mut mac) = <HmacSha256 as Mac>::new_from_slice(hash_key) else {
        return [0; 32];
    };
    mac.update(plaintext.as_bytes());
    mac.finalize().into_bytes().into()
}

/// A new client key: `cr_` + 64 hex digits from the OS random source.
pub fn generate_client_key() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("{CLIENT_KEY_PREFIX}{}", hex::encode(b))
}

/// A random opaque token (admin sessions, OAuth state): 64 hex digits.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// SHA-256 hex of a token, for storing bearer tokens by hash.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// How many characters [`mask`] reveals of a secret of `n` characters: none up to 12, then a
/// quarter of the length, at most 4 up to 24 characters and at most 8 beyond.
fn revealed(n: usize) -> usize {
    match n {
        0..=12 => 0,
        13..=24 => (n / 4).min(4),
        _ => (n / 4).min(8),
    }
}

/// A display form of a secret that reveals only a little of it, enough to tell keys apart:
/// `sk-a…9xQk` for a long key (its first and last 4 characters), `…9xQk` for one of 13 to 24
/// characters (at most 4 of its last), `…` alone for 12 characters or fewer. At most a quarter of
/// the characters show.
pub fn mask(secret: &str) -> String {
    let n = secret.chars().count();
    let shown = revealed(n);
    let head = shown.saturating_sub(4);
    let tail = shown - head;
    let mut out: String = secret.chars().take(head).collect();
    out.push('…');
    out.extend(secret.chars().skip(n - tail));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_tamper() {
        let s = Secrets::new(&Secrets::generate_key()).unwrap();
        let sealed = s.seal("sk-ant-api03-secret");
        assert!(!sealed.0.contains("secret"));
        assert_eq!(s.open(&sealed).unwrap(), "sk-ant-api03-secret");
        let other = Secrets::new(&Secrets::generate_key()).unwrap();
        assert!(matches!(other.open(&sealed), Err(SecretError::Open)));
        let mut bad = sealed.0.clone();
        bad.push('A');
        assert!(s.open(&Sealed(bad)).is_err());
    }

    #[test]
    fn weak_keys_are_refused() {
        assert!(Secrets::new("short").is_err());
        assert!(Secrets::new("a-passphrase-that-is-long-enough-1234").is_ok());
    }

    #[test]
    fn client_keys_have_the_documented_shape_and_hash_stably() {
        let k = generate_client_key();
        assert_eq!(k.len(), 3 + 64);
        assert!(k.starts_with("cr_") && k[3..].chars().all(|c| c.is_ascii_hexdigit()));
        let s = Secrets::new(&"ab".repeat(32)).unwrap();
        assert_eq!(s.hash_client_key_hex(&k), s.hash_client_key_hex(&k));
        assert_ne!(s.hash_client_key_hex(&k), s.hash_client_key_hex("cr_other"));
    }

    #[test]
    fn mask_hides_the_middle() {
        assert_eq!(mask("sk-ant-api03-abcdefghijklmnopqrstuvwxyz"), "sk-a…wxyz");
        assert_eq!(mask("sk-ant-api03-abcdefghijklmnop"), "sk-…mnop");
        assert_eq!(mask("abcdefghijklmnopqrst"), "…qrst");
        assert_eq!(mask("abcdefghijklm"), "…klm");
        assert_eq!(mask("abcdefghijkl"), "…");
        assert_eq!(mask("short"), "…");
        assert_eq!(mask(""), "…");
        assert_eq!(mask("ééééééééééééééééé"), "…éééé");
    }

    #[test]
    fn mask_reveals_at_most_a_quarter() {
        // Distinct characters, so that every one shown can be found in the secret.
        let alphabet: Vec<char> = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
            .chars()
            .collect();
        for n in 0..=40 {
            let secret: String = alphabet[..n].iter().collect();
            let masked = mask(&secret);
            let (head, tail) = masked.split_once('…').unwrap();
            let shown = head.chars().count() + tail.chars().count();
            assert!(shown <= n / 4, "{n} characters: {shown} shown in {masked}");
            assert!(secret.starts_with(head) && secret.ends_with(tail), "{masked}");
            assert!(shown <= 8);
            if n <= 12 {
                assert_eq!(masked, "…", "{n}");
            } else if n <= 24 {
                assert!(shown <= 4, "{n}: {masked}");
            }
            if n >= 32 {
                assert_eq!(shown, 8, "{n}: {masked}");
            }
        }
    }
}
