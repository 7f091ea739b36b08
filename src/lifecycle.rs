//! Process-wide lifecycle: whether this process is handing its listeners over to a new one, the
//! shutdown token, and [`Tasks`], the owner of every background task. A leaf module: it imports
//! nothing from the rest of the crate.
//!
//! Background work comes in two kinds:
//! - **loops** ([`Tasks::spawn_loop`]): run for the life of the process (reloads, renewals,
//!   refresh checks, subscriptions) and are dropped at their next await once shutdown begins;
//! - **work** ([`Tasks::spawn_work`]): a short job that must not be cut halfway (a token refresh
//!   between the token endpoint's answer and the saving of the rotated token, a store write that
//!   takes an account out of the pool, a lease release). Shutdown does not cancel it; it waits for
//!   it, up to its timeout.
//!
//! [`Tasks::shutdown`] cancels the token, then waits for every task of both kinds to end, and
//! names (and aborts) those that did not stop in time.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};
pub use tokio_util::sync::CancellationToken;

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

/// The owner of background tasks: spawns them on one runtime, keeps their names, and stops them
/// all on [`Tasks::shutdown`]. Cheap to clone; clones share the tasks and the token.
#[derive(Clone)]
pub struct Tasks(Arc<Inner>);

struct Inner {
    /// Where tasks run; `None`: on the runtime of the caller.
    handle: Option<Handle>,
    token: CancellationToken,
    running: Mutex<BTreeMap<u64, Running>>,
    /// How many tasks are running (the length of `running`), for waiting on zero.
    count: watch::Sender<usize>,
    next_id: AtomicU64,
}

struct Running {
    name: &'static str,
    abort: Option<AbortHandle>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks")
            .field("running", &self.running_names())
            .field("cancelled", &self.0.token.is_cancelled())
            .finish()
    }
}

/// Removes its task from the registry when the task's future is dropped: when it completes, is
/// aborted, or is dropped with its runtime before it ever ran.
struct Registered {
    tasks: Arc<Inner>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut running = self.tasks.running.lock().unwrap_or_else(|p| p.into_inner());
        running.remove(&self.id);
        self.tasks.count.send_replace(running.len());
    }
}

impl Tasks {
    /// Tasks that run on `handle`'s runtime, whichever runtime spawns them.
    pub fn new(handle: Handle) -> Tasks {
        Tasks::with_handle(Some(handle))
    }

    /// Tasks that run on the runtime of whoever spawns them (tests, tools).
    pub fn on_current_runtime() -> Tasks {
        Tasks::with_handle(None)
    }

    fn with_handle(handle: Option<Handle>) -> Tasks {
        Tasks(Arc::new(Inner {
            handle,
            token: CancellationToken::new(),
            running: Mutex::new(BTreeMap::new()),
            count: watch::Sender::new(0),
            next_id: AtomicU64::new(0),
        }))
    }

    /// The shutdown token: cancelled when [`Tasks::shutdown`] begins.
    pub fn token(&self) -> CancellationToken {
        self.0.token.clone()
    }

    /// Whether shutdown has begun.
    pub fn stopping(&self) -> bool {
        self.0.token.is_cancelled()
    }

    /// Whether a task can be spawned from here: the tasks have a runtime of their own, or the
    /// caller runs inside one (a destructor may run outside any).
    pub fn can_spawn(&self) -> bool {
        self.0.handle.is_some() || Handle::try_current().is_ok()
    }

    /// Spawns a loop that runs until shutdown: at cancellation it is dropped at its next await.
    /// (One that ends by itself simply ends; aborting the handle stops it earlier.)
    pub fn spawn_loop<F>(&self, name: &'static str, future: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.token();
        self.spawn_work(name, async move {
            tokio::select! {
                biased;
                () = token.cancelled() => tracing::debug!(task = name, "background task stopped"),
                () = future => {}
            }
        })
    }

    /// Spawns short work that shutdown waits for instead of cutting it (see the module
    /// documentation). Like `tokio::spawn`, it must be called inside a runtime when these tasks
    /// have none of their own (see [`Tasks::can_spawn`]).
    pub fn spawn_work<F>(&self, name: &'static str, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut running = self.0.running.lock().unwrap_or_else(|p| p.into_inner());
            running.insert(id, Running { name, abort: None });
            self.0.count.send_replace(running.len());
        }
        // Moved into the future now, so that it is dropped with it even if it never runs.
        let registered = Registered {
            tasks: self.0.clone(),
            id,
        };
        let task = async move {
            let _registered = registered;
            future.await
        };
        let handle = match &self.0.handle {
            Some(h) => h.spawn(task),
            None => tokio::spawn(task),
        };
        let mut running = self.0.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = running.get_mut(&id) {
            r.abort = Some(handle.abort_handle());
        }
        handle
    }

    /// The names of the tasks running now, in the order they were spawned.
    pub fn running_names(&self) -> Vec<&'static str> {
        self.0
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|r| r.name)
            .collect()
    }

    /// Cancels the shutdown token and waits up to `timeout` for every task to end; the ones still
    /// running then are logged by name, aborted, and returned. Tasks spawned from now on see the
    /// token cancelled (a loop ends at once; work runs, and is waited for while this waits).
    pub async fn shutdown(&self, timeout: Duration) -> Vec<&'static str> {
        self.0.token.cancel();
        let mut count = self.0.count.subscribe();
        if tokio::time::timeout(timeout, count.wait_for(|n| *n == 0)).await.is_ok() {
            return Vec::new();
        }
        let stuck: Vec<(&'static str, Option<AbortHandle>)> = self
            .0
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|r| (r.name, r.abort.clone()))
            .collect();
        for (name, abort) in &stuck {
            tracing::warn!(
                task = name,
                ?timeout,
                "background task did not stop in time; aborting it"
            );
            if let Some(a) = abort {
                a.abort();
            }
        }
        stuck.into_iter().map(|(name, _)| name).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    #[tokio::test]
    async fn loops_stop_at_cancellation_and_shutdown_returns_at_once() {
        let tasks = Tasks::on_current_runtime();
        let ticks = Arc::new(AtomicUsize::new(0));
        for name in ["a", "b"] {
            let ticks = ticks.clone();
            tasks.spawn_loop(name, async move {
                loop {
                    ticks.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(tasks.running_names(), ["a", "b"]);
        let t = Instant::now();
        let stuck = tasks.shutdown(Duration::from_secs(5)).await;
        assert!(stuck.is_empty(), "{stuck:?}");
        assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
        assert!(tasks.running_names().is_empty());
        let seen = ticks.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(ticks.load(Ordering::Relaxed), seen, "a loop ran after shutdown");
        assert!(tasks.stopping());
    }

    #[tokio::test]
    async fn work_is_waited_for_not_cut() {
        let tasks = Tasks::on_current_runtime();
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let job = tasks.spawn_work("save", async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            d.store(true, Ordering::Relaxed);
            7
        });
        let stuck = tasks.shutdown(Duration::from_secs(5)).await;
        assert!(stuck.is_empty());
        assert!(done.load(Ordering::Relaxed), "shutdown returned before the work ended");
        assert_eq!(job.await.unwrap(), 7);
    }

    #[tokio::test]
    async fn tasks_that_do_not_stop_in_time_are_named_and_aborted() {
        let tasks = Tasks::on_current_runtime();
        let job = tasks.spawn_work("stuck job", std::future::pending::<()>());
        tasks.spawn_work("quick job", async {});
        let t = Instant::now();
        let stuck = tasks.shutdown(Duration::from_millis(100)).await;
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert_eq!(stuck, ["stuck job"]);
        assert!(job.await.unwrap_err().is_cancelled());
        assert!(tasks.running_names().is_empty());
    }

    #[test]
    fn tasks_run_on_their_own_runtime_and_a_dropped_runtime_unregisters_them() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("owned-rt")
            .enable_all()
            .build()
            .unwrap();
        let tasks = Tasks::new(rt.handle().clone());
        assert!(tasks.can_spawn());
        // Spawned from outside any runtime: runs on the owned one.
        let name = tasks.spawn_work("where", async { std::thread::current().name().map(str::to_string) });
        assert_eq!(rt.block_on(name).unwrap().as_deref(), Some("owned-rt"));
        tasks.spawn_loop("forever", std::future::pending());
        assert_eq!(tasks.running_names(), ["forever"]);
        rt.shutdown_timeout(Duration::from_secs(1));
        assert!(tasks.running_names().is_empty());
    }

    #[test]
    fn without_a_runtime_nothing_can_be_spawned() {
        assert!(!Tasks::on_current_runtime().can_spawn());
    }
}
