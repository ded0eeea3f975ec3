//! Table and column names must be usable as quoted SQL names.

use cached_instances::CachedInstance;

#[derive(CachedInstance)]
#[cached(table = "", database = "oracle")]
pub struct A {
    #[cached(pk, column = "")]
    pub id: i64,
    #[cached(column = "say \"hi\"")]
    pub greeting: String,
}

#[derive(CachedInstance)]
#[cached(table = "a.b.c", database = "postgre")]
pub struct B {
    #[cached(pk)]
    pub id: i64,
    #[cached(many_to_many = A, through = ".votes", source = "", target = "a`b")]
    pub a: Vec<i64>,
}

fn main() {}
