//! The cache core on MemoryStore, over the polls models: drf-cached-instances'
//! behaviours, counted in loader calls and store round trips.
//!
//! The behaviours themselves are the store-generic suite in
//! `cached_instances_testkit::scenarios` (also run on Redis and on a Redis Cluster by
//! `redis_cluster_cache.rs`); this file runs each of them as a test on the
//! in-process store, plus the checks that need no store.

use std::time::Duration;

use cached_instances::store::{InProcess, StoreFuture};
use cached_instances::{BuildError, Cache, CachedInstance, MemoryStore, Store};
use cached_instances_testkit::faults::Flaky;
use cached_instances_testkit::memdb::MemDb;
use cached_instances_testkit::store::{Counting, Hook, Keys, Op, Wrapped};
use cached_instances_testkit::{scenarios, with_scenarios};
use polls::{Choice, Question, User};

fn builder(db: &MemDb, store: &MemoryStore) -> cached_instances::CacheBuilder {
    Cache::builder()
        .store(store.clone())
        .loader::<User>(db.clone())
        .loader::<Question>(db.clone())
        .loader::<Choice>(db.clone())
}

/// One test per scenario, each on a fresh `MemoryStore`.
macro_rules! on_memory_store {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                scenarios::$name(MemoryStore::new()).await;
            }
        )*
    };
}

with_scenarios!(on_memory_store);

#[tokio::test]
async fn build_rejects_an_inconsistent_registry() {
    let db = MemDb::seeded();
    let err = Cache::builder()
        .loader::<Choice>(db.clone())
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::MissingLoader {
                model: "Choice",
                target: "Question" | "User",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("add `.loader::<"), "{err}");

    #[derive(cached_instances::CachedInstance)]
    #[cached(model = "User")]
    struct OtherUser {
        #[cached(pk)]
        id: i64,
    }
    impl cached_instances::Loader<OtherUser> for MemDb {
        async fn load(&self, _: &[i64]) -> Result<Vec<OtherUser>, cached_instances::LoadError> {
            Ok(vec![])
        }
    }
    let store = MemoryStore::new();
    let err = builder(&db, &store)
        .loader::<OtherUser>(db.clone())
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::DuplicateVersion {
                model: "User",
                version: "default",
                ..
            }
        ),
        "{err}"
    );

    // Unregistered models are a typed error, not a panic.
    let cache = Cache::builder().build().unwrap();
    assert!(matches!(
        cache.get::<User>(&1).await,
        Err(cached_instances::Error::NotRegistered { model: "User", .. })
    ));
    let _ = store.get("x").await;
}

/// A single-key read on the `MemoryStore` is its in-process read
/// (`Store::get_in_process`), never a `get`: a hit is that one call, and a
/// cold read goes on from what it found (absent) to the lease and the fill,
/// three calls in all, with no second read of the key.
#[tokio::test]
async fn a_memory_store_read_is_one_in_process_read_and_no_get() {
    let db = MemDb::seeded();
    let store = Counting::new(MemoryStore::new());
    let cache = Cache::builder()
        .store(store.clone())
        .loader::<User>(db.clone())
        .loader::<Question>(db.clone())
        .loader::<Choice>(db.clone())
        .build()
        .unwrap();

    let (calls, reads) = (store.calls(), store.in_process_reads());
    assert_eq!(cache.get::<User>(&1).await.unwrap(), db.user(1));
    cache.settle().await;
    assert_eq!(
        (store.calls() - calls, store.in_process_reads() - reads),
        (3, 1),
        "a cold read: the in-process read (absent), the lease, the fill"
    );
    assert_eq!(db.load_count("User"), 1);

    let (calls, reads) = (store.calls(), store.in_process_reads());
    assert_eq!(cache.get::<User>(&1).await.unwrap(), db.user(1));
    let json = cache.get_json::<User>(&1).await.unwrap().unwrap();
    assert_eq!(&json[..], &db.user(1).unwrap().to_json().unwrap()[..]);
    assert_eq!(
        (store.calls() - calls, store.in_process_reads() - reads),
        (2, 2),
        "each hit is one in-process read, no get"
    );
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (2, 1));
    assert_eq!(db.load_count("User"), 1, "hits load nothing");
}

/// An in-process read that finds a marker is a miss that takes the lease
/// path from what it found: a tombstone is leased, loaded and filled (no
/// second read, nothing taken for a corrupt entry), and another reader's
/// lease is waited for, then read around.
#[tokio::test]
async fn a_marker_read_in_process_takes_the_lease_path() {
    let db = MemDb::seeded();
    let memory = MemoryStore::new();
    let store = Counting::new(memory.clone());
    let cache = Cache::builder()
        .store(store.clone())
        .loader::<User>(db.clone())
        .loader::<Question>(db.clone())
        .loader::<Choice>(db.clone())
        .lease_wait(Duration::from_millis(20))
        .build()
        .unwrap();
    let key = cache.key_of::<User>(&1).unwrap();
    let long = Duration::from_secs(60);

    memory.put_raw(&key, &b"\0T"[..], long);
    let (calls, reads) = (store.calls(), store.in_process_reads());
    assert_eq!(cache.get::<User>(&1).await.unwrap(), db.user(1));
    cache.settle().await;
    assert_eq!(
        (store.calls() - calls, store.in_process_reads() - reads),
        (3, 1),
        "the in-process read (a tombstone), the lease, the fill"
    );
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.corrupt_entries), (0, 1, 0));
    assert_eq!(db.load_count("User"), 1);
    let filled = memory.raw(&key).unwrap();
    assert_eq!(&filled[..], &db.user(1).unwrap().to_json().unwrap()[..]);

    // Another reader's lease: waited for (polled with `get_many`), then
    // read around without touching the lease.
    let lease = b"\0L0123456789abcdef";
    memory.put_raw(&key, &lease[..], long);
    db.clear_loads();
    let loader_calls = cache.stats().loader_calls;
    assert!(cache.get_json::<User>(&1).await.unwrap().is_some());
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.lease_waits), (0, 2, 1));
    assert_eq!(db.load_count("User"), 1, "read around the lease");
    assert_eq!(
        stats.loader_calls - loader_calls,
        1,
        "the read around it; the lease step, which leased nothing, is no call"
    );
    assert_eq!(memory.raw(&key).as_deref(), Some(&lease[..]));
}

/// Lets each lease step reach the store, then holds its reply for
/// `delay`; other calls are forwarded.
#[derive(Clone)]
struct SlowLeases {
    delay: Duration,
}

impl Hook for SlowLeases {
    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        _keys: Keys<'a>,
        call: impl FnOnce() -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        if !op.is_lease() {
            return call();
        }
        Box::pin(async move {
            let reply = call().await;
            tokio::time::sleep(self.delay).await;
            reply
        })
    }

    fn around_in_process(&self, _key: &str, read: impl FnOnce() -> InProcess) -> InProcess {
        read()
    }
}

/// The loader's deadline runs from when the read's leases are taken: a
/// slow lease step (bounded by the store's own timeout) does not use it up,
/// while a load that outlives it still fails.
#[tokio::test]
async fn the_loader_deadline_starts_once_the_leases_are_taken() {
    let db = MemDb::seeded();
    let store = Wrapped::with_hook(
        MemoryStore::new(),
        SlowLeases {
            delay: Duration::from_millis(300),
        },
    );
    let loader = Flaky::new(db.clone());
    let cache = Cache::builder()
        .store(store)
        .loader::<User>(db.clone())
        .loader::<Question>(loader.clone())
        .loader::<Choice>(db.clone())
        .loader_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    assert_eq!(cache.get::<Question>(&1).await.unwrap(), db.question(1));
    assert_eq!(
        cache.get_many::<Question>(&[2, 3]).await.unwrap(),
        [db.question(2), db.question(3)]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
    );
    assert_eq!(cache.stats().loader_timeouts, 0);

    loader.hang(true);
    let hung = cache.get::<Question>(&4).await;
    assert!(
        matches!(hung, Err(cached_instances::Error::LoadTimeout { .. })),
        "{hung:?}"
    );
    assert_eq!(cache.stats().loader_timeouts, 1);
}

/// A loader whose `load_after` gives up before its pks are known (a
/// checkout that failed): it polls them once, then fails. `load` works.
#[derive(Clone)]
struct GivesUpEarly(MemDb);

impl cached_instances::Loader<Question> for GivesUpEarly {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Question>, cached_instances::LoadError> {
        cached_instances::Loader::<Question>::load(&self.0, pks).await
    }

    async fn load_after(
        &self,
        pks: cached_instances::LeasedPks<'_, i64>,
    ) -> Result<Vec<Question>, cached_instances::LoadError> {
        let mut pks = std::pin::pin!(pks);
        let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(pks.as_mut().poll(cx))).await;
        assert!(polled.is_pending(), "the lease step is held");
        Err(cached_instances::LoadError::msg("no connection"))
    }
}

/// A loader that returns before its pks are known leaves no lease behind
/// (the lease step had taken them: they are released), and the read
/// loads its rows directly.
#[tokio::test]
async fn a_loader_that_gives_up_before_its_pks_leaves_no_lease() {
    let db = MemDb::seeded();
    let memory = MemoryStore::new();
    let cache = Cache::builder()
        .store(Wrapped::with_hook(
            memory.clone(),
            SlowLeases {
                delay: Duration::from_millis(50),
            },
        ))
        .loader::<User>(db.clone())
        .loader::<Question>(GivesUpEarly(db.clone()))
        .loader::<Choice>(db.clone())
        .build()
        .unwrap();
    let pks = [1, 2];
    let read = cache.get_many::<Question>(&pks).await.unwrap();
    assert_eq!(
        read,
        pks.iter()
            .filter_map(|pk| db.question(*pk))
            .collect::<Vec<_>>()
    );
    cache.settle().await;
    for pk in pks {
        let key = cache.key_of::<Question>(&pk).unwrap();
        let held = memory.raw(&key);
        assert!(
            held.as_deref()
                .is_some_and(|bytes| !bytes.starts_with(b"\0L")),
            "{pk}: {held:?}"
        );
    }
}

/// A loader returning its rows in reverse: the reads match rows to pks by
/// the pk, not by position (`cache/read.rs`, `ByPk`).
struct Reversed(MemDb);

impl cached_instances::Loader<User> for Reversed {
    async fn load(&self, pks: &[i64]) -> Result<Vec<User>, cached_instances::LoadError> {
        let mut rows = cached_instances::Loader::<User>::load(&self.0, pks).await?;
        rows.reverse();
        Ok(rows)
    }
}

/// Rows that come back in another order than asked, for a batch with a
/// duplicated pk and a pk with no row: each pk gets its own row, in the
/// caller's order, as instances and as bytes, and the entries filled are
/// those rows (the next read hits them all, and loads only the pk with no
/// row).
#[tokio::test]
async fn rows_loaded_in_another_order_go_to_their_own_pks() {
    let db = MemDb::seeded();
    let reversed = || {
        Cache::builder()
            .store(MemoryStore::new())
            .loader::<User>(Reversed(db.clone()))
            .loader::<Question>(db.clone())
            .loader::<Choice>(db.clone())
            .build()
            .unwrap()
    };
    let cache = reversed();
    let asked = [2, 1, 99, 3, 2];
    let expected: Vec<User> = [2, 1, 3, 2]
        .iter()
        .map(|&pk| db.user(pk).unwrap())
        .collect();
    assert_eq!(cache.get_many::<User>(&asked).await.unwrap(), expected);
    cache.settle().await;
    db.clear_loads();
    let json = cache.get_many_json::<User>(&asked).await.unwrap();
    assert_eq!(
        db.loads(),
        [(User::MODEL, vec![99])],
        "every row's entry was filled; only the pk with no row is loaded again"
    );
    let decoded: Vec<User> = json.iter().map(|b| User::decode(b).unwrap()).collect();
    assert_eq!(decoded, expected);

    // Cold again, as bytes this time.
    let json = reversed().get_many_json::<User>(&asked).await.unwrap();
    let decoded: Vec<User> = json.iter().map(|b| User::decode(b).unwrap()).collect();
    assert_eq!(decoded, expected);
}
