//! Hostile input: primary keys made of the characters a key layout fears,
//! an instance too large to cache, and cascades down a chain longer than
//! `max_cascade_depth` and around a cycle. (Hostile *bytes* under a key are
//! the `hostile_bytes_are_a_miss_for_every_read_and_are_overwritten`
//! scenario of `cached_instances_testkit::scenarios`, run on every store.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cached_instances::{
    Cache, CachedInstance, LoadError, Loader, MemoryStore, PrimaryKey, RedisStore, Target,
};
use cached_instances_testkit::memdb::MemDb;
use cached_instances_testkit::redis_server::RedisServer;
use polls::{Choice, Question, User};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// String primary keys

/// A model keyed by an arbitrary string.
#[derive(CachedInstance, Debug, Clone, PartialEq)]
#[cached(model = "Tag")]
pub struct Tag {
    #[cached(pk)]
    pub name: String,
    pub chars: i64,
}

/// Every tag exists; its row says how many chars its name has.
#[derive(Clone, Default)]
struct Tags {
    calls: Arc<AtomicUsize>,
}

impl Loader<Tag> for Tags {
    async fn load(&self, pks: &[String]) -> Result<Vec<Tag>, LoadError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(pks.iter().map(|pk| tag(pk)).collect())
    }
}

fn tag(name: &str) -> Tag {
    Tag {
        name: name.to_owned(),
        chars: name.chars().count() as i64,
    }
}

/// The pks a key layout fears most.
fn nasty_pks() -> Vec<String> {
    let mut pks: Vec<String> = [
        "",
        "s",
        "ss",
        ":",
        "::",
        "{",
        "}",
        "{}",
        "{a}",
        "}{",
        "a:b",
        "ci:{Tag:1}:default",
        " ",
        "  ",
        "\t",
        "\r\n",
        "\n",
        "\0",
        "\u{7f}",
        "%",
        "%%",
        "%41",
        "A",
        "%3A",
        ":A",
        "é",
        "✓",
        "🦀",
        "e\u{301}",
        "\u{feff}",
        "\u{2028}",
        "a b",
        "1",
        "-1",
        "null",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    pks.push("x".repeat(10_000));
    pks.push("{".repeat(10_000));
    pks.push("🦀:".repeat(2_500));
    pks
}

fn assert_key_form_is_safe(pk: &str) {
    let key = pk.to_string().to_key();
    assert!(
        !key.contains([':', '{', '}']) && !key.chars().any(|c| c.is_whitespace() || c.is_control()),
        "{pk:?} -> {key:?}"
    );
    assert_eq!(
        String::from_key(&key).as_deref(),
        Some(pk),
        "round trip of {pk:?}"
    );
}

#[test]
fn nasty_string_pks_have_safe_distinct_key_forms() {
    let pks = nasty_pks();
    let mut seen = HashMap::new();
    for pk in &pks {
        assert_key_form_is_safe(pk);
        if let Some(other) = seen.insert(pk.to_key(), pk) {
            panic!("{pk:?} and {other:?} share a key form");
        }
    }
    // The store key keeps one hash tag around the escaped pk.
    let cache = Cache::builder()
        .loader::<Tag>(Tags::default())
        .build()
        .unwrap();
    for pk in &pks {
        let key = cache.key_of::<Tag>(pk).unwrap();
        assert_eq!(key.matches('{').count(), 1, "{key}");
        assert_eq!(key.matches('}').count(), 1, "{key}");
        assert!(key.starts_with("ci:{Tag:s"), "{key}");
    }
}

/// Any string, weighted towards the characters that need escaping.
fn pk_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[:{}% \r\n\t\\x00-\\x1f%0-9A-Fa-fs]{0,12}",
        proptest::collection::vec(
            prop::sample::select(vec![
                ':', '{', '}', '%', ' ', '\r', '\n', '\0', 's', 'A', '3', 'é', '🦀', '\u{85}',
            ]),
            0..24
        )
        .prop_map(|chars| chars.into_iter().collect()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

    /// `from_key` inverts `write_key`, so distinct pks never share a key
    /// form; and the key form is safe inside a store key.
    #[test]
    fn string_key_forms_round_trip_and_never_collide(a in pk_strategy(), b in pk_strategy()) {
        assert_key_form_is_safe(&a);
        assert_key_form_is_safe(&b);
        prop_assert_eq!(a == b, a.to_key() == b.to_key());
        // `write_key` appends: a prefix already in the buffer is kept.
        let mut out = String::from("prefix:");
        a.write_key(&mut out);
        prop_assert_eq!(out, format!("prefix:{}", a.to_key()));
    }

    /// Integers round trip too, and never parse from a string pk's form.
    #[test]
    fn integer_key_forms_round_trip(n in any::<i64>(), s in pk_strategy()) {
        prop_assert_eq!(i64::from_key(&n.to_key()), Some(n));
        prop_assert_eq!(i64::from_key(&s.to_key()), None);
    }

    /// `from_url` never panics, and takes any string segment as it is.
    #[test]
    fn from_url_never_panics(segment in pk_strategy()) {
        prop_assert_eq!(String::from_url(&segment), Some(segment.clone()));
        let _ = i64::from_url(&segment);
    }
}

/// Reads `pks` through the cache twice (the second time from the cache
/// only) and checks each comes back as its own row.
async fn round_trip_tags(cache: &Cache, loader: &Tags, pks: &[String]) {
    let first = cache.get_many::<Tag>(pks).await.unwrap();
    assert_eq!(first, pks.iter().map(|pk| tag(pk)).collect::<Vec<_>>());
    let calls = loader.calls.load(Ordering::SeqCst);
    let again = cache.get_many::<Tag>(pks).await.unwrap();
    assert_eq!(again, first);
    for pk in pks {
        assert_eq!(cache.get::<Tag>(pk).await.unwrap(), Some(tag(pk)), "{pk:?}");
        let json = cache.get_json::<Tag>(pk).await.unwrap().unwrap();
        assert_eq!(&json[..], &tag(pk).to_json().unwrap()[..]);
    }
    assert_eq!(
        loader.calls.load(Ordering::SeqCst),
        calls,
        "all hits: no two pks share an entry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nasty_string_pks_round_trip_through_redis_without_colliding() {
    let server = RedisServer::start();
    let loader = Tags::default();
    let cache = Cache::builder()
        .store(RedisStore::connect(&server.url()).await.unwrap())
        .loader::<Tag>(loader.clone())
        .build()
        .unwrap();
    let pks = nasty_pks();
    round_trip_tags(&cache, &loader, &pks).await;

    // One key per pk on the server, and a write of one pk touches only its
    // own entry.
    let keys: i64 = redis::cmd("DBSIZE")
        .query(&mut server.connection())
        .unwrap();
    assert_eq!(keys as usize, pks.len());
    cache.saved(&tag(":")).await.unwrap();
    let calls = loader.calls.load(Ordering::SeqCst);
    for pk in &pks {
        assert_eq!(cache.get::<Tag>(pk).await.unwrap(), Some(tag(pk)));
    }
    // The write reloaded ":" in place: still no miss anywhere.
    assert_eq!(loader.calls.load(Ordering::SeqCst), calls);
    assert_eq!(cache.stats().store_errors, 0);
    assert_eq!(cache.stats().corrupt_entries, 0);
}

#[test]
fn random_string_pks_round_trip_through_redis() {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let loader = Tags::default();
    let cache = runtime.block_on(async {
        Cache::builder()
            .store(RedisStore::connect(&server.url()).await.unwrap())
            .loader::<Tag>(loader.clone())
            .build()
            .unwrap()
    });
    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(pks in proptest::collection::vec(pk_strategy(), 1..12))| {
        runtime.block_on(round_trip_tags(&cache, &loader, &pks));
    });
}

// ---------------------------------------------------------------------------
// An instance too large to cache

const CHOICES: i64 = 100_000;

/// Question 1 with 100 000 choices.
fn huge_question_db() -> MemDb {
    let db = MemDb::seeded();
    db.write(|t| {
        for id in 10..10 + CHOICES {
            t.choices.insert(id, (1, format!("choice {id}")));
        }
    });
    db
}

fn polls_cache(db: &MemDb, store: &MemoryStore) -> cached_instances::CacheBuilder {
    Cache::builder()
        .store(store.clone())
        .loader::<User>(db.clone())
        .loader::<Question>(db.clone())
        .loader::<Choice>(db.clone())
}

#[tokio::test]
async fn a_question_with_100k_choices_is_cached_under_the_default_limit_in_bounded_time() {
    let db = huge_question_db();
    let store = MemoryStore::new();
    let cache = polls_cache(&db, &store).build().unwrap();
    let expected = db.question(1).unwrap();
    let bytes = expected.to_json().unwrap().len();
    assert!(
        bytes < 1024 * 1024,
        "{bytes} bytes: under the default limit"
    );

    let started = Instant::now();
    assert_eq!(
        cache.get::<Question>(&1).await.unwrap().as_ref(),
        Some(&expected)
    );
    let cold = started.elapsed();
    let started = Instant::now();
    assert_eq!(
        cache.get::<Question>(&1).await.unwrap().as_ref(),
        Some(&expected)
    );
    let json = cache.get_json::<Question>(&1).await.unwrap().unwrap();
    let hot = started.elapsed();
    eprintln!("{bytes} bytes: cold read {cold:?}, hit + JSON hit {hot:?}");
    assert_eq!(json.len(), bytes);
    assert_eq!(db.load_count("Question"), 1);
    assert_eq!(cache.stats().entries_too_large, 0);
    // Generous bounds for a debug build on a busy machine.
    assert!(cold < Duration::from_secs(10) && hot < Duration::from_secs(5));
}

#[tokio::test]
async fn a_representation_over_max_entry_bytes_is_served_but_not_cached() {
    const LIMIT: usize = 64 * 1024;
    let db = huge_question_db();
    let store = MemoryStore::new();
    let cache = polls_cache(&db, &store)
        .max_entry_bytes(LIMIT)
        .build()
        .unwrap();
    let expected = db.question(1).unwrap();
    assert!(expected.to_json().unwrap().len() > LIMIT);
    let key = cache.key_of::<Question>(&1).unwrap();

    for round in 1..=3 {
        // Served, in full, from the loader every time, with the small
        // question of the same read cached as usual.
        let many = cache.get_many::<Question>(&[1, 2]).await.unwrap();
        assert_eq!(many, [expected.clone(), db.question(2).unwrap()]);
        assert_eq!(db.load_count("Question"), round);
        cache.settle().await;
        let held = store.raw(&key);
        assert!(
            held.as_deref().is_none_or(|b| b[0] == 0),
            "not cached, no lease left"
        );
        assert!(
            store
                .raw(&cache.key_of::<Question>(&2).unwrap())
                .is_some_and(|b| b[0] == b'{')
        );
    }
    assert_eq!(cache.stats().entries_too_large, 3);
    let json = cache.get_json::<Question>(&1).await.unwrap().unwrap();
    assert_eq!(&json[..], &expected.to_json().unwrap()[..]);

    // A cascade that reloads it does not cache it either.
    let cache = polls_cache(&db, &store)
        .max_entry_bytes(LIMIT)
        .update_only(false)
        .build()
        .unwrap();
    db.write(|t| t.choices.insert(5, (1, "one more".into())));
    cache.saved(&db.choice(5).unwrap()).await.unwrap();
    assert!(store.raw(&key).as_deref().is_none_or(|b| b[0] == 0));
    assert_eq!(cache.stats().entries_too_large, 1);
    assert_eq!(
        cache
            .get::<Question>(&1)
            .await
            .unwrap()
            .unwrap()
            .choices
            .len() as i64,
        CHOICES + 3
    );
}

// ---------------------------------------------------------------------------
// Deep cascades and cycles

/// A tree node. `depth` (the distance to the root) changes for every
/// descendant when a subtree moves, and `invalidator` makes a node's change
/// invalidate its children: a cascade as deep as the tree.
#[derive(CachedInstance, Debug, Clone, PartialEq)]
#[cached(model = "Node", invalidator = node_children)]
pub struct Node {
    #[cached(pk)]
    pub id: i64,
    #[cached(references = Node)]
    pub parent: Option<i64>,
    #[cached(has_many = Node, via = parent)]
    pub children: Vec<i64>,
    /// Distance to the root; -1 on a cycle.
    pub depth: i64,
}

fn node_children(node: &Node) -> Vec<Target> {
    node.children.iter().map(Target::instance::<Node>).collect()
}

/// Node id -> parent, with a count of loader calls.
#[derive(Clone, Default)]
struct Nodes {
    parents: Arc<Mutex<BTreeMap<i64, Option<i64>>>>,
    calls: Arc<AtomicUsize>,
}

impl Nodes {
    fn set(&self, id: i64, parent: Option<i64>) {
        self.parents.lock().unwrap().insert(id, parent);
    }

    fn node(&self, id: i64) -> Option<Node> {
        self.assemble(&[id]).pop()
    }

    fn assemble(&self, ids: &[i64]) -> Vec<Node> {
        let parents = self.parents.lock().unwrap();
        let mut children: HashMap<i64, Vec<i64>> = HashMap::new();
        for (&id, parent) in parents.iter() {
            if let Some(parent) = parent {
                children.entry(*parent).or_default().push(id);
            }
        }
        ids.iter()
            .filter(|id| parents.contains_key(id))
            .map(|&id| {
                let mut depth = 0;
                let mut seen = HashSet::from([id]);
                let mut at = id;
                while let Some(Some(parent)) = parents.get(&at) {
                    if !seen.insert(*parent) {
                        depth = -1;
                        break;
                    }
                    depth += 1;
                    at = *parent;
                }
                Node {
                    id,
                    parent: parents[&id],
                    children: children.remove(&id).unwrap_or_default(),
                    depth,
                }
            })
            .collect()
    }
}

impl Loader<Node> for Nodes {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Node>, LoadError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(self.assemble(pks))
    }
}

/// Checks every node reads as the database has it, and that none of the
/// store's entries is stale.
async fn assert_all_fresh(cache: &Cache, store: &MemoryStore, nodes: &Nodes, ids: &[i64]) {
    for &id in ids {
        let expected = nodes.node(id);
        if let Some(bytes) = store.raw(&cache.key_of::<Node>(&id).unwrap())
            && bytes[0] == b'{'
        {
            assert_eq!(
                Node::decode(&bytes).ok(),
                expected,
                "the store's entry of node {id} is stale"
            );
        }
    }
    let read = cache.get_many::<Node>(ids).await.unwrap();
    let expected: Vec<Node> = ids.iter().filter_map(|&id| nodes.node(id)).collect();
    assert_eq!(read, expected);
}

#[tokio::test]
async fn a_cascade_longer_than_max_cascade_depth_is_bounded_and_leaves_nothing_stale() {
    const LENGTH: i64 = 1000;
    const DEPTH: usize = 8;
    let nodes = Nodes::default();
    nodes.set(1, None);
    for id in 2..=LENGTH {
        nodes.set(id, Some(id - 1));
    }
    let store = MemoryStore::new();
    let cache = Cache::builder()
        .store(store.clone())
        .loader::<Node>(nodes.clone())
        .max_cascade_depth(DEPTH)
        .build()
        .unwrap();
    let ids: Vec<i64> = (1..=LENGTH).collect();
    cache.get_many::<Node>(&ids).await.unwrap();

    // The chain gets a new root: every node's depth changes.
    let previous = nodes.node(1).unwrap();
    nodes.set(0, None);
    nodes.set(1, Some(0));
    let (calls, trips) = (nodes.calls.load(Ordering::SeqCst), store.round_trips());
    let started = Instant::now();
    cache
        .saved_from(&previous, &nodes.node(1).unwrap())
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let calls = nodes.calls.load(Ordering::SeqCst) - calls;
    let trips = store.round_trips() - trips;
    eprintln!("a {LENGTH}-node cascade: {calls} loader calls, {trips} round trips, {elapsed:?}");
    // One reload per level down to the limit (the written node's level
    // included), none past it; two round trips per reloaded level, one per
    // level past it.
    assert!(calls <= DEPTH + 1, "{calls} loader calls");
    assert!(
        trips <= 2 * (DEPTH as u64 + 1) + LENGTH as u64,
        "{trips} round trips"
    );

    // Past the limit, entries were invalidated rather than reloaded...
    let tail = cache.key_of::<Node>(&LENGTH).unwrap();
    assert!(store.raw(&tail).is_some_and(|b| b[0] == 0), "tombstoned");
    // ...and nothing anywhere in the chain is stale.
    let ids: Vec<i64> = (0..=LENGTH).collect();
    assert_all_fresh(&cache, &store, &nodes, &ids).await;
}

#[tokio::test]
async fn cascades_around_a_cycle_terminate_with_and_without_reloading() {
    const RING: i64 = 50;
    for depth in [0, 2, 16] {
        let nodes = Nodes::default();
        nodes.set(1, Some(RING));
        for id in 2..=RING {
            nodes.set(id, Some(id - 1));
        }
        let store = MemoryStore::new();
        let cache = Cache::builder()
            .store(store.clone())
            .loader::<Node>(nodes.clone())
            .max_cascade_depth(depth)
            .build()
            .unwrap();
        let ids: Vec<i64> = (1..=RING).collect();
        assert!(
            cache
                .get_many::<Node>(&ids)
                .await
                .unwrap()
                .iter()
                .all(|n| n.depth == -1)
        );

        // Breaking the ring gives every node a depth.
        let previous = nodes.node(1).unwrap();
        nodes.set(1, None);
        let calls = nodes.calls.load(Ordering::SeqCst);
        tokio::time::timeout(
            Duration::from_secs(10),
            cache.saved_from(&previous, &nodes.node(1).unwrap()),
        )
        .await
        .expect("the cascade terminates")
        .unwrap();
        let calls = nodes.calls.load(Ordering::SeqCst) - calls;
        assert!(
            calls <= depth.min(RING as usize) + 1,
            "depth {depth}: {calls} calls"
        );
        assert_all_fresh(&cache, &store, &nodes, &ids).await;
    }
}

/// The limit of `update_only` cascades through `invalidator` chains: a
/// cold entry in the middle is not reloaded, so the targets its new state
/// would give are not known and the walk stops there; entries past it stay
/// stale until their TTL. Without `update_only`, the cold entry is loaded
/// and the walk goes on.
#[tokio::test]
async fn an_update_only_cascade_stops_at_a_cold_entry_in_an_invalidator_chain() {
    const LENGTH: i64 = 20;
    for update_only in [true, false] {
        let nodes = Nodes::default();
        nodes.set(1, None);
        for id in 2..=LENGTH {
            nodes.set(id, Some(id - 1));
        }
        let store = MemoryStore::new();
        let cache = Cache::builder()
            .store(store.clone())
            .loader::<Node>(nodes.clone())
            .update_only(update_only)
            .build()
            .unwrap();
        let ids: Vec<i64> = (1..=LENGTH).collect();
        cache.get_many::<Node>(&ids).await.unwrap();
        // Node 5 is not cached.
        cache.delete_all_versions::<Node>(&5).await.unwrap();

        let previous = nodes.node(1).unwrap();
        nodes.set(0, None);
        nodes.set(1, Some(0));
        cache
            .saved_from(&previous, &nodes.node(1).unwrap())
            .await
            .unwrap();
        let below = cache.get::<Node>(&6).await.unwrap().unwrap();
        if update_only {
            assert_eq!(below.depth, 5, "stale past the cold node 5");
        } else {
            assert_eq!(below.depth, 6);
            assert_all_fresh(&cache, &store, &nodes, &ids).await;
        }
    }
}
