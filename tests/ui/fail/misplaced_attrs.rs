use cached_instances::CachedInstance;

#[derive(CachedInstance)]
#[cached(pk)]
pub struct Question {
    #[cached(pk, model = "Question")]
    pub id: i64,
    #[cached(via = question_id)]
    pub choices: Vec<i64>,
    #[cached(skip = true)]
    pub scratch: String,
}

fn main() {}
