//! The store key layout.
//!
//! `ci:{<model>:<pk>}:<version>:<schema hash>`. The braces are a Redis Cluster
//! hash tag: every version of an instance lives in one slot, so a write can
//! touch them all atomically. Model and version names are checked by the
//! derive (ASCII alphanumerics, `_`, `-`, `.`), and pk key forms escape `:`,
//! `{` and `}`, so the tag and the separators are unambiguous.

use std::fmt::Write;

use crate::instance::Schema;

/// The key of one version of an instance, from the pk's key form.
pub(crate) fn instance_key(schema: &Schema, pk_key: &str) -> String {
    let mut key =
        String::with_capacity(schema.model.len() + schema.version.len() + pk_key.len() + 26);
    key.push_str("ci:{");
    key.push_str(schema.model);
    key.push(':');
    key.push_str(pk_key);
    key.push_str("}:");
    key.push_str(schema.version);
    // Writing to a String cannot fail.
    let _ = write!(key, ":{:016x}", schema.hash);
    key
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
    }
}
