//! The store as every part of the cache uses it: each call's failure is
//! counted and opens the circuit (degraded mode, `degraded.rs`), the first
//! answer after an outage closes it, and what the store could not take is
//! queued for the recovery task (`recovery.rs`).

use std::sync::Arc;

use super::degraded::{Degraded, PendingOp};
use super::recovery::Recovery;
use super::stats::{Counters, add};
use crate::error::{StoreError, StoreOp};
use crate::store::{Store, StoreFuture};

/// The store, its health and its retry queue.
#[derive(Clone, Copy)]
pub(super) struct Gate<'a> {
    pub(super) store: &'a dyn Store,
    pub(super) degraded: &'a Degraded,
    recovery: &'a Recovery,
    counters: &'a Counters,
}

impl<'a> Gate<'a> {
    pub(super) fn new(
        store: &'a dyn Store,
        degraded: &'a Degraded,
        recovery: &'a Recovery,
        counters: &'a Counters,
    ) -> Self {
        Gate {
            store,
            degraded,
            recovery,
            counters,
        }
    }

    /// Whether a read may use the store now: caching is on, the store has
    /// not failed recently, and nothing is queued for delivery. One load
    /// while all is well.
    pub(super) fn readable(&self) -> bool {
        self.degraded.all_clear() || (self.degraded.is_enabled() && self.usable())
    }

    /// Whether reads and writes may use the store now: it has not failed
    /// recently, and nothing is queued for delivery. Never delivers: that
    /// is the recovery task's job.
    pub(super) fn usable(&self) -> bool {
        if self.degraded.has_pending() {
            // The task may have died with a previous runtime.
            self.recovery.ensure_running();
            return false;
        }
        !self.degraded.skip_store()
    }

    /// Queues invalidations the store could not take, and wakes the
    /// recovery task (spawning it if need be).
    pub(super) fn queue(&self, ops: impl IntoIterator<Item = PendingOp>) {
        self.degraded.queue(ops);
        self.recovery.wake();
    }

    /// Runs a store operation, recording failures (degraded mode) and
    /// recoveries. `None` means the store failed.
    pub(super) async fn call<T>(
        &self,
        model: Option<&'static str>,
        op: StoreOp,
        call: StoreFuture<'_, T>,
    ) -> Option<T> {
        self.result(model, op, call).await.ok()
    }

    /// [`call`](Self::call), keeping the error.
    pub(super) async fn result<T>(
        &self,
        model: Option<&'static str>,
        op: StoreOp,
        call: StoreFuture<'_, T>,
    ) -> Result<T, Arc<StoreError>> {
        self.record(model, op, call.await)
    }

    /// Records a store operation's outcome, as [`result`](Self::result)
    /// does, for a reply awaited elsewhere (a fill's, in `fills.rs`).
    pub(super) fn record<T>(
        &self,
        model: Option<&'static str>,
        op: StoreOp,
        outcome: Result<T, StoreError>,
    ) -> Result<T, Arc<StoreError>> {
        match outcome {
            Ok(value) => {
                self.degraded.succeeded();
                Ok(value)
            }
            Err(error) => {
                add(&self.counters.store_errors, 1);
                tracing::warn!(
                    target: "cached_instances",
                    model = model.unwrap_or("-"),
                    op = op.as_str(),
                    error = %crate::error::Chain(&error),
                    "store operation failed; serving from the database"
                );
                let error = Arc::new(error);
                self.degraded.failed(model, op, error.clone());
                Err(error)
            }
        }
    }
}
