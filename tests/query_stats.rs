//! The query counters of `Cache::stats()`: queries by the side that
//! answered them, index records applied by warm and by writes, and writes
//! whose index update missed the store, re-indexed on delivery or
//! un-warming their model; on the `MemoryStore` and on a real Redis server
//! (started by the test).

use std::time::{Duration, Instant};

use cached_instances::query::{Query, Source};
use cached_instances::{Cache, Error, MemoryStore, RedisStore, Stats, Store};
use cached_instances_testkit::faults::Faulty;
use cached_instances_testkit::query_model;
use cached_instances_testkit::query_model::{Db, Member, in_country, member};
use cached_instances_testkit::redis_server::RedisServer;

const RETRY: Duration = Duration::from_millis(5);
const PATIENCE: Duration = Duration::from_secs(20);

fn cache_over(store: impl Store, db: &Db) -> Cache {
    query_model::cache_over(store, db, RETRY)
}

/// The query counters of `stats`, in declaration order.
fn query_counters(stats: &Stats) -> [u64; 6] {
    [
        stats.queries_from_cache,
        stats.queries_from_database,
        stats.index_updates,
        stats.index_updates_missed,
        stats.reindexes,
        stats.unwarmed,
    ]
}

/// Each query, write and warm moves exactly the counters it should.
async fn counts_queries_and_index_updates(store: impl Store) {
    let db = Db::seeded(10, "FR");
    let cache = cache_over(store, &db);
    assert_eq!(query_counters(&cache.stats()), [0; 6]);

    // Not warmed: the loader's `query` answers.
    let found = cache.query_pks(&in_country("FR")).await.unwrap();
    assert_eq!((found.count, found.source), (10, Source::Database));
    assert_eq!(query_counters(&cache.stats()), [0, 1, 0, 0, 0, 0]);
    assert_eq!(db.queries(), 1);

    // Warm applies one record per instance.
    let report = cache.warm::<Member>().await.unwrap();
    assert_eq!(report.indexed, 10);
    assert_eq!(query_counters(&cache.stats()), [0, 1, 10, 0, 0, 0]);

    // Every query API counts, from the cache now.
    let found = cache.query(&in_country("FR")).await.unwrap();
    assert_eq!((found.count, found.source), (10, Source::Cache));
    let json = cache.query_json(&in_country("GB")).await.unwrap();
    assert_eq!((json.count, json.source), (0, Source::Cache));
    let pks = cache.query_pks(&in_country("FR").limit(2)).await.unwrap();
    assert_eq!((pks.items, pks.source), (vec![0, 1], Source::Cache));
    assert_eq!(query_counters(&cache.stats()), [3, 1, 10, 0, 0, 0]);
    assert_eq!(db.queries(), 1);

    // A query that fails is in neither counter.
    let bad = Query::<Member>::new().filter("nope", 1);
    assert!(matches!(cache.query(&bad).await, Err(Error::Query(_))));
    assert_eq!(query_counters(&cache.stats()), [3, 1, 10, 0, 0, 0]);

    // A write's update, a delete's removal, a create: one record each.
    let moved = member(3, "GB");
    db.put(moved.clone());
    cache.saved(&moved).await.unwrap();
    let gone = db.remove(4).unwrap();
    cache.deleted(&gone).await.unwrap();
    let created = member(10, "GB");
    db.put(created.clone());
    cache.saved(&created).await.unwrap();
    assert_eq!(query_counters(&cache.stats()), [3, 1, 13, 0, 0, 0]);
    let found = cache.query_pks(&in_country("GB")).await.unwrap();
    assert_eq!((found.items, found.source), (vec![3, 10], Source::Cache));

    // Caching off: the database answers, and is counted as such.
    cache.set_enabled(false);
    let found = cache.query_pks(&in_country("GB")).await.unwrap();
    assert_eq!((found.items, found.source), (vec![3, 10], Source::Database));
    cache.set_enabled(true);
    assert_eq!(query_counters(&cache.stats()), [4, 2, 13, 0, 0, 0]);
    assert_eq!(db.queries(), 2);
}

#[tokio::test]
async fn memory_store_counts_queries_and_index_updates() {
    counts_queries_and_index_updates(MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_counts_queries_and_index_updates() {
    let server = RedisServer::start();
    counts_queries_and_index_updates(RedisStore::connect(&server.url()).await.unwrap()).await;
}

/// Two writes miss the index; their delivery re-indexes both; a third
/// misses, and its re-index fails too, un-warming the model.
async fn counts_missed_updates_reindexes_and_unwarms(store: impl Store + Clone) {
    let db = Db::seeded(6, "FR");
    let store = Faulty::new(store);
    let cache = cache_over(store.clone(), &db);
    cache.warm::<Member>().await.unwrap();
    assert_eq!(query_counters(&cache.stats()), [0, 0, 6, 0, 0, 0]);

    store.fail_index_lease(true);
    for id in [1, 2] {
        let moved = member(id, "GB");
        db.put(moved.clone());
        cache.saved(&moved).await.unwrap();
    }
    assert_eq!(query_counters(&cache.stats()), [0, 0, 6, 2, 0, 0]);
    // Pending: answered by the database.
    let found = cache.query_pks(&in_country("GB")).await.unwrap();
    assert_eq!((found.items, found.source), (vec![1, 2], Source::Database));
    store.fail_index_lease(false);

    let deadline = Instant::now() + PATIENCE;
    loop {
        let found = cache.query_pks(&in_country("GB")).await.unwrap();
        assert_eq!(found.items, [1, 2]);
        if found.source == Source::Cache {
            break;
        }
        assert!(Instant::now() < deadline, "never answered from the cache");
        tokio::time::sleep(RETRY * 2).await;
    }
    let stats = cache.stats();
    // Both in one delivery: two records applied, two re-indexes.
    assert_eq!(query_counters(&stats)[2..], [8, 2, 2, 0], "{stats:?}");

    store.fail_index_lease(true);
    let moved = member(5, "GB");
    db.put(moved.clone());
    cache.saved(&moved).await.unwrap();
    // Still failing when the store is tried again: un-warmed.
    let deadline = Instant::now() + PATIENCE;
    while cache.stats().unwarmed == 0 {
        let found = cache.query_pks(&in_country("GB")).await.unwrap();
        assert_eq!(
            (found.items, found.source),
            (vec![1, 2, 5], Source::Database)
        );
        assert!(Instant::now() < deadline, "never un-warmed");
        tokio::time::sleep(RETRY * 2).await;
    }
    store.fail_index_lease(false);
    tokio::time::sleep(RETRY * 2).await;
    let found = cache.query_pks(&in_country("GB")).await.unwrap();
    assert_eq!(
        (found.items, found.source),
        (vec![1, 2, 5], Source::Database)
    );
    let stats = cache.stats();
    assert_eq!(query_counters(&stats)[2..], [8, 3, 2, 1], "{stats:?}");
    assert!(stats.queries_from_cache >= 1 && stats.queries_from_database >= 3);
}

#[tokio::test]
async fn memory_store_counts_missed_updates_reindexes_and_unwarms() {
    counts_missed_updates_reindexes_and_unwarms(MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_counts_missed_updates_reindexes_and_unwarms() {
    let server = RedisServer::start();
    counts_missed_updates_reindexes_and_unwarms(RedisStore::connect(&server.url()).await.unwrap())
        .await;
}
