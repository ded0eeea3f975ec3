//! The derived SQL fallback of [cached queries](crate::query): a [`Query`]
//! on a model with a table that is not warmed, answered by the database
//! with the cache's semantics.
//!
//! Filters and the ordering become one statement, with every value bound
//! in the column's own type, so the database's indexes serve it:
//!
//! ```text
//! SELECT "id", COUNT(*) OVER () FROM "users"
//! WHERE "country" = $1 AND "age" >= $2
//! ORDER BY "score" DESC NULLS FIRST, "id" DESC LIMIT 20 OFFSET 0
//! ```
//!
//! - Equality binds the filter's value parsed as the field's type;
//!   `#[cached(index, serde)]` fields compare as JSON
//!   (`"col"::jsonb = $1` on PostgreSQL, `json("col") = json(?)` on
//!   SQLite, `JSON_CONTAINS` both ways on MySQL, whose MariaDB has no JSON
//!   equality).
//! - Ranges bind the value of the field's type nearest to the bound
//!   ([`Sortable::from_score`]), so a
//!   bound between two values (`age >= 17.5`) means what it means to the
//!   cache. `NULL` matches no range and sorts last ascending, first
//!   descending, as `None` does in the cache (`NULLS LAST`/`FIRST`, on
//!   MySQL `col IS NULL` first in the key).
//! - SQLite has no date types: dates and times are text, compared as text,
//!   which orders them right when every row holds them as sqlx writes them
//!   (as the bound values are). Rows written in another format (`T`
//!   instead of a space, another offset) compare wrongly; PostgreSQL's
//!   date and time columns have no such caveat.
//! - Ties are ordered by the pk column in the ordering's direction. For
//!   string pks that is the database's collation, which can differ from the
//!   cache's order of their key forms (see [`query`](crate::query)).
//! - The count comes with the page (`COUNT(*) OVER ()`); a page past the
//!   last match costs a second statement for it.
//! - Full-text search has no SQL form with the cache's tokenizer: the
//!   database narrows the candidates with the other filters, in order, and
//!   they are loaded through the derived loader in batches and matched in
//!   memory. A search whose other filters leave more than the loader's
//!   [`scan_limit`](super::SqlxLoader::scan_limit) candidates is declined.
//!
//! A field the fallback cannot bind (a custom [`Sortable`] without
//! `from_score`, a `sortable` field stored through serde, a `skip`ped
//! field) makes the loader decline the query, as a loader without
//! `Loader::query` does.

use std::collections::HashMap;
use std::ops::Bound;

use ::sqlx::{Encode, QueryBuilder, Type};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{FetchedKeys, SqlxDatabase, SqlxModel, push_name, push_table};
use crate::codec::{Decoded, FieldCodec};
use crate::query::{Query, QueryPage, Sortable};

/// A statement being built.
pub type Builder<DB> = QueryBuilder<DB>;

fn push_column<DB: SqlxDatabase>(builder: &mut Builder<DB>, column: &str) {
    let mut name = String::new();
    push_name(&mut name, DB::QUOTE, column);
    builder.push(name);
}

/// A predicate no row meets.
fn push_false<DB: SqlxDatabase>(builder: &mut Builder<DB>) {
    builder.push("1 = 0");
}

/// The value whose exact-match term is `term`. A term is the value's JSON,
/// unquoted when that is a string, so the string reading comes first:
/// `"GB"` (quotes included) is the string with quotes, `null` the string
/// `null`, and only values whose JSON is no string are read from JSON.
fn term_value<V: DeserializeOwned>(term: &str) -> Option<V> {
    serde_json::from_value(term.into())
        .ok()
        .or_else(|| serde_json::from_str(term).ok())
}

/// `column = value`, `term` parsed as the field's type `V` (a term that is
/// not one of `V` matches nothing, as in the cache).
pub fn push_term<DB, V>(builder: &mut Builder<DB>, column: &str, term: &str) -> Option<()>
where
    DB: SqlxDatabase,
    V: FieldCodec + Encode<'static, DB> + Type<DB> + Send + 'static,
{
    match term_value::<Decoded<V>>(term).map(|decoded| decoded.0) {
        Some(value) => {
            push_column(builder, column);
            builder.push(" = ").push_bind(value);
        }
        None => push_false(builder),
    }
    Some(())
}

/// Like [`push_term`] for a field stored through serde: compared as JSON.
pub fn push_json_term<DB, V>(builder: &mut Builder<DB>, column: &str, term: &str) -> Option<()>
where
    DB: SqlxDatabase,
    V: Serialize + DeserializeOwned,
{
    match term_value::<V>(term).and_then(|value| serde_json::to_value(value).ok()) {
        Some(value) => {
            let mut name = String::new();
            push_name(&mut name, DB::QUOTE, column);
            DB::push_json_eq(builder, &name, value);
        }
        None => push_false(builder),
    }
    Some(())
}

/// `column` within the score range `min`..`max`, its bounds bound as the
/// field's type `V`; `None` when `V` cannot turn scores into values.
pub fn push_range<DB, V>(
    builder: &mut Builder<DB>,
    column: &str,
    min: Bound<f64>,
    max: Bound<f64>,
) -> Option<()>
where
    DB: SqlxDatabase,
    V: Sortable + Encode<'static, DB> + Type<DB> + Send + 'static,
{
    // `NULL` (the cache's `None`) matches no range, bounded or not.
    push_column(builder, column);
    builder.push(" IS NOT NULL");
    let sides = [(min, true), (max, false)];
    for (bound, lower) in sides {
        let (score, inclusive) = match bound {
            Bound::Included(s) => (s, true),
            Bound::Excluded(s) => (s, false),
            Bound::Unbounded => continue,
        };
        // The value to compare with, rounded so that the comparison keeps
        // its meaning: `>= 17.5` is `>= 18` on integers, `> 17.5` is `> 17`.
        let up = lower == inclusive;
        let value = V::from_score(score, up)?;
        let beyond = if up {
            value.score() < score
        } else {
            value.score() > score
        };
        builder.push(" AND ");
        if beyond {
            // No value of the type on the bound's side of `score`: an
            // inclusive bound (`>= x`, `<= x`) keeps nothing, an exclusive
            // one (`> x`, `< x`) keeps every value.
            if inclusive {
                push_false(builder);
            } else {
                builder.push("1 = 1");
            }
            continue;
        }
        push_column(builder, column);
        builder.push(match (lower, inclusive) {
            (true, true) => " >= ",
            (true, false) => " > ",
            (false, true) => " <= ",
            (false, false) => " < ",
        });
        builder.push_bind(value);
    }
    Some(())
}

/// `SELECT pk[, COUNT(*) OVER ()] FROM table WHERE filters ORDER BY ...`,
/// or `None` when a filter cannot be written in SQL.
fn select<DB, T>(query: &Query<T>, counted: bool) -> Option<Builder<DB>>
where
    DB: SqlxDatabase,
    T: SqlxModel<DB>,
{
    let (table, pk) = T::sqlx_table()?;
    let mut builder = Builder::<DB>::new("SELECT ");
    push_column(&mut builder, pk);
    if counted {
        builder.push(", COUNT(*) OVER ()");
    }
    let mut from = String::from(" FROM ");
    push_table(&mut from, DB::QUOTE, table);
    builder.push(from);
    for (i, filter) in query.filters().iter().enumerate() {
        builder.push(if i == 0 { " WHERE " } else { " AND " });
        T::sqlx_filter(filter.index, &filter.condition, &mut builder)?;
    }
    let descending = query.order_by_field().is_some_and(|o| o.descending);
    let direction = if descending { " DESC" } else { " ASC" };
    builder.push(" ORDER BY ");
    if let Some(order) = query.order_by_field() {
        let mut name = String::new();
        push_name(&mut name, DB::QUOTE, order.field.column);
        DB::push_order(&mut builder, &name, descending);
        builder.push(", ");
    }
    push_column(&mut builder, pk);
    builder.push(direction);
    Some(builder)
}

fn push_window<DB: SqlxDatabase>(builder: &mut Builder<DB>, offset: u64, limit: Option<u64>) {
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    builder.push(" LIMIT ");
    match limit {
        // Numbers, written as literals: every database parses them.
        Some(limit) => {
            builder.push(clamp(limit));
        }
        None => {
            builder.push(DB::NO_LIMIT);
        }
    }
    builder.push(" OFFSET ");
    builder.push(clamp(offset));
}

/// Runs the query's statement over the window `offset`, `limit`; `None`
/// when it has no SQL form.
async fn fetch<DB, T>(
    conn: &mut DB::Connection,
    query: &Query<T>,
    counted: bool,
    offset: u64,
    limit: Option<u64>,
) -> Result<Option<FetchedKeys<T::Pk>>, ::sqlx::Error>
where
    DB: SqlxDatabase,
    T: SqlxModel<DB>,
{
    let Some(mut builder) = select::<DB, T>(query, counted) else {
        return Ok(None);
    };
    push_window(&mut builder, offset, limit);
    T::sqlx_fetch_keys(conn, &mut builder).await
}

fn count_of(count: Option<i64>) -> u64 {
    count.and_then(|c| u64::try_from(c).ok()).unwrap_or(0)
}

/// Answers `query` on `conn`: the page's pks and the count, or `None` when
/// the query has no SQL form (see the module docs) or, with search terms,
/// more than `scan_limit` candidates.
pub(crate) async fn run<DB, T>(
    conn: &mut DB::Connection,
    query: &Query<T>,
    scan_limit: usize,
) -> Result<Option<QueryPage<T::Pk>>, ::sqlx::Error>
where
    DB: SqlxDatabase,
    T: SqlxModel<DB>,
{
    if query.matches_nothing() {
        return Ok(Some(QueryPage::new(Vec::new(), 0)));
    }
    if !query.search_terms().is_empty() {
        return scan(conn, query, scan_limit).await;
    }
    // Only the count: one row carries it.
    let (offset, limit) = match query.limit_value() {
        Some(0) => (0, Some(1)),
        limit => (query.offset_value(), limit),
    };
    let Some((mut pks, count)) = fetch(conn, query, true, offset, limit).await? else {
        return Ok(None);
    };
    let count = match count {
        Some(count) => count_of(Some(count)),
        // No row: nothing matches, or the page is past the last match.
        None if offset == 0 => 0,
        None => fetch(conn, query, true, 0, Some(1))
            .await?
            .map_or(0, |(_, count)| count_of(count)),
    };
    if query.limit_value() == Some(0) {
        pks.clear();
    }
    Ok(Some(QueryPage::new(pks, count)))
}

/// A query with search terms: the candidates the other filters leave, in
/// order, loaded in batches and matched in memory.
async fn scan<DB, T>(
    conn: &mut DB::Connection,
    query: &Query<T>,
    scan_limit: usize,
) -> Result<Option<QueryPage<T::Pk>>, ::sqlx::Error>
where
    DB: SqlxDatabase,
    T: SqlxModel<DB>,
{
    const BATCH: usize = 1_000;
    // One more than the limit tells a table too large to scan.
    let most = u64::try_from(scan_limit)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let Some((candidates, _)) = fetch(conn, query, false, 0, Some(most)).await? else {
        return Ok(None);
    };
    if candidates.len() > scan_limit {
        tracing::warn!(
            target: "cached_instances",
            model = T::MODEL,
            scan_limit,
            "search on a model that is not warmed: too many candidate rows to scan; warm it"
        );
        return Ok(None);
    }
    let skip = usize::try_from(query.offset_value()).unwrap_or(usize::MAX);
    let take = query
        .limit_value()
        .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let mut count = 0usize;
    let mut page = Vec::new();
    for chunk in candidates.chunks(BATCH) {
        let mut rows: HashMap<T::Pk, T> = T::sqlx_load(conn, chunk)
            .await?
            .into_iter()
            .map(|row| (row.pk().clone(), row))
            .collect();
        for pk in chunk {
            if rows.remove(pk).is_some_and(|row| query.matches(&row)) {
                if count >= skip && page.len() < take {
                    page.push(pk.clone());
                }
                count += 1;
            }
        }
    }
    Ok(Some(QueryPage::new(page, count as u64)))
}
