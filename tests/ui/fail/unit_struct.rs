use cached_instances::CachedInstance;

#[derive(CachedInstance)]
pub struct Nothing;

fn main() {}
