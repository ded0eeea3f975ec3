//! The contract every [`Store`] honours, as one suite run against each
//! implementation (`tests/store_conformance.rs`).
//!
//! Keys carry hash tags, most of them distinct, so that on a Redis Cluster a
//! batch spans many slots and nodes; every run uses a fresh key prefix, so
//! runs against one server do not interfere.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cached_instances::Store;
use cached_instances::store::{CompareAndSet, InProcess};

const LONG: Duration = Duration::from_secs(60);
/// The TTL of the expiry checks: short, but well above a round trip.
const SHORT: Duration = Duration::from_millis(150);

/// Keys unique to one run of one check.
struct Keys(String);

impl Keys {
    fn new(check: &str) -> Keys {
        static RUN: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Keys(format!(
            "{check}-{nanos:x}-{}",
            RUN.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// A key in its own slot: `ci:{<run>:<n>}:v1`, the cache's layout.
    fn own(&self, n: usize) -> String {
        format!("ci:{{{}:{n}}}:v1", self.0)
    }

    /// `n` keys, each in its own hash tag.
    fn many(&self, n: usize) -> Vec<String> {
        (0..n).map(|i| self.own(i)).collect()
    }

    /// A key sharing the hash tag `tag` with the other keys of that tag
    /// (the versions of one instance).
    fn tagged(&self, tag: &str, version: &str) -> String {
        format!("ci:{{{}:{tag}}}:{version}", self.0)
    }

    /// A key without a hash tag.
    fn plain(&self, n: usize) -> String {
        format!("plain:{}:{n}", self.0)
    }
}

fn b(bytes: &[u8]) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(bytes))
}

fn cas(key: &str, expected: &[u8], value: &[u8], ttl: Duration) -> CompareAndSet {
    CompareAndSet {
        key: key.to_owned(),
        expected: Bytes::copy_from_slice(expected),
        value: Bytes::copy_from_slice(value),
        ttl,
    }
}

/// Polls until `key` is absent, or panics after `within`.
async fn assert_expires<S: Store>(store: &S, key: &str, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        if store.get(key).await.unwrap().is_none() {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {key} did not expire");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs every check against `store`.
pub async fn run_all<S: Store>(store: &S) {
    absent_keys_read_as_none(store).await;
    empty_batches(store).await;
    set_if_absent_or_contract(store).await;
    set_if_absent_contract(store).await;
    compare_and_set_contract(store).await;
    swap_many_contract(store).await;
    delete_many_contract(store).await;
    binary_values(store).await;
    many_keys_keep_their_order(store).await;
    mixed_hash_tags(store).await;
    duplicate_keys_apply_in_order(store).await;
    compare_and_set_of_many_distinct_values(store).await;
    ttls_expire(store).await;
    in_process_reads_agree_with_get(store).await;
}

/// Asserts that what `store` can tell of `key` in process, if anything, is
/// what `get` reads, checked before and after the `get` (a read can bring
/// the key into process memory, as a near cache's does).
async fn assert_in_process_agrees<S: Store>(store: &S, key: &str, what: &str) {
    let before = store.get_in_process(key);
    let got = store.get(key).await.unwrap();
    let after = store.get_in_process(key);
    for probed in [before, after] {
        match probed {
            InProcess::Unknown => {}
            InProcess::Absent => assert_eq!(got, None, "{what}: in process, absent"),
            InProcess::Holds(bytes) => {
                assert_eq!(got, Some(bytes), "{what}: in process, other bytes");
            }
        }
    }
}

/// `get_in_process` never contradicts `get`: not for an absent key, an
/// entry, a marker, nor right after each kind of write (a store's own
/// writes are seen in process at once), nor after a read of many keys.
pub async fn in_process_reads_agree_with_get<S: Store>(store: &S) {
    let keys = Keys::new("in-process");
    let [key, other] = [0, 1].map(|n| keys.own(n));
    let one = std::slice::from_ref(&key);
    assert_in_process_agrees(store, &key, "never written").await;
    store.swap_many(one, b"{\"v\":1}", LONG).await.unwrap();
    assert_in_process_agrees(store, &key, "an entry").await;
    assert_in_process_agrees(store, &key, "an entry, read again").await;
    store.swap_many(one, b"{\"v\":2}", LONG).await.unwrap();
    assert_in_process_agrees(store, &key, "swapped").await;
    store
        .compare_and_set(&[cas(&key, b"{\"v\":2}", b"{\"v\":3}", LONG)])
        .await
        .unwrap();
    assert_in_process_agrees(store, &key, "compare-and-set").await;
    store.swap_many(one, b"\0T", LONG).await.unwrap();
    assert_in_process_agrees(store, &key, "a tombstone").await;
    store
        .set_if_absent_or(one, b"\0Lmine", b"\0T", LONG)
        .await
        .unwrap();
    assert_in_process_agrees(store, &key, "a lease").await;
    store
        .compare_and_set(&[cas(&key, b"\0Lmine", b"{\"v\":4}", LONG)])
        .await
        .unwrap();
    assert_in_process_agrees(store, &key, "filled").await;
    store.delete_many(one).await.unwrap();
    assert_in_process_agrees(store, &key, "deleted").await;
    store
        .swap_many(&[key.clone(), other.clone()], b"{\"v\":5}", LONG)
        .await
        .unwrap();
    store.get_many(&[key.clone(), other.clone()]).await.unwrap();
    assert_in_process_agrees(store, &key, "read by get_many").await;
    assert_in_process_agrees(store, &other, "read by get_many").await;
    // Leaves nothing behind (a cluster test counts the keys after the suite).
    store.delete_many(&[key, other]).await.unwrap();
}

/// `get` and `get_many` of keys never written.
pub async fn absent_keys_read_as_none<S: Store>(store: &S) {
    let keys = Keys::new("absent");
    assert_eq!(store.get(&keys.own(0)).await.unwrap(), None);
    let many = keys.many(5);
    assert_eq!(store.get_many(&many).await.unwrap(), vec![None; 5]);
}

/// Every primitive accepts an empty batch and answers an empty one.
pub async fn empty_batches<S: Store>(store: &S) {
    assert!(store.get_many(&[]).await.unwrap().is_empty());
    assert!(
        store
            .set_if_absent_or(&[], b"v", b"r", LONG)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .set_if_absent(&[], b"v", LONG)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.compare_and_set(&[]).await.unwrap().is_empty());
    assert!(store.swap_many(&[], b"v", LONG).await.unwrap().is_empty());
    store.delete_many(&[]).await.unwrap();
}

/// Absent keys and keys holding exactly `replaceable` are set (`None`);
/// any other key is left and its bytes returned.
pub async fn set_if_absent_or_contract<S: Store>(store: &S) {
    let keys = Keys::new("siao");
    let [absent, replaceable, other, prefixed] = [0, 1, 2, 3].map(|n| keys.own(n));
    store
        .swap_many(std::slice::from_ref(&replaceable), b"\0T", LONG)
        .await
        .unwrap();
    store
        .swap_many(std::slice::from_ref(&other), b"{\"v\":1}", LONG)
        .await
        .unwrap();
    // The replaceable bytes as a prefix are not the replaceable bytes.
    store
        .swap_many(std::slice::from_ref(&prefixed), b"\0Tx", LONG)
        .await
        .unwrap();

    let batch = vec![
        absent.clone(),
        replaceable.clone(),
        other.clone(),
        prefixed.clone(),
    ];
    let out = store
        .set_if_absent_or(&batch, b"\0Llease", b"\0T", LONG)
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![None, None, b(b"{\"v\":1}"), b(b"\0Tx")],
        "absent and replaceable are set, the others returned in order"
    );
    assert_eq!(
        store.get_many(&batch).await.unwrap(),
        vec![b(b"\0Llease"), b(b"\0Llease"), b(b"{\"v\":1}"), b(b"\0Tx")]
    );

    // Now every key holds something other than the replaceable bytes.
    let again = store
        .set_if_absent_or(&batch, b"\0Lother", b"\0T", LONG)
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![b(b"\0Llease"), b(b"\0Llease"), b(b"{\"v\":1}"), b(b"\0Tx")]
    );
    store.delete_many(&batch).await.unwrap();
}

/// Each absent key is set and reported set; a key that exists (an entry,
/// a tombstone, a lease) is left as it is and reported not set. A store
/// that sets a batch all or none (a single Redis server's `MSETNX`) may
/// leave the absent keys of a batch with an existing one unset too, and
/// says so.
pub async fn set_if_absent_contract<S: Store>(store: &S) {
    let keys = Keys::new("sia");
    for held in [&b"{\"v\":1}"[..], b"\0T", b"\0Lother"] {
        let batch = keys.many(4);
        store
            .swap_many(std::slice::from_ref(&batch[2]), held, LONG)
            .await
            .unwrap();
        let set = store.set_if_absent(&batch, b"\0Lnew", LONG).await.unwrap();
        assert_eq!(set.len(), 4);
        assert!(!set[2], "{held:?} exists: not set");
        let now = store.get_many(&batch).await.unwrap();
        for (i, (set, now)) in set.iter().zip(&now).enumerate() {
            let expected = match (i, set) {
                (2, _) => b(held),
                (_, true) => b(b"\0Lnew"),
                (_, false) => None,
            };
            assert_eq!(*now, expected, "key {i} of a batch with {held:?}");
        }
        store.delete_many(&batch).await.unwrap();
    }
    let batch = keys.many(4);
    let set = store.set_if_absent(&batch, b"\0Lall", LONG).await.unwrap();
    assert_eq!(set, [true; 4], "a batch of absent keys is set");
    assert_eq!(store.get_many(&batch).await.unwrap(), vec![b(b"\0Lall"); 4]);
    let again = store
        .set_if_absent(&batch, b"\0Lagain", LONG)
        .await
        .unwrap();
    assert_eq!(again, [false; 4], "every key exists now");
    assert_eq!(store.get_many(&batch).await.unwrap(), vec![b(b"\0Lall"); 4]);
    store.delete_many(&batch).await.unwrap();
}

/// Writes exactly where the key holds `expected`; absent keys never match.
pub async fn compare_and_set_contract<S: Store>(store: &S) {
    let keys = Keys::new("cas");
    let [matching, mismatching, absent, other_ttl] = [0, 1, 2, 3].map(|n| keys.own(n));
    store
        .swap_many(&[matching.clone(), other_ttl.clone()], b"\0Lmine", LONG)
        .await
        .unwrap();
    store
        .swap_many(std::slice::from_ref(&mismatching), b"\0Ltheirs", LONG)
        .await
        .unwrap();

    let ops = vec![
        cas(&matching, b"\0Lmine", b"{\"id\":1}", LONG),
        cas(&mismatching, b"\0Lmine", b"{\"id\":2}", LONG),
        cas(&absent, b"\0Lmine", b"{\"id\":3}", LONG),
        cas(&other_ttl, b"\0Lmine", b"\0T", Duration::from_secs(5)),
    ];
    assert_eq!(
        store.compare_and_set(&ops).await.unwrap(),
        vec![true, false, false, true],
        "per-op outcome, in order"
    );
    assert_eq!(
        store
            .get_many(&[
                matching.clone(),
                mismatching.clone(),
                absent.clone(),
                other_ttl.clone()
            ])
            .await
            .unwrap(),
        vec![b(b"{\"id\":1}"), b(b"\0Ltheirs"), None, b(b"\0T")]
    );

    // The lease is gone: a second fill with it is rejected.
    assert_eq!(store.compare_and_set(&ops[..1]).await.unwrap(), vec![false]);
    store
        .delete_many(&[matching, mismatching, absent, other_ttl])
        .await
        .unwrap();
}

/// Sets every key, returning what each held before (`None` if absent).
pub async fn swap_many_contract<S: Store>(store: &S) {
    let keys = Keys::new("swap");
    let batch = keys.many(4);
    store
        .swap_many(&batch[1..2], b"{\"a\":1}", LONG)
        .await
        .unwrap();
    store.swap_many(&batch[3..4], b"\0Lx", LONG).await.unwrap();

    let olds = store.swap_many(&batch, b"\0T", LONG).await.unwrap();
    assert_eq!(olds, vec![None, b(b"{\"a\":1}"), None, b(b"\0Lx")]);
    assert_eq!(store.get_many(&batch).await.unwrap(), vec![b(b"\0T"); 4]);

    let olds = store.swap_many(&batch, b"{}", LONG).await.unwrap();
    assert_eq!(olds, vec![b(b"\0T"); 4]);
    store.delete_many(&batch).await.unwrap();
}

/// Deletes present keys; absent keys are no error.
pub async fn delete_many_contract<S: Store>(store: &S) {
    let keys = Keys::new("del");
    let batch = keys.many(6);
    store.swap_many(&batch[..3], b"{}", LONG).await.unwrap();
    store.delete_many(&batch).await.unwrap();
    assert_eq!(store.get_many(&batch).await.unwrap(), vec![None; 6]);
    store.delete_many(&batch).await.unwrap();
    // A deleted key is absent again for the conditional primitives.
    assert_eq!(
        store
            .set_if_absent_or(&batch[..1], b"v", b"\0T", LONG)
            .await
            .unwrap(),
        vec![None]
    );
    store.delete_many(&batch).await.unwrap();
}

/// Values are bytes: NULs, invalid UTF-8, the empty value, large values.
pub async fn binary_values<S: Store>(store: &S) {
    let keys = Keys::new("bin");
    let values: Vec<Vec<u8>> = vec![
        b"\0".to_vec(),
        b"\0T".to_vec(),
        vec![
            0, b'L', 0, 0, 0xff, 0xfe, 0, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 9,
        ],
        vec![0xff, 0xc3, 0x28, 0x00, 0x80],
        Vec::new(),
        (0..=255u8).cycle().take(256 * 1024).collect(),
        "{\"text\":\"caf\u{e9} \u{2603} \\u0000\"}"
            .as_bytes()
            .to_vec(),
    ];
    let batch = keys.many(values.len());
    for (key, value) in batch.iter().zip(&values) {
        let olds = store
            .swap_many(std::slice::from_ref(key), value, LONG)
            .await
            .unwrap();
        assert_eq!(olds, vec![None]);
        assert_eq!(store.get(key).await.unwrap(), b(value), "get of {key}");
    }
    let expected: Vec<Option<Bytes>> = values.iter().map(|v| b(v)).collect();
    assert_eq!(store.get_many(&batch).await.unwrap(), expected);

    // Binary `expected` and `replaceable` compare byte for byte.
    let ops: Vec<CompareAndSet> = batch
        .iter()
        .zip(&values)
        .map(|(key, value)| cas(key, value, b"\0\0swapped\0", LONG))
        .collect();
    assert_eq!(
        store.compare_and_set(&ops).await.unwrap(),
        vec![true; values.len()]
    );
    let out = store
        .set_if_absent_or(&batch, b"\0L\0", b"\0\0swapped\0", LONG)
        .await
        .unwrap();
    assert_eq!(out, vec![None; values.len()]);
    assert_eq!(
        store.get_many(&batch).await.unwrap(),
        vec![b(b"\0L\0"); values.len()]
    );
    store.delete_many(&batch).await.unwrap();
}

/// Large batches in one call, every result in request order (more keys
/// than a Redis request carries, so split requests are reassembled).
pub async fn many_keys_keep_their_order<S: Store>(store: &S) {
    let keys = Keys::new("many");
    let n = 1500;
    let batch = keys.many(n);
    // Every third key is present, with a value naming its key.
    for chunk in batch.chunks(3) {
        store
            .swap_many(&chunk[..1], chunk[0].as_bytes(), LONG)
            .await
            .unwrap();
    }
    let expected: Vec<Option<Bytes>> = batch
        .iter()
        .enumerate()
        .map(|(i, k)| (i % 3 == 0).then(|| Bytes::from(k.clone())))
        .collect();

    // Reversed request order: the answers follow the request.
    let reversed: Vec<String> = batch.iter().rev().cloned().collect();
    let mut expected_reversed = expected.clone();
    expected_reversed.reverse();
    assert_eq!(store.get_many(&batch).await.unwrap(), expected);
    assert_eq!(store.get_many(&reversed).await.unwrap(), expected_reversed);

    let out = store
        .set_if_absent_or(&reversed, b"\0Lbig", b"\0T", LONG)
        .await
        .unwrap();
    assert_eq!(out, expected_reversed, "set_if_absent_or keeps order");

    let ops: Vec<CompareAndSet> = reversed
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let expected = if i % 2 == 0 { &b"\0Lbig"[..] } else { b"nope" };
            cas(key, expected, format!("{{\"i\":{i}}}").as_bytes(), LONG)
        })
        .collect();
    let written = store.compare_and_set(&ops).await.unwrap();
    for (i, (w, key)) in written.iter().zip(&reversed).enumerate() {
        let leased = expected_reversed[i].is_none();
        assert_eq!(*w, leased && i % 2 == 0, "compare_and_set of {key} (#{i})");
    }

    let olds = store.swap_many(&batch, b"\0T", LONG).await.unwrap();
    for (i, (old, key)) in olds.iter().zip(&batch).enumerate() {
        let ri = n - 1 - i;
        let want = if i % 3 == 0 {
            Some(Bytes::from(key.clone()))
        } else if ri % 2 == 0 {
            Some(Bytes::from(format!("{{\"i\":{ri}}}")))
        } else {
            Some(Bytes::from_static(b"\0Lbig"))
        };
        assert_eq!(old, &want, "swap_many of {key} (#{i})");
    }
    store.delete_many(&batch).await.unwrap();
    assert_eq!(store.get_many(&batch).await.unwrap(), vec![None; n]);
}

/// One batch mixing keys that share a hash tag (one slot), keys of other
/// tags (other slots and, on a cluster, other nodes) and untagged keys.
pub async fn mixed_hash_tags<S: Store>(store: &S) {
    let keys = Keys::new("tags");
    let batch = vec![
        keys.tagged("Question:1", "v1"),
        keys.plain(1),
        keys.tagged("Choice:7", "v1"),
        keys.tagged("Question:1", "v2"),
        keys.tagged("User:3", "default"),
        keys.plain(2),
        keys.tagged("Question:1", "v3"),
        keys.tagged("Choice:7", "v2"),
    ];
    let values: Vec<Vec<u8>> = (0..batch.len())
        .map(|i| format!("{{\"n\":{i}}}").into_bytes())
        .collect();
    let ops: Vec<CompareAndSet> = batch
        .iter()
        .zip(&values)
        .map(|(key, value)| cas(key, b"\0Lt", value, LONG))
        .collect();

    let out = store
        .set_if_absent_or(&batch, b"\0Lt", b"\0T", LONG)
        .await
        .unwrap();
    assert_eq!(out, vec![None; batch.len()]);
    assert_eq!(
        store.compare_and_set(&ops).await.unwrap(),
        vec![true; batch.len()]
    );
    let expected: Vec<Option<Bytes>> = values.iter().map(|v| b(v)).collect();
    assert_eq!(store.get_many(&batch).await.unwrap(), expected);
    for (key, value) in batch.iter().zip(&expected) {
        assert_eq!(&store.get(key).await.unwrap(), value);
    }
    let olds = store.swap_many(&batch, b"\0T", LONG).await.unwrap();
    assert_eq!(olds, expected);
    store.delete_many(&batch).await.unwrap();
    assert_eq!(
        store.get_many(&batch).await.unwrap(),
        vec![None; batch.len()]
    );
}

/// A key repeated in one batch is handled once per occurrence, in order.
pub async fn duplicate_keys_apply_in_order<S: Store>(store: &S) {
    let keys = Keys::new("dup");
    let (k, other) = (keys.own(0), keys.own(1));
    let batch = vec![k.clone(), other.clone(), k.clone()];
    let out = store
        .set_if_absent_or(&batch, b"\0Ld", b"\0T", LONG)
        .await
        .unwrap();
    assert_eq!(out, vec![None, None, b(b"\0Ld")]);
    assert_eq!(
        store.get_many(&batch).await.unwrap(),
        vec![b(b"\0Ld"); 3],
        "a repeated key reads the same at every position"
    );
    // Each op of a batch sees what the ones before it wrote.
    let ops = [
        cas(&k, b"\0Ld", b"{\"v\":1}", LONG),
        cas(&other, b"\0Ld", b"{}", LONG),
        cas(&k, b"{\"v\":1}", b"{\"v\":2}", LONG),
        cas(&k, b"\0Ld", b"{\"v\":3}", LONG),
    ];
    assert_eq!(
        store.compare_and_set(&ops).await.unwrap(),
        vec![true, true, true, false]
    );
    assert_eq!(store.get(&k).await.unwrap(), b(b"{\"v\":2}"));
    let olds = store.swap_many(&batch, b"{}", LONG).await.unwrap();
    assert_eq!(olds, vec![b(b"{\"v\":2}"), b(b"{}"), b(b"{}")]);
    store.delete_many(&batch).await.unwrap();
}

/// A `compare_and_set` batch whose ops each expect their own value and
/// carry their own TTL (more of each than one byte can number).
pub async fn compare_and_set_of_many_distinct_values<S: Store>(store: &S) {
    let keys = Keys::new("cas-distinct");
    let batch = keys.many(600);
    let held: Vec<Vec<u8>> = (0..batch.len())
        .map(|i| format!("\0L{i}").into_bytes())
        .collect();
    for (key, value) in batch.iter().zip(&held) {
        store
            .swap_many(std::slice::from_ref(key), value, LONG)
            .await
            .unwrap();
    }
    let ops: Vec<CompareAndSet> = batch
        .iter()
        .zip(&held)
        .enumerate()
        .map(|(i, (key, value))| {
            // Every third op expects another key's value.
            let expected = if i % 3 == 0 {
                &held[(i + 1) % held.len()]
            } else {
                value
            };
            let ttl = LONG + Duration::from_millis(i as u64);
            cas(key, expected, format!("{{\"i\":{i}}}").as_bytes(), ttl)
        })
        .collect();
    let written = store.compare_and_set(&ops).await.unwrap();
    let want: Vec<bool> = (0..batch.len()).map(|i| i % 3 != 0).collect();
    assert_eq!(written, want);
    let now = store.get_many(&batch).await.unwrap();
    for (i, value) in now.iter().enumerate() {
        let expected = if i % 3 == 0 {
            held[i].clone()
        } else {
            format!("{{\"i\":{i}}}").into_bytes()
        };
        assert_eq!(value.as_deref(), Some(&expected[..]), "key #{i}");
    }
    store.delete_many(&batch).await.unwrap();
}

/// Every writing primitive sets the TTL it is given; a later write's TTL
/// replaces the earlier one.
pub async fn ttls_expire<S: Store>(store: &S) {
    let keys = Keys::new("ttl");
    let [leased, filled, swapped, refreshed, kept] = [0, 1, 2, 3, 4].map(|n| keys.own(n));

    store
        .set_if_absent_or(std::slice::from_ref(&leased), b"\0L1", b"\0T", SHORT)
        .await
        .unwrap();
    store
        .set_if_absent_or(std::slice::from_ref(&filled), b"\0L2", b"\0T", LONG)
        .await
        .unwrap();
    assert_eq!(
        store
            .compare_and_set(&[cas(&filled, b"\0L2", b"{}", SHORT)])
            .await
            .unwrap(),
        vec![true]
    );
    store
        .swap_many(&[swapped.clone(), refreshed.clone()], b"\0T", SHORT)
        .await
        .unwrap();
    // A longer TTL replaces the short one.
    store
        .swap_many(std::slice::from_ref(&refreshed), b"{}", LONG)
        .await
        .unwrap();
    store
        .swap_many(std::slice::from_ref(&kept), b"{}", LONG)
        .await
        .unwrap();
    // The short ones are there right after the write...
    assert!(store.get(&swapped).await.unwrap().is_some());

    // ...and gone soon after.
    let within = Duration::from_secs(3);
    assert_expires(store, &leased, within, "set_if_absent_or TTL").await;
    assert_expires(store, &filled, within, "compare_and_set TTL").await;
    assert_expires(store, &swapped, within, "swap_many TTL").await;
    assert_eq!(
        store
            .get_many(&[refreshed.clone(), kept.clone()])
            .await
            .unwrap(),
        vec![b(b"{}"), b(b"{}")],
        "long TTLs outlive the short ones"
    );

    // An expired lease is absent, so leasable again.
    assert_eq!(
        store
            .set_if_absent_or(std::slice::from_ref(&leased), b"\0L3", b"\0T", LONG)
            .await
            .unwrap(),
        vec![None]
    );
    store
        .delete_many(&[leased, filled, swapped, refreshed, kept])
        .await
        .unwrap();
}
