//! A list in a `sortable` field's order from the model's index, on
//! PostgreSQL and a real Redis: once the model is warmed, the HTTP list of a
//! table model (`Resource::indexed`) costs no database statement, one index
//! query for the page's pks and the count, and one multi-get; with the near
//! cache both are served from memory.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use cached_instances::axum::Resource;
use cached_instances::sqlx::SqlxLoader;
use cached_instances::{Cache, CachedInstance, NearCache, RedisStore};
use cached_instances_testkit::databases::{counted, with_postgres};
use cached_instances_testkit::redis_server::RedisServer;
use serde_json::Value;
use tower::ServiceExt;

#[derive(CachedInstance, Debug, Clone, PartialEq)]
#[cached(table = "articles", database = "postgres")]
pub struct Article {
    #[cached(pk)]
    pub id: i64,
    pub title: String,
    #[cached(sortable)]
    pub views: i64,
}

async fn list(app: &Router, uri: &str) -> Value {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

fn ids(body: &Value) -> Vec<i64> {
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_sortable_list_of_a_warmed_table_model_runs_no_database_statement() {
    with_postgres(|pool, statements| async move {
        sqlx::raw_sql(
            "CREATE TABLE articles (id BIGINT PRIMARY KEY, title TEXT NOT NULL, views BIGINT NOT NULL);
             INSERT INTO articles SELECT g, 'Article ' || g, (g * 37) % 1000 FROM generate_series(1, 300) g;",
        )
        .execute(&pool)
        .await
        .unwrap();
        let server = RedisServer::start();
        for near in [false, true] {
            let _: () = redis::cmd("FLUSHALL")
                .query(&mut server.connection())
                .unwrap();
            let mut builder = RedisStore::builder(server.url());
            if near {
                builder = builder.near_cache(NearCache::new());
            }
            let cache = Cache::builder()
                .store(builder.connect().await.unwrap())
                .loader::<Article>(SqlxLoader::new(pool.clone()))
                .build()
                .unwrap();
            cache.warm::<Article>().await.unwrap();
            let app: Router = Router::new()
                .merge(Resource::<Article, _>::indexed(cache.clone()).router("/articles"));
            let mut expected: Vec<(i64, i64)> =
                (1..=300i64).map(|id| ((id * 37) % 1000, id)).collect();
            expected.sort_by(|a, b| b.cmp(a));
            let expected: Vec<i64> = expected.into_iter().take(100).map(|(_, id)| id).collect();

            // The first list may fill what warming left cold; then the
            // same list again, counted.
            list(&app, "/articles?ordering=-views&limit=100").await;
            // Its fills' replies evict the keys from the near tier (own
            // writes): they arrive before the list that warms the tier.
            cache.settle().await;
            list(&app, "/articles?ordering=-views&limit=100").await;
            cache.settle().await;
            server.reset_stats();
            let (body, run) = counted(
                &statements,
                list(&app, "/articles?ordering=-views&limit=100"),
            )
            .await;
            assert_eq!(ids(&body), expected, "near = {near}");
            assert_eq!(body["count"], 300);
            assert!(run.is_empty(), "near = {near}: statements {run:?}");
            let commands = server.data_commands();
            // The same order-only page read again at the same version of
            // the index: the count and the version alone (one small script,
            // no `ZRANGE`: the list's last page stands); with the near
            // cache, the page read by the list before is kept instead.
            let count = |c: &str| commands.get(c).copied().unwrap_or(0);
            let index_reads = if near { (0, 0, 0, 0) } else { (1, 0, 0, 1) };
            assert_eq!(
                (count("evalsha"), count("exec"), count("zrange"), count("zcard")),
                index_reads,
                "near = {near}: the index query: {commands:?}"
            );
            if near {
                assert!(
                    commands.is_empty(),
                    "the page and its entries are all near hits: {commands:?}"
                );
            } else {
                assert_eq!(commands.get("mget"), Some(&1), "one multi-get: {commands:?}");
            }
        }
    })
    .await;
}
