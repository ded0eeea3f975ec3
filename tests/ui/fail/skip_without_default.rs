use cached_instances::CachedInstance;

pub struct Connection;

#[derive(CachedInstance)]
pub struct Question {
    #[cached(pk)]
    pub id: i64,
    #[cached(skip)]
    pub connection: Connection,
}

fn main() {}
