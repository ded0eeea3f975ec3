//! The production store: Redis, a single server or a Redis Cluster.
//!
//! Reads are plain `GET` / `MGET`; the conditional writes are Lua scripts
//! (sent as `EVALSHA`, loaded at connect and reloaded automatically after a
//! server restart), so each is atomic per key and a whole batch costs one
//! request. In cluster mode every request is confined to one hash slot: a
//! batch is split by slot (the `{model:pk}` hash tag keeps every version of
//! an instance in one slot), the per-slot requests run concurrently, and the
//! results are put back in request order.
//!
//! Every request is bounded by the store's response timeout, the wait for a
//! (re)connection included, so an unreachable or stalled server costs a
//! read at most that long before the cache falls back to its loaders.

use std::borrow::Cow;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::{Cmd, FromRedisValue, RedisError, Script, ScriptInvocation};

use super::{
    Changed, CompareAndSet, InProcess, IndexPage, IndexQuery, IndexStore, IndexUpdate, Store,
    StoreFuture, WARM_SUFFIX,
};
use crate::error::{ConnectError, StoreError};
use keys::Keys;

mod index;
mod keys;
mod near;

pub use near::{NearCache, NearCacheStats};

/// Default time to wait for a reply before failing the request.
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// Default time to wait for a TCP connection (and handshake) to a server.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default number of reconnection attempts after a lost connection.
const DEFAULT_RETRIES: usize = 3;
/// The most keys sent in one request; larger batches are split into requests
/// sent concurrently, so no single script blocks the server for long.
const MAX_KEYS_PER_REQUEST: usize = 1024;
/// TTLs are clamped to this (about a century), below Redis' own limit.
const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// For each key: set it to `ARGV[1]` with a TTL of `ARGV[3]` ms if it is
/// absent or holds exactly `ARGV[2]`, and reply nil; otherwise reply what it
/// holds. (`false` in a Lua array becomes a nil reply without ending it.)
static SET_IF_ABSENT_OR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {}
for i, key in ipairs(KEYS) do
  local held = redis.call('GET', key)
  if held == false or held == ARGV[2] then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[3])
    out[i] = false
  else
    out[i] = held
  end
end
return out
",
    )
});

/// For key `i`: if it holds its expected value, set it to its value with
/// its TTL and reply 1; otherwise reply 0. The arguments name each distinct
/// expected value and TTL once (a fill has one lease and at most two TTLs):
/// `E`, the `E` expected values, `T`, the `T` TTLs (ms), the plan (per key,
/// the 0-based index of its expected value and of its TTL, two big-endian
/// bytes each), then one value per key. A key repeated in the batch is
/// compared with what the batch wrote to it last, as if each op ran alone
/// in order.
///
/// The keys are read with one `MGET` rather than a `GET` each: every
/// `redis.call` costs about a microsecond of server time, and with one
/// value argument per key (not three) the script's server time for 100
/// keys fell from ~230 to ~180 us (BENCHMARKS.md).
static COMPARE_AND_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local e = tonumber(ARGV[1])
local t = tonumber(ARGV[e + 2])
local plan = ARGV[e + t + 3]
local values = e + t + 3
local held = redis.call('MGET', unpack(KEYS))
local written = {}
local out = {}
for i, key in ipairs(KEYS) do
  local e1, e2, t1, t2 = string.byte(plan, 4 * i - 3, 4 * i)
  local now = written[key]
  if now == nil then now = held[i] end
  if now == ARGV[2 + e1 * 256 + e2] then
    written[key] = ARGV[values + i]
    redis.call('SET', key, written[key], 'PX', ARGV[e + 3 + t1 * 256 + t2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
",
    )
});

/// For each key: reply what it holds (nil if absent) and set it to `ARGV[1]`
/// with a TTL of `ARGV[2]` ms (`SET ... GET`: one call per key). A script,
/// not a pipeline, so that a batch stays one command however many keys it
/// has.
static SWAP_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('SET', key, ARGV[1], 'PX', ARGV[2], 'GET')
end
return out
",
    )
});

fn scripts() -> [&'static Script; 3] {
    [&SET_IF_ABSENT_OR, &COMPARE_AND_SET, &SWAP_MANY]
}

/// The connection kinds behind a [`RedisStore`]. Both are multiplexed and
/// cheap to clone; clones share the underlying connections.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    #[cfg(feature = "cluster")]
    Cluster(Arc<LazyCluster>),
}

/// A cluster connection made on first use. Once made, the cluster
/// connection reconnects to its nodes by itself; until then, every request
/// tries to make it (so a store created while the cluster was down starts
/// working when the cluster comes up).
#[cfg(feature = "cluster")]
struct LazyCluster {
    client: redis::cluster::ClusterClient,
    connection: tokio::sync::OnceCell<redis::cluster_async::ClusterConnection>,
}

#[cfg(feature = "cluster")]
impl LazyCluster {
    async fn get(&self) -> Result<redis::cluster_async::ClusterConnection, RedisError> {
        self.connection
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}

/// The Redis store: a single server through a shared, self-reconnecting
/// [`ConnectionManager`], or (feature `cluster`) a Redis Cluster.
///
/// Every [`Store`] primitive is one request per batch (one per hash slot in
/// cluster mode) and atomic per key: the conditional writes are Lua scripts.
/// Values are binary-safe and TTLs are set in milliseconds. Failures map to
/// [`StoreError::Unavailable`] (connection refused or lost, timeouts, cluster
/// down) or [`StoreError::Protocol`] (an unexpected reply); the cache serves
/// from the database meanwhile.
///
/// Cloning is cheap and shares the connection.
///
/// A store also keeps a second connection (one per primary in a cluster),
/// made in the background, with `CLIENT TRACKING` on (RESP3, Redis 6 or
/// later): a reader waiting for a lease another process holds reads again
/// when Redis pushes the key's change, rather than polling
/// ([`Store::watch`]). With a [near cache](RedisStoreBuilder::near_cache)
/// it is the near cache's; without one it reads nothing but the keys
/// waited on, and [`lease_wait_tracking(false)`](RedisStoreBuilder::lease_wait_tracking)
/// goes without it. While it is down, waiters poll; a server that refuses
/// tracking (before Redis 6, or behind a proxy without it) is not asked
/// again, and its waiters keep polling.
///
/// ```no_run
/// use std::time::Duration;
///
/// use cached_instances::{Cache, RedisStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // With the defaults (500 ms response timeout, 1 s connect timeout):
/// let store = RedisStore::connect("redis://127.0.0.1:6379/").await?;
///
/// // Or tuned:
/// let store = RedisStore::builder("redis://cache.internal:6379/0")
///     .response_timeout(Duration::from_millis(200))
///     .connect_timeout(Duration::from_millis(500))
///     .connect()
///     .await?;
///
/// let cache = Cache::builder().store(store).build()?;
/// # let _ = cache;
/// # Ok(())
/// # }
/// ```
///
/// [`connect`](RedisStoreBuilder::connect) tells a refused port, rejected
/// credentials and a missing database apart ([`ConnectError`]), after one
/// attempt rather than after the reconnection retries:
///
/// ```no_run
/// use cached_instances::{ConnectError, RedisStore, StoreError};
///
/// # async fn demo() {
/// match RedisStore::connect("redis://:secret@127.0.0.1:6379/3").await {
///     Ok(store) => { /* ... */ }
///     Err(StoreError::Connect(ConnectError::Auth { addr, .. })) => {
///         eprintln!("check the password for {addr}");
///     }
///     Err(other) => eprintln!("{other}"),
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    /// The bound of every request, from sending to reply, including any
    /// wait for a connection (the builder's response timeout).
    request_timeout: Duration,
    /// Put before every key (the builder's key prefix; empty: none).
    prefix: Arc<str>,
    /// The near cache, when configured.
    near: Option<Arc<near::Near>>,
    /// Without a near cache: a tracking connection for lease waits only
    /// (see [`watch`](Store::watch)), whose tier stays empty.
    lease_watch: Option<Arc<near::Near>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URLs may carry passwords: they are not shown.
        let mode = match self.connection {
            Connection::Single(_) => "single",
            #[cfg(feature = "cluster")]
            Connection::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("mode", &mode)
            .field("key_prefix", &self.prefix)
            .field("near_cache", &self.near.is_some())
            .finish_non_exhaustive()
    }
}

/// Configures and connects a [`RedisStore`]; see [`RedisStore::builder`].
#[derive(Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    urls: Vec<String>,
    cluster: bool,
    response_timeout: Duration,
    connect_timeout: Duration,
    retries: usize,
    key_prefix: String,
    near: Option<NearCache>,
    lease_wait_tracking: bool,
}

impl std::fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("nodes", &self.urls.len())
            .field("cluster", &self.cluster)
            .field("response_timeout", &self.response_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retries", &self.retries)
            .field("key_prefix", &self.key_prefix)
            .field("near_cache", &self.near)
            .field("lease_wait_tracking", &self.lease_wait_tracking)
            .finish()
    }
}

impl RedisStoreBuilder {
    fn new(urls: Vec<String>, cluster: bool) -> Self {
        RedisStoreBuilder {
            urls,
            cluster,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            key_prefix: String::new(),
            near: None,
            lease_wait_tracking: true,
        }
    }

    /// Whether a store without a near cache keeps its second connection,
    /// with `CLIENT TRACKING` on, for lease waits (see [`RedisStore`]).
    /// Default: `true`. With `false` the store makes one connection (one
    /// per primary in a cluster) fewer, and a reader waiting on a lease
    /// another process holds polls it (1 ms, then doubling up to 50 ms)
    /// rather than reading again when its fill is pushed. A store with a
    /// [near cache](Self::near_cache) waits through the near cache's
    /// connection either way.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cached_instances::StoreError> {
    /// use cached_instances::RedisStore;
    ///
    /// // A server with few connections to spare.
    /// let store = RedisStore::builder("redis://cache.internal:6379/")
    ///     .lease_wait_tracking(false)
    ///     .connect()
    ///     .await?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    pub fn lease_wait_tracking(mut self, on: bool) -> Self {
        self.lease_wait_tracking = on;
        self
    }

    /// Puts an in-process [`NearCache`] in front of Redis: hits are served
    /// from memory with no round trip, kept coherent by Redis'
    /// invalidation pushes. On a cluster, each primary gets its own
    /// tracking connection, and the tier is in use only while every
    /// primary is tracked and the slot map holds.
    pub fn near_cache(mut self, near: NearCache) -> Self {
        self.near = Some(near);
        self
    }

    /// Puts `prefix` before every key the store reads or writes (entries,
    /// tombstones, leases and query indexes alike), so that two
    /// applications sharing one Redis (or one database of it) cannot read
    /// or invalidate each other's entries of a same-named model. Default:
    /// none. Usually ends with a separator, as in `"shop:"`.
    ///
    /// The prefix may not contain `{` or `}`: in a cluster, the hash tag of
    /// each key (`{model:pk}`) must stay the first braces of the key so that
    /// an instance's keys share a hash slot. [`connect`](Self::connect)
    /// rejects such a prefix with [`ConnectError::Config`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cached_instances::StoreError> {
    /// use cached_instances::RedisStore;
    ///
    /// let store = RedisStore::builder("redis://cache.internal:6379/")
    ///     .key_prefix("shop:")
    ///     .connect()
    ///     .await?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// How long a request waits for its reply before failing with
    /// [`StoreError::Unavailable`], any wait for a connection to be made or
    /// remade included: the most a read spends on an unreachable or stalled
    /// server before the cache falls back to its loaders. Default: 500 ms.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long a connection attempt waits before failing. Default: 1 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many times a lost connection is retried (with exponential
    /// backoff) before requests fail; in cluster mode, how many times a
    /// request is retried (reconnects, redirections). Default: 3.
    pub fn retries(mut self, retries: usize) -> Self {
        self.retries = retries;
        self
    }

    /// Connects, and loads the store's scripts on every server.
    ///
    /// Fails when no server answers: to start while Redis may be down, use
    /// [`connect_lazy`](Self::connect_lazy).
    ///
    /// # Errors
    ///
    /// [`StoreError::Connect`], with the reason as a [`ConnectError`]:
    /// [`Refused`](ConnectError::Refused) when nothing listens at the
    /// address, [`Auth`](ConnectError::Auth) when the server rejects (or
    /// wants) a password, [`NoSuchDatabase`](ConnectError::NoSuchDatabase)
    /// when the URL's database index is out of the server's range,
    /// [`Timeout`](ConnectError::Timeout) when it does not answer in time,
    /// [`Config`](ConnectError::Config) for an invalid URL or key prefix.
    /// Each is reported after one connection attempt (the reconnection
    /// retries are for connections lost later).
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let addr = self.addr();
        let store = self.clone().connect_lazy()?;
        // Connected here rather than by the first request, and the scripts
        // loaded up front so the first call of each is one EVALSHA; after a
        // server restart `invoke_async` reloads them on NOSCRIPT.
        match &store.connection {
            Connection::Single(manager) => {
                // One plain connection first (dropped after): the manager
                // retries a failed connection with backoff, which would turn
                // every reason into a timeout; this attempt fails with the
                // reason (refused, AUTH or SELECT rejected in the handshake).
                self.connect_step(&addr, async {
                    self.client()?
                        .get_multiplexed_async_connection_with_config(
                            &redis::AsyncConnectionConfig::new()
                                .set_connection_timeout(Some(self.connect_timeout))
                                .set_response_timeout(Some(self.response_timeout)),
                        )
                        .await
                })
                .await?;
                // Through the manager, which connects now; a server that
                // wants a password the URL lacks says NOAUTH here.
                for script in scripts() {
                    self.connect_step(&addr, script.load_async(&mut manager.clone()))
                        .await?;
                }
            }
            #[cfg(feature = "cluster")]
            Connection::Cluster(cluster) => {
                for script in scripts() {
                    self.connect_step(&addr, async {
                        script.load_async(&mut cluster.get().await?).await
                    })
                    .await?;
                }
            }
        }
        if let Some(near) = &store.near {
            near.tracking().await?;
        }
        Ok(store)
    }

    /// One step of [`connect`](Self::connect), bounded by the connect and
    /// response timeouts together, its failure sorted by reason.
    async fn connect_step<T>(
        &self,
        addr: &str,
        step: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, ConnectError> {
        let timeout = self.connect_timeout + self.response_timeout;
        match tokio::time::timeout(timeout, step).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(connect_error(addr, self.db(), timeout, error)),
            Err(_elapsed) => Err(ConnectError::Timeout {
                addr: addr.to_owned(),
                timeout,
            }),
        }
    }

    /// The servers, `host:port` (no credentials), for error messages.
    fn addr(&self) -> String {
        self.urls
            .iter()
            .map(
                |url| match redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
                    Ok(info) => info.addr().to_string(),
                    Err(_) => "(invalid URL)".to_owned(),
                },
            )
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The database index of the (first) URL.
    fn db(&self) -> i64 {
        self.urls
            .first()
            .and_then(|url| redis::IntoConnectionInfo::into_connection_info(url.as_str()).ok())
            .map_or(0, |info| info.redis_settings().db())
    }

    fn client(&self) -> Result<redis::Client, RedisError> {
        redis::Client::open(self.urls.first().map(String::as_str).unwrap_or_default())
    }

    /// Creates the store without connecting: the first request connects, and
    /// a lost connection is remade by the requests that follow. Use it when
    /// the application must start while Redis is down: requests fail with
    /// [`StoreError::Unavailable`] (each within the response timeout) until
    /// a server answers, and the cache serves from its loaders meanwhile.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use cached_instances::{Cache, RedisStore};
    ///
    /// let store = RedisStore::builder("redis://cache.internal:6379/").connect_lazy()?;
    /// let cache = Cache::builder().store(store).build()?;
    /// # let _ = cache;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when a URL is invalid, or when called
    /// outside a Tokio runtime (the connection's tasks run on it).
    pub fn connect_lazy(self) -> Result<RedisStore, StoreError> {
        if self.key_prefix.contains(['{', '}']) {
            return Err(config_error(format!(
                "the key prefix {:?} contains a brace, which would move the keys' cluster hash tags",
                self.key_prefix
            )));
        }
        #[cfg(feature = "cluster")]
        let connection = if self.cluster {
            self.lazy_cluster()?
        } else {
            self.lazy_single()?
        };
        #[cfg(not(feature = "cluster"))]
        let connection = self.lazy_single()?;
        let tracker = |role, config: &NearCache| {
            near::Near::start(
                role,
                config,
                near::Backend::new(&self.urls, self.cluster)?,
                self.connect_timeout,
                self.response_timeout,
            )
        };
        let (near, lease_watch) = match &self.near {
            Some(config) => (Some(tracker(near::Role::NearCache, config)?), None),
            // Nothing is ever admitted to this one's tier: its reads are
            // the watches' own (`Near::watch_reading`).
            None if self.lease_wait_tracking => (
                None,
                Some(tracker(
                    near::Role::LeaseWaits,
                    &NearCache::new().max_bytes(0),
                )?),
            ),
            None => (None, None),
        };
        Ok(RedisStore {
            connection,
            request_timeout: self.response_timeout,
            prefix: self.key_prefix.as_str().into(),
            near,
            lease_watch,
        })
    }

    fn lazy_single(&self) -> Result<Connection, StoreError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(config_error(
                "a RedisStore must be created within a Tokio runtime".to_owned(),
            ));
        }
        let client = self.client().map_err(|e| config_error(e.to_string()))?;
        // No response timeout here: `bounded` already bounds every request,
        // the reply included, and a second timer per request cost about 3%
        // of a hit's throughput (BENCHMARKS.md).
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(self.connect_timeout))
            .set_number_of_retries(self.retries);
        // The manager connects on first use and reconnects in the
        // background after an I/O error.
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| config_error(e.to_string()))?;
        Ok(Connection::Single(manager))
    }

    #[cfg(feature = "cluster")]
    fn lazy_cluster(&self) -> Result<Connection, StoreError> {
        let client =
            redis::cluster::ClusterClientBuilder::new(self.urls.iter().map(String::as_str))
                .response_timeout(self.response_timeout)
                .connection_timeout(self.connect_timeout)
                .retries(u32::try_from(self.retries).unwrap_or(u32::MAX))
                .build()
                .map_err(|e| config_error(e.to_string()))?;
        Ok(Connection::Cluster(Arc::new(LazyCluster {
            client,
            connection: tokio::sync::OnceCell::new(),
        })))
    }
}

impl RedisStore {
    /// Connects to the Redis server at `url` (`redis://[:password@]host[:port][/db]`)
    /// with the default timeouts.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the URL is invalid or the server
    /// cannot be reached in time.
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        Self::builder(url).connect().await
    }

    /// Configures a connection to the Redis server at `url`.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(vec![url.into()], false)
    }

    /// Connects to the Redis Cluster reachable through any of `urls` (the
    /// rest of the cluster is discovered) with the default timeouts.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cached_instances::StoreError> {
    /// use cached_instances::RedisStore;
    ///
    /// let store = RedisStore::connect_cluster([
    ///     "redis://10.0.0.1:6379/",
    ///     "redis://10.0.0.2:6379/",
    /// ])
    /// .await?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when a URL is invalid, `urls` is empty or
    /// no node can be reached in time.
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub async fn connect_cluster<I, U>(urls: I) -> Result<RedisStore, StoreError>
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        Self::cluster_builder(urls).connect().await
    }

    /// Configures a connection to the Redis Cluster reachable through `urls`.
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub fn cluster_builder<I, U>(urls: I) -> RedisStoreBuilder
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        RedisStoreBuilder::new(urls.into_iter().map(Into::into).collect(), true)
    }

    /// `key` under the store's key prefix.
    fn key<'k>(&self, key: &'k str) -> Cow<'k, str> {
        keys::prefixed(&self.prefix, key)
    }

    /// `keys` under the store's key prefix (borrowed when there is none).
    fn keys<'k>(&self, keys: &'k [String]) -> Cow<'k, [String]> {
        if self.prefix.is_empty() {
            Cow::Borrowed(keys)
        } else {
            keys.iter().map(|key| self.key(key).into_owned()).collect()
        }
    }

    /// What the near cache holds and has done; `None` without one.
    #[must_use]
    pub fn near_cache_stats(&self) -> Option<NearCacheStats> {
        self.near.as_ref().map(|near| near.stats())
    }

    /// The groups of [`groups`](Self::groups) for `keys`, spelled out only
    /// where the slot needs it (a cluster).
    fn groups_of(&self, keys: Keys<'_>) -> Vec<Vec<usize>> {
        match self.connection {
            // One server: every key goes to it, whatever it is spelled.
            Connection::Single(_) => self.groups((0..keys.len()).map(|_| "")),
            #[cfg(feature = "cluster")]
            Connection::Cluster(_) => {
                let full: Vec<Cow<'_, str>> = (0..keys.len()).map(|i| keys.full(i)).collect();
                self.groups(full.iter().map(|key| &**key))
            }
        }
    }

    /// Reads `keys` from Redis, one MGET per group.
    async fn mget(&self, keys: Keys<'_>) -> Result<Vec<Option<Bytes>>, StoreError> {
        let groups = self.groups_of(keys);
        self.per_group(keys.len(), &groups, |group| async move {
            let mut cmd = Cmd::with_capacity(group.len() + 1, keys.size_of(group) + 4);
            cmd.arg("MGET");
            for &i in group {
                cmd.arg(keys.arg(i));
            }
            self.query::<Vec<Option<Bytes>>>(&cmd).await
        })
        .await
    }

    /// Reads `keys` (prefixed) through the near cache: its hits, then one
    /// read of the rest over the tracking connection (or plainly while it
    /// is down).
    async fn get_many_near(
        &self,
        near: &near::Near,
        keys: &[String],
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        let mut out: Vec<Option<Bytes>> = Vec::with_capacity(keys.len());
        let mut missing: Vec<usize> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let hit = near.get(key);
            if hit.is_none() {
                missing.push(i);
            }
            out.push(hit);
        }
        near.missed(missing.len());
        for chunk in missing.chunks(MAX_KEYS_PER_REQUEST) {
            let chunk_keys: Vec<&str> = chunk.iter().map(|&i| keys[i].as_str()).collect();
            let values = match near.read_through(&chunk_keys).await {
                Some(values) => values,
                None => {
                    let owned: Vec<String> = chunk_keys.iter().map(|&k| k.to_owned()).collect();
                    self.mget(Keys::new("", &owned)).await?
                }
            };
            for (&i, value) in chunk.iter().zip(values) {
                out[i] = value;
            }
        }
        Ok(out)
    }

    /// [`Store::set_if_absent_or`] on `keys` (prefixed) in the common case
    /// without a script: one `SET key value NX PX ttl GET` per key,
    /// pipelined (one round trip per group), which sets an absent key and
    /// replies what any other key holds. Only the keys found holding
    /// `replaceable` (tombstones, after a write) take the script, in a
    /// second round trip; each step is atomic per key, so the outcome is one
    /// the script alone could give.
    async fn lease(
        &self,
        keys: Keys<'_>,
        value: &[u8],
        replaceable: &[u8],
        ttl: Duration,
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        let ttl = ttl_ms(ttl);
        let groups = self.groups_of(keys);
        let mut held = self
            .per_group(keys.len(), &groups, |group| async move {
                let pipe = set_nx_pipeline(keys, group, value, ttl, true);
                self.pipeline::<Vec<Option<Bytes>>>(&pipe).await
            })
            .await?;
        let replace: Vec<usize> = (0..keys.len())
            .filter(|&i| held[i].as_deref() == Some(replaceable))
            .collect();
        if replace.is_empty() {
            return Ok(held);
        }
        // After a write: rare, so these keys are spelled out.
        let replace_keys: Vec<String> =
            replace.iter().map(|&i| keys.full(i).into_owned()).collect();
        let groups = self.groups(replace_keys.iter().map(String::as_str));
        let replace_keys = &replace_keys;
        let replaced = self
            .per_group(replace.len(), &groups, |group| async move {
                let mut invocation = SET_IF_ABSENT_OR.prepare_invoke();
                for &j in group {
                    invocation.key(&replace_keys[j]);
                }
                invocation.arg(value).arg(replaceable).arg(ttl);
                self.invoke::<Vec<Option<Bytes>>>(&invocation).await
            })
            .await?;
        for (&i, outcome) in replace.iter().zip(replaced) {
            held[i] = outcome;
        }
        Ok(held)
    }

    /// This store's own writes to `keys` (prefixed): evicted from the near
    /// cache before the write returns, so this process reads what it wrote.
    fn evict_own<'k>(&self, keys: impl Iterator<Item = &'k str>) {
        if let Some(near) = &self.near {
            for key in keys {
                near.evict(key);
            }
        }
    }

    /// [`evict_own`](Self::evict_own) of the keys a conditional write
    /// `changed` (spelled out only when there is a near cache to evict
    /// from): those it reports written, or all of them when it failed and
    /// cannot tell. A key it left as it was needs no eviction, and evicting
    /// it anyway would wake the lease waiters watching it for nothing
    /// (`Near::watch`): every reader of a herd tries the lease.
    fn evict_changed<T>(
        &self,
        keys: Keys<'_>,
        outcome: &Result<Vec<T>, StoreError>,
        changed: impl Fn(&T) -> bool,
    ) {
        if self.near.is_none() {
            return;
        }
        let full: Vec<Cow<'_, str>> = match outcome {
            Ok(outcomes) => (0..keys.len())
                .filter(|&i| outcomes.get(i).is_none_or(&changed))
                .map(|i| keys.full(i))
                .collect(),
            Err(_) => (0..keys.len()).map(|i| keys.full(i)).collect(),
        };
        self.evict_own(full.iter().map(|key| &**key));
    }

    /// Sends one pipeline (one round trip).
    async fn pipeline<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        self.bounded(async {
            match &self.connection {
                Connection::Single(c) => pipe.query_async(&mut c.clone()).await,
                #[cfg(feature = "cluster")]
                Connection::Cluster(c) => pipe.query_async(&mut c.get().await?).await,
            }
        })
        .await
    }

    /// Sends one command.
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        self.bounded(async {
            match &self.connection {
                Connection::Single(c) => cmd.query_async(&mut c.clone()).await,
                #[cfg(feature = "cluster")]
                Connection::Cluster(c) => cmd.query_async(&mut c.get().await?).await,
            }
        })
        .await
    }

    /// Runs one script call (EVALSHA, loading the script on NOSCRIPT).
    async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.bounded(async {
            match &self.connection {
                Connection::Single(c) => invocation.invoke_async(&mut c.clone()).await,
                #[cfg(feature = "cluster")]
                Connection::Cluster(c) => invocation.invoke_async(&mut c.get().await?).await,
            }
        })
        .await
    }

    /// Sends `cmd`, an `EVALSHA` of `script`; on `NOSCRIPT` (the server
    /// lost its scripts: a restart, `SCRIPT FLUSH`) loads the script and
    /// sends it again, as `ScriptInvocation::invoke_async` does.
    async fn evalsha<T: FromRedisValue>(
        &self,
        script: &Script,
        cmd: &Cmd,
    ) -> Result<T, StoreError> {
        async fn on<T: FromRedisValue>(
            con: &mut impl redis::aio::ConnectionLike,
            script: &Script,
            cmd: &Cmd,
        ) -> Result<T, RedisError> {
            match cmd.query_async(con).await {
                Err(error) if error.code() == Some("NOSCRIPT") => {
                    script.load_async(con).await?;
                    cmd.query_async(con).await
                }
                other => other,
            }
        }
        self.bounded(async {
            match &self.connection {
                Connection::Single(c) => on(&mut c.clone(), script, cmd).await,
                #[cfg(feature = "cluster")]
                Connection::Cluster(c) => on(&mut c.get().await?, script, cmd).await,
            }
        })
        .await
    }

    /// Bounds one request by the response timeout. The connection's own
    /// timeout only covers a command on an open connection; this one also
    /// covers waiting for a connection to be made or remade (with its
    /// retries and backoff), which would otherwise stall a read for as long
    /// as reconnecting takes.
    async fn bounded<T>(
        &self,
        request: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.request_timeout, request).await {
            Ok(reply) => reply.map_err(store_error),
            Err(_) => Err(StoreError::Unavailable(
                format!("no reply from Redis within {:?}", self.request_timeout).into(),
            )),
        }
    }

    /// The indexes of `keys` grouped so that each group can be one request:
    /// by hash slot in cluster mode (in first-seen order), then in chunks of
    /// at most [`MAX_KEYS_PER_REQUEST`].
    fn groups<'k>(&self, keys: impl Iterator<Item = &'k str>) -> Vec<Vec<usize>> {
        let by_slot: Vec<Vec<usize>> = match self.connection {
            Connection::Single(_) => vec![keys.enumerate().map(|(i, _)| i).collect()],
            #[cfg(feature = "cluster")]
            Connection::Cluster(_) => {
                use redis::cluster_routing::Slot;
                let mut order: Vec<Vec<usize>> = Vec::new();
                let mut index: std::collections::HashMap<Slot, usize> =
                    std::collections::HashMap::new();
                for (i, key) in keys.enumerate() {
                    let group = *index.entry(Slot::for_key(key)).or_insert_with(|| {
                        order.push(Vec::new());
                        order.len() - 1
                    });
                    order[group].push(i);
                }
                order
            }
        };
        by_slot
            .into_iter()
            .flat_map(|group| {
                if group.len() <= MAX_KEYS_PER_REQUEST {
                    vec![group]
                } else {
                    group
                        .chunks(MAX_KEYS_PER_REQUEST)
                        .map(<[usize]>::to_vec)
                        .collect()
                }
            })
            .filter(|group| !group.is_empty())
            .collect()
    }

    /// Runs one request per group concurrently; each yields one result per
    /// index of its group. Returns the results in index order.
    async fn per_group<'g, T, F, Fut>(
        &self,
        len: usize,
        groups: &'g [Vec<usize>],
        request: F,
    ) -> Result<Vec<T>, StoreError>
    where
        F: Fn(&'g [usize]) -> Fut,
        Fut: Future<Output = Result<Vec<T>, StoreError>>,
    {
        let replies = match groups {
            [] => return Ok(Vec::new()),
            [group] if group.len() == len && group.iter().enumerate().all(|(i, &j)| i == j) => {
                // One request in key order: no reassembly.
                let reply = request(group).await?;
                return if reply.len() == len {
                    Ok(reply)
                } else {
                    Err(reply_length(len, reply.len()))
                };
            }
            [group] => vec![request(group).await?],
            _ => futures_util::future::try_join_all(groups.iter().map(|g| request(g))).await?,
        };
        let mut out: Vec<Option<T>> = std::iter::repeat_with(|| None).take(len).collect();
        for (group, reply) in groups.iter().zip(replies) {
            if reply.len() != group.len() {
                return Err(reply_length(group.len(), reply.len()));
            }
            for (&i, value) in group.iter().zip(reply) {
                out[i] = Some(value);
            }
        }
        out.into_iter()
            .map(|value| value.ok_or_else(|| StoreError::Protocol("a key got no reply".to_owned())))
            .collect()
    }
}

/// Distinct values in first-seen order, each named by its index.
struct Distinct<T> {
    values: Vec<T>,
    index: std::collections::HashMap<T, usize>,
}

impl<T> Default for Distinct<T> {
    fn default() -> Self {
        Distinct {
            values: Vec::new(),
            index: std::collections::HashMap::new(),
        }
    }
}

impl<T: std::hash::Hash + Eq + Copy> Distinct<T> {
    /// The index of `value`, big-endian, added if new. A group holds at
    /// most [`MAX_KEYS_PER_REQUEST`] ops, so an index fits two bytes.
    fn index_of(&mut self, value: T) -> [u8; 2] {
        // A fill repeats one lease and a TTL or two: the last value added
        // usually matches without hashing.
        let i = match self.values.last() {
            Some(last) if *last == value => self.values.len() - 1,
            _ => *self.index.entry(value).or_insert_with(|| {
                self.values.push(value);
                self.values.len() - 1
            }),
        };
        u16::try_from(i).unwrap_or(u16::MAX).to_be_bytes()
    }
}

/// The [`COMPARE_AND_SET`] call for the ops at `group` (their keys
/// prefixed in `keys`): each distinct expected value and TTL sent once.
///
/// An `EVALSHA` built here rather than through a `ScriptInvocation`, which
/// keeps each argument in a buffer of its own and copies them all into the
/// command when sent: a fill of 100 entries copies its values once less.
fn compare_and_set_cmd(ops: &[CompareAndSet], keys: &[Cow<'_, str>], group: &[usize]) -> Cmd {
    let mut expected = Distinct::default();
    let mut ttls = Distinct::default();
    let mut plan = Vec::with_capacity(4 * group.len());
    for &i in group {
        plan.extend(expected.index_of(&ops[i].expected[..]));
        plan.extend(ttls.index_of(ttl_ms(ops[i].ttl)));
    }
    let (expected, ttls) = (expected.values, ttls.values);
    let bytes: usize = group
        .iter()
        .map(|&i| keys[i].len() + ops[i].value.len())
        .sum::<usize>()
        + expected.iter().map(|value| value.len()).sum::<usize>()
        + plan.len()
        + 64;
    let mut cmd = Cmd::with_capacity(6 + expected.len() + ttls.len() + 2 * group.len(), bytes);
    cmd.arg("EVALSHA")
        .arg(COMPARE_AND_SET.get_hash())
        .arg(group.len());
    for &i in group {
        cmd.arg(&*keys[i]);
    }
    cmd.arg(expected.len());
    for value in &expected {
        cmd.arg(*value);
    }
    cmd.arg(ttls.len());
    for ttl in &ttls {
        cmd.arg(*ttl);
    }
    cmd.arg(plan);
    for &i in group {
        cmd.arg(&ops[i].value[..]);
    }
    cmd
}

/// One `SET key value NX PX ttl` per key of `group` (`ttl` in ms), with
/// `GET` when the caller wants what a key it did not set holds.
fn set_nx_pipeline(
    keys: Keys<'_>,
    group: &[usize],
    value: &[u8],
    ttl: u64,
    get: bool,
) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for &i in group {
        let cmd = pipe
            .cmd("SET")
            .arg(keys.arg(i))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl);
        if get {
            cmd.arg("GET");
        }
    }
    pipe
}

/// A TTL in whole milliseconds for `PX`: rounded up, at least 1 (`PX 0` is
/// an error), at most about a century.
fn ttl_ms(ttl: Duration) -> u64 {
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).clamp(1, MAX_TTL_MS)
}

fn config_error(reason: String) -> StoreError {
    StoreError::Connect(ConnectError::Config { reason })
}

/// Sorts a failure to connect by its reason.
fn connect_error(addr: &str, db: i64, timeout: Duration, error: RedisError) -> ConnectError {
    let addr = addr.to_owned();
    let detail = error.detail().unwrap_or_default();
    if error.is_connection_refusal() {
        ConnectError::Refused {
            addr,
            source: Box::new(error),
        }
    } else if error.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS"))
    {
        ConnectError::Auth {
            addr,
            source: Box::new(error),
        }
    } else if error.to_string().contains("switch database") || detail.contains("DB index") {
        ConnectError::NoSuchDatabase {
            addr,
            db,
            source: Box::new(error),
        }
    } else if error.is_timeout() {
        ConnectError::Timeout { addr, timeout }
    } else if error.kind() == redis::ErrorKind::InvalidClientConfig {
        ConnectError::Config {
            reason: error.to_string(),
        }
    } else {
        ConnectError::Other {
            addr,
            source: Box::new(error),
        }
    }
}

fn reply_length(expected: usize, got: usize) -> StoreError {
    StoreError::Protocol(format!("expected {expected} replies from Redis, got {got}"))
}

/// Sorts a Redis error into "cannot reach the store" and "the store said
/// something unexpected".
fn store_error(error: RedisError) -> StoreError {
    use redis::{ErrorKind, ServerErrorKind};
    let unavailable = error.is_io_error()
        || error.is_timeout()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_cluster_error()
        || matches!(
            error.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::AuthenticationFailed
                | ErrorKind::InvalidClientConfig
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                )
        )
        // A long-running script elsewhere: the server is busy, not wrong.
        || error.code() == Some("BUSY");
    if unavailable {
        StoreError::Unavailable(Box::new(error))
    } else {
        StoreError::Protocol(error.to_string())
    }
}

impl Store for RedisStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        Box::pin(async move {
            let key = self.key(key);
            if let Some(near) = &self.near {
                if let Some(value) = near.get(&key) {
                    return Ok(Some(value));
                }
                near.missed(1);
                if let Some(mut values) = near.read_through(&[&key]).await {
                    return Ok(values.pop().flatten());
                }
            }
            self.query(redis::cmd("GET").arg(&*key)).await
        })
    }

    /// The near tier's copy of the key, when it has one: what
    /// [`get`](Store::get) serves first. Anything else (no near cache, a key
    /// not in the tier, tracking down and the tier empty) is
    /// [`InProcess::Unknown`]: the tier holds entries only, never absence
    /// or a marker, so only Redis can say those.
    fn get_in_process(&self, key: &str) -> InProcess {
        let Some(near) = &self.near else {
            return InProcess::Unknown;
        };
        match near.get(&self.key(key)) {
            Some(bytes) => InProcess::Holds(bytes),
            None => InProcess::Unknown,
        }
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        Box::pin(async move {
            match &self.near {
                Some(near) => self.get_many_near(near, &self.keys(keys)).await,
                None => self.mget(Keys::new(&self.prefix, keys)).await,
            }
        })
    }

    fn set_if_absent_or<'a>(
        &'a self,
        keys: &'a [String],
        value: &'a [u8],
        replaceable: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        Box::pin(async move {
            let keys = Keys::new(&self.prefix, keys);
            let held = self.lease(keys, value, replaceable, ttl).await;
            // A key is set where its reply is `None`.
            self.evict_changed(keys, &held, Option::is_none);
            held
        })
    }

    /// On a single server, one `MSETNX` per request's share of the batch:
    /// all or none, with no TTL (see the trait's docs; Redis 8.4's `MSETEX`
    /// would set one, 7.x has none). On a cluster, whose keys of several
    /// slots no one command can set, one `SET NX PX` per key, pipelined per
    /// node: key by key, with the TTL.
    fn set_if_absent<'a>(
        &'a self,
        keys: &'a [String],
        value: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<bool>> {
        Box::pin(async move {
            let keys = Keys::new(&self.prefix, keys);
            let groups = self.groups_of(keys);
            let ttl = ttl_ms(ttl);
            let single = matches!(self.connection, Connection::Single(_));
            let set = self
                .per_group(keys.len(), &groups, |group| async move {
                    if single {
                        let mut cmd = Cmd::with_capacity(
                            2 * group.len() + 1,
                            keys.size_of(group) + group.len() * value.len() + 6,
                        );
                        cmd.arg("MSETNX");
                        for &i in group {
                            cmd.arg(keys.arg(i)).arg(value);
                        }
                        let set = self.query::<i64>(&cmd).await? == 1;
                        Ok(vec![set; group.len()])
                    } else {
                        let pipe = set_nx_pipeline(keys, group, value, ttl, false);
                        let replies = self.pipeline::<Vec<Option<String>>>(&pipe).await?;
                        Ok(replies.into_iter().map(|ok| ok.is_some()).collect())
                    }
                })
                .await;
            self.evict_changed(keys, &set, |set| *set);
            set
        })
    }

    fn compare_and_set<'a>(&'a self, ops: &'a [CompareAndSet]) -> StoreFuture<'a, Vec<bool>> {
        Box::pin(async move {
            let keys: &[Cow<'_, str>] = &ops.iter().map(|op| self.key(&op.key)).collect::<Vec<_>>();
            let groups = self.groups(keys.iter().map(|key| &**key));
            let written = self
                .per_group(ops.len(), &groups, |group| async move {
                    let cmd = compare_and_set_cmd(ops, keys, group);
                    let written = self.evalsha::<Vec<i64>>(&COMPARE_AND_SET, &cmd).await?;
                    Ok(written.into_iter().map(|w| w != 0).collect())
                })
                .await;
            // Only the keys written changed (see `evict_changed`).
            let changed = keys.iter().enumerate().filter(|(i, _)| match &written {
                Ok(written) => written.get(*i).is_none_or(|w| *w),
                Err(_) => true,
            });
            self.evict_own(changed.map(|(_, key)| &**key));
            written
        })
    }

    fn swap_many<'a>(
        &'a self,
        keys: &'a [String],
        value: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        Box::pin(async move {
            let ttl = ttl_ms(ttl);
            let keys = &*self.keys(keys);
            let groups = self.groups(keys.iter().map(String::as_str));
            let held = self
                .per_group(keys.len(), &groups, |group| async move {
                    let mut invocation = SWAP_MANY.prepare_invoke();
                    for &i in group {
                        invocation.key(&keys[i]);
                    }
                    invocation.arg(value).arg(ttl);
                    self.invoke::<Vec<Option<Bytes>>>(&invocation).await
                })
                .await;
            self.evict_own(keys.iter().map(String::as_str));
            held
        })
    }

    fn delete_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let keys = &*self.keys(keys);
            let groups = self.groups(keys.iter().map(String::as_str));
            let deleted =
                futures_util::future::try_join_all(groups.iter().map(|group| async move {
                    let mut cmd = redis::cmd("UNLINK");
                    for &i in group {
                        cmd.arg(&keys[i]);
                    }
                    self.query::<i64>(&cmd).await
                }))
                .await;
            self.evict_own(keys.iter().map(String::as_str));
            deleted?;
            Ok(())
        })
    }

    /// The pushes of a tracking connection (see "Lease waits" in the near
    /// cache's docs): the near cache's, whose reads track the keys; without
    /// one, a connection kept for lease waits alone, over which the watch
    /// reads the keys itself. `None` while tracking is down: the waiter
    /// polls.
    fn watch(&self, keys: &[String]) -> Option<Changed> {
        let keys = self.keys(keys);
        match (&self.near, &self.lease_watch) {
            (Some(near), _) => near::Near::watch(near, keys.iter().map(String::as_str)),
            (None, Some(tracker)) => near::Near::watch_reading(tracker, keys.into_owned()),
            (None, None) => None,
        }
    }

    fn indexes(&self) -> Option<&dyn IndexStore> {
        Some(self)
    }
}

impl IndexStore for RedisStore {
    fn index_lease<'a>(
        &'a self,
        prefix: &'a str,
        members: &'a [String],
        token: &'a [u8],
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.lease_index(&self.key(prefix), members, token).await })
    }

    fn index_apply<'a>(
        &'a self,
        prefix: &'a str,
        token: &'a [u8],
        updates: &'a [IndexUpdate],
    ) -> StoreFuture<'a, Vec<bool>> {
        Box::pin(async move {
            let prefix = self.key(prefix);
            let applied = self.apply_index(&prefix, token, updates).await;
            // The index's near-cached pages are void before this returns,
            // as an own write's entries are (whether or not the script
            // ran: a failed call may have been applied). Every page of the
            // index was read from its warm mark, so evicting that key voids
            // them all. (`index_lease` writes only the lease hash, which no
            // page reads.)
            if self.near.is_some() {
                self.evict_own(std::iter::once(&*format!("{prefix}{WARM_SUFFIX}")));
            }
            applied
        })
    }

    fn index_query<'a>(
        &'a self,
        prefix: &'a str,
        query: &'a IndexQuery,
    ) -> StoreFuture<'a, Option<IndexPage>> {
        Box::pin(async move { self.query_index(&self.key(prefix), query).await })
    }

    /// One pipeline (one request on the connection) when the query is a
    /// list's repeat on a single server (`query_index_and_get`); else the
    /// query and the multi-get sent side by side, as two requests on the
    /// same connection.
    fn index_query_and_get<'a>(
        &'a self,
        prefix: &'a str,
        query: &'a IndexQuery,
        keys: &'a [String],
    ) -> StoreFuture<'a, (Option<IndexPage>, Result<Vec<Option<Bytes>>, StoreError>)> {
        Box::pin(async move {
            let prefix = self.key(prefix);
            let entries = Keys::new(&self.prefix, keys);
            if let Some(replies) = self.query_index_and_get(&prefix, query, entries).await {
                return replies;
            }
            let (page, values) = tokio::join!(
                self.query_index(&prefix, query),
                Store::get_many(self, keys)
            );
            Ok((page?, values))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_whole_positive_milliseconds() {
        assert_eq!(ttl_ms(Duration::ZERO), 1);
        assert_eq!(ttl_ms(Duration::from_micros(1)), 1);
        assert_eq!(ttl_ms(Duration::from_micros(1500)), 2);
        assert_eq!(ttl_ms(Duration::from_secs(60)), 60_000);
        assert_eq!(ttl_ms(Duration::MAX), MAX_TTL_MS);
    }

    #[test]
    fn errors_are_sorted() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(store_error(io), StoreError::Unavailable(_)));
        let timeout = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(matches!(store_error(timeout), StoreError::Unavailable(_)));
        let parse = RedisError::from((redis::ErrorKind::Parse, "bad reply"));
        assert!(matches!(store_error(parse), StoreError::Protocol(_)));
        let wrong = RedisError::from((redis::ErrorKind::UnexpectedReturnType, "not an array"));
        assert!(matches!(store_error(wrong), StoreError::Protocol(_)));
    }

    #[test]
    fn a_lazy_store_needs_a_runtime_not_a_server() {
        // Outside a Tokio runtime: an error, not a panic.
        let result = RedisStore::builder("redis://127.0.0.1:1/").connect_lazy();
        assert!(matches!(
            result,
            Err(StoreError::Connect(ConnectError::Config { .. }))
        ));
        // Inside one, nothing is connected yet, so nothing can fail.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            assert!(
                RedisStore::builder("redis://127.0.0.1:1/")
                    .connect_lazy()
                    .is_ok()
            );
            #[cfg(feature = "cluster")]
            assert!(
                RedisStore::cluster_builder(["redis://127.0.0.1:1/"])
                    .connect_lazy()
                    .is_ok()
            );
            assert!(matches!(
                RedisStore::builder("not a url").connect_lazy(),
                Err(StoreError::Connect(ConnectError::Config { .. }))
            ));
            // A brace would move the keys' cluster hash tags.
            assert!(matches!(
                RedisStore::builder("redis://127.0.0.1:1/")
                    .key_prefix("{app}:")
                    .connect_lazy(),
                Err(StoreError::Connect(ConnectError::Config { .. }))
            ));
        });
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn a_key_prefix_keeps_each_key_in_its_hash_slot() {
        use redis::cluster_routing::Slot;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let store = RedisStore::cluster_builder(["redis://127.0.0.1:1/"])
            .key_prefix("shop:")
            .connect_lazy()
            .unwrap();
        for key in ["ci:{Member:1}:v1", "ci:{idx:Member}:v1:all"] {
            let prefixed = store.key(key);
            assert_eq!(prefixed, format!("shop:{key}"));
            assert_eq!(Slot::for_key(prefixed.as_bytes()), Slot::for_key(key));
        }
    }

    #[test]
    fn scripts_have_distinct_hashes() {
        let [a, b, c] = scripts();
        assert_ne!(a.get_hash(), b.get_hash());
        assert_ne!(b.get_hash(), c.get_hash());
        assert_ne!(a.get_hash(), c.get_hash());
    }
}
