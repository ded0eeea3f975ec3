//! Query index maintenance (see [`query`](crate::query)): the update made
//! by every write of a model with index fields, and [`Cache::warm`].
//!
//! Every update follows the lease protocol of the entries: lease the
//! members' index records (a token, replacing any other update's), read
//! the instances, apply their values if the lease still holds. A write
//! leases after its commit and its invalidation, so the holder of the last
//! lease read the database after every write that leased before it, and a
//! write that comes later takes the lease over: the index ends with the
//! values of the last committed state.

use std::collections::HashSet;
use std::marker::PhantomData;

use super::Cache;
use super::degraded::PendingOp;
use super::read::Want;
use super::registry::ModelEntry;
use crate::error::Error;
use crate::instance::CachedInstance;
use crate::marker;
use crate::pk::PrimaryKey;
use crate::query::plan;
use crate::query::{IndexValues, QueryError, Warm, WarmProgress, WarmReport};
use crate::store::{IndexQuery, IndexUpdate, WARM_SUFFIX};

/// The most members one index script handles: a bigger batch is split, so
/// that no script holds the server for long (or outlasts the store's
/// response timeout on a busy one).
const MEMBERS_PER_SCRIPT: usize = 250;

/// How long the mark of a warmed index lasts (it is refreshed by every
/// `warm`; effectively for good).
const WARM_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);

fn update_of<T: CachedInstance>(member: String, row: Option<&T>) -> IndexUpdate {
    let record = row.map(|row| plan::record(&T::SCHEMA, &IndexValues::of(row)));
    IndexUpdate::new(member, record)
}

impl Cache {
    /// Whether `T`'s queries can use the store's indexes at all.
    pub(super) fn indexed<T: CachedInstance>(&self) -> bool {
        !T::SCHEMA.indexes.is_empty() && self.inner.store.supports_indexes()
    }

    /// After a write of `pk` (its commit and its invalidation): leases its
    /// index record, reloads it, and applies its values (or removes it when
    /// the row is gone). One loader call and two store round trips, for
    /// models with index fields only.
    pub(super) async fn index_written<T: CachedInstance>(
        &self,
        entry: &ModelEntry,
        pk: &T::Pk,
    ) -> Result<(), Error> {
        if !self.indexed::<T>() {
            return Ok(());
        }
        let prefix = plan::prefix(&T::SCHEMA);
        if !self.store_usable().await {
            self.unwarm::<T>(&prefix);
            return Ok(());
        }
        let store = &self.inner.store;
        let members = vec![pk.to_index_member()];
        let token = marker::new_lease();
        let leased = self
            .store_call(
                T::MODEL,
                "index lease",
                store.index_lease(&prefix, &members, &token),
            )
            .await;
        if leased.is_none() {
            self.unwarm::<T>(&prefix);
            return Ok(());
        }
        // A failed load leaves the lease, and the old values, in place:
        // the write itself fails, and the next write or warm replaces them.
        let rows = self.load_rows::<T>(entry, std::slice::from_ref(pk)).await?;
        let row = rows.iter().find(|row| row.pk() == pk);
        let updates = [update_of(members[0].clone(), row)];
        let applied = self
            .store_call(
                T::MODEL,
                "index apply",
                store.index_apply(&prefix, &token, &updates),
            )
            .await;
        if applied.is_none() {
            self.unwarm::<T>(&prefix);
        }
        Ok(())
    }

    /// A write's index update could not reach the store: the index may miss
    /// it, so the model is no longer answered from the cache until the next
    /// [`warm`](Self::warm). The mark's deletion goes through the retry
    /// queue of undelivered invalidations, and until it is delivered no read
    /// uses the store.
    fn unwarm<T: CachedInstance>(&self, prefix: &str) {
        tracing::warn!(
            target: "cached_instances",
            model = T::MODEL,
            "store unavailable: the query index missed a write; queries go to the loader until the next warm"
        );
        self.inner
            .degraded
            .queue([PendingOp::Delete(format!("{prefix}{WARM_SUFFIX}"))]);
    }

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
        mut progress: Option<crate::query::ProgressFn<'_>>,
    ) -> Result<WarmReport, Error> {
        let entry = self.inner.registry.entry::<T>()?;
        if !self.inner.store.supports_indexes() {
            return Err(QueryError::StoreUnsupported.into());
        }
        let store = &self.inner.store;
        let prefix = plan::prefix(&T::SCHEMA);
        let mut loader_calls = 1;
        let pks = self
            .within_loader_timeout(T::MODEL, async {
                entry
                    .loader::<T>()
                    .all_pks()
                    .await
                    .map_err(|source| Error::Load {
                        model: T::MODEL,
                        source,
                    })
            })
            .await?
            .ok_or(QueryError::NoPkList { model: T::MODEL })?;
        super::stats::add(&self.inner.counters.loader_calls, 1);
        let total = pks.len() as u64;
        let unavailable = || Error::Load {
            model: T::MODEL,
            source: crate::error::LoadError::msg("the cache store is unavailable"),
        };

        // What the index held before, to remove what no longer exists.
        let before: Vec<String> = if self.indexed::<T>() {
            let all = IndexQuery {
                ignore_warm: true,
                ..IndexQuery::default()
            };
            self.store_call(T::MODEL, "index members", store.index_query(&prefix, &all))
                .await
                .ok_or_else(unavailable)?
                .map(|page| page.members)
                .unwrap_or_default()
        } else {
            Vec::new()
        };

        let mut seen: HashSet<String> = HashSet::with_capacity(pks.len());
        let mut indexed = 0u64;
        let mut done = 0u64;
        for chunk in pks.chunks(batch_size.max(1)) {
            let members: Vec<String> = chunk.iter().map(PrimaryKey::to_index_member).collect();
            let token = marker::new_lease();
            for part in members.chunks(MEMBERS_PER_SCRIPT) {
                if !self.indexed::<T>() {
                    break;
                }
                self.store_call(
                    T::MODEL,
                    "index lease",
                    store.index_lease(&prefix, part, &token),
                )
                .await
                .ok_or_else(unavailable)?;
            }
            let calls_before = self
                .inner
                .counters
                .loader_calls
                .load(std::sync::atomic::Ordering::Relaxed);
            let found = self.read_many::<T>(chunk, Want::Instances).await?;
            let calls_after = self
                .inner
                .counters
                .loader_calls
                .load(std::sync::atomic::Ordering::Relaxed);
            loader_calls += calls_after.saturating_sub(calls_before);
            let updates: Vec<IndexUpdate> = members
                .iter()
                .zip(&found)
                .map(|(member, f)| {
                    if f.instance.is_some() {
                        indexed += 1;
                    }
                    update_of(member.clone(), f.instance.as_ref())
                })
                .collect();
            for part in updates.chunks(MEMBERS_PER_SCRIPT) {
                if !self.indexed::<T>() {
                    break;
                }
                self.store_call(
                    T::MODEL,
                    "index apply",
                    store.index_apply(&prefix, &token, part),
                )
                .await
                .ok_or_else(unavailable)?;
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

        // Members of rows that are gone: leased and reloaded like the rest,
        // so one created meanwhile (and indexed by its write) stays.
        let stale: Vec<String> = before.into_iter().filter(|m| !seen.contains(m)).collect();
        let mut removed = 0u64;
        for chunk in stale.chunks(batch_size.clamp(1, MEMBERS_PER_SCRIPT)) {
            let token = marker::new_lease();
            self.store_call(
                T::MODEL,
                "index lease",
                store.index_lease(&prefix, chunk, &token),
            )
            .await
            .ok_or_else(unavailable)?;
            let pks: Vec<T::Pk> = chunk
                .iter()
                .filter_map(|m| T::Pk::from_index_member(m))
                .collect();
            let rows = self.load_rows::<T>(entry, &pks).await?;
            loader_calls += 1;
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
            self.store_call(
                T::MODEL,
                "index apply",
                store.index_apply(&prefix, &token, &updates),
            )
            .await
            .ok_or_else(unavailable)?;
        }

        if self.indexed::<T>() {
            let marker_key = vec![format!("{prefix}{WARM_SUFFIX}")];
            self.store_call(
                T::MODEL,
                "index mark",
                store.swap_many(&marker_key, b"1", WARM_TTL),
            )
            .await
            .ok_or_else(unavailable)?;
        }
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
            loader_calls,
        })
    }
}
