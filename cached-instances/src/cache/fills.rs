//! Fills the reader does not wait for (see "Entries" in the protocol,
//! `cache/mod.rs`): a read hands its fill, the compare-and-set on its
//! lease, to the store and returns; the reply is recorded by a task the
//! cache owns, as the reader would have recorded it (fills and rejections
//! counted, a store failure opening degraded mode).
//!
//! Safety does not depend on when the fill lands: it is written only where
//! the key still holds the reader's lease, and a write overwrites that
//! lease first, so a fill that a write overtakes is rejected wherever it
//! is on its way. What handing it over before the read returns adds is
//! order: a later command on the same connection (the next read of this
//! process, a write) reaches the server after the fill, so it finds the
//! entry filled rather than a lease to wait on.
//!
//! # The first poll enqueues the request (redis-rs 1.8.2, read in its source)
//!
//! `RedisStore::compare_and_set` builds the script call and awaits
//! `ScriptInvocation::invoke_async`, which is `EVALSHA` through
//! `Cmd::query_async` → `ConnectionManager::req_packed_command` →
//! `send_packed_command`: it awaits the manager's shared connection future
//! (ready once connected), then `MultiplexedConnection::send_packed_command`,
//! which (with no concurrency limit configured, and no client-side cache)
//! goes to `Pipeline::send_recv`: `self.sender.send(message).await` on a
//! bounded Tokio mpsc channel (50 messages by default) to the connection's
//! writer task, then awaits the reply's oneshot. So the first poll puts the
//! command in the connection's queue, ahead of anything sent later on it,
//! unless
//! - the connection is not made yet (first use, or reconnecting): the fill
//!   is sent when it is, by the task below;
//! - the channel is full (50 requests queued and not yet written): it is
//!   sent when there is room;
//! - the reader's task has used up its Tokio coop budget: the channel's
//!   semaphore returns `Pending` even with room. The first poll therefore
//!   runs [`tokio::task::unconstrained`].
//!
//! A `NOSCRIPT` reply (the server lost its scripts) makes `invoke_async`
//! load the script and send `EVALSHA` again, from the task: that retry is
//! not ordered, and the lease keeps it safe. On a Redis Cluster the request
//! goes to the cluster connection's own task through a channel too.
//!
//! # One task per fill
//!
//! A fill still waiting after its first poll gets a task of its own
//! (`tokio::spawn` costs about a microsecond; the round trip it takes off
//! the read costs hundreds). Rather than one task draining a queue:
//! - replies are awaited independently, so a slow reply (a cluster node
//!   far away) holds up no other;
//! - the task runs on the runtime of the read that sent it, which is alive
//!   by definition: nothing to respawn when a runtime shuts down, as the
//!   recovery task must;
//! - the store bounds each request (`RedisStore`'s response timeout), so a
//!   task lives one round trip, and the number alive is bounded by the
//!   cold reads in flight.
//!
//! The task holds the cache only through a [`Weak`]: it never keeps it
//! alive, and a reply that arrives after the last [`Cache`](crate::Cache)
//! is dropped is not recorded. Outside a Tokio runtime (nothing to spawn
//! on) the reader waits for the reply itself, as before.
//!
//! # Waiting on a lease this process holds
//!
//! A reader that finds a key leased waits for the fill by polling the
//! store (1 ms, then doubling). When the lease is one a read of this same
//! cache holds (another request of the process, loading the same row),
//! there is a better signal: the moment that read hands its fill over.
//! Each read registers its lease here until then ([`Fills::hold_locally`]),
//! and a reader whose keys all wait on registered leases sleeps until they
//! are handed over ([`Fills::handed_over`]), then reads once: on the
//! connection that carried the fill, its read is behind the fill, so it
//! finds the entries. A lease of another process is waited on through
//! the store's watch where it has one (`Store::watch`: a `RedisStore`'s
//! tracking pushes), and by polling where it has none; so is a lease
//! found again by a read over another connection than the fill's (a near
//! tier's tracking connection), which the fill may not have reached yet.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::Poll;

use bytes::Bytes;
use tokio::sync::{Notify, watch};

use super::Inner;
use super::gate::Gate;
use super::stats::Counters;
use crate::error::{StoreError, StoreOp};
use crate::marker::TOMBSTONE;
use crate::store::{CompareAndSet, Store};

/// A fill's reply, owning what it needs ('static: it may move to a task).
type Reply = Pin<Box<dyn Future<Output = Result<Vec<bool>, StoreError>> + Send>>;

/// The cache's fills in flight, and what sending one needs.
pub(super) struct Fills {
    store: Arc<dyn Store>,
    cache: Weak<Inner>,
    in_flight: Arc<InFlight>,
    /// The leases reads of this cache hold and have not handed over yet,
    /// each with a receiver that its [`LocalLease`] closes then.
    local: Mutex<HashMap<Bytes, watch::Receiver<()>>>,
}

/// Leases of reads of this cache, to wait for ([`Fills::handed_over`]).
pub(super) struct HandedOver(Vec<watch::Receiver<()>>);

impl HandedOver {
    /// Returns once every lease has been handed over.
    pub(super) async fn wait(self) {
        for mut receiver in self.0 {
            // Nothing is ever sent: this returns when the sender is
            // dropped, at once if it already was.
            let _ = receiver.changed().await;
        }
    }
}

/// A lease registered by [`Fills::hold_locally`]: dropped once the read's
/// fill (or release) is handed over, or with the read.
pub(super) struct LocalLease<'f> {
    fills: &'f Fills,
    lease: Bytes,
    /// Dropped after the entry is removed: closes its receivers.
    _handed_over: watch::Sender<()>,
}

impl Drop for LocalLease<'_> {
    fn drop(&mut self) {
        self.fills.local().remove(&self.lease);
    }
}

/// How many fills wait for their reply in a task, and the signal that the
/// count fell to zero.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    none: Notify,
}

/// One fill waiting in a task: counted until its reply is recorded, or
/// until the task is dropped unrun (its runtime shutting down), since it
/// is dropped with the task either way.
struct Pending(Arc<InFlight>);

impl Pending {
    fn new(in_flight: &Arc<InFlight>) -> Self {
        in_flight.count.fetch_add(1, Ordering::AcqRel);
        Pending(Arc::clone(in_flight))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none.notify_waiters();
        }
    }
}

/// One read's fill: the conditional writes, whether each is a fill (not a
/// release), and the model they belong to.
pub(super) struct Fill {
    pub(super) model: &'static str,
    pub(super) ops: Vec<CompareAndSet>,
    pub(super) filled: Vec<bool>,
}

impl Fills {
    pub(super) fn new(store: Arc<dyn Store>, cache: Weak<Inner>) -> Self {
        Fills {
            store,
            cache,
            in_flight: Arc::default(),
            local: Mutex::default(),
        }
    }

    /// Hands `fill` to the store and returns without its reply, unless the
    /// store answered at once (the `MemoryStore`) or there is no runtime
    /// to record it on; the reply is recorded either way.
    pub(super) async fn send(&self, gate: Gate<'_>, counters: &Counters, fill: Fill) {
        let Fill { model, ops, filled } = fill;
        let store = Arc::clone(&self.store);
        let mut reply: Reply = Box::pin(async move { store.compare_and_set(&ops).await });
        // One poll in place: the store sends (or applies) the request now,
        // before the read returns. Unconstrained: a coop budget used up by
        // the reader must not keep the request from its queue.
        let first = std::future::poll_fn(|cx| {
            Poll::Ready(Pin::new(&mut tokio::task::unconstrained(reply.as_mut())).poll(cx))
        })
        .await;
        if let Poll::Ready(result) = first {
            record(gate, counters, model, &filled, result);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            record(gate, counters, model, &filled, reply.await);
            return;
        };
        let pending = Pending::new(&self.in_flight);
        let cache = Weak::clone(&self.cache);
        // Detached: it ends with its reply (see the module docs).
        drop(runtime.spawn(async move {
            // Declared first, dropped last: `settle` returns only after
            // the reply is recorded.
            let _pending = pending;
            let result = reply.await;
            if let Some(inner) = cache.upgrade() {
                record(inner.gate(), &inner.counters, model, &filled, result);
            }
        }));
    }

    /// Registers `lease`, which a read of this cache is about to take, until
    /// the guard is dropped (see "Waiting on a lease this process holds").
    pub(super) fn hold_locally(&self, lease: &Bytes) -> LocalLease<'_> {
        let (sender, receiver) = watch::channel(());
        self.local().insert(lease.clone(), receiver);
        LocalLease {
            fills: self,
            lease: lease.clone(),
            _handed_over: sender,
        }
    }

    /// The hand-overs of `leases`, if they are all registered by reads of
    /// this cache; `None` if one is not (a lease of another process, or
    /// one handed over already).
    pub(super) fn handed_over<'l>(
        &self,
        leases: impl Iterator<Item = &'l Bytes>,
    ) -> Option<HandedOver> {
        let local = self.local();
        let mut last: Option<&Bytes> = None;
        let mut receivers = Vec::new();
        for lease in leases {
            // A batch's keys mostly wait on one read's lease, in a row; a
            // lease met again later is waited for twice, which is free.
            if last == Some(lease) {
                continue;
            }
            last = Some(lease);
            receivers.push(local.get(lease)?.clone());
        }
        Some(HandedOver(receivers))
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<Bytes, watch::Receiver<()>>> {
        // The map is left whole by every holder: a panic elsewhere while
        // it was locked leaves nothing half-done.
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until no fill waits for its reply.
    pub(super) async fn settle(&self) {
        let in_flight = &*self.in_flight;
        loop {
            let none = in_flight.none.notified();
            let mut none = std::pin::pin!(none);
            // Registered before the count is read: a count that falls to
            // zero after the read wakes it.
            none.as_mut().enable();
            if in_flight.count.load(Ordering::Acquire) == 0 {
                return;
            }
            none.await;
        }
    }
}

/// The leases a read holds and has neither filled nor released yet: the
/// keys at `indexes` hold `lease`. Dropped before
/// [`handed_over`](Self::handed_over) (the read cancelled mid-load: a
/// request whose client went away, a timeout around the read), it releases
/// them from a task, as a failed load does, so that no reader waits for a
/// fill that will never come, and no lease without a TTL
/// (`marker::new_lease_for`) stays behind. Free until then: it borrows.
pub(super) struct Held<'r> {
    fills: &'r Fills,
    keys: &'r [String],
    pub(super) indexes: Vec<usize>,
    pub(super) lease: &'r Bytes,
    tombstone_ttl: std::time::Duration,
    armed: bool,
}

impl<'r> Held<'r> {
    pub(super) fn new(
        fills: &'r Fills,
        keys: &'r [String],
        indexes: Vec<usize>,
        lease: &'r Bytes,
        tombstone_ttl: std::time::Duration,
    ) -> Self {
        Held {
            fills,
            keys,
            indexes,
            lease,
            tombstone_ttl,
            armed: true,
        }
    }

    /// The fill (or the release) of every lease is in the store's hands.
    pub(super) fn handed_over(&mut self) {
        self.armed = false;
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if !self.armed || self.indexes.is_empty() {
            return;
        }
        // Outside a runtime nothing can be sent: the leases expire (or are
        // voided past their deadline by the next reader).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tombstone = Bytes::from_static(TOMBSTONE);
        let ops: Vec<CompareAndSet> = self
            .indexes
            .iter()
            .map(|&i| CompareAndSet {
                key: self.keys[i].clone(),
                expected: self.lease.clone(),
                value: tombstone.clone(),
                ttl: self.tombstone_ttl,
            })
            .collect();
        let store = Arc::clone(&self.fills.store);
        let pending = Pending::new(&self.fills.in_flight);
        drop(runtime.spawn(async move {
            let _pending = pending;
            if let Err(error) = store.compare_and_set(&ops).await {
                tracing::debug!(
                    target: "cached_instances",
                    %error,
                    keys = ops.len(),
                    "the leases of a cancelled read were not released; they expire"
                );
            }
        }));
    }
}

/// Records a fill's reply as the reader did when it waited for it: a
/// failure through the gate (counted, degraded mode), fills and rejections
/// counted.
fn record(
    gate: Gate<'_>,
    counters: &Counters,
    model: &'static str,
    filled: &[bool],
    result: Result<Vec<bool>, StoreError>,
) {
    let Ok(written) = gate.record(Some(model), StoreOp::Fill, result) else {
        return;
    };
    let rejected = super::count_fills(counters, filled, &written);
    if rejected > 0 {
        tracing::debug!(
            target: "cached_instances",
            model,
            rejected,
            "fills rejected: a write invalidated the keys during the load"
        );
    }
}
