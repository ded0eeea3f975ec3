//! A counter added to on every read, from many threads: striped, so that
//! the threads do not bounce one cache line between the cores (the
//! `metrics` crate's counters avoid that the same way). Reading it sums
//! the stripes.

use std::sync::atomic::{AtomicU64, Ordering};

/// How many cache lines one counter is spread over.
const STRIPES: usize = 8;

/// One stripe of a counter, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Stripe(AtomicU64);

/// A `u64` counter striped per thread.
#[derive(Debug, Default)]
pub(crate) struct StripedCounter([Stripe; STRIPES]);

impl StripedCounter {
    /// Adds `n` to this thread's stripe.
    pub(crate) fn add(&self, n: u64) {
        self.0[stripe()].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The sum of the stripes.
    pub(crate) fn get(&self) -> u64 {
        self.0
            .iter()
            .fold(0, |sum, s| sum.wrapping_add(s.0.load(Ordering::Relaxed)))
    }
}

/// This thread's stripe, given out round robin on its first count.
fn stripe() -> usize {
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|stripe| {
        if stripe.get() == usize::MAX {
            stripe.set(NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES);
        }
        stripe.get()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::{STRIPES, StripedCounter};

    /// Counts from many threads land on different stripes; reading the
    /// counter sums them all.
    #[test]
    fn a_read_sums_every_threads_stripe() {
        let counter = StripedCounter::default();
        let threads = STRIPES as u64 * 2 + 1;
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        counter.add(1);
                    }
                });
            }
        });
        let used = counter.0.iter().filter(|s| s.0.load(Ordering::Relaxed) > 0);
        assert!(used.count() > 1, "threads share one stripe");
        assert_eq!(counter.get(), 1000 * threads);
    }
}
