//! Degraded mode on a real Redis server (started by the test, killed,
//! restarted and paused by it): while the store is down, stalled or refusing
//! writes, reads return correct data from the loaders and writes succeed;
//! when it answers again, queued invalidations are delivered first and
//! caching resumes. And when the database fails or hangs instead (a loader
//! that errors, or never answers within `loader_timeout`), reads fail with
//! a typed error but leave nothing behind: no lease held, no stale entry,
//! and the next read after the database is back succeeds and caches.
//!
//! Every wait here is bounded and polls for the outcome (no sleep decides a
//! result); the only timing assertion is that a stalled server does not stall
//! reads, with a wide margin.

use std::time::{Duration, Instant};

use cached_instances::{Cache, CacheBuilder, CachedInstance, Error, Event, RedisStore, Store};
use cached_instances_testkit::faults::{Faulty, Flaky, Instrumented};
use cached_instances_testkit::memdb::MemDb;
use cached_instances_testkit::redis_server::RedisServer;
use polls::{Choice, Question, User};
use tokio::sync::broadcast;

/// Short enough for the tests to recover quickly.
const RETRY: Duration = Duration::from_millis(50);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(200);
/// The bound of every wait for something that must happen.
const PATIENCE: Duration = Duration::from_secs(20);

fn builder(store: impl Store, db: &MemDb) -> CacheBuilder {
    Cache::builder()
        .store(store)
        .loader::<User>(db.clone())
        .loader::<Question>(db.clone())
        .loader::<Choice>(db.clone())
        .store_retry_interval(RETRY)
}

fn store_builder(url: String) -> cached_instances::RedisStoreBuilder {
    RedisStore::builder(url)
        .response_timeout(RESPONSE_TIMEOUT)
        .connect_timeout(Duration::from_millis(200))
        .retries(0)
}

async fn connected(server: &RedisServer) -> RedisStore {
    store_builder(server.url()).connect().await.unwrap()
}

/// Waits for the first event matching `want`, skipping others.
async fn wait_for(
    events: &mut broadcast::Receiver<Event>,
    what: &str,
    want: impl Fn(&Event) -> bool,
) -> Event {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(event)) if want(&event) => return event,
            Ok(Ok(_) | Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) => panic!("events closed"),
            Err(_) => panic!("no {what} event within {PATIENCE:?}"),
        }
    }
}

/// The first event already sent that matches `want`, if any (drains the
/// events before it).
fn seen(events: &mut broadcast::Receiver<Event>, want: impl Fn(&Event) -> bool) -> Option<Event> {
    loop {
        match events.try_recv() {
            Ok(event) if want(&event) => return Some(event),
            Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => return None,
        }
    }
}

/// Reads `Question` 1 until a read is a hit, checking every answer.
async fn read_until_cached(cache: &Cache, db: &MemDb) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let hits = cache.stats().hits;
        assert_eq!(cache.get::<Question>(&1).await.unwrap(), db.question(1));
        if cache.stats().hits > hits {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "caching did not resume: {:?}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Caching works: reads are hits, the loader is not called.
async fn assert_caching(cache: &Cache, db: &MemDb) {
    let loads = db.loads().len();
    let hits = cache.stats().hits;
    for _ in 0..10 {
        assert_eq!(cache.get::<Question>(&1).await.unwrap(), db.question(1));
    }
    assert_eq!(db.loads().len(), loads, "loader calls stopped growing");
    assert_eq!(cache.stats().hits, hits + 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_started_while_redis_is_down_serves_from_the_database_then_caches() {
    let mut server = RedisServer::start();
    server.kill();
    // `connect` would fail here; `connect_lazy` does not connect yet.
    let store = store_builder(server.url()).connect_lazy().unwrap();
    let db = MemDb::seeded();
    let cache = builder(store, &db).build().unwrap();
    let mut events = cache.events();

    for round in 1..=5 {
        let started = Instant::now();
        assert_eq!(cache.get::<Question>(&1).await.unwrap(), db.question(1));
        assert_eq!(
            cache.get_many::<Choice>(&[2, 1]).await.unwrap(),
            [db.choice(2).unwrap(), db.choice(1).unwrap()]
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(db.load_count("Question"), round, "every read loads");
    }
    let event = wait_for(&mut events, "StoreUnavailable", |e| {
        matches!(e, Event::StoreUnavailable { .. })
    })
    .await;
    let Event::StoreUnavailable { error, .. } = event else {
        unreachable!()
    };
    assert!(
        matches!(*error, cached_instances::StoreError::Unavailable(_)),
        "{error}"
    );
    assert_eq!(cache.stats().hits, 0);
    assert!(cache.stats().store_errors >= 1);

    server.restart();
    let restarted = Instant::now();
    read_until_cached(&cache, &db).await;
    eprintln!(
        "caching resumed {:?} after the server started",
        restarted.elapsed()
    );
    wait_for(&mut events, "StoreRecovered", |e| {
        matches!(e, Event::StoreRecovered)
    })
    .await;
    assert_caching(&cache, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_and_restarted() {
    let mut server = RedisServer::start();
    let db = MemDb::seeded();
    let cache = builder(connected(&server).await, &db).build().unwrap();
    let mut events = cache.events();
    read_until_cached(&cache, &db).await;
    assert_caching(&cache, &db).await;

    server.kill();
    let loads = db.load_count("Question");
    for i in 1..=5 {
        assert_eq!(cache.get::<Question>(&1).await.unwrap(), db.question(1));
        assert_eq!(db.load_count("Question"), loads + i, "served by the loader");
    }
    wait_for(&mut events, "StoreUnavailable", |e| {
        matches!(e, Event::StoreUnavailable { .. })
    })
    .await;

    // The server comes back empty (it saves nothing): the next read fills,
    // then reads are hits again.
    server.restart();
    read_until_cached(&cache, &db).await;
    wait_for(&mut events, "StoreRecovered", |e| {
        matches!(e, Event::StoreRecovered)
    })
    .await;
    assert_caching(&cache, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_costs_a_read_about_the_response_timeout() {
    const PAUSE: Duration = Duration::from_millis(3000);
    let server = RedisServer::start();
    let db = MemDb::seeded();
    let cache = builder(connected(&server).await, &db).build().unwrap();
    read_until_cached(&cache, &db).await;

    // Every client command waits until the pause ends.
    let paused_at = Instant::now();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(PAUSE.as_millis() as u64)
        .arg("ALL")
        .query(&mut server.connection())
        .unwrap();
    let mut slowest = Duration::ZERO;
    while cache.stats().store_errors < 3 {
        let started = Instant::now();
        assert_eq!(cache.get::<Question>(&1).await.unwrap(), db.question(1));
        slowest = slowest.max(started.elapsed());
        // Measured only while the server is surely still paused.
        assert!(paused_at.elapsed() < PAUSE - Duration::from_millis(500));
        tokio::time::sleep(RETRY).await;
    }
    eprintln!("slowest read while stalled: {slowest:?}");
    // 200 ms response timeout, one loader call: far below the pause. (The
    // bound is wide so a busy machine does not fail it; without the timeout
    // a read would take the whole pause.)
    assert!(
        slowest < Duration::from_millis(1200),
        "a read took {slowest:?} while the server was stalled"
    );

    tokio::time::sleep(PAUSE.saturating_sub(paused_at.elapsed())).await;
    read_until_cached(&cache, &db).await;
    assert_caching(&cache, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_accepts_but_never_answers_costs_a_read_about_the_response_timeout() {
    // A listener that takes connections and never says a word: connecting
    // "succeeds", the handshake never ends.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in listener.incoming() {
            open.push(stream);
        }
    });
    let store = RedisStore::builder(url)
        .response_timeout(RESPONSE_TIMEOUT)
        // The connection's own timeouts and retries would stall a request
        // for many seconds; the request deadline does not wait for them.
        .connect_timeout(Duration::from_secs(10))
        .retries(5)
        .connect_lazy()
        .unwrap();
    let db = MemDb::seeded();
    let cache = builder(store, &db).build().unwrap();
    let mut slowest = Duration::ZERO;
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(cache.get::<Question>(&1).await.unwrap(), db.question(1));
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(RETRY * 2).await;
    }
    assert!(cache.stats().store_errors >= 2, "{:?}", cache.stats());
    eprintln!("slowest read while the store could not connect: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(1200),
        "a read took {slowest:?} while the store could not connect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_reads_run_at_most_degraded_concurrency_loads_at_once() {
    let mut server = RedisServer::start();
    let db = MemDb::seeded();
    let loader = Instrumented::new(db.clone(), Duration::from_millis(100));
    let cache = Cache::builder()
        .store(connected(&server).await)
        .loader::<User>(loader.clone())
        .loader::<Question>(loader.clone())
        .loader::<Choice>(loader.clone())
        // The store stays skipped for the whole burst.
        .store_retry_interval(Duration::from_secs(60))
        .degraded_concurrency(2)
        .build()
        .unwrap();
    server.kill();
    // Opens the circuit.
    assert_eq!(cache.get::<Question>(&1).await.unwrap(), db.question(1));
    assert_eq!(cache.stats().store_errors, 1);

    let calls = loader.gauge().calls();
    let readers: Vec<_> = (0..20)
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get::<Question>(&(1 + i % 2)).await })
        })
        .collect();
    for (i, reader) in readers.into_iter().enumerate() {
        let pk = 1 + i as i64 % 2;
        assert_eq!(reader.await.unwrap().unwrap(), db.question(pk));
    }
    assert_eq!(loader.gauge().calls() - calls, 20, "every read loaded");
    assert_eq!(
        loader.gauge().max_in_flight(),
        2,
        "at most degraded_concurrency loads at once"
    );
}

/// Reads of the moved choice and both questions, as the database has them.
async fn assert_fresh(cache: &Cache, db: &MemDb) {
    assert_eq!(cache.get::<Choice>(&2).await.unwrap(), db.choice(2));
    assert_eq!(
        cache.get_many::<Question>(&[1, 2]).await.unwrap(),
        [db.question(1).unwrap(), db.question(2).unwrap()]
    );
}

/// The cached bytes of `pk`, straight from the server.
/// What the store holds for `pk`, once the cache's fills were sent (a read
/// returns before its fill is).
async fn raw<T: CachedInstance>(store: &RedisStore, cache: &Cache, pk: &T::Pk) -> Option<Vec<u8>> {
    cache.settle().await;
    let key = cache.key_of::<T>(pk).unwrap();
    store.get(&key).await.unwrap().map(|b| b.to_vec())
}

/// Warms choice 2 and both questions, makes writes fail, and moves choice 2
/// from question 1 to question 2 with a plain `saved` (the previous state is
/// only known from the cache). Returns the entries now stale in Redis.
async fn move_choice_while_writes_fail(
    cache: &Cache,
    store: &Faulty<RedisStore>,
    db: &MemDb,
    events: &mut broadcast::Receiver<Event>,
) -> [Vec<u8>; 2] {
    assert_fresh(cache, db).await;
    let stale_choice = raw::<Choice>(store.inner(), cache, &2).await.unwrap();
    let stale_question = raw::<Question>(store.inner(), cache, &1).await.unwrap();

    store.fail_writes(true);
    db.write(|t| {
        t.choices.get_mut(&2).unwrap().0 = 2;
        t.choices.get_mut(&2).unwrap().1 = "Moved".into();
    });
    cache.saved(&db.choice(2).unwrap()).await.unwrap();
    assert!(store.failed_writes() > 0);
    wait_for(events, "InvalidationsQueued", |e| {
        matches!(e, Event::InvalidationsQueued { .. })
    })
    .await;
    // Nothing reached Redis: it still holds the old states.
    assert_eq!(
        raw::<Choice>(store.inner(), cache, &2).await.unwrap(),
        stale_choice
    );
    assert_eq!(
        raw::<Question>(store.inner(), cache, &1).await.unwrap(),
        stale_question
    );
    [stale_choice, stale_question]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undelivered_invalidation_is_never_served_and_is_delivered_on_recovery() {
    let server = RedisServer::start();
    let store = Faulty::new(connected(&server).await);
    let db = MemDb::seeded();
    let cache = builder(store.clone(), &db).build().unwrap();
    let mut events = cache.events();
    let [stale_choice, stale_question] =
        move_choice_while_writes_fail(&cache, &store, &db, &mut events).await;

    // Meanwhile, reads never return what Redis still holds, before and
    // after the retry interval (the probes fail too).
    for _ in 0..5 {
        assert_fresh(&cache, &db).await;
        tokio::time::sleep(RETRY).await;
    }

    store.fail_writes(false);
    let deadline = Instant::now() + PATIENCE;
    let delivered = loop {
        assert_fresh(&cache, &db).await;
        if let Some(Event::InvalidationsDelivered { count }) = seen(&mut events, |e| {
            matches!(e, Event::InvalidationsDelivered { .. })
        }) {
            break count;
        }
        assert!(Instant::now() < deadline, "never delivered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        delivered >= 2,
        "the choice and its new question: {delivered}"
    );

    // Redis holds no stale entry: not the moved choice, and not its old
    // question, which the write only knew of through the cached choice.
    assert_ne!(
        raw::<Choice>(store.inner(), &cache, &2).await,
        Some(stale_choice)
    );
    assert_ne!(
        raw::<Question>(store.inner(), &cache, &1).await,
        Some(stale_question)
    );
    assert_fresh(&cache, &db).await;
    // And caching works again.
    let loads = db.loads().len();
    assert_fresh(&cache, &db).await;
    assert_eq!(db.loads().len(), loads, "all hits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_during_the_delivery_of_queued_invalidations_bypass_the_store() {
    let server = RedisServer::start();
    let store = Faulty::new(connected(&server).await);
    let db = MemDb::seeded();
    let cache = builder(store.clone(), &db).build().unwrap();
    let mut events = cache.events();
    move_choice_while_writes_fail(&cache, &store, &db, &mut events).await;

    // The store recovers, but the delivery of the queued invalidations is
    // slow: it is held before it reaches Redis.
    store.fail_writes(false);
    let held = store.hold_next_swap();
    tokio::time::sleep(RETRY * 2).await;
    let delivering = tokio::spawn({
        let (cache, db) = (cache.clone(), db.clone());
        async move { assert_fresh(&cache, &db).await }
    });
    held.reached.await.unwrap();

    // Readers that come meanwhile, past the next retry time too, must not
    // read the entries the delivery is about to replace.
    for _ in 0..3 {
        tokio::time::sleep(RETRY * 2).await;
        assert_fresh(&cache, &db).await;
    }

    held.release.send(()).unwrap();
    delivering.await.unwrap();
    wait_for(&mut events, "InvalidationsDelivered", |e| {
        matches!(e, Event::InvalidationsDelivered { .. })
    })
    .await;
    assert_fresh(&cache, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_paused_on_the_server_is_queued_and_delivered() {
    const PAUSE: Duration = Duration::from_millis(1500);
    let server = RedisServer::start();
    let store = connected(&server).await;
    let db = MemDb::seeded();
    let cache = builder(store.clone(), &db).build().unwrap();
    let mut events = cache.events();
    assert_eq!(cache.get::<Choice>(&1).await.unwrap(), db.choice(1));
    let stale = raw::<Choice>(&store, &cache, &1).await.unwrap();

    // The server stops running writes (and scripts); plain reads go on.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(PAUSE.as_millis() as u64)
        .arg("WRITE")
        .query(&mut server.connection())
        .unwrap();
    db.write(|t| t.choices.get_mut(&1).unwrap().1 = "Written during the pause".into());
    cache.saved(&db.choice(1).unwrap()).await.unwrap();
    wait_for(&mut events, "InvalidationsQueued", |e| {
        matches!(e, Event::InvalidationsQueued { .. })
    })
    .await;
    // Redis still serves the old entry to plain GETs (from another
    // connection: the store's own one waits behind the paused script), but
    // the cache does not.
    let key = cache.key_of::<Choice>(&1).unwrap();
    let held: Option<Vec<u8>> = redis::cmd("GET")
        .arg(&key)
        .query(&mut server.connection())
        .unwrap();
    assert_eq!(held.unwrap(), stale);
    assert_eq!(cache.get::<Choice>(&1).await.unwrap(), db.choice(1));

    let deadline = Instant::now() + PATIENCE;
    let mut delivered = false;
    while !delivered || cache.stats().hits == 0 {
        assert_eq!(cache.get::<Choice>(&1).await.unwrap(), db.choice(1));
        delivered |= seen(&mut events, |e| {
            matches!(e, Event::InvalidationsDelivered { .. })
        })
        .is_some();
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        raw::<Choice>(&store, &cache, &1).await.unwrap(),
        db.choice(1).unwrap().to_json().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_never_fail_the_caller_while_the_store_is_down() {
    let mut server = RedisServer::start();
    let db = MemDb::seeded();
    let cache = builder(connected(&server).await, &db).build().unwrap();
    let mut events = cache.events();
    assert_eq!(cache.get::<Choice>(&1).await.unwrap(), db.choice(1));
    server.kill();

    let previous = db.choice(2).unwrap();
    db.write(|t| {
        t.choices.get_mut(&1).unwrap().1 = "Changed while down".into();
        t.choices.get_mut(&2).unwrap().0 = 2;
        t.votes.insert((3, 1));
    });
    cache.saved(&db.choice(1).unwrap()).await.unwrap();
    cache
        .saved_from(&previous, &db.choice(2).unwrap())
        .await
        .unwrap();
    assert!(cache.refresh::<User>(&3).await.unwrap());
    let gone = db.choice(3).unwrap();
    db.write(|t| t.choices.remove(&3));
    cache.deleted(&gone).await.unwrap();
    cache.delete_all_versions::<Question>(&1).await.unwrap();
    wait_for(&mut events, "InvalidationsQueued", |e| {
        matches!(e, Event::InvalidationsQueued { .. })
    })
    .await;

    let check = || async {
        assert_eq!(
            cache.get_many::<Choice>(&[1, 2, 3]).await.unwrap(),
            [db.choice(1).unwrap(), db.choice(2).unwrap()]
        );
        assert_eq!(cache.get::<User>(&3).await.unwrap(), db.user(3));
        assert_eq!(
            cache.get_many::<Question>(&[1, 2]).await.unwrap(),
            [db.question(1).unwrap(), db.question(2).unwrap()]
        );
    };
    check().await;

    server.restart();
    let deadline = Instant::now() + PATIENCE;
    let mut delivered = false;
    while !delivered {
        check().await;
        delivered |= seen(&mut events, |e| {
            matches!(e, Event::InvalidationsDelivered { .. })
        })
        .is_some();
        assert!(Instant::now() < deadline, "never delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check().await;
    read_until_cached(&cache, &db).await;
}

/// Whether the bytes are a lease (a load in progress, or one that was never
/// released).
fn is_lease(bytes: &Option<Vec<u8>>) -> bool {
    bytes.as_deref().is_some_and(|b| b.starts_with(b"\0L"))
}

/// Whether the bytes are a representation (not absent, not a marker).
fn is_value(bytes: &Option<Vec<u8>>) -> bool {
    bytes.as_deref().is_some_and(|b| b.first() == Some(&b'{'))
}

fn flaky_cache(store: impl Store, loader: &Flaky<MemDb>) -> CacheBuilder {
    Cache::builder()
        .store(store)
        .loader::<User>(loader.clone())
        .loader::<Question>(loader.clone())
        .loader::<Choice>(loader.clone())
        .store_retry_interval(RETRY)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_loader_fails_reads_without_poisoning_the_cache() {
    let server = RedisServer::start();
    let store = connected(&server).await;
    let db = MemDb::seeded();
    let loader = Flaky::new(db.clone());
    let cache = flaky_cache(store.clone(), &loader).build().unwrap();

    // Cold reads while the database fails: a typed error, every read API.
    loader.fail(true);
    let failed = [
        cache.get::<Question>(&1).await.map(|_| ()),
        cache.get_many::<Question>(&[1, 2]).await.map(|_| ()),
        cache.get_json::<Question>(&1).await.map(|_| ()),
        cache.get_many_json::<Question>(&[2]).await.map(|_| ()),
    ];
    for result in failed {
        assert!(
            matches!(
                result,
                Err(Error::Load {
                    model: "Question",
                    ..
                })
            ),
            "{result:?}"
        );
    }
    // Nothing poisoned: the leases were released, nothing was filled, and
    // the store still answers.
    for pk in [1, 2] {
        let held = raw::<Question>(&store, &cache, &pk).await;
        assert!(!is_lease(&held) && !is_value(&held), "{held:?}");
    }
    assert_eq!(cache.stats().store_errors, 0);
    assert_eq!(cache.stats().fills, 0);

    // The database is back: the next read loads at once (no lease to wait
    // out) and caches.
    loader.fail(false);
    let started = Instant::now();
    assert_eq!(cache.get::<Question>(&1).await.unwrap(), db.question(1));
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(cache.stats().lease_waits, 0, "no lease left to wait for");
    assert!(is_value(&raw::<Question>(&store, &cache, &1).await));
    assert_caching(&cache, &db).await;

    // A write whose cascade cannot reload: the write reports the loader's
    // error, and the entries it touched are left invalidated, not stale.
    assert_eq!(cache.get::<Choice>(&2).await.unwrap(), db.choice(2));
    let previous = db.choice(2).unwrap();
    db.write(|t| {
        t.choices.get_mut(&2).unwrap().0 = 2;
        t.choices.get_mut(&2).unwrap().1 = "Moved".into();
    });
    loader.fail(true);
    let result = cache.saved_from(&previous, &db.choice(2).unwrap()).await;
    assert!(matches!(result, Err(Error::Load { .. })), "{result:?}");
    for held in [
        raw::<Choice>(&store, &cache, &2).await,
        raw::<Question>(&store, &cache, &1).await,
        raw::<Question>(&store, &cache, &2).await,
    ] {
        assert!(!is_value(&held) && !is_lease(&held), "{held:?}");
    }
    loader.fail(false);
    assert_fresh(&cache, &db).await;
    assert_fresh(&cache, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_loader_times_out_and_releases_its_leases() {
    const DEADLINE: Duration = Duration::from_millis(200);
    let server = RedisServer::start();
    let store = connected(&server).await;
    let db = MemDb::seeded();
    let loader = Flaky::new(db.clone());
    let cache = flaky_cache(store.clone(), &loader)
        .loader_timeout(DEADLINE)
        .build()
        .unwrap();
    // Warm entries for the write below.
    assert_eq!(cache.get::<Choice>(&1).await.unwrap(), db.choice(1));
    assert_eq!(cache.get::<Question>(&1).await.unwrap(), db.question(1));

    loader.hang(true);
    // One reader takes the lease and hangs; the others wait for it, then
    // read the database themselves, and hang too. All give up in bounded
    // time with the typed error; without the deadline they never return.
    let started = Instant::now();
    let readers: Vec<_> = (0..5)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get::<Question>(&2).await })
        })
        .collect();
    for reader in readers {
        let result = tokio::time::timeout(PATIENCE, reader)
            .await
            .expect("a read never returned")
            .unwrap();
        assert!(
            matches!(result, Err(Error::LoadTimeout { model: "Question", timeout }) if timeout == DEADLINE),
            "{result:?}"
        );
    }
    eprintln!(
        "5 reads of a hung database returned in {:?}",
        started.elapsed()
    );
    // The holder's deadline, then the waiters' own loads: well under the
    // 10 s lease TTL that would otherwise be waited out.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(cache.stats().loader_timeouts >= 1);
    assert!(!is_lease(&raw::<Question>(&store, &cache, &2).await));

    // A write whose cascade reload hangs: it times out too, and leaves its
    // entries invalidated.
    db.write(|t| t.choices.get_mut(&1).unwrap().1 = "Changed during the hang".into());
    let result = tokio::time::timeout(PATIENCE, cache.saved(&db.choice(1).unwrap()))
        .await
        .expect("the write never returned");
    assert!(
        matches!(result, Err(Error::LoadTimeout { .. })),
        "{result:?}"
    );
    let refreshed = tokio::time::timeout(PATIENCE, cache.refresh::<Choice>(&1))
        .await
        .expect("refresh never returned");
    assert!(
        matches!(refreshed, Err(Error::LoadTimeout { .. })),
        "{refreshed:?}"
    );
    for held in [
        raw::<Choice>(&store, &cache, &1).await,
        raw::<Question>(&store, &cache, &1).await,
    ] {
        assert!(!is_value(&held), "{held:?}");
    }

    // The database answers again: reads succeed at once, fresh, and cache.
    loader.hang(false);
    let started = Instant::now();
    assert_eq!(cache.get::<Question>(&2).await.unwrap(), db.question(2));
    assert_eq!(cache.get::<Choice>(&1).await.unwrap(), db.choice(1));
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(is_value(&raw::<Choice>(&store, &cache, &1).await));
    read_until_cached(&cache, &db).await;
    assert_caching(&cache, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_invalidations_are_delivered_with_no_reader_at_all() {
    let mut server = RedisServer::start();
    let store = connected(&server).await;
    let db = MemDb::seeded();
    let cache = builder(store.clone(), &db).build().unwrap();
    let mut events = cache.events();
    assert_eq!(cache.get::<Choice>(&1).await.unwrap(), db.choice(1));
    let stale = raw::<Choice>(&store, &cache, &1).await.unwrap();

    server.kill();
    db.write(|t| t.choices.get_mut(&1).unwrap().1 = "Written while down".into());
    cache.saved(&db.choice(1).unwrap()).await.unwrap();
    wait_for(&mut events, "InvalidationsQueued", |e| {
        matches!(e, Event::InvalidationsQueued { .. })
    })
    .await;
    let (loads, stats) = (db.loads().len(), cache.stats());

    // No read from here on: the cache's own recovery task delivers.
    server.restart();
    wait_for(&mut events, "InvalidationsDelivered", |e| {
        matches!(e, Event::InvalidationsDelivered { .. })
    })
    .await;
    // The restarted server came back empty: the delivery found nothing to
    // compare, so it reloaded nothing and left a tombstone.
    let held = raw::<Choice>(&store, &cache, &1).await;
    assert_eq!(held.as_deref(), Some(&b"\0T"[..]));
    assert_ne!(held, Some(stale));
    assert_eq!(db.loads().len(), loads, "{:?}", db.loads());
    assert_eq!(
        (cache.stats().hits, cache.stats().misses),
        (stats.hits, stats.misses)
    );

    // Reads use the store again: a miss that fills, then a hit.
    assert_eq!(cache.get::<Choice>(&1).await.unwrap(), db.choice(1));
    assert_eq!(cache.get::<Choice>(&1).await.unwrap(), db.choice(1));
    assert_eq!(db.loads().len() - loads, 1);
    assert_eq!(cache.stats().hits, stats.hits + 1);
    assert_eq!(
        raw::<Choice>(&store, &cache, &1).await.unwrap(),
        db.choice(1).unwrap().to_json().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_never_runs_the_delivery_of_queued_invalidations() {
    let server = RedisServer::start();
    let store = Faulty::new(connected(&server).await);
    let db = MemDb::seeded();
    let cache = builder(store.clone(), &db).build().unwrap();
    let mut events = cache.events();
    move_choice_while_writes_fail(&cache, &store, &db, &mut events).await;

    // The store takes writes again; the delivery is held before it reaches
    // Redis. No reader is running: the recovery task gets there alone.
    let held = store.hold_next_swap();
    store.fail_writes(false);
    tokio::time::timeout(PATIENCE, held.reached)
        .await
        .expect("the delivery never started without a reader")
        .unwrap();

    // While it is held, readers are neither blocked by it nor part of it:
    // each makes exactly its own direct loads (the choice, then both
    // questions in one call), none of the delivery's reloads.
    for _ in 0..3 {
        let loads = db.loads().len();
        assert_fresh(&cache, &db).await;
        assert_eq!(db.loads().len() - loads, 2, "{:?}", db.loads());
    }
    assert_eq!(
        seen(&mut events, |e| matches!(
            e,
            Event::InvalidationsDelivered { .. }
        ))
        .map(|_| ()),
        None
    );

    held.release.send(()).unwrap();
    wait_for(&mut events, "InvalidationsDelivered", |e| {
        matches!(e, Event::InvalidationsDelivered { .. })
    })
    .await;
    assert_fresh(&cache, &db).await;
    read_until_cached(&cache, &db).await;
}

/// The recovery task holds the cache only between deliveries through a
/// weak reference: dropping the last clone ends it, and frees the store.
#[tokio::test(flavor = "current_thread")]
async fn the_recovery_task_ends_with_the_last_cache_clone() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let store = std::sync::Arc::new(Faulty::new(cached_instances::MemoryStore::new()));
    let freed = std::sync::Arc::downgrade(&store);
    let db = MemDb::seeded();
    let cache = builder(store.clone(), &db).build().unwrap();
    drop(store);
    let tasks = metrics.num_alive_tasks();
    assert_eq!(cache.get::<Choice>(&1).await.unwrap(), db.choice(1));
    // Its fill's task, and nothing else, ends with the fill.
    cache.settle().await;
    assert_eq!(
        metrics.num_alive_tasks(),
        tasks,
        "reads leave no task behind"
    );

    freed.upgrade().unwrap().fail_writes(true);
    cache.saved(&db.choice(1).unwrap()).await.unwrap();
    assert_eq!(metrics.num_alive_tasks(), tasks + 1, "the recovery task");
    let clone = cache.clone();
    drop(cache);
    tokio::task::yield_now().await;
    assert_eq!(metrics.num_alive_tasks(), tasks + 1, "a clone keeps it");
    drop(clone);

    let deadline = Instant::now() + PATIENCE;
    while metrics.num_alive_tasks() > tasks || freed.strong_count() > 0 {
        assert!(
            Instant::now() < deadline,
            "the recovery task outlived the cache"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
