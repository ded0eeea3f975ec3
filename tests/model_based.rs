//! Model-based tests: random sequences of reads and writes through the
//! cache, checked against a model of the database (the polls tables of
//! `MemDb`, snapshotted after every commit).
//!
//! - One stream of operations at a time: every read returns exactly what
//!   the database holds at that moment.
//! - Two streams interleaved (`join!` on one thread; the loaders and the
//!   store yield a random number of times around every call, so loads,
//!   fills, leases and invalidations of the two streams interleave
//!   differently in every case): every read returns a state the database
//!   held between the last write acknowledged before the read began and the
//!   read's end, never an older one and never one it did not hold.
//! - After quiescence, in both: every entry the store holds, and every read,
//!   equals the database.
//!
//! Writes use the API as documented: `saved_from` when a relation changes
//! (the previous row read in the write's transaction), `saved` or `refresh`
//! for a change of plain fields, `deleted` with the deleted row. The limits
//! of other uses are pinned down in `consistency_limits.rs`.
//!
//! Run on the `MemoryStore` and on a real Redis server.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cached_instances::store::{InProcess, StoreFuture};
use cached_instances::{Cache, CachedInstance, LoadError, Loader, MemoryStore, RedisStore, Store};
use cached_instances_testkit::memdb::{MemDb, date};
use cached_instances_testkit::redis_server::RedisServer;
use cached_instances_testkit::rng::SharedRng;
use cached_instances_testkit::store::{Hook, Keys, Op as StoreOp, Wrapped, after};
use polls::{Choice, Question, User};
use proptest::prelude::*;

const USERS: i64 = 4;
const QUESTIONS: i64 = 3;
/// Choice ids are 1..=CHOICES; some do not exist at any time.
const CHOICES: i64 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Model {
    User,
    Question,
    Choice,
}

#[derive(Debug, Clone, Copy)]
enum ReadKind {
    Get,
    GetMany,
    GetJson,
    GetManyJson,
}

#[derive(Debug, Clone)]
enum Op {
    Read(ReadKind, Model, Vec<i64>),
    /// A new question text (`saved`).
    RenameQuestion(i64, u8),
    /// A new choice text, told with `saved` or, changed behind the cache's
    /// back, repaired with `refresh`.
    RenameChoice(i64, u8, bool),
    /// A new user name (`saved`).
    RenameUser(i64, u8),
    /// Moves a choice to another question (`saved_from`).
    MoveChoice(i64, i64),
    /// Casts or withdraws a vote (`saved_from` of the choice).
    Vote(i64, i64, bool),
    /// Creates a choice with the lowest free id (`saved`).
    CreateChoice(i64),
    /// Deletes a choice and its votes (`deleted`).
    DeleteChoice(i64),
}

fn model() -> impl Strategy<Value = Model> {
    prop_oneof![
        Just(Model::User),
        Just(Model::Question),
        Just(Model::Choice)
    ]
}

fn pk_of(model: Model) -> i64 {
    match model {
        Model::User => USERS,
        Model::Question => QUESTIONS,
        Model::Choice => CHOICES,
    }
}

fn op() -> impl Strategy<Value = Op> {
    let read = (
        prop_oneof![
            Just(ReadKind::Get),
            Just(ReadKind::GetMany),
            Just(ReadKind::GetJson),
            Just(ReadKind::GetManyJson),
        ],
        model(),
        proptest::collection::vec(1..=CHOICES, 1..5),
    )
        .prop_map(|(kind, model, pks)| {
            // Reads ask for pks in the model's range, plus one past it.
            let pks: Vec<i64> = pks
                .into_iter()
                .map(|pk| 1 + pk % (pk_of(model) + 1))
                .collect();
            let pks = match kind {
                ReadKind::Get | ReadKind::GetJson => pks[..1].to_vec(),
                _ => pks,
            };
            Op::Read(kind, model, pks)
        });
    prop_oneof![
        6 => read,
        1 => (1..=QUESTIONS, any::<u8>()).prop_map(|(q, n)| Op::RenameQuestion(q, n)),
        1 => (1..=CHOICES, any::<u8>(), any::<bool>()).prop_map(|(c, n, r)| Op::RenameChoice(c, n, r)),
        1 => (1..=USERS, any::<u8>()).prop_map(|(u, n)| Op::RenameUser(u, n)),
        2 => (1..=CHOICES, 1..=QUESTIONS).prop_map(|(c, q)| Op::MoveChoice(c, q)),
        2 => (1..=USERS, 1..=CHOICES, any::<bool>()).prop_map(|(u, c, v)| Op::Vote(u, c, v)),
        1 => (1..=QUESTIONS).prop_map(Op::CreateChoice),
        1 => (1..=CHOICES).prop_map(Op::DeleteChoice),
    ]
}

/// The database at the start of every case.
fn seeded() -> MemDb {
    let db = MemDb::default();
    db.write(|t| {
        for u in 1..=USERS {
            t.users.insert(u, format!("user{u}"));
        }
        for q in 1..=QUESTIONS {
            t.questions
                .insert(q, (format!("question {q}"), date(q as u32)));
        }
        for c in 1..=5 {
            t.choices
                .insert(c, (1 + c % QUESTIONS, format!("choice {c}")));
        }
        t.votes.extend([(1, 1), (2, 1), (2, 3), (3, 5)]);
    });
    db
}

// ---------------------------------------------------------------------------
// Interleaving: a seeded source of yields for the loaders and the store

/// A seeded source of yields, shared by everything that yields in one case.
#[derive(Clone)]
struct Yields(SharedRng);

impl Yields {
    fn new(seed: u64) -> Self {
        Yields(SharedRng::new(seed))
    }

    /// Yields to the other stream 0 to 3 times.
    async fn some(&self) {
        for _ in 0..self.0.next_u64() % 4 {
            tokio::task::yield_now().await;
        }
    }
}

/// A loader that yields before it reads its rows and after (a slow query,
/// a slow network: writes land inside loads).
#[derive(Clone)]
struct YieldingLoader {
    db: MemDb,
    yields: Yields,
}

impl<T: CachedInstance<Pk = i64>> Loader<T> for YieldingLoader
where
    MemDb: Loader<T>,
{
    async fn load(&self, pks: &[i64]) -> Result<Vec<T>, LoadError> {
        self.yields.some().await;
        let rows = Loader::<T>::load(&self.db, pks).await;
        self.yields.some().await;
        rows
    }
}

/// A store whose every call yields first (and, on Redis, takes a real
/// round trip), so the two streams' store calls interleave.
impl Hook for Yields {
    fn around<'a, T: Send + 'a>(
        &'a self,
        _op: StoreOp,
        _keys: Keys<'a>,
        call: impl FnOnce() -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        after(self.some(), call)
    }
    /// An in-process read cannot yield: it is made (the path a hit takes in
    /// production) one time in four, as often as `some` yields zero times,
    /// and otherwise sent through `get` and its yields.
    fn around_in_process(&self, _key: &str, read: impl FnOnce() -> InProcess) -> InProcess {
        if self.0.next_u64().is_multiple_of(4) {
            read()
        } else {
            InProcess::Unknown
        }
    }
}

// ---------------------------------------------------------------------------
// The history

type Key = (Model, i64);
/// A representation, or `None` for a row that does not exist.
type State = Option<Vec<u8>>;

fn state_of(db: &MemDb, (model, pk): Key) -> State {
    match model {
        Model::User => db.user(pk).map(|r| r.to_json().unwrap()),
        Model::Question => db.question(pk).map(|r| r.to_json().unwrap()),
        Model::Choice => db.choice(pk).map(|r| r.to_json().unwrap()),
    }
}

fn all_keys() -> Vec<Key> {
    let mut keys = Vec::new();
    for (model, n) in [
        (Model::User, USERS + 1),
        (Model::Question, QUESTIONS + 1),
        (Model::Choice, CHOICES + 1),
    ] {
        keys.extend((1..=n).map(|pk| (model, pk)));
    }
    keys
}

/// Commits, acknowledgements and reads, on one logical clock. Each stream
/// runs on the test's thread, so nothing happens between a commit and its
/// snapshot.
#[derive(Default)]
struct History {
    clock: u64,
    /// After commit `i` (0: the seed), the state of every key.
    snapshots: Vec<BTreeMap<Key, State>>,
    /// When each commit happened.
    committed_at: Vec<u64>,
    /// When the cache call of each commit returned.
    acked_at: BTreeMap<usize, u64>,
    violations: Vec<String>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<History>>);

impl Recorder {
    fn tick(&self) -> u64 {
        let mut h = self.0.lock().unwrap();
        h.clock += 1;
        h.clock
    }

    /// Records the database right after a commit; returns its index.
    fn committed(&self, db: &MemDb) -> usize {
        let snapshot = all_keys()
            .into_iter()
            .map(|k| (k, state_of(db, k)))
            .collect();
        let mut h = self.0.lock().unwrap();
        h.clock += 1;
        let at = h.clock;
        h.snapshots.push(snapshot);
        h.committed_at.push(at);
        h.snapshots.len() - 1
    }

    fn acknowledged(&self, commit: usize) {
        let mut h = self.0.lock().unwrap();
        h.clock += 1;
        let at = h.clock;
        h.acked_at.insert(commit, at);
    }

    /// Checks what a read that ran from `started` to `finished` returned
    /// for `key`: a state the key had from the newest change of it that was
    /// acknowledged before the read began, up to the newest commit before
    /// the read ended.
    fn check_read(&self, key: Key, seen: &State, started: u64, finished: u64, op: &Op) {
        let mut h = self.0.lock().unwrap();
        let floor = (1..h.snapshots.len())
            .rev()
            .find(|&i| {
                h.snapshots[i][&key] != h.snapshots[i - 1][&key]
                    && h.acked_at.get(&i).is_some_and(|&at| at < started)
            })
            .unwrap_or(0);
        let upper = h.committed_at.iter().filter(|&&at| at < finished).count() - 1;
        let ok = (floor..=upper).any(|i| h.snapshots[i].get(&key) == Some(seen));
        if !ok {
            let shown = |s: &State| {
                s.as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            };
            let violation = format!(
                "{op:?}: {key:?} read {:?}; the database held {:?} (commits {floor}..={upper})",
                shown(seen),
                (floor..=upper)
                    .map(|i| shown(&h.snapshots[i][&key]))
                    .collect::<Vec<_>>()
            );
            h.violations.push(violation);
        }
    }
}

// ---------------------------------------------------------------------------
// Running the operations

async fn read<T: CachedInstance<Pk = i64>>(
    cache: &Cache,
    kind: ReadKind,
    pks: &[i64],
) -> Vec<(i64, State)> {
    let found: Vec<(i64, Vec<u8>)> = match kind {
        ReadKind::Get => cache
            .get::<T>(&pks[0])
            .await
            .unwrap()
            .map(|r| (pks[0], r.to_json().unwrap()))
            .into_iter()
            .collect(),
        ReadKind::GetJson => cache
            .get_json::<T>(&pks[0])
            .await
            .unwrap()
            .map(|b| (pks[0], b.to_vec()))
            .into_iter()
            .collect(),
        ReadKind::GetMany => cache
            .get_many::<T>(pks)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (*r.pk(), r.to_json().unwrap()))
            .collect(),
        ReadKind::GetManyJson => cache
            .get_many_json::<T>(pks)
            .await
            .unwrap()
            .into_iter()
            .map(|b| (*T::decode(&b).unwrap().pk(), b.to_vec()))
            .collect(),
    };
    // In request order, missing rows omitted.
    let mut at = found.iter().peekable();
    let mut out = Vec::new();
    for &pk in pks {
        match at.peek() {
            Some((found_pk, bytes)) if *found_pk == pk => {
                out.push((pk, Some(bytes.clone())));
                at.next();
            }
            _ => out.push((pk, None)),
        }
    }
    assert!(
        at.next().is_none(),
        "{kind:?} {pks:?}: out of order: {found:?}"
    );
    out
}

/// Applies a write to the database and tells the cache; returns the commit
/// and whether the cache call was made. Writes that would change nothing
/// (a vote already cast, a move to the same question) are skipped.
async fn write(cache: &Cache, db: &MemDb, rec: &Recorder, op: &Op) {
    let commit = match *op {
        Op::Read(..) => unreachable!(),
        Op::RenameQuestion(q, n) => {
            db.write(|t| t.questions.get_mut(&q).unwrap().0 = format!("question {q}.{n}"));
            let commit = rec.committed(db);
            cache.saved(&db.question(q).unwrap()).await.unwrap();
            commit
        }
        Op::RenameUser(u, n) => {
            db.write(|t| *t.users.get_mut(&u).unwrap() = format!("user{u}.{n}"));
            let commit = rec.committed(db);
            cache.saved(&db.user(u).unwrap()).await.unwrap();
            commit
        }
        Op::RenameChoice(c, n, refresh) => {
            if db.choice(c).is_none() {
                return;
            }
            db.write(|t| t.choices.get_mut(&c).unwrap().1 = format!("choice {c}.{n}"));
            let commit = rec.committed(db);
            if refresh {
                cache.refresh::<Choice>(&c).await.unwrap();
            } else {
                cache.saved(&db.choice(c).unwrap()).await.unwrap();
            }
            commit
        }
        Op::MoveChoice(c, q) => {
            let Some(previous) = db.choice(c).filter(|p| p.question_id != q) else {
                return;
            };
            db.write(|t| t.choices.get_mut(&c).unwrap().0 = q);
            let commit = rec.committed(db);
            cache
                .saved_from(&previous, &db.choice(c).unwrap())
                .await
                .unwrap();
            commit
        }
        Op::Vote(u, c, cast) => {
            let Some(previous) = db.choice(c) else {
                return;
            };
            if previous.voters.contains(&u) == cast {
                return;
            }
            db.write(|t| {
                if cast {
                    t.votes.insert((u, c));
                } else {
                    t.votes.remove(&(u, c));
                }
            });
            let commit = rec.committed(db);
            cache
                .saved_from(&previous, &db.choice(c).unwrap())
                .await
                .unwrap();
            commit
        }
        Op::CreateChoice(q) => {
            let Some(c) = (1..=CHOICES).find(|&c| db.choice(c).is_none()) else {
                return;
            };
            db.write(|t| t.choices.insert(c, (q, format!("new choice {c}"))));
            let commit = rec.committed(db);
            cache.saved(&db.choice(c).unwrap()).await.unwrap();
            commit
        }
        Op::DeleteChoice(c) => {
            let Some(previous) = db.choice(c) else {
                return;
            };
            db.write(|t| {
                t.choices.remove(&c);
                t.votes.retain(|&(_, voted)| voted != c);
            });
            let commit = rec.committed(db);
            cache.deleted(&previous).await.unwrap();
            commit
        }
    };
    rec.acknowledged(commit);
}

async fn run(cache: &Cache, db: &MemDb, rec: &Recorder, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Read(kind, model, pks) => {
                let started = rec.tick();
                let seen = match model {
                    Model::User => read::<User>(cache, *kind, pks).await,
                    Model::Question => read::<Question>(cache, *kind, pks).await,
                    Model::Choice => read::<Choice>(cache, *kind, pks).await,
                };
                let finished = rec.tick();
                for (pk, state) in seen {
                    rec.check_read((*model, pk), &state, started, finished, op);
                }
            }
            _ => write(cache, db, rec, op).await,
        }
    }
}

/// Runs `streams` interleaved on `store`, then checks the history and the
/// quiescent cache.
async fn check<S: Store + Clone>(
    store: S,
    raw: impl AsyncFn(&S, &str) -> Option<Bytes>,
    streams: &[Vec<Op>],
    seed: u64,
) -> Result<(), TestCaseError> {
    let db = seeded();
    let yields = Yields::new(seed);
    let loader = YieldingLoader {
        db: db.clone(),
        yields: yields.clone(),
    };
    let cache = Cache::builder()
        .store(Wrapped::with_hook(store.clone(), yields))
        .loader::<User>(loader.clone())
        .loader::<Question>(loader.clone())
        .loader::<Choice>(loader)
        // Waiters poll in real time; keep it short so that some give up and
        // read the database themselves.
        .lease_wait(Duration::from_millis(2))
        .build()
        .unwrap();
    let rec = Recorder::default();
    rec.committed(&db);

    match streams {
        [one] => run(&cache, &db, &rec, one).await,
        [a, b] => {
            tokio::join!(run(&cache, &db, &rec, a), run(&cache, &db, &rec, b));
        }
        _ => unreachable!(),
    }

    let violations = std::mem::take(&mut rec.0.lock().unwrap().violations);
    prop_assert!(violations.is_empty(), "{}", violations.join("\n"));

    // Quiescence: the store holds no entry the database does not, and
    // every read returns the database. Reads return before their fill's
    // reply (the yielding store defers it): wait for every fill to land,
    // so that what the store holds is checked after it.
    cache.settle().await;
    for key in all_keys() {
        let (model, pk) = key;
        let expected = state_of(&db, key);
        let store_key = match model {
            Model::User => cache.key_of::<User>(&pk),
            Model::Question => cache.key_of::<Question>(&pk),
            Model::Choice => cache.key_of::<Choice>(&pk),
        }
        .unwrap();
        if let Some(bytes) = raw(&store, &store_key).await
            && bytes.first() == Some(&b'{')
        {
            prop_assert_eq!(
                Some(bytes.to_vec()),
                expected.clone(),
                "the store's {:?}",
                key
            );
        }
        for kind in [ReadKind::Get, ReadKind::GetJson] {
            let seen = match model {
                Model::User => read::<User>(&cache, kind, &[pk]).await,
                Model::Question => read::<Question>(&cache, kind, &[pk]).await,
                Model::Choice => read::<Choice>(&cache, kind, &[pk]).await,
            };
            prop_assert_eq!(&seen[0].1, &expected, "quiescent {:?} {:?}", kind, key);
        }
    }
    prop_assert_eq!(cache.stats().store_errors, 0);
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

async fn memory_raw(store: &MemoryStore, key: &str) -> Option<Bytes> {
    store.raw(key)
}

async fn redis_raw(store: &RedisStore, key: &str) -> Option<Bytes> {
    store.get(key).await.unwrap()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn one_stream_on_the_memory_store_reads_exactly_the_database(
        ops in proptest::collection::vec(op(), 1..60),
        seed in any::<u64>(),
    ) {
        runtime().block_on(check(MemoryStore::new(), memory_raw, &[ops], seed))?;
    }

    #[test]
    fn two_interleaved_streams_on_the_memory_store_are_fresh_and_converge(
        a in proptest::collection::vec(op(), 1..40),
        b in proptest::collection::vec(op(), 1..40),
        seed in any::<u64>(),
    ) {
        runtime().block_on(check(MemoryStore::new(), memory_raw, &[a, b], seed))?;
    }
}

/// The same on one Redis server, flushed between cases.
#[test]
fn two_interleaved_streams_on_redis_are_fresh_and_converge() {
    let server = RedisServer::start();
    let rt = runtime();
    let store = rt.block_on(RedisStore::connect(&server.url())).unwrap();
    let streams = (
        proptest::collection::vec(op(), 1..40),
        proptest::collection::vec(op(), 0..40),
    );
    proptest!(config(48), |((a, b) in streams, seed in any::<u64>())| {
        let _: () = redis::cmd("FLUSHDB").query(&mut server.connection()).unwrap();
        let streams = if b.is_empty() { vec![a] } else { vec![a, b] };
        rt.block_on(check(store.clone(), redis_raw, &streams, seed))?;
    });
}
