use cached_instances::CachedInstance;

#[derive(CachedInstance)]
pub enum Status {
    Open,
    Closed,
}

fn main() {}
