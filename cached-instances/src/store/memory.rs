//! The in-process store: a bounded, thread-safe map with per-entry TTL.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;

use super::tier::Tier;
use super::{
    Changed, CompareAndSet, InProcess, IndexPage, IndexQuery, IndexStore, IndexUpdate, Store,
    StoreFuture,
};

mod index;

/// The default bound: 64 MiB of keys and values.
const DEFAULT_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;
/// Keys hash onto this many locks (see [`Stripes`]).
const STRIPES: usize = 64;

/// Makes each key's read-decide-write atomic: every change to a key (the
/// conditional writes, swaps, deletes) holds its stripe's lock around a
/// `get` and an `insert` of the [`Tier`]. quick_cache's own per-key
/// `entry` does the same under its shard's write lock, but a vacant key or
/// a value of another size goes through a placeholder (an allocation, a
/// second lock): measured on 1,000 keys, a lease costs ~120-165 ns and a
/// fill ~130-155 ns with the stripe, against ~205-260 ns and ~220-235 ns
/// with `entry`. A cold read of 100 makes 200 such calls (BENCHMARKS.md).
/// Plain reads take no lock: they see either side of a change.
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

/// The default store: in-process, bounded by bytes, with per-entry TTL
/// (entries read least recently and least often go first when full).
///
/// An entry past its TTL reads as absent at most about one kernel tick
/// (1-10 ms) after it, never before; it is removed by the read or write
/// that finds it, or evicted when room is needed.
///
/// The map is sharded, each shard bounded by its share of the bytes: an
/// entry (key plus value) of up to 97% of the bound is kept in a store
/// under 8 MiB, and of up to 97% of 8 MiB (more than 7.7 MiB) in a larger
/// one. A heavier entry may not be: a write of it leaves the key absent,
/// as if the entry were evicted at once.
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
    map: Arc<Tier>,
    stripes: Arc<Stripes>,
    round_trips: Arc<AtomicU64>,
    /// The query indexes, apart from the map so they are never evicted.
    indexes: Arc<index::Indexes>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.map.entries())
            .field("bytes", &self.map.bytes())
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
    /// Bounds the store to `max_bytes` of keys and values (entries past
    /// their TTL but not yet removed included).
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore {
        MemoryStore {
            map: Arc::new(Tier::new(self.max_bytes)),
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
        self.map.get(key)
    }

    /// Writes raw bytes under `key`, bypassing the protocol. For tests and
    /// tools (simulating corruption, say).
    pub fn put_raw(&self, key: &str, bytes: impl Into<Bytes>, ttl: Duration) {
        let _locked = self.stripes.lock(key);
        self.map.insert(key, bytes.into(), ttl);
    }

    /// Every key currently held, for tests and tools.
    #[must_use]
    pub fn keys(&self) -> Vec<String> {
        self.map.keys()
    }

    fn count(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    fn get_now(&self, key: &str) -> Option<Bytes> {
        self.map.get(key)
    }

    /// Atomically reads `key` and decides what it holds next: `decide`
    /// returns the new bytes and TTL (or `None` to leave it) and a result.
    /// An expired entry is decided on as absent. A new entry too heavy to
    /// keep removes the key instead ([`Tier::insert`]): the write's result
    /// stands as if the entry were evicted at once, and no reader can see
    /// the old bytes after it.
    fn update<R>(
        &self,
        key: &str,
        decide: impl FnOnce(Option<Bytes>) -> (Option<(Bytes, Duration)>, R),
    ) -> R {
        let _locked = self.stripes.lock(key);
        let (next, result) = decide(self.get_now(key));
        if let Some((bytes, ttl)) = next {
            self.map.insert(key, bytes, ttl);
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

    /// Every key is answered: the map is the store. Markers included (the
    /// cache classifies them), and counted as one primitive call, as
    /// [`get`](Store::get) is.
    fn get_in_process(&self, key: &str) -> InProcess {
        self.count();
        match self.get_now(key) {
            Some(bytes) => InProcess::Holds(bytes),
            None => InProcess::Absent,
        }
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

    /// Key by key, each with its TTL.
    fn set_if_absent<'a>(
        &'a self,
        keys: &'a [String],
        value: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<bool>> {
        self.count();
        let value = Bytes::copy_from_slice(value);
        let out = keys
            .iter()
            .map(|key| {
                self.update(key, |held| match held {
                    Some(_) => (None, false),
                    None => (Some((value.clone(), ttl)), true),
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
            self.map.remove(key);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    /// `None`: waiters poll. A lease this process holds is waited on
    /// through the cache that took it; leases of another cache sharing
    /// this store are rare enough not to tax every write with a signal.
    fn watch(&self, _keys: &[String]) -> Option<Changed> {
        None
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

    /// The query, then the multi-get (both in process; two calls).
    fn index_query_and_get<'a>(
        &'a self,
        prefix: &'a str,
        query: &'a IndexQuery,
        keys: &'a [String],
    ) -> StoreFuture<
        'a,
        (
            Option<IndexPage>,
            Result<Vec<Option<Bytes>>, crate::StoreError>,
        ),
    > {
        Box::pin(async move {
            let page = self.index_query(prefix, query).await?;
            Ok((page, Store::get_many(self, keys).await))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Longer than any kernel tick (HZ >= 100): the coarse clock the
    /// deadlines are checked against has passed a deadline this far behind.
    const PAST_DEADLINE: Duration = Duration::from_millis(50);
    const LONG: Duration = Duration::from_secs(3600);

    fn cas(key: &str, expected: &[u8], value: impl Into<Bytes>) -> CompareAndSet {
        CompareAndSet {
            key: key.to_owned(),
            expected: Bytes::copy_from_slice(expected),
            value: value.into(),
            ttl: LONG,
        }
    }

    fn key(key: &str) -> Vec<String> {
        vec![key.to_owned()]
    }

    #[tokio::test]
    async fn conditional_writes_see_an_expired_entry_as_absent() {
        let store = MemoryStore::new();
        for name in ["cas", "lease", "swap"] {
            store.put_raw(name, &b"\0Lold"[..], Duration::from_millis(1));
        }
        std::thread::sleep(PAST_DEADLINE);

        // It held the expected bytes, but expired: no write.
        assert_eq!(
            store
                .compare_and_set(&[cas("cas", b"\0Lold", &b"{}"[..])])
                .await
                .unwrap(),
            vec![false]
        );
        assert_eq!(store.raw("cas"), None);

        // Absent, so leasable, whatever `replaceable` says.
        assert_eq!(
            store
                .set_if_absent_or(&key("lease"), b"\0Lnew", b"\0T", LONG)
                .await
                .unwrap(),
            vec![None]
        );
        assert_eq!(store.raw("lease").as_deref(), Some(&b"\0Lnew"[..]));

        // A swap finds nothing to hand back.
        assert_eq!(
            store.swap_many(&key("swap"), b"\0T", LONG).await.unwrap(),
            vec![None]
        );
        assert_eq!(store.keys().len(), 2);
    }

    #[tokio::test]
    async fn an_oversized_fill_leaves_the_key_absent_not_leased() {
        let store = MemoryStore::builder().max_bytes(64 * 1024).build();
        store
            .set_if_absent_or(&key("k"), b"\0Lmine", b"\0T", LONG)
            .await
            .unwrap();
        let too_big = usize::try_from(store.map.largest()).unwrap();
        let done = store
            .compare_and_set(&[cas("k", b"\0Lmine", vec![b'x'; too_big])])
            .await
            .unwrap();
        assert_eq!(done, vec![true], "written, and evicted at once");
        assert_eq!(store.raw("k"), None, "the lease is not left in place");
        // The largest that fits is kept.
        store
            .set_if_absent_or(&key("k"), b"\0Lmine", b"\0T", LONG)
            .await
            .unwrap();
        let fits = too_big - "k".len();
        store
            .compare_and_set(&[cas("k", b"\0Lmine", vec![b'x'; fits])])
            .await
            .unwrap();
        assert_eq!(store.raw("k").map(|b| b.len()), Some(fits));
    }

    #[test]
    fn the_default_store_keeps_an_entry_of_the_default_max_entry_bytes() {
        // The cache's default `max_entry_bytes` is 1 MiB, plus its key.
        let store = MemoryStore::new();
        store.put_raw("ci:{User:1}:v1", vec![b'x'; 1 << 20], LONG);
        assert!(store.raw("ci:{User:1}:v1").is_some());
    }

    #[tokio::test]
    async fn the_byte_bound_holds() {
        let max = 64 * 1024;
        let store = MemoryStore::builder().max_bytes(max).build();
        let keys: Vec<String> = (0..200).map(|i| format!("k{i:03}")).collect();
        store.swap_many(&keys, &[b'x'; 1000], LONG).await.unwrap();
        let held = store.get_many(&keys).await.unwrap();
        let held = held.iter().filter(|v| v.is_some()).count();
        assert!(held > 0 && held < 200, "{held} of 200 held");
        assert!(store.map.bytes() <= max, "{store:?}");
    }
}
