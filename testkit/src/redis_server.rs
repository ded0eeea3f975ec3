//! Local Redis servers for the tests: each test starts its own `redis-server`
//! on a free loopback port (never the system's 6379) and stops it on drop.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const NOT_INSTALLED: &str = "redis-server is not installed: apt-get install redis-server (tests start their own server on a free loopback port)";

/// How long a server may take to answer PING after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports to try when a port is taken between picking it and
/// the server binding it.
const PORT_ATTEMPTS: usize = 8;

/// A port nothing listens on right now (bound to port 0, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind a loopback port")
}

/// A fresh directory under the system temp dir, removed by [`TempDir`]'s drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("cannot create a temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Spawns `redis-server` with `args` after the common ones; panics with an
/// install hint when it is not on PATH.
fn spawn_server(port: u16, dir: &Path, extra: &[String]) -> Child {
    let log = dir.join(format!("redis-{port}.log"));
    let mut cmd = Command::new("redis-server");
    cmd.arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{NOT_INSTALLED}"),
        Err(e) => panic!("cannot start redis-server: {e}"),
    }
}

/// A synchronous connection for the test's own bookkeeping.
fn connect(port: u16) -> redis::RedisResult<redis::Connection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))?
        .get_connection_with_timeout(Duration::from_millis(500))
}

/// Waits until the server we spawned answers on `port`. `Err` when it exited
/// (the port was taken, say) or did not answer in time.
fn wait_ready(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("redis-server exited with {status}"));
        }
        if let Ok(mut con) = connect(port) {
            // Make sure it is our process answering, not a stranger that
            // took the port.
            let info: redis::RedisResult<String> = redis::cmd("INFO").arg("server").query(&mut con);
            match info {
                Ok(info) => {
                    let pid = info_field(&info, "process_id");
                    if pid == Some(child.id().to_string()) {
                        return Ok(());
                    }
                    return Err(format!("port {port} is served by another process"));
                }
                // A server started with `--requirepass` (ours, as it still
                // runs; the port was free a moment ago).
                Err(e) if e.code() == Some("NOAUTH") => return Ok(()),
                Err(_) => {}
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("redis-server did not answer on port {port}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_owned())
    })
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn log_tail(dir: &Path, port: u16) -> String {
    let log = std::fs::read_to_string(dir.join(format!("redis-{port}.log"))).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Starts a server on a free port, retrying with a new port when the chosen
/// one was taken in the meantime. `extra` builds extra arguments per port.
fn start_on_free_port(dir: &Path, extra: impl Fn(u16) -> Vec<String>) -> (Child, u16) {
    let mut last_error = String::new();
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port();
        let mut child = spawn_server(port, dir, &extra(port));
        match wait_ready(&mut child, port) {
            Ok(()) => return (child, port),
            Err(e) => {
                stop(&mut child);
                last_error = format!("{e}\n{}", log_tail(dir, port));
            }
        }
    }
    panic!("could not start redis-server after {PORT_ATTEMPTS} attempts: {last_error}");
}

/// Parses `INFO commandstats` into command -> calls (`get`, `mget`,
/// `evalsha`, `config|resetstat`, ...). The counts include the commands Lua
/// scripts run: a script's GETs count as `get`.
pub fn parse_command_stats(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("cmdstat_")?;
            let (name, fields) = rest.split_once(':')?;
            let calls = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Commands that are not data round trips: the test support's own INFO and
/// CONFIG, and the handshake of a new connection (`CLIENT SETINFO`, `HELLO`,
/// `SELECT`).
pub fn is_bookkeeping(command: &str) -> bool {
    let name = command.split('|').next().unwrap_or(command);
    matches!(name, "info" | "config" | "client" | "hello" | "select")
}

/// One command as MONITOR reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Run by a Lua script (`[0 lua]`), not sent by a client.
    pub from_script: bool,
    /// The command name, lowercase (`get`, `evalsha`, ...).
    pub command: String,
    /// The whole MONITOR line.
    pub line: String,
}

fn parse_monitor_line(line: &str) -> Option<Seen> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let source = &line[open + 1..close];
    let rest = line[close + 1..].trim_start().strip_prefix('"')?;
    let command = rest[..rest.find('"')?].to_ascii_lowercase();
    Some(Seen {
        from_script: source.ends_with(" lua"),
        command,
        line: line.to_owned(),
    })
}

const MARK_PREFIX: &str = "ci-monitor-mark-";

/// Every command the server runs, recorded through MONITOR: unlike
/// `INFO commandstats`, it tells the commands a client sent (one per round
/// trip) from the commands a Lua script ran inside one of them.
pub struct Monitor {
    marker: std::sync::Mutex<redis::Connection>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    start: std::sync::atomic::AtomicUsize,
}

impl Monitor {
    fn attach(port: u16) -> Monitor {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut con = connect(port).expect("cannot connect for MONITOR");
        con.set_read_timeout(None)
            .expect("cannot clear the read timeout");
        con.send_packed_command(&redis::cmd("MONITOR").get_packed_command())
            .expect("cannot send MONITOR");
        con.recv_response().expect("MONITOR was refused");
        let sink = seen.clone();
        // Ends when the server goes away (the read fails).
        std::thread::spawn(move || {
            while let Ok(value) = con.recv_response() {
                if let redis::Value::SimpleString(line) = value
                    && let Some(seen) = parse_monitor_line(&line)
                {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(seen);
                }
            }
        });
        let marker = connect(port).expect("cannot connect to send markers");
        let monitor = Monitor {
            marker: std::sync::Mutex::new(marker),
            seen,
            start: std::sync::atomic::AtomicUsize::new(0),
        };
        monitor.reset();
        monitor
    }

    /// Sends a marker and waits until MONITOR reported it; everything the
    /// server ran before is recorded by then. Returns the marker's index.
    fn mark(&self) -> usize {
        static MARKS: AtomicU64 = AtomicU64::new(0);
        let token = format!(
            "{MARK_PREFIX}{}-{}",
            std::process::id(),
            MARKS.fetch_add(1, Ordering::Relaxed)
        );
        let _: String = redis::cmd("ECHO")
            .arg(&token)
            .query(&mut *self.marker.lock().unwrap_or_else(|e| e.into_inner()))
            .expect("ECHO failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            {
                let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(i) = seen.iter().rposition(|s| s.line.contains(&token)) {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "MONITOR never reported {token}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Starts a new measurement.
    pub fn reset(&self) {
        self.start.store(self.mark() + 1, Ordering::Relaxed);
    }

    /// The commands run since the last [`reset`](Self::reset), markers
    /// left out.
    pub fn since_reset(&self) -> Vec<Seen> {
        let end = self.mark();
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen[self.start.load(Ordering::Relaxed).min(end)..end]
            .iter()
            .filter(|s| !s.line.contains(MARK_PREFIX))
            .cloned()
            .collect()
    }

    fn count(&self, from_script: bool) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for seen in self.since_reset() {
            if seen.from_script == from_script && !is_bookkeeping(&seen.command) {
                *counts.entry(seen.command).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Commands clients sent since the reset (each one a round trip, or
    /// part of a pipeline), per command.
    pub fn client_commands(&self) -> BTreeMap<String, u64> {
        self.count(false)
    }

    /// Commands Lua scripts ran since the reset, per command.
    pub fn script_commands(&self) -> BTreeMap<String, u64> {
        self.count(true)
    }
}

/// One local `redis-server`, stopped on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers.
    ///
    /// # Panics
    ///
    /// When `redis-server` is not installed, or does not start.
    pub fn start() -> RedisServer {
        let dir = TempDir::new("ci-redis");
        let (child, port) = start_on_free_port(dir.path(), |_| Vec::new());
        RedisServer {
            child: Some(child),
            port,
            dir,
        }
    }

    /// Starts a server with `args` after the common ones (`--requirepass
    /// secret`, `--databases 2`, ...).
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn start_with(args: &[&str]) -> RedisServer {
        let dir = TempDir::new("ci-redis");
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let (child, port) = start_on_free_port(dir.path(), |_| args.clone());
        RedisServer {
            child: Some(child),
            port,
            dir,
        }
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A fresh synchronous connection, for inspecting or seeding the server.
    pub fn connection(&self) -> redis::Connection {
        connect(self.port).expect("cannot connect to the test redis-server")
    }

    /// Calls per command since the last [`reset_stats`](Self::reset_stats),
    /// from `INFO commandstats` (the INFO itself is counted after it runs,
    /// so it never shows up in its own answer).
    pub fn command_stats(&self) -> BTreeMap<String, u64> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.connection())
            .expect("INFO commandstats failed");
        parse_command_stats(&info)
    }

    /// The store's commands since the last reset: every command but the
    /// test support's own INFO and CONFIG.
    pub fn data_commands(&self) -> BTreeMap<String, u64> {
        let mut stats = self.command_stats();
        stats.retain(|command, _| !is_bookkeeping(command));
        stats
    }

    /// The ids of this server's clients that have client-side caching
    /// tracking on (flag `t` in `CLIENT LIST`).
    pub fn tracking_clients(&self) -> Vec<i64> {
        tracking_clients(&mut self.connection())
    }

    /// The total of [`data_commands`](Self::data_commands).
    pub fn data_command_count(&self) -> u64 {
        self.data_commands().values().sum()
    }

    /// Starts recording every command the server runs (see [`Monitor`]).
    pub fn monitor(&self) -> Monitor {
        Monitor::attach(self.port)
    }

    /// Zeroes the command stats (`CONFIG RESETSTAT`).
    pub fn reset_stats(&self) {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut self.connection())
            .expect("CONFIG RESETSTAT failed");
    }

    /// Kills the server (SIGKILL): for fault tests. The port stays reserved
    /// for [`restart`](Self::restart).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child);
        }
    }

    /// Starts the server again on the same port (empty: nothing is saved).
    ///
    /// # Panics
    ///
    /// When the server does not come back (the port was taken meanwhile).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut child = spawn_server(self.port, self.dir.path(), &[]);
            match wait_ready(&mut child, self.port) {
                Ok(()) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) => {
                    stop(&mut child);
                    assert!(
                        Instant::now() < deadline,
                        "redis-server did not restart on port {}: {e}\n{}",
                        self.port,
                        log_tail(self.dir.path(), self.port)
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A local Redis Cluster of three masters (no replicas, unless started
/// with [`start_with_replicas`](RedisCluster::start_with_replicas)), torn
/// down on drop.
pub struct RedisCluster {
    nodes: Vec<(Child, u16)>,
    dir: TempDir,
}

impl RedisCluster {
    /// Starts three cluster-enabled masters on free ports, joins them with
    /// `redis-cli --cluster create`, and waits for `cluster_state:ok` on
    /// every node.
    ///
    /// # Panics
    ///
    /// When `redis-server` or `redis-cli` is not installed, or the cluster
    /// does not form.
    pub fn start() -> RedisCluster {
        RedisCluster::start_with_replicas(0)
    }

    /// Starts three masters with `replicas` replicas each (for failover
    /// tests), as [`start`](Self::start) does. [`ports`](Self::ports) and
    /// the stats then cover the replicas too.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn start_with_replicas(replicas: usize) -> RedisCluster {
        let dir = TempDir::new("ci-redis-cluster");
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..3 * (1 + replicas) {
            let conf_dir = cluster.dir.path().to_owned();
            let node = start_on_free_port(cluster.dir.path(), |port| {
                vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    conf_dir
                        .join(format!("nodes-{port}.conf"))
                        .to_string_lossy()
                        .into_owned(),
                    // The bus port defaults to port + 10000, which may be
                    // taken or out of range: pick a free one too.
                    "--cluster-port".into(),
                    std::iter::repeat_with(free_port)
                        .find(|&bus| bus != port)
                        .unwrap_or_default()
                        .to_string(),
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                ]
            });
            cluster.nodes.push(node);
        }

        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|(_, port)| format!("127.0.0.1:{port}")),
            )
            .arg("--cluster-replicas")
            .arg(replicas.to_string())
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output();
        let output = match output {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-cli is not installed: apt-get install redis-tools")
            }
            Err(e) => panic!("cannot run redis-cli: {e}"),
        };
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_state_ok();
        cluster
    }

    fn wait_state_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for (_, port) in &self.nodes {
            loop {
                let state = connect(*port).and_then(|mut con| {
                    redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut con)
                });
                if let Ok(info) = &state
                    && info_field(info, "cluster_state").as_deref() == Some("ok")
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster node {port} did not reach cluster_state:ok: {state:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// `redis://127.0.0.1:<port>/` of every master.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(_, port)| format!("redis://127.0.0.1:{port}/"))
            .collect()
    }

    /// The masters' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(_, port)| *port).collect()
    }

    /// Promotes a replica of the master at `port` with `CLUSTER FAILOVER`
    /// (the old master becomes its replica), and waits until every node
    /// sees the new master owning the old one's slots. Returns the new
    /// master's port.
    ///
    /// # Panics
    ///
    /// When the master has no replica in sync, or the failover does not
    /// complete in time.
    pub fn failover(&self, port: u16) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(30);
        let replica = loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut self.node_connection(port))
                .expect("INFO replication failed");
            let online = info.lines().find_map(|line| {
                let fields = line.strip_prefix("slave0:")?;
                if !fields.contains("state=online") {
                    return None;
                }
                fields
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("port="))?
                    .parse::<u16>()
                    .ok()
            });
            if let Some(replica) = online {
                break replica;
            }
            assert!(
                Instant::now() < deadline,
                "master {port} has no replica online"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let slots: Vec<(u16, u16)> = self
            .slots_seen_by(port)
            .into_iter()
            .filter(|&(_, _, owner)| owner == port)
            .map(|(start, end, _)| (start, end))
            .collect();
        assert!(!slots.is_empty(), "{port} is not a master");
        let _: () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query(&mut self.node_connection(replica))
            .expect("CLUSTER FAILOVER failed");
        for node in self.ports() {
            while !slots
                .iter()
                .all(|&(start, _)| self.owner_seen_by(node, start) == Some(replica))
            {
                assert!(
                    Instant::now() < deadline,
                    "node {node} does not see {replica} as the new master"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        replica
    }

    /// Kills the master at `port` (SIGKILL), for fault tests. It leaves
    /// [`ports`](Self::ports), [`urls`](Self::urls) and the stats, which
    /// cover the living masters; the cluster has no replica to promote, so
    /// its slots stay unserved.
    pub fn kill_master(&mut self, port: u16) {
        if let Some(i) = self.nodes.iter().position(|(_, p)| *p == port) {
            let (mut child, _) = self.nodes.remove(i);
            stop(&mut child);
        }
    }

    /// A synchronous connection to one node (not cluster-aware).
    pub fn node_connection(&self, port: u16) -> redis::Connection {
        connect(port).expect("cannot connect to a cluster node")
    }

    /// How many keys each master holds, in [`ports`](Self::ports) order.
    pub fn keys_per_node(&self) -> Vec<u64> {
        self.ports()
            .into_iter()
            .map(|port| {
                redis::cmd("DBSIZE")
                    .query(&mut self.node_connection(port))
                    .expect("DBSIZE failed")
            })
            .collect()
    }

    /// Command calls summed over every master, since the last reset.
    pub fn command_stats(&self) -> BTreeMap<String, u64> {
        let mut total = BTreeMap::new();
        for port in self.ports() {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query(&mut self.node_connection(port))
                .expect("INFO commandstats failed");
            for (command, calls) in parse_command_stats(&info) {
                *total.entry(command).or_insert(0) += calls;
            }
        }
        total
    }

    /// The store's commands summed over every master since the last reset:
    /// every command but the test support's own and the topology queries
    /// (`CLUSTER SLOTS` and the like, which cluster clients and the near
    /// cache's topology check send on their own schedule).
    pub fn data_commands(&self) -> BTreeMap<String, u64> {
        let mut stats = self.command_stats();
        stats.retain(|command, _| !is_bookkeeping(command) && !command.starts_with("cluster"));
        stats
    }

    /// The master that owns `key`'s hash slot: the one that answers for
    /// it instead of redirecting.
    ///
    /// # Panics
    ///
    /// When no master answers for it.
    pub fn port_of(&self, key: &str) -> u16 {
        self.ports()
            .into_iter()
            .find(|&port| {
                redis::cmd("EXISTS")
                    .arg(key)
                    .query::<i64>(&mut self.node_connection(port))
                    .is_ok()
            })
            .expect("no master owns the key's slot")
    }

    /// The ids of the clients connected to the master at `port` with
    /// client-side caching tracking on (flag `t` in `CLIENT LIST`).
    pub fn tracking_clients(&self, port: u16) -> Vec<i64> {
        tracking_clients(&mut self.node_connection(port))
    }

    /// Moves one empty hash slot of the master at `from` to the master at
    /// `to`, the way a resharding does (`IMPORTING`, `MIGRATING`, then
    /// `NODE` on the target, the source and the rest), and waits until
    /// every master sees the new owner. Returns the slot.
    ///
    /// # Panics
    ///
    /// When `from` has no empty slot or the masters do not agree in time.
    pub fn move_an_empty_slot(&self, from: u16, to: u16) -> u16 {
        let id = |port: u16| -> String {
            redis::cmd("CLUSTER")
                .arg("MYID")
                .query(&mut self.node_connection(port))
                .expect("CLUSTER MYID failed")
        };
        let (from_id, to_id) = (id(from), id(to));
        let mut source = self.node_connection(from);
        let slot = self
            .slots_seen_by(from)
            .into_iter()
            .filter(|&(_, _, owner)| owner == from)
            .flat_map(|(start, end, _)| start..=end)
            .find(|&slot| {
                redis::cmd("CLUSTER")
                    .arg("COUNTKEYSINSLOT")
                    .arg(slot)
                    .query::<i64>(&mut source)
                    .expect("CLUSTER COUNTKEYSINSLOT failed")
                    == 0
            })
            .expect("the source master has no empty slot");
        let setslot = |port: u16, args: &[&str]| {
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(args)
                .query(&mut self.node_connection(port))
                .expect("CLUSTER SETSLOT failed");
        };
        setslot(to, &["IMPORTING", &from_id]);
        setslot(from, &["MIGRATING", &to_id]);
        setslot(to, &["NODE", &to_id]);
        setslot(from, &["NODE", &to_id]);
        for port in self.ports() {
            if port != from && port != to {
                setslot(port, &["NODE", &to_id]);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in self.ports() {
            while self.owner_seen_by(port, slot) != Some(to) {
                assert!(
                    Instant::now() < deadline,
                    "master {port} does not see slot {slot} on {to}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        slot
    }

    /// The port of `slot`'s owner according to the master at `port`.
    fn owner_seen_by(&self, port: u16, slot: u16) -> Option<u16> {
        self.slots_seen_by(port)
            .into_iter()
            .find(|&(start, end, _)| start <= slot && slot <= end)
            .map(|(_, _, owner)| owner)
    }

    /// The slot ranges and their owners' ports according to the master at
    /// `port` (empty when it does not answer).
    fn slots_seen_by(&self, port: u16) -> Vec<(u16, u16, u16)> {
        let Ok(redis::Value::Array(entries)) = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query::<redis::Value>(&mut self.node_connection(port))
        else {
            return Vec::new();
        };
        let number = |value: Option<&redis::Value>| match value {
            Some(redis::Value::Int(n)) => u16::try_from(*n).ok(),
            _ => None,
        };
        entries
            .iter()
            .filter_map(|entry| {
                let redis::Value::Array(fields) = entry else {
                    return None;
                };
                let Some(redis::Value::Array(primary)) = fields.get(2) else {
                    return None;
                };
                Some((
                    number(fields.first())?,
                    number(fields.get(1))?,
                    number(primary.get(1))?,
                ))
            })
            .collect()
    }

    /// Zeroes every master's command stats.
    pub fn reset_stats(&self) {
        for port in self.ports() {
            let _: () = redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query(&mut self.node_connection(port))
                .expect("CONFIG RESETSTAT failed");
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (child, _) in &mut self.nodes {
            stop(child);
        }
        // `dir` is removed after this, with the node configs and logs.
    }
}

/// The ids of the clients of the server behind `connection` that have
/// client-side caching tracking on (flag `t` in `CLIENT LIST`).
fn tracking_clients(connection: &mut redis::Connection) -> Vec<i64> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(connection)
        .expect("CLIENT LIST failed");
    list.lines()
        .filter_map(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            };
            if field("flags")?.contains('t') {
                field("id")?.parse().ok()
            } else {
                None
            }
        })
        .collect()
}
