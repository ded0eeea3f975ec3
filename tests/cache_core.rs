//! The cache core on MemoryStore, over the polls models: drf-cached-instances'
//! behaviours, counted in loader calls and store round trips.

use std::time::Duration;

use cached_instances::{BuildError, Cache, CachedInstance, MemoryStore, Store};
use polls::memdb::{MemDb, date};
use polls::{Choice, Question, User};

fn cache(db: &MemDb, store: &MemoryStore) -> Cache {
    builder(db, store).build().unwrap()
}

fn builder(db: &MemDb, store: &MemoryStore) -> cached_instances::CacheBuilder {
    Cache::builder()
        .store(store.clone())
        .loader::<User>(db.clone())
        .loader::<Question>(db.clone())
        .loader::<Choice>(db.clone())
}

fn raw<T: CachedInstance>(cache: &Cache, store: &MemoryStore, pk: &T::Pk) -> Option<Vec<u8>> {
    store
        .raw(&cache.key_of::<T>(pk).unwrap())
        .map(|b| b.to_vec())
}

/// Whether the entry holds a representation (not absent, not a marker).
fn is_warm<T: CachedInstance>(cache: &Cache, store: &MemoryStore, pk: &T::Pk) -> bool {
    raw::<T>(cache, store, pk).is_some_and(|b| b.first() == Some(&b'{'))
}

#[tokio::test]
async fn a_hit_makes_no_loader_call_and_one_round_trip() {
    let (db, store) = (MemDb::seeded(), MemoryStore::new());
    let cache = cache(&db, &store);

    let q = cache.get::<Question>(&1).await.unwrap().unwrap();
    assert_eq!(q, db.question(1).unwrap());
    assert_eq!(db.load_count("Question"), 1);

    let trips = store.round_trips();
    let again = cache.get::<Question>(&1).await.unwrap().unwrap();
    assert_eq!(again, q);
    assert_eq!(db.load_count("Question"), 1, "a hit must not load");
    assert_eq!(store.round_trips() - trips, 1, "a hit is one round trip");

    let json = cache.get_json::<Question>(&1).await.unwrap().unwrap();
    assert_eq!(&json[..], &q.to_json().unwrap()[..]);
    assert_eq!(db.load_count("Question"), 1);
    assert_eq!(cache.stats().hits, 2);
    assert_eq!(cache.stats().misses, 1);
}

#[tokio::test]
async fn cold_misses_make_one_loader_call_per_model_in_three_round_trips() {
    let db = MemDb::seeded();
    db.write(|t| {
        for id in 10..60 {
            t.users.insert(id, format!("user{id}"));
        }
    });
    let store = MemoryStore::new();
    let cache = cache(&db, &store);

    let mut pks: Vec<i64> = (10..60).rev().collect();
    pks.insert(3, 999); // no such row
    let trips = store.round_trips();
    let users = cache.get_many::<User>(&pks).await.unwrap();
    assert_eq!(store.round_trips() - trips, 3, "multi-get, lease, fill");
    assert_eq!(db.load_count("User"), 1);
    let expected: Vec<i64> = (10..60).rev().collect();
    assert_eq!(
        users.iter().map(|u| u.id).collect::<Vec<_>>(),
        expected,
        "request order, missing omitted"
    );

    // Choices are another model: one more call, for that model only.
    let choices = cache.get_many::<Choice>(&[3, 1, 2]).await.unwrap();
    assert_eq!(choices.iter().map(|c| c.id).collect::<Vec<_>>(), [3, 1, 2]);
    assert_eq!(db.load_count("Choice"), 1);

    // Everything is warm now, the missing row included: nothing loads again
    // except the row that does not exist.
    db.clear_loads();
    cache.get_many::<User>(&expected).await.unwrap();
    assert!(db.loads().is_empty());
    assert!(cache.get::<User>(&999).await.unwrap().is_none());
}

#[tokio::test]
async fn duplicate_pks_are_loaded_once_and_returned_each_time() {
    let (db, store) = (MemDb::seeded(), MemoryStore::new());
    let cache = cache(&db, &store);
    let users = cache.get_many::<User>(&[2, 1, 2]).await.unwrap();
    assert_eq!(users.iter().map(|u| u.id).collect::<Vec<_>>(), [2, 1, 2]);
    assert_eq!(db.loads(), [("User", vec![2, 1])]);
    let json = cache.get_many_json::<User>(&[2, 2]).await.unwrap();
    assert_eq!(json.len(), 2);
}

#[tokio::test]
async fn refresh_of_an_unchanged_instance_writes_nothing_and_cascades_nothing() {
    let (db, store) = (MemDb::seeded(), MemoryStore::new());
    let cache = cache(&db, &store);
    cache.get_many::<Choice>(&[1, 2]).await.unwrap();
    cache.get::<Question>(&1).await.unwrap();
    db.clear_loads();
    let before = cache.stats();
    let trips = store.round_trips();

    assert!(!cache.refresh::<Choice>(&1).await.unwrap());
    assert_eq!(store.round_trips() - trips, 1, "one read, no write");
    assert_eq!(cache.stats().invalidations, before.invalidations);
    assert_eq!(db.loads(), [("Choice", vec![1])], "no cascade reload");
    assert!(is_warm::<Choice>(&cache, &store, &1));

    // A changed row is noticed, and its question follows.
    db.write(|t| t.choices.get_mut(&1).unwrap().0 = 2);
    assert!(cache.refresh::<Choice>(&1).await.unwrap());
    assert_eq!(
        cache.get::<Choice>(&1).await.unwrap().unwrap().question_id,
        2
    );
    assert_eq!(
        cache.get::<Question>(&1).await.unwrap().unwrap().choices,
        [2]
    );
}

#[tokio::test]
async fn a_new_choice_invalidates_its_question() {
    let (db, store) = (MemDb::seeded(), MemoryStore::new());
    let cache = cache(&db, &store);
    assert_eq!(
        cache.get::<Question>(&1).await.unwrap().unwrap().choices,
        [1, 2]
    );

    db.write(|t| t.choices.insert(4, (1, "Everything".into())));
    let choice = db.choice(4).unwrap();
    cache.saved(&choice).await.unwrap();

    db.clear_loads();
    assert_eq!(
        cache.get::<Question>(&1).await.unwrap().unwrap().choices,
        [1, 2, 4]
    );
    // The question was cached, so the cascade refreshed it in place: the read
    // above was a hit.
    assert!(db.loads().is_empty(), "{:?}", db.loads());
    // The other question was not touched.
    assert!(!raw::<Question>(&cache, &store, &2).is_some_and(|b| b[0] == 0));
}

#[tokio::test]
async fn moving_a_choice_invalidates_both_questions() {
    let (db, store) = (MemDb::seeded(), MemoryStore::new());
    let cache = cache(&db, &store);
    cache.get_many::<Question>(&[1, 2]).await.unwrap();
    cache.get::<Choice>(&2).await.unwrap();

    db.write(|t| t.choices.get_mut(&2).unwrap().0 = 2);
    cache.saved(&db.choice(2).unwrap()).await.unwrap();

    let qs = cache.get_many::<Question>(&[1, 2]).await.unwrap();
    assert_eq!(qs[0].choices, [1]);
    assert_eq!(qs[1].choices, [2, 3]);
    assert_eq!(
        cache.get::<Choice>(&2).await.unwrap().unwrap().question_id,
        2
    );
}

#[tokio::test]
async fn a_move_with_a_cold_previous_state_uses_the_callers_previous_row() {
    let (db, store) = (MemDb::seeded(), MemoryStore::new());
    let cache = cache(&db, &store);
    cache.get_many::<Question>(&[1, 2]).await.unwrap();
    // Choice 2 itself is not cached: only `saved_from` knows where it was.
    let previous = db.choice(2).unwrap();
    db.write(|t| t.choices.get_mut(&2).unwrap().0 = 2);
    cache
        .saved_from(&previous, &db.choice(2).unwrap())
        .await
        .unwrap();
    let qs = cache.get_many::<Question>(&[1, 2]).await.unwrap();
    assert_eq!(qs[0].choices, [1]);
    assert_eq!(qs[1].choices, [2, 3]);
}

#[tokio::test]
async fn adding_or_removing_a_voter_invalidates_exactly_the_affected_users() {
    let (db, store) = (MemDb::seeded(), MemoryStore::new());
    let cache = cache(&db, &store);
    cache.get_many::<User>(&[1, 2, 3]).await.unwrap();
    cache.get::<Choice>(&1).await.unwrap();
    let untouched = raw::<User>(&cache, &store, &1).unwrap();

    // Cy votes for choice 1; Ann keeps her vote.
    db.write(|t| t.votes.insert((3, 1)));
    db.clear_loads();
    cache.saved(&db.choice(1).unwrap()).await.unwrap();
    // The choice itself was cached, so it is refreshed in place; of the
    // users, only the added voter is reloaded.
    assert_eq!(db.loads(), [("Choice", vec![1]), ("User", vec![3])]);
    assert_eq!(raw::<User>(&cache, &store, &1).unwrap(), untouched);
    assert_eq!(cache.get::<User>(&3).await.unwrap().unwrap().votes, [1]);

    // Ann withdraws.
    db.write(|t| t.votes.remove(&(1, 1)));
    db.clear_loads();
    cache.saved(&db.choice(1).unwrap()).await.unwrap();
    assert_eq!(
        db.loads(),
        [("Choice", vec![1]), ("User", vec![1])],
        "only the removed voter"
    );
    assert_eq!(
        cache.get::<User>(&1).await.unwrap().unwrap().votes,
        Vec::<i64>::new()
    );
    assert_eq!(cache.get::<User>(&2).await.unwrap().unwrap().votes, [3]);
}

#[tokio::test]
async fn deleting_a_choice_removes_it_and_updates_its_question() {
    let (db, store) = (MemDb::seeded(), MemoryStore::new());
    let cache = cache(&db, &store);
    let choice = cache.get::<Choice>(&2).await.unwrap().unwrap();
    cache.get::<Question>(&1).await.unwrap();

    db.write(|t| t.choices.remove(&2));
    cache.deleted(&choice).await.unwrap();

    assert!(!is_warm::<Choice>(&cache, &store, &2), "its entry is gone");
    assert!(cache.get::<Choice>(&2).await.unwrap().is_none());
    assert_eq!(
        cache.get::<Question>(&1).await.unwrap().unwrap().choices,
        [1]
    );
}

#[tokio::test]
async fn cascades_over_the_user_choice_cycle_terminate() {
    let (db, store) = (MemDb::seeded(), MemoryStore::new());
    let cache = builder(&db, &store).update_only(false).build().unwrap();
    cache.get_many::<User>(&[1, 2, 3]).await.unwrap();
    cache.get_many::<Choice>(&[1, 2, 3]).await.unwrap();

    // Ann now votes for everything: her list and three choices' lists change.
    db.write(|t| {
        for c in 1..=3 {
            t.votes.insert((1, c));
        }
    });
    db.clear_loads();
    tokio::time::timeout(Duration::from_secs(5), cache.saved(&db.user(1).unwrap()))
        .await
        .expect("the cascade terminates")
        .unwrap();
    // Ann is refreshed; choices 2 and 3 gained a voter (choice 1 already had
    // her); reloading them leads back to Ann, who is visited: the cascade stops.
    assert_eq!(db.loads(), [("User", vec![1]), ("Choice", vec![2, 3])]);
    for c in cache.get_many::<Choice>(&[1, 2, 3]).await.unwrap() {
        assert!(c.voters.contains(&1), "{c:?}");
    }
    assert_eq!(
        cache.get::<User>(&1).await.unwrap().unwrap().votes,
        [1, 2, 3]
    );
}

#[tokio::test]
async fn update_only_leaves_cold_entries_cold() {
    let db = MemDb::seeded();
    for update_only in [true, false] {
        let store = MemoryStore::new();
        let cache = builder(&db, &store)
            .update_only(update_only)
            .build()
            .unwrap();
        db.write(|t| t.choices.insert(10, (2, format!("new {update_only}"))));
        cache.saved(&db.choice(10).unwrap()).await.unwrap();
        // Question 2 was never read.
        assert_eq!(is_warm::<Question>(&cache, &store, &2), !update_only);
        db.write(|t| t.choices.remove(&10));
    }
}

#[derive(cached_instances::CachedInstance, Debug, Clone, PartialEq)]
#[cached(model = "Question", version = "v2")]
pub struct QuestionV2 {
    #[cached(pk)]
    pub id: i64,
    #[cached(rename = "text")]
    pub question_text: String,
}

impl cached_instances::Loader<QuestionV2> for MemDb {
    async fn load(&self, pks: &[i64]) -> Result<Vec<QuestionV2>, cached_instances::LoadError> {
        let qs: Vec<Question> = cached_instances::Loader::<Question>::load(self, pks).await?;
        Ok(qs
            .into_iter()
            .map(|q| QuestionV2 {
                id: q.id,
                question_text: q.question_text,
            })
            .collect())
    }
}

#[tokio::test]
async fn versions_share_invalidation_and_delete_all_versions_removes_every_version() {
    let (db, store) = (MemDb::seeded(), MemoryStore::new());
    let cache = builder(&db, &store)
        .loader::<QuestionV2>(db.clone())
        .build()
        .unwrap();
    cache.get::<Question>(&1).await.unwrap();
    let v2 = cache.get_json::<QuestionV2>(&1).await.unwrap().unwrap();
    assert_eq!(&v2[..], br#"{"id":1,"text":"What's up?"}"#);
    assert!(is_warm::<Question>(&cache, &store, &1) && is_warm::<QuestionV2>(&cache, &store, &1));

    cache.delete_all_versions::<Question>(&1).await.unwrap();
    assert!(!is_warm::<Question>(&cache, &store, &1));
    assert!(!is_warm::<QuestionV2>(&cache, &store, &1));

    // A write to one version invalidates the others.
    cache.get::<QuestionV2>(&1).await.unwrap();
    db.write(|t| t.questions.get_mut(&1).unwrap().0 = "Edited".into());
    cache.saved(&db.question(1).unwrap()).await.unwrap();
    assert_eq!(
        cache
            .get::<QuestionV2>(&1)
            .await
            .unwrap()
            .unwrap()
            .question_text,
        "Edited"
    );
}

#[tokio::test]
async fn disabled_caching_still_returns_correct_data() {
    let (db, store) = (MemDb::seeded(), MemoryStore::new());
    let cache = cache(&db, &store);
    cache.get::<Question>(&1).await.unwrap();
    cache.set_enabled(false);
    db.clear_loads();

    // A change the cache was never told about is still read correctly.
    db.write(|t| t.questions.get_mut(&1).unwrap().0 = "Changed behind our back".into());
    for _ in 0..2 {
        let q = cache.get::<Question>(&1).await.unwrap().unwrap();
        assert_eq!(q.question_text, "Changed behind our back");
    }
    assert_eq!(
        db.load_count("Question"),
        2,
        "every read goes to the loader"
    );
    assert_eq!(cache.get_many::<Choice>(&[2, 1]).await.unwrap().len(), 2);

    // Writes made while disabled still invalidate, so re-enabling is safe.
    db.write(|t| t.questions.get_mut(&1).unwrap().0 = "Saved while off".into());
    cache.saved(&db.question(1).unwrap()).await.unwrap();
    cache.set_enabled(true);
    assert_eq!(
        cache
            .get::<Question>(&1)
            .await
            .unwrap()
            .unwrap()
            .question_text,
        "Saved while off"
    );
}

#[tokio::test]
async fn a_fill_from_before_a_write_is_rejected() {
    let (db, store) = (MemDb::seeded(), MemoryStore::new());
    let cache = cache(&db, &store);

    // The reader misses; its loader reads the old row and is held.
    let held = db.hold_next_load::<Choice>();
    let reader = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get::<Choice>(&1).await }
    });
    held.read.await.unwrap();

    // The writer commits and tells the cache.
    db.write(|t| t.choices.get_mut(&1).unwrap().1 = "After the write".into());
    cache.saved(&db.choice(1).unwrap()).await.unwrap();

    // The reader resumes: its fill must not land.
    held.release.send(()).unwrap();
    let seen = reader.await.unwrap().unwrap().unwrap();
    assert_eq!(
        seen.choice_text, "Not much",
        "the reader began before the write"
    );
    assert_eq!(cache.stats().fills_rejected, 1);
    assert_eq!(
        cache.get::<Choice>(&1).await.unwrap().unwrap().choice_text,
        "After the write"
    );
}

#[tokio::test]
async fn concurrent_misses_of_one_key_load_once() {
    let (db, store) = (MemDb::seeded(), MemoryStore::new());
    let cache = cache(&db, &store);
    let held = db.hold_next_load::<Question>();
    let readers: Vec<_> = (0..20)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get::<Question>(&1).await })
        })
        .collect();
    held.read.await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    held.release.send(()).unwrap();
    for r in readers {
        assert_eq!(r.await.unwrap().unwrap().unwrap().id, 1);
    }
    assert_eq!(db.load_count("Question"), 1);
}

#[tokio::test]
async fn corrupt_bytes_are_a_miss_and_are_overwritten() {
    let (db, store) = (MemDb::seeded(), MemoryStore::new());
    let cache = cache(&db, &store);
    let key = cache.key_of::<Question>(&1).unwrap();
    for garbage in [
        &b"{\"id\":1,"[..],
        b"not json",
        b"{\"id\":\"x\"}",
        b"\x00Zjunk",
        b"{}",
    ] {
        store.put_raw(&key, garbage.to_vec(), Duration::from_secs(60));
        let q = cache.get::<Question>(&1).await.unwrap().unwrap();
        assert_eq!(q, db.question(1).unwrap());
        assert!(
            is_warm::<Question>(&cache, &store, &1),
            "overwritten after {garbage:?}"
        );
    }
    store.put_raw(&key, b"{\"truncated\":".to_vec(), Duration::from_secs(60));
    let json = cache.get_json::<Question>(&1).await.unwrap().unwrap();
    assert_eq!(&json[..], &db.question(1).unwrap().to_json().unwrap()[..]);
}

#[tokio::test]
async fn entries_expire_with_their_ttl() {
    let (db, store) = (MemDb::seeded(), MemoryStore::new());
    let cache = builder(&db, &store)
        .default_ttl(Duration::from_millis(50))
        .build()
        .unwrap();
    cache.get::<User>(&1).await.unwrap();
    assert!(is_warm::<User>(&cache, &store, &1));
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(!is_warm::<User>(&cache, &store, &1));
    cache.get::<User>(&1).await.unwrap();
    assert_eq!(db.load_count("User"), 2);
}

#[derive(cached_instances::CachedInstance, Debug, Clone, PartialEq)]
#[cached(model = "Counted", ttl = 1, invalidates_key = "stats:counted")]
pub struct Counted {
    #[cached(pk)]
    pub id: i64,
}

struct CountedDb;
impl cached_instances::Loader<Counted> for CountedDb {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Counted>, cached_instances::LoadError> {
        Ok(pks.iter().map(|&id| Counted { id }).collect())
    }
}

#[tokio::test]
async fn per_model_ttl_and_invalidates_key() {
    let store = MemoryStore::new();
    let cache = Cache::builder()
        .store(store.clone())
        .loader::<Counted>(CountedDb)
        .build()
        .unwrap();
    assert_eq!(Counted::SCHEMA.ttl, Some(Duration::from_secs(1)));
    cache.get::<Counted>(&1).await.unwrap();
    store.put_raw("stats:counted", b"42".to_vec(), Duration::from_secs(60));
    cache.saved(&Counted { id: 1 }).await.unwrap();
    assert!(
        store.raw("stats:counted").is_none(),
        "the raw key is invalidated"
    );

    cache.get::<Counted>(&2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        !is_warm::<Counted>(&cache, &store, &2),
        "expired after the model's 1 s ttl"
    );
}

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

#[tokio::test]
async fn the_reader_fill_is_counted_and_dates_round_trip() {
    let (db, store) = (MemDb::seeded(), MemoryStore::new());
    let cache = cache(&db, &store);
    let q = cache.get::<Question>(&2).await.unwrap().unwrap();
    assert_eq!(q.pub_date, date(2));
    assert_eq!(cache.stats().fills, 1);
    assert_eq!(cache.get::<Question>(&2).await.unwrap().unwrap(), q);
}
