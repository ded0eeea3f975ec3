//! The change feed on real databases: SQLite in memory, and a fresh schema
//! of the PostgreSQL server at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) per test, dropped afterwards.
//!
//! What is counted: the store keys an invalidation replaces (a recording
//! wrapper over the real `MemoryStore` sees every `swap_many` and
//! `delete_many`), outbox and dead-letter rows, and the cache's reads.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cached_instances::feed::{DEAD_LETTER_TABLE, Feed, FeedPool, OUTBOX_TABLE};
use cached_instances::sqlx::SqlxLoader;
use cached_instances::store::{InProcess, StoreFuture};
use cached_instances::{Cache, CachedInstance, Loader, MemoryStore, Store};
use cached_instances_testkit::process::KillOnDrop;
use cached_instances_testkit::store::{Hook, Keys, Op, Wrapped};
use polls::db::{POSTGRES_SCHEMA, SQLITE_SCHEMA};
use polls::{Choice, Question, User};
use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

// ---------------------------------------------------------------------------
// Databases

/// `hits` is a column no model reads, added to the polls example's tables.
const HITS: &str = "ALTER TABLE questions ADD COLUMN hits INTEGER NOT NULL DEFAULT 0";

/// The explicit ids are followed by sequence-free inserts in the scenarios,
/// so the sequences are set past them.
const ROWS: &str = "
INSERT INTO users (id, username) VALUES (1, 'ann'), (2, 'bob'), (3, 'cy');
INSERT INTO questions (id, question_text, pub_date) VALUES
    (1, 'What''s up?', '2024-02-21T23:59:59Z'), (2, 'Tea or coffee?', '2024-02-22T23:59:59Z');
INSERT INTO choices (id, question_id, choice_text) VALUES
    (1, 1, 'Not much'), (2, 1, 'The sky'), (3, 2, 'Tea'), (4, 2, 'Coffee');
INSERT INTO votes (user_id, choice_id) VALUES (1, 1), (2, 1), (3, 3);
";

const PG_SEQUENCES: &str = "
SELECT setval('users_id_seq', 10), setval('questions_id_seq', 10), setval('choices_id_seq', 10);
";

const IDS: [i64; 6] = [1, 2, 3, 4, 5, 11];

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

static NEXT_SCHEMA: AtomicU64 = AtomicU64::new(0);

/// A fresh schema of the PostgreSQL server with the polls tables and rows;
/// pools on it see only it (`search_path`).
struct PgSchema {
    admin: PgPool,
    options: PgConnectOptions,
    name: String,
}

impl PgSchema {
    async fn create() -> PgSchema {
        Self::open(format!(
            "feed_test_{}_{}_{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros(),
            NEXT_SCHEMA.fetch_add(1, Ordering::Relaxed)
        ))
        .await
        .setup()
        .await
    }

    /// An existing schema, by name (the child process of the crash test).
    async fn open(name: String) -> PgSchema {
        let url = database_url();
        let options = PgConnectOptions::from_str(&url).expect("DATABASE_URL is a PostgreSQL URL");
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {url} is unreachable ({e})"));
        let options = options.options([("search_path", name.as_str())]);
        PgSchema {
            admin,
            options,
            name,
        }
    }

    async fn setup(self) -> PgSchema {
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA {}", self.name)))
            .execute(&self.admin)
            .await
            .unwrap();
        let pool = self.pool(1).await;
        sqlx::raw_sql(POSTGRES_SCHEMA).execute(&pool).await.unwrap();
        sqlx::raw_sql(HITS).execute(&pool).await.unwrap();
        sqlx::raw_sql(ROWS).execute(&pool).await.unwrap();
        sqlx::raw_sql(PG_SEQUENCES).execute(&pool).await.unwrap();
        pool.close().await;
        self
    }

    async fn pool(&self, connections: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(connections)
            .connect_with(self.options.clone())
            .await
            .unwrap()
    }

    async fn drop_schema(self) {
        sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {} CASCADE", self.name)))
            .execute(&self.admin)
            .await
            .unwrap();
    }
}

/// Runs `test` on a fresh schema and drops it afterwards, passed or not.
async fn with_pg<F, Fut>(test: F)
where
    F: FnOnce(Arc<PgSchema>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let schema = Arc::new(PgSchema::create().await);
    let outcome = tokio::spawn(test(schema.clone())).await;
    if let Ok(schema) = Arc::try_unwrap(schema) {
        schema.drop_schema().await;
    }
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

async fn sqlite() -> SqlitePool {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(
            SqliteConnectOptions::new()
                .in_memory(true)
                .foreign_keys(true),
        )
        .await
        .unwrap();
    sqlx::raw_sql(SQLITE_SCHEMA).execute(&pool).await.unwrap();
    sqlx::raw_sql(HITS).execute(&pool).await.unwrap();
    sqlx::raw_sql(ROWS).execute(&pool).await.unwrap();
    pool
}

/// One of the two databases, for the scenarios run on both.
#[derive(Clone)]
enum Db {
    Pg(PgPool),
    Lite(SqlitePool),
}

impl Db {
    // Boxed: sqlx's executor bounds are higher-ranked, which the compiler
    // cannot prove `Send` for through these futures otherwise.
    fn run<'a>(&'a self, sql: &'a str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            match self {
                Db::Pg(pool) => sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                    .execute(pool)
                    .await
                    .map(drop),
                Db::Lite(pool) => sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                    .execute(pool)
                    .await
                    .map(drop),
            }
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        })
    }

    fn count<'a>(&'a self, table: &'a str) -> Pin<Box<dyn Future<Output = i64> + Send + 'a>> {
        Box::pin(async move {
            let sql = format!("SELECT COUNT(*) FROM {table}");
            match self {
                Db::Pg(pool) => sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(pool).await,
                Db::Lite(pool) => sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(pool).await,
            }
            .unwrap()
        })
    }

    fn feed_pool(&self) -> FeedPool {
        match self {
            Db::Pg(pool) => pool.clone().into(),
            Db::Lite(pool) => pool.clone().into(),
        }
    }

    fn cache(&self, store: impl Store) -> Cache {
        let builder = Cache::builder().store(store);
        match self {
            Db::Pg(pool) => builder
                .loader::<User>(SqlxLoader::new(pool.clone()))
                .loader::<Question>(SqlxLoader::new(pool.clone()))
                .loader::<Choice>(SqlxLoader::new(pool.clone())),
            Db::Lite(pool) => builder
                .loader::<User>(SqlxLoader::new(pool.clone()))
                .loader::<Question>(SqlxLoader::new(pool.clone()))
                .loader::<Choice>(SqlxLoader::new(pool.clone())),
        }
        .build()
        .unwrap()
    }

    /// The rows as the database has them now (a cache of its own, cold).
    async fn rows(&self) -> (Vec<User>, Vec<Question>, Vec<Choice>) {
        read_all(&self.cache(MemoryStore::new())).await
    }
}

async fn read_all(cache: &Cache) -> (Vec<User>, Vec<Question>, Vec<Choice>) {
    (
        cache.get_many::<User>(&IDS).await.unwrap(),
        cache.get_many::<Question>(&IDS).await.unwrap(),
        cache.get_many::<Choice>(&IDS).await.unwrap(),
    )
}

// ---------------------------------------------------------------------------
// A store that records the keys invalidations replace

/// `Recording<MemoryStore>` (testkit): the keys invalidations replace.
type Recording = cached_instances_testkit::store::Recording<MemoryStore>;

// ---------------------------------------------------------------------------
// Raw SQL invalidates exactly what `saved_from` would

/// Every relation kind the polls models declare, written with plain SQL.
const SCENARIOS: &[(&str, &str)] = &[
    (
        "update of a column",
        "UPDATE questions SET question_text = 'Renamed' WHERE id = 1",
    ),
    (
        "foreign key moved",
        "UPDATE choices SET question_id = 2 WHERE id = 1",
    ),
    (
        "insert",
        "INSERT INTO choices (question_id, choice_text) VALUES (1, 'New')",
    ),
    (
        "join-table insert",
        "INSERT INTO votes (user_id, choice_id) VALUES (1, 3)",
    ),
    (
        "join-table delete",
        "DELETE FROM votes WHERE user_id = 2 AND choice_id = 1",
    ),
    (
        "join-table update",
        "UPDATE votes SET choice_id = 4 WHERE user_id = 3",
    ),
    (
        "delete with ON DELETE CASCADE",
        "DELETE FROM questions WHERE id = 1",
    ),
    ("delete of a user", "DELETE FROM users WHERE id = 1"),
    (
        "update of a column no model reads",
        "UPDATE questions SET hits = hits + 1",
    ),
];

/// What is cached when the write happens.
#[derive(Debug, Clone, Copy)]
enum Warm {
    /// Every instance.
    All,
    /// Users and questions, no choice: what a moved or deleted choice
    /// changes is known only from the columns.
    NoChoices,
}

async fn warm(cache: &Cache, warm: Warm) {
    cache.get_many::<User>(&IDS).await.unwrap();
    cache.get_many::<Question>(&IDS).await.unwrap();
    if let Warm::All = warm {
        cache.get_many::<Choice>(&IDS).await.unwrap();
    }
}

/// Keys the feed replaces after `sql`; checks that every read afterwards
/// equals the database.
async fn by_feed(db: &Db, sql: &str, warmed: Warm) -> BTreeSet<String> {
    let store = Recording::new(MemoryStore::new());
    let cache = db.cache(store.clone());
    let feed = Feed::new(cache.clone(), db.feed_pool());
    feed.install().await.unwrap();
    warm(&cache, warmed).await;
    store.take();
    db.run(sql).await;
    feed.drain().await.unwrap();
    assert_eq!(db.count(OUTBOX_TABLE).await, 0, "{sql}: outbox drained");
    assert_eq!(
        read_all(&cache).await,
        db.rows().await,
        "{sql}: reads fresh"
    );
    store.take()
}

/// Keys `saved_from`/`saved`/`deleted` replace when told of every row whose
/// representation `sql` changed, as a careful writer would.
async fn by_hand(db: &Db, sql: &str, warmed: Warm) -> BTreeSet<String> {
    let store = Recording::new(MemoryStore::new());
    let cache = db.cache(store.clone());
    let before = db.rows().await;
    warm(&cache, warmed).await;
    store.take();
    db.run(sql).await;
    let after = db.rows().await;
    tell(&cache, &before.0, &after.0).await;
    tell(&cache, &before.1, &after.1).await;
    tell(&cache, &before.2, &after.2).await;
    store.take()
}

async fn tell<T: CachedInstance<Pk = i64> + PartialEq>(cache: &Cache, before: &[T], after: &[T]) {
    for id in IDS {
        let old = before.iter().find(|x| *x.pk() == id);
        let new = after.iter().find(|x| *x.pk() == id);
        match (old, new) {
            (Some(old), Some(new)) if old != new => cache.saved_from(old, new).await.unwrap(),
            (None, Some(new)) => cache.saved(new).await.unwrap(),
            (Some(old), None) => cache.deleted(old).await.unwrap(),
            _ => {}
        }
    }
}

async fn feed_matches_saved_from(fresh: impl Fn() -> Pin<Box<dyn Future<Output = Db> + Send>>) {
    for warmed in [Warm::All, Warm::NoChoices] {
        for (name, sql) in SCENARIOS {
            let by_feed = by_feed(&fresh().await, sql, warmed).await;
            let by_hand = by_hand(&fresh().await, sql, warmed).await;
            assert_eq!(by_feed, by_hand, "{name} ({warmed:?}): {sql}");
            if name.contains("no model reads") {
                assert!(by_feed.is_empty(), "{name}: {by_feed:?}");
            } else {
                assert!(!by_feed.is_empty(), "{name}");
            }
        }
    }
}

#[tokio::test]
async fn raw_sql_on_sqlite_invalidates_exactly_what_saved_from_would() {
    feed_matches_saved_from(|| Box::pin(async { Db::Lite(sqlite().await) })).await;
}

#[tokio::test]
async fn raw_sql_on_postgres_invalidates_exactly_what_saved_from_would() {
    let schemas = Arc::new(Mutex::new(Vec::new()));
    let created = schemas.clone();
    let outcome = tokio::spawn(async move {
        feed_matches_saved_from(move || {
            let created = created.clone();
            Box::pin(async move {
                let schema = PgSchema::create().await;
                let pool = schema.pool(2).await;
                created.lock().unwrap().push(schema);
                Db::Pg(pool)
            })
        })
        .await;
    })
    .await;
    let schemas = std::mem::take(&mut *schemas.lock().unwrap());
    for schema in schemas {
        schema.drop_schema().await;
    }
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

#[tokio::test]
async fn an_update_of_no_cached_column_writes_no_outbox_row() {
    with_pg(|schema| async move {
        let db = Db::Pg(schema.pool(2).await);
        let feed = Feed::new(db.cache(MemoryStore::new()), db.feed_pool());
        feed.install().await.unwrap();
        // Twice: the installer is idempotent.
        feed.install().await.unwrap();
        db.run("UPDATE questions SET hits = hits + 1").await;
        db.run("UPDATE questions SET question_text = question_text")
            .await;
        assert_eq!(db.count(OUTBOX_TABLE).await, 0);
        db.run("UPDATE questions SET question_text = 'x' WHERE id = 2")
            .await;
        assert_eq!(db.count(OUTBOX_TABLE).await, 1);
    })
    .await;
    let db = Db::Lite(sqlite().await);
    let feed = Feed::new(db.cache(MemoryStore::new()), db.feed_pool());
    feed.install().await.unwrap();
    feed.install().await.unwrap();
    db.run("UPDATE questions SET hits = hits + 1").await;
    assert_eq!(db.count(OUTBOX_TABLE).await, 0);
    db.run("UPDATE questions SET question_text = 'x' WHERE id = 2")
        .await;
    assert_eq!(db.count(OUTBOX_TABLE).await, 1);
}

// ---------------------------------------------------------------------------
// Bad rows

async fn bad_rows_go_to_the_dead_letter_table(db: Db, not_an_object: &str) {
    let store = Recording::new(MemoryStore::new());
    let cache = db.cache(store.clone());
    let feed = Feed::new(cache.clone(), db.feed_pool());
    feed.install().await.unwrap();
    read_all(&cache).await;
    db.run(&format!(
        "INSERT INTO {OUTBOX_TABLE} (table_name, op, old_row, new_row) VALUES
            ('no_such_table', 'I', NULL, '{{\"id\": \"1\"}}'),
            ('questions', 'U', {not_an_object}, {not_an_object}),
            ('questions', 'I', NULL, '{{\"id\": \"not a number\"}}'),
            ('questions', 'X', NULL, '{{\"id\": \"1\"}}')"
    ))
    .await;
    // A good row after them.
    db.run("UPDATE questions SET question_text = 'After the bad rows' WHERE id = 2")
        .await;
    store.take();
    assert_eq!(feed.drain().await.unwrap(), 1);
    assert_eq!(feed.stats().dead_letters, 4);
    assert_eq!(feed.stats().delivered, 1);
    assert_eq!(db.count(OUTBOX_TABLE).await, 0);
    assert_eq!(db.count(DEAD_LETTER_TABLE).await, 4);
    assert!(
        store
            .take()
            .contains(&cache.key_of::<Question>(&2).unwrap())
    );
    let q = cache.get::<Question>(&2).await.unwrap().unwrap();
    assert_eq!(q.question_text, "After the bad rows");
}

#[tokio::test]
async fn bad_rows_go_to_the_dead_letter_table_on_sqlite() {
    bad_rows_go_to_the_dead_letter_table(Db::Lite(sqlite().await), "'not json'").await;
}

#[tokio::test]
async fn bad_rows_go_to_the_dead_letter_table_on_postgres() {
    with_pg(|schema| async move {
        bad_rows_go_to_the_dead_letter_table(Db::Pg(schema.pool(2).await), "'[1]'").await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// Read your own writes

#[tokio::test]
async fn flush_delivers_exactly_its_transactions_rows_on_postgres() {
    with_pg(|schema| async move {
        let pool = schema.pool(2).await;
        let db = Db::Pg(pool.clone());
        let cache = db.cache(MemoryStore::new());
        let feed = Feed::new(cache.clone(), db.feed_pool());
        feed.install().await.unwrap();
        read_all(&cache).await;
        // Another writer's committed change, not flushed.
        db.run("UPDATE choices SET choice_text = 'Other writer' WHERE id = 4")
            .await;

        let mut tx = pool.begin().await.unwrap();
        sqlx::query("UPDATE questions SET question_text = 'Mine' WHERE id = 1")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("UPDATE choices SET question_id = 2 WHERE id = 2")
            .execute(&mut *tx)
            .await
            .unwrap();
        let mark = feed.mark(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(feed.flush(mark).await.unwrap(), 2);

        let q1 = cache.get::<Question>(&1).await.unwrap().unwrap();
        assert_eq!(q1.question_text, "Mine");
        assert_eq!(q1.choices, [1]);
        let q2 = cache.get::<Question>(&2).await.unwrap().unwrap();
        assert_eq!(q2.choices, [2, 3, 4]);
        // The other transaction's row is the task's.
        assert_eq!(db.count(OUTBOX_TABLE).await, 1);
        let c4 = cache.get::<Choice>(&4).await.unwrap().unwrap();
        assert_eq!(c4.choice_text, "Coffee", "not flushed: still cached");
    })
    .await;
}

#[tokio::test]
async fn flush_delivers_its_transactions_rows_on_sqlite() {
    let pool = sqlite().await;
    let db = Db::Lite(pool.clone());
    let cache = db.cache(MemoryStore::new());
    let feed = Feed::new(cache.clone(), db.feed_pool());
    feed.install().await.unwrap();
    read_all(&cache).await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("UPDATE choices SET question_id = 2 WHERE id = 2")
        .execute(&mut *tx)
        .await
        .unwrap();
    let mark = feed.mark(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    // Committed after the mark: not this transaction's.
    db.run("UPDATE choices SET choice_text = 'Later' WHERE id = 4")
        .await;
    assert_eq!(feed.flush(mark).await.unwrap(), 1);
    let q1 = cache.get::<Question>(&1).await.unwrap().unwrap();
    assert_eq!(q1.choices, [1]);
    assert_eq!(db.count(OUTBOX_TABLE).await, 1);
}

// ---------------------------------------------------------------------------
// The task, several workers, the stale-set race

#[tokio::test]
async fn the_spawned_task_delivers_writes_by_anyone() {
    with_pg(|schema| async move {
        let db = Db::Pg(schema.pool(3).await);
        let cache = db.cache(MemoryStore::new());
        let feed = Feed::new(cache.clone(), db.feed_pool()).poll_interval(Duration::from_millis(5));
        feed.install().await.unwrap();
        read_all(&cache).await;
        let handle = feed.spawn();
        db.run("UPDATE choices SET question_id = 2 WHERE id = 1")
            .await;
        // Delivered by the task: wait until the outbox is empty.
        while db.count(OUTBOX_TABLE).await > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        handle.stop().await;
        assert_eq!(read_all(&cache).await, db.rows().await);
        assert_eq!(feed.stats().delivered, 1);
    })
    .await;
}

#[tokio::test]
async fn two_workers_on_one_outbox_apply_every_row_once() {
    with_pg(|schema| async move {
        const WRITES: i64 = 120;
        let db = Db::Pg(schema.pool(2).await);
        for id in 100..100 + WRITES {
            db.run(&format!(
                "INSERT INTO questions (id, question_text, pub_date) VALUES ({id}, 'q', now())"
            ))
            .await;
        }
        let stores = [
            Recording::new(MemoryStore::new()),
            Recording::new(MemoryStore::new()),
        ];
        let mut feeds = Vec::new();
        for store in &stores {
            // A process each: its own pool and cache.
            let pool = FeedPool::from(schema.pool(2).await);
            let cache = Db::Pg(schema.pool(2).await).cache(store.clone());
            feeds.push(Feed::new(cache, pool).batch_size(7));
        }
        feeds[0].install().await.unwrap();
        for id in 100..100 + WRITES {
            db.run(&format!(
                "UPDATE questions SET question_text = 'written' WHERE id = {id}"
            ))
            .await;
        }
        let (a, b) = tokio::join!(feeds[0].drain(), feeds[1].drain());
        assert_eq!(a.unwrap() + b.unwrap(), WRITES as usize);
        assert_eq!(db.count(OUTBOX_TABLE).await, 0);
        let [a, b] = stores.map(|s| s.take());
        assert!(a.is_disjoint(&b), "a row applied by both workers");
        assert_eq!(a.len() + b.len(), WRITES as usize, "a row lost");
    })
    .await;
}

/// A loader that, once armed, holds its next load after reading the rows.
struct Paused {
    inner: SqlxLoader<sqlx::Postgres>,
    armed: std::sync::atomic::AtomicBool,
    loaded: tokio::sync::Notify,
    resume: tokio::sync::Notify,
}

#[derive(Clone)]
struct PausedLoader(Arc<Paused>);

impl Loader<Question> for PausedLoader {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Question>, cached_instances::LoadError> {
        let rows = Loader::<Question>::load(&self.0.inner, pks).await;
        if self.0.armed.swap(false, Ordering::SeqCst) {
            self.0.loaded.notify_one();
            self.0.resume.notified().await;
        }
        rows
    }
}

#[tokio::test]
async fn a_fill_leased_before_the_commit_is_rejected_after_the_feeds_invalidation() {
    with_pg(|schema| async move {
        let pool = schema.pool(3).await;
        let paused = Arc::new(Paused {
            inner: SqlxLoader::new(pool.clone()),
            armed: true.into(),
            loaded: tokio::sync::Notify::new(),
            resume: tokio::sync::Notify::new(),
        });
        let cache = Cache::builder()
            .loader::<User>(SqlxLoader::new(pool.clone()))
            .loader::<Question>(PausedLoader(paused.clone()))
            .loader::<Choice>(SqlxLoader::new(pool.clone()))
            .build()
            .unwrap();
        let feed = Feed::new(cache.clone(), pool.clone());
        feed.install().await.unwrap();
        // A reader misses, leases, reads the old row, and stalls.
        let reader = tokio::spawn({
            let cache = cache.clone();
            async move { cache.get::<Question>(&1).await.unwrap().unwrap() }
        });
        paused.loaded.notified().await;
        sqlx::raw_sql("UPDATE questions SET question_text = 'New' WHERE id = 1")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(feed.drain().await.unwrap(), 1);
        paused.resume.notify_one();
        let read = reader.await.unwrap();
        assert_eq!(
            read.question_text, "What's up?",
            "the read overlapped the write"
        );
        let fills_rejected = cache.stats().fills_rejected;
        assert!(fills_rejected >= 1, "the stale fill was rejected");
        let q = cache.get::<Question>(&1).await.unwrap().unwrap();
        assert_eq!(q.question_text, "New");
    })
    .await;
}

// ---------------------------------------------------------------------------
// Nothing is lost: a worker killed mid-batch, a store down during the writes

/// Tells the child process which schema to work on.
const CHILD_SCHEMA: &str = "CACHED_INSTANCES_FEED_CHILD_SCHEMA";
/// What the child prints once it holds a claimed batch.
const CLAIMED: &str = "feed-child: claimed a batch";

/// A hook whose invalidations never answer: the child's cache, which is
/// killed while it waits.
#[derive(Clone)]
struct Hang;

impl Hook for Hang {
    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        _keys: Keys<'a>,
        call: impl FnOnce() -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        match op {
            Op::SwapMany => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{CLAIMED}");
                let _ = out.flush();
                Box::pin(std::future::pending())
            }
            Op::DeleteMany => Box::pin(std::future::pending()),
            _ => call(),
        }
    }
    /// Only invalidations hang: reads are forwarded.
    fn around_in_process(&self, _key: &str, read: impl FnOnce() -> InProcess) -> InProcess {
        read()
    }
}

/// The child process of `a_worker_killed_between_commit_and_delivery_loses_nothing`:
/// claims the outbox and hangs in the delivery until it is killed. Does
/// nothing when run as a test of its own.
#[tokio::test]
async fn feed_child_process() {
    let Ok(name) = std::env::var(CHILD_SCHEMA) else {
        return;
    };
    let schema = PgSchema::open(name).await;
    let db = Db::Pg(schema.pool(2).await);
    let feed = Feed::new(
        db.cache(Wrapped::with_hook(MemoryStore::new(), Hang)),
        db.feed_pool(),
    );
    let _ = feed.drain().await;
    unreachable!("the delivery hangs until the process is killed");
}

#[tokio::test]
async fn a_worker_killed_between_commit_and_delivery_loses_nothing() {
    with_pg(|schema| async move {
        use std::io::BufRead;
        let db = Db::Pg(schema.pool(3).await);
        let cache = db.cache(MemoryStore::new());
        let feed = Feed::new(cache.clone(), db.feed_pool());
        feed.install().await.unwrap();
        read_all(&cache).await;
        db.run("UPDATE questions SET question_text = 'Renamed' WHERE id = 1")
            .await;
        db.run("UPDATE choices SET question_id = 2 WHERE id = 1")
            .await;
        db.run("INSERT INTO votes (user_id, choice_id) VALUES (1, 4)")
            .await;

        // Killed on drop: a failed assertion below must not leave the
        // child holding the schema's rows.
        let mut child = KillOnDrop::spawn(
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "feed_child_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_SCHEMA, &schema.name)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null()),
        )
        .unwrap();
        let stdout = child.stdout.take().unwrap();
        let claimed = tokio::task::spawn_blocking(move || {
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|line| line.contains(CLAIMED))
        })
        .await
        .unwrap();
        assert!(claimed, "the child claimed a batch");
        // The child holds every row: another worker finds none free.
        let pool = schema.pool(1).await;
        let free: Vec<(i64,)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT id FROM {OUTBOX_TABLE} FOR UPDATE SKIP LOCKED"
        )))
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(free.is_empty(), "{free:?}");

        child.kill_and_wait().unwrap(); // SIGKILL

        // Its transaction rolls back once the server sees its connection
        // gone (not at once after the kill): until then the rows stay
        // locked and skipped; then this process delivers all of them.
        let mut delivered = 0;
        for _ in 0..1000 {
            delivered += feed.drain().await.unwrap();
            if delivered >= 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(delivered, 3);
        assert_eq!(db.count(OUTBOX_TABLE).await, 0);
        assert_eq!(read_all(&cache).await, db.rows().await);
    })
    .await;
}

#[tokio::test]
async fn a_store_down_during_the_writes_gets_everything_once_it_is_back() {
    with_pg(|schema| async move {
        use cached_instances::RedisStore;
        use cached_instances_testkit::redis_server::RedisServer;

        async fn connect(server: &RedisServer) -> RedisStore {
            RedisStore::builder(server.url())
                .response_timeout(Duration::from_millis(200))
                .connect_timeout(Duration::from_millis(200))
                .retries(0)
                .connect()
                .await
                .unwrap()
        }

        let mut server = RedisServer::start();
        let db = Db::Pg(schema.pool(3).await);
        let cache = db.cache(connect(&server).await);
        let feed = Feed::new(cache.clone(), db.feed_pool());
        feed.install().await.unwrap();
        read_all(&cache).await;
        let keys: Vec<String> = [
            cache.key_of::<Question>(&1).unwrap(),
            cache.key_of::<Question>(&2).unwrap(),
            cache.key_of::<Choice>(&1).unwrap(),
            cache.key_of::<User>(&1).unwrap(),
            cache.key_of::<Choice>(&4).unwrap(),
        ]
        .into();
        let stale: Vec<Vec<u8>> = {
            let mut conn = server.connection();
            keys.iter()
                .map(|k| redis::cmd("GET").arg(k).query(&mut conn).unwrap())
                .collect()
        };

        server.kill();
        db.run("UPDATE questions SET question_text = 'Renamed' WHERE id = 1")
            .await;
        db.run("UPDATE choices SET question_id = 2 WHERE id = 1")
            .await;
        db.run("INSERT INTO votes (user_id, choice_id) VALUES (1, 4)")
            .await;
        assert!(feed.drain().await.is_err(), "the store is down");
        assert_eq!(db.count(OUTBOX_TABLE).await, 3, "the rows stay");
        assert!(feed.stats().undelivered_batches >= 1);
        drop((feed, cache));

        // Back, holding what it held before (as a server that kept its
        // data would): another process delivers.
        server.restart();
        {
            let mut conn = server.connection();
            for (key, bytes) in keys.iter().zip(&stale) {
                let () = redis::cmd("SET")
                    .arg(key)
                    .arg(bytes)
                    .query(&mut conn)
                    .unwrap();
            }
        }
        let cache = db.cache(connect(&server).await);
        assert_ne!(
            read_all(&cache).await,
            db.rows().await,
            "stale before the feed"
        );
        let feed = Feed::new(cache.clone(), db.feed_pool());
        assert_eq!(feed.drain().await.unwrap(), 3);
        assert_eq!(db.count(OUTBOX_TABLE).await, 0);
        assert_eq!(read_all(&cache).await, db.rows().await);
    })
    .await;
}

#[tokio::test]
async fn a_writer_with_another_search_path_is_captured() {
    with_pg(|schema| async move {
        let db = Db::Pg(schema.pool(2).await);
        let feed = Feed::new(db.cache(MemoryStore::new()), db.feed_pool());
        feed.install().await.unwrap();
        // The admin pool's search path does not name the schema.
        sqlx::raw_sql(AssertSqlSafe(format!(
            "UPDATE {}.questions SET question_text = 'x' WHERE id = 1",
            schema.name
        )))
        .execute(&schema.admin)
        .await
        .unwrap();
        assert_eq!(db.count(OUTBOX_TABLE).await, 1);
    })
    .await;
}
