//! How the relay reaches Redis: one node (`store.url`), the master a set of Sentinels watches
//! (`store.sentinel`), or a Cluster (`store.cluster`); and how key names keep every multi-key
//! script and transaction in one hash slot on a Cluster.
//!
//! Every Redis user of the relay (the store, the coordination state, the key limits) talks through
//! one [`RedisConn`], whichever the deployment:
//!
//! - **One node:** the `redis` crate's `ConnectionManager` (reconnects by itself).
//! - **Sentinel:** a multiplexed connection to the master the Sentinels name. A connection error,
//!   or a `READONLY` answer (the old master, demoted to a replica), asks the Sentinels again (at
//!   most every [`SENTINEL_RESOLVE_EVERY`]) and replaces the connection; a command refused with
//!   `READONLY` was not run, so it is sent again once to the new master.
//! - **Cluster:** the crate's cluster connection (follows `MOVED`/`ASK` and failovers by itself).
//!   A pipeline within one slot goes as one pipeline; one over several slots (reads of many
//!   usage buckets or sessions) is sent command by command, concurrently, so its commands must
//!   not depend on their order. A `MULTI`/`EXEC` transaction or a script must keep its keys in
//!   one slot, which the key names do: see [`KeyNames`].

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, IntoConnectionInfo, Pipeline, ProtocolVersion, RedisError,
    RedisFuture, RedisResult, ServerErrorKind, Value,
};
use serde::Deserialize;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Generous next to the client's 500 ms default: a usage flush or a long series is one big pipeline.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
const RECONNECT_RETRIES: usize = 4;
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);
/// The least time between two questions to the Sentinels about the master.
pub const SENTINEL_RESOLVE_EVERY: Duration = Duration::from_millis(200);

/// `store.sentinel`: the master's name as the Sentinels know it and where the Sentinels listen.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The monitored master's name (`sentinel monitor <master> ...`).
    pub master: String,
    /// `redis://host:port` of each Sentinel (a user and password in a URL are the Sentinel's own).
    pub nodes: Vec<String>,
    /// ACL user of the master and its replicas.
    #[serde(default)]
    pub username: Option<String>,
    /// Password of the master and its replicas.
    #[serde(default)]
    pub password: Option<String>,
    /// Database number on the master.
    #[serde(default)]
    pub db: i64,
}

/// Where the Redis backend is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One node: a `redis://` or `rediss://` URL.
    Node(String),
    /// The master a set of Sentinels watches.
    Sentinel(SentinelConfig),
    /// A Redis Cluster: URLs of some of its nodes (the first that answers tells the rest).
    Cluster(Vec<String>),
}

impl RedisTarget {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisTarget::Cluster(_))
    }

    /// What to call it in messages (never a password).
    pub fn describe(&self) -> String {
        match self {
            RedisTarget::Node(_) => "store.url".to_string(),
            RedisTarget::Sentinel(s) => format!("store.sentinel (master {:?})", s.master),
            RedisTarget::Cluster(n) => format!("store.cluster ({} nodes)", n.len()),
        }
    }
}

fn invalid(what: &str, e: &RedisError) -> String {
    // The URL may hold a password: never echo it.
    format!("invalid {what}: {:?}", e.kind())
}

/// Redis key names under a prefix. On a Cluster, the part of a name that must share a slot with
/// other names is wrapped in a hash tag (`{...}`); elsewhere names are exactly as they always
/// were, so an existing single-node or Sentinel deployment keeps its data. Moving a deployment to
/// a Cluster goes through `claude-relay export` and `import`.
#[derive(Debug, Clone)]
pub struct KeyNames {
    prefix: String,
    cluster: bool,
}

impl KeyNames {
    pub fn new(prefix: &str, cluster: bool) -> Self {
        KeyNames {
            prefix: prefix.to_string(),
            cluster,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn cluster(&self) -> bool {
        self.cluster
    }

    /// `{p}{name}`: a key that no multi-key operation shares.
    pub fn plain(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// `part` as a hash tag on a Cluster (`{part}`), as is elsewhere.
    pub fn tag<'a>(&self, part: &'a str) -> Cow<'a, str> {
        if self.cluster {
            Cow::Owned(format!("{{{part}}}"))
        } else {
            Cow::Borrowed(part)
        }
    }

    /// `{p}{name}` in the slot of `group` on a Cluster (`{p}{group}name`): for the few keys that
    /// scripts or transactions use together (the key catalog, admin sessions, usage statistics).
    pub fn grouped(&self, group: &str, name: &str) -> String {
        if self.cluster {
            format!("{}{{{group}}}{name}", self.prefix)
        } else {
            format!("{}{name}", self.prefix)
        }
    }

    /// The two strings a Lua script wraps a tagged part in (`{` and `}` on a Cluster).
    pub fn tag_braces(&self) -> (&'static str, &'static str) {
        if self.cluster { ("{", "}") } else { ("", "") }
    }
}

/// A connection to the Redis backend, cheap to clone (every clone shares the connection).
#[derive(Clone)]
pub enum RedisConn {
    Node(ConnectionManager),
    Sentinel(Arc<SentinelConn>),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConn::Node(_) => "RedisConn::Node",
            RedisConn::Sentinel(_) => "RedisConn::Sentinel",
            RedisConn::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

/// `TCP_NODELAY` on every connection: each one carries many requests at once (multiplexed), and
/// with Nagle's algorithm a request written while an earlier one is unanswered would wait for that
/// answer, a round trip, before it leaves (the `redis` crate leaves Nagle on by default).
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

impl RedisConn {
    /// Connects; fails when nothing answers, so a bad address stops the start. A command that has
    /// no answer within `response_timeout` fails.
    pub async fn connect(target: &RedisTarget, response_timeout: Duration) -> Result<RedisConn, String> {
        match target {
            RedisTarget::Node(url) => {
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| invalid("redis URL", &e))?
                    .set_tcp_settings(tcp_settings());
                let client = Client::open(info).map_err(|e| format!("redis: {e}"))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(response_timeout))
                    .set_number_of_retries(RECONNECT_RETRIES)
                    .set_max_delay(RECONNECT_MAX_DELAY);
                let conn = ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(|e| format!("redis: {e}"))?;
                Ok(RedisConn::Node(conn))
            }
            RedisTarget::Sentinel(s) => Ok(RedisConn::Sentinel(Arc::new(
                SentinelConn::connect(s, response_timeout).await?,
            ))),
            RedisTarget::Cluster(nodes) => {
                let mut infos = Vec::with_capacity(nodes.len());
                for n in nodes {
                    infos.push(
                        n.as_str()
                            .into_connection_info()
                            .map_err(|e| invalid("cluster node URL", &e))?,
                    );
                }
                let client = ClusterClientBuilder::new(infos)
                    .tcp_settings(tcp_settings())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(response_timeout)
                    .retries(RECONNECT_RETRIES as u32)
                    .build()
                    .map_err(|e| format!("redis cluster: {e}"))?;
                let conn = client
                    .get_async_connection()
                    .await
                    .map_err(|e| format!("redis cluster: {e}"))?;
                Ok(RedisConn::Cluster(conn))
            }
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// Every key name matching the glob `pattern`, from every master of a Cluster (SCAN, so Redis
    /// is never blocked for long). Sorted, without duplicates.
    pub async fn scan(&self, pattern: &str) -> RedisResult<Vec<String>> {
        let mut out = Vec::new();
        match self {
            RedisConn::Cluster(c) => {
                let mut c = c.clone();
                for (host, port) in cluster_masters(&mut c).await? {
                    let mut cursor: u64 = 0;
                    loop {
                        let mut cmd = redis::cmd("SCAN");
                        cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
                        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port,
                        });
                        let v = c.route_command(cmd, route).await?;
                        let (next, names): (u64, Vec<String>) = redis::from_redis_value(v)?;
                        out.extend(names);
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
            }
            _ => {
                let mut c = self.clone();
                let mut cursor: u64 = 0;
                loop {
                    let (next, names): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await?;
                    out.extend(names);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// A client for a RESP3 connection of its own (the change subscriber), on a node that hears
    /// every `PUBLISH`: the node, the current master, or the `attempt`-th Cluster node (classic
    /// pub/sub reaches every node of a Cluster).
    pub async fn subscriber_client(&self, target: &RedisTarget, attempt: usize) -> RedisResult<Client> {
        let resp3 = |info: redis::ConnectionInfo| {
            let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
            Client::open(info.set_redis_settings(settings).set_tcp_settings(tcp_settings()))
        };
        match (self, target) {
            (RedisConn::Sentinel(s), _) => {
                let client = s.master_client().await?;
                resp3(client.get_connection_info().clone())
            }
            (_, RedisTarget::Cluster(nodes)) if !nodes.is_empty() => {
                resp3(nodes[attempt % nodes.len()].as_str().into_connection_info()?)
            }
            (_, RedisTarget::Node(url)) => resp3(url.as_str().into_connection_info()?),
            _ => Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "no Redis node to subscribe on",
            ))),
        }
    }
}

/// `(host, port)` of each master of the Cluster, from `CLUSTER SHARDS`-free `CLUSTER NODES`
/// (Redis 6 has no `CLUSTER SHARDS`).
async fn cluster_masters(c: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let text: String = redis::cmd("CLUSTER").arg("NODES").query_async(c).await?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(_id), Some(addr), Some(flags)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !flags.split(',').any(|x| x == "master") || flags.contains("fail") || flags.contains("noaddr") {
            continue;
        }
        // host:port@cport[,hostname]
        let hostport = addr.split('@').next().unwrap_or("");
        if let Some((host, port)) = hostport.rsplit_once(':')
            && let Ok(port) = port.parse()
            && !host.is_empty()
        {
            out.push((host.to_string(), port));
        }
    }
    Ok(out)
}

fn is_non_atomic(pipeline: &Pipeline, offset: usize, count: usize) -> bool {
    offset == 0 && count == pipeline.cmd_iter().count()
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Node(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
            RedisConn::Sentinel(s) => {
                let s = Arc::clone(s);
                Box::pin(async move {
                    let (generation, mut c) = s.current();
                    let first = c.req_packed_command(cmd).await;
                    match first {
                        Err(e) if SentinelConn::lost_master(&e) => {
                            s.resolve_after(generation).await;
                            if e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly) {
                                // Refused, not run: safe to send again to the new master.
                                let (_, mut c) = s.current();
                                return c.req_packed_command(cmd).await;
                            }
                            Err(e)
                        }
                        other => other,
                    }
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => {
                let mut c = c.clone();
                Box::pin(async move {
                    // In one slot (the crate checks before it sends anything): one pipeline, in
                    // order. Reads over many slots: one command each, all in flight together.
                    match c.req_packed_commands(pipeline, offset, count).await {
                        Err(e)
                            if e.kind() == ErrorKind::Server(ServerErrorKind::CrossSlot)
                                && is_non_atomic(pipeline, offset, count) =>
                        {
                            let calls = pipeline.cmd_iter().map(|cmd| {
                                let mut c = c.clone();
                                async move { c.req_packed_command(cmd).await }
                            });
                            futures_util::future::join_all(calls).await.into_iter().collect()
                        }
                        other => other,
                    }
                })
            }
            RedisConn::Sentinel(s) => {
                let s = Arc::clone(s);
                Box::pin(async move {
                    let (generation, mut c) = s.current();
                    let first = c.req_packed_commands(pipeline, offset, count).await;
                    if let Err(e) = &first
                        && SentinelConn::lost_master(e)
                    {
                        s.resolve_after(generation).await;
                    }
                    first
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Node(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
            RedisConn::Sentinel(s) => s.db,
        }
    }
}

/// The connection to the master the Sentinels name, replaced when the master changes.
pub struct SentinelConn {
    client: tokio::sync::Mutex<SentinelClient>,
    current: RwLock<(u64, MultiplexedConnection)>,
    generation: AtomicU64,
    last_resolve: Mutex<Instant>,
    db: i64,
    response_timeout: Duration,
}

impl SentinelConn {
    async fn connect(cfg: &SentinelConfig, response_timeout: Duration) -> Result<SentinelConn, String> {
        if cfg.nodes.is_empty() {
            return Err("store.sentinel.nodes is empty".into());
        }
        let mut sentinels = Vec::with_capacity(cfg.nodes.len());
        for n in &cfg.nodes {
            sentinels.push(
                n.as_str()
                    .into_connection_info()
                    .map_err(|e| invalid("sentinel URL", &e))?,
            );
        }
        let mut redis_info = redis::RedisConnectionInfo::default().set_db(cfg.db);
        if let Some(u) = &cfg.username {
            redis_info = redis_info.set_username(u);
        }
        if let Some(p) = &cfg.password {
            redis_info = redis_info.set_password(p);
        }
        let node_info = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(redis_info)
            .set_tcp_settings(tcp_settings());
        let mut client = SentinelClient::build(
            sentinels,
            cfg.master.clone(),
            Some(node_info),
            SentinelServerType::Master,
        )
        .map_err(|e| format!("redis sentinel: {e}"))?;
        let conn = Self::open(&mut client, response_timeout)
            .await
            .map_err(|e| format!("redis sentinel (master {:?}): {e}", cfg.master))?;
        Ok(SentinelConn {
            client: tokio::sync::Mutex::new(client),
            current: RwLock::new((0, conn)),
            generation: AtomicU64::new(0),
            last_resolve: Mutex::new(Instant::now()),
            db: cfg.db,
            response_timeout,
        })
    }

    async fn open(client: &mut SentinelClient, response_timeout: Duration) -> RedisResult<MultiplexedConnection> {
        let master = client.async_get_client().await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response_timeout));
        master.get_multiplexed_async_connection_with_config(&config).await
    }

    fn current(&self) -> (u64, MultiplexedConnection) {
        let g = self.current.read().unwrap_or_else(|e| e.into_inner());
        (g.0, g.1.clone())
    }

    /// A client for the current master (asks the Sentinels).
    async fn master_client(&self) -> RedisResult<Client> {
        self.client.lock().await.async_get_client().await
    }

    /// Whether an error means the connection no longer reaches a writable master.
    fn lost_master(e: &RedisError) -> bool {
        e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
    }

    /// Asks the Sentinels for the master and reconnects, unless another caller already replaced
    /// the connection that failed (`generation`) or asked less than [`SENTINEL_RESOLVE_EVERY`] ago.
    async fn resolve_after(&self, generation: u64) {
        let mut client = self.client.lock().await;
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        {
            let mut last = self.last_resolve.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() < SENTINEL_RESOLVE_EVERY {
                return;
            }
            *last = Instant::now();
        }
        match Self::open(&mut client, self.response_timeout).await {
            Ok(conn) => {
                let next = generation + 1;
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = (next, conn);
                self.generation.store(next, Ordering::Release);
                tracing::info!("redis sentinel: reconnected to the current master");
            }
            Err(e) => tracing::warn!(error = %e, "redis sentinel: cannot reach the master yet"),
        }
    }
}
