//! Query index maintenance (see [`query`](crate::query)): the update made
//! by every write of a model with index fields, and the re-index of the
//! updates the store missed (see "Query indexes" and "Store outages" in the
//! protocol, `cache/mod.rs`).

use std::collections::BTreeMap;

use super::degraded::PendingOp;
use super::gate::Gate;
use super::loading::Loading;
use super::registry::{ModelEntry, Registry, update_of};
use super::stats::{Counters, add};
use crate::error::{Error, StoreOp};
use crate::instance::CachedInstance;
use crate::marker;
use crate::pk::PrimaryKey;
use crate::store::{IndexStore, WARM_SUFFIX};

/// The most members one index script handles: a bigger batch is split, so
/// that no script holds the server for long (or outlasts the store's
/// response timeout on a busy one).
pub(super) const MEMBERS_PER_SCRIPT: usize = 250;

/// How long the mark of a warmed index lasts (it is refreshed by every
/// `warm`; effectively for good).
pub(super) const WARM_TTL: std::time::Duration =
    std::time::Duration::from_secs(10 * 365 * 24 * 3600);

/// Keeps the query indexes: each write's update, the re-index of the
/// updates the store missed, and the un-warm of a model whose re-index
/// failed.
#[derive(Clone, Copy)]
pub(super) struct IndexMaintainer<'a> {
    pub(super) gate: Gate<'a>,
    pub(super) registry: &'a Registry,
    pub(super) counters: &'a Counters,
    pub(super) loading: Loading<'a>,
}

/// What failed when a queued re-index could not be redone.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Failed {
    /// The store: the un-warm is queued behind the other undelivered work.
    Store,
    /// The loader: the store answers, so the warm mark is deleted now.
    Loader,
}

impl<'a> IndexMaintainer<'a> {
    /// The store's indexes, when `T` has index fields and the store has
    /// indexes: whether `T`'s queries can use them at all.
    pub(super) fn of<T: CachedInstance>(&self) -> Option<&'a dyn IndexStore> {
        if T::SCHEMA.indexes.is_empty() {
            return None;
        }
        self.gate.store.indexes()
    }

    /// After a write of `pk` (its commit and its invalidation): leases its
    /// index record, reloads it, and applies its values (or removes it when
    /// the row is gone). One loader call and two store round trips, for
    /// models with index fields only. When the store cannot take it, the
    /// update is queued and redone on delivery (see the module docs).
    pub(super) async fn written<T: CachedInstance>(
        &self,
        entry: &ModelEntry,
        pk: &T::Pk,
    ) -> Result<(), Error> {
        let Some(store) = self.of::<T>() else {
            return Ok(());
        };
        let prefix = entry.index_prefix.as_str();
        if !self.gate.usable() {
            self.missed::<T>(pk);
            return Ok(());
        }
        let members = vec![pk.to_index_member()];
        let token = marker::new_lease();
        let leased = self
            .gate
            .call(
                Some(T::MODEL),
                StoreOp::IndexLease,
                store.index_lease(prefix, &members, &token),
            )
            .await;
        if leased.is_none() {
            self.missed::<T>(pk);
            return Ok(());
        }
        // A failed load leaves the lease, and the old values, in place:
        // the write itself fails, and the next write or warm replaces them.
        let rows = entry
            .load::<T>(self.loading, std::slice::from_ref(pk))
            .await?;
        let row = rows.iter().find(|row| row.pk() == pk);
        let updates = [update_of(members[0].clone(), row)];
        let applied = self
            .gate
            .call(
                Some(T::MODEL),
                StoreOp::IndexApply,
                store.index_apply(prefix, &token, &updates),
            )
            .await;
        match applied {
            Some(applied) => self.count_applied(&applied),
            // The apply may have run on the server after its reply was
            // lost; the re-index takes a new lease and reloads either way.
            None => self.missed::<T>(pk),
        }
        Ok(())
    }

    /// Counts the index records an apply wrote (those whose lease held).
    pub(super) fn count_applied(&self, applied: &[bool]) {
        let n = applied.iter().filter(|&&ok| ok).count();
        add(&self.counters.index_updates, n);
    }

    /// A write's index update could not reach the store: it is queued, with
    /// the undelivered invalidations, and redone when they are delivered.
    /// Until then no read uses the store, so no query is answered from an
    /// index that misses the write.
    fn missed<T: CachedInstance>(&self, pk: &T::Pk) {
        add(&self.counters.index_updates_missed, 1);
        tracing::warn!(
            target: "cached_instances",
            model = T::MODEL,
            "store unavailable: a write's query index update is queued; queries go to the loader until it is delivered"
        );
        self.gate.queue([PendingOp::Reindex {
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
    /// [`Gate::usable`] is what waits for it.
    pub(super) async fn deliver_reindexes(
        &self,
        ops: Vec<(&'static str, &'static str, String)>,
    ) -> usize {
        let mut by_type: BTreeMap<(&'static str, &'static str), Vec<String>> = BTreeMap::new();
        for (model, version, pk_key) in ops {
            by_type.entry((model, version)).or_default().push(pk_key);
        }
        // Only stores with indexes queue index updates.
        let Some(store) = self.gate.store.indexes() else {
            return 0;
        };
        let mut delivered = 0;
        for ((model, version), pk_keys) in by_type {
            let entry = self
                .registry
                .versions(model)
                .iter()
                .find(|e| e.schema.version == version);
            // Only registered, indexed types queue updates; anything else
            // has no index to repair.
            let Some(entry) = entry else { continue };
            if entry.schema.indexes.is_empty() {
                continue;
            }
            let prefix = &entry.index_prefix;
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
                    .gate
                    .call(
                        Some(model),
                        StoreOp::IndexLease,
                        store.index_lease(prefix, members, &token),
                    )
                    .await;
                if leased.is_none() {
                    self.unwarm(model, prefix, Failed::Store).await;
                    break;
                }
                let updates = entry.ops.index_updates(self.loading, keys).await;
                let updates = match updates {
                    Ok(updates) => updates,
                    Err(error) => {
                        tracing::warn!(
                            target: "cached_instances",
                            model,
                            error = %crate::error::Chain(&error),
                            "reload failed while re-indexing a queued index update"
                        );
                        self.unwarm(model, prefix, Failed::Loader).await;
                        break;
                    }
                };
                let applied = self
                    .gate
                    .call(
                        Some(model),
                        StoreOp::IndexApply,
                        store.index_apply(prefix, &token, &updates),
                    )
                    .await;
                let Some(applied) = applied else {
                    self.unwarm(model, prefix, Failed::Store).await;
                    break;
                };
                // A member whose lease a later write took over counts as
                // delivered: that write applies a later state.
                self.count_applied(&applied);
                add(&self.counters.reindexes, keys.len());
                delivered += keys.len();
            }
        }
        delivered
    }

    /// A queued index update could not be redone: the index may miss a
    /// write for good, so the model is no longer answered from the cache
    /// until the next [`warm`](crate::Cache::warm). Its warm mark is deleted now,
    /// or, when the store is what failed, queued for
    /// deletion with the undelivered invalidations: until it is delivered
    /// no read uses the store.
    async fn unwarm(&self, model: &'static str, prefix: &str, failed: Failed) {
        add(&self.counters.unwarmed, 1);
        tracing::warn!(
            target: "cached_instances",
            model,
            "a queued query index update failed again; queries go to the loader until the next warm"
        );
        let mark = vec![format!("{prefix}{WARM_SUFFIX}")];
        let deleted = failed == Failed::Loader
            && self
                .gate
                .call(
                    Some(model),
                    StoreOp::IndexUnwarm,
                    self.gate.store.delete_many(&mark),
                )
                .await
                .is_some();
        if !deleted {
            self.gate.queue(mark.into_iter().map(PendingOp::Delete));
        }
    }
}
