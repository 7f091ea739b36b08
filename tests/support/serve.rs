//! Serving an axum `Router` on a real socket for the mocks: plain HTTP/1.1 ([`serve`]) or TLS
//! with ALPN `h2` and `http/1.1` ([`serve_tls`]), with certificates from a throwaway CA
//! ([`TestCa`]). The accept loop stops when the [`Served`] handle is dropped; open connections are
//! asked to close gracefully.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// A running server; dropping it stops accepting and asks open connections to close.
pub struct Served {
    pub addr: SocketAddr,
    /// TCP connections accepted so far (TLS servers only).
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    stop: watch::Sender<bool>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Resolves once the [`Served`] handle is dropped.
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Serves `router` over plain HTTP/1.1 on a random port of 127.0.0.1.
pub async fn serve(router: Router) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, mut stopped) = watch::channel(false);
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                until_stopped(&mut stopped).await;
            })
            .await
            .unwrap();
    });
    Served {
        addr,
        connections: Default::default(),
        stop,
    }
}

/// Serves `router` over TLS on a random port of 127.0.0.1 with `ca`'s leaf certificate (valid
/// for `localhost` and `127.0.0.1`): HTTP/2 when the client negotiates ALPN `h2`, HTTP/1.1
/// otherwise.
pub async fn serve_tls(router: Router, ca: &TestCa) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(ca.server_config());
    let (stop, mut stopped) = watch::channel(false);
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                r = listener.accept() => match r {
                    Ok((tcp, _)) => tcp,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                _ = until_stopped(&mut stopped) => break,
            };
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(serve_tls_connection(
                tcp,
                acceptor.clone(),
                router.clone(),
                stopped.clone(),
            ));
        }
    });
    Served {
        addr,
        connections,
        stop,
    }
}

async fn serve_tls_connection(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    router: Router,
    mut stopped: watch::Receiver<bool>,
) {
    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else {
        return;
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let builder = auto::Builder::new(TokioExecutor::new());
    let builder = if h2 { builder.http2_only() } else { builder.http1_only() };
    let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(router));
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = until_stopped(&mut stopped) => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// A throwaway certificate authority and a leaf certificate it signed for `localhost` and
/// `127.0.0.1`. The CA certificate is written as PEM to a temporary file ([`TestCa::ca_path`])
/// that lives as long as this value, e.g. for `SSL_CERT_FILE`.
pub struct TestCa {
    ca_pem: String,
    leaf: CertificateDer<'static>,
    leaf_key: PrivatePkcs8KeyDer<'static>,
    file: tempfile::NamedTempFile,
}

impl TestCa {
    pub fn new() -> TestCa {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(
            DnType::CommonName,
            format!("claude-relay test CA {}", uuid::Uuid::new_v4()),
        );
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();

        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf_params.distinguished_name.push(DnType::CommonName, "localhost");
        leaf_params.is_ca = IsCa::NoCa;
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();

        let ca_pem = ca_cert.pem();
        let file = tempfile::Builder::new()
            .prefix("test-ca-")
            .suffix(".pem")
            .tempfile()
            .unwrap();
        std::fs::write(file.path(), &ca_pem).unwrap();
        TestCa {
            ca_pem,
            leaf: leaf.der().clone(),
            leaf_key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
            file,
        }
    }

    /// The PEM file holding the CA certificate (only it).
    pub fn ca_path(&self) -> &Path {
        self.file.path()
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A server configuration presenting the leaf certificate, offering ALPN `h2` and
    /// `http/1.1`, with its own crypto provider (no process default needed).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![self.leaf.clone()], PrivateKeyDer::Pkcs8(self.leaf_key.clone_key()))
                .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
