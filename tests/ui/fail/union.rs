use cached_instances::CachedInstance;

#[derive(CachedInstance)]
pub union Bits {
    pub int: i64,
    pub float: f64,
}

fn main() {}
