//! Every codec, every container attribute and every field attribute that is
//! not a relation, on one model.

use std::collections::BTreeMap;

use cached_instances::{CachedInstance, Target};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Utc, Weekday};

fn on_write(q: &Everything) -> impl IntoIterator<Item = Target> {
    [Target::key(format!("by-slug:{}", q.string))]
}

#[derive(CachedInstance, Debug, Default, Clone, PartialEq)]
#[cached(model = "Everything", version = "v2.1-beta_3", ttl = 300)]
#[cached(invalidates_key = "everything-list", invalidates_key = "stats")]
#[cached(invalidator = on_write)]
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
    #[cached(rename = "str")]
    pub string: String,
    pub option: Option<String>,
    pub vec: Vec<Option<i64>>,
    pub datetime: DateTime<Utc>,
    pub date: NaiveDate,
    pub naive_datetime: NaiveDateTime,
    pub time: NaiveTime,
    pub delta: TimeDelta,
    pub json: serde_json::Value,
    #[cached(serde)]
    pub map: BTreeMap<String, Vec<i64>>,
    #[cached(serde)]
    pub weekday: Option<Weekday>,
    #[cached(skip)]
    pub scratch: Vec<u8>,
    pub r#type: String,
}

fn main() {
    const SCHEMA: cached_instances::Schema = Everything::SCHEMA;
    assert_eq!(SCHEMA.model, "Everything");
    assert_eq!(SCHEMA.version, "v2.1-beta_3");
    assert_eq!(SCHEMA.ttl, Some(std::time::Duration::from_secs(300)));
    assert_eq!(SCHEMA.invalidates_keys, ["everything-list", "stats"]);
    assert!(SCHEMA.relations.is_empty());

    let mut targets = Vec::new();
    Everything::default().extra_targets(&mut targets);
    assert_eq!(targets, [Target::key("by-slug:")]);
}
