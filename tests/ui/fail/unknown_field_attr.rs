use cached_instances::CachedInstance;

#[derive(CachedInstance)]
pub struct Question {
    #[cached(primary_key)]
    pub id: i64,
    #[cached(refrences = Question)]
    pub parent_id: i64,
    #[cached(flatten)]
    pub text: String,
}

fn main() {}
