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

    /// Loads the pks `pks` yields, once it yields them: the cache calls
    /// this instead of [`load`](Self::load) when a read leases its misses
    /// before loading them (the lease protocol, CONSISTENCY.md §1).
    ///
    /// `pks` yields once the leases are in the store, and the database
    /// must not be read before: a row read earlier could predate a write
    /// that the lease is there to catch. What a loader may do meanwhile is
    /// get ready, most often by checking a connection out of its pool
    /// (with sqlx's default `test_before_acquire`, a round trip of its
    /// own), so that this costs the read nothing. [`SqlxLoader`] does so.
    ///
    /// The default waits for `pks`, then calls `load`: what a loader
    /// without such a step needs. An empty list means nothing is to be
    /// loaded (every lease was refused): return no rows and make no query.
    /// A loader wrapping another should forward this method, or its inner
    /// loader's preparation no longer overlaps the leases.
    ///
    /// [`SqlxLoader`]: crate::sqlx::SqlxLoader
    ///
    /// ```
    /// use cached_instances::{CachedInstance, LeasedPks, LoadError, Loader};
    /// # #[derive(CachedInstance, Debug, Clone, PartialEq)]
    /// # pub struct Tag {
    /// #     #[cached(pk)]
    /// #     pub id: i64,
    /// #     pub name: String,
    /// # }
    /// # struct Connection;
    /// # impl Connection {
    /// #     async fn select_tags(&mut self, pks: &[i64]) -> Result<Vec<Tag>, LoadError> { Ok(Vec::new()) }
    /// # }
    /// # struct Pool;
    /// # impl Pool {
    /// #     async fn checkout(&self) -> Result<Connection, LoadError> { Ok(Connection) }
    /// # }
    /// struct Db {
    ///     pool: Pool,
    /// }
    ///
    /// impl Loader<Tag> for Db {
    ///     async fn load(&self, pks: &[i64]) -> Result<Vec<Tag>, LoadError> {
    ///         self.pool.checkout().await?.select_tags(pks).await
    ///     }
    ///
    ///     async fn load_after(&self, pks: LeasedPks<'_, i64>) -> Result<Vec<Tag>, LoadError> {
    ///         // The checkout overlaps the leases; the query waits for them.
    ///         let (connection, pks) = tokio::join!(self.pool.checkout(), pks);
    ///         if pks.is_empty() {
    ///             return Ok(Vec::new());
    ///         }
    ///         connection?.select_tags(&pks).await
    ///     }
    /// }
    /// ```
    fn load_after(
        &self,
        pks: LeasedPks<'_, T::Pk>,
    ) -> impl Future<Output = Result<Vec<T>, LoadError>> + Send {
        async move {
            let pks = pks.await;
            if pks.is_empty() {
                return Ok(Vec::new());
            }
            self.load(&pks).await
        }
    }

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
    fn load_after(
        &self,
        pks: LeasedPks<'_, T::Pk>,
    ) -> impl Future<Output = Result<Vec<T>, LoadError>> + Send {
        (**self).load_after(pks)
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

/// The pks a read loads, known once the cache holds their leases: what
/// [`Loader::load_after`] awaits before it reads the database. Empty when
/// every lease was refused (other readers are loading those keys, or the
/// store failed and the read goes to the database without it).
#[must_use = "a loader must await the pks before reading the database"]
pub struct LeasedPks<'a, Pk>(BoxFuture<'a, Vec<Pk>>);

impl<'a, Pk> LeasedPks<'a, Pk> {
    pub(crate) fn new(pks: impl Future<Output = Vec<Pk>> + Send + 'a) -> Self {
        LeasedPks(Box::pin(pks))
    }
}

impl<Pk> Future for LeasedPks<'_, Pk> {
    type Output = Vec<Pk>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Vec<Pk>> {
        self.0.as_mut().poll(cx)
    }
}

impl<Pk> std::fmt::Debug for LeasedPks<'_, Pk> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedPks").finish_non_exhaustive()
    }
}

/// A loader behind a pointer, so the cache can hold loaders of any type.
pub(crate) trait DynLoader<T: CachedInstance>: Send + Sync {
    fn load<'a>(&'a self, pks: &'a [T::Pk]) -> BoxFuture<'a, Result<Vec<T>, LoadError>>;
    fn load_after<'a>(
        &'a self,
        pks: LeasedPks<'a, T::Pk>,
    ) -> BoxFuture<'a, Result<Vec<T>, LoadError>>;
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
    fn load_after<'a>(
        &'a self,
        pks: LeasedPks<'a, T::Pk>,
    ) -> BoxFuture<'a, Result<Vec<T>, LoadError>> {
        Box::pin(Loader::load_after(self, pks))
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
