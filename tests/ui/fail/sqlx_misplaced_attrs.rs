//! `through`, `source` and `target` go with `many_to_many`; `column` goes
//! with fields read from the model's own table.

use cached_instances::CachedInstance;

#[derive(CachedInstance)]
#[cached(table = "questions")]
pub struct Question {
    #[cached(pk)]
    pub id: i64,
    #[cached(through = "tags")]
    pub text: String,
    #[cached(has_many = Question, via = parent, source = "parent")]
    pub children: Vec<i64>,
    #[cached(references = Question, column = "parent_id", target = "x")]
    pub parent: Option<i64>,
    #[cached(has_many = Question, via = parent, column = "children")]
    pub kids: Vec<i64>,
    #[cached(skip, column = "scratch")]
    pub scratch: u8,
}

fn main() {}
