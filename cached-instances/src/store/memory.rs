//! The in-process store: a bounded, thread-safe map with per-entry TTL.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::sync::Cache as Moka;

use super::{CompareAndSet, IndexPage, IndexQuery, IndexStore, IndexUpdate, Store, StoreFuture};

mod index;

/// The default bound: 64 MiB of keys and values.
const DEFAULT_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;
/// Keys hash onto this many locks (see [`Stripes`]).
const STRIPES: usize = 64;

/// Makes each key's read-decide-write atomic: every change to a key (the
/// conditional writes, swaps, deletes) holds its stripe's lock around a
/// `get` and an `insert`. Moka's own `and_compute_with` does the same per
/// key, but registers a waiter in a concurrent map and flushes an epoch
/// guard on every call, about 7,900 instructions (callgrind), twice what
/// the lock, `get` and `insert` cost; a cold read of 100 makes 200 such
/// calls (BENCHMARKS.md). Plain reads take no lock: they see either side
/// of a change, as with moka's compute.
struct Stripes {
    locks: Box<[Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Stripes {
    fn default() -> Self {
        Stripes {
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl Stripes {
    fn lock(&self, key: &str) -> std::sync::MutexGuard<'_, ()> {
        let hash = self.hasher.hash_one(key);
        // The modulo keeps the index in range; the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let stripe = &self.locks[(hash % STRIPES as u64) as usize];
        // The lock guards no data, so a panic under it leaves nothing torn.
        stripe.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Clone)]
struct Entry {
    bytes: Bytes,
    ttl: Duration,
}

struct PerEntryTtl;

impl moka::Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }
    fn expire_after_update(
        &self,
        _: &String,
        entry: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// The default store: in-process, bounded by bytes, with per-entry TTL
/// eviction (least recently used entries go first when full).
///
/// Every primitive is atomic per key. Cloning is cheap and shares the map.
///
/// ```
/// use cached_instances::MemoryStore;
///
/// let store = MemoryStore::builder().max_bytes(8 * 1024 * 1024).build();
/// # let _ = store;
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    map: Moka<String, Entry>,
    stripes: Arc<Stripes>,
    round_trips: Arc<AtomicU64>,
    /// The query indexes, apart from the map so they are never evicted.
    indexes: Arc<index::Indexes>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.map.entry_count())
            .field("bytes", &self.map.weighted_size())
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

/// Configures a [`MemoryStore`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryStoreBuilder {
    max_bytes: u64,
}

impl MemoryStoreBuilder {
    /// Bounds the store to about `max_bytes` of keys and values.
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore {
        let map = Moka::builder()
            .max_capacity(self.max_bytes)
            .weigher(|key: &String, entry: &Entry| {
                u32::try_from(key.len() + entry.bytes.len()).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .build();
        MemoryStore {
            map,
            stripes: Default::default(),
            round_trips: Default::default(),
            indexes: Default::default(),
        }
    }
}

impl MemoryStore {
    /// A store bounded to 64 MiB.
    #[must_use]
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configures a store.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            max_bytes: DEFAULT_CAPACITY_BYTES,
        }
    }

    /// How many primitive calls ("round trips") this store has served.
    #[must_use]
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// The bytes held under `key`, markers included. For tests and tools.
    #[must_use]
    pub fn raw(&self, key: &str) -> Option<Bytes> {
        self.map.get(key).map(|e| e.bytes)
    }

    /// Writes raw bytes under `key`, bypassing the protocol. For tests and
    /// tools (simulating corruption, say).
    pub fn put_raw(&self, key: &str, bytes: impl Into<Bytes>, ttl: Duration) {
        let _locked = self.stripes.lock(key);
        self.map.insert(
            key.to_owned(),
            Entry {
                bytes: bytes.into(),
                ttl,
            },
        );
    }

    /// Every key currently held, for tests and tools.
    #[must_use]
    pub fn keys(&self) -> Vec<String> {
        self.map.iter().map(|(k, _)| (*k).clone()).collect()
    }

    fn count(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    fn get_now(&self, key: &str) -> Option<Bytes> {
        self.map.get(key).map(|e| e.bytes)
    }

    /// Atomically reads `key` and decides what it holds next: `decide`
    /// returns the new bytes and TTL (or `None` to leave it) and a result.
    fn update<R>(
        &self,
        key: &str,
        decide: impl FnOnce(Option<Bytes>) -> (Option<(Bytes, Duration)>, R),
    ) -> R {
        let _locked = self.stripes.lock(key);
        let (next, result) = decide(self.get_now(key));
        if let Some((bytes, ttl)) = next {
            self.map.insert(key.to_owned(), Entry { bytes, ttl });
        }
        result
    }
}

impl Store for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        self.count();
        let value = self.get_now(key);
        Box::pin(std::future::ready(Ok(value)))
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        self.count();
        let values = keys.iter().map(|k| self.get_now(k)).collect();
        Box::pin(std::future::ready(Ok(values)))
    }

    fn set_if_absent_or<'a>(
        &'a self,
        keys: &'a [String],
        value: &'a [u8],
        replaceable: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        self.count();
        let value = Bytes::copy_from_slice(value);
        let out = keys
            .iter()
            .map(|key| {
                self.update(key, |held| match held {
                    Some(held) if held != replaceable => (None, Some(held)),
                    _ => (Some((value.clone(), ttl)), None),
                })
            })
            .collect();
        Box::pin(std::future::ready(Ok(out)))
    }

    fn compare_and_set<'a>(&'a self, ops: &'a [CompareAndSet]) -> StoreFuture<'a, Vec<bool>> {
        self.count();
        let out = ops
            .iter()
            .map(|op| {
                self.update(&op.key, |held| match held {
                    Some(held) if held == op.expected => (Some((op.value.clone(), op.ttl)), true),
                    _ => (None, false),
                })
            })
            .collect();
        Box::pin(std::future::ready(Ok(out)))
    }

    fn swap_many<'a>(
        &'a self,
        keys: &'a [String],
        value: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        self.count();
        let value = Bytes::copy_from_slice(value);
        let out = keys
            .iter()
            .map(|key| self.update(key, |held| (Some((value.clone(), ttl)), held)))
            .collect();
        Box::pin(std::future::ready(Ok(out)))
    }

    fn delete_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, ()> {
        self.count();
        for key in keys {
            let _locked = self.stripes.lock(key);
            self.map.invalidate(key.as_str());
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn indexes(&self) -> Option<&dyn IndexStore> {
        Some(self)
    }
}

impl IndexStore for MemoryStore {
    fn index_lease<'a>(
        &'a self,
        prefix: &'a str,
        members: &'a [String],
        token: &'a [u8],
    ) -> StoreFuture<'a, ()> {
        self.count();
        self.indexes.lease(prefix, members, token);
        Box::pin(std::future::ready(Ok(())))
    }

    fn index_apply<'a>(
        &'a self,
        prefix: &'a str,
        token: &'a [u8],
        updates: &'a [IndexUpdate],
    ) -> StoreFuture<'a, Vec<bool>> {
        self.count();
        let applied = self.indexes.apply(prefix, token, updates);
        Box::pin(std::future::ready(Ok(applied)))
    }

    fn index_query<'a>(
        &'a self,
        prefix: &'a str,
        query: &'a IndexQuery,
    ) -> StoreFuture<'a, Option<IndexPage>> {
        self.count();
        let warm = format!("{prefix}{}", super::WARM_SUFFIX);
        let page = (query.ignore_warm || self.get_now(&warm).is_some())
            .then(|| self.indexes.query(prefix, query));
        Box::pin(std::future::ready(Ok(page)))
    }
}
