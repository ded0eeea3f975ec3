use cached_instances::CachedInstance;

#[derive(CachedInstance)]
pub struct Question {
    #[cached(pk)]
    pub id: i64,
    pub text: String,
    #[cached(rename = "text")]
    pub question_text: String,
}

fn main() {}
