//! The polls database on SQLite (embedded) or PostgreSQL, through sqlx: the
//! schema, the seed data, the loaders the cache calls, the list queries and
//! the writes.
//!
//! Every statement this module executes, `BEGIN` and `COMMIT` included,
//! increments [`Db::queries`], and the per-task tally of [`track`], so tests
//! and logs can tell what a request cost.
//!
//! The loaders are batched: one query for the rows of all the pks they are
//! given (`= ANY($1)` on PostgreSQL, `IN (...)` on SQLite) and one query per
//! relation list, never one per instance. They are all in the
//! [loaders](#loaders) section below, so that generated ones can replace them.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cached_instances::{LoadError, Loader};
use chrono::{DateTime, TimeDelta, Timelike, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::{FromRow, Postgres, QueryBuilder, Sqlite};

use crate::{Choice, Question, User};

// ---------------------------------------------------------------------------
// Query counting

tokio::task_local! {
    static TALLY: Arc<Counters>;
}

#[derive(Debug, Default)]
struct Counters {
    queries: AtomicU64,
    loader_calls: AtomicU64,
}

/// What the database did for one tracked future (one HTTP request).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Statements executed.
    pub queries: u64,
    /// Loader calls (the cache filling misses).
    pub loader_calls: u64,
}

/// Runs `future`, counting the statements and loader calls it makes on any
/// [`Db`]. The cache loads misses in the reading task, so a request's loads
/// are counted too.
pub async fn track<F: Future>(future: F) -> (F::Output, Tally) {
    let counters = Arc::new(Counters::default());
    let output = TALLY.scope(counters.clone(), future).await;
    let tally = Tally {
        queries: counters.queries.load(Ordering::Relaxed),
        loader_calls: counters.loader_calls.load(Ordering::Relaxed),
    };
    (output, tally)
}

// ---------------------------------------------------------------------------
// The database handle

/// Which database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, embedded.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

struct Inner {
    pool: Pool,
    /// The PostgreSQL schema the tables live in (the connections'
    /// `search_path`).
    schema: Option<String>,
    queries: AtomicU64,
    loader_calls: AtomicU64,
}

/// The polls database. Cheap to clone; clones share the pool and counters.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend())
            .field("schema", &self.inner.schema)
            .field("queries", &self.queries())
            .finish_non_exhaustive()
    }
}

/// Whether `name` can be used as a schema name without quoting.
fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Db {
    fn new(pool: Pool, schema: Option<String>) -> Db {
        Db {
            inner: Arc::new(Inner {
                pool,
                schema,
                queries: AtomicU64::new(0),
                loader_calls: AtomicU64::new(0),
            }),
        }
    }

    /// A private in-memory SQLite database (one connection, kept open).
    ///
    /// # Errors
    ///
    /// When SQLite cannot open it.
    pub async fn sqlite_in_memory() -> Result<Db, sqlx::Error> {
        let options = SqliteConnectOptions::new()
            .in_memory(true)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        Ok(Db::new(Pool::Sqlite(pool), None))
    }

    /// A SQLite database at `url` (`sqlite://path/to/file.db`), created if
    /// missing.
    ///
    /// # Errors
    ///
    /// When the URL is invalid or the file cannot be opened.
    pub async fn sqlite(url: &str) -> Result<Db, sqlx::Error> {
        let options: SqliteConnectOptions = url.parse()?;
        let options = options
            .create_if_missing(true)
            .foreign_keys(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        Ok(Db::new(Pool::Sqlite(pool), None))
    }

    /// A PostgreSQL database at `url`, with the tables in `schema` (created
    /// by [`migrate`](Self::migrate)).
    ///
    /// # Errors
    ///
    /// When the URL is invalid, `schema` is not a plain lowercase
    /// identifier, or the server cannot be reached.
    pub async fn postgres(url: &str, schema: &str) -> Result<Db, sqlx::Error> {
        if !is_identifier(schema) {
            return Err(sqlx::Error::Configuration(
                format!("invalid schema name {schema:?}").into(),
            ));
        }
        let options: PgConnectOptions = url.parse()?;
        let options = options.options([("search_path", schema)]);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Ok(Db::new(Pool::Postgres(pool), Some(schema.to_owned())))
    }

    /// Connects by URL scheme: `postgres://` / `postgresql://` (tables in
    /// schema `polls`) or `sqlite:`.
    ///
    /// # Errors
    ///
    /// As [`postgres`](Self::postgres) and [`sqlite`](Self::sqlite); an
    /// unknown scheme is a configuration error.
    pub async fn connect(url: &str) -> Result<Db, sqlx::Error> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Db::postgres(url, "polls").await
        } else if url.starts_with("sqlite:") {
            Db::sqlite(url).await
        } else {
            Err(sqlx::Error::Configuration(
                format!("unsupported database URL {url:?}: use postgres://... or sqlite:...")
                    .into(),
            ))
        }
    }

    /// Which database this is.
    #[must_use]
    pub fn backend(&self) -> Backend {
        match self.inner.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// Statements executed since the handle was created.
    #[must_use]
    pub fn queries(&self) -> u64 {
        self.inner.queries.load(Ordering::Relaxed)
    }

    /// Loader calls since the handle was created.
    #[must_use]
    pub fn loader_calls(&self) -> u64 {
        self.inner.loader_calls.load(Ordering::Relaxed)
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        match &self.inner.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }

    fn count_query(&self) {
        self.inner.queries.fetch_add(1, Ordering::Relaxed);
        let _ = TALLY.try_with(|t| t.queries.fetch_add(1, Ordering::Relaxed));
    }

    fn count_loader_call(&self) {
        self.inner.loader_calls.fetch_add(1, Ordering::Relaxed);
        let _ = TALLY.try_with(|t| t.loader_calls.fetch_add(1, Ordering::Relaxed));
    }

    async fn acquire(&self) -> Result<Pooled, sqlx::Error> {
        Ok(match &self.inner.pool {
            Pool::Sqlite(pool) => Pooled::Sqlite(pool.acquire().await?),
            Pool::Postgres(pool) => Pooled::Postgres(pool.acquire().await?),
        })
    }

    async fn begin(&self) -> Result<Tx, sqlx::Error> {
        self.count_query();
        Ok(match &self.inner.pool {
            Pool::Sqlite(pool) => Tx::Sqlite(pool.begin().await?),
            Pool::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }
}

// ---------------------------------------------------------------------------
// Statements, on either backend

/// A connection borrowed from the pool or a transaction.
enum Conn<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

enum Pooled {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

impl Pooled {
    fn on<'c>(&'c mut self, db: &'c Db) -> Q<'c> {
        let conn = match self {
            Pooled::Sqlite(c) => Conn::Sqlite(&mut **c),
            Pooled::Postgres(c) => Conn::Postgres(&mut **c),
        };
        Q { db, conn }
    }
}

enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

impl Tx {
    fn on<'c>(&'c mut self, db: &'c Db) -> Q<'c> {
        let conn = match self {
            Tx::Sqlite(tx) => Conn::Sqlite(&mut **tx),
            Tx::Postgres(tx) => Conn::Postgres(&mut **tx),
        };
        Q { db, conn }
    }

    async fn commit(self, db: &Db) -> Result<(), sqlx::Error> {
        db.count_query();
        match self {
            Tx::Sqlite(tx) => tx.commit().await,
            Tx::Postgres(tx) => tx.commit().await,
        }
    }
}

/// A bind parameter.
#[derive(Debug, Clone, Copy)]
enum Arg<'a> {
    Int(i64),
    Text(&'a str),
    Time(DateTime<Utc>),
}

macro_rules! bind_args {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match *arg {
                Arg::Int(v) => query.bind(v),
                Arg::Text(v) => query.bind(v),
                Arg::Time(v) => query.bind(v),
            };
        }
        query
    }};
}

/// A row type both backends can decode.
trait Row: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin {}
impl<T> Row for T where T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{}

/// Runs counted statements on one connection. The SQL is the same on both
/// backends (`$1` placeholders work on SQLite too), except for pk lists.
struct Q<'c> {
    db: &'c Db,
    conn: Conn<'c>,
}

impl Q<'_> {
    async fn fetch<R: Row>(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<Vec<R>, sqlx::Error> {
        self.db.count_query();
        match &mut self.conn {
            Conn::Sqlite(c) => {
                bind_args!(sqlx::query_as(sql), args)
                    .fetch_all(&mut **c)
                    .await
            }
            Conn::Postgres(c) => {
                bind_args!(sqlx::query_as(sql), args)
                    .fetch_all(&mut **c)
                    .await
            }
        }
    }

    async fn fetch_optional<R: Row>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<Option<R>, sqlx::Error> {
        self.db.count_query();
        match &mut self.conn {
            Conn::Sqlite(c) => {
                bind_args!(sqlx::query_as(sql), args)
                    .fetch_optional(&mut **c)
                    .await
            }
            Conn::Postgres(c) => {
                bind_args!(sqlx::query_as(sql), args)
                    .fetch_optional(&mut **c)
                    .await
            }
        }
    }

    async fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64, sqlx::Error> {
        self.db.count_query();
        Ok(match &mut self.conn {
            Conn::Sqlite(c) => bind_args!(sqlx::query(sql), args)
                .execute(&mut **c)
                .await?
                .rows_affected(),
            Conn::Postgres(c) => bind_args!(sqlx::query(sql), args)
                .execute(&mut **c)
                .await?
                .rows_affected(),
        })
    }

    /// Several statements, unparameterized (schema changes).
    async fn execute_script(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        self.db.count_query();
        match &mut self.conn {
            Conn::Sqlite(c) => drop(sqlx::raw_sql(sql).execute(&mut **c).await?),
            Conn::Postgres(c) => drop(sqlx::raw_sql(sql).execute(&mut **c).await?),
        }
        Ok(())
    }

    /// `{select} WHERE {column} <in ids> {rest}`, one statement for all the
    /// ids: `= ANY($1)` with an array on PostgreSQL, `IN (?, ?, ...)` on
    /// SQLite. No statement at all for no ids.
    async fn fetch_where_in<R: Row>(
        &mut self,
        select: &str,
        column: &str,
        ids: &[i64],
        rest: &str,
    ) -> Result<Vec<R>, sqlx::Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.db.count_query();
        match &mut self.conn {
            Conn::Postgres(c) => {
                let sql = format!("{select} WHERE {column} = ANY($1) {rest}");
                sqlx::query_as(&sql).bind(ids).fetch_all(&mut **c).await
            }
            Conn::Sqlite(c) => {
                let mut query =
                    QueryBuilder::<Sqlite>::new(format!("{select} WHERE {column} IN ("));
                let mut list = query.separated(", ");
                for id in ids {
                    list.push_bind(*id);
                }
                query.push(") ").push(rest);
                query.build_query_as().fetch_all(&mut **c).await
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Schema and seed data

const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS questions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    question_text TEXT NOT NULL,
    pub_date TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS questions_pub_date ON questions (pub_date);
CREATE TABLE IF NOT EXISTS choices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    question_id INTEGER NOT NULL REFERENCES questions (id) ON DELETE CASCADE,
    choice_text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS choices_question_id ON choices (question_id);
CREATE TABLE IF NOT EXISTS votes (
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    choice_id INTEGER NOT NULL REFERENCES choices (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, choice_id)
);
CREATE INDEX IF NOT EXISTS votes_choice_id ON votes (choice_id);
";

const POSTGRES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id BIGSERIAL PRIMARY KEY,
    username TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS questions (
    id BIGSERIAL PRIMARY KEY,
    question_text TEXT NOT NULL,
    pub_date TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS questions_pub_date ON questions (pub_date);
CREATE TABLE IF NOT EXISTS choices (
    id BIGSERIAL PRIMARY KEY,
    question_id BIGINT NOT NULL REFERENCES questions (id) ON DELETE CASCADE,
    choice_text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS choices_question_id ON choices (question_id);
CREATE TABLE IF NOT EXISTS votes (
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    choice_id BIGINT NOT NULL REFERENCES choices (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, choice_id)
);
CREATE INDEX IF NOT EXISTS votes_choice_id ON votes (choice_id);
";

/// The seed data, as ids (the tables are seeded empty, so ids start at 1).
pub mod seed {
    /// Users: ann, bob, cy.
    pub const USERS: [i64; 3] = [1, 2, 3];
    /// Published questions, oldest first: "What's up?" (3 days ago), "Tea or
    /// coffee?" (2 days ago), "Tabs or spaces?" (yesterday).
    pub const PUBLISHED_QUESTIONS: [i64; 3] = [1, 2, 3];
    /// A question published 30 days from the seeding: hidden until then.
    pub const FUTURE_QUESTION: i64 = 4;
    /// Choices: 1 "Not much" and 2 "The sky" (question 1), 3 "Tea" and 4
    /// "Coffee" (question 2), 5 "Tabs" and 6 "Spaces" (question 3), 7 "Brazil"
    /// (question 4).
    pub const CHOICES: [i64; 7] = [1, 2, 3, 4, 5, 6, 7];
    /// Votes (user, choice): ann for 1 and 5, bob for 3, cy for 3.
    pub const VOTES: [(i64, i64); 4] = [(1, 1), (1, 5), (2, 3), (3, 3)];
}

impl Db {
    /// Creates the tables (and the PostgreSQL schema) unless they exist.
    ///
    /// # Errors
    ///
    /// When a statement fails.
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        let mut conn = self.acquire().await?;
        let mut q = conn.on(self);
        match self.backend() {
            Backend::Sqlite => q.execute_script(SQLITE_SCHEMA).await,
            Backend::Postgres => {
                let schema = self.inner.schema.as_deref().unwrap_or("public");
                q.execute_script(&format!("CREATE SCHEMA IF NOT EXISTS {schema};"))
                    .await?;
                q.execute_script(POSTGRES_SCHEMA).await
            }
        }
    }

    /// Drops the PostgreSQL schema and everything in it (tests clean up with
    /// it). Does nothing on SQLite.
    ///
    /// # Errors
    ///
    /// When the statement fails.
    pub async fn drop_schema(&self) -> Result<(), sqlx::Error> {
        if let (Backend::Postgres, Some(schema)) = (self.backend(), &self.inner.schema) {
            let mut conn = self.acquire().await?;
            conn.on(self)
                .execute_script(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE;"))
                .await?;
        }
        Ok(())
    }

    /// Inserts the [seed] data into empty tables, with publication dates
    /// relative to `now`. Returns `false` (and inserts nothing) when there
    /// are users already.
    ///
    /// # Errors
    ///
    /// When a statement fails.
    pub async fn seed(&self, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
        let now = now.with_nanosecond(0).unwrap_or(now);
        let mut tx = self.begin().await?;
        let mut q = tx.on(self);
        let (users,): (i64,) = q
            .fetch_optional("SELECT count(*) FROM users", &[])
            .await?
            .unwrap_or((0,));
        if users > 0 {
            return Ok(false);
        }
        let mut user_ids = Vec::new();
        for name in ["ann", "bob", "cy"] {
            let (id,): (i64,) = q
                .fetch_optional(
                    "INSERT INTO users (username) VALUES ($1) RETURNING id",
                    &[Arg::Text(name)],
                )
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            user_ids.push(id);
        }
        let questions: [(&str, i64, &[&str]); 4] = [
            ("What's up?", -3, &["Not much", "The sky"]),
            ("Tea or coffee?", -2, &["Tea", "Coffee"]),
            ("Tabs or spaces?", -1, &["Tabs", "Spaces"]),
            ("Who will win the next World Cup?", 30, &["Brazil"]),
        ];
        let mut choice_ids = Vec::new();
        for (text, days, choices) in questions {
            let pub_date = now + TimeDelta::days(days);
            let (question_id,): (i64,) = q
                .fetch_optional(
                    "INSERT INTO questions (question_text, pub_date) VALUES ($1, $2) RETURNING id",
                    &[Arg::Text(text), Arg::Time(pub_date)],
                )
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            for choice in choices {
                let (id,): (i64,) = q
                    .fetch_optional(
                        "INSERT INTO choices (question_id, choice_text) VALUES ($1, $2) RETURNING id",
                        &[Arg::Int(question_id), Arg::Text(choice)],
                    )
                    .await?
                    .ok_or(sqlx::Error::RowNotFound)?;
                choice_ids.push(id);
            }
        }
        for (user, choice) in seed::VOTES {
            // Seed ids are 1-based positions.
            let (Some(&user), Some(&choice)) = (
                user_ids.get((user - 1) as usize),
                choice_ids.get((choice - 1) as usize),
            ) else {
                continue;
            };
            q.execute(
                "INSERT INTO votes (user_id, choice_id) VALUES ($1, $2)",
                &[Arg::Int(user), Arg::Int(choice)],
            )
            .await?;
        }
        tx.commit(self).await?;
        Ok(true)
    }
}

// ---------------------------------------------------------------------------
// Loaders
//
// One statement for the rows, one per relation list, for any number of pks.
// Relation lists are in ascending pk order, so a representation only changes
// when the data does.

/// Groups `(owner, item)` pairs by owner, keeping the order.
fn group(pairs: Vec<(i64, i64)>) -> HashMap<i64, Vec<i64>> {
    let mut by_owner: HashMap<i64, Vec<i64>> = HashMap::new();
    for (owner, item) in pairs {
        by_owner.entry(owner).or_default().push(item);
    }
    by_owner
}

async fn load_users(q: &mut Q<'_>, ids: &[i64]) -> Result<Vec<User>, sqlx::Error> {
    let rows: Vec<(i64, String)> = q
        .fetch_where_in("SELECT id, username FROM users", "id", ids, "")
        .await?;
    let found: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let mut votes = group(
        q.fetch_where_in(
            "SELECT user_id, choice_id FROM votes",
            "user_id",
            &found,
            "ORDER BY user_id, choice_id",
        )
        .await?,
    );
    Ok(rows
        .into_iter()
        .map(|(id, username)| User {
            id,
            username,
            votes: votes.remove(&id).unwrap_or_default(),
        })
        .collect())
}

async fn load_questions(q: &mut Q<'_>, ids: &[i64]) -> Result<Vec<Question>, sqlx::Error> {
    let rows: Vec<(i64, String, DateTime<Utc>)> = q
        .fetch_where_in(
            "SELECT id, question_text, pub_date FROM questions",
            "id",
            ids,
            "",
        )
        .await?;
    let found: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let mut choices = group(
        q.fetch_where_in(
            "SELECT question_id, id FROM choices",
            "question_id",
            &found,
            "ORDER BY question_id, id",
        )
        .await?,
    );
    Ok(rows
        .into_iter()
        .map(|(id, question_text, pub_date)| Question {
            id,
            question_text,
            pub_date,
            choices: choices.remove(&id).unwrap_or_default(),
        })
        .collect())
}

async fn load_choices(q: &mut Q<'_>, ids: &[i64]) -> Result<Vec<Choice>, sqlx::Error> {
    let rows: Vec<(i64, i64, String)> = q
        .fetch_where_in(
            "SELECT id, question_id, choice_text FROM choices",
            "id",
            ids,
            "",
        )
        .await?;
    let found: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let mut voters = group(
        q.fetch_where_in(
            "SELECT choice_id, user_id FROM votes",
            "choice_id",
            &found,
            "ORDER BY choice_id, user_id",
        )
        .await?,
    );
    Ok(rows
        .into_iter()
        .map(|(id, question_id, choice_text)| Choice {
            id,
            question_id,
            choice_text,
            voters: voters.remove(&id).unwrap_or_default(),
        })
        .collect())
}

impl Loader<User> for Db {
    async fn load(&self, pks: &[i64]) -> Result<Vec<User>, LoadError> {
        self.count_loader_call();
        let mut conn = self.acquire().await.map_err(LoadError::new)?;
        load_users(&mut conn.on(self), pks)
            .await
            .map_err(LoadError::new)
    }
}

impl Loader<Question> for Db {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Question>, LoadError> {
        self.count_loader_call();
        let mut conn = self.acquire().await.map_err(LoadError::new)?;
        load_questions(&mut conn.on(self), pks)
            .await
            .map_err(LoadError::new)
    }
}

impl Loader<Choice> for Db {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Choice>, LoadError> {
        self.count_loader_call();
        let mut conn = self.acquire().await.map_err(LoadError::new)?;
        load_choices(&mut conn.on(self), pks)
            .await
            .map_err(LoadError::new)
    }
}

// ---------------------------------------------------------------------------
// List queries: one statement for a page of pks and the total count
//
// The page is LEFT JOINed onto the count, so the count comes back even for a
// page past the end (where `count(*) OVER ()` would return no row at all).

/// A page of pks and the total row count.
pub type PageOfPks = (Vec<i64>, u64);

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Db {
    async fn page(&self, sql: &str, args: &[Arg<'_>]) -> Result<PageOfPks, sqlx::Error> {
        let mut conn = self.acquire().await?;
        let rows: Vec<(i64, Option<i64>)> = conn.on(self).fetch(sql, args).await?;
        let count = rows.first().map_or(0, |r| u64::try_from(r.0).unwrap_or(0));
        Ok((rows.into_iter().filter_map(|r| r.1).collect(), count))
    }

    /// Users by id.
    ///
    /// # Errors
    ///
    /// When the statement fails.
    pub async fn user_page(&self, limit: u64, offset: u64) -> Result<PageOfPks, sqlx::Error> {
        self.page(
            "SELECT total.n, page.id
             FROM (SELECT count(*) AS n FROM users) AS total
             LEFT JOIN (SELECT id FROM users ORDER BY id LIMIT $1 OFFSET $2) AS page ON TRUE
             ORDER BY page.id",
            &[Arg::Int(to_i64(limit)), Arg::Int(to_i64(offset))],
        )
        .await
    }

    /// The questions published at `now`, newest first.
    ///
    /// # Errors
    ///
    /// When the statement fails.
    pub async fn published_question_page(
        &self,
        now: DateTime<Utc>,
        limit: u64,
        offset: u64,
    ) -> Result<PageOfPks, sqlx::Error> {
        self.page(
            "SELECT total.n, page.id
             FROM (SELECT count(*) AS n FROM questions WHERE pub_date <= $3) AS total
             LEFT JOIN (
                 SELECT id, pub_date FROM questions WHERE pub_date <= $3
                 ORDER BY pub_date DESC, id DESC LIMIT $1 OFFSET $2
             ) AS page ON TRUE
             ORDER BY page.pub_date DESC, page.id DESC",
            &[
                Arg::Int(to_i64(limit)),
                Arg::Int(to_i64(offset)),
                Arg::Time(now),
            ],
        )
        .await
    }

    /// Choices by id.
    ///
    /// # Errors
    ///
    /// When the statement fails.
    pub async fn choice_page(&self, limit: u64, offset: u64) -> Result<PageOfPks, sqlx::Error> {
        self.page(
            "SELECT total.n, page.id
             FROM (SELECT count(*) AS n FROM choices) AS total
             LEFT JOIN (SELECT id FROM choices ORDER BY id LIMIT $1 OFFSET $2) AS page ON TRUE
             ORDER BY page.id",
            &[Arg::Int(to_i64(limit)), Arg::Int(to_i64(offset))],
        )
        .await
    }
}

// ---------------------------------------------------------------------------
// Writes
//
// Each write runs in a transaction, reads the previous state of what it
// changes inside it, commits, and returns the previous and new states; the
// caller tells the cache (after the commit, which has happened by then).

/// Why a write did not happen.
#[derive(Debug)]
pub enum WriteError {
    /// The instance written does not exist.
    NotFound {
        /// Its model.
        model: &'static str,
        /// Its pk.
        id: i64,
    },
    /// The write refers to something that does not exist, or breaks a rule.
    Invalid(String),
    /// The database failed.
    Db(sqlx::Error),
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::NotFound { model, id } => write!(f, "{model} {id} not found"),
            WriteError::Invalid(message) => f.write_str(message),
            WriteError::Db(e) => write!(f, "database error: {e}"),
        }
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WriteError::Db(e) => Some(e),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for WriteError {
    fn from(e: sqlx::Error) -> Self {
        WriteError::Db(e)
    }
}

/// Changes to a question; `None` keeps the field.
#[derive(Debug, Clone, Default)]
pub struct QuestionChanges {
    /// A new text.
    pub question_text: Option<String>,
    /// A new publication date.
    pub pub_date: Option<DateTime<Utc>>,
}

/// Changes to a choice; `None` keeps the field.
#[derive(Debug, Clone, Default)]
pub struct ChoiceChanges {
    /// Moves the choice to another question.
    pub question_id: Option<i64>,
    /// A new text.
    pub choice_text: Option<String>,
}

async fn one<T>(
    rows: impl Future<Output = Result<Vec<T>, sqlx::Error>>,
    model: &'static str,
    id: i64,
) -> Result<T, WriteError> {
    rows.await?.pop().ok_or(WriteError::NotFound { model, id })
}

async fn require(q: &mut Q<'_>, table: &str, model: &str, id: i64) -> Result<(), WriteError> {
    let found: Option<(i64,)> = q
        .fetch_optional(
            &format!("SELECT id FROM {table} WHERE id = $1"),
            &[Arg::Int(id)],
        )
        .await?;
    match found {
        Some(_) => Ok(()),
        None => Err(WriteError::Invalid(format!("{model} {id} does not exist"))),
    }
}

impl Db {
    /// Inserts a question; returns it as stored.
    ///
    /// # Errors
    ///
    /// [`WriteError::Db`] when the database fails.
    pub async fn create_question(
        &self,
        question_text: &str,
        pub_date: DateTime<Utc>,
    ) -> Result<Question, WriteError> {
        let mut tx = self.begin().await?;
        let mut q = tx.on(self);
        let (id,): (i64,) = q
            .fetch_optional(
                "INSERT INTO questions (question_text, pub_date) VALUES ($1, $2) RETURNING id",
                &[Arg::Text(question_text), Arg::Time(pub_date)],
            )
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        let new = one(load_questions(&mut q, &[id]), "Question", id).await?;
        tx.commit(self).await?;
        Ok(new)
    }

    /// Updates a question; returns (previous, new).
    ///
    /// # Errors
    ///
    /// [`WriteError::NotFound`] when there is no such question.
    pub async fn update_question(
        &self,
        id: i64,
        changes: QuestionChanges,
    ) -> Result<(Question, Question), WriteError> {
        let mut tx = self.begin().await?;
        let mut q = tx.on(self);
        let previous = one(load_questions(&mut q, &[id]), "Question", id).await?;
        let text = changes
            .question_text
            .as_deref()
            .unwrap_or(&previous.question_text);
        let pub_date = changes.pub_date.unwrap_or(previous.pub_date);
        q.execute(
            "UPDATE questions SET question_text = $2, pub_date = $3 WHERE id = $1",
            &[Arg::Int(id), Arg::Text(text), Arg::Time(pub_date)],
        )
        .await?;
        let new = one(load_questions(&mut q, &[id]), "Question", id).await?;
        tx.commit(self).await?;
        Ok((previous, new))
    }

    /// Deletes a question with its choices and their votes; returns the
    /// question and the choices as they were.
    ///
    /// # Errors
    ///
    /// [`WriteError::NotFound`] when there is no such question.
    pub async fn delete_question(&self, id: i64) -> Result<(Question, Vec<Choice>), WriteError> {
        let mut tx = self.begin().await?;
        let mut q = tx.on(self);
        let question = one(load_questions(&mut q, &[id]), "Question", id).await?;
        let choices = load_choices(&mut q, &question.choices).await?;
        q.execute(
            "DELETE FROM votes WHERE choice_id IN (SELECT id FROM choices WHERE question_id = $1)",
            &[Arg::Int(id)],
        )
        .await?;
        q.execute(
            "DELETE FROM choices WHERE question_id = $1",
            &[Arg::Int(id)],
        )
        .await?;
        q.execute("DELETE FROM questions WHERE id = $1", &[Arg::Int(id)])
            .await?;
        tx.commit(self).await?;
        Ok((question, choices))
    }

    /// Inserts a choice of question `question_id`; returns it as stored.
    ///
    /// # Errors
    ///
    /// [`WriteError::Invalid`] when the question does not exist.
    pub async fn create_choice(
        &self,
        question_id: i64,
        choice_text: &str,
    ) -> Result<Choice, WriteError> {
        let mut tx = self.begin().await?;
        let mut q = tx.on(self);
        require(&mut q, "questions", "question", question_id).await?;
        let (id,): (i64,) = q
            .fetch_optional(
                "INSERT INTO choices (question_id, choice_text) VALUES ($1, $2) RETURNING id",
                &[Arg::Int(question_id), Arg::Text(choice_text)],
            )
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        let new = one(load_choices(&mut q, &[id]), "Choice", id).await?;
        tx.commit(self).await?;
        Ok(new)
    }

    /// Updates a choice, possibly moving it to another question; returns
    /// (previous, new).
    ///
    /// # Errors
    ///
    /// [`WriteError::NotFound`] when there is no such choice,
    /// [`WriteError::Invalid`] when the new question does not exist.
    pub async fn update_choice(
        &self,
        id: i64,
        changes: ChoiceChanges,
    ) -> Result<(Choice, Choice), WriteError> {
        let mut tx = self.begin().await?;
        let mut q = tx.on(self);
        let previous = one(load_choices(&mut q, &[id]), "Choice", id).await?;
        let question_id = changes.question_id.unwrap_or(previous.question_id);
        if question_id != previous.question_id {
            require(&mut q, "questions", "question", question_id).await?;
        }
        let text = changes
            .choice_text
            .as_deref()
            .unwrap_or(&previous.choice_text);
        q.execute(
            "UPDATE choices SET question_id = $2, choice_text = $3 WHERE id = $1",
            &[Arg::Int(id), Arg::Int(question_id), Arg::Text(text)],
        )
        .await?;
        let new = one(load_choices(&mut q, &[id]), "Choice", id).await?;
        tx.commit(self).await?;
        Ok((previous, new))
    }

    /// Deletes a choice and its votes; returns it as it was.
    ///
    /// # Errors
    ///
    /// [`WriteError::NotFound`] when there is no such choice.
    pub async fn delete_choice(&self, id: i64) -> Result<Choice, WriteError> {
        let mut tx = self.begin().await?;
        let mut q = tx.on(self);
        let choice = one(load_choices(&mut q, &[id]), "Choice", id).await?;
        q.execute("DELETE FROM votes WHERE choice_id = $1", &[Arg::Int(id)])
            .await?;
        q.execute("DELETE FROM choices WHERE id = $1", &[Arg::Int(id)])
            .await?;
        tx.commit(self).await?;
        Ok(choice)
    }

    /// Records (`true`) or withdraws (`false`) `user_id`'s vote for choice
    /// `choice_id`; returns the choice (previous, new). Voting twice or
    /// withdrawing a vote never cast changes nothing.
    ///
    /// # Errors
    ///
    /// [`WriteError::NotFound`] when there is no such choice,
    /// [`WriteError::Invalid`] when the user does not exist.
    pub async fn set_vote(
        &self,
        choice_id: i64,
        user_id: i64,
        voted: bool,
    ) -> Result<(Choice, Choice), WriteError> {
        let mut tx = self.begin().await?;
        let mut q = tx.on(self);
        let previous = one(load_choices(&mut q, &[choice_id]), "Choice", choice_id).await?;
        require(&mut q, "users", "user", user_id).await?;
        let sql = if voted {
            "INSERT INTO votes (user_id, choice_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM votes WHERE user_id = $1 AND choice_id = $2"
        };
        q.execute(sql, &[Arg::Int(user_id), Arg::Int(choice_id)])
            .await?;
        let new = one(load_choices(&mut q, &[choice_id]), "Choice", choice_id).await?;
        tx.commit(self).await?;
        Ok((previous, new))
    }
}
