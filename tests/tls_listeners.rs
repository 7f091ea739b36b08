//! HTTPS on the relay's own listeners (`tls`, `admin.tls`), through the real binary: relayed
//! requests over HTTP/1.1 and HTTP/2 (ALPN and prior knowledge), the admin API over HTTPS, a
//! renewed certificate picked up under load without a failed request (certbot's symlink swap and
//! an in-place rewrite caught half-written), and bad certificate files stopping the start with the
//! key and the file named. (The upstream side of TLS is `relay_tls.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Version;
use rustls::pki_types::{CertificateDer, ServerName};
use support::mock::{MockUpstream, json_for, stream_for};
use support::{ADMIN_PASSWORD, ALICE, RelayProcess, account_yaml, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MODEL: &str = "claude-sonnet-4-5";
const BODY_JSON: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
const BODY_STREAM: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// A throwaway CA that issues server certificates for `localhost` and `127.0.0.1`.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A server certificate and its key, as PEM, and the certificate as DER (what a client sees).
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("relay test CA {name}"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    fn issue(&self, serial: u64) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("relay {serial}"));
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            // A full chain, as certbot's fullchain.pem.
            cert_pem: format!("{}{}", cert.pem(), self.cert.pem()),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

fn write_pair(cert: &Path, key: &Path, leaf: &Leaf) {
    std::fs::write(cert, &leaf.cert_pem).unwrap();
    std::fs::write(key, &leaf.key_pem).unwrap();
}

/// A reqwest client that trusts only `cas`.
fn client_trusting(cas: &[&Ca]) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(30));
    for ca in cas {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap());
    }
    b
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to `port` trusting `cas`, offering HTTP/1.1 only.
async fn tls_connect(port: u16, cas: &[&Ca]) -> Result<Tls, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(ca.cert.der().clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// The certificate a new connection to `port` is served.
async fn served_cert(port: u16, cas: &[&Ca]) -> CertificateDer<'static> {
    let tls = tls_connect(port, cas).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

/// Waits until new connections get `leaf`.
async fn wait_served(relay: &RelayProcess, cas: &[&Ca], leaf: &Leaf, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while served_cert(relay.port, cas).await != leaf.der {
        assert!(
            Instant::now() < deadline,
            "{what}: the new certificate was never served; log:\n{}",
            relay.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /health` over an open HTTP/1.1 connection; the status.
async fn get_health(tls: &mut Tls) -> u16 {
    tls.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = tls.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status: u16 = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = tls.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    status
}

fn tls_yaml(section: &str, cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "{section}: {{ cert: {}, key: {}{extra} }}",
        cert.display(),
        key.display()
    )
}

async fn post_json(client: &reqwest::Client, base: &str) -> Result<Version, String> {
    let r = client
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", ALICE)
        .header("content-type", "application/json")
        .body(BODY_JSON)
        .send()
        .await
        .map_err(|e| format!("send: {e:?}"))?;
    let (status, version) = (r.status(), r.version());
    let body = r.bytes().await.map_err(|e| format!("body: {e:?}"))?;
    if status != 200 || serde_json::from_slice::<serde_json::Value>(&body).ok() != Some(json_for(MODEL)) {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    Ok(version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_serves_https_over_http1_and_http2() {
    let ca = Ca::new("relay");
    let leaf = ca.issue(1);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("fullchain.pem"), dir.path().join("privkey.pem"));
    write_pair(&cert, &key, &leaf);
    let mock = MockUpstream::start().await;
    let extra = format!(
        "{}\naccounts:\n{}",
        tls_yaml("tls", &cert, &key, ""),
        account_yaml("main", &mock.url(), "")
    );
    let mut relay = RelayProcess::start_in(dir, &extra, &[]).await;
    assert!(relay.base().starts_with("https://"));

    let cases = [
        ("HTTP/1.1 only", client_trusting(&[&ca]).http1_only(), Version::HTTP_11),
        ("ALPN", client_trusting(&[&ca]), Version::HTTP_2),
        (
            "h2 prior knowledge",
            client_trusting(&[&ca]).http2_prior_knowledge(),
            Version::HTTP_2,
        ),
    ];
    for (what, builder, version) in cases {
        let client = builder.build().unwrap();
        for _ in 0..2 {
            let got = post_json(&client, &relay.base()).await;
            assert_eq!(got, Ok(version), "{what}; log:\n{}", relay.log_text());
        }
        // A streamed answer arrives whole on either protocol.
        let r = client
            .post(format!("{}/v1/messages", relay.base()))
            .header("x-api-key", ALICE)
            .body(BODY_STREAM)
            .send()
            .await
            .unwrap();
        assert_eq!((r.status().as_u16(), r.version()), (200, version), "{what}");
        assert_eq!(r.bytes().await.unwrap()[..], stream_for(MODEL, false)[..], "{what}");
    }
    assert_eq!(mock.hits(), 9);
    assert_eq!(served_cert(relay.port, &[&ca]).await, leaf.der);
    // The admin listener stays plain HTTP unless `admin.tls` says otherwise.
    let admin = reqwest::get(format!("{}/health", relay.admin())).await.unwrap();
    assert_eq!(admin.status(), 200);
    assert!(relay.stop().success(), "{}", relay.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_serves_https_with_h2_by_alpn_and_logins_work() {
    let ca = Ca::new("admin");
    let leaf = ca.issue(7);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("admin.crt"), dir.path().join("admin.key"));
    write_pair(&cert, &key, &leaf);
    let admin = format!(
        "username: admin, password: {ADMIN_PASSWORD}, {}",
        tls_yaml("tls", &cert, &key, ", reload_every: 2s")
    );
    let mut relay = RelayProcess::start_with_admin(dir, &admin, "", &[]).await;
    assert!(relay.admin().starts_with("https://") && relay.base().starts_with("http://"));

    let h2 = client_trusting(&[&ca]).build().unwrap();
    let h1 = client_trusting(&[&ca]).http1_only().build().unwrap();
    for (client, version) in [(&h2, Version::HTTP_2), (&h1, Version::HTTP_11)] {
        let r = client.get(format!("{}/health", relay.admin())).send().await.unwrap();
        assert_eq!((r.status().as_u16(), r.version()), (200, version));
        let login: serde_json::Value = client
            .post(format!("{}/admin/api/login", relay.admin()))
            .json(&serde_json::json!({"username": "admin", "password": ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = login["token"].as_str().unwrap_or_else(|| panic!("{login}"));
        let r = client
            .get(format!("{}/admin/api/keys", relay.admin()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!((r.status().as_u16(), r.version()), (200, version));
        let keys: serde_json::Value = r.json().await.unwrap();
        assert!(keys.to_string().contains("alice"), "{keys}");
        // A wrong password is refused as on the plain listener (the client address is known).
        let r = client
            .post(format!("{}/admin/api/login", relay.admin()))
            .json(&serde_json::json!({"username": "admin", "password": "wrong-password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    assert_eq!(served_cert(relay.admin_port, &[&ca]).await, leaf.der);
    // Plain HTTP on the HTTPS port gets no answer.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{}/health", relay.admin_port))
            .await
            .is_err()
    );
    // Graceful shutdown with a keep-alive HTTP/2 connection open.
    let open = h2.get(format!("{}/health", relay.admin())).send().await.unwrap();
    assert_eq!(open.status(), 200);
    let t = Instant::now();
    assert!(relay.stop().success(), "{}", relay.log_text());
    assert!(t.elapsed() < Duration::from_secs(10), "stop took {:?}", t.elapsed());
}

/// Clients sending relayed requests back to back until stopped: keep-alive and a fresh connection
/// per request, over HTTP/2 (ALPN) and HTTP/1.1.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<[AtomicU64; 4]>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(base: &str, cas: &[&Ca]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
        let failures = Arc::new(Mutex::new(Vec::new()));
        let clients = [
            ("keep-alive h2", client_trusting(cas), Version::HTTP_2),
            ("keep-alive h1", client_trusting(cas).http1_only(), Version::HTTP_11),
            (
                "fresh h2",
                client_trusting(cas).pool_max_idle_per_host(0),
                Version::HTTP_2,
            ),
            (
                "fresh h1",
                client_trusting(cas).http1_only().pool_max_idle_per_host(0),
                Version::HTTP_11,
            ),
        ];
        let tasks = clients
            .into_iter()
            .enumerate()
            .map(|(i, (what, builder, version))| {
                let client = builder.build().unwrap();
                let (stop, ok, failures, base) = (stop.clone(), ok.clone(), failures.clone(), base.to_string());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match post_json(&client, &base).await {
                            Ok(v) if v == version => {
                                ok[i].fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(v) => failures.lock().unwrap().push(format!("{what}: {v:?}")),
                            Err(e) => failures.lock().unwrap().push(format!("{what}: {e}")),
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    async fn finish(self) -> ([u64; 4], Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let ok = [0, 1, 2, 3].map(|i| self.ok[i].load(Ordering::Relaxed));
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (ok, failures)
    }
}

/// Points the symlink `link` at `target` atomically (a new link renamed over the old one), as
/// certbot updates `live/`.
fn relink(target: &Path, link: &Path) {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewed_certificate_reaches_new_connections_under_load_and_open_ones_carry_on() {
    let (ca1, ca2, ca3) = (Ca::new("one"), Ca::new("two"), Ca::new("three"));
    let (a, b, c) = (ca1.issue(1), ca2.issue(2), ca3.issue(3));
    let all = [&ca1, &ca2, &ca3];
    let dir = tempfile::tempdir().unwrap();
    let (live, archive) = (dir.path().join("live"), dir.path().join("archive"));
    std::fs::create_dir_all(&live).unwrap();
    std::fs::create_dir_all(&archive).unwrap();
    let archived = |n: u32| {
        (
            archive.join(format!("fullchain{n}.pem")),
            archive.join(format!("privkey{n}.pem")),
        )
    };
    let (cert, key) = (live.join("fullchain.pem"), live.join("privkey.pem"));
    let (cert1, key1) = archived(1);
    write_pair(&cert1, &key1, &a);
    relink(&cert1, &cert);
    relink(&key1, &key);
    let mock = MockUpstream::start().await;
    let extra = format!(
        "{}\naccounts:\n{}",
        tls_yaml("tls", &cert, &key, ", reload_every: 1s"),
        account_yaml("main", &mock.url(), "")
    );
    let relay = RelayProcess::start_in(dir, &extra, &[]).await;
    assert_eq!(served_cert(relay.port, &all).await, a.der);

    // A keep-alive connection from before the renewals.
    let mut early = tls_connect(relay.port, &all).await.unwrap();
    assert_eq!(get_health(&mut early).await, 200);

    let load = Load::start(&relay.base(), &all);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // certbot: the new pair into the archive, then the live symlinks moved over.
    let (cert2, key2) = archived(2);
    write_pair(&cert2, &key2, &b);
    relink(&cert2, &cert);
    relink(&key2, &key);
    wait_served(&relay, &all, &b, "symlink swap").await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A rewrite in place, seen half-written: refused, named in the log, the old certificate
    // stays; then the whole certificate with the old key (refused: they do not match), then the
    // key.
    std::fs::write(&cert2, &c.cert_pem[..c.cert_pem.len() / 2]).unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(served_cert(relay.port, &all).await, b.der);
    std::fs::write(&cert2, &c.cert_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(served_cert(relay.port, &all).await, b.der);
    std::fs::write(&key2, &c.key_pem).unwrap();
    wait_served(&relay, &all, &c, "in-place rewrite").await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed requests: {failures:#?}\nlog:\n{}",
        failures.len(),
        relay.log_text()
    );
    assert!(ok.iter().all(|n| *n >= 5), "every client got through: {ok:?}");
    eprintln!("requests during the renewals (keep-alive h2, keep-alive h1, fresh h2, fresh h1): {ok:?}");

    // The connection opened before the renewals still works, on its original certificate.
    assert_eq!(get_health(&mut early).await, 200);
    assert_eq!(early.get_ref().1.peer_certificates().unwrap()[0], a.der);

    // New connections: the newest CA alone suffices, the older ones no longer do.
    let newest = client_trusting(&[&ca3]).build().unwrap();
    assert_eq!(post_json(&newest, &relay.base()).await, Ok(Version::HTTP_2));
    let older = client_trusting(&[&ca1, &ca2]).build().unwrap();
    assert!(post_json(&older, &relay.base()).await.is_err());

    let log = relay.log_text();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS certificate not reloaded"))
        .collect();
    assert!(
        refused
            .iter()
            .any(|l| l.contains("tls.cert") && l.contains("fullchain.pem")),
        "the half-written certificate is named:\n{log}"
    );
    assert!(
        refused
            .iter()
            .any(|l| l.contains("tls.key") && l.contains("privkey.pem")),
        "the key that does not match is named:\n{log}"
    );
    assert!(log.contains("TLS certificate reloaded"), "{log}");
}

/// Runs `claude-relay` on `yaml` with `args`; (exit code, stderr).
fn run_relay(dir: &Path, yaml: &str, args: &[&str]) -> (Option<i32>, String) {
    let conf = dir.join("relay.yaml");
    std::fs::write(&conf, yaml).unwrap();
    let mut cmd = std::process::Command::new(support::relay_bin());
    cmd.arg("--config").arg(&conf).args(args).env("RELAY_LOG", "warn");
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A start that did not stop would serve; it is killed after a while and fails the test.
    let out = wait_output(child, Duration::from_secs(20));
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn wait_output(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn bad_certificate_files_stop_the_start_naming_the_key_and_the_file() {
    let ca = Ca::new("bad");
    let (good, other) = (ca.issue(1), ca.issue(2));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = |name: &str, text: &str| -> PathBuf {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let cert = file("fullchain.pem", &good.cert_pem);
    let key = file("privkey.pem", &good.key_pem);
    let other_key = file("other-key.pem", &other.key_pem);
    let not_pem = file("garbage.pem", "this is not a certificate\n");
    let half = file("half.pem", &good.cert_pem[..good.cert_pem.len() / 3]);
    let empty = file("empty.pem", "");
    let missing = d.join("missing.pem");
    let a_directory = d.join("a-directory.pem");
    std::fs::create_dir(&a_directory).unwrap();
    let unreadable = file("unreadable.pem", &good.cert_pem);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o000)).unwrap();
    }

    let base = format!(
        "listen: 127.0.0.1:{}\nadmin: {{ listen: 127.0.0.1:{}, password: {ADMIN_PASSWORD} }}\ndata_dir: {}\nsecret_key: {}\n",
        free_port(),
        free_port(),
        d.join("data").display(),
        support::SECRET
    );
    let with_admin_tls = |tls: &str| base.replace(" }\n", &format!(", {tls} }}\n"));
    let mut cases: Vec<(String, &str, &Path)> = vec![
        (tls_yaml("tls", &missing, &key, ""), "tls.cert", missing.as_path()),
        (tls_yaml("tls", &cert, &missing, ""), "tls.key", missing.as_path()),
        (
            tls_yaml("tls", &a_directory, &key, ""),
            "tls.cert",
            a_directory.as_path(),
        ),
        (tls_yaml("tls", &not_pem, &key, ""), "tls.cert", not_pem.as_path()),
        (tls_yaml("tls", &half, &key, ""), "tls.cert", half.as_path()),
        (tls_yaml("tls", &empty, &key, ""), "tls.cert", empty.as_path()),
        // The key where the certificate belongs: no certificate in it.
        (tls_yaml("tls", &key, &key, ""), "tls.cert", key.as_path()),
        (tls_yaml("tls", &cert, &not_pem, ""), "tls.key", not_pem.as_path()),
        (tls_yaml("tls", &cert, &cert, ""), "tls.key", cert.as_path()),
        (tls_yaml("tls", &cert, &other_key, ""), "tls.key", other_key.as_path()),
        (
            tls_yaml("tls", &cert, &key, ", reload_every: 0s"),
            "tls.reload_every",
            cert.as_path(),
        ),
    ];
    // Root reads any file: only where the mode keeps this test out, it keeps the relay out too.
    if std::fs::read(&unreadable).is_err() {
        cases.push((tls_yaml("tls", &unreadable, &key, ""), "tls.cert", unreadable.as_path()));
    }
    let admin_cases: Vec<(String, &str, &Path)> = vec![
        (
            tls_yaml("tls", &cert, &other_key, ""),
            "admin.tls.key",
            other_key.as_path(),
        ),
        (tls_yaml("tls", &empty, &key, ""), "admin.tls.cert", empty.as_path()),
    ];
    let configs = cases
        .into_iter()
        .map(|(tls, k, f)| (format!("{base}{tls}\n"), k, f))
        .chain(admin_cases.into_iter().map(|(tls, k, f)| (with_admin_tls(&tls), k, f)));
    for (yaml, key_name, path) in configs {
        for args in [&["check-config"][..], &[][..]] {
            let (code, stderr) = run_relay(d, &yaml, args);
            assert!(
                code.is_some_and(|c| c != 0),
                "{args:?} {key_name}: exit {code:?}\n{yaml}\n{stderr}"
            );
            assert!(
                stderr.contains(&format!("config key `{key_name}`")),
                "{args:?} names `{key_name}`:\n{yaml}\n{stderr}"
            );
            if key_name != "tls.reload_every" {
                assert!(
                    stderr.contains(&path.display().to_string()),
                    "{args:?} names {}:\n{stderr}",
                    path.display()
                );
            }
        }
    }
    // And the good pair passes, on both listeners.
    let yaml = with_admin_tls(&tls_yaml("tls", &cert, &key, "")) + &tls_yaml("tls", &cert, &key, "") + "\n";
    let (code, stderr) = run_relay(d, &yaml, &["check-config"]);
    assert_eq!(code, Some(0), "{yaml}\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_hands_the_https_listeners_over_without_a_failed_request() {
    let ca = Ca::new("upgrade");
    let leaf = ca.issue(11);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("fullchain.pem"), dir.path().join("privkey.pem"));
    write_pair(&cert, &key, &leaf);
    let mock = MockUpstream::start().await;
    let extra = format!(
        "{}\naccounts:\n{}",
        tls_yaml("tls", &cert, &key, ""),
        account_yaml("main", &mock.url(), "")
    );
    let admin = format!(
        "username: admin, password: {ADMIN_PASSWORD}, {}",
        tls_yaml("tls", &cert, &key, "")
    );
    let mut old = RelayProcess::start_with_admin(dir, &admin, &extra, &[]).await;
    let load = Load::start(&old.base(), &[&ca]);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut new = old.spawn_upgrade().await;
    old.signal("QUIT");
    let status = old.wait_exit(Duration::from_secs(40)).await;
    assert!(status.success(), "old process: {status:?}\n{}", old.log_text());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed requests: {failures:#?}\nold log:\n{}\nnew log:\n{}",
        failures.len(),
        old.log_text(),
        new.log_text()
    );
    eprintln!("requests across the upgrade (keep-alive h2, keep-alive h1, fresh h2, fresh h1): {ok:?}");

    // The new process serves both listeners over HTTPS.
    let client = client_trusting(&[&ca]).build().unwrap();
    assert_eq!(post_json(&client, &old.base()).await, Ok(Version::HTTP_2));
    let r = client.get(format!("{}/health", old.admin())).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.version()), (200, Version::HTTP_2));
    assert!(new.stop().success(), "{}", new.log_text());
}
