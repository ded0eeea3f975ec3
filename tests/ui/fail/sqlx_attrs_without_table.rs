//! `column`, `database` and the join-table attributes only describe the
//! derived loader, which `table` turns on.

use cached_instances::CachedInstance;

#[derive(CachedInstance)]
#[cached(database = "sqlite")]
pub struct Choice {
    #[cached(pk)]
    pub id: i64,
    #[cached(column = "text")]
    pub choice_text: String,
    #[cached(many_to_many = User, through = "votes", source = "choice_id", target = "user_id")]
    pub voters: Vec<i64>,
}

#[derive(CachedInstance)]
pub struct User {
    #[cached(pk)]
    pub id: i64,
}

fn main() {}
