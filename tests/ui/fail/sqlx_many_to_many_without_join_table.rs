//! A model with a table reads its many-to-many lists from a join table,
//! which the attributes must name.

use cached_instances::CachedInstance;

#[derive(CachedInstance)]
#[cached(table = "choices")]
pub struct Choice {
    #[cached(pk)]
    pub id: i64,
    #[cached(many_to_many = User)]
    pub voters: Vec<i64>,
    #[cached(many_to_many = User, through = "likes", target = "user_id")]
    pub fans: Vec<i64>,
    #[cached(many_to_many = User, through = "bans", source = "x", target = "x")]
    pub banned: Vec<i64>,
}

#[derive(CachedInstance)]
pub struct User {
    #[cached(pk)]
    pub id: i64,
}

fn main() {}
