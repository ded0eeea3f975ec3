//! Field codecs: how each field type is written into and read back from an
//! instance's JSON representation.
//!
//! Round trips are exact: datetimes keep every sub-second digit, durations
//! keep their sign and zero, and dates before 1970 or far in the future are
//! written with chrono's extended-year ISO 8601 form.

use std::fmt;
use std::marker::PhantomData;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Utc};
use serde::de::{DeserializeSeed, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A field type with a cache codec.
///
/// Supported: integers, `f32`/`f64`, `bool`, `String`, `Option<T>`, `Vec<T>`,
/// chrono `DateTime<Utc>`, `NaiveDate`, `NaiveDateTime`, `NaiveTime`,
/// `TimeDelta`, `serde_json::Value` and `uuid::Uuid` (feature `uuid`).
///
/// Other types take one of two ways, depending on how the database holds
/// them:
///
/// - A value of a plain column, such as an enum stored as `TEXT`: implement
///   `FieldCodec` ([`serde_field_codec!`](crate::serde_field_codec) does it
///   with the type's serde impls). A derived sqlx loader reads such a field
///   with sqlx, so the type also implements `sqlx::Type` and
///   `sqlx::Decode` (`#[derive(sqlx::Type)]`).
/// - A JSON document: `#[cached(serde)]` on the field stores it through its
///   serde impls; a derived sqlx loader reads it from a JSON column (`TEXT`
///   holding JSON on SQLite).
///
/// ```ignore
/// #[derive(Serialize, Deserialize, sqlx::Type, Debug, Clone, Copy, PartialEq)]
/// #[serde(rename_all = "lowercase")]
/// #[sqlx(type_name = "text", rename_all = "lowercase")]
/// pub enum Status { Active, Away }
///
/// cached_instances::serde_field_codec!(Status);
///
/// #[derive(CachedInstance)]
/// #[cached(table = "members")]
/// pub struct Member {
///     #[cached(pk)]
///     pub id: i64,
///     pub status: Status, // a TEXT column holding `active` or `away`
/// }
/// ```
///
/// sqlx 0.9 reads such a derived enum from `TEXT` on PostgreSQL and SQLite;
/// on MySQL and MariaDB its derived enums match no column type (neither
/// `TEXT` nor `ENUM`), so there implement `sqlx::Type<MySql>` and
/// `sqlx::Decode<MySql>` by hand (through `String`), or derive the loader
/// for the other databases only.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no cache codec",
    label = "no cache codec for `{Self}`",
    note = "to store `{Self}` as a JSON document, add `#[cached(serde)]` to the field (a derived sqlx loader reads it from a JSON column); for a type of your own held in a plain column (an enum in a TEXT column, say), implement `FieldCodec` for it: `cached_instances::serde_field_codec!(YourType);` uses its serde impls, and a derived sqlx loader reads it with `sqlx::Type`"
)]
pub trait FieldCodec: Sized {
    /// Whether [`encode`](Self::encode) can write JSON `null`. `Option<T>`
    /// of such a `T` writes a present value as a one-element array, so that
    /// `Some(None)` (or `Some(Value::Null)`) does not come back as `None`.
    const MAY_BE_NULL: bool = false;

    /// Writes the value's representation.
    fn encode<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error>;
    /// Reads a representation written by [`encode`](Self::encode).
    fn decode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error>;
}

/// Implements [`FieldCodec`] for each type given through its serde impls
/// (`Serialize` and `DeserializeOwned`): the way for enums and newtypes
/// stored in a plain column, such as an enum in a `TEXT` column that sqlx
/// reads with `#[derive(sqlx::Type)]` (see [`FieldCodec`]).
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
/// #[serde(rename_all = "lowercase")]
/// pub enum Status {
///     Active,
///     Away,
/// }
///
/// cached_instances::serde_field_codec!(Status);
/// ```
///
/// A type whose serialized form can be JSON `null` (a unit struct, an
/// `Option` newtype) needs a hand-written impl setting `MAY_BE_NULL`.
#[macro_export]
macro_rules! serde_field_codec {
    ($($t:ty),+ $(,)?) => {$(
        impl $crate::FieldCodec for $t {
            #[inline]
            fn encode<S: $crate::__private::serde::Serializer>(
                &self,
                serializer: S,
            ) -> ::std::result::Result<S::Ok, S::Error> {
                $crate::__private::serde::Serialize::serialize(self, serializer)
            }
            #[inline]
            fn decode<'de, D: $crate::__private::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> ::std::result::Result<Self, D::Error> {
                $crate::__private::serde::Deserialize::deserialize(deserializer)
            }
        }
    )+};
}

/// Types whose serde impls are already the representation we want.
macro_rules! serde_codec {
    ($($t:ty),* $(,)?) => {$(
        impl FieldCodec for $t {
            #[inline]
            fn encode<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                Serialize::serialize(self, serializer)
            }
            #[inline]
            fn decode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                Deserialize::deserialize(deserializer)
            }
        }
    )*};
}

serde_codec!(
    i8,
    i16,
    i32,
    i64,
    i128,
    u8,
    u16,
    u32,
    u64,
    u128,
    isize,
    usize,
    bool,
    String,
    NaiveDate,
    NaiveDateTime,
    NaiveTime,
);

#[cfg(feature = "uuid")]
serde_codec!(uuid::Uuid);

impl FieldCodec for serde_json::Value {
    const MAY_BE_NULL: bool = true;

    #[inline]
    fn encode<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Serialize::serialize(self, serializer)
    }
    #[inline]
    fn decode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Deserialize::deserialize(deserializer)
    }
}

/// Finite values only: serde_json would write NaN and the infinities as
/// `null`, which does not decode back, so they are an encode error instead.
/// Decoding rejects what overflows to an infinity (`1e39` as an `f32`).
macro_rules! float_codec {
    ($($t:ty),*) => {$(
        impl FieldCodec for $t {
            fn encode<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if self.is_finite() {
                    Serialize::serialize(self, serializer)
                } else {
                    Err(serde::ser::Error::custom(format_args!(
                        "cannot store the non-finite float {self}"
                    )))
                }
            }
            fn decode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = <$t>::deserialize(deserializer)?;
                if value.is_finite() {
                    Ok(value)
                } else {
                    Err(D::Error::custom(concat!("number out of range for ", stringify!($t))))
                }
            }
        }
    )*};
}

float_codec!(f32, f64);

/// RFC 3339 in UTC (`Z`), with as many fractional digits as the value has.
impl FieldCodec for DateTime<Utc> {
    fn encode<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0; RFC3339_MAX];
        match rfc3339_utc(self, &mut buf).and_then(|len| std::str::from_utf8(&buf[..len]).ok()) {
            Some(text) => serializer.serialize_str(text),
            // Years outside 0..=9999: chrono's extended form.
            None => Serialize::serialize(self, serializer),
        }
    }
    fn decode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(Rfc3339Visitor)
    }
}

/// Reads what [`rfc3339_utc`] writes without chrono's general parser, which
/// was a quarter of the cost of decoding the polls `Question` (a list whose
/// scope is checked decodes every row it serves); any other form (an
/// offset, a leap second, an extended year, `t` or a space for `T`) goes to
/// chrono's parser, as chrono's own `Deserialize` does, and is normalised
/// to UTC.
struct Rfc3339Visitor;

impl serde::de::Visitor<'_> for Rfc3339Visitor {
    type Value = DateTime<Utc>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an RFC 3339 formatted date and time string")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
        if let Some(dt) = parse_rfc3339_utc(text.as_bytes()) {
            return Ok(dt);
        }
        text.parse::<DateTime<chrono::FixedOffset>>()
            .map(|dt| dt.with_timezone(&Utc))
            .map_err(E::custom)
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.f]Z`, with 1 to 9 fractional digits and the
/// second below 60: the form [`rfc3339_utc`] writes (and chrono's
/// `Serialize` does, for years 0..=9999). `None` for anything else,
/// a date or time out of range included, which chrono then judges.
fn parse_rfc3339_utc(text: &[u8]) -> Option<DateTime<Utc>> {
    /// The decimal value of `digits`, all ASCII digits.
    fn number(digits: &[u8]) -> Option<u32> {
        digits.iter().try_fold(0u32, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
        })
    }

    let (head, rest) = text.split_at_checked(19)?;
    if head[4] != b'-'
        || head[7] != b'-'
        || head[10] != b'T'
        || head[13] != b':'
        || head[16] != b':'
    {
        return None;
    }
    let nano = match rest {
        [b'Z'] => 0,
        [b'.', fraction @ .., b'Z'] if (1..=9).contains(&fraction.len()) => {
            number(fraction)? * 10u32.pow(9 - fraction.len() as u32)
        }
        _ => return None,
    };
    let second = number(&head[17..19])?;
    if second > 59 {
        return None;
    }
    // Four digits: the cast cannot truncate.
    let date = NaiveDate::from_ymd_opt(
        number(&head[0..4])? as i32,
        number(&head[5..7])?,
        number(&head[8..10])?,
    )?;
    let time =
        NaiveTime::from_hms_nano_opt(number(&head[11..13])?, number(&head[14..16])?, second, nano)?;
    Some(date.and_time(time).and_utc())
}

/// The longest [`rfc3339_utc`] writes: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
const RFC3339_MAX: usize = 30;

/// Writes `dt` into `buf` as chrono's own `Serialize` does (RFC 3339, `Z`,
/// 0, 3, 6 or 9 fractional digits as the value needs, a leap second as
/// `:60`), byte for byte, and returns its length; `None` for a year outside
/// 0..=9999, which chrono writes in its extended form. Written without
/// `fmt`: chrono's path through it was a third of the cost of encoding a
/// row, and a cold read encodes every row it loads.
fn rfc3339_utc(dt: &DateTime<Utc>, buf: &mut [u8; RFC3339_MAX]) -> Option<usize> {
    use chrono::{Datelike, Timelike};

    /// `value`'s last `out.len()` decimal digits, zero-padded.
    fn digits(out: &mut [u8], mut value: u32) {
        for byte in out.iter_mut().rev() {
            // A digit: the cast cannot truncate.
            *byte = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }

    let naive = dt.naive_utc();
    let year = u32::try_from(naive.year()).ok().filter(|y| *y <= 9999)?;
    let (mut second, mut nano) = (naive.second(), naive.nanosecond());
    if nano >= 1_000_000_000 {
        // A leap second, as chrono writes it.
        second += 1;
        nano -= 1_000_000_000;
    }
    digits(&mut buf[0..4], year);
    buf[4] = b'-';
    digits(&mut buf[5..7], naive.month());
    buf[7] = b'-';
    digits(&mut buf[8..10], naive.day());
    buf[10] = b'T';
    digits(&mut buf[11..13], naive.hour());
    buf[13] = b':';
    digits(&mut buf[14..16], naive.minute());
    buf[16] = b':';
    digits(&mut buf[17..19], second);
    let (fraction, width) = if nano == 0 {
        (0, 0)
    } else if nano % 1_000_000 == 0 {
        (nano / 1_000_000, 3)
    } else if nano % 1_000 == 0 {
        (nano / 1_000, 6)
    } else {
        (nano, 9)
    };
    let mut len = 19;
    if width > 0 {
        buf[19] = b'.';
        digits(&mut buf[20..20 + width], fraction);
        len = 20 + width;
    }
    buf[len] = b'Z';
    Some(len + 1)
}

/// ISO 8601 duration in seconds: `PT0S`, `PT90.5S`, `-PT0.000000001S`. Exact
/// to the nanosecond, keeps zero and negative durations.
impl FieldCodec for TimeDelta {
    fn encode<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&IsoSeconds(*self))
    }
    fn decode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        parse_iso_seconds(&text)
            .ok_or_else(|| D::Error::custom(format_args!("invalid duration `{text}`")))
    }
}

struct IsoSeconds(TimeDelta);

impl fmt::Display for IsoSeconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let delta = self.0;
        let sign = if delta < TimeDelta::zero() { "-" } else { "" };
        // `abs` cannot overflow: TimeDelta's range is symmetric.
        let abs = delta.abs();
        let secs = abs.num_seconds();
        let nanos = abs.subsec_nanos();
        if nanos == 0 {
            write!(f, "{sign}PT{secs}S")
        } else {
            let frac = format!("{nanos:09}");
            write!(f, "{sign}PT{secs}.{}S", frac.trim_end_matches('0'))
        }
    }
}

fn parse_iso_seconds(text: &str) -> Option<TimeDelta> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let body = rest.strip_prefix("PT")?.strip_suffix('S')?;
    let (whole, frac) = match body.split_once('.') {
        Some((whole, frac)) => (whole, frac),
        None => (body, ""),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    let delta = TimeDelta::new(secs, nanos)?;
    Some(if negative { -delta } else { delta })
}

impl<T: FieldCodec> FieldCodec for Option<T> {
    const MAY_BE_NULL: bool = true;

    fn encode<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Some(value) if T::MAY_BE_NULL => serializer.serialize_some(&[Encode(value)]),
            Some(value) => serializer.serialize_some(&Encode(value)),
            None => serializer.serialize_none(),
        }
    }
    fn decode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if T::MAY_BE_NULL {
            Ok(Option::<[Decoded<T>; 1]>::deserialize(deserializer)?.map(|[d]| d.0))
        } else {
            Ok(Option::<Decoded<T>>::deserialize(deserializer)?.map(|d| d.0))
        }
    }
}

impl<T: FieldCodec> FieldCodec for Vec<T> {
    fn encode<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter().map(Encode))
    }
    fn decode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Vec::<Decoded<T>>::deserialize(deserializer)?
            .into_iter()
            .map(|d| d.0)
            .collect())
    }
}

/// Serializes a field through its codec. Used by generated code.
#[doc(hidden)]
pub struct Encode<'a, T>(pub &'a T);

impl<T: FieldCodec> Serialize for Encode<'_, T> {
    #[inline]
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.encode(serializer)
    }
}

/// Deserializes a field through its codec. Used by generated code.
#[doc(hidden)]
pub struct Decoded<T>(pub T);

impl<'de, T: FieldCodec> Deserialize<'de> for Decoded<T> {
    #[inline]
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::decode(deserializer).map(Decoded)
    }
}

/// A seed decoding one field with its codec. Used by generated code.
#[doc(hidden)]
pub struct Decode<T>(PhantomData<fn() -> T>);

impl<T> Decode<T> {
    #[must_use]
    pub const fn new() -> Self {
        Decode(PhantomData)
    }
}

impl<T> Default for Decode<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'de, T: FieldCodec> DeserializeSeed<'de> for Decode<T> {
    type Value = T;
    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        T::decode(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: FieldCodec + PartialEq + fmt::Debug>(value: T) -> String {
        let text = serde_json::to_string(&Encode(&value)).unwrap();
        let back: Decoded<T> = serde_json::from_str(&text).unwrap();
        assert_eq!(back.0, value, "{text}");
        text
    }

    /// The fast RFC 3339 writer writes exactly what chrono's `Serialize`
    /// does: every fraction width, leap seconds, the years' ends, and a
    /// spread of instants; the extended years fall back to chrono.
    #[test]
    fn datetimes_are_written_as_chrono_writes_them() {
        use chrono::{NaiveDate, TimeZone};
        let ours = |dt: DateTime<Utc>| serde_json::to_string(&Encode(&dt)).unwrap();
        let chronos = |dt: DateTime<Utc>| serde_json::to_string(&dt).unwrap();
        let at = |y, mo, d, h, mi, s, nano| {
            Utc.from_utc_datetime(
                &NaiveDate::from_ymd_opt(y, mo, d)
                    .unwrap()
                    .and_hms_nano_opt(h, mi, s, nano)
                    .unwrap(),
            )
        };
        let mut cases = vec![
            at(2024, 1, 2, 3, 4, 5, 0),
            at(2024, 1, 2, 3, 4, 5, 120_000_000),
            at(2024, 1, 2, 3, 4, 5, 120_300_000),
            at(2024, 1, 2, 3, 4, 5, 120_300_004),
            at(2024, 1, 2, 3, 4, 5, 1),
            at(2016, 12, 31, 23, 59, 59, 1_000_000_000),
            at(2016, 12, 31, 23, 59, 59, 1_500_000_000),
            at(0, 1, 1, 0, 0, 0, 0),
            at(9999, 12, 31, 23, 59, 59, 999_999_999),
            at(-1, 12, 31, 23, 59, 59, 0),
            at(10_000, 1, 1, 0, 0, 0, 0),
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            DateTime::from_timestamp(0, 0).unwrap(),
        ];
        // A spread of instants over 0..=9999 (a fixed LCG: no flakiness).
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..2_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let secs = (state >> 11) as i64 % 315_537_897_600 - 62_167_219_200;
            let nano = match state % 4 {
                0 => 0,
                1 => (state >> 7) as u32 % 1_000 * 1_000_000,
                2 => (state >> 7) as u32 % 1_000_000 * 1_000,
                _ => (state >> 7) as u32 % 1_000_000_000,
            };
            cases.push(DateTime::from_timestamp(secs, nano).unwrap());
        }
        for dt in cases {
            assert_eq!(ours(dt), chronos(dt), "{dt:?}");
            round_trip(dt);
        }
    }

    /// The fast RFC 3339 reader yields what chrono's parser yields for
    /// every string it accepts, and accepts what the writer writes; the
    /// strings are made of the form's parts, valid and not.
    #[test]
    fn datetimes_are_read_as_chrono_reads_them() {
        let chronos = |text: &str| {
            text.parse::<DateTime<chrono::FixedOffset>>()
                .ok()
                .map(|dt| dt.with_timezone(&Utc))
        };
        let ours = |text: &str| {
            serde_json::from_str::<Decoded<DateTime<Utc>>>(&format!("\"{text}\""))
                .ok()
                .map(|d| d.0)
        };
        let years = ["0000", "1969", "2024", "9999", "20x4"];
        let dates = [
            "01-01", "02-29", "02-30", "12-31", "13-01", "00-10", "1-011",
        ];
        let times = [
            "00:00:00", "23:59:59", "23:59:60", "24:00:00", "12:60:00", "1:2:3x",
        ];
        let ends = [
            "Z",
            ".1Z",
            ".120Z",
            ".123456Z",
            ".123456789Z",
            ".1234567891Z",
            ".Z",
            "z",
            "+01:00",
            ".5+00:00",
            "",
            "Z ",
            ".12a4Z",
        ];
        let mut fast = 0;
        for y in years {
            for d in dates {
                for t in times {
                    for e in ends {
                        for sep in ['T', 't', ' '] {
                            let text = format!("{y}-{d}{sep}{t}{e}");
                            let parsed = parse_rfc3339_utc(text.as_bytes());
                            if let Some(dt) = parsed {
                                fast += 1;
                                assert_eq!(Some(dt), chronos(&text), "{text}");
                            }
                            assert_eq!(ours(&text), chronos(&text), "{text}");
                        }
                    }
                }
            }
        }
        assert!(fast >= 100, "the fast path took {fast} strings");
        let dt = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        let text = serde_json::to_string(&Encode(&dt)).unwrap();
        assert_eq!(
            parse_rfc3339_utc(text.trim_matches('"').as_bytes()),
            Some(dt)
        );
    }

    #[test]
    fn durations_are_exact() {
        assert_eq!(round_trip(TimeDelta::zero()), r#""PT0S""#);
        assert_eq!(
            round_trip(TimeDelta::nanoseconds(-1)),
            r#""-PT0.000000001S""#
        );
        assert_eq!(round_trip(TimeDelta::milliseconds(90_500)), r#""PT90.5S""#);
        round_trip(TimeDelta::MAX);
        round_trip(TimeDelta::MIN);
    }

    #[test]
    fn bad_durations_are_errors() {
        for bad in [
            r#""PT""#,
            r#""P1D""#,
            r#""PT1.0000000001S""#,
            r#""PT-1S""#,
            "3",
        ] {
            assert!(
                serde_json::from_str::<Decoded<TimeDelta>>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn datetimes_keep_microseconds_in_utc() {
        let dt = DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap();
        assert_eq!(round_trip(dt), r#""2023-11-14T22:13:20.123456Z""#);
        let text = r#""2023-11-14T23:13:20.123456+01:00""#;
        assert_eq!(
            serde_json::from_str::<Decoded<DateTime<Utc>>>(text)
                .unwrap()
                .0,
            dt
        );
    }

    #[test]
    fn options_and_lists_nest() {
        assert_eq!(round_trip(vec![Some(1i64), None]), "[1,null]");
    }

    #[test]
    fn options_of_nullable_values_stay_distinct() {
        assert_eq!(round_trip(None::<Option<i64>>), "null");
        assert_eq!(round_trip(Some(None::<i64>)), "[null]");
        assert_eq!(round_trip(Some(Some(3i64))), "[3]");
        assert_eq!(round_trip(Some(serde_json::Value::Null)), "[null]");
        assert_eq!(round_trip(None::<serde_json::Value>), "null");
        assert_eq!(
            round_trip(Some(serde_json::json!({"a": 1}))),
            r#"[{"a":1}]"#
        );
    }

    #[test]
    fn floats_are_finite() {
        assert_eq!(round_trip(0.1f64), "0.1");
        assert_eq!(round_trip(-0.0f32), "-0.0");
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(serde_json::to_string(&Encode(&bad)).is_err());
        }
        assert!(serde_json::to_string(&Encode(&f32::NAN)).is_err());
        assert!(serde_json::from_str::<Decoded<f32>>("1e39").is_err());
        assert!(serde_json::from_str::<Decoded<f64>>("1e400").is_err());
    }
}
