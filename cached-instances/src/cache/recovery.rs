//! Recovery: the background task that delivers queued invalidations (see
//! "Store outages" in the protocol, `cache/mod.rs`).
//!
//! It runs as redis-rs's `ConnectionManager` reconnects and moka's
//! housekeeper evicts: spawned on the Tokio runtime by the first call that
//! queues work (a cache can be built outside a runtime), woken through a
//! [`Notify`], it waits for the store's retry time, delivers, and sleeps
//! again while anything is left. It holds the cache only through a
//! [`Weak`] between deliveries, so it ends when the last [`Cache`] clone is
//! dropped; a task dropped with its runtime is spawned again by the next
//! call that finds work queued. A read only checks a flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::Notify;

use super::degraded::PendingOp;
use super::{Cache, Inner};
use crate::error::StoreOp;

/// What the cache and its recovery task share, outside the cache itself
/// (which the task must not keep alive).
#[derive(Default)]
pub(super) struct Recovery {
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
    /// The cache is gone: the task, if it waits, wakes up and ends.
    pub(super) fn cache_dropped(&self) {
        self.signal.wake.notify_one();
    }
}

impl Cache {
    /// Queues invalidations the store could not take, and wakes the
    /// recovery task (spawning it if need be).
    pub(super) fn queue(&self, ops: impl IntoIterator<Item = PendingOp>) {
        self.inner.degraded.queue(ops);
        self.ensure_recovery();
        self.inner.recovery.signal.wake.notify_one();
    }

    /// Whether reads and writes may use the store now: it has not failed
    /// recently, and nothing is queued for delivery. Never delivers: that
    /// is the recovery task's job.
    pub(super) fn store_usable(&self) -> bool {
        if self.inner.degraded.has_pending() {
            // The task may have died with a previous runtime.
            self.ensure_recovery();
            return false;
        }
        !self.inner.degraded.skip_store()
    }

    /// Spawns the recovery task unless it is running. Outside a Tokio
    /// runtime nothing is spawned: the next call from inside one does it.
    fn ensure_recovery(&self) {
        let signal = &self.inner.recovery.signal;
        if signal.running.load(Ordering::Acquire) || signal.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            signal.running.store(false, Ordering::Release);
            return;
        };
        runtime.spawn(run(Arc::downgrade(&self.inner), signal.clone()));
    }

    /// Delivers what is queued now, in the caller's task. For `warm` only
    /// (never a read): an un-warm queued before it must not be delivered
    /// after it marked the index complete.
    pub(super) async fn deliver_queued(&self) {
        if self.inner.degraded.has_pending() {
            let _one = self.inner.recovery.delivering.lock().await;
            self.deliver_pending().await;
        }
    }

    /// Delivers queued invalidations: how many were delivered, and whether
    /// the queue is now empty (not after a failed delivery, or writes
    /// queued meanwhile).
    async fn deliver_pending(&self) -> (usize, bool) {
        let ops = self.inner.degraded.take_pending();
        let delivered = if ops.is_empty() {
            0
        } else {
            self.deliver(ops).await
        };
        // Settled first: whoever sees the event finds the store usable.
        let settled = self.inner.degraded.settle();
        self.inner.degraded.delivered(delivered);
        (delivered, settled)
    }

    /// Delivers `ops` (anything that fails is queued again, except a failed
    /// re-index, which un-warms its model instead: see `index.rs`) and
    /// returns how many were delivered.
    async fn deliver(&self, ops: Vec<PendingOp>) -> usize {
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
        let store = &self.inner.store;
        let mut delivered = 0;
        // Whether the store took everything so far: index updates are
        // only redone on a store that answers, since a re-index that
        // fails un-warms its model.
        let mut store_ok = true;
        if !tombstones.is_empty() {
            let ttl = self.inner.config.tombstone_ttl;
            let call = store.swap_many(&tombstones, crate::marker::TOMBSTONE, ttl);
            if self
                .store_call(None, StoreOp::Invalidate, call)
                .await
                .is_some()
            {
                delivered += tombstones.len();
            } else {
                store_ok = false;
                self.queue(tombstones.into_iter().map(PendingOp::Tombstone));
            }
        }
        if !deletes.is_empty() {
            let call = store.delete_many(&deletes);
            if self.store_call(None, StoreOp::Delete, call).await.is_some() {
                delivered += deletes.len();
            } else {
                store_ok = false;
                self.queue(deletes.into_iter().map(PendingOp::Delete));
            }
        }
        if !instances.is_empty() {
            let count = instances.len();
            if self.deliver_instances(instances).await {
                delivered += count;
            } else {
                store_ok = false;
            }
        }
        // After the instances: a query answered from the index right
        // after this delivery fetches entries already invalidated.
        if !reindexes.is_empty() {
            if store_ok {
                delivered += self.deliver_reindexes(reindexes).await;
            } else {
                // Not tried: kept for the next delivery, as they were.
                self.queue(reindexes.into_iter().map(|(model, version, pk_key)| {
                    PendingOp::Reindex {
                        model,
                        version,
                        pk_key,
                    }
                }));
            }
        }
        delivered
    }
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
        let cache = Cache { inner };
        let (delivered, settled) = {
            let _one = cache.inner.recovery.delivering.lock().await;
            cache.deliver_pending().await
        };
        drop(cache);
        if !settled && delivered == 0 && retry_at.is_none() {
            // Nothing went through, yet the store did not fail: do not
            // spin on it.
            tokio::time::sleep(interval).await;
        }
    }
}

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
    pub(super) fn may_use_store(self, cache: &Cache) -> bool {
        self == Caller::Recovery || cache.store_usable()
    }
}
