//! Recovery: the background task that delivers queued invalidations (see
//! "Store outages" in the protocol, `cache/mod.rs`).
//!
//! It runs as redis-rs's `ConnectionManager` reconnects: spawned on the
//! Tokio runtime by the first call that queues work (a cache can be built
//! outside a runtime), woken through a [`Notify`], it waits for the store's
//! retry time, delivers, and sleeps again while anything is left. It holds
//! the cache only through a [`Weak`] between deliveries, so it ends when the
//! last [`Cache`] clone is dropped; a task dropped with its runtime is
//! spawned again by the next call that finds work queued. A read only
//! checks a flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::Notify;

use super::Inner;
use super::degraded::PendingOp;
use super::write::Invalidator;
use crate::error::StoreOp;

/// What the cache and its recovery task share: the task holds the cache
/// only through `cache`, a [`Weak`], so that it never keeps it alive.
pub(super) struct Recovery {
    cache: Weak<Inner>,
    signal: Arc<Signal>,
    /// Held by whoever delivers the queue: the task, or `warm`.
    delivering: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Signal {
    wake: Notify,
    /// Whether the task is alive (spawned and not yet ended or dropped).
    running: AtomicBool,
}

/// Clears `running` however the task ends, its runtime shutting down
/// included, so that the next queued work spawns it again.
struct Running(Arc<Signal>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

impl Recovery {
    pub(super) fn new(cache: Weak<Inner>) -> Self {
        Recovery {
            cache,
            signal: Arc::default(),
            delivering: tokio::sync::Mutex::default(),
        }
    }

    /// The cache is gone: the task, if it waits, wakes up and ends.
    pub(super) fn cache_dropped(&self) {
        self.signal.wake.notify_one();
    }

    /// Work was queued: wakes the task (spawning it if need be).
    pub(super) fn wake(&self) {
        self.ensure_running();
        self.signal.wake.notify_one();
    }

    /// Spawns the recovery task unless it is running. Outside a Tokio
    /// runtime nothing is spawned: the next call from inside one does it.
    pub(super) fn ensure_running(&self) {
        let signal = &self.signal;
        if signal.running.load(Ordering::Acquire) || signal.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            signal.running.store(false, Ordering::Release);
            return;
        };
        runtime.spawn(run(self.cache.clone(), signal.clone()));
    }

    /// Delivers what is queued now, in the caller's task. For `warm` only
    /// (never a read): an un-warm queued before it must not be delivered
    /// after it marked the index complete.
    pub(super) async fn deliver_queued(&self, writer: Invalidator<'_>) {
        if writer.gate.degraded.has_pending() {
            let _one = self.delivering.lock().await;
            deliver_pending(writer).await;
        }
    }
}

/// Delivers queued invalidations: how many were delivered, and whether
/// the queue is now empty (not after a failed delivery, or writes queued
/// meanwhile).
async fn deliver_pending(writer: Invalidator<'_>) -> (usize, bool) {
    let degraded = writer.gate.degraded;
    let ops = degraded.take_pending();
    let delivered = if ops.is_empty() {
        0
    } else {
        deliver(writer, ops).await
    };
    // Settled first: whoever sees the event finds the store usable.
    let settled = degraded.settle();
    degraded.delivered(delivered);
    (delivered, settled)
}

/// Delivers `ops` (anything that fails is queued again, except a failed
/// re-index, which un-warms its model instead: see `index.rs`) and returns
/// how many were delivered.
async fn deliver(writer: Invalidator<'_>, ops: Vec<PendingOp>) -> usize {
    let gate = writer.gate;
    let (mut instances, mut tombstones, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
    let mut reindexes = Vec::new();
    for op in ops {
        match op {
            PendingOp::Instance { model, pk_key } => instances.push((model, pk_key)),
            PendingOp::Tombstone(k) => tombstones.push(k),
            PendingOp::Delete(k) => deletes.push(k),
            PendingOp::Reindex {
                model,
                version,
                pk_key,
            } => reindexes.push((model, version, pk_key)),
        }
    }
    let store = gate.store;
    let mut delivered = 0;
    // Whether the store took everything so far: index updates are
    // only redone on a store that answers, since a re-index that
    // fails un-warms its model.
    let mut store_ok = true;
    if !tombstones.is_empty() {
        let ttl = writer.config.tombstone_ttl;
        let call = store.swap_many(&tombstones, crate::marker::TOMBSTONE, ttl);
        if gate.call(None, StoreOp::Invalidate, call).await.is_some() {
            delivered += tombstones.len();
        } else {
            store_ok = false;
            gate.queue(tombstones.into_iter().map(PendingOp::Tombstone));
        }
    }
    if !deletes.is_empty() {
        let call = store.delete_many(&deletes);
        if gate.call(None, StoreOp::Delete, call).await.is_some() {
            delivered += deletes.len();
        } else {
            store_ok = false;
            gate.queue(deletes.into_iter().map(PendingOp::Delete));
        }
    }
    if !instances.is_empty() {
        let count = instances.len();
        if writer.deliver_instances(instances).await {
            delivered += count;
        } else {
            store_ok = false;
        }
    }
    // After the instances: a query answered from the index right
    // after this delivery fetches entries already invalidated.
    if !reindexes.is_empty() {
        if store_ok {
            delivered += writer.indexes.deliver_reindexes(reindexes).await;
        } else {
            // Not tried: kept for the next delivery, as they were.
            gate.queue(
                reindexes
                    .into_iter()
                    .map(|(model, version, pk_key)| PendingOp::Reindex {
                        model,
                        version,
                        pk_key,
                    }),
            );
        }
    }
    delivered
}

/// The recovery task: waits for queued work, then for the store's retry
/// time, and delivers; ends when the cache is gone.
async fn run(cache: Weak<Inner>, signal: Arc<Signal>) {
    let _running = Running(signal.clone());
    loop {
        let (pending, retry_at, interval) = {
            let Some(inner) = cache.upgrade() else { return };
            let degraded = &inner.degraded;
            (
                degraded.has_pending(),
                degraded.retry_at(),
                degraded.retry_interval(),
            )
        };
        if !pending {
            // A wake-up sent before this wait is kept by the `Notify`.
            signal.wake.notified().await;
            continue;
        }
        if let Some(at) = retry_at {
            tokio::time::sleep_until(at).await;
        }
        let Some(inner) = cache.upgrade() else { return };
        let (delivered, settled) = {
            let _one = inner.recovery.delivering.lock().await;
            deliver_pending(inner.invalidator()).await
        };
        drop(inner);
        if !settled && delivered == 0 && retry_at.is_none() {
            // Nothing went through, yet the store did not fail: do not
            // spin on it.
            tokio::time::sleep(interval).await;
        }
    }
}
