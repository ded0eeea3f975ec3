use cached_instances::CachedInstance;

#[derive(CachedInstance)]
pub struct Question {
    pub id: i64,
    pub question_text: String,
}

fn main() {}
