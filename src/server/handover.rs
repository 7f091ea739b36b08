//! The old process's side of a zero-downtime upgrade, and the new process's waits.
//!
//! Pingora moves the listening sockets: the new process (`--upgrade`) waits on `upgrade_sock`
//! during bootstrap, the old one gets SIGQUIT, sends its sockets, keeps accepting for 5 s, then
//! shuts down gracefully (and [`super::shutdown::end_grace_when_drained`] ends the relay's `run`
//! once nothing is in flight, after this hand-over is done). What Pingora does not move is ours to
//! hand over, right after the sockets went:
//! - the admin listener (bound by us): the old process stops listening, the new one binds the
//!   address as soon as it is free ([`bind_admin_waiting`]);
//! - the embedded store (one process at a time): the old process writes its statistics and its
//!   request log, moves the usage and the request-log records of its remaining requests to the
//!   spool, and closes the file; the new one opens it
//!   as soon as it is free. The Redis store is shared and needs neither.
//!
//! It also tells systemd (when started with `NOTIFY_SOCKET`, i.e. `Type=notify` and
//! `NotifyAccess=all`) which process is the service's main process, and keeps the pid file.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pingora::server::ExecutionPhase;
use tokio::sync::broadcast;

use crate::store::embedded::EmbeddedStore;
use crate::usage::stats::StatsStop;

/// How long the new process waits for the old one to release the store or the admin address.
pub const RELEASE_WAIT: Duration = Duration::from_secs(30);

/// What the old process hands over after its listening sockets.
pub struct Handover {
    pub stats: StatsStop,
    /// The request log's writer, to move to its spool (`None` with Redis, or with the log off).
    pub request_log: Option<crate::usage::request_log::RequestLogControl>,
    /// The embedded store, to close (`None` with Redis).
    pub embedded: Option<Arc<EmbeddedStore>>,
    /// A handle on the admin listener, to stop listening.
    pub admin_listener: Option<TcpListener>,
    pub pid_file: PathBuf,
    /// Pingora's upgrade socket: the new process deletes it once it holds the sockets.
    pub upgrade_sock: PathBuf,
}

/// Follows the server's phases: announces the process once it runs, and hands over what Pingora
/// does not once a new process has taken the listening sockets.
pub async fn follow(mut phases: broadcast::Receiver<ExecutionPhase>, handover: Handover) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match phases.recv().await {
            Ok(ExecutionPhase::Running) => {
                write_pid_file(&handover.pid_file);
                notify_systemd(&format!("READY=1\nMAINPID={}", std::process::id()));
            }
            Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => crate::lifecycle::start_draining(),
            // The sockets were sent (or the send failed; this process stops either way).
            Ok(ExecutionPhase::GracefulUpgradeCloseTimeout) => break,
            Ok(ExecutionPhase::ShutdownStarted) | Err(RecvError::Closed) => return,
            Ok(_) | Err(RecvError::Lagged(_)) => continue,
        }
    }
    // The new process takes the sockets at its next poll of the upgrade socket (Pingora polls once
    // a second); until then this process still serves admin requests from its store.
    let deadline = Instant::now() + Duration::from_secs(8);
    while handover.upgrade_sock.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::info!("listening sockets handed over; releasing the admin listener and the store");
    if let Some(l) = &handover.admin_listener {
        // Stops listening now (axum's accept loop idles until the shutdown) so that the new
        // process can bind the address; admin requests already running finish.
        if let Err(e) = socket2::SockRef::from(l).shutdown(std::net::Shutdown::Read) {
            tracing::warn!(error = %e, "cannot release the admin listener; the new process binds it at shutdown");
        }
    }
    if let Some(store) = &handover.embedded {
        handover.stats.spool_from_now().await;
        if let Some(log) = &handover.request_log {
            log.spool_from_now().await;
        }
        match store.close(Duration::from_secs(10)).await {
            Ok(()) => tracing::info!("embedded store released to the new process"),
            Err(e) => tracing::error!(error = %e, "releasing the embedded store"),
        }
    }
}

/// Binds the admin address, waiting for the old process to release it (upgrade mode).
pub fn bind_admin_waiting(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let deadline = Instant::now() + RELEASE_WAIT;
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The pid file this process wrote, removed at exit unless a newer process replaced it.
static PID_FILE: OnceLock<PathBuf> = OnceLock::new();

fn write_pid_file(path: &Path) {
    match std::fs::write(path, format!("{}\n", std::process::id())) {
        Ok(()) => {
            let _ = PID_FILE.set(path.to_path_buf());
        }
        Err(e) => tracing::warn!(error = %e, path = %path.display(), "cannot write the pid file"),
    }
}

/// Removes the pid file if it still names this process (after an upgrade it names the new one).
pub fn remove_pid_file() {
    let Some(path) = PID_FILE.get() else {
        return;
    };
    let ours = std::fs::read_to_string(path).is_ok_and(|s| s.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

/// Sends a message to systemd's notification socket, if there is one (sd_notify(3)).
fn notify_systemd(message: &str) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let bytes = target.as_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(message.as_bytes(), &addr)
            }
            None => sock.send_to(message.as_bytes(), Path::new(&target)),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
