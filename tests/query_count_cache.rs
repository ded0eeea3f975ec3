//! The count cache of cached queries (see the `store` module docs): the
//! counts a query computes with more than O(1) work (intersections, range
//! filters, search terms over several fields) are kept in the model's index
//! and reused until the index changes. These tests check that it stays
//! exact (differential tests against a naive count, with index updates,
//! removals, no-op updates and stale leases interleaved, on the
//! `MemoryStore` and on a real Redis server started by the test), and that
//! it is used: on Redis, `INFO commandstats` shows a repeated query does not
//! intersect the sets again, until a write changes the index.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use cached_instances::query::{Query, Source};
use cached_instances::store::{IndexQuery, IndexRecord, IndexStore, IndexUpdate, ScoreRange};
use cached_instances::{Cache, CachedInstance, LoadError, Loader, MemoryStore, RedisStore, Store};
use cached_instances_testkit::redis_server::RedisServer;
use cached_instances_testkit::rng::Rng;

// ---------------------------------------------------------------------------
// Store level: random records, random filters, checked against a naive
// evaluation of the same records.

/// The set families of the random index: `e:<field>:<term>` sets of exact
/// fields, and `t:bio:<word>` sets (a member can be in several).
const FIELDS: &[(&str, u64)] = &[("a", 3), ("b", 4), ("c", 2)];
const WORDS: u64 = 5;
const ZSETS: &[&str] = &["s:p", "s:q"];
/// Few distinct scores, so that ties and range bounds are hit; `+inf` is a
/// `None` value.
const SCORES: &[f64] = &[-1.5, 0.0, 0.5, 1.0, 2.0, f64::INFINITY];
const PREFIX: &str = "ci:{idx:CountCache}:1:0:";

#[derive(Debug, Clone, PartialEq)]
struct Rec {
    sets: BTreeSet<String>,
    scores: BTreeMap<String, f64>,
}

impl Rec {
    fn random(rng: &mut Rng) -> Rec {
        let mut sets = BTreeSet::new();
        for (field, terms) in FIELDS {
            sets.insert(format!("e:{field}:{}", rng.below(*terms)));
        }
        for w in 0..WORDS {
            if rng.chance(35) {
                sets.insert(format!("t:bio:w{w}"));
            }
        }
        // Every member is in every sorted set, as the cache indexes them.
        let scores = ZSETS
            .iter()
            .map(|z| ((*z).to_owned(), *rng.pick(SCORES)))
            .collect();
        Rec { sets, scores }
    }

    fn record(&self) -> IndexRecord {
        IndexRecord::new(
            self.sets.iter().cloned().collect(),
            self.scores.iter().map(|(z, s)| (z.clone(), *s)).collect(),
        )
    }
}

/// A random group: one exact set, or a search term's sets over several
/// fields (any of them).
fn random_group(rng: &mut Rng) -> Vec<String> {
    if rng.chance(70) {
        let (field, terms) = *rng.pick(FIELDS);
        vec![format!("e:{field}:{}", rng.below(terms))]
    } else {
        let w = rng.below(WORDS);
        let mut g = vec![format!("t:bio:w{w}"), format!("e:a:{}", rng.below(3))];
        if rng.chance(50) {
            g.push(format!("t:bio:w{}", rng.below(WORDS)));
        }
        g
    }
}

fn random_bound(rng: &mut Rng) -> Bound<f64> {
    match rng.below(3) {
        0 => Bound::Unbounded,
        1 => Bound::Included(*rng.pick(SCORES)),
        _ => Bound::Excluded(*rng.pick(SCORES)),
    }
}

/// Filters with at least two conditions (the counts worth caching), plus
/// a few with one set and a range, or ranges alone.
fn random_filters(rng: &mut Rng) -> (Vec<Vec<String>>, Vec<ScoreRange>) {
    let (ngroups, nranges) = match rng.below(10) {
        0 => (1, 1),
        1 => (0, 1 + rng.below(2)),
        2 => (1, 0),
        _ => (2 + rng.below(2), rng.below(2)),
    };
    let groups = (0..ngroups).map(|_| random_group(rng)).collect();
    let ranges = (0..nranges)
        .map(|_| {
            ScoreRange::new(
                (*rng.pick(ZSETS)).to_owned(),
                random_bound(rng),
                random_bound(rng),
            )
        })
        .collect();
    (groups, ranges)
}

/// The same filters in another order (groups, sets within groups, ranges):
/// they must share the cached count.
fn shuffled(rng: &mut Rng, filters: &(Vec<Vec<String>>, Vec<ScoreRange>)) -> IndexQuery {
    let mut groups = filters.0.clone();
    for g in &mut groups {
        let by = rng.below(g.len() as u64) as usize;
        g.rotate_left(by);
    }
    if !groups.is_empty() {
        let by = rng.below(groups.len() as u64) as usize;
        groups.rotate_left(by);
    }
    let mut ranges = filters.1.clone();
    if !ranges.is_empty() {
        let by = rng.below(ranges.len() as u64) as usize;
        ranges.rotate_left(by);
    }
    let mut query = IndexQuery::default();
    query.groups = groups;
    query.ranges = ranges;
    query.order = match rng.below(3) {
        0 => None,
        k => Some(ZSETS[k as usize - 1].to_owned()),
    };
    query.descending = rng.chance(50);
    query.offset = if rng.chance(70) { 0 } else { rng.below(6) };
    query.limit = match rng.below(6) {
        0 => None,
        1 => Some(0),
        _ => Some(1 + rng.below(10)),
    };
    // The test does not mark the index warm.
    query.ignore_warm = true;
    query
}

/// The answer from the records alone: the members in a set of every group
/// and in every range, ordered by score (`+inf` when missing), ties by
/// member, both reversed when descending; then the page.
fn naive(records: &BTreeMap<String, Rec>, query: &IndexQuery) -> (Vec<String>, u64) {
    let mut matched: Vec<(f64, &String)> = records
        .iter()
        .filter(|(_, r)| {
            query
                .groups
                .iter()
                .all(|g| g.iter().any(|s| r.sets.contains(s)))
                && query.ranges.iter().all(|range| {
                    r.scores
                        .get(&range.zset)
                        .is_some_and(|s| range.contains(*s))
                })
        })
        .map(|(m, r)| {
            let score = match &query.order {
                Some(z) => r.scores.get(z).copied().unwrap_or(f64::INFINITY),
                None => 0.0,
            };
            (score, m)
        })
        .collect();
    matched.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    if query.descending {
        matched.reverse();
    }
    let total = matched.len() as u64;
    let page = matched
        .into_iter()
        .skip(query.offset as usize)
        .take(query.limit.map_or(usize::MAX, |l| l as usize))
        .map(|(_, m)| m.clone())
        .collect();
    (page, total)
}

async fn write(store: &impl IndexStore, token: &[u8], update: IndexUpdate) -> bool {
    let members = [update.member.clone()];
    store.index_lease(PREFIX, &members, token).await.unwrap();
    let applied = store.index_apply(PREFIX, token, &[update]).await.unwrap();
    applied == [true]
}

/// Random records, then random queries from a small pool of filters (so
/// that the same filters come back, in another order, with another
/// ordering and page) interleaved with updates, removals, updates of
/// scores only, updates that change nothing, and stale updates (their
/// lease taken over) that must not apply; every answer, count and page,
/// equals the naive one.
async fn differential(store: impl IndexStore, seed: u64, steps: usize) {
    let mut rng = Rng::new(seed);
    let mut records: BTreeMap<String, Rec> = BTreeMap::new();
    let members: Vec<String> = (0..40).map(|i| format!("{i:03}")).collect();
    for member in &members {
        if rng.chance(85) {
            let rec = Rec::random(&mut rng);
            assert!(
                write(
                    &store,
                    b"seed",
                    IndexUpdate::new(member.clone(), Some(rec.record()))
                )
                .await
            );
            records.insert(member.clone(), rec);
        }
    }
    let pool: Vec<_> = (0..8).map(|_| random_filters(&mut rng)).collect();
    for step in 0..steps {
        let context = format!("seed {seed}, step {step}");
        match rng.below(10) {
            0 => {
                let member = rng.pick(&members).clone();
                let rec = Rec::random(&mut rng);
                let update = IndexUpdate::new(member.clone(), Some(rec.record()));
                assert!(write(&store, b"w", update).await, "{context}");
                records.insert(member, rec);
            }
            1 => {
                let member = rng.pick(&members).clone();
                let update = IndexUpdate::new(member.clone(), None);
                assert!(write(&store, b"w", update).await, "{context}");
                records.remove(&member);
            }
            2 => {
                // The same record again: nothing changes, the cached counts
                // stay (and must stay right).
                let member = rng.pick(&members).clone();
                let update =
                    IndexUpdate::new(member.clone(), records.get(&member).map(Rec::record));
                assert!(write(&store, b"w", update).await, "{context}");
            }
            3 if rng.chance(50) => {
                // Only scores change: the sets stay, the ranges' counts do
                // not.
                let member = rng.pick(&members).clone();
                if let Some(mut rec) = records.get(&member).cloned() {
                    for score in rec.scores.values_mut() {
                        *score = *rng.pick(SCORES);
                    }
                    let update = IndexUpdate::new(member.clone(), Some(rec.record()));
                    assert!(write(&store, b"w", update).await, "{context}");
                    records.insert(member, rec);
                }
            }
            3 => {
                // A stale update: another writer took the lease over.
                let member = rng.pick(&members).clone();
                let lease = [member.clone()];
                store.index_lease(PREFIX, &lease, b"old").await.unwrap();
                store.index_lease(PREFIX, &lease, b"new").await.unwrap();
                let update = IndexUpdate::new(member.clone(), Some(Rec::random(&mut rng).record()));
                let applied = store.index_apply(PREFIX, b"old", &[update]).await.unwrap();
                assert_eq!(applied, [false], "{context}");
            }
            _ => {
                let filters = rng.pick(&pool).clone();
                // Twice in a row, differently shaped: the second reads the
                // count the first cached.
                for _ in 0..2 {
                    let query = shuffled(&mut rng, &filters);
                    let page = store.index_query(PREFIX, &query).await.unwrap();
                    let page = page.expect("ignore_warm answers");
                    assert_eq!(
                        (page.members, page.total),
                        naive(&records, &query),
                        "{context}: {query:?}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn memory_store_counts_stay_exact_through_index_changes() {
    for seed in 0..40 {
        differential(MemoryStore::new(), seed, 300).await;
    }
}

#[tokio::test]
async fn redis_store_counts_stay_exact_through_index_changes() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    for seed in 0..40 {
        let _: () = redis::cmd("FLUSHALL")
            .query(&mut server.connection())
            .unwrap();
        differential(store.clone(), seed, 300).await;
    }
}

// ---------------------------------------------------------------------------
// Cache level: a model warmed from a loader, queried with two and more
// filters, written through `saved` / `deleted`.

#[derive(CachedInstance, Debug, Clone, PartialEq)]
pub struct Account {
    #[cached(pk)]
    pub id: i64,
    #[cached(index)]
    pub country: String,
    #[cached(index)]
    pub active: bool,
    #[cached(index)]
    pub tier: i32,
    #[cached(sortable)]
    pub score: Option<i32>,
    #[cached(search)]
    pub bio: String,
    /// Not indexed: a save that changes only this leaves the index as it
    /// was, and the cached counts with it.
    pub note: String,
}

const COUNTRIES: &[&str] = &["FR", "GB", "US"];
const BIO_WORDS: &[&str] = &["red", "green", "blue", "gold"];

fn account(rng: &mut Rng, id: i64) -> Account {
    let words: Vec<&str> = BIO_WORDS
        .iter()
        .copied()
        .filter(|_| rng.chance(40))
        .collect();
    Account {
        id,
        country: (*rng.pick(COUNTRIES)).to_owned(),
        active: rng.chance(50),
        tier: rng.below(3) as i32,
        score: rng.chance(90).then(|| rng.below(20) as i32),
        bio: words.join(" "),
        note: format!("note {}", rng.next_u64()),
    }
}

#[derive(Clone, Default)]
struct Db(Arc<Mutex<BTreeMap<i64, Account>>>);

impl Db {
    fn rows(&self) -> Vec<Account> {
        self.0.lock().unwrap().values().cloned().collect()
    }
}

impl Loader<Account> for Db {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Account>, LoadError> {
        let rows = self.0.lock().unwrap();
        Ok(pks.iter().filter_map(|pk| rows.get(pk).cloned()).collect())
    }

    async fn all_pks(&self) -> Result<Option<Vec<i64>>, LoadError> {
        Ok(Some(self.0.lock().unwrap().keys().copied().collect()))
    }
}

/// A query's filters, for `Query` and for the naive evaluation.
#[derive(Debug, Clone)]
struct Filters {
    country: Option<&'static str>,
    active: Option<bool>,
    tier: Option<i32>,
    min_score: Option<i32>,
    word: Option<&'static str>,
}

impl Filters {
    /// At least two conditions.
    fn random(rng: &mut Rng) -> Filters {
        loop {
            let f = Filters {
                country: rng.chance(60).then(|| *rng.pick(COUNTRIES)),
                active: rng.chance(60).then(|| rng.chance(50)),
                tier: rng.chance(40).then(|| rng.below(3) as i32),
                min_score: rng.chance(30).then(|| rng.below(20) as i32),
                word: rng.chance(30).then(|| *rng.pick(BIO_WORDS)),
            };
            let n = [
                f.country.is_some(),
                f.active.is_some(),
                f.tier.is_some(),
                f.min_score.is_some(),
                f.word.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if n >= 2 {
                return f;
            }
        }
    }

    fn matches(&self, a: &Account) -> bool {
        self.country.is_none_or(|c| a.country == c)
            && self.active.is_none_or(|v| a.active == v)
            && self.tier.is_none_or(|t| a.tier == t)
            && self
                .min_score
                .is_none_or(|m| a.score.is_some_and(|s| s >= m))
            && self
                .word
                .is_none_or(|w| a.bio.split_whitespace().any(|x| x == w))
    }

    fn query(&self, desc: bool, limit: u64) -> Query<Account> {
        let mut q = Query::<Account>::new();
        if let Some(c) = self.country {
            q = q.filter("country", c);
        }
        if let Some(a) = self.active {
            q = q.filter("active", a);
        }
        if let Some(t) = self.tier {
            q = q.filter("tier", t);
        }
        if let Some(m) = self.min_score {
            q = q.gte("score", m);
        }
        if let Some(w) = self.word {
            q = q.search(w);
        }
        let q = if desc {
            q.order_by_desc("score")
        } else {
            q.order_by("score")
        };
        q.limit(limit)
    }

    /// The pks of the page and the count, from the rows.
    fn naive(&self, rows: &[Account], desc: bool, limit: u64) -> (Vec<i64>, u64) {
        let mut matched: Vec<&Account> = rows.iter().filter(|a| self.matches(a)).collect();
        // `None` sorts last ascending; ties by pk; descending reverses both.
        let key = |a: &Account| (a.score.map_or(i64::MAX, i64::from), a.id);
        matched.sort_by_key(|a| key(a));
        if desc {
            matched.reverse();
        }
        let count = matched.len() as u64;
        let pks = matched.iter().take(limit as usize).map(|a| a.id).collect();
        (pks, count)
    }
}

async fn cache_differential(store: impl Store, seed: u64) {
    let mut rng = Rng::new(seed);
    let db = Db::default();
    for id in 0..120 {
        let a = account(&mut rng, id);
        db.0.lock().unwrap().insert(id, a);
    }
    let cache = Cache::builder()
        .store(store)
        .loader::<Account>(db.clone())
        .build()
        .unwrap();
    cache.warm::<Account>().batch_size(50).await.unwrap();
    let pool: Vec<Filters> = (0..6).map(|_| Filters::random(&mut rng)).collect();
    for step in 0..150 {
        let context = format!("seed {seed}, step {step}");
        match rng.below(8) {
            0 => {
                // A write that changes indexed fields (most likely).
                let id = rng.below(130) as i64;
                let a = account(&mut rng, id);
                db.0.lock().unwrap().insert(id, a.clone());
                cache.saved(&a).await.unwrap();
            }
            1 => {
                // A write of an unindexed field only.
                let id = rng.below(120) as i64;
                let changed = db.0.lock().unwrap().get_mut(&id).map(|a| {
                    a.note = format!("edited {}", rng.next_u64());
                    a.clone()
                });
                if let Some(a) = changed {
                    cache.saved(&a).await.unwrap();
                }
            }
            2 if rng.chance(50) => {
                // A write of the sortable field only.
                let id = rng.below(120) as i64;
                let changed = db.0.lock().unwrap().get_mut(&id).map(|a| {
                    a.score = rng.chance(90).then(|| rng.below(20) as i32);
                    a.clone()
                });
                if let Some(a) = changed {
                    cache.saved(&a).await.unwrap();
                }
            }
            2 => {
                let id = rng.below(130) as i64;
                let removed = db.0.lock().unwrap().remove(&id);
                if let Some(a) = removed {
                    cache.deleted(&a).await.unwrap();
                }
            }
            _ => {
                let filters = rng.pick(&pool).clone();
                for _ in 0..2 {
                    let desc = rng.chance(50);
                    let limit = rng.below(12);
                    let found = cache.query_pks(&filters.query(desc, limit)).await.unwrap();
                    assert_eq!(found.source, Source::Cache, "{context}");
                    assert_eq!(
                        (found.items, found.count),
                        filters.naive(&db.rows(), desc, limit),
                        "{context}: {filters:?} desc {desc} limit {limit}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn memory_store_cached_query_counts_match_the_rows() {
    for seed in 0..10 {
        cache_differential(MemoryStore::new(), seed).await;
    }
}

#[tokio::test]
async fn redis_store_cached_query_counts_match_the_rows() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    for seed in 0..10 {
        let _: () = redis::cmd("FLUSHALL")
            .query(&mut server.connection())
            .unwrap();
        cache_differential(store.clone(), seed).await;
    }
}

// ---------------------------------------------------------------------------
// The work the cache saves, counted by Redis.

fn calls(server: &RedisServer, command: &str) -> u64 {
    server.command_stats().get(command).copied().unwrap_or(0)
}

/// `country = ? AND active ORDER BY score DESC LIMIT 5`: the first query
/// intersects the sets (`SINTERCARD`), the next ones read the cached count;
/// a save that changes an indexed field makes the next query intersect
/// again, a save of an unindexed field does not. A range-filtered query
/// reads its candidates (`SMEMBERS`) the first time only: then, with the
/// count known, it walks the order instead.
#[tokio::test]
async fn a_repeated_query_reuses_its_count_until_the_index_changes() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let db = Db::default();
    let mut rng = Rng::new(7);
    for id in 0..400 {
        let mut a = account(&mut rng, id);
        a.country = COUNTRIES[id as usize % 2].to_owned();
        a.active = id % 3 != 0;
        a.score = Some(id as i32);
        db.0.lock().unwrap().insert(id, a);
    }
    let cache = Cache::builder()
        .store(store)
        .loader::<Account>(db.clone())
        .build()
        .unwrap();
    cache.warm::<Account>().await.unwrap();
    let both = Query::<Account>::new()
        .filter("country", "FR")
        .filter("active", true)
        .order_by_desc("score")
        .limit(5);
    let expected = |db: &Db| {
        db.rows()
            .iter()
            .filter(|a| a.country == "FR" && a.active)
            .count() as u64
    };

    server.reset_stats();
    let first = cache.query_pks(&both).await.unwrap();
    assert_eq!(first.count, expected(&db));
    assert_eq!(calls(&server, "sintercard"), 1);
    for _ in 0..3 {
        let again = cache.query_pks(&both).await.unwrap();
        assert_eq!(
            (again.items.clone(), again.count),
            (first.items.clone(), first.count)
        );
    }
    // The same filters with another page and order share the count.
    let other = cache
        .query_pks(&both.clone().order_by("score").offset(3).limit(2))
        .await
        .unwrap();
    assert_eq!(other.count, first.count);
    assert_eq!(calls(&server, "sintercard"), 1, "the count was cached");

    // An unindexed field changes: the index does not, the count stays.
    let mut a = db.0.lock().unwrap()[&2].clone();
    a.note = "edited".to_owned();
    db.0.lock().unwrap().insert(2, a.clone());
    cache.saved(&a).await.unwrap();
    assert_eq!(cache.query_pks(&both).await.unwrap().count, expected(&db));
    assert_eq!(
        calls(&server, "sintercard"),
        1,
        "an unindexed save keeps it"
    );

    // An indexed field changes (id 6 is in FR, inactive): computed again.
    let mut a = db.0.lock().unwrap()[&6].clone();
    assert!(a.country == "FR" && !a.active);
    a.active = true;
    db.0.lock().unwrap().insert(6, a.clone());
    cache.saved(&a).await.unwrap();
    let after = cache.query_pks(&both).await.unwrap();
    assert_eq!(after.count, first.count + 1);
    assert_eq!(after.count, expected(&db));
    assert_eq!(calls(&server, "sintercard"), 2, "a write recomputes it");
    cache.query_pks(&both).await.unwrap();
    assert_eq!(calls(&server, "sintercard"), 2, "and caches it again");

    // A delete changes the index too.
    let gone = db.0.lock().unwrap().remove(&4).unwrap();
    assert!(gone.country == "FR" && gone.active);
    cache.deleted(&gone).await.unwrap();
    assert_eq!(cache.query_pks(&both).await.unwrap().count, expected(&db));
    assert_eq!(calls(&server, "sintercard"), 3);

    // A set and a range: materialized and counted the first time, walked
    // with the cached count after.
    let ranged = Query::<Account>::new()
        .filter("country", "GB")
        .gte("score", 100)
        .order_by_desc("score")
        .limit(5);
    let expected_ranged = db
        .rows()
        .iter()
        .filter(|a| a.country == "GB" && a.score.is_some_and(|s| s >= 100))
        .count() as u64;
    server.reset_stats();
    let first = cache.query_pks(&ranged).await.unwrap();
    assert_eq!(first.count, expected_ranged);
    assert_eq!(calls(&server, "smembers"), 1);
    let again = cache.query_pks(&ranged).await.unwrap();
    assert_eq!((again.items, again.count), (first.items, first.count));
    assert_eq!(calls(&server, "smembers"), 1, "the count was cached");
}

/// The count cache holds at most 10 000 counts: the next one clears it
/// first (and is then cached alone), so distinct filters cannot grow it
/// without bound; counts stay right throughout.
#[tokio::test]
async fn the_redis_count_cache_is_bounded() {
    const COUNTS_MAX: u64 = 10_000;
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    for i in 0..10u32 {
        let rec = IndexRecord::new(
            vec![format!("e:a:{}", i % 2)],
            vec![("s:p".to_owned(), f64::from(i))],
        );
        assert!(write(&store, b"seed", IndexUpdate::new(format!("{i}"), Some(rec))).await);
    }
    // Ranges on a sorted set that is not the order: counted by reading the
    // members, so cached; each minimum makes other filters.
    let ranged = |min: u64| {
        let mut query = IndexQuery::default();
        query.ranges = vec![ScoreRange::new(
            "s:p".to_owned(),
            Bound::Included(min as f64),
            Bound::Unbounded,
        )];
        query.limit = Some(1);
        query.ignore_warm = true;
        query
    };
    let hlen = || -> u64 {
        redis::cmd("HLEN")
            .arg(format!("{PREFIX}counts"))
            .query(&mut server.connection())
            .unwrap()
    };
    for min in 0..COUNTS_MAX {
        let page = store.index_query(PREFIX, &ranged(min)).await.unwrap();
        assert_eq!(page.unwrap().total, 10u64.saturating_sub(min));
    }
    assert_eq!(hlen(), COUNTS_MAX);
    let page = store
        .index_query(PREFIX, &ranged(COUNTS_MAX))
        .await
        .unwrap();
    assert_eq!(page.unwrap().total, 0);
    assert_eq!(hlen(), 1);
    let page = store.index_query(PREFIX, &ranged(4)).await.unwrap();
    assert_eq!(page.unwrap().total, 6);
    assert_eq!(hlen(), 2);
}
