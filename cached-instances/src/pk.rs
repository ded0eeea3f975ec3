//! Primary keys and their key form: the text that identifies an instance
//! inside a store key.

use std::fmt::Debug;
use std::hash::Hash;

use crate::codec::FieldCodec;

/// A type that can be a model's primary key.
///
/// The key form written by [`write_key`](Self::write_key) is injective (two
/// distinct pks never share a key form) and safe inside a store key: it never
/// contains `:`, `{`, `}`, `%`, whitespace or control characters, so it can
/// neither break the key layout nor the Redis Cluster hash tag.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a primary key",
    label = "not a primary key type",
    note = "primary keys are integers, `String` or `uuid::Uuid` (feature `uuid`)"
)]
pub trait PrimaryKey: FieldCodec + Clone + Eq + Hash + Debug + Send + Sync + 'static {
    /// Appends the key form of this pk to `out`.
    fn write_key(&self, out: &mut String);

    /// Parses a key form written by [`write_key`](Self::write_key).
    fn from_key(key: &str) -> Option<Self>;

    /// Parses a pk as it appears in a URL path segment.
    fn from_url(segment: &str) -> Option<Self>;

    /// The key form as a fresh string.
    fn to_key(&self) -> String {
        let mut out = String::new();
        self.write_key(&mut out);
        out
    }

    /// Appends the form this pk takes as a member of the query indexes
    /// (see [`query`](crate::query)). Members that tie on a sort score are
    /// ordered by this form (byte order), so integers override it with a
    /// fixed-width form that sorts numerically; the default is the key form.
    fn write_index_member(&self, out: &mut String) {
        self.write_key(out);
    }

    /// Parses a member written by [`write_index_member`](Self::write_index_member).
    fn from_index_member(member: &str) -> Option<Self> {
        Self::from_key(member)
    }

    /// The index member form as a fresh string.
    fn to_index_member(&self) -> String {
        let mut out = String::new();
        self.write_index_member(&mut out);
        out
    }
}

/// Integer pks: the index member is the value with its sign bit flipped, in
/// fixed-width lowercase hex, so byte order is numeric order.
macro_rules! integer_pk {
    ($($t:ty => $u:ty),*) => {$(
        impl PrimaryKey for $t {
            #[allow(clippy::cast_sign_loss, clippy::cast_possible_wrap, trivial_numeric_casts, unused_comparisons)]
            fn write_index_member(&self, out: &mut String) {
                use std::fmt::Write;
                let bits = <$u>::BITS as usize;
                let flip: $u = if <$t>::MIN < 0 as $t { 1 << (bits - 1) } else { 0 };
                let _ = write!(out, "{:0width$x}", (*self as $u) ^ flip, width = bits / 4);
            }
            #[allow(clippy::cast_sign_loss, clippy::cast_possible_wrap, trivial_numeric_casts, unused_comparisons)]
            fn from_index_member(member: &str) -> Option<Self> {
                let bits = <$u>::BITS as usize;
                if member.len() != bits / 4 {
                    return None;
                }
                let flip: $u = if <$t>::MIN < 0 as $t { 1 << (bits - 1) } else { 0 };
                <$u>::from_str_radix(member, 16).ok().map(|v| (v ^ flip) as $t)
            }
            fn write_key(&self, out: &mut String) {
                // On every read's path: itoa, not the `fmt` machinery.
                out.push_str(itoa::Buffer::new().format(*self));
            }
            fn from_key(key: &str) -> Option<Self> {
                key.parse().ok()
            }
            fn from_url(segment: &str) -> Option<Self> {
                segment.parse().ok()
            }
        }
    )*};
}
integer_pk!(
    i8 => u8, i16 => u16, i32 => u32, i64 => u64, i128 => u128,
    u8 => u8, u16 => u16, u32 => u32, u64 => u64, u128 => u128
);

/// Bytes that must be escaped in a key form: the key layout separators, the
/// hash-tag braces, the escape character itself, and anything invisible.
fn needs_escape(c: char) -> bool {
    matches!(c, ':' | '{' | '}' | '%') || c.is_whitespace() || c.is_control()
}

impl PrimaryKey for String {
    fn write_key(&self, out: &mut String) {
        use std::fmt::Write;
        // A leading marker keeps the empty string distinct from "no key" in
        // any log or tool that trims.
        out.push('s');
        for c in self.chars() {
            if needs_escape(c) {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "%{b:02X}");
                }
            } else {
                out.push(c);
            }
        }
    }

    fn from_key(key: &str) -> Option<Self> {
        let body = key.strip_prefix('s')?;
        let mut bytes = Vec::with_capacity(body.len());
        let mut iter = body.bytes();
        while let Some(b) = iter.next() {
            if b == b'%' {
                let hi = (iter.next()? as char).to_digit(16)?;
                let lo = (iter.next()? as char).to_digit(16)?;
                bytes.push(u8::try_from(hi * 16 + lo).ok()?);
            } else {
                bytes.push(b);
            }
        }
        String::from_utf8(bytes).ok()
    }

    fn from_url(segment: &str) -> Option<Self> {
        Some(segment.to_owned())
    }
}

#[cfg(feature = "uuid")]
impl PrimaryKey for uuid::Uuid {
    fn write_key(&self, out: &mut String) {
        let mut buf = uuid::Uuid::encode_buffer();
        out.push_str(self.hyphenated().encode_lower(&mut buf));
    }
    fn from_key(key: &str) -> Option<Self> {
        uuid::Uuid::parse_str(key).ok()
    }
    fn from_url(segment: &str) -> Option<Self> {
        uuid::Uuid::parse_str(segment).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_keys_are_escaped_and_round_trip() {
        for s in ["", "a:b", "{x}", "a b", "\r\n", "é✓", "%41", "s"] {
            let key = s.to_string().to_key();
            assert!(!key.contains([':', '{', '}', ' ', '\r', '\n']), "{key:?}");
            assert_eq!(String::from_key(&key).as_deref(), Some(s));
        }
        assert_ne!("%41".to_string().to_key(), "A".to_string().to_key());
    }

    #[test]
    fn integer_index_members_sort_numerically() {
        let values = [i64::MIN, -300, -1, 0, 1, 9, 10, 300, i64::MAX];
        let members: Vec<String> = values.iter().map(PrimaryKey::to_index_member).collect();
        let mut sorted = members.clone();
        sorted.sort();
        assert_eq!(sorted, members);
        for (v, m) in values.iter().zip(&members) {
            assert_eq!(i64::from_index_member(m), Some(*v));
        }
        assert_eq!(255u8.to_index_member(), "ff");
        assert_eq!((-1i8).to_index_member(), "7f");
        assert_eq!(u8::from_index_member("1"), None);
        assert_eq!(
            String::from_index_member(&"a:b".to_string().to_index_member()).as_deref(),
            Some("a:b")
        );
    }

    #[test]
    fn integer_keys_round_trip() {
        assert_eq!(i64::from_key(&(-42i64).to_key()), Some(-42));
        assert_eq!(u8::from_key("256"), None);
    }
}
