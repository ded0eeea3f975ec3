//! The `metrics` feature: every counter of `Stats` is exported through the
//! `metrics` facade under its Micrometer-style name as it changes, and each
//! loader call's latency as a histogram; read back here from metrics-util's
//! debugging recorder and compared with `Cache::stats` and with counts kept
//! by the loader itself. `Stats` serializes as an object of its counters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cached_instances::{Cache, CachedInstance, LoadError, Loader, Stats};
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

/// `name{label=value,...}` -> value, for counters; histograms -> sample count.
fn exported(recorder: &DebuggingRecorder) -> BTreeMap<String, u64> {
    recorder
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
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
