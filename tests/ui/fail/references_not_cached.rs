use cached_instances::CachedInstance;

pub struct Question {
    pub id: i64,
}

#[derive(CachedInstance)]
pub struct Choice {
    #[cached(pk)]
    pub id: i64,
    #[cached(references = Question)]
    pub question_id: i64,
}

fn main() {}
