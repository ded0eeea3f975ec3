//! What a key can hold: an instance's representation, a reader's lease, or a
//! writer's tombstone. Stores never interpret these bytes; only the cache
//! layer does, so every store shares one encoding.
//!
//! A representation is a JSON object and always starts with `{`; markers start
//! with a NUL byte, which JSON text can never start with, so a marker can never
//! be taken for a value.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

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
    }
}
