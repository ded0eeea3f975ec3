//! Statements on either backend: a connection from the pool or a
//! transaction, and a runner that counts every statement it executes.

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{AssertSqlSafe, FromRow, Postgres, QueryBuilder, Sqlite};

use super::{Db, Pool};

impl Db {
    /// A connection from the pool (not a statement: not counted).
    pub(super) async fn acquire(&self) -> Result<Pooled, sqlx::Error> {
        Ok(match &self.inner.pool {
            Pool::Sqlite(pool) => Pooled::Sqlite(pool.acquire().await?),
            Pool::Postgres(pool) => Pooled::Postgres(pool.acquire().await?),
        })
    }

    /// `BEGIN` (counted).
    pub(super) async fn begin(&self) -> Result<Tx, sqlx::Error> {
        self.count_query();
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
    pub(super) fn on<'c>(&'c mut self, db: &'c Db) -> Q<'c> {
        let conn = match self {
            Pooled::Sqlite(c) => Conn::Sqlite(c),
            Pooled::Postgres(c) => Conn::Postgres(c),
        };
        Q { db, conn }
    }
}

pub(super) enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

impl Tx {
    pub(super) fn on<'c>(&'c mut self, db: &'c Db) -> Q<'c> {
        let conn = match self {
            Tx::Sqlite(tx) => Conn::Sqlite(tx),
            Tx::Postgres(tx) => Conn::Postgres(tx),
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

    async fn rollback(self, db: &Db) -> Result<(), sqlx::Error> {
        db.count_query();
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
    pub(super) async fn transaction<R, E: From<sqlx::Error>>(
        &self,
        body: impl AsyncFnOnce(&mut Q<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut tx = self.begin().await?;
        let result = body(&mut tx.on(self)).await;
        match result {
            Ok(value) => {
                tx.commit(self).await?;
                Ok(value)
            }
            Err(e) => {
                if let Err(rollback) = tx.rollback(self).await {
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
pub(super) trait Row:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}
impl<T> Row for T where T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{}

/// Runs counted statements on one connection (the SQL is the example's own
/// text, values are bound: `AssertSqlSafe`). The SQL is the same on both
/// backends (`$1` placeholders work on SQLite too), except for pk lists.
pub(super) struct Q<'c> {
    db: &'c Db,
    conn: Conn<'c>,
}

impl Q<'_> {
    pub(super) async fn fetch<R: Row>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<Vec<R>, sqlx::Error> {
        self.db.count_query();
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
        self.db.count_query();
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
        self.db.count_query();
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
        self.db.count_query();
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

    /// `{select} WHERE {column} <in ids> {rest}`, one statement for all the
    /// ids: `= ANY($1)` with an array on PostgreSQL, `IN (?, ?, ...)` on
    /// SQLite. No statement at all for no ids.
    pub(super) async fn fetch_where_in<R: Row>(
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
                sqlx::query_as(AssertSqlSafe(sql))
                    .bind(ids)
                    .fetch_all(&mut **c)
                    .await
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
