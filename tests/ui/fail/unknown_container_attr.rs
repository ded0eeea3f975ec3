use cached_instances::CachedInstance;

#[derive(CachedInstance)]
#[cached(modle = "Question", expires = 60)]
pub struct Question {
    #[cached(pk)]
    pub id: i64,
}

fn main() {}
