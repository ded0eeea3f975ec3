use cached_instances::CachedInstance;

#[derive(CachedInstance)]
pub struct Question {
    #[cached(pk)]
    pub id: i64,
    #[cached(has_many = Choice, via = question)]
    pub choices: Vec<i64>,
}

#[derive(CachedInstance)]
pub struct Choice {
    #[cached(pk)]
    pub id: i64,
    #[cached(references = Question)]
    pub question_id: i64,
}

fn main() {}
