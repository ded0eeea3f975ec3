//! Fills the reader does not wait for (see "Entries" in the protocol,
//! `cache/mod.rs`): a read hands its fill, the compare-and-set on its
//! lease, to the store and returns; the reply is recorded by a task the
//! cache owns, as the reader would have recorded it (fills and rejections
//! counted, a store failure opening degraded mode).
//!
//! Safety does not depend on when the fill lands: it is written only where
//! the key still holds the reader's lease, and a write overwrites that
//! lease first, so a fill that a write overtakes is rejected wherever it
//! is on its way. What handing it over in order adds is that a later
//! command on the same connection (the caller's next read, a write)
//! reaches the server after the fill, so it finds the entry filled rather
//! than a lease to wait on.
//!
//! # Encoded by the fill's task
//!
//! A read that returns instances does not need their JSON; only its fill
//! does. Where the model implements `Clone` (the derive's
//! `__copy_for_fill`, by autoref dispatch: `__private/copy.rs`), the read
//! copies each loaded row (tens of nanoseconds) and returns, and a task
//! encodes the copies and sends the fill ([`Fills::send_unencoded`]):
//! encoding (a few hundred nanoseconds a row) and the hand-over are off
//! the read, about a tenth of a cold read of 100 rows (BENCHMARKS.md). A
//! read that returns JSON encodes anyway, and a model without `Clone` is
//! encoded by its read, which sends the fill as above.
//!
//! The order above is kept for the caller: every call of the cache
//! ([`Fills::ordered`], first thing in each of `Cache`'s store-reading
//! and -writing methods) waits until the fills deferred by the same
//! caller's earlier reads are handed over. The caller is the Tokio task,
//! or the thread of a `block_on`. Other callers do not wait: one that
//! finds such a lease waits for its hand-over as for any lease of this
//! process (below), and reads once. So a request that reads and then
//! writes, or reads again, sees what it would have seen had its reads
//! encoded their fills themselves; [`Cache::settle`](crate::Cache::settle)
//! waits for every fill, as before. The hook is before the store method is
//! called, not in the gate: the `MemoryStore` does its work when called.
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

/// The leases reads of this cache hold and have not handed over yet, each
/// with a receiver that its [`LocalLease`] closes then.
type LocalLeases = Mutex<HashMap<Bytes, watch::Receiver<()>>>;

/// The cache's fills in flight, and what sending one needs.
pub(super) struct Fills {
    store: Arc<dyn Store>,
    cache: Weak<Inner>,
    in_flight: Arc<InFlight>,
    /// Shared with each [`LocalLease`], which may move to a fill's task.
    local: Arc<LocalLeases>,
    order: Arc<Order>,
}

/// Who read: a Tokio task, or code a runtime's `block_on` runs (not a task,
/// and on one thread throughout).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Caller {
    Task(tokio::task::Id),
    Thread(std::thread::ThreadId),
}

impl Caller {
    fn current() -> Self {
        match tokio::task::try_id() {
            Some(id) => Caller::Task(id),
            None => Caller::Thread(std::thread::current().id()),
        }
    }
}

/// The fills that tasks encode and have not handed over yet, by the caller
/// of the read that returned before them (see "Encoded by the fill's
/// task").
#[derive(Default)]
struct Order {
    /// How many: while none, a store call checks nothing more.
    pending: AtomicUsize,
    by_caller: Mutex<HashMap<Caller, Vec<watch::Receiver<()>>>>,
}

/// One fill of `caller`'s, pending until this is dropped: by the fill's
/// task once it has handed the fill over, or with the task.
struct InOrder {
    order: Arc<Order>,
    caller: Caller,
    handed_over: Option<watch::Sender<()>>,
}

impl Drop for InOrder {
    fn drop(&mut self) {
        // Closes its receivers, which the pruning below then drops.
        drop(self.handed_over.take());
        let mut by_caller = lock(&self.order.by_caller);
        if let Some(receivers) = by_caller.get_mut(&self.caller) {
            receivers.retain(|receiver| receiver.has_changed().is_ok());
            if receivers.is_empty() {
                by_caller.remove(&self.caller);
            }
        }
        drop(by_caller);
        self.order.pending.fetch_sub(1, Ordering::AcqRel);
    }
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
pub(super) struct LocalLease {
    local: Arc<LocalLeases>,
    lease: Bytes,
    /// Dropped after the entry is removed: closes its receivers.
    _handed_over: watch::Sender<()>,
}

impl Drop for LocalLease {
    fn drop(&mut self) {
        lock(&self.local).remove(&self.lease);
    }
}

/// Rows a read returned as instances, which the task of its fill encodes
/// into the fill (see "Encoded by the fill's task").
pub(super) struct Unencoded(pub(super) Box<EncodeInto>);

/// Encodes rows into a fill, with the cache's registry, config and counters.
type EncodeInto = dyn FnOnce(&Inner, &mut Fill) + Send;

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

impl Fill {
    /// Adds `op`, a fill if `filled` (a release otherwise).
    pub(super) fn push(&mut self, op: CompareAndSet, filled: bool) {
        self.ops.push(op);
        self.filled.push(filled);
    }
}

impl Fills {
    pub(super) fn new(store: Arc<dyn Store>, cache: Weak<Inner>) -> Self {
        Fills {
            store,
            cache,
            in_flight: Arc::default(),
            local: Arc::default(),
            order: Arc::default(),
        }
    }

    /// Returns once the fills that tasks encode for reads of the calling
    /// task (or `block_on` thread) have been handed over, so that what it
    /// sends next reaches the store after them, as it would had those
    /// reads sent their fills themselves (see "Encoded by the fill's
    /// task"). Other callers never wait here; with no such fill anywhere,
    /// this is one atomic load.
    pub(super) async fn ordered(&self) {
        if self.order.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        let receivers = match lock(&self.order.by_caller).get(&Caller::current()) {
            Some(receivers) => receivers.clone(),
            None => return,
        };
        for mut receiver in receivers {
            // Nothing is ever sent: this returns when the sender is
            // dropped, at once if it already was.
            let _ = receiver.changed().await;
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
        // before the read returns.
        if let Poll::Ready(result) = first_poll(&mut reply).await {
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

    /// Hands `fill` to a task on `runtime` that encodes `rows` into it
    /// first, then sends it as [`send`](Self::send) does and drops `local`
    /// (see "Encoded by the fill's task"). The read returns at once.
    pub(super) fn send_unencoded(
        &self,
        runtime: &tokio::runtime::Handle,
        mut fill: Fill,
        rows: Unencoded,
        local: LocalLease,
    ) {
        let pending = Pending::new(&self.in_flight);
        let cache = Weak::clone(&self.cache);
        let caller = Caller::current();
        let (handed_over, receiver) = watch::channel(());
        self.order.pending.fetch_add(1, Ordering::AcqRel);
        lock(&self.order.by_caller)
            .entry(caller)
            .or_default()
            .push(receiver);
        let in_order = InOrder {
            order: Arc::clone(&self.order),
            caller,
            handed_over: Some(handed_over),
        };
        let store = Arc::clone(&self.store);
        drop(runtime.spawn(async move {
            // Declared first, dropped last: `settle` returns only after the
            // reply is recorded.
            let _pending = pending;
            // A cache dropped meanwhile fills nothing: the leases expire.
            // Held only to encode: the task never keeps the cache alive.
            let Some(inner) = cache.upgrade() else {
                return;
            };
            (rows.0)(&inner, &mut fill);
            drop(inner);
            let Fill { model, ops, filled } = fill;
            let mut reply: Reply = Box::pin(async move { store.compare_and_set(&ops).await });
            let first = first_poll(&mut reply).await;
            // Handed over: the caller's next call, and the readers waiting
            // on the lease, may go.
            drop(in_order);
            drop(local);
            let result = match first {
                Poll::Ready(result) => result,
                Poll::Pending => reply.await,
            };
            if let Some(inner) = cache.upgrade() {
                record(inner.gate(), &inner.counters, model, &filled, result);
            }
        }));
    }

    /// Registers `lease`, which a read of this cache is about to take, until
    /// the guard is dropped (see "Waiting on a lease this process holds").
    pub(super) fn hold_locally(&self, lease: &Bytes) -> LocalLease {
        let (sender, receiver) = watch::channel(());
        lock(&self.local).insert(lease.clone(), receiver);
        LocalLease {
            local: Arc::clone(&self.local),
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
        let local = lock(&self.local);
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

/// Polls `reply` once, in place: the store sends (or applies) the request
/// now. Unconstrained: a coop budget the caller used up must not keep the
/// request from its queue.
async fn first_poll(reply: &mut Reply) -> Poll<Result<Vec<bool>, StoreError>> {
    std::future::poll_fn(|cx| {
        Poll::Ready(Pin::new(&mut tokio::task::unconstrained(reply.as_mut())).poll(cx))
    })
    .await
}

fn lock<T>(map: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps are left whole by every holder: a panic elsewhere while one
    // was locked leaves nothing half-done.
    map.lock().unwrap_or_else(PoisonError::into_inner)
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
