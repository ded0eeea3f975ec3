use cached_instances::CachedInstance;

#[derive(CachedInstance)]
pub struct Membership {
    #[cached(pk)]
    pub user_id: i64,
    #[cached(pk)]
    pub group_id: i64,
}

fn main() {}
