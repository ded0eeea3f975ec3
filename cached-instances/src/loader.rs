//! Loaders: how the cache reads instances from the source of truth.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::LoadError;
use crate::instance::CachedInstance;
use crate::query::{Query, QueryPage};

/// Loads instances of `T` from the database, in batches.
///
/// The cache calls `load` once with every missing pk of a model, so an
/// implementation should make one query for all of them (`= ANY($1)`,
/// `IN (...)`), not one per pk. Rows that do not exist are simply left out of
/// the result; order does not matter.
///
/// ```
/// use cached_instances::{CachedInstance, LoadError, Loader};
///
/// #[derive(CachedInstance, Debug, Clone, PartialEq)]
/// pub struct Tag {
///     #[cached(pk)]
///     pub id: i64,
///     pub name: String,
/// }
///
/// struct Tags(Vec<Tag>);
///
/// impl Loader<Tag> for Tags {
///     async fn load(&self, pks: &[i64]) -> Result<Vec<Tag>, LoadError> {
///         Ok(self.0.iter().filter(|t| pks.contains(&t.id)).cloned().collect())
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot load `{T}`",
    label = "`{Self}` does not implement `Loader<{T}>`",
    note = "implement `Loader<{T}>` for `{Self}`: `async fn load(&self, pks: &[<{T} as CachedInstance>::Pk]) -> Result<Vec<{T}>, LoadError>`"
)]
pub trait Loader<T: CachedInstance>: Send + Sync + 'static {
    /// Loads the instances whose pks are in `pks`; missing rows are omitted.
    fn load(&self, pks: &[T::Pk]) -> impl Future<Output = Result<Vec<T>, LoadError>> + Send;

    /// Every primary key of the model (`SELECT id FROM ...`), which
    /// [`Cache::warm`](crate::Cache::warm) loads and indexes. The default,
    /// `None`, means the loader cannot list them, and `warm` fails.
    fn all_pks(&self) -> impl Future<Output = Result<Option<Vec<T::Pk>>, LoadError>> + Send {
        std::future::ready(Ok(None))
    }

    /// Answers `query` from the database: the pks of the requested page, in
    /// order, and the count of all matches (see [`query`](crate::query) for
    /// the semantics to follow). The cache asks it when the model is not
    /// warmed. The default, `None`, means the loader cannot, and such a
    /// query fails with [`QueryError::NoFallback`](crate::query::QueryError::NoFallback).
    fn query(
        &self,
        query: &Query<T>,
    ) -> impl Future<Output = Result<Option<QueryPage<T::Pk>>, LoadError>> + Send {
        let _ = query;
        std::future::ready(Ok(None))
    }
}

impl<T: CachedInstance, L: Loader<T>> Loader<T> for Arc<L> {
    fn load(&self, pks: &[T::Pk]) -> impl Future<Output = Result<Vec<T>, LoadError>> + Send {
        (**self).load(pks)
    }
    fn all_pks(&self) -> impl Future<Output = Result<Option<Vec<T::Pk>>, LoadError>> + Send {
        (**self).all_pks()
    }
    fn query(
        &self,
        query: &Query<T>,
    ) -> impl Future<Output = Result<Option<QueryPage<T::Pk>>, LoadError>> + Send {
        (**self).query(query)
    }
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A loader behind a pointer, so the cache can hold loaders of any type.
pub(crate) trait DynLoader<T: CachedInstance>: Send + Sync {
    fn load<'a>(&'a self, pks: &'a [T::Pk]) -> BoxFuture<'a, Result<Vec<T>, LoadError>>;
    fn all_pks(&self) -> BoxFuture<'_, Result<Option<Vec<T::Pk>>, LoadError>>;
    fn query<'a>(
        &'a self,
        query: &'a Query<T>,
    ) -> BoxFuture<'a, Result<Option<QueryPage<T::Pk>>, LoadError>>;
}

impl<T: CachedInstance, L: Loader<T>> DynLoader<T> for L {
    fn load<'a>(&'a self, pks: &'a [T::Pk]) -> BoxFuture<'a, Result<Vec<T>, LoadError>> {
        Box::pin(Loader::load(self, pks))
    }
    fn all_pks(&self) -> BoxFuture<'_, Result<Option<Vec<T::Pk>>, LoadError>> {
        Box::pin(Loader::all_pks(self))
    }
    fn query<'a>(
        &'a self,
        query: &'a Query<T>,
    ) -> BoxFuture<'a, Result<Option<QueryPage<T::Pk>>, LoadError>> {
        Box::pin(Loader::query(self, query))
    }
}
