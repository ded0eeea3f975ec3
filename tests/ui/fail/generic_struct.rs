use cached_instances::CachedInstance;

#[derive(CachedInstance)]
pub struct Page<T> {
    #[cached(pk)]
    pub id: i64,
    pub items: Vec<T>,
}

fn main() {}
