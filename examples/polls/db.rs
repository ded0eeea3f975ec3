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
//! relation list, never one per instance. They are all in `db/loaders.rs`,
//! so that generated ones can replace them.

mod lists;
mod loaders;
mod schema;
mod sql;
mod writes;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

pub use lists::PageOfPks;
pub use schema::seed;
pub use writes::{ChoiceChanges, QuestionChanges, WriteError};

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
    /// by [`migrate`](Self::migrate)). The connections' `application_name`
    /// is `polls {schema}`.
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
        let options = options
            .options([("search_path", schema)])
            .application_name(&format!("polls {schema}"));
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
}
