//! The passphrase side of a backup: a key derived with argon2id from the passphrase and a random
//! salt, a check value that tells a wrong passphrase from a damaged file, and AES-256-GCM over the
//! sensitive section with the rest of the file as associated data.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::BackupError;

/// The shortest passphrase an export accepts.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

/// What the check value is a MAC of.
const CHECK_LABEL: &[u8] = b"claude-relay-backup/v1/passphrase-check";

/// The key derivation of one file: argon2id with these costs over the passphrase and the salt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kdf {
    /// Always `argon2id`.
    pub algorithm: String,
    /// Memory in KiB.
    pub m_cost: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    /// Base64, 16 bytes.
    pub salt: String,
}

impl Kdf {
    /// Fresh parameters with a random salt (the OWASP argon2id minimum: 19 MiB, 2 passes).
    pub fn fresh() -> Kdf {
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        Kdf {
            algorithm: "argon2id".to_string(),
            m_cost: 19 * 1024,
            t_cost: 2,
            p_cost: 1,
            salt: B64.encode(salt),
        }
    }
}

/// The keys derived from the passphrase: one seals, one proves the passphrase.
pub struct Keys {
    seal: [u8; 32],
    check: [u8; 32],
}

impl Keys {
    /// Derives the keys. Costs are bounded so that a crafted file cannot make the relay spend
    /// gigabytes or minutes on it. CPU-heavy: call it off the async runtime.
    pub fn derive(passphrase: &str, kdf: &Kdf) -> Result<Keys, BackupError> {
        if kdf.algorithm != "argon2id" {
            return Err(BackupError::Format(format!(
                "`kdf.algorithm` is `{}`; this relay reads only argon2id",
                kdf.algorithm
            )));
        }
        if kdf.m_cost > 256 * 1024 || kdf.t_cost > 10 || kdf.p_cost > 8 {
            return Err(BackupError::Format("`kdf` costs are out of range".into()));
        }
        let salt = B64
            .decode(&kdf.salt)
            .map_err(|_| BackupError::Format("`kdf.salt` is not base64".into()))?;
        let params = argon2::Params::new(kdf.m_cost, kdf.t_cost, kdf.p_cost, Some(64))
            .map_err(|e| BackupError::Format(format!("`kdf`: {e}")))?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 64];
        argon
            .hash_password_into(passphrase.as_bytes(), &salt, &mut out)
            .map_err(|e| BackupError::Format(format!("`kdf`: {e}")))?;
        let mut seal = [0u8; 32];
        let mut check = [0u8; 32];
        seal.copy_from_slice(&out[..32]);
        check.copy_from_slice(&out[32..]);
        Ok(Keys { seal, check })
    }

    /// The check value stored in the file (base64).
    pub fn check_value(&self) -> String {
        B64.encode(self.check_mac())
    }

    fn check_mac(&self) -> [u8; 32] {
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.check) else {
            return [0; 32];
        };
        mac.update(CHECK_LABEL);
        mac.finalize().into_bytes().into()
    }

    /// Whether `stored` is this passphrase's check value (in constant time).
    pub fn verify_check(&self, stored: &str) -> Result<(), BackupError> {
        let stored = B64
            .decode(stored)
            .map_err(|_| BackupError::Format("`check` is not base64".into()))?;
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.check) else {
            return Err(BackupError::WrongPassphrase);
        };
        mac.update(CHECK_LABEL);
        mac.verify_slice(&stored).map_err(|_| BackupError::WrongPassphrase)
    }

    /// AES-256-GCM of `plaintext` with `aad`: base64(nonce ‖ ciphertext ‖ tag).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<String, BackupError> {
        let cipher = Aes256Gcm::new_from_slice(&self.seal).map_err(|_| BackupError::Format("bad key".into()))?;
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
            .map_err(|_| BackupError::Format("the sensitive section cannot be sealed".into()))?;
        let mut out = Vec::with_capacity(12 + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(B64.encode(out))
    }

    /// Opens what [`Keys::seal`] made; any change to it or to `aad` is [`BackupError::Tampered`].
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Vec<u8>, BackupError> {
        let raw = B64
            .decode(sealed)
            .map_err(|_| BackupError::Format("`sealed` is not base64".into()))?;
        if raw.len() < 12 + 16 {
            return Err(BackupError::Tampered);
        }
        let (nonce, ct) = raw.split_at(12);
        let cipher = Aes256Gcm::new_from_slice(&self.seal).map_err(|_| BackupError::Tampered)?;
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| BackupError::Tampered)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wrong_passphrase_and_tampering_are_told_apart() {
        let kdf = Kdf::fresh();
        let keys = Keys::derive("correct horse battery", &kdf).unwrap();
        let check = keys.check_value();
        let sealed = keys.seal(b"secret", b"aad").unwrap();
        assert_eq!(keys.open(&sealed, b"aad").unwrap(), b"secret");
        assert!(matches!(keys.open(&sealed, b"aaD"), Err(BackupError::Tampered)));
        keys.verify_check(&check).unwrap();
        let other = Keys::derive("correct horse battery!", &kdf).unwrap();
        assert!(matches!(other.verify_check(&check), Err(BackupError::WrongPassphrase)));
        assert!(matches!(other.open(&sealed, b"aad"), Err(BackupError::Tampered)));
    }

    #[test]
    fn absurd_costs_are_refused() {
        let mut kdf = Kdf::fresh();
        kdf.m_cost = u32::MAX;
        assert!(matches!(Keys::derive("x", &kdf), Err(BackupError::Format(_))));
    }
}
