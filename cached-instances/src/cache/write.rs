//! The write path: invalidate the written instance, then cascade
//! breadth-first through the instances whose representation the write
//! changed (see "Writes" in the protocol, `cache/mod.rs`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use super::Config;
use super::degraded::PendingOp;
use super::gate::Gate;
use super::index::IndexMaintainer;
use super::loading::Loading;
use super::registry::{Links, ModelEntry, Registry, Reloaded};
use super::stats::{Counters, add};
use crate::error::{Error, StoreOp};
use crate::instance::{CachedInstance, Target};
use crate::marker::{self, Slot, TOMBSTONE};
use crate::pk::PrimaryKey;
use crate::store::CompareAndSet;

/// Whether a store call of the write path waits for the circuit and the
/// retry queue, or is the delivery of that queue (which is what the others
/// wait for).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Caller {
    /// A caller's write: skips the store while it fails or anything is
    /// queued, queueing its own invalidations behind the others.
    Write,
    /// The recovery task: goes to the store directly.
    Recovery,
}

impl Caller {
    pub(super) fn may_use_store(self, gate: &Gate<'_>) -> bool {
        self == Caller::Recovery || gate.usable()
    }
}

/// One key touched by a cascade level.
struct Touched {
    entry: Arc<ModelEntry>,
    pk_key: String,
    key: String,
}

/// Whether a cascade level reloads what it invalidates.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reload {
    /// Lease, reload, fill.
    Yes,
    /// Past `max_cascade_depth`: tombstone, no loader call.
    PastDepthLimit,
}

/// How a cascade level runs.
struct Level<'a> {
    reload: Reload,
    /// The written instance, for the first level of a write.
    seed: Option<&'a Seed<'a>>,
    caller: Caller,
}

/// What an invalidation swaps into its keys.
struct Swap<'a> {
    /// For the store-failure event: `None` for a level over several models.
    model: Option<&'static str>,
    marker: &'a [u8],
    ttl: std::time::Duration,
}

/// What the caller of `saved`/`deleted` knows of the written instance.
struct Seed<'a> {
    entry: &'a Arc<ModelEntry>,
    /// The state before the write, when the caller has it.
    previous: Option<Links>,
    /// The state written; `None` for a delete.
    new: Option<(Links, Vec<u8>)>,
}

/// What a cascade level's reload found of one instance.
#[derive(Clone, Copy)]
enum Current<'r> {
    /// Not reloaded (not cached, under `update_only`; or deleted).
    Unknown,
    /// Reloaded, and the row is gone.
    Gone,
    /// Reloaded: the row's state.
    Row(&'r Reloaded),
}

impl<'r> Current<'r> {
    fn of(row: Option<&'r Reloaded>, was_loaded: bool) -> Self {
        match row {
            Some(row) => Current::Row(row),
            None if was_loaded => Current::Gone,
            None => Current::Unknown,
        }
    }
}

/// The written instance's targets: always computed, since the caller says
/// it changed. Its previous state is the caller's, else the cached one —
/// unless the cache already holds exactly the new state (a reader refilled it
/// after the commit), which says nothing of what it replaced.
fn seed_targets(seed: &Seed<'_>, old: Option<&[u8]>, current: Current<'_>, next: &mut Vec<Target>) {
    let old_links = seed.previous.clone().or_else(|| {
        let old = old?;
        let same_as_new = seed
            .new
            .as_ref()
            .is_some_and(|(_, bytes)| bytes[..] == *old);
        (!same_as_new)
            .then(|| seed.entry.ops.links_of(old))
            .flatten()
    });
    // The caller's own change, always: once `saved` returns, every instance
    // that change touched has been invalidated, even when a concurrent write
    // of the same instance has moved it on since (the reload below then
    // finds a later state, whose relations may not include the caller's).
    let caller_new = seed.new.as_ref().map(|(links, _)| links);
    seed.entry.targets(old_links.as_ref(), caller_new, next);
    // And the change to the state the reload found, which is what the entry
    // is refilled with (the row may be gone).
    let found = match current {
        Current::Row(row) => Some(Some(&row.links)),
        Current::Gone => Some(None),
        Current::Unknown => None,
    };
    if let Some(found) = found
        && found != caller_new
    {
        seed.entry.targets(old_links.as_ref(), found, next);
    }
}

fn value_of(bytes: Option<&Bytes>) -> Option<&[u8]> {
    match bytes.map(|b| marker::classify(b)) {
        Some(Slot::Value(v)) => Some(v),
        _ => None,
    }
}

/// The write path: invalidations, cascades, and (through its index
/// maintainer) the query-index update of each write.
#[derive(Clone, Copy)]
pub(super) struct Invalidator<'a> {
    pub(super) gate: Gate<'a>,
    pub(super) registry: &'a Registry,
    pub(super) counters: &'a Counters,
    pub(super) config: &'a Config,
    pub(super) loading: Loading<'a>,
    pub(super) indexes: IndexMaintainer<'a>,
}

impl Invalidator<'_> {
    /// Invalidates `pk` of `T` (every version) and cascades. `previous` is the
    /// caller's known prior state; `new` is `None` for a delete.
    pub(super) async fn write<T: CachedInstance>(
        &self,
        pk: &T::Pk,
        previous: Option<&T>,
        new: Option<&T>,
    ) -> Result<(), Error> {
        let entry = self.registry.entry::<T>()?;
        let pk_key = pk.to_key();
        let new = match new {
            Some(n) => {
                let bytes = n.to_json()?;
                entry.shape.learn_from(&bytes);
                Some((Links::of(n), bytes))
            }
            None => None,
        };
        let seed = Seed {
            entry,
            previous: previous.map(Links::of),
            new,
        };
        let mut targets = Vec::new();
        let level = [(T::MODEL, pk_key.clone())];
        let seeded = self
            .cascade_level(
                &level,
                Level {
                    reload: Reload::Yes,
                    seed: Some(&seed),
                    caller: Caller::Write,
                },
                &mut targets,
            )
            .await;
        tracing::debug!(
            target: "cached_instances",
            model = T::MODEL,
            pk = %pk_key,
            targets = targets.len(),
            "invalidated"
        );
        let mut visited = HashSet::new();
        visited.insert((T::MODEL, pk_key));
        let cascaded = self.cascade(targets, visited, Caller::Write).await;
        // Query indexes (`index.rs`): after the invalidation, as the
        // protocol there requires; a no-op for models without index fields.
        let indexed = self.indexes.written::<T>(entry, pk).await;
        seeded.and(cascaded).and(indexed).map(|_| ())
    }

    /// Reloads `pk` and, if its representation changed, writes as `saved`.
    pub(super) async fn refresh_one<T: CachedInstance>(&self, pk: &T::Pk) -> Result<bool, Error> {
        let entry = self.registry.entry::<T>()?;
        let key = entry.key(&pk.to_key());
        let cached = if self.gate.usable() {
            self.gate
                .call(Some(T::MODEL), StoreOp::Get, self.gate.store.get(&key))
                .await
                .flatten()
        } else {
            None
        };
        let cached = value_of(cached.as_ref());
        let rows = entry
            .load::<T>(self.loading, std::slice::from_ref(pk))
            .await?;
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
        self.registry.entry::<T>()?;
        let pk_key = pk.to_key();
        let keys: Vec<String> = self
            .registry
            .versions(T::MODEL)
            .iter()
            .map(|v| v.key(&pk_key))
            .collect();
        let retry: Vec<PendingOp> = keys.iter().cloned().map(PendingOp::Tombstone).collect();
        let ttl = self.config.tombstone_ttl;
        let swap = Swap {
            model: Some(T::MODEL),
            marker: TOMBSTONE,
            ttl,
        };
        self.invalidate_keys(&keys, swap, retry, Caller::Write)
            .await;
        add(&self.counters.invalidations, 1);
        Ok(())
    }

    /// Replaces `keys` with `swap.marker` (a tombstone or this write's
    /// lease), returning what they held. When the store cannot take it,
    /// `retry` is queued and `None` is returned.
    async fn invalidate_keys(
        &self,
        keys: &[String],
        swap: Swap<'_>,
        retry: Vec<PendingOp>,
        caller: Caller,
    ) -> Option<Vec<Option<Bytes>>> {
        let olds = if caller.may_use_store(&self.gate) {
            self.gate
                .call(
                    swap.model,
                    StoreOp::Invalidate,
                    self.gate.store.swap_many(keys, swap.marker, swap.ttl),
                )
                .await
        } else {
            None
        };
        if olds.is_none() {
            self.gate.queue(retry);
        }
        olds
    }

    /// Delivers queued instance invalidations as a cascade level of their
    /// own: each key (every version) is swapped to a lease, what it held —
    /// possibly the state from before a write that could not read it — is
    /// compared with a reload, and the relations that changed are cascaded
    /// to (the old parent of a foreign key moved during an outage, say).
    /// Whatever fails is queued again. Returns whether the store took the
    /// level.
    pub(super) async fn deliver_instances(&self, instances: Vec<(&'static str, String)>) -> bool {
        let mut next = Vec::new();
        let level = self
            .cascade_level(
                &instances,
                Level {
                    reload: Reload::Yes,
                    seed: None,
                    caller: Caller::Recovery,
                },
                &mut next,
            )
            .await;
        let taken = !matches!(level, Ok(false));
        let visited = instances.into_iter().collect();
        if let Err(error) = level.and(self.cascade(next, visited, Caller::Recovery).await) {
            tracing::warn!(
                target: "cached_instances",
                error = %crate::error::Chain(&error),
                "reload failed while delivering queued invalidations; entries left invalidated"
            );
        }
        taken
    }

    /// Breadth-first over the targets. Levels past `max_cascade_depth` are
    /// invalidated without reloading, following what the old states linked
    /// to, until nothing new is reached.
    pub(super) async fn cascade(
        &self,
        mut targets: Vec<Target>,
        mut visited: HashSet<(&'static str, String)>,
        caller: Caller,
    ) -> Result<(), Error> {
        let config = &self.config;
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
            let reload = if depth <= config.max_cascade_depth {
                Reload::Yes
            } else {
                Reload::PastDepthLimit
            };
            if depth == config.max_cascade_depth + 1 {
                tracing::warn!(
                    target: "cached_instances",
                    depth,
                    remaining = level.len(),
                    "cascade depth limit reached; the rest is invalidated without reloading"
                );
            }
            let shape = Level {
                reload,
                seed: None,
                caller,
            };
            match self.cascade_level(&level, shape, &mut targets).await {
                Ok(_) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
            // Past the depth limit the walk goes on without reloading (see
            // `cascade_level`): each instance is visited once, so it ends,
            // cycles included, after one round trip per level and no
            // loader call.
        }
        if !raw_keys.is_empty() {
            let keys: Vec<String> = raw_keys.into_iter().collect();
            add(&self.counters.invalidations, keys.len());
            let delivered = caller.may_use_store(&self.gate)
                && self
                    .gate
                    .call(None, StoreOp::Delete, self.gate.store.delete_many(&keys))
                    .await
                    .is_some();
            if !delivered {
                self.gate.queue(keys.into_iter().map(PendingOp::Delete));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// One cascade level: lease every key, reload what was cached (or all,
    /// without `update_only`), fill, and collect the next level's targets.
    /// `Ok(false)` when the store could not take the level's invalidation
    /// (it is queued for retry).
    async fn cascade_level(
        &self,
        level: &[(&'static str, String)],
        Level {
            reload,
            seed,
            caller,
        }: Level<'_>,
        next: &mut Vec<Target>,
    ) -> Result<bool, Error> {
        let config = &self.config;
        let store = self.gate.store;
        let mut touched = Vec::new();
        for (model, pk_key) in level {
            for entry in self.registry.versions(model) {
                touched.push(Touched {
                    entry: entry.clone(),
                    key: entry.key(pk_key),
                    pk_key: pk_key.clone(),
                });
            }
        }
        add(&self.counters.invalidations, level.len());
        let keys: Vec<String> = touched.iter().map(|t| t.key.clone()).collect();
        let lease = match reload {
            Reload::Yes => marker::new_lease(),
            Reload::PastDepthLimit => Bytes::from_static(TOMBSTONE),
        };
        let ttl = config.lease_ttl.max(config.tombstone_ttl);
        // Queued per instance, not per key: the delivery compares what the
        // store still holds with the database and cascades from there.
        let retry = level
            .iter()
            .map(|(model, pk_key)| PendingOp::Instance {
                model,
                pk_key: pk_key.clone(),
            })
            .collect();
        let swap = Swap {
            model: None,
            marker: &lease,
            ttl,
        };
        let Some(olds) = self.invalidate_keys(&keys, swap, retry, caller).await else {
            // Nothing is known of the old states; the written instance's own
            // relations still go on (and are queued in turn).
            if let Some(seed) = seed {
                let new = seed.new.as_ref().map(|(links, _)| links);
                seed.entry.targets(seed.previous.as_ref(), new, next);
            }
            return Ok(false);
        };
        if reload == Reload::PastDepthLimit {
            // Past the depth limit: no reload, so the new states (and the
            // targets they would give) are unknown. Everything the old
            // states linked to is invalidated instead, as if they had been
            // deleted, so that an entry further down a long chain is never
            // left stale; the walk only follows what was cached.
            for (t, old) in touched.iter().zip(&olds) {
                if let Some(links) = value_of(old.as_ref()).and_then(|b| t.entry.ops.links_of(b)) {
                    t.entry.targets(Some(&links), None, next);
                }
            }
            return Ok(true);
        }

        // Group the touched keys by registered type, one reload per type.
        // Keyed by the entry's address, not a raw pointer, so that the
        // future stays `Send` (it is held across the reload's await).
        let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, t) in touched.iter().enumerate() {
            groups
                .entry(Arc::as_ptr(&t.entry).addr())
                .or_default()
                .push(i);
        }
        let tombstone = Bytes::from_static(TOMBSTONE);
        let mut ops = Vec::with_capacity(touched.len());
        let mut fills = Vec::with_capacity(touched.len());
        let mut first_error = None;
        for indexes in groups.values() {
            let entry = &touched[indexes[0]].entry;
            let seed = seed.filter(|s| Arc::ptr_eq(s.entry, entry));
            let deleted = seed.is_some_and(|s| s.new.is_none());
            let to_load: Vec<String> = indexes
                .iter()
                .filter(|_| !deleted)
                .filter(|&&i| !config.update_only || value_of(olds[i].as_ref()).is_some())
                .map(|&i| touched[i].pk_key.clone())
                .collect();
            let mut reloaded = HashMap::new();
            if !to_load.is_empty() {
                match entry.ops.reload(self.loading, &to_load).await {
                    Ok(rows) => {
                        reloaded = rows.into_iter().map(|r| (r.pk_key.clone(), r)).collect();
                    }
                    Err(e) => {
                        tracing::warn!(
                            target: "cached_instances",
                            model = entry.schema.model,
                            error = %crate::error::Chain(&e),
                            "cascade reload failed; entries left invalidated"
                        );
                        first_error.get_or_insert(e);
                    }
                }
            }
            let ttl = self.config.ttl_of(&entry.schema);
            // A reloaded representation over `max_entry_bytes` is not
            // cached: its key keeps a tombstone.
            let fill = |bytes: Bytes| -> (Bytes, std::time::Duration, bool) {
                entry.shape.learn_from(&bytes);
                if bytes.len() > config.max_entry_bytes {
                    super::too_large(self.counters, config, entry.schema.model, bytes.len());
                    (tombstone.clone(), config.tombstone_ttl, false)
                } else {
                    (bytes, ttl, true)
                }
            };
            for &i in indexes {
                let t = &touched[i];
                let old = value_of(olds[i].as_ref());
                let was_loaded = to_load.contains(&t.pk_key);
                let row = reloaded.remove(&t.pk_key);
                if let Some(seed) = seed {
                    seed_targets(seed, old, Current::of(row.as_ref(), was_loaded), next);
                    // The row may be gone despite `saved`: leave a tombstone.
                    let (value, ttl, is_fill) = match row {
                        Some(row) => fill(row.bytes),
                        None => (tombstone.clone(), config.tombstone_ttl, false),
                    };
                    ops.push(CompareAndSet {
                        key: t.key.clone(),
                        expected: lease.clone(),
                        value,
                        ttl,
                    });
                    fills.push(is_fill);
                    continue;
                }
                match row {
                    Some(row) => {
                        if old != Some(&row.bytes[..]) {
                            let old_links = old.and_then(|b| entry.ops.links_of(b));
                            entry.targets(old_links.as_ref(), Some(&row.links), next);
                        }
                        let (value, ttl, is_fill) = fill(row.bytes);
                        ops.push(CompareAndSet {
                            key: t.key.clone(),
                            expected: lease.clone(),
                            value,
                            ttl,
                        });
                        fills.push(is_fill);
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
        // A failed fill leaves this write's leases, which expire: readers
        // meanwhile wait briefly, then read the database.
        if let Some(written) = self
            .gate
            .call(None, StoreOp::Fill, store.compare_and_set(&ops))
            .await
        {
            super::count_fills(self.counters, &fills, &written);
        }
        first_error.map_or(Ok(true), Err)
    }
}
