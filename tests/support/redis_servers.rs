//! Private Redis deployments for the tests of the redis backend beyond one node: a three-master
//! Redis Cluster and a master with a replica watched by three Sentinels. Every server is a real
//! `redis-server` (`RELAY_TEST_REDIS_SERVER`, default the one on the PATH) on free ports in a
//! temporary directory, without persistence; all are stopped when the value is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

fn server_bin() -> String {
    std::env::var("RELAY_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

fn cli_bin() -> String {
    // redis-cli sits next to redis-server.
    let server = server_bin();
    match Path::new(&server).parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => dir.join("redis-cli").display().to_string(),
        None => "redis-cli".into(),
    }
}

/// `redis-cli -p port args...`; its standard output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(cli_bin())
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); the Redis tests need redis-server and redis-cli"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < within, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Server {
    child: Child,
    port: u16,
}

fn spawn(dir: &Path, name: &str, args: &[String]) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    Command::new(server_bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start redis-server ({e})"))
}

fn base_args(port: u16) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start_node(dir: &Path, name: &str, extra: &[&str]) -> Server {
    let port = free_port();
    let node_dir = dir.join(name);
    std::fs::create_dir_all(&node_dir).unwrap();
    let mut args = base_args(port);
    args.extend(extra.iter().map(|s| s.to_string()));
    let child = spawn(&node_dir, name, &args);
    wait_for(&format!("redis-server {name} answers"), Duration::from_secs(10), || {
        cli(port, &["ping"]).trim() == "PONG"
    });
    Server { child, port }
}

fn stop(servers: &mut [Server]) {
    for s in servers.iter_mut() {
        let _ = s.child.kill();
    }
    for s in servers.iter_mut() {
        let _ = s.child.wait();
    }
}

/// One private `redis-server` (so that its statistics count only the test's own clients).
pub struct RedisNode {
    _dir: tempfile::TempDir,
    server: Server,
}

impl RedisNode {
    pub fn start() -> RedisNode {
        let dir = tempfile::tempdir().unwrap();
        let server = start_node(dir.path(), "node", &[]);
        RedisNode { _dir: dir, server }
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.server.port)
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        stop(std::slice::from_mut(&mut self.server));
    }
}

/// A Redis Cluster of three masters (no replicas), slots spread evenly.
pub struct RedisCluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Server>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let bus = free_port().to_string();
            nodes.push(start_node(
                dir.path(),
                &format!("node{i}"),
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    "2000",
                ],
            ));
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = Command::new(cli_bin()).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for n in &nodes {
            wait_for("the cluster is ok on every node", Duration::from_secs(20), || {
                cli(n.port, &["cluster", "info"]).contains("cluster_state:ok")
            });
        }
        RedisCluster { _dir: dir, nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect()
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The `store:` block of a relay on this cluster.
    pub fn store_yaml(&self, prefix: &str) -> String {
        let nodes: Vec<String> = self.urls().iter().map(|u| format!("\"{u}\"")).collect();
        format!(
            "store: {{ backend: redis, cluster: [{}], prefix: \"{prefix}\" }}\n",
            nodes.join(", ")
        )
    }

    /// How many keys each master holds (`DBSIZE`).
    pub fn key_counts(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| cli(n.port, &["dbsize"]).trim().parse().unwrap_or(0))
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        stop(&mut self.nodes);
    }
}

/// A master, one replica and three Sentinels (quorum 2) watching them as `relaymaster`.
pub struct RedisSentinels {
    dir: tempfile::TempDir,
    data: Vec<Server>,
    sentinels: Vec<Server>,
}

pub const SENTINEL_MASTER: &str = "relaymaster";

impl RedisSentinels {
    pub fn start() -> RedisSentinels {
        let dir = tempfile::tempdir().unwrap();
        let master = start_node(dir.path(), "master", &[]);
        let mp = master.port.to_string();
        let replica = start_node(dir.path(), "replica", &["--replicaof", "127.0.0.1", &mp]);
        wait_for("the replica is in sync", Duration::from_secs(20), || {
            cli(replica.port, &["info", "replication"]).contains("master_link_status:up")
        });
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let sdir = dir.path().join(format!("sentinel{i}"));
            std::fs::create_dir_all(&sdir).unwrap();
            let conf: PathBuf = sdir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {mp} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 4000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                    sdir.display()
                ),
            )
            .unwrap();
            let child = spawn(
                &sdir,
                "sentinel",
                &[conf.display().to_string(), "--sentinel".to_string()],
            );
            wait_for("a sentinel answers", Duration::from_secs(10), || {
                cli(port, &["ping"]).trim() == "PONG"
            });
            sentinels.push(Server { child, port });
        }
        let s = RedisSentinels {
            dir,
            data: vec![master, replica],
            sentinels,
        };
        // Every Sentinel knows the replica and the other Sentinels before a failover is asked.
        for sp in s.sentinel_ports() {
            wait_for(
                "the sentinels know each other and the replica",
                Duration::from_secs(30),
                || {
                    let info = cli(sp, &["sentinel", "master", SENTINEL_MASTER]);
                    let field = |name: &str| {
                        let mut lines = info.lines();
                        while let Some(l) = lines.next() {
                            if l.trim() == name {
                                return lines.next().map(|v| v.trim().to_string());
                            }
                        }
                        None
                    };
                    field("num-slaves").as_deref() == Some("1") && field("num-other-sentinels").as_deref() == Some("2")
                },
            );
        }
        s
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The port of the current master, as the first Sentinel says.
    pub fn master_port(&self) -> u16 {
        let out = cli(
            self.sentinels[0].port,
            &["sentinel", "get-master-addr-by-name", SENTINEL_MASTER],
        );
        out.lines().nth(1).and_then(|p| p.trim().parse().ok()).unwrap()
    }

    /// The `store:` block of a relay on the master these Sentinels watch.
    pub fn store_yaml(&self, prefix: &str) -> String {
        let nodes: Vec<String> = self
            .sentinel_ports()
            .iter()
            .map(|p| format!("\"redis://127.0.0.1:{p}/\""))
            .collect();
        format!(
            "store: {{ backend: redis, sentinel: {{ master: {SENTINEL_MASTER}, nodes: [{}] }}, prefix: \"{prefix}\" }}\n",
            nodes.join(", ")
        )
    }

    /// Asks the Sentinels to fail over and waits until they name the other server as the master
    /// and it accepts writes.
    pub fn failover(&self) -> u16 {
        let before = self.master_port();
        let answer = cli(self.sentinels[0].port, &["sentinel", "failover", SENTINEL_MASTER]);
        assert_eq!(answer.trim(), "OK", "SENTINEL FAILOVER: {answer}");
        let mut after = before;
        wait_for("the sentinels name a new master", Duration::from_secs(30), || {
            after = self.master_port();
            after != before && cli(after, &["role"]).starts_with("master")
        });
        after
    }

    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisSentinels {
    fn drop(&mut self) {
        stop(&mut self.sentinels);
        stop(&mut self.data);
    }
}

/// A TCP link to `127.0.0.1:<target>` that holds every byte `delay` in each direction, in order:
/// a network whose round trip takes twice `delay`. Connections are forwarded until the value is
/// dropped.
pub struct SlowLink {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl SlowLink {
    pub async fn start(target: u16, delay: Duration) -> SlowLink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(up) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let _ = down.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let (down_r, down_w) = down.into_split();
                    let (up_r, up_w) = up.into_split();
                    tokio::spawn(hold_and_pass(down_r, up_w, delay));
                    hold_and_pass(up_r, down_w, delay).await;
                });
            }
        });
        SlowLink { port, task }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Passes what `from` reads to `to`, each chunk `delay` after it was read.
async fn hold_and_pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((read_at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(read_at + delay).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || tx.send((tokio::time::Instant::now(), buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
