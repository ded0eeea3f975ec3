//! Whether a model's batch reads have lately been missing, and so whether
//! the next one takes its leases straight away.
//!
//! A batch read is a multi-get, then a lease on whatever missed (step 1 of
//! the [protocol](super#entries-a-look-aside-cache-with-leases-and-tombstones)).
//! The lease primitive ([`Store::set_if_absent_or`](crate::Store::set_if_absent_or))
//! leaves a key holding an entry as it is and yields the entry, so it is
//! the multi-get and the lease in one step, atomic per key: a read that
//! starts with it sees what a multi-get immediately followed by the lease
//! would have seen, one round trip sooner. On a hit it costs more than a
//! plain read (a write command per key on Redis, and a near cache is not
//! consulted), so it is only worth it when most keys miss: while the
//! model's last batch read missed more than half of its keys (a cold start,
//! a sweep over rarely read rows, a page after a wave of writes). A batch
//! that mostly hits turns it back off, and so does the end of a
//! [`Cache::warm`](crate::Cache::warm), which filled what its reads missed.
//!
//! The guess never changes what a read returns, only how many round trips
//! it takes; single-key reads keep their one `GET`, and never change it.

use std::sync::atomic::{AtomicBool, Ordering};

/// The read mode of one model's batch reads.
#[derive(Debug, Default)]
pub(crate) struct ColdReads(AtomicBool);

impl ColdReads {
    /// Whether the next batch read should lease straight away.
    pub(crate) fn lease_first(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Records a batch read of `keys` keys of which `misses` held no entry.
    /// Written only when the mode changes, so that warm reads on many
    /// threads do not share a written cache line.
    pub(crate) fn record(&self, keys: usize, misses: usize) {
        let cold = misses.saturating_mul(2) > keys;
        if self.0.load(Ordering::Relaxed) != cold {
            self.0.store(cold, Ordering::Relaxed);
        }
    }

    /// Records that the model's entries were just filled, whatever its
    /// reads found on the way ([`Cache::warm`](crate::Cache::warm), whose
    /// reads all miss on a cold store): its next batch read should hit,
    /// so it reads first.
    pub(crate) fn filled(&self) {
        self.record(1, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::ColdReads;

    #[test]
    fn more_than_half_missing_turns_lease_first_on_and_a_warm_batch_off() {
        let cold = ColdReads::default();
        assert!(!cold.lease_first(), "a model starts warm");
        cold.record(100, 50);
        assert!(!cold.lease_first(), "half is not more than half");
        cold.record(100, 51);
        assert!(cold.lease_first());
        cold.record(3, 2);
        assert!(cold.lease_first());
        cold.record(100, 0);
        assert!(!cold.lease_first());
        cold.record(1, 1);
        assert!(cold.lease_first());
        cold.filled();
        assert!(!cold.lease_first(), "a warm fills the entries");
    }
}
