//! `cached_instances::axum::Resource` on its own, over a tiny in-memory
//! loader: error statuses, scopes, skipped rows, page sizes, nesting.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use cached_instances::axum::{ListQuery, Page, PageRequest, Resource};
use cached_instances::{Cache, CachedInstance, LoadError, Loader};
use serde_json::{Value, json};
use tower::ServiceExt;

#[derive(CachedInstance, Debug, Clone, PartialEq)]
pub struct Item {
    #[cached(pk)]
    pub id: i64,
    pub name: String,
    pub public: bool,
}

#[derive(Default)]
struct Items {
    rows: Mutex<BTreeMap<i64, Item>>,
    /// Pks the list query returns although the loader does not have them.
    ghosts: Mutex<Vec<i64>>,
    fail_loads: AtomicBool,
    fail_pages: AtomicBool,
    pages: AtomicU64,
}

impl Items {
    fn with(items: &[(i64, &str, bool)]) -> Arc<Items> {
        let db = Items::default();
        for &(id, name, public) in items {
            db.rows.lock().unwrap().insert(
                id,
                Item {
                    id,
                    name: name.into(),
                    public,
                },
            );
        }
        Arc::new(db)
    }
}

impl Loader<Item> for Items {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Item>, LoadError> {
        if self.fail_loads.load(Ordering::Relaxed) {
            return Err(LoadError::msg("connection refused"));
        }
        let rows = self.rows.lock().unwrap();
        Ok(pks.iter().filter_map(|pk| rows.get(pk).cloned()).collect())
    }
}

/// Every item, by id, plus the ghosts; no scope.
struct All(Arc<Items>);
/// Public items, by id; scoped to public ones.
struct Public(Arc<Items>);

fn page_of(db: &Items, request: PageRequest, only_public: bool) -> Result<Page<i64>, LoadError> {
    db.pages.fetch_add(1, Ordering::Relaxed);
    if db.fail_pages.load(Ordering::Relaxed) {
        return Err(LoadError::msg("connection refused"));
    }
    let mut pks: Vec<i64> = db
        .rows
        .lock()
        .unwrap()
        .values()
        .filter(|i| !only_public || i.public)
        .map(|i| i.id)
        .collect();
    pks.extend(db.ghosts.lock().unwrap().iter());
    let count = pks.len() as u64;
    let window = pks
        .into_iter()
        .skip(request.offset as usize)
        .take(request.limit as usize)
        .collect();
    Ok(Page::new(window, count))
}

impl ListQuery<Item> for All {
    async fn page(&self, request: PageRequest) -> Result<Page<i64>, LoadError> {
        page_of(&self.0, request, false)
    }
}

impl ListQuery<Item> for Public {
    async fn page(&self, request: PageRequest) -> Result<Page<i64>, LoadError> {
        page_of(&self.0, request, true)
    }

    fn scope(&self) -> Option<impl Fn(&Item) -> bool> {
        Some(|item: &Item| item.public)
    }
}

fn cache(db: &Arc<Items>) -> Cache {
    Cache::builder().loader::<Item>(db.clone()).build().unwrap()
}

async fn get(router: &Router, uri: &str) -> (StatusCode, Value) {
    let response = router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    assert_eq!(
        response.headers().get(header::CONTENT_TYPE).unwrap(),
        "application/json",
        "{uri}"
    );
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn detail_serves_the_cached_bytes_as_they_are() {
    let db = Items::with(&[(1, "one", true)]);
    let cache = cache(&db);
    let router: Router = Resource::new(cache.clone(), All(db.clone())).router("/items");
    let response = router
        .clone()
        .oneshot(Request::get("/items/1").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let cached = cache.get_json::<Item>(&1).await.unwrap().unwrap();
    assert_eq!(body, cached);
    assert_eq!(&body[..], br#"{"id":1,"name":"one","public":true}"#);

    // HEAD: same headers, no body.
    let response = router
        .oneshot(Request::head("/items/1").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key(header::ETAG));
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    assert!(body.is_empty());
}

#[tokio::test]
async fn loader_and_list_query_failures_are_503() {
    let db = Items::with(&[(1, "one", true), (2, "two", true)]);
    let router: Router = Resource::new(cache(&db), All(db.clone())).router("/items");
    assert_eq!(get(&router, "/items/1").await.0, StatusCode::OK);

    db.fail_loads.store(true, Ordering::Relaxed);
    let (status, body) = get(&router, "/items/2").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, json!({"error": "loading Item failed"}));
    // A cached instance is still served; a list needing a load is not.
    assert_eq!(get(&router, "/items/1").await.0, StatusCode::OK);
    assert_eq!(
        get(&router, "/items").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    db.fail_loads.store(false, Ordering::Relaxed);
    db.fail_pages.store(true, Ordering::Relaxed);
    let (status, body) = get(&router, "/items").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, json!({"error": "listing Item failed"}));
}

#[tokio::test]
async fn the_scope_hides_instances_from_detail_and_list() {
    let db = Items::with(&[(1, "one", true), (2, "secret", false), (3, "three", true)]);
    let cache = cache(&db);
    let public: Router = Resource::new(cache.clone(), Public(db.clone())).router("/public");
    let all: Router = Resource::new(cache, All(db.clone())).router("/all");

    assert_eq!(get(&all, "/all/2").await.0, StatusCode::OK);
    let (status, body) = get(&public, "/public/2").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("not found"));
    let (_, list) = get(&public, "/public").await;
    assert_eq!(list["count"], 2);
    assert_eq!(
        list["results"],
        json!([{"id":1,"name":"one","public":true},{"id":3,"name":"three","public":true}])
    );

    // A row the list query returned but that left the scope (a stale list
    // query, a racing write) is dropped, not served.
    db.ghosts.lock().unwrap().push(2);
    let (status, list) = get(&public, "/public").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["results"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn rows_missing_from_the_cache_and_database_are_skipped() {
    let db = Items::with(&[(1, "one", true), (2, "two", true)]);
    db.ghosts.lock().unwrap().extend([7, 8]);
    let router: Router = Resource::new(cache(&db), All(db.clone())).router("/items");
    let (status, list) = get(&router, "/items").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["count"], 4, "the count is the list query's");
    let ids: Vec<i64> = list["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2]);
}

#[tokio::test]
async fn page_sizes_and_nested_links() {
    let items: Vec<(i64, String, bool)> =
        (1..=10).map(|i| (i, format!("item {i}"), true)).collect();
    let items: Vec<(i64, &str, bool)> =
        items.iter().map(|(i, n, p)| (*i, n.as_str(), *p)).collect();
    let db = Items::with(&items);
    let resource = Resource::new(cache(&db), All(db.clone())).page_size(2, 3);
    let router: Router = Router::new().nest("/api", resource.router("/items/"));

    let (_, first) = get(&router, "/api/items").await;
    assert_eq!(first["results"].as_array().unwrap().len(), 2);
    assert_eq!(first["next"], "/api/items?limit=2&offset=2");
    let (_, capped) = get(&router, "/api/items?limit=50&tag=x%26y").await;
    assert_eq!(capped["results"].as_array().unwrap().len(), 3);
    assert_eq!(capped["next"], "/api/items?tag=x%26y&limit=3&offset=3");
    let (_, last) = get(&router, "/api/items?page=4&page_size=3").await;
    assert_eq!(
        last["results"],
        json!([{"id":10,"name":"item 10","public":true}])
    );
    assert_eq!(last["next"], Value::Null);
    assert_eq!(last["previous"], "/api/items?page=3&page_size=3");
    assert_eq!(get(&router, "/api/items/10").await.0, StatusCode::OK);
    assert_eq!(
        get(&router, "/api/items/x").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        db.pages.load(Ordering::Relaxed),
        3,
        "one list query per list request"
    );
}
