//! The feed itself: installing the capture, draining the outbox into the
//! cache, and the background task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Map, Value};
use sqlx::AssertSqlSafe;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A boxed `Send` future.
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

use super::ddl::{self, DEAD_LETTER_TABLE, Dialect, OUTBOX_TABLE};
use crate::cache::{Changes, RowChange, Unusable};
use crate::{Cache, Error};

/// An error of the feed: the database failed, or the cache could not reload
/// what it invalidated. Either way the rows stay in the outbox and are
/// delivered later.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// The database failed (installing, claiming or deleting outbox rows).
    #[error("change feed: database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The cache's reload of an invalidated instance failed.
    #[error("change feed: {0}")]
    Cache(#[from] Error),
    /// The store could not take the invalidation of `rows` outbox rows.
    #[error(
        "change feed: the store could not take the invalidation of {rows} outbox rows; they stay in the outbox"
    )]
    Undelivered {
        /// How many rows stay.
        rows: usize,
    },
}

/// The pool the feed reads the outbox from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum FeedPool {
    /// PostgreSQL.
    #[cfg(feature = "sqlx-postgres")]
    Postgres(sqlx::PgPool),
    /// SQLite.
    #[cfg(feature = "sqlx-sqlite")]
    Sqlite(sqlx::SqlitePool),
}

#[cfg(feature = "sqlx-postgres")]
impl From<sqlx::PgPool> for FeedPool {
    fn from(pool: sqlx::PgPool) -> Self {
        FeedPool::Postgres(pool)
    }
}

#[cfg(feature = "sqlx-sqlite")]
impl From<sqlx::SqlitePool> for FeedPool {
    fn from(pool: sqlx::SqlitePool) -> Self {
        FeedPool::Sqlite(pool)
    }
}

impl FeedPool {
    fn dialect(&self) -> Dialect {
        match self {
            #[cfg(feature = "sqlx-postgres")]
            FeedPool::Postgres(_) => Dialect::Postgres,
            #[cfg(feature = "sqlx-sqlite")]
            FeedPool::Sqlite(_) => Dialect::Sqlite,
        }
    }
}

/// Which outbox rows a transaction's [`Feed::flush`] delivers: taken with
/// [`Feed::mark`] inside the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "pass it to `Feed::flush` after the commit"]
pub struct WriteMark(Mark);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// PostgreSQL: the rows of this transaction id.
    #[cfg_attr(not(feature = "sqlx-postgres"), allow(dead_code))]
    Txid(i64),
    /// SQLite: the rows up to this outbox id.
    #[cfg_attr(not(feature = "sqlx-sqlite"), allow(dead_code))]
    UpTo(i64),
}

/// A connection [`Feed::mark`] can read a transaction's mark from: a
/// `PgConnection` or a `SqliteConnection` (`&mut *tx` of a transaction).
pub trait FeedConnection: Send + sealed::Sealed {
    #[doc(hidden)]
    fn __mark(
        &mut self,
    ) -> Pin<Box<dyn Future<Output = Result<WriteMark, sqlx::Error>> + Send + '_>>;
}

mod sealed {
    pub trait Sealed {}
    #[cfg(feature = "sqlx-postgres")]
    impl Sealed for sqlx::PgConnection {}
    #[cfg(feature = "sqlx-sqlite")]
    impl Sealed for sqlx::SqliteConnection {}
}

#[cfg(feature = "sqlx-postgres")]
impl FeedConnection for sqlx::PgConnection {
    fn __mark(
        &mut self,
    ) -> Pin<Box<dyn Future<Output = Result<WriteMark, sqlx::Error>> + Send + '_>> {
        Box::pin(async move {
            let (txid,): (i64,) = sqlx::query_as("SELECT txid_current()")
                .fetch_one(self)
                .await?;
            Ok(WriteMark(Mark::Txid(txid)))
        })
    }
}

#[cfg(feature = "sqlx-sqlite")]
impl FeedConnection for sqlx::SqliteConnection {
    fn __mark(
        &mut self,
    ) -> Pin<Box<dyn Future<Output = Result<WriteMark, sqlx::Error>> + Send + '_>> {
        Box::pin(async move {
            // One writer at a time: every row up to the highest this
            // transaction sees is committed once it is.
            let (id,): (i64,) = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT COALESCE(MAX(id), 0) FROM {OUTBOX_TABLE}"
            )))
            .fetch_one(self)
            .await?;
            Ok(WriteMark(Mark::UpTo(id)))
        })
    }
}

/// What the feed has done, for monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FeedStats {
    /// Outbox rows delivered to the cache and deleted.
    pub delivered: u64,
    /// Rows moved to the dead-letter table.
    pub dead_letters: u64,
    /// Batches the cache could not take (the store was down, or a reload
    /// failed): their rows stayed in the outbox.
    pub undelivered_batches: u64,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    dead_letters: AtomicU64,
    undelivered_batches: AtomicU64,
}

struct Inner {
    cache: Cache,
    pool: FeedPool,
    batch_size: usize,
    poll_interval: Duration,
    retry_interval: Duration,
    counters: Counters,
}

/// The change feed of a cache over one database: see the [module
/// docs](crate::feed).
///
/// ```no_run
/// use cached_instances::Cache;
/// use cached_instances::feed::{Feed, FeedError, FeedPool};
///
/// async fn serve(cache: Cache, pool: impl Into<FeedPool>) -> Result<(), FeedError> {
///     let feed = Feed::new(cache, pool);
///     feed.install().await?; // idempotent: the outbox and the triggers
///     let handle = feed.spawn(); // drains the outbox until stopped
///     // ... serve; writes by anyone are invalidated ...
///     handle.stop().await;
///     Ok(())
/// }
/// ```
///
/// Cheap to clone: clones share the pool, the cache and the counters.
#[derive(Clone)]
pub struct Feed {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("pool", &self.inner.pool)
            .field("batch_size", &self.inner.batch_size)
            .field("poll_interval", &self.inner.poll_interval)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// One outbox row as read: id, table, operation, old and new columns.
type OutboxRow = (i64, String, String, Option<String>, Option<String>);

/// Why a row went to the dead-letter table.
#[derive(Debug, thiserror::Error)]
enum BadRow {
    #[error("{column} is not a JSON object: {detail}")]
    Undecodable {
        column: &'static str,
        detail: String,
    },
    #[error("operation `{0}` is not I, U or D with the states it needs")]
    Operation(String),
    #[error(transparent)]
    Unusable(#[from] Unusable),
}

fn state(column: &'static str, text: Option<&str>) -> Result<Option<Map<String, Value>>, BadRow> {
    text.map(|text| {
        serde_json::from_str::<Map<String, Value>>(text).map_err(|e| BadRow::Undecodable {
            column,
            detail: e.to_string(),
        })
    })
    .transpose()
}

/// What a claimed batch came to.
struct Delivery {
    /// Rows to delete: delivered.
    delivered: Vec<i64>,
    /// Rows to move aside, with why.
    dead: Vec<(i64, String)>,
    /// Whether the cache took the batch.
    taken: Result<bool, Error>,
    /// How many rows the cache was given.
    given: usize,
}

impl Delivery {
    /// The rows to delete from the outbox: delivered, or moved aside.
    fn finished(&self) -> Vec<i64> {
        self.delivered
            .iter()
            .copied()
            .chain(self.dead.iter().map(|(id, _)| *id))
            .collect()
    }

    fn taken(&self) -> bool {
        matches!(self.taken, Ok(true))
    }

    /// The error of a batch the cache did not take.
    fn into_result(self) -> Result<usize, FeedError> {
        match self.taken {
            Ok(true) => Ok(self.delivered.len()),
            Ok(false) => Err(FeedError::Undelivered { rows: self.given }),
            Err(error) => Err(FeedError::Cache(error)),
        }
    }
}

impl Feed {
    /// A feed of `cache`'s registered models over `pool`'s database.
    /// Nothing runs until [`install`](Self::install) and
    /// [`spawn`](Self::spawn).
    pub fn new(cache: Cache, pool: impl Into<FeedPool>) -> Self {
        Feed {
            inner: Arc::new(Inner {
                cache,
                pool: pool.into(),
                batch_size: 256,
                poll_interval: Duration::from_millis(10),
                retry_interval: Duration::from_millis(200),
                counters: Counters::default(),
            }),
        }
    }

    fn configure(mut self, f: impl FnOnce(&mut Inner)) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            f(inner);
        }
        self
    }

    /// The most outbox rows one batch claims (256 by default).
    #[must_use]
    pub fn batch_size(self, rows: usize) -> Self {
        self.configure(|i| i.batch_size = rows.max(1))
    }

    /// How long the task sleeps after a batch that was not full (10 ms by
    /// default): the delivery delay of an idle feed.
    #[must_use]
    pub fn poll_interval(self, interval: Duration) -> Self {
        self.configure(|i| i.poll_interval = interval)
    }

    /// How long the task waits after a batch the cache or the database
    /// could not take (200 ms by default).
    #[must_use]
    pub fn retry_interval(self, interval: Duration) -> Self {
        self.configure(|i| i.retry_interval = interval)
    }

    /// The capture DDL for the registered models: the outbox, the
    /// dead-letter table and one set of triggers per table. Idempotent, for
    /// a migration file (`sqlx migrate`) or [`install`](Self::install).
    #[must_use]
    pub fn install_sql(&self) -> String {
        let captures = self.inner.cache.captures();
        ddl::ddl(self.inner.pool.dialect(), &ddl::plan(captures))
    }

    /// Applies [`install_sql`](Self::install_sql) in one transaction.
    /// Idempotent: safe on every start, from several processes at once.
    ///
    /// # Errors
    ///
    /// [`FeedError::Database`] when the DDL fails (a declared table or
    /// column that does not exist, say).
    pub async fn install(&self) -> Result<(), FeedError> {
        self.install_boxed().await
    }

    /// Boxed as `Send`, here where the connection's lifetimes are known:
    /// sqlx's executor bounds are higher-ranked, and a caller's `Send`
    /// check cannot see through an unboxed future to prove them.
    fn install_boxed(&self) -> BoxFuture<'_, Result<(), FeedError>> {
        Box::pin(async move {
            let sql = self.install_sql();
            match &self.inner.pool {
                #[cfg(feature = "sqlx-postgres")]
                FeedPool::Postgres(pool) => {
                    let mut tx = pool.begin().await?;
                    // Installs from several processes take turns.
                    sqlx::query("SELECT pg_advisory_xact_lock(7306232907563311202)")
                        .execute(&mut *tx)
                        .await?;
                    sqlx::Executor::execute(&mut *tx, AssertSqlSafe(sql.as_str())).await?;
                    tx.commit().await?;
                }
                #[cfg(feature = "sqlx-sqlite")]
                FeedPool::Sqlite(pool) => {
                    let mut tx = pool.begin().await?;
                    sqlx::Executor::execute(&mut *tx, AssertSqlSafe(sql.as_str())).await?;
                    tx.commit().await?;
                }
            }
            Ok(())
        })
    }

    /// The mark of the transaction `conn` is in, for [`flush`](Self::flush)
    /// after its commit.
    ///
    /// # Errors
    ///
    /// [`FeedError::Database`] when the query fails.
    pub async fn mark<C: FeedConnection>(&self, conn: &mut C) -> Result<WriteMark, FeedError> {
        Ok(conn.__mark().await?)
    }

    /// Delivers the outbox rows of the transaction `mark` was taken in
    /// (after its commit), so that the next read sees its write. Rows a
    /// running task has claimed are waited for (PostgreSQL) or delivered
    /// again (SQLite). Returns how many rows this call delivered.
    ///
    /// # Errors
    ///
    /// When the cache could not take the rows (they stay in the outbox for
    /// the task), or the database failed.
    pub async fn flush(&self, mark: WriteMark) -> Result<usize, FeedError> {
        let mut total = 0;
        loop {
            let (claimed, delivery) = self.batch(Some(mark.0)).await?;
            total += delivery.into_result()?;
            if claimed < self.inner.batch_size {
                return Ok(total);
            }
        }
    }

    /// Delivers every row in the outbox now, batch after batch, and returns
    /// how many were delivered. What the task does, once.
    ///
    /// # Errors
    ///
    /// As [`flush`](Self::flush).
    pub async fn drain(&self) -> Result<usize, FeedError> {
        let mut total = 0;
        loop {
            let (claimed, delivery) = self.batch(None).await?;
            total += delivery.into_result()?;
            if claimed < self.inner.batch_size {
                return Ok(total);
            }
        }
    }

    /// Starts the task draining the outbox; it runs until the handle is
    /// stopped or dropped. Needs a Tokio runtime.
    pub fn spawn(&self) -> FeedHandle {
        let (stop, mut stopped) = watch::channel(false);
        let feed = self.clone();
        let task = tokio::spawn(async move {
            loop {
                if *stopped.borrow() {
                    return;
                }
                let wait = match feed.batch(None).await {
                    Ok((claimed, delivery)) if delivery.taken() => {
                        if claimed >= feed.inner.batch_size {
                            Duration::ZERO
                        } else {
                            feed.inner.poll_interval
                        }
                    }
                    Ok(_) => feed.inner.retry_interval,
                    Err(error) => {
                        tracing::warn!(
                            target: "cached_instances",
                            error = %error,
                            "change feed: batch failed; its rows stay in the outbox"
                        );
                        feed.inner.retry_interval
                    }
                };
                // Woken early: stopped, or the handle is gone.
                if !wait.is_zero() && tokio::time::timeout(wait, stopped.changed()).await.is_ok() {
                    return;
                }
            }
        });
        FeedHandle {
            stop,
            task: Some(task),
        }
    }

    /// What the feed has done so far (all clones together).
    #[must_use]
    pub fn stats(&self) -> FeedStats {
        let c = &self.inner.counters;
        FeedStats {
            delivered: c.delivered.load(Ordering::Relaxed),
            dead_letters: c.dead_letters.load(Ordering::Relaxed),
            undelivered_batches: c.undelivered_batches.load(Ordering::Relaxed),
        }
    }

    /// Claims one batch (all of `only`'s rows, or the next `batch_size`),
    /// delivers it, and deletes what was delivered or moved aside. Returns
    /// how many rows were claimed.
    /// Boxed as `Send`: see [`install_boxed`](Self::install_boxed).
    fn batch(&self, only: Option<Mark>) -> BoxFuture<'_, Result<(usize, Delivery), FeedError>> {
        Box::pin(async move {
            let limit = i64::try_from(self.inner.batch_size).unwrap_or(i64::MAX);
            match &self.inner.pool {
                #[cfg(feature = "sqlx-postgres")]
                FeedPool::Postgres(pool) => {
                    let mut tx = pool.begin().await?;
                    let columns = "id, table_name, op, old_row::text, new_row::text";
                    let rows: Vec<OutboxRow> = match only {
                        // Rows another worker holds are skipped, not waited for.
                        None => {
                            let sql = format!(
                                "SELECT {columns} FROM {OUTBOX_TABLE} ORDER BY id LIMIT $1 \
                             FOR UPDATE SKIP LOCKED"
                            );
                            sqlx::query_as(AssertSqlSafe(sql))
                                .bind(limit)
                                .fetch_all(&mut *tx)
                                .await?
                        }
                        // A flush waits for a worker holding its rows: they are
                        // then delivered (and gone) or released to it.
                        Some(Mark::Txid(txid) | Mark::UpTo(txid)) => {
                            let sql = format!(
                                "SELECT {columns} FROM {OUTBOX_TABLE} WHERE txid = $2 ORDER BY id \
                             LIMIT $1 FOR UPDATE"
                            );
                            sqlx::query_as(AssertSqlSafe(sql))
                                .bind(limit)
                                .bind(txid)
                                .fetch_all(&mut *tx)
                                .await?
                        }
                    };
                    let delivery = self.deliver(&rows).await;
                    for (id, reason) in &delivery.dead {
                        sqlx::query(AssertSqlSafe(format!(
                            "INSERT INTO {DEAD_LETTER_TABLE} \
                         (id, table_name, op, txid, old_row, new_row, reason) \
                         SELECT id, table_name, op, txid, old_row::text, new_row::text, $2 \
                         FROM {OUTBOX_TABLE} WHERE id = $1 ON CONFLICT (id) DO NOTHING"
                        )))
                        .bind(id)
                        .bind(reason)
                        .execute(&mut *tx)
                        .await?;
                    }
                    let done = delivery.finished();
                    if !done.is_empty() {
                        sqlx::query(AssertSqlSafe(format!(
                            "DELETE FROM {OUTBOX_TABLE} WHERE id = ANY($1)"
                        )))
                        .bind(&done)
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    self.count(&delivery);
                    Ok((rows.len(), delivery))
                }
                #[cfg(feature = "sqlx-sqlite")]
                FeedPool::Sqlite(pool) => {
                    let columns = "id, table_name, op, old_row, new_row";
                    let rows: Vec<OutboxRow> = match only {
                        None => {
                            let sql =
                                format!("SELECT {columns} FROM {OUTBOX_TABLE} ORDER BY id LIMIT ?");
                            sqlx::query_as(AssertSqlSafe(sql))
                                .bind(limit)
                                .fetch_all(pool)
                                .await?
                        }
                        Some(Mark::UpTo(id) | Mark::Txid(id)) => {
                            let sql = format!(
                                "SELECT {columns} FROM {OUTBOX_TABLE} WHERE id <= ? ORDER BY id LIMIT ?"
                            );
                            sqlx::query_as(AssertSqlSafe(sql))
                                .bind(id)
                                .bind(limit)
                                .fetch_all(pool)
                                .await?
                        }
                    };
                    let delivery = self.deliver(&rows).await;
                    let mut tx = pool.begin().await?;
                    for (id, reason) in &delivery.dead {
                        sqlx::query(AssertSqlSafe(format!(
                            "INSERT OR IGNORE INTO {DEAD_LETTER_TABLE} \
                         (id, table_name, op, txid, old_row, new_row, reason) \
                         SELECT id, table_name, op, txid, old_row, new_row, ? \
                         FROM {OUTBOX_TABLE} WHERE id = ?"
                        )))
                        .bind(reason)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    }
                    let done = delivery.finished();
                    if !done.is_empty() {
                        let ids = serde_json::to_string(&done).unwrap_or_else(|_| "[]".to_owned());
                        sqlx::query(AssertSqlSafe(format!(
                        "DELETE FROM {OUTBOX_TABLE} WHERE id IN (SELECT value FROM json_each(?))"
                    )))
                    .bind(ids)
                    .execute(&mut *tx)
                    .await?;
                    }
                    tx.commit().await?;
                    self.count(&delivery);
                    Ok((rows.len(), delivery))
                }
            }
        })
    }

    fn count(&self, delivery: &Delivery) {
        let c = &self.inner.counters;
        c.delivered
            .fetch_add(delivery.delivered.len() as u64, Ordering::Relaxed);
        c.dead_letters
            .fetch_add(delivery.dead.len() as u64, Ordering::Relaxed);
        if !delivery.taken() {
            c.undelivered_batches.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Turns `rows` into one invalidation and hands it to the cache.
    async fn deliver(&self, rows: &[OutboxRow]) -> Delivery {
        let cache = &self.inner.cache;
        let mut changes = Changes::default();
        let mut good = Vec::with_capacity(rows.len());
        let mut dead = Vec::new();
        for (id, table, op, old, new) in rows {
            let planned = (|| {
                let old = state("old_row", old.as_deref())?;
                let new = state("new_row", new.as_deref())?;
                let fits = match op.as_str() {
                    "I" => old.is_none() && new.is_some(),
                    "U" => old.is_some() && new.is_some(),
                    "D" => old.is_some() && new.is_none(),
                    _ => false,
                };
                if !fits {
                    return Err(BadRow::Operation(op.clone()));
                }
                let row = RowChange {
                    table,
                    old: old.as_ref(),
                    new: new.as_ref(),
                };
                cache.plan_change(&row, &mut changes)?;
                Ok(())
            })();
            match planned {
                Ok(()) => good.push(*id),
                Err(reason) => {
                    tracing::warn!(
                        target: "cached_instances",
                        id,
                        table = %table,
                        reason = %reason,
                        "change feed: outbox row moved to the dead-letter table"
                    );
                    dead.push((*id, reason.to_string()));
                }
            }
        }
        let taken = cache.apply_changes(changes).await;
        if let Err(error) = &taken {
            tracing::warn!(
                target: "cached_instances",
                error = %error,
                "change feed: a reload failed; the batch stays in the outbox"
            );
        }
        let given = good.len();
        Delivery {
            delivered: if matches!(taken, Ok(true)) {
                good
            } else {
                Vec::new()
            },
            dead,
            taken,
            given,
        }
    }
}

/// The running feed task: [`stop`](Self::stop) it to end it. Dropping the
/// handle stops it too (after its current batch).
#[must_use = "dropping the handle stops the feed"]
#[derive(Debug)]
pub struct FeedHandle {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl FeedHandle {
    /// Stops the task after its current batch and waits for it.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FeedHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
