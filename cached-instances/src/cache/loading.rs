//! The one way the cache calls a loader.
//!
//! Every call (a read's load, a cascade's reload, a re-index, `warm`'s pk
//! list, a query's fallback) goes through [`Loading::call`], or, for a
//! read's load after its leases, [`Loading::call_after`]: it is counted
//! when it starts (`Stats::loader_calls`), runs under
//! [`loader_timeout`](crate::CacheBuilder::loader_timeout), is timed (the
//! `cache.load.duration` metric), and its error becomes [`Error::Load`] (or
//! [`Error::LoadTimeout`]).

use std::cell::Cell;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::stats::{Counters, LoadTimer, add};
use crate::error::{Error, LoadError};
use crate::loader::{BoxFuture, LeasedPks};

tokio::task_local! {
    /// The loader calls made by one [`Cache::warm`](crate::Cache::warm), in
    /// its own task: its report counts them without looking at the cache's
    /// counters, which other tasks move meanwhile.
    static CALLS_IN_SCOPE: Cell<u64>;
}

/// What a loader call needs of the cache.
#[derive(Clone, Copy)]
pub(crate) struct Loading<'a> {
    pub(super) counters: &'a Counters,
    pub(super) timeout: Option<Duration>,
}

impl<'l> Loading<'l> {
    /// Calls a loader of `model`: counts the call, applies the deadline and
    /// maps the loader's error. A call that runs out of time is dropped
    /// (the loader's future is cancelled); the caller then releases
    /// whatever leases it held, as for any failed load.
    pub(crate) async fn call<R>(
        self,
        model: &'static str,
        call: impl Future<Output = Result<R, LoadError>>,
    ) -> Result<R, Error> {
        self.count();
        let timer = LoadTimer::start();
        let result = match self.timeout {
            None => call.await,
            Some(timeout) => match tokio::time::timeout(timeout, call).await {
                Ok(result) => result,
                Err(_elapsed) => return Err(self.timed_out(model, timeout, timer)),
            },
        };
        finish(model, Some(timer), result)
    }

    /// [`call`](Self::call) of a load that waits for its pks
    /// ([`Loader::load_after`](crate::Loader::load_after)): `pks` is the
    /// lease step, and the loader may get ready while it runs. The call is
    /// counted, timed and given its deadline from when the pks are known,
    /// and not at all when there are none (no lease was granted).
    pub(crate) async fn call_after<'a, Pk, R>(
        self,
        model: &'static str,
        pks: impl Future<Output = Vec<Pk>> + Send + 'a,
        load: impl FnOnce(LeasedPks<'a, Pk>) -> BoxFuture<'a, Result<Vec<R>, LoadError>>,
    ) -> Result<Vec<R>, Error>
    where
        'l: 'a,
        Pk: Send + 'a,
    {
        let timer: Arc<Mutex<Option<LoadTimer>>> = Arc::default();
        let (known, started) = oneshot::channel::<()>();
        let pks = {
            let timer = Arc::clone(&timer);
            LeasedPks::new(async move {
                let pks = pks.await;
                if !pks.is_empty() {
                    self.count();
                    *lock(&timer) = Some(LoadTimer::start());
                    let _ = known.send(());
                }
                pks
            })
        };
        let call = load(pks);
        let result = match self.timeout {
            None => call.await,
            Some(timeout) => {
                // The deadline runs from when the pks are known: the lease
                // step before it has the store's own.
                let deadline = async {
                    match started.await {
                        Ok(()) => tokio::time::sleep(timeout).await,
                        Err(_) => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    result = call => result,
                    () = deadline => {
                        let timer = lock(&timer).take().unwrap_or_else(LoadTimer::start);
                        return Err(self.timed_out(model, timeout, timer));
                    }
                }
            }
        };
        let timer = lock(&timer).take();
        finish(model, timer, result)
    }

    /// Counts a call when it starts (`Stats::loader_calls`, and `warm`'s
    /// own count when inside one).
    fn count(self) {
        add(&self.counters.loader_calls, 1);
        // Outside a counting scope there is nothing to add to.
        let _ = CALLS_IN_SCOPE.try_with(|calls| calls.set(calls.get() + 1));
    }

    fn timed_out(self, model: &'static str, timeout: Duration, timer: LoadTimer) -> Error {
        timer.finish(model, "timeout");
        add(&self.counters.loader_timeouts, 1);
        tracing::warn!(
            target: "cached_instances",
            model,
            ?timeout,
            "loader timed out"
        );
        Error::LoadTimeout { model, timeout }
    }
}

/// A call's outcome, recorded (`cache.load.duration`) when it was timed,
/// and its error mapped.
fn finish<R>(
    model: &'static str,
    timer: Option<LoadTimer>,
    result: Result<R, LoadError>,
) -> Result<R, Error> {
    if let Some(timer) = timer {
        timer.finish(model, if result.is_ok() { "success" } else { "failure" });
    }
    result.map_err(|source| Error::Load { model, source })
}

/// The timer's lock, poisoned or not: it guards an `Option` set once.
fn lock(timer: &Mutex<Option<LoadTimer>>) -> std::sync::MutexGuard<'_, Option<LoadTimer>> {
    timer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `work` and returns its output with the number of loader calls it
/// made itself (not those of other tasks).
pub(super) async fn counting_calls<R>(work: impl Future<Output = R>) -> (R, u64) {
    CALLS_IN_SCOPE
        .scope(Cell::new(0), async move {
            let out = work.await;
            (out, CALLS_IN_SCOPE.with(Cell::get))
        })
        .await
}
