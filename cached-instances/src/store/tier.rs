//! The in-process map behind both in-process tiers: the
//! [`MemoryStore`](super::MemoryStore)'s entries and the near cache's copies
//! of Redis entries. Keys to bytes, bounded by the bytes of keys plus
//! values, each entry with its own deadline.
//!
//! The map is `quick_cache`'s sharded one: a read takes its shard's read
//! lock and clones the `Bytes` (~36 ns for a 200-byte value against ~170 ns
//! for moka's `get`; an insert ~70 ns against ~570 ns). It has no TTL of its
//! own, so each entry carries its deadline, and an entry past it reads as
//! absent and is removed by the read that finds it (lazily: an expired
//! entry nobody reads is evicted like any cold entry when room is needed,
//! and is counted in [`Tier::entries`] and [`Tier::bytes`] until then).
//!
//! Deadlines are set from the precise monotonic clock and checked against
//! the coarse one (see [`clock`]): an entry never expires early, and reads
//! as expired at most about one kernel tick late.
//!
//! Eviction: when a shard is full, entries read least recently and least
//! often go first (CLOCK-Pro-like, with a ghost list of recently evicted
//! keys). An entry heavier than a shard can admit ([`Tier::largest`]) is
//! not stored: [`Tier::insert`] then removes what the key held and says so.

use std::time::Duration;

use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::{OptionsBuilder, Weighter};

/// The share of a shard its "hot" (frequently read) entries may take; also
/// the heaviest entry a shard admits, as a share of the shard. Set here
/// (quick_cache's default) so that [`Tier::largest`] is computed from the
/// value the map uses.
const HOT_ALLOCATION: f64 = 0.97;
/// A shard holds at least this much (unless the whole tier is smaller), so
/// that an entry of up to ~7.7 MiB fits in any tier of at least 8 MiB,
/// whatever the core count: the cache's default `max_entry_bytes` (1 MiB)
/// is well within it. Fewer shards only mean more contention on their
/// locks when many cores write to a small tier.
const MIN_SHARD_BYTES: u64 = 8 * 1024 * 1024;
/// Shards per core, quick_cache's default.
const SHARDS_PER_CORE: u64 = 4;
/// The average entry the map is sized for: it only sets how many evicted
/// keys the map remembers (its ghost list), not a bound on entries.
const TYPICAL_ENTRY_BYTES: u64 = 1024;

#[derive(Clone)]
struct Entry {
    bytes: Bytes,
    /// When the entry expires, in [`clock`] nanoseconds.
    deadline: u64,
}

impl Entry {
    fn expired(&self, now: u64) -> bool {
        self.deadline <= now
    }
}

/// An entry weighs its key plus its value, as the bound says.
#[derive(Clone)]
struct Weight;

impl Weighter<String, Entry> for Weight {
    fn weight(&self, key: &String, entry: &Entry) -> u64 {
        weight(key, &entry.bytes)
    }
}

/// At least 1: quick_cache never evicts an entry of weight 0.
fn weight(key: &str, bytes: &[u8]) -> u64 {
    u64::try_from(key.len().saturating_add(bytes.len()))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A byte-bounded, thread-safe map of keys to bytes with a deadline per
/// entry. Atomic per call, not across calls: a read-decide-write on one key
/// needs the caller's own lock (the store's stripes).
pub(crate) struct Tier {
    map: Cache<String, Entry, Weight>,
    /// The heaviest entry (key plus value) a shard admits.
    largest: u64,
}

impl std::fmt::Debug for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier")
            .field("entries", &self.entries())
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl Tier {
    /// A tier of about `max_bytes` of keys and values.
    pub(crate) fn new(max_bytes: u64) -> Tier {
        let max_bytes = max_bytes.max(1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let shards = (max_bytes / MIN_SHARD_BYTES).clamp(1, cores * SHARDS_PER_CORE);
        // quick_cache rounds the shard count up to a power of two: round it
        // down here, so that no shard is smaller than MIN_SHARD_BYTES.
        let shards = 1u64 << shards.ilog2();
        // ...and halves it while a shard is sized for fewer than 32 entries:
        // size each for at least that many.
        let items = (max_bytes / TYPICAL_ENTRY_BYTES).max(32 * shards);
        let items = usize::try_from(items).unwrap_or(usize::MAX);
        // Each shard gets the capacity divided by the shard count, rounded
        // up: a multiple of it keeps the shards' sum within `max_bytes`.
        let capacity = max_bytes - max_bytes % shards;
        // `shards` is at most 4x the core count: the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let options = OptionsBuilder::new()
            .shards(shards as usize)
            .estimated_items_capacity(items)
            .weight_capacity(capacity)
            .hot_allocation(HOT_ALLOCATION)
            .build();
        let map = match options {
            Ok(options) => {
                Cache::with_options(options, Weight, Default::default(), Default::default())
            }
            // Cannot happen (every option is set); quick_cache's defaults
            // with the same bound would do.
            Err(_) => Cache::with_weighter(items, capacity, Weight),
        };
        // quick_cache's admission rule (`weight > weight_target_hot` is
        // refused), with the shard capacity it computed.
        let shard = map.shard_capacity();
        // The f64 round trip is exact for any realistic capacity, and
        // quick_cache computes the same product the same way.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let largest = ((shard as f64 * HOT_ALLOCATION) as u64).clamp(shard.min(1), shard);
        Tier { map, largest }
    }

    /// The bytes under `key`, unless absent or expired (an expired entry is
    /// removed on the way).
    pub(crate) fn get(&self, key: &str) -> Option<Bytes> {
        let entry = self.map.get(key)?;
        let now = clock::coarse();
        if entry.expired(now) {
            // Only if it is still the expired one: a fresh entry written
            // meanwhile stays.
            self.map.remove_if(key, |entry| entry.expired(now));
            return None;
        }
        Some(entry.bytes)
    }

    /// Stores `bytes` under `key` for `ttl`. Returns false, having removed
    /// whatever `key` held, when the entry is heavier than a shard admits
    /// ([`largest`](Self::largest)): the key then reads as absent, never as
    /// its old value.
    pub(crate) fn insert(&self, key: &str, bytes: Bytes, ttl: Duration) -> bool {
        if weight(key, &bytes) > self.largest {
            self.map.remove(key);
            return false;
        }
        let ttl = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        let deadline = clock::precise().saturating_add(ttl);
        self.map.insert(key.to_owned(), Entry { bytes, deadline });
        true
    }

    /// Removes `key`.
    pub(crate) fn remove(&self, key: &str) {
        self.map.remove(key);
    }

    /// Removes every entry (the near tier's flush).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn clear(&self) {
        self.map.clear();
    }

    /// The keys of the entries not expired, for tests and tools.
    pub(crate) fn keys(&self) -> Vec<String> {
        let now = clock::coarse();
        self.map
            .iter()
            .filter(|(_, entry)| !entry.expired(now))
            .map(|(key, _)| key)
            .collect()
    }

    /// Entries held, expired ones not yet removed included.
    pub(crate) fn entries(&self) -> u64 {
        self.map.len() as u64
    }

    /// Bytes held (keys plus values), expired entries not yet removed
    /// included.
    pub(crate) fn bytes(&self) -> u64 {
        self.map.weight()
    }

    /// The heaviest entry (key plus value) the tier stores.
    #[cfg(test)]
    pub(crate) fn largest(&self) -> u64 {
        self.largest
    }
}

/// Monotonic time in nanoseconds, two ways.
///
/// On Linux, `precise` is `CLOCK_MONOTONIC` (what `Instant` reads, ~20 ns)
/// and `coarse` is `CLOCK_MONOTONIC_COARSE` (~7 ns, both through the vDSO):
/// the same clock, as of the last timekeeping tick. So `coarse` is never
/// ahead of `precise`, and lags it by about one tick (`clock_getres`
/// reports the tick: 1-10 ms depending on the kernel's `HZ`, 4 ms on the
/// machine the benchmarks ran on). Deadlines are set with `precise` and
/// checked with `coarse`: an entry never reads as expired before its
/// deadline, and does at most about one tick after it. That is within what
/// the consumers need: leases and tombstones live for seconds, the near
/// tier's `max_age` is a staleness bound of seconds, and Redis itself
/// expires keys with millisecond resolution.
///
/// Elsewhere both read `Instant` (exact, a little slower per read).
mod clock {
    #[cfg(target_os = "linux")]
    fn nanos(clock: rustix::time::ClockId) -> u64 {
        let now = rustix::time::clock_gettime(clock);
        let secs = u64::try_from(now.tv_sec).unwrap_or(0);
        let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
        secs.saturating_mul(1_000_000_000).saturating_add(nanos)
    }

    /// Now, exactly.
    #[cfg(target_os = "linux")]
    pub(super) fn precise() -> u64 {
        nanos(rustix::time::ClockId::Monotonic)
    }

    /// Now, as of the last tick: never ahead of [`precise`].
    #[cfg(target_os = "linux")]
    pub(super) fn coarse() -> u64 {
        nanos(rustix::time::ClockId::MonotonicCoarse)
    }

    #[cfg(not(target_os = "linux"))]
    fn since_start() -> u64 {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let start = *START.get_or_init(std::time::Instant::now);
        u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn precise() -> u64 {
        since_start()
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn coarse() -> u64 {
        since_start()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Longer than any kernel tick (HZ >= 100), so that the coarse clock
    /// has passed a deadline this far behind.
    const TICK_BOUND: Duration = Duration::from_millis(50);

    fn bytes(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    #[test]
    fn coarse_clock_is_never_ahead_of_the_precise_one() {
        for _ in 0..100_000 {
            let precise = clock::precise();
            let coarse = clock::coarse();
            // Read after `precise`, so it cannot be ahead of it either.
            assert!(
                coarse <= clock::precise(),
                "coarse {coarse} ahead of precise {precise}"
            );
        }
    }

    #[test]
    fn an_entry_past_its_deadline_reads_as_absent_and_is_removed() {
        let tier = Tier::new(1 << 20);
        assert!(tier.insert("short", bytes(10), Duration::from_millis(1)));
        assert!(tier.insert("long", bytes(10), Duration::from_secs(3600)));
        // Never early: a deadline an hour away is not reached.
        assert_eq!(tier.get("long"), Some(bytes(10)));
        std::thread::sleep(TICK_BOUND);
        assert_eq!(tier.entries(), 2, "expiry is lazy: still held");
        assert_eq!(tier.keys(), vec!["long".to_owned()]);
        assert_eq!(tier.get("short"), None);
        assert_eq!(tier.entries(), 1, "the read removed it");
        assert_eq!(tier.bytes(), weight("long", &bytes(10)));
        assert_eq!(tier.get("long"), Some(bytes(10)));
    }

    #[test]
    fn a_rewrite_sets_a_new_deadline() {
        let tier = Tier::new(1 << 20);
        assert!(tier.insert("key", bytes(1), Duration::from_millis(1)));
        assert!(tier.insert("key", bytes(2), Duration::from_secs(3600)));
        std::thread::sleep(TICK_BOUND);
        assert_eq!(tier.get("key"), Some(bytes(2)));
    }

    #[test]
    fn the_byte_bound_evicts() {
        let max = 64 * 1024;
        let tier = Tier::new(max);
        for i in 0..200 {
            assert!(tier.insert(&format!("key:{i:03}"), bytes(1000), Duration::from_secs(60)));
            assert!(
                tier.bytes() <= max,
                "{} bytes held, bound {max}",
                tier.bytes()
            );
        }
        let held = (0..200)
            .filter(|i| tier.get(&format!("key:{i:03}")).is_some())
            .count();
        assert!(held > 0 && held < 200, "{held} of 200 held");
        assert_eq!(tier.entries(), held as u64);
    }

    #[test]
    fn an_oversized_entry_is_refused_and_the_old_one_removed() {
        let tier = Tier::new(64 * 1024);
        let key = "key";
        let fits = usize::try_from(tier.largest()).unwrap() - key.len();
        assert!(tier.insert(key, bytes(fits), Duration::from_secs(60)));
        assert_eq!(
            tier.get(key),
            Some(bytes(fits)),
            "the largest entry is stored"
        );
        assert!(!tier.insert(key, bytes(fits + 1), Duration::from_secs(60)));
        assert_eq!(tier.get(key), None, "not the old value");
        assert_eq!((tier.entries(), tier.bytes()), (0, 0));
    }

    #[test]
    fn a_tier_of_8_mib_or_more_stores_entries_of_7_mib() {
        // The cache's default `max_entry_bytes` is 1 MiB; the MemoryStore's
        // default bound is 64 MiB. Whatever the core count, a shard holds
        // at least 8 MiB.
        for max in [8 << 20, 64 << 20, 1 << 30] {
            let tier = Tier::new(max);
            assert!(tier.largest() >= 7 << 20, "{max}: {}", tier.largest());
            assert!(tier.insert("big", bytes(7 << 20), Duration::from_secs(60)));
            assert!(tier.get("big").is_some());
        }
        // A smaller tier is one shard: almost all of it.
        let tier = Tier::new(1 << 20);
        assert!(tier.largest() >= (1 << 20) * 96 / 100);
    }

    #[test]
    fn removes_and_clears() {
        let tier = Tier::new(1 << 20);
        for key in ["a", "b", "c"] {
            assert!(tier.insert(key, bytes(3), Duration::from_secs(60)));
        }
        tier.remove("a");
        assert_eq!(tier.get("a"), None);
        assert_eq!(tier.entries(), 2);
        tier.clear();
        assert_eq!((tier.entries(), tier.bytes()), (0, 0));
        assert!(tier.keys().is_empty());
    }
}
