//! Assembles the relay: bootstrap of the data directory (secret key, admin password), the store,
//! the snapshot and its reloads, the statistics writer, and the Pingora server with the relay
//! listener and the admin service.
//!
//! The store, the statistics writer and every background task live on a small runtime of their
//! own that outlives Pingora's services, so usage recorded while the server shuts down (requests
//! cut at the end of the grace period settle when their tasks are dropped) is still written
//! before `run` returns. The background tasks belong to one [`Tasks`] owner, stopped once the
//! server has; the statistics are written last.
//!
//! Shutdown (SIGTERM, SIGINT): see [`shutdown`]. Zero-downtime upgrade (`--upgrade`, SIGQUIT):
//! see [`handover`].

mod handover;
mod shutdown;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow_lite::{Context, Result};
use arc_swap::ArcSwap;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;

use crate::admin::{AdminService, AdminState, Credentials};
use crate::config::{Config, StoreBackend};
use crate::lifecycle::Tasks;
use crate::metrics::Metrics;
use crate::providers::anthropic_oauth::tokens::OAuthTokens;
use crate::providers::gemini_oauth::tokens::GoogleTokens;
use crate::providers::openai_oauth::tokens::ChatGptTokens;
use crate::proxy::{Peers, Relay, RelayApp, RelayProxy};
use crate::scheduler::Scheduler;
use crate::secrets::Secrets;
use crate::state::{Reloader, Snapshot, SnapshotKeys};
use crate::store::{AccountKind, Store};
use crate::usage::pricing::PricingTable;

/// A tiny error helper for start-up code: a message with context, shown to the operator.
pub mod anyhow_lite {
    #[derive(Debug)]
    pub struct Error(pub String);
    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Error {}
    pub type Result<T> = std::result::Result<T, Error>;
    pub trait Context<T> {
        fn context(self, what: impl std::fmt::Display) -> Result<T>;
    }
    impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
        fn context(self, what: impl std::fmt::Display) -> Result<T> {
            self.map_err(|e| Error(format!("{what}: {e}")))
        }
    }
}

/// Reads the secret key from the config, or from (or into) `data_dir/secret.key`.
pub fn secret_key(config: &Config) -> Result<String> {
    if let Some(k) = &config.secret_key {
        return Ok(k.clone());
    }
    let path = config.data_dir.join("secret.key");
    if let Ok(k) = std::fs::read_to_string(&path) {
        return Ok(k.trim().to_string());
    }
    crate::private_fs::create_dir(&config.data_dir)
        .context(format!("cannot create data directory {}", config.data_dir.display()))?;
    let k = Secrets::generate_key();
    write_private(&path, &k)?;
    tracing::info!(path = %path.display(), "generated a new secret key");
    Ok(k)
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .context(format!("cannot create {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .context(format!("cannot write {}", path.display()))?;
    f.sync_all().context(format!("cannot write {}", path.display()))
}

/// The admin credentials: from the config (hashed now), or generated at first start into
/// `data_dir/admin.json` (hash only), the password itself written once to
/// `data_dir/admin-password.txt` (mode 0600) for the operator to read and delete; only that
/// file's path is printed, so the password never reaches the log or the journal.
pub fn admin_credentials(config: &Config) -> Result<Credentials> {
    let username = config.admin.username.clone();
    if let Some(h) = &config.admin.password_hash {
        return Ok(Credentials {
            username,
            password_hash: h.clone(),
        });
    }
    if let Some(p) = &config.admin.password {
        return Ok(Credentials {
            username,
            password_hash: crate::admin::hash_password(p)?,
        });
    }
    let path = config.data_dir.join("admin.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let v: serde_json::Value = serde_json::from_str(&text).context(format!("{} is corrupt", path.display()))?;
        let hash = v["password_hash"].as_str().unwrap_or_default().to_string();
        if !hash.starts_with("$argon2") {
            return Err(anyhow_lite::Error(format!("{} has no password_hash", path.display())));
        }
        return Ok(Credentials {
            username,
            password_hash: hash,
        });
    }
    std::fs::create_dir_all(&config.data_dir)
        .context(format!("cannot create data directory {}", config.data_dir.display()))?;
    let password = crate::secrets::random_token()[..24].to_string();
    let hash = crate::admin::hash_password(&password)?;
    // A file left from before (by a start that stopped before admin.json was written, or with an
    // admin.json deleted to reset the password) holds a password that is no longer valid: replace
    // it, removing it first so that a link in its place is not followed.
    let password_path = config.data_dir.join("admin-password.txt");
    match std::fs::remove_file(&password_path) {
        Ok(()) => tracing::warn!(path = %password_path.display(), "replaced a stale first-start admin password file"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(anyhow_lite::Error(format!(
                "cannot remove {}: {e}",
                password_path.display()
            )));
        }
    }
    write_private(&password_path, &format!("{password}\n"))?;
    write_private(&path, &serde_json::json!({ "password_hash": hash }).to_string())?;
    println!(
        "claude-relay: generated the admin password for user `{username}` into {} (mode 0600); \
         read it, log in, then delete that file. Only its hash is kept, in {}",
        password_path.display(),
        path.display()
    );
    Ok(Credentials {
        username,
        password_hash: hash,
    })
}

/// The store, and the embedded one again by its own type (the upgrade closes it). With
/// `upgrade`, waits for the old process to release the embedded file.
async fn open_store(
    config: &Config,
    upgrade: bool,
    tasks: &Tasks,
) -> Result<(Arc<dyn Store>, Option<Arc<crate::store::embedded::EmbeddedStore>>)> {
    Ok(match config.store.backend {
        StoreBackend::Embedded => {
            use crate::store::embedded::EmbeddedStore;
            let dir = config.store.path.clone().unwrap_or_else(|| config.data_dir.clone());
            let opened = if upgrade {
                EmbeddedStore::open_waiting(&dir, handover::RELEASE_WAIT)
            } else {
                EmbeddedStore::open(&dir)
            };
            let store = Arc::new(opened.context(format!("cannot open the embedded store in {}", dir.display()))?);
            (store.clone(), Some(store))
        }
        StoreBackend::Redis => {
            let target = config.store.redis_target();
            let store = crate::store::redis::RedisStore::connect_target(&target, &config.store.prefix, tasks)
                .await
                .context(format!("cannot connect to Redis ({})", target.describe()))?;
            (Arc::new(store), None)
        }
    })
}

/// `claude-relay import-crs`: imports Claude Relay Service's Redis at `redis_url` into the
/// configured store (with `dry_run`, only reports). An embedded store is locked while the relay
/// runs: stop it first, or import through the admin API.
pub fn import_crs(config: &Config, redis_url: &str, encryption_key: &str, dry_run: bool) -> Result<crate::crs::Report> {
    let secrets = Secrets::new(&secret_key(config)?).context("secret_key")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async {
        let tasks = Tasks::on_current_runtime();
        let (store, _) = open_store(config, false, &tasks).await?;
        let report = crate::crs::import(
            redis_url,
            encryption_key,
            &secrets,
            &config.providers.default_bases(),
            &*store,
            dry_run,
        )
        .await
        .map_err(|e| anyhow_lite::Error(e.to_string()));
        tasks.token().cancel();
        report
    })
}

fn check_bindable(addr: SocketAddr, what: &str) -> Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr).context(format!("cannot listen on {addr} ({what})"))
}

/// The certificate of a listener with `tls` (`section` names it: `tls`, `admin.tls`), and the
/// task that reloads it when its files change.
fn listener_cert(
    section: &'static str,
    tls: Option<&crate::config::TlsConfig>,
    tasks: &Tasks,
) -> Result<Option<Arc<crate::tls::ReloadingCert>>> {
    let Some(tls) = tls else {
        return Ok(None);
    };
    let cert = crate::tls::ReloadingCert::load(section, tls.files())
        .map_err(|e| anyhow_lite::Error(format!("config key `{section}.{}`: {e}", e.part.key_name())))?;
    let cert = Arc::new(cert);
    tracing::info!(
        section,
        cert_file = %tls.cert.display(),
        reload_every = ?tls.reload_every.0,
        "serving HTTPS (ALPN h2, http/1.1)"
    );
    tasks.spawn_loop(
        "TLS certificate reloads",
        cert.clone().reload_forever(tls.reload_every.0),
    );
    Ok(Some(cert))
}

/// How long the background tasks get to stop once the server has (loops stop at once; this is
/// for work such as an upgrade's hand-over of the store).
const TASKS_STOP_WAIT: Duration = Duration::from_secs(15);
/// How long requests cut at shutdown get to settle (their tasks are dropped on Pingora's threads).
const SETTLE_WAIT: Duration = Duration::from_secs(5);

/// Runs the relay until a shutdown signal; returns after the final statistics flush.
pub fn run(config: Config, upgrade: bool) -> Result<()> {
    let config = Arc::new(config);
    // The secret key, the admin password hash, the pid file, the usage spool, (by default) the
    // embedded store and the upgrade socket live there: created 0700 (see `private_fs`).
    for dir in [Some(config.data_dir.as_path()), config.upgrade_sock.parent()]
        .into_iter()
        .flatten()
    {
        if !dir.as_os_str().is_empty() {
            crate::private_fs::create_dir(dir).context(format!("cannot create {}", dir.display()))?;
        }
    }
    crate::private_fs::warn_if_shared(&config.data_dir);
    let secrets = Arc::new(Secrets::new(&secret_key(&config)?).context("secret_key")?);
    let credentials = admin_credentials(&config)?;
    let pricing = Arc::new(match &config.pricing {
        Some(p) => PricingTable::load(p).context(format!("cannot load the price table {}", p.display()))?,
        None => PricingTable::builtin().context("built-in price table")?,
    });
    let metrics = Arc::new(Metrics::new().context("metrics registry")?);

    // The store's own runtime: it outlives Pingora's services so the last usage is written.
    let store_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("relay-store")
        .enable_all()
        .build()
        .context("cannot start the store runtime")?;
    // Every background task runs there too, owned by `tasks`.
    let tasks = Tasks::new(store_rt.handle().clone());
    // The Pingora server comes before the store: with `upgrade`, bootstrap waits on
    // `upgrade_sock` for the listening sockets of the running process, which releases the
    // embedded store only after it has sent them.
    let conf = ServerConf {
        threads: config.threads,
        // Pingora sleeps this long only after an upgrade's hand-over (see `shutdown`).
        grace_period_seconds: Some(config.shutdown_grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(5),
        upstream_keepalive_pool_size: 512,
        upgrade_sock: config.upgrade_sock.to_string_lossy().into_owned(),
        pid_file: pid_file(&config).to_string_lossy().into_owned(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    if !upgrade {
        // Fail fast, with the key's name, when the port is taken (an upgrade inherits it).
        drop(check_bindable(config.listen, "listen")?);
    }
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    // Fail fast, with the key's name, when the port is taken. In an upgrade, wait for the old
    // process to release it; from then on admin connections wait in the backlog, none is refused.
    let admin_listener = if upgrade {
        handover::bind_admin_waiting(config.admin_listen)
            .context(format!("cannot listen on {} (admin.listen)", config.admin_listen))?
    } else {
        check_bindable(config.admin_listen, "admin.listen")?
    };
    let admin_handle = admin_listener.try_clone().ok();

    let (store, embedded) = store_rt.block_on(open_store(&config, upgrade, &tasks))?;
    if let Some(dir) = config.store.path.as_deref().filter(|d| *d != config.data_dir)
        && config.store.backend == StoreBackend::Embedded
    {
        crate::private_fs::warn_if_shared(dir);
    }
    store_rt
        .block_on(store.ping())
        .context(format!("the {} store does not answer", store.backend()))?;

    let scheduler = Arc::new(Scheduler::new());
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
    // On Redis the request path's calls (key limits, sticky sessions, account leases) share one
    // connection of their own (`RedisLimits::hot_connection`).
    let hot_redis = match config.store.backend {
        StoreBackend::Redis => {
            let target = config.store.redis_target();
            Some(
                store_rt
                    .block_on(crate::limits::redis::RedisLimits::hot_connection(&target))
                    .context(format!("cannot connect to Redis ({})", target.describe()))?,
            )
        }
        StoreBackend::Embedded => None,
    };
    let coord: Arc<dyn crate::store::coord::Coordination> = match &hot_redis {
        Some(conn) => Arc::new(crate::store::redis_coord::RedisCoordination::new(
            conn.clone(),
            crate::store::redis_conn::KeyNames::new(&config.store.prefix, conn.is_cluster()),
        )),
        None => store
            .coordination()
            .unwrap_or_else(|| Arc::new(crate::store::coord::MemoryCoordination::new())),
    };
    let leases = crate::leases::Leases::new(coord.clone(), tasks.clone());
    let outcomes = crate::scheduler::attempts::Outcomes {
        scheduler: scheduler.clone(),
        coord: coord.clone(),
        store: store.clone(),
        leases: leases.clone(),
        rules: crate::scheduler::attempts::AttemptRules {
            max_attempts: config.scheduler.failover.max_attempts,
            budget: config.scheduler.failover.budget.0,
            sticky_ttl: config.scheduler.sticky_ttl.0,
            evidence_keys: config.scheduler.failover.evidence_keys as usize,
            evidence_window: config.scheduler.failover.evidence_window.0,
        },
        tasks: tasks.clone(),
        sticky_hints: Default::default(),
    };
    let shared = crate::credentials::Shared {
        secrets: secrets.clone(),
        store: store.clone(),
        coord: coord.clone(),
        metrics: metrics.clone(),
        tasks: tasks.clone(),
    };
    // A refused refresh takes the account out of the pool, as a refused request would.
    let on_refused = || -> crate::credentials::OnRefused<crate::scheduler::Account> {
        let outcomes = outcomes.clone();
        Box::new(move |account, health| outcomes.mark(account, health))
    };
    let oauth = crate::state::TokenEngines {
        claude: Arc::new(OAuthTokens::new(
            config.providers.anthropic.oauth.clone(),
            config.providers.anthropic.api_base.as_str().to_string(),
            shared.clone(),
            on_refused(),
        )),
        chatgpt: Arc::new(ChatGptTokens::new(
            config.providers.openai.oauth.clone(),
            shared.clone(),
            on_refused(),
        )),
        google: Arc::new(GoogleTokens::new(
            config.providers.google.oauth.clone(),
            shared,
            on_refused(),
        )),
    };
    let reloader = Reloader {
        config: config.clone(),
        secrets: secrets.clone(),
        scheduler: scheduler.clone(),
        store: store.clone(),
        snapshot: snapshot.clone(),
        coord: coord.clone(),
        oauth: oauth.clone(),
    };
    store_rt
        .block_on(reloader.reload())
        .context("reloading keys and accounts")?;
    tasks.spawn_loop("snapshot reloads", reloader.clone().follow());
    tasks.spawn_loop(
        "audit log retention",
        crate::admin::trim_audit_forever(store.clone(), config.admin.audit),
    );
    if store.backend() == "embedded" {
        let s = store.clone();
        let session_bounds = config.stats.sessions.bounds();
        tasks.spawn_loop("expired usage purge", async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                let now = chrono::Utc::now().timestamp();
                if let Err(e) = s.purge_expired_usage(now).await {
                    tracing::warn!(error = %e, "purging expired usage failed");
                }
                if let Some(b) = session_bounds
                    && let Err(e) = s.purge_sessions(now.saturating_sub(b.retention_secs)).await
                {
                    tracing::warn!(error = %e, "purging expired client sessions failed");
                }
            }
        });
    }

    let (usage_sink, writer) =
        crate::usage::stats::pipeline(store.clone(), metrics.clone(), config.stats.flush_interval.0);
    let mut writer = writer.with_spool_dir(config.data_dir.join("spool"));
    if let Some(bounds) = config.stats.sessions.bounds() {
        writer = writer.with_sessions(bounds);
    }
    let (stats_stop, _stats_task) = writer.start(store_rt.handle());
    let stats_control = stats_stop.clone();

    // Keys imported under another relay's hash move to ours on their first use, off the hot path.
    let (legacy_tx, legacy_rx) = tokio::sync::mpsc::channel(256);
    tasks.spawn_loop(
        "imported key re-hashing",
        crate::state::move_legacy_keys(store.clone(), legacy_rx),
    );
    let keys = Arc::new(SnapshotKeys {
        secrets: secrets.clone(),
        snapshot: snapshot.clone(),
        legacy_moves: Some(legacy_tx),
    });
    // Key limits live where the store is: in Redis when instances share it, else in memory.
    let limits: Arc<dyn filters::LimitBackend> = match hot_redis {
        Some(conn) => {
            let ttl =
                crate::limits::redis::lease_ttl_from_env(&|k| std::env::var(k).ok()).map_err(anyhow_lite::Error)?;
            let redis_limits = Arc::new(crate::limits::redis::RedisLimits::on(
                conn,
                &config.store.prefix,
                store.clone(),
                ttl,
            ));
            tasks.spawn_loop("key concurrency slot renewal", redis_limits.clone().renew_forever());
            redis_limits
        }
        None => Arc::new(
            crate::limits::MemoryLimits::with_store(store.clone())
                .with_activations_file(config.data_dir.join("activations.json")),
        ),
    };
    let chain = crate::config::filter_registry()
        .build(
            &config.filters,
            &filters::FilterDeps {
                keys,
                limits: limits.clone(),
            },
        )
        .map_err(|e| anyhow_lite::Error(format!("config key `filters`: {e}")))?;

    let live = Arc::new(crate::usage::live::Live::default());
    let (request_log, request_log_control) = start_request_log(&config, &store, &metrics, &tasks);
    let relay = Arc::new(Relay {
        config: config.clone(),
        secrets: secrets.clone(),
        snapshot: snapshot.clone(),
        scheduler: scheduler.clone(),
        store: store.clone(),
        pricing: pricing.clone(),
        usage: usage_sink,
        metrics: metrics.clone(),
        chain,
        connector: crate::proxy::Connector::new(),
        peers: Peers::new(config.timeouts.connect.0, config.deny_addresses.clone()),
        hop_id: crate::secrets::random_token()[..16].to_string(),
        providers: crate::providers::ProviderEnv {
            oauth_beta: config.providers.anthropic.oauth.beta.clone(),
            bedrock_models: crate::providers::bedrock::models::Catalog::from_names(pricing.model_names()),
        },
        outcomes,
        coord: coord.clone(),
        leases: leases.clone(),
        oauth: oauth.clone(),
        tasks: tasks.clone(),
        cooldowns: config.scheduler.cooldowns.to_map(),
        live: live.clone(),
        request_log,
        self_service: Default::default(),
        limits: limits.clone(),
        limits_view: crate::limits::view::limits,
        refusals: Default::default(),
    });
    tasks.spawn_loop("concurrency lease renewal", leases.renew_forever());
    // Each kind's background work sees only its own accounts: their tokens renew through its
    // grant.
    let accounts_of = |kind: AccountKind| {
        let snapshot = snapshot.clone();
        move || {
            let snap = snapshot.load();
            snap.pool
                .all()
                .iter()
                .filter(|a| a.kind == kind)
                .cloned()
                .collect::<Vec<_>>()
        }
    };
    tasks.spawn_loop(
        "oauth token checks",
        oauth.claude.clone().run(accounts_of(AccountKind::ClaudeOauth)),
    );
    tasks.spawn_loop(
        "chatgpt token checks",
        oauth.chatgpt.clone().run(accounts_of(AccountKind::OpenAiOauth)),
    );
    tasks.spawn_loop(
        "google token checks",
        oauth.google.clone().run(accounts_of(AccountKind::GeminiOauth)),
    );
    tasks.spawn_loop(
        "account quota refresh",
        crate::scheduler::quota::refresh_forever(
            store.clone(),
            {
                let snapshot = snapshot.clone();
                move || snapshot.load().pool.all().to_vec()
            },
            metrics.clone(),
        ),
    );

    let key_limits = limits;
    let limits = crate::proxy::ConnLimits {
        request_head: config.timeouts.request_head.0,
        keepalive_idle: config.timeouts.keepalive_idle.0,
        per_ip: config.connections.per_ip,
        trusted: config.trusted_proxies.clone(),
    };
    let relay_cert = listener_cert("tls", config.tls.as_ref(), &tasks)?;
    let admin_tls = listener_cert("admin.tls", config.admin.tls.as_ref(), &tasks)?
        .map(crate::tls::server_config)
        .transpose()
        .context("admin.tls")?;
    let instance = relay.hop_id.clone();
    // Alerts: the dispatcher drains what the scheduler and the token refresh raise; the checks
    // read spend, expiry and the request counters on a timer. Both only when a webhook listens.
    let alerts = crate::alerts::Alerts::new(
        config.alerts.clone(),
        metrics.clone(),
        coord.clone(),
        instance.clone(),
        tasks.clone(),
    );
    alerts.start();
    if !config.alerts.webhooks.is_empty() {
        let checks = crate::alerts::evaluate::Checks::new(
            config.alerts.clone(),
            crate::alerts::evaluate::Sources {
                snapshot: snapshot.clone(),
                limits: key_limits.clone(),
                metrics: metrics.clone(),
            },
        );
        tasks.spawn_loop("alert checks", checks.run());
    }
    tasks.spawn_loop(
        "live view publishing",
        crate::usage::live::publish_forever(live.clone(), coord.clone(), instance.clone()),
    );
    if let Some(backup) = config.backup.clone() {
        tasks.spawn_loop(
            "scheduled backups",
            crate::backup::schedule::Scheduled {
                store: store.clone(),
                secrets: secrets.clone(),
                coord: store.coordination(),
                config: backup,
                metrics: metrics.clone(),
                instance: instance.clone(),
            }
            .run_forever(),
        );
    }
    let relay_for_admin = relay.clone();
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2_idle_timeout = Some(config.timeouts.keepalive_idle.0);
    let app = RelayApp::new(RelayProxy(relay), options);
    let guarded = crate::proxy::GuardedApp::new(app, limits, metrics.connections_closed.clone());
    let mut proxy = pingora::services::listening::Service::new("relay".to_string(), guarded);
    // No 64 KiB read buffer per connection: request heads and bodies are read into buffers of
    // their own, and an idle or slow connection then costs a few KiB, not 70.
    let mut endpoint = pingora::listeners::ListenerConfig::tcp(config.listen.to_string())
        .l4_buffer(pingora::listeners::L4BufferSettings::default().read(0));
    if let Some(cert) = relay_cert {
        // Pingora builds the rustls configuration around our resolver (TLS 1.2 and 1.3), so a
        // renewed certificate reaches new handshakes; ALPN h2, http/1.1.
        let mut tls = pingora::listeners::tls::TlsSettings::intermediate("", "").context("tls")?;
        tls.set_cert_resolver(cert);
        tls.enable_h2();
        endpoint = endpoint.tls(tls);
    }
    proxy.add_listener(endpoint);
    // SIGTERM closes the listeners through this switch (see `shutdown`).
    let switch = shutdown::Switch::new();
    server.add_service(switch.wrap(proxy));

    let admin_state = AdminState {
        config: config.clone(),
        secrets,
        store: store.clone(),
        snapshot,
        reloader,
        metrics: metrics.clone(),
        pricing,
        credentials: Arc::new(credentials),
        login_limiter: Default::default(),
        tasks: tasks.clone(),
        live,
        started: std::time::Instant::now(),
        limits: key_limits,
        oauth: oauth.clone(),
        instance,
        coord: coord.clone(),
        relay: relay_for_admin,
        alerts,
    };
    let admin = background_service(
        "admin",
        AdminService::new(admin_state, admin_listener).with_tls(admin_tls),
    );
    server.add_service(switch.wrap(admin));

    // Not cut at shutdown: it may be handing the store over.
    tasks.spawn_work(
        "upgrade hand-over",
        handover::follow(
            server.watch_execution_phase(),
            handover::Handover {
                stats: stats_control,
                request_log: request_log_control,
                embedded,
                admin_listener: admin_handle,
                pid_file: pid_file(&config),
                upgrade_sock: config.upgrade_sock.clone(),
            },
        ),
    );
    let (stopped_tx, stopped) = std::sync::mpsc::channel();
    tasks.spawn_loop(
        "end of the grace period after a hand-over",
        shutdown::end_grace_when_drained(
            server.watch_execution_phase(),
            metrics.in_flight.clone(),
            config.shutdown_grace,
            stopped_tx.clone(),
        ),
    );
    let signals = {
        let _rt = store_rt.enter();
        shutdown::Signals::register(switch, metrics.in_flight.clone(), config.shutdown_grace)
            .context("cannot listen for signals")?
    };

    tracing::info!(listen = %config.listen, admin = %config.admin_listen, store = store.backend(), "claude-relay starting");
    // The server runs on a thread of its own: after an upgrade's hand-over Pingora sleeps the
    // whole grace period there, and `run` returns as soon as nothing is in flight instead.
    let server_thread = std::thread::Builder::new()
        .name("relay-server".into())
        .spawn(move || {
            // Tells `run` when the server stops, also by a panic.
            let _stopped = shutdown::SendOnDrop(stopped_tx, shutdown::Stopped::Server);
            server.run(RunArgs {
                shutdown_signal: Box::new(signals),
            });
        })
        .context("cannot start the server thread")?;
    let why = stopped.recv().unwrap_or(shutdown::Stopped::Server);
    if why == shutdown::Stopped::Server && server_thread.join().is_err() {
        tracing::error!("the server thread panicked");
    }

    tracing::info!(reason = ?why, "server stopped; stopping the background tasks");
    store_rt.block_on(shutdown::wait_settled(&metrics.in_flight, SETTLE_WAIT));
    store_rt.block_on(tasks.shutdown(TASKS_STOP_WAIT));
    tracing::info!("writing the last usage statistics");
    store_rt.block_on(stats_stop.stop());
    store_rt.shutdown_timeout(Duration::from_secs(5));
    handover::remove_pid_file();
    tracing::info!("claude-relay stopped");
    Ok(())
}

/// The request log's sink, and its writer started as work the shutdown waits for (it writes what
/// is queued when the tasks stop, after the requests in flight settled). `request_log.enabled:
/// false`: a sink that records nothing, and no writer. On the embedded store the writer spools
/// across an upgrade's hand-over (in `<data_dir>/spool/requests`), moved there by the returned
/// control.
fn start_request_log(
    config: &Config,
    store: &Arc<dyn crate::store::Store>,
    metrics: &Arc<crate::metrics::Metrics>,
    tasks: &crate::lifecycle::Tasks,
) -> (
    crate::usage::request_log::RequestLogSink,
    Option<crate::usage::request_log::RequestLogControl>,
) {
    use crate::usage::request_log::{RequestLogSink, Retention, pipeline};
    if !config.request_log.enabled {
        return (RequestLogSink::off(metrics.clone()), None);
    }
    let retention = Retention {
        max_age: config.request_log.retention.0,
        max_records: config.request_log.max_records,
    };
    let (sink, mut writer) = pipeline(store.clone(), metrics.clone(), retention);
    let mut control = None;
    if store.backend() == "embedded" {
        writer = writer.with_spool_dir(config.data_dir.join("spool").join("requests"));
        control = Some(writer.control());
    }
    tasks.spawn_work("request log writer", writer.run(tasks.token()));
    (sink, control)
}

/// `<data_dir>/claude-relay.pid`: the pid of the process that serves (after an upgrade, the new one).
pub fn pid_file(config: &Config) -> std::path::PathBuf {
    config.data_dir.join("claude-relay.pid")
}

impl From<argon2::password_hash::Error> for anyhow_lite::Error {
    fn from(e: argon2::password_hash::Error) -> Self {
        anyhow_lite::Error(format!("password hashing: {e}"))
    }
}
