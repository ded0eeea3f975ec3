//! The near cache in front of a Redis Cluster (three masters, started by
//! the test): a hit sends no command to any node, a write on the owning
//! node (or by another store) is evicted by that node's push, a killed
//! tracking connection of one primary flushes the whole tier and is
//! remade, a dead primary keeps the tier empty and unused, a slot moving
//! between primaries or a failover flushes and re-tracks, one push is sent per
//! invalidation (not per write), and a fill leased before a write is still
//! rejected; dropping the store closes its tracking connections.
//!
//! Nothing here asserts timing: what a push, a reconnection or the
//! topology check does is polled for with a bounded number of attempts.

use std::time::Duration;

use cached_instances::{Cache, NearCache, RedisStore, Store};
use cached_instances_testkit::memdb::MemDb;
use cached_instances_testkit::poll::eventually;
use cached_instances_testkit::redis_server::RedisCluster;
use cached_instances_testkit::scenarios;
use cached_instances_testkit::store::Counting;
use polls::{Choice, Question, User};

/// A max age far beyond any test, so only pushes and flushes evict.
fn near() -> NearCache {
    NearCache::new().max_age(Duration::from_secs(3600))
}

async fn near_store(cluster: &RedisCluster) -> RedisStore {
    RedisStore::cluster_builder(cluster.urls())
        .near_cache(near())
        .connect()
        .await
        .unwrap()
}

/// One key owned by each of the three masters.
fn one_key_per_master(cluster: &RedisCluster) -> Vec<String> {
    let mut masters = Vec::new();
    let mut keys = Vec::new();
    for i in 0.. {
        let key = format!("k{i}");
        let port = cluster.port_of(&key);
        if !masters.contains(&port) {
            masters.push(port);
            keys.push(key);
            if keys.len() == 3 {
                break;
            }
        }
    }
    keys
}

/// `SET key value` on the master that owns `key` (a plain client, not the
/// store).
fn set(cluster: &RedisCluster, key: &str, value: &[u8]) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query(&mut cluster.node_connection(cluster.port_of(key)))
        .unwrap();
}

/// Reads `key` through `store` until it yields `want` (see
/// [`eventually`]); returns whether it did.
async fn eventually_reads(store: &RedisStore, key: &str, want: &[u8]) -> bool {
    eventually(async || store.get(key).await.unwrap().as_deref() == Some(want)).await
}

/// The `GET`/`MGET` calls every master ran since the last reset.
fn reads(cluster: &RedisCluster) -> u64 {
    let stats = cluster.command_stats();
    stats.get("get").copied().unwrap_or(0) + stats.get("mget").copied().unwrap_or(0)
}

/// Reads `key` through `store` twice, the second time with the counters
/// reset; asserts both reads yield `want` and returns the `GET`/`MGET`
/// calls the second one sent (0 for a near hit).
async fn reads_of_second_read(
    cluster: &RedisCluster,
    store: &RedisStore,
    key: &str,
    want: &[u8],
) -> u64 {
    assert_eq!(store.get(key).await.unwrap().as_deref(), Some(want));
    cluster.reset_stats();
    assert_eq!(store.get(key).await.unwrap().as_deref(), Some(want));
    reads(cluster)
}

fn cache(store: &RedisStore, db: &MemDb) -> Cache {
    Cache::builder()
        .store(store.clone())
        .loader::<User>(db.clone())
        .loader::<Question>(db.clone())
        .loader::<Choice>(db.clone())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_hit_sends_no_command_to_any_node() {
    let cluster = RedisCluster::start();
    let store = near_store(&cluster).await;
    assert!(store.near_cache_stats().unwrap().tracking);

    // Plain keys on every master, read once (tracked, admitted), then hits.
    let keys = one_key_per_master(&cluster);
    for key in &keys {
        set(&cluster, key, key.as_bytes());
    }
    let want: Vec<Option<bytes::Bytes>> = keys
        .iter()
        .map(|key| Some(bytes::Bytes::from(key.clone())))
        .collect();
    assert_eq!(store.get_many(&keys).await.unwrap(), want);

    // Through the cache: a fill is written by the cluster connection, which
    // ends Redis' tracking of the key for us, so the read after it goes to
    // Redis (and is tracked) and the ones after that are near hits.
    let db = MemDb::seeded();
    let cache = cache(&store, &db);
    let pks: Vec<i64> = vec![1, 2];
    // A read does not wait for its fill's reply, which evicts the keys
    // from the tier (own writes): `settle` lets it arrive first.
    let list = cache.get_many::<Question>(&pks).await.unwrap();
    cache.settle().await;
    for _ in 0..2 {
        cache.get_many::<Question>(&pks).await.unwrap();
    }
    cache.settle().await;
    db.clear_loads();

    cluster.reset_stats();
    for _ in 0..3 {
        assert_eq!(store.get_many(&keys).await.unwrap(), want);
        assert_eq!(store.get(&keys[1]).await.unwrap(), want[1]);
        assert_eq!(cache.get_many::<Question>(&pks).await.unwrap(), list);
    }
    assert_eq!(
        cluster.data_commands().values().sum::<u64>(),
        0,
        "near hits: {:?}",
        cluster.data_commands()
    );
    assert!(db.loads().is_empty(), "near hits load nothing");
    let stats = store.near_cache_stats().unwrap();
    assert!(stats.tracking);
    assert_eq!(stats.entries, 3 + 2, "three keys, two questions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_the_owning_master_is_evicted_by_its_push() {
    let cluster = RedisCluster::start();
    let store = near_store(&cluster).await;
    for key in one_key_per_master(&cluster) {
        set(&cluster, &key, b"{\"v\":1}");
        assert_eq!(
            reads_of_second_read(&cluster, &store, &key, b"{\"v\":1}").await,
            0,
            "the second read of {key} is a near hit"
        );
        // A plain client on the owning master writes: only its push can
        // tell this store.
        set(&cluster, &key, b"{\"v\":2}");
        assert!(
            eventually_reads(&store, &key, b"{\"v\":2}").await,
            "the push of {key}'s master did not evict it"
        );
    }
    assert!(store.near_cache_stats().unwrap().invalidations >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_by_another_store_is_evicted_by_its_push() {
    let cluster = RedisCluster::start();
    let store = near_store(&cluster).await;
    // Another process's view of the cluster: its own store, no near cache.
    let other = RedisStore::connect_cluster(cluster.urls()).await.unwrap();
    let keys = one_key_per_master(&cluster);
    other
        .swap_many(&keys, b"{\"v\":1}", Duration::from_secs(60))
        .await
        .unwrap();
    store.get_many(&keys).await.unwrap();
    cluster.reset_stats();
    assert_eq!(
        store.get_many(&keys).await.unwrap(),
        vec![Some(bytes::Bytes::from_static(b"{\"v\":1}")); 3]
    );
    assert_eq!(reads(&cluster), 0, "the batch is all near hits");

    other
        .swap_many(&keys, b"{\"v\":2}", Duration::from_secs(60))
        .await
        .unwrap();
    for key in &keys {
        assert!(
            eventually_reads(&store, key, b"{\"v\":2}").await,
            "the other store's write of {key} was not evicted"
        );
    }
    other.delete_many(&keys[..1]).await.unwrap();
    let deleted = eventually(async || store.get_many(&keys).await.unwrap()[0].is_none()).await;
    assert!(deleted, "the deleted key stayed in the tier");
}

/// The push traffic of a write: an invalidation in this cache is several
/// writes to a key (the tombstone, the next reader's lease, its fill), and
/// with per-key tracking only the first write after this process's read
/// pushes. A second key of the same slot, written last, is the fence: its
/// push comes after any the key's writes made, on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writes_of_an_invalidation_cost_one_push() {
    let cluster = RedisCluster::start();
    let store = near_store(&cluster).await;
    let (key, fence) = ("{slot}key", "{slot}fence");
    set(&cluster, key, b"{\"v\":1}");
    set(&cluster, fence, b"{\"f\":1}");
    for (key, value) in [(key, &b"{\"v\":1}"[..]), (fence, &b"{\"f\":1}"[..])] {
        assert_eq!(
            reads_of_second_read(&cluster, &store, key, value).await,
            0,
            "{key} is held"
        );
    }
    let before = store.near_cache_stats().unwrap().invalidations;

    // Another process's tombstone, lease and fill, then the fence.
    set(&cluster, key, b"\0T");
    set(&cluster, key, b"\0L0123456789abcdef");
    set(&cluster, key, b"{\"v\":2}");
    set(&cluster, fence, b"{\"f\":2}");
    assert!(
        eventually_reads(&store, fence, b"{\"f\":2}").await,
        "the fence's push did not arrive"
    );
    assert_eq!(
        store.near_cache_stats().unwrap().invalidations - before,
        2,
        "one push for the key's three writes, one for the fence"
    );
    assert_eq!(
        store.get(key).await.unwrap().as_deref(),
        Some(&b"{\"v\":2}"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_tracking_connection_of_one_master_flushes_the_tier_and_is_remade() {
    let cluster = RedisCluster::start();
    let store = near_store(&cluster).await;
    let keys = one_key_per_master(&cluster);
    for key in &keys {
        set(&cluster, key, b"{\"v\":1}");
        store.get(key).await.unwrap();
    }
    let before = store.near_cache_stats().unwrap();
    assert_eq!(before.entries, 3);

    // Kill the tracking connection of the second master only.
    let port = cluster.port_of(&keys[1]);
    let tracked = cluster.tracking_clients(port);
    assert_eq!(tracked.len(), 1, "one tracking connection per master");
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(tracked[0])
        .query(&mut cluster.node_connection(port))
        .unwrap();
    assert_eq!(killed, 1);
    // Written after the kill on that master: no push can carry this one.
    set(&cluster, &keys[1], b"{\"v\":2}");
    assert!(
        eventually_reads(&store, &keys[1], b"{\"v\":2}").await,
        "the tier kept its entry after a tracking connection was lost"
    );
    assert!(store.near_cache_stats().unwrap().flushes > before.flushes);

    // Tracking comes back (a new connection on that master), and with it
    // near hits, and pushes from that master.
    assert!(
        eventually(async || {
            cluster
                .tracking_clients(port)
                .first()
                .is_some_and(|&new| new != tracked[0])
                && store.near_cache_stats().unwrap().tracking
        })
        .await,
        "the tracking connection was not remade"
    );
    assert_eq!(
        reads_of_second_read(&cluster, &store, &keys[1], b"{\"v\":2}").await,
        0,
        "near hits again"
    );
    set(&cluster, &keys[1], b"{\"v\":3}");
    assert!(
        eventually_reads(&store, &keys[1], b"{\"v\":3}").await,
        "the new tracking connection gets pushes"
    );
}

/// A master that dies stops the whole tier: entries of the living masters
/// are dropped too, and the tier stays empty and unused while that master
/// cannot be tracked (here, for good: no replica takes over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_empties_the_whole_tier_and_keeps_it_unused() {
    let mut cluster = RedisCluster::start();
    let store = near_store(&cluster).await;
    let keys = one_key_per_master(&cluster);
    for key in &keys {
        set(&cluster, key, b"{\"v\":1}");
        store.get(key).await.unwrap();
    }
    let before = store.near_cache_stats().unwrap();
    assert_eq!(before.entries, 3);

    cluster.kill_master(cluster.ports()[2]);
    // Tracking is marked off, then the tier flushed (and counted): wait for
    // both, or a read could land between the two.
    assert!(
        eventually(async || {
            let stats = store.near_cache_stats().unwrap();
            !stats.tracking && stats.flushes > before.flushes
        })
        .await,
        "still tracking with a master gone"
    );
    // Reads of the living masters' keys go to Redis, uncached, meanwhile.
    for _ in 0..3 {
        let _ = store.get(&keys[0]).await;
    }
    let stats = store.near_cache_stats().unwrap();
    assert_eq!(stats.entries, 0, "{stats:?}");
    assert!(!stats.tracking);
    assert!(stats.flushes > before.flushes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moving_to_another_master_flushes_the_tier_and_it_tracks_the_new_map() {
    let cluster = RedisCluster::start();
    let store = near_store(&cluster).await;
    let keys = one_key_per_master(&cluster);
    for key in &keys {
        set(&cluster, key, b"{\"v\":1}");
        store.get(key).await.unwrap();
    }
    let before = store.near_cache_stats().unwrap();
    assert_eq!(before.entries, 3);

    let ports = cluster.ports();
    cluster.move_an_empty_slot(ports[0], ports[1]);
    assert!(
        eventually(async || {
            let stats = store.near_cache_stats().unwrap();
            stats.flushes > before.flushes && stats.tracking
        })
        .await,
        "the topology check did not notice the slot move"
    );
    // Tracking the new map: near hits and pushes from every master.
    for key in &keys {
        assert_eq!(
            reads_of_second_read(&cluster, &store, key, b"{\"v\":1}").await,
            0,
            "near hits again on {key}"
        );
        set(&cluster, key, b"{\"v\":2}");
        assert!(eventually_reads(&store, key, b"{\"v\":2}").await);
    }
}

/// A replica promoted by `CLUSTER FAILOVER`: the old master, now a
/// replica, applies the new master's writes (pushing on what it tracked)
/// and redirects reads; the topology check sees the new slot map. The tier
/// is flushed, tracks the new master, and is coherent throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_flushes_the_tier_and_it_tracks_the_new_master() {
    let cluster = RedisCluster::start_with_replicas(1);
    let store = near_store(&cluster).await;
    let keys = one_key_per_master(&cluster);
    for key in &keys {
        set(&cluster, key, b"{\"v\":1}");
        assert_eq!(
            reads_of_second_read(&cluster, &store, key, b"{\"v\":1}").await,
            0,
            "{key} is held"
        );
    }
    let before = store.near_cache_stats().unwrap();

    let old = cluster.port_of(&keys[0]);
    let new = cluster.failover(old);
    assert_eq!(cluster.port_of(&keys[0]), new);
    // Written on the new master by a plain client.
    set(&cluster, &keys[0], b"{\"v\":2}");
    assert!(
        eventually_reads(&store, &keys[0], b"{\"v\":2}").await,
        "the new master's write was not seen"
    );
    assert!(
        eventually(async || {
            let stats = store.near_cache_stats().unwrap();
            stats.flushes > before.flushes && stats.tracking
        })
        .await,
        "the failover did not flush and re-track"
    );
    assert!(
        eventually(async || cluster.tracking_clients(new).len() == 1).await,
        "the new master is not tracked"
    );
    assert_eq!(
        reads_of_second_read(&cluster, &store, &keys[0], b"{\"v\":2}").await,
        0,
        "near hits on the new master"
    );
    set(&cluster, &keys[0], b"{\"v\":3}");
    assert!(
        eventually_reads(&store, &keys[0], b"{\"v\":3}").await,
        "the new master's pushes arrive"
    );
}

/// The cache's stale-set scenario on a near-cached cluster store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_from_before_a_write_is_rejected() {
    let cluster = RedisCluster::start();
    scenarios::a_fill_from_before_a_write_is_rejected(Counting::new(near_store(&cluster).await))
        .await;
}

/// The same race across processes: the reader (near-cached) leases and
/// loads the old row, another process's store writes, the reader's fill
/// must be rejected and its next reads fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_leased_before_another_process_writes_is_rejected() {
    let cluster = RedisCluster::start();
    scenarios::a_fill_from_before_another_process_writes_is_rejected(
        near_store(&cluster).await,
        RedisStore::connect_cluster(cluster.urls()).await.unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_cached_cluster_store_conforms() {
    let cluster = RedisCluster::start();
    let store = near_store(&cluster).await;
    cached_instances_testkit::conformance::run_all(&store).await;
}

/// Created lazily while no node answers: accepted (it used to be refused),
/// and not tracking.
#[tokio::test]
async fn a_lazy_near_cached_cluster_store_is_accepted_before_the_cluster_answers() {
    let store = RedisStore::cluster_builder(["redis://127.0.0.1:1/"])
        .near_cache(near())
        .connect_timeout(Duration::from_millis(100))
        .connect_lazy()
        .unwrap();
    assert!(!store.near_cache_stats().unwrap().tracking);
}

/// The tracking connections and the task that checks and remakes them
/// belong to the store: dropping it (every clone) closes the connection on
/// every master, as the masters see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_store_closes_its_tracking_connection_on_every_master() {
    let cluster = RedisCluster::start();
    let store = near_store(&cluster).await;
    for port in cluster.ports() {
        assert_eq!(cluster.tracking_clients(port).len(), 1, "master {port}");
    }
    let clone = store.clone();
    drop(store);
    // Past a topology check, so the task has held and released the store.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        cluster
            .ports()
            .into_iter()
            .all(|port| cluster.tracking_clients(port).len() == 1),
        "a clone keeps them"
    );
    drop(clone);
    assert!(
        eventually(async || cluster
            .ports()
            .into_iter()
            .all(|port| cluster.tracking_clients(port).is_empty()))
        .await,
        "tracking connections left after the store was dropped"
    );
}
