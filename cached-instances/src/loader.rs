//! Loaders: how the cache reads instances from the source of truth.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::LoadError;
use crate::instance::CachedInstance;

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
}

impl<T: CachedInstance, L: Loader<T>> Loader<T> for Arc<L> {
    fn load(&self, pks: &[T::Pk]) -> impl Future<Output = Result<Vec<T>, LoadError>> + Send {
        (**self).load(pks)
    }
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A loader behind a pointer, so the cache can hold loaders of any type.
pub(crate) trait DynLoader<T: CachedInstance>: Send + Sync {
    fn load<'a>(&'a self, pks: &'a [T::Pk]) -> BoxFuture<'a, Result<Vec<T>, LoadError>>;
}

impl<T: CachedInstance, L: Loader<T>> DynLoader<T> for L {
    fn load<'a>(&'a self, pks: &'a [T::Pk]) -> BoxFuture<'a, Result<Vec<T>, LoadError>> {
        Box::pin(Loader::load(self, pks))
    }
}
