//! What a key can hold: an instance's representation, a reader's lease, or a
//! writer's tombstone. Stores never interpret these bytes; only the cache
//! layer does, so every store shares one encoding.
//!
//! A representation is a JSON object and always starts with `{`; markers start
//! with a NUL byte, which JSON text can never start with, so a marker can never
//! be taken for a value.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

const MARK: u8 = 0;
const TOMBSTONE_TAG: u8 = b'T';
const LEASE_TAG: u8 = b'L';

/// The tombstone a write leaves behind: voids every outstanding lease.
pub(crate) const TOMBSTONE: &[u8] = &[MARK, TOMBSTONE_TAG];

/// What a key's bytes mean.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Slot<'a> {
    /// An instance's representation.
    Value(&'a [u8]),
    /// A reader or writer is loading this key.
    Lease,
    /// A write invalidated this key.
    Tombstone,
    /// Marker-looking bytes that are not ours: never served, replaced on
    /// the next miss.
    Foreign,
}

pub(crate) fn classify(bytes: &[u8]) -> Slot<'_> {
    match bytes {
        [MARK, TOMBSTONE_TAG, ..] => Slot::Tombstone,
        [MARK, LEASE_TAG, ..] => Slot::Lease,
        [MARK, ..] => Slot::Foreign,
        value => Slot::Value(value),
    }
}

/// A unique lease: a NUL, `L`, and 16 [`unique`] bytes.
pub(crate) fn new_lease() -> Bytes {
    let mut lease = Vec::with_capacity(18);
    lease.extend_from_slice(&[MARK, LEASE_TAG]);
    lease.extend_from_slice(&unique());
    Bytes::from(lease)
}

/// A unique lease that says when it expires: [`new_lease`]'s 18 bytes,
/// then its deadline, `ttl` from now, in milliseconds since the UNIX epoch
/// (8 bytes, big-endian).
///
/// A read takes these, because its lease may be set where the store
/// cannot give it a TTL in the same step
/// ([`Store::set_if_absent`](crate::Store::set_if_absent) on a Redis
/// server is `MSETNX`): a key left holding one by a reader that died before its
/// fill holds no TTL, so the next reader to find it past its deadline
/// replaces it, as it would a tombstone ([`lease_expired`]). The deadline
/// is read on another host's clock; a clock that runs ahead by more than
/// the lease's TTL voids a live lease early, which costs that key a second
/// load, never a stale fill (the first reader's fill no longer finds its
/// lease).
pub(crate) fn new_lease_for(ttl: Duration) -> Bytes {
    let deadline = millis_since_epoch(SystemTime::now())
        .saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    let mut lease = Vec::with_capacity(LEASE_WITH_DEADLINE);
    lease.extend_from_slice(&[MARK, LEASE_TAG]);
    lease.extend_from_slice(&unique());
    lease.extend_from_slice(&deadline.to_be_bytes());
    Bytes::from(lease)
}

/// Whether `lease` (bytes [`classify`] calls a [`Slot::Lease`]) carries a
/// deadline ([`new_lease_for`]) that has passed by this host's clock. A
/// lease without one (an index token, a lease of an earlier release)
/// never expires here: it was set with a TTL.
pub(crate) fn lease_expired(lease: &[u8]) -> bool {
    let Some(deadline) = lease
        .get(LEASE_WITH_DEADLINE - 8..)
        .filter(|_| lease.len() == LEASE_WITH_DEADLINE)
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
    else {
        return false;
    };
    u64::from_be_bytes(deadline) < millis_since_epoch(SystemTime::now())
}

/// The length of a lease with a deadline: the mark, the tag, 16 unique
/// bytes, 8 of deadline.
const LEASE_WITH_DEADLINE: usize = 2 + 16 + 8;

fn millis_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// 16 bytes no other call in any process returns (a per-process random
/// seed and a counter).
pub(crate) fn unique() -> [u8; 16] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        // RandomState is seeded from the OS per process.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut unique = [0; 16];
    unique[..8].copy_from_slice(&seed.to_be_bytes());
    unique[8..].copy_from_slice(&n.to_be_bytes());
    unique
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_never_read_as_values() {
        assert_eq!(classify(TOMBSTONE), Slot::Tombstone);
        assert_eq!(classify(&new_lease()), Slot::Lease);
        assert_eq!(classify(b"{}"), Slot::Value(b"{}"));
        assert_eq!(classify(b"\0Zjunk"), Slot::Foreign);
        assert_ne!(new_lease(), new_lease());
        assert_eq!(
            classify(&new_lease_for(Duration::from_secs(1))),
            Slot::Lease
        );
    }

    #[test]
    fn a_lease_expires_at_its_deadline_and_one_without_a_deadline_never() {
        assert!(!lease_expired(&new_lease_for(Duration::from_secs(60))));
        let mut past = new_lease_for(Duration::ZERO).to_vec();
        let deadline = u64::from_be_bytes(past[18..].try_into().unwrap()) - 1;
        past[18..].copy_from_slice(&deadline.to_be_bytes());
        assert!(lease_expired(&past));
        assert!(!lease_expired(&new_lease()), "no deadline: set with a TTL");
        assert!(!lease_expired(&past[..25]), "truncated: not ours to judge");
        assert!(!lease_expired(TOMBSTONE));
    }
}
