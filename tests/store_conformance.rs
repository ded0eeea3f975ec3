//! Every store honours the same primitive contract: the conformance suite
//! against the in-process store, a real Redis server and a real three-master
//! Redis Cluster (each started by the test on free loopback ports).

use std::time::Duration;

use cached_instances::{ConnectError, MemoryStore, RedisStore, Store, StoreError};
use cached_instances_testkit::conformance;
use cached_instances_testkit::redis_server::{RedisCluster, RedisServer};

#[tokio::test]
async fn memory_store_conforms() {
    conformance::run_all(&MemoryStore::new()).await;
}

#[tokio::test]
async fn redis_store_conforms() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn redis_store_conforms_through_the_builder_and_a_shared_arc() {
    let server = RedisServer::start();
    let store = RedisStore::builder(server.url())
        .response_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_millis(500))
        .retries(1)
        .connect()
        .await
        .unwrap();
    let shared: std::sync::Arc<dyn Store> = std::sync::Arc::new(store);
    conformance::run_all(&shared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_conforms() {
    let cluster = RedisCluster::start();
    let store = RedisStore::connect_cluster(cluster.urls()).await.unwrap();
    conformance::run_all(&store).await;

    // The batches really spanned the cluster: write keys of many slots in
    // one call and find them on every master.
    let keys: Vec<String> = (0..60).map(|i| format!("ci:{{spread:{i}}}:v1")).collect();
    store
        .swap_many(&keys, b"{}", Duration::from_secs(60))
        .await
        .unwrap();
    let per_node = cluster.keys_per_node();
    assert!(
        per_node.iter().all(|&n| n > 0),
        "every master holds some of the keys: {per_node:?}"
    );
    assert_eq!(per_node.iter().sum::<u64>(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_requests_are_one_per_slot() {
    let cluster = RedisCluster::start();
    let store = RedisStore::connect_cluster(cluster.urls()).await.unwrap();
    // Three instances, three versions each: three slots.
    let keys: Vec<String> = ["v1", "v2", "v3"]
        .iter()
        .flat_map(|v| (0..3).map(move |pk| format!("ci:{{Question:{pk}}}:{v}:0")))
        .collect();
    cluster.reset_stats();
    store
        .swap_many(&keys, b"\0T", Duration::from_secs(60))
        .await
        .unwrap();
    store.get_many(&keys).await.unwrap();
    store.delete_many(&keys).await.unwrap();
    let stats = cluster.command_stats();
    assert_eq!(stats.get("evalsha"), Some(&3), "{stats:?}");
    assert_eq!(stats.get("mget"), Some(&3), "{stats:?}");
    assert_eq!(stats.get("unlink"), Some(&3), "{stats:?}");
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let result = RedisStore::builder(format!("redis://127.0.0.1:{port}/"))
        .connect_timeout(Duration::from_millis(200))
        .retries(0)
        .connect()
        .await;
    // Said as what it is (was `Unavailable` before connect sorted reasons).
    assert!(
        matches!(
            result,
            Err(StoreError::Connect(ConnectError::Refused { .. }))
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_invalid_url_is_an_error_not_a_panic() {
    let result = RedisStore::connect("not a url").await;
    assert!(result.is_err(), "{result:?}");
}

#[tokio::test]
async fn a_killed_server_makes_requests_unavailable() {
    let mut server = RedisServer::start();
    let store = RedisStore::builder(server.url())
        .response_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(200))
        .retries(0)
        .connect()
        .await
        .unwrap();
    let keys = vec!["ci:{k:1}:v".to_owned()];
    store.get_many(&keys).await.unwrap();
    server.kill();
    let result = store.get_many(&keys).await;
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_key_of_another_type_is_a_protocol_error() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let key = "ci:{list:1}:v".to_owned();
    let _: i64 = redis::cmd("LPUSH")
        .arg(&key)
        .arg("x")
        .query(&mut server.connection())
        .unwrap();
    let result = store
        .swap_many(std::slice::from_ref(&key), b"\0T", Duration::from_secs(1))
        .await;
    assert!(matches!(result, Err(StoreError::Protocol(_))), "{result:?}");
    let result = store.get(&key).await;
    assert!(matches!(result, Err(StoreError::Protocol(_))), "{result:?}");
}

/// A server that lost its scripts (restarted, `SCRIPT FLUSH`) answers every
/// scripted primitive all the same: the store loads the script and sends
/// the call again.
#[tokio::test]
async fn scripts_the_server_lost_are_loaded_again() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let flush = || {
        let () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut server.connection())
            .unwrap();
    };
    let keys = vec!["lost:{1}".to_owned(), "lost:{2}".to_owned()];
    let ttl = Duration::from_secs(60);
    flush();
    store.swap_many(&keys, b"\0Lmine", ttl).await.unwrap();
    flush();
    let ops: Vec<_> = keys
        .iter()
        .map(|key| cached_instances::store::CompareAndSet {
            key: key.clone(),
            expected: bytes::Bytes::from_static(b"\0Lmine"),
            value: bytes::Bytes::from_static(b"{\"v\":1}"),
            ttl,
        })
        .collect();
    assert_eq!(store.compare_and_set(&ops).await.unwrap(), [true, true]);
    flush();
    store.swap_many(&keys, b"\0T", ttl).await.unwrap();
    flush();
    let held = store
        .set_if_absent_or(&keys, b"\0Lnew", b"\0T", ttl)
        .await
        .unwrap();
    assert_eq!(held, [None, None], "tombstones replaced by the script");
    assert_eq!(
        store.get_many(&keys).await.unwrap(),
        vec![Some(bytes::Bytes::from_static(b"\0Lnew")); 2]
    );
}
