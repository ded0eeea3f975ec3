use cached_instances::CachedInstance;

#[derive(CachedInstance)]
pub struct Question {
    #[cached(pk, has_many = Choice, via = question_id)]
    pub id: i64,
    #[cached(references = Choice, many_to_many = Choice)]
    pub choice_id: i64,
    #[cached(skip, serde)]
    pub scratch: String,
}

#[derive(CachedInstance)]
pub struct Choice {
    #[cached(pk)]
    pub id: i64,
    #[cached(references = Question)]
    pub question_id: i64,
}

fn main() {}
