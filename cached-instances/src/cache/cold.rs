//! Whether a model's batch reads have lately been missing, and so how the
//! next one starts: with a multi-get, or with a lease.
//!
//! A batch read is a multi-get, then a lease on whatever missed (step 1 of
//! the [protocol](super#entries-a-look-aside-cache-with-leases-and-tombstones)).
//! Two lease primitives can take a read's place:
//!
//! - [`Store::set_if_absent`](crate::Store::set_if_absent) leases the
//!   absent keys and yields which it set: on a Redis server one `MSETNX`
//!   (every key at once where all are absent, none otherwise), where the
//!   per-key lease is a command per key. A read whose multi-get found its
//!   misses all absent takes it first. While the model's last batch read
//!   found every key absent and leased them all this way, the next one
//!   starts with it, without the multi-get: a cold sweep costs one cheap
//!   round trip per batch before its load.
//! - [`Store::set_if_absent_or`](crate::Store::set_if_absent_or) (one
//!   `SET NX GET` per key) leaves a key that holds an entry as it is and
//!   yields the entry, so it is the multi-get and the per-key lease in one
//!   step, atomic per key: a read that starts with it sees what a
//!   multi-get immediately followed by the lease would have seen, one
//!   round trip sooner. On a hit it costs more than a plain read (a write
//!   command per key on Redis, and a near cache is not consulted), so it
//!   is only worth it when most keys miss: while the model's last batch
//!   read missed more than half of its keys without being leased at once
//!   (some keys held entries, so the cheap lease did not set them all).
//!
//! A batch that mostly hits turns both back off, and so does the end of a
//! [`Cache::warm`](crate::Cache::warm), which filled what its reads missed.
//! Keys the cheap lease did not set are leased with the per-key one, which
//! reads too: a batch that guessed "all absent" wrong costs one round trip
//! more than one that did not guess.
//!
//! The guess never changes what a read returns, only how many round trips
//! it takes; single-key reads keep their one `GET`, and never change it.

use std::sync::atomic::{AtomicU8, Ordering};

/// How the next batch read of a model starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// A multi-get.
    Read,
    /// A lease of all its keys, alone; the per-key lease if it sets none.
    LeaseAll,
    /// The per-key lease, which yields the entries it finds.
    LeaseEach,
}

const READ: u8 = 0;
const LEASE_ALL: u8 = 1;
const LEASE_EACH: u8 = 2;

/// The read mode of one model's batch reads.
#[derive(Debug, Default)]
pub(crate) struct ColdReads(AtomicU8);

impl ColdReads {
    /// How the next batch read should start.
    pub(crate) fn start(&self) -> Start {
        match self.0.load(Ordering::Relaxed) {
            LEASE_ALL => Start::LeaseAll,
            LEASE_EACH => Start::LeaseEach,
            _ => Start::Read,
        }
    }

    /// Records a batch read of `keys` keys of which `misses` held no entry,
    /// and which was not leased at once.
    pub(crate) fn record(&self, keys: usize, misses: usize) {
        self.set(if misses.saturating_mul(2) > keys {
            LEASE_EACH
        } else {
            READ
        });
    }

    /// Records a batch read whose keys were all absent, and leased at once.
    pub(crate) fn leased_all(&self) {
        self.set(LEASE_ALL);
    }

    /// Records that the model's entries were just filled, whatever its
    /// reads found on the way ([`Cache::warm`](crate::Cache::warm), whose
    /// reads all miss on a cold store): its next batch read should hit,
    /// so it reads first.
    pub(crate) fn filled(&self) {
        self.set(READ);
    }

    /// Written only when the mode changes, so that warm reads on many
    /// threads do not share a written cache line.
    fn set(&self, mode: u8) {
        if self.0.load(Ordering::Relaxed) != mode {
            self.0.store(mode, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ColdReads, Start};

    #[test]
    fn more_than_half_missing_leases_each_first_and_a_warm_batch_reads_first() {
        let cold = ColdReads::default();
        assert_eq!(cold.start(), Start::Read, "a model starts warm");
        cold.record(100, 50);
        assert_eq!(cold.start(), Start::Read, "half is not more than half");
        cold.record(100, 51);
        assert_eq!(cold.start(), Start::LeaseEach);
        cold.record(3, 2);
        assert_eq!(cold.start(), Start::LeaseEach);
        cold.record(100, 0);
        assert_eq!(cold.start(), Start::Read);
        cold.record(1, 1);
        assert_eq!(cold.start(), Start::LeaseEach);
        cold.filled();
        assert_eq!(cold.start(), Start::Read, "a warm fills the entries");
    }

    #[test]
    fn a_batch_leased_at_once_leases_the_next_at_once_until_one_is_not() {
        let cold = ColdReads::default();
        cold.leased_all();
        assert_eq!(cold.start(), Start::LeaseAll);
        cold.leased_all();
        assert_eq!(cold.start(), Start::LeaseAll);
        cold.record(100, 80);
        assert_eq!(cold.start(), Start::LeaseEach, "some keys held entries");
        cold.leased_all();
        cold.record(100, 10);
        assert_eq!(cold.start(), Start::Read);
        cold.leased_all();
        cold.filled();
        assert_eq!(cold.start(), Start::Read);
    }
}
