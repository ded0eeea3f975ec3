//! A small seedable pseudo-random sequence (splitmix64), so that a failing
//! randomized test names the seed that reproduces it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output function: the `n`-th value of the sequence is
/// `mix(seed + n * GAMMA)`.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// splitmix64.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    #[must_use]
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        mix(self.0)
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// An index into a collection of `len` items (0 when it is empty).
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// A pk in `1..=n`.
    pub fn pk(&mut self, n: i64) -> i64 {
        1 + self.below(n.max(1) as u64) as i64
    }

    /// `true` with a probability of `percent` in 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `items`, which must not be empty.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }
}

/// splitmix64 shared by clones (each draw advances the one sequence), for
/// tasks that take turns drawing from it.
#[derive(Debug, Clone)]
pub struct SharedRng(Arc<AtomicU64>);

impl SharedRng {
    #[must_use]
    pub fn new(seed: u64) -> SharedRng {
        SharedRng(Arc::new(AtomicU64::new(seed)))
    }

    pub fn next_u64(&self) -> u64 {
        mix(self
            .0
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA))
    }
}
