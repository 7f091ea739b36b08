//! `scripts/install.sh` end to end, as root: it creates the system user, installs the binary,
//! the config directory and the unit, and starts the relay as that user; run again under traffic,
//! it upgrades with the zero-downtime hand-over (no failed request, a long stream completes);
//! `--uninstall` stops and removes it and keeps the config and the data; `--purge` removes those
//! and the user; with no config it writes a starter config the binary accepts.
//!
//! No systemd runs on test machines, so `tests/fixtures/install/systemctl` stands in for
//! systemctl (named by `SYSTEMCTL`): it runs the installed unit's ExecStart and ExecReload as its
//! User= with its Environment=, the way systemd does for the lines the script relies on. Every
//! path is under a scratch directory and the user's name is unique, so a machine's own
//! installation is never touched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(clippy::doc_lazy_continuation, clippy::type_complexity)]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::mock::MockUpstream;
use support::{ADMIN_PASSWORD, ALICE, SECRET, account_yaml, client, free_port, relay_bin};

const BODY: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
const BODY_STREAM: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

struct Layout {
    root: tempfile::TempDir,
    user: String,
}

impl Layout {
    fn path(&self, p: &str) -> PathBuf {
        self.root.path().join(p)
    }
    /// The script's path options for this layout.
    fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        for (opt, dir) in [
            ("--prefix", "usr"),
            ("--config-dir", "etc"),
            ("--data-dir", "data"),
            ("--log-dir", "log"),
            ("--unit-dir", "units"),
        ] {
            a.push(opt.to_string());
            a.push(self.path(dir).display().to_string());
        }
        a.extend(["--user".into(), self.user.clone(), "--name".into(), "relay-test".into()]);
        a
    }
    /// Runs the script with `extra` options; returns whether it succeeded and its output.
    fn install(&self, extra: &[&str]) -> (bool, String) {
        run_script(self.args(), self.path("units"), extra)
    }
    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.path("data/claude-relay.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }
    fn service_output(&self) -> String {
        std::fs::read_to_string(self.path("units/relay-test.out")).unwrap_or_default()
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // Whatever happened, no relay and no user are left behind.
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
        for cmd in ["userdel", "groupdel"] {
            let _ = Command::new(cmd)
                .arg(&self.user)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Runs `scripts/install.sh` with `args` and `extra`, the systemctl stand-in on `units`.
fn run_script(args: Vec<String>, units: PathBuf, extra: &[&str]) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh");
    let shim = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/install/systemctl");
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .args(extra)
        .env("SYSTEMCTL", shim)
        .env("SYSTEMCTL_UNIT_DIR", units)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn uid_of(user: &str) -> Option<u32> {
    let out = Command::new("getent").args(["passwd", user]).output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    line.split(':').nth(2).and_then(|u| u.parse().ok())
}

fn process_uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .contains("State:\tZ")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

async fn request(base: &str, stream: bool, slow: bool) -> Result<(), String> {
    let mut req = client()
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", ALICE)
        .header("content-type", "application/json")
        .body(if stream { BODY_STREAM } else { BODY });
    if slow {
        req = req.header("x-mock-chunk", "40").header("x-mock-chunk-delay-ms", "150");
    }
    let r = req.send().await.map_err(|e| format!("send: {e:?}"))?;
    let status = r.status();
    let body = r.bytes().await.map_err(|e| format!("body: {e:?}"))?;
    let text = String::from_utf8_lossy(&body);
    if status != 200 {
        return Err(format!("{status}: {text}"));
    }
    if stream && !text.contains("message_stop") {
        return Err(format!("incomplete stream: {text}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_upgrade_without_downtime_and_uninstall() {
    if !is_root() {
        eprintln!("install_upgrade_without_downtime_and_uninstall: skipped, it needs root (useradd, setpriv)");
        return;
    }
    let upstream = MockUpstream::start().await;
    let root = tempfile::tempdir().unwrap();
    // The service's user walks into the scratch tree.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let layout = Layout {
        root,
        user: format!("crtest{}", &uuid_hex()[..8]),
    };
    let port = free_port();
    let admin_port = free_port();
    std::fs::create_dir_all(layout.path("etc")).unwrap();
    std::fs::write(
        layout.path("etc/relay.yaml"),
        format!(
            "listen: 127.0.0.1:{port}\nadmin: {{ listen: 127.0.0.1:{admin_port}, username: admin, password: {ADMIN_PASSWORD} }}\n\
             data_dir: {}\nsecret_key: {SECRET}\nshutdown_grace: 30s\nstats: {{ flush_interval: 200ms }}\n\
             accounts:\n{}api_keys:\n  - {{ name: alice, key: {ALICE} }}\n",
            layout.path("data").display(),
            account_yaml("main", &upstream.url(), ""),
        ),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");

    // Install and start.
    let (ok, out) = layout.install(&["--bin", &relay_bin()]);
    assert!(ok, "{out}\n{}", layout.service_output());
    assert!(out.contains("created system user"), "{out}");
    assert!(out.contains(&format!("serves on 127.0.0.1:{port}")), "{out}");
    let uid = uid_of(&layout.user).expect("the system user exists");
    assert_ne!(uid, 0);
    let first = layout.pid().expect("a pid file");
    assert_eq!(process_uid(first), uid, "the relay runs as the system user");
    request(&base, false, false).await.unwrap();
    request(&base, true, false).await.unwrap();
    // What was installed, and how.
    assert_eq!(mode(&layout.path("usr/bin/claude-relay")), 0o755);
    assert_eq!(mode(&layout.path("usr/lib/claude-relay/upgrade.sh")), 0o755);
    assert_eq!(mode(&layout.path("etc")), 0o750);
    assert_eq!(mode(&layout.path("etc/env")), 0o600);
    assert!(layout.path("etc/relay.example.yaml").exists());
    assert_eq!(mode(&layout.path("data")), 0o750);
    let unit = std::fs::read_to_string(layout.path("units/relay-test.service")).unwrap();
    assert!(unit.contains(&format!("\nUser={}\n", layout.user)), "{unit}");
    assert!(
        unit.contains(&format!(
            "ExecStart={} --config {}",
            layout.path("usr/bin/claude-relay").display(),
            layout.path("etc/relay.yaml").display()
        )),
        "{unit}"
    );
    assert!(
        unit.contains(&format!("ReadWritePaths={}", layout.path("data").display())),
        "{unit}"
    );
    assert!(!unit.contains("DynamicUser"), "{unit}");

    // Run again under traffic: a zero-downtime upgrade.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..3 {
        let (stop, served, base) = (stop.clone(), served.clone(), base.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match request(&base, w == 1, false).await {
                    Ok(()) => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(e),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failures
        }));
    }
    // A stream that outlives the hand-over (about 9 s of 150 ms chunks).
    let long = tokio::spawn({
        let base = base.clone();
        async move { request(&base, true, true).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, out) = tokio::task::spawn_blocking({
        let (args, units, bin) = (layout.args(), layout.path("units"), relay_bin());
        move || run_script(args, units, &["--bin", &bin])
    })
    .await
    .unwrap();
    assert!(ok, "{out}\n{}", layout.service_output());
    assert!(out.contains("without downtime"), "{out}");
    let second = layout.pid().unwrap();
    assert_ne!(second, first, "a new process serves after the upgrade");
    assert_eq!(process_uid(second), uid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(failures.is_empty(), "{failures:#?}\n{}", layout.service_output());
    assert!(served.load(Ordering::Relaxed) > 10);
    long.await
        .unwrap()
        .expect("the long stream completes across the upgrade");
    // The old process finished its requests and left.
    support::eventually(|| async { (!alive(first)).then_some(()) }).await;

    // Uninstall: stopped and removed; config, data and user kept.
    let (ok, out) = layout.install(&["--uninstall"]);
    assert!(ok, "{out}");
    support::eventually(|| async { (!alive(second)).then_some(()) }).await;
    assert!(client().get(format!("{base}/health")).send().await.is_err());
    assert!(!layout.path("usr/bin/claude-relay").exists());
    assert!(!layout.path("units/relay-test.service").exists());
    assert!(layout.path("etc/relay.yaml").exists() && layout.path("data").exists());
    assert!(uid_of(&layout.user).is_some());
    // Purge: everything else too.
    let (ok, out) = layout.install(&["--uninstall", "--purge"]);
    assert!(ok, "{out}");
    assert!(!layout.path("etc").exists() && !layout.path("data").exists() && !layout.path("log").exists());
    assert!(uid_of(&layout.user).is_none(), "the user is deleted");

    // No config: the script writes a starter one, and the binary accepts it.
    let (ok, out) = layout.install(&["--bin", &relay_bin(), "--no-start"]);
    assert!(ok, "{out}");
    assert!(out.contains("wrote a starter"), "{out}");
    let starter = std::fs::read_to_string(layout.path("etc/relay.yaml")).unwrap();
    assert!(
        starter.contains(&format!("data_dir: {}", layout.path("data").display())),
        "{starter}"
    );
    assert_eq!(mode(&layout.path("etc/relay.yaml")), 0o640);
    let check = Command::new(relay_bin())
        .arg("--config")
        .arg(layout.path("etc/relay.yaml"))
        .arg("check-config")
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    // A config the binary refuses stops the script before the service is touched.
    std::fs::write(layout.path("etc/relay.yaml"), "listen: not-an-address\n").unwrap();
    let (ok, out) = layout.install(&["--bin", &relay_bin()]);
    assert!(!ok && out.contains("is not valid"), "{out}");
    assert!(!layout.path("data/claude-relay.pid").exists());
    let (ok, out) = layout.install(&["--uninstall", "--purge"]);
    assert!(ok, "{out}");
}

fn uuid_hex() -> String {
    format!("{:032x}", rand_u128())
}

fn rand_u128() -> u128 {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    u128::from_le_bytes(b)
}
