//! The write path: invalidate the written instance, then cascade breadth-first
//! through the instances whose representation the write changed.
//!
//! Level 0 is the written instance: every version's key becomes a tombstone in
//! one round trip, which also returns the cached previous state to compare
//! with. Each further level is one round trip that swaps every target key to
//! this write's lease (voiding readers' leases and returning the old bytes),
//! one loader call per model to reload the targets that were cached, and one
//! round trip that fills them if the lease still holds. A visited set makes
//! cycles (`User.votes` <-> `Choice.voters`) terminate.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use super::Cache;
use super::registry::{Links, ModelEntry};
use super::stats::add;
use crate::error::Error;
use crate::instance::{CachedInstance, Target};
use crate::marker::{self, Slot, TOMBSTONE};
use crate::pk::PrimaryKey;
use crate::store::CompareAndSet;

/// One key touched by a cascade level.
struct Touched {
    entry: Arc<ModelEntry>,
    pk_key: String,
    key: String,
}

fn value_of(bytes: Option<&Bytes>) -> Option<&[u8]> {
    match bytes.map(|b| marker::classify(b)) {
        Some(Slot::Value(v)) => Some(v),
        _ => None,
    }
}

impl Cache {
    /// Invalidates `pk` of `T` (every version) and cascades. `previous` is the
    /// caller's known prior state; `new` is `None` for a delete.
    pub(super) async fn write<T: CachedInstance>(
        &self,
        pk: &T::Pk,
        previous: Option<&T>,
        new: Option<&T>,
    ) -> Result<(), Error> {
        let registry = &self.inner.registry;
        let config = &self.inner.config;
        let entry = registry.entry::<T>()?;
        let pk_key = pk.to_key();
        let versions = registry.versions(T::MODEL);
        let keys: Vec<String> = versions.iter().map(|v| v.key(&pk_key)).collect();
        let olds = match self
            .inner
            .store
            .swap_many(&keys, TOMBSTONE, config.tombstone_ttl)
            .await
        {
            Ok(olds) => olds,
            Err(e) => {
                self.store_failed(T::MODEL, "invalidate", &e);
                vec![None; keys.len()]
            }
        };
        add(&self.inner.counters.invalidations, 1);

        let new_links = new.map(Links::of);
        let mut own_old = previous.map(Links::of);
        let mut targets = Vec::new();
        for (version, old) in versions.iter().zip(&olds) {
            let old = value_of(old.as_ref()).and_then(|v| version.ops.links_of(v));
            if Arc::ptr_eq(version, entry) {
                own_old = own_old.or(old);
            } else if let Some(old) = old {
                // Another version's layout: its relations are compared with an
                // unknown new state, which invalidates all of them.
                version.targets(Some(&old), None, &mut targets);
            }
        }
        entry.targets(own_old.as_ref(), new_links.as_ref(), &mut targets);
        tracing::debug!(
            target: "cached_instances",
            model = T::MODEL,
            pk = %pk_key,
            targets = targets.len(),
            "invalidated"
        );

        let mut visited = HashSet::new();
        visited.insert((T::MODEL, pk_key));
        self.cascade(targets, visited).await
    }

    /// Reloads `pk` and, if its representation changed, writes as `saved`.
    pub(super) async fn refresh_one<T: CachedInstance>(&self, pk: &T::Pk) -> Result<bool, Error> {
        let entry = self.inner.registry.entry::<T>()?;
        let key = entry.key(&pk.to_key());
        let cached = match self.inner.store.get(&key).await {
            Ok(bytes) => bytes,
            Err(e) => {
                self.store_failed(T::MODEL, "get", &e);
                None
            }
        };
        let cached = value_of(cached.as_ref());
        add(&self.inner.counters.loader_calls, 1);
        let rows = entry
            .loader::<T>()
            .load(std::slice::from_ref(pk))
            .await
            .map_err(|source| Error::Load {
                model: T::MODEL,
                source,
            })?;
        let current = rows.into_iter().find(|row| row.pk() == pk);
        let current_bytes = current.as_ref().map(T::to_json).transpose()?;
        match (cached, current_bytes.as_deref()) {
            (Some(old), Some(new)) if old == new => return Ok(false),
            (None, None) => return Ok(false),
            _ => {}
        }
        let previous = cached.and_then(|b| T::decode(b).ok());
        self.write::<T>(pk, previous.as_ref(), current.as_ref())
            .await?;
        Ok(true)
    }

    /// Tombstones `pk`'s keys of every registered version of `T`'s model.
    pub(super) async fn remove_versions<T: CachedInstance>(&self, pk: &T::Pk) -> Result<(), Error> {
        self.inner.registry.entry::<T>()?;
        let pk_key = pk.to_key();
        let keys: Vec<String> = self
            .inner
            .registry
            .versions(T::MODEL)
            .iter()
            .map(|v| v.key(&pk_key))
            .collect();
        if let Err(e) = self
            .inner
            .store
            .swap_many(&keys, TOMBSTONE, self.inner.config.tombstone_ttl)
            .await
        {
            self.store_failed(T::MODEL, "invalidate", &e);
        }
        add(&self.inner.counters.invalidations, 1);
        Ok(())
    }

    /// Breadth-first over the targets; stops at the configured depth.
    async fn cascade(
        &self,
        mut targets: Vec<Target>,
        mut visited: HashSet<(&'static str, String)>,
    ) -> Result<(), Error> {
        let config = &self.inner.config;
        let mut raw_keys = BTreeSet::new();
        let mut first_error = None;
        let mut depth = 0;
        loop {
            let mut level = Vec::new();
            for target in targets.drain(..) {
                match target {
                    Target::Key(key) => {
                        raw_keys.insert(key);
                    }
                    Target::Instance { model, pk } => {
                        if visited.insert((model, pk.clone())) {
                            level.push((model, pk));
                        }
                    }
                }
            }
            if level.is_empty() {
                break;
            }
            depth += 1;
            let reload = depth <= config.max_cascade_depth;
            if !reload {
                tracing::warn!(
                    target: "cached_instances",
                    depth,
                    remaining = level.len(),
                    "cascade depth limit reached; the rest is invalidated without reloading"
                );
            }
            match self.cascade_level(&level, reload, &mut targets).await {
                Ok(()) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
            if !reload {
                break;
            }
        }
        if !raw_keys.is_empty() {
            let keys: Vec<String> = raw_keys.into_iter().collect();
            add(&self.inner.counters.invalidations, keys.len());
            if let Err(e) = self.inner.store.delete_many(&keys).await {
                self.store_failed("raw keys", "delete", &e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// One cascade level: lease every key, reload what was cached (or all,
    /// without `update_only`), fill, and collect the next level's targets.
    async fn cascade_level(
        &self,
        level: &[(&'static str, String)],
        reload: bool,
        next: &mut Vec<Target>,
    ) -> Result<(), Error> {
        let config = &self.inner.config;
        let store = &self.inner.store;
        let mut touched = Vec::new();
        for (model, pk_key) in level {
            for entry in self.inner.registry.versions(model) {
                touched.push(Touched {
                    entry: entry.clone(),
                    key: entry.key(pk_key),
                    pk_key: pk_key.clone(),
                });
            }
        }
        add(&self.inner.counters.invalidations, level.len());
        let keys: Vec<String> = touched.iter().map(|t| t.key.clone()).collect();
        let lease = if reload {
            marker::new_lease()
        } else {
            Bytes::from_static(TOMBSTONE)
        };
        let olds = match store
            .swap_many(&keys, &lease, config.lease_ttl.max(config.tombstone_ttl))
            .await
        {
            Ok(olds) => olds,
            Err(e) => {
                self.store_failed("cascade", "invalidate", &e);
                return Ok(());
            }
        };
        if !reload {
            return Ok(());
        }

        // Group the touched keys by registered type, one reload per type.
        let mut groups: HashMap<*const ModelEntry, Vec<usize>> = HashMap::new();
        for (i, t) in touched.iter().enumerate() {
            groups.entry(Arc::as_ptr(&t.entry)).or_default().push(i);
        }
        let tombstone = Bytes::from_static(TOMBSTONE);
        let mut ops = Vec::with_capacity(touched.len());
        let mut fills = Vec::with_capacity(touched.len());
        let mut first_error = None;
        for indexes in groups.values() {
            let entry = &touched[indexes[0]].entry;
            let to_load: Vec<String> = indexes
                .iter()
                .filter(|&&i| !config.update_only || value_of(olds[i].as_ref()).is_some())
                .map(|&i| touched[i].pk_key.clone())
                .collect();
            let mut reloaded = HashMap::new();
            if !to_load.is_empty() {
                add(&self.inner.counters.loader_calls, 1);
                match entry.ops.reload(&to_load).await {
                    Ok(rows) => {
                        reloaded = rows.into_iter().map(|r| (r.pk_key.clone(), r)).collect();
                    }
                    Err(e) => {
                        tracing::warn!(
                            target: "cached_instances",
                            model = entry.schema.model,
                            error = %e,
                            "cascade reload failed; entries left invalidated"
                        );
                        first_error.get_or_insert(e);
                    }
                }
            }
            let ttl = self.ttl_of(&entry.schema);
            for &i in indexes {
                let t = &touched[i];
                let old = value_of(olds[i].as_ref());
                let was_loaded = to_load.contains(&t.pk_key);
                match reloaded.remove(&t.pk_key) {
                    Some(row) => {
                        if old != Some(&row.bytes[..]) {
                            let old_links = old.and_then(|b| entry.ops.links_of(b));
                            entry.targets(old_links.as_ref(), Some(&row.links), next);
                        }
                        ops.push(CompareAndSet {
                            key: t.key.clone(),
                            expected: lease.clone(),
                            value: row.bytes,
                            ttl,
                        });
                        fills.push(true);
                    }
                    None => {
                        if was_loaded && first_error.is_none() {
                            // The row is gone: its relations changed too.
                            let old_links = old.and_then(|b| entry.ops.links_of(b));
                            entry.targets(old_links.as_ref(), None, next);
                        }
                        ops.push(CompareAndSet {
                            key: t.key.clone(),
                            expected: lease.clone(),
                            value: tombstone.clone(),
                            ttl: config.tombstone_ttl,
                        });
                        fills.push(false);
                    }
                }
            }
        }
        match store.compare_and_set(&ops).await {
            Ok(written) => {
                let filled = fills
                    .iter()
                    .zip(&written)
                    .filter(|(f, w)| **f && **w)
                    .count();
                let rejected = fills
                    .iter()
                    .zip(&written)
                    .filter(|(f, w)| **f && !**w)
                    .count();
                add(&self.inner.counters.fills, filled);
                add(&self.inner.counters.fills_rejected, rejected);
            }
            Err(e) => self.store_failed("cascade", "fill", &e),
        }
        first_error.map_or(Ok(()), Err)
    }
}
