//! The MySQL and MariaDB side of the derived loaders; called by generated
//! code only.

// Hidden API named by generated code; see the module docs of `sqlx`.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hash::Hash;

use ::sqlx::mysql::{MySql, MySqlConnection, MySqlRow};
use ::sqlx::query_builder::Separated;
use ::sqlx::{Decode, Encode, Row, Type};

/// Names are quoted with backticks, which MySQL reads as names whatever the
/// `sql_mode` (double quotes are names only under `ANSI_QUOTES`).
const QUOTE: char = '`';

/// The most parameters one statement binds (the protocol's 16-bit count).
pub const MAX_BINDS: usize = 65_535;

/// A field type the derived MySQL loader can read.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be read from a MySQL column",
    label = "sqlx cannot decode `{Self}` from MySQL",
    note = "the derived MySQL loader reads each field with sqlx: use a type sqlx decodes from MySQL (`i8`..`i64`, `u8`..`u64`, `f32`, `f64`, `bool`, `String`, `Vec<u8>`, chrono's `DateTime<Utc>`, `NaiveDate`, `NaiveDateTime` or `NaiveTime`, `uuid::Uuid`, `serde_json::Value`, or an `Option` of one), store the field as JSON with `#[cached(serde)]`, or derive the loader for other databases only with `#[cached(database = \"...\")]`"
)]
pub trait MySqlColumn: Sized + Send {
    fn __cached_get(row: &MySqlRow, index: usize) -> Result<Self, ::sqlx::Error>;
    /// Whether sqlx reads the type from a column of type `ty`.
    fn __cached_compatible(ty: &<MySql as ::sqlx::Database>::TypeInfo) -> bool;
}

#[diagnostic::do_not_recommend]
impl<T> MySqlColumn for T
where
    T: for<'r> Decode<'r, MySql> + Type<MySql> + Send,
{
    #[inline]
    fn __cached_get(row: &MySqlRow, index: usize) -> Result<Self, ::sqlx::Error> {
        row.try_get(index)
    }

    #[inline]
    fn __cached_compatible(ty: &<MySql as ::sqlx::Database>::TypeInfo) -> bool {
        <T as Type<MySql>>::compatible(ty)
    }
}

/// A key type the derived MySQL loader can bind and read back: primary
/// keys, and the keys of relation lists.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a key of the derived MySQL loader",
    label = "sqlx cannot bind and read back `{Self}` on MySQL",
    note = "the loader binds primary keys as query parameters and reads them back: use `i64`, `i32`, `u64`, `u32`, `String` or `uuid::Uuid`, or derive the loader for other databases only with `#[cached(database = \"...\")]`"
)]
pub trait MySqlKey: MySqlColumn + Eq + Hash + Clone + Sync {
    fn __cached_bind(&self, list: &mut Separated<'_, MySql, &'static str>);
}

#[diagnostic::do_not_recommend]
impl<T> MySqlKey for T
where
    T: MySqlColumn + for<'q> Encode<'q, MySql> + Type<MySql> + Eq + Hash + Clone + Sync,
{
    #[inline]
    fn __cached_bind(&self, list: &mut Separated<'_, MySql, &'static str>) {
        list.push_bind(self);
    }
}

/// `{head} IN (?, ...){tail}` for every chunk of `keys`.
async fn fetch_in<K: MySqlKey>(
    conn: &mut MySqlConnection,
    head: &str,
    keys: &[K],
    tail: &str,
) -> Result<Vec<MySqlRow>, ::sqlx::Error> {
    super::fetch_in(conn, head, keys, tail, MAX_BINDS, K::__cached_bind).await
}

/// `SELECT columns FROM table WHERE columns[0] IN (keys)`, each row with its
/// key (`columns[0]` is the pk column). No query for no keys.
///
/// Boxed, so that the future's type does not carry `K`'s bound: a pk type
/// the database cannot bind is reported once, at the call.
pub fn fetch_rows<'a, K: MySqlKey>(
    conn: &'a mut MySqlConnection,
    table: &'a str,
    columns: &'a [&'a str],
    keys: &'a [K],
) -> super::BoxFuture<'a, Result<Vec<(K, MySqlRow)>, ::sqlx::Error>> {
    Box::pin(async move {
        let (Some(&key), false) = (columns.first(), keys.is_empty()) else {
            return Ok(Vec::new());
        };
        let head = super::select_where(QUOTE, columns, table, key);
        fetch_in(conn, &head, keys, "")
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
pub fn fetch_lists<'a, O: MySqlKey, I: MySqlColumn>(
    conn: &'a mut MySqlConnection,
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
        for row in fetch_in(conn, &head, owners, &super::order_by(QUOTE, item)).await? {
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
    db: MySql,
    conn: MySqlConnection,
    row: MySqlRow,
    key: MySqlKey,
    column: MySqlColumn,
    quote: QUOTE,
}

/// Column `index` (named `column` in errors) of `row`.
#[inline]
pub fn get<T: MySqlColumn>(row: &MySqlRow, index: usize, column: &str) -> Result<T, ::sqlx::Error> {
    T::__cached_get(row, index).map_err(|error| super::name_column(error, column))
}
