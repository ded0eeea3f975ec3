//! A `has_many` list is read from the target's table, so the target needs
//! one when the model has a table.

use cached_instances::CachedInstance;

#[derive(CachedInstance)]
#[cached(table = "questions")]
pub struct Question {
    #[cached(pk)]
    pub id: i64,
    #[cached(has_many = Choice, via = question_id)]
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
