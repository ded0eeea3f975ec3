use cached_instances::CachedInstance;
use std::collections::HashMap;

#[derive(CachedInstance)]
pub struct Question {
    #[cached(pk)]
    pub id: i64,
    pub vote_counts: HashMap<String, i64>,
    pub tags: Option<Vec<std::collections::BTreeSet<String>>>,
}

fn main() {}
