//! HTTPS on the relay and admin listeners: a certificate chain and its private key, read from PEM
//! files and checked ([`load`]), served through a rustls certificate resolver ([`ReloadingCert`])
//! whose certificate is replaced when the files change (a certbot renewal): new handshakes get the
//! new certificate, connections already open keep the one they started with.
//!
//! The files are read again every `reload_every` and compared by content (a hash), so a renewal
//! that swaps symlinks, renames files over the old ones or rewrites them in place is noticed
//! alike. A reload that fails (a half-written file, a key that does not match the certificate
//! yet) keeps the certificate being served, logs a warning naming the file, and is tried again at
//! the next check.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// The two files of a listener's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate chain, leaf first (certbot's `fullchain.pem`).
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1 PEM; certbot's `privkey.pem`).
    pub key: PathBuf,
}

/// Which of the two files a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Cert,
    Key,
}

impl Part {
    /// The config key of the file, under its section (`tls.cert`, `admin.tls.key`).
    pub fn key_name(self) -> &'static str {
        match self {
            Part::Cert => "cert",
            Part::Key => "key",
        }
    }
}

/// Why a certificate/key pair cannot be served: the file and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct TlsFileError {
    pub part: Part,
    pub path: PathBuf,
    pub reason: String,
}

impl TlsFileError {
    fn new(part: Part, path: &Path, reason: impl Into<String>) -> Self {
        TlsFileError {
            part,
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// The crypto provider of every TLS listener (the one Pingora's rustls build uses).
fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn read(part: Part, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| TlsFileError::new(part, path, format!("cannot read the file: {e}")))
}

/// Reads and checks a certificate chain and its key.
pub fn load(files: &CertFiles) -> Result<CertifiedKey, TlsFileError> {
    let cert = read(Part::Cert, &files.cert)?;
    let key = read(Part::Key, &files.key)?;
    parse(files, &cert, &key)
}

/// What is wrong with a PEM file, in words.
fn pem_problem(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => {
            "not a valid PEM file: a section has no end line (a file half written?)".into()
        }
        pem::Error::IllegalSectionStart { .. } => "not a valid PEM file: a malformed BEGIN line".into(),
        pem::Error::Base64Decode(_) => "not a valid PEM file: a section is not valid base64".into(),
        e => format!("not a valid PEM file ({e:?})"),
    }
}

/// Parses the PEM contents of `files` and checks that the key belongs to the first certificate.
fn parse(files: &CertFiles, cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsFileError> {
    let cert_err = |reason: String| TlsFileError::new(Part::Cert, &files.cert, reason);
    let key_err = |reason: String| TlsFileError::new(Part::Key, &files.key, reason);
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(pem_problem(&e)))?;
    if chain.is_empty() {
        return Err(cert_err(
            "holds no certificate (expected PEM `-----BEGIN CERTIFICATE-----` sections, the server's first)".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => key_err(
            "holds no private key (expected PEM `-----BEGIN PRIVATE KEY-----`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`)"
                .into(),
        ),
        e => key_err(pem_problem(&e)),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_err(format!("the private key is not usable: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // A key type whose public half rustls cannot tell is served as it is.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(key_err(format!(
            "the private key does not belong to the certificate in {}",
            files.cert.display()
        ))),
        Err(e) => Err(cert_err(format!("the first certificate is not valid X.509: {e}"))),
    }
}

/// What a check of the files found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The files are as last seen.
    Unchanged,
    /// New files, served from now on.
    Replaced,
    /// New files that cannot be served; the previous certificate stays.
    Refused,
}

/// A listener's certificate, replaced when its files change (see the module documentation).
pub struct ReloadingCert {
    /// The config key of the section (`tls`, `admin.tls`), for the log.
    section: &'static str,
    files: CertFiles,
    current: ArcSwap<CertifiedKey>,
    /// The hashes of the files' contents last seen, loaded or refused: unchanged files are not
    /// parsed again, and a broken pair is reported once, not at every check.
    seen: Mutex<[u8; 32]>,
}

impl std::fmt::Debug for ReloadingCert {
    // Without the key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("section", &self.section)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn contents_hash(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((cert.len() as u64).to_be_bytes());
    h.update(cert);
    h.update(key);
    h.finalize().into()
}

impl ReloadingCert {
    /// Loads the files once; an error stops the start.
    pub fn load(section: &'static str, files: CertFiles) -> Result<ReloadingCert, TlsFileError> {
        let cert = read(Part::Cert, &files.cert)?;
        let key = read(Part::Key, &files.key)?;
        let certified = parse(&files, &cert, &key)?;
        Ok(ReloadingCert {
            section,
            seen: Mutex::new(contents_hash(&cert, &key)),
            current: ArcSwap::from_pointee(certified),
            files,
        })
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Reads the files and serves them if they changed and are good.
    pub fn check(&self) -> Reload {
        let read_both = read(Part::Cert, &self.files.cert).and_then(|c| Ok((c, read(Part::Key, &self.files.key)?)));
        let (cert, key) = match read_both {
            Ok(both) => both,
            Err(e) => {
                // Between a certbot run's steps a file may be missing for a moment: tried again
                // at the next check, reported once while it lasts.
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                let marker = contents_hash(e.reason.as_bytes(), e.path.as_os_str().as_encoded_bytes());
                if *seen != marker {
                    *seen = marker;
                    self.refused(&e);
                }
                return Reload::Refused;
            }
        };
        let hash = contents_hash(&cert, &key);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == hash {
                return Reload::Unchanged;
            }
            *seen = hash;
        }
        match parse(&self.files, &cert, &key) {
            Ok(certified) => {
                self.current.store(Arc::new(certified));
                tracing::info!(
                    section = self.section,
                    cert_file = %self.files.cert.display(),
                    key_file = %self.files.key.display(),
                    "TLS certificate reloaded; new connections get it"
                );
                Reload::Replaced
            }
            Err(e) => {
                self.refused(&e);
                Reload::Refused
            }
        }
    }

    fn refused(&self, e: &TlsFileError) {
        // (A field named `key` would be redacted from the log.)
        tracing::warn!(
            setting = %format!("{}.{}", self.section, e.part.key_name()),
            file = %e.path.display(),
            reason = %e.reason,
            "TLS certificate not reloaded; still serving the previous one (tried again at the next check)"
        );
    }

    /// Checks the files every `every`, forever.
    pub async fn reload_forever(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let me = self.clone();
            // File reads and a signature key parse: off the runtime's worker.
            if tokio::task::spawn_blocking(move || me.check()).await.is_err() {
                tracing::warn!(section = self.section, "TLS certificate check failed to run");
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// ALPN of the TLS listeners: HTTP/2 preferred, HTTP/1.1 allowed.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A rustls server configuration presenting `cert` (TLS 1.2 and 1.3, ALPN `h2`, `http/1.1`).
pub fn server_config(cert: Arc<ReloadingCert>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    struct Pair {
        cert: String,
        key: String,
    }

    fn self_signed(name: &str) -> Pair {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn files(dir: &Path) -> CertFiles {
        CertFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    fn write(f: &CertFiles, p: &Pair) {
        std::fs::write(&f.cert, &p.cert).unwrap();
        std::fs::write(&f.key, &p.key).unwrap();
    }

    #[test]
    fn bad_files_name_the_file_at_fault() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let a = self_signed("a.test");
        let b = self_signed("b.test");
        let err = |cert: &str, key: &str| {
            std::fs::write(&f.cert, cert).unwrap();
            std::fs::write(&f.key, key).unwrap();
            load(&f).unwrap_err()
        };
        write(&f, &a);
        assert!(load(&f).is_ok());

        let e = err(&a.cert, &b.key);
        assert_eq!(e.part, Part::Key);
        assert!(e.reason.contains("does not belong"), "{e}");
        let e = err("hello", &a.key);
        assert_eq!(e.part, Part::Cert);
        assert!(e.reason.contains("no certificate"), "{e}");
        let e = err(&a.key, &a.key);
        assert_eq!(e.part, Part::Cert);
        let e = err(&a.cert, &a.cert);
        assert_eq!(e.part, Part::Key);
        assert!(e.reason.contains("no private key"), "{e}");
        let half = &a.cert[..a.cert.len() / 2];
        let e = err(half, &a.key);
        assert_eq!(e.part, Part::Cert, "{e}");
        std::fs::remove_file(&f.key).unwrap();
        let e = load(&f).unwrap_err();
        assert_eq!(e.part, Part::Key);
        assert!(e.to_string().contains("key.pem"), "{e}");
    }

    #[test]
    fn a_reload_replaces_good_files_and_keeps_the_old_certificate_for_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let (a, b, c) = (self_signed("a.test"), self_signed("b.test"), self_signed("c.test"));
        write(&f, &a);
        let r = ReloadingCert::load("tls", f.clone()).unwrap();
        let first = r.current();
        assert_eq!(r.check(), Reload::Unchanged);

        // A renewal half done: the new certificate, the old key.
        std::fs::write(&f.cert, &b.cert).unwrap();
        assert_eq!(r.check(), Reload::Refused);
        assert_eq!(r.current().cert, first.cert);
        assert_eq!(r.check(), Reload::Unchanged, "reported once");
        std::fs::write(&f.key, &b.key).unwrap();
        assert_eq!(r.check(), Reload::Replaced);
        assert_ne!(r.current().cert, first.cert);

        // Gone for a moment, then back with another pair.
        std::fs::remove_file(&f.cert).unwrap();
        assert_eq!(r.check(), Reload::Refused);
        assert_eq!(r.check(), Reload::Refused);
        write(&f, &c);
        assert_eq!(r.check(), Reload::Replaced);
        let c_der = CertificateDer::from_pem_slice(c.cert.as_bytes()).unwrap();
        assert_eq!(r.current().cert[0], c_der);
    }
}
