//! The cache core on MemoryStore, over the polls models: drf-cached-instances'
//! behaviours, counted in loader calls and store round trips.
//!
//! The behaviours themselves are the store-generic suite in
//! `cached_instances_testkit::scenarios` (also run on Redis and on a Redis Cluster by
//! `redis_cluster_cache.rs`); this file runs each of them as a test on the
//! in-process store, plus the checks that need no store.

use cached_instances::{BuildError, Cache, MemoryStore, Store};
use cached_instances_testkit::memdb::MemDb;
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
