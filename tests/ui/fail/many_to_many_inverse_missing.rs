use cached_instances::CachedInstance;

#[derive(CachedInstance)]
pub struct User {
    #[cached(pk)]
    pub id: i64,
    #[cached(many_to_many = Choice, inverse = voter_ids)]
    pub votes: Vec<i64>,
}

#[derive(CachedInstance)]
pub struct Choice {
    #[cached(pk)]
    pub id: i64,
    #[cached(many_to_many = User, inverse = votes)]
    pub voters: Vec<i64>,
}

fn main() {}
