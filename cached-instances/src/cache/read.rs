//! The read path: multi-get, lease the misses, one batched load, fill if the
//! lease still holds; wait for other readers' leases instead of stampeding.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::Cache;
use super::registry::ModelEntry;
use super::stats::add;
use crate::error::Error;
use crate::error::StoreOp;
use crate::instance::CachedInstance;
use crate::marker::{self, Slot, TOMBSTONE};
use crate::pk::PrimaryKey;
use crate::store::CompareAndSet;

/// What a read returns for each pk.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    Instances,
    Bytes,
}

/// What a read found for one pk, in the form the caller wants.
pub(super) enum Found<T> {
    /// No such row (or not resolved).
    Missing,
    Instance(T),
    Bytes(Bytes),
}

impl<T: CachedInstance> Found<T> {
    fn is_found(&self) -> bool {
        !matches!(self, Found::Missing)
    }

    pub(super) fn into_instance(self) -> Option<T> {
        match self {
            Found::Instance(t) => Some(t),
            _ => None,
        }
    }

    pub(super) fn into_bytes(self) -> Option<Bytes> {
        match self {
            Found::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The representation, to share with another copy of a duplicated pk.
    fn to_bytes(&self) -> Option<Bytes> {
        match self {
            Found::Missing => None,
            Found::Instance(t) => t.to_json().ok().map(Bytes::from),
            Found::Bytes(b) => Some(b.clone()),
        }
    }

    /// A loaded row, as the caller wants it; `bytes` is its representation
    /// when the caller already encoded it.
    fn from_row(
        entry: &ModelEntry,
        row: T,
        bytes: Option<Bytes>,
        want: Want,
    ) -> Result<Self, Error> {
        Ok(match want {
            Want::Instances => Found::Instance(row),
            Want::Bytes => Found::Bytes(match bytes {
                Some(bytes) => bytes,
                None => {
                    let bytes = Bytes::from(row.to_json()?);
                    entry.shape.learn_from(&bytes);
                    bytes
                }
            }),
        })
    }
}

/// Bytes read from the store, as the caller wants them, or `None` if they
/// must not be served (a miss, and the entry is replaced): larger than
/// `max_entry_bytes`, or not `T`'s representation. Instances are decoded;
/// bytes served as they are pass the cheap shape check of `shape.rs`.
fn accept<T: CachedInstance>(
    entry: &ModelEntry,
    max_bytes: usize,
    bytes: Bytes,
    want: Want,
) -> Option<Found<T>> {
    if bytes.len() > max_bytes {
        return None;
    }
    match want {
        Want::Bytes if !entry.shape.accepts::<T>(&bytes) => None,
        _ => share(bytes, want),
    }
}

/// A representation this read already accepted or encoded, for another
/// copy of a duplicated pk: no checks.
fn share<T: CachedInstance>(bytes: Bytes, want: Want) -> Option<Found<T>> {
    match want {
        Want::Instances => T::decode(&bytes).ok().map(Found::Instance),
        Want::Bytes => Some(Found::Bytes(bytes)),
    }
}

/// Backoff between polls of a key another reader is loading.
const FIRST_POLL: Duration = Duration::from_millis(1);
const MAX_POLL: Duration = Duration::from_millis(50);

impl Cache {
    fn max_bytes(&self) -> usize {
        self.inner.config.max_entry_bytes
    }

    pub(super) async fn read_one<T: CachedInstance>(&self, pk: &T::Pk) -> Result<Option<T>, Error> {
        Ok(self
            .read_single::<T>(pk, Want::Instances)
            .await?
            .into_instance())
    }

    pub(super) async fn read_one_json<T: CachedInstance>(
        &self,
        pk: &T::Pk,
    ) -> Result<Option<Bytes>, Error> {
        Ok(self.read_single::<T>(pk, Want::Bytes).await?.into_bytes())
    }

    /// One pk: a hit is one GET and nothing else; a miss goes on from the
    /// value that GET read, so a cold read is GET, lease, fill.
    async fn read_single<T: CachedInstance>(
        &self,
        pk: &T::Pk,
        want: Want,
    ) -> Result<Found<T>, Error> {
        let entry = self.inner.registry.entry::<T>()?;
        if self.is_enabled() && self.store_usable() {
            let key = entry.key(&pk.to_key());
            if let Some(value) = self
                .store_call(Some(T::MODEL), StoreOp::Get, self.inner.store.get(&key))
                .await
            {
                if let Some(bytes) = &value
                    && let Slot::Value(_) = marker::classify(bytes)
                    && let Some(found) = accept::<T>(entry, self.max_bytes(), bytes.clone(), want)
                {
                    add(&self.inner.counters.hits, 1);
                    return Ok(found);
                }
                let pks = std::slice::from_ref(pk);
                let mut out = self
                    .resolve(entry, pks, vec![key], vec![value], want)
                    .await?;
                return Ok(out.pop().unwrap_or(Found::Missing));
            }
        }
        // Caching is off or the store is failing: `read_many` loads directly.
        let mut out = self.read_many::<T>(std::slice::from_ref(pk), want).await?;
        Ok(out.pop().unwrap_or(Found::Missing))
    }

    /// Reads `pks` in order; rows that do not exist come back empty.
    pub(super) async fn read_many<T: CachedInstance>(
        &self,
        pks: &[T::Pk],
        want: Want,
    ) -> Result<Vec<Found<T>>, Error> {
        let entry = self.inner.registry.entry::<T>()?;
        if pks.is_empty() {
            return Ok(Vec::new());
        }
        if self.is_enabled() && self.store_usable() {
            let keys: Vec<String> = pks.iter().map(|pk| entry.key(&pk.to_key())).collect();
            if let Some(values) = self
                .store_call(
                    Some(T::MODEL),
                    StoreOp::Get,
                    self.inner.store.get_many(&keys),
                )
                .await
            {
                return self.resolve(entry, pks, keys, values, want).await;
            }
        }
        let mut out: Vec<Found<T>> = pks.iter().map(|_| Found::Missing).collect();
        let all: Vec<usize> = (0..pks.len()).collect();
        self.load_direct(entry, pks, &all, &mut out, want).await?;
        Ok(out)
    }

    /// Sorts what the store returned for `keys` into hits and misses, and
    /// fills the misses.
    async fn resolve<T: CachedInstance>(
        &self,
        entry: &ModelEntry,
        pks: &[T::Pk],
        keys: Vec<String>,
        values: Vec<Option<Bytes>>,
        want: Want,
    ) -> Result<Vec<Found<T>>, Error> {
        let mut out: Vec<Found<T>> = pks.iter().map(|_| Found::Missing).collect();
        let mut misses = Vec::new();
        let mut corrupt = Vec::new();
        for (i, value) in values.into_iter().enumerate() {
            let Some(bytes) = value else {
                misses.push(i);
                continue;
            };
            match marker::classify(&bytes) {
                Slot::Value(_) => {}
                Slot::Foreign => {
                    corrupt.push(keys[i].clone());
                    misses.push(i);
                    continue;
                }
                Slot::Lease | Slot::Tombstone => {
                    misses.push(i);
                    continue;
                }
            }
            if let Some(found) = accept::<T>(entry, self.max_bytes(), bytes, want) {
                out[i] = found;
            } else {
                corrupt.push(keys[i].clone());
                misses.push(i);
            }
        }
        add(&self.inner.counters.hits, pks.len() - misses.len());
        tracing::debug!(
            target: "cached_instances",
            model = T::MODEL,
            requested = pks.len(),
            hits = pks.len() - misses.len(),
            misses = misses.len(),
            "read"
        );
        if !misses.is_empty() {
            self.fill_misses(entry, pks, &keys, &misses, corrupt, &mut out, want)
                .await?;
        }
        Ok(out)
    }

    /// Leases the missing keys, loads the granted ones with one loader call,
    /// fills them if the lease still holds, and waits for the keys other
    /// readers are loading.
    #[allow(clippy::too_many_arguments)]
    async fn fill_misses<T: CachedInstance>(
        &self,
        entry: &ModelEntry,
        pks: &[T::Pk],
        keys: &[String],
        misses: &[usize],
        corrupt: Vec<String>,
        out: &mut [Found<T>],
        want: Want,
    ) -> Result<(), Error> {
        let counters = &self.inner.counters;
        let config = &self.inner.config;
        let store = &self.inner.store;
        add(&counters.misses, misses.len());

        if !corrupt.is_empty() {
            add(&counters.corrupt_entries, corrupt.len());
            tracing::warn!(
                target: "cached_instances",
                model = entry.schema.model,
                count = corrupt.len(),
                "undecodable cached entries replaced"
            );
            // Corrupt bytes are not leasable until replaced by a tombstone.
            self.store_call(
                Some(T::MODEL),
                StoreOp::Replace,
                store.swap_many(&corrupt, TOMBSTONE, config.tombstone_ttl),
            )
            .await;
        }

        // A pk asked for twice is leased and loaded once.
        let mut unique: Vec<usize> = Vec::with_capacity(misses.len());
        let mut copies: HashMap<&str, Vec<usize>> = HashMap::new();
        for &i in misses {
            let slot = copies.entry(keys[i].as_str()).or_default();
            if slot.is_empty() {
                unique.push(i);
            }
            slot.push(i);
        }
        let lease_keys: Vec<String> = unique.iter().map(|&i| keys[i].clone()).collect();
        let lease = marker::new_lease();
        let Some(outcomes) = self
            .store_call(
                Some(T::MODEL),
                StoreOp::Lease,
                store.set_if_absent_or(&lease_keys, &lease, TOMBSTONE, config.lease_ttl),
            )
            .await
        else {
            self.load_direct(entry, pks, misses, out, want).await?;
            return Ok(());
        };

        let mut granted = Vec::new();
        let mut waiting = Vec::new();
        let mut direct = Vec::new();
        for (&i, outcome) in unique.iter().zip(outcomes) {
            match outcome {
                None => granted.push(i),
                Some(bytes) => match marker::classify(&bytes) {
                    Slot::Lease => waiting.push(i),
                    // Filled since our multi-get.
                    Slot::Value(_) => match accept::<T>(entry, self.max_bytes(), bytes, want) {
                        Some(found) => out[i] = found,
                        None => direct.push(i),
                    },
                    Slot::Tombstone | Slot::Foreign => direct.push(i),
                },
            }
        }

        if !granted.is_empty() {
            self.load_and_fill(entry, pks, keys, &granted, &lease, out, want)
                .await?;
        }
        if !waiting.is_empty() {
            direct.extend(self.wait_for_leases(entry, keys, &waiting, out, want).await);
        }
        if !direct.is_empty() {
            self.load_direct(entry, pks, &direct, out, want).await?;
        }

        // Copies of a duplicated pk share the first one's result.
        for indexes in copies.values() {
            let (first, rest) = indexes.split_first().expect("never empty");
            if rest.is_empty() {
                continue;
            }
            let bytes = out[*first].to_bytes();
            for &i in rest {
                if let Some(bytes) = &bytes {
                    out[i] = share::<T>(bytes.clone(), want).unwrap_or(Found::Missing);
                }
            }
        }
        Ok(())
    }

    /// Loads the keys we hold a lease on, then fills each one whose lease
    /// still holds, and releases the ones whose row does not exist.
    #[allow(clippy::too_many_arguments)]
    async fn load_and_fill<T: CachedInstance>(
        &self,
        entry: &ModelEntry,
        pks: &[T::Pk],
        keys: &[String],
        granted: &[usize],
        lease: &Bytes,
        out: &mut [Found<T>],
        want: Want,
    ) -> Result<(), Error> {
        let counters = &self.inner.counters;
        let config = &self.inner.config;
        let load_pks: Vec<T::Pk> = granted.iter().map(|&i| pks[i].clone()).collect();
        let loaded = self.load_rows::<T>(entry, &load_pks).await;
        let tombstone = Bytes::from_static(TOMBSTONE);
        let release = |i: usize| CompareAndSet {
            key: keys[i].clone(),
            expected: lease.clone(),
            value: tombstone.clone(),
            ttl: config.tombstone_ttl,
        };
        let rows = match loaded {
            Ok(rows) => rows,
            Err(error) => {
                // A failed or timed-out load: release the leases, so that
                // waiting readers try the database themselves at once and
                // the next read loads again.
                let ops: Vec<CompareAndSet> = granted.iter().map(|&i| release(i)).collect();
                self.store_call(
                    Some(T::MODEL),
                    StoreOp::Release,
                    self.inner.store.compare_and_set(&ops),
                )
                .await;
                return Err(error);
            }
        };

        let mut by_pk: HashMap<T::Pk, T> = rows.into_iter().map(|r| (r.pk().clone(), r)).collect();
        let ttl = self.ttl_of(&entry.schema);
        let mut ops = Vec::with_capacity(granted.len());
        let mut filled = Vec::with_capacity(granted.len());
        for &i in granted {
            match by_pk.remove(&pks[i]) {
                Some(row) => {
                    let bytes = Bytes::from(row.to_json()?);
                    entry.shape.learn_from(&bytes);
                    if bytes.len() > self.max_bytes() {
                        // Served, not cached: the lease is released.
                        self.too_large(T::MODEL, bytes.len());
                        ops.push(release(i));
                        filled.push(false);
                    } else {
                        ops.push(CompareAndSet {
                            key: keys[i].clone(),
                            expected: lease.clone(),
                            value: bytes.clone(),
                            ttl,
                        });
                        filled.push(true);
                    }
                    out[i] = Found::from_row(entry, row, Some(bytes), want)?;
                }
                None => {
                    ops.push(release(i));
                    filled.push(false);
                }
            }
        }
        if let Some(written) = self
            .store_call(
                Some(T::MODEL),
                StoreOp::Fill,
                self.inner.store.compare_and_set(&ops),
            )
            .await
        {
            {
                let mut fills = 0;
                let mut rejected = 0;
                for (was_fill, ok) in filled.iter().zip(written) {
                    match (*was_fill, ok) {
                        (true, true) => fills += 1,
                        (true, false) => rejected += 1,
                        _ => {}
                    }
                }
                add(&counters.fills, fills);
                add(&counters.fills_rejected, rejected);
                if rejected > 0 {
                    tracing::debug!(
                        target: "cached_instances",
                        model = T::MODEL,
                        rejected,
                        "fills rejected: a write invalidated the keys during the load"
                    );
                }
            }
        }
        Ok(())
    }

    /// Polls keys other readers hold leases on until they are filled or the
    /// wait runs out. Returns the indexes still unresolved.
    async fn wait_for_leases<T: CachedInstance>(
        &self,
        entry: &ModelEntry,
        keys: &[String],
        waiting: &[usize],
        out: &mut [Found<T>],
        want: Want,
    ) -> Vec<usize> {
        add(&self.inner.counters.lease_waits, waiting.len());
        let deadline = Instant::now() + self.inner.config.lease_wait;
        let mut pending: Vec<usize> = waiting.to_vec();
        let mut unresolved = Vec::new();
        let mut pause = FIRST_POLL;
        while !pending.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(MAX_POLL);
            let poll_keys: Vec<String> = pending.iter().map(|&i| keys[i].clone()).collect();
            let Some(values) = self
                .store_call(
                    Some(T::MODEL),
                    StoreOp::Get,
                    self.inner.store.get_many(&poll_keys),
                )
                .await
            else {
                break;
            };
            let mut still = Vec::new();
            for (&i, value) in pending.iter().zip(values) {
                match value {
                    Some(bytes) => match marker::classify(&bytes) {
                        Slot::Lease => still.push(i),
                        Slot::Value(_) => match accept::<T>(entry, self.max_bytes(), bytes, want) {
                            Some(found) => out[i] = found,
                            None => unresolved.push(i),
                        },
                        // Released (no such row) or invalidated: read it directly.
                        Slot::Tombstone | Slot::Foreign => unresolved.push(i),
                    },
                    None => unresolved.push(i),
                }
            }
            pending = still;
        }
        unresolved.extend(pending);
        unresolved
    }

    /// Reads rows straight from the loader without touching the store: for
    /// a store that failed, a wait that ran out, or caching switched off.
    async fn load_direct<T: CachedInstance>(
        &self,
        entry: &ModelEntry,
        pks: &[T::Pk],
        indexes: &[usize],
        out: &mut [Found<T>],
        want: Want,
    ) -> Result<(), Error> {
        let load_pks: Vec<T::Pk> = indexes.iter().map(|&i| pks[i].clone()).collect();
        // Bounds what bypasses the store at once; the semaphore is never
        // closed, so acquiring cannot fail.
        let _permit = self.inner.degraded.direct_loads.acquire().await.ok();
        let rows = self.load_rows::<T>(entry, &load_pks).await?;
        let mut by_pk: HashMap<T::Pk, T> = rows.into_iter().map(|r| (r.pk().clone(), r)).collect();
        for &i in indexes {
            if out[i].is_found() {
                continue;
            }
            if let Some(row) = by_pk.remove(&pks[i]) {
                out[i] = Found::from_row(entry, row, None, want)?;
            } else if let Some(first) = indexes
                .iter()
                .find(|&&j| j != i && pks[j] == pks[i] && out[j].is_found())
            {
                // A duplicate pk whose row went to an earlier index.
                if let Some(b) = out[*first].to_bytes() {
                    out[i] = share::<T>(b, want).unwrap_or(Found::Missing);
                }
            }
        }
        Ok(())
    }
}
