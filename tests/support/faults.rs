//! Fault injection and instrumentation for the reliability tests:
//!
//! - [`Faulty`]: a store wrapper that fails writes on demand, or holds the
//!   next `swap_many` until released (to script an interleaving with the
//!   delivery of queued invalidations);
//! - [`Instrumented`]: a loader wrapper that counts calls, delays them and
//!   measures how many run at once;
//! - [`Flaky`]: a loader wrapper that fails or hangs on demand.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cached_instances::store::{CompareAndSet, IndexStore, StoreFuture};
use cached_instances::{CachedInstance, LoadError, Loader, Store, StoreError};
use tokio::sync::oneshot;

/// A held store call: wait until it is reached, then let it go on.
pub struct HeldCall {
    pub reached: oneshot::Receiver<()>,
    pub release: oneshot::Sender<()>,
}

struct Hold {
    reached: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

#[derive(Default)]
struct FaultState {
    fail_writes: AtomicBool,
    lose_replies: AtomicBool,
    failed_writes: AtomicUsize,
    hold_swap: Mutex<Option<Hold>>,
}

/// A store whose writes (`set_if_absent_or`, `compare_and_set`,
/// `swap_many`, `delete_many`) fail with [`StoreError::Unavailable`] while
/// [`fail_writes`](Self::fail_writes) is on; reads keep working, as when a
/// server refuses writes (out of memory, a read-only replica after a
/// failover) or a network path drops them. A failed write never reaches
/// the inner store.
#[derive(Clone)]
pub struct Faulty<S> {
    inner: S,
    state: Arc<FaultState>,
}

impl<S: Store> Faulty<S> {
    pub fn new(inner: S) -> Self {
        Faulty {
            inner,
            state: Arc::default(),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Turns write failures on or off.
    pub fn fail_writes(&self, fail: bool) {
        self.state.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// Turns lost replies on or off: each write reaches the inner store and
    /// is applied, then fails as if its reply had timed out (a server that
    /// ran a command late, after the client gave up on it).
    pub fn lose_write_replies(&self, lose: bool) {
        self.state.lose_replies.store(lose, Ordering::SeqCst);
    }

    /// How many writes were failed so far.
    pub fn failed_writes(&self) -> usize {
        self.state.failed_writes.load(Ordering::SeqCst)
    }

    /// Holds the next `swap_many` before it reaches the inner store.
    pub fn hold_next_swap(&self) -> HeldCall {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        *self.state.hold_swap.lock().unwrap() = Some(Hold {
            reached: reached_tx,
            release: release_rx,
        });
        HeldCall {
            reached: reached_rx,
            release: release_tx,
        }
    }

    fn write_fault(&self) -> Option<StoreError> {
        if self.state.fail_writes.load(Ordering::SeqCst) {
            self.state.failed_writes.fetch_add(1, Ordering::SeqCst);
            Some(StoreError::Unavailable("injected write failure".into()))
        } else {
            None
        }
    }
}

/// Runs a write on the inner store; with lost replies on, reports a
/// timeout after it was applied.
fn applied_then<'a, T: Send + 'a>(
    state: &'a FaultState,
    write: StoreFuture<'a, T>,
) -> StoreFuture<'a, T> {
    if !state.lose_replies.load(Ordering::SeqCst) {
        return write;
    }
    Box::pin(async move {
        write.await?;
        state.failed_writes.fetch_add(1, Ordering::SeqCst);
        Err(StoreError::Unavailable("injected lost reply".into()))
    })
}

impl<S: Store> Store for Faulty<S> {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        self.inner.get(key)
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        self.inner.get_many(keys)
    }

    fn set_if_absent_or<'a>(
        &'a self,
        keys: &'a [String],
        value: &'a [u8],
        replaceable: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        match self.write_fault() {
            Some(e) => Box::pin(std::future::ready(Err(e))),
            None => applied_then(
                &self.state,
                self.inner.set_if_absent_or(keys, value, replaceable, ttl),
            ),
        }
    }

    fn compare_and_set<'a>(&'a self, ops: &'a [CompareAndSet]) -> StoreFuture<'a, Vec<bool>> {
        match self.write_fault() {
            Some(e) => Box::pin(std::future::ready(Err(e))),
            None => applied_then(&self.state, self.inner.compare_and_set(ops)),
        }
    }

    fn swap_many<'a>(
        &'a self,
        keys: &'a [String],
        value: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        if let Some(e) = self.write_fault() {
            return Box::pin(std::future::ready(Err(e)));
        }
        let hold = self.state.hold_swap.lock().unwrap().take();
        Box::pin(async move {
            if let Some(hold) = hold {
                let _ = hold.reached.send(());
                let _ = hold.release.await;
            }
            applied_then(&self.state, self.inner.swap_many(keys, value, ttl)).await
        })
    }

    fn delete_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, ()> {
        match self.write_fault() {
            Some(e) => Box::pin(std::future::ready(Err(e))),
            None => applied_then(&self.state, self.inner.delete_many(keys)),
        }
    }

    // The inner store's query indexes, called directly.
    fn indexes(&self) -> Option<&dyn IndexStore> {
        self.inner.indexes()
    }
}

/// What an [`Instrumented`] loader saw.
#[derive(Default)]
pub struct Gauge {
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Gauge {
    /// Loader calls so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The most calls that were running at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }
}

struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A loader that takes at least `delay` per call, counted in a shared
/// [`Gauge`]; it loads through `inner`.
#[derive(Clone)]
pub struct Instrumented<L> {
    inner: L,
    delay: Duration,
    gauge: Arc<Gauge>,
}

impl<L> Instrumented<L> {
    pub fn new(inner: L, delay: Duration) -> Self {
        Instrumented {
            inner,
            delay,
            gauge: Arc::default(),
        }
    }

    pub fn gauge(&self) -> &Gauge {
        &self.gauge
    }
}

impl<T: CachedInstance, L: Loader<T>> Loader<T> for Instrumented<L> {
    async fn load(&self, pks: &[T::Pk]) -> Result<Vec<T>, LoadError> {
        let gauge = &*self.gauge;
        gauge.calls.fetch_add(1, Ordering::SeqCst);
        let now = gauge.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let _in_flight = InFlight(gauge);
        gauge.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.inner.load(pks).await
    }
}

#[derive(Default)]
struct FlakyState {
    fail: AtomicBool,
    hang: AtomicBool,
    calls: AtomicUsize,
}

/// A loader that fails (a database error) or hangs (a query that never
/// returns) on demand, and loads through `inner` otherwise. Clones share
/// the switches.
#[derive(Clone)]
pub struct Flaky<L> {
    inner: L,
    state: Arc<FlakyState>,
}

impl<L> Flaky<L> {
    pub fn new(inner: L) -> Self {
        Flaky {
            inner,
            state: Arc::default(),
        }
    }

    /// Every call fails with a [`LoadError`] while on.
    pub fn fail(&self, on: bool) {
        self.state.fail.store(on, Ordering::SeqCst);
    }

    /// Every call waits forever while on (until the caller drops it).
    pub fn hang(&self, on: bool) {
        self.state.hang.store(on, Ordering::SeqCst);
    }

    /// Loader calls so far, failed and hung ones included.
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }
}

impl<T: CachedInstance, L: Loader<T>> Loader<T> for Flaky<L> {
    async fn load(&self, pks: &[T::Pk]) -> Result<Vec<T>, LoadError> {
        self.state.calls.fetch_add(1, Ordering::SeqCst);
        if self.state.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.state.fail.load(Ordering::SeqCst) {
            return Err(LoadError::msg("injected load failure"));
        }
        self.inner.load(pks).await
    }
}
