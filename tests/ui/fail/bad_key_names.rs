use cached_instances::CachedInstance;

#[derive(CachedInstance)]
#[cached(model = "polls:Question", version = "v 2")]
pub struct Question {
    #[cached(pk)]
    pub id: i64,
}

#[derive(CachedInstance)]
#[cached(model = "")]
pub struct Choice {
    #[cached(pk)]
    pub id: i64,
}

#[derive(CachedInstance)]
pub struct Réponse {
    #[cached(pk)]
    pub id: i64,
}

fn main() {}
