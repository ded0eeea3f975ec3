use cached_instances::CachedInstance;

#[derive(CachedInstance)]
pub struct Question(#[cached(pk)] i64, String);

fn main() {}
