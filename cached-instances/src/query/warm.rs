//! [`Warm`]: loading and indexing every instance of a model.

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;

use crate::cache::Cache;
use crate::error::Error;
use crate::instance::CachedInstance;

/// How far a [`Warm`] has got, reported after each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmProgress {
    /// The model being warmed.
    pub model: &'static str,
    /// Primary keys loaded and indexed so far.
    pub done: u64,
    /// Primary keys to load (what the loader's `all_pks` listed).
    pub total: u64,
}

/// What a [`Warm`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmReport {
    /// The model warmed.
    pub model: &'static str,
    /// Instances loaded and indexed.
    pub indexed: u64,
    /// Members the index held that no longer exist, removed.
    pub removed: u64,
    /// Loader calls made (`all_pks` included).
    pub loader_calls: u64,
}

/// The callback of [`Warm::on_progress`].
pub(crate) type ProgressFn<'c> = Box<dyn FnMut(WarmProgress) + Send + 'c>;

/// Loads every instance of `T` in batches through its loader, fills the
/// cache with them and indexes them, then marks the model's index complete
/// so that [`Cache::query`] answers from the cache. Returned by
/// [`Cache::warm`]; await it (or call [`run`](Self::run)).
///
/// ```
/// # use cached_instances::{Cache, CachedInstance, LoadError, Loader};
/// # #[derive(CachedInstance, Debug, Clone, PartialEq)]
/// # pub struct User { #[cached(pk)] pub id: i64, #[cached(index)] pub active: bool }
/// # struct Db;
/// # impl Loader<User> for Db {
/// #     async fn load(&self, pks: &[i64]) -> Result<Vec<User>, LoadError> {
/// #         Ok(pks.iter().map(|&id| User { id, active: id % 2 == 0 }).collect())
/// #     }
/// #     async fn all_pks(&self) -> Result<Option<Vec<i64>>, LoadError> { Ok(Some((1..=2500).collect())) }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let cache = Cache::builder().loader::<User>(Db).build()?;
/// let report = cache
///     .warm::<User>()
///     .batch_size(1000)
///     .on_progress(|p| eprintln!("{}: {}/{}", p.model, p.done, p.total))
///     .await?;
/// assert_eq!(report.indexed, 2500);
/// # Ok(())
/// # }
/// ```
///
/// Writes made while it runs are safe: each batch leases its members'
/// index records before reading them, and a concurrent `saved`/`deleted`
/// of a member takes the lease over with a fresher reload (see
/// [the consistency notes](crate::query#consistency)).
#[must_use = "a Warm does nothing until it is awaited"]
pub struct Warm<'c, T> {
    pub(crate) cache: &'c Cache,
    pub(crate) batch_size: usize,
    pub(crate) progress: Option<ProgressFn<'c>>,
    pub(crate) _model: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Warm<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warm")
            .field("model", &std::any::type_name::<T>())
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl<'c, T: CachedInstance> Warm<'c, T> {
    /// Loads this many instances per loader call (default: 1000).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Calls `progress` after each batch.
    pub fn on_progress(mut self, progress: impl FnMut(WarmProgress) + Send + 'c) -> Self {
        self.progress = Some(Box::new(progress));
        self
    }

    /// Runs the warm.
    ///
    /// # Errors
    ///
    /// [`QueryError::NoPkList`](super::QueryError::NoPkList) when the
    /// loader cannot list every pk, [`QueryError::StoreUnsupported`](super::QueryError::StoreUnsupported)
    /// for a store without query indexes,
    /// [`QueryError::NothingToIndex`](super::QueryError::NothingToIndex)
    /// for a model that declares no field for queries (before any loader
    /// call), [`Error::Load`] when a load
    /// failed (the model stays cold: queries keep going to the loader),
    /// [`Error::NotRegistered`] when `T` has no loader.
    pub async fn run(self) -> Result<WarmReport, Error> {
        let Warm {
            cache,
            batch_size,
            progress,
            ..
        } = self;
        cache.warm_model::<T>(batch_size, progress).await
    }
}

impl<'c, T: CachedInstance> IntoFuture for Warm<'c, T> {
    type Output = Result<WarmReport, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'c>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}
