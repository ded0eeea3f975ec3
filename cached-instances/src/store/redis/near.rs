//! The near cache: an in-process tier in front of a [`RedisStore`](super::RedisStore),
//! kept coherent by Redis server-assisted client-side caching.
//!
//! Reads that miss the tier go to Redis over a dedicated RESP3 connection
//! with `CLIENT TRACKING ON`: Redis remembers which keys that connection
//! read and pushes an `invalidate` message on it when any client changes
//! one of them. The push handler runs inside the connection's reader, in
//! wire order with the replies, and evicts the key on the spot.
//!
//! Why our own tracking connection rather than redis-rs `cache-aio`: that
//! cache is bounded by entry count (not bytes), caches every reply of a
//! command (a lease or tombstone marker would be served from memory, and
//! the lease protocol needs those read from Redis), cannot be flushed or
//! observed by the store, and is marked experimental. The tier here holds
//! entry bytes only, weighs them, and knows when its connection is lost.
//!
//! Coherence rests on three rules:
//!
//! - a reply is admitted only if no invalidation of its key (or flush) was
//!   seen between sending the read and admitting the reply (a per-stripe
//!   counter under a lock), so a push that overtakes the reader cannot be
//!   undone by a late insert;
//! - the store's own writes evict their keys before they return, so a
//!   process reads its own acknowledged writes;
//! - while tracking is down, the tier is empty and unused: a lost
//!   connection flushes it, reads go to Redis uncached, and a background
//!   task remakes the connection (flushing again once tracking is back on).
//!
//! # Index pages
//!
//! On a single server the tier also keeps the pages of a model's index
//! that a list in one order reads (no filter, no range: the warm mark's
//! `EXISTS`, the order's `ZCARD` and `ZRANGE` in one `MULTI`/`EXEC`), so
//! that a repeated list costs no round trip for its page either. A page
//! read that misses the tier is sent on the tracking connection, so Redis
//! tracks both keys it read (commands inside `MULTI`/`EXEC` are tracked as
//! any read), and the same rules hold as for entries, per key:
//!
//! - a page is admitted only if neither of its keys' stripes moved
//!   between sending the read and admitting the reply (both stripes
//!   locked, in order);
//! - each of the two keys has a generation, bumped by every eviction of
//!   the key (a push, this store's own write); a page carries its keys'
//!   generations from before its read was sent and is served only while
//!   both are unchanged, so a push for the sorted set or the warm mark
//!   voids every page read from it at once (the stale pages age out of
//!   the tier, or are replaced by the next read);
//! - the store's own index updates (`index_apply`) evict the index's warm
//!   mark before they return, which voids every page of that index; its
//!   own writes of the mark itself are entry writes, evicted as such;
//! - a flush (a lost connection) empties the tier, pages included.
//!
//! Pages share the tier's byte bound and max age with the entries, under
//! tier keys no Redis key can take (`pages`). A Redis Cluster keeps
//! reading pages from Redis with the query script.
//!
//! # Redis Cluster
//!
//! The tracking backend is either one connection (a single server) or one
//! connection per primary (a cluster, the `cluster` submodule); the tier,
//! the admission rule, the flushes and the reconnect task are the same code
//! for both. In
//! a cluster the primaries and their slot ranges are read with
//! `CLUSTER SLOTS`, each primary gets its own tracking connection in the
//! default (per-key) mode, and a read that misses the tier is sent, one
//! `MGET` per hash slot, on the tracking connection of the primary that
//! owns the slot: the node that answers is the node that tracks the key.
//! The tier is in use only while every primary that owns slots is tracked
//! and every one of them agrees on who owns what; losing any of these
//! connections flushes the whole tier, like losing the single one.
//!
//! Why per-key tracking on the owner rather than `BCAST` on every node
//! (which would let any connection do the reads): with `BCAST` every write
//! under the key prefix, by anyone, is pushed to every near-cached process,
//! whether it ever read the key or not. An invalidation in this cache is
//! about three writes per key (the tombstone, the next reader's lease, its
//! fill), plus index updates and expirations, so each process would handle
//! the whole cluster's write rate, and each unrelated push also bumps an
//! admission stripe, voiding reads in flight. Per-key tracking pushes at
//! most once per key this process read, as on a single server: a
//! tombstone, lease and fill after a read cost one push, not three
//! (`tests/near_cluster.rs` counts them). The price is that reads must go
//! to the owner, which this module routes itself;
//! in return a reply from a node that no longer owns the slot (`MOVED`,
//! `ASK`) is seen here, and treated as a lost connection.
//!
//! Topology changes: the background task asks every tracked primary for
//! its `CLUSTER SLOTS` every `CHECK_INTERVAL` (1 s); a different answer,
//! an error or no answer in time flushes the tier and re-tracks.
//! A slot migration needs nothing more: `MIGRATE` deletes each key on the
//! source, which pushes its invalidation, and a read of a migrated key
//! gets `ASK` or `MOVED`. A failover is covered when the old primary dies
//! (its connection drops, or the check gets no answer within a second plus
//! the response timeout, before the cluster promotes a replica after its
//! node timeout, 15 s by default; a shorter node timeout reopens the window
//! below) or
//! is demoted (a replica applies the new primary's writes, which pushes
//! on the tracked keys, and our next read on it gets `MOVED`). The window
//! left: when the old primary stays reachable from this process but cut
//! off from the cluster's majority, and a replica is promoted, writes
//! acknowledged by the new primary can be read here from the tier until
//! the next check hears of the promotion from another primary (at most
//! `CHECK_INTERVAL` plus the cluster's gossip, about a second).
//! Replicas are not tracked (their promotion is caught by that check).
//!
//! A write acknowledged in another process can still be read from this
//! tier until its push arrives: CONSISTENCY.md gives the measured window.
//!
//! # Lease waits
//!
//! The same pushes tell a reader waiting on another process's lease when
//! to read again ([`Store::watch`](crate::Store::watch)). Its reads of the
//! leased keys go over the tracking connection (a marker is never in the
//! tier), so Redis tracks those keys for this process and pushes the next
//! change of each: the holder's fill, a write's tombstone, an expiry. A
//! watch notes its keys' stripe counters, before the read it guards is
//! sent, and completes once one of them moves, as a reply would be
//! refused admission: an eviction of any key of the stripe (at worst an
//! early wake, and one more read) or a flush (which also ends tracking, so
//! the waiter polls from then on). A waiter therefore reads once right
//! away, then once per push, where it polled at 1, 2, 4 ... ms.
//!
//! A store without a near cache keeps a tracker all the same, for lease
//! waits alone: the same type, with a tier nothing is admitted to, and one
//! tracking connection (one per primary in a cluster) that carries no read
//! but the watches' own ([`Near::watch_reading`]). The waiter's reads go
//! to the store's connection, which Redis does not track for this; so a
//! watch, when first awaited, reads its keys over the tracking connection
//! itself, and completes at once if one no longer holds a live lease (it
//! changed after the watch was armed, before that read; a later change is
//! pushed). That is one more read per wait, on the tracking connection,
//! and Redis tracks only the keys waited on. Such a tracker stops at the
//! server's first refusal of tracking ([`Role::LeaseWaits`]); a near cache
//! the user asked for keeps trying.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionInfo, IntoConnectionInfo, ProtocolVersion, RedisError,
};
use redis::{PushInfo, PushKind, Value};

use crate::error::StoreError;
use crate::marker::{self, Slot};
use crate::store::tier::Tier;
use crate::store::{Changed, IndexPage};
use crate::striped::StripedCounter;

#[cfg(feature = "cluster")]
mod cluster;
#[cfg(feature = "metrics")]
mod export;
mod pages;

use pages::entry_slot;
pub(super) use pages::page_slot;

/// Default bound of the tier's size (keys and values).
const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default bound of an entry's age in the tier.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);
/// Admission counters: keys hash onto this many stripes.
const STRIPES: usize = 256;
/// The most index keys (warm marks, order sorted sets) whose generations
/// the tier keeps: a page over a key beyond them is not cached. A process
/// reads the pages of its own models, a handful of keys each, so this only
/// bounds a caller naming ever new index prefixes.
const MAX_INDEX_KEYS: usize = 4096;
/// Backoff between attempts to remake the tracking connection.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// Configures the near cache of a [`RedisStore`](super::RedisStore): an
/// in-process copy of the entries this process reads, kept coherent with
/// Redis by `CLIENT TRACKING` invalidation pushes.
///
/// A near hit costs no round trip. Only entry bytes are kept (never a lease
/// or tombstone), conditional writes always go to Redis, and the store's own
/// writes evict before they return. On a single server, the index pages of
/// lists in one order (no filter) are kept too, under the same rules, so a
/// repeated list is served from memory whole. A write made by another
/// process is seen here once Redis' invalidation push arrives (see
/// CONSISTENCY.md for the measured window); a lost tracking connection
/// empties the tier.
///
/// Works in front of a single server and (feature `cluster`) a Redis
/// Cluster, where each primary has its own tracking connection.
///
/// ```no_run
/// use std::time::Duration;
///
/// use cached_instances::{NearCache, RedisStore};
///
/// # async fn demo() -> Result<(), cached_instances::StoreError> {
/// let store = RedisStore::builder("redis://127.0.0.1:6379/")
///     .near_cache(
///         NearCache::new()
///             .max_bytes(256 * 1024 * 1024)
///             .max_age(Duration::from_secs(30)),
///     )
///     .connect()
///     .await?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct NearCache {
    max_bytes: u64,
    max_age: Duration,
}

impl Default for NearCache {
    fn default() -> Self {
        NearCache::new()
    }
}

impl NearCache {
    /// A near cache of at most 64 MiB, entries at most 60 s old.
    pub fn new() -> Self {
        NearCache {
            max_bytes: DEFAULT_MAX_BYTES,
            max_age: DEFAULT_MAX_AGE,
        }
    }

    /// The most bytes (keys plus values) the tier holds; the least recently
    /// useful entries are evicted beyond it. Default: 64 MiB.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// The longest an entry is served from the tier, whatever the pushes
    /// say: a bound on staleness should an invalidation ever be lost without
    /// the connection dropping. An older entry is read from Redis again (at
    /// most about one kernel tick, 1-10 ms, past its age). Default: 60 s.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }
}

/// What the near cache holds and has done; see
/// [`RedisStore::near_cache_stats`](super::RedisStore::near_cache_stats).
///
/// # Metrics
///
/// With the feature `metrics`, a task the store owns exports these through
/// the [`metrics`](https://docs.rs/metrics) facade once a second, next to
/// the cache's own counters ([`Stats`](crate::Stats)):
///
/// | field | metric |
/// |---|---|
/// | `hits`, `misses` | counters `cache.near.gets{result="hit"}`, `cache.near.gets{result="miss"}` |
/// | `invalidations`, `flushes` | counters `cache.near.invalidations`, `cache.near.flushes` |
/// | `entries`, `bytes` | gauges `cache.near.entries`, `cache.near.bytes` |
/// | `tracking` | gauge `cache.near.tracking`: 1 while tracking is on |
///
/// Once a second rather than as they change: a near hit costs about
/// 0.2 us, and looking a metric up in the recorder on every hit would add
/// a large share of that. Each metric is set to the total over the
/// process's near caches (`cache.near.tracking` counts those tracking), so
/// a recorder installed after the store was made reads whole values. A
/// store that is dropped takes its entries, bytes and tracking out of the
/// gauges within a second (at once if the runtime it was made on shuts
/// down); its counts stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct NearCacheStats {
    /// Entries held (past `max_age` but not yet removed included), and
    /// index pages (single server), which the tier holds like entries.
    pub entries: u64,
    /// Bytes held (keys plus values, pages included), as `entries`.
    pub bytes: u64,
    /// Keys evicted by an invalidation push or by this store's own writes
    /// (an own index update counts one, for the index's warm mark).
    pub invalidations: u64,
    /// Times the whole tier was emptied (tracking connection lost or remade,
    /// or the database flushed).
    pub flushes: u64,
    /// Entry reads served from the tier, with no round trip. Index pages
    /// are not counted, here or in `misses`.
    pub hits: u64,
    /// Entry reads the tier could not serve, sent to Redis: keys it did
    /// not hold, or any key while tracking is down. `hits / (hits +
    /// misses)` is the tier's hit rate.
    pub misses: u64,
    /// Whether tracking is on: the tracking connection is up (in a
    /// cluster, every primary's) and the tier is in use.
    pub tracking: bool,
}

/// Where the tier's tracking connections go.
pub(super) enum Backend {
    /// One server: one connection, which tracks the keys it reads.
    Single(Client),
    /// A cluster, discovered through these nodes (RESP3 settings): one
    /// connection per primary.
    #[cfg(feature = "cluster")]
    Cluster(Vec<ConnectionInfo>),
}

impl Backend {
    /// The backend for `urls` (one server, or the seeds of a cluster).
    pub(super) fn new(urls: &[String], cluster: bool) -> Result<Backend, StoreError> {
        let resp3 = |url: &str| -> Result<ConnectionInfo, StoreError> {
            let info = url
                .into_connection_info()
                .map_err(|e| super::config_error(e.to_string()))?;
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            Ok(info.set_redis_settings(settings))
        };
        #[cfg(feature = "cluster")]
        if cluster {
            let seeds = urls
                .iter()
                .map(|url| resp3(url))
                .collect::<Result<Vec<_>, _>>()?;
            if seeds.is_empty() {
                return Err(super::config_error("no cluster node given".to_owned()));
            }
            return Ok(Backend::Cluster(seeds));
        }
        #[cfg(not(feature = "cluster"))]
        let _ = cluster;
        let info = resp3(urls.first().map(String::as_str).unwrap_or_default())?;
        let client = Client::open(info).map_err(|e| super::config_error(e.to_string()))?;
        Ok(Backend::Single(client))
    }
}

/// The tracking connections of one generation: reads that miss the tier go
/// through them, so that Redis tracks what they read.
#[derive(Clone)]
enum Links {
    Single(MultiplexedConnection),
    #[cfg(feature = "cluster")]
    Cluster(Arc<cluster::Tracked>),
}

impl Links {
    /// The connection of a single server; `None` for a cluster.
    fn single(&self) -> Option<&MultiplexedConnection> {
        match self {
            Links::Single(connection) => Some(connection),
            #[cfg(feature = "cluster")]
            Links::Cluster(_) => None,
        }
    }

    /// `GET` (one key) or `MGET`, on the connection that tracks the keys.
    async fn read(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>, redis::RedisError> {
        match self {
            Links::Single(connection) => read_on(&mut connection.clone(), keys).await,
            #[cfg(feature = "cluster")]
            Links::Cluster(tracked) => tracked.read(keys).await,
        }
    }
}

/// `GET` (one key) or `MGET` of `keys` on `connection`.
async fn read_on(
    connection: &mut MultiplexedConnection,
    keys: &[&str],
) -> Result<Vec<Option<Bytes>>, redis::RedisError> {
    let mut cmd = redis::cmd(if keys.len() == 1 { "GET" } else { "MGET" });
    for key in keys {
        cmd.arg(*key);
    }
    if keys.len() == 1 {
        cmd.query_async::<Option<Bytes>>(connection)
            .await
            .map(|value| vec![value])
    } else {
        cmd.query_async::<Vec<Option<Bytes>>>(connection).await
    }
}

/// Opens a connection with `config` (which carries the push handler) and
/// turns tracking on for it, in the default mode: Redis tracks the keys
/// this connection reads.
async fn tracking_connection(
    client: &Client,
    config: &AsyncConnectionConfig,
) -> Result<MultiplexedConnection, redis::RedisError> {
    let mut connection = client
        .get_multiplexed_async_connection_with_config(config)
        .await?;
    redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .query_async::<()>(&mut connection)
        .await?;
    Ok(connection)
}

/// Stripes and their counters as a watch saw them when armed.
type Seen = Vec<(usize, u64)>;

/// Why tracking connections were not made.
enum Untracked {
    /// The server refused tracking itself ([`refuses_tracking`]): asking
    /// again will not help.
    Refused(StoreError),
    /// Anything else: a connection, a timeout, a topology in motion.
    Failed(StoreError),
}

/// Whether `error` is a server's refusal of what tracking needs: RESP3
/// (`HELLO`, Redis 6 or later), the `CLIENT TRACKING` command (unknown,
/// renamed away, or not allowed to this user), rather than a failure that
/// may pass.
fn refuses_tracking(error: &RedisError) -> bool {
    if error.kind() == redis::ErrorKind::RESP3NotSupported || error.code() == Some("NOPERM") {
        return true;
    }
    let message = error.to_string().to_ascii_lowercase();
    [
        "unknown command",
        "unknown subcommand",
        "unsupported command",
    ]
    .iter()
    .any(|refusal| message.contains(refusal))
}

/// What a [`Near`] is kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// The near cache the user configured: the tier, its tracking, and the
    /// lease waits on it.
    NearCache,
    /// A store without a near cache: tracking for lease waits alone, given
    /// up for good when the server refuses it (no `CLIENT TRACKING` or
    /// RESP3: a server before Redis 6, a proxy, a command renamed away);
    /// its waiters poll, as they did before the store kept one.
    LeaseWaits,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::NearCache => "near cache",
            Role::LeaseWaits => "lease waits",
        }
    }
}

/// The tier and its tracking connections, shared by the store's clones.
pub(super) struct Near {
    role: Role,
    tier: Tier,
    /// How long an admitted entry stays in the tier at most.
    max_age: Duration,
    /// Bumped under the lock by every eviction of a key of the stripe (and
    /// by every flush); a reply is admitted only if its stripe did not move
    /// since its read was sent.
    stripes: Box<[Mutex<u64>]>,
    hasher: std::collections::hash_map::RandomState,
    /// The generation of each index key a page was read from (the warm
    /// mark, the order's sorted set), bumped by every eviction of the key
    /// (its push, or this store's own write). A page carries its keys'
    /// generations from before its read was sent, and is served only while
    /// both are unchanged. Keys are never removed (see [`MAX_INDEX_KEYS`]),
    /// so a generation never goes back to a value a page was stamped with.
    index_keys: RwLock<HashMap<Box<str>, AtomicU64>>,
    /// The tracking connections, with the generation they were made in;
    /// `None` while they are being (re)made.
    links: tokio::sync::watch::Sender<Option<(u64, Links)>>,
    generation: AtomicU64,
    /// Wakes the task that remakes the connections.
    wake: Arc<tokio::sync::Notify>,
    /// Notified after every eviction and flush, for the watches
    /// ([`Near::watch`]) to check their stripes.
    changed: tokio::sync::Notify,
    invalidations: AtomicU64,
    flushes: AtomicU64,
    /// Entry reads the tier served, and those it sent to Redis.
    hits: StripedCounter,
    misses: StripedCounter,
    backend: Backend,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl Drop for Near {
    fn drop(&mut self) {
        // The reconnect task holds a weak reference: wake it so it sees
        // that the store is gone and ends.
        self.wake.notify_one();
    }
}

impl Near {
    /// Builds the tier and starts the task that makes (and remakes) the
    /// tracking connections in the background.
    pub(super) fn start(
        role: Role,
        config: &NearCache,
        backend: Backend,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Arc<Near>, StoreError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(super::config_error(
                "a RedisStore must be created within a Tokio runtime".to_owned(),
            ));
        }
        // A cluster's topology is checked periodically; one server's
        // connection only needs remaking when it is lost.
        let check = match &backend {
            Backend::Single(_) => None,
            #[cfg(feature = "cluster")]
            Backend::Cluster(_) => Some(cluster::CHECK_INTERVAL),
        };
        let near = Arc::new(Near {
            role,
            tier: Tier::new(config.max_bytes),
            max_age: config.max_age,
            stripes: (0..STRIPES).map(|_| Mutex::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            index_keys: RwLock::new(HashMap::new()),
            links: tokio::sync::watch::Sender::new(None),
            generation: AtomicU64::new(0),
            wake: Arc::new(tokio::sync::Notify::new()),
            changed: tokio::sync::Notify::new(),
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            hits: StripedCounter::default(),
            misses: StripedCounter::default(),
            backend,
            connect_timeout,
            request_timeout,
        });
        tokio::spawn(Near::keep_tracking(
            Arc::downgrade(&near),
            Arc::clone(&near.wake),
            check,
        ));
        #[cfg(feature = "metrics")]
        if role == Role::NearCache {
            tokio::spawn(export::every_second(Arc::downgrade(&near)));
        }
        Ok(near)
    }

    /// Waits until tracking is on (the first connections are made by the
    /// background task right after [`start`](Self::start)).
    pub(super) async fn tracking(&self) -> Result<(), StoreError> {
        let mut up = self.links.subscribe();
        let wait = up.wait_for(Option::is_some);
        // A cluster makes one connection per primary, plus a discovery.
        let bound = 2 * (self.connect_timeout + self.request_timeout);
        match tokio::time::timeout(bound, wait).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(StoreError::Unavailable(
                "near cache: no tracking connection in time".into(),
            )),
        }
    }

    /// Remakes the tracking connections whenever they are lost and, every
    /// `check` (a cluster), checks that the topology they track still
    /// holds; until the store is dropped.
    async fn keep_tracking(
        near: Weak<Near>,
        wake: Arc<tokio::sync::Notify>,
        check: Option<Duration>,
    ) {
        let mut backoff = RECONNECT_MIN;
        loop {
            let notified = wake.notified();
            {
                let Some(near) = near.upgrade() else { return };
                match near.current() {
                    None => match Near::track(&near).await {
                        Ok(()) => backoff = RECONNECT_MIN,
                        Err(Untracked::Refused(error)) if near.role == Role::LeaseWaits => {
                            tracing::info!(
                                target: "cached_instances",
                                %error,
                                "Redis refused client tracking: lease waits will poll"
                            );
                            return;
                        }
                        Err(Untracked::Refused(error) | Untracked::Failed(error)) => {
                            tracing::debug!(
                                target: "cached_instances",
                                role = near.role.as_str(),
                                %error,
                                "tracking connection not made"
                            );
                            drop(near);
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(RECONNECT_MAX);
                            continue;
                        }
                    },
                    Some((generation, links)) => {
                        if !near.still_holds(&links).await {
                            tracing::debug!(
                                target: "cached_instances",
                                role = near.role.as_str(),
                                "tracking connections: the slot map changed or a primary did not answer"
                            );
                            near.lost(generation);
                            continue;
                        }
                    }
                }
            }
            match check {
                None => notified.await,
                Some(every) => {
                    let _ = tokio::time::timeout(every, notified).await;
                }
            }
        }
    }

    /// Whether `links` still track what they should: always for one
    /// server (its loss is reported by its push channel); for a cluster,
    /// whether every primary still answers, in time, with the topology the
    /// links were made for.
    async fn still_holds(&self, links: &Links) -> bool {
        match links {
            Links::Single(_) => true,
            #[cfg(feature = "cluster")]
            Links::Cluster(tracked) => {
                tokio::time::timeout(self.request_timeout, tracked.unchanged())
                    .await
                    .unwrap_or(false)
            }
        }
    }

    /// Makes the tracking connections and puts the tier in use.
    async fn track(near: &Arc<Near>) -> Result<(), Untracked> {
        let generation = near.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let weak = Arc::downgrade(near);
        let on_push = move |push: PushInfo| -> Result<(), ()> {
            if let Some(near) = weak.upgrade() {
                near.on_push(generation, push);
            }
            Ok(())
        };
        // Without the push handler: for the cluster's discovery, whose
        // connection must not report its end as a lost tracking connection.
        let plain = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(near.connect_timeout))
            .set_response_timeout(Some(near.request_timeout));
        let config = plain.clone().set_push_sender(on_push);
        let made = async {
            match &near.backend {
                Backend::Single(client) => tracking_connection(client, &config)
                    .await
                    .map(Links::Single),
                #[cfg(feature = "cluster")]
                Backend::Cluster(seeds) => cluster::Tracked::make(seeds, &plain, &config)
                    .await
                    .map(|tracked| Links::Cluster(Arc::new(tracked))),
            }
        };
        let links =
            match tokio::time::timeout(2 * (near.connect_timeout + near.request_timeout), made)
                .await
            {
                Ok(Ok(links)) => links,
                Ok(Err(error)) if refuses_tracking(&error) => {
                    return Err(Untracked::Refused(super::store_error(error)));
                }
                Ok(Err(error)) => return Err(Untracked::Failed(super::store_error(error))),
                Err(_) => {
                    return Err(Untracked::Failed(StoreError::Unavailable(
                        "no tracking connection in time".into(),
                    )));
                }
            };
        // Whatever changed while untracked is unknown: start empty.
        near.flush();
        near.links.send_replace(Some((generation, links)));
        Ok(())
    }

    /// Handles a push from a tracking connection of `generation`.
    fn on_push(&self, generation: u64, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(Value::Array(keys)) => {
                    for key in keys {
                        if let Value::BulkString(key) = key
                            && let Ok(key) = std::str::from_utf8(key)
                        {
                            self.evict(key);
                        } else {
                            // A key we cannot name: drop everything.
                            self.flush();
                        }
                    }
                }
                // A nil payload: the database was flushed.
                _ => self.flush(),
            },
            PushKind::Disconnection => self.lost(generation),
            _ => {}
        }
    }

    /// A tracking connection of `generation` is gone (or its topology no
    /// longer holds): if that generation is in use, empty the tier and have
    /// the connections remade. An older generation's loss changes nothing:
    /// the tier was flushed when it was retired, and the current one was
    /// flushed when it went into use.
    fn lost(&self, generation: u64) {
        let current = self.links.send_if_modified(|links| {
            let current = links.as_ref().is_some_and(|(g, _)| *g == generation);
            if current {
                *links = None;
            }
            current
        });
        if current {
            self.flush();
            self.wake.notify_one();
        }
    }

    fn current(&self) -> Option<(u64, Links)> {
        self.links.borrow().clone()
    }

    fn stripe_of(&self, key: &str) -> usize {
        let hash = self.hasher.hash_one(key);
        // The modulo keeps the index in range; the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let stripe = (hash % STRIPES as u64) as usize;
        stripe
    }

    fn stripe(&self, key: &str) -> &Mutex<u64> {
        &self.stripes[self.stripe_of(key)]
    }

    /// The tier's copy of `key`, counted as a hit. A key it does not hold
    /// is counted when it is read from Redis ([`missed`](Self::missed)):
    /// a read may look here twice first.
    pub(super) fn get(&self, key: &str) -> Option<Bytes> {
        let hit = self.tier.get(&entry_slot(key));
        if hit.is_some() {
            self.hits.add(1);
        }
        hit
    }

    /// Counts `keys` entry reads that the tier did not hold, sent to Redis.
    pub(super) fn missed(&self, keys: usize) {
        // A batch served whole writes nothing.
        if keys > 0 {
            self.misses.add(keys as u64);
        }
    }

    /// Removes `key` from the tier, voids replies to reads of it still in
    /// flight and, if it is an index key, every page read from it.
    pub(super) fn evict(&self, key: &str) {
        if let Some(generation) = self
            .index_keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            generation.fetch_add(1, Ordering::SeqCst);
        }
        let mut seen = self
            .stripe(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *seen += 1;
        self.tier.remove(&entry_slot(key));
        drop(seen);
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Empties the tier, and voids every reply in flight.
    fn flush(&self) {
        for stripe in &self.stripes {
            *stripe.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        }
        self.tier.clear();
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// A watch of `keys` (see "Lease waits"): completes once one of their
    /// stripes moves after this call. `None` while tracking is down: no
    /// push would come.
    pub(super) fn watch<'k>(
        near: &Arc<Near>,
        keys: impl Iterator<Item = &'k str>,
    ) -> Option<Changed> {
        let (seen, _) = near.arm(keys)?;
        let near = Arc::clone(near);
        Some(Changed::new(async move { near.moved(&seen).await }))
    }

    /// A watch of `keys` for a store whose reads do not go over the
    /// tracking connection (a [`RedisStore`](super::RedisStore) without a
    /// near cache, which keeps one only for lease waits): when first
    /// awaited, it reads the keys over that connection itself, so that
    /// Redis tracks them, and completes at once if one no longer holds a
    /// live lease (it changed after this call, before that read); otherwise
    /// as [`watch`](Self::watch) does, on the push of the next change. A
    /// failed read ends tracking (the waiter polls from then on) and
    /// completes it.
    pub(super) fn watch_reading(near: &Arc<Near>, keys: Vec<String>) -> Option<Changed> {
        let (seen, (generation, links)) = near.arm(keys.iter().map(String::as_str))?;
        let near = Arc::clone(near);
        Some(Changed::new(async move {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            match tokio::time::timeout(near.request_timeout, links.read(&keys)).await {
                Ok(Ok(values)) if values.len() == keys.len() => {
                    let leased = |value: &Option<Bytes>| {
                        value.as_ref().is_some_and(|value| {
                            matches!(marker::classify(value), Slot::Lease)
                                && !marker::lease_expired(value)
                        })
                    };
                    if !values.iter().all(leased) {
                        return;
                    }
                }
                _ => {
                    near.lost(generation);
                    return;
                }
            }
            near.moved(&seen).await;
        }))
    }

    /// The stripe counters of `keys` (each stripe once) and the links in
    /// use, read in that order: links lost after the counters are read
    /// flush, which moves them. `None` while tracking is down.
    fn arm<'k>(&self, keys: impl Iterator<Item = &'k str>) -> Option<(Seen, (u64, Links))> {
        let mut seen: Vec<(usize, u64)> = keys
            .map(|key| {
                let stripe = self.stripe_of(key);
                (stripe, self.stripe_count(stripe))
            })
            .collect();
        let links = self.current()?;
        seen.sort_unstable();
        seen.dedup_by_key(|(stripe, _)| *stripe);
        Some((seen, links))
    }

    /// Completes once one of the `seen` stripes has moved from its count.
    async fn moved(&self, seen: &Seen) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            // Registered before the counters are read: a move after the
            // read notifies it.
            changed.as_mut().enable();
            if seen
                .iter()
                .any(|&(stripe, count)| self.stripe_count(stripe) != count)
            {
                return;
            }
            changed.await;
        }
    }

    fn stripe_count(&self, stripe: usize) -> u64 {
        *self.stripes[stripe]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads `keys` over the tracking connections (so Redis tracks them)
    /// and admits the entries among the replies. `None` when tracking is
    /// down or the read failed: the caller reads from Redis uncached.
    pub(super) async fn read_through(&self, keys: &[&str]) -> Option<Vec<Option<Bytes>>> {
        // The stripe counters before sending: a reply is admitted only if
        // its key's counter has not moved meanwhile. Taken before the
        // links, so that links retired (and the tier flushed) after this
        // point void the reply too.
        let seen: Vec<u64> = keys
            .iter()
            .map(|key| {
                *self
                    .stripe(key)
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
            })
            .collect();
        let (generation, links) = self.current()?;
        let reply = tokio::time::timeout(self.request_timeout, links.read(keys)).await;
        let values = match reply {
            Ok(Ok(values)) if values.len() == keys.len() => values,
            // A stalled or broken tracking connection may have lost pushes
            // too, and a redirection means the topology moved: either way
            // the links no longer hold.
            _ => {
                self.lost(generation);
                return None;
            }
        };
        for ((key, value), seen) in keys.iter().zip(&values).zip(seen) {
            if let Some(value) = value {
                self.admit(key, value, seen);
            }
        }
        Some(values)
    }

    /// Puts `value` in the tier if it is an entry (never a lease or
    /// tombstone: the lease protocol reads those from Redis) and no eviction
    /// of its key happened since its read was sent.
    fn admit(&self, key: &str, value: &Bytes, seen: u64) {
        if !matches!(marker::classify(value), Slot::Value(_)) {
            return;
        }
        let stripe = self
            .stripe(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *stripe == seen {
            self.tier
                .insert(&entry_slot(key), value.clone(), self.max_age);
        }
    }

    /// The page held under `slot` (see [`page_slot`]), read from the index
    /// keys `keys` (its warm mark and its order's sorted set), if neither
    /// key was evicted since that read was sent.
    pub(super) fn page(&self, slot: &str, keys: [&str; 2]) -> Option<IndexPage> {
        let bytes = self.tier.get(slot)?;
        let stamps = pages::stamps(&bytes)?;
        {
            let generations = self
                .index_keys
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            for (key, stamp) in keys.into_iter().zip(stamps) {
                if generations.get(key)?.load(Ordering::SeqCst) != stamp {
                    // Stale: left to be replaced by the next read of the
                    // page, or to age out.
                    return None;
                }
            }
        }
        pages::decode(&bytes)
    }

    /// The generations of the index keys `keys`, registered if new; `None`
    /// when the tier already tracks [`MAX_INDEX_KEYS`] others.
    fn generations(&self, keys: [&str; 2]) -> Option<[u64; 2]> {
        let read = |generations: &HashMap<Box<str>, AtomicU64>| -> Option<[u64; 2]> {
            Some([
                generations.get(keys[0])?.load(Ordering::SeqCst),
                generations.get(keys[1])?.load(Ordering::SeqCst),
            ])
        };
        if let Some(stamps) = read(
            &self
                .index_keys
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        ) {
            return Some(stamps);
        }
        let mut generations = self
            .index_keys
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for key in keys {
            if !generations.contains_key(key) {
                if generations.len() >= MAX_INDEX_KEYS {
                    return None;
                }
                generations.insert(key.into(), AtomicU64::new(0));
            }
        }
        read(&generations)
    }

    /// Runs `pipe`, an order-only page read of the index keys `keys` (its
    /// warm mark and its order's sorted set: `EXISTS`, `ZCARD`, `ZRANGE` in
    /// one transaction), over the tracking connection, so that Redis tracks
    /// both keys, and admits the page under `slot` by the entries' rule.
    /// `None` when tracking is down (or, on a cluster, not used for pages),
    /// the keys cannot be tracked here, or the read failed: the caller
    /// reads from Redis uncached.
    pub(super) async fn read_page_through(
        &self,
        slot: &str,
        keys: [&str; 2],
        pipe: &redis::Pipeline,
    ) -> Option<Option<IndexPage>> {
        // Before sending, as for entries: a push for either key that
        // arrives from here on moves a stripe (so the reply is not
        // admitted) and a generation (so the page is never served).
        let stamps = self.generations(keys)?;
        let seen = keys.map(|key| {
            *self
                .stripe(key)
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        });
        let (generation, links) = self.current()?;
        // A cluster reads its pages with the query script.
        let connection = links.single()?;
        let reply = tokio::time::timeout(
            self.request_timeout,
            pipe.query_async::<(bool, u64, Vec<String>)>(&mut connection.clone()),
        )
        .await;
        let (warm, total, members) = match reply {
            Ok(Ok(reply)) => reply,
            // An error reply (a key of the wrong type): the connection is
            // fine, and the plain read reports the error.
            Ok(Err(error))
                if !(error.is_io_error()
                    || error.is_timeout()
                    || error.is_connection_dropped()
                    || error.is_unrecoverable_error()) =>
            {
                return None;
            }
            // Stalled or broken: pushes may have been lost too.
            _ => {
                self.lost(generation);
                return None;
            }
        };
        if !warm {
            return Some(None);
        }
        let page = IndexPage::new(members, total);
        self.admit_page(slot, keys, seen, stamps, &page);
        Some(Some(page))
    }

    /// Puts `page` in the tier under `slot` if neither of its keys' stripes
    /// moved since its read was sent (no eviction of either key, no flush).
    fn admit_page(
        &self,
        slot: &str,
        keys: [&str; 2],
        seen: [u64; 2],
        stamps: [u64; 2],
        page: &IndexPage,
    ) {
        let [a, b] = keys.map(|key| self.stripe_of(key));
        // Both stripes locked, in index order (once when they are the same
        // stripe), so that no eviction of either key comes between the
        // check and the insert.
        let lock = |stripe: usize| {
            self.stripes[stripe]
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        let low = lock(a.min(b));
        let high = (a != b).then(|| lock(a.max(b)));
        let now = |stripe: usize| match &high {
            Some(high) if stripe != a.min(b) => **high,
            _ => *low,
        };
        if now(a) == seen[0] && now(b) == seen[1] {
            self.tier
                .insert(slot, pages::encode(stamps, page), self.max_age);
        }
    }

    pub(super) fn stats(&self) -> NearCacheStats {
        NearCacheStats {
            entries: self.tier.entries(),
            bytes: self.tier.bytes(),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            hits: self.hits.get(),
            misses: self.misses.get(),
            tracking: self.current().is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    use super::refuses_tracking;

    fn server_error(detail: &str) -> RedisError {
        RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "An error was signalled by the server",
            detail.to_owned(),
        ))
    }

    #[test]
    fn only_a_refusal_of_tracking_itself_stops_a_lease_waits_tracker() {
        for refusal in [
            server_error("unknown command 'CLIENT', with args beginning with: 'TRACKING' 'ON'"),
            server_error("unknown subcommand 'TRACKING'. Try CLIENT HELP."),
            RedisError::from((ErrorKind::RESP3NotSupported, "resp3 is not supported")),
            redis::make_extension_error(
                "NOPERM".to_owned(),
                Some("User app has no permissions to run the 'client|tracking' command".to_owned()),
            ),
        ] {
            assert!(refuses_tracking(&refusal), "{refusal}");
        }
        for passing in [
            server_error("max number of clients reached"),
            RedisError::from((
                ErrorKind::UnexpectedReturnType,
                "the cluster's primaries disagree on its slot map",
            )),
            RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        ] {
            assert!(!refuses_tracking(&passing), "{passing}");
        }
    }
}
