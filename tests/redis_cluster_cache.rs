//! The cache behaviour suite (`cached_instances_testkit::scenarios`, the one
//! `cache_core.rs` runs on the in-process store) on `RedisStore`: every
//! scenario on its own single Redis server, and all of them in sequence on a
//! three-master Redis Cluster (emptied between scenarios). Each server is
//! started by the test on a free loopback port.
//!
//! Round trips are counted as store primitive calls (a `Counting` wrapper):
//! one request on a single server, one per hash slot on the cluster.

use cached_instances::{Cache, RedisStore};
use cached_instances_testkit::memdb::MemDb;
use cached_instances_testkit::redis_server::{RedisCluster, RedisServer};
use cached_instances_testkit::store::Counting;
use cached_instances_testkit::{scenarios, with_scenarios};
use polls::{Choice, Question, User};

/// One test per scenario, each on a fresh single server.
macro_rules! on_redis_server {
    ($($name:ident),* $(,)?) => {
        mod single_server {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let server = RedisServer::start();
                    let store = RedisStore::connect(&server.url()).await.unwrap();
                    scenarios::$name(Counting::new(store)).await;
                }
            )*
        }
    };
}

with_scenarios!(on_redis_server);

fn flush_cluster(cluster: &RedisCluster) {
    for port in cluster.ports() {
        let _: () = redis::cmd("FLUSHALL")
            .query(&mut cluster.node_connection(port))
            .expect("FLUSHALL failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let store = Counting::new(RedisStore::connect_cluster(cluster.urls()).await.unwrap());
    scenarios::run_all(&store, || flush_cluster(&cluster)).await;

    // The instances really were spread over the masters.
    flush_cluster(&cluster);
    let db = MemDb::seeded();
    db.write(|t| {
        for id in 100..160 {
            t.users.insert(id, format!("user{id}"));
        }
    });
    let cache = Cache::builder()
        .store(store.clone())
        .loader::<User>(db.clone())
        .loader::<Question>(db.clone())
        .loader::<Choice>(db.clone())
        .build()
        .unwrap();
    let pks: Vec<i64> = (100..160).collect();
    let trips = scenarios::Backend::round_trips(&store);
    assert_eq!(cache.get_many::<User>(&pks).await.unwrap().len(), 60);
    // The fill is sent after the read returns.
    cache.settle().await;
    assert_eq!(
        scenarios::Backend::round_trips(&store) - trips,
        3,
        "multi-get, lease, fill: one call each, however many slots"
    );
    let per_node = cluster.keys_per_node();
    assert!(per_node.iter().all(|&n| n > 0), "{per_node:?}");
    assert_eq!(per_node.iter().sum::<u64>(), 60);
    assert_eq!(db.load_count("User"), 1);
}

/// A store created lazily against a running cluster works like a connected
/// one (the connection is made by the first request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazily_connected_cluster_store_serves_the_cache() {
    let cluster = RedisCluster::start();
    let store = RedisStore::cluster_builder(cluster.urls())
        .connect_lazy()
        .unwrap();
    let db = MemDb::seeded();
    let cache = Cache::builder()
        .store(store)
        .loader::<User>(db.clone())
        .loader::<Question>(db.clone())
        .loader::<Choice>(db.clone())
        .build()
        .unwrap();
    let q = cache.get::<Question>(&1).await.unwrap();
    assert_eq!(q, db.question(1));
    assert_eq!(cache.get::<Question>(&1).await.unwrap(), q);
    assert_eq!(db.load_count("Question"), 1, "the second read is a hit");
    assert_eq!(cache.stats().store_errors, 0);
}
