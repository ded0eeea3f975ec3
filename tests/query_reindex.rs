//! A write whose query-index update cannot reach the store, on a real Redis
//! server (started, paused and fault-injected by the test): the update is
//! queued, queries go to the loader while it is pending, and on recovery it
//! is redone (leased, reloaded, applied), so the model stays warmed and is
//! answered from the cache again, with the write in it. When that re-index
//! fails too (the loader, or the store's index operations), the model is
//! un-warmed: its queries go to the loader until the next `warm`, and are
//! never wrong meanwhile.
//!
//! Every wait is bounded and polls for the outcome; no sleep decides a
//! result.

use std::time::{Duration, Instant};

use cached_instances::query::Source;
use cached_instances::{Cache, Event, RedisStore, Store};
use cached_instances_testkit::faults::Faulty;
use cached_instances_testkit::query_model;
use cached_instances_testkit::query_model::{Db, Member, in_country, member};
use cached_instances_testkit::redis_server::RedisServer;

/// Short enough for the tests to recover quickly.
const RETRY: Duration = Duration::from_millis(50);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(200);
/// The bound of every wait for something that must happen.
const PATIENCE: Duration = Duration::from_secs(20);

async fn connected(server: &RedisServer) -> RedisStore {
    RedisStore::builder(server.url())
        .response_timeout(RESPONSE_TIMEOUT)
        .connect_timeout(Duration::from_millis(200))
        .retries(0)
        .connect()
        .await
        .unwrap()
}

fn cache_over(store: impl Store, db: &Db) -> Cache {
    query_model::cache_over(store, db, RETRY)
}

/// The warm marks on the server (one per warmed model version).
fn warm_marks(server: &RedisServer) -> Vec<String> {
    redis::cmd("KEYS")
        .arg("ci:{idx:Member}:*warm")
        .query(&mut server.connection())
        .unwrap()
}

/// Pauses the server's writes (and scripts) for `pause`; plain reads go on.
fn pause_writes(server: &RedisServer, pause: Duration) -> Instant {
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(pause.as_millis() as u64)
        .arg("WRITE")
        .query(&mut server.connection())
        .unwrap();
    Instant::now()
}

/// Runs the query by `country` and checks it against the database: the
/// same pks, count and instances, whichever side answered. Returns the
/// side.
async fn check(cache: &Cache, db: &Db, country: &str) -> Source {
    let expected = db.in_country(country);
    let found = cache.query(&in_country(country)).await.unwrap();
    let ids: Vec<i64> = found.items.iter().map(|m| m.id).collect();
    assert_eq!(
        (&ids, found.count),
        (&expected, expected.len() as u64),
        "{country}, from {:?}",
        found.source
    );
    for m in &found.items {
        assert_eq!(Some(m), db.row(m.id).as_ref());
    }
    found.source
}

/// Like [`check`], with the pks only (no instance is loaded: usable while
/// loads fail).
async fn check_pks(cache: &Cache, db: &Db, country: &str) -> Source {
    let expected = db.in_country(country);
    let found = cache.query_pks(&in_country(country)).await.unwrap();
    assert_eq!(
        (&found.items, found.count),
        (&expected, expected.len() as u64),
        "{country}, from {:?}",
        found.source
    );
    found.source
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_paused_on_the_server_is_reindexed_and_the_model_stays_warmed() {
    const PAUSE: Duration = Duration::from_millis(1500);
    let server = RedisServer::start();
    let db = Db::seeded(6, "FR");
    let cache = cache_over(connected(&server).await, &db);
    let mut events = cache.events();
    cache.warm::<Member>().await.unwrap();
    assert_eq!(check(&cache, &db, "GB").await, Source::Cache);
    assert_eq!(check(&cache, &db, "FR").await, Source::Cache);

    let paused_at = pause_writes(&server, PAUSE);
    let moved = member(2, "GB");
    db.put(moved.clone());
    cache.saved(&moved).await.unwrap();
    let stats = cache.stats();
    assert_eq!(stats.index_updates_missed, 1, "{stats:?}");
    assert_eq!(stats.reindexes, 0, "{stats:?}");
    // Pending: the loader answers, with the write.
    assert!(paused_at.elapsed() < PAUSE - Duration::from_millis(500));
    assert_eq!(check(&cache, &db, "GB").await, Source::Database);
    assert_eq!(check(&cache, &db, "FR").await, Source::Database);

    // After the pause, the cache's recovery task delivers the queue with no
    // read at all; the next query is answered from the cache, with the
    // write in it.
    let before = (db.loads(), db.queries());
    tokio::time::timeout(PATIENCE, async {
        while !matches!(
            events.recv().await,
            Ok(Event::InvalidationsDelivered { .. })
        ) {}
    })
    .await
    .expect("never delivered");
    assert!(paused_at.elapsed() >= PAUSE);
    assert_eq!(check(&cache, &db, "GB").await, Source::Cache);
    let (loads, queries) = (db.loads() - before.0, db.queries() - before.1);
    // No `Loader::query`; two loads: the re-index's reload, and member 2
    // itself (reloaded by the delivery of its invalidation, or by the
    // page's read if the write's timed-out swap ran late on the server and
    // left no value to compare).
    assert_eq!((loads, queries), (2, 0));
    // The member moved out of the old value's results too, and the model
    // is still warmed: no loader call at all from here.
    let before = (db.loads(), db.queries());
    assert_eq!(check(&cache, &db, "FR").await, Source::Cache);
    assert_eq!(check(&cache, &db, "GB").await, Source::Cache);
    assert_eq!((db.loads(), db.queries()), before);
    assert_eq!(warm_marks(&server).len(), 1);
    let stats = cache.stats();
    assert_eq!(
        (stats.index_updates_missed, stats.reindexes, stats.unwarmed),
        (1, 1, 0),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reindex_whose_reload_fails_unwarms_the_model_and_queries_stay_correct() {
    const PAUSE: Duration = Duration::from_millis(1000);
    let server = RedisServer::start();
    let db = Db::seeded(6, "FR");
    let cache = cache_over(connected(&server).await, &db);
    cache.warm::<Member>().await.unwrap();
    assert_eq!(warm_marks(&server).len(), 1);

    let paused_at = pause_writes(&server, PAUSE);
    let moved = member(2, "GB");
    db.put(moved.clone());
    cache.saved(&moved).await.unwrap();
    assert_eq!(cache.stats().index_updates_missed, 1);
    assert_eq!(check(&cache, &db, "GB").await, Source::Database);

    // The database fails before the server runs writes again: the
    // delivery's re-index, run by the recovery task once the pause is over,
    // cannot reload, so the model is un-warmed.
    db.fail_loads(true);
    tokio::time::sleep((PAUSE + Duration::from_millis(100)).saturating_sub(paused_at.elapsed()))
        .await;
    let deadline = Instant::now() + PATIENCE;
    while cache.stats().unwarmed == 0 {
        assert_eq!(check_pks(&cache, &db, "GB").await, Source::Database);
        assert!(Instant::now() < deadline, "never un-warmed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(check_pks(&cache, &db, "GB").await, Source::Database);
    assert_eq!(cache.stats().reindexes, 0);
    // The store answered: the mark was deleted at once.
    assert!(warm_marks(&server).is_empty());

    // The database is back: the loader answers, correctly, until the next
    // warm.
    db.fail_loads(false);
    for _ in 0..2 {
        assert_eq!(check(&cache, &db, "GB").await, Source::Database);
        assert_eq!(check(&cache, &db, "FR").await, Source::Database);
    }
    cache.warm::<Member>().await.unwrap();
    assert_eq!(check(&cache, &db, "GB").await, Source::Cache);
    assert_eq!(check(&cache, &db, "FR").await, Source::Cache);
    let stats = cache.stats();
    assert_eq!((stats.reindexes, stats.unwarmed), (0, 1), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reindex_the_store_fails_again_unwarms_the_model() {
    let server = RedisServer::start();
    let db = Db::seeded(6, "FR");
    let store = Faulty::new(connected(&server).await);
    let cache = cache_over(store.clone(), &db);
    cache.warm::<Member>().await.unwrap();
    assert_eq!(check(&cache, &db, "GB").await, Source::Cache);

    // The server takes the invalidation, not the index lease.
    store.fail_index_lease(true);
    let moved = member(2, "GB");
    db.put(moved.clone());
    cache.saved(&moved).await.unwrap();
    assert_eq!(cache.stats().index_updates_missed, 1);
    // Past the retry interval the store is tried again: the re-index fails
    // at its lease, and the mark's deletion is queued (the store failed).
    let deadline = Instant::now() + PATIENCE;
    while cache.stats().unwarmed == 0 {
        assert_eq!(check(&cache, &db, "GB").await, Source::Database);
        assert!(Instant::now() < deadline, "never un-warmed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(warm_marks(&server).len(), 1);
    assert_eq!(check(&cache, &db, "GB").await, Source::Database);

    store.fail_index_lease(false);
    let deadline = Instant::now() + PATIENCE;
    while !warm_marks(&server).is_empty() {
        assert_eq!(check(&cache, &db, "GB").await, Source::Database);
        assert!(Instant::now() < deadline, "the mark was never deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..2 {
        assert_eq!(check(&cache, &db, "GB").await, Source::Database);
        assert_eq!(check(&cache, &db, "FR").await, Source::Database);
    }
    cache.warm::<Member>().await.unwrap();
    assert_eq!(check(&cache, &db, "GB").await, Source::Cache);
    let stats = cache.stats();
    assert_eq!((stats.reindexes, stats.unwarmed), (0, 1), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_index_apply_failed_is_reindexed() {
    let server = RedisServer::start();
    let db = Db::seeded(6, "FR");
    let store = Faulty::new(connected(&server).await);
    let cache = cache_over(store.clone(), &db);
    cache.warm::<Member>().await.unwrap();

    // Leased and reloaded, but not applied: the index still says FR.
    store.fail_index_apply(true);
    let moved = member(2, "GB");
    db.put(moved.clone());
    cache.saved(&moved).await.unwrap();
    store.fail_index_apply(false);
    assert_eq!(cache.stats().index_updates_missed, 1);

    let deadline = Instant::now() + PATIENCE;
    while check(&cache, &db, "GB").await != Source::Cache {
        assert!(Instant::now() < deadline, "never answered from the cache");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(check(&cache, &db, "FR").await, Source::Cache);
    // Deleted during the next outage of the index: re-indexed as a removal.
    store.fail_index_lease(true);
    let gone = db.remove(2).unwrap();
    cache.deleted(&gone).await.unwrap();
    store.fail_index_lease(false);
    let deadline = Instant::now() + PATIENCE;
    while check(&cache, &db, "GB").await != Source::Cache {
        assert!(Instant::now() < deadline, "never answered from the cache");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(db.in_country("GB").is_empty());
    let stats = cache.stats();
    assert_eq!(
        (stats.index_updates_missed, stats.reindexes, stats.unwarmed),
        (2, 2, 0),
        "{stats:?}"
    );
}

/// A loader over [`Db`] whose next `load` of pk 0 waits, once armed, until
/// released.
#[derive(Clone)]
struct Gated {
    db: Db,
    gate: std::sync::Arc<std::sync::Mutex<Option<Gate>>>,
}

struct Gate {
    reached: tokio::sync::oneshot::Sender<()>,
    release: tokio::sync::oneshot::Receiver<()>,
}

impl cached_instances::Loader<Member> for Gated {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Member>, cached_instances::LoadError> {
        let gate = if pks.contains(&0) {
            self.gate.lock().unwrap().take()
        } else {
            None
        };
        if let Some(gate) = gate {
            gate.reached.send(()).unwrap();
            gate.release.await.unwrap();
        }
        self.db.load(pks).await
    }

    async fn all_pks(&self) -> Result<Option<Vec<i64>>, cached_instances::LoadError> {
        self.db.all_pks().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_counts_its_own_loader_calls_not_those_of_concurrent_reads() {
    let db = Db::seeded(6, "FR");
    let (reached_tx, reached) = tokio::sync::oneshot::channel();
    let (release, release_rx) = tokio::sync::oneshot::channel();
    let loader = Gated {
        db: db.clone(),
        gate: std::sync::Arc::new(std::sync::Mutex::new(Some(Gate {
            reached: reached_tx,
            release: release_rx,
        }))),
    };
    let cache = Cache::builder()
        .store(cached_instances::MemoryStore::new())
        .loader::<Member>(loader)
        .build()
        .unwrap();

    // The warm's batch load is held; meanwhile other tasks read (and load)
    // rows of their own.
    let warm = tokio::spawn({
        let cache = cache.clone();
        async move { cache.warm::<Member>().batch_size(6).await }
    });
    reached.await.unwrap();
    let loads = db.loads();
    for pk in 100..105 {
        let cache = cache.clone();
        let read = tokio::spawn(async move { cache.get::<Member>(&pk).await });
        assert_eq!(read.await.unwrap().unwrap(), None);
    }
    assert_eq!(db.loads() - loads, 5, "one loader call per read");
    release.send(()).unwrap();

    let report = warm.await.unwrap().unwrap();
    // `all_pks`, and the one batch load.
    assert_eq!(report.loader_calls, 2, "{report:?}");
    assert_eq!(report.indexed, 6);
    assert_eq!(cache.stats().loader_calls, 7, "{:?}", cache.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_during_warm_is_a_store_error_not_a_load_error() {
    let mut server = RedisServer::start();
    let db = Db::seeded(6, "FR");
    let cache = cache_over(connected(&server).await, &db);
    server.kill();

    let error = cache.warm::<Member>().await.unwrap_err();
    assert!(
        matches!(
            error,
            cached_instances::Error::Store {
                model: "Member",
                op: cached_instances::StoreOp::IndexMembers,
                ..
            }
        ),
        "{error:?}"
    );
    // The database answered; nothing was loaded past the pk list.
    assert_eq!(db.loads(), 0);
    assert_eq!(cache.stats().loader_calls, 1);
    assert!(cache.stats().store_errors >= 1);

    // Once the server is back, warm succeeds.
    server.restart();
    let deadline = Instant::now() + PATIENCE;
    let report = loop {
        match cache.warm::<Member>().await {
            Ok(report) => break report,
            Err(cached_instances::Error::Store { .. }) => {}
            Err(other) => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "warm never succeeded");
        tokio::time::sleep(RETRY).await;
    };
    assert_eq!(report.indexed, 6);
    assert_eq!(check(&cache, &db, "FR").await, Source::Cache);
}
