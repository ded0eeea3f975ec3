//! A model with `#[cached(table = "...")]` is warmed through the derived
//! sqlx loader (`SELECT id FROM table ORDER BY id`, then batched loads) and
//! queried from the cache, on SQLite.

use cached_instances::query::{Query, Source};
use cached_instances::sqlx::SqlxLoader;
use cached_instances::{Cache, CachedInstance, MemoryStore};
use sqlx::sqlite::SqlitePoolOptions;

#[derive(CachedInstance, Debug, Clone, PartialEq)]
#[cached(table = "articles", database = "sqlite")]
pub struct Article {
    #[cached(pk, column = "article_id")]
    pub id: i64,
    #[cached(search)]
    pub title: String,
    #[cached(index)]
    pub published: bool,
    #[cached(sortable)]
    pub views: i64,
}

#[tokio::test]
async fn a_table_model_is_warmed_through_its_derived_loader() {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE articles (article_id INTEGER PRIMARY KEY, title TEXT NOT NULL, \
         published BOOLEAN NOT NULL, views INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    for id in 1..=30i64 {
        sqlx::query("INSERT INTO articles VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(format!(
                "Article {id} about {}",
                ["Rust", "Redis", "SQL"][id as usize % 3]
            ))
            .bind(id % 2 == 0)
            .bind((id * 37) % 50)
            .execute(&pool)
            .await
            .unwrap();
    }
    let cache = Cache::builder()
        .store(MemoryStore::new())
        .loader::<Article>(SqlxLoader::new(pool.clone()))
        .build()
        .unwrap();
    let query = Query::<Article>::new()
        .search("redis")
        .filter("published", true)
        .order_by_desc("views");
    let expected: Vec<i64> = {
        let mut rows: Vec<(i64, i64)> = (1..=30i64)
            .filter(|id| id % 3 == 1 && id % 2 == 0)
            .map(|id| ((id * 37) % 50, id))
            .collect();
        rows.sort();
        rows.reverse();
        rows.into_iter().map(|(_, id)| id).collect()
    };

    // Not warmed: the derived loader answers in SQL (for a search: the
    // candidates the other filters leave, matched in memory).
    let found = cache.query(&query).await.unwrap();
    assert_eq!(found.source, Source::Database);
    assert_eq!(
        found.items.iter().map(|a| a.id).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(found.count, expected.len() as u64);
    // A search with more candidates than its scan limit is declined.
    let small = Cache::builder()
        .store(MemoryStore::new())
        .loader::<Article>(SqlxLoader::new(pool.clone()).scan_limit(10))
        .build()
        .unwrap();
    assert!(matches!(
        small.query(&query).await,
        Err(cached_instances::Error::Query(
            cached_instances::query::QueryError::NoFallback { .. }
        ))
    ));

    let report = cache.warm::<Article>().batch_size(8).await.unwrap();
    assert_eq!(report.indexed, 30);
    // `all_pks` and one load per batch of 8.
    assert_eq!(report.loader_calls, 1 + 4);

    let found = cache.query(&query).await.unwrap();
    assert_eq!(found.source, Source::Cache);
    assert_eq!(
        found.items.iter().map(|a| a.id).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(found.count, expected.len() as u64);
}
