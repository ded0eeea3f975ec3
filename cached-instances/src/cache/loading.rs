//! The one way the cache calls a loader.
//!
//! Every call (a read's load, a cascade's reload, a re-index, `warm`'s pk
//! list, a query's fallback) goes through [`Loading::call`]: it is counted
//! when it starts (`Stats::loader_calls`), runs under
//! [`loader_timeout`](crate::CacheBuilder::loader_timeout), is timed (the
//! `cache.load.duration` metric), and its error becomes [`Error::Load`] (or
//! [`Error::LoadTimeout`]).

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use super::stats::{Counters, LoadTimer, add};
use crate::error::{Error, LoadError};

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

impl Loading<'_> {
    /// Calls a loader of `model`: counts the call, applies the deadline and
    /// maps the loader's error. A call that runs out of time is dropped
    /// (the loader's future is cancelled); the caller then releases
    /// whatever leases it held, as for any failed load.
    pub(crate) async fn call<R>(
        self,
        model: &'static str,
        call: impl Future<Output = Result<R, LoadError>>,
    ) -> Result<R, Error> {
        add(&self.counters.loader_calls, 1);
        // Outside a counting scope there is nothing to add to.
        let _ = CALLS_IN_SCOPE.try_with(|calls| calls.set(calls.get() + 1));
        let call = async { call.await.map_err(|source| Error::Load { model, source }) };
        let timer = LoadTimer::start();
        let outcome =
            |result: &Result<R, Error>| if result.is_ok() { "success" } else { "failure" };
        let Some(timeout) = self.timeout else {
            let result = call.await;
            timer.finish(model, outcome(&result));
            return result;
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => {
                timer.finish(model, outcome(&result));
                result
            }
            Err(_elapsed) => {
                timer.finish(model, "timeout");
                add(&self.counters.loader_timeouts, 1);
                tracing::warn!(
                    target: "cached_instances",
                    model,
                    ?timeout,
                    "loader timed out"
                );
                Err(Error::LoadTimeout { model, timeout })
            }
        }
    }
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
