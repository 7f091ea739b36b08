//! Claude Relay Service's encryption of stored secrets, to read them: AES-256-CBC (PKCS#7
//! padding) under a key derived from its `ENCRYPTION_KEY`, written `hex(iv):hex(ciphertext)`.
//!
//! Most account kinds derive the key with scrypt (N = 16384, r = 8, p = 1, Node's defaults) and a
//! salt of their own; Bedrock's `{encrypted, iv}` objects use SHA-256 of the key instead. Only
//! decryption is needed here; [`encrypt`] exists so tests and tooling can produce CRS's format.

use aes_gcm::aes::Aes256;
use aes_gcm::aes::cipher::generic_array::GenericArray;
use aes_gcm::aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use sha2::{Digest, Sha256};

/// Why a CRS secret could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    #[error("not in CRS's `iv:ciphertext` hex form")]
    Malformed,
    #[error("does not decrypt with the encryption key given (wrong key, or corrupt data)")]
    WrongKey,
}

/// A 32-byte AES key.
pub type Key = [u8; 32];

/// The key CRS derives with `scryptSync(ENCRYPTION_KEY, salt, 32)`.
pub fn scrypt_key(encryption_key: &str, salt: &str) -> Key {
    let mut out = [0u8; 32];
    // Node's defaults: N = 2^14, r = 8, p = 1. Both are valid, and 32 bytes is a valid length.
    if let Ok(params) = scrypt::Params::new(14, 8, 1, 32) {
        let _ = scrypt::scrypt(encryption_key.as_bytes(), salt.as_bytes(), &params, &mut out);
    }
    out
}

/// The key CRS's Bedrock accounts use: SHA-256 of `ENCRYPTION_KEY`.
pub fn sha256_key(encryption_key: &str) -> Key {
    Sha256::digest(encryption_key.as_bytes()).into()
}

/// Decrypts `hex(iv):hex(ciphertext)`.
pub fn decrypt(key: &Key, text: &str) -> Result<String, CipherError> {
    let (iv, ct) = text.split_once(':').ok_or(CipherError::Malformed)?;
    decrypt_parts(key, iv, ct)
}

/// Decrypts a hex IV and hex ciphertext.
pub fn decrypt_parts(key: &Key, iv_hex: &str, ct_hex: &str) -> Result<String, CipherError> {
    let iv = hex::decode(iv_hex.trim()).map_err(|_| CipherError::Malformed)?;
    let mut data = hex::decode(ct_hex.trim()).map_err(|_| CipherError::Malformed)?;
    if iv.len() != 16 || data.is_empty() || !data.len().is_multiple_of(16) {
        return Err(CipherError::Malformed);
    }
    let aes = Aes256::new(GenericArray::from_slice(key));
    let mut prev: [u8; 16] = iv.try_into().map_err(|_| CipherError::Malformed)?;
    for block in data.chunks_exact_mut(16) {
        let mut this = [0u8; 16];
        this.copy_from_slice(block);
        aes.decrypt_block(GenericArray::from_mut_slice(block));
        block.iter_mut().zip(prev).for_each(|(b, p)| *b ^= p);
        prev = this;
    }
    let pad = usize::from(*data.last().ok_or(CipherError::WrongKey)?);
    if pad == 0 || pad > 16 || pad > data.len() || !data[data.len() - pad..].iter().all(|&b| usize::from(b) == pad) {
        return Err(CipherError::WrongKey);
    }
    data.truncate(data.len() - pad);
    String::from_utf8(data).map_err(|_| CipherError::WrongKey)
}

/// Encrypts as CRS does, with the IV given: `hex(iv):hex(ciphertext)`.
pub fn encrypt(key: &Key, iv: [u8; 16], plaintext: &str) -> String {
    let aes = Aes256::new(GenericArray::from_slice(key));
    let mut data = plaintext.as_bytes().to_vec();
    let pad = 16 - data.len() % 16;
    data.extend(std::iter::repeat_n(pad as u8, pad));
    let mut prev = iv;
    for block in data.chunks_exact_mut(16) {
        block.iter_mut().zip(prev).for_each(|(b, p)| *b ^= p);
        aes.encrypt_block(GenericArray::from_mut_slice(block));
        prev.copy_from_slice(block);
    }
    format!("{}:{}", hex::encode(iv), hex::encode(data))
}

/// CRS's API key hash: SHA-256 of the key followed by `ENCRYPTION_KEY`, hex.
pub fn legacy_key_hash(key: &str, encryption_key: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update(encryption_key.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrypt_matches_rfc_7914_and_node() {
        // RFC 7914 §12, the vector with N = 16384, r = 8, p = 1.
        let mut out = [0u8; 64];
        let params = scrypt::Params::new(14, 8, 1, 64).unwrap();
        scrypt::scrypt(b"pleaseletmein", b"SodiumChloride", &params, &mut out).unwrap();
        assert_eq!(
            hex::encode(out),
            "7023bdcb3afd7348461c06cd81fd38ebfda8fbba904f8e3ea9b543f6545da1f2\
             d5432955613f0fcf62d49705242a9af9e61e85dc0d651e40dfcf017b45575887"
        );
        // Node: crypto.scryptSync('k', 'salt', 32).
        assert_eq!(
            hex::encode(scrypt_key("k", "salt")),
            "6a15fa98fa69ecb915868966b149081818c79fcddd582b4740c8296e86ad79a0"
        );
    }

    #[test]
    fn cbc_round_trip_and_wrong_key() {
        let k = sha256_key("one");
        for text in ["", "a", "exactly sixteen!", "sk-ant-api03-some-longer-secret-value"] {
            let sealed = encrypt(&k, [7; 16], text);
            assert_eq!(decrypt(&k, &sealed).as_deref(), Ok(text));
            assert!(decrypt(&sha256_key("two"), &sealed).is_err() || text.is_empty());
        }
        assert_eq!(decrypt(&k, "nocolon"), Err(CipherError::Malformed));
        assert_eq!(decrypt(&k, "00:zz"), Err(CipherError::Malformed));
    }
}
