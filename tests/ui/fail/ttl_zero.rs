use cached_instances::CachedInstance;

#[derive(CachedInstance)]
#[cached(ttl = 0)]
pub struct Question {
    #[cached(pk)]
    pub id: i64,
}

#[derive(CachedInstance)]
#[cached(ttl = "5m")]
pub struct Choice {
    #[cached(pk)]
    pub id: i64,
}

fn main() {}
