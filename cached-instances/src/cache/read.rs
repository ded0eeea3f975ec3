//! The read path: multi-get, lease the misses, one batched load, fill if the
//! lease still holds; wait for other readers' leases instead of stampeding.
//! A batch read of a model whose reads lately missed leases first
//! (`cold.rs`). The loader gets the pks to load as the lease step's future
//! ([`Loader::load_after`](crate::Loader::load_after)): it may get ready (a
//! pooled connection) while the leases are taken, and reads the database
//! only after.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::cold::Start;
use super::fills::{Fill, Fills, Held, LocalLease, Unencoded};
use super::gate::Gate;
use super::loading::Loading;
use super::registry::{ModelEntry, Registry};
use super::stats::{Counters, add};
use super::{Config, Inner};
use crate::error::{Error, StoreOp};
use crate::instance::{CachedInstance, Encoder};
use crate::marker::{self, Slot, TOMBSTONE};
use crate::store::{CompareAndSet, InProcess};

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
    pub(super) fn is_found(&self) -> bool {
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

/// Bytes read from the store, as the caller wants them, or handed back if
/// they must not be served (a miss, and the entry is replaced): larger than
/// `max_entry_bytes`, or not `T`'s representation. Instances are decoded;
/// bytes served as they are pass the cheap shape check of `shape.rs`.
fn accept<T: CachedInstance>(
    entry: &ModelEntry,
    max_bytes: usize,
    bytes: Bytes,
    want: Want,
) -> Result<Found<T>, Bytes> {
    if bytes.len() > max_bytes {
        return Err(bytes);
    }
    match want {
        Want::Bytes if entry.shape.accepts::<T>(&bytes) => Ok(Found::Bytes(bytes)),
        Want::Bytes => Err(bytes),
        Want::Instances => match T::decode(&bytes) {
            Ok(instance) => Ok(Found::Instance(instance)),
            Err(_) => Err(bytes),
        },
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

/// Where a read's fill goes: a model's entries, under one lease.
struct FillTo<'a> {
    entry: &'a ModelEntry,
    config: &'a Config,
    counters: &'a Counters,
    lease: &'a Bytes,
    ttl: Duration,
}

impl FillTo<'_> {
    /// Adds the fill of `key` with `bytes` (a loaded row's representation)
    /// where the lease still holds; or, if `bytes` is too large to cache
    /// (served, not cached), the lease's release.
    fn push(&self, fill: &mut Fill, key: String, bytes: Bytes) {
        self.entry.shape.learn_from(&bytes);
        if bytes.len() > self.config.max_entry_bytes {
            super::too_large(self.counters, self.config, fill.model, bytes.len());
            fill.push(release(self.config, key, self.lease), false);
        } else {
            let op = CompareAndSet {
                key,
                expected: self.lease.clone(),
                value: bytes,
                ttl: self.ttl,
            };
            fill.push(op, true);
        }
    }
}

/// The release of `key`'s `lease`: a tombstone where it still holds.
fn release(config: &Config, key: String, lease: &Bytes) -> CompareAndSet {
    CompareAndSet {
        key,
        expected: lease.clone(),
        value: Bytes::from_static(TOMBSTONE),
        ttl: config.tombstone_ttl,
    }
}

/// Encodes the `copies` of rows a read returned into its `fill`, in the
/// fill's task (`fills.rs`, "Encoded by the fill's task"). A row that does
/// not encode is not cached: the read that served it has returned, so its
/// lease is released and the error logged.
fn encode_copies<T: CachedInstance>(
    inner: &Inner,
    fill: &mut Fill,
    copies: Vec<(String, T)>,
    lease: &Bytes,
) {
    // The read found its model registered, and registries never shrink.
    let Ok(entry) = inner.registry.entry::<T>() else {
        return;
    };
    let config = &inner.config;
    let to = FillTo {
        entry,
        config,
        counters: &inner.counters,
        lease,
        ttl: config.ttl_of(&entry.schema),
    };
    let mut encoder = Encoder::default();
    for (key, row) in copies {
        match encoder.encode(&row) {
            Ok(bytes) => to.push(fill, key, bytes),
            Err(error) => {
                unencodable(T::MODEL, &error);
                fill.push(release(config, key, lease), false);
            }
        }
    }
}

/// A loaded row whose representation cannot be written (a non-finite
/// float): served as an instance, not cached, whoever encodes it.
fn unencodable(model: &'static str, error: &crate::error::EncodeError) {
    tracing::warn!(
        target: "cached_instances",
        model,
        %error,
        "a loaded row does not encode: served, not cached"
    );
}

/// Backoff between polls of a key another reader is loading.
const FIRST_POLL: Duration = Duration::from_millis(1);
const MAX_POLL: Duration = Duration::from_millis(50);

/// The read path: hits, leases, fills, lease waits and direct loads.
#[derive(Clone, Copy)]
pub(super) struct Reader<'a> {
    pub(super) gate: Gate<'a>,
    pub(super) registry: &'a Registry,
    pub(super) counters: &'a Counters,
    pub(super) config: &'a Config,
    pub(super) loading: Loading<'a>,
    pub(super) fills: &'a Fills,
}

/// The pks of one read, in the caller's order, and the form it wants.
struct Rows<'r, T: CachedInstance> {
    entry: &'r ModelEntry,
    pks: &'r [T::Pk],
    want: Want,
}

// Not derived: a derive would require `T: Clone`.
impl<T: CachedInstance> Clone for Rows<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: CachedInstance> Copy for Rows<'_, T> {}

/// A read that went to the store: its rows and their keys, index for index.
struct Batch<'r, T: CachedInstance> {
    rows: Rows<'r, T>,
    keys: &'r [String],
}

/// What a multi-get found missing: the indexes to lease and load, and the
/// keys among them holding bytes that are not an entry (to be replaced).
/// Without a multi-get (`read: false`, a lease-first read, `cold.rs`),
/// every index, hits included: the lease yields what they hold.
struct Misses {
    indexes: Vec<usize>,
    corrupt: Vec<String>,
    read: bool,
    lease: LeaseBy,
}

/// What the lease step did, and left to do besides the load: keys other
/// readers hold leases on (waited for), keys to read directly, keys
/// holding bytes a lease-first read cannot serve (read again as after a
/// multi-get), or a store that failed (every miss read directly).
#[derive(Default)]
struct AfterLease {
    /// The lease step began, and ran to its end.
    started: bool,
    done: bool,
    failed: bool,
    /// The whole batch was absent and leased in one command (`cold.rs`).
    all_at_once: bool,
    /// A lease-first read's keys found holding an entry.
    hits: usize,
    /// Keys other readers hold leases on, with the lease each holds.
    waiting: Vec<(usize, Bytes)>,
    direct: Vec<usize>,
    refused: Vec<usize>,
}

/// How a read's misses are leased (`cold.rs`).
enum LeaseBy {
    /// Key by key ([`Store::set_if_absent_or`](crate::Store::set_if_absent_or)),
    /// tombstones replaced.
    EachKey,
    /// With the cheap lease of absent keys first
    /// ([`Store::set_if_absent`](crate::Store::set_if_absent)), then key
    /// by key where it set none: the multi-get read every miss absent, or
    /// the model's last batch was all absent.
    AllFirst,
}

impl Reader<'_> {
    fn max_bytes(&self) -> usize {
        self.config.max_entry_bytes
    }

    /// One pk: a hit is one read and nothing else; a miss goes on from the
    /// value that read found, so a cold read is read, lease, fill.
    ///
    /// The read is the store's in-process one
    /// ([`Store::get_in_process`](crate::store::Store::get_in_process): the
    /// `MemoryStore`'s map, a `RedisStore`'s near tier) when it answers,
    /// else a GET. It is tried only while all is well (one load of the
    /// health word): in degraded mode, or with caching off, reads take the
    /// GET path below exactly as before, so that a store that failed is
    /// probed by a real call and a queued invalidation is never read past.
    ///
    /// The hit path is kept short: the registry lookup is one probe by
    /// `TypeId`, the key is written into a per-thread buffer (an in-process
    /// read allocates nothing), the hit counter is a per-thread stripe; the
    /// miss path is boxed, so that a hit does not carry its state.
    pub(super) async fn one<T: CachedInstance>(
        &self,
        pk: &T::Pk,
        want: Want,
    ) -> Result<Found<T>, Error> {
        let entry = self.registry.entry::<T>()?;
        let probed = if self.gate.degraded.all_clear() {
            entry.with_key_of(pk, |key| self.gate.store.get_in_process(key))
        } else {
            InProcess::Unknown
        };
        // What the key holds, as a GET would have read it, when the hit
        // test refused it: the miss path goes on from it (and from the key,
        // if the GET path made it).
        let (value, key) = match probed {
            InProcess::Holds(bytes) => match self.hit::<T>(entry, bytes, want) {
                Ok(found) => return Ok(found),
                Err(bytes) => (Some(bytes), None),
            },
            InProcess::Absent => (None, None),
            InProcess::Unknown => {
                if !self.gate.readable() {
                    // Caching is off or the store is failing: `many` loads
                    // directly.
                    return self.direct::<T>(pk, want).await;
                }
                let key = entry.key_of(pk);
                let Some(value) = self
                    .gate
                    .call(Some(T::MODEL), StoreOp::Get, self.gate.store.get(&key))
                    .await
                else {
                    return self.direct::<T>(pk, want).await;
                };
                match value {
                    Some(bytes) => match self.hit::<T>(entry, bytes, want) {
                        Ok(found) => return Ok(found),
                        Err(bytes) => (Some(bytes), Some(key)),
                    },
                    None => (None, Some(key)),
                }
            }
        };
        let rows = Rows {
            entry,
            pks: std::slice::from_ref(pk),
            want,
        };
        let key = key.unwrap_or_else(|| entry.key_of(pk));
        let keys = [key];
        let mut out = Box::pin(self.resolve(rows, &keys, vec![value])).await?;
        Ok(out.pop().unwrap_or(Found::Missing))
    }

    /// A hit: `bytes` are an entry the caller may be served (counted), or
    /// handed back for the miss path. Moved in and handed back, so that a
    /// hit neither clones nor promotes the reply's buffer.
    fn hit<T: CachedInstance>(
        &self,
        entry: &ModelEntry,
        bytes: Bytes,
        want: Want,
    ) -> Result<Found<T>, Bytes> {
        if !matches!(marker::classify(&bytes), Slot::Value(_)) {
            return Err(bytes);
        }
        let found = accept::<T>(entry, self.max_bytes(), bytes, want)?;
        add(&self.counters.hits, 1);
        Ok(found)
    }

    /// One pk when the store is not to be read (or just failed): `many`
    /// decides again and loads directly.
    async fn direct<T: CachedInstance>(&self, pk: &T::Pk, want: Want) -> Result<Found<T>, Error> {
        let mut out = Box::pin(self.many::<T>(std::slice::from_ref(pk), want)).await?;
        Ok(out.pop().unwrap_or(Found::Missing))
    }

    /// Reads `pks` in order; rows that do not exist come back empty.
    pub(super) async fn many<T: CachedInstance>(
        &self,
        pks: &[T::Pk],
        want: Want,
    ) -> Result<Vec<Found<T>>, Error> {
        let entry = self.registry.entry::<T>()?;
        let keys: Vec<String> = pks.iter().map(|pk| entry.key_of(pk)).collect();
        self.many_read(pks, &keys, Vec::new(), want).await
    }

    /// [`many`](Self::many) with the keys of `pks` made, and what the
    /// store returned for some of them already read: `read[i]` for
    /// `keys[i]`, if it was read (a list's guessed page, `prefetch.rs`);
    /// `read` is empty when none was. The others are read with one
    /// multi-get (or, when none was read and the model's batch reads are
    /// cold, leased straight away: `cold.rs`); then everything goes on as
    /// after a multi-get of them all. When the store is not to be read (a
    /// call beside this read just failed), every row is loaded.
    pub(super) async fn many_read<T: CachedInstance>(
        &self,
        pks: &[T::Pk],
        keys: &[String],
        read: Vec<Option<Option<Bytes>>>,
        want: Want,
    ) -> Result<Vec<Found<T>>, Error> {
        let entry = self.registry.entry::<T>()?;
        if pks.is_empty() {
            return Ok(Vec::new());
        }
        let rows = Rows { entry, pks, want };
        if !self.gate.readable() {
            return self.load_all(rows).await;
        }
        if read.is_empty() && pks.len() > 1 {
            match entry.cold.start() {
                Start::Read => {}
                Start::LeaseAll => return self.lease_first(rows, keys, LeaseBy::AllFirst).await,
                Start::LeaseEach => return self.lease_first(rows, keys, LeaseBy::EachKey).await,
            }
        }
        let mut values = if read.is_empty() {
            vec![None; keys.len()]
        } else {
            read
        };
        let unread: Vec<usize> = (0..keys.len()).filter(|&i| values[i].is_none()).collect();
        if !unread.is_empty() {
            let to_read = keys_at(keys, &unread);
            let Some(found) = self
                .gate
                .call(
                    Some(T::MODEL),
                    StoreOp::Get,
                    self.gate.store.get_many(&to_read),
                )
                .await
            else {
                return self.load_all(rows).await;
            };
            for (i, value) in unread.into_iter().zip(found) {
                values[i] = Some(value);
            }
        }
        let values = values.into_iter().map(Option::flatten).collect();
        self.resolve(rows, keys, values).await
    }

    /// A batch read that starts with a lease, without a multi-get
    /// (`cold.rs`): every index is a miss to lease, and the lease yields
    /// what the others hold. `lease` says which lease first: all the keys
    /// at once (then key by key where that set none), or key by key.
    async fn lease_first<T: CachedInstance>(
        &self,
        rows: Rows<'_, T>,
        keys: &[String],
        lease: LeaseBy,
    ) -> Result<Vec<Found<T>>, Error> {
        let mut out: Vec<Found<T>> = rows.pks.iter().map(|_| Found::Missing).collect();
        let misses = Misses {
            indexes: (0..rows.pks.len()).collect(),
            corrupt: Vec::new(),
            read: false,
            lease,
        };
        let batch = Batch { rows, keys };
        self.fill_misses(&batch, misses, &mut out).await?;
        Ok(out)
    }

    /// Every row of `rows` from the loader, the store left alone (it is not
    /// to be read, or just failed).
    async fn load_all<T: CachedInstance>(&self, rows: Rows<'_, T>) -> Result<Vec<Found<T>>, Error> {
        let mut out: Vec<Found<T>> = rows.pks.iter().map(|_| Found::Missing).collect();
        let all: Vec<usize> = (0..rows.pks.len()).collect();
        self.load_direct(rows, &all, &mut out).await?;
        Ok(out)
    }

    /// Sorts what the store returned for `keys` into hits and misses, and
    /// fills the misses.
    async fn resolve<T: CachedInstance>(
        &self,
        rows: Rows<'_, T>,
        keys: &[String],
        values: Vec<Option<Bytes>>,
    ) -> Result<Vec<Found<T>>, Error> {
        let Rows { entry, pks, want } = rows;
        let mut out: Vec<Found<T>> = pks.iter().map(|_| Found::Missing).collect();
        let mut misses = Misses {
            indexes: Vec::new(),
            corrupt: Vec::new(),
            read: true,
            lease: LeaseBy::EachKey,
        };
        let mut absent = 0;
        for (i, value) in values.into_iter().enumerate() {
            let Some(bytes) = value else {
                misses.indexes.push(i);
                absent += 1;
                continue;
            };
            match marker::classify(&bytes) {
                Slot::Value(_) => {}
                Slot::Foreign => {
                    misses.corrupt.push(keys[i].clone());
                    misses.indexes.push(i);
                    continue;
                }
                Slot::Lease | Slot::Tombstone => {
                    misses.indexes.push(i);
                    continue;
                }
            }
            if let Ok(found) = accept::<T>(entry, self.max_bytes(), bytes, want) {
                out[i] = found;
            } else {
                misses.corrupt.push(keys[i].clone());
                misses.indexes.push(i);
            }
        }
        let missed = misses.indexes.len();
        if missed > 1 && absent == missed {
            misses.lease = LeaseBy::AllFirst;
        }
        add(&self.counters.hits, pks.len() - missed);
        if pks.len() > 1 {
            entry.cold.record(pks.len(), missed);
        }
        tracing::debug!(
            target: "cached_instances",
            model = T::MODEL,
            requested = pks.len(),
            hits = pks.len() - missed,
            misses = missed,
            "read"
        );
        if missed > 0 {
            let batch = Batch { rows, keys };
            self.fill_misses(&batch, misses, &mut out).await?;
        }
        Ok(out)
    }

    /// Leases the missing keys, loads the granted ones with one loader call,
    /// fills them if the lease still holds, and waits for the keys other
    /// readers are loading.
    async fn fill_misses<T: CachedInstance>(
        &self,
        batch: &Batch<'_, T>,
        misses: Misses,
        out: &mut [Found<T>],
    ) -> Result<(), Error> {
        let Batch { rows, keys } = *batch;
        let Misses {
            indexes,
            corrupt,
            read,
            lease: lease_by,
        } = misses;
        let config = self.config;
        if read {
            add(&self.counters.misses, indexes.len());
        }

        if !corrupt.is_empty() {
            self.replace_corrupt::<T>(&corrupt).await;
        }

        // A pk asked for twice is leased and loaded once: `copies` holds
        // each later index with the first of its key.
        let mut unique: Vec<usize> = Vec::with_capacity(indexes.len());
        let mut copies: Vec<(usize, usize)> = Vec::new();
        if indexes.len() > 1 {
            let mut first_of: HashMap<&str, usize, FastHash> =
                HashMap::with_capacity_and_hasher(indexes.len(), FastHash::default());
            for &i in &indexes {
                match first_of.entry(keys[i].as_str()) {
                    Entry::Occupied(first) => copies.push((i, *first.get())),
                    Entry::Vacant(slot) => {
                        slot.insert(i);
                        unique.push(i);
                    }
                }
            }
        } else {
            unique.clone_from(&indexes);
        }
        // Every key of the batch, once and in order (a cold batch): leased
        // as it is.
        let lease_keys = keys_at(keys, &unique);
        let lease = marker::new_lease_for(config.lease_ttl);
        // Registered before any key holds it: a reader of this process that
        // finds it waits for its hand-over (`fills.rs`).
        let local = self.fills.hold_locally(&lease);
        // The keys leased, filled from the loaded rows (or released); the
        // lease step below sets them before the load reads the database.
        let mut held = Held::new(self.fills, keys, Vec::new(), &lease, config.tombstone_ttl);
        let mut after = AfterLease::default();
        // The lease step yields the pks to load once their leases are
        // taken: the loader gets ready meanwhile (`Loader::load_after`).
        let leased = async {
            after.started = true;
            let Some(outcomes) = self
                .lease::<T>(&lease_keys, &lease, matches!(lease_by, LeaseBy::AllFirst))
                .await
            else {
                after.failed = true;
                after.done = true;
                return Vec::new();
            };
            let all_at_once = matches!(lease_by, LeaseBy::AllFirst)
                && indexes.len() == rows.pks.len()
                && outcomes.iter().all(|(at_once, _)| *at_once);
            let outcomes = outcomes.into_iter().map(|(_, held)| held);
            // Leases past their deadline: their reader died before its
            // fill (`marker::new_lease_for`); replaced as tombstones are.
            let mut expired: Vec<(usize, Bytes)> = Vec::new();
            for (&i, outcome) in unique.iter().zip(outcomes) {
                match outcome {
                    None => held.indexes.push(i),
                    Some(bytes) => match marker::classify(&bytes) {
                        Slot::Lease if marker::lease_expired(&bytes) => expired.push((i, bytes)),
                        Slot::Lease => after.waiting.push((i, bytes)),
                        // A hit (lease-first), or filled since our multi-get.
                        Slot::Value(_) => {
                            match accept::<T>(rows.entry, self.max_bytes(), bytes, rows.want) {
                                Ok(found) => out[i] = found,
                                Err(_) if read => after.direct.push(i),
                                Err(_) => after.refused.push(i),
                            }
                        }
                        Slot::Foreign if read => after.direct.push(i),
                        Slot::Foreign => after.refused.push(i),
                        Slot::Tombstone => after.direct.push(i),
                    },
                }
            }
            after.all_at_once = all_at_once;
            if !read {
                // Copies of a duplicated pk count like their first.
                after.hits = unique.iter().filter(|&&i| out[i].is_found()).count()
                    + copies
                        .iter()
                        .filter(|&&(_, first)| out[first].is_found())
                        .count();
            }
            if !expired.is_empty() {
                let (replaced, other) = self.replace_expired::<T>(keys, expired, &lease).await;
                held.indexes.extend(replaced);
                after.direct.extend(other);
            }
            after.done = true;
            held.indexes.iter().map(|&i| rows.pks[i].clone()).collect()
        };
        let loaded = rows.entry.load_after::<T>(self.loading, leased).await;
        let AfterLease {
            started,
            done,
            failed,
            all_at_once,
            hits,
            waiting,
            mut direct,
            refused,
        } = after;
        if failed || !done {
            // The store failed; or the loader returned without waiting
            // for its pks (it failed getting ready, say), and whatever the
            // lease step had leased is released (`held`, dropped armed,
            // replaces this read's lease where a key still holds it). The
            // rows are read directly.
            if started && !done {
                held.indexes.clone_from(&unique);
            }
            drop(held);
            drop(local);
            if !read {
                self.count_lease_first(rows.entry, indexes.len(), 0, 0);
            }
            self.load_direct(rows, &indexes, out).await?;
            return Ok(());
        }
        if !read {
            self.count_lease_first(rows.entry, indexes.len(), hits, refused.len());
        }
        if all_at_once {
            // The whole batch was absent and leased in one command: the
            // next batch read of the model starts with that (`cold.rs`).
            rows.entry.cold.leased_all();
        }
        if held.indexes.is_empty() {
            drop(local);
        } else {
            // `local` goes with the fill, dropped once it is handed over.
            self.fill_loaded(batch, &mut held, local, loaded, out)
                .await?;
        }
        if !read && !refused.is_empty() {
            let misses = Misses {
                corrupt: refused.iter().map(|&i| keys[i].clone()).collect(),
                indexes: refused,
                read: true,
                lease: LeaseBy::EachKey,
            };
            Box::pin(self.fill_misses(batch, misses, out)).await?;
        }
        if !waiting.is_empty() {
            direct.extend(self.wait_for_leases(batch, &waiting, out).await);
        }
        if !direct.is_empty() {
            self.load_direct(rows, &direct, out).await?;
        }

        // Copies of a duplicated pk share the first one's result.
        for (i, first) in copies {
            if let Some(bytes) = out[first].to_bytes() {
                out[i] = share::<T>(bytes, rows.want).unwrap_or(Found::Missing);
            }
        }
        Ok(())
    }

    /// A lease-first read's accounting, once its lease replied: the `hits`
    /// of its `requested` keys found holding an entry, the rest missed
    /// (which decides the next batch's mode, `cold.rs`). The `refused`
    /// keys, holding bytes it cannot serve, are counted as misses by the
    /// multi-get path they take next.
    fn count_lease_first(&self, entry: &ModelEntry, requested: usize, hits: usize, refused: usize) {
        add(&self.counters.hits, hits);
        add(&self.counters.misses, requested - hits - refused);
        entry.cold.record(requested, requested - hits);
        tracing::debug!(
            target: "cached_instances",
            model = entry.schema.model,
            requested,
            hits,
            misses = requested - hits,
            "read (lease first)"
        );
    }

    /// Leases `keys` with `lease`: first all the absent ones in one command
    /// (with `at_once`; `Store::set_if_absent`), then key by key where that
    /// set none (`Store::set_if_absent_or`, tombstones replaced). Yields,
    /// per key, whether it was leased at once, and what it holds if it was
    /// not leased; `None` if a call failed (what it leased is released).
    async fn lease<T: CachedInstance>(
        &self,
        keys: &[String],
        lease: &Bytes,
        at_once: bool,
    ) -> Option<Vec<(bool, Option<Bytes>)>> {
        let store = self.gate.store;
        let ttl = self.config.lease_ttl;
        let set = if at_once {
            self.gate
                .call(
                    Some(T::MODEL),
                    StoreOp::Lease,
                    store.set_if_absent(keys, lease, ttl),
                )
                .await?
        } else {
            vec![false; keys.len()]
        };
        let rest: Vec<usize> = (0..keys.len()).filter(|&j| !set[j]).collect();
        let mut out: Vec<(bool, Option<Bytes>)> = set.iter().map(|&s| (s, None)).collect();
        if rest.is_empty() {
            return Some(out);
        }
        let rest_keys: Vec<String>;
        let rest_keys = if rest.len() == keys.len() {
            keys
        } else {
            rest_keys = rest.iter().map(|&j| keys[j].clone()).collect();
            &rest_keys
        };
        let held = self
            .gate
            .call(
                Some(T::MODEL),
                StoreOp::Lease,
                store.set_if_absent_or(rest_keys, lease, TOMBSTONE, ttl),
            )
            .await;
        let Some(held) = held else {
            // Not to be left leased while the read loads directly.
            let leased: Vec<usize> = (0..keys.len()).filter(|&j| set[j]).collect();
            drop(Held::new(
                self.fills,
                keys,
                leased,
                lease,
                self.config.tombstone_ttl,
            ));
            return None;
        };
        for (j, held) in rest.into_iter().zip(held) {
            out[j].1 = held;
        }
        Some(out)
    }

    /// Leases the keys at `expired` that still hold the expired lease found
    /// there, as the lease step does a tombstone: yields the indexes leased,
    /// then the others (changed since: read directly). One call per distinct
    /// lease (a dead reader's batch had one): rare, so not concurrent.
    async fn replace_expired<T: CachedInstance>(
        &self,
        keys: &[String],
        expired: Vec<(usize, Bytes)>,
        lease: &Bytes,
    ) -> (Vec<usize>, Vec<usize>) {
        let mut by_lease: HashMap<Bytes, Vec<usize>> = HashMap::new();
        for (i, held) in expired {
            by_lease.entry(held).or_default().push(i);
        }
        let ttl = self.config.lease_ttl;
        let mut replaced = Vec::new();
        let mut other = Vec::new();
        for (held, indexes) in by_lease {
            let lease_keys: Vec<String> = indexes.iter().map(|&i| keys[i].clone()).collect();
            let outcomes = self
                .gate
                .call(
                    Some(T::MODEL),
                    StoreOp::Lease,
                    self.gate
                        .store
                        .set_if_absent_or(&lease_keys, lease, &held, ttl),
                )
                .await;
            let Some(outcomes) = outcomes else {
                other.extend(indexes);
                continue;
            };
            for (i, outcome) in indexes.into_iter().zip(outcomes) {
                if outcome.is_none() {
                    replaced.push(i);
                } else {
                    other.push(i);
                }
            }
        }
        (replaced, other)
    }

    /// Replaces bytes found under `keys` that are not a servable entry
    /// with a tombstone: they are not leasable until then.
    async fn replace_corrupt<T: CachedInstance>(&self, keys: &[String]) {
        add(&self.counters.corrupt_entries, keys.len());
        tracing::warn!(
            target: "cached_instances",
            model = T::MODEL,
            count = keys.len(),
            "undecodable cached entries replaced"
        );
        self.gate
            .call(
                Some(T::MODEL),
                StoreOp::Replace,
                self.gate
                    .store
                    .swap_many(keys, TOMBSTONE, self.config.tombstone_ttl),
            )
            .await;
    }

    /// Fills each key we hold a lease on from the rows `loaded` for them,
    /// where the lease still holds, and releases the ones whose row does
    /// not exist. The fill is handed to the store, and its reply recorded
    /// off the read (`fills.rs`); instances with copies are encoded into it
    /// by a task, which hands it over ("Encoded by the fill's task").
    /// `local` is dropped once it is handed over. A row that does not
    /// encode is served as an instance and not cached, and fails a read of
    /// JSON; a failed load's release is waited for. Leases it never got to
    /// (that failed read) `held` releases when dropped.
    async fn fill_loaded<T: CachedInstance>(
        &self,
        batch: &Batch<'_, T>,
        held: &mut Held<'_>,
        local: LocalLease,
        loaded: Result<Vec<T>, Error>,
        out: &mut [Found<T>],
    ) -> Result<(), Error> {
        let Batch {
            rows: Rows { entry, pks, want },
            keys,
        } = *batch;
        let (indexes, lease) = (&held.indexes[..], held.lease);
        let config = self.config;
        let release = |i: usize| release(config, keys[i].clone(), lease);
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(error) => {
                // A failed or timed-out load: release the leases, so that
                // waiting readers try the database themselves at once and
                // the next read loads again.
                let ops: Vec<CompareAndSet> = indexes.iter().map(|&i| release(i)).collect();
                self.gate
                    .call(
                        Some(T::MODEL),
                        StoreOp::Release,
                        self.gate.store.compare_and_set(&ops),
                    )
                    .await;
                held.handed_over();
                return Err(error);
            }
        };

        let mut by_pk = ByPk::new(loaded);
        let mut encoder = Encoder::default();
        let ttl = config.ttl_of(&entry.schema);
        let to = FillTo {
            entry,
            config,
            counters: self.counters,
            lease,
            ttl,
        };
        let mut fill = Fill {
            model: T::MODEL,
            ops: Vec::with_capacity(indexes.len()),
            filled: Vec::with_capacity(indexes.len()),
        };
        // Rows the caller gets as instances are encoded by the fill's task
        // where the model has copies (`fills.rs`, "Encoded by the fill's
        // task"): each with its key.
        let runtime = match want {
            Want::Instances => tokio::runtime::Handle::try_current().ok(),
            Want::Bytes => None,
        };
        let mut copies: Vec<(String, T)> = Vec::new();
        for &i in indexes {
            let Some(row) = by_pk.take(&pks[i]) else {
                fill.push(release(i), false);
                continue;
            };
            if runtime.is_some()
                && let Some(copy) = row.__copy_for_fill()
            {
                copies.push((keys[i].clone(), copy));
                out[i] = Found::Instance(row);
                continue;
            }
            let bytes = match encoder.encode(&row) {
                Ok(bytes) => bytes,
                // As in the fill's task (`encode_copies`): an instance is
                // served whether or not its model is `Clone`.
                Err(error) if want == Want::Instances => {
                    unencodable(T::MODEL, &error);
                    fill.push(release(i), false);
                    out[i] = Found::Instance(row);
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            // The caller's copy, if it wants bytes; an instance is served
            // as loaded, and the entry moves to the fill.
            let served = (want == Want::Bytes).then(|| bytes.clone());
            to.push(&mut fill, keys[i].clone(), bytes);
            out[i] = Found::from_row(entry, row, served, want)?;
        }
        match runtime {
            Some(runtime) if !copies.is_empty() => {
                let lease = lease.clone();
                let rows = Unencoded(Box::new(move |inner: &Inner, fill: &mut Fill| {
                    encode_copies(inner, fill, copies, &lease);
                }));
                self.fills.send_unencoded(&runtime, fill, rows, local);
            }
            _ => {
                // No copies (or nothing to do them on): all encoded above.
                self.fills.send(self.gate, self.counters, fill).await;
                drop(local);
            }
        }
        held.handed_over();
        Ok(())
    }

    /// Polls keys other readers hold leases on until they are filled or the
    /// wait runs out. Returns the indexes still unresolved.
    ///
    /// When every key waits on a lease a read of this cache holds, it
    /// sleeps until that read hands its fill over, not for a poll's pause
    /// (`fills.rs`). Otherwise, where the store watches keys
    /// ([`Store::watch`](crate::Store::watch): a near cache's pushes), it
    /// reads at once, then after each change it hears of, polling only if
    /// none comes within [`MAX_POLL`].
    async fn wait_for_leases<T: CachedInstance>(
        &self,
        batch: &Batch<'_, T>,
        waiting: &[(usize, Bytes)],
        out: &mut [Found<T>],
    ) -> Vec<usize> {
        let Batch {
            rows: Rows { entry, want, .. },
            keys,
        } = *batch;
        add(&self.counters.lease_waits, waiting.len());
        let deadline = Instant::now() + self.config.lease_wait;
        let mut pending: Vec<(usize, Bytes)> = waiting.to_vec();
        let mut unresolved = Vec::new();
        let mut pause = FIRST_POLL;
        // The store's watch of the keys, armed before the last read.
        let mut changed = None;
        let mut first = true;
        while !pending.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let poll_keys: Vec<String> = pending.iter().map(|(i, _)| keys[*i].clone()).collect();
            // Armed before this read is sent, so that a change the read
            // does not see completes it.
            let mut watch = None;
            if let Some(handed_over) = self
                .fills
                .handed_over(pending.iter().map(|(_, lease)| lease))
            {
                let _ = tokio::time::timeout(deadline - now, handed_over.wait()).await;
            } else if let Some(change) = changed.take() {
                let _ = tokio::time::timeout(MAX_POLL.min(deadline - now), change).await;
            } else {
                // A first read that the store watches goes at once: the
                // lease was seen by a lease command, which the store does
                // not watch; this read has it tell of the next change.
                if first {
                    watch = self.gate.store.watch(&poll_keys);
                }
                if watch.is_none() {
                    tokio::time::sleep(pause.min(deadline - now)).await;
                    pause = (pause * 2).min(MAX_POLL);
                }
            }
            first = false;
            changed = watch.or_else(|| self.gate.store.watch(&poll_keys));
            let Some(values) = self
                .gate
                .call(
                    Some(T::MODEL),
                    StoreOp::Get,
                    self.gate.store.get_many(&poll_keys),
                )
                .await
            else {
                break;
            };
            let mut still = Vec::new();
            for ((i, _), value) in pending.into_iter().zip(values) {
                match value {
                    Some(bytes) => match marker::classify(&bytes) {
                        // Its reader died: read it directly.
                        Slot::Lease if marker::lease_expired(&bytes) => unresolved.push(i),
                        Slot::Lease => still.push((i, bytes)),
                        Slot::Value(_) => match accept::<T>(entry, self.max_bytes(), bytes, want) {
                            Ok(found) => out[i] = found,
                            Err(_) => unresolved.push(i),
                        },
                        // Released (no such row) or invalidated: read it directly.
                        Slot::Tombstone | Slot::Foreign => unresolved.push(i),
                    },
                    None => unresolved.push(i),
                }
            }
            pending = still;
        }
        unresolved.extend(pending.into_iter().map(|(i, _)| i));
        unresolved
    }

    /// Reads rows straight from the loader without touching the store: for
    /// a store that failed, a wait that ran out, or caching switched off.
    async fn load_direct<T: CachedInstance>(
        &self,
        rows: Rows<'_, T>,
        indexes: &[usize],
        out: &mut [Found<T>],
    ) -> Result<(), Error> {
        let Rows { entry, pks, want } = rows;
        let load_pks: Vec<T::Pk> = indexes.iter().map(|&i| pks[i].clone()).collect();
        // Bounds what bypasses the store at once; the semaphore is never
        // closed, so acquiring cannot fail.
        let _permit = self.gate.degraded.direct_loads.acquire().await.ok();
        let loaded = entry.load::<T>(self.loading, &load_pks).await?;
        let mut by_pk = ByPk::new(loaded);
        for &i in indexes {
            if out[i].is_found() {
                continue;
            }
            if let Some(row) = by_pk.take(&pks[i]) {
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

/// The keys at `at` (distinct indexes in ascending order): `keys` itself,
/// borrowed, when that is all of them (a batch that missed every key).
fn keys_at<'k>(keys: &'k [String], at: &[usize]) -> Cow<'k, [String]> {
    if at.len() == keys.len() {
        Cow::Borrowed(keys)
    } else {
        Cow::Owned(at.iter().map(|&i| keys[i].clone()).collect())
    }
}

/// The hasher of a read's own short-lived maps: foldhash (hashbrown's
/// default), several times cheaper than SipHash on keys and pks. Their
/// entries are one batch's, so the worst case an attacker could pick is
/// bounded by the batch.
type FastHash = foldhash::fast::RandomState;

/// A load's rows, taken by pk: in the order the loader returned them while
/// that is the order asked for (a loader that keeps its input's order, or
/// a database returning ascending pks asked in ascending order), with no
/// hashing; through a map of the rest from the first row out of order.
struct ByPk<T: CachedInstance> {
    in_order: std::vec::IntoIter<T>,
    rest: HashMap<T::Pk, T, FastHash>,
}

impl<T: CachedInstance> ByPk<T> {
    fn new(rows: Vec<T>) -> Self {
        ByPk {
            in_order: rows.into_iter(),
            rest: HashMap::default(),
        }
    }

    /// The row of `pk`, once; `None` if the loader returned none (or it
    /// was taken already).
    fn take(&mut self, pk: &T::Pk) -> Option<T> {
        if self.rest.is_empty() {
            match self.in_order.next() {
                Some(row) if row.pk() == pk => return Some(row),
                Some(row) => {
                    self.rest.reserve(self.in_order.len() + 1);
                    self.rest.insert(row.pk().clone(), row);
                    let rest = self.in_order.by_ref().map(|row| (row.pk().clone(), row));
                    self.rest.extend(rest);
                }
                None => return None,
            }
        }
        self.rest.remove(pk)
    }
}
