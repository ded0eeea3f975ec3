//! Fault injection and instrumentation for the reliability tests:
//!
//! - [`Faulty`]: a store wrapper that fails writes or index updates on
//!   demand, or holds the next call of a primitive (before it reaches the
//!   store, or its reply) until released, to script an interleaving (with
//!   the delivery of queued invalidations, with a fill's reply);
//! - [`Instrumented`]: a loader wrapper that counts calls, delays them and
//!   measures how many run at once;
//! - [`Flaky`]: a loader wrapper that fails or hangs on demand.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cached_instances::store::{InProcess, StoreFuture};
use cached_instances::{CachedInstance, LoadError, Loader, Store, StoreError};
use tokio::sync::oneshot;

use crate::store::{Hook, Keys, Op, Wrapped};

/// A held store call: wait until it is reached, then let it go on.
pub struct HeldCall {
    pub reached: oneshot::Receiver<()>,
    pub release: oneshot::Sender<()>,
}

struct Hold {
    reached: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

/// A hold set up for the next call of `op`.
struct NextHold {
    op: Op,
    /// `None`: held before it reaches the inner store. `Some(fail)`: it
    /// runs, then its reply is held, and replaced by a failure if `fail`.
    reply: Option<bool>,
    hold: Hold,
}

/// The switches of a [`Faulty`] store. Clones share them.
#[derive(Clone, Default)]
pub struct Faults(Arc<FaultState>);

#[derive(Default)]
struct FaultState {
    fail_writes: AtomicBool,
    lose_replies: AtomicBool,
    fail_index_lease: AtomicBool,
    fail_index_apply: AtomicBool,
    failed_writes: AtomicUsize,
    holds: Mutex<Vec<NextHold>>,
}

/// A store whose writes (`set_if_absent_or`, `set_if_absent`, `compare_and_set`,
/// `swap_many`, `delete_many`) fail with [`StoreError::Unavailable`] while
/// [`fail_writes`](Faults::fail_writes) is on; reads keep working, as when
/// a server refuses writes (out of memory, a read-only replica after a
/// failover) or a network path drops them. Its query-index updates fail on
/// their own switches. A failed call never reaches the inner store.
/// In-process reads are forwarded (reads never fail), except that a
/// read with a hold set up on `get` goes through `get` to reach it.
pub type Faulty<S> = Wrapped<S, Faults>;

impl<S: Store> Wrapped<S, Faults> {
    pub fn new(inner: S) -> Self {
        Wrapped::with_hook(inner, Faults::default())
    }
}

impl Faults {
    /// Turns write failures on or off.
    pub fn fail_writes(&self, fail: bool) {
        self.0.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// Turns lost replies on or off: each write reaches the inner store and
    /// is applied, then fails as if its reply had timed out (a server that
    /// ran a command late, after the client gave up on it).
    pub fn lose_write_replies(&self, lose: bool) {
        self.0.lose_replies.store(lose, Ordering::SeqCst);
    }

    /// Turns failures of `index_lease` on or off.
    pub fn fail_index_lease(&self, on: bool) {
        self.0.fail_index_lease.store(on, Ordering::SeqCst);
    }

    /// Turns failures of `index_apply` on or off.
    pub fn fail_index_apply(&self, on: bool) {
        self.0.fail_index_apply.store(on, Ordering::SeqCst);
    }

    /// How many writes were failed so far (index updates not included).
    pub fn failed_writes(&self) -> usize {
        self.0.failed_writes.load(Ordering::SeqCst)
    }

    /// Holds the next `swap_many` before it reaches the inner store.
    pub fn hold_next_swap(&self) -> HeldCall {
        self.hold_next(Op::SwapMany)
    }

    /// Holds the next call of `op` before it reaches the inner store: it
    /// is made (`reached`), and goes on when released.
    pub fn hold_next(&self, op: Op) -> HeldCall {
        self.set_hold(op, None)
    }

    /// Holds the reply of the next call of `op`: the call reaches the inner
    /// store and is applied, then its reply waits until released
    /// (`reached` tells it is applied); with `fail`, the reply is then a
    /// failure, as if it had been lost after the server applied it.
    pub fn hold_next_reply(&self, op: Op, fail: bool) -> HeldCall {
        self.set_hold(op, Some(fail))
    }

    fn set_hold(&self, op: Op, reply: Option<bool>) -> HeldCall {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        let mut holds = self.0.holds.lock().unwrap();
        holds.retain(|h| h.op != op);
        holds.push(NextHold {
            op,
            reply,
            hold: Hold {
                reached: reached_tx,
                release: release_rx,
            },
        });
        HeldCall {
            reached: reached_rx,
            release: release_tx,
        }
    }

    /// The hold set up for this call of `op`, taken.
    fn take_hold(&self, op: Op) -> Option<(Option<bool>, Hold)> {
        let mut holds = self.0.holds.lock().unwrap();
        let at = holds.iter().position(|h| h.op == op)?;
        let NextHold { reply, hold, .. } = holds.swap_remove(at);
        Some((reply, hold))
    }

    fn fault(&self, op: Op) -> Option<StoreError> {
        let state = &*self.0;
        let on = |switch: &AtomicBool| switch.load(Ordering::SeqCst);
        if op.is_write() && on(&state.fail_writes) {
            state.failed_writes.fetch_add(1, Ordering::SeqCst);
            return Some(StoreError::Unavailable("injected write failure".into()));
        }
        let index_fault = match op {
            Op::IndexLease => on(&state.fail_index_lease),
            Op::IndexApply => on(&state.fail_index_apply),
            _ => false,
        };
        index_fault.then(|| StoreError::Unavailable("injected index failure".into()))
    }
}

impl Hook for Faults {
    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        _keys: Keys<'a>,
        call: impl FnOnce() -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        if let Some(e) = self.fault(op) {
            return Box::pin(std::future::ready(Err(e)));
        }
        let hold = self.take_hold(op);
        let lose_reply = move || op.is_write() && self.0.lose_replies.load(Ordering::SeqCst);
        if hold.is_none() && !lose_reply() {
            return call();
        }
        Box::pin(async move {
            match hold {
                Some((None, hold)) => {
                    let _ = hold.reached.send(());
                    let _ = hold.release.await;
                }
                Some((Some(fail), hold)) => {
                    let reply = call().await;
                    let _ = hold.reached.send(());
                    let _ = hold.release.await;
                    if !fail {
                        return reply;
                    }
                    self.0.failed_writes.fetch_add(1, Ordering::SeqCst);
                    return Err(StoreError::Unavailable("injected lost reply".into()));
                }
                None => {}
            }
            if !lose_reply() {
                return call().await;
            }
            // Applied, then reported as timed out.
            call().await?;
            self.0.failed_writes.fetch_add(1, Ordering::SeqCst);
            Err(StoreError::Unavailable("injected lost reply".into()))
        })
    }

    /// Reads are never failed, so in-process reads are forwarded, the
    /// path a production read takes; except while a hold is set up for
    /// the next `get`: that read goes through `around` (answered
    /// [`InProcess::Unknown`]), so the hold is reached.
    fn around_in_process(&self, _key: &str, read: impl FnOnce() -> InProcess) -> InProcess {
        let get_held = self.0.holds.lock().unwrap().iter().any(|h| h.op == Op::Get);
        if get_held {
            return InProcess::Unknown;
        }
        read()
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
