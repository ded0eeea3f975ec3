//! Runners: sequential latencies and concurrent throughput, sides interleaved.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::ops::Op;
use crate::stats::{Lat, Rate, lat};

/// The iterations of a cold-key row that warm up, not recorded.
pub(crate) const WARM_UP: usize = 4;

/// Runs iteration `it` of a two-sided row: `ours` then `base` on even
/// iterations, `base` then `ours` on odd ones, so that neither side always
/// runs right after the other's clean-up. Yields (ours, base).
pub(crate) async fn in_turn<O, B>(
    it: usize,
    ours: impl Future<Output = O>,
    base: impl Future<Output = B>,
) -> (O, B) {
    if it.is_multiple_of(2) {
        let o = ours.await;
        (o, base.await)
    } else {
        let b = base.await;
        (ours.await, b)
    }
}

/// Sequential latencies of each op, interleaved in blocks; the order of the
/// sides rotates every round (A B C, B C A, ...) so drift hits all of them.
pub(crate) async fn latencies(ops: &[Arc<dyn Op>], rounds: usize, block: usize) -> Vec<Lat> {
    let mut samples: Vec<Vec<u64>> = ops
        .iter()
        .map(|_| Vec::with_capacity(rounds * block))
        .collect();
    let mut next = vec![0usize; ops.len()];
    // Warm-up: connections made, statements prepared, caches hot.
    for op in ops {
        for i in 0..(block / 5).max(20) {
            op.run(i).await;
        }
    }
    for round in 0..rounds {
        for k in 0..ops.len() {
            let side = (round + k) % ops.len();
            for _ in 0..block {
                let started = Instant::now();
                ops[side].run(next[side]).await;
                samples[side].push(started.elapsed().as_nanos() as u64);
                next[side] += 1;
            }
        }
    }
    samples.into_iter().map(lat).collect()
}

/// Operations per second of `op` run by `tasks` concurrent tasks for
/// `window`.
pub(crate) async fn throughput(op: Arc<dyn Op>, tasks: usize, window: Duration) -> f64 {
    let started = Instant::now();
    let deadline = started + window;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                let mut i = t * 7919;
                while Instant::now() < deadline {
                    op.run(i).await;
                    done += 1;
                    i += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.await.expect("task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Throughput windows of each op, interleaved as [`latencies`].
pub(crate) async fn throughputs(ops: &[Arc<dyn Op>], cfg: &Config) -> Vec<Rate> {
    for op in ops {
        throughput(op.clone(), cfg.tasks, cfg.window / 5).await;
    }
    let mut windows = vec![Vec::new(); ops.len()];
    for round in 0..cfg.rounds {
        for k in 0..ops.len() {
            let side = (round + k) % ops.len();
            windows[side].push(throughput(ops[side].clone(), cfg.tasks, cfg.window).await);
        }
    }
    windows
        .into_iter()
        .map(|windows| Rate {
            windows,
            latency: None,
        })
        .collect()
}

/// Per-op nanoseconds of `f`, timed in batches (an `Instant` per call would
/// cost as much as a MemoryStore hit).
pub(crate) struct Batches {
    pub(crate) per_op: Vec<u64>,
}

impl Batches {
    pub(crate) fn new() -> Self {
        Batches { per_op: Vec::new() }
    }
    pub(crate) async fn run<F, Fut>(&mut self, batches: usize, batch: usize, f: &mut F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        for _ in 0..batches {
            let started = Instant::now();
            for _ in 0..batch {
                f().await;
            }
            self.per_op
                .push((started.elapsed().as_nanos() / batch as u128) as u64);
        }
    }
    pub(crate) fn lat(self) -> Lat {
        lat(self.per_op)
    }
}
