//! The cache behaviour suite over the polls models, generic over the store:
//! drf-cached-instances' behaviours, counted in loader calls and store round
//! trips. `tests/cache_core.rs` runs it on the `MemoryStore`,
//! `tests/redis_cluster_cache.rs` on a Redis server and on a three-master
//! Redis Cluster.
//!
//! Generate one test per scenario with [`with_scenarios!`](crate::with_scenarios),
//! or run them all in sequence with [`run_all`]. A Redis store is wrapped in
//! [`Counting`] to count its round trips.

use std::future::Future;
use std::time::Duration;

use crate::memdb::{MemDb, date};
use crate::store::Counting;
use bytes::Bytes;
use cached_instances::{Cache, CachedInstance, MemoryStore, Store};
use polls::{Choice, Question, User};

/// Calls `$callback! { name, ... }` with the name of every scenario below, so
/// a test binary can generate one test per scenario.
#[macro_export]
macro_rules! with_scenarios {
    ($callback:ident) => {
        $callback! {
            a_hit_makes_no_loader_call_and_one_round_trip,
            cold_misses_make_one_loader_call_per_model_in_three_round_trips,
            a_batch_read_after_cold_ones_leases_first,
            duplicate_pks_are_loaded_once_and_returned_each_time,
            refresh_of_an_unchanged_instance_writes_nothing_and_cascades_nothing,
            a_new_choice_invalidates_its_question,
            moving_a_choice_invalidates_both_questions,
            a_move_with_a_cold_previous_state_uses_the_callers_previous_row,
            a_write_invalidates_what_it_changed_even_when_the_instance_moved_on_since,
            adding_or_removing_a_voter_invalidates_exactly_the_affected_users,
            deleting_a_choice_removes_it_and_updates_its_question,
            cascades_over_the_user_choice_cycle_terminate,
            update_only_leaves_cold_entries_cold,
            versions_share_invalidation_and_delete_all_versions_removes_every_version,
            disabled_caching_still_returns_correct_data,
            a_fill_from_before_a_write_is_rejected,
            concurrent_misses_of_one_key_load_once,
            a_lease_past_its_deadline_is_replaced_not_waited_for,
            a_cancelled_read_releases_its_leases,
            corrupt_bytes_are_a_miss_and_are_overwritten,
            hostile_bytes_are_a_miss_for_every_read_and_are_overwritten,
            entries_expire_with_their_ttl,
            per_model_ttl_and_invalidates_key,
            the_reader_fill_is_counted_and_dates_round_trip,
        }
    };
}

/// Runs every scenario in sequence on `store`, calling `reset` (which must
/// empty the store) before each one.
pub async fn run_all<S: Backend>(store: &S, reset: impl Fn()) {
    macro_rules! run {
        ($($name:ident),* $(,)?) => {
            $(
                reset();
                eprintln!("scenario {}", stringify!($name));
                $name(store.clone()).await;
            )*
        };
    }
    crate::with_scenarios!(run);
}

/// What the suite needs of a store besides [`Store`]: a count of the
/// primitive calls made through it (one per round trip), and raw access for
/// inspecting and seeding keys without being counted.
pub trait Backend: Store + Clone {
    /// Primitive calls served so far.
    fn round_trips(&self) -> u64;
    /// The bytes held under `key`, markers included; not counted.
    fn raw(&self, key: &str) -> impl Future<Output = Option<Bytes>> + Send;
    /// Writes bytes under `key` bypassing the protocol; not counted.
    fn put_raw(&self, key: &str, bytes: &[u8], ttl: Duration) -> impl Future<Output = ()> + Send;
}

impl Backend for MemoryStore {
    fn round_trips(&self) -> u64 {
        MemoryStore::round_trips(self)
    }
    fn raw(&self, key: &str) -> impl Future<Output = Option<Bytes>> + Send {
        std::future::ready(MemoryStore::raw(self, key))
    }
    fn put_raw(&self, key: &str, bytes: &[u8], ttl: Duration) -> impl Future<Output = ()> + Send {
        MemoryStore::put_raw(self, key, bytes.to_vec(), ttl);
        std::future::ready(())
    }
}

impl<S: Store + Clone> Backend for Counting<S> {
    fn round_trips(&self) -> u64 {
        self.calls()
    }
    fn raw(&self, key: &str) -> impl Future<Output = Option<Bytes>> + Send {
        let key = key.to_owned();
        let inner = self.inner().clone();
        async move { inner.get(&key).await.expect("raw read of the store") }
    }
    fn put_raw(&self, key: &str, bytes: &[u8], ttl: Duration) -> impl Future<Output = ()> + Send {
        let keys = vec![key.to_owned()];
        let bytes = bytes.to_vec();
        let inner = self.inner().clone();
        async move {
            inner
                .swap_many(&keys, &bytes, ttl)
                .await
                .expect("raw write to the store");
        }
    }
}

fn cache<S: Store + Clone>(db: &MemDb, store: &S) -> Cache {
    builder(db, store).build().unwrap()
}

fn builder<S: Store + Clone>(db: &MemDb, store: &S) -> cached_instances::CacheBuilder {
    Cache::builder()
        .store(store.clone())
        .loader::<User>(db.clone())
        .loader::<Question>(db.clone())
        .loader::<Choice>(db.clone())
}

/// What the store holds for `pk`, once the cache's fills were answered
/// (a read does not wait for its fill's reply).
async fn raw<T: CachedInstance, S: Backend>(
    cache: &Cache,
    store: &S,
    pk: &T::Pk,
) -> Option<Vec<u8>> {
    cache.settle().await;
    store
        .raw(&cache.key_of::<T>(pk).unwrap())
        .await
        .map(|b| b.to_vec())
}

/// Whether the entry holds a representation (not absent, not a marker).
async fn is_warm<T: CachedInstance, S: Backend>(cache: &Cache, store: &S, pk: &T::Pk) -> bool {
    raw::<T, S>(cache, store, pk)
        .await
        .is_some_and(|b| b.first() == Some(&b'{'))
}

pub async fn a_hit_makes_no_loader_call_and_one_round_trip<S: Backend>(store: S) {
    let db = MemDb::seeded();
    let cache = cache(&db, &store);

    let q = cache.get::<Question>(&1).await.unwrap().unwrap();
    assert_eq!(q, db.question(1).unwrap());
    assert_eq!(db.load_count("Question"), 1);

    // The read returned before its fill was sent (it is encoded from a copy
    // of the row after the read): counted once it has been.
    cache.settle().await;
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

pub async fn cold_misses_make_one_loader_call_per_model_in_three_round_trips<S: Backend>(store: S) {
    let db = MemDb::seeded();
    db.write(|t| {
        for id in 10..60 {
            t.users.insert(id, format!("user{id}"));
        }
    });
    let cache = cache(&db, &store);

    let mut pks: Vec<i64> = (10..60).rev().collect();
    pks.insert(3, 999); // no such row
    let trips = store.round_trips();
    let users = cache.get_many::<User>(&pks).await.unwrap();
    // The fill is sent after the read returns: counted once it has been.
    cache.settle().await;
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

/// While a model's batch reads miss, the next one takes its leases without
/// a multi-get first (`cache/cold.rs`): two round trips for cold misses,
/// and whatever the lease finds is served, replaced or loaded exactly as
/// after a multi-get: entries are hits, corrupt bytes are overwritten,
/// tombstones are leased, a fill overtaken by a write is rejected.
pub async fn a_batch_read_after_cold_ones_leases_first<S: Backend>(store: S) {
    let db = MemDb::seeded();
    db.write(|t| {
        for id in 10..30 {
            t.users.insert(id, format!("user{id}"));
        }
    });
    let cache = cache(&db, &store);
    let ids = |users: &[User]| users.iter().map(|u| u.id).collect::<Vec<_>>();

    // Cold: multi-get, lease, fill; the next batch of cold keys is two.
    let first: Vec<i64> = (10..15).collect();
    assert_eq!(ids(&cache.get_many::<User>(&first).await.unwrap()), first);
    cache.settle().await;
    let trips = store.round_trips();
    let second: Vec<i64> = (15..20).collect();
    assert_eq!(ids(&cache.get_many::<User>(&second).await.unwrap()), second);
    cache.settle().await;
    assert_eq!(store.round_trips() - trips, 2, "lease, fill: no multi-get");

    // Two entries, two absent keys, corrupt bytes, a tombstone (a removed
    // entry whose row is still there), and a duplicate pk.
    let corrupt = cache.key_of::<User>(&22).unwrap();
    store
        .put_raw(&corrupt, b"{\"id\":", Duration::from_secs(60))
        .await;
    cache.get::<User>(&23).await.unwrap();
    cache.deleted::<User>(&db.user(23).unwrap()).await.unwrap();
    let asked = [10, 11, 20, 21, 22, 23, 20];
    db.clear_loads();
    let before = cache.stats();
    let users = cache.get_many::<User>(&asked).await.unwrap();
    assert_eq!(ids(&users), asked);
    for user in &users {
        assert_eq!(Some(user), db.user(user.id).as_ref());
    }
    let after = cache.stats();
    assert_eq!(after.hits - before.hits, 2, "the entries the lease found");
    assert_eq!(after.misses - before.misses, 5);
    assert_eq!(after.corrupt_entries - before.corrupt_entries, 1);
    for id in [20, 21, 22, 23] {
        assert!(is_warm::<User, S>(&cache, &store, &id).await, "{id} filled");
    }
    let loaded: Vec<i64> = db.loads().into_iter().flat_map(|(_, pks)| pks).collect();
    assert_eq!(loaded.len(), 4, "each miss loaded once: {loaded:?}");

    // Still cold (5 of 7 missed): a lease-first read overtaken by a write
    // does not fill.
    let stale: Vec<i64> = (24..28).collect();
    let held = db.hold_next_load::<User>();
    let read = tokio::spawn({
        let cache = cache.clone();
        let stale = stale.clone();
        async move { cache.get_many::<User>(&stale).await }
    });
    held.read.await.unwrap();
    db.write(|t| *t.users.get_mut(&25).unwrap() = "renamed".into());
    cache.saved(&db.user(25).unwrap()).await.unwrap();
    held.release.send(()).unwrap();
    let seen = read.await.unwrap().unwrap();
    assert_eq!(
        seen[1].username, "user25",
        "the read began before the write"
    );
    cache.settle().await;
    assert_eq!(cache.stats().fills_rejected, 1, "its fill was rejected");
    assert_eq!(
        cache.get::<User>(&25).await.unwrap().unwrap().username,
        "renamed"
    );

    // A batch that hits turns it off: the next read is a multi-get.
    let warm: Vec<i64> = (10..20).collect();
    cache.get_many::<User>(&warm).await.unwrap();
    let trips = store.round_trips();
    db.clear_loads();
    assert_eq!(ids(&cache.get_many::<User>(&warm).await.unwrap()), warm);
    assert_eq!(store.round_trips() - trips, 1, "one multi-get");
    assert!(db.loads().is_empty());
}

pub async fn duplicate_pks_are_loaded_once_and_returned_each_time<S: Backend>(store: S) {
    let db = MemDb::seeded();
    let cache = cache(&db, &store);
    let users = cache.get_many::<User>(&[2, 1, 2]).await.unwrap();
    assert_eq!(users.iter().map(|u| u.id).collect::<Vec<_>>(), [2, 1, 2]);
    assert_eq!(db.loads(), [("User", vec![2, 1])]);
    let json = cache.get_many_json::<User>(&[2, 2]).await.unwrap();
    assert_eq!(json.len(), 2);
}

pub async fn refresh_of_an_unchanged_instance_writes_nothing_and_cascades_nothing<S: Backend>(
    store: S,
) {
    let db = MemDb::seeded();
    let cache = cache(&db, &store);
    cache.get_many::<Choice>(&[1, 2]).await.unwrap();
    cache.get::<Question>(&1).await.unwrap();
    cache.settle().await;
    db.clear_loads();
    let before = cache.stats();
    let trips = store.round_trips();

    assert!(!cache.refresh::<Choice>(&1).await.unwrap());
    assert_eq!(store.round_trips() - trips, 1, "one read, no write");
    assert_eq!(cache.stats().invalidations, before.invalidations);
    assert_eq!(db.loads(), [("Choice", vec![1])], "no cascade reload");
    assert!(is_warm::<Choice, S>(&cache, &store, &1).await);

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

pub async fn a_new_choice_invalidates_its_question<S: Backend>(store: S) {
    let db = MemDb::seeded();
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
    assert!(
        raw::<Question, S>(&cache, &store, &2)
            .await
            .is_none_or(|b| b[0] != 0)
    );
}

pub async fn moving_a_choice_invalidates_both_questions<S: Backend>(store: S) {
    let db = MemDb::seeded();
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

pub async fn a_move_with_a_cold_previous_state_uses_the_callers_previous_row<S: Backend>(store: S) {
    let db = MemDb::seeded();
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

/// Two writes of one choice in a row, told late: the first's `saved_from`
/// reloads the choice and finds the second's state. Its acknowledgement
/// still covers the question the first write moved the choice to (here
/// renamed meanwhile by a third write not yet told either): that question
/// is invalidated, not only the questions of the state the reload found.
pub async fn a_write_invalidates_what_it_changed_even_when_the_instance_moved_on_since<
    S: Backend,
>(
    store: S,
) {
    let db = MemDb::seeded();
    db.write(|t| t.questions.insert(3, ("Third".into(), date(3))));
    let cache = cache(&db, &store);
    cache.get_many::<Question>(&[1, 2, 3]).await.unwrap();
    cache.get::<Choice>(&2).await.unwrap();

    // Choice 2 moves to question 2; question 2 is renamed; choice 2 moves
    // on to question 3. Only the first write is told, now.
    let previous = db.choice(2).unwrap();
    db.write(|t| t.choices.get_mut(&2).unwrap().0 = 2);
    let new = db.choice(2).unwrap();
    db.write(|t| t.questions.get_mut(&2).unwrap().0 = "Renamed".into());
    db.write(|t| t.choices.get_mut(&2).unwrap().0 = 3);
    cache.saved_from(&previous, &new).await.unwrap();

    // Every question the first write touched reads as the database has it.
    for q in [1, 2, 3] {
        assert_eq!(
            cache.get::<Question>(&q).await.unwrap(),
            db.question(q),
            "question {q}"
        );
    }
}

pub async fn adding_or_removing_a_voter_invalidates_exactly_the_affected_users<S: Backend>(
    store: S,
) {
    let db = MemDb::seeded();
    let cache = cache(&db, &store);
    cache.get_many::<User>(&[1, 2, 3]).await.unwrap();
    cache.get::<Choice>(&1).await.unwrap();
    let untouched = raw::<User, S>(&cache, &store, &1).await.unwrap();

    // Cy votes for choice 1; Ann keeps her vote.
    db.write(|t| t.votes.insert((3, 1)));
    db.clear_loads();
    cache.saved(&db.choice(1).unwrap()).await.unwrap();
    // The choice itself was cached, so it is refreshed in place; of the
    // users, only the added voter is reloaded.
    assert_eq!(db.loads(), [("Choice", vec![1]), ("User", vec![3])]);
    assert_eq!(raw::<User, S>(&cache, &store, &1).await.unwrap(), untouched);
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

pub async fn deleting_a_choice_removes_it_and_updates_its_question<S: Backend>(store: S) {
    let db = MemDb::seeded();
    let cache = cache(&db, &store);
    let choice = cache.get::<Choice>(&2).await.unwrap().unwrap();
    cache.get::<Question>(&1).await.unwrap();

    db.write(|t| t.choices.remove(&2));
    cache.deleted(&choice).await.unwrap();

    assert!(
        !is_warm::<Choice, S>(&cache, &store, &2).await,
        "its entry is gone"
    );
    assert!(cache.get::<Choice>(&2).await.unwrap().is_none());
    assert_eq!(
        cache.get::<Question>(&1).await.unwrap().unwrap().choices,
        [1]
    );
}

pub async fn cascades_over_the_user_choice_cycle_terminate<S: Backend>(store: S) {
    let db = MemDb::seeded();
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

pub async fn update_only_leaves_cold_entries_cold<S: Backend>(store: S) {
    let db = MemDb::seeded();
    for update_only in [true, false] {
        let cache = builder(&db, &store)
            .update_only(update_only)
            .build()
            .unwrap();
        db.write(|t| t.choices.insert(10, (2, format!("new {update_only}"))));
        cache.saved(&db.choice(10).unwrap()).await.unwrap();
        // Question 2 was never read.
        assert_eq!(
            is_warm::<Question, S>(&cache, &store, &2).await,
            !update_only
        );
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

pub async fn versions_share_invalidation_and_delete_all_versions_removes_every_version<
    S: Backend,
>(
    store: S,
) {
    let db = MemDb::seeded();
    let cache = builder(&db, &store)
        .loader::<QuestionV2>(db.clone())
        .build()
        .unwrap();
    cache.get::<Question>(&1).await.unwrap();
    let v2 = cache.get_json::<QuestionV2>(&1).await.unwrap().unwrap();
    assert_eq!(&v2[..], br#"{"id":1,"text":"What's up?"}"#);
    assert!(
        is_warm::<Question, S>(&cache, &store, &1).await
            && is_warm::<QuestionV2, S>(&cache, &store, &1).await
    );

    cache.delete_all_versions::<Question>(&1).await.unwrap();
    assert!(!is_warm::<Question, S>(&cache, &store, &1).await);
    assert!(!is_warm::<QuestionV2, S>(&cache, &store, &1).await);

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

pub async fn disabled_caching_still_returns_correct_data<S: Backend>(store: S) {
    let db = MemDb::seeded();
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

/// The stale-set race, scripted: the reader's load reads the old row, the
/// writer commits and invalidates, then the reader tries to fill.
pub async fn a_fill_from_before_a_write_is_rejected<S: Backend>(store: S) {
    let db = MemDb::seeded();
    let cache = cache(&db, &store);
    fill_race(&db, &cache, &cache).await;
}

/// The same race across processes: the write goes through another cache
/// over its own store (another process's view of the same server), as a
/// near-cached reader sees it.
pub async fn a_fill_from_before_another_process_writes_is_rejected(
    reader: impl Store + Clone,
    writer: impl Store + Clone,
) {
    let db = MemDb::seeded();
    fill_race(&db, &cache(&db, &reader), &cache(&db, &writer)).await;
}

/// `reader` misses, its load reads the old row and is held; `writer`
/// commits and invalidates; the reader's fill must not land, and its next
/// reads (the second may be a near hit) are fresh.
async fn fill_race(db: &MemDb, reader: &Cache, writer: &Cache) {
    let held = db.hold_next_load::<Choice>();
    let read = tokio::spawn({
        let cache = reader.clone();
        async move { cache.get::<Choice>(&1).await }
    });
    held.read.await.unwrap();

    db.write(|t| t.choices.get_mut(&1).unwrap().1 = "After the write".into());
    writer.saved(&db.choice(1).unwrap()).await.unwrap();

    held.release.send(()).unwrap();
    let seen = read.await.unwrap().unwrap().unwrap();
    assert_eq!(
        seen.choice_text, "Not much",
        "the reader began before the write"
    );
    // On Redis the read returned before its fill's reply: the fill was
    // sent after the write, and is rejected whenever it lands.
    reader.settle().await;
    assert_eq!(reader.stats().fills_rejected, 1, "its fill was rejected");
    for _ in 0..2 {
        assert_eq!(
            reader.get::<Choice>(&1).await.unwrap().unwrap().choice_text,
            "After the write"
        );
    }
}

pub async fn concurrent_misses_of_one_key_load_once<S: Backend>(store: S) {
    let db = MemDb::seeded();
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

/// The ids of `users`, in order.
fn ids(users: &[User]) -> Vec<i64> {
    users.iter().map(|u| u.id).collect()
}

/// A lease as the cache writes one (`marker::new_lease_for`): the mark,
/// `L`, 16 unique bytes, and its deadline in milliseconds since the UNIX
/// epoch, `from_now` ms from now (negative: past).
fn lease_with_deadline(unique: u8, from_now: i64) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let deadline = u64::try_from(i128::try_from(now).unwrap() + i128::from(from_now)).unwrap();
    let mut lease = vec![0, b'L'];
    lease.extend_from_slice(&[unique; 16]);
    lease.extend_from_slice(&deadline.to_be_bytes());
    lease
}

/// A lease past its deadline, left by a reader that died before its fill
/// (taken with no TTL, as `Store::set_if_absent` does on a Redis server),
/// is replaced by the next reader, single-key or batch, and filled,
/// without waiting for it; a lease within its deadline is waited for.
pub async fn a_lease_past_its_deadline_is_replaced_not_waited_for<S: Backend>(store: S) {
    let db = MemDb::seeded();
    db.write(|t| {
        for id in 70..75 {
            t.users.insert(id, format!("user{id}"));
        }
    });
    let cache = builder(&db, &store)
        .lease_wait(Duration::from_millis(200))
        .build()
        .unwrap();
    let dead = lease_with_deadline(7, -1_000);
    let hour = Duration::from_secs(3600);

    let key = cache.key_of::<Question>(&1).unwrap();
    store.put_raw(&key, &dead, hour).await;
    let waits = cache.stats().lease_waits;
    assert_eq!(cache.get::<Question>(&1).await.unwrap(), db.question(1));
    assert_eq!(cache.stats().lease_waits, waits, "not waited for");
    assert!(is_warm::<Question, S>(&cache, &store, &1).await, "filled");

    let pks: Vec<i64> = (70..75).collect();
    for pk in [71, 73] {
        let key = cache.key_of::<User>(&pk).unwrap();
        store.put_raw(&key, &dead, hour).await;
    }
    db.clear_loads();
    let users = cache.get_many::<User>(&pks).await.unwrap();
    assert_eq!(ids(&users), pks);
    assert_eq!(cache.stats().lease_waits, waits, "not waited for");
    let mut loads = db.loads();
    assert_eq!(loads.len(), 1, "one loader call: {loads:?}");
    loads[0].1.sort_unstable();
    assert_eq!(loads[0].1, pks, "the replaced leases loaded with the rest");
    for pk in &pks {
        assert!(is_warm::<User, S>(&cache, &store, pk).await, "{pk} filled");
    }

    // Within its deadline, its reader may still fill it: waited for (and,
    // with this short wait, read directly, the lease left as it is).
    let live = lease_with_deadline(8, 60_000);
    let key = cache.key_of::<Question>(&2).unwrap();
    store.put_raw(&key, &live, hour).await;
    assert_eq!(cache.get::<Question>(&2).await.unwrap(), db.question(2));
    assert_eq!(cache.stats().lease_waits, waits + 1, "waited for");
    cache.settle().await;
    assert_eq!(store.raw(&key).await.as_deref(), Some(&live[..]));
}

/// A read dropped while it loads (a request whose client went away, a
/// timeout around the read) releases its leases: the next reader neither
/// waits for them nor finds a lease left behind without a TTL.
pub async fn a_cancelled_read_releases_its_leases<S: Backend>(store: S) {
    let db = MemDb::seeded();
    db.write(|t| {
        for id in 80..85 {
            t.users.insert(id, format!("user{id}"));
        }
    });
    let cache = builder(&db, &store)
        .lease_wait(Duration::from_secs(5))
        .build()
        .unwrap();
    for asked in [(80..84).collect::<Vec<i64>>(), vec![84]] {
        let held = db.hold_next_load::<User>();
        let read = tokio::spawn({
            let cache = cache.clone();
            let asked = asked.clone();
            async move { cache.get_many::<User>(&asked).await }
        });
        held.read.await.unwrap();
        for pk in &asked {
            let key = cache.key_of::<User>(pk).unwrap();
            let raw = store.raw(&key).await.unwrap();
            assert_eq!(
                raw.get(..2),
                Some(&b"\0L"[..]),
                "{pk} leased while it loads"
            );
        }
        read.abort();
        assert!(read.await.unwrap_err().is_cancelled());
        cache.settle().await;
        for pk in &asked {
            let key = cache.key_of::<User>(pk).unwrap();
            let raw = store.raw(&key).await;
            assert_eq!(raw.as_deref(), Some(&b"\0T"[..]), "{pk} released");
        }
        let waits = cache.stats().lease_waits;
        let users = cache.get_many::<User>(&asked).await.unwrap();
        assert_eq!(ids(&users), asked);
        assert_eq!(cache.stats().lease_waits, waits, "nothing to wait for");
        drop(held.release);
    }
}

pub async fn corrupt_bytes_are_a_miss_and_are_overwritten<S: Backend>(store: S) {
    let db = MemDb::seeded();
    let cache = cache(&db, &store);
    let key = cache.key_of::<Question>(&1).unwrap();
    for garbage in [
        &b"{\"id\":1,"[..],
        b"not json",
        b"{\"id\":\"x\"}",
        b"\x00Zjunk",
        b"{}",
    ] {
        store.put_raw(&key, garbage, Duration::from_secs(60)).await;
        let q = cache.get::<Question>(&1).await.unwrap().unwrap();
        assert_eq!(q, db.question(1).unwrap());
        assert!(
            is_warm::<Question, S>(&cache, &store, &1).await,
            "overwritten after {garbage:?}"
        );
    }
    store
        .put_raw(&key, b"{\"truncated\":", Duration::from_secs(60))
        .await;
    let json = cache.get_json::<Question>(&1).await.unwrap().unwrap();
    assert_eq!(&json[..], &db.question(1).unwrap().to_json().unwrap()[..]);
}

/// Bytes no reader may serve as `Question` 1: corrupt, truncated (at every
/// length), foreign (another model's representation, another shape, a
/// marker-looking value) and oversized (a well-formed representation over
/// `max_entry_bytes`). For each, every read API returns the database's
/// row and no error, and the entry is overwritten.
pub async fn hostile_bytes_are_a_miss_for_every_read_and_are_overwritten<S: Backend>(store: S) {
    const MAX_ENTRY_BYTES: usize = 2048;
    let db = MemDb::seeded();
    let cache = builder(&db, &store)
        .max_entry_bytes(MAX_ENTRY_BYTES)
        .build()
        .unwrap();
    let expected = db.question(1).unwrap();
    let good = expected.to_json().unwrap();
    let key = cache.key_of::<Question>(&1).unwrap();

    let mut hostile: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        b"{\"id\":\"x\"}".to_vec(),
        b"{}".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        b"\x00Zjunk".to_vec(),
        b"\xff\xfe{\x00}".to_vec(),
        // Another model's representation under this key.
        db.choice(1).unwrap().to_json().unwrap(),
        // An object of another shape, and another model's fields.
        br#"{"id":1,"title":"x","pub_date":"2026-01-01T12:00:00Z","choices":[]}"#.to_vec(),
        br#"{"id":1,"question_id":1,"choice_text":"x","voters":[]}"#.to_vec(),
    ];
    // Truncated at every length (the empty value included).
    hostile.extend((0..good.len()).map(|n| good[..n].to_vec()));
    // A well-formed representation, but over the size limit.
    let mut big = expected.clone();
    big.question_text = "x".repeat(MAX_ENTRY_BYTES);
    hostile.push(big.to_json().unwrap());

    let corrupt_before = cache.stats().corrupt_entries;
    for (n, bytes) in hostile.iter().enumerate() {
        let what = String::from_utf8_lossy(bytes);
        for read in 0..4 {
            store.put_raw(&key, bytes, Duration::from_secs(60)).await;
            match read {
                0 => assert_eq!(
                    cache.get::<Question>(&1).await.unwrap().as_ref(),
                    Some(&expected),
                    "get after {what}"
                ),
                1 => assert_eq!(
                    cache.get_many::<Question>(&[2, 1]).await.unwrap()[1],
                    expected,
                    "get_many after {what}"
                ),
                2 => assert_eq!(
                    cache.get_json::<Question>(&1).await.unwrap().as_deref(),
                    Some(&good[..]),
                    "get_json after {what}"
                ),
                _ => assert_eq!(
                    &cache.get_many_json::<Question>(&[1, 2]).await.unwrap()[0][..],
                    &good[..],
                    "get_many_json after {what}"
                ),
            }
            assert_eq!(
                raw::<Question, S>(&cache, &store, &1).await.as_deref(),
                Some(&good[..]),
                "overwritten after {what} (case {n}, read {read})"
            );
        }
    }
    // Every one was noticed as corrupt (the empty value is just a miss on
    // stores that cannot tell it from an absent key).
    assert!(
        cache.stats().corrupt_entries - corrupt_before >= 4 * (hostile.len() as u64 - 1),
        "{:?}",
        cache.stats()
    );
    assert_eq!(cache.stats().store_errors, 0);
}

pub async fn entries_expire_with_their_ttl<S: Backend>(store: S) {
    let db = MemDb::seeded();
    let cache = builder(&db, &store)
        .default_ttl(Duration::from_millis(50))
        .build()
        .unwrap();
    cache.get::<User>(&1).await.unwrap();
    assert!(is_warm::<User, S>(&cache, &store, &1).await);
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(!is_warm::<User, S>(&cache, &store, &1).await);
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

pub async fn per_model_ttl_and_invalidates_key<S: Backend>(store: S) {
    let cache = Cache::builder()
        .store(store.clone())
        .loader::<Counted>(CountedDb)
        .build()
        .unwrap();
    assert_eq!(Counted::SCHEMA.ttl, Some(Duration::from_secs(1)));
    cache.get::<Counted>(&1).await.unwrap();
    store
        .put_raw("stats:counted", b"42", Duration::from_secs(60))
        .await;
    cache.saved(&Counted { id: 1 }).await.unwrap();
    assert!(
        store.raw("stats:counted").await.is_none(),
        "the raw key is invalidated"
    );

    cache.get::<Counted>(&2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        !is_warm::<Counted, S>(&cache, &store, &2).await,
        "expired after the model's 1 s ttl"
    );
}

pub async fn the_reader_fill_is_counted_and_dates_round_trip<S: Backend>(store: S) {
    let db = MemDb::seeded();
    let cache = cache(&db, &store);
    let q = cache.get::<Question>(&2).await.unwrap().unwrap();
    assert_eq!(q.pub_date, date(2));
    cache.settle().await;
    assert_eq!(cache.stats().fills, 1);
    assert_eq!(cache.get::<Question>(&2).await.unwrap().unwrap(), q);
}
