//! What an instance puts in the query indexes: the traits that turn a field
//! value into an exact-match term, a sort score or search text, and
//! [`IndexValues`], an instance's values of every index field.

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Timelike, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use unicode_segmentation::UnicodeSegmentation;

use super::CachedInstance;
use crate::codec::{Decoded, Encode, FieldCodec};

/// A field type that `#[cached(index)]` accepts: values with an exact-match
/// term.
///
/// The term is the value's JSON representation, unquoted for strings
/// (`30`, `true`, `open`, `2024-05-01`), so a client filters with the value
/// it sees in the API. `None` has no term: it matches no equality filter.
///
/// Implemented for integers, `bool`, `char`, `String`, `NaiveDate`,
/// `uuid::Uuid` (feature `uuid`) and `Option`s of those; an enum or any
/// other serde type is indexed through serde with `#[cached(index, serde)]`.
/// Implement it for your own types (a newtype, say).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a `#[cached(index)]` field: it has no exact-match term",
    label = "`#[cached(index)]` needs integers, `bool`, `char`, `String`, `NaiveDate`, `Uuid` or an `Option` of one here",
    note = "for floats, dates, times and durations use `#[cached(sortable)]` (range filters and ordering); for text use `#[cached(search)]`; store an enum with `#[cached(index, serde)]`; or implement `cached_instances::query::Indexable` for `{Self}`"
)]
pub trait Indexable {
    /// The exact-match term of this value, `None` for none.
    fn term(&self) -> Option<String>;

    /// The term of the value `text` spells (as it appears in the JSON
    /// representation, strings unquoted), or `None` if it spells none.
    fn parse_term(text: &str) -> Option<String>;
}

/// A field type that `#[cached(sortable)]` accepts: values with a sort
/// score, for range filters and ordering.
///
/// Scores are `f64`. They are exact for integers up to 2^53 in magnitude,
/// for `DateTime<Utc>` and `NaiveDateTime` (microseconds since the epoch)
/// within about 285 years of 1970, for `NaiveDate` (days since the epoch),
/// `NaiveTime` (microseconds since midnight) and `TimeDelta`
/// (microseconds); sub-microsecond digits are not ordered. `None` scores
/// `+inf`: it sorts last in ascending order (first in descending), as in
/// PostgreSQL, and matches no range filter.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a `#[cached(sortable)]` field: it has no sort score",
    label = "`#[cached(sortable)]` needs a number, a date, a time, a duration or an `Option` of one here",
    note = "`sortable` orders by a number: integers, floats, chrono's `DateTime<Utc>`, `NaiveDate`, `NaiveDateTime`, `NaiveTime`, `TimeDelta`; for exact-match filters on strings and booleans use `#[cached(index)]`; or implement `cached_instances::query::Sortable` for `{Self}`"
)]
pub trait Sortable {
    /// The sort score of this value.
    fn score(&self) -> f64;

    /// The score of the value `text` spells (as in the JSON
    /// representation), or `None`.
    fn parse_score(text: &str) -> Option<f64>;

    /// The value nearest to `score` on one side: with `up`, the smallest
    /// value whose score is at least `score`, else the largest whose score
    /// is at most `score`; past the type's range, its last value on that
    /// side. Database fallbacks use it to bind a range filter's bounds with
    /// the column's own type (so the database's indexes serve them).
    ///
    /// The default, `None`, means the type cannot say; the derived SQL
    /// fallback then declines range filters on the field.
    fn from_score(score: f64, up: bool) -> Option<Self>
    where
        Self: Sized,
    {
        let _ = (score, up);
        None
    }
}

/// `score` rounded to a whole number toward its side (see
/// [`Sortable::from_score`]); `None` for NaN.
fn whole(score: f64, up: bool) -> Option<f64> {
    if score.is_nan() {
        None
    } else if up {
        Some(score.ceil())
    } else {
        Some(score.floor())
    }
}

/// A whole score as `i64`, saturating.
#[allow(clippy::cast_possible_truncation)]
fn whole_i64(score: f64, up: bool) -> Option<i64> {
    whole(score, up).map(|v| v as i64)
}

/// A field type that `#[cached(search)]` accepts: text.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a `#[cached(search)]` field: it is not text",
    label = "`#[cached(search)]` needs `String`, `Option<String>` or `Vec<String>` here",
    note = "full-text search tokenizes strings; for exact-match filters use `#[cached(index)]`, for numbers and dates `#[cached(sortable)]`; or implement `cached_instances::query::Searchable` for `{Self}`"
)]
pub trait Searchable {
    /// Appends the text to search, pieces separated by a space.
    fn write_text(&self, out: &mut String);
}

/// Splits `text` into search tokens: its words by the Unicode word
/// boundary rules (UAX #29; punctuation and spaces separate, `don't` and
/// `3.14` stay whole), each lowercased with the Unicode lowercase mapping.
/// Sorted, without duplicates.
#[must_use]
pub fn tokenize(text: &str) -> Vec<String> {
    text.unicode_words()
        .map(str::to_lowercase)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The term of a JSON value: strings unquoted, `null` none.
fn json_term(value: serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

/// The term of a value with a cache codec.
pub(crate) fn codec_term<T: FieldCodec>(value: &T) -> Option<String> {
    serde_json::to_value(Encode(value)).ok().and_then(json_term)
}

/// The term of a value stored through serde.
pub(crate) fn serde_term<T: Serialize>(value: &T) -> Option<String> {
    serde_json::to_value(value).ok().and_then(json_term)
}

/// The value `text` spells as JSON (`30`, `true`) or as a JSON string.
pub(crate) fn decode_text<T: FieldCodec>(text: &str) -> Option<T> {
    serde_json::from_str::<Decoded<T>>(text)
        .ok()
        .or_else(|| serde_json::from_value::<Decoded<T>>(text.into()).ok())
        .map(|decoded| decoded.0)
}

/// Like [`decode_text`], through serde.
pub(crate) fn serde_text<T: DeserializeOwned>(text: &str) -> Option<T> {
    serde_json::from_str::<T>(text)
        .ok()
        .or_else(|| serde_json::from_value::<T>(text.into()).ok())
}

macro_rules! indexable_integers {
    ($($t:ty),*) => {$(
        impl Indexable for $t {
            fn term(&self) -> Option<String> {
                Some(self.to_string())
            }
            fn parse_term(text: &str) -> Option<String> {
                text.trim().parse::<$t>().ok().map(|v| v.to_string())
            }
        }

        impl Sortable for $t {
            #[allow(clippy::cast_precision_loss, clippy::cast_lossless)]
            fn score(&self) -> f64 {
                *self as f64
            }
            fn parse_score(text: &str) -> Option<f64> {
                text.trim().parse::<$t>().ok().map(|v| v.score())
            }
            // `as` from a float saturates at the type's bounds.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            fn from_score(score: f64, up: bool) -> Option<Self> {
                whole(score, up).map(|v| v as $t)
            }
        }
    )*};
}

indexable_integers!(
    i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize
);

impl Indexable for bool {
    fn term(&self) -> Option<String> {
        Some(self.to_string())
    }
    fn parse_term(text: &str) -> Option<String> {
        match text {
            "true" | "1" => Some("true".to_owned()),
            "false" | "0" => Some("false".to_owned()),
            _ => None,
        }
    }
}

impl Indexable for char {
    fn term(&self) -> Option<String> {
        Some(self.to_string())
    }
    fn parse_term(text: &str) -> Option<String> {
        let mut chars = text.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Some(c.to_string()),
            _ => None,
        }
    }
}

impl Indexable for String {
    fn term(&self) -> Option<String> {
        Some(self.clone())
    }
    fn parse_term(text: &str) -> Option<String> {
        Some(text.to_owned())
    }
}

impl Indexable for NaiveDate {
    fn term(&self) -> Option<String> {
        codec_term(self)
    }
    fn parse_term(text: &str) -> Option<String> {
        decode_text::<NaiveDate>(text).and_then(|v| v.term())
    }
}

#[cfg(feature = "uuid")]
impl Indexable for uuid::Uuid {
    fn term(&self) -> Option<String> {
        codec_term(self)
    }
    fn parse_term(text: &str) -> Option<String> {
        uuid::Uuid::parse_str(text).ok().and_then(|v| v.term())
    }
}

impl<T: Indexable> Indexable for Option<T> {
    fn term(&self) -> Option<String> {
        self.as_ref().and_then(Indexable::term)
    }
    fn parse_term(text: &str) -> Option<String> {
        T::parse_term(text)
    }
}

impl<T: Indexable + ?Sized> Indexable for &T {
    fn term(&self) -> Option<String> {
        (**self).term()
    }
    fn parse_term(text: &str) -> Option<String> {
        T::parse_term(text)
    }
}

impl Indexable for str {
    fn term(&self) -> Option<String> {
        Some(self.to_owned())
    }
    fn parse_term(text: &str) -> Option<String> {
        Some(text.to_owned())
    }
}

macro_rules! sortable_floats {
    ($($t:ty),*) => {$(
        impl Sortable for $t {
            #[allow(clippy::cast_lossless)]
            fn score(&self) -> f64 {
                *self as f64
            }
            fn parse_score(text: &str) -> Option<f64> {
                text.trim().parse::<$t>().ok().filter(|v| v.is_finite()).map(|v| v.score())
            }
            #[allow(clippy::cast_possible_truncation, clippy::cast_lossless)]
            fn from_score(score: f64, up: bool) -> Option<Self> {
                if score.is_nan() {
                    return None;
                }
                // Narrowing rounds to nearest: step once toward the side.
                let value = score as $t;
                Some(if up && (value as f64) < score {
                    value.next_up()
                } else if !up && (value as f64) > score {
                    value.next_down()
                } else {
                    value
                })
            }
        }
    )*};
}

sortable_floats!(f32, f64);

/// Microseconds as a score (exact up to 2^53, about 285 years).
#[allow(clippy::cast_precision_loss)]
fn micros(value: i64) -> f64 {
    value as f64
}

impl Sortable for DateTime<Utc> {
    fn score(&self) -> f64 {
        micros(self.timestamp_micros())
    }
    fn parse_score(text: &str) -> Option<f64> {
        decode_text::<DateTime<Utc>>(text).map(|v| v.score())
    }
    fn from_score(score: f64, up: bool) -> Option<Self> {
        let us = whole_i64(score, up)?;
        Some(DateTime::from_timestamp_micros(us).unwrap_or(if us < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        }))
    }
}

impl Sortable for NaiveDateTime {
    fn score(&self) -> f64 {
        micros(self.and_utc().timestamp_micros())
    }
    fn parse_score(text: &str) -> Option<f64> {
        decode_text::<NaiveDateTime>(text).map(|v| v.score())
    }
    fn from_score(score: f64, up: bool) -> Option<Self> {
        DateTime::<Utc>::from_score(score, up).map(|v| v.naive_utc())
    }
}

impl Sortable for NaiveDate {
    fn score(&self) -> f64 {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
        micros((*self - epoch).num_days())
    }
    fn parse_score(text: &str) -> Option<f64> {
        decode_text::<NaiveDate>(text).map(|v| v.score())
    }
    fn from_score(score: f64, up: bool) -> Option<Self> {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
        let days = whole_i64(score, up)?;
        Some(
            epoch
                .checked_add_signed(TimeDelta::try_days(days).unwrap_or(TimeDelta::MAX))
                .unwrap_or(if days < 0 {
                    NaiveDate::MIN
                } else {
                    NaiveDate::MAX
                }),
        )
    }
}

impl Sortable for NaiveTime {
    fn score(&self) -> f64 {
        micros(
            i64::from(self.num_seconds_from_midnight()) * 1_000_000
                + i64::from(self.nanosecond() / 1_000),
        )
    }
    fn parse_score(text: &str) -> Option<f64> {
        decode_text::<NaiveTime>(text).map(|v| v.score())
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    fn from_score(score: f64, up: bool) -> Option<Self> {
        const DAY: i64 = 86_400_000_000;
        let us = whole_i64(score, up)?.clamp(0, DAY - 1);
        NaiveTime::from_num_seconds_from_midnight_opt(
            (us / 1_000_000) as u32,
            (us % 1_000_000) as u32 * 1_000,
        )
    }
}

impl Sortable for TimeDelta {
    fn score(&self) -> f64 {
        match self.num_microseconds() {
            Some(us) => micros(us),
            None if *self < TimeDelta::zero() => f64::MIN,
            None => f64::MAX,
        }
    }
    fn parse_score(text: &str) -> Option<f64> {
        decode_text::<TimeDelta>(text).map(|v| v.score())
    }
    fn from_score(score: f64, up: bool) -> Option<Self> {
        Some(TimeDelta::microseconds(whole_i64(score, up)?))
    }
}

impl<T: Sortable> Sortable for Option<T> {
    fn score(&self) -> f64 {
        self.as_ref().map_or(f64::INFINITY, Sortable::score)
    }
    fn parse_score(text: &str) -> Option<f64> {
        T::parse_score(text)
    }
    fn from_score(score: f64, up: bool) -> Option<Self> {
        T::from_score(score, up).map(Some)
    }
}

impl<T: Sortable + ?Sized> Sortable for &T {
    fn score(&self) -> f64 {
        (**self).score()
    }
    fn parse_score(text: &str) -> Option<f64> {
        T::parse_score(text)
    }
}

impl Searchable for String {
    fn write_text(&self, out: &mut String) {
        out.push_str(self);
        out.push(' ');
    }
}

impl Searchable for str {
    fn write_text(&self, out: &mut String) {
        out.push_str(self);
        out.push(' ');
    }
}

impl<T: Searchable> Searchable for Option<T> {
    fn write_text(&self, out: &mut String) {
        if let Some(value) = self {
            value.write_text(out);
        }
    }
}

impl<T: Searchable> Searchable for Vec<T> {
    fn write_text(&self, out: &mut String) {
        for value in self {
            value.write_text(out);
        }
    }
}

/// One index field's values in an instance.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct FieldValues {
    /// The exact-match term (`index` fields; `None` for a `None` value).
    pub term: Option<String>,
    /// The sort score (`sortable` fields).
    pub score: Option<f64>,
    /// The search tokens (`search` fields), sorted.
    pub tokens: Vec<String>,
}

/// An instance's values of every index field of its model, by position in
/// [`Schema::indexes`](crate::Schema::indexes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexValues {
    fields: Vec<FieldValues>,
}

impl IndexValues {
    /// The index values of `instance`.
    #[must_use]
    pub fn of<T: CachedInstance>(instance: &T) -> Self {
        let mut values = IndexValues {
            fields: vec![FieldValues::default(); T::SCHEMA.indexes.len()],
        };
        instance.index_values(&mut values);
        values
    }

    /// The values of index field `field`.
    #[must_use]
    pub fn field(&self, field: usize) -> Option<&FieldValues> {
        self.fields.get(field)
    }

    fn slot(&mut self, field: usize) -> &mut FieldValues {
        if self.fields.len() <= field {
            self.fields.resize(field + 1, FieldValues::default());
        }
        &mut self.fields[field]
    }

    /// Sets field `field`'s exact-match term. Used by generated code.
    #[doc(hidden)]
    pub fn set_term(&mut self, field: usize, term: Option<String>) {
        self.slot(field).term = term;
    }

    /// Sets field `field`'s sort score. Used by generated code.
    #[doc(hidden)]
    pub fn set_score(&mut self, field: usize, score: f64) {
        self.slot(field).score = Some(score);
    }

    /// Sets field `field`'s search text. Used by generated code.
    #[doc(hidden)]
    pub fn set_text(&mut self, field: usize, text: &str) {
        self.slot(field).tokens = tokenize(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_words_lowercased_and_unique() {
        assert_eq!(
            tokenize("Hello, WORLD! hello… Straße ÉCOLE don't 3.14"),
            ["3.14", "don't", "hello", "straße", "world", "école"]
        );
        assert_eq!(tokenize("  -- !! "), Vec::<String>::new());
        assert_eq!(tokenize("東京タワー"), ["タワー", "京", "東"]);
    }

    #[test]
    fn terms_and_scores() {
        assert_eq!(30i64.term().as_deref(), Some("30"));
        assert_eq!(i64::parse_term(" 030 ").as_deref(), Some("30"));
        assert_eq!(i64::parse_term("x"), None);
        assert_eq!(true.term().as_deref(), Some("true"));
        assert_eq!(None::<i64>.term(), None);
        assert_eq!(Some(5u8).term().as_deref(), Some("5"));
        let date = NaiveDate::from_ymd_opt(2024, 5, 1).unwrap();
        assert_eq!(date.term().as_deref(), Some("2024-05-01"));
        assert_eq!(
            NaiveDate::parse_term("2024-05-01").as_deref(),
            Some("2024-05-01")
        );
        assert_eq!(date.score(), 19844.0);
        let t: DateTime<Utc> = "2024-05-01T10:00:00.123456Z".parse().unwrap();
        assert_eq!(t.score(), 1_714_557_600_123_456.0);
        assert_eq!(
            <DateTime<Utc>>::parse_score("2024-05-01T10:00:00.123456Z"),
            Some(t.score())
        );
        assert_eq!(None::<f64>.score(), f64::INFINITY);
        assert_eq!(f64::parse_score("NaN"), None);
        assert_eq!(TimeDelta::seconds(-2).score(), -2_000_000.0);
    }

    #[test]
    fn values_from_scores_round_toward_their_side() {
        assert_eq!(i64::from_score(17.5, true), Some(18));
        assert_eq!(i64::from_score(17.5, false), Some(17));
        assert_eq!(i64::from_score(-3.0, true), Some(-3));
        assert_eq!(u8::from_score(1e9, true), Some(u8::MAX));
        assert_eq!(u8::from_score(-1.0, false), Some(0));
        assert_eq!(i64::from_score(f64::NAN, true), None);
        let up = f32::from_score(0.1, true).unwrap();
        let down = f32::from_score(0.1, false).unwrap();
        assert!(f64::from(up) >= 0.1 && f64::from(down) <= 0.1 && up > down);
        let t: DateTime<Utc> = "2024-05-01T10:00:00.123456Z".parse().unwrap();
        assert_eq!(<DateTime<Utc>>::from_score(t.score(), true), Some(t));
        assert_eq!(
            <DateTime<Utc>>::from_score(1e300, true),
            Some(DateTime::<Utc>::MAX_UTC)
        );
        let date = NaiveDate::from_ymd_opt(2024, 5, 1).unwrap();
        assert_eq!(NaiveDate::from_score(date.score() - 0.5, true), Some(date));
        let time = NaiveTime::from_hms_micro_opt(10, 0, 0, 5).unwrap();
        assert_eq!(NaiveTime::from_score(time.score(), false), Some(time));
        assert_eq!(
            TimeDelta::from_score(-2e6, true),
            Some(TimeDelta::seconds(-2))
        );
        assert_eq!(Option::<i32>::from_score(2.0, true), Some(Some(2)));
    }
}
