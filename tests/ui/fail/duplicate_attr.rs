use cached_instances::CachedInstance;

#[derive(CachedInstance)]
#[cached(model = "Question")]
#[cached(model = "Poll")]
pub struct Question {
    #[cached(pk, pk)]
    pub id: i64,
    #[cached(rename = "text")]
    #[cached(rename = "body")]
    pub question_text: String,
}

fn main() {}
