use cached_instances::CachedInstance;

pub struct Tag {
    pub id: i64,
}

#[derive(CachedInstance)]
pub struct Question {
    #[cached(pk)]
    pub id: i64,
    #[cached(has_many = Tag, via = question_id)]
    pub tags: Vec<i64>,
    #[cached(many_to_many = Tag, inverse = questions)]
    pub more_tags: Vec<i64>,
}

fn main() {}
