//! The PostgreSQL side of the derived loaders; called by generated code only.

// Hidden API named by generated code; see the module docs of `sqlx`.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hash::Hash;

use ::sqlx::postgres::{PgArguments, PgConnection, PgHasArrayType, PgRow, Postgres};
use ::sqlx::query::Query;
use ::sqlx::{AssertSqlSafe, Decode, Encode, Row, Type};

const QUOTE: char = '"';

/// A field type the derived PostgreSQL loader can read.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be read from a PostgreSQL column",
    label = "sqlx cannot decode `{Self}` from PostgreSQL",
    note = "the derived PostgreSQL loader reads each field with sqlx: use a type sqlx decodes from PostgreSQL (`i8` as `\"char\"`, `i16`, `i32`, `i64` (there are no unsigned types), `f32`, `f64`, `bool`, `String`, `Vec<u8>`, chrono's `DateTime<Utc>`, `NaiveDate`, `NaiveDateTime` or `NaiveTime`, `uuid::Uuid`, `serde_json::Value`, a `Vec` of one for an array, or an `Option` of one), store the field as JSON with `#[cached(serde)]`, or load the model on SQLite only with `#[cached(database = \"sqlite\")]`"
)]
pub trait PgColumn: Sized + Send {
    fn __cached_get(row: &PgRow, index: usize) -> Result<Self, ::sqlx::Error>;
    /// Whether sqlx reads the type from a column of type `ty`.
    fn __cached_compatible(ty: &<Postgres as ::sqlx::Database>::TypeInfo) -> bool;
}

#[diagnostic::do_not_recommend]
impl<T> PgColumn for T
where
    T: for<'r> Decode<'r, Postgres> + Type<Postgres> + Send,
{
    #[inline]
    fn __cached_get(row: &PgRow, index: usize) -> Result<Self, ::sqlx::Error> {
        row.try_get(index)
    }

    #[inline]
    fn __cached_compatible(ty: &<Postgres as ::sqlx::Database>::TypeInfo) -> bool {
        <T as Type<Postgres>>::compatible(ty)
    }
}

/// A key type the derived PostgreSQL loader can bind (as an array) and read
/// back: primary keys, and the keys of relation lists.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a key of the derived PostgreSQL loader",
    label = "sqlx cannot bind an array of `{Self}` and read it back on PostgreSQL",
    note = "the loader binds primary keys as one array parameter (`= ANY($1)`) and reads them back: use `i64`, `i32`, `i16`, `String` or `uuid::Uuid`, or load the model on SQLite only with `#[cached(database = \"sqlite\")]`"
)]
pub trait PgKey: PgColumn + Eq + Hash + Clone + Sync {
    fn __cached_bind_all<'q>(keys: &'q [Self], query: PgQuery<'q>) -> PgQuery<'q>;
}

type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

#[diagnostic::do_not_recommend]
impl<T> PgKey for T
where
    T: PgColumn
        + for<'q> Encode<'q, Postgres>
        + Type<Postgres>
        + PgHasArrayType
        + Eq
        + Hash
        + Clone
        + Sync,
{
    #[inline]
    fn __cached_bind_all<'q>(keys: &'q [Self], query: PgQuery<'q>) -> PgQuery<'q> {
        query.bind(keys)
    }
}

/// `{head} = ANY($1){tail}` with `keys` as the array.
async fn fetch_any<K: PgKey>(
    conn: &mut PgConnection,
    head: &str,
    keys: &[K],
    tail: &str,
) -> Result<Vec<PgRow>, ::sqlx::Error> {
    // Names quoted by `select_where`, values bound.
    let sql = AssertSqlSafe(format!("{head} = ANY($1){tail}"));
    K::__cached_bind_all(keys, ::sqlx::query(sql))
        .fetch_all(conn)
        .await
}

/// `SELECT columns FROM table WHERE columns[0] = ANY(keys)`, each row with
/// its key (`columns[0]` is the pk column). No query for no keys.
///
/// Boxed, so that the future's type does not carry `K`'s bound: a pk type
/// the database cannot bind is reported once, at the call.
pub fn fetch_rows<'a, K: PgKey>(
    conn: &'a mut PgConnection,
    table: &'a str,
    columns: &'a [&'a str],
    keys: &'a [K],
) -> super::BoxFuture<'a, Result<Vec<(K, PgRow)>, ::sqlx::Error>> {
    Box::pin(async move {
        let (Some(&key), false) = (columns.first(), keys.is_empty()) else {
            return Ok(Vec::new());
        };
        let head = super::select_where(QUOTE, columns, table, key);
        fetch_any(conn, &head, keys, "")
            .await?
            .into_iter()
            .map(|row| Ok((get::<K>(&row, 0, key)?, row)))
            .collect()
    })
}

/// The `item` column of the rows of `table` whose `owner` column is one of
/// `owners`, grouped by owner and in ascending `item` order. No query for
/// no owners.
/// Boxed like [`fetch_rows`].
pub fn fetch_lists<'a, O: PgKey, I: PgColumn>(
    conn: &'a mut PgConnection,
    table: &'a str,
    owner: &'a str,
    item: &'a str,
    owners: &'a [O],
) -> super::BoxFuture<'a, Result<HashMap<O, Vec<I>>, ::sqlx::Error>> {
    Box::pin(async move {
        let mut lists: HashMap<O, Vec<I>> = HashMap::new();
        if owners.is_empty() {
            return Ok(lists);
        }
        let head = super::select_where(QUOTE, &[owner, item], table, owner);
        for row in fetch_any(conn, &head, owners, &super::order_by(QUOTE, item)).await? {
            let owner = get::<O>(&row, 0, owner)?;
            lists
                .entry(owner)
                .or_default()
                .push(get::<I>(&row, 1, item)?);
        }
        Ok(lists)
    })
}

super::loader_rows! {
    db: Postgres,
    conn: PgConnection,
    row: PgRow,
    key: PgKey,
    column: PgColumn,
    quote: QUOTE,
}

/// Column `index` (named `column` in errors) of `row`.
#[inline]
pub fn get<T: PgColumn>(row: &PgRow, index: usize, column: &str) -> Result<T, ::sqlx::Error> {
    T::__cached_get(row, index).map_err(|error| super::name_column(error, column))
}
