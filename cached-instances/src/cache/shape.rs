//! What `get_json`/`get_many_json` check before serving cached bytes as a
//! model's representation without decoding them.
//!
//! Decoding every served entry would cost as much as the decode the JSON
//! reads exist to avoid (0.7 µs for a 140-byte `Question`, measured; a
//! `MemoryStore` hit costs about as much). Instead the bytes must look like
//! what this type's encoder writes: one JSON object (`{` ... `}`), no larger
//! than `max_entry_bytes`, whose top-level field names are this type's, in
//! its order (`{"id":`, then `,"question_text":`, ...). That scan costs
//! tens of nanoseconds and catches truncated values (the closing brace or
//! the last fields are gone), markers and foreign bytes, and objects of
//! another model or shape written under the key. What it lets through is a
//! value corrupted *inside* a field that keeps the field names and the
//! framing, which only `get`'s full decode notices; see CONSISTENCY.md.
//!
//! The field names are learned from the first representation the cache
//! encodes for the type (every fill, reload and write encodes one); until
//! then, bytes are validated by a full decode, which teaches the shape too.

use std::sync::OnceLock;

use crate::instance::CachedInstance;

/// The top-level field names of a type's representation, as its encoder
/// writes them: `{"first":` and then `,"next":` for each following field.
#[derive(Debug)]
pub(crate) struct Shape {
    patterns: Vec<Vec<u8>>,
}

impl Shape {
    /// The shape of `canonical`, a representation this crate's encoder
    /// wrote; `None` if it is not a flat JSON object.
    fn learn(canonical: &[u8]) -> Option<Shape> {
        use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};

        struct Names;
        impl<'de> Visitor<'de> for Names {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    names.push(name);
                }
                Ok(names)
            }
        }

        let mut de = serde_json::Deserializer::from_slice(canonical);
        let names = (&mut de).deserialize_map(Names).ok()?;
        de.end().ok()?;
        let mut patterns = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            // Escaped exactly as serde_json writes a key.
            let quoted = serde_json::to_string(name).ok()?;
            let mut pattern = Vec::with_capacity(quoted.len() + 2);
            pattern.push(if i == 0 { b'{' } else { b',' });
            pattern.extend_from_slice(quoted.as_bytes());
            pattern.push(b':');
            patterns.push(pattern);
        }
        // The encoder writes no whitespace: the learned patterns must be
        // found in the bytes they were learned from.
        let shape = Shape { patterns };
        shape.matches(canonical).then_some(shape)
    }

    /// Whether `bytes` is framed as one object and has this shape's field
    /// names in order. Stops at the last field name: the cost does not grow
    /// with a long last value (a relation list, say).
    fn matches(&self, bytes: &[u8]) -> bool {
        if bytes.last() != Some(&b'}') {
            return false;
        }
        let Some((first, rest)) = self.patterns.split_first() else {
            return bytes == b"{}";
        };
        if !bytes.starts_with(first) {
            return false;
        }
        let mut at = first.len();
        'fields: for pattern in rest {
            // Jump from comma to comma (memchr skips the values' bytes in
            // wide steps) to the one that starts this field name.
            while let Some(i) = memchr::memchr(b',', &bytes[at..]) {
                at += i;
                if bytes[at..].starts_with(pattern) {
                    at += pattern.len();
                    continue 'fields;
                }
                at += 1;
            }
            return false;
        }
        true
    }
}

/// A registered type's learned [`Shape`].
#[derive(Debug, Default)]
pub(crate) struct ShapeCell(OnceLock<Option<Shape>>);

impl ShapeCell {
    /// Learns the shape from a representation the encoder just wrote, if it
    /// is not known yet. Cheap once learned.
    pub(crate) fn learn_from(&self, canonical: &[u8]) {
        if self.0.get().is_none() {
            let _ = self.0.set(Shape::learn(canonical));
        }
    }

    /// Whether bytes read from the store may be served as `T`'s
    /// representation without decoding them.
    pub(crate) fn accepts<T: CachedInstance>(&self, bytes: &[u8]) -> bool {
        match self.0.get() {
            Some(Some(shape)) => shape.matches(bytes),
            // A type whose representation is not a flat object (never the
            // case for derived types): validate by decoding.
            Some(None) => T::decode(bytes).is_ok(),
            // Not learned yet: a full decode validates and teaches it.
            None => match T::decode(bytes) {
                Ok(instance) => {
                    if let Ok(canonical) = instance.to_json() {
                        self.learn_from(&canonical);
                    }
                    true
                }
                Err(_) => false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANONICAL: &[u8] =
        br#"{"id":1,"question_text":"What's up?","pub_date":"2026-01-01T12:00:00Z","choices":[1,2]}"#;

    #[test]
    fn the_learned_shape_accepts_representations_of_the_type() {
        let shape = Shape::learn(CANONICAL).unwrap();
        assert!(shape.matches(CANONICAL));
        assert!(
            shape.matches(br#"{"id":22,"question_text":"a,\"b\":}","pub_date":"x","choices":[]}"#)
        );
    }

    #[test]
    fn truncated_foreign_and_reordered_objects_are_rejected() {
        let shape = Shape::learn(CANONICAL).unwrap();
        for bad in [
            &CANONICAL[..CANONICAL.len() - 1],
            &CANONICAL[..40],
            br#"{"id":1,"question_id":1,"choice_text":"x","voters":[]}"#,
            br#"{"id":1,"pub_date":"x","question_text":"y","choices":[]}"#,
            br#"{"id":1}"#,
            b"{}",
            b"",
            b"\0T",
            br#"{"question_text":"x","id":1,"pub_date":"x","choices":[]}"#,
        ] {
            assert!(!shape.matches(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn keys_with_escapes_are_matched_as_written() {
        let canonical = br#"{"a\"b":1,"c":2}"#;
        let shape = Shape::learn(canonical).unwrap();
        assert!(shape.matches(canonical));
        assert!(!shape.matches(br#"{"ab":1,"c":2}"#));
    }
}
