//! The near cache's [`NearCacheStats`] through the `metrics` facade
//! (feature `metrics`), from a task the store owns.
//!
//! The cache's own counters are exported as they change (`cache/stats.rs`).
//! The tier's are not: a near hit costs about 0.2 us, and a recorder's
//! lookup of the metric on every hit would add a large share of that. The
//! tier counts into its striped counters as before, and this task exports
//! them once per [`EVERY`].
//!
//! Each task adds what its store's stats gained since its last export to
//! process-wide totals, and sets the metrics to those totals (a counter's
//! `absolute`, a gauge's `set`): several stores in one process add up, as
//! the cache's counters do, and a recorder installed after the store was
//! made still reads whole values, not the changes since. When the store is
//! dropped (or the runtime its task runs on shuts down), the task takes its
//! entries, bytes and tracking back out of the totals; what it counted
//! stays.

use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use super::{Near, NearCacheStats};

/// How often the tier's stats are exported.
const EVERY: Duration = Duration::from_secs(1);

/// Every near cache's stats in this process, summed: what the metrics are
/// set to.
static TOTALS: Totals = Totals {
    hits: AtomicU64::new(0),
    misses: AtomicU64::new(0),
    invalidations: AtomicU64::new(0),
    flushes: AtomicU64::new(0),
    entries: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
    tracking: AtomicU64::new(0),
};

struct Totals {
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    flushes: AtomicU64,
    entries: AtomicU64,
    bytes: AtomicU64,
    /// Near caches whose tracking is on.
    tracking: AtomicU64,
}

/// Exports `near`'s stats every [`EVERY`] until the store is dropped.
pub(super) async fn every_second(near: Weak<Near>) {
    let mut exported = Exported(NearCacheStats::default());
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(now) = near.upgrade().map(|near| near.stats()) else {
            return;
        };
        export(&exported.0, &now);
        exported.0 = now;
    }
}

/// What a task last exported. Dropped when the store is, or with the task
/// when its runtime shuts down: either way the store's entries, bytes and
/// tracking leave the totals (nothing is held or tracked any more), and
/// its counts stay.
struct Exported(NearCacheStats);

impl Drop for Exported {
    fn drop(&mut self) {
        let last = &self.0;
        let gone = NearCacheStats {
            hits: last.hits,
            misses: last.misses,
            invalidations: last.invalidations,
            flushes: last.flushes,
            ..NearCacheStats::default()
        };
        export(last, &gone);
    }
}

/// Adds the change from `last` to `now` to [`TOTALS`], and sets the metrics
/// (the table in [`NearCacheStats`]' docs) to them.
fn export(last: &NearCacheStats, now: &NearCacheStats) {
    let t = &TOTALS;
    let counters = [
        (
            metrics::counter!("cache.near.gets", "result" => "hit"),
            &t.hits,
            last.hits,
            now.hits,
        ),
        (
            metrics::counter!("cache.near.gets", "result" => "miss"),
            &t.misses,
            last.misses,
            now.misses,
        ),
        (
            metrics::counter!("cache.near.invalidations"),
            &t.invalidations,
            last.invalidations,
            now.invalidations,
        ),
        (
            metrics::counter!("cache.near.flushes"),
            &t.flushes,
            last.flushes,
            now.flushes,
        ),
    ];
    for (counter, total, last, now) in counters {
        counter.absolute(add(total, last, now));
    }
    let gauges = [
        (
            metrics::gauge!("cache.near.entries"),
            &t.entries,
            last.entries,
            now.entries,
        ),
        (
            metrics::gauge!("cache.near.bytes"),
            &t.bytes,
            last.bytes,
            now.bytes,
        ),
        (
            metrics::gauge!("cache.near.tracking"),
            &t.tracking,
            u64::from(last.tracking),
            u64::from(now.tracking),
        ),
    ];
    for (gauge, total, last, now) in gauges {
        gauge.set(add(total, last, now) as f64);
    }
}

/// Adds `now - last` to `total` (wrapping: a gauge that fell adds the
/// difference's two's complement, which takes it back off); returns the
/// new total.
fn add(total: &AtomicU64, last: u64, now: u64) -> u64 {
    let change = now.wrapping_sub(last);
    total
        .fetch_add(change, Ordering::Relaxed)
        .wrapping_add(change)
}
