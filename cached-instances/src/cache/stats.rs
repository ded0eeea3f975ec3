//! Counters of what the cache did, readable with [`Cache::stats`](crate::Cache::stats)
//! and (feature `metrics`) exported through the `metrics` facade.

use crate::striped::StripedCounter;

/// A snapshot of the cache's counters since it was built.
///
/// It serializes (serde) as an object of its counters, for a status
/// endpoint: `{"hits": 10, "misses": 2, ...}`.
///
/// # Metrics
///
/// With the feature `metrics`, every counter is also exported through the
/// [`metrics`](https://docs.rs/metrics) facade as it changes, under the
/// names Micrometer gives cache meters, so that whichever exporter the
/// application installs (Prometheus, OpenTelemetry, StatsD...) publishes
/// them with no further code:
///
/// | counter | metric |
/// |---|---|
/// | `hits`, `misses` | `cache.gets{result="hit"}`, `cache.gets{result="miss"}` |
/// | `fills`, `fills_rejected` | `cache.puts`, `cache.puts.rejected` |
/// | `invalidations` | `cache.invalidations` |
/// | `loader_calls`, `loader_timeouts` | `cache.loads`, `cache.load.timeouts` |
/// | `lease_waits` | `cache.lease.waits` |
/// | `corrupt_entries`, `entries_too_large` | `cache.entries.corrupt`, `cache.entries.too_large` |
/// | `store_errors` | `cache.store.errors` |
/// | `queries_from_cache`, `queries_from_database` | `cache.queries{source="cache"}`, `cache.queries{source="database"}` |
/// | `index_updates`, `index_updates_missed` | `cache.index.updates`, `cache.index.updates.missed` |
/// | `reindexes`, `unwarmed` | `cache.index.reindexes`, `cache.index.unwarmed` |
///
/// and each loader call's latency as the histogram `cache.load.duration`
/// (seconds) with the labels `model` and `result` (`success`, `failure` or
/// `timeout`). A Prometheus exporter writes the dots as underscores
/// (`cache_gets`, `cache_load_duration`).
///
/// ```ignore
/// // Cargo.toml: cached-instances = { features = ["metrics"] }, metrics-exporter-prometheus
/// metrics_exporter_prometheus::PrometheusBuilder::new().install()?;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Instances served from the store.
    pub hits: u64,
    /// Instances not found in the store (absent, invalidated, being loaded or
    /// corrupt).
    pub misses: u64,
    /// Calls made to loaders (each call loads a batch).
    pub loader_calls: u64,
    /// Entries written after a load. A read's fill is counted when the
    /// store answers it, which may be after the read returned
    /// ([`Cache::settle`](crate::Cache::settle) waits for it); so are its
    /// rejections and failures.
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

/// One counter: the value [`Stats`] reads, striped per thread (a hit adds
/// to it on every read: `crate::striped`), and the metric it is exported
/// as (feature `metrics`).
#[derive(Debug)]
pub(crate) struct Counter {
    value: StripedCounter,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    name: &'static str,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    labels: &'static [(&'static str, &'static str)],
}

impl Counter {
    fn new(name: &'static str, labels: &'static [(&'static str, &'static str)]) -> Self {
        Counter {
            value: StripedCounter::default(),
            name,
            labels,
        }
    }

    fn get(&self) -> u64 {
        self.value.get()
    }
}

#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) loader_calls: Counter,
    pub(crate) fills: Counter,
    pub(crate) fills_rejected: Counter,
    pub(crate) invalidations: Counter,
    pub(crate) lease_waits: Counter,
    pub(crate) corrupt_entries: Counter,
    pub(crate) store_errors: Counter,
    pub(crate) loader_timeouts: Counter,
    pub(crate) entries_too_large: Counter,
    pub(crate) queries_from_cache: Counter,
    pub(crate) queries_from_database: Counter,
    pub(crate) index_updates: Counter,
    pub(crate) index_updates_missed: Counter,
    pub(crate) reindexes: Counter,
    pub(crate) unwarmed: Counter,
}

impl Default for Counters {
    /// The metric names: the table in [`Stats`]' docs.
    fn default() -> Self {
        Counters {
            hits: Counter::new("cache.gets", &[("result", "hit")]),
            misses: Counter::new("cache.gets", &[("result", "miss")]),
            loader_calls: Counter::new("cache.loads", &[]),
            fills: Counter::new("cache.puts", &[]),
            fills_rejected: Counter::new("cache.puts.rejected", &[]),
            invalidations: Counter::new("cache.invalidations", &[]),
            lease_waits: Counter::new("cache.lease.waits", &[]),
            corrupt_entries: Counter::new("cache.entries.corrupt", &[]),
            store_errors: Counter::new("cache.store.errors", &[]),
            loader_timeouts: Counter::new("cache.load.timeouts", &[]),
            entries_too_large: Counter::new("cache.entries.too_large", &[]),
            queries_from_cache: Counter::new("cache.queries", &[("source", "cache")]),
            queries_from_database: Counter::new("cache.queries", &[("source", "database")]),
            index_updates: Counter::new("cache.index.updates", &[]),
            index_updates_missed: Counter::new("cache.index.updates.missed", &[]),
            reindexes: Counter::new("cache.index.reindexes", &[]),
            unwarmed: Counter::new("cache.index.unwarmed", &[]),
        }
    }
}

pub(crate) fn add(counter: &Counter, n: usize) {
    if n > 0 {
        counter.value.add(n as u64);
        #[cfg(feature = "metrics")]
        metrics::counter!(counter.name, counter.labels).increment(n as u64);
    }
}

/// Records one loader call's latency (feature `metrics`; a no-op without).
pub(crate) struct LoadTimer {
    #[cfg(feature = "metrics")]
    start: std::time::Instant,
}

impl LoadTimer {
    pub(crate) fn start() -> Self {
        LoadTimer {
            #[cfg(feature = "metrics")]
            start: std::time::Instant::now(),
        }
    }

    /// `result`: `success`, `failure` or `timeout`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn finish(self, model: &'static str, result: &'static str) {
        #[cfg(feature = "metrics")]
        metrics::histogram!("cache.load.duration", "model" => model, "result" => result)
            .record(self.start.elapsed());
    }
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        let get = Counter::get;
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
