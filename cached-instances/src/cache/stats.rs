//! Counters of what the cache did, readable with [`Cache::stats`](crate::Cache::stats).

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the cache's counters since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Instances served from the store.
    pub hits: u64,
    /// Instances not found in the store (absent, invalidated, being loaded or
    /// corrupt).
    pub misses: u64,
    /// Calls made to loaders (each call loads a batch).
    pub loader_calls: u64,
    /// Entries written after a load.
    pub fills: u64,
    /// Fills rejected because a write voided the lease in between (the
    /// stale-set race, caught).
    pub fills_rejected: u64,
    /// Instances and raw keys invalidated by writes, cascades included.
    pub invalidations: u64,
    /// Reads that waited for another reader's lease.
    pub lease_waits: u64,
    /// Entries whose bytes could not be decoded (or were larger than
    /// [`max_entry_bytes`](crate::CacheBuilder::max_entry_bytes)) and were
    /// replaced.
    pub corrupt_entries: u64,
    /// Store operations that failed; the cache fell back to the loaders.
    pub store_errors: u64,
    /// Loader calls that ran out of
    /// [`loader_timeout`](crate::CacheBuilder::loader_timeout).
    pub loader_timeouts: u64,
    /// Representations larger than
    /// [`max_entry_bytes`](crate::CacheBuilder::max_entry_bytes): served to
    /// the caller, not cached.
    pub entries_too_large: u64,
    /// Queries ([`Cache::query`](crate::Cache::query) and its variants)
    /// answered with [`Source::Cache`](crate::query::Source::Cache): from
    /// the store's indexes of a warmed model (or, for a query that cannot
    /// match anything, without any lookup).
    pub queries_from_cache: u64,
    /// Queries answered with [`Source::Database`](crate::query::Source::Database):
    /// through [`Loader::query`](crate::Loader::query), because the model
    /// is not warmed, the store is unavailable or has queued operations to
    /// deliver, or caching is off. Each is also one of `loader_calls`.
    pub queries_from_database: u64,
    /// Query-index records applied under their lease, by writes, by
    /// [`warm`](crate::Cache::warm) and by re-indexes (below). An update
    /// whose lease a later one took over is not counted: the later one is.
    pub index_updates: u64,
    /// Writes whose query-index update could not reach the store (it was
    /// down, or failed the lease or the apply): each is queued, and
    /// re-indexed when the store answers again.
    pub index_updates_missed: u64,
    /// Queued index updates re-indexed on delivery (leased, reloaded and
    /// applied), keeping their model warmed.
    pub reindexes: u64,
    /// Models un-warmed because a queued re-index failed too (the store
    /// failed again, or the loader): their warm mark is deleted (or queued
    /// for deletion), and their queries go to the loader until the next
    /// [`warm`](crate::Cache::warm). Counted once per model version and
    /// delivery, whether or not the model was warmed.
    pub unwarmed: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) loader_calls: AtomicU64,
    pub(crate) fills: AtomicU64,
    pub(crate) fills_rejected: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) lease_waits: AtomicU64,
    pub(crate) corrupt_entries: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) loader_timeouts: AtomicU64,
    pub(crate) entries_too_large: AtomicU64,
    pub(crate) queries_from_cache: AtomicU64,
    pub(crate) queries_from_database: AtomicU64,
    pub(crate) index_updates: AtomicU64,
    pub(crate) index_updates_missed: AtomicU64,
    pub(crate) reindexes: AtomicU64,
    pub(crate) unwarmed: AtomicU64,
}

pub(crate) fn add(counter: &AtomicU64, n: usize) {
    if n > 0 {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            hits: get(&self.hits),
            misses: get(&self.misses),
            loader_calls: get(&self.loader_calls),
            fills: get(&self.fills),
            fills_rejected: get(&self.fills_rejected),
            invalidations: get(&self.invalidations),
            lease_waits: get(&self.lease_waits),
            corrupt_entries: get(&self.corrupt_entries),
            store_errors: get(&self.store_errors),
            loader_timeouts: get(&self.loader_timeouts),
            entries_too_large: get(&self.entries_too_large),
            queries_from_cache: get(&self.queries_from_cache),
            queries_from_database: get(&self.queries_from_database),
            index_updates: get(&self.index_updates),
            index_updates_missed: get(&self.index_updates_missed),
            reindexes: get(&self.reindexes),
            unwarmed: get(&self.unwarmed),
        }
    }
}
