//! The representation `#[derive(CachedInstance)]` generates: exact bytes,
//! round trips of every codec over wide ranges, and decoding that rejects
//! anything malformed without panicking.

use std::collections::BTreeMap;

use cached_instances::{CachedInstance, Target};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, TimeZone, Utc};
use polls::{Choice, Question, User};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A type without a codec, stored through its own serde impls.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct Rgb {
    pub r: u8,
    pub g: u8,
    pub b: u8,
}

fn invalidate(e: &Everything) -> Vec<Target> {
    vec![Target::key(format!("slug:{}", e.string))]
}

#[derive(CachedInstance, Debug, Clone, PartialEq, Default)]
#[cached(model = "Everything", version = "v3", ttl = 30)]
#[cached(invalidates_key = "everything-index", invalidator = invalidate)]
pub struct Everything {
    #[cached(pk)]
    pub id: u64,
    pub i8: i8,
    pub i16: i16,
    pub i32: i32,
    pub i64: i64,
    pub i128: i128,
    pub isize: isize,
    pub u8: u8,
    pub u16: u16,
    pub u32: u32,
    pub u128: u128,
    pub usize: usize,
    pub f32: f32,
    pub f64: f64,
    pub bool: bool,
    #[cached(rename = "text")]
    pub string: String,
    pub option: Option<String>,
    pub list: Vec<Option<i64>>,
    pub datetime: DateTime<Utc>,
    pub date: NaiveDate,
    pub naive_datetime: NaiveDateTime,
    pub time: NaiveTime,
    pub delta: TimeDelta,
    pub json: Value,
    #[cached(serde)]
    pub color: Rgb,
    #[cached(serde)]
    pub tags: BTreeMap<String, Vec<u8>>,
    #[cached(skip)]
    pub scratch: Vec<u8>,
    pub r#type: String,
}

fn everything() -> Everything {
    let datetime = Utc
        .with_ymd_and_hms(2024, 2, 29, 23, 59, 58)
        .unwrap()
        .checked_add_signed(TimeDelta::nanoseconds(120_000))
        .unwrap();
    Everything {
        id: u64::MAX,
        i8: i8::MIN,
        i16: -2,
        i32: 3,
        i64: i64::MIN,
        i128: i128::MIN,
        isize: -5,
        u8: u8::MAX,
        u16: 16,
        u32: 32,
        u128: u128::MAX,
        usize: 7,
        f32: 0.1,
        f64: -1.5e300,
        bool: true,
        string: "é \"quoted\" \u{1F600}\n".into(),
        option: None,
        list: vec![Some(1), None, Some(-1)],
        datetime,
        date: NaiveDate::from_ymd_opt(-44, 3, 15).unwrap(),
        naive_datetime: NaiveDate::from_ymd_opt(12345, 1, 2)
            .unwrap()
            .and_hms_nano_opt(3, 4, 5, 6)
            .unwrap(),
        time: NaiveTime::from_hms_nano_opt(23, 59, 59, 1_500_000_000).unwrap(),
        delta: TimeDelta::milliseconds(-1500),
        json: json!({"b": [1, 2.5, null], "a": {"nested": true}}),
        color: Rgb { r: 1, g: 2, b: 3 },
        tags: BTreeMap::from([("x".to_owned(), vec![1, 2])]),
        scratch: vec![9, 9, 9],
        r#type: "kind".into(),
    }
}

fn round_trip<T: CachedInstance + PartialEq + std::fmt::Debug>(value: &T) -> Vec<u8> {
    let bytes = value.to_json().expect("encodes");
    let back =
        T::from_json(&bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
    assert_eq!(&back, value, "{}", String::from_utf8_lossy(&bytes));
    bytes
}

#[test]
fn polls_models_have_exact_representations() {
    let user = User {
        id: 1,
        username: "ada".into(),
        votes: vec![10, 11],
    };
    assert_eq!(
        round_trip(&user),
        br#"{"id":1,"username":"ada","votes":[10,11]}"#
    );

    let question = Question {
        id: 7,
        question_text: "What's \"new\"?".into(),
        pub_date: Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap(),
        choices: vec![],
    };
    assert_eq!(
        round_trip(&question),
        br#"{"id":7,"question_text":"What's \"new\"?","pub_date":"2024-01-02T03:04:05Z","choices":[]}"#
    );

    let choice = Choice {
        id: -3,
        question_id: 7,
        choice_text: String::new(),
        voters: vec![1],
    };
    assert_eq!(
        round_trip(&choice),
        br#"{"id":-3,"question_id":7,"choice_text":"","voters":[1]}"#
    );
}

#[test]
fn every_codec_has_an_exact_representation() {
    let value = everything();
    let bytes = value.to_json().unwrap();
    // Declaration order, `rename` applied, `skip` left out, raw identifiers
    // unraw'd.
    let expected = concat!(
        r#"{"id":18446744073709551615,"i8":-128,"i16":-2,"i32":3,"#,
        r#""i64":-9223372036854775808,"i128":-170141183460469231731687303715884105728,"#,
        r#""isize":-5,"u8":255,"u16":16,"u32":32,"#,
        r#""u128":340282366920938463463374607431768211455,"usize":7,"#,
        r#""f32":0.1,"f64":-1.5e+300,"bool":true,"#,
        r#""text":"é \"quoted\" 😀\n","option":null,"list":[1,null,-1],"#,
        r#""datetime":"2024-02-29T23:59:58.000120Z","date":"-0044-03-15","#,
        r#""naive_datetime":"+12345-01-02T03:04:05.000000006","time":"23:59:60.500","#,
        r#""delta":"-PT1.5S","json":{"a":{"nested":true},"b":[1,2.5,null]},"#,
        r#""color":{"r":1,"g":2,"b":3},"tags":{"x":[1,2]},"type":"kind"}"#,
    );
    assert_eq!(String::from_utf8(bytes.clone()).unwrap(), expected);

    let back = Everything::from_json(&bytes).unwrap();
    assert_eq!(
        back.scratch,
        Vec::<u8>::new(),
        "skipped fields decode to their default"
    );
    assert_eq!(
        back,
        Everything {
            scratch: Vec::new(),
            ..value
        }
    );
}

#[test]
fn schema_and_metadata() {
    let schema = Everything::SCHEMA;
    assert_eq!(schema.model, "Everything");
    assert_eq!(schema.version, "v3");
    assert_eq!(schema.ttl, Some(std::time::Duration::from_secs(30)));
    assert_eq!(schema.invalidates_keys, ["everything-index"]);
    assert_ne!(schema.hash, Question::SCHEMA.hash);

    let mut targets = Vec::new();
    everything().extra_targets(&mut targets);
    assert_eq!(targets, [Target::key("slug:é \"quoted\" \u{1F600}\n")]);

    let mut targets = Vec::new();
    Question::from_json(
        br#"{"id":1,"question_text":"","pub_date":"2024-01-02T03:04:05Z","choices":[]}"#,
    )
    .unwrap()
    .extra_targets(&mut targets);
    assert!(targets.is_empty());

    let mut links = Vec::new();
    let choice = Choice {
        id: 1,
        question_id: 7,
        choice_text: String::new(),
        voters: vec![3, 4],
    };
    choice.relation_links(0, &mut links);
    assert_eq!(links, ["7"]);
    choice.relation_links(1, &mut links);
    assert_eq!(links, ["7", "3", "4"]);
    choice.relation_links(2, &mut links);
    assert_eq!(links.len(), 3, "out-of-range relations push nothing");
}

#[test]
fn malformed_representations_are_errors() {
    let good = br#"{"id":1,"question_id":7,"choice_text":"x","voters":[1]}"#;
    assert!(Choice::from_json(good).is_ok());
    let bad: &[&[u8]] = &[
        b"",
        b"null",
        b"[]",
        b"[1,7,\"x\",[1]]",
        b"{}",
        b"\"text\"",
        // Unknown field.
        br#"{"id":1,"question_id":7,"choice_text":"x","voters":[1],"extra":0}"#,
        // Missing field.
        br#"{"id":1,"question_id":7,"voters":[1]}"#,
        // Missing `Option` field: the representation always has every key.
        br#"{"id":1}"#,
        // Duplicate field.
        br#"{"id":1,"id":1,"question_id":7,"choice_text":"x","voters":[1]}"#,
        // Wrong types.
        br#"{"id":"1","question_id":7,"choice_text":"x","voters":[1]}"#,
        br#"{"id":1,"question_id":7,"choice_text":"x","voters":[null]}"#,
        br#"{"id":1.5,"question_id":7,"choice_text":"x","voters":[1]}"#,
        br#"{"id":99999999999999999999,"question_id":7,"choice_text":"x","voters":[1]}"#,
        // Trailing bytes.
        br#"{"id":1,"question_id":7,"choice_text":"x","voters":[1]}x"#,
        // Invalid UTF-8 in a string and in a key.
        b"{\"id\":1,\"question_id\":7,\"choice_text\":\"\xff\",\"voters\":[1]}",
        b"{\"\xff\":1}",
    ];
    for bytes in bad {
        assert!(
            Choice::from_json(bytes).is_err(),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
    let err = Choice::from_json(br#"{"id":1,"oops":2}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field `oops`"), "{err}");

    for (field, bad) in [
        ("datetime", json!("2024-02-30T00:00:00Z")),
        ("date", json!("2024-13-01")),
        ("time", json!("24:00:00")),
        ("delta", json!("P1D")),
        ("u8", json!(256)),
        ("f64", json!("NaN")),
        ("color", json!("red")),
    ] {
        let mut value: Value = serde_json::from_slice(&everything().to_json().unwrap()).unwrap();
        value[field] = bad;
        let bytes = serde_json::to_vec(&value).unwrap();
        assert!(Everything::from_json(&bytes).is_err(), "{field}");
    }
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = everything().to_json().unwrap();
    for len in 0..bytes.len() {
        assert!(
            Everything::from_json(&bytes[..len]).is_err(),
            "{}",
            String::from_utf8_lossy(&bytes[..len])
        );
    }
}

#[test]
fn non_finite_floats_do_not_encode() {
    for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let value = Everything {
            f64: f,
            ..Everything::default()
        };
        assert!(value.to_json().is_err(), "{f}");
    }
    let value = Everything {
        f32: f32::NAN,
        ..Everything::default()
    };
    assert!(value.to_json().is_err());
}

/// One model per codec, so a failing round trip names the codec.
macro_rules! single {
    ($($name:ident: $ty:ty),* $(,)?) => {$(
        #[derive(CachedInstance, Debug, Clone, PartialEq)]
        pub struct $name {
            #[cached(pk)]
            pub id: i64,
            pub value: $ty,
        }
    )*};
}

single! {
    I8: i8, I16: i16, I32: i32, I64: i64, I128: i128, Isize: isize,
    U8: u8, U16: u16, U32: u32, U64: u64, U128: u128, Usize: usize,
    F32: f32, F64: f64, Bool: bool, Text: String,
    OptText: Option<String>, List: Vec<Option<i64>>, Nested: Vec<Vec<String>>,
    OptOpt: Option<Option<i64>>,
    UtcDateTime: DateTime<Utc>, Date: NaiveDate, DateTimeNaive: NaiveDateTime, Time: NaiveTime,
    Delta: TimeDelta, Json: Value, OptJson: Option<Value>,
}

fn datetimes() -> impl Strategy<Value = DateTime<Utc>> {
    let min = DateTime::<Utc>::MIN_UTC.timestamp();
    let max = DateTime::<Utc>::MAX_UTC.timestamp();
    prop_oneof![
        // Years -100 to 9999, where RFC 3339 applies.
        (-65_335_219_200i64..253_402_300_800, 0u32..1_000_000_000),
        // chrono's whole range, with signed extended years.
        (min..=max, 0u32..1_000_000_000),
        // Leap seconds.
        (
            -65_335_219_200i64..253_402_300_800,
            1_000_000_000u32..2_000_000_000
        ),
    ]
    .prop_filter_map("representable", |(secs, nanos)| {
        // A leap second is only representable at second 59 of a minute.
        let secs = if nanos >= 1_000_000_000 {
            secs - secs.rem_euclid(60) + 59
        } else {
            secs
        };
        DateTime::from_timestamp(secs, nanos)
    })
}

fn naive_times() -> impl Strategy<Value = NaiveTime> {
    (0u32..86_400, 0u32..2_000_000_000).prop_filter_map("representable", |(secs, nanos)| {
        let secs = if nanos >= 1_000_000_000 {
            secs - secs % 60 + 59
        } else {
            secs
        };
        NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos)
    })
}

fn naive_dates() -> impl Strategy<Value = NaiveDate> {
    let min = NaiveDate::MIN.num_days_from_ce();
    let max = NaiveDate::MAX.num_days_from_ce();
    prop_oneof![
        (min..=max),
        // Years -100 to 9999.
        (-36_889i32..3_652_059),
    ]
    .prop_filter_map("representable", NaiveDate::from_num_days_from_ce_opt)
}

fn time_deltas() -> impl Strategy<Value = TimeDelta> {
    let max_secs = TimeDelta::MAX.num_seconds();
    prop_oneof![
        Just(TimeDelta::zero()),
        Just(TimeDelta::MIN),
        Just(TimeDelta::MAX),
        (-max_secs..=max_secs, 0u32..1_000_000_000)
            .prop_filter_map("in range", |(s, n)| TimeDelta::new(s, n)),
        any::<i64>().prop_map(TimeDelta::nanoseconds),
        (-1_000i64..1_000).prop_map(TimeDelta::nanoseconds),
    ]
}

fn finite_f64() -> impl Strategy<Value = f64> {
    use proptest::num::f64 as f;
    (f::POSITIVE | f::NEGATIVE | f::NORMAL | f::SUBNORMAL | f::ZERO)
        .prop_filter("finite", |v| v.is_finite())
}

fn finite_f32() -> impl Strategy<Value = f32> {
    use proptest::num::f32 as f;
    (f::POSITIVE | f::NEGATIVE | f::NORMAL | f::SUBNORMAL | f::ZERO)
        .prop_filter("finite", |v| v.is_finite())
}

fn json_values() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        finite_f64().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

macro_rules! round_trips {
    ($($test:ident: $name:ident <- $strategy:expr;)*) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            $(
                #[test]
                fn $test(id in any::<i64>(), value in $strategy) {
                    round_trip(&$name { id, value });
                }
            )*
        }
    };
}

round_trips! {
    round_trip_i8: I8 <- any::<i8>();
    round_trip_i16: I16 <- any::<i16>();
    round_trip_i32: I32 <- any::<i32>();
    round_trip_i64: I64 <- any::<i64>();
    round_trip_i128: I128 <- any::<i128>();
    round_trip_isize: Isize <- any::<isize>();
    round_trip_u8: U8 <- any::<u8>();
    round_trip_u16: U16 <- any::<u16>();
    round_trip_u32: U32 <- any::<u32>();
    round_trip_u64: U64 <- any::<u64>();
    round_trip_u128: U128 <- any::<u128>();
    round_trip_usize: Usize <- any::<usize>();
    round_trip_f32: F32 <- finite_f32();
    round_trip_f64: F64 <- finite_f64();
    round_trip_bool: Bool <- any::<bool>();
    round_trip_string: Text <- any::<String>();
    round_trip_option: OptText <- any::<Option<String>>();
    round_trip_vec: List <- any::<Vec<Option<i64>>>();
    round_trip_nested_vec: Nested <- prop::collection::vec(prop::collection::vec(any::<String>(), 0..8), 0..8);
    round_trip_option_option: OptOpt <- any::<Option<Option<i64>>>();
    round_trip_datetime: UtcDateTime <- datetimes();
    round_trip_naive_date: Date <- naive_dates();
    round_trip_naive_datetime: DateTimeNaive <- (naive_dates(), naive_times()).prop_map(|(d, t)| d.and_time(t));
    round_trip_naive_time: Time <- naive_times();
    round_trip_time_delta: Delta <- time_deltas();
    round_trip_json: Json <- json_values();
    round_trip_option_json: OptJson <- prop::option::of(json_values());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Everything::from_json(&bytes);
        let _ = Choice::from_json(&bytes);
    }

    #[test]
    fn corrupted_representations_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = everything().to_json().unwrap();
        for (index, byte) in flips {
            let i = index.index(bytes.len());
            bytes[i] = byte;
        }
        if let Ok(decoded) = Everything::from_json(&bytes) {
            // Whatever decodes must encode again.
            decoded.to_json().unwrap();
        }
    }
}
