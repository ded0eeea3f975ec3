//! Soak test: readers and writers on the polls models, over PostgreSQL and a
//! Redis server of its own, for a bounded time; then a consistency check of
//! everything the readers saw.
//!
//! ```sh
//! cargo run --example soak -- --seconds 5                          # CI's smoke run
//! cargo run --example soak -- --seconds 5 --feed --readers 4       # CI's change feed run
//! cargo run --example soak -- --seconds 5 --near                   # CI's near-cache runs
//! cargo run --example soak -- --seconds 5 --feed --readers 4 --near
//! cargo run --release --example soak -- --seconds 600 --readers 16 --writers 4
//! cargo run --release --example soak -- --seconds 60 --feed --processes 3
//! ```
//!
//! Two ways of writing:
//!
//! - **Told** (the default): writers run the polls database's writes (move
//!   a choice, vote, rename, create and delete choices) in transactions and
//!   tell the cache after each commit, as the polls API did (`saved_from`
//!   with the previous row the transaction read, `saved`, `refresh`,
//!   `deleted`). A write is acknowledged when its cache call returns.
//! - **`--feed`**: writers run the same kinds of writes as plain SQL and
//!   never call the cache (a choice's votes go with it by `ON DELETE
//!   CASCADE`); the change feed's triggers capture them and feed workers
//!   deliver them. This process and `--processes` reader processes (this
//!   binary again, `--role reader`) each have their own `Cache` on the one
//!   redis-server, run `--readers` readers and a feed worker of their own,
//!   so several workers drain one outbox. The reader processes send what
//!   they read back on stdout. A write is acknowledged when the feed has
//!   delivered it: its outbox rows are gone (a worker deletes them only
//!   once the store took their invalidation), as seen by polling the
//!   outbox every millisecond, so an acknowledgement is stamped up to a
//!   poll late, never early.
//!
//! `--near` puts a near cache in front of Redis in every process
//! (`RedisStore::builder(..).near_cache(..)`); the run fails if this
//! process's tier was not in use. Its one exception is another process's
//! write (CONSISTENCY.md): a read may miss it until Redis' push reaches the
//! reader's tier. So:
//!
//! - told writes: readers and writers share one process and its tier, where
//!   there is no exception, and every read is checked as without it;
//! - with `--feed`: the feed worker that delivers a write may be in another
//!   process than the reader, so a read may miss a change acknowledged less
//!   than a second before it began (`NEAR_GRACE`; the run reports how many
//!   did, and how long after the acknowledgement), never an older one.
//!
//! Readers read random users, questions and choices through every read
//! API; the caches load with the models' generated sqlx loaders, one
//! REPEATABLE READ snapshot per load. Commits are taken one at a time (a
//! lock around commit + snapshot) so that the database's history is one
//! sequence of states; the cache calls that follow them run concurrently.
//!
//! Checked, for every read (of every process): it returned a state the
//! database held between the last write acknowledged before the read began
//! and the read's end: never older, never one the database did not hold.
//! After quiescence (in `--feed` mode, once every outbox row is delivered):
//! every entry in Redis, and every read, equals the database; and with the
//! feed, the rows the workers delivered add up to the rows the triggers
//! wrote (each applied once, none lost). Measured: the **staleness window**
//! of each commit that changed a cached state, from the commit's return to
//! the start of the last read (any process) that still returned the state
//! before it (0 when none did), and the time from commit to
//! acknowledgement, as p50/p99/max. Prints ops/s, the hit rate, the
//! windows and the stale-read count, and exits non-zero on any violation.
//!
//! Every process stamps times with the same kernel clock (`CLOCK_REALTIME`,
//! nanoseconds since the run began), so stamps from different processes
//! compare. Traffic stays on loopback: the PostgreSQL server at
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`; the
//! run creates its own schema and drops it) and a `redis-server` the run
//! starts on a free loopback port and stops.

use std::collections::{BTreeSet, HashMap};
use std::error::Error;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cached_instances::feed::{Feed, OUTBOX_TABLE};
use cached_instances::{
    Cache, CachedInstance, LoadError, Loader, MemoryStore, NearCache, RedisStore, Store,
};
use cached_instances_testkit::cli::DatabaseArg;
use cached_instances_testkit::process::KillOnDrop;
use cached_instances_testkit::redis_server;
use cached_instances_testkit::rng::Rng;
use clap::{CommandFactory, Parser};
use polls::db::{ChoiceChanges, Db, QuestionChanges};
use polls::{Choice, Question, User};
use sqlx::AssertSqlSafe;

/// Readers and writers on the polls models over PostgreSQL and Redis, then
/// a consistency check of everything the readers saw.
#[derive(Debug, Clone, Parser)]
#[command(bin_name = "cargo run --example soak --")]
struct Args {
    /// How long readers and writers run, in seconds (at most a day).
    #[arg(long, value_name = "N", default_value_t = 10.0)]
    seconds: f64,
    /// Concurrent readers (per process with `--feed`).
    #[arg(long, value_name = "N", default_value_t = 8)]
    readers: usize,
    /// Concurrent writers.
    #[arg(long, value_name = "N", default_value_t = 2)]
    writers: usize,
    /// Stop earlier after this many reads and writes (per process).
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
    #[arg(long, conflicts_with = "feed")]
    memory: bool,
    /// Put a near cache in front of Redis in every process (hits served
    /// from memory, kept coherent by Redis' invalidation pushes). With
    /// `--feed`, a read may miss a change acknowledged less than a second
    /// before it began (the push on its way); otherwise none.
    #[arg(long, conflicts_with = "memory")]
    near: bool,
    /// Writers run plain SQL and never call the cache; the change feed
    /// delivers their writes, to this process and `--processes` reader
    /// processes, each with its own cache and feed worker.
    #[arg(long)]
    feed: bool,
    /// With `--feed`: reader processes besides this one.
    #[arg(long, value_name = "N", default_value_t = 2, requires = "feed")]
    processes: usize,
    /// Seed of the pseudo-random choices.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Internal: what this process is (`reader`: a reader process of a
    /// `--feed` run, spawned by it).
    #[arg(long, hide = true, value_enum, default_value_t = Role::Main)]
    role: Role,
    /// Internal (reader processes): their number, the run's schema, its
    /// redis-server and the clock reading its times count from.
    #[arg(long, hide = true, default_value_t = 0)]
    process: u64,
    #[arg(long, hide = true)]
    schema: Option<String>,
    #[arg(long, hide = true)]
    redis: Option<String>,
    #[arg(long, hide = true, default_value_t = 0)]
    base_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    Main,
    Reader,
}

// ---------------------------------------------------------------------------
// Time, shared by the processes of a run

/// Nanoseconds since the run began on the kernel's wall clock, which every
/// process reads alike (an `Instant` does not cross processes).
#[derive(Debug, Clone, Copy)]
struct Clock {
    base_ns: u64,
}

fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Clock {
    fn start() -> Clock {
        Clock {
            base_ns: realtime_ns(),
        }
    }

    fn now(self) -> u64 {
        realtime_ns().saturating_sub(self.base_ns)
    }
}

// ---------------------------------------------------------------------------
// The history

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Model {
    User,
    Question,
    Choice,
}

impl Model {
    /// Its letter on a reader process's output line.
    fn letter(self) -> char {
        match self {
            Model::User => 'U',
            Model::Question => 'Q',
            Model::Choice => 'C',
        }
    }

    fn from_letter(letter: &str) -> Option<Model> {
        match letter {
            "U" => Some(Model::User),
            "Q" => Some(Model::Question),
            "C" => Some(Model::Choice),
            _ => None,
        }
    }
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

impl ReadRecord {
    /// One line of a reader process's output (the JSON of a state holds no
    /// tab and no newline).
    fn line(&self) -> String {
        let state = self
            .state
            .as_deref()
            .map_or("-".into(), String::from_utf8_lossy);
        format!(
            "R\t{}\t{}\t{}\t{}\t{state}",
            self.key.0.letter(),
            self.key.1,
            self.started,
            self.finished
        )
    }

    fn parse(line: &str) -> Option<ReadRecord> {
        let mut fields = line.strip_prefix("R\t")?.splitn(5, '\t');
        let model = Model::from_letter(fields.next()?)?;
        let pk = fields.next()?.parse().ok()?;
        let started = fields.next()?.parse().ok()?;
        let finished = fields.next()?.parse().ok()?;
        let state = match fields.next()? {
            "-" => None,
            json => state_of(Some(json.as_bytes())),
        };
        Some(ReadRecord {
            key: (model, pk),
            state,
            started,
            finished,
        })
    }
}

#[derive(Default)]
struct History {
    /// Per key, (commit, state) for every commit that changed it, in
    /// commit order; commit 0 is the initial data.
    states: HashMap<Key, Vec<(usize, State)>>,
    /// When each commit began (it holds the commit lock from then until its
    /// snapshot is recorded). Index = commit.
    commit_started: Vec<u64>,
    /// When each commit returned (index = commit).
    committed_at: Vec<u64>,
    /// When a commit began that has not been recorded yet.
    in_progress: Option<u64>,
    /// When each commit was acknowledged: its cache call returned, or the
    /// feed delivered it (index = commit).
    acked_at: Vec<Option<u64>>,
    /// Whether each commit changed a state the caches hold.
    changed: Vec<bool>,
    /// Per commit, the latest start of a read that began after the commit
    /// returned and still returned an older state, less `committed_at`.
    windows: Vec<u64>,
    /// What each commit did, for the report of a stale read.
    described: Vec<String>,
    /// With the feed: (transaction id, commit) of commits whose outbox rows
    /// were not seen delivered yet.
    undelivered: Vec<(i64, usize)>,
    /// Reads waiting to be checked.
    pending: Vec<ReadRecord>,
    checked: u64,
    stale: u64,
    /// Reads that returned a state older than one committed before they
    /// began, but not older than the last acknowledged: inside a window.
    in_window: u64,
    /// With near caches and the feed: how long after its acknowledgement
    /// a change may still be missed (the push on its way to another
    /// process's tier, CONSISTENCY.md); 0 otherwise.
    grace: u64,
    /// Per read that missed a change acknowledged before it began, but
    /// less than `grace` before: how long before (its tier's lag).
    late: Vec<u64>,
    examples: Vec<String>,
}

impl History {
    /// A history whose commit 0 is `states`, acknowledged from the start.
    fn initial(states: Vec<(Key, State)>) -> History {
        History {
            states: states
                .into_iter()
                .map(|(key, state)| (key, vec![(0, state)]))
                .collect(),
            commit_started: vec![0],
            committed_at: vec![0],
            acked_at: vec![Some(0)],
            changed: vec![false],
            windows: vec![0],
            described: vec!["the initial data".into()],
            ..History::default()
        }
    }

    /// Records a commit (under the commit lock): its times, what it did,
    /// and the states of the keys it wrote (read after it). Returns its
    /// number.
    fn record(
        &mut self,
        started: u64,
        committed: u64,
        described: String,
        states: Vec<(Key, State)>,
    ) -> usize {
        let commit = self.commit_started.len();
        self.commit_started.push(started);
        self.committed_at.push(committed);
        self.acked_at.push(None);
        self.described.push(described);
        self.windows.push(0);
        let mut changed = false;
        for (key, state) in states {
            // A choice created now had no row before.
            let changes = self.states.entry(key).or_insert_with(|| vec![(0, None)]);
            // Only changes: a write that touched a key without changing it
            // (a choice "moved" to its own question) says nothing of it,
            // and its acknowledgement promises nothing about it.
            if changes.last().is_none_or(|(_, last)| *last != state) {
                changes.push((commit, state));
                changed = true;
            }
        }
        self.changed.push(changed);
        self.in_progress = None;
        commit
    }

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
            // The newest change acknowledged before `at` (commit 0, the
            // initial data, always is).
            let acked_before = |at: u64| {
                changes
                    .iter()
                    .rposition(|(c, _)| *c == 0 || self.acked_at[*c].is_some_and(|a| a < at))
                    .unwrap_or(0)
            };
            let floor = acked_before(read.started);
            // The newest commit that began before the read ended.
            let upper = self
                .commit_started
                .partition_point(|&at| at < read.finished)
                .saturating_sub(1);
            // The newest of the states from `floor` on that the read may
            // return and did.
            let returned_from = |floor: usize| {
                changes[floor..]
                    .iter()
                    .enumerate()
                    .filter(|(i, (c, _))| *i == 0 || *c <= upper)
                    .rfind(|(_, (_, state))| *state == read.state)
                    .map(|(i, _)| floor + i)
            };
            let returned = returned_from(floor);
            if returned.is_none() && self.grace > 0 {
                // Older than the last acknowledged change, but maybe not
                // older than one acknowledged `grace` before the read: a
                // tier that had not heard the push yet.
                if let Some(returned) =
                    returned_from(acked_before(read.started.saturating_sub(self.grace)))
                {
                    // The longest since a change it missed was
                    // acknowledged.
                    let first_ack = changes[returned + 1..=floor]
                        .iter()
                        .filter_map(|(c, _)| self.acked_at[*c].filter(|&a| a < read.started))
                        .min()
                        .unwrap_or(read.started);
                    self.late.push(read.started - first_ack);
                    continue;
                }
            }
            if let Some(returned) = returned {
                // Fresh enough; but if a newer change had returned before
                // the read began, the read was inside that change's window.
                let committed = changes
                    .iter()
                    .rposition(|(c, _)| *c == 0 || self.committed_at[*c] < read.started)
                    .unwrap_or(0);
                if returned < committed {
                    self.in_window += 1;
                    for (c, _) in &changes[returned + 1..=committed] {
                        let window = read.started.saturating_sub(self.committed_at[*c]);
                        self.windows[*c] = self.windows[*c].max(window);
                    }
                }
                continue;
            }
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

    /// The staleness windows and the commit -> acknowledgement times of
    /// the commits that changed a cached state.
    fn windows(&self) -> (Vec<u64>, Vec<u64>) {
        let changed = (1..self.changed.len()).filter(|&c| self.changed[c]);
        let windows = changed.clone().map(|c| self.windows[c]).collect();
        let acks = changed
            .filter_map(|c| Some(self.acked_at[c]?.saturating_sub(self.committed_at[c])))
            .collect();
        (windows, acks)
    }
}

/// With `--near --feed`, how long after its acknowledgement a change may
/// still be missed by a read: another process's tier hears of it from
/// Redis' push (CONSISTENCY.md, the near cache's one exception). A read
/// that misses a change acknowledged longer ago is stale.
const NEAR_GRACE: Duration = Duration::from_secs(1);

/// The grace this run's reads get ([`NEAR_GRACE`] or none).
fn history_grace(args: &Args) -> Duration {
    if args.near && args.feed {
        NEAR_GRACE
    } else {
        Duration::ZERO
    }
}

/// "p50 a, p99 b, max c" of `values`, in milliseconds.
fn distribution(mut values: Vec<u64>) -> String {
    if values.is_empty() {
        return "none".into();
    }
    values.sort_unstable();
    let at = |p: f64| values[((values.len() - 1) as f64 * p).round() as usize] as f64 / 1e6;
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.50),
        at(0.99),
        at(1.0)
    )
}

/// What every process's readers share: the cache, when to stop, the
/// counters, and which choices exist.
struct Run {
    args: Args,
    cache: Cache,
    clock: Clock,
    deadline: Instant,
    stop: AtomicBool,
    ops: AtomicU64,
    reads: AtomicU64,
    errors: AtomicU64,
    /// Live choice ids, for readers to pick from.
    live_choices: Mutex<Arc<Vec<i64>>>,
    max_choice: AtomicI64,
}

impl Run {
    fn new(args: Args, cache: Cache, clock: Clock, deadline: Instant, live: Vec<i64>) -> Run {
        Run {
            args,
            cache,
            clock,
            deadline,
            stop: AtomicBool::new(false),
            ops: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            max_choice: AtomicI64::new(live.iter().copied().max().unwrap_or(0)),
            live_choices: Mutex::new(Arc::new(live)),
        }
    }

    fn now(&self) -> u64 {
        self.clock.now()
    }

    fn set_live_choices(&self, live: Vec<i64>) {
        if let Some(&max) = live.iter().max() {
            self.max_choice.fetch_max(max, Ordering::Relaxed);
        }
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

struct Shared {
    run: Arc<Run>,
    /// The polls database layer: the told writes.
    db: Db,
    /// Plain SQL on the run's schema: the feed's writes, the snapshots of
    /// what a commit changed and the watch of the outbox.
    sql: SnapshotLoader,
    commit: tokio::sync::Mutex<()>,
    history: Mutex<History>,
    /// Live choice ids (changed under the commit lock).
    choices: Mutex<BTreeSet<i64>>,
    writes_done: AtomicU64,
    /// With the feed: outbox rows the triggers wrote.
    outbox_rows: AtomicU64,
}

/// Loads the current states of `keys` (after a commit, under the lock).
async fn snapshot(
    loader: &SnapshotLoader,
    keys: &[Key],
) -> Result<Vec<(Key, State)>, Box<dyn Error>> {
    let mut out = Vec::with_capacity(keys.len());
    for model in [Model::User, Model::Question, Model::Choice] {
        let pks: Vec<i64> = keys.iter().filter(|k| k.0 == model).map(|k| k.1).collect();
        if pks.is_empty() {
            continue;
        }
        let found: HashMap<i64, Vec<u8>> = match model {
            Model::User => encode_all(Loader::<User>::load(loader, &pks).await?),
            Model::Question => encode_all(Loader::<Question>::load(loader, &pks).await?),
            Model::Choice => encode_all(Loader::<Choice>::load(loader, &pks).await?),
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

/// One write, chosen at random.
#[derive(Debug)]
enum Write {
    /// A vote cast or withdrawn.
    Vote {
        choice: i64,
        user: i64,
        cast: bool,
    },
    /// A choice moved to another question.
    Move {
        choice: i64,
        to: i64,
    },
    /// A choice renamed: told with `saved`, or repaired with `refresh`.
    RenameChoice {
        choice: i64,
        text: String,
        refresh: bool,
    },
    /// A question renamed: told with `saved_from` or `saved`.
    RenameQuestion {
        question: i64,
        text: String,
        saved_from: bool,
    },
    /// A new choice.
    Create {
        question: i64,
        text: String,
    },
    /// A choice deleted, with its votes.
    Delete {
        choice: i64,
    },
    Nothing,
}

fn choose(rng: &mut Rng, args: &Args, live: &[i64], n: u64) -> Write {
    let pick = |rng: &mut Rng| live[rng.below(live.len() as u64) as usize];
    let roll = rng.below(100);
    if roll < 25 && !live.is_empty() {
        Write::Vote {
            choice: pick(rng),
            user: rng.pk(args.users),
            cast: rng.below(2) == 0,
        }
    } else if roll < 50 && !live.is_empty() {
        Write::Move {
            choice: pick(rng),
            to: rng.pk(args.questions),
        }
    } else if roll < 65 && !live.is_empty() {
        let choice = pick(rng);
        Write::RenameChoice {
            choice,
            text: format!("choice {choice} #{n}"),
            refresh: rng.below(2) == 0,
        }
    } else if roll < 75 {
        let question = rng.pk(args.questions);
        Write::RenameQuestion {
            question,
            text: format!("question {question} #{n}"),
            saved_from: rng.below(2) == 0,
        }
    } else if roll < 88 && (live.len() as i64) < args.choices + 10 {
        Write::Create {
            question: rng.pk(args.questions),
            text: format!("new choice #{n}"),
        }
    } else if !live.is_empty() && (live.len() as i64) > args.choices / 2 {
        Write::Delete { choice: pick(rng) }
    } else {
        Write::Nothing
    }
}

/// What a told write tells the cache after its commit.
enum Tell {
    SavedFrom(Choice, Choice),
    Saved(Choice),
    Refresh(i64),
    Deleted(Choice),
    QuestionSavedFrom(Question, Question),
    QuestionSaved(Question),
    Nothing,
}

/// A committed write.
struct Done {
    /// The keys it may have changed.
    keys: Vec<Key>,
    created: Option<i64>,
    deleted: Option<i64>,
    /// Told: what to tell the cache.
    tell: Tell,
    /// With the feed: its transaction id and how many outbox rows it wrote.
    captured: Option<(i64, u64)>,
}

impl Done {
    fn new(keys: Vec<Key>) -> Done {
        Done {
            keys,
            created: None,
            deleted: None,
            tell: Tell::Nothing,
            captured: None,
        }
    }
}

/// A told write, through the polls database layer (which reads the
/// previous row in the transaction, for `saved_from`).
async fn write_told(db: &Db, write: &Write) -> Result<Done, Box<dyn Error>> {
    let mut done = Done::new(Vec::new());
    match *write {
        Write::Vote { choice, user, cast } => {
            let (previous, new) = db.set_vote(choice, user, cast).await?;
            done.keys = vec![(Model::Choice, choice), (Model::User, user)];
            done.tell = Tell::SavedFrom(previous, new);
        }
        Write::Move { choice, to } => {
            let changes = ChoiceChanges {
                question_id: Some(to),
                ..Default::default()
            };
            let (previous, new) = db.update_choice(choice, changes).await?;
            done.keys = vec![
                (Model::Choice, choice),
                (Model::Question, previous.question_id),
                (Model::Question, new.question_id),
            ];
            done.tell = Tell::SavedFrom(previous, new);
        }
        Write::RenameChoice {
            choice,
            ref text,
            refresh,
        } => {
            let changes = ChoiceChanges {
                choice_text: Some(text.clone()),
                ..Default::default()
            };
            let (_, new) = db.update_choice(choice, changes).await?;
            done.keys = vec![(Model::Choice, choice)];
            done.tell = if refresh {
                Tell::Refresh(choice)
            } else {
                Tell::Saved(new)
            };
        }
        Write::RenameQuestion {
            question,
            ref text,
            saved_from,
        } => {
            let changes = QuestionChanges {
                question_text: Some(text.clone()),
                ..Default::default()
            };
            let (previous, new) = db.update_question(question, changes).await?;
            done.keys = vec![(Model::Question, question)];
            done.tell = if saved_from {
                Tell::QuestionSavedFrom(previous, new)
            } else {
                Tell::QuestionSaved(new)
            };
        }
        Write::Create { question, ref text } => {
            let new = db.create_choice(question, text).await?;
            done.keys = vec![(Model::Choice, new.id), (Model::Question, question)];
            done.created = Some(new.id);
            done.tell = Tell::Saved(new);
        }
        Write::Delete { choice } => {
            let previous = db.delete_choice(choice).await?;
            done.keys = vec![
                (Model::Choice, previous.id),
                (Model::Question, previous.question_id),
            ];
            done.keys
                .extend(previous.voters.iter().map(|&u| (Model::User, u)));
            done.deleted = Some(choice);
            done.tell = Tell::Deleted(previous);
        }
        Write::Nothing => {}
    }
    Ok(done)
}

/// A write with the feed: plain SQL on the polls tables, as `psql` or
/// another service would run it, in one transaction; nothing is told.
async fn write_sql(pool: &sqlx::PgPool, write: &Write) -> Result<Done, Box<dyn Error>> {
    let mut tx = pool.begin().await?;
    let done = match *write {
        Write::Vote { choice, user, cast } => {
            let sql = if cast {
                "INSERT INTO votes (user_id, choice_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            } else {
                "DELETE FROM votes WHERE user_id = $1 AND choice_id = $2"
            };
            sqlx::query(sql)
                .bind(user)
                .bind(choice)
                .execute(&mut *tx)
                .await?;
            Done::new(vec![(Model::Choice, choice), (Model::User, user)])
        }
        Write::Move { choice, to } => {
            let (from,): (i64,) = sqlx::query_as("SELECT question_id FROM choices WHERE id = $1")
                .bind(choice)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query("UPDATE choices SET question_id = $2 WHERE id = $1")
                .bind(choice)
                .bind(to)
                .execute(&mut *tx)
                .await?;
            Done::new(vec![
                (Model::Choice, choice),
                (Model::Question, from),
                (Model::Question, to),
            ])
        }
        Write::RenameChoice {
            choice, ref text, ..
        } => {
            sqlx::query("UPDATE choices SET choice_text = $2 WHERE id = $1")
                .bind(choice)
                .bind(text)
                .execute(&mut *tx)
                .await?;
            Done::new(vec![(Model::Choice, choice)])
        }
        Write::RenameQuestion {
            question, ref text, ..
        } => {
            sqlx::query("UPDATE questions SET question_text = $2 WHERE id = $1")
                .bind(question)
                .bind(text)
                .execute(&mut *tx)
                .await?;
            Done::new(vec![(Model::Question, question)])
        }
        Write::Create { question, ref text } => {
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO choices (question_id, choice_text) VALUES ($1, $2) RETURNING id",
            )
            .bind(question)
            .bind(text)
            .fetch_one(&mut *tx)
            .await?;
            let mut done = Done::new(vec![(Model::Choice, id), (Model::Question, question)]);
            done.created = Some(id);
            done
        }
        Write::Delete { choice } => {
            let voters: Vec<(i64,)> =
                sqlx::query_as("SELECT user_id FROM votes WHERE choice_id = $1")
                    .bind(choice)
                    .fetch_all(&mut *tx)
                    .await?;
            // Its votes go by ON DELETE CASCADE; the votes table's
            // triggers capture them all the same.
            let (question,): (i64,) =
                sqlx::query_as("DELETE FROM choices WHERE id = $1 RETURNING question_id")
                    .bind(choice)
                    .fetch_one(&mut *tx)
                    .await?;
            let mut keys = vec![(Model::Choice, choice), (Model::Question, question)];
            keys.extend(voters.into_iter().map(|(u,)| (Model::User, u)));
            let mut done = Done::new(keys);
            done.deleted = Some(choice);
            done
        }
        Write::Nothing => Done::new(Vec::new()),
    };
    // The transaction sees its own outbox rows.
    let (txid, rows): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT txid_current(), COUNT(*) FROM {OUTBOX_TABLE} WHERE txid = txid_current()"
    )))
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Done {
        captured: Some((txid, u64::try_from(rows).unwrap_or(0))),
        ..done
    })
}

/// One write: commit (under the commit lock, with a snapshot of what it
/// changed), then tell the cache or leave it to the feed, then record the
/// acknowledgement (told) or wait for the watch to (feed).
async fn write_once(s: &Shared, rng: &mut Rng, n: u64) -> Result<(), Box<dyn Error>> {
    let guard = s.commit.lock().await;
    // Stamped under the history's lock: a check that ran before it saw
    // only reads that ended before it.
    let started = {
        let mut h = s.history.lock().unwrap();
        let started = s.run.now();
        h.in_progress = Some(started);
        started
    };
    let live: Vec<i64> = s.choices.lock().unwrap().iter().copied().collect();
    let write = choose(rng, &s.run.args, &live, n);
    let mut done = if s.run.args.feed {
        write_sql(&s.sql.pool, &write).await?
    } else {
        write_told(&s.db, &write).await?
    };
    let committed = s.run.now();
    if done.created.is_some() || done.deleted.is_some() {
        let mut choices = s.choices.lock().unwrap();
        choices.extend(done.created);
        if let Some(deleted) = done.deleted {
            choices.remove(&deleted);
        }
        s.run
            .set_live_choices(choices.iter().copied().collect::<Vec<_>>());
    }
    done.keys.sort();
    done.keys.dedup();
    let states = snapshot(&s.sql, &done.keys).await?;
    let commit = {
        let mut h = s.history.lock().unwrap();
        let commit = h.record(started, committed, format!("{write:?}"), states);
        match done.captured {
            // Nothing cached changed: nothing to deliver.
            Some((_, 0)) => h.acked_at[commit] = Some(committed),
            Some((txid, rows)) => {
                s.outbox_rows.fetch_add(rows, Ordering::Relaxed);
                h.undelivered.push((txid, commit));
            }
            None => {}
        }
        commit
    };
    drop(guard);
    if done.captured.is_some() {
        return Ok(());
    }

    // Told after the commit, concurrently with other writers' commits.
    let cache = &s.run.cache;
    match done.tell {
        Tell::SavedFrom(previous, new) => cache.saved_from(&previous, &new).await?,
        Tell::Saved(new) => cache.saved(&new).await?,
        Tell::Refresh(c) => {
            cache.refresh::<Choice>(&c).await?;
        }
        Tell::Deleted(previous) => cache.deleted(&previous).await?,
        Tell::QuestionSavedFrom(previous, new) => cache.saved_from(&previous, &new).await?,
        Tell::QuestionSaved(new) => cache.saved(&new).await?,
        Tell::Nothing => {}
    }
    let mut h = s.history.lock().unwrap();
    h.acked_at[commit] = Some(s.run.now());
    Ok(())
}

async fn writer(s: Arc<Shared>, id: u64) {
    let mut rng = Rng::new(s.run.args.seed.wrapping_mul(1000).wrapping_add(id));
    let mut n = 0;
    while s.run.keep_going() {
        n += 1;
        if let Err(e) = write_once(&s, &mut rng, id * 1_000_000_000 + n).await {
            // A failed commit (a chosen choice deleted meanwhile cannot
            // happen: choices change under the lock) is a soak failure.
            s.history.lock().unwrap().in_progress = None;
            s.run.error("write", &e);
        }
        s.writes_done.fetch_add(1, Ordering::Relaxed);
    }
}

/// With the feed: acknowledges each commit once its outbox rows are gone
/// (deleted by a worker after the store took their invalidation), stamped
/// after the poll that saw them gone, so never early.
async fn watch_deliveries(s: Arc<Shared>) {
    while !s.run.stop.load(Ordering::Relaxed) {
        let txids: Vec<i64> = s
            .history
            .lock()
            .unwrap()
            .undelivered
            .iter()
            .map(|(txid, _)| *txid)
            .collect();
        if !txids.is_empty() {
            let left: Result<Vec<(i64,)>, _> = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT DISTINCT txid FROM {OUTBOX_TABLE} WHERE txid = ANY($1)"
            )))
            .bind(&txids)
            .fetch_all(&s.sql.pool)
            .await;
            match left {
                Ok(left) => {
                    let left: BTreeSet<i64> = left.into_iter().map(|(txid,)| txid).collect();
                    let mut h = s.history.lock().unwrap();
                    let now = s.run.now();
                    let mut undelivered = std::mem::take(&mut h.undelivered);
                    undelivered.retain(|&(txid, commit)| {
                        let delivered = txids.contains(&txid) && !left.contains(&txid);
                        if delivered {
                            h.acked_at[commit] = Some(now);
                        }
                        !delivered
                    });
                    h.undelivered = undelivered;
                }
                Err(e) => s.run.error("watching the outbox", &e),
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
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

/// Reads until the run ends, handing what it read to `sink` in batches.
async fn reader(run: Arc<Run>, id: u64, mut sink: impl FnMut(&mut Vec<ReadRecord>)) {
    let seed = run.args.seed.wrapping_mul(1000);
    let mut rng = Rng::new(seed.wrapping_add(500 + 100 * run.args.process + id));
    let mut batch = Vec::with_capacity(256);
    while run.keep_going() {
        let model = match rng.below(10) {
            0..=1 => Model::User,
            2..=5 => Model::Question,
            _ => Model::Choice,
        };
        let range = match model {
            Model::User => run.args.users,
            Model::Question => run.args.questions,
            // Past the newest id too: rows that do not exist (yet).
            Model::Choice => run.max_choice.load(Ordering::Relaxed) + 2,
        };
        let live = match model {
            Model::Choice => Some(run.live_choices.lock().unwrap().clone()),
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
        let started = run.now();
        let seen = match model {
            Model::User => read_model::<User>(&run.cache, kind, &pks).await,
            Model::Question => read_model::<Question>(&run.cache, kind, &pks).await,
            Model::Choice => read_model::<Choice>(&run.cache, kind, &pks).await,
        };
        let finished = run.now();
        run.reads.fetch_add(1, Ordering::Relaxed);
        match seen {
            Ok(seen) => batch.extend(seen.into_iter().map(|(pk, state)| ReadRecord {
                key: (model, pk),
                state,
                started,
                finished,
            })),
            Err(e) => run.error("read", &e),
        }
        if batch.len() >= 200 {
            sink(&mut batch);
        }
    }
    sink(&mut batch);
}

/// Checks pending reads as the history allows, so memory stays bounded on
/// long runs.
async fn checker(s: Arc<Shared>) {
    while !s.run.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = s.run.now();
        s.history.lock().unwrap().check(now);
    }
}

// ---------------------------------------------------------------------------
// Reader processes (`--feed`)

/// What a reader process did, its last line of output.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct ProcessReport {
    reads: u64,
    errors: u64,
    /// Outbox rows its feed worker delivered.
    delivered: u64,
    dead_letters: u64,
    hits: u64,
    misses: u64,
    loader_calls: u64,
    fills_rejected: u64,
}

impl ProcessReport {
    fn of(run: &Run, feed: &Feed) -> ProcessReport {
        let stats = run.cache.stats();
        let fed = feed.stats();
        ProcessReport {
            reads: run.reads.load(Ordering::Relaxed),
            errors: run.errors.load(Ordering::Relaxed),
            delivered: fed.delivered,
            dead_letters: fed.dead_letters,
            hits: stats.hits,
            misses: stats.misses,
            loader_calls: stats.loader_calls,
            fills_rejected: stats.fills_rejected,
        }
    }
}

/// A reader process: its own cache on the run's redis-server, readers and
/// a feed worker, until its stdin closes. Prints each read as a line, then
/// its report.
async fn reader_process(args: Args) -> Result<bool, Box<dyn Error>> {
    let schema = args.schema.clone().ok_or("--role reader needs --schema")?;
    let redis = args.redis.clone().ok_or("--role reader needs --redis")?;
    let loaders = SnapshotLoader::connect(&args.database.url, &schema, 4).await?;
    let cache = build_cache(connect(&redis, args.near).await?, &loaders)?;
    // Installed by the main process.
    let feed = Feed::new(cache.clone(), loaders.pool.clone());
    let worker = feed.spawn();
    let clock = Clock {
        base_ns: args.base_ns,
    };
    // Until the main process closes our stdin; the deadline is a backstop.
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds + 60.0);
    let run = Arc::new(Run::new(args.clone(), cache, clock, deadline, Vec::new()));
    {
        let run = run.clone();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            run.stop.store(true, Ordering::Relaxed);
        });
    }
    // Which choices exist, from the database (the writers are elsewhere).
    let refresh = {
        let (run, pool) = (run.clone(), loaders.pool.clone());
        tokio::spawn(async move {
            while !run.stop.load(Ordering::Relaxed) && Instant::now() < run.deadline {
                match sqlx::query_as::<_, (i64,)>("SELECT id FROM choices ORDER BY id")
                    .fetch_all(&pool)
                    .await
                {
                    Ok(ids) => run.set_live_choices(ids.into_iter().map(|(id,)| id).collect()),
                    Err(e) => run.error("listing choices", &e),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let (send, receive) = std::sync::mpsc::channel::<Vec<ReadRecord>>();
    let printer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for batch in receive {
            for read in batch {
                writeln!(out, "{}", read.line())?;
            }
            out.flush()?;
        }
        Ok(())
    });
    let mut readers = Vec::new();
    for r in 0..args.readers as u64 {
        let send = send.clone();
        readers.push(tokio::spawn(reader(run.clone(), r, move |batch| {
            let _ = send.send(std::mem::take(batch));
        })));
    }
    drop(send);
    for task in readers {
        task.await?;
    }
    run.stop.store(true, Ordering::Relaxed);
    refresh.await?;
    printer.join().map_err(|_| "the printer panicked")??;
    worker.stop().await;
    // Every fill answered: the counts are final.
    run.cache.settle().await;
    let report = ProcessReport::of(&run, &feed);
    println!("S\t{}", serde_json::to_string(&report)?);
    loaders.pool.close().await;
    Ok(report.errors == 0)
}

/// A spawned reader process and the thread collecting its output.
struct ReaderProcess {
    child: KillOnDrop,
    output: std::thread::JoinHandle<Option<ProcessReport>>,
}

fn spawn_reader_process(
    s: &Arc<Shared>,
    process: u64,
    schema: &str,
    redis: &str,
) -> Result<ReaderProcess, Box<dyn Error>> {
    let a = &s.run.args;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args(["--role", "reader", "--feed"])
        .args(a.near.then_some("--near"))
        .args(["--process", &process.to_string()])
        .args(["--schema", schema, "--redis", redis])
        .args(["--base-ns", &s.run.clock.base_ns.to_string()])
        .args(["--database", &a.database.url])
        .args(["--seconds", &a.seconds.to_string()])
        .args(["--readers", &a.readers.to_string()])
        .args(["--max-ops", &a.max_ops.to_string()])
        .args(["--users", &a.users.to_string()])
        .args(["--questions", &a.questions.to_string()])
        .args(["--seed", &a.seed.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = KillOnDrop::spawn(&mut command)?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let s = s.clone();
    let output = std::thread::spawn(move || {
        let mut report = None;
        let mut batch = Vec::with_capacity(512);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(read) = ReadRecord::parse(&line) {
                batch.push(read);
                if batch.len() >= 500 {
                    s.history.lock().unwrap().pending.append(&mut batch);
                }
            } else if let Some(json) = line.strip_prefix("S\t") {
                report = serde_json::from_str(json).ok();
            } else {
                s.run.error(
                    &format!("reader process {process}"),
                    &format!("unexpected output {line:?}"),
                );
            }
        }
        s.history.lock().unwrap().pending.append(&mut batch);
        report
    });
    Ok(ReaderProcess { child, output })
}

impl ReaderProcess {
    /// Closes its stdin (it stops reading), collects the rest of its
    /// output and waits for it to exit.
    fn finish(mut self) -> Result<ProcessReport, String> {
        drop(self.child.stdin.take());
        let report = self.output.join().map_err(|_| "output thread panicked")?;
        let status = self.child.wait().map_err(|e| e.to_string())?;
        match report {
            Some(report) if status.success() => Ok(report),
            _ => Err(format!("a reader process failed ({status})")),
        }
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

/// The cache's loaders: the polls models' generated sqlx loaders, each
/// load in one REPEATABLE READ transaction, so that it reads one snapshot.
/// (Loaders that run their statements one after the other at READ
/// COMMITTED can return, for a load that straddles commits, a mix of
/// states, each field fresh, that the database never held as a whole;
/// CONSISTENCY.md, and `tests/consistency_limits.rs`.) Also the snapshots
/// the history records.
#[derive(Clone)]
struct SnapshotLoader {
    pool: sqlx::PgPool,
}

impl SnapshotLoader {
    async fn connect(url: &str, schema: &str, connections: u32) -> Result<Self, sqlx::Error> {
        let options: sqlx::postgres::PgConnectOptions = url.parse()?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(connections)
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

/// The run's redis-server, with a near cache in front if `near`.
async fn connect(url: &str, near: bool) -> Result<RedisStore, Box<dyn Error>> {
    let builder = RedisStore::builder(url);
    let builder = if near {
        builder.near_cache(NearCache::new())
    } else {
        builder
    };
    Ok(builder.connect().await?)
}

fn build_cache(store: impl Store, loaders: &SnapshotLoader) -> Result<Cache, Box<dyn Error>> {
    Ok(Cache::builder()
        .store(store)
        .loader::<User>(loaders.clone())
        .loader::<Question>(loaders.clone())
        .loader::<Choice>(loaders.clone())
        .loader_timeout(Duration::from_secs(5))
        .build()?)
}

struct Report {
    elapsed: Duration,
    stale: u64,
    divergent: u64,
    errors: u64,
    /// With the feed: whether the rows delivered add up to those written.
    feed_ok: bool,
}

/// Where the run's data lives.
struct Place<'a> {
    schema: &'a str,
    /// The redis-server's URL (`None`: the MemoryStore).
    redis: Option<&'a str>,
}

async fn soak(
    args: Args,
    place: Place<'_>,
    loaders: SnapshotLoader,
    sql: SnapshotLoader,
    db: Db,
    store: impl Store + Clone,
) -> Result<Report, Box<dyn Error>> {
    let cache = build_cache(store.clone(), &loaders)?;
    let feed = Feed::new(cache.clone(), loaders.pool.clone());
    if args.feed {
        feed.install().await?;
    }
    let live: BTreeSet<i64> = {
        let mut ids = BTreeSet::new();
        let questions: Vec<i64> = (1..=args.questions).collect();
        for q in Loader::<Question>::load(&sql, &questions).await? {
            ids.extend(q.choices);
        }
        ids
    };
    let max_choice = live.last().copied().unwrap_or(0);
    // Commit 0: the data as seeded.
    let mut keys: Vec<Key> = (1..=args.users).map(|u| (Model::User, u)).collect();
    keys.extend((1..=args.questions).map(|q| (Model::Question, q)));
    keys.extend((1..=max_choice).map(|c| (Model::Choice, c)));
    let mut history = History::initial(snapshot(&sql, &keys).await?);
    history.grace = history_grace(&args).as_nanos() as u64;

    let clock = Clock::start();
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let run = Arc::new(Run::new(
        args.clone(),
        cache.clone(),
        clock,
        deadline,
        live.iter().copied().collect(),
    ));
    let shared = Arc::new(Shared {
        run: run.clone(),
        db,
        sql,
        commit: tokio::sync::Mutex::new(()),
        history: Mutex::new(history),
        choices: Mutex::new(live),
        writes_done: AtomicU64::new(0),
        outbox_rows: AtomicU64::new(0),
    });
    let mut processes = Vec::new();
    let mut worker = None;
    let mut watch = None;
    if args.feed {
        let redis = place.redis.ok_or("--feed needs Redis")?;
        for p in 1..=args.processes as u64 {
            processes.push(spawn_reader_process(&shared, p, place.schema, redis)?);
        }
        worker = Some(feed.spawn());
        watch = Some(tokio::spawn(watch_deliveries(shared.clone())));
    }
    let check = tokio::spawn(checker(shared.clone()));
    let mut tasks = Vec::new();
    for w in 0..args.writers as u64 {
        tasks.push(tokio::spawn(writer(shared.clone(), w)));
    }
    for r in 0..args.readers as u64 {
        let s = shared.clone();
        tasks.push(tokio::spawn(reader(run.clone(), r, move |batch| {
            s.history.lock().unwrap().pending.append(batch)
        })));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = clock.now();
    let mut reports = Vec::new();
    for process in processes {
        match tokio::task::spawn_blocking(move || process.finish()).await? {
            Ok(report) => reports.push(report),
            Err(e) => run.error("reader process", &e),
        }
    }
    if watch.is_some() {
        // Quiescence: every commit delivered (bounded).
        for _ in 0..6000 {
            if shared.history.lock().unwrap().undelivered.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = shared.history.lock().unwrap().undelivered.len();
        if left > 0 {
            run.error("feed", &format!("{left} commits never delivered"));
        }
    }
    run.stop.store(true, Ordering::Relaxed);
    check.await?;
    if let Some(watch) = watch {
        watch.await?;
    }
    if let Some(worker) = worker {
        worker.stop().await;
    }
    run.cache.settle().await;
    reports.insert(0, ProcessReport::of(&run, &feed));
    let (checked, stale, in_window, late, examples, (windows, acks)) = {
        let mut h = shared.history.lock().unwrap();
        let now = run.now();
        h.in_progress = None;
        h.check(now + 1);
        assert!(h.pending.is_empty());
        let examples = std::mem::take(&mut h.examples);
        let late = std::mem::take(&mut h.late);
        (h.checked, h.stale, h.in_window, late, examples, h.windows())
    };

    // Quiescence: what the store holds and what reads return is the
    // database, for every key; with near caches, once the last pushes
    // had their grace to arrive.
    if history_grace(&args) > Duration::ZERO {
        tokio::time::sleep(history_grace(&args)).await;
    }
    let max_choice = run.max_choice.load(Ordering::Relaxed);
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
            snapshot(&shared.sql, &keys).await?.into_iter().collect();
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

    let reads: u64 = reports.iter().map(|r| r.reads).sum();
    let writes = shared.writes_done.load(Ordering::Relaxed);
    let secs = elapsed as f64 / 1e9;
    let (hits, misses) = reports
        .iter()
        .fold((0, 0), |(h, m), r| (h + r.hits, m + r.misses));
    let stats = cache.stats();
    println!(
        "soak: {:.1} s, {} writers {}, {} readers in each of {} process(es), store {}",
        secs,
        args.writers,
        if args.feed {
            "(plain SQL, delivered by the change feed)"
        } else {
            "(telling the cache)"
        },
        args.readers,
        reports.len(),
        if args.memory {
            "MemoryStore"
        } else if args.near {
            "Redis with a near cache"
        } else {
            "Redis"
        }
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
        "  hit rate: {:.1}% ({hits} hits, {misses} misses); this process: {} loader calls, {} fills, {} fills rejected, {} lease waits, {} invalidations, {} store errors",
        100.0 * hits as f64 / (hits + misses).max(1) as f64,
        stats.loader_calls,
        stats.fills,
        stats.fills_rejected,
        stats.lease_waits,
        stats.invalidations,
        stats.store_errors
    );
    let mut feed_ok = true;
    if args.feed {
        let written = shared.outbox_rows.load(Ordering::Relaxed);
        let delivered: Vec<u64> = reports.iter().map(|r| r.delivered).collect();
        let dead: u64 = reports.iter().map(|r| r.dead_letters).sum();
        let total: u64 = delivered.iter().sum();
        // SKIP LOCKED: each row is delivered by one worker, once.
        feed_ok = total + dead == written;
        println!(
            "  feed: {written} outbox rows written; delivered per process (this one first) {delivered:?} = {total}, {dead} dead letters{}",
            if feed_ok { "" } else { ": MISMATCH" }
        );
    }
    println!(
        "  commits that changed a cached state: {}; commit -> acknowledged{}: {}",
        windows.len(),
        if args.feed {
            " (outbox rows seen gone, polled every ms)"
        } else {
            " (cache call returned)"
        },
        distribution(acks)
    );
    println!(
        "  staleness window (commit -> start of the last read that returned an older state; 0 if none): {}; commits with a stale read: {}; reads inside a window: {in_window}",
        distribution(windows.clone()),
        windows.iter().filter(|&&w| w > 0).count(),
    );
    println!(
        "  instance reads checked: {checked}; stale reads after the acknowledgement: {stale}; divergent after quiescence: {divergent}; errors: {}",
        run.errors.load(Ordering::Relaxed)
    );
    if history_grace(&args) > Duration::ZERO {
        println!(
            "  near caches: reads that missed a change acknowledged less than {:?} before they began (its push not yet heard): {}; since that acknowledgement: {}",
            history_grace(&args),
            late.len(),
            distribution(late)
        );
    }
    println!(
        "  load average: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    for example in examples {
        println!("  stale: {example}");
    }
    Ok(Report {
        elapsed: Duration::from_nanos(elapsed),
        stale,
        divergent,
        errors: run.errors.load(Ordering::Relaxed),
        feed_ok,
    })
}

async fn run(args: Args) -> Result<bool, Box<dyn Error>> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let schema = format!("soak_{}_{nanos}", std::process::id());
    let db = Db::postgres(&args.database.url, &schema)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", args.database.url))?;
    let result = async {
        setup_data(&db, &args.database.url, &schema, &args).await?;
        let loaders = SnapshotLoader::connect(&args.database.url, &schema, 4).await?;
        let sql = SnapshotLoader::connect(&args.database.url, &schema, 4).await?;
        let report = if args.memory {
            let place = Place {
                schema: &schema,
                redis: None,
            };
            let store = MemoryStore::new();
            soak(
                args.clone(),
                place,
                loaders.clone(),
                sql.clone(),
                db.clone(),
                store,
            )
            .await
        } else {
            let server = redis_server::RedisServer::start();
            let url = server.url();
            let place = Place {
                schema: &schema,
                redis: Some(&url),
            };
            let store = connect(&url, args.near).await?;
            let report = soak(
                args.clone(),
                place,
                loaders.clone(),
                sql.clone(),
                db.clone(),
                store.clone(),
            )
            .await;
            match (report, store.near_cache_stats()) {
                (Ok(mut report), Some(near)) => {
                    println!(
                        "  near cache (this process): {} entry reads from the tier, {} from Redis; {} entries ({} bytes) held at the end, {} evicted by pushes and own writes, {} flushes, tracking {}",
                        near.hits,
                        near.misses,
                        near.entries,
                        near.bytes,
                        near.invalidations,
                        near.flushes,
                        if near.tracking { "on" } else { "off" }
                    );
                    // A run whose tier was off, served nothing, or never
                    // evicted has not tested it.
                    if !near.tracking || near.hits == 0 || near.invalidations == 0 {
                        eprintln!("the near cache was not in use");
                        report.errors += 1;
                    }
                    Ok(report)
                }
                (report, _) => report,
            }
        };
        loaders.pool.close().await;
        sql.pool.close().await;
        report
    }
    .await;
    if let Err(e) = db.drop_schema().await {
        eprintln!("could not drop schema {schema}: {e}");
    }
    db.close().await;
    let report = result?;
    let ok = report.stale == 0 && report.divergent == 0 && report.errors == 0 && report.feed_ok;
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
    let result = match args.role {
        Role::Main => run(args).await,
        Role::Reader => reader_process(args).await,
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
