//! List endpoints with cached queries: `?field=value`, `?field__gte=`,
//! `?ordering=-field`, `?search=terms` for the declared fields, a `400` for
//! anything else, answered by the cache once the model is warmed.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use cached_instances::axum::Resource;
use cached_instances::{Cache, CachedInstance, LoadError, Loader};
use serde_json::Value;
use tower::ServiceExt;

#[derive(CachedInstance, Debug, Clone, PartialEq)]
pub struct Member {
    #[cached(pk)]
    pub id: i64,
    #[cached(search)]
    pub name: String,
    #[cached(index)]
    pub country: String,
    #[cached(sortable)]
    pub age: i32,
}

struct Db(Vec<Member>);

impl Loader<Member> for Db {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Member>, LoadError> {
        Ok(self
            .0
            .iter()
            .filter(|m| pks.contains(&m.id))
            .cloned()
            .collect())
    }
    async fn all_pks(&self) -> Result<Option<Vec<i64>>, LoadError> {
        Ok(Some(self.0.iter().map(|m| m.id).collect()))
    }
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
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
async fn lists_filter_order_and_search_by_declared_fields() {
    let names = [
        "Ada Lovelace",
        "Alan Turing",
        "Grace Hopper",
        "Ada Yonath",
        "Edsger Dijkstra",
    ];
    let members: Vec<Member> = names
        .iter()
        .enumerate()
        .map(|(i, name)| Member {
            id: i as i64 + 1,
            name: (*name).to_owned(),
            country: ["GB", "GB", "US", "IL", "NL"][i].to_owned(),
            age: [36, 41, 85, 60, 72][i],
        })
        .collect();
    let db = Arc::new(Db(members));
    let cache = Cache::builder().loader::<Member>(db).build().unwrap();
    let app: Router =
        Router::new().merge(Resource::<Member, _>::indexed(cache.clone()).router("/members"));

    // Not warmed, and the loader answers no queries: 503.
    let (status, body) = get(&app, "/members?country=GB").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    cache.warm::<Member>().await.unwrap();
    let (status, body) = get(&app, "/members?country=GB&ordering=-age").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((ids(&body), body["count"].as_u64()), (vec![2, 1], Some(2)));

    let (_, body) = get(&app, "/members?search=ADA&ordering=age").await;
    assert_eq!(ids(&body), [1, 4]);

    let (_, body) = get(
        &app,
        "/members?age__gte=41&age__lt=80&ordering=-age&limit=2",
    )
    .await;
    assert_eq!(ids(&body), [5, 4]);
    assert_eq!(body["count"], 3);
    assert_eq!(
        body["next"],
        "/members?age__gte=41&age__lt=80&ordering=-age&limit=2&offset=2"
    );
    let (_, body) = get(
        &app,
        "/members?age__gte=41&age__lt=80&ordering=-age&limit=2&offset=2",
    )
    .await;
    assert_eq!(ids(&body), [2]);

    let (_, body) = get(&app, "/members").await;
    assert_eq!(ids(&body), [1, 2, 3, 4, 5]);

    for (uri, needle) in [
        ("/members?colour=red", "no field `colour`"),
        ("/members?age=41", "not declared `#[cached(index)]`"),
        (
            "/members?ordering=-name",
            "not declared `#[cached(sortable)]`",
        ),
        ("/members?age__gte=old", "not a valid value"),
        ("/members?ordering=age,-country", "one field only"),
    ] {
        let (status, body) = get(&app, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{uri}: {body}"
        );
    }
}

/// A list whose cached query is wider than its scope: members of `min_age`
/// and over (or everyone), by age; the scope hides the US members. Counts
/// its database pages, which the index should make unneeded.
struct NotUs {
    min_age: Option<i32>,
    pages: Arc<std::sync::atomic::AtomicU64>,
}

impl cached_instances::axum::ListQuery<Member> for NotUs {
    async fn page(
        &self,
        _: cached_instances::axum::PageRequest,
    ) -> Result<cached_instances::axum::Page<i64>, LoadError> {
        self.pages
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(cached_instances::axum::Page::new(Vec::new(), 0))
    }

    fn scope(&self) -> Option<impl Fn(&Member) -> bool> {
        Some(|m: &Member| m.country != "US")
    }

    fn query(&self) -> Option<cached_instances::query::Query<Member>> {
        let query = cached_instances::query::Query::new().order_by("age");
        Some(match self.min_age {
            Some(age) => query.gte("age", age),
            None => query,
        })
    }
}

/// From the index, a page's rows pass both the query's filters and the
/// list's scope (tested in one decode of each row): a row the query
/// matches but the scope rejects is dropped, with or without filters, and
/// the database's list query is never run.
#[tokio::test]
async fn an_indexed_list_applies_its_scope_as_well_as_its_query() {
    let members: Vec<Member> = [("GB", 36), ("GB", 41), ("US", 85), ("IL", 60), ("NL", 72)]
        .iter()
        .enumerate()
        .map(|(i, &(country, age))| Member {
            id: i as i64 + 1,
            name: format!("member {i}"),
            country: country.to_owned(),
            age,
        })
        .collect();
    let cache = Cache::builder()
        .loader::<Member>(Arc::new(Db(members)))
        .build()
        .unwrap();
    cache.warm::<Member>().await.unwrap();
    for (min_age, expected, count) in [(Some(40), vec![2, 4, 5], 4), (None, vec![1, 2, 4, 5], 5)] {
        let pages = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let list = NotUs {
            min_age,
            pages: Arc::clone(&pages),
        };
        let app: Router = Resource::new(cache.clone(), list).router("/members");
        for _ in 0..2 {
            // Twice: the second page is read with its guessed entries.
            let (status, body) = get(&app, "/members").await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(ids(&body), expected, "{min_age:?}: {body}");
            assert_eq!(body["count"], count, "the count is the query's");
        }
        assert_eq!(
            pages.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "the index answered"
        );
    }
}
