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
//!
//! A write whose update cannot reach the store (it is down, or the lease or
//! the apply fails) queues it as a `PendingOp::Reindex` in the retry queue
//! of undelivered invalidations (`degraded.rs`). Until the recovery task
//! (`recovery.rs`) has delivered the queue no read uses the store, so the
//! model's queries go to the loader meanwhile; on delivery, after the
//! instances, the update is redone
//! under a new lease with a fresh reload, as the write would have done it,
//! and the model stays warmed. Only when that fails too (the store fails
//! again, or the loader) is the model un-warmed: its warm mark is deleted,
//! and its queries go to the loader until the next [`Cache::warm`].

use std::collections::{BTreeMap, HashSet};
use std::marker::PhantomData;

use super::Cache;
use super::degraded::{PendingOp, StoreOp};
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

pub(super) fn update_of<T: CachedInstance>(member: String, row: Option<&T>) -> IndexUpdate {
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
    /// models with index fields only. When the store cannot take it, the
    /// update is queued and redone on delivery (see the module docs).
    pub(super) async fn index_written<T: CachedInstance>(
        &self,
        entry: &ModelEntry,
        pk: &T::Pk,
    ) -> Result<(), Error> {
        if !self.indexed::<T>() {
            return Ok(());
        }
        let prefix = plan::prefix(&T::SCHEMA);
        if !self.store_usable() {
            self.index_missed::<T>(pk);
            return Ok(());
        }
        let store = &self.inner.store;
        let members = vec![pk.to_index_member()];
        let token = marker::new_lease();
        let leased = self
            .store_call(
                Some(T::MODEL),
                StoreOp::IndexLease,
                store.index_lease(&prefix, &members, &token),
            )
            .await;
        if leased.is_none() {
            self.index_missed::<T>(pk);
            return Ok(());
        }
        // A failed load leaves the lease, and the old values, in place:
        // the write itself fails, and the next write or warm replaces them.
        let rows = self.load_rows::<T>(entry, std::slice::from_ref(pk)).await?;
        let row = rows.iter().find(|row| row.pk() == pk);
        let updates = [update_of(members[0].clone(), row)];
        let applied = self
            .store_call(
                Some(T::MODEL),
                StoreOp::IndexApply,
                store.index_apply(&prefix, &token, &updates),
            )
            .await;
        match applied {
            Some(applied) => self.count_applied(&applied),
            // The apply may have run on the server after its reply was
            // lost; the re-index takes a new lease and reloads either way.
            None => self.index_missed::<T>(pk),
        }
        Ok(())
    }

    /// Counts the index records an apply wrote (those whose lease held).
    fn count_applied(&self, applied: &[bool]) {
        let n = applied.iter().filter(|&&ok| ok).count();
        super::stats::add(&self.inner.counters.index_updates, n);
    }

    /// A write's index update could not reach the store: it is queued, with
    /// the undelivered invalidations, and redone when they are delivered.
    /// Until then no read uses the store, so no query is answered from an
    /// index that misses the write.
    fn index_missed<T: CachedInstance>(&self, pk: &T::Pk) {
        super::stats::add(&self.inner.counters.index_updates_missed, 1);
        tracing::warn!(
            target: "cached_instances",
            model = T::MODEL,
            "store unavailable: a write's query index update is queued; queries go to the loader until it is delivered"
        );
        self.queue([PendingOp::Reindex {
            model: T::MODEL,
            version: T::SCHEMA.version,
            pk_key: pk.to_key(),
        }]);
    }

    /// Delivers queued index updates (`PendingOp::Reindex`), `(model,
    /// version, pk_key)`: per registered type, in batches, leases the index
    /// records, reloads the rows with one loader call and applies them where
    /// the lease holds, as the writes would have. A type whose re-index
    /// fails is un-warmed instead (see [`unwarm`](Self::unwarm)), and the
    /// rest of its batches are not tried. Returns how many were re-indexed.
    ///
    /// Runs in the recovery task, so it goes to the store directly:
    /// `store_usable` is what waits for it.
    pub(super) async fn deliver_reindexes(
        &self,
        ops: Vec<(&'static str, &'static str, String)>,
    ) -> usize {
        let mut by_type: BTreeMap<(&'static str, &'static str), Vec<String>> = BTreeMap::new();
        for (model, version, pk_key) in ops {
            by_type.entry((model, version)).or_default().push(pk_key);
        }
        let store = &self.inner.store;
        let mut delivered = 0;
        for ((model, version), pk_keys) in by_type {
            let entry = self
                .inner
                .registry
                .versions(model)
                .iter()
                .find(|e| e.schema.version == version);
            // Only registered, indexed types queue updates; anything else
            // has no index to repair.
            let Some(entry) = entry else { continue };
            if entry.schema.indexes.is_empty() || !store.supports_indexes() {
                continue;
            }
            let prefix = plan::prefix(&entry.schema);
            // The key forms that name a row (all of them, as queued by
            // `index_missed`), with their members, in the same order.
            let (pk_keys, members): (Vec<String>, Vec<String>) = pk_keys
                .into_iter()
                .filter_map(|k| entry.ops.index_member(&k).map(|m| (k, m)))
                .unzip();
            for (keys, members) in pk_keys
                .chunks(MEMBERS_PER_SCRIPT)
                .zip(members.chunks(MEMBERS_PER_SCRIPT))
            {
                let token = marker::new_lease();
                let leased = self
                    .store_call(
                        Some(model),
                        StoreOp::IndexLease,
                        store.index_lease(&prefix, members, &token),
                    )
                    .await;
                if leased.is_none() {
                    self.unwarm(model, &prefix, true).await;
                    break;
                }
                super::stats::add(&self.inner.counters.loader_calls, 1);
                let updates = self
                    .within_loader_timeout(model, entry.ops.index_updates(keys))
                    .await;
                let updates = match updates {
                    Ok(updates) => updates,
                    Err(error) => {
                        tracing::warn!(
                            target: "cached_instances",
                            model,
                            error = %crate::error::Chain(&error),
                            "reload failed while re-indexing a queued index update"
                        );
                        self.unwarm(model, &prefix, false).await;
                        break;
                    }
                };
                let applied = self
                    .store_call(
                        Some(model),
                        StoreOp::IndexApply,
                        store.index_apply(&prefix, &token, &updates),
                    )
                    .await;
                let Some(applied) = applied else {
                    self.unwarm(model, &prefix, true).await;
                    break;
                };
                // A member whose lease a later write took over counts as
                // delivered: that write applies a later state.
                self.count_applied(&applied);
                super::stats::add(&self.inner.counters.reindexes, keys.len());
                delivered += keys.len();
            }
        }
        delivered
    }

    /// A queued index update could not be redone: the index may miss a
    /// write for good, so the model is no longer answered from the cache
    /// until the next [`warm`](Self::warm). Its warm mark is deleted now,
    /// or, when the store is what failed (`store_failed`), queued for
    /// deletion with the undelivered invalidations: until it is delivered
    /// no read uses the store.
    async fn unwarm(&self, model: &'static str, prefix: &str, store_failed: bool) {
        super::stats::add(&self.inner.counters.unwarmed, 1);
        tracing::warn!(
            target: "cached_instances",
            model,
            "a queued query index update failed again; queries go to the loader until the next warm"
        );
        let mark = vec![format!("{prefix}{WARM_SUFFIX}")];
        let deleted = !store_failed
            && self
                .store_call(
                    Some(model),
                    StoreOp::IndexUnwarm,
                    self.inner.store.delete_many(&mark),
                )
                .await
                .is_some();
        if !deleted {
            self.queue(mark.into_iter().map(PendingOp::Delete));
        }
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
        if T::SCHEMA.indexes.is_empty() {
            return Err(QueryError::NothingToIndex { model: T::MODEL }.into());
        }
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
            self.store_call(
                Some(T::MODEL),
                StoreOp::IndexMembers,
                store.index_query(&prefix, &all),
            )
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
                    Some(T::MODEL),
                    StoreOp::IndexLease,
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
                let applied = self
                    .store_call(
                        Some(T::MODEL),
                        StoreOp::IndexApply,
                        store.index_apply(&prefix, &token, part),
                    )
                    .await
                    .ok_or_else(unavailable)?;
                self.count_applied(&applied);
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
                Some(T::MODEL),
                StoreOp::IndexLease,
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
            let applied = self
                .store_call(
                    Some(T::MODEL),
                    StoreOp::IndexApply,
                    store.index_apply(&prefix, &token, &updates),
                )
                .await
                .ok_or_else(unavailable)?;
            self.count_applied(&applied);
        }

        if self.indexed::<T>() {
            let marker_key = vec![format!("{prefix}{WARM_SUFFIX}")];
            self.store_call(
                Some(T::MODEL),
                StoreOp::IndexMark,
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
