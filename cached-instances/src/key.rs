//! The store key layout.
//!
//! `ci:{<model>:<pk>}:<version>:<schema hash>`. The braces are a Redis Cluster
//! hash tag: every version of an instance lives in one slot, so a write can
//! touch them all atomically. Model and version names are checked by the
//! derive (ASCII alphanumerics, `_`, `-`, `.`), and pk key forms escape `:`,
//! `{` and `}`, so the tag and the separators are unambiguous.

use std::cell::RefCell;

use crate::instance::Schema;
use crate::pk::PrimaryKey;

/// The largest key buffer a thread keeps between reads
/// ([`KeyLayout::with_key_of`]).
const MAX_KEPT_BUFFER: usize = 1024;

/// The key of one version of an instance, from the pk's key form.
#[cfg(test)]
fn instance_key(schema: &Schema, pk_key: &str) -> String {
    KeyLayout::of(schema).key(pk_key)
}

/// The keys of one registered model version: the parts around the pk,
/// built once, so that a read's key costs one allocation and a copy.
#[derive(Debug, Clone)]
pub(crate) struct KeyLayout {
    /// `ci:{<model>:`
    head: Box<str>,
    /// `}:<version>:<schema hash>`
    tail: Box<str>,
}

impl KeyLayout {
    pub(crate) fn of(schema: &Schema) -> Self {
        KeyLayout {
            head: format!("ci:{{{}:", schema.model).into(),
            tail: format!("}}:{}:{:016x}", schema.version, schema.hash).into(),
        }
    }

    /// The key of the pk whose key form is `pk_key`.
    pub(crate) fn key(&self, pk_key: &str) -> String {
        let mut key = self.with_room(pk_key.len());
        key.push_str(pk_key);
        key.push_str(&self.tail);
        key
    }

    /// The key of `pk`, its key form written in place.
    pub(crate) fn key_of<P: PrimaryKey>(&self, pk: &P) -> String {
        // Room for an integer or a UUID; a longer key form grows it once.
        let mut key = self.with_room(36);
        pk.write_key(&mut key);
        key.push_str(&self.tail);
        key
    }

    /// Calls `f` with the key of `pk`, written into a buffer this thread
    /// reuses: the key of an in-process read costs no allocation. Falls
    /// back to a fresh key if the buffer is in use (`f` reading another
    /// key through it) or gone (a thread being torn down). `f` runs once.
    pub(crate) fn with_key_of<P: PrimaryKey, R>(&self, pk: &P, mut f: impl FnMut(&str) -> R) -> R {
        thread_local! {
            static BUFFER: RefCell<String> = const { RefCell::new(String::new()) };
        }
        let on_buffer = BUFFER.try_with(|buffer| {
            let mut key = buffer.try_borrow_mut().ok()?;
            key.clear();
            key.push_str(&self.head);
            pk.write_key(&mut key);
            key.push_str(&self.tail);
            let result = f(&key);
            // A huge pk's key is not kept for the thread's lifetime.
            if key.capacity() > MAX_KEPT_BUFFER {
                *key = String::new();
            }
            Some(result)
        });
        match on_buffer {
            Ok(Some(result)) => result,
            _ => f(&self.key_of(pk)),
        }
    }

    fn with_room(&self, pk_len: usize) -> String {
        let mut key = String::with_capacity(self.head.len() + pk_len + self.tail.len());
        key.push_str(&self.head);
        key
    }
}

/// FNV-1a, the hash the derive uses for field ids and schema hashes, and
/// the store for the prefix of a model's index keys.
#[must_use]
pub const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_of_writes_the_key_form_in_place() {
        let schema = Schema::new("Question", "v2", 0xab, None, &[], &[]);
        let layout = KeyLayout::of(&schema);
        assert_eq!(layout.key_of(&42_i64), layout.key("42"));
        let long = "x".repeat(100);
        assert_eq!(layout.key_of(&long), layout.key(&long.to_key()));
    }

    #[test]
    fn with_key_of_lends_the_same_key_and_survives_reentry() {
        let schema = Schema::new("Question", "v2", 0xab, None, &[], &[]);
        let layout = KeyLayout::of(&schema);
        let long = "y".repeat(5_000);
        for pk in ["42".to_owned(), long, String::new(), "7".to_owned()] {
            let outer = layout.with_key_of(&pk, |key| {
                // Reentered: the buffer is in use, a fresh key is made.
                let inner = layout.with_key_of(&pk, str::to_owned);
                assert_eq!(inner, key);
                key.to_owned()
            });
            assert_eq!(outer, layout.key_of(&pk));
        }
    }

    #[test]
    fn layout() {
        let schema = Schema::new("Question", "v2", 0xab, None, &[], &[]);
        assert_eq!(
            instance_key(&schema, "42"),
            "ci:{Question:42}:v2:00000000000000ab"
        );
        let schema = Schema::new("Question", "v2", 0x0123_4567_89ab_cdef, None, &[], &[]);
        assert_eq!(
            instance_key(&schema, "42"),
            format!("ci:{{Question:42}}:v2:{:016x}", 0x0123_4567_89ab_cdef_u64)
        );
    }
}
