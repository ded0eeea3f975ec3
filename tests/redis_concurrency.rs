//! Concurrency on a real Redis server (started by the test): the thundering
//! herd, the lease wait, the stale-set race scripted step by step, late
//! fills after the tombstone is gone, and a randomized history of readers
//! and writers against a real database (SQLite through sqlx), checked for
//! freshness and, after quiescence, for cache = database. The history test
//! also runs on the in-process store.
//!
//! Interleavings are scripted with held loads (`MemDb::hold_next_load`), not
//! with sleeps; the randomized test asserts nothing about timing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cached_instances::{
    Cache, CacheBuilder, CachedInstance, LoadError, Loader, MemoryStore, NearCache, RedisStore,
    Store,
};
use cached_instances_testkit::faults::Instrumented;
use cached_instances_testkit::memdb::MemDb;
use cached_instances_testkit::redis_server::RedisServer;
use cached_instances_testkit::rng::Rng;
use cached_instances_testkit::store::{Journaled, Op};
use polls::{Choice, Question, User};

fn builder(store: impl Store, db: &MemDb) -> CacheBuilder {
    Cache::builder()
        .store(store)
        .loader::<User>(db.clone())
        .loader::<Question>(db.clone())
        .loader::<Choice>(db.clone())
}

/// The bytes under `key` as the server holds them.
async fn raw(store: &RedisStore, key: &str) -> Option<Vec<u8>> {
    store.get(key).await.unwrap().map(|b| b.to_vec())
}

fn is_lease(bytes: &Option<Vec<u8>>) -> bool {
    bytes.as_deref().is_some_and(|b| b.starts_with(b"\0L"))
}

const TOMBSTONE: &[u8] = b"\0T";

/// The multi-gets among the store calls `ops` (a lease waiter's reads).
fn multi_gets<K>(ops: &[(Op, K)]) -> usize {
    ops.iter().filter(|(op, _)| *op == Op::GetMany).count()
}

/// Polls `done` every 5 ms for at most 20 s.
async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_cold_gets_make_one_loader_call() {
    let server = RedisServer::start();
    let db = MemDb::seeded();
    let loader = Instrumented::new(db.clone(), Duration::from_millis(200));
    let cache = Cache::builder()
        .store(RedisStore::connect(&server.url()).await.unwrap())
        .loader::<User>(loader.clone())
        .loader::<Question>(loader.clone())
        .loader::<Choice>(loader.clone())
        // Far above the loader's 200 ms, so that a busy machine cannot
        // turn a waiter into a second load (the default is 1 s).
        .lease_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(50));
    let readers: Vec<_> = (0..50)
        .map(|_| {
            let (cache, start) = (cache.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                cache.get::<Question>(&1).await
            })
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap().unwrap(), db.question(1));
    }
    assert_eq!(loader.gauge().calls(), 1, "one load for 50 readers");
    cache.settle().await;
    let stats = cache.stats();
    assert_eq!((stats.fills, stats.fills_rejected), (1, 0), "{stats:?}");
    assert_eq!(stats.store_errors, 0);
    assert!(stats.lease_waits > 0, "readers waited: {stats:?}");
}

type Reader = tokio::task::JoinHandle<Result<Option<Question>, cached_instances::Error>>;

/// A reader of `Question` 1 takes the lease and its load is held; then
/// `waiters` other readers of the key are spawned. Returns the holder, the
/// waiters (unfinished) and the release of the held load.
async fn herd_with_a_held_holder(
    cache: &Cache,
    db: &MemDb,
    waiters: usize,
) -> (Reader, Vec<Reader>, tokio::sync::oneshot::Sender<()>) {
    let held = db.hold_next_load::<Question>();
    let holder = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get::<Question>(&1).await }
    });
    held.read.await.unwrap();
    let readers = (0..waiters)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get::<Question>(&1).await })
        })
        .collect();
    (holder, readers, held.release)
}

/// `n` readers of question 1 through `cache` (another process than the
/// holder's), once each waits on the holder's lease.
async fn readers_waiting(cache: &Cache, n: u64) -> Vec<Reader> {
    let readers = (0..n)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get::<Question>(&1).await })
        })
        .collect();
    eventually("every reader waits on the lease", async || {
        cache.stats().lease_waits == n
    })
    .await;
    readers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_short_lease_wait_waiters_read_the_database_without_filling() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let db = MemDb::seeded();
    let cache = builder(store.clone(), &db)
        .lease_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    let key = cache.key_of::<Question>(&1).unwrap();
    let (holder, readers, release) = herd_with_a_held_holder(&cache, &db, 49).await;

    // Every waiter finishes while the holder's load is still held: each
    // waited 50 ms, then read the database itself.
    for reader in readers {
        assert_eq!(reader.await.unwrap().unwrap(), db.question(1));
    }
    assert_eq!(db.load_count("Question"), 50, "the holder and 49 waiters");
    assert_eq!(cache.stats().lease_waits, 49);
    assert_eq!(cache.stats().fills, 0, "waiters never fill");
    assert!(
        is_lease(&raw(&store, &key).await),
        "still the holder's lease"
    );

    release.send(()).unwrap();
    assert_eq!(holder.await.unwrap().unwrap(), db.question(1));
    cache.settle().await;
    let stats = cache.stats();
    assert_eq!((stats.fills, stats.fills_rejected), (1, 0), "{stats:?}");
    assert_eq!(
        raw(&store, &key).await.unwrap(),
        db.question(1).unwrap().to_json().unwrap(),
        "filled once, by the lease holder"
    );
    assert_eq!(stats.store_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_long_lease_wait_waiters_wait_for_the_fill() {
    let server = RedisServer::start();
    let db = MemDb::seeded();
    let cache = builder(RedisStore::connect(&server.url()).await.unwrap(), &db)
        .lease_wait(Duration::from_secs(60))
        .build()
        .unwrap();
    let (holder, readers, release) = herd_with_a_held_holder(&cache, &db, 20).await;
    eventually("every reader waits on the lease", async || {
        cache.stats().lease_waits == 20
    })
    .await;
    // Nothing lets a waiter go but the fill (or a 60 s wait).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(readers.iter().all(|r| !r.is_finished()));
    assert_eq!(db.load_count("Question"), 1);

    release.send(()).unwrap();
    assert_eq!(holder.await.unwrap().unwrap(), db.question(1));
    for reader in readers {
        assert_eq!(reader.await.unwrap().unwrap(), db.question(1));
    }
    assert_eq!(db.load_count("Question"), 1, "one load in all");
}

/// Readers that wait on a lease a read of the same cache holds do not poll
/// the store while it loads: each reads once, after the holder's fill is
/// handed over (behind it on the connection), and finds the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_a_lease_of_this_process_read_once_its_fill_is_handed_over() {
    let server = RedisServer::start();
    let store = Journaled::new(RedisStore::connect(&server.url()).await.unwrap());
    let db = MemDb::seeded();
    let cache = builder(store.clone(), &db)
        .lease_wait(Duration::from_secs(60))
        .build()
        .unwrap();
    let (holder, readers, release) = herd_with_a_held_holder(&cache, &db, 5).await;
    eventually("every reader waits on the lease", async || {
        cache.stats().lease_waits == 5
    })
    .await;
    // Time for a polling waiter to poll several times (1, 2, 4 ... ms).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let meanwhile = store.take();
    assert!(
        multi_gets(&meanwhile) == 0,
        "no poll while the holder loads: {meanwhile:?}"
    );

    release.send(()).unwrap();
    assert_eq!(holder.await.unwrap().unwrap(), db.question(1));
    for reader in readers {
        assert_eq!(reader.await.unwrap().unwrap(), db.question(1));
    }
    let after = store.take();
    let polls = multi_gets(&after);
    assert_eq!(polls, 5, "one read per waiter, after the fill: {after:?}");
    assert_eq!(db.load_count("Question"), 1);
    assert_eq!(cache.stats().loader_calls, 1);
}

/// Readers that wait on a lease another process holds read once at once,
/// then not again until Redis pushes a change: the holder's fill. Through a
/// store with a near cache, their reads go over its tracking connection;
/// without one, the store keeps a tracking connection for lease waits
/// alone, and a watch reads the keys over it itself. Without the watch they
/// polled at 1, 2, 4 ... ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_a_lease_of_another_process_read_again_when_its_fill_is_pushed() {
    lease_waits_across_processes(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_without_a_near_cache_read_again_when_the_fill_is_pushed() {
    lease_waits_across_processes(false).await;
}

async fn lease_waits_across_processes(near_cache: bool) {
    let server = RedisServer::start();
    let connect = async || {
        let mut store = RedisStore::builder(server.url().as_str());
        if near_cache {
            store = store.near_cache(NearCache::new());
        }
        store.connect().await.unwrap()
    };
    let db = MemDb::seeded();
    // Two processes: the holder's cache and the waiters' share nothing but
    // the server.
    let holder_cache = builder(connect().await, &db).build().unwrap();
    let waiters_store = connect().await;
    let store = Journaled::new(waiters_store.clone());
    let cache = builder(store.clone(), &db)
        .lease_wait(Duration::from_secs(60))
        .build()
        .unwrap();
    // A near cache's `connect` waits for its tracking connection; the lease
    // waits' own connection is made in the background.
    eventually("both stores track", async || {
        server.tracking_clients().len() == 2
    })
    .await;
    let (holder, _, release) = herd_with_a_held_holder(&holder_cache, &db, 0).await;
    let readers = readers_waiting(&cache, 5).await;
    // Polling waiters would have polled at 1, 2, 4, 8 and 16 ms by now.
    tokio::time::sleep(Duration::from_millis(40)).await;
    let meanwhile = store.take();
    let reads = multi_gets(&meanwhile);
    // One read each at once; one more only if this test overslept the
    // 50 ms fallback.
    assert!(
        (5..=10).contains(&reads),
        "{reads} reads while the holder loads: {meanwhile:?}"
    );

    let pushed = waiters_store.near_cache_stats().map(|s| s.invalidations);
    release.send(()).unwrap();
    assert_eq!(holder.await.unwrap().unwrap(), db.question(1));
    for reader in readers {
        assert_eq!(reader.await.unwrap().unwrap(), db.question(1));
    }
    let after = store.take();
    let reads = multi_gets(&after);
    // One read each once the fill is pushed; one more only where a
    // waiter's 50 ms fallback came due just before the push.
    assert!(
        (5..=10).contains(&reads),
        "{reads} reads after the holder's load: {after:?}"
    );
    if let Some(pushed) = pushed {
        assert!(
            waiters_store.near_cache_stats().unwrap().invalidations > pushed,
            "the fill was pushed to the waiters' process"
        );
    }
    assert_eq!(db.load_count("Question"), 1, "the waiters loaded nothing");
    assert_eq!(cache.stats().loader_calls, 0);
}

/// The lease waits' tracking connection of a store without a near cache
/// belongs to the store: dropping the store (every clone) closes it, as
/// the server sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_store_closes_its_lease_waits_connection() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    eventually("the store tracks", async || {
        server.tracking_clients().len() == 1
    })
    .await;
    let clone = store.clone();
    drop(store);
    tokio::task::yield_now().await;
    assert_eq!(server.tracking_clients().len(), 1, "a clone keeps it");
    drop(clone);
    eventually("the connection is closed", async || {
        server.tracking_clients().is_empty()
    })
    .await;
}

/// `lease_wait_tracking(false)`: no second connection, and waiters poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_lease_wait_tracking_a_store_makes_no_tracking_connection() {
    let server = RedisServer::start();
    let store = RedisStore::builder(server.url().as_str())
        .lease_wait_tracking(false)
        .connect()
        .await
        .unwrap();
    let tracked = RedisStore::connect(&server.url()).await.unwrap();
    let keys = ["k".to_owned()];
    eventually("the default store watches", async || {
        tracked.watch(&keys).is_some()
    })
    .await;
    assert_eq!(
        server.tracking_clients().len(),
        1,
        "the default store's only"
    );
    assert!(store.watch(&keys).is_none(), "no watch: waiters poll");
}

/// A server that refuses client tracking (here `CLIENT` is renamed away,
/// as some proxies and managed services do; a server before Redis 6 has no
/// RESP3) leaves a store without a near cache as it was: its reads and
/// herds work, its waiters poll, and it does not try again (no connection
/// every 2 s for as long as it runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_client_tracking_waiters_poll_and_the_store_stops_trying() {
    let server = RedisServer::start_with(&["--rename-command", "CLIENT", "CLIENT-RENAMED"]);
    // One connection of the test's own, made once.
    let mut own = server.connection();
    let mut connections = || -> u64 {
        let info: String = redis::cmd("INFO").arg("stats").query(&mut own).unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    };
    let db = MemDb::seeded();
    let holder_cache = builder(RedisStore::connect(&server.url()).await.unwrap(), &db)
        .build()
        .unwrap();
    let store = Journaled::new(RedisStore::connect(&server.url()).await.unwrap());
    let cache = builder(store.clone(), &db)
        .lease_wait(Duration::from_secs(60))
        .build()
        .unwrap();
    // Retried, the refused trackers would connect again at 50, 150, 350,
    // 750 ... ms.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = connections();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(connections(), settled, "a refused tracker connected again");

    let (holder, _, release) = herd_with_a_held_holder(&holder_cache, &db, 0).await;
    let readers = readers_waiting(&cache, 5).await;
    tokio::time::sleep(Duration::from_millis(40)).await;
    // A watched wait makes one read each in that time; polling, more.
    let polls = multi_gets(&store.take());
    assert!(polls > 5, "the waiters poll: {polls} reads in 40 ms");
    release.send(()).unwrap();
    assert_eq!(holder.await.unwrap().unwrap(), db.question(1));
    for reader in readers {
        assert_eq!(reader.await.unwrap().unwrap(), db.question(1));
    }
    assert_eq!(db.load_count("Question"), 1, "the waiters loaded nothing");
}

/// What happens to the key between the write and the held reader's fill.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Meanwhile {
    /// Nothing: the key holds the write's tombstone.
    Nothing,
    /// The tombstone expires (a tiny `tombstone_ttl`).
    TombstoneExpires,
    /// The tombstone is evicted (simulated with DEL).
    TombstoneEvicted,
    /// The database is flushed.
    Flushdb,
    /// The tombstone is evicted, and another reader leases, loads and fills
    /// the key with the new row.
    EvictedAndRefilled,
}

/// The stale-set race, scripted: a reader misses and its load reads the old
/// row and is held; a writer commits and invalidates; `meanwhile` happens;
/// the reader resumes. Its fill must be rejected, and the key must not hold
/// the stale value.
async fn late_fill(meanwhile: Meanwhile) {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let db = MemDb::seeded();
    let mut cache = builder(store.clone(), &db);
    if meanwhile == Meanwhile::TombstoneExpires {
        cache = cache.tombstone_ttl(Duration::from_millis(30));
    }
    let cache = cache.build().unwrap();
    let key = cache.key_of::<Choice>(&1).unwrap();
    let stale = db.choice(1).unwrap().to_json().unwrap();

    // The reader misses, leases, and its loader reads the old row.
    let held = db.hold_next_load::<Choice>();
    let reader = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get::<Choice>(&1).await }
    });
    held.read.await.unwrap();
    assert!(is_lease(&raw(&store, &key).await));

    // The writer commits, then tells the cache: the lease is void.
    db.write(|t| t.choices.get_mut(&1).unwrap().1 = "After the write".into());
    cache.saved(&db.choice(1).unwrap()).await.unwrap();
    assert_eq!(raw(&store, &key).await.as_deref(), Some(TOMBSTONE));

    let fresh = db.choice(1).unwrap().to_json().unwrap();
    let mut con = server.connection();
    match meanwhile {
        Meanwhile::Nothing => {}
        Meanwhile::TombstoneExpires => {
            eventually("the tombstone expires", async || {
                raw(&store, &key).await.is_none()
            })
            .await;
        }
        Meanwhile::TombstoneEvicted | Meanwhile::EvictedAndRefilled => {
            let deleted: i64 = redis::cmd("DEL").arg(&key).query(&mut con).unwrap();
            assert_eq!(deleted, 1);
        }
        Meanwhile::Flushdb => {
            let _: () = redis::cmd("FLUSHDB").query(&mut con).unwrap();
        }
    }
    if meanwhile == Meanwhile::EvictedAndRefilled {
        assert_eq!(cache.get::<Choice>(&1).await.unwrap(), db.choice(1));
        cache.settle().await;
        assert_eq!(raw(&store, &key).await.unwrap(), fresh);
    }

    // The reader resumes with the old row.
    held.release.send(()).unwrap();
    let seen = reader.await.unwrap().unwrap().unwrap();
    assert_eq!(seen.choice_text, "Not much", "it began before the write");
    // The read sent its fill without waiting for the reply.
    cache.settle().await;
    assert_eq!(cache.stats().fills_rejected, 1, "its fill was rejected");

    let now = raw(&store, &key).await;
    assert_ne!(
        now.as_ref(),
        Some(&stale),
        "{meanwhile:?}: the stale fill landed"
    );
    match meanwhile {
        Meanwhile::Nothing => assert_eq!(now.as_deref(), Some(TOMBSTONE)),
        Meanwhile::EvictedAndRefilled => assert_eq!(now, Some(fresh.clone())),
        _ => assert_eq!(now, None, "{meanwhile:?}"),
    }
    assert_eq!(
        cache.get::<Choice>(&1).await.unwrap().unwrap().choice_text,
        "After the write"
    );
    cache.settle().await;
    assert_eq!(raw(&store, &key).await, Some(fresh));
}

#[tokio::test]
async fn a_fill_from_before_a_write_is_rejected() {
    late_fill(Meanwhile::Nothing).await;
}

#[tokio::test]
async fn a_late_fill_is_rejected_after_the_tombstone_expired() {
    late_fill(Meanwhile::TombstoneExpires).await;
}

#[tokio::test]
async fn a_late_fill_is_rejected_after_the_tombstone_was_evicted() {
    late_fill(Meanwhile::TombstoneEvicted).await;
}

#[tokio::test]
async fn a_late_fill_is_rejected_after_flushdb() {
    late_fill(Meanwhile::Flushdb).await;
}

#[tokio::test]
async fn a_late_fill_is_rejected_after_another_reader_refilled_the_key() {
    late_fill(Meanwhile::EvictedAndRefilled).await;
}

// ---------------------------------------------------------------------------
// A randomized history against a real database.

/// A row whose version the writers bump.
#[derive(cached_instances::CachedInstance, Debug, Clone, PartialEq)]
#[cached(model = "Counter")]
pub struct Counter {
    #[cached(pk)]
    pub id: i64,
    pub version: i64,
    pub note: String,
}

/// Loads `Counter`s from an SQLite table, with one query per batch. Each
/// load waits a little (0–2 ms, pseudo-random) after reading its rows, as a
/// slow network would, so that writes land inside loads.
#[derive(Clone)]
struct CounterTable {
    pool: sqlx::SqlitePool,
}

type CounterRow = (i64, i64, String);

fn counter((id, version, note): CounterRow) -> Counter {
    Counter { id, version, note }
}

impl Loader<Counter> for CounterTable {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Counter>, LoadError> {
        static CALLS: AtomicU64 = AtomicU64::new(0);
        let ids = serde_json::to_string(pks).map_err(LoadError::new)?;
        let rows: Vec<CounterRow> = sqlx::query_as(
            "SELECT id, version, note FROM counters WHERE id IN (SELECT value FROM json_each(?))",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(LoadError::new)?;
        let pause = Rng::new(CALLS.fetch_add(1, Ordering::Relaxed)).below(2_000);
        tokio::time::sleep(Duration::from_micros(pause)).await;
        Ok(rows.into_iter().map(counter).collect())
    }
}

/// A temporary SQLite database file, removed on drop.
struct TempDb {
    path: std::path::PathBuf,
    pool: sqlx::SqlitePool,
}

impl TempDb {
    async fn new(keys: i64) -> TempDb {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "ci-history-{}-{}-{}.db",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .unwrap();
        sqlx::query(
            "CREATE TABLE counters (id INTEGER PRIMARY KEY, version INTEGER NOT NULL, note TEXT NOT NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        for id in 0..keys {
            sqlx::query("INSERT INTO counters (id, version, note) VALUES (?, 0, 'seed')")
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
        }
        TempDb { path, pool }
    }

    async fn row(&self, id: i64) -> Counter {
        let row: CounterRow = sqlx::query_as("SELECT id, version, note FROM counters WHERE id = ?")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .unwrap();
        counter(row)
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.path.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

#[derive(Debug)]
struct Read {
    id: i64,
    started: Instant,
    finished: Instant,
    version: i64,
}

#[derive(Debug)]
struct Write {
    id: i64,
    version: i64,
    /// When the commit and the cache notification were both done.
    acknowledged: Instant,
}

const KEYS: i64 = 6;
const WRITERS: u64 = 4;
const WRITES: usize = 200;
const READERS: u64 = 8;
const READS: usize = 400;

/// Writers commit version bumps and tell the cache (`saved`, or `refresh`
/// one time in four); readers read through the cache, one key or a few at a
/// time. Then: no read returned a version older than the last write
/// acknowledged before it began, and, once quiet, the cache equals the
/// database for every key.
async fn history<S: Store + Clone>(store: S, raw: impl AsyncFn(&S, &str) -> Option<Vec<u8>>) {
    let db = TempDb::new(KEYS).await;
    let cache = Cache::builder()
        .store(store.clone())
        .loader::<Counter>(CounterTable {
            pool: db.pool.clone(),
        })
        // Short, so that some waiters give up and read the database.
        .lease_wait(Duration::from_millis(3))
        .build()
        .unwrap();

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (cache, pool) = (cache.clone(), db.pool.clone());
            tokio::spawn(async move {
                let mut rng = Rng::new(w);
                let mut writes = Vec::new();
                for op in 0..WRITES {
                    let id = rng.below(KEYS as u64) as i64;
                    let row: CounterRow = sqlx::query_as(
                        "UPDATE counters SET version = version + 1, note = ? WHERE id = ? \
                         RETURNING id, version, note",
                    )
                    .bind(format!("writer {w} op {op}"))
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                    let row = counter(row);
                    if rng.below(4) == 0 {
                        cache.refresh::<Counter>(&id).await.unwrap();
                    } else {
                        cache.saved(&row).await.unwrap();
                    }
                    writes.push(Write {
                        id,
                        version: row.version,
                        acknowledged: Instant::now(),
                    });
                    if rng.below(3) == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                writes
            })
        })
        .collect();
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let mut rng = Rng::new(1000 + r);
                let mut reads = Vec::new();
                for _ in 0..READS {
                    let ids: Vec<i64> = if rng.below(5) == 0 {
                        (0..3).map(|_| rng.below(KEYS as u64) as i64).collect()
                    } else {
                        vec![rng.below(KEYS as u64) as i64]
                    };
                    let started = Instant::now();
                    let rows = if ids.len() == 1 {
                        cache
                            .get::<Counter>(&ids[0])
                            .await
                            .unwrap()
                            .into_iter()
                            .collect()
                    } else {
                        cache.get_many::<Counter>(&ids).await.unwrap()
                    };
                    let finished = Instant::now();
                    assert_eq!(rows.iter().map(|c| c.id).collect::<Vec<_>>(), ids);
                    for row in rows {
                        reads.push(Read {
                            id: row.id,
                            started,
                            finished,
                            version: row.version,
                        });
                    }
                }
                reads
            })
        })
        .collect();

    let mut writes = Vec::new();
    for writer in writers {
        writes.extend(writer.await.unwrap());
    }
    let mut reads = Vec::new();
    for reader in readers {
        reads.extend(reader.await.unwrap());
    }

    // Freshness: a read never goes back before a write that was
    // acknowledged before the read began.
    for read in &reads {
        let floor = writes
            .iter()
            .filter(|w| w.id == read.id && w.acknowledged < read.started)
            .map(|w| w.version)
            .max()
            .unwrap_or(0);
        assert!(
            read.version >= floor,
            "stale read of key {}: version {} after version {floor} was acknowledged ({read:?})",
            read.id,
            read.version,
        );
        // And never from the future: no version the database never had.
        let last = writes
            .iter()
            .filter(|w| w.id == read.id && w.version > 0)
            .map(|w| w.version)
            .max()
            .unwrap_or(0);
        assert!(read.version <= last, "{read:?}");
        assert!(read.finished >= read.started);
    }

    // Quiescence: what the store holds, and what reads return, is the
    // database.
    for id in 0..KEYS {
        let row = db.row(id).await;
        let key = cache.key_of::<Counter>(&id).unwrap();
        if let Some(bytes) = raw(&store, &key).await
            && bytes.first() == Some(&b'{')
        {
            assert_eq!(bytes, row.to_json().unwrap(), "the store's entry of {id}");
        }
        assert_eq!(cache.get::<Counter>(&id).await.unwrap(), Some(row.clone()));
        assert_eq!(cache.get::<Counter>(&id).await.unwrap(), Some(row));
    }
    let stats = cache.stats();
    assert_eq!(stats.store_errors, 0);
    eprintln!("{} reads, {} writes: {stats:?}", reads.len(), writes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_history_on_redis_is_fresh_and_converges() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    history(store, async |store: &RedisStore, key: &str| {
        store.get(key).await.unwrap().map(|b| b.to_vec())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_history_on_the_memory_store_is_fresh_and_converges() {
    history(
        MemoryStore::new(),
        async |store: &MemoryStore, key: &str| store.raw(key).map(|b| b.to_vec()),
    )
    .await;
}
