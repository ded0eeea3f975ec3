use cached_instances::CachedInstance;

#[derive(CachedInstance)]
pub struct Question {
    #[cached(pk, skip)]
    pub id: i64,
}

fn main() {}
