//! The `metrics` feature: every counter of `Stats` is exported through the
//! `metrics` facade under its Micrometer-style name as it changes, and each
//! loader call's latency as a histogram; read back here from metrics-util's
//! debugging recorder and compared with `Cache::stats` and with counts kept
//! by the loader itself. `Stats` serializes as an object of its counters.
//! A near cache's stats are exported by the store, once a second.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cached_instances::{
    Cache, CachedInstance, LoadError, Loader, NearCache, NearCacheStats, RedisStore, Stats, Store,
};
use cached_instances_testkit::poll::eventually;
use cached_instances_testkit::redis_server::RedisServer;
use metrics::SharedString;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[derive(CachedInstance, Debug, Clone, PartialEq)]
pub struct Item {
    #[cached(pk)]
    pub id: i64,
    pub name: String,
}

/// Items `1..=10`; counts its calls; `id` 13 fails.
#[derive(Clone, Default)]
struct Db(Arc<AtomicUsize>);

impl Loader<Item> for Db {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Item>, LoadError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        if pks.contains(&13) {
            return Err(LoadError::msg("unlucky"));
        }
        Ok(pks
            .iter()
            .filter(|&&id| (1..=10).contains(&id))
            .map(|&id| Item {
                id,
                name: format!("item {id}"),
            })
            .collect())
    }
}

/// `name{label=value,...}`: how the tests name a metric.
fn metric_name(key: &metrics::Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

/// `name{label=value,...}` -> value, for counters; histograms -> sample count.
fn exported(recorder: &DebuggingRecorder) -> BTreeMap<String, u64> {
    recorder
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let name = metric_name(key.key());
            let value = match value {
                DebugValue::Counter(n) => n,
                DebugValue::Histogram(samples) => samples.len() as u64,
                DebugValue::Gauge(g) => g.into_inner() as u64,
            };
            (name, value)
        })
        .collect()
}

#[tokio::test] // current thread: the local recorder sees every call
async fn counters_and_loader_latency_are_exported() {
    let recorder = DebuggingRecorder::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let db = Db::default();
    let cache = Cache::builder().loader::<Item>(db.clone()).build().unwrap();

    // 1 miss + fill, then 1 hit; then 1 hit and 2 misses (one absent row).
    cache.get::<Item>(&1).await.unwrap();
    cache.get::<Item>(&1).await.unwrap();
    cache.get_many::<Item>(&[1, 2, 99]).await.unwrap();
    // A write: invalidates 1 and reloads it (a loader call, a fill).
    let one = cache.get::<Item>(&1).await.unwrap().unwrap();
    cache.saved::<Item>(&one).await.unwrap();
    // A failing load.
    assert!(cache.get::<Item>(&13).await.is_err());

    let stats = cache.stats();
    let metrics = exported(&recorder);
    let metric = |name: &str| metrics.get(name).copied().unwrap_or(0);
    assert_eq!(
        (stats.hits, stats.misses, stats.loader_calls),
        (3, 4, 4),
        "{stats:?}"
    );
    assert_eq!(db.0.load(Ordering::SeqCst), 4);
    // Every exported counter agrees with `Stats`.
    assert_eq!(metric("cache.gets{result=hit}"), stats.hits);
    assert_eq!(metric("cache.gets{result=miss}"), stats.misses);
    assert_eq!(metric("cache.loads{}"), stats.loader_calls);
    assert_eq!(metric("cache.puts{}"), stats.fills);
    assert_eq!(stats.fills, 3);
    assert_eq!(metric("cache.invalidations{}"), stats.invalidations);
    assert_eq!(stats.invalidations, 1);
    // One latency sample per loader call, by outcome.
    assert_eq!(metric("cache.load.duration{model=Item,result=success}"), 3);
    assert_eq!(metric("cache.load.duration{model=Item,result=failure}"), 1);
    // Nothing exported that is not one of ours.
    for name in metrics.keys() {
        assert!(name.starts_with("cache."), "{name}");
    }
}

#[tokio::test]
async fn stats_serialize_as_an_object_of_counters() {
    let cache = Cache::builder()
        .loader::<Item>(Db::default())
        .build()
        .unwrap();
    cache.get::<Item>(&1).await.unwrap();
    cache.get::<Item>(&1).await.unwrap();
    let stats: Stats = cache.stats();
    let json = serde_json::to_value(stats).unwrap();
    assert_eq!(json["hits"], 1);
    assert_eq!(json["misses"], 1);
    assert_eq!(json["loader_calls"], 1);
    assert_eq!(json.as_object().unwrap().len(), 17, "{json}");
}

/// A recorder that keeps each counter's and gauge's value as last set,
/// for metrics exported as absolute values: metrics-util's debugging
/// recorder drains what a snapshot reads, so it would report 0 between
/// two exports.
#[derive(Default)]
struct Latest(Mutex<BTreeMap<String, Arc<AtomicU64>>>);

impl Latest {
    fn slot(&self, key: &metrics::Key) -> Arc<AtomicU64> {
        Arc::clone(self.0.lock().unwrap().entry(metric_name(key)).or_default())
    }

    fn counter(&self, name: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |value| value.load(Ordering::SeqCst))
    }

    /// A gauge keeps its `f64` as bits (`metrics`' `GaugeFn` for `AtomicU64`).
    fn gauge(&self, name: &str) -> u64 {
        f64::from_bits(self.counter(name)) as u64
    }

    /// What the near cache's metrics say, in `NearCacheStats`' terms.
    fn near(&self) -> NearCacheStats {
        let mut stats = NearCacheStats::default();
        stats.hits = self.counter("cache.near.gets{result=hit}");
        stats.misses = self.counter("cache.near.gets{result=miss}");
        stats.invalidations = self.counter("cache.near.invalidations{}");
        stats.flushes = self.counter("cache.near.flushes{}");
        stats.entries = self.gauge("cache.near.entries{}");
        stats.bytes = self.gauge("cache.near.bytes{}");
        stats.tracking = self.gauge("cache.near.tracking{}") == 1;
        stats
    }
}

impl metrics::Recorder for Latest {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: SharedString) {}

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.slot(key))
    }

    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.slot(key))
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// One test, run on runtimes of its own: the near caches' metrics are
/// process-wide totals, which another test's store would add to.
#[test]
fn a_near_caches_stats_are_exported_whole_and_its_gauges_leave_with_the_store() {
    // Current-thread runtimes: the local recorder sees the export task.
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let recorder = Latest::default();
    let guard = metrics::set_default_local_recorder(&recorder);
    let server = RedisServer::start();
    let set = |key: &str, value: &str| {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query(&mut server.connection())
            .unwrap();
    };
    let connect = async || {
        RedisStore::builder(server.url())
            .near_cache(NearCache::new())
            .connect()
            .await
            .unwrap()
    };
    set("a", "one");
    set("b", "two");

    let gone = runtime().block_on(async {
        let store = connect().await;
        // Two misses (the first read of each key), two hits; then another
        // client's write of `a`, whose push evicts it. One flush: the tier
        // starts empty when tracking comes on.
        for key in ["a", "a", "a", "b"] {
            assert!(store.get(key).await.unwrap().is_some());
        }
        set("a", "uno");
        assert!(eventually(async || store.near_cache_stats().unwrap().invalidations == 1).await);
        let stats = store.near_cache_stats().unwrap();
        assert_eq!(
            (stats.hits, stats.misses, stats.entries, stats.flushes),
            (2, 2, 1, 1),
            "{stats:?}"
        );
        assert!(stats.tracking && stats.bytes > 0, "{stats:?}");
        assert!(
            eventually(async || recorder.near() == stats).await,
            "exported {:?}, held {stats:?}",
            recorder.near()
        );

        // A recorder installed after those exports (an application that
        // sets up its exporter late) reads the whole values, not what
        // changed since.
        drop(guard);
        let late = Latest::default();
        let _guard = metrics::set_default_local_recorder(&late);
        assert!(
            eventually(async || late.near() == stats).await,
            "exported {:?}, held {stats:?}",
            late.near()
        );

        // Dropped: nothing held or tracked any more; what it counted stays.
        drop(store);
        let mut gone = stats;
        (gone.entries, gone.bytes, gone.tracking) = (0, 0, false);
        assert!(
            eventually(async || late.near() == gone).await,
            "exported {:?}",
            late.near()
        );
        gone
    });

    // A store whose runtime shuts down takes its gauges back as its export
    // task is dropped, though the store itself is still held.
    let recorder = Latest::default();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let shutting = runtime();
    let store = shutting.block_on(async {
        let store = connect().await;
        assert!(store.get("b").await.unwrap().is_some());
        assert!(
            eventually(async || recorder.near().entries == 1 && recorder.near().tracking).await,
            "exported {:?}",
            recorder.near()
        );
        store
    });
    drop(shutting);
    let near = recorder.near();
    assert_eq!(
        (near.entries, near.bytes, near.tracking),
        (0, 0, false),
        "{near:?}"
    );
    assert_eq!(near.misses, gone.misses + 1, "the counts stay: {near:?}");
    drop(store);
}
