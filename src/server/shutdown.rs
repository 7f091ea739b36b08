//! How the relay stops.
//!
//! Pingora's graceful terminate (SIGTERM) closes the listeners and then sleeps the whole grace
//! period on the thread that runs the server, even when nothing is in flight. The relay watches
//! the signals itself instead ([`Signals`], given to `Server::run`):
//!
//! - **SIGTERM**: the listeners close at once (through the [`Switch`] every service listens to),
//!   in-flight requests get up to the grace period, and as soon as none is left (or the period is
//!   over) Pingora is told to stop without its own sleep: `Server::run` returns, and so does
//!   `main`. An idle relay stops at once; a busy one keeps the full grace period.
//! - **SIGINT**: stops at once, also during a SIGTERM's grace period.
//! - **SIGQUIT**: Pingora's zero-downtime upgrade, unchanged: it sends the listening sockets to
//!   the new process, keeps accepting for 5 s, then closes the listeners and sleeps the grace
//!   period. [`end_grace_when_drained`] ends that wait for the relay once nothing is in flight;
//!   the server thread is left in its sleep and ends with the process.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ListenFds, RuntimeOpts, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{broadcast, watch};

/// How often the in-flight count is read while waiting for it to reach zero.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// Consecutive reads of zero that make a relay drained: a request whose head was read just
/// before the listeners closed is counted a moment later.
const IDLE_CHECKS: u32 = 3;
/// The same after an upgrade's hand-over, where no request may fail (a second): a connection
/// accepted just before the listeners closed is counted only once its request head is read, after
/// its TLS and HTTP/2 handshakes, which on a loaded machine take a few hundred milliseconds.
const HANDOVER_IDLE_CHECKS: u32 = 10;

/// Why the relay's server stopped (sent to `run`, which then cleans up and returns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// `Server::run` returned.
    Server,
    /// The grace period after an upgrade's hand-over ended early: nothing is in flight.
    HandedOver,
}

/// Sends its message when dropped: when the thread that holds it ends, also by a panic.
pub struct SendOnDrop(pub mpsc::Sender<Stopped>, pub Stopped);

impl Drop for SendOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}

/// The switch that closes the listeners of the services it wraps: flipped on SIGTERM by
/// [`Signals`], and by Pingora's own shutdown (after an upgrade's hand-over).
#[derive(Clone)]
pub struct Switch(std::sync::Arc<watch::Sender<bool>>);

impl Switch {
    pub fn new() -> Switch {
        Switch(std::sync::Arc::new(watch::Sender::new(false)))
    }

    /// Closes the listeners (their services see their shutdown signal).
    pub fn flip(&self) {
        self.0.send_replace(true);
    }

    /// `service`, stopped by this switch as well as by Pingora's shutdown.
    pub fn wrap<S: ServiceWithDependents>(&self, service: S) -> Switched<S> {
        Switched {
            inner: service,
            switch: self.clone(),
        }
    }
}

/// A service whose shutdown signal is a [`Switch`] (see [`Switch::wrap`]).
pub struct Switched<S> {
    inner: S,
    switch: Switch,
}

#[async_trait]
impl<S: ServiceWithDependents> ServiceWithDependents for Switched<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready_notifier: ServiceReadyNotifier,
    ) {
        let switch = self.switch.clone();
        let follow_pingora = async move {
            if shutdown.wait_for(|s| *s).await.is_ok() {
                switch.flip();
            }
            std::future::pending::<()>().await
        };
        let serve = self
            .inner
            .start_service(fds, self.switch.0.subscribe(), listeners_per_fd, ready_notifier);
        tokio::select! {
            () = serve => {}
            () = follow_pingora => {}
        }
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn on_startup_delay(&self, time_waited: Duration) {
        self.inner.on_startup_delay(time_waited)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

/// The signals the relay stops on, registered before the server runs (a signal that came before
/// Pingora listened would otherwise kill the process with its default action).
pub struct Signals {
    streams: tokio::sync::Mutex<Streams>,
    switch: Switch,
    in_flight: prometheus::IntGauge,
    grace: Duration,
}

struct Streams {
    quit: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Registers the handlers; must be called inside a runtime, which must keep running while
    /// the server does (its driver delivers the signals).
    pub fn register(switch: Switch, in_flight: prometheus::IntGauge, grace: Duration) -> std::io::Result<Signals> {
        Ok(Signals {
            streams: tokio::sync::Mutex::new(Streams {
                quit: signal(SignalKind::quit())?,
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            }),
            switch,
            in_flight,
            grace,
        })
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut s = self.streams.lock().await;
        let Streams { quit, term, int } = &mut *s;
        tokio::select! {
            _ = quit.recv() => {
                tracing::info!("SIGQUIT: handing the listening sockets over to a new process");
                return ShutdownSignal::GracefulUpgrade;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping now");
                return ShutdownSignal::FastShutdown;
            }
            _ = term.recv() => {}
        }
        self.switch.flip();
        tracing::info!(
            in_flight = self.in_flight.get(),
            grace = ?self.grace,
            "SIGTERM: no longer accepting; waiting for in-flight requests"
        );
        tokio::select! {
            drained = wait_drained(&self.in_flight, self.grace, IDLE_CHECKS) => if drained {
                tracing::info!("graceful shutdown: nothing in flight");
            } else {
                tracing::warn!(in_flight = self.in_flight.get(), "graceful shutdown: grace period over; cutting the requests still in flight");
            },
            _ = int.recv() => tracing::info!("SIGINT during the grace period: stopping now"),
        }
        // Not a graceful terminate: Pingora would sleep the whole grace period again. (Pingora
        // logs this as "SIGINT received".)
        ShutdownSignal::FastShutdown
    }
}

/// Waits until nothing is in flight (`wanted` reads of zero in a row), or `limit` passed;
/// whether it drained.
pub async fn wait_drained(in_flight: &prometheus::IntGauge, limit: Duration, wanted: u32) -> bool {
    let deadline = Instant::now() + limit;
    let mut idle_checks = 0;
    while idle_checks < wanted {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        tokio::time::sleep(CHECK_EVERY.min(left)).await;
        idle_checks = if in_flight.get() <= 0 { idle_checks + 1 } else { 0 };
    }
    true
}

/// Requests cut when the server stopped settle (their usage sent, the gauge decremented) as
/// their tasks are dropped on Pingora's threads; waits up to `limit` for the last of them.
pub async fn wait_settled(in_flight: &prometheus::IntGauge, limit: Duration) {
    let deadline = Instant::now() + limit;
    while in_flight.get() > 0 {
        if Instant::now() >= deadline {
            tracing::warn!(
                in_flight = in_flight.get(),
                "requests cut at shutdown did not settle in time"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// After an upgrade's hand-over Pingora sleeps its whole grace period: once nothing is in flight
/// this tells `run` to finish (the hand-over of the store and the admin listener is awaited
/// there, with the other background tasks).
pub async fn end_grace_when_drained(
    mut phases: broadcast::Receiver<ExecutionPhase>,
    in_flight: prometheus::IntGauge,
    grace: Duration,
    stopped: mpsc::Sender<Stopped>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match phases.recv().await {
            Ok(ExecutionPhase::ShutdownGracePeriod) => break,
            Ok(_) | Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        }
    }
    tracing::info!(
        in_flight = in_flight.get(),
        "handed over: waiting for in-flight requests"
    );
    if wait_drained(&in_flight, grace, HANDOVER_IDLE_CHECKS).await {
        tracing::info!("handed over: nothing in flight");
        let _ = stopped.send(Stopped::HandedOver);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_idle_count_drains_after_the_idle_checks_and_a_busy_one_waits_out_the_limit() {
        let g = prometheus::IntGauge::new("t", "t").unwrap();
        let t = Instant::now();
        assert!(wait_drained(&g, Duration::from_secs(5), IDLE_CHECKS).await);
        let idle = t.elapsed();
        assert!(
            idle >= CHECK_EVERY * IDLE_CHECKS && idle < Duration::from_secs(1),
            "{idle:?}"
        );
        g.inc();
        let t = Instant::now();
        assert!(!wait_drained(&g, Duration::from_millis(250), IDLE_CHECKS).await);
        assert!(t.elapsed() < Duration::from_millis(400));
        let h = {
            let g = g.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(150)).await;
                g.dec();
            })
        };
        assert!(wait_drained(&g, Duration::from_secs(5), IDLE_CHECKS).await);
        h.await.unwrap();
    }

    #[tokio::test]
    async fn the_switch_stops_a_wrapped_service_and_follows_pingoras_shutdown() {
        struct Waits(watch::Sender<Option<bool>>);
        #[async_trait]
        impl pingora::services::Service for Waits {
            async fn start_service(&mut self, _fds: Option<ListenFds>, mut shutdown: ShutdownWatch, _n: usize) {
                let _ = shutdown.changed().await;
                self.0.send_replace(Some(*shutdown.borrow()));
            }
            fn name(&self) -> &str {
                "waits"
            }
        }
        for by_pingora in [false, true] {
            let switch = Switch::new();
            let (tx, mut rx) = watch::channel(None);
            let mut svc = switch.wrap(Waits(tx));
            let (pingora_tx, pingora_rx) = watch::channel(false);
            let (ready_tx, _ready_rx) = watch::channel(false);
            let run = tokio::spawn(async move {
                ServiceWithDependents::start_service(
                    &mut svc,
                    None,
                    pingora_rx,
                    1,
                    ServiceReadyNotifier::new(ready_tx),
                )
                .await;
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(*rx.borrow(), None);
            if by_pingora {
                pingora_tx.send_replace(true);
            } else {
                switch.flip();
            }
            tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|v| *v == Some(true)))
                .await
                .unwrap()
                .unwrap();
            tokio::time::timeout(Duration::from_secs(2), run)
                .await
                .unwrap()
                .unwrap();
        }
    }
}
