//! [`Cache::warm`] and its [`Warm`]: loading and indexing every instance
//! of a model, then marking its index complete.

use std::collections::HashSet;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;

use super::index::{MEMBERS_PER_SCRIPT, WARM_TTL};
use super::loading;
use super::read::{Found, Want};
use super::registry::update_of;
use crate::cache::Cache;
use crate::error::{Error, StoreOp};
use crate::instance::CachedInstance;
use crate::marker;
use crate::pk::PrimaryKey;
use crate::query::QueryError;
use crate::store::{IndexQuery, IndexUpdate, WARM_SUFFIX};

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
    /// [`QueryError::NoPkList`](crate::query::QueryError::NoPkList) when the
    /// loader cannot list every pk, [`QueryError::StoreUnsupported`](crate::query::QueryError::StoreUnsupported)
    /// for a store without query indexes,
    /// [`QueryError::NothingToIndex`](crate::query::QueryError::NothingToIndex)
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
        cache.inner.fills.ordered().await;
        let report = cache.warm_model::<T>(batch_size, progress).await;
        // Its reads' fills handed over (encoded off the reads, `fills.rs`):
        // the entries are in the store's hands when it returns.
        cache.inner.fills.ordered().await;
        report
    }
}

impl<'c, T: CachedInstance> IntoFuture for Warm<'c, T> {
    type Output = Result<WarmReport, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'c>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

impl Cache {
    /// Loads every instance of `T` in batches through its loader (filling
    /// the cache as reads do), indexes them, removes from the index the
    /// members that no longer exist, and marks the index complete: from
    /// then on [`query`](Self::query) answers `T`'s queries from the cache.
    /// Await the returned [`Warm`], after setting its batch size or progress
    /// callback if need be. See the [`query`](crate::query) module.
    pub fn warm<T: CachedInstance>(&self) -> Warm<'_, T> {
        Warm {
            cache: self,
            batch_size: 1000,
            progress: None,
            _model: PhantomData,
        }
    }

    pub(crate) async fn warm_model<T: CachedInstance>(
        &self,
        batch_size: usize,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<WarmReport, Error> {
        let (report, loader_calls) =
            loading::counting_calls(self.warm_batches::<T>(batch_size, progress)).await;
        Ok(WarmReport {
            loader_calls,
            ..report?
        })
    }

    /// A store call of `warm`, which cannot do without the store: its
    /// failure is the warm's error.
    async fn warm_store_call<R>(
        &self,
        model: &'static str,
        op: StoreOp,
        call: crate::store::StoreFuture<'_, R>,
    ) -> Result<R, Error> {
        self.inner
            .gate()
            .result(Some(model), op, call)
            .await
            .map_err(|source| Error::Store { model, op, source })
    }

    /// `warm`, without its count of loader calls.
    async fn warm_batches<T: CachedInstance>(
        &self,
        batch_size: usize,
        mut progress: Option<ProgressFn<'_>>,
    ) -> Result<WarmReport, Error> {
        let entry = self.inner.registry.entry::<T>()?;
        if T::SCHEMA.indexes.is_empty() {
            return Err(QueryError::NothingToIndex { model: T::MODEL }.into());
        }
        let reader = self.inner.reader();
        let Some(indexes) = reader.gate.store.indexes() else {
            return Err(QueryError::StoreUnsupported.into());
        };
        // An un-warm still queued is superseded by this warm: delivered
        // first, so that it cannot delete the mark this warm sets.
        let recovery = &self.inner.recovery;
        recovery.deliver_queued(self.inner.invalidator()).await;
        let prefix = entry.index_prefix.as_str();
        let pks = reader
            .loading
            .call(T::MODEL, entry.loader::<T>().all_pks())
            .await?
            .ok_or(QueryError::NoPkList { model: T::MODEL })?;
        let total = pks.len() as u64;

        // What the index held before, to remove what no longer exists.
        let all = IndexQuery {
            ignore_warm: true,
            ..IndexQuery::default()
        };
        let before: Vec<String> = self
            .warm_store_call(
                T::MODEL,
                StoreOp::IndexMembers,
                indexes.index_query(prefix, &all),
            )
            .await?
            .map(|page| page.members)
            .unwrap_or_default();

        let mut seen: HashSet<String> = HashSet::with_capacity(pks.len());
        let mut indexed = 0u64;
        let mut done = 0u64;
        for chunk in pks.chunks(batch_size.max(1)) {
            let members: Vec<String> = chunk.iter().map(PrimaryKey::to_index_member).collect();
            let token = marker::new_lease();
            for part in members.chunks(MEMBERS_PER_SCRIPT) {
                self.warm_store_call(
                    T::MODEL,
                    StoreOp::IndexLease,
                    indexes.index_lease(prefix, part, &token),
                )
                .await?;
            }
            let found = reader.many::<T>(chunk, Want::Instances).await?;
            let updates: Vec<IndexUpdate> = members
                .iter()
                .zip(&found)
                .map(|(member, f)| {
                    let row = match f {
                        Found::Instance(row) => Some(row),
                        _ => None,
                    };
                    if row.is_some() {
                        indexed += 1;
                    }
                    update_of(member.clone(), row)
                })
                .collect();
            for part in updates.chunks(MEMBERS_PER_SCRIPT) {
                let applied = self
                    .warm_store_call(
                        T::MODEL,
                        StoreOp::IndexApply,
                        indexes.index_apply(prefix, &token, part),
                    )
                    .await?;
                self.inner.indexes().count_applied(&applied);
            }
            seen.extend(members);
            done += chunk.len() as u64;
            if let Some(progress) = progress.as_mut() {
                progress(WarmProgress {
                    model: T::MODEL,
                    done,
                    total,
                });
            }
        }

        // Its reads missed (on a cold store, all of them), and filled what
        // they missed: the next batch read multi-gets first (`cold.rs`).
        entry.cold.filled();

        // Members of rows that are gone: leased and reloaded like the rest,
        // so one created meanwhile (and indexed by its write) stays.
        let stale: Vec<String> = before.into_iter().filter(|m| !seen.contains(m)).collect();
        let mut removed = 0u64;
        for chunk in stale.chunks(batch_size.clamp(1, MEMBERS_PER_SCRIPT)) {
            let token = marker::new_lease();
            self.warm_store_call(
                T::MODEL,
                StoreOp::IndexLease,
                indexes.index_lease(prefix, chunk, &token),
            )
            .await?;
            let pks: Vec<T::Pk> = chunk
                .iter()
                .filter_map(|m| T::Pk::from_index_member(m))
                .collect();
            let rows = entry.load::<T>(reader.loading, &pks).await?;
            let updates: Vec<IndexUpdate> = chunk
                .iter()
                .map(|member| {
                    let row = rows.iter().find(|r| &r.pk().to_index_member() == member);
                    if row.is_none() {
                        removed += 1;
                    }
                    update_of(member.clone(), row)
                })
                .collect();
            let applied = self
                .warm_store_call(
                    T::MODEL,
                    StoreOp::IndexApply,
                    indexes.index_apply(prefix, &token, &updates),
                )
                .await?;
            self.inner.indexes().count_applied(&applied);
        }

        let marker_key = vec![format!("{prefix}{WARM_SUFFIX}")];
        self.warm_store_call(
            T::MODEL,
            StoreOp::IndexMark,
            reader.gate.store.swap_many(&marker_key, b"1", WARM_TTL),
        )
        .await?;
        tracing::info!(
            target: "cached_instances",
            model = T::MODEL,
            indexed,
            removed,
            "warmed"
        );
        Ok(WarmReport {
            model: T::MODEL,
            indexed,
            removed,
            // Counted by `warm_model`.
            loader_calls: 0,
        })
    }
}
