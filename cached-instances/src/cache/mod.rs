//! The cache: the read path, the write path and the consistency protocol,
//! built once over any [`Store`](crate::Store).
//!
//! # Protocol
//!
//! This is the one explanation of the protocol; the modules that implement
//! a part of it point here, and CONSISTENCY.md states the guarantees it
//! gives and the tests that show them.
//!
//! ## Entries: a look-aside cache with leases and tombstones
//!
//! 1. A read multi-gets its keys. Misses take a lease (a unique token written
//!    to the key) where the key is absent or a tombstone. A single-key read
//!    first asks what the store holds in process
//!    ([`Store::get_in_process`](crate::Store::get_in_process): the
//!    `MemoryStore`'s map, a near tier), while the store is healthy, and
//!    goes on from that answer exactly as from a GET's; it GETs only when
//!    the store cannot tell without I/O. While a model's batch reads mostly
//!    miss, a batch read takes its leases straight away: the lease yields
//!    what a key holds when it holds an entry, so it is the multi-get and
//!    the lease in one step (`cold.rs`).
//! 2. The lease holder loads all its misses with one loader call per model and
//!    fills each key only if it still holds its lease. The read hands the
//!    fill (one compare-and-set round trip) to the store and returns
//!    without waiting for its reply, which a task the cache owns records
//!    (`fills.rs`; [`Cache::settle`] waits for it). The read's answer is
//!    what it loaded, and the lease alone decides whether the fill lands,
//!    so when the reply arrives changes nothing a reader can see; on one
//!    Redis connection, commands sent after the read are ordered after
//!    its fill. A read returning instances of a `Clone` model leaves even
//!    the encoding to that task; the same caller's next call of the cache
//!    waits for the hand-over, so it stays ordered after the fill
//!    (`fills.rs`, "Encoded by the fill's task").
//! 3. A write, after its database commit, replaces the instance's keys (every
//!    version) with a tombstone and cascades to the instances whose
//!    representation the write changed. Any overwrite voids outstanding
//!    leases, so a fill computed from data read before the write is rejected.
//! 4. A reader that finds another's lease waits for the fill (bounded by
//!    [`lease_wait`](crate::CacheBuilder::lease_wait)), then reads the database
//!    without filling.
//!
//! ## Writes: cascade levels (`write.rs`)
//!
//! A write invalidates breadth-first, level by level, from the written
//! instance. Every level costs one round trip that swaps each key (every
//! version) to the write's lease, voiding readers' leases and returning the
//! old bytes; one loader call per model to reload the entries that were
//! cached (all of them without `update_only`); and one round trip that fills
//! them if the lease still holds, or leaves a tombstone. The old and new
//! states give the next level's targets; a visited set makes cycles
//! terminate, and past `max_cascade_depth` levels are tombstoned without
//! reloading, following what the old states linked to. Reloading the written
//! instance keeps it cached with the committed state, so its next write can
//! still be compared with what it replaces.
//!
//! ## Query indexes (`index.rs`, `warm.rs`)
//!
//! Every index update follows the entries' lease protocol: lease the
//! members' index records (a token, replacing any other update's), read the
//! instances, apply their values if the lease still holds. A write leases
//! after its commit and its invalidation, so the holder of the last lease
//! read the database after every write that leased before it: the index
//! ends with the values of the last committed state. A model is answered
//! from its index only once [`Cache::warm`] marked it complete. A list
//! reads the page's pks from the index, then their entries as any batch
//! read does; the entries of the query's last page are read alongside the
//! index query (`prefetch.rs`), so a page that did not change costs one
//! round trip.
//!
//! ## Store outages (`degraded.rs`, `recovery.rs`)
//!
//! After a store error the store is skipped for `store_retry_interval`;
//! reads go to the loaders (at most `degraded_concurrency` at once).
//! Invalidations and index updates the store could not take are queued, and
//! **while anything is queued or being delivered, this process does not use
//! the store**: reads go to the loaders, writes queue behind. The queue is
//! delivered by a background task the cache owns, never by a reader: each
//! queued instance is delivered as a cascade level of its own (what the
//! store still held is compared with a reload, so a relation the write
//! could not see is invalidated too), then the index updates are redone
//! under a new lease. An index update that fails again un-warms its model
//! (its warm mark deleted) until the next `warm`. If the process exits
//! first, the entries' TTL is the backstop.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

mod builder;
// The change feed's entry (`crate::feed`).
// Row changes to invalidations: the feed's worker is their only user.
#[cfg(any(feature = "sqlx-postgres", feature = "sqlx-sqlite"))]
mod changes;
mod cold;
mod degraded;
mod fills;
mod gate;
// Query indexes: maintenance and warm (`index.rs`), running queries
// (`query.rs`) with the guess of their page (`prefetch.rs`).
mod index;
mod loading;
mod prefetch;
mod query;
mod read;
mod recovery;
mod registry;
mod shape;
mod stats;
mod warm;
mod write;

pub use builder::CacheBuilder;
#[cfg(any(feature = "sqlx-postgres", feature = "sqlx-sqlite"))]
pub(crate) use changes::{Changes, RowChange, Unusable};
pub use degraded::Event;
pub use stats::Stats;
pub use warm::{Warm, WarmProgress, WarmReport};

use crate::error::Error;
use crate::instance::CachedInstance;
use crate::store::Store;
use gate::Gate;
use index::IndexMaintainer;
use loading::Loading;
use read::Reader;
use registry::Registry;
use stats::Counters;
use write::Invalidator;

#[derive(Debug, Clone)]
struct Config {
    default_ttl: Duration,
    lease_ttl: Duration,
    lease_wait: Duration,
    tombstone_ttl: Duration,
    update_only: bool,
    max_cascade_depth: usize,
    enabled: bool,
    store_retry_interval: Duration,
    degraded_concurrency: usize,
    /// The deadline of every loader call; `None`: no deadline.
    loader_timeout: Option<Duration>,
    /// Representations larger than this are served but not cached, and
    /// stored bytes larger than this are treated as corrupt.
    max_entry_bytes: usize,
}

impl Config {
    fn ttl_of(&self, schema: &crate::instance::Schema) -> Duration {
        schema.ttl.unwrap_or(self.default_ttl)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_ttl: Duration::from_secs(24 * 3600),
            lease_ttl: Duration::from_secs(10),
            lease_wait: Duration::from_secs(1),
            tombstone_ttl: Duration::from_secs(60),
            update_only: true,
            max_cascade_depth: 16,
            enabled: true,
            store_retry_interval: Duration::from_secs(1),
            degraded_concurrency: 32,
            loader_timeout: None,
            max_entry_bytes: 1024 * 1024,
        }
    }
}

/// The cache's state. Its behaviour is in the parts built over it on
/// demand (cheap views: a few references each), each with the state its
/// job needs: the [`Reader`] (hits, leases, fills), the [`Invalidator`]
/// (writes, cascades), the [`IndexMaintainer`] (query indexes) and the
/// recovery task (`recovery.rs`); the store's health and retry queue are
/// reached through the [`Gate`].
struct Inner {
    store: Arc<dyn Store>,
    registry: Registry,
    config: Config,
    counters: Counters,
    degraded: degraded::Degraded,
    recovery: recovery::Recovery,
    /// The readers' fills waiting for their reply (`fills.rs`).
    fills: fills::Fills,
}

impl Inner {
    fn gate(&self) -> Gate<'_> {
        Gate::new(&*self.store, &self.degraded, &self.recovery, &self.counters)
    }

    /// The loader calls' settings (see `loading.rs`).
    fn loading(&self) -> Loading<'_> {
        Loading {
            counters: &self.counters,
            timeout: self.config.loader_timeout,
        }
    }

    fn reader(&self) -> Reader<'_> {
        Reader {
            gate: self.gate(),
            registry: &self.registry,
            counters: &self.counters,
            config: &self.config,
            loading: self.loading(),
            fills: &self.fills,
        }
    }

    fn indexes(&self) -> IndexMaintainer<'_> {
        IndexMaintainer {
            gate: self.gate(),
            registry: &self.registry,
            counters: &self.counters,
            loading: self.loading(),
        }
    }

    fn invalidator(&self) -> Invalidator<'_> {
        Invalidator {
            gate: self.gate(),
            registry: &self.registry,
            counters: &self.counters,
            config: &self.config,
            loading: self.loading(),
            indexes: self.indexes(),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.recovery.cache_dropped();
    }
}

/// A cache of model instances over a store, with one loader per model.
///
/// Cheap to clone: clones share the store, the loaders and the counters.
/// See the [crate docs](crate) for an example.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("config", &self.inner.config)
            .field("enabled", &self.is_enabled())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// Starts configuring a cache.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    /// The instance with primary key `pk`, or `None` if the database has no
    /// such row. A hit costs one store round trip and no loader call.
    ///
    /// # Errors
    ///
    /// [`Error::Load`] when a miss needed the loader and it failed;
    /// [`Error::LoadTimeout`] when it did not answer within
    /// [`loader_timeout`](crate::CacheBuilder::loader_timeout);
    /// [`Error::NotRegistered`] when `T` has no loader. A failed load leaves
    /// nothing behind: the leases it held are released, and the next read
    /// loads again.
    pub async fn get<T: CachedInstance>(&self, pk: &T::Pk) -> Result<Option<T>, Error> {
        self.inner.fills.ordered().await;
        let found = self
            .inner
            .reader()
            .one::<T>(pk, read::Want::Instances)
            .await?;
        Ok(found.into_instance())
    }

    /// The instances with primary keys `pks`, in `pks` order, rows that do not
    /// exist omitted. One multi-get; all misses load with one loader call.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub async fn get_many<T: CachedInstance>(&self, pks: &[T::Pk]) -> Result<Vec<T>, Error> {
        self.inner.fills.ordered().await;
        let reader = self.inner.reader();
        let found = reader.many::<T>(pks, read::Want::Instances).await?;
        Ok(found
            .into_iter()
            .filter_map(read::Found::into_instance)
            .collect())
    }

    /// The cached JSON representation of `pk`, ready to serve, without
    /// decoding it.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub async fn get_json<T: CachedInstance>(&self, pk: &T::Pk) -> Result<Option<Bytes>, Error> {
        self.inner.fills.ordered().await;
        let found = self.inner.reader().one::<T>(pk, read::Want::Bytes).await?;
        Ok(found.into_bytes())
    }

    /// The JSON representations of `pks`, in `pks` order, missing rows
    /// omitted.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub async fn get_many_json<T: CachedInstance>(
        &self,
        pks: &[T::Pk],
    ) -> Result<Vec<Bytes>, Error> {
        self.inner.fills.ordered().await;
        let reader = self.inner.reader();
        let found = reader.many::<T>(pks, read::Want::Bytes).await?;
        Ok(found
            .into_iter()
            .filter_map(read::Found::into_bytes)
            .collect())
    }

    /// Tells the cache that `instance` was written to the database. Call it
    /// after the commit. Invalidates the instance (every version) and
    /// everything whose representation the change touched, comparing with the
    /// cached previous state: the old and the new parent when a foreign key
    /// moved, the added and removed sides of a many-to-many list, the model's
    /// `invalidates_key`s; then cascades.
    ///
    /// When the previous state is not cached, it cannot be compared: the new
    /// state's relations are invalidated, and use [`saved_from`](Self::saved_from)
    /// if the caller has the previous row.
    ///
    /// Store failures do not fail the call; they are counted and logged.
    ///
    /// # Errors
    ///
    /// [`Error::NotRegistered`] when `T` has no loader; [`Error::Load`] when a
    /// cascade's reload failed (the entries involved are left invalidated).
    pub async fn saved<T: CachedInstance>(&self, instance: &T) -> Result<(), Error> {
        self.inner.fills.ordered().await;
        let writer = self.inner.invalidator();
        writer.write::<T>(instance.pk(), None, Some(instance)).await
    }

    /// Like [`saved`](Self::saved), with the previous state known to the
    /// caller (read in the same transaction), so the comparison does not
    /// depend on what is cached.
    ///
    /// # Errors
    ///
    /// As [`saved`](Self::saved).
    pub async fn saved_from<T: CachedInstance>(
        &self,
        previous: &T,
        instance: &T,
    ) -> Result<(), Error> {
        self.inner.fills.ordered().await;
        let writer = self.inner.invalidator();
        writer
            .write::<T>(instance.pk(), Some(previous), Some(instance))
            .await
    }

    /// Tells the cache that `instance` was deleted from the database. Call it
    /// after the commit. Removes its entry (every version) and cascades.
    ///
    /// # Errors
    ///
    /// As [`saved`](Self::saved).
    pub async fn deleted<T: CachedInstance>(&self, instance: &T) -> Result<(), Error> {
        self.inner.fills.ordered().await;
        let writer = self.inner.invalidator();
        writer.write::<T>(instance.pk(), Some(instance), None).await
    }

    /// Reloads `pk` from the database and compares it with the cached
    /// representation: when they differ, invalidates and cascades as
    /// [`saved`](Self::saved) would (drf-cached-instances' `update_instance`).
    /// An unchanged instance writes nothing and cascades nothing. Returns
    /// whether the cached representation was out of date.
    ///
    /// # Errors
    ///
    /// As [`saved`](Self::saved).
    pub async fn refresh<T: CachedInstance>(&self, pk: &T::Pk) -> Result<bool, Error> {
        self.inner.fills.ordered().await;
        self.inner.invalidator().refresh_one::<T>(pk).await
    }

    /// Removes `pk`'s entries of every registered version of `T`'s model,
    /// without cascading.
    ///
    /// # Errors
    ///
    /// [`Error::NotRegistered`] when `T` has no loader.
    pub async fn delete_all_versions<T: CachedInstance>(&self, pk: &T::Pk) -> Result<(), Error> {
        self.inner.fills.ordered().await;
        self.inner.invalidator().remove_versions::<T>(pk).await
    }

    /// Switches caching on or off. While off, reads go to the loaders and
    /// return correct data; writes still invalidate, so switching back on
    /// never serves data older than the writes made meanwhile.
    pub fn set_enabled(&self, enabled: bool) {
        self.inner.degraded.set_enabled(enabled);
    }

    /// Whether caching is on.
    #[must_use]
    pub fn is_enabled(&self) -> bool {
        self.inner.degraded.is_enabled()
    }

    /// The counters since the cache was built.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// Waits until every fill this cache (any of its clones) sent has been
    /// answered and recorded.
    ///
    /// A read that missed returns once it has handed its fill (the write of
    /// what it loaded, made only if no write came in between) to the store,
    /// without waiting for the reply, which saves it a round trip; the
    /// reply is counted in [`stats`](Self::stats) (`fills`,
    /// `fills_rejected`, `store_errors`) when it arrives. A read of
    /// instances of a model that implements `Clone` returns sooner still:
    /// a task encodes copies of its rows and hands the fill over, and the
    /// same task's (or `block_on` thread's) next call of the cache waits
    /// for that hand-over, so it finds the entries; a read of the store
    /// past the cache may find the read's lease until this returns. Call this before
    /// shutting down, so that no fill is left unanswered, and in tests
    /// before counting what the store did. Fills sent while it waits are
    /// waited for too: call it once the reads you care about returned.
    ///
    /// ```
    /// use cached_instances::Cache;
    ///
    /// async fn shut_down(cache: Cache, server: impl std::future::Future<Output = ()>) {
    ///     server.await; // serves requests until asked to stop
    ///     cache.settle().await; // every fill answered: `stats` is final
    ///     println!("{:?}", cache.stats());
    /// }
    /// ```
    pub async fn settle(&self) {
        self.inner.fills.settle().await;
    }

    /// Subscribes to the cache's events: store outages and recoveries,
    /// invalidations queued for retry and delivered.
    ///
    /// ```
    /// # async fn demo(cache: cached_instances::Cache) {
    /// use cached_instances::Event;
    /// let mut events = cache.events();
    /// tokio::spawn(async move {
    ///     while let Ok(event) = events.recv().await {
    ///         if let Event::StoreUnavailable { error, .. } = event {
    ///             eprintln!("cache store down: {error}");
    ///         }
    ///     }
    /// });
    /// # }
    /// ```
    #[must_use]
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.inner.degraded.subscribe()
    }

    /// The store key of `pk`'s entry for `T`: for tools and tests.
    ///
    /// # Errors
    ///
    /// [`Error::NotRegistered`] when `T` has no loader.
    pub fn key_of<T: CachedInstance>(&self, pk: &T::Pk) -> Result<String, Error> {
        Ok(self.inner.registry.entry::<T>()?.key_of(pk))
    }
}

/// A representation of `bytes` bytes is over `max_entry_bytes`: it is
/// served, not cached.
fn too_large(counters: &Counters, config: &Config, model: &'static str, bytes: usize) {
    stats::add(&counters.entries_too_large, 1);
    tracing::warn!(
        target: "cached_instances",
        model,
        bytes,
        max_entry_bytes = config.max_entry_bytes,
        "representation larger than max_entry_bytes: served, not cached"
    );
}

/// Counts a fill round trip's outcome: `filled[i]` says whether op `i`
/// was a fill (not a release or a tombstone), `written[i]` whether the
/// store took it. Returns the fills rejected (their lease was voided).
fn count_fills(counters: &Counters, filled: &[bool], written: &[bool]) -> usize {
    let (mut fills, mut rejected) = (0, 0);
    for (was_fill, ok) in filled.iter().zip(written) {
        match (*was_fill, *ok) {
            (true, true) => fills += 1,
            (true, false) => rejected += 1,
            _ => {}
        }
    }
    stats::add(&counters.fills, fills);
    stats::add(&counters.fills_rejected, rejected);
    rejected
}
