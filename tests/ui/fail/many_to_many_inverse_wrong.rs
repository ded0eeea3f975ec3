use cached_instances::CachedInstance;

#[derive(CachedInstance)]
pub struct Tag {
    #[cached(pk)]
    pub id: i64,
}

#[derive(CachedInstance)]
pub struct User {
    #[cached(pk)]
    pub id: i64,
    // `Choice.tags` is a list of Tag keys, not of User keys.
    #[cached(many_to_many = Choice, inverse = tags)]
    pub votes: Vec<i64>,
}

#[derive(CachedInstance)]
pub struct Choice {
    #[cached(pk)]
    pub id: i64,
    #[cached(many_to_many = Tag)]
    pub tags: Vec<i64>,
}

fn main() {}
