use cached_instances::CachedInstance;

#[derive(CachedInstance)]
pub struct Poll {
    #[cached(pk)]
    pub id: i64,
}

#[derive(CachedInstance)]
pub struct Question {
    #[cached(pk)]
    pub id: i64,
    // `poll_id` references Poll, not Question.
    #[cached(has_many = Choice, via = poll_id)]
    pub choices: Vec<i64>,
}

#[derive(CachedInstance)]
pub struct Choice {
    #[cached(pk)]
    pub id: i64,
    #[cached(references = Question)]
    pub question_id: i64,
    #[cached(references = Poll)]
    pub poll_id: i64,
}

fn main() {}
