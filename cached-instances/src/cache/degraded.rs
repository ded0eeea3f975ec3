//! Degraded mode: the circuit that skips a failing store for
//! `store_retry_interval`, the bound on direct loads, the queue of
//! invalidations the store could not take, and the events (see "Store
//! outages" in the protocol, `cache/mod.rs`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, broadcast};
use tokio::time::Instant;

use crate::error::StoreError;
use crate::error::StoreOp;

/// Something the cache noticed, for monitoring. Subscribe with
/// [`Cache::events`](crate::Cache::events).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A store operation failed; the cache serves from the loaders until the
    /// store answers again.
    StoreUnavailable {
        /// The model involved; `None` for an operation over several models
        /// (a cascade level, a delivery of queued invalidations).
        model: Option<&'static str>,
        /// The store operation.
        op: StoreOp,
        /// The error.
        error: Arc<StoreError>,
    },
    /// The store answered again after an outage.
    StoreRecovered,
    /// Invalidations (or query-index updates) that could not be delivered
    /// were queued for retry.
    InvalidationsQueued {
        /// How many keys (and index updates) are now waiting.
        pending: usize,
    },
    /// Queued invalidations (or query-index updates) were delivered.
    InvalidationsDelivered {
        /// How many keys (and index updates).
        count: usize,
    },
}

/// An invalidation waiting for the store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PendingOp {
    /// An instance (every version) whose write or cascade could not reach
    /// the store: delivered as a cascade level, so that what it still holds
    /// is compared with the database and its changed relations follow.
    Instance { model: &'static str, pk_key: String },
    /// An instance key that only gets a tombstone (`delete_all_versions`).
    Tombstone(String),
    /// A raw key: gets deleted.
    Delete(String),
    /// A write's query-index update that could not reach the store: the
    /// index record of `pk_key` in the index of `model`'s registered
    /// `version` (each version has its own index). Delivered after the
    /// instances, as the write would have done it: leased, reloaded and
    /// applied if the lease holds, so the model stays warmed; if that fails
    /// too, the model's warm mark is deleted instead (a `Delete`, queued
    /// when the store is what failed). See `cache/index.rs`.
    Reindex {
        model: &'static str,
        version: &'static str,
        pk_key: String,
    },
}

/// Bits of [`Degraded::health`]: every read checks them with one load.
const DOWN: u8 = 1;
/// Set while invalidations are queued *or being delivered*: the keys a
/// delivery is replacing still hold what they held before the writes, so
/// the store is not read until the delivery is done.
const PENDING: u8 = 2;
/// Caching switched off ([`Cache::set_enabled`](crate::Cache::set_enabled)).
const DISABLED: u8 = 4;

pub(crate) struct Degraded {
    retry_interval: Duration,
    /// When the store may be tried again; `None` while it is healthy.
    down_until: Mutex<Option<Instant>>,
    /// `DOWN | PENDING | DISABLED`: zero on the hit path, so that a read
    /// decides with one load of a word that only changes on an outage or a
    /// switch, never per request.
    health: AtomicU8,
    pending: Mutex<BTreeSet<PendingOp>>,
    pub(crate) direct_loads: Semaphore,
    events: broadcast::Sender<Event>,
}

impl Degraded {
    pub(crate) fn new(retry_interval: Duration, concurrency: usize, enabled: bool) -> Self {
        Degraded {
            retry_interval,
            down_until: Mutex::new(None),
            health: AtomicU8::new(if enabled { 0 } else { DISABLED }),
            pending: Mutex::new(BTreeSet::new()),
            direct_loads: Semaphore::new(concurrency.max(1)),
            events: broadcast::channel(64).0,
        }
    }

    fn is(&self, bit: u8) -> bool {
        self.health.load(Ordering::Acquire) & bit != 0
    }

    fn set(&self, bit: u8, on: bool) {
        if on {
            self.health.fetch_or(bit, Ordering::AcqRel);
        } else {
            self.health.fetch_and(!bit, Ordering::AcqRel);
        }
    }

    /// The hit path's check: caching is on, the store has not failed and
    /// nothing is queued. One load; `false` sends the caller to the slow
    /// checks ([`is_enabled`](Self::is_enabled), `has_pending`,
    /// [`skip_store`](Self::skip_store)).
    pub(crate) fn all_clear(&self) -> bool {
        self.health.load(Ordering::Acquire) == 0
    }

    pub(crate) fn is_enabled(&self) -> bool {
        !self.is(DISABLED)
    }

    pub(crate) fn set_enabled(&self, enabled: bool) {
        self.set(DISABLED, !enabled);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn emit(&self, event: Event) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    /// Whether the store should be skipped now. Past the retry time, one
    /// caller at a time gets to probe it.
    pub(crate) fn skip_store(&self) -> bool {
        if !self.is(DOWN) {
            return false;
        }
        let mut until = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                // Let this caller probe; others keep skipping meanwhile.
                *until = Some(Instant::now() + self.retry_interval);
                false
            }
            None => false,
        }
    }

    /// When the store may be tried again, while it is failing.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        if !self.is(DOWN) {
            return None;
        }
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn retry_interval(&self) -> Duration {
        self.retry_interval
    }

    pub(crate) fn failed(&self, model: Option<&'static str>, op: StoreOp, error: Arc<StoreError>) {
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + self.retry_interval);
        self.set(DOWN, true);
        self.emit(Event::StoreUnavailable { model, op, error });
    }

    pub(crate) fn succeeded(&self) {
        // Called on every store answer: a load first, so that a healthy
        // store costs no write to a cache line every thread shares.
        if self.is(DOWN) && self.health.fetch_and(!DOWN, Ordering::AcqRel) & DOWN != 0 {
            *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
            tracing::info!(target: "cached_instances", "store answers again");
            self.emit(Event::StoreRecovered);
        }
    }

    /// Queues `ops`; the caller wakes the recovery task (`Gate::queue`).
    pub(crate) fn queue(&self, ops: impl IntoIterator<Item = PendingOp>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.extend(ops);
        let n = pending.len();
        self.set(PENDING, n > 0);
        drop(pending);
        tracing::warn!(target: "cached_instances", pending = n, "invalidations queued for retry");
        self.emit(Event::InvalidationsQueued { pending: n });
    }

    pub(crate) fn has_pending(&self) -> bool {
        self.is(PENDING)
    }

    /// Takes the queue for delivery. `has_pending` stays set until
    /// [`settle`](Self::settle) finds the queue empty after the delivery.
    pub(crate) fn take_pending(&self) -> Vec<PendingOp> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *pending).into_iter().collect()
    }

    /// After a delivery: clears `has_pending` if nothing was queued again
    /// (a failed delivery, or writes made meanwhile). Returns whether the
    /// queue is empty.
    pub(crate) fn settle(&self) -> bool {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let empty = pending.is_empty();
        if empty {
            self.set(PENDING, false);
        }
        empty
    }

    pub(crate) fn delivered(&self, count: usize) {
        if count > 0 {
            tracing::info!(target: "cached_instances", count, "queued invalidations delivered");
            self.emit(Event::InvalidationsDelivered { count });
        }
    }
}
