use cached_instances::CachedInstance;

#[derive(CachedInstance)]
pub struct Measurement {
    #[cached(pk)]
    pub value: f64,
}

fn main() {}
