use cached_instances::CachedInstance;

pub struct Color(u8, u8, u8);

#[derive(CachedInstance)]
pub struct Question {
    #[cached(pk)]
    pub id: i64,
    #[cached(serde)]
    pub color: Color,
}

fn main() {}
