//! The fuzz targets. Each takes arbitrary bytes and panics on a violated
//! property. Shared by the cargo-fuzz binaries (`crate::models` is the
//! polls models there) and by `tests/fuzz_corpus.rs` (where `crate::models`
//! is `polls::models`).

use std::time::Duration;

use cached_instances::{Cache, CachedInstance, LoadError, Loader, MemoryStore, PrimaryKey};

use crate::models::{Choice, Question, User};

/// Decoding cached bytes as each polls model: never panics; whatever
/// decodes re-encodes, decodes back to the same value, and re-encodes to
/// the same bytes (one canonical representation per value); its relation
/// links can be read.
pub fn decode(data: &[u8]) {
    decode_as::<User>(data);
    decode_as::<Question>(data);
    decode_as::<Choice>(data);
}

fn decode_as<T: CachedInstance + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let Ok(value) = T::decode(data) else {
        return;
    };
    let encoded = value
        .to_json()
        .unwrap_or_else(|e| panic!("decoded {} does not encode: {e}", T::MODEL));
    let again = T::decode(&encoded).unwrap_or_else(|e| {
        panic!(
            "the encoding of a decoded {} does not decode: {e}",
            T::MODEL
        )
    });
    assert_eq!(again, value, "{} round trip", T::MODEL);
    assert_eq!(
        again.to_json().unwrap(),
        encoded,
        "{}: two encodings of one value",
        T::MODEL
    );
    let mut links = Vec::new();
    for relation in 0..T::SCHEMA.relations.len() {
        value.relation_links(relation, &mut links);
    }
}

/// String pks and key forms: `from_key` inverts `write_key`, the key form
/// is safe inside a store key, and no parse of arbitrary text panics.
pub fn keys(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let pk = text.to_string();
    let key = pk.to_key();
    assert!(
        !key.contains([':', '{', '}']) && !key.chars().any(|c| c.is_whitespace() || c.is_control()),
        "unsafe key form {key:?} of {pk:?}"
    );
    assert_eq!(
        String::from_key(&key),
        Some(pk.clone()),
        "round trip of {pk:?}"
    );
    // Arbitrary text as a key form or a URL segment: no panic, and what
    // parses names a pk whose own key form parses back to it.
    if let Some(parsed) = String::from_key(&text) {
        assert_eq!(String::from_key(&parsed.to_key()), Some(parsed));
    }
    assert_eq!(String::from_url(&text), Some(pk));
    for parse in [i64::from_key, i64::from_url] {
        if let Some(n) = parse(&text) {
            assert_eq!(i64::from_key(&n.to_key()), Some(n));
        }
    }
    let _ = u8::from_key(&text);
    let _ = i128::from_url(&text);
}

/// Question 1 as the database has it; the other models have no rows.
pub fn expected_question() -> Question {
    Question {
        id: 1,
        question_text: "What's up?".into(),
        pub_date: chrono::DateTime::from_timestamp(1_767_268_800, 0).unwrap(),
        choices: vec![1, 2],
    }
}

struct Db;

impl Loader<Question> for Db {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Question>, LoadError> {
        Ok(pks
            .iter()
            .filter(|&&pk| pk == 1)
            .map(|_| expected_question())
            .collect())
    }
}

impl Loader<Choice> for Db {
    async fn load(&self, _: &[i64]) -> Result<Vec<Choice>, LoadError> {
        Ok(Vec::new())
    }
}

impl Loader<User> for Db {
    async fn load(&self, _: &[i64]) -> Result<Vec<User>, LoadError> {
        Ok(Vec::new())
    }
}

/// The size limit of the cache under test: small, so that oversized
/// entries are fuzzed too.
pub const MAX_ENTRY_BYTES: usize = 512;

/// Bytes under Question 1's key, read through every read API: never a
/// panic, never an error, and the answer is either the database's row or
/// the bytes themselves when they are a representation the read may serve
/// (a full decode for `get`/`get_many`; for `get_json`/`get_many_json`, the
/// documented cheap check: within the size limit, one object with the
/// model's field names in order, or a full decode until the cache has
/// learned the names).
pub fn cache_read(data: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = MemoryStore::new();
        let cache = Cache::builder()
            .store(store.clone())
            .loader::<Question>(Db)
            .loader::<Choice>(Db)
            .loader::<User>(Db)
            .max_entry_bytes(MAX_ENTRY_BYTES)
            // A lease-looking value is waited on: keep the wait short.
            .lease_wait(Duration::from_millis(1))
            .build()
            .unwrap();
        let expected = expected_question();
        let expected_json = expected.to_json().unwrap();
        let key = cache.key_of::<Question>(&1).unwrap();
        let decoded = Question::decode(data).ok();
        let servable = data.len() <= MAX_ENTRY_BYTES;
        // Twice: before the cache learned the model's field names (a full
        // decode validates) and after.
        for _ in 0..2 {
            store.put_raw(&key, data.to_vec(), Duration::from_secs(60));
            let got = cache.get::<Question>(&1).await.unwrap().unwrap();
            assert!(
                got == expected || (servable && Some(&got) == decoded.as_ref()),
                "get served {got:?}"
            );

            store.put_raw(&key, data.to_vec(), Duration::from_secs(60));
            let got = cache.get_many::<Question>(&[1, 7]).await.unwrap();
            assert!(
                got.len() == 1
                    && (got[0] == expected || (servable && Some(&got[0]) == decoded.as_ref())),
                "get_many served {got:?}"
            );

            for many in [false, true] {
                store.put_raw(&key, data.to_vec(), Duration::from_secs(60));
                let got = if many {
                    let mut all = cache.get_many_json::<Question>(&[1]).await.unwrap();
                    assert_eq!(all.len(), 1);
                    all.pop().unwrap()
                } else {
                    cache.get_json::<Question>(&1).await.unwrap().unwrap()
                };
                if got[..] != expected_json[..] {
                    assert_eq!(
                        &got[..],
                        data,
                        "served neither the row nor the stored bytes"
                    );
                    // Before the cache learned the field names, a full decode
                    // decided (a valid representation with its fields in
                    // another order passes); after, the cheap check.
                    assert!(
                        servable && (looks_like_a_question(data) || decoded.is_some()),
                        "served {:?}",
                        String::from_utf8_lossy(data)
                    );
                }
            }
            // After a miss, the entry was replaced by the row.
            assert!(store.raw(&key).is_some());
        }
        assert_eq!(cache.stats().store_errors, 0);
    });
}

/// The documented check of bytes served without decoding.
fn looks_like_a_question(data: &[u8]) -> bool {
    let Some(mut rest) = data.strip_prefix(br#"{"id":"#) else {
        return false;
    };
    if data.last() != Some(&b'}') {
        return false;
    }
    for name in [
        &br#","question_text":"#[..],
        br#","pub_date":"#,
        br#","choices":"#,
    ] {
        match rest.windows(name.len()).position(|w| w == name) {
            Some(at) => rest = &rest[at + name.len()..],
            None => return false,
        }
    }
    true
}
