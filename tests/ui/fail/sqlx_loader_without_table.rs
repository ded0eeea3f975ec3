//! `SqlxLoader` loads the models whose loader the derive generated.

use cached_instances::sqlx::SqlxLoader;
use cached_instances::{Cache, CachedInstance};

#[derive(CachedInstance)]
pub struct Tag {
    #[cached(pk)]
    pub id: i64,
}

pub fn cache(pool: sqlx::SqlitePool) -> Cache {
    Cache::builder()
        .loader::<Tag>(SqlxLoader::new(pool))
        .build()
        .unwrap()
}

fn main() {}
