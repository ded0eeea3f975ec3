//! The near cache on a real Redis server (started by the test): a hit costs
//! no command, another client's write is evicted by Redis' invalidation
//! push, a killed tracking connection empties the tier, markers never enter
//! it, its size stays within its bound, the store's own writes are read
//! back at once, a reply that a push overtook is not kept, and a fill
//! leased before a write is still rejected.
//!
//! Nothing here asserts timing: what a push or a reconnection does is
//! polled for with a bounded number of attempts.

use std::time::Duration;

use cached_instances::store::{CompareAndSet, InProcess};
use cached_instances::{Cache, CachedInstance, NearCache, NearCacheStats, RedisStore, Store};
use cached_instances_testkit::faults::Faulty;
use cached_instances_testkit::memdb::MemDb;
use cached_instances_testkit::poll::eventually;
use cached_instances_testkit::proxy::HoldingProxy;
use cached_instances_testkit::redis_server::RedisServer;
use cached_instances_testkit::scenarios;
use cached_instances_testkit::store::Counting;
use polls::{Choice, Question, User};

/// A max age far beyond any test, so only pushes and flushes evict.
fn near() -> NearCache {
    NearCache::new().max_age(Duration::from_secs(3600))
}

async fn near_store(server: &RedisServer, config: NearCache) -> RedisStore {
    near_store_at(&server.url(), config).await
}

async fn near_store_at(url: &str, config: NearCache) -> RedisStore {
    RedisStore::builder(url)
        .near_cache(config)
        .connect()
        .await
        .unwrap()
}

fn set(server: &RedisServer, key: &str, value: &[u8]) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query(&mut server.connection())
        .unwrap();
}

/// Reads `key` through `store` until it yields `want` (see
/// [`eventually`]); returns whether it did.
async fn eventually_reads(store: &RedisStore, key: &str, want: &[u8]) -> bool {
    eventually(async || store.get(key).await.unwrap().as_deref() == Some(want)).await
}

/// The `GET`/`MGET` calls the server ran since the last reset.
fn reads(server: &RedisServer) -> u64 {
    let stats = server.command_stats();
    stats.get("get").copied().unwrap_or(0) + stats.get("mget").copied().unwrap_or(0)
}

/// Reads `key` through `store` twice, the second time with the server's
/// counters reset; asserts both reads yield `want` and returns the
/// `GET`/`MGET` calls the second one sent (0 for a near hit).
async fn reads_of_second_read(
    server: &RedisServer,
    store: &RedisStore,
    key: &str,
    want: &[u8],
) -> u64 {
    assert_eq!(store.get(key).await.unwrap().as_deref(), Some(want));
    server.reset_stats();
    assert_eq!(store.get(key).await.unwrap().as_deref(), Some(want));
    reads(server)
}

#[tokio::test]
async fn a_near_hit_sends_no_command() {
    let server = RedisServer::start();
    let store = near_store(&server, near()).await;
    let db = MemDb::seeded();
    let cache = Cache::builder()
        .store(store.clone())
        .loader::<User>(db.clone())
        .loader::<Question>(db.clone())
        .loader::<Choice>(db.clone())
        .build()
        .unwrap();
    // A fill is written by the main connection, which ends Redis' tracking
    // of the key for us: the read after it goes to Redis (and is tracked),
    // the ones after that are near hits. A read does not wait for its
    // fill's reply, which evicts the key from the tier (an own write):
    // `settle` lets it arrive first.
    let warm = cache.get::<Question>(&1).await.unwrap().unwrap();
    cache.settle().await;
    let list = cache.get_many::<Question>(&[1, 2]).await.unwrap();
    cache.settle().await;
    cache.get_many::<Question>(&[1, 2]).await.unwrap();
    db.clear_loads();

    server.reset_stats();
    let before = store.near_cache_stats().unwrap();
    assert_eq!(cache.get::<Question>(&1).await.unwrap().unwrap(), warm);
    assert_eq!(cache.get_many::<Question>(&[1, 2]).await.unwrap(), list);
    assert_eq!(
        server.data_command_count(),
        0,
        "near hits: {:?}",
        server.data_commands()
    );
    assert!(db.loads().is_empty(), "near hits load nothing");
    let (stats, counted) = counted_since(&store, &before);
    assert!(stats.tracking);
    assert_eq!(stats.entries, 2);
    assert_eq!(counted, (3, 0), "three entry reads, all from the tier");
}

/// The tier's stats now, and its (hits, misses) since `before`.
fn counted_since(store: &RedisStore, before: &NearCacheStats) -> (NearCacheStats, (u64, u64)) {
    let now = store.near_cache_stats().unwrap();
    let counted = (now.hits - before.hits, now.misses - before.misses);
    (now, counted)
}

/// `hits` counts the entry reads the tier served, `misses` those it sent
/// to Redis, whether Redis held the key or not.
#[tokio::test]
async fn the_tier_counts_its_hits_and_misses() {
    let server = RedisServer::start();
    let store = near_store(&server, near()).await;
    set(&server, "a", b"{\"v\":1}");
    set(&server, "b", b"{\"v\":2}");
    // Tracking comes up in the background: read until the tier serves `a`.
    assert!(
        eventually(async || {
            store.get("a").await.unwrap();
            store.near_cache_stats().unwrap().hits > 0
        })
        .await
    );
    let before = store.near_cache_stats().unwrap();
    let keys = ["a".to_owned(), "b".to_owned(), "absent".to_owned()];
    let values = store.get_many(&keys).await.unwrap();
    let values: Vec<Option<&[u8]>> = values.iter().map(Option::as_deref).collect();
    assert_eq!(
        values,
        [Some(&b"{\"v\":1}"[..]), Some(&b"{\"v\":2}"[..]), None]
    );
    let (after, counted) = counted_since(&store, &before);
    assert_eq!(
        counted,
        (1, 2),
        "`a` from the tier; `b` and the absent key from Redis"
    );
    assert_eq!(
        store.get("b").await.unwrap().as_deref(),
        Some(&b"{\"v\":2}"[..])
    );
    assert_eq!(
        counted_since(&store, &after).1,
        (1, 0),
        "`b` was admitted by the read that missed it"
    );
}

#[tokio::test]
async fn a_write_from_another_client_is_evicted_by_its_push() {
    let server = RedisServer::start();
    let store = near_store(&server, near()).await;
    set(&server, "k", b"{\"v\":1}");
    assert_eq!(
        reads_of_second_read(&server, &store, "k", b"{\"v\":1}").await,
        0,
        "the second read is a near hit"
    );

    // A plain client (not this store) writes: only the push can tell us.
    set(&server, "k", b"{\"v\":2}");
    assert!(
        eventually_reads(&store, "k", b"{\"v\":2}").await,
        "the push did not evict the key"
    );
    assert!(store.near_cache_stats().unwrap().invalidations >= 1);

    // The same for a batch read, and for a deleted key.
    let keys = ["a".to_owned(), "b".to_owned()];
    set(&server, "a", b"{\"a\":1}");
    set(&server, "b", b"{\"b\":1}");
    store.get_many(&keys).await.unwrap();
    server.reset_stats();
    store.get_many(&keys).await.unwrap();
    assert_eq!(reads(&server), 0, "the batch is all near hits");
    let _: () = redis::cmd("DEL")
        .arg("a")
        .query(&mut server.connection())
        .unwrap();
    let evicted = eventually(async || store.get_many(&keys).await.unwrap()[0].is_none()).await;
    assert!(evicted, "the deleted key stayed in the tier");
}

/// The id of the store's tracking connection (the only client with the
/// tracking flag `t`).
fn tracking_client(server: &RedisServer) -> Option<i64> {
    server.tracking_clients().first().copied()
}

#[tokio::test]
async fn a_killed_tracking_connection_flushes_the_tier_and_is_remade() {
    let server = RedisServer::start();
    let store = near_store(&server, near()).await;
    set(&server, "k", b"{\"v\":1}");
    store.get("k").await.unwrap();
    let before = store.near_cache_stats().unwrap();
    assert_eq!(before.entries, 1);

    let id = tracking_client(&server).expect("a tracking connection");
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query(&mut server.connection())
        .unwrap();
    assert_eq!(killed, 1);
    // Written after the kill: no push can carry this one.
    set(&server, "k", b"{\"v\":2}");
    assert!(
        eventually_reads(&store, "k", b"{\"v\":2}").await,
        "the tier kept its entry after its tracking connection was lost"
    );
    assert!(store.near_cache_stats().unwrap().flushes > before.flushes);

    // Tracking comes back (a new connection), and with it near hits.
    let remade = eventually(async || {
        tracking_client(&server).is_some_and(|new| new != id)
            && store.near_cache_stats().unwrap().tracking
    })
    .await;
    assert!(remade, "the tracking connection was not remade");
    assert_eq!(
        reads_of_second_read(&server, &store, "k", b"{\"v\":2}").await,
        0,
        "near hits again"
    );
    set(&server, "k", b"{\"v\":3}");
    assert!(
        eventually_reads(&store, "k", b"{\"v\":3}").await,
        "the new tracking connection gets pushes"
    );
}

#[tokio::test]
async fn markers_never_enter_the_tier() {
    let server = RedisServer::start();
    let store = near_store(&server, near()).await;
    let lease = b"\0L0123456789abcdef";
    set(&server, "leased", lease);
    set(&server, "tombstoned", b"\0T");
    set(&server, "entry", b"{}");
    let keys = [
        "leased".to_owned(),
        "tombstoned".to_owned(),
        "entry".to_owned(),
    ];
    store.get_many(&keys).await.unwrap();
    store.get("leased").await.unwrap();
    store.get("tombstoned").await.unwrap();

    server.reset_stats();
    for _ in 0..3 {
        assert_eq!(
            store.get("leased").await.unwrap().as_deref(),
            Some(&lease[..])
        );
        assert_eq!(
            store.get("tombstoned").await.unwrap().as_deref(),
            Some(&b"\0T"[..])
        );
        assert_eq!(
            store.get("entry").await.unwrap().as_deref(),
            Some(&b"{}"[..])
        );
    }
    assert_eq!(
        reads(&server),
        6,
        "every marker read goes to Redis, no entry read does"
    );
    assert_eq!(store.near_cache_stats().unwrap().entries, 1);
}

#[tokio::test]
async fn the_tier_stays_within_its_byte_bound() {
    let server = RedisServer::start();
    let max = 20_000;
    let store = near_store(&server, near().max_bytes(max)).await;
    let value = {
        let mut v = b"{\"pad\":\"".to_vec();
        v.resize(1_000, b'x');
        v.extend_from_slice(b"\"}");
        v
    };
    let keys: Vec<String> = (0..200).map(|i| format!("key:{i}")).collect();
    for key in &keys {
        set(&server, key, &value);
    }
    for chunk in keys.chunks(20) {
        for value in store.get_many(chunk).await.unwrap() {
            assert!(value.is_some());
        }
        let stats = store.near_cache_stats().unwrap();
        assert!(
            stats.bytes <= max,
            "{} bytes held, bound {max}",
            stats.bytes
        );
    }
    let stats = store.near_cache_stats().unwrap();
    assert!(stats.entries > 0, "the tier is in use");
    assert!(stats.entries < 200, "not everything fits: {stats:?}");
}

#[tokio::test]
async fn own_writes_are_read_back_at_once() {
    let server = RedisServer::start();
    let store = near_store(&server, near()).await;
    let db = MemDb::seeded();
    let cache = Cache::builder()
        .store(store.clone())
        .loader::<User>(db.clone())
        .loader::<Question>(db.clone())
        .loader::<Choice>(db.clone())
        .build()
        .unwrap();
    assert_eq!(cache.get::<Choice>(&1).await.unwrap(), db.choice(1));
    assert_eq!(cache.get::<Choice>(&1).await.unwrap(), db.choice(1));
    for n in 0..20 {
        db.write(|t| t.choices.get_mut(&1).unwrap().1 = format!("write {n}"));
        cache.saved(&db.choice(1).unwrap()).await.unwrap();
        // No polling: the write returned, so this process reads it.
        assert_eq!(
            cache.get::<Choice>(&1).await.unwrap().unwrap().choice_text,
            format!("write {n}")
        );
    }
}

/// The stale-set race across processes with a near cache on the reader's
/// side: the reader leases and loads the old row, another process (its own
/// store) writes, the reader's fill must be rejected and the next read
/// fresh.
#[tokio::test]
async fn a_fill_leased_before_another_process_writes_is_rejected() {
    let server = RedisServer::start();
    scenarios::a_fill_from_before_another_process_writes_is_rejected(
        near_store(&server, near()).await,
        RedisStore::connect(&server.url()).await.unwrap(),
    )
    .await;
}

#[tokio::test]
async fn a_store_with_a_near_cache_conforms() {
    let server = RedisServer::start();
    let store = near_store(&server, near()).await;
    cached_instances_testkit::conformance::run_all(&store).await;
}

#[tokio::test]
async fn a_key_prefix_applies_to_the_tier_and_its_pushes() {
    let server = RedisServer::start();
    let store = RedisStore::builder(server.url())
        .key_prefix("app:")
        .near_cache(near())
        .connect()
        .await
        .unwrap();
    set(&server, "app:k", b"{\"v\":1}");
    assert_eq!(
        reads_of_second_read(&server, &store, "k", b"{\"v\":1}").await,
        0,
        "a near hit"
    );
    assert_eq!(
        store.get_in_process("k"),
        InProcess::Holds(bytes::Bytes::from_static(b"{\"v\":1}")),
        "the in-process read names the prefixed key"
    );
    set(&server, "app:k", b"{\"v\":2}");
    assert!(
        eventually_reads(&store, "k", b"{\"v\":2}").await,
        "the push names the prefixed key"
    );
    // Own writes evict the prefixed key too.
    store
        .swap_many(&["k".to_owned()], b"\0T", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&b"\0T"[..]));
}

/// The tracking connection and the task that remakes it belong to the
/// store: dropping the store (every clone) ends the task and closes the
/// connection, as the runtime and the server see it.
#[tokio::test(flavor = "current_thread")]
async fn dropping_the_store_ends_its_tracking_task_and_connection() {
    let server = RedisServer::start();
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks = metrics.num_alive_tasks();
    let store = near_store(&server, near()).await;
    set(&server, "k", b"{\"v\":1}");
    store.get("k").await.unwrap();
    assert!(store.near_cache_stats().unwrap().tracking);
    assert!(tracking_client(&server).is_some(), "a tracking connection");
    assert!(
        metrics.num_alive_tasks() > tasks,
        "the store runs tasks of its own"
    );
    let clone = store.clone();
    drop(store);
    tokio::task::yield_now().await;
    assert!(tracking_client(&server).is_some(), "a clone keeps it");
    drop(clone);

    let ended = eventually(async || {
        metrics.num_alive_tasks() == tasks && tracking_client(&server).is_none()
    })
    .await;
    assert!(
        ended,
        "after the store was dropped: {} tasks alive (was {tasks}), tracking client {:?}",
        metrics.num_alive_tasks(),
        tracking_client(&server)
    );
}

#[tokio::test]
async fn an_entry_older_than_max_age_is_read_from_redis_again() {
    let server = RedisServer::start();
    let max_age = Duration::from_millis(100);
    let store = near_store(&server, NearCache::new().max_age(max_age)).await;
    set(&server, "aged", b"{}");
    assert_eq!(
        reads_of_second_read(&server, &store, "aged", b"{}").await,
        0,
        "a near hit while young"
    );
    // Past the max age by more than any clock tick, with no push: the
    // entry is expired, not evicted.
    tokio::time::sleep(max_age + Duration::from_millis(100)).await;
    let before = store.near_cache_stats().unwrap();
    server.reset_stats();
    assert_eq!(
        store.get("aged").await.unwrap().as_deref(),
        Some(&b"{}"[..])
    );
    assert_eq!(reads(&server), 1, "an expired entry is read from Redis");
    let after = store.near_cache_stats().unwrap();
    assert_eq!(
        (after.invalidations, after.flushes),
        (before.invalidations, before.flushes),
        "nothing evicted it"
    );
    assert_eq!(after.entries, 1, "readmitted");
}

/// A read sent before another client's write, whose reply reaches the store
/// together with the write's push (both held back by a proxy, then
/// delivered in one go): the reply is the value from before the write, and
/// must not be kept. On a current-thread runtime, the store's push reader
/// handles both before the read's task resumes to admit the reply.
#[tokio::test(flavor = "current_thread")]
async fn a_read_overtaken_by_a_push_is_not_kept() {
    let server = RedisServer::start();
    let proxy = HoldingProxy::start(server.port());
    let store = near_store_at(&proxy.url(), near()).await;
    set(&server, "k", b"{\"v\":1}");

    assert_eq!(proxy.hold(b"TRACKING"), 1, "the tracking connection");
    server.reset_stats();
    let reader = tokio::spawn({
        let store = store.clone();
        async move { store.get("k").await.unwrap() }
    });
    // The read has run on the server (its reply is held) ...
    let ran = eventually(async || reads(&server) == 1).await;
    assert!(ran, "the read never reached the server");
    // ... when another client writes: the push queues behind the reply.
    set(&server, "k", b"{\"v\":2}");
    let pushed = eventually(async || proxy.holds(b"invalidate")).await;
    assert!(pushed, "no invalidation push for the key");
    proxy.release();
    assert_eq!(
        reader.await.unwrap().as_deref(),
        Some(&b"{\"v\":1}"[..]),
        "the read ran before the write"
    );

    // Not kept: the next read goes to Redis and sees the write.
    server.reset_stats();
    assert_eq!(
        store.get("k").await.unwrap().as_deref(),
        Some(&b"{\"v\":2}"[..])
    );
    assert_eq!(reads(&server), 1, "the overtaken reply was kept");
}

/// A near hit is the store's in-process read (`Store::get_in_process`):
/// the cache makes no `get` for it, and Redis sees no command. A key the
/// tier does not hold is `Unknown` in process and read with `get`; a store
/// without a near tier never answers in process.
#[tokio::test]
async fn a_near_hit_is_read_in_process_with_no_get() {
    let server = RedisServer::start();
    let near_store = near_store(&server, near()).await;
    let store = Counting::new(near_store.clone());
    let db = MemDb::seeded();
    let cache = Cache::builder()
        .store(store.clone())
        .loader::<User>(db.clone())
        .loader::<Question>(db.clone())
        .loader::<Choice>(db.clone())
        .build()
        .unwrap();
    let key = cache.key_of::<Question>(&1).unwrap();
    // The fill's own write evicts the key; the read after it is tracked
    // and admitted to the tier.
    let warm = cache.get::<Question>(&1).await.unwrap().unwrap();
    cache.settle().await;
    assert_eq!(store.get_in_process(&key), InProcess::Unknown, "evicted");
    let (calls, reads) = (store.calls(), store.in_process_reads());
    assert_eq!(cache.get::<Question>(&1).await.unwrap().unwrap(), warm);
    assert_eq!(
        (store.calls() - calls, store.in_process_reads() - reads),
        (1, 0),
        "not in the tier: one get"
    );

    server.reset_stats();
    let (calls, reads) = (store.calls(), store.in_process_reads());
    assert_eq!(cache.get::<Question>(&1).await.unwrap().unwrap(), warm);
    let json = cache.get_json::<Question>(&1).await.unwrap().unwrap();
    assert_eq!(&json[..], &warm.to_json().unwrap()[..]);
    assert_eq!(
        (store.calls() - calls, store.in_process_reads() - reads),
        (2, 2),
        "near hits: in-process reads, no get"
    );
    assert_eq!(
        server.data_command_count(),
        0,
        "{:?}",
        server.data_commands()
    );
    assert_eq!(cache.stats().hits, 3);
    assert!(matches!(near_store.get_in_process(&key), InProcess::Holds(b) if b == json));

    // Without a near tier, nothing is known in process.
    let plain = RedisStore::connect(&server.url()).await.unwrap();
    assert_eq!(plain.get(&key).await.unwrap(), Some(json));
    assert_eq!(plain.get_in_process(&key), InProcess::Unknown);
}

/// A write whose invalidation could not reach Redis leaves the old entry in
/// the tier (its own-write eviction never ran): until the queued
/// invalidation is delivered, reads go to the database, never to the tier.
#[tokio::test]
async fn a_failed_invalidation_is_not_read_past_in_the_tier() {
    let server = RedisServer::start();
    let near_store = near_store(&server, near()).await;
    let store = Faulty::new(near_store.clone());
    let db = MemDb::seeded();
    let cache = Cache::builder()
        .store(store.clone())
        .loader::<User>(db.clone())
        .loader::<Question>(db.clone())
        .loader::<Choice>(db.clone())
        .store_retry_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let key = cache.key_of::<Choice>(&1).unwrap();
    cache.get::<Choice>(&1).await.unwrap();
    cache.settle().await;
    cache.get::<Choice>(&1).await.unwrap();
    assert!(matches!(
        near_store.get_in_process(&key),
        InProcess::Holds(_)
    ));

    store.fail_writes(true);
    db.write(|t| t.choices.get_mut(&1).unwrap().1 = "Changed".into());
    cache.saved(&db.choice(1).unwrap()).await.unwrap();
    assert!(store.failed_writes() > 0);
    assert!(
        matches!(near_store.get_in_process(&key), InProcess::Holds(_)),
        "the old entry is still in the tier"
    );
    for _ in 0..3 {
        assert_eq!(cache.get::<Choice>(&1).await.unwrap(), db.choice(1));
        let json = cache.get_json::<Choice>(&1).await.unwrap().unwrap();
        assert_eq!(&json[..], &db.choice(1).unwrap().to_json().unwrap()[..]);
    }
}

/// A conditional write that changes nothing (a lease refused, a fill
/// rejected) leaves the key's entry in the tier: only the keys it writes
/// are evicted, as a push would evict them. Every reader of a herd tries
/// the lease: were each refusal an eviction, the waiters watching the key
/// (`Store::watch`) would all wake and read again for nothing.
#[tokio::test]
async fn a_conditional_write_that_changes_nothing_keeps_the_tier() {
    let server = RedisServer::start();
    let store = near_store(&server, near()).await;
    let (key, entry) = ("k", b"{\"id\":1}".as_slice());
    set(&server, key, entry);
    assert_eq!(reads_of_second_read(&server, &store, key, entry).await, 0);
    let keys = [key.to_owned()];
    let ttl = Duration::from_secs(60);
    let held = store
        .set_if_absent_or(&keys, b"\0Lours", b"\0T", ttl)
        .await
        .unwrap();
    assert_eq!(
        held,
        [Some(entry.into())],
        "refused: the key holds an entry"
    );
    let set_all = store.set_if_absent(&keys, b"\0Lours", ttl).await.unwrap();
    assert_eq!(set_all, [false]);
    let fill = CompareAndSet {
        key: key.to_owned(),
        expected: bytes::Bytes::from_static(b"\0Lours"),
        value: bytes::Bytes::from_static(b"{\"id\":2}"),
        ttl,
    };
    assert_eq!(
        store
            .compare_and_set(std::slice::from_ref(&fill))
            .await
            .unwrap(),
        [false]
    );
    assert_eq!(
        store.get_in_process(key),
        InProcess::Holds(entry.into()),
        "nothing changed: still in the tier"
    );
    let stats = store.near_cache_stats().unwrap();

    // One that writes evicts.
    let written = CompareAndSet {
        expected: entry.into(),
        ..fill
    };
    assert_eq!(store.compare_and_set(&[written]).await.unwrap(), [true]);
    assert_eq!(store.get_in_process(key), InProcess::Unknown);
    assert!(store.near_cache_stats().unwrap().invalidations > stats.invalidations);
}
