//! With a table, a schema mistake is still reported once: the derived
//! loader reads what the other assertions check without failing again.

use cached_instances::CachedInstance;

#[derive(CachedInstance)]
#[cached(table = "things")]
pub struct Thing {
    #[cached(pk)]
    pub id: i64,
    #[cached(has_many = Part, via = thing_id)]
    pub parts: Vec<String>,
    #[cached(has_many = Part, via = thing)]
    pub more_parts: Vec<i64>,
    #[cached(serde)]
    pub meta: NotSerde,
    #[cached(skip)]
    pub scratch: NoDefault,
    #[cached(many_to_many = Nothing, through = "x", source = "a", target = "b")]
    pub nothings: Vec<i64>,
    #[cached(has_many = Nowhere, via = thing_id)]
    pub nowheres: Vec<i64>,
    #[cached(has_many = Part, via = thing_id)]
    pub not_a_list: i64,
}

#[derive(CachedInstance)]
#[cached(table = "parts")]
pub struct Part {
    #[cached(pk)]
    pub id: i64,
    #[cached(references = Thing)]
    pub thing_id: i64,
}

pub struct NotSerde;
pub struct NoDefault;
pub struct Nothing;
pub struct Nowhere;

fn main() {}
