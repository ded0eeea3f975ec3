//! Statements on either backend: a connection from the pool or a
//! transaction, and a runner of statements on it.

use cached_instances::CachedInstance;
use cached_instances::feed::{Feed, FeedError, WriteMark};
use cached_instances::sqlx::SqlxModel;
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{AssertSqlSafe, FromRow, Postgres, Sqlite};

use super::{Db, Pool, WriteError};

impl Db {
    /// A connection from the pool.
    pub(super) async fn acquire(&self) -> Result<Pooled, sqlx::Error> {
        Ok(match &self.inner.pool {
            Pool::Sqlite(pool) => Pooled::Sqlite(pool.acquire().await?),
            Pool::Postgres(pool) => Pooled::Postgres(pool.acquire().await?),
        })
    }

    async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match &self.inner.pool {
            Pool::Sqlite(pool) => Tx::Sqlite(pool.begin().await?),
            Pool::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }
}

/// A connection borrowed from the pool or a transaction.
pub(super) enum Conn<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

pub(super) enum Pooled {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

impl Pooled {
    pub(super) fn on(&mut self) -> Q<'_> {
        let conn = match self {
            Pooled::Sqlite(c) => Conn::Sqlite(c),
            Pooled::Postgres(c) => Conn::Postgres(c),
        };
        Q { conn }
    }
}

enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

impl Tx {
    fn on(&mut self) -> Q<'_> {
        let conn = match self {
            Tx::Sqlite(tx) => Conn::Sqlite(tx),
            Tx::Postgres(tx) => Conn::Postgres(tx),
        };
        Q { conn }
    }

    async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await,
            Tx::Postgres(tx) => tx.commit().await,
        }
    }

    async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(tx) => tx.rollback().await,
            Tx::Postgres(tx) => tx.rollback().await,
        }
    }
}

impl Db {
    /// Runs `body` in a transaction: commits when it returns `Ok`, rolls
    /// back (right away, not when the connection is next used) when it
    /// returns `Err`.
    ///
    /// # Errors
    ///
    /// `body`'s, or the database's when `BEGIN` or `COMMIT` fails.
    pub async fn transaction<R, E: From<sqlx::Error>>(
        &self,
        body: impl AsyncFnOnce(&mut Q<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut tx = self.begin().await?;
        let result = body(&mut tx.on()).await;
        match result {
            Ok(value) => {
                tx.commit().await?;
                Ok(value)
            }
            Err(e) => {
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(target: "polls", error = %rollback, "rollback failed");
                }
                Err(e)
            }
        }
    }
}

/// A bind parameter.
#[derive(Debug, Clone, Copy)]
pub(super) enum Arg<'a> {
    Int(i64),
    Text(&'a str),
    Time(DateTime<Utc>),
    /// `NULL` for `None`.
    OptInt(Option<i64>),
    OptText(Option<&'a str>),
    OptTime(Option<DateTime<Utc>>),
}

macro_rules! bind_args {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match *arg {
                Arg::Int(v) => query.bind(v),
                Arg::Text(v) => query.bind(v),
                Arg::Time(v) => query.bind(v),
                Arg::OptInt(v) => query.bind(v),
                Arg::OptText(v) => query.bind(v),
                Arg::OptTime(v) => query.bind(v),
            };
        }
        query
    }};
}

/// A row type both backends can decode.
pub(super) trait Row:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}
impl<T> Row for T where T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{}

/// Runs statements on one connection or transaction (the SQL is the
/// example's own text, values are bound: `AssertSqlSafe`). The SQL is the
/// same on both backends (`$1` placeholders work on SQLite too).
pub struct Q<'c> {
    conn: Conn<'c>,
}

impl Q<'_> {
    /// The instances of `pks` as this connection sees them (inside a
    /// transaction: with its writes), read with the model's derived loader.
    ///
    /// # Errors
    ///
    /// When a statement fails.
    pub async fn load<T>(&mut self, pks: &[T::Pk]) -> Result<Vec<T>, sqlx::Error>
    where
        T: SqlxModel<Sqlite> + SqlxModel<Postgres>,
    {
        match &mut self.conn {
            Conn::Sqlite(c) => <T as SqlxModel<Sqlite>>::sqlx_load(&mut **c, pks).await,
            Conn::Postgres(c) => <T as SqlxModel<Postgres>>::sqlx_load(&mut **c, pks).await,
        }
    }

    /// Instance `id`, or [`WriteError::NotFound`].
    pub(super) async fn one<T>(&mut self, id: i64) -> Result<T, WriteError>
    where
        T: SqlxModel<Sqlite> + SqlxModel<Postgres> + CachedInstance<Pk = i64>,
    {
        self.load(&[id]).await?.pop().ok_or(WriteError::NotFound {
            model: T::MODEL,
            id,
        })
    }

    /// The change feed's mark of the transaction this runs in, for
    /// [`Feed::flush`] after the commit (read your own writes).
    ///
    /// # Errors
    ///
    /// When the statement fails.
    pub async fn mark(&mut self, feed: &Feed) -> Result<WriteMark, FeedError> {
        match &mut self.conn {
            Conn::Sqlite(c) => feed.mark(&mut **c).await,
            Conn::Postgres(c) => feed.mark(&mut **c).await,
        }
    }

    pub(super) async fn fetch<R: Row>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<Vec<R>, sqlx::Error> {
        match &mut self.conn {
            Conn::Sqlite(c) => {
                bind_args!(sqlx::query_as(AssertSqlSafe(sql)), args)
                    .fetch_all(&mut **c)
                    .await
            }
            Conn::Postgres(c) => {
                bind_args!(sqlx::query_as(AssertSqlSafe(sql)), args)
                    .fetch_all(&mut **c)
                    .await
            }
        }
    }

    pub(super) async fn fetch_optional<R: Row>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<Option<R>, sqlx::Error> {
        match &mut self.conn {
            Conn::Sqlite(c) => {
                bind_args!(sqlx::query_as(AssertSqlSafe(sql)), args)
                    .fetch_optional(&mut **c)
                    .await
            }
            Conn::Postgres(c) => {
                bind_args!(sqlx::query_as(AssertSqlSafe(sql)), args)
                    .fetch_optional(&mut **c)
                    .await
            }
        }
    }

    pub(super) async fn execute(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<u64, sqlx::Error> {
        Ok(match &mut self.conn {
            Conn::Sqlite(c) => bind_args!(sqlx::query(AssertSqlSafe(sql)), args)
                .execute(&mut **c)
                .await?
                .rows_affected(),
            Conn::Postgres(c) => bind_args!(sqlx::query(AssertSqlSafe(sql)), args)
                .execute(&mut **c)
                .await?
                .rows_affected(),
        })
    }

    /// Several statements, unparameterized (schema changes).
    pub(super) async fn execute_script(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        match &mut self.conn {
            Conn::Sqlite(c) => sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut **c)
                .await
                .map(|_| ()),
            Conn::Postgres(c) => sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut **c)
                .await
                .map(|_| ()),
        }
    }
}
