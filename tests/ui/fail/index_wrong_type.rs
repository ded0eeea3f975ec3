use cached_instances::CachedInstance;
use chrono::{DateTime, Utc};

#[derive(CachedInstance)]
pub struct Product {
    #[cached(pk)]
    pub id: i64,
    #[cached(sortable)]
    pub name: String,
    #[cached(search)]
    pub stock: i64,
    #[cached(index)]
    pub price: f64,
    #[cached(index)]
    pub tags: Vec<String>,
    // Fine: each attribute on a type that supports it.
    #[cached(index, sortable)]
    pub rank: Option<u32>,
    #[cached(sortable)]
    pub created: DateTime<Utc>,
}

fn main() {}
