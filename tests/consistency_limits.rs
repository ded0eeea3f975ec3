//! The documented limits of the consistency protocol (CONSISTENCY.md, "When
//! a stale read is possible"), each reproduced: the stale read happens,
//! the documented remedy prevents it, and the TTL ends it.
//!
//! These tests pin the limits down: if one starts failing because the
//! stale read no longer happens, the protocol got stronger and
//! CONSISTENCY.md should say so.

use std::time::Duration;

use cached_instances::{Cache, CacheBuilder, Event, MemoryStore, Store};
use cached_instances_testkit::faults::Faulty;
use cached_instances_testkit::memdb::MemDb;
use polls::{Choice, Question, User};

/// Short enough for the tests to see entries expire.
const TTL: Duration = Duration::from_millis(300);

fn builder(store: impl Store, db: &MemDb) -> CacheBuilder {
    Cache::builder()
        .store(store)
        .loader::<User>(db.clone())
        .loader::<Question>(db.clone())
        .loader::<Choice>(db.clone())
        .default_ttl(TTL)
        .store_retry_interval(Duration::from_millis(10))
}

async fn question_choices(cache: &Cache, pk: i64) -> Vec<i64> {
    cache.get::<Question>(&pk).await.unwrap().unwrap().choices
}

/// Moves choice 2 from question 1 to question 2 in the database.
fn move_choice_2(db: &MemDb) -> (Choice, Choice) {
    let previous = db.choice(2).unwrap();
    db.write(|t| t.choices.get_mut(&2).unwrap().0 = 2);
    (previous, db.choice(2).unwrap())
}

#[tokio::test]
async fn saved_without_the_previous_state_misses_the_old_parent_when_it_is_not_cached() {
    for use_saved_from in [false, true] {
        let db = MemDb::seeded();
        let cache = builder(MemoryStore::new(), &db).build().unwrap();
        // Both questions are cached; the choice itself is not.
        assert_eq!(question_choices(&cache, 1).await, [1, 2]);
        assert_eq!(question_choices(&cache, 2).await, [3]);

        let (previous, new) = move_choice_2(&db);
        if use_saved_from {
            cache.saved_from(&previous, &new).await.unwrap();
        } else {
            cache.saved(&new).await.unwrap();
        }
        // The new parent is always right.
        assert_eq!(question_choices(&cache, 2).await, [2, 3]);
        let old_parent = question_choices(&cache, 1).await;
        if use_saved_from {
            assert_eq!(old_parent, [1], "saved_from names the old parent");
        } else {
            // The limit: nothing told the cache where the choice was.
            assert_eq!(old_parent, [1, 2], "stale until the TTL");
            tokio::time::sleep(TTL + Duration::from_millis(100)).await;
            assert_eq!(question_choices(&cache, 1).await, [1], "the TTL backstop");
        }
    }
}

#[tokio::test]
async fn saved_without_the_previous_state_is_exact_when_the_previous_state_is_cached() {
    let db = MemDb::seeded();
    let cache = builder(MemoryStore::new(), &db).build().unwrap();
    question_choices(&cache, 1).await;
    question_choices(&cache, 2).await;
    // The cached choice is the previous state.
    cache.get::<Choice>(&2).await.unwrap();
    let (_, new) = move_choice_2(&db);
    cache.saved(&new).await.unwrap();
    assert_eq!(question_choices(&cache, 1).await, [1]);
    assert_eq!(question_choices(&cache, 2).await, [2, 3]);
}

#[tokio::test]
async fn an_invalidation_applied_after_its_reply_was_lost_loses_the_old_parent() {
    for use_saved_from in [false, true] {
        let db = MemDb::seeded();
        let store = Faulty::new(MemoryStore::new());
        let cache = builder(store.clone(), &db).build().unwrap();
        question_choices(&cache, 1).await;
        question_choices(&cache, 2).await;
        cache.get::<Choice>(&2).await.unwrap();
        // The reads' fills land before the fault.
        cache.settle().await;

        // The server runs the write's invalidations, but the cache never
        // hears back: it queues them, and cannot know what the keys held.
        store.lose_write_replies(true);
        let (previous, new) = move_choice_2(&db);
        if use_saved_from {
            cache.saved_from(&previous, &new).await.unwrap();
        } else {
            cache.saved(&new).await.unwrap();
        }
        assert!(store.failed_writes() > 0);
        store.lose_write_replies(false);

        // Reads go to the database until the queue is delivered (the first
        // read past the retry interval delivers it); the choice and the new
        // parent are right all along.
        let mut events = cache.events();
        loop {
            assert_eq!(cache.get::<Choice>(&2).await.unwrap(), db.choice(2));
            assert_eq!(question_choices(&cache, 2).await, [2, 3]);
            if std::iter::from_fn(|| events.try_recv().ok())
                .any(|e| matches!(e, Event::InvalidationsDelivered { .. }))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(cache.get::<Choice>(&2).await.unwrap(), db.choice(2));
        assert_eq!(question_choices(&cache, 2).await, [2, 3]);
        let old_parent = question_choices(&cache, 1).await;
        if use_saved_from {
            assert_eq!(old_parent, [1], "saved_from names the old parent");
        } else {
            // The limit: the cached choice (which named question 1) was
            // replaced by the late invalidation whose reply was lost.
            assert_eq!(old_parent, [1, 2], "stale until the TTL");
            tokio::time::sleep(TTL + Duration::from_millis(100)).await;
            assert_eq!(question_choices(&cache, 1).await, [1], "the TTL backstop");
        }
    }
}

#[tokio::test]
async fn queued_invalidations_are_invisible_to_other_processes_and_lost_if_the_process_exits() {
    let db = MemDb::seeded();
    let shared = MemoryStore::new();
    let store = Faulty::new(shared.clone());
    let cache = builder(store.clone(), &db).build().unwrap();
    assert_eq!(cache.get::<Choice>(&1).await.unwrap(), db.choice(1));
    // The read's fill lands before the fault.
    cache.settle().await;

    store.fail_writes(true);
    db.write(|t| t.choices.get_mut(&1).unwrap().1 = "Changed".into());
    cache.saved(&db.choice(1).unwrap()).await.unwrap();
    // While the process lives, its own reads never serve the stale entry...
    assert_eq!(cache.get::<Choice>(&1).await.unwrap(), db.choice(1));
    // ...but another process that still reaches the store does: the queue
    // is this process's own.
    let other = builder(shared, &db).build().unwrap();
    let stale = other.get::<Choice>(&1).await.unwrap().unwrap();
    assert_eq!(stale.choice_text, "Not much", "stale in another process");
    // It exits before the store comes back: the queue is lost with it.
    drop(cache);
    let stale = other.get::<Choice>(&1).await.unwrap().unwrap();
    assert_eq!(stale.choice_text, "Not much", "stale until the TTL");
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    assert_eq!(
        other.get::<Choice>(&1).await.unwrap(),
        db.choice(1),
        "the TTL backstop"
    );
}

#[tokio::test]
async fn a_write_the_cache_is_not_told_about_is_stale_until_the_ttl_or_a_refresh() {
    let db = MemDb::seeded();
    let cache = builder(MemoryStore::new(), &db).build().unwrap();
    cache.get::<Choice>(&1).await.unwrap();
    db.write(|t| t.choices.get_mut(&1).unwrap().1 = "Behind the cache's back".into());
    assert_eq!(
        cache.get::<Choice>(&1).await.unwrap().unwrap().choice_text,
        "Not much",
        "stale: no saved, no refresh"
    );
    // `refresh` compares with the database and repairs it...
    assert!(cache.refresh::<Choice>(&1).await.unwrap());
    assert_eq!(cache.get::<Choice>(&1).await.unwrap(), db.choice(1));
    // ...and otherwise the TTL does.
    db.write(|t| t.choices.get_mut(&1).unwrap().1 = "Again".into());
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    assert_eq!(cache.get::<Choice>(&1).await.unwrap(), db.choice(1));
}

/// A loader reading a lagging replica fills what the replica has: the cache
/// is only as fresh as its loaders. (Reads must see the write's commit.)
#[tokio::test]
async fn a_loader_that_reads_a_lagging_replica_fills_stale_data() {
    let primary = MemDb::seeded();
    // The replica has not applied the write yet.
    let replica = MemDb::seeded();
    let cache = builder(MemoryStore::new(), &replica).build().unwrap();
    cache.get::<Choice>(&1).await.unwrap();
    primary.write(|t| t.choices.get_mut(&1).unwrap().1 = "On the primary".into());
    cache.saved(&primary.choice(1).unwrap()).await.unwrap();
    assert_eq!(
        cache.get::<Choice>(&1).await.unwrap().unwrap().choice_text,
        "Not much",
        "the write's own reload read the replica"
    );
}

/// A first step read, then held until released.
type Gate = (
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Receiver<()>,
);

/// Loads `Question`s in two steps, as a loader of several statements
/// outside one transaction does (the rows, then the relation list); the
/// first load is held between its two steps.
#[derive(Clone)]
struct TwoStatements {
    db: MemDb,
    gate: std::sync::Arc<std::sync::Mutex<Option<Gate>>>,
}

impl cached_instances::Loader<Question> for TwoStatements {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Question>, cached_instances::LoadError> {
        let rows: Vec<Question> = pks.iter().filter_map(|&pk| self.db.question(pk)).collect();
        let gate = self.gate.lock().unwrap().take();
        if let Some((read, release)) = gate {
            let _ = read.send(());
            let _ = release.await;
        }
        Ok(rows
            .into_iter()
            .map(|mut q| {
                q.choices = self
                    .db
                    .question(q.id)
                    .map(|now| now.choices)
                    .unwrap_or_default();
                q
            })
            .collect())
    }
}

/// A loader whose statements see different commits can return, to a read
/// that overlaps two writes, a mix of two states that the database never
/// held as a whole (each field fresh); the lease keeps it out of the cache.
/// Loaders should read one snapshot (one statement, or one REPEATABLE READ
/// transaction).
#[tokio::test]
async fn a_loader_that_straddles_commits_can_return_a_mix_but_never_caches_it() {
    let db = MemDb::seeded();
    let (read_tx, read_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel();
    let loader = TwoStatements {
        db: db.clone(),
        gate: std::sync::Arc::new(std::sync::Mutex::new(Some((read_tx, release_rx)))),
    };
    let cache = Cache::builder()
        .store(MemoryStore::new())
        .loader::<Question>(loader)
        .loader::<Choice>(db.clone())
        .loader::<User>(db.clone())
        .build()
        .unwrap();
    let reader = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get::<Question>(&1).await }
    });
    // The reader's loader has read the row of question 1.
    read_rx.await.unwrap();
    // A rename, then a move of choice 3 into the question, both told.
    db.write(|t| t.questions.get_mut(&1).unwrap().0 = "Renamed".into());
    cache.saved(&db.question(1).unwrap()).await.unwrap();
    let (previous, new) = {
        let previous = db.choice(3).unwrap();
        db.write(|t| t.choices.get_mut(&3).unwrap().0 = 1);
        (previous, db.choice(3).unwrap())
    };
    cache.saved_from(&previous, &new).await.unwrap();
    release_tx.send(()).unwrap();

    let mixed = reader.await.unwrap().unwrap().unwrap();
    assert_eq!(mixed.question_text, "What's up?", "from before the rename");
    assert_eq!(mixed.choices, [1, 2, 3], "from after the move");
    // Never cached: the writes voided the reader's lease.
    assert_eq!(cache.stats().fills_rejected, 1);
    assert_eq!(cache.get::<Question>(&1).await.unwrap(), db.question(1));
}
