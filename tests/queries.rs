//! Cached queries (`#[cached(index)]`, `sortable`, `search`): the cache's
//! answer equals a naive evaluation over the database rows, for random data,
//! random queries and random writes and deletes, on the `MemoryStore` and
//! on a real Redis server (started by the test); the index stays consistent
//! under concurrent writes; unwarmed models fall back to the loader.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cached_instances::query::{Query, QueryError, QueryPage, Source};
use cached_instances::{
    Cache, CachedInstance, Error, LoadError, Loader, MemoryStore, RedisStore, Store,
};
use cached_instances_testkit::faults::Faulty;
use cached_instances_testkit::poll;
use cached_instances_testkit::redis_server::RedisServer;
use cached_instances_testkit::store::{Journaled, Op};
use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Staff,
    Guest,
}

#[derive(CachedInstance, Debug, Clone, PartialEq)]
pub struct Team {
    #[cached(pk)]
    pub id: i64,
}

#[derive(CachedInstance, Debug, Clone, PartialEq)]
pub struct Person {
    #[cached(pk)]
    pub id: i64,
    #[cached(index, search)]
    pub name: String,
    #[cached(index)]
    pub country: String,
    #[cached(index)]
    pub active: bool,
    #[cached(index, serde)]
    pub role: Role,
    #[cached(references = Team, index)]
    pub team_id: Option<i64>,
    #[cached(sortable, rename = "years")]
    pub age: i32,
    #[cached(sortable)]
    pub score: Option<f64>,
    #[cached(sortable)]
    pub joined: DateTime<Utc>,
    #[cached(search)]
    pub bio: String,
}

/// The database: rows, and a loader whose `query` is the "database pk
/// query" of an unwarmed model.
#[derive(Clone, Default)]
struct Db {
    rows: Arc<Mutex<BTreeMap<i64, Person>>>,
    /// Loader latency, to shuffle concurrent writes.
    jitter: bool,
}

impl Db {
    fn rows(&self) -> Vec<Person> {
        self.rows.lock().unwrap().values().cloned().collect()
    }
}

async fn jitter(on: bool) {
    if on {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        tokio::time::sleep(Duration::from_micros(u64::from(nanos % 3000))).await;
    }
}

impl Loader<Person> for Db {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Person>, LoadError> {
        let rows: Vec<Person> = {
            let rows = self.rows.lock().unwrap();
            pks.iter().filter_map(|pk| rows.get(pk).cloned()).collect()
        };
        jitter(self.jitter).await;
        Ok(rows)
    }

    async fn all_pks(&self) -> Result<Option<Vec<i64>>, LoadError> {
        Ok(Some(self.rows.lock().unwrap().keys().copied().collect()))
    }

    async fn query(&self, query: &Query<Person>) -> Result<Option<QueryPage<i64>>, LoadError> {
        // What a hand-written SQL query would do, through the public API:
        // WHERE (the query's filters) ORDER BY field, id LIMIT OFFSET.
        let mut rows: Vec<Person> = self
            .rows()
            .into_iter()
            .filter(|p| query.matches(p))
            .collect();
        if let Some(order) = query.order_by_field() {
            let score = |p: &Person| {
                cached_instances::query::IndexValues::of(p)
                    .field(order.index)
                    .and_then(|f| f.score)
                    .unwrap_or(f64::INFINITY)
            };
            rows.sort_by(|a, b| score(a).total_cmp(&score(b)).then(a.id.cmp(&b.id)));
            if order.descending {
                rows.reverse();
            }
        }
        let count = rows.len() as u64;
        let pks = rows
            .iter()
            .skip(query.offset_value() as usize)
            .take(query.limit_value().map_or(usize::MAX, |l| l as usize))
            .map(|p| p.id)
            .collect();
        Ok(Some(QueryPage::new(pks, count)))
    }
}

impl Loader<Team> for Db {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Team>, LoadError> {
        Ok(pks.iter().map(|&id| Team { id }).collect())
    }
}

// ---------------------------------------------------------------------------
// Random data and queries, and the naive evaluation.

const WORDS: &[&str] = &[
    "alpha", "bravo", "charlie", "delta", "echo", "Foxtrot", "golf",
];
const COUNTRIES: &[&str] = &["FR", "GB", "US", "Élysée"];

fn text(words: &[usize]) -> String {
    words
        .iter()
        .map(|&w| WORDS[w % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

fn person_strategy(id: i64) -> impl Strategy<Value = Person> {
    (
        proptest::collection::vec(0..7usize, 1..3),
        0..4usize,
        any::<bool>(),
        0..3usize,
        proptest::option::of(0..3i64),
        (18..24i32, proptest::option::of(0..4u8), 0..5i64),
        proptest::collection::vec(0..7usize, 0..4),
    )
        .prop_map(
            move |(name, country, active, role, team, (age, score, day), bio)| Person {
                id,
                name: text(&name),
                country: COUNTRIES[country].to_owned(),
                active,
                role: [Role::Admin, Role::Staff, Role::Guest][role],
                team_id: team,
                age,
                score: score.map(|s| f64::from(s) * 0.5 - 0.25),
                joined: Utc.timestamp_opt(1_700_000_000 + day * 86_400, 0).unwrap(),
                bio: text(&bio),
            },
        )
}

/// A query, described for both the naive evaluation and `Query`.
#[derive(Debug, Clone)]
struct Q {
    country: Option<usize>,
    active: Option<bool>,
    role: Option<usize>,
    team: Option<i64>,
    name: Option<Vec<usize>>,
    age: (Option<i32>, Option<i32>),
    score_gt: Option<f64>,
    joined_lt: Option<i64>,
    search: Vec<usize>,
    order: Option<(usize, bool)>,
    offset: u64,
    limit: Option<u64>,
}

impl Q {
    /// A page with no filter and no search: only an order, offset, limit.
    fn unfiltered(order: Option<(usize, bool)>, offset: u64, limit: Option<u64>) -> Q {
        Q {
            country: None,
            active: None,
            role: None,
            team: None,
            name: None,
            age: (None, None),
            score_gt: None,
            joined_lt: None,
            search: Vec::new(),
            order,
            offset,
            limit,
        }
    }
}

fn query_strategy() -> impl Strategy<Value = Q> {
    (
        (
            proptest::option::of(0..4usize),
            proptest::option::of(any::<bool>()),
            proptest::option::of(0..3usize),
            proptest::option::of(0..3i64),
            proptest::option::weighted(0.1, proptest::collection::vec(0..7usize, 1..3)),
        ),
        (
            (
                proptest::option::of(18..24i32),
                proptest::option::of(18..24i32),
            ),
            proptest::option::weighted(0.3, (0..4u8).prop_map(|s| f64::from(s) * 0.5 - 0.25)),
            proptest::option::weighted(0.3, 0..5i64),
        ),
        proptest::collection::vec(0..7usize, 0..3),
        proptest::option::of((0..3usize, any::<bool>())),
        0..6u64,
        proptest::option::of(0..8u64),
    )
        .prop_map(
            |(
                (country, active, role, team, name),
                (age, score_gt, joined_lt),
                search,
                order,
                offset,
                limit,
            )| Q {
                country,
                active,
                role,
                team,
                name,
                age,
                score_gt,
                joined_lt,
                search,
                order,
                offset,
                limit,
            },
        )
}

const ORDER_FIELDS: [&str; 3] = ["years", "score", "joined"];

fn build(q: &Q) -> Query<Person> {
    let mut query = Query::<Person>::new();
    if let Some(c) = q.country {
        query = query.filter("country", COUNTRIES[c]);
    }
    if let Some(a) = q.active {
        query = query.filter_text("active", if a { "true" } else { "false" });
    }
    if let Some(r) = q.role {
        query = query.filter_text("role", ["admin", "staff", "guest"][r]);
    }
    if let Some(t) = q.team {
        query = query.filter("team_id", t);
    }
    if let Some(n) = &q.name {
        query = query.filter("name", text(n));
    }
    if let Some(min) = q.age.0 {
        query = query.gte("years", min);
    }
    if let Some(max) = q.age.1 {
        query = query.lt("age", max);
    }
    if let Some(s) = q.score_gt {
        query = query.gt("score", s);
    }
    if let Some(d) = q.joined_lt {
        query = query.lte(
            "joined",
            Utc.timestamp_opt(1_700_000_000 + d * 86_400, 0).unwrap(),
        );
    }
    if !q.search.is_empty() {
        // Mixed case: search is case-folded.
        query = query.search(&text(&q.search).to_uppercase());
    }
    if let Some((field, desc)) = q.order {
        query = if desc {
            query.order_by_desc(ORDER_FIELDS[field])
        } else {
            query.order_by(ORDER_FIELDS[field])
        };
    }
    query = query.offset(q.offset);
    if let Some(l) = q.limit {
        query = query.limit(l);
    }
    query
}

/// The answer computed from the rows, independently of the library.
fn naive(rows: &[Person], q: &Q) -> (Vec<i64>, u64) {
    let words = |s: &str| -> Vec<String> { s.split_whitespace().map(str::to_lowercase).collect() };
    let mut matched: Vec<&Person> = rows
        .iter()
        .filter(|p| q.country.is_none_or(|c| p.country == COUNTRIES[c]))
        .filter(|p| q.active.is_none_or(|a| p.active == a))
        .filter(|p| {
            q.role
                .is_none_or(|r| p.role == [Role::Admin, Role::Staff, Role::Guest][r])
        })
        .filter(|p| q.team.is_none_or(|t| p.team_id == Some(t)))
        .filter(|p| q.name.as_ref().is_none_or(|n| p.name == text(n)))
        .filter(|p| q.age.0.is_none_or(|min| p.age >= min))
        .filter(|p| q.age.1.is_none_or(|max| p.age < max))
        .filter(|p| q.score_gt.is_none_or(|s| p.score.is_some_and(|v| v > s)))
        .filter(|p| {
            q.joined_lt.is_none_or(|d| {
                p.joined <= Utc.timestamp_opt(1_700_000_000 + d * 86_400, 0).unwrap()
            })
        })
        .filter(|p| {
            let tokens: Vec<String> = words(&p.name).into_iter().chain(words(&p.bio)).collect();
            q.search
                .iter()
                .all(|&w| tokens.contains(&WORDS[w % WORDS.len()].to_lowercase()))
        })
        .collect();
    // By the field (None last), ties by id; descending reverses both.
    matched.sort_by(|a, b| {
        let by_field = match q.order {
            None => std::cmp::Ordering::Equal,
            Some((0, _)) => a.age.cmp(&b.age),
            Some((1, _)) => match (a.score, b.score) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            },
            Some(_) => a.joined.cmp(&b.joined),
        };
        by_field.then(a.id.cmp(&b.id))
    });
    if q.order.is_some_and(|(_, desc)| desc) {
        matched.reverse();
    }
    let count = matched.len() as u64;
    let page = matched
        .into_iter()
        .skip(q.offset as usize)
        .take(q.limit.map_or(usize::MAX, |l| l as usize))
        .map(|p| p.id)
        .collect();
    (page, count)
}

#[derive(Debug, Clone)]
enum Step {
    Query(Q),
    Save(Person),
    Delete(i64),
}

fn case_strategy() -> impl Strategy<Value = (Vec<Person>, Vec<Step>)> {
    let people = proptest::collection::btree_set(0..60i64, 0..40)
        .prop_flat_map(|ids| ids.into_iter().map(person_strategy).collect::<Vec<_>>());
    let step = prop_oneof![
        3 => query_strategy().prop_map(Step::Query),
        2 => (0..60i64).prop_flat_map(person_strategy).prop_map(Step::Save),
        1 => (0..60i64).prop_map(Step::Delete),
    ];
    (people, proptest::collection::vec(step, 1..25))
}

fn cache_over(store: impl Store, db: &Db) -> Cache {
    Cache::builder()
        .store(store)
        .loader::<Person>(db.clone())
        .loader::<Team>(db.clone())
        .build()
        .unwrap()
}

/// Seeds the database, checks the unwarmed fallback, warms, then runs the
/// steps, comparing every query with the naive answer.
async fn differential(store: impl Store + Clone, people: Vec<Person>, steps: Vec<Step>) {
    let db = Db::default();
    for p in &people {
        db.rows.lock().unwrap().insert(p.id, p.clone());
    }
    let cache = cache_over(store, &db);

    // Not warmed: the loader answers.
    let everything = Q::unfiltered(Some((1, true)), 0, None);
    let cold = cache.query(&build(&everything)).await.unwrap();
    assert_eq!(cold.source, Source::Database);
    assert_eq!(
        (
            cold.items.iter().map(|p| p.id).collect::<Vec<_>>(),
            cold.count
        ),
        naive(&db.rows(), &everything)
    );

    let report = cache.warm::<Person>().batch_size(7).await.unwrap();
    assert_eq!(report.indexed, people.len() as u64);

    // Each write is followed by the last query again: its page may have
    // changed, and its entries are read with a guess of the old page
    // (`cache/prefetch.rs`).
    let mut last: Option<Q> = None;
    for step in steps {
        match step {
            Step::Query(q) => {
                check(&cache, &db, &q).await;
                last = Some(q);
            }
            Step::Save(p) => {
                let previous = db.rows.lock().unwrap().insert(p.id, p.clone());
                let _ = previous;
                cache.saved(&p).await.unwrap();
            }
            Step::Delete(id) => {
                let removed = db.rows.lock().unwrap().remove(&id);
                if let Some(p) = removed {
                    cache.deleted(&p).await.unwrap();
                }
            }
        }
        if let Some(q) = &last {
            check(&cache, &db, q).await;
        }
    }
}

/// Runs `q` from the cache (instances, then pks) and compares it with the
/// naive answer over the database's rows.
async fn check(cache: &Cache, db: &Db, q: &Q) {
    let query = build(q);
    let expected = naive(&db.rows(), q);
    let found = cache.query(&query).await.unwrap();
    assert_eq!(found.source, Source::Cache, "{q:?}");
    let got = (
        found.items.iter().map(|p| p.id).collect::<Vec<_>>(),
        found.count,
    );
    assert_eq!(got, expected, "{q:?}");
    // Instances come back as the database has them.
    for p in &found.items {
        assert_eq!(Some(p), db.rows.lock().unwrap().get(&p.id));
    }
    let pks = cache.query_pks(&query).await.unwrap();
    assert_eq!((pks.items, pks.count), expected, "{q:?}");
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn memory_store_answers_like_the_database() {
    let rt = runtime();
    runner(64)
        .run(&case_strategy(), |(people, steps)| {
            rt.block_on(differential(MemoryStore::new(), people, steps));
            Ok(())
        })
        .unwrap();
}

fn flush(server: &RedisServer) {
    let mut con = server.connection();
    let _: () = redis::cmd("FLUSHALL").query(&mut con).unwrap();
}

#[test]
fn redis_store_answers_like_the_database() {
    let server = RedisServer::start();
    let rt = runtime();
    let store = rt.block_on(RedisStore::connect(&server.url())).unwrap();
    runner(48)
        .run(&case_strategy(), |(people, steps)| {
            flush(&server);
            rt.block_on(differential(store.clone(), people, steps));
            Ok(())
        })
        .unwrap();
}

/// Every order, offset and limit of a page with no filter but a range of
/// its own order, the forms the Redis store answers with plain commands
/// instead of the query script (limit 0, no limit, an offset past the
/// end, members without a value; bounds included and excluded, on one
/// side and on both).
fn order_only_steps() -> Vec<Step> {
    let orders = [
        None,
        Some((0, false)),
        Some((0, true)),
        Some((1, false)),
        Some((1, true)),
        Some((2, false)),
        Some((2, true)),
    ];
    let mut steps = Vec::new();
    for order in orders {
        for offset in [0, 1, 3, 50] {
            for limit in [None, Some(0), Some(1), Some(2), Some(50)] {
                steps.push(Step::Query(Q::unfiltered(order, offset, limit)));
                let Some((field, _)) = order else { continue };
                let ranged = |set: &dyn Fn(&mut Q)| {
                    let mut q = Q::unfiltered(order, offset, limit);
                    set(&mut q);
                    Step::Query(q)
                };
                match field {
                    0 => {
                        steps.push(ranged(&|q| q.age = (Some(20), None)));
                        steps.push(ranged(&|q| q.age = (None, Some(22))));
                        steps.push(ranged(&|q| q.age = (Some(19), Some(23))));
                    }
                    1 => {
                        steps.push(ranged(&|q| q.score_gt = Some(0.25)));
                        steps.push(ranged(&|q| q.score_gt = Some(-0.25)));
                    }
                    _ => steps.push(ranged(&|q| q.joined_lt = Some(2))),
                }
            }
            // A write now and then, after which the last query runs again
            // (`differential`): a page read again at a version of the index
            // that a write replaced.
            let n = steps.len() as i64;
            let mut moved = person(n % 60, "FR", 18 + (n % 7) as i32);
            moved.score = Some((n % 4) as f64 * 0.5 - 0.25);
            moved.joined = Utc
                .timestamp_opt(1_700_000_000 + (n % 5) * 86_400, 0)
                .unwrap();
            steps.push(Step::Save(moved));
        }
    }
    steps
}

#[test]
fn order_only_pages_answer_like_the_database_on_redis_and_in_memory() {
    let server = RedisServer::start();
    let rt = runtime();
    let store = rt.block_on(RedisStore::connect(&server.url())).unwrap();
    let people = proptest::collection::btree_set(0..60i64, 20..40)
        .prop_flat_map(|ids| ids.into_iter().map(person_strategy).collect::<Vec<_>>());
    runner(4)
        .run(&people, |people| {
            flush(&server);
            rt.block_on(differential(
                store.clone(),
                people.clone(),
                order_only_steps(),
            ));
            rt.block_on(differential(MemoryStore::new(), people, order_only_steps()));
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------
// Concurrent writes.

/// Tasks write the same few rows concurrently (database first, then
/// `saved`/`deleted`), with a loader that takes a random while; afterwards
/// every query agrees with the database.
async fn concurrent_writes(store: impl Store + Clone) {
    let db = Db {
        jitter: true,
        ..Db::default()
    };
    let seed = |id: i64, k: i64| Person {
        id,
        name: text(&[(k % 7) as usize]),
        country: COUNTRIES[(k % 4) as usize].to_owned(),
        active: k % 2 == 0,
        role: [Role::Admin, Role::Staff, Role::Guest][(k % 3) as usize],
        team_id: (k % 3 != 0).then_some(k % 3),
        age: 18 + (k % 6) as i32,
        score: (k % 5 != 0).then_some((k % 4) as f64),
        joined: Utc
            .timestamp_opt(1_700_000_000 + (k % 5) * 86_400, 0)
            .unwrap(),
        bio: text(&[(k % 5) as usize, (k % 3) as usize]),
    };
    for id in 0..8 {
        db.rows.lock().unwrap().insert(id, seed(id, id));
    }
    let cache = cache_over(store, &db);
    cache.warm::<Person>().await.unwrap();

    let mut tasks = Vec::new();
    for task in 0..8i64 {
        let (cache, db) = (cache.clone(), db.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..30i64 {
                let id = (task * 7 + round * 3) % 8;
                let k = task * 31 + round * 17;
                if k % 11 == 0 {
                    let removed = db.rows.lock().unwrap().remove(&id);
                    if let Some(p) = removed {
                        cache.deleted(&p).await.unwrap();
                    }
                } else {
                    let p = seed(id, k);
                    db.rows.lock().unwrap().insert(id, p.clone());
                    cache.saved(&p).await.unwrap();
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    let rows = db.rows();
    let mut queries = Vec::new();
    for c in 0..4 {
        for order in [None, Some((0, false)), Some((1, true)), Some((2, false))] {
            queries.push(Q {
                country: Some(c),
                active: None,
                role: None,
                team: None,
                name: None,
                age: (None, None),
                score_gt: None,
                joined_lt: None,
                search: Vec::new(),
                order,
                offset: 0,
                limit: None,
            });
        }
    }
    for w in 0..7 {
        queries.push(Q {
            country: None,
            active: Some(w % 2 == 0),
            role: Some(w % 3),
            team: None,
            name: None,
            age: (Some(18 + w as i32 % 3), None),
            score_gt: Some(0.5),
            joined_lt: None,
            search: vec![w],
            order: Some((1, false)),
            offset: 0,
            limit: None,
        });
    }
    for q in queries {
        let found = cache.query_pks(&build(&q)).await.unwrap();
        assert_eq!(found.source, Source::Cache);
        assert_eq!((found.items, found.count), naive(&rows, &q), "{q:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_index_is_consistent_after_concurrent_writes() {
    for _ in 0..5 {
        concurrent_writes(MemoryStore::new()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_index_is_consistent_after_concurrent_writes() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    for _ in 0..5 {
        flush(&server);
        concurrent_writes(store.clone()).await;
    }
}

// ---------------------------------------------------------------------------
// Budgets, bytes, errors.

fn person(id: i64, country: &str, age: i32) -> Person {
    Person {
        id,
        name: format!("person {id}"),
        country: country.to_owned(),
        active: true,
        role: Role::Staff,
        team_id: None,
        age,
        score: None,
        joined: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
        bio: String::new(),
    }
}

#[tokio::test]
async fn a_warm_query_is_one_round_trip_for_the_pks_and_one_multi_get() {
    let db = Db::default();
    for id in 0..50 {
        db.rows.lock().unwrap().insert(
            id,
            person(id, ["FR", "GB"][id as usize % 2], 20 + (id as i32 % 7)),
        );
    }
    let store = MemoryStore::new();
    let cache = cache_over(store.clone(), &db);
    cache.warm::<Person>().await.unwrap();
    let query = Query::<Person>::new()
        .filter("country", "GB")
        .order_by_desc("years")
        .limit(5);

    let before = (store.round_trips(), cache.stats().loader_calls);
    let found = cache.query_json(&query).await.unwrap();
    assert_eq!(found.count, 25);
    assert_eq!(found.items.len(), 5);
    // Warm filled the entries: one round trip for the page, one multi-get.
    assert_eq!(store.round_trips() - before.0, 2);
    assert_eq!(cache.stats().loader_calls, before.1);
    let first: serde_json::Value = serde_json::from_slice(&found.items[0]).unwrap();
    assert_eq!(first["years"], 26);

    // Count only: one round trip.
    let before = store.round_trips();
    let counted = cache.query_pks(&query.clone().limit(0)).await.unwrap();
    assert_eq!((counted.items.len(), counted.count), (0, 25));
    assert_eq!(store.round_trips() - before, 1);
}

#[tokio::test]
async fn undeclared_fields_and_bad_values_are_errors() {
    let db = Db::default();
    let cache = cache_over(MemoryStore::new(), &db);
    let cases: Vec<(Query<Person>, &str)> = vec![
        (Query::new().filter("nope", 1), "no field `nope`"),
        (
            Query::new().filter("years", 1),
            "not declared `#[cached(index)]`",
        ),
        (
            Query::new().order_by("country"),
            "not declared `#[cached(sortable)]`",
        ),
        (
            Query::new().search_in("country", "x"),
            "not declared `#[cached(search)]`",
        ),
        (
            Query::new().filter_text("active", "maybe"),
            "\"maybe\" is not a valid value",
        ),
        (
            Query::new().range_text("joined", cached_instances::query::RangeOp::Gte, "yesterday"),
            "not a valid value",
        ),
        (Query::new().ordering("years,-score"), "one field only"),
    ];
    for (query, message) in cases {
        match cache.query(&query).await {
            Err(Error::Query(e)) => assert!(e.to_string().contains(message), "{e}"),
            other => panic!("{message}: {other:?}"),
        }
    }
    // URL parameters.
    let q = Query::<Person>::from_params([
        ("years__gte", "20"),
        ("ordering", "-joined"),
        ("search", "a b"),
    ])
    .unwrap();
    assert_eq!(q.filters().len(), 1);
    assert_eq!(q.search_terms().len(), 2);
    assert!(q.order_by_field().unwrap().descending);
    assert!(matches!(
        Query::<Person>::from_params([("bio", "x")]),
        Err(QueryError::NotDeclared { .. })
    ));
    // A model that is not warmed, with a loader that cannot query.
    struct NoQueries;
    impl Loader<Person> for NoQueries {
        async fn load(&self, _: &[i64]) -> Result<Vec<Person>, LoadError> {
            Ok(Vec::new())
        }
    }
    let cache = Cache::builder()
        .loader::<Person>(NoQueries)
        .loader::<Team>(db)
        .build()
        .unwrap();
    assert!(matches!(
        cache.query(&Query::<Person>::new()).await,
        Err(Error::Query(QueryError::NoFallback { .. }))
    ));
    assert!(matches!(
        cache.warm::<Person>().await,
        Err(Error::Query(QueryError::NoPkList { .. }))
    ));
}

#[tokio::test]
async fn warm_removes_rows_deleted_behind_its_back_and_reports_progress() {
    let db = Db::default();
    for id in 0..10 {
        db.rows.lock().unwrap().insert(id, person(id, "FR", 30));
    }
    let cache = cache_over(MemoryStore::new(), &db);
    cache.warm::<Person>().await.unwrap();
    // Deleted without telling the cache: still indexed until the next warm.
    db.rows.lock().unwrap().remove(&3);
    let progress = Arc::new(Mutex::new(Vec::new()));
    let seen = progress.clone();
    let report = cache
        .warm::<Person>()
        .batch_size(4)
        .on_progress(move |p| seen.lock().unwrap().push((p.done, p.total)))
        .await
        .unwrap();
    assert_eq!((report.indexed, report.removed), (9, 1));
    assert_eq!(*progress.lock().unwrap(), [(4, 9), (8, 9), (9, 9)]);
    let found = cache
        .query_pks(&Query::<Person>::new().filter("country", "FR"))
        .await
        .unwrap();
    assert_eq!(found.count, 9);
    assert!(!found.items.contains(&3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_work_on_a_redis_cluster_in_one_slot_per_model() {
    let cluster = cached_instances_testkit::redis_server::RedisCluster::start();
    let store = RedisStore::connect_cluster(cluster.urls()).await.unwrap();
    let db = Db::default();
    for id in 0..200 {
        let p = person(
            id,
            ["FR", "GB", "US"][id as usize % 3],
            18 + (id as i32 % 40),
        );
        db.rows.lock().unwrap().insert(id, p);
    }
    let cache = cache_over(store, &db);
    cache.warm::<Person>().batch_size(64).await.unwrap();
    let query = Query::<Person>::new()
        .filter("country", "GB")
        .gte("years", 30)
        .order_by_desc("years")
        .limit(7);
    let q = Q {
        country: Some(1),
        active: None,
        role: None,
        team: None,
        name: None,
        age: (Some(30), None),
        score_gt: None,
        joined_lt: None,
        search: Vec::new(),
        order: Some((0, true)),
        offset: 0,
        limit: Some(7),
    };
    let found = cache.query_pks(&query).await.unwrap();
    assert_eq!(found.source, Source::Cache);
    assert_eq!((found.items, found.count), naive(&db.rows(), &q));
    // A write moves a person out of the result.
    let first = naive(&db.rows(), &q).0[0];
    let mut moved = db.rows.lock().unwrap()[&first].clone();
    moved.country = "US".to_owned();
    db.rows.lock().unwrap().insert(first, moved.clone());
    cache.saved(&moved).await.unwrap();
    let found = cache.query_pks(&query).await.unwrap();
    assert_eq!((found.items, found.count), naive(&db.rows(), &q));
    // Every index key of the model is on one node.
    let per_node = cluster.keys_per_node();
    let index_keys: Vec<u64> = cluster
        .ports()
        .iter()
        .map(|&port| {
            let mut con = cluster.node_connection(port);
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("ci:{idx:Person}*")
                .query(&mut con)
                .unwrap();
            keys.len() as u64
        })
        .collect();
    assert_eq!(
        index_keys.iter().filter(|&&n| n > 0).count(),
        1,
        "{index_keys:?} of {per_node:?}"
    );
}

// ---------------------------------------------------------------------------
// A list's last page read with its index query (`cache/prefetch.rs`).

/// The reads among `calls`, in order: the index queries and the multi-gets
/// with their keys (the lease and the fill of a miss left out).
fn reads(calls: Vec<(Op, Vec<String>)>) -> Vec<(Op, Vec<String>)> {
    calls
        .into_iter()
        .filter(|(op, _)| matches!(op, Op::IndexQuery | Op::GetMany | Op::Get))
        .collect()
}

/// People 0 to 19, aged 20 to 39, in a warmed cache over `store`, and
/// their list of 5 oldest first (`years` descending).
async fn twenty_people_oldest_first(store: impl Store) -> (Db, Cache, Query<Person>) {
    let db = Db::default();
    for id in 0..20 {
        let p = person(id, "FR", 20 + id as i32);
        db.rows.lock().unwrap().insert(id, p);
    }
    let cache = cache_over(store, &db);
    cache.warm::<Person>().await.unwrap();
    (
        db,
        cache,
        Query::<Person>::new().order_by_desc("years").limit(5),
    )
}

/// Runs `query` with its index query held until the calls the cache made
/// meanwhile are taken: those calls, and the page's ids.
async fn list_holding_the_index_query(
    cache: &Cache,
    store: &Faulty<Journaled<MemoryStore>>,
    query: &Query<Person>,
) -> (Vec<(Op, Vec<String>)>, Vec<i64>) {
    let held = store.hold_next(Op::IndexQuery);
    let (cache, query) = (cache.clone(), query.clone());
    let list = tokio::spawn(async move { cache.query(&query).await.unwrap() });
    held.reached.await.unwrap();
    // On this (current-thread) runtime the list's task ran until every
    // future it polls was pending: what it sent alongside is sent.
    let meanwhile = reads(store.inner().take());
    held.release.send(()).unwrap();
    let page = list.await.unwrap();
    assert_eq!(page.source, Source::Cache);
    (meanwhile, page.items.iter().map(|p| p.id).collect())
}

#[tokio::test]
async fn a_repeated_list_reads_its_last_pages_entries_with_its_index_query() {
    let store = Faulty::new(Journaled::new(MemoryStore::new()));
    let (db, cache, oldest) = twenty_people_oldest_first(store.clone()).await;
    let journal = || reads(store.inner().take());
    journal();

    // The first time: the index query, then the multi-get of its page (a
    // multi-get, not a lease: warm filled the entries its reads missed).
    let (meanwhile, ids) = list_holding_the_index_query(&cache, &store, &oldest).await;
    assert_eq!(ids, [19, 18, 17, 16, 15]);
    assert!(meanwhile.is_empty(), "nothing to guess yet: {meanwhile:?}");
    let first = journal();
    assert_eq!(first.len(), 2, "{first:?}");
    assert_eq!(first[0], (Op::IndexQuery, vec![]));
    assert_eq!((first[1].0, first[1].1.len()), (Op::GetMany, 5));

    // Again: the page's entries are read while its index query is out, and
    // nothing after it.
    let loads = cache.stats().loader_calls;
    let (meanwhile, ids) = list_holding_the_index_query(&cache, &store, &oldest).await;
    assert_eq!(ids, [19, 18, 17, 16, 15]);
    assert_eq!(meanwhile.len(), 1, "{meanwhile:?}");
    let (op, page_keys) = meanwhile[0].clone();
    assert_eq!((op, page_keys.len()), (Op::GetMany, 5));
    assert_eq!(journal(), [(Op::IndexQuery, vec![])]);
    assert_eq!(cache.stats().loader_calls, loads, "every entry was a hit");
    let (meanwhile, _) = list_holding_the_index_query(&cache, &store, &oldest).await;
    assert_eq!(meanwhile, [(Op::GetMany, page_keys.clone())]);
    journal();

    // A new row at the top: the guessed entries still on the page are
    // used, the one that joined it is read after the index query, and the
    // one that left it is not served.
    let top = person(20, "FR", 99);
    db.rows.lock().unwrap().insert(20, top.clone());
    cache.saved(&top).await.unwrap();
    journal();
    let (meanwhile, ids) = list_holding_the_index_query(&cache, &store, &oldest).await;
    assert_eq!(ids, [20, 19, 18, 17, 16]);
    assert_eq!(meanwhile, [(Op::GetMany, page_keys.clone())]);
    let after = journal();
    assert_eq!(after[0], (Op::IndexQuery, vec![]));
    assert_eq!(after[1].0, Op::GetMany);
    assert_eq!(after[1].1.len(), 1, "only the new pk's entry: {after:?}");
    assert!(!page_keys.contains(&after[1].1[0]));
    let page_keys: Vec<String> = std::iter::once(after[1].1[0].clone())
        .chain(page_keys[..4].iter().cloned())
        .collect();
    let (meanwhile, _) = list_holding_the_index_query(&cache, &store, &oldest).await;
    assert_eq!(
        meanwhile,
        [(Op::GetMany, page_keys.clone())],
        "the new page guessed"
    );
    journal();

    // Every row of the page deleted: the guess held none of the new page,
    // so the next list sends none, and the one after guesses again.
    for id in 16..=20 {
        let gone = db.rows.lock().unwrap().remove(&id).unwrap();
        cache.deleted(&gone).await.unwrap();
    }
    let (meanwhile, ids) = list_holding_the_index_query(&cache, &store, &oldest).await;
    assert_eq!(ids, [15, 14, 13, 12, 11]);
    assert_eq!(meanwhile, [(Op::GetMany, page_keys)]);
    let after = journal();
    assert_eq!(after.len(), 2, "{after:?}");
    let (op, page_keys) = after[1].clone();
    assert_eq!((op, page_keys.len()), (Op::GetMany, 5));
    let (meanwhile, ids) = list_holding_the_index_query(&cache, &store, &oldest).await;
    assert_eq!(ids, [15, 14, 13, 12, 11]);
    assert!(meanwhile.is_empty(), "a guess that missed is skipped once");
    assert_eq!(
        journal(),
        [(Op::IndexQuery, vec![]), (Op::GetMany, page_keys.clone())]
    );
    let (meanwhile, _) = list_holding_the_index_query(&cache, &store, &oldest).await;
    assert_eq!(meanwhile, [(Op::GetMany, page_keys)]);

    // Another page, or only the pks, guesses nothing of this one.
    journal();
    let (meanwhile, ids) =
        list_holding_the_index_query(&cache, &store, &oldest.clone().offset(5)).await;
    assert_eq!(ids, [10, 9, 8, 7, 6]);
    assert!(meanwhile.is_empty(), "{meanwhile:?}");
    journal();
    let pks = cache.query_pks(&oldest).await.unwrap();
    assert_eq!(pks.items, [15, 14, 13, 12, 11]);
    assert_eq!(journal(), [(Op::IndexQuery, vec![])]);
}

/// A guessed read that fails fails nothing: the list is answered from the
/// index and the loader, and the store, which just failed, is not read
/// again for the page's entries.
#[tokio::test]
async fn a_list_whose_guessed_read_fails_loads_its_page_without_reading_the_store_again() {
    let store = Faulty::new(Journaled::new(MemoryStore::new()));
    let (_db, cache, oldest) = twenty_people_oldest_first(store.clone()).await;
    cache.query_json(&oldest).await.unwrap();
    store.inner().take();

    let failed = store.hold_next_reply(Op::GetMany, true);
    let list = tokio::spawn({
        let (cache, oldest) = (cache.clone(), oldest.clone());
        async move { cache.query(&oldest).await }
    });
    failed.reached.await.unwrap();
    failed.release.send(()).unwrap();
    let loads = cache.stats().loader_calls;
    let page = list.await.unwrap().unwrap();
    assert_eq!(
        page.items.iter().map(|p| p.id).collect::<Vec<_>>(),
        [19, 18, 17, 16, 15]
    );
    assert_eq!(page.source, Source::Cache, "the page is the index's");
    let mut calls: Vec<Op> = reads(store.inner().take())
        .into_iter()
        .map(|(op, _)| op)
        .collect();
    calls.sort_by_key(|op| format!("{op:?}"));
    assert_eq!(
        calls,
        [Op::GetMany, Op::IndexQuery],
        "the guess and the index query only"
    );
    assert_eq!(cache.stats().loader_calls, loads + 1, "the page loaded");
    assert_eq!(cache.stats().store_errors, 1);
}

/// The people who joined by `day` (a bound that moves, like "published
/// by now"), latest first.
fn joined_by(day: i64) -> Query<Person> {
    Query::<Person>::new()
        .lte("joined", Utc.timestamp_opt(1_700_000_000 + day, 0).unwrap())
        .order_by_desc("joined")
        .limit(5)
}

/// Twenty people who joined a second apart, in a warmed cache over `store`.
async fn twenty_people_joined_a_second_apart(store: impl Store) -> Cache {
    let db = Db::default();
    for id in 0..20 {
        let mut p = person(id, "FR", 30);
        p.joined = Utc.timestamp_opt(1_700_000_000 + id, 0).unwrap();
        db.rows.lock().unwrap().insert(id, p);
    }
    let cache = cache_over(store, &db);
    cache.warm::<Person>().await.unwrap();
    cache
}

/// A list whose range bound moves on every request ("joined by now") is
/// never the same query twice, yet its page is the last one's: the
/// entries are read with the index query all the same.
#[tokio::test]
async fn a_list_by_a_moving_bound_reads_its_last_pages_entries_with_its_index_query() {
    let store = Faulty::new(Journaled::new(MemoryStore::new()));
    let cache = twenty_people_joined_a_second_apart(store.clone()).await;
    store.inner().take();
    let (meanwhile, ids) = list_holding_the_index_query(&cache, &store, &joined_by(100)).await;
    assert_eq!(ids, [19, 18, 17, 16, 15]);
    assert!(meanwhile.is_empty(), "nothing to guess yet: {meanwhile:?}");
    store.inner().take();
    let loads = cache.stats().loader_calls;
    for day in 101..110 {
        let (meanwhile, ids) = list_holding_the_index_query(&cache, &store, &joined_by(day)).await;
        assert_eq!(ids, [19, 18, 17, 16, 15]);
        assert_eq!(meanwhile.len(), 1, "day {day}: {meanwhile:?}");
        assert_eq!((meanwhile[0].0, meanwhile[0].1.len()), (Op::GetMany, 5));
        let after = reads(store.inner().take());
        assert_eq!(
            after,
            [(Op::IndexQuery, vec![])],
            "nothing read after the page"
        );
    }
    assert_eq!(cache.stats().loader_calls, loads, "every entry was a hit");
    // A bound that leaves people out: their entries are not served, and
    // the page the guess read for them is not trusted.
    let (_, ids) = list_holding_the_index_query(&cache, &store, &joined_by(17)).await;
    assert_eq!(ids, [17, 16, 15, 14, 13]);
    let (_, ids) = list_holding_the_index_query(&cache, &store, &joined_by(100)).await;
    assert_eq!(ids, [19, 18, 17, 16, 15]);
}

/// On Redis, a page whose only filter is a range of its own order is read
/// with plain commands (`ZCOUNT`, `ZRANGE ... BYSCORE`) in one transaction,
/// not the query script, and its entries go in the same round trip.
#[tokio::test]
async fn on_redis_a_range_of_the_order_is_read_without_the_query_script() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let cache = twenty_people_joined_a_second_apart(store).await;
    cache.query_json(&joined_by(100)).await.unwrap();
    cache.settle().await;
    // The guess (the last page's entries) is read with the index query;
    // the entries of a new page the guess did not hold, after it.
    let lists: [(i64, &[i64], u64, u64); 2] = [
        (101, &[19, 18, 17, 16, 15], 20, 1),
        (3, &[3, 2, 1, 0], 4, 2),
    ];
    for (day, expected, total, mgets) in lists {
        server.reset_stats();
        let page = cache.query(&joined_by(day)).await.unwrap();
        let ids: Vec<i64> = page.items.iter().map(|p| p.id).collect();
        assert_eq!((ids.as_slice(), page.count), (expected, total), "day {day}");
        let commands = server.data_commands();
        let count = |c: &str| commands.get(c).copied().unwrap_or(0);
        assert_eq!(
            (
                count("evalsha"),
                count("exec"),
                count("zcount"),
                count("zrange")
            ),
            (0, 1, 1, 1),
            "day {day}: {commands:?}"
        );
        assert_eq!(count("mget"), mgets, "day {day}: {commands:?}");
    }
}

/// On Redis, a list read again while the index is at the version its last
/// page was read at gets the count alone, not the page's members (no
/// `ZRANGE`); any change to the index, from this process or another, is a
/// new version, and the page is read again.
#[tokio::test]
async fn on_redis_a_page_read_again_at_the_same_index_version_is_not_sent_again() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let (db, cache, oldest) = twenty_people_oldest_first(store).await;
    // Another process writing the same database and Redis.
    let other = cache_over(RedisStore::connect(&server.url()).await.unwrap(), &db);
    other.warm::<Person>().await.unwrap();
    let list = async |expected: &[i64]| {
        server.reset_stats();
        let page = cache.query(&oldest).await.unwrap();
        let ids: Vec<i64> = page.items.iter().map(|p| p.id).collect();
        assert_eq!((ids.as_slice(), page.count), (expected, 20));
        let commands = server.data_commands();
        let count = |c: &str| commands.get(c).copied().unwrap_or(0);
        // (the members were read, by the script or by the transaction)
        (count("zrange") == 1, count("evalsha") > 0, count("mget"))
    };
    let top = [19, 18, 17, 16, 15];
    // First: a plain transaction, which reads the version too; then that
    // version sent, and nothing but the count comes back.
    assert_eq!(
        list(&top).await,
        (true, false, 1),
        "the entries after the page"
    );
    for _ in 0..3 {
        assert_eq!(list(&top).await, (false, true, 1), "unchanged");
    }
    // A save that changes nothing the index holds leaves the version alone
    // (every field of `Person` is indexed: a save of the same state).
    let same = db.rows.lock().unwrap()[&17].clone();
    other.saved(&same).await.unwrap();
    assert_eq!(list(&top).await, (false, true, 1), "no index change");
    // Another process moves someone to the top: a new version, the page is
    // read again (by the script that found the version changed), then once
    // plainly, then the new version holds.
    let mut older = db.rows.lock().unwrap()[&3].clone();
    older.age = 99;
    db.rows.lock().unwrap().insert(3, older.clone());
    other.saved(&older).await.unwrap();
    let moved = [3, 19, 18, 17, 16];
    assert!(list(&moved).await.0, "read again after a write");
    assert_eq!(list(&moved).await, (true, false, 1), "plain, once");
    assert_eq!(list(&moved).await, (false, true, 1), "unchanged again");
    // A version the server lost is never equal to one read before.
    let _: () = redis::cmd("EVAL")
        .arg(
            "for _, k in ipairs(redis.call('KEYS', '*idx:Person*ver')) do redis.call('DEL', k) end",
        )
        .arg(0)
        .query(&mut server.connection())
        .unwrap();
    assert!(list(&moved).await.0, "no version: the page is read");
}

/// On Redis the guessed multi-get goes out before the index query's reply
/// is back (pipelined on the one connection): Redis runs the `MGET` while
/// the query is held before it reaches the store, which a list that waited
/// for its page could never do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_a_repeated_lists_multi_get_does_not_wait_for_its_index_query() {
    let server = RedisServer::start();
    let store = Faulty::new(RedisStore::connect(&server.url()).await.unwrap());
    let (_db, cache, oldest) = twenty_people_oldest_first(store.clone()).await;
    cache.query_json(&oldest).await.unwrap();
    let monitor = server.monitor();
    let loads = cache.stats().loader_calls;

    let held = store.hold_next(Op::IndexQuery);
    let list = tokio::spawn({
        let (cache, oldest) = (cache.clone(), oldest.clone());
        async move { cache.query(&oldest).await.unwrap() }
    });
    held.reached.await.unwrap();
    let sent = poll::eventually(async || monitor.client_commands().contains_key("mget")).await;
    assert!(sent, "the entries are read while the index query is out");
    let sent = monitor.client_commands();
    assert!(
        !sent.contains_key("evalsha") && !sent.contains_key("exec"),
        "{sent:?}"
    );
    held.release.send(()).unwrap();
    let page = list.await.unwrap();
    assert_eq!(
        page.items.iter().map(|p| p.id).collect::<Vec<_>>(),
        [19, 18, 17, 16, 15]
    );
    // The index query: the page's version sent, the count alone back.
    let sent = monitor.client_commands();
    assert_eq!(
        (
            sent.get("mget"),
            sent.contains_key("evalsha"),
            sent.get("zrange")
        ),
        (Some(&1), true, None),
        "{sent:?}"
    );
    assert_eq!(cache.stats().loader_calls, loads, "every entry was a hit");
}

/// A `MemoryStore` whose index leases fail while switched on.
fn flaky_index_cache(db: &Db) -> (Cache, Faulty<MemoryStore>) {
    let store = Faulty::new(MemoryStore::new());
    let cache = Cache::builder()
        .store(store.clone())
        .loader::<Person>(db.clone())
        .loader::<Team>(db.clone())
        .store_retry_interval(Duration::from_millis(5))
        .build()
        .unwrap();
    (cache, store)
}

#[tokio::test]
async fn a_write_the_index_missed_is_reindexed_when_the_store_answers_again() {
    let db = Db::default();
    for id in 0..6 {
        db.rows.lock().unwrap().insert(id, person(id, "FR", 30));
    }
    let (cache, store) = flaky_index_cache(&db);
    let mut events = cache.events();
    cache.warm::<Person>().await.unwrap();
    let gb = Query::<Person>::new().filter("country", "GB");
    let fr = Query::<Person>::new().filter("country", "FR");
    assert_eq!(cache.query_pks(&gb).await.unwrap().source, Source::Cache);

    store.fail_index_lease(true);
    let moved = person(2, "GB", 30);
    db.rows.lock().unwrap().insert(2, moved.clone());
    cache.saved(&moved).await.unwrap();
    assert_eq!(cache.stats().index_updates_missed, 1);
    // Queued: until it is delivered, the loader answers, correctly.
    let found = cache.query_pks(&gb).await.unwrap();
    assert_eq!(
        (found.items, found.count, found.source),
        (vec![2], 1, Source::Database)
    );
    store.fail_index_lease(false);
    tokio::time::timeout(Duration::from_secs(20), async {
        while !matches!(
            events.recv().await,
            Ok(cached_instances::Event::InvalidationsDelivered { .. })
        ) {}
    })
    .await
    .expect("never delivered");

    // Delivered by the recovery task: re-indexed, and still warmed.
    let found = cache.query_pks(&gb).await.unwrap();
    assert_eq!(
        (found.items, found.count, found.source),
        (vec![2], 1, Source::Cache)
    );
    let found = cache.query_pks(&fr).await.unwrap();
    assert_eq!(
        (found.items, found.count, found.source),
        (vec![0, 1, 3, 4, 5], 5, Source::Cache)
    );
    let stats = cache.stats();
    assert_eq!((stats.reindexes, stats.unwarmed), (1, 0), "{stats:?}");
}

#[tokio::test]
async fn a_reindex_that_fails_again_unwarms_the_model_until_the_next_warm() {
    let db = Db::default();
    for id in 0..6 {
        db.rows.lock().unwrap().insert(id, person(id, "FR", 30));
    }
    let (cache, store) = flaky_index_cache(&db);
    cache.warm::<Person>().await.unwrap();
    let query = Query::<Person>::new().filter("country", "GB");

    store.fail_index_lease(true);
    let moved = person(2, "GB", 30);
    db.rows.lock().unwrap().insert(2, moved.clone());
    cache.saved(&moved).await.unwrap();
    // The store is tried again while the index still fails: the re-index
    // fails, and the model is un-warmed (the mark's deletion is queued).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while cache.stats().unwarmed == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never un-warmed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let found = cache.query_pks(&query).await.unwrap();
    assert_eq!(
        (found.items, found.count, found.source),
        (vec![2], 1, Source::Database)
    );
    let stats = cache.stats();
    assert_eq!((stats.reindexes, stats.unwarmed), (0, 1), "{stats:?}");
    store.fail_index_lease(false);
    tokio::time::sleep(Duration::from_millis(10)).await;

    // The loader answers, correctly, until the model is warmed again.
    for _ in 0..2 {
        let found = cache.query_pks(&query).await.unwrap();
        assert_eq!(
            (found.items, found.count, found.source),
            (vec![2], 1, Source::Database)
        );
    }
    cache.warm::<Person>().await.unwrap();
    let found = cache.query_pks(&query).await.unwrap();
    assert_eq!(
        (found.items, found.count, found.source),
        (vec![2], 1, Source::Cache)
    );
}

#[tokio::test]
async fn warm_of_a_model_without_query_fields_is_an_error_that_says_so() {
    // Team declares no index, sortable or search field: nothing to index.
    struct Teams(Arc<Mutex<usize>>);
    impl Loader<Team> for Teams {
        async fn load(&self, pks: &[i64]) -> Result<Vec<Team>, LoadError> {
            *self.0.lock().unwrap() += 1;
            Ok(pks.iter().map(|&id| Team { id }).collect())
        }
        async fn all_pks(&self) -> Result<Option<Vec<i64>>, LoadError> {
            *self.0.lock().unwrap() += 1;
            Ok(Some(vec![1, 2, 3, 4]))
        }
    }
    let calls = Arc::new(Mutex::new(0));
    let cache = Cache::builder()
        .loader::<Team>(Teams(calls.clone()))
        .build()
        .unwrap();
    let error = cache.warm::<Team>().await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::Query(QueryError::NothingToIndex { model: "Team" })
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("no index to warm"), "{error}");
    assert_eq!(*calls.lock().unwrap(), 0, "no loader call for nothing");
    assert_eq!(cache.stats().loader_calls, 0);
}
