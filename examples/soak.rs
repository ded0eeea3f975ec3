//! Soak test: readers and writers on the polls models, over PostgreSQL and a
//! Redis server of its own, for a bounded time; then a consistency check of
//! everything the readers saw.
//!
//! ```sh
//! cargo run --example soak -- --seconds 5                          # CI's smoke run
//! cargo run --release --example soak -- --seconds 600 --readers 16 --writers 4
//! ```
//!
//! Writers run the polls database's writes (move a choice, vote, rename,
//! create and delete choices) in transactions and tell the cache after each
//! commit, as the polls API does (`saved_from` with the previous row the
//! transaction read, `saved`, `refresh`, `deleted`). Readers read random
//! users, questions and choices through every read API; the cache loads
//! with the models' generated sqlx loaders, one REPEATABLE READ snapshot per
//! load. Commits are taken
//! one at a time (a lock around commit + snapshot) so that the database's
//! history is one sequence of states; the cache calls that follow them run
//! concurrently.
//!
//! Checked, for every read: it returned a state the database held between
//! the last write acknowledged (committed and told to the cache) before the
//! read began, and the read's end: never older, never one the database did
//! not hold. After quiescence: every entry in Redis, and every read, equals
//! the database. Prints ops/s, the hit rate and the stale-read count, and
//! exits non-zero on any violation.
//!
//! Traffic stays on loopback: the PostgreSQL server at `DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`; the run creates its
//! own schema and drops it) and a `redis-server` the run starts on a free
//! loopback port and stops.

use std::collections::{BTreeSet, HashMap};
use std::error::Error;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cached_instances::{Cache, CachedInstance, LoadError, Loader, MemoryStore, RedisStore, Store};
use cached_instances_testkit::cli::DatabaseArg;
use cached_instances_testkit::redis_server;
use cached_instances_testkit::rng::Rng;
use clap::{CommandFactory, Parser};
use polls::db::{ChoiceChanges, Db, QuestionChanges};
use polls::{Choice, Question, User};

/// Readers and writers on the polls models over PostgreSQL and Redis, then
/// a consistency check of everything the readers saw.
#[derive(Debug, Clone, Parser)]
#[command(bin_name = "cargo run --example soak --")]
struct Args {
    /// How long readers and writers run, in seconds (at most a day).
    #[arg(long, value_name = "N", default_value_t = 10.0)]
    seconds: f64,
    /// Concurrent readers.
    #[arg(long, value_name = "N", default_value_t = 8)]
    readers: usize,
    /// Concurrent writers.
    #[arg(long, value_name = "N", default_value_t = 2)]
    writers: usize,
    /// Stop earlier after this many reads and writes.
    #[arg(long, value_name = "N", default_value_t = 50_000_000)]
    max_ops: u64,
    /// Users in the data set.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..))]
    users: i64,
    /// Questions.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(i64).range(2..))]
    questions: i64,
    /// Choices to start with; creates and deletes keep it near.
    #[arg(long, value_name = "N", default_value_t = 40, value_parser = clap::value_parser!(i64).range(1..))]
    choices: i64,
    #[command(flatten)]
    database: DatabaseArg,
    /// Cache in the in-process MemoryStore instead of Redis.
    #[arg(long)]
    memory: bool,
    /// Seed of the pseudo-random choices.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
}

// ---------------------------------------------------------------------------
// Pseudo-random choices

// ---------------------------------------------------------------------------
// The history

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Model {
    User,
    Question,
    Choice,
}

type Key = (Model, i64);

/// A representation, or `None` for "no such row".
type State = Option<Arc<[u8]>>;

fn state_of(bytes: Option<&[u8]>) -> State {
    bytes.map(Arc::from)
}

/// What one read returned for one key. Times are nanoseconds since the run
/// began.
#[derive(Debug, Clone)]
struct ReadRecord {
    key: Key,
    state: State,
    started: u64,
    finished: u64,
}

#[derive(Default)]
struct History {
    /// Per key, (commit, state) for every commit that changed it, in
    /// commit order; commit 0 is the initial data.
    states: HashMap<Key, Vec<(usize, State)>>,
    /// When each commit began (it holds the commit lock from then until its
    /// snapshot is recorded). Index = commit.
    commit_started: Vec<u64>,
    /// When a commit began that has not been recorded yet.
    in_progress: Option<u64>,
    /// When each commit's cache call returned (index = commit).
    acked_at: Vec<Option<u64>>,
    /// What each commit did, for the report of a stale read.
    described: Vec<String>,
    /// Reads waiting to be checked.
    pending: Vec<ReadRecord>,
    checked: u64,
    stale: u64,
    examples: Vec<String>,
}

impl History {
    /// Checks the pending reads that ended before any commit still in
    /// progress began (those cannot have seen an unrecorded commit).
    fn check(&mut self, now: u64) {
        let horizon = self.in_progress.unwrap_or(now);
        let pending = std::mem::take(&mut self.pending);
        let (ready, later): (Vec<_>, Vec<_>) =
            pending.into_iter().partition(|r| r.finished < horizon);
        self.pending = later;
        const NEVER: &[(usize, State)] = &[(0, None)];
        for read in ready {
            self.checked += 1;
            // The key's changes; a choice id not created yet has none.
            let changes = self.states.get(&read.key).map_or(NEVER, Vec::as_slice);
            // The newest change acknowledged before the read began (commit
            // 0, the initial data, always is).
            let floor = changes
                .iter()
                .rposition(|(c, _)| {
                    *c == 0 || self.acked_at[*c].is_some_and(|at| at < read.started)
                })
                .unwrap_or(0);
            // The newest commit that began before the read ended.
            let upper = self
                .commit_started
                .partition_point(|&at| at < read.finished)
                .saturating_sub(1);
            let held: Vec<&State> = changes[floor..]
                .iter()
                .enumerate()
                .filter(|(i, (c, _))| *i == 0 || *c <= upper)
                .map(|(_, (_, s))| s)
                .collect();
            if held.contains(&&read.state) {
                continue;
            }
            {
                let floor = changes[floor].0;
                self.stale += 1;
                if self.examples.len() < 10 {
                    let shown = |s: &State| {
                        s.as_deref()
                            .map_or("(none)".into(), |b| String::from_utf8_lossy(b).into_owned())
                    };
                    let mut report = format!(
                        "{:?} {}: read {:.6} s to {:.6} s returned {}\n    floor commit {floor}, upper commit {upper}; the key's changes:",
                        read.key.0,
                        read.key.1,
                        read.started as f64 / 1e9,
                        read.finished as f64 / 1e9,
                        shown(&read.state),
                    );
                    let from = changes.iter().position(|(c, _)| *c == floor).unwrap_or(0);
                    for (c, state) in changes[from.saturating_sub(3)..]
                        .iter()
                        .take_while(|(c, _)| *c <= upper + 3)
                    {
                        report.push_str(&format!(
                            "\n    commit {c} began {:.6} s, acknowledged {}: {} -> {}",
                            self.commit_started[*c] as f64 / 1e9,
                            self.acked_at[*c]
                                .map_or("never".into(), |a| format!("{:.6} s", a as f64 / 1e9)),
                            self.described[*c],
                            shown(state),
                        ));
                    }
                    self.examples.push(report);
                }
            }
        }
    }
}

struct Shared {
    args: Args,
    cache: Cache,
    /// Writes and snapshots go through this pool (the cache's loaders have
    /// one of their own).
    writes: Db,
    commit: tokio::sync::Mutex<()>,
    history: Mutex<History>,
    /// Live choice ids (changed under the commit lock).
    choices: Mutex<BTreeSet<i64>>,
    /// The same, for readers to pick from.
    live_choices: Mutex<Arc<Vec<i64>>>,
    max_choice: AtomicI64,
    base: Instant,
    deadline: Instant,
    ops: AtomicU64,
    reads: AtomicU64,
    writes_done: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn publish_live_choices(&self) {
        let live: Vec<i64> = self.choices.lock().unwrap().iter().copied().collect();
        *self.live_choices.lock().unwrap() = Arc::new(live);
    }

    fn keep_going(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
            && Instant::now() < self.deadline
            && self.ops.fetch_add(1, Ordering::Relaxed) < self.args.max_ops
    }

    fn error(&self, what: &str, e: &dyn std::fmt::Display) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 10 {
            eprintln!("error: {what}: {e}");
        }
    }
}

/// Loads the current states of `keys` (after a commit, under the lock).
async fn snapshot(db: &Db, keys: &[Key]) -> Result<Vec<(Key, State)>, Box<dyn Error>> {
    let mut out = Vec::with_capacity(keys.len());
    for model in [Model::User, Model::Question, Model::Choice] {
        let pks: Vec<i64> = keys.iter().filter(|k| k.0 == model).map(|k| k.1).collect();
        if pks.is_empty() {
            continue;
        }
        let found: HashMap<i64, Vec<u8>> = match model {
            Model::User => encode_all(Loader::<User>::load(db, &pks).await?),
            Model::Question => encode_all(Loader::<Question>::load(db, &pks).await?),
            Model::Choice => encode_all(Loader::<Choice>::load(db, &pks).await?),
        };
        for pk in pks {
            out.push(((model, pk), state_of(found.get(&pk).map(Vec::as_slice))));
        }
    }
    Ok(out)
}

fn encode_all<T: CachedInstance<Pk = i64>>(rows: Vec<T>) -> HashMap<i64, Vec<u8>> {
    rows.into_iter()
        .map(|r| (*r.pk(), r.to_json().expect("encodable")))
        .collect()
}

// ---------------------------------------------------------------------------
// Writers

/// What a write tells the cache after its commit.
enum Tell {
    SavedFrom(Choice, Choice),
    Saved(Choice),
    Refresh(i64),
    Deleted(Choice),
    QuestionSavedFrom(Question, Question),
    QuestionSaved(Question),
    Nothing,
}

/// A line of the report of a stale read.
fn describe(tell: &Tell) -> String {
    match tell {
        Tell::SavedFrom(p, n) => format!(
            "choice {}: question {} -> {}, voters {:?} -> {:?} (saved_from)",
            n.id, p.question_id, n.question_id, p.voters, n.voters
        ),
        Tell::Saved(n) => format!("choice {} in question {} (saved)", n.id, n.question_id),
        Tell::Refresh(c) => format!("choice {c} renamed (refresh)"),
        Tell::Deleted(p) => format!("choice {} of question {} deleted", p.id, p.question_id),
        Tell::QuestionSavedFrom(_, n) => format!("question {} renamed (saved_from)", n.id),
        Tell::QuestionSaved(n) => format!("question {} renamed (saved)", n.id),
        Tell::Nothing => "nothing".into(),
    }
}

/// One write: commit (under the commit lock, with a snapshot of what it
/// changed), then tell the cache, then record the acknowledgement.
async fn write_once(s: &Shared, rng: &mut Rng, n: u64) -> Result<(), Box<dyn Error>> {
    let guard = s.commit.lock().await;
    let started = s.now();
    s.history.lock().unwrap().in_progress = Some(started);
    let live: Vec<i64> = s.choices.lock().unwrap().iter().copied().collect();
    let pick = |rng: &mut Rng| live[rng.below(live.len() as u64) as usize];
    let db = &s.writes;
    let roll = rng.below(100);
    let (tell, mut keys): (Tell, Vec<Key>) = if roll < 25 && !live.is_empty() {
        // A vote cast or withdrawn.
        let (c, u) = (pick(rng), rng.pk(s.args.users));
        let (previous, new) = db.set_vote(c, u, rng.below(2) == 0).await?;
        (
            Tell::SavedFrom(previous, new),
            vec![(Model::Choice, c), (Model::User, u)],
        )
    } else if roll < 50 && !live.is_empty() {
        // A choice moved to another question.
        let c = pick(rng);
        let changes = ChoiceChanges {
            question_id: Some(rng.pk(s.args.questions)),
            ..Default::default()
        };
        let (previous, new) = db.update_choice(c, changes).await?;
        let keys = vec![
            (Model::Choice, c),
            (Model::Question, previous.question_id),
            (Model::Question, new.question_id),
        ];
        (Tell::SavedFrom(previous, new), keys)
    } else if roll < 65 && !live.is_empty() {
        // A choice renamed: told with `saved`, or repaired with `refresh`.
        let c = pick(rng);
        let changes = ChoiceChanges {
            choice_text: Some(format!("choice {c} #{n}")),
            ..Default::default()
        };
        let (_, new) = db.update_choice(c, changes).await?;
        let tell = if rng.below(2) == 0 {
            Tell::Saved(new)
        } else {
            Tell::Refresh(c)
        };
        (tell, vec![(Model::Choice, c)])
    } else if roll < 75 {
        // A question renamed.
        let q = rng.pk(s.args.questions);
        let changes = QuestionChanges {
            question_text: Some(format!("question {q} #{n}")),
            ..Default::default()
        };
        let (previous, new) = db.update_question(q, changes).await?;
        let tell = if rng.below(2) == 0 {
            Tell::QuestionSavedFrom(previous, new)
        } else {
            Tell::QuestionSaved(new)
        };
        (tell, vec![(Model::Question, q)])
    } else if roll < 88 && (live.len() as i64) < s.args.choices + 10 {
        // A new choice.
        let q = rng.pk(s.args.questions);
        let new = db.create_choice(q, &format!("new choice #{n}")).await?;
        s.choices.lock().unwrap().insert(new.id);
        s.publish_live_choices();
        s.max_choice.fetch_max(new.id, Ordering::Relaxed);
        let keys = vec![(Model::Choice, new.id), (Model::Question, q)];
        (Tell::Saved(new), keys)
    } else if (live.len() as i64) > s.args.choices / 2 {
        // A choice deleted, with its votes.
        let previous = db.delete_choice(pick(rng)).await?;
        s.choices.lock().unwrap().remove(&previous.id);
        s.publish_live_choices();
        let mut keys = vec![
            (Model::Choice, previous.id),
            (Model::Question, previous.question_id),
        ];
        keys.extend(previous.voters.iter().map(|&u| (Model::User, u)));
        (Tell::Deleted(previous), keys)
    } else {
        (Tell::Nothing, Vec::new())
    };
    keys.sort();
    keys.dedup();
    let states = snapshot(db, &keys).await?;
    let commit = {
        let mut h = s.history.lock().unwrap();
        h.commit_started.push(started);
        h.acked_at.push(None);
        h.described.push(describe(&tell));
        let commit = h.commit_started.len() - 1;
        for (key, state) in states {
            // A choice created now had no row before.
            let changes = h.states.entry(key).or_insert_with(|| vec![(0, None)]);
            // Only changes: a write that touched a key without changing it
            // (a choice "moved" to its own question) says nothing of it,
            // and its acknowledgement promises nothing about it.
            if changes.last().is_none_or(|(_, last)| *last != state) {
                changes.push((commit, state));
            }
        }
        h.in_progress = None;
        commit
    };
    drop(guard);

    // Told after the commit, concurrently with other writers' commits.
    match tell {
        Tell::SavedFrom(previous, new) => s.cache.saved_from(&previous, &new).await?,
        Tell::Saved(new) => s.cache.saved(&new).await?,
        Tell::Refresh(c) => {
            s.cache.refresh::<Choice>(&c).await?;
        }
        Tell::Deleted(previous) => s.cache.deleted(&previous).await?,
        Tell::QuestionSavedFrom(previous, new) => s.cache.saved_from(&previous, &new).await?,
        Tell::QuestionSaved(new) => s.cache.saved(&new).await?,
        Tell::Nothing => {}
    }
    let mut h = s.history.lock().unwrap();
    h.acked_at[commit] = Some(s.now());
    Ok(())
}

async fn writer(s: Arc<Shared>, id: u64) {
    let mut rng = Rng::new(s.args.seed.wrapping_mul(1000).wrapping_add(id));
    let mut n = 0;
    while s.keep_going() {
        n += 1;
        if let Err(e) = write_once(&s, &mut rng, id * 1_000_000_000 + n).await {
            // A failed commit (a chosen choice deleted meanwhile cannot
            // happen: choices change under the lock) is a soak failure.
            s.history.lock().unwrap().in_progress = None;
            s.error("write", &e);
        }
        s.writes_done.fetch_add(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// Readers

async fn read_model<T: CachedInstance<Pk = i64>>(
    cache: &Cache,
    kind: u64,
    pks: &[i64],
) -> Result<Vec<(i64, State)>, cached_instances::Error> {
    let found: HashMap<i64, State> = match kind {
        0 => cache
            .get::<T>(&pks[0])
            .await?
            .map(|r| (pks[0], state_of(Some(&r.to_json().expect("encodable")))))
            .into_iter()
            .collect(),
        1 => cache
            .get_json::<T>(&pks[0])
            .await?
            .map(|b| (pks[0], state_of(Some(&b))))
            .into_iter()
            .collect(),
        2 => cache
            .get_many::<T>(pks)
            .await?
            .into_iter()
            .map(|r| (*r.pk(), state_of(Some(&r.to_json().expect("encodable")))))
            .collect(),
        _ => cache
            .get_many_json::<T>(pks)
            .await?
            .into_iter()
            .map(|b| {
                let pk = *T::decode(&b).expect("served JSON decodes").pk();
                (pk, state_of(Some(&b)))
            })
            .collect(),
    };
    Ok(pks
        .iter()
        .map(|pk| (*pk, found.get(pk).cloned().flatten()))
        .collect())
}

async fn reader(s: Arc<Shared>, id: u64) {
    let mut rng = Rng::new(s.args.seed.wrapping_mul(1000).wrapping_add(500 + id));
    let mut batch = Vec::with_capacity(256);
    while s.keep_going() {
        let model = match rng.below(10) {
            0..=1 => Model::User,
            2..=5 => Model::Question,
            _ => Model::Choice,
        };
        let range = match model {
            Model::User => s.args.users,
            Model::Question => s.args.questions,
            // Past the newest id too: rows that do not exist (yet).
            Model::Choice => s.max_choice.load(Ordering::Relaxed) + 2,
        };
        let live = match model {
            Model::Choice => Some(s.live_choices.lock().unwrap().clone()),
            _ => None,
        };
        let kind = rng.below(4);
        let count = if kind < 2 { 1 } else { 1 + rng.below(8) };
        let pks: Vec<i64> = (0..count)
            .map(|_| match &live {
                // Mostly choices that exist; a tenth of the time any id,
                // deleted, never created or not yet created.
                Some(live) if !live.is_empty() && rng.below(10) != 0 => {
                    live[rng.below(live.len() as u64) as usize]
                }
                _ => rng.pk(range),
            })
            .collect();
        let started = s.now();
        let seen = match model {
            Model::User => read_model::<User>(&s.cache, kind, &pks).await,
            Model::Question => read_model::<Question>(&s.cache, kind, &pks).await,
            Model::Choice => read_model::<Choice>(&s.cache, kind, &pks).await,
        };
        let finished = s.now();
        s.reads.fetch_add(1, Ordering::Relaxed);
        match seen {
            Ok(seen) => batch.extend(seen.into_iter().map(|(pk, state)| ReadRecord {
                key: (model, pk),
                state,
                started,
                finished,
            })),
            Err(e) => s.error("read", &e),
        }
        if batch.len() >= 200 {
            s.history.lock().unwrap().pending.append(&mut batch);
        }
    }
    s.history.lock().unwrap().pending.append(&mut batch);
}

/// Checks pending reads as the history allows, so memory stays bounded on
/// long runs.
async fn checker(s: Arc<Shared>) {
    while !s.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = s.now();
        s.history.lock().unwrap().check(now);
    }
}

// ---------------------------------------------------------------------------

async fn setup_data(db: &Db, url: &str, schema: &str, args: &Args) -> Result<(), Box<dyn Error>> {
    use sqlx::Connection;
    db.migrate().await?;
    db.seed(chrono::Utc::now()).await?;
    // More users than the seed's three (the polls API has no user writes).
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {schema}.users (username) SELECT 'user' || g FROM generate_series(4, {}) g",
        args.users
    )))
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    for q in 5..=args.questions {
        db.create_question(&format!("question {q}"), chrono::Utc::now())
            .await?;
    }
    let mut rng = Rng::new(args.seed);
    for c in 8..=args.choices {
        db.create_choice(rng.pk(args.questions), &format!("choice {c}"))
            .await?;
    }
    Ok(())
}

/// The cache's loaders: the polls models' generated sqlx loaders (the
/// same rows and relation lists as the polls database layer's loaders),
/// each load in one REPEATABLE READ transaction, so that it reads one
/// snapshot. (The polls layer's loaders run their statements one after the
/// other at READ COMMITTED: a load that straddles commits can return a mix
/// of states, each field fresh, that the database never held as a whole;
/// CONSISTENCY.md, and `tests/consistency_limits.rs`.)
#[derive(Clone)]
struct SnapshotLoader {
    pool: sqlx::PgPool,
}

impl SnapshotLoader {
    async fn connect(url: &str, schema: &str) -> Result<Self, sqlx::Error> {
        let options: sqlx::postgres::PgConnectOptions = url.parse()?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.options([("search_path", schema)]))
            .await?;
        Ok(SnapshotLoader { pool })
    }
}

impl<T> Loader<T> for SnapshotLoader
where
    T: cached_instances::sqlx::SqlxModel<sqlx::Postgres>,
{
    async fn load(&self, pks: &[T::Pk]) -> Result<Vec<T>, LoadError> {
        let mut tx = self.pool.begin().await.map_err(LoadError::new)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(LoadError::new)?;
        let rows = T::sqlx_load(&mut *tx, pks).await.map_err(LoadError::new)?;
        tx.commit().await.map_err(LoadError::new)?;
        Ok(rows)
    }
}

struct Report {
    elapsed: Duration,
    stale: u64,
    divergent: u64,
    errors: u64,
}

async fn soak(
    args: Args,
    loaders: SnapshotLoader,
    writes: Db,
    store: impl Store + Clone,
) -> Result<Report, Box<dyn Error>> {
    let cache = Cache::builder()
        .store(store.clone())
        .loader::<User>(loaders.clone())
        .loader::<Question>(loaders.clone())
        .loader::<Choice>(loaders.clone())
        .loader_timeout(Duration::from_secs(5))
        .build()?;
    let live: BTreeSet<i64> = {
        let mut ids = BTreeSet::new();
        let questions: Vec<i64> = (1..=args.questions).collect();
        for q in Loader::<Question>::load(&writes, &questions).await? {
            ids.extend(q.choices);
        }
        ids
    };
    let max_choice = live.last().copied().unwrap_or(0);
    let mut history = History::default();
    // Commit 0: the data as seeded.
    let mut keys: Vec<Key> = (1..=args.users).map(|u| (Model::User, u)).collect();
    keys.extend((1..=args.questions).map(|q| (Model::Question, q)));
    keys.extend((1..=max_choice).map(|c| (Model::Choice, c)));
    for (key, state) in snapshot(&writes, &keys).await? {
        history.states.insert(key, vec![(0, state)]);
    }
    history.commit_started.push(0);
    history.acked_at.push(Some(0));
    history.described.push("the initial data".into());

    let base = Instant::now();
    let shared = Arc::new(Shared {
        deadline: base + Duration::from_secs_f64(args.seconds),
        args: args.clone(),
        cache: cache.clone(),
        writes,
        commit: tokio::sync::Mutex::new(()),
        history: Mutex::new(history),
        live_choices: Mutex::new(Arc::new(live.iter().copied().collect())),
        choices: Mutex::new(live),
        max_choice: AtomicI64::new(max_choice),
        base,
        ops: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        writes_done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let check = tokio::spawn(checker(shared.clone()));
    let mut tasks = Vec::new();
    for w in 0..args.writers as u64 {
        tasks.push(tokio::spawn(writer(shared.clone(), w)));
    }
    for r in 0..args.readers as u64 {
        tasks.push(tokio::spawn(reader(shared.clone(), r)));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = base.elapsed();
    shared.stop.store(true, Ordering::Relaxed);
    check.await?;
    let (checked, stale, examples) = {
        let mut h = shared.history.lock().unwrap();
        let now = shared.now();
        h.in_progress = None;
        h.check(now + 1);
        assert!(h.pending.is_empty());
        (h.checked, h.stale, std::mem::take(&mut h.examples))
    };

    // Quiescence: what the store holds and what reads return is the
    // database, for every key.
    let max_choice = shared.max_choice.load(Ordering::Relaxed);
    let mut divergent = 0;
    for model in [Model::User, Model::Question, Model::Choice] {
        let n = match model {
            Model::User => args.users,
            Model::Question => args.questions,
            Model::Choice => max_choice + 1,
        };
        let pks: Vec<i64> = (1..=n).collect();
        let keys: Vec<Key> = pks.iter().map(|&pk| (model, pk)).collect();
        let expected: HashMap<Key, State> =
            snapshot(&shared.writes, &keys).await?.into_iter().collect();
        let read = match model {
            Model::User => read_model::<User>(&cache, 2, &pks).await?,
            Model::Question => read_model::<Question>(&cache, 2, &pks).await?,
            Model::Choice => read_model::<Choice>(&cache, 3, &pks).await?,
        };
        for (pk, state) in read {
            let key = (model, pk);
            let store_key = match model {
                Model::User => cache.key_of::<User>(&pk)?,
                Model::Question => cache.key_of::<Question>(&pk)?,
                Model::Choice => cache.key_of::<Choice>(&pk)?,
            };
            let held = store.get(&store_key).await?;
            let held = held
                .filter(|b| b.first() == Some(&b'{'))
                .map(|b| state_of(Some(&b)));
            let want = &expected[&key];
            if state != *want || held.is_some_and(|h| h != *want) {
                divergent += 1;
                eprintln!("after quiescence, {key:?} differs from the database");
            }
        }
    }

    let stats = cache.stats();
    let reads = shared.reads.load(Ordering::Relaxed);
    let writes = shared.writes_done.load(Ordering::Relaxed);
    let secs = elapsed.as_secs_f64();
    let looked_up = stats.hits + stats.misses;
    println!(
        "soak: {:.1} s, {} readers, {} writers, store {}",
        secs,
        args.readers,
        args.writers,
        if args.memory { "MemoryStore" } else { "Redis" }
    );
    println!(
        "  ops: {} ({:.0}/s): {} reads ({:.0}/s), {} writes ({:.0}/s)",
        reads + writes,
        (reads + writes) as f64 / secs,
        reads,
        reads as f64 / secs,
        writes,
        writes as f64 / secs
    );
    println!(
        "  hit rate: {:.1}% ({} hits, {} misses); {} loader calls, {} fills, {} fills rejected, {} lease waits, {} invalidations, {} store errors",
        100.0 * stats.hits as f64 / looked_up.max(1) as f64,
        stats.hits,
        stats.misses,
        stats.loader_calls,
        stats.fills,
        stats.fills_rejected,
        stats.lease_waits,
        stats.invalidations,
        stats.store_errors
    );
    println!(
        "  instance reads checked: {checked}; stale reads: {stale}; divergent after quiescence: {divergent}; errors: {}",
        shared.errors.load(Ordering::Relaxed)
    );
    for example in examples {
        println!("  stale: {example}");
    }
    Ok(Report {
        elapsed,
        stale,
        divergent,
        errors: shared.errors.load(Ordering::Relaxed),
    })
}

async fn run(args: Args) -> Result<bool, Box<dyn Error>> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let schema = format!("soak_{}_{nanos}", std::process::id());
    let writes = Db::postgres(&args.database.url, &schema)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", args.database.url))?;
    let result = async {
        setup_data(&writes, &args.database.url, &schema, &args).await?;
        let loaders = SnapshotLoader::connect(&args.database.url, &schema).await?;
        let report = if args.memory {
            soak(
                args.clone(),
                loaders.clone(),
                writes.clone(),
                MemoryStore::new(),
            )
            .await
        } else {
            let server = redis_server::RedisServer::start();
            let store = RedisStore::connect(&server.url()).await?;
            soak(args.clone(), loaders.clone(), writes.clone(), store).await
        };
        loaders.pool.close().await;
        report
    }
    .await;
    if let Err(e) = writes.drop_schema().await {
        eprintln!("could not drop schema {schema}: {e}");
    }
    writes.close().await;
    let report = result?;
    let ok = report.stale == 0 && report.divergent == 0 && report.errors == 0;
    println!(
        "soak {} after {:.1} s",
        if ok { "passed" } else { "FAILED" },
        report.elapsed.as_secs_f64()
    );
    Ok(ok)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if !(args.seconds > 0.0 && args.seconds <= 24.0 * 3600.0) {
        Args::command()
            .error(
                clap::error::ErrorKind::ValueValidation,
                "--seconds must be in (0, 86400]",
            )
            .exit();
    }
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
