//! A field whose type sqlx cannot read from the database is an error at the
//! field's type, per database the loader is derived for.

use cached_instances::CachedInstance;
use chrono::TimeDelta;

#[derive(CachedInstance)]
#[cached(table = "events")]
pub struct Event {
    #[cached(pk)]
    pub id: i64,
    // SQLite reads it; PostgreSQL has no unsigned types.
    pub count: u32,
    // Neither database reads an interval into a TimeDelta.
    pub duration: TimeDelta,
}

#[derive(CachedInstance)]
#[cached(table = "counters", database = "postgres")]
pub struct Counter {
    #[cached(pk)]
    pub id: u64,
    #[cached(many_to_many = Counter, through = "links", source = "from", target = "to")]
    pub links: Vec<u64>,
}

#[derive(CachedInstance)]
#[cached(table = "ok", database = "sqlite")]
pub struct SqliteOnly {
    #[cached(pk)]
    pub id: i64,
    pub count: u32,
}

fn main() {}
