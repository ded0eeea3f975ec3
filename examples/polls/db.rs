//! The polls database on SQLite (embedded) or PostgreSQL, through sqlx: the
//! schema, the seed data, the list queries and the writes.
//!
//! The cache loads with the loaders the models derive
//! (`cached_instances::sqlx::SqlxLoader` over [`Db::pool`]); the
//! change feed (`cached_instances::feed`) invalidates what the writes
//! change, from triggers on these tables. So the writes here are plain
//! SQL: no previous rows read, nothing told to the cache.

mod lists;
mod schema;
mod sql;
mod told;
mod writes;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cached_instances::feed::FeedPool;
use cached_instances::sqlx::SqlxModel;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

pub use lists::PageOfPks;
pub use schema::{POSTGRES_SCHEMA, SQLITE_SCHEMA, seed};
pub use sql::Q;
pub use writes::{ChoiceChanges, QuestionChanges, WriteError};

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

/// The database's pool, by backend.
#[derive(Debug, Clone)]
pub enum Pool {
    /// SQLite's.
    Sqlite(SqlitePool),
    /// PostgreSQL's.
    Postgres(PgPool),
}

struct Inner {
    pool: Pool,
    /// The PostgreSQL schema the tables live in (the connections'
    /// `search_path`).
    schema: Option<String>,
}

/// The polls database. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend())
            .field("schema", &self.inner.schema)
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
            inner: Arc::new(Inner { pool, schema }),
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

    /// The pool, for the cache's derived loaders
    /// (`cached_instances::sqlx::SqlxLoader`) and the change feed.
    #[must_use]
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The pool as the change feed takes it.
    #[must_use]
    pub fn feed_pool(&self) -> FeedPool {
        match &self.inner.pool {
            Pool::Sqlite(pool) => pool.clone().into(),
            Pool::Postgres(pool) => pool.clone().into(),
        }
    }

    /// The instances of `pks` as the database holds them now, read with the
    /// model's derived loader (the cache's loader, without the cache).
    ///
    /// # Errors
    ///
    /// When a statement fails.
    pub async fn load<T>(&self, pks: &[T::Pk]) -> Result<Vec<T>, sqlx::Error>
    where
        T: SqlxModel<sqlx::Sqlite> + SqlxModel<sqlx::Postgres>,
    {
        self.acquire().await?.on().load(pks).await
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        match &self.inner.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }
}
