//! A read's fill is handed to the store and not waited for (see "Entries"
//! in the protocol, `cached-instances/src/cache/mod.rs`): the read returns
//! before the fill's reply, `Cache::settle` waits for it, and the reply is
//! recorded as before: a fill a write overtook is rejected, a failed fill
//! opens degraded mode and is counted. On the MemoryStore and on a real
//! Redis server (started by the test), each behind a [`Faulty`] wrapper
//! that holds the fill where the test needs it.
//!
//! A read that waited for its fill's reply would never return while the
//! reply is held: the bound on it ([`PATIENCE`]) only turns that hang into
//! a failure, and decides nothing else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cached_instances::{
    Cache, CachedInstance, Event, LoadError, Loader, MemoryStore, RedisStore, Store, StoreOp,
};
use cached_instances_testkit::faults::Faulty;
use cached_instances_testkit::memdb::MemDb;
use cached_instances_testkit::redis_server::RedisServer;
use cached_instances_testkit::store::Op;
use polls::{Choice, Question, User};

const PATIENCE: Duration = Duration::from_secs(20);

fn cache<S: Store + Clone>(store: &Faulty<S>, db: &MemDb) -> Cache {
    Cache::builder()
        .store(store.clone())
        .loader::<User>(db.clone())
        .loader::<Question>(db.clone())
        .loader::<Choice>(db.clone())
        // Long: a store failure keeps reads off the store for the test.
        .store_retry_interval(Duration::from_secs(600))
        .build()
        .unwrap()
}

/// Reads question 1, which must return while its fill is held.
async fn read_question(cache: &Cache) -> Question {
    tokio::time::timeout(PATIENCE, cache.get::<Question>(&1))
        .await
        .expect("the read waited for its fill's reply")
        .unwrap()
        .unwrap()
}

/// What the store holds under `key`, read past the hooks.
async fn raw<S: Store>(store: &Faulty<S>, key: &str) -> Option<bytes::Bytes> {
    store.inner().get(key).await.unwrap()
}

async fn returns_before_the_fills_reply<S: Store + Clone>(store: Faulty<S>) {
    let db = MemDb::seeded();
    let cache = cache(&store, &db);
    let held = store.hold_next_reply(Op::CompareAndSet, false);

    let question = read_question(&cache).await;
    assert_eq!(question, db.question(1).unwrap());

    // The fill reached the store and was applied; its reply is held.
    held.reached.await.unwrap();
    let key = cache.key_of::<Question>(&1).unwrap();
    let stored = raw(&store, &key).await.expect("the fill was applied");
    assert_eq!(Question::decode(&stored).unwrap(), question);
    assert_eq!(cache.stats().fills, 0, "the reply is not recorded yet");

    // `settle` waits for the held reply: it cannot end before the release
    // (a slow machine only makes this wait longer, never fail).
    let early = tokio::time::timeout(Duration::from_millis(100), cache.settle()).await;
    assert!(early.is_err(), "settle returned before the reply");
    held.release.send(()).unwrap();
    tokio::time::timeout(PATIENCE, cache.settle())
        .await
        .expect("settle waits for the released reply only");
    let stats = cache.stats();
    assert_eq!((stats.fills, stats.fills_rejected), (1, 0), "{stats:?}");

    // The filled entry is served: no second load.
    assert_eq!(read_question(&cache).await, question);
    assert_eq!(db.load_count("Question"), 1);
    assert_eq!(cache.stats().hits, 1);
}

async fn a_fill_overtaken_by_a_write_is_rejected<S: Store + Clone>(store: Faulty<S>) {
    let db = MemDb::seeded();
    let cache = cache(&store, &db);
    // The fill is sent, and held on its way to the store.
    let held = store.hold_next(Op::CompareAndSet);

    let before = read_question(&cache).await;
    assert_eq!(before.question_text, "What's up?");
    held.reached.await.unwrap();

    // A write commits and invalidates while the fill is on its way.
    db.write(|t| t.questions.get_mut(&1).unwrap().0 = "After the write".into());
    cache.saved(&db.question(1).unwrap()).await.unwrap();

    // The fill lands after the write: its lease is gone.
    held.release.send(()).unwrap();
    cache.settle().await;
    assert_eq!(
        cache.stats().fills_rejected,
        1,
        "the reader's fill was rejected"
    );
    let key = cache.key_of::<Question>(&1).unwrap();
    if let Some(stored) = raw(&store, &key).await
        && let Ok(stored) = Question::decode(&stored)
    {
        assert_eq!(
            stored.question_text, "After the write",
            "a stale fill landed"
        );
    }
    assert_eq!(read_question(&cache).await.question_text, "After the write");
}

async fn a_failed_fill_opens_degraded_mode_and_is_counted<S: Store + Clone>(store: Faulty<S>) {
    let db = MemDb::seeded();
    let cache = cache(&store, &db);
    let mut events = cache.events();
    // Applied, then its reply lost.
    let held = store.hold_next_reply(Op::CompareAndSet, true);

    let question = read_question(&cache).await;
    held.reached.await.unwrap();
    assert_eq!(
        cache.stats().store_errors,
        0,
        "the reply is not recorded yet"
    );
    held.release.send(()).unwrap();
    cache.settle().await;

    let stats = cache.stats();
    assert_eq!(
        (stats.store_errors, stats.fills, stats.fills_rejected),
        (1, 0, 0),
        "{stats:?}"
    );
    match events.try_recv() {
        Ok(Event::StoreUnavailable { model, op, .. }) => {
            assert_eq!((model, op), (Some("Question"), StoreOp::Fill));
        }
        other => panic!("expected the fill's failure, got {other:?}"),
    }
    // Degraded: the next read goes to the loader, though the entry is in
    // the store.
    assert_eq!(read_question(&cache).await, question);
    assert_eq!(db.load_count("Question"), 2, "the store was skipped");
    assert_eq!(cache.stats().hits, 0);
}

async fn redis() -> (RedisServer, Faulty<RedisStore>) {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    (server, Faulty::new(store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_read_returns_before_its_fills_reply_on_the_memory_store() {
    returns_before_the_fills_reply(Faulty::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_read_returns_before_its_fills_reply_on_redis() {
    let (_server, store) = redis().await;
    returns_before_the_fills_reply(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_fill_overtaken_by_a_write_is_rejected_on_the_memory_store() {
    a_fill_overtaken_by_a_write_is_rejected(Faulty::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_fill_overtaken_by_a_write_is_rejected_on_redis() {
    let (_server, store) = redis().await;
    a_fill_overtaken_by_a_write_is_rejected(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_fill_that_fails_opens_degraded_mode_on_the_memory_store() {
    a_failed_fill_opens_degraded_mode_and_is_counted(Faulty::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_fill_that_fails_opens_degraded_mode_on_redis() {
    let (_server, store) = redis().await;
    a_failed_fill_opens_degraded_mode_and_is_counted(store).await;
}

/// A read of instances returns before its fill is even encoded: a task
/// encodes a copy of each row and sends the fill. The next call of the
/// cache by the same caller waits for that hand-over, so it is sent after
/// the fill: a read right after finds the entry (a hit, no lease waited
/// on), and the store, read after it on the same connection, holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_after_a_cold_read_is_ordered_after_its_fill() {
    let (_server, store) = redis().await;
    let db = MemDb::seeded();
    let cache = cache(&store, &db);
    let pks: Vec<i64> = (100..150).collect();
    db.write(|t| {
        for &id in &pks {
            t.users.insert(id, format!("user{id}"));
        }
    });
    for &pk in &pks {
        let user = cache.get::<User>(&pk).await.unwrap().unwrap();
        let before = cache.stats();
        assert_eq!(cache.get::<User>(&pk).await.unwrap(), Some(user.clone()));
        let after = cache.stats();
        assert_eq!(after.hits - before.hits, 1, "user {pk}: a hit");
        assert_eq!(after.lease_waits, before.lease_waits, "user {pk}: no wait");
        let key = cache.key_of::<User>(&pk).unwrap();
        let stored = raw(&store, &key).await.expect("an entry");
        assert_eq!(User::decode(&stored).ok(), Some(user), "user {pk}");
    }
    assert_eq!(db.load_count("User"), pks.len());
    cache.settle().await;
    assert_eq!(cache.stats().fills, pks.len() as u64);
}

/// A model that is not `Clone`: its rows cannot be copied, so the read
/// encodes them itself and hands the fill over before it returns.
#[derive(CachedInstance, Debug, PartialEq)]
#[cached(model = "Tag")]
struct Tag {
    #[cached(pk)]
    id: i64,
    name: String,
}

impl Loader<Tag> for MemDb {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Tag>, LoadError> {
        Ok(pks
            .iter()
            .map(|&id| Tag {
                id,
                name: format!("tag{id}"),
            })
            .collect())
    }
}

/// On a current-thread runtime a spawned task runs only once the test
/// yields, so what the store holds right after a read tells who encoded
/// its fill: the MemoryStore applies a fill as it is handed over.
#[tokio::test(flavor = "current_thread")]
async fn a_cloneable_model_is_encoded_after_the_read_and_another_before_it_returns() {
    let db = MemDb::seeded();
    let store = MemoryStore::new();
    let cache = Cache::builder()
        .store(store.clone())
        .loader::<User>(db.clone())
        .loader::<Question>(db.clone())
        .loader::<Choice>(db.clone())
        .loader::<Tag>(db.clone())
        .build()
        .unwrap();

    // `Question` is `Clone`: the read returns holding the lease.
    let question = cache.get::<Question>(&1).await.unwrap().unwrap();
    let key = cache.key_of::<Question>(&1).unwrap();
    let held = store.get(&key).await.unwrap().expect("the lease");
    assert!(Question::decode(&held).is_err(), "not filled yet");
    cache.settle().await;
    let filled = store.get(&key).await.unwrap().expect("the entry");
    assert_eq!(Question::decode(&filled).ok(), Some(question));
    assert_eq!(cache.stats().fills, 1);

    // `Tag` is not: its fill is in the store when the read returns.
    let tag = cache.get::<Tag>(&7).await.unwrap().unwrap();
    let key = cache.key_of::<Tag>(&7).unwrap();
    let filled = store.get(&key).await.unwrap().expect("the entry");
    assert_eq!(Tag::decode(&filled).ok(), Some(tag));
    assert_eq!(cache.stats().fills, 2);
}

/// A loader of questions that tells when it is dropped (with the cache
/// that owns it).
struct Witness {
    db: MemDb,
    dropped: Arc<AtomicBool>,
}

impl Loader<Question> for Witness {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Question>, LoadError> {
        Loader::<Question>::load(&self.db, pks).await
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

/// The task that waits for a fill's reply holds the cache only weakly: the
/// cache is dropped with its last clone, reply or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_in_flight_does_not_keep_the_cache_alive() {
    let db = MemDb::seeded();
    let store = Faulty::new(MemoryStore::new());
    let dropped = Arc::new(AtomicBool::new(false));
    let cache = Cache::builder()
        .store(store.clone())
        .loader::<User>(db.clone())
        .loader::<Choice>(db.clone())
        .loader::<Question>(Witness {
            db: db.clone(),
            dropped: dropped.clone(),
        })
        .build()
        .unwrap();
    let held = store.hold_next_reply(Op::CompareAndSet, false);
    read_question(&cache).await;
    held.reached.await.unwrap();

    drop(cache);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the fill's task kept the cache alive"
    );
    // The reply, arriving with no cache to record it in, is dropped.
    held.release.send(()).unwrap();
}

/// A reading whose value may not be finite, which JSON cannot hold; one
/// model of it with `Clone` (encoded by the fill's task), one without
/// (encoded by the read).
#[derive(CachedInstance, Debug)]
#[cached(model = "Gauge")]
struct Gauge {
    #[cached(pk)]
    id: i64,
    value: f64,
}

#[derive(CachedInstance, Debug, Clone)]
#[cached(model = "ClonedGauge")]
struct ClonedGauge {
    #[cached(pk)]
    id: i64,
    value: f64,
}

impl Loader<Gauge> for MemDb {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Gauge>, LoadError> {
        Ok(pks
            .iter()
            .map(|&id| Gauge {
                id,
                value: f64::NAN,
            })
            .collect())
    }
}

impl Loader<ClonedGauge> for MemDb {
    async fn load(&self, pks: &[i64]) -> Result<Vec<ClonedGauge>, LoadError> {
        Ok(pks
            .iter()
            .map(|&id| ClonedGauge {
                id,
                value: f64::NAN,
            })
            .collect())
    }
}

/// A row that does not encode is served as an instance and not cached,
/// whichever side encodes it; a read of its JSON fails.
#[tokio::test(flavor = "current_thread")]
async fn a_row_that_does_not_encode_is_served_not_cached_with_or_without_clone() {
    let db = MemDb::seeded();
    let store = MemoryStore::new();
    let cache = Cache::builder()
        .store(store.clone())
        .loader::<Gauge>(db.clone())
        .loader::<ClonedGauge>(db.clone())
        .build()
        .unwrap();

    let gauge = cache.get::<Gauge>(&1).await.unwrap().unwrap();
    assert!(gauge.value.is_nan());
    let cloned = cache.get::<ClonedGauge>(&1).await.unwrap().unwrap();
    assert!(cloned.value.is_nan());
    cache.settle().await;
    for key in [
        cache.key_of::<Gauge>(&1).unwrap(),
        cache.key_of::<ClonedGauge>(&1).unwrap(),
    ] {
        let held = store.get(&key).await.unwrap();
        assert!(held.is_none_or(|b| b[0] == 0), "{key}: not cached");
    }
    assert_eq!(cache.stats().fills, 0);
    assert!(cache.get_json::<Gauge>(&2).await.is_err());
}
