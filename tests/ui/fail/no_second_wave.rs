//! A model the derive rejects still implements `CachedInstance` (the derive
//! emits a stand-in), so only the real mistake is reported: not every use of
//! the type, nor the relations other models declare to it.

use cached_instances::CachedInstance;

#[derive(CachedInstance)]
#[cached(ttl = 0)]
pub struct Question {
    #[cached(pk)]
    pub id: i64,
    #[cached(has_many = Choice, via = question_id)]
    pub choices: Vec<i64>,
    #[cached(many_to_many = Choice, inverse = questions)]
    pub related: Vec<i64>,
}

#[derive(CachedInstance)]
pub struct Choice {
    #[cached(pk)]
    pub id: i64,
    #[cached(references = Question)]
    pub question_id: i64,
    #[cached(many_to_many = Question, inverse = related, primary_key)]
    pub questions: Vec<i64>,
}

fn uses(question: &Question) -> Vec<u8> {
    assert_eq!(Question::SCHEMA.model, "Question");
    let _: &i64 = question.pk();
    question.to_json().unwrap()
}

fn main() {
    let _ = uses;
}
