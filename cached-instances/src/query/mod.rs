//! Cached queries: filter, order and search cached instances without the
//! database (in the style of redis-om).
//!
//! Declare the fields a model is queried by:
//!
//! | attribute | field types | queries |
//! | --- | --- | --- |
//! | `#[cached(index)]` | integers, `bool`, `char`, `String`, `NaiveDate`, `Uuid`, an `Option` of one; any serde type (an enum) with `#[cached(index, serde)]`; foreign keys | exact match: [`Query::filter`] |
//! | `#[cached(sortable)]` | integers, floats, `DateTime<Utc>`, `NaiveDate`, `NaiveDateTime`, `NaiveTime`, `TimeDelta`, an `Option` of one | ranges ([`Query::gte`], [`Query::range`], ...) and ordering ([`Query::order_by`]) |
//! | `#[cached(search)]` | `String`, `Option<String>`, `Vec<String>` | full-text search: [`Query::search`] |
//!
//! A type that cannot be indexed that way is a compile error at the field
//! (traits [`Indexable`], [`Sortable`], [`Searchable`]; implement them for
//! your own types).
//!
//! The indexes live in the store next to the entries (Redis sets and
//! sorted sets, the same structures in the [`MemoryStore`](crate::MemoryStore);
//! see [`store`](crate::store) for the layout) and are maintained by every
//! [`Cache::saved`](crate::Cache::saved) / [`deleted`](crate::Cache::deleted)
//! / [`refresh`](crate::Cache::refresh) of the model. The cache answers a
//! model's queries once [`Cache::warm`](crate::Cache::warm) has indexed
//! every instance; until then (or with the store unavailable or caching
//! switched off) they go to the loader's [`Loader::query`](crate::Loader::query),
//! and [`QueryResult::source`] says which answered. Models with
//! `#[cached(table = "...")]` get that fallback in SQL from the derived
//! [`SqlxLoader`](crate::sqlx::SqlxLoader) (see
//! [`sqlx::query`](crate::sqlx::query)).
//!
//! ```
//! use cached_instances::query::{Query, Source};
//! use cached_instances::{Cache, CachedInstance, LoadError, Loader};
//!
//! #[derive(CachedInstance, Debug, Clone, PartialEq)]
//! pub struct User {
//!     #[cached(pk)]
//!     pub id: i64,
//!     #[cached(search)]
//!     pub name: String,
//!     #[cached(index)]
//!     pub country: String,
//!     #[cached(sortable)]
//!     pub age: u32,
//! }
//!
//! struct Db(Vec<User>);
//!
//! impl Loader<User> for Db {
//!     async fn load(&self, pks: &[i64]) -> Result<Vec<User>, LoadError> {
//!         Ok(self.0.iter().filter(|u| pks.contains(&u.id)).cloned().collect())
//!     }
//!     // What `warm` loads: every pk (`SELECT id FROM users`).
//!     async fn all_pks(&self) -> Result<Option<Vec<i64>>, LoadError> {
//!         Ok(Some(self.0.iter().map(|u| u.id).collect()))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let user = |id, name: &str, country: &str, age| User {
//!     id, name: name.into(), country: country.into(), age,
//! };
//! let db = Db(vec![
//!     user(1, "Ada Lovelace", "GB", 36),
//!     user(2, "Alan Turing", "GB", 41),
//!     user(3, "Grace Hopper", "US", 85),
//! ]);
//! let cache = Cache::builder().loader::<User>(db).build()?;
//! cache.warm::<User>().await?;
//!
//! let query = Query::<User>::new().filter("country", "GB").order_by_desc("age").limit(10);
//! let found = cache.query(&query).await?;
//! assert_eq!(found.source, Source::Cache);
//! assert_eq!(found.count, 2);
//! assert_eq!(found.items.iter().map(|u| u.id).collect::<Vec<_>>(), [2, 1]);
//!
//! let found = cache.query(&Query::<User>::new().search("grace").gte("age", 40)).await?;
//! assert_eq!(found.items[0].name, "Grace Hopper");
//! # Ok(())
//! # }
//! ```
//!
//! # Semantics
//!
//! - Filters and search terms combine with AND. A search term must appear
//!   as a whole token (see [`tokenize`]) in one of the searched fields.
//! - Ordering is by the field's [sort score](Sortable), ties by primary key
//!   (integers numerically, strings by their key form); descending reverses
//!   both. Without an ordering, by primary key. `None` sorts last ascending
//!   and first descending, and matches no range.
//! - A result is a page of instances (or representations, or pks) and the
//!   count of all matches. It costs one store round trip for the page's pks
//!   and the count, and one multi-get for the instances (misses are loaded
//!   and filled as in [`Cache::get_many`](crate::Cache::get_many)).
//!
//! # Consistency
//!
//! Each index update is made under a lease, like entries: a write (after
//! its commit and its invalidation) leases the instance's index record,
//! reloads the instance from the loader and applies its values only if the
//! lease still holds, so of two concurrent writes the later one's reload
//! wins, and a slow one cannot put back values older than a write it did
//! not see. Reads never write the index's memberships (a query may store
//! the count it computed, in the same atomic step, next to the index; any
//! change of a membership drops those counts). Every instance a query returns is
//! checked against its filters once fetched, and dropped if it no longer
//! matches, so a page never holds an instance that does not match; but
//! while a write is between its commit and its index update, an instance
//! can be missing from results, a page can be shorter than its limit, and
//! the count can be off by the instances in flight. Writes made without
//! `saved`/`deleted` are not seen until the next `warm`.
//!
//! A write whose index update cannot reach the store (it is down, or the
//! lease or the apply fails) queues the update with the invalidations the
//! store could not take. While anything is queued, no read uses the store,
//! so queries go to [`Loader::query`](crate::Loader::query) and see the
//! write. When the store answers again, the queue is delivered before any
//! read uses it: the instances first, then each missed index update is
//! redone as the write would have done it (leased, reloaded, applied if the
//! lease holds), and the model stays warmed, answered from the cache with
//! the write in its index. Only if that re-index fails too (the store fails
//! again, or the loader) is the model un-warmed (its warm mark deleted, or
//! queued for deletion): its queries then go to the loader until the next
//! `warm`. [`Stats`](crate::Stats) counts the missed updates, the
//! re-indexes and the models un-warmed.

use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use crate::instance::{CachedInstance, IndexField};

pub use crate::error::QueryError;
pub use crate::instance::{FieldValues, IndexValues, Indexable, Searchable, Sortable, tokenize};

/// What a filter requires of a field.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Condition {
    /// The field's exact-match term is this one (`index` fields).
    Equals(String),
    /// The field's sort score is in this interval (`sortable` fields).
    Range(Bound<f64>, Bound<f64>),
}

/// One filter of a query.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Filter {
    /// The position of the field in [`Schema::indexes`](crate::Schema::indexes).
    pub index: usize,
    /// The field.
    pub field: &'static IndexField,
    /// What the field must hold.
    pub condition: Condition,
}

/// One search term: a token that must appear in one of `fields`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SearchTerm {
    /// The token (see [`tokenize`]).
    pub token: String,
    /// The positions of the searched fields in
    /// [`Schema::indexes`](crate::Schema::indexes).
    pub fields: Vec<usize>,
}

/// The ordering of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OrderBy {
    /// The position of the field in [`Schema::indexes`](crate::Schema::indexes).
    pub index: usize,
    /// The field.
    pub field: &'static IndexField,
    /// Highest first.
    pub descending: bool,
}

/// Which side answered a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The cache's indexes (the model is warmed).
    Cache,
    /// The loader's [`Loader::query`](crate::Loader::query) (the model is
    /// not warmed, the store is unavailable, or caching is switched off).
    Database,
}

/// A page of query results and the count of all matches.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct QueryResult<I> {
    /// The page: instances, representations or pks, in order.
    pub items: Vec<I>,
    /// How many instances match, before `offset` and `limit`.
    pub count: u64,
    /// Which side answered.
    pub source: Source,
}

/// What a [`Loader::query`](crate::Loader::query) returns: the pks of the
/// requested page, in order, and the count of all matches.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueryPage<P> {
    /// The page's pks, in order.
    pub pks: Vec<P>,
    /// The count of all matches.
    pub count: u64,
}

impl<P> QueryPage<P> {
    /// A page of `pks` out of `count` matches.
    #[must_use]
    pub fn new(pks: Vec<P>, count: u64) -> Self {
        QueryPage { pks, count }
    }
}

impl<P: crate::PrimaryKey> QueryPage<P> {
    /// Evaluates `query` over `instances` in memory, with the cache's
    /// semantics (filters, search tokens, ordering by sort score with ties
    /// by pk, `None` last ascending, offset and limit): what a
    /// [`Loader::query`](crate::Loader::query) can return after reading the
    /// candidate rows itself.
    #[must_use]
    pub fn evaluate<T>(query: &Query<T>, instances: impl IntoIterator<Item = T>) -> Self
    where
        T: CachedInstance<Pk = P>,
    {
        let order = query.order_by_field();
        let mut matched: Vec<(f64, String, P)> = instances
            .into_iter()
            .filter_map(|instance| {
                let values = IndexValues::of(&instance);
                if !query.matches_values(&values) {
                    return None;
                }
                let score = order
                    .and_then(|o| values.field(o.index))
                    .and_then(|f| f.score)
                    .unwrap_or(if order.is_some() { f64::INFINITY } else { 0.0 });
                let pk = instance.pk().clone();
                Some((score, pk.to_index_member(), pk))
            })
            .collect();
        matched.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        if order.is_some_and(|o| o.descending) {
            matched.reverse();
        }
        let count = matched.len() as u64;
        let skip = usize::try_from(query.offset_value()).unwrap_or(usize::MAX);
        let take = query
            .limit_value()
            .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        let pks = matched
            .into_iter()
            .skip(skip)
            .take(take)
            .map(|(_, _, pk)| pk)
            .collect();
        QueryPage::new(pks, count)
    }
}

/// A query over the instances of `T`: filters, search terms, an ordering
/// and a window. Build it, then run it with [`Cache::query`](crate::Cache::query),
/// [`Cache::query_json`](crate::Cache::query_json) or
/// [`Cache::query_pks`](crate::Cache::query_pks).
///
/// Field names are the names in the representation (a field's `rename`),
/// or its Rust name. A mistake (an undeclared field, a value of the wrong
/// type) is kept and returned when the query runs.
pub struct Query<T> {
    filters: Vec<Filter>,
    search: Vec<SearchTerm>,
    order: Option<OrderBy>,
    offset: u64,
    limit: Option<u64>,
    /// A filter no value can meet (`filter("f", None)`).
    nothing: bool,
    error: Option<QueryError>,
    _model: PhantomData<fn() -> T>,
}

impl<T> Clone for Query<T> {
    fn clone(&self) -> Self {
        Query {
            filters: self.filters.clone(),
            search: self.search.clone(),
            order: self.order,
            offset: self.offset,
            limit: self.limit,
            nothing: self.nothing,
            error: self.error.clone(),
            _model: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Query<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("filters", &self.filters)
            .field("search", &self.search)
            .field("order", &self.order)
            .field("offset", &self.offset)
            .field("limit", &self.limit)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T: CachedInstance> Default for Query<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// The comparison of a range filter given as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOp {
    /// `>=` (`field__gte`).
    Gte,
    /// `>` (`field__gt`).
    Gt,
    /// `<=` (`field__lte`).
    Lte,
    /// `<` (`field__lt`).
    Lt,
}

impl<T: CachedInstance> Query<T> {
    /// Every instance, in pk order.
    #[must_use]
    pub fn new() -> Self {
        Query {
            filters: Vec::new(),
            search: Vec::new(),
            order: None,
            offset: 0,
            limit: None,
            nothing: false,
            error: None,
            _model: PhantomData,
        }
    }

    fn fail(&mut self, error: QueryError) {
        self.error.get_or_insert(error);
    }

    /// The field `name` declared with `attribute`.
    fn field(
        &mut self,
        name: &str,
        attribute: &'static str,
    ) -> Option<(usize, &'static IndexField)> {
        let Some((index, field)) = T::SCHEMA.index_field(name) else {
            self.fail(QueryError::UnknownField {
                model: T::MODEL,
                field: name.to_owned(),
            });
            return None;
        };
        let declared = match attribute {
            "index" => field.exact,
            "sortable" => field.sortable,
            _ => field.search,
        };
        if !declared {
            self.fail(QueryError::NotDeclared {
                model: T::MODEL,
                field: field.name.to_owned(),
                attribute,
            });
            return None;
        }
        Some((index, field))
    }

    fn equals(mut self, name: &str, term: Option<String>, text: Option<&str>) -> Self {
        if let Some((index, field)) = self.field(name, "index") {
            match (term, text) {
                (Some(term), _) => self.filters.push(Filter {
                    index,
                    field,
                    condition: Condition::Equals(term),
                }),
                (None, Some(text)) => self.fail(QueryError::InvalidValue {
                    model: T::MODEL,
                    field: field.name.to_owned(),
                    value: text.to_owned(),
                }),
                (None, None) => self.nothing = true,
            }
        }
        self
    }

    /// Instances whose `index` field `field` equals `value` (a `None` value
    /// matches nothing).
    #[must_use]
    pub fn filter(self, field: &str, value: impl Indexable) -> Self {
        self.equals(field, value.term(), None)
    }

    /// Like [`filter`](Self::filter), with the value as text (as in the
    /// JSON representation, strings unquoted: `30`, `true`, `open`), parsed
    /// as the field's type.
    #[must_use]
    pub fn filter_text(self, field: &str, text: &str) -> Self {
        let term = T::SCHEMA
            .index_field(field)
            .and_then(|(index, _)| T::parse_index_term(index, text));
        self.equals(field, term, Some(text))
    }

    fn bound(mut self, name: &str, min: Bound<f64>, max: Bound<f64>) -> Self {
        if let Some((index, field)) = self.field(name, "sortable") {
            let nan =
                |b: &Bound<f64>| matches!(b, Bound::Included(v) | Bound::Excluded(v) if v.is_nan());
            if nan(&min) || nan(&max) {
                self.nothing = true;
            } else {
                self.filters.push(Filter {
                    index,
                    field,
                    condition: Condition::Range(min, max),
                });
            }
        }
        self
    }

    /// Instances whose `sortable` field `field` is at least `value`.
    #[must_use]
    pub fn gte(self, field: &str, value: impl Sortable) -> Self {
        self.bound(field, Bound::Included(value.score()), Bound::Unbounded)
    }

    /// Instances whose `sortable` field `field` is more than `value`.
    #[must_use]
    pub fn gt(self, field: &str, value: impl Sortable) -> Self {
        self.bound(field, Bound::Excluded(value.score()), Bound::Unbounded)
    }

    /// Instances whose `sortable` field `field` is at most `value`.
    #[must_use]
    pub fn lte(self, field: &str, value: impl Sortable) -> Self {
        self.bound(field, Bound::Unbounded, Bound::Included(value.score()))
    }

    /// Instances whose `sortable` field `field` is less than `value`.
    #[must_use]
    pub fn lt(self, field: &str, value: impl Sortable) -> Self {
        self.bound(field, Bound::Unbounded, Bound::Excluded(value.score()))
    }

    /// Instances whose `sortable` field `field` lies in `range`
    /// (`18..65`, `date..`, `..=limit`).
    #[must_use]
    pub fn range<V: Sortable>(self, field: &str, range: impl RangeBounds<V>) -> Self {
        let map = |b: Bound<&V>| match b {
            Bound::Included(v) => Bound::Included(v.score()),
            Bound::Excluded(v) => Bound::Excluded(v.score()),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.bound(field, map(range.start_bound()), map(range.end_bound()))
    }

    /// A range filter with the value as text, parsed as the field's type.
    #[must_use]
    pub fn range_text(mut self, field: &str, op: RangeOp, text: &str) -> Self {
        let score = T::SCHEMA
            .index_field(field)
            .and_then(|(index, _)| T::parse_index_score(index, text));
        let Some(score) = score else {
            if let Some((_, f)) = self.field(field, "sortable") {
                self.fail(QueryError::InvalidValue {
                    model: T::MODEL,
                    field: f.name.to_owned(),
                    value: text.to_owned(),
                });
            }
            return self;
        };
        let (min, max) = match op {
            RangeOp::Gte => (Bound::Included(score), Bound::Unbounded),
            RangeOp::Gt => (Bound::Excluded(score), Bound::Unbounded),
            RangeOp::Lte => (Bound::Unbounded, Bound::Included(score)),
            RangeOp::Lt => (Bound::Unbounded, Bound::Excluded(score)),
        };
        self.bound(field, min, max)
    }

    /// Instances with every token of `text` in one of the model's `search`
    /// fields. Text without tokens adds no condition.
    #[must_use]
    pub fn search(mut self, text: &str) -> Self {
        let fields: Vec<usize> = T::SCHEMA
            .indexes
            .iter()
            .enumerate()
            .filter(|(_, f)| f.search)
            .map(|(i, _)| i)
            .collect();
        if fields.is_empty() {
            self.fail(QueryError::NoSearchFields { model: T::MODEL });
            return self;
        }
        for token in tokenize(text) {
            self.search.push(SearchTerm {
                token,
                fields: fields.clone(),
            });
        }
        self
    }

    /// Instances with every token of `text` in the `search` field `field`.
    #[must_use]
    pub fn search_in(mut self, field: &str, text: &str) -> Self {
        if let Some((index, _)) = self.field(field, "search") {
            for token in tokenize(text) {
                self.search.push(SearchTerm {
                    token,
                    fields: vec![index],
                });
            }
        }
        self
    }

    fn order(mut self, name: &str, descending: bool) -> Self {
        if let Some((index, field)) = self.field(name, "sortable") {
            self.order = Some(OrderBy {
                index,
                field,
                descending,
            });
        }
        self
    }

    /// Orders by the `sortable` field `field`, lowest first.
    #[must_use]
    pub fn order_by(self, field: &str) -> Self {
        self.order(field, false)
    }

    /// Orders by the `sortable` field `field`, highest first.
    #[must_use]
    pub fn order_by_desc(self, field: &str) -> Self {
        self.order(field, true)
    }

    /// Orders as Django REST Framework's `?ordering=`: `field` or `-field`.
    #[must_use]
    pub fn ordering(mut self, ordering: &str) -> Self {
        let ordering = ordering.trim();
        if ordering.contains(',') {
            self.fail(QueryError::Ordering {
                ordering: ordering.to_owned(),
            });
            return self;
        }
        match ordering.strip_prefix('-') {
            Some(field) => self.order(field, true),
            None => self.order(ordering, false),
        }
    }

    /// Skips the first `offset` matches.
    #[must_use]
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }

    /// Returns at most `limit` matches (`0`: only the count).
    #[must_use]
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// A query from URL parameters: `field=value` (exact match),
    /// `field__gte=`, `__gt=`, `__lte=`, `__lt=` (ranges), `ordering=field`
    /// or `-field`, `search=terms`. Values are parsed as the fields' types.
    ///
    /// # Errors
    ///
    /// The first parameter that names no declared field, or whose value is
    /// not one of the field's type.
    pub fn from_params<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, QueryError> {
        let mut query = Query::new();
        for (key, value) in params {
            query = match key {
                "ordering" => query.ordering(value),
                "search" => query.search(value),
                _ => {
                    let ops = [
                        ("__gte", RangeOp::Gte),
                        ("__gt", RangeOp::Gt),
                        ("__lte", RangeOp::Lte),
                        ("__lt", RangeOp::Lt),
                    ];
                    match ops
                        .iter()
                        .find_map(|(suffix, op)| Some((key.strip_suffix(suffix)?, *op)))
                    {
                        Some((field, op)) => query.range_text(field, op, value),
                        None => query.filter_text(key, value),
                    }
                }
            };
            if let Some(error) = query.error.take() {
                return Err(error);
            }
        }
        Ok(query)
    }

    /// The first mistake made building the query, if any.
    ///
    /// # Errors
    ///
    /// That mistake.
    pub fn check(&self) -> Result<(), QueryError> {
        match &self.error {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    /// The filters, in the order given.
    #[must_use]
    pub fn filters(&self) -> &[Filter] {
        &self.filters
    }

    /// The search terms (each a token that must appear in one of its fields).
    #[must_use]
    pub fn search_terms(&self) -> &[SearchTerm] {
        &self.search
    }

    /// The ordering (`None`: by primary key).
    #[must_use]
    pub fn order_by_field(&self) -> Option<OrderBy> {
        self.order
    }

    /// How many matches are skipped.
    #[must_use]
    pub fn offset_value(&self) -> u64 {
        self.offset
    }

    /// How many matches are returned at most (`None`: all).
    #[must_use]
    pub fn limit_value(&self) -> Option<u64> {
        self.limit
    }

    /// Whether no instance can match (a filter on `None`, a NaN bound).
    #[must_use]
    pub fn matches_nothing(&self) -> bool {
        self.nothing
    }

    /// Whether the query filters at all (a filter, a search term, or a
    /// filter nothing meets): without one every instance matches, and an
    /// index answer need not decode its page to check it.
    pub(crate) fn filters_anything(&self) -> bool {
        self.nothing || !self.filters.is_empty() || !self.search.is_empty()
    }

    /// Whether `instance` meets every filter and search term.
    #[must_use]
    pub fn matches(&self, instance: &T) -> bool {
        self.matches_values(&IndexValues::of(instance))
    }

    /// Whether index values meet every filter and search term.
    #[must_use]
    pub fn matches_values(&self, values: &IndexValues) -> bool {
        if self.nothing {
            return false;
        }
        let filters = self.filters.iter().all(|filter| {
            let Some(field) = values.field(filter.index) else {
                return false;
            };
            match &filter.condition {
                Condition::Equals(term) => field.term.as_ref() == Some(term),
                // `None` (+inf) matches no range.
                Condition::Range(min, max) => field
                    .score
                    .is_some_and(|score| score != f64::INFINITY && (*min, *max).contains(&score)),
            }
        });
        filters
            && self.search.iter().all(|term| {
                term.fields.iter().any(|&i| {
                    values
                        .field(i)
                        .is_some_and(|f| f.tokens.binary_search(&term.token).is_ok())
                })
            })
    }
}
