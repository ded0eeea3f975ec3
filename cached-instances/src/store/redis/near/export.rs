//! The near cache's [`NearCacheStats`] through the `metrics` facade
//! (feature `metrics`), from a task the store owns.
//!
//! The cache's own counters are exported as they change (`cache/stats.rs`).
//! The tier's are not: a near hit costs about 0.2 us, and a recorder's
//! lookup of the metric on every hit would add a large share of that. The
//! tier counts into its striped counters as before, and this task adds
//! what they gained to the metrics once per [`EVERY`].
//!
//! Everything is exported as a change, never as an absolute value, so that
//! several stores in one process add up (as the cache's counters do): each
//! task remembers what it last exported. When the store is dropped, its
//! task takes its share back out of the gauges; the counters keep it.

use std::sync::Weak;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use super::{Near, NearCacheStats};

/// How often the tier's stats are exported.
const EVERY: Duration = Duration::from_secs(1);

/// Exports `near`'s stats every [`EVERY`] until the store is dropped.
pub(super) async fn every_second(near: Weak<Near>) {
    let mut last = NearCacheStats::default();
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(now) = near.upgrade().map(|near| near.stats()) else {
            break;
        };
        export(&last, &now);
        last = now;
    }
    // Nothing held any more, and nothing tracked; the counters stay.
    let gone = NearCacheStats {
        hits: last.hits,
        misses: last.misses,
        invalidations: last.invalidations,
        flushes: last.flushes,
        ..NearCacheStats::default()
    };
    export(&last, &gone);
}

/// Adds the change from `last` to `now` to the metrics (the table in
/// [`NearCacheStats`]' docs).
fn export(last: &NearCacheStats, now: &NearCacheStats) {
    let counters = [
        (
            metrics::counter!("cache.near.gets", "result" => "hit"),
            last.hits,
            now.hits,
        ),
        (
            metrics::counter!("cache.near.gets", "result" => "miss"),
            last.misses,
            now.misses,
        ),
        (
            metrics::counter!("cache.near.invalidations"),
            last.invalidations,
            now.invalidations,
        ),
        (
            metrics::counter!("cache.near.flushes"),
            last.flushes,
            now.flushes,
        ),
    ];
    for (counter, last, now) in counters {
        if now > last {
            counter.increment(now - last);
        }
    }
    gauge(
        metrics::gauge!("cache.near.entries"),
        last.entries,
        now.entries,
    );
    gauge(metrics::gauge!("cache.near.bytes"), last.bytes, now.bytes);
    gauge(
        metrics::gauge!("cache.near.tracking"),
        u64::from(last.tracking),
        u64::from(now.tracking),
    );
}

/// Moves `gauge` by `now - last`, leaving other stores' shares as they are.
fn gauge(gauge: metrics::Gauge, last: u64, now: u64) {
    if now > last {
        gauge.increment((now - last) as f64);
    } else if now < last {
        gauge.decrement((last - now) as f64);
    }
}
