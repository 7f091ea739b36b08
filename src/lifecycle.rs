//! Process-wide lifecycle state that every layer may read: whether this process is handing its
//! listeners over to a new one. A leaf module: it imports nothing from the rest of the crate.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set once this process got SIGQUIT: it is handing over to a new process.
static DRAINING: AtomicBool = AtomicBool::new(false);

/// Whether this process is handing over to a new one. Pingora keeps accepting for 5 s after it
/// sent the listening sockets and then drops its idle keep-alive connections, which a client may
/// be reusing at that very moment; a response that disables keep-alive while this is true
/// (`session.set_keepalive(None)`) moves its client to a fresh connection, which the new process
/// serves for good once it wins the accept. Token refreshes are left to the new process too.
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// Marks this process as handing over (see [`draining`]).
pub fn start_draining() {
    DRAINING.store(true, Ordering::Relaxed);
}
