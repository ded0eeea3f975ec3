//! Loaders generated from the model: `#[cached(table = "...")]` plus
//! [`SqlxLoader`].
//!
//! A model with a table gets a batched sqlx loader for every database whose
//! feature is enabled (`sqlx-sqlite`, `sqlx-postgres`, `sqlx-mysql` for
//! MySQL and MariaDB):
//!
//! ```ignore
//! #[derive(CachedInstance)]
//! #[cached(table = "questions")]
//! pub struct Question {
//!     #[cached(pk)]
//!     pub id: i64,
//!     #[cached(column = "question_text")]        // default: the field's name
//!     pub text: String,
//!     pub pub_date: DateTime<Utc>,
//!     #[cached(has_many = Choice, via = question_id)]   // Choice needs a table too
//!     pub choices: Vec<i64>,
//! }
//!
//! #[derive(CachedInstance)]
//! #[cached(table = "choices")]
//! pub struct Choice {
//!     #[cached(pk)]
//!     pub id: i64,
//!     #[cached(references = Question)]
//!     pub question_id: i64,
//!     pub choice_text: String,
//!     // the join table, its column pointing at this model, and the one
//!     // pointing at the related model
//!     #[cached(many_to_many = User, through = "votes", source = "choice_id", target = "user_id")]
//!     pub voters: Vec<i64>,
//! }
//!
//! let cache = Cache::builder()
//!     .loader::<Question>(SqlxLoader::new(pool.clone()))
//!     .loader::<Choice>(SqlxLoader::new(pool.clone()))
//!     .build()?;
//! ```
//!
//! # Queries
//!
//! Loading any number of pks makes one query for the rows, then one per
//! relation list field, never one per instance:
//!
//! ```text
//! SELECT "id", "question_text", "pub_date" FROM "questions" WHERE "id" = ANY($1)
//! SELECT "question_id", "id" FROM "choices" WHERE "question_id" = ANY($1) ORDER BY "id"
//! SELECT "choice_id", "user_id" FROM "votes" WHERE "choice_id" = ANY($1) ORDER BY "user_id"
//! ```
//!
//! On SQLite and MySQL the lists are `IN (?, ?, ...)`, split into several
//! queries only past the database's limit of parameters (32 766 on SQLite,
//! 65 535 on MySQL), and names are quoted with backticks (a double-quoted
//! name SQLite does not know would silently be read as a string; MySQL reads
//! double quotes as names only in `ANSI_QUOTES` mode). The relation queries ask only for the rows found, and
//! are skipped when none was. Relation lists come in ascending order of the
//! related pks, so a representation only changes when the data does.
//!
//! A table name may be schema-qualified (`"polls.questions"`); names are
//! quoted, so they are used exactly as written (mind PostgreSQL's case).
//!
//! # Columns
//!
//! Each field is read with sqlx, so its type must be one sqlx decodes from
//! the column on each enabled database: integers (PostgreSQL has no unsigned
//! ones), `f32`, `f64`, `bool`, `String`, chrono's `DateTime<Utc>`,
//! `NaiveDate`, `NaiveDateTime`, `NaiveTime`, `uuid::Uuid` (feature `uuid`),
//! `serde_json::Value` (a `JSON`/`JSONB` column on PostgreSQL, `JSON` on
//! MySQL, `TEXT` on SQLite), arrays (`Vec<T>`, PostgreSQL), unsigned
//! integers (SQLite, MySQL), and `Option`s of those for
//! nullable columns. A type sqlx cannot read is a compile error at the field.
//! `#[cached(serde)]` fields are read from a JSON column the same way as
//! `serde_json::Value` and then deserialized; SQL `NULL` is JSON `null`.
//! `#[cached(skip)]` fields are not read; they get `Default::default()`.
//!
//! A model that only works on one database (say it has a `u32` field, or a
//! PostgreSQL array) takes `#[cached(database = "sqlite")]`,
//! `#[cached(database = "postgres")]` or `#[cached(database = "mysql")]`.
//!
//! On MySQL, sqlx binds a `DateTime<Utc>` as a `TIMESTAMP` (1970 to 2038)
//! and reads it from `DATETIME` or `TIMESTAMP` columns, in the connection's
//! time zone, which sqlx sets to UTC. String comparisons follow the column's
//! collation: MySQL's defaults ignore case, so give columns of `index`
//! fields a `_bin` collation for the cache's exact matches.
//!
//! The derived loaders also list every primary key
//! (`SELECT "id" FROM "questions" ORDER BY "id"`, [`SqlxModel::sqlx_all_pks`]),
//! which is what [`Cache::warm`](crate::Cache::warm) loads, so a model with a
//! table can be warmed for [cached queries](crate::query) as it is.
//!
//! Until a model is warmed, its [cached queries](crate::query) are answered
//! by the derived loader in SQL, one statement for the page and the count,
//! with the cache's semantics (see [`query`]).
//!
//! # Checking the schema at startup
//!
//! [`verify_schema`] compares what a derived loader reads (its table, its
//! columns and their field types, the tables of its relation lists) with
//! the database, and names every difference in one [`SchemaError`], so a
//! table typo, a missing column or an `i32` field on a PostgreSQL `BIGINT`
//! fails at startup instead of as a 503 at the first read:
//!
//! ```ignore
//! cached_instances::sqlx::verify_schema::<Question, _>(&pool).await?;
//! ```
//!
//! The derived loaders implement [`SqlxModel`], whose
//! [`sqlx_load`](SqlxModel::sqlx_load) also works on a connection or inside
//! a transaction (`Question::sqlx_load(&mut *tx, &[id])`).

use std::fmt;
use std::future::Future;

use ::sqlx::{Database, Pool};

use crate::error::LoadError;
use crate::instance::CachedInstance;
use crate::loader::{LeasedPks, Loader};
use crate::query::{Condition, Query, QueryPage};

pub use schema::{SchemaError, SchemaMismatch, SqlxColumn, verify_schema};

// The database halves of derived loaders, named by generated code through
// `__private`. They stay public (hidden) here: the diagnostics of a column
// type sqlx cannot read name their traits by this path
// (`cached_instances::sqlx::postgres::PgColumn`), which a private module
// would turn into a misleading `sqlx::postgres::PgColumn`.
#[cfg(feature = "sqlx-mysql")]
#[doc(hidden)]
pub mod mysql;
#[cfg(feature = "sqlx-postgres")]
#[doc(hidden)]
pub mod postgres;
pub mod query;
mod schema;
#[cfg(feature = "sqlx-sqlite")]
#[doc(hidden)]
pub mod sqlite;

/// A [`Loader`] for every model with a derived sqlx loader
/// (`#[cached(table = "...")]`) on database `DB`, over a pool.
///
/// Each `load` takes one connection from the pool and makes one query for
/// the rows plus one per relation list.
///
#[cfg_attr(feature = "sqlx-sqlite", doc = "```no_run")]
#[cfg_attr(not(feature = "sqlx-sqlite"), doc = "```ignore")]
/// use cached_instances::sqlx::SqlxLoader;
/// use cached_instances::{Cache, CachedInstance};
///
/// #[derive(CachedInstance, Debug, Clone, PartialEq)]
/// #[cached(table = "tags")]
/// pub struct Tag {
///     #[cached(pk)]
///     pub id: i64,
///     pub name: String,
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// let cache = Cache::builder()
///     .loader::<Tag>(SqlxLoader::new(pool.clone()))
///     .build()?;
/// let tag = cache.get::<Tag>(&1).await?;
/// # Ok(())
/// # }
/// ```
pub struct SqlxLoader<DB: Database> {
    pool: Pool<DB>,
    scan_limit: usize,
}

/// The most candidate rows [`SqlxLoader`] scans to answer a search on a
/// model that is not warmed (see [`SqlxLoader::scan_limit`]).
pub const DEFAULT_SCAN_LIMIT: usize = 10_000;

impl<DB: Database> SqlxLoader<DB> {
    /// A loader over `pool` (`SqlitePool`, `PgPool`, ...).
    #[must_use]
    pub fn new(pool: Pool<DB>) -> Self {
        SqlxLoader {
            pool,
            scan_limit: DEFAULT_SCAN_LIMIT,
        }
    }

    /// [Cached queries](crate::query) of a model that is not warmed are
    /// answered in SQL ([`query`]), except full-text search,
    /// which has no SQL form with the cache's tokenizer: the database
    /// narrows the candidates with the query's other filters, and at most
    /// `rows` of them (default [`DEFAULT_SCAN_LIMIT`]) are loaded and
    /// matched in memory. A search leaving more candidates is declined, and
    /// fails with [`QueryError::NoFallback`](crate::query::QueryError::NoFallback):
    /// warm such models. `0` declines every search.
    #[must_use]
    pub fn scan_limit(mut self, rows: usize) -> Self {
        self.scan_limit = rows;
        self
    }

    /// The pool the loader reads from.
    #[must_use]
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }
}

impl<DB: Database> Clone for SqlxLoader<DB> {
    fn clone(&self) -> Self {
        SqlxLoader {
            pool: self.pool.clone(),
            scan_limit: self.scan_limit,
        }
    }
}

impl<DB: Database> fmt::Debug for SqlxLoader<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlxLoader")
            .field("database", &DB::NAME)
            .finish_non_exhaustive()
    }
}

impl<DB, T> Loader<T> for SqlxLoader<DB>
where
    DB: SqlxDatabase,
    T: SqlxModel<DB>,
{
    async fn load(&self, pks: &[T::Pk]) -> Result<Vec<T>, LoadError> {
        if pks.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.acquire().await.map_err(LoadError::new)?;
        T::sqlx_load(&mut *conn, pks).await.map_err(LoadError::new)
    }

    /// Checks a connection out of the pool while the cache takes its
    /// leases (with sqlx's default `test_before_acquire`, a ping: a round
    /// trip saved), and sends the query once they are taken. With no pks
    /// to load, the connection goes back unused.
    ///
    /// Only an idle connection is checked out early: when the pool has
    /// none, the read waits for its leases first, so that readers whose
    /// leases are refused (a herd on the same cold keys, waiting for the
    /// one that holds them) never queue for a connection they will not
    /// use, ahead of the reader that needs one. An early checkout is
    /// waited for even when the leases are refused: sqlx drops a
    /// connection whose checkout is cancelled.
    async fn load_after(&self, pks: LeasedPks<'_, T::Pk>) -> Result<Vec<T>, LoadError> {
        let (early, pks) = if self.pool.num_idle() > 0 {
            let (conn, pks) = tokio::join!(self.pool.acquire(), pks);
            (Some(conn), pks)
        } else {
            (None, pks.await)
        };
        if pks.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = match early {
            Some(conn) => conn,
            None => self.pool.acquire().await,
        }
        .map_err(LoadError::new)?;
        T::sqlx_load(&mut *conn, &pks).await.map_err(LoadError::new)
    }

    /// `SELECT pk FROM table ORDER BY pk`, for [`Cache::warm`](crate::Cache::warm).
    async fn all_pks(&self) -> Result<Option<Vec<T::Pk>>, LoadError> {
        let mut conn = self.pool.acquire().await.map_err(LoadError::new)?;
        T::sqlx_all_pks(&mut *conn).await.map_err(LoadError::new)
    }

    /// The query in SQL (see [`query`](self::query)): one statement for the
    /// page and its count.
    async fn query(&self, query: &Query<T>) -> Result<Option<QueryPage<T::Pk>>, LoadError> {
        let mut conn = self.pool.acquire().await.map_err(LoadError::new)?;
        query::run::<DB, T>(&mut conn, query, self.scan_limit)
            .await
            .map_err(LoadError::new)
    }
}

/// A model with a loader derived from `#[cached(table = "...")]` for
/// database `DB`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no derived sqlx loader for `{DB}`",
    label = "no loader for `{Self}` on `{DB}`",
    note = "add `#[cached(table = \"...\")]` to `{Self}` and enable the `sqlx-sqlite`, `sqlx-postgres` or `sqlx-mysql` feature of cached-instances (without `database = ...` naming another database), or implement `Loader<{Self}>` by hand"
)]
pub trait SqlxModel<DB: SqlxDatabase>: CachedInstance {
    /// Loads the instances whose pks are in `pks` over `conn`: one query for
    /// the rows, one per relation list. Missing rows are omitted; the order
    /// is the database's.
    ///
    /// `conn` is a connection: `&mut *pooled` for a pooled connection,
    /// `&mut *tx` inside a transaction. The database follows from its type,
    /// so `Question::sqlx_load(&mut *tx, &[id])` needs no annotation.
    fn sqlx_load<'a, C>(
        conn: &'a mut C,
        pks: &'a [Self::Pk],
    ) -> impl Future<Output = Result<Vec<Self>, ::sqlx::Error>> + Send + 'a
    where
        C: SqlxConnection<Database = DB>;

    /// Every primary key of the table (`SELECT pk FROM table ORDER BY pk`),
    /// which [`Cache::warm`](crate::Cache::warm) loads; `None` when the
    /// model cannot list them. Derived with the loader.
    fn sqlx_all_pks<'a, C>(
        conn: &'a mut C,
    ) -> impl Future<Output = Result<Option<Vec<Self::Pk>>, ::sqlx::Error>> + Send + 'a
    where
        C: SqlxConnection<Database = DB>,
    {
        let _ = conn;
        std::future::ready(Ok(None))
    }

    /// The table and its pk column. Derived with the loader.
    #[doc(hidden)]
    fn sqlx_table() -> Option<(&'static str, &'static str)> {
        None
    }

    /// The columns the loader reads, with the types of their fields, for
    /// [`verify_schema`]; `None` when the model does not declare them.
    /// Derived with the loader.
    #[doc(hidden)]
    fn sqlx_columns() -> Option<Vec<SqlxColumn<DB>>> {
        None
    }

    /// Writes the SQL predicate of `condition` on index field `field`
    /// (see [`query`](self::query)); `None` when it has none. Derived with
    /// the loader.
    #[doc(hidden)]
    fn sqlx_filter(
        field: usize,
        condition: &Condition,
        builder: &mut query::Builder<DB>,
    ) -> Option<()> {
        let _ = (field, condition, builder);
        None
    }

    /// Runs `builder`, a `SELECT pk[, count]`: the pks, and the count of
    /// the first row if there is one; `None` when the pk cannot be read.
    /// Derived with the loader.
    #[doc(hidden)]
    fn sqlx_fetch_keys<'a>(
        conn: &'a mut DB::Connection,
        builder: &'a mut query::Builder<DB>,
    ) -> BoxFuture<'a, Result<Option<FetchedKeys<Self::Pk>>, ::sqlx::Error>> {
        let _ = (conn, builder);
        Box::pin(std::future::ready(Ok(None)))
    }
}

/// The pks a query's statement returned, with the count of its first row.
#[doc(hidden)]
pub type FetchedKeys<K> = (Vec<K>, Option<i64>);

/// A database the derived loaders support: `Sqlite` (feature `sqlx-sqlite`),
/// `Postgres` (feature `sqlx-postgres`) and `MySql` (feature `sqlx-mysql`,
/// MySQL and MariaDB). Code generic over the database
/// bounds it with this trait:
///
/// ```ignore
/// async fn first<DB: SqlxDatabase>(conn: &mut DB::Connection) -> Result<Vec<Question>, sqlx::Error>
/// where
///     Question: SqlxModel<DB>,
/// {
///     Question::sqlx_load(conn, &[1]).await
/// }
/// ```
pub trait SqlxDatabase: Database<Connection: SqlxConnection<Database = Self>> {
    /// How names are quoted.
    #[doc(hidden)]
    const QUOTE: char;
    /// `LIMIT` without a limit (before an `OFFSET`).
    #[doc(hidden)]
    const NO_LIMIT: &'static str;
    /// `column = value`, compared as JSON (`column` already quoted).
    #[doc(hidden)]
    fn push_json_eq(builder: &mut query::Builder<Self>, column: &str, value: serde_json::Value);
    /// `column ASC` or `DESC` (`column` already quoted), `NULL` last
    /// ascending and first descending, as the cache orders `None`.
    #[doc(hidden)]
    fn push_order(builder: &mut query::Builder<Self>, column: &str, descending: bool);
}

/// `NULLS FIRST`/`NULLS LAST`, for the databases that have them.
#[cfg(any(feature = "sqlx-sqlite", feature = "sqlx-postgres"))]
fn push_order_nulls<DB: SqlxDatabase>(
    builder: &mut query::Builder<DB>,
    column: &str,
    descending: bool,
) where
    DB::Arguments: Default,
{
    let order = if descending {
        "DESC NULLS FIRST"
    } else {
        "ASC NULLS LAST"
    };
    builder.push(format_args!("{column} {order}"));
}

#[cfg(feature = "sqlx-sqlite")]
impl SqlxDatabase for ::sqlx::Sqlite {
    const QUOTE: char = '`';
    const NO_LIMIT: &'static str = "-1";
    fn push_json_eq(builder: &mut query::Builder<Self>, column: &str, value: serde_json::Value) {
        builder
            .push(format_args!("json({column}) = json("))
            .push_bind(value)
            .push(")");
    }
    fn push_order(builder: &mut query::Builder<Self>, column: &str, descending: bool) {
        push_order_nulls(builder, column, descending);
    }
}

#[cfg(feature = "sqlx-postgres")]
impl SqlxDatabase for ::sqlx::Postgres {
    const QUOTE: char = '"';
    const NO_LIMIT: &'static str = "ALL";
    fn push_json_eq(builder: &mut query::Builder<Self>, column: &str, value: serde_json::Value) {
        builder
            .push(format_args!("{column}::jsonb = "))
            .push_bind(value);
    }
    fn push_order(builder: &mut query::Builder<Self>, column: &str, descending: bool) {
        push_order_nulls(builder, column, descending);
    }
}

#[cfg(feature = "sqlx-mysql")]
impl SqlxDatabase for ::sqlx::MySql {
    const QUOTE: char = '`';
    // MySQL has no `LIMIT ALL`; its documented stand-in is the largest
    // unsigned 64-bit number.
    const NO_LIMIT: &'static str = "18446744073709551615";
    fn push_json_eq(builder: &mut query::Builder<Self>, column: &str, value: serde_json::Value) {
        // No JSON equality common to MySQL and MariaDB (MariaDB stores JSON
        // as text): each value contains the other.
        builder
            .push(format_args!("JSON_CONTAINS({column}, "))
            .push_bind(value.clone())
            .push(format_args!(") AND JSON_CONTAINS("))
            .push_bind(value)
            .push(format_args!(", {column})"));
    }
    fn push_order(builder: &mut query::Builder<Self>, column: &str, descending: bool) {
        // No `NULLS FIRST`/`LAST`; MySQL sorts `NULL` first ascending.
        let direction = if descending { "DESC" } else { "ASC" };
        builder.push(format_args!(
            "{column} IS NULL {direction}, {column} {direction}"
        ));
    }
}

/// A connection the derived loaders run on: `SqliteConnection` (feature
/// `sqlx-sqlite`), `PgConnection` (feature `sqlx-postgres`) or
/// `MySqlConnection` (feature `sqlx-mysql`).
pub trait SqlxConnection: Send {
    /// The connection's database.
    type Database: Database;

    /// The connection, as its database's connection type.
    fn as_connection(&mut self) -> &mut <Self::Database as Database>::Connection;
}

#[cfg(feature = "sqlx-sqlite")]
impl SqlxConnection for ::sqlx::SqliteConnection {
    type Database = ::sqlx::Sqlite;

    #[inline]
    fn as_connection(&mut self) -> &mut Self {
        self
    }
}

#[cfg(feature = "sqlx-mysql")]
impl SqlxConnection for ::sqlx::MySqlConnection {
    type Database = ::sqlx::MySql;

    #[inline]
    fn as_connection(&mut self) -> &mut Self {
        self
    }
}

#[cfg(feature = "sqlx-postgres")]
impl SqlxConnection for ::sqlx::PgConnection {
    type Database = ::sqlx::Postgres;

    #[inline]
    fn as_connection(&mut self) -> &mut Self {
        self
    }
}

/// The parts of a derived loader's database module that only differ by the
/// database's types: reading rows, keys and relation lists, and the autoref
/// dispatch that keeps a pk type the database cannot bind to one error.
/// Each database module defines its column and key traits, and the
/// functions whose bounds a user's type can fail (`get`, `fetch_rows`,
/// `fetch_lists`: written out there, so that such an error points at plain
/// code, not inside this macro), and invokes this.
#[cfg(any(
    feature = "sqlx-sqlite",
    feature = "sqlx-postgres",
    feature = "sqlx-mysql"
))]
macro_rules! loader_rows {
    (
        db: $db:ty,
        conn: $conn:ty,
        row: $row:ty,
        key: $key:ident,
        column: $column:ident,
        quote: $quote:expr $(,)?
    ) => {
        /// Every key of `table` (its `key` column), in order.
        /// Boxed like `fetch_rows`.
        pub fn fetch_all_pks<'a, K: $key>(
            conn: &'a mut $conn,
            table: &'a str,
            key: &'a str,
        ) -> $crate::sqlx::BoxFuture<'a, Result<Vec<K>, ::sqlx::Error>> {
            Box::pin(async move {
                // Names quoted by `select_all_keys`; no values.
                let sql = $crate::sqlx::select_all_keys($quote, table, key);
                ::sqlx::query(::sqlx::AssertSqlSafe(sql))
                    .fetch_all(conn)
                    .await?
                    .iter()
                    .map(|row| get::<K>(row, 0, key))
                    .collect()
            })
        }

        /// Runs a cached query's `SELECT pk[, COUNT(*) OVER ()]` (see
        /// `sqlx::query`): the pks, and the count of the first row.
        /// Boxed like `fetch_rows`.
        pub fn fetch_keys<'a, K: $key>(
            conn: &'a mut $conn,
            builder: &'a mut $crate::sqlx::query::Builder<$db>,
        ) -> $crate::sqlx::BoxFuture<'a, Result<Option<$crate::sqlx::FetchedKeys<K>>, ::sqlx::Error>> {
            Box::pin(async move {
                let rows = builder.build().fetch_all(conn).await?;
                let count = match rows.first() {
                    Some(row) if ::sqlx::Row::len(row) > 1 => Some(::sqlx::Row::try_get::<i64, _>(row, 1)?),
                    _ => None,
                };
                let keys = rows
                    .iter()
                    .map(|row| get::<K>(row, 0, "primary key"))
                    .collect::<Result<_, _>>()?;
                Ok(Some((keys, count)))
            })
        }

        /// The keys of a pk type, for `sqlx_all_pks`: read through autoref
        /// dispatch, so that a pk type the database cannot bind is reported once,
        /// by the loader's `fetch_rows`, and not again here.
        pub struct AllKeys<K>(std::marker::PhantomData<fn() -> K>);

        impl<K> AllKeys<K> {
            #[must_use]
            pub const fn new() -> Self {
                AllKeys(std::marker::PhantomData)
            }
        }

        impl<K> Default for AllKeys<K> {
            fn default() -> Self {
                Self::new()
            }
        }

        pub trait FetchAllKeys<K> {
            fn __cached_fetch_all<'a>(
                self,
                conn: &'a mut $conn,
                table: &'a str,
                key: &'a str,
            ) -> $crate::sqlx::BoxFuture<'a, Result<Vec<K>, ::sqlx::Error>>;

            fn __cached_fetch_keys<'a>(
                self,
                conn: &'a mut $conn,
                builder: &'a mut $crate::sqlx::query::Builder<$db>,
            ) -> $crate::sqlx::BoxFuture<'a, Result<Option<$crate::sqlx::FetchedKeys<K>>, ::sqlx::Error>>;
        }

        impl<K: $key> FetchAllKeys<K> for AllKeys<K> {
            #[inline]
            fn __cached_fetch_all<'a>(
                self,
                conn: &'a mut $conn,
                table: &'a str,
                key: &'a str,
            ) -> $crate::sqlx::BoxFuture<'a, Result<Vec<K>, ::sqlx::Error>> {
                fetch_all_pks(conn, table, key)
            }

            #[inline]
            fn __cached_fetch_keys<'a>(
                self,
                conn: &'a mut $conn,
                builder: &'a mut $crate::sqlx::query::Builder<$db>,
            ) -> $crate::sqlx::BoxFuture<'a, Result<Option<$crate::sqlx::FetchedKeys<K>>, ::sqlx::Error>> {
                fetch_keys(conn, builder)
            }
        }

        pub trait FetchAllKeysFallback<K> {
            fn __cached_fetch_all<'a>(
                self,
                conn: &'a mut $conn,
                table: &'a str,
                key: &'a str,
            ) -> $crate::sqlx::BoxFuture<'a, Result<Vec<K>, ::sqlx::Error>>;

            fn __cached_fetch_keys<'a>(
                self,
                conn: &'a mut $conn,
                builder: &'a mut $crate::sqlx::query::Builder<$db>,
            ) -> $crate::sqlx::BoxFuture<'a, Result<Option<$crate::sqlx::FetchedKeys<K>>, ::sqlx::Error>>;
        }

        impl<K: Send + 'static> FetchAllKeysFallback<K> for &AllKeys<K> {
            fn __cached_fetch_all<'a>(
                self,
                _conn: &'a mut $conn,
                _table: &'a str,
                _key: &'a str,
            ) -> $crate::sqlx::BoxFuture<'a, Result<Vec<K>, ::sqlx::Error>> {
                Box::pin(std::future::ready(Err($crate::sqlx::schema_error(
                    "the primary key cannot be bound (the derive's assertion should have failed)",
                ))))
            }

            fn __cached_fetch_keys<'a>(
                self,
                _conn: &'a mut $conn,
                _builder: &'a mut $crate::sqlx::query::Builder<$db>,
            ) -> $crate::sqlx::BoxFuture<'a, Result<Option<$crate::sqlx::FetchedKeys<K>>, ::sqlx::Error>> {
                Box::pin(std::future::ready(Ok(None)))
            }
        }

        /// A field's column type, for [`verify_schema`](crate::sqlx::verify_schema):
        /// read through autoref dispatch, so that a type sqlx cannot read is
        /// reported once, by the loader's `get`.
        pub struct ColumnOfType<T>(std::marker::PhantomData<fn() -> T>);

        impl<T> ColumnOfType<T> {
            #[must_use]
            pub const fn new() -> Self {
                ColumnOfType(std::marker::PhantomData)
            }
        }

        impl<T> Default for ColumnOfType<T> {
            fn default() -> Self {
                Self::new()
            }
        }

        pub trait CompatibleColumn {
            fn __cached_compatible(self) -> Option<$crate::sqlx::schema::Compatible<$db>>;
        }

        impl<T: $column> CompatibleColumn for ColumnOfType<T> {
            #[inline]
            fn __cached_compatible(self) -> Option<$crate::sqlx::schema::Compatible<$db>> {
                Some(T::__cached_compatible)
            }
        }

        pub trait CompatibleColumnFallback {
            fn __cached_compatible(self) -> Option<$crate::sqlx::schema::Compatible<$db>>;
        }

        impl<T> CompatibleColumnFallback for &ColumnOfType<T> {
            fn __cached_compatible(self) -> Option<$crate::sqlx::schema::Compatible<$db>> {
                None
            }
        }

        /// A `#[cached(serde)]` field: the column's JSON (`NULL` as `null`)
        /// through `from_json`.
        pub fn get_json<T>(
            row: &$row,
            index: usize,
            column: &str,
            // `__private::FromJson<T>`, spelled out: the crate does not import
            // from its derive support module.
            from_json: fn(serde_json::Value) -> Result<T, serde_json::Error>,
        ) -> Result<T, ::sqlx::Error> {
            let value: Option<serde_json::Value> = get(row, index, column)?;
            from_json(value.unwrap_or(serde_json::Value::Null))
                .map_err(|error| $crate::sqlx::json_error(error, column))
        }
    };
}
#[cfg(any(
    feature = "sqlx-sqlite",
    feature = "sqlx-postgres",
    feature = "sqlx-mysql"
))]
pub(crate) use loader_rows;

/// `{head} IN (?, ...){tail}` for every chunk of at most `max_binds` of
/// `keys`, each bound with `bind`: the key lists of the databases without
/// array parameters (SQLite, MySQL).
#[cfg(any(feature = "sqlx-sqlite", feature = "sqlx-mysql"))]
pub(crate) async fn fetch_in<DB, K>(
    conn: &mut DB::Connection,
    head: &str,
    keys: &[K],
    tail: &str,
    max_binds: usize,
    bind: fn(&K, &mut ::sqlx::query_builder::Separated<'_, DB, &'static str>),
) -> Result<Vec<DB::Row>, ::sqlx::Error>
where
    DB: Database,
    DB::Arguments: Default + ::sqlx::IntoArguments<DB>,
    for<'e> &'e mut DB::Connection: ::sqlx::Executor<'e, Database = DB>,
    K: Eq + std::hash::Hash + Clone,
{
    let unique: Vec<K>;
    let keys = if keys.len() > max_binds {
        // A key repeated in two chunks would return its rows twice.
        let mut seen = std::collections::HashSet::with_capacity(keys.len());
        unique = keys.iter().filter(|k| seen.insert(*k)).cloned().collect();
        &unique[..]
    } else {
        keys
    };
    let mut rows = Vec::new();
    for chunk in keys.chunks(max_binds) {
        let mut query = ::sqlx::QueryBuilder::<DB>::new(head);
        query.push(" IN (");
        {
            let mut list = query.separated(", ");
            for key in chunk {
                bind(key, &mut list);
            }
        }
        query.push(")");
        query.push(tail);
        rows.extend(query.build().fetch_all(&mut *conn).await?);
    }
    Ok(rows)
}

/// A future of the runtime's helpers for generated code.
#[doc(hidden)]
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// `SELECT a, b FROM t WHERE k`, every name quoted with `quote`.
#[cfg(any(
    feature = "sqlx-sqlite",
    feature = "sqlx-postgres",
    feature = "sqlx-mysql"
))]
pub(crate) fn select_where(quote: char, columns: &[&str], table: &str, key: &str) -> String {
    let mut sql = String::from("SELECT ");
    for (i, column) in columns.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        push_name(&mut sql, quote, column);
    }
    sql.push_str(" FROM ");
    push_table(&mut sql, quote, table);
    sql.push_str(" WHERE ");
    push_name(&mut sql, quote, key);
    sql
}

/// `SELECT pk FROM t ORDER BY pk`.
#[cfg(any(
    feature = "sqlx-sqlite",
    feature = "sqlx-postgres",
    feature = "sqlx-mysql"
))]
pub(crate) fn select_all_keys(quote: char, table: &str, key: &str) -> String {
    let mut sql = String::from("SELECT ");
    push_name(&mut sql, quote, key);
    sql.push_str(" FROM ");
    push_table(&mut sql, quote, table);
    sql.push_str(&order_by(quote, key));
    sql
}

/// ` ORDER BY c`.
#[cfg(any(
    feature = "sqlx-sqlite",
    feature = "sqlx-postgres",
    feature = "sqlx-mysql"
))]
pub(crate) fn order_by(quote: char, column: &str) -> String {
    let mut sql = String::from(" ORDER BY ");
    push_name(&mut sql, quote, column);
    sql
}

/// A table name, `schema.table` quoted part by part.
pub(crate) fn push_table(sql: &mut String, quote: char, table: &str) {
    for (i, part) in table.split('.').enumerate() {
        if i > 0 {
            sql.push('.');
        }
        push_name(sql, quote, part);
    }
}

/// A quoted identifier (the derive rejects names with quotes; they are
/// doubled all the same).
pub(crate) fn push_name(sql: &mut String, quote: char, name: &str) {
    sql.push(quote);
    for c in name.chars() {
        if c == quote {
            sql.push(quote);
        }
        sql.push(c);
    }
    sql.push(quote);
}

/// A decode error naming the column instead of its index.
#[cfg(any(
    feature = "sqlx-sqlite",
    feature = "sqlx-postgres",
    feature = "sqlx-mysql"
))]
pub(crate) fn name_column(error: ::sqlx::Error, column: &str) -> ::sqlx::Error {
    match error {
        ::sqlx::Error::ColumnDecode { source, .. } => ::sqlx::Error::ColumnDecode {
            index: format!("{column:?}"),
            source,
        },
        other => other,
    }
}

/// A column holding JSON that does not deserialize into the field.
#[cfg(any(
    feature = "sqlx-sqlite",
    feature = "sqlx-postgres",
    feature = "sqlx-mysql"
))]
pub(crate) fn json_error(error: serde_json::Error, column: &str) -> ::sqlx::Error {
    ::sqlx::Error::ColumnDecode {
        index: format!("{column:?}"),
        source: Box::new(error),
    }
}

/// The error of a generated loader whose schema was rejected at compile time
/// (never returned by a program that compiles).
#[doc(hidden)]
#[must_use]
pub fn schema_error(message: &'static str) -> ::sqlx::Error {
    ::sqlx::Error::Decode(message.into())
}

#[cfg(test)]
mod tests {
    #[cfg(any(
        feature = "sqlx-sqlite",
        feature = "sqlx-postgres",
        feature = "sqlx-mysql"
    ))]
    #[test]
    fn sql_names_are_quoted() {
        use super::{order_by, select_where};
        assert_eq!(
            select_where('"', &["id", "user"], "polls.questions", "id"),
            r#"SELECT "id", "user" FROM "polls"."questions" WHERE "id""#
        );
        assert_eq!(
            select_where('`', &["a`b"], "t", "a`b"),
            "SELECT `a``b` FROM `t` WHERE `a``b`"
        );
        assert_eq!(order_by('"', "id"), r#" ORDER BY "id""#);
    }
}
