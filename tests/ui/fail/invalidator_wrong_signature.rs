use cached_instances::CachedInstance;

fn on_write(question: &Question) -> Vec<String> {
    vec![format!("question-{}", question.id)]
}

#[derive(CachedInstance)]
#[cached(invalidator = on_write)]
pub struct Question {
    #[cached(pk)]
    pub id: i64,
}

fn main() {}
