//! Errors as users meet them: the `Pk` extractor answers a malformed pk as
//! the detail endpoint does; pagination links are absolute; a failing
//! database keeps its cause in the error chain and the log line, while the
//! `503` body shows none of it; `?` converts a `sqlx::Error` in a list
//! query (over a real SQLite database); and a scope hides its instances,
//! not their pks in other models' relation lists, as the README says.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::routing::patch;
use cached_instances::axum::{ListQuery, Page, PageRequest, Pk, Rejection, Resource};
use cached_instances::{Cache, CachedInstance, Error, LoadError, Loader};
use serde_json::{Value, json};
use tower::ServiceExt;

#[derive(CachedInstance, Debug, Clone, PartialEq)]
pub struct Item {
    #[cached(pk)]
    pub id: i64,
    pub name: String,
}

/// A database error with a cause, as drivers report them.
#[derive(Debug)]
struct DriverError(std::io::Error);

impl std::fmt::Display for DriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("error communicating with database")
    }
}

impl std::error::Error for DriverError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Items `1..=5`; or, when `broken`, a driver error that names a host.
struct Db {
    broken: bool,
}

impl Loader<Item> for Db {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Item>, LoadError> {
        if self.broken {
            let cause = std::io::Error::other("connection to 10.0.0.5:5432 reset");
            return Err(LoadError::new(DriverError(cause)));
        }
        Ok(pks
            .iter()
            .filter(|&&id| (1..=5).contains(&id))
            .map(|&id| Item {
                id,
                name: format!("item {id}"),
            })
            .collect())
    }
}

struct All;

impl ListQuery<Item> for All {
    async fn page(&self, request: PageRequest) -> Result<Page<i64>, LoadError> {
        let pks = (1..=5)
            .skip(request.offset as usize)
            .take(request.limit as usize)
            .collect();
        Ok(Page::new(pks, 5))
    }
}

fn cache(broken: bool) -> Cache {
    Cache::builder()
        .loader::<Item>(Db { broken })
        .build()
        .unwrap()
}

async fn call(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

async fn rename(Pk(id): Pk<Item>) -> String {
    format!("renamed {id}")
}

#[tokio::test]
async fn the_pk_extractor_answers_like_the_detail_endpoint() {
    let app = Resource::new(cache(false), All)
        .router("/items")
        .route("/items/{pk}", patch(rename));

    let (status, detail) = call(&app, get("/items/abc")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        detail,
        json!({"error": "invalid Item primary key: \"abc\""})
    );
    let patch_abc = Request::patch("/items/abc").body(Body::empty()).unwrap();
    assert_eq!(call(&app, patch_abc).await, (status, detail));

    let response = app
        .clone()
        .oneshot(Request::patch("/items/7").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), 64)
        .await
        .unwrap();
    assert_eq!(&body[..], b"renamed 7");

    // On a route without a path parameter: a 500, not a panic.
    let misrouted = Router::new().route("/rename", patch(rename));
    let request = Request::patch("/rename").body(Body::empty()).unwrap();
    assert_eq!(
        call(&misrouted, request).await,
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "internal error"})
        )
    );
}

#[tokio::test]
async fn pagination_links_are_absolute() {
    let with_host = |uri: &str, host: &str| {
        Request::get(uri)
            .header(header::HOST, host)
            .body(Body::empty())
            .unwrap()
    };
    let app = Resource::new(cache(false), All).router("/items");
    let (_, page) = call(
        &app,
        with_host("/items?limit=2&offset=2", "api.example.com"),
    )
    .await;
    assert_eq!(
        page["next"],
        "http://api.example.com/items?limit=2&offset=4"
    );
    assert_eq!(page["previous"], "http://api.example.com/items?limit=2");
    // An absolute request URI gives its scheme.
    let (_, page) = call(&app, get("https://api.example.com:8443/items?limit=2")).await;
    assert_eq!(
        page["next"],
        "https://api.example.com:8443/items?limit=2&offset=2"
    );
    // A Host that is not a plain authority is not echoed.
    let (_, page) = call(&app, with_host("/items?limit=2", "evil@example.com")).await;
    assert_eq!(page["next"], "/items?limit=2&offset=2");

    // A configured origin wins over the request's.
    let app = Resource::new(cache(false), All)
        .base_url("https://example.com/api/")
        .router("/items");
    let (_, page) = call(
        &app,
        with_host("/items?page=2&page_size=2", "internal:8080"),
    )
    .await;
    assert_eq!(
        page["next"],
        "https://example.com/api/items?page=3&page_size=2"
    );
    assert_eq!(
        page["previous"],
        "https://example.com/api/items?page_size=2"
    );
}

/// Log lines written while `f` runs on this thread.
async fn logged<F: std::future::Future>(f: F) -> (F::Output, String) {
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    let output = f.await;
    drop(guard);
    let log = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    (output, log)
}

#[tokio::test]
async fn a_load_error_keeps_its_cause_in_the_chain_and_the_log_not_the_body() {
    // The chain: each cause once, in order.
    let error = cache(true).get::<Item>(&1).await.unwrap_err();
    assert!(
        matches!(error, Error::Load { model: "Item", .. }),
        "{error:?}"
    );
    let mut chain = vec![error.to_string()];
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        chain.push(cause.to_string());
        source = cause.source();
    }
    assert_eq!(
        chain,
        [
            "loading Item failed",
            "error communicating with database",
            "connection to 10.0.0.5:5432 reset",
        ]
    );

    // The endpoint: a 503 naming the model only; the log has the cause.
    let app = Resource::new(cache(true), All).router("/items");
    let ((status, body), log) = logged(call(&app, get("/items/1"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, json!({"error": "loading Item failed"}));
    assert!(
        log.contains(
            "loading Item failed: error communicating with database: connection to 10.0.0.5:5432 reset"
        ),
        "{log}"
    );
    let ((status, body), _) = logged(call(&app, get("/items"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, json!({"error": "loading Item failed"}));
}

/// The README's list query, over a real SQLite database: `?` on a
/// `sqlx::Error` compiles.
struct FromSqlite(sqlx::SqlitePool);

impl ListQuery<Item> for FromSqlite {
    async fn page(&self, request: PageRequest) -> Result<Page<i64>, LoadError> {
        let rows: Vec<(i64, i64)> =
            sqlx::query_as("SELECT id, count(*) OVER () FROM items ORDER BY id LIMIT ? OFFSET ?")
                .bind(request.limit as i64)
                .bind(request.offset as i64)
                .fetch_all(&self.0)
                .await?;
        let count = rows.first().map_or(0, |&(_, count)| count as u64);
        Ok(Page::new(
            rows.into_iter().map(|(id, _)| id).collect(),
            count,
        ))
    }
}

#[tokio::test]
async fn a_list_query_uses_the_question_mark_on_sqlx_errors() {
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    let app = Resource::new(cache(false), FromSqlite(pool.clone())).router("/items");

    // No table yet: the sqlx error is the cause, logged; the body says no more.
    let ((status, body), log) = logged(call(&app, get("/items"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, json!({"error": "listing Item failed"}));
    assert!(log.contains("listing Item failed: "), "{log}");
    assert!(log.contains("no such table: items"), "{log}");

    sqlx::query("CREATE TABLE items (id INTEGER PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO items (id) VALUES (2), (4)")
        .execute(&pool)
        .await
        .unwrap();
    let (status, body) = call(&app, get("/items")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["count"], 2);
    assert_eq!(body["results"][1], json!({"id": 4, "name": "item 4"}));

    // A handler's own rejection.
    let rejection = Rejection::from(cache(true).get::<Item>(&1).await.unwrap_err());
    assert_eq!(rejection.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rejection.body_text(), "loading Item failed");
}

#[derive(CachedInstance, Debug, Clone, PartialEq)]
pub struct Author {
    #[cached(pk)]
    pub id: i64,
    #[cached(has_many = Post, via = author_id)]
    pub posts: Vec<i64>,
}

#[derive(CachedInstance, Debug, Clone, PartialEq)]
pub struct Post {
    #[cached(pk)]
    pub id: i64,
    #[cached(references = Author)]
    pub author_id: i64,
    pub published: bool,
}

/// Author 3 wrote post 4 (scheduled, unpublished) and post 5 (published).
/// `hide_scheduled`: the Author loader leaves unpublished posts out of the
/// relation list, as the README suggests.
struct Blog {
    hide_scheduled: bool,
}

const POSTS: [(i64, i64, bool); 2] = [(4, 3, false), (5, 3, true)];

impl Loader<Author> for Blog {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Author>, LoadError> {
        Ok(pks
            .iter()
            .map(|&id| Author {
                id,
                posts: POSTS
                    .iter()
                    .filter(|&&(_, author, published)| {
                        author == id && (published || !self.hide_scheduled)
                    })
                    .map(|&(post, _, _)| post)
                    .collect(),
            })
            .collect())
    }
}

impl Loader<Post> for Blog {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Post>, LoadError> {
        Ok(POSTS
            .iter()
            .filter(|(id, _, _)| pks.contains(id))
            .map(|&(id, author_id, published)| Post {
                id,
                author_id,
                published,
            })
            .collect())
    }
}

struct Published;

impl ListQuery<Post> for Published {
    async fn page(&self, _: PageRequest) -> Result<Page<i64>, LoadError> {
        Ok(Page::new(vec![5], 1))
    }
    fn scope(&self) -> Option<impl Fn(&Post) -> bool> {
        Some(|p: &Post| p.published)
    }
}

struct Authors;

impl ListQuery<Author> for Authors {
    async fn page(&self, _: PageRequest) -> Result<Page<i64>, LoadError> {
        Ok(Page::new(vec![3], 1))
    }
}

fn blog(hide_scheduled: bool) -> Router {
    let cache = Cache::builder()
        .loader::<Author>(Blog { hide_scheduled })
        .loader::<Post>(Blog { hide_scheduled })
        .build()
        .unwrap();
    Router::new()
        .merge(Resource::new(cache.clone(), Authors).router("/authors"))
        .merge(Resource::new(cache, Published).router("/posts"))
}

#[tokio::test]
async fn a_scope_does_not_filter_other_models_relation_lists() {
    // As documented: the post is hidden, its pk is not.
    let app = blog(false);
    let (status, _) = call(&app, get("/posts/4")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, author) = call(&app, get("/authors/3")).await;
    assert_eq!(author["posts"], json!([4, 5]));

    // The documented remedy: the relation's loader applies the scope.
    let app = blog(true);
    let (_, author) = call(&app, get("/authors/3")).await;
    assert_eq!(author["posts"], json!([5]));
    let (status, _) = call(&app, get("/posts/4")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
