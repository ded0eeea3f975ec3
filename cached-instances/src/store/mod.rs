//! Stores: where cached bytes live.
//!
//! A store is a small set of atomic primitives over byte keys. It knows
//! nothing of instances, leases or tombstones: the consistency protocol is
//! built once, in the cache layer, on top of these primitives, so every store
//! behaves the same. Each primitive is atomic per key and handles a batch of
//! keys in one round trip.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

use crate::error::StoreError;

mod index;
mod memory;
pub(crate) mod plan;
#[cfg(feature = "redis")]
mod redis;
mod tier;

pub use index::{IndexPage, IndexQuery, IndexRecord, IndexUpdate, ScoreRange, WARM_SUFFIX};

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{NearCache, NearCacheStats, RedisStore, RedisStoreBuilder};
pub use memory::{MemoryStore, MemoryStoreBuilder};

/// The future a store primitive returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What a store can tell of a key from its own process memory, without
/// waiting: the answer of [`Store::get_in_process`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InProcess {
    /// The key holds these bytes: exactly what [`Store::get`] would read now.
    Holds(Bytes),
    /// The key holds nothing: [`Store::get`] would read `None` now.
    Absent,
    /// Not answerable without I/O (or not at all from this process): the
    /// caller reads the key with [`Store::get`].
    Unknown,
}

/// The answer of [`Store::watch`]: a future that completes once one of the
/// watched keys may have changed. It may complete without a change (a
/// change to another key it cannot tell apart, a reconnect): the waiter
/// reads the keys again either way, so an early wake costs one read.
#[must_use = "a watch tells nothing unless awaited"]
pub struct Changed(Pin<Box<dyn Future<Output = ()> + Send + 'static>>);

impl Changed {
    /// The watch that completes when `changed` does.
    pub fn new(changed: impl Future<Output = ()> + Send + 'static) -> Self {
        Changed(Box::pin(changed))
    }
}

impl Future for Changed {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for Changed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changed").finish_non_exhaustive()
    }
}

/// A conditional write: set `key` to `value` only if it holds `expected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareAndSet {
    /// The key to write.
    pub key: String,
    /// The bytes the key must hold for the write to happen.
    pub expected: Bytes,
    /// The bytes to write.
    pub value: Bytes,
    /// Time to live of the written value.
    pub ttl: Duration,
}

/// The atomic primitives a cache store provides.
///
/// Implement it to put the cache on another backend; the cache layer and the
/// conformance tests do the rest. Every method handles its whole batch in one
/// round trip where the backend allows it, and is atomic per key.
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>>;

    /// Reads one key from what the store holds in this process's memory,
    /// synchronously: the cache tries it on every single-key read before
    /// [`get`](Self::get), so that an in-process hit costs no future, no
    /// allocation and no wait.
    ///
    /// The contract: [`InProcess::Holds`] and [`InProcess::Absent`] must be
    /// exactly what `get` would return at this moment (the cache serves
    /// them, or goes on to lease the key, without calling `get`), and the
    /// call must not block on I/O or on another task;
    /// [`InProcess::Unknown`] sends the caller to `get`. A store with
    /// nothing in process answers `Unknown`, always. A call that answers is
    /// one read of the store, as `get` is (a store that counts its
    /// primitive calls counts it).
    ///
    /// The cache only asks while the store is healthy (no failed call, no
    /// queued invalidation, caching on): in degraded mode reads go through
    /// `get` as they always did.
    fn get_in_process(&self, key: &str) -> InProcess;

    /// Reads many keys; the result is in `keys` order.
    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Bytes>>>;

    /// For each key: if it is absent or holds exactly `replaceable`, sets it to
    /// `value` with `ttl` and yields `None`; otherwise leaves it and yields
    /// what it holds.
    fn set_if_absent_or<'a>(
        &'a self,
        keys: &'a [String],
        value: &'a [u8],
        replaceable: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<Option<Bytes>>>;

    /// Sets each key that is absent to `value`, and yields for each whether
    /// it was set. A store may set a batch (or each request's share of it)
    /// all or none, atomically, as Redis' `MSETNX` does: then where one of
    /// its keys exists, none is set.
    ///
    /// The keys expire after `ttl` where the store sets a TTL in the same
    /// step. One that cannot may leave them without a TTL (`MSETNX` sets
    /// none), so `value` must say itself when it is stale: the cache sets
    /// only its leases this way, and they carry their deadline.
    ///
    /// The cheap lease: one command for a batch on a Redis server, where
    /// [`set_if_absent_or`](Self::set_if_absent_or) is one per key. The
    /// cache takes it for a read's misses when its multi-get found them all
    /// absent, and starts a batch read with it while the model's batch
    /// reads find every key absent; the keys it did not set are leased with
    /// `set_if_absent_or`.
    fn set_if_absent<'a>(
        &'a self,
        keys: &'a [String],
        value: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<bool>>;

    /// Applies each [`CompareAndSet`]; yields whether each was written.
    fn compare_and_set<'a>(&'a self, ops: &'a [CompareAndSet]) -> StoreFuture<'a, Vec<bool>>;

    /// Sets every key to `value` with `ttl`, yielding what each held before.
    fn swap_many<'a>(
        &'a self,
        keys: &'a [String],
        value: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<Option<Bytes>>>;

    /// Deletes keys.
    fn delete_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, ()>;

    /// Watches `keys` for a change made by anyone, as far as this store
    /// hears of changes without asking: what a reader waits on between its
    /// reads of keys another process holds leases on, rather than polling
    /// (the cache's lease waits, CONSISTENCY.md). `None` when the store
    /// hears of none: the waiter polls (1 ms, then doubling).
    ///
    /// The contract: the watch is armed when this returns, and completes
    /// once one of `keys` may have changed since, as far as the store
    /// hears of changes; early completions are allowed (the waiter reads
    /// again). A store may hear of a key's changes only once a read of it
    /// has gone through the store, as Redis tracks keys: the cache's
    /// waiters read the keys through the store right after this call. The
    /// call must not block.
    ///
    /// A [`RedisStore`] watches through a tracking connection: with a near
    /// cache, the waiter's reads go over the cache's, so Redis pushes the
    /// next change of each key read (the holder's fill); without one, over
    /// a connection the store keeps for lease waits alone, the watch reads
    /// the keys itself when first awaited. The [`MemoryStore`] answers
    /// `None`: a lease held in the same process is waited on through the
    /// cache itself, whatever the store.
    ///
    /// Required, as [`indexes`](Self::indexes) is: a wrapper forwards its
    /// inner store's watch, or answers `None` to have waiters poll.
    fn watch(&self, keys: &[String]) -> Option<Changed>;

    /// The store's query indexes (see [`query`](crate::query)), or `None`
    /// when it has none: the cache then answers queries from the loaders.
    ///
    /// Required, with no default, so that a store (or a wrapper around
    /// one) says what it does: a wrapper forwards its inner store's
    /// indexes, or implements [`IndexStore`] itself, or states `None`.
    /// The same holds for [`get_in_process`](Self::get_in_process): a
    /// wrapper forwards it, or answers [`InProcess::Unknown`] to see every
    /// read go through its `get`; and for [`watch`](Self::watch). A wrapper
    /// that forgets one does not compile, rather than turning the indexes,
    /// the in-process reads or the watches off (this one forgets all
    /// three):
    ///
    /// ```compile_fail,E0046
    /// use std::time::Duration;
    /// use bytes::Bytes;
    /// use cached_instances::MemoryStore;
    /// use cached_instances::store::{CompareAndSet, Store, StoreFuture};
    ///
    /// struct Logged(MemoryStore);
    ///
    /// impl Store for Logged {
    ///     fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
    ///         self.0.get(key)
    ///     }
    ///     // Missing: `fn get_in_process(&self, key: &str) -> InProcess`.
    ///     fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Bytes>>> {
    ///         self.0.get_many(keys)
    ///     }
    ///     fn set_if_absent_or<'a>(
    ///         &'a self,
    ///         keys: &'a [String],
    ///         value: &'a [u8],
    ///         replaceable: &'a [u8],
    ///         ttl: Duration,
    ///     ) -> StoreFuture<'a, Vec<Option<Bytes>>> {
    ///         self.0.set_if_absent_or(keys, value, replaceable, ttl)
    ///     }
    ///     fn set_if_absent<'a>(
    ///         &'a self,
    ///         keys: &'a [String],
    ///         value: &'a [u8],
    ///         ttl: Duration,
    ///     ) -> StoreFuture<'a, Vec<bool>> {
    ///         self.0.set_if_absent(keys, value, ttl)
    ///     }
    ///     fn compare_and_set<'a>(&'a self, ops: &'a [CompareAndSet]) -> StoreFuture<'a, Vec<bool>> {
    ///         self.0.compare_and_set(ops)
    ///     }
    ///     fn swap_many<'a>(
    ///         &'a self,
    ///         keys: &'a [String],
    ///         value: &'a [u8],
    ///         ttl: Duration,
    ///     ) -> StoreFuture<'a, Vec<Option<Bytes>>> {
    ///         self.0.swap_many(keys, value, ttl)
    ///     }
    ///     fn delete_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, ()> {
    ///         self.0.delete_many(keys)
    ///     }
    ///     // Missing: `fn watch(&self, keys: &[String]) -> Option<Changed>`.
    ///     // Missing: `fn indexes(&self) -> Option<&dyn IndexStore>`.
    /// }
    /// ```
    ///
    /// The forwarding a wrapper writes instead:
    ///
    /// ```
    /// # use cached_instances::store::{Changed, InProcess, IndexStore, Store};
    /// # fn forward<S: Store>(inner: &S) -> Option<&dyn IndexStore> {
    /// inner.indexes()
    /// # }
    /// # fn forward_read<S: Store>(inner: &S, key: &str) -> InProcess {
    /// inner.get_in_process(key)
    /// # }
    /// # fn forward_watch<S: Store>(inner: &S, keys: &[String]) -> Option<Changed> {
    /// inner.watch(keys)
    /// # }
    /// ```
    fn indexes(&self) -> Option<&dyn IndexStore>;
}

/// The query index primitives of a store (see [`query`](crate::query) and
/// the layout in the store's `index` module docs), reached through
/// [`Store::indexes`].
pub trait IndexStore: Send + Sync {
    /// Marks each member of the index under `prefix` as being updated by
    /// `token` (replacing any other update's token).
    fn index_lease<'a>(
        &'a self,
        prefix: &'a str,
        members: &'a [String],
        token: &'a [u8],
    ) -> StoreFuture<'a, ()>;

    /// Applies each update whose member is still marked with `token`
    /// (clearing the mark), atomically per member: the memberships its
    /// record lists are removed, the new ones added, the record replaced.
    /// Yields whether each was applied.
    fn index_apply<'a>(
        &'a self,
        prefix: &'a str,
        token: &'a [u8],
        updates: &'a [IndexUpdate],
    ) -> StoreFuture<'a, Vec<bool>>;

    /// Runs `query` on the index under `prefix`, atomically; `None` when the
    /// key `{prefix}warm` does not exist (the index is not known complete)
    /// and `query.ignore_warm` is not set.
    fn index_query<'a>(
        &'a self,
        prefix: &'a str,
        query: &'a IndexQuery,
    ) -> StoreFuture<'a, Option<IndexPage>>;

    /// [`index_query`](Self::index_query), and the entries under `keys` as
    /// [`Store::get_many`] reads them, in one call: a list's query with the
    /// entries of its last page (the cache's page guess). The entries are
    /// read after the query began (on a Redis server, right behind it on
    /// the same connection, in one request when the query allows). The
    /// call fails when the query does; the read of the entries can fail
    /// alone (the inner result).
    #[allow(clippy::type_complexity)]
    fn index_query_and_get<'a>(
        &'a self,
        prefix: &'a str,
        query: &'a IndexQuery,
        keys: &'a [String],
    ) -> StoreFuture<'a, (Option<IndexPage>, Result<Vec<Option<Bytes>>, StoreError>)>;
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        (**self).get(key)
    }
    fn get_in_process(&self, key: &str) -> InProcess {
        (**self).get_in_process(key)
    }
    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        (**self).get_many(keys)
    }
    fn set_if_absent_or<'a>(
        &'a self,
        keys: &'a [String],
        value: &'a [u8],
        replaceable: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        (**self).set_if_absent_or(keys, value, replaceable, ttl)
    }
    fn set_if_absent<'a>(
        &'a self,
        keys: &'a [String],
        value: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<bool>> {
        (**self).set_if_absent(keys, value, ttl)
    }
    fn compare_and_set<'a>(&'a self, ops: &'a [CompareAndSet]) -> StoreFuture<'a, Vec<bool>> {
        (**self).compare_and_set(ops)
    }
    fn swap_many<'a>(
        &'a self,
        keys: &'a [String],
        value: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        (**self).swap_many(keys, value, ttl)
    }
    fn delete_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, ()> {
        (**self).delete_many(keys)
    }
    fn watch(&self, keys: &[String]) -> Option<Changed> {
        (**self).watch(keys)
    }
    fn indexes(&self) -> Option<&dyn IndexStore> {
        (**self).indexes()
    }
}
