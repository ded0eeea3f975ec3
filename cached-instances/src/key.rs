//! The store key layout.
//!
//! `ci:{<model>:<pk>}:<version>:<schema hash>`. The braces are a Redis Cluster
//! hash tag: every version of an instance lives in one slot, so a write can
//! touch them all atomically. Model and version names are checked by the
//! derive (ASCII alphanumerics, `_`, `-`, `.`), and pk key forms escape `:`,
//! `{` and `}`, so the tag and the separators are unambiguous.

use crate::instance::Schema;

/// The key of one version of an instance, from the pk's key form.
///
/// On every read's path (once per key of a multi-get), so the hash is
/// written by hand: `write!` with `{:016x}` cost more than the rest of the
/// key (about 600 instructions a key, measured with callgrind).
pub(crate) fn instance_key(schema: &Schema, pk_key: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut key =
        String::with_capacity(schema.model.len() + schema.version.len() + pk_key.len() + 26);
    key.push_str("ci:{");
    key.push_str(schema.model);
    key.push(':');
    key.push_str(pk_key);
    key.push_str("}:");
    key.push_str(schema.version);
    key.push(':');
    for shift in (0..16).rev() {
        key.push(char::from(
            HEX[((schema.hash >> (shift * 4)) & 0xf) as usize],
        ));
    }
    key
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
