//! The polls API over HTTP, end to end, on SQLite + MemoryStore and on
//! PostgreSQL + Redis: what each request costs in SQL statements (counted
//! from sqlx's own statement events, per request: `polls::telemetry`), what
//! it answers, and that writes (plain SQL, delivered by the change feed)
//! are visible to the next read.
//!
//! PostgreSQL is the server at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); each test works in its own
//! schema and drops it. Each PostgreSQL test starts its own `redis-server`.
//! Unreachable servers fail the tests; they are never skipped.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use bytes::Bytes;
use cached_instances::{MemoryStore, RedisStore};
use cached_instances_testkit::databases::database_url;
use cached_instances_testkit::redis_server::RedisServer;
use chrono::{TimeDelta, Utc};
use polls::Question;
use polls::db::{Backend, Db};
use polls::routes::{self, App, Cost};
use serde_json::{Value, json};
use tower::ServiceExt;

/// Drops a test's PostgreSQL schema, on a connection of its own (the test's
/// runtime may be gone by then).
struct SchemaGuard {
    url: String,
    schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            use sqlx::Connection;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&url)
                    .await
                    .map_err(|e| e.to_string())?;
                // Connections a failed test left in a transaction would
                // block the drop: end them first.
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "SET lock_timeout = '10s';
                     SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE application_name = 'polls {schema}' AND pid <> pg_backend_pid();
                     DROP SCHEMA IF EXISTS {schema} CASCADE;"
                )))
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
                conn.close().await.map_err(|e| e.to_string())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop schema {}: {dropped:?}", self.schema);
        }
    }
}

/// A seeded app and its router. Fields drop in order: the app (and its
/// pool), then the schema, then the Redis server.
struct TestApp {
    router: Router,
    app: App,
    _schema: Option<SchemaGuard>,
    _redis: Option<RedisServer>,
}

/// A response, read whole.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// What the request cost.
    cost: Cost,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn etag(&self) -> String {
        self.headers
            .get(header::ETAG)
            .expect("an ETag")
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// Asserts a JSON error body with this status.
    fn assert_error(&self, status: StatusCode) {
        assert_eq!(
            self.status,
            status,
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.headers.get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
        let error = self.json();
        assert!(
            error["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{error}"
        );
    }
}

fn ids(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v["id"].as_i64().or_else(|| v.as_i64()).unwrap())
        .collect()
}

impl TestApp {
    /// The app over `db`, migrated and seeded, and its router. The tracing
    /// subscriber that counts statements is installed once per test binary.
    async fn seeded(db: Db, store: impl cached_instances::Store) -> (Router, App) {
        static TELEMETRY: std::sync::Once = std::sync::Once::new();
        TELEMETRY.call_once(|| {
            polls::telemetry::init(tracing::level_filters::LevelFilter::WARN)
                .expect("no other global subscriber");
        });
        db.migrate().await.expect("migrate");
        assert!(db.seed(Utc::now()).await.expect("seed"));
        let app = App::new(db, store).await.expect("app");
        (routes::router(app.clone()), app)
    }

    async fn sqlite() -> TestApp {
        let db = Db::sqlite_in_memory().await.expect("SQLite in memory");
        let (router, app) = Self::seeded(db, MemoryStore::new()).await;
        TestApp {
            router,
            app,
            _schema: None,
            _redis: None,
        }
    }

    async fn postgres_redis() -> TestApp {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let url = database_url();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let schema = format!(
            "polls_http_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        // A direct connection first: its error says why (the pool's says
        // only that it timed out).
        {
            use sqlx::Connection;
            match sqlx::PgConnection::connect(&url).await {
                Ok(conn) => {
                    let _ = conn.close().await;
                }
                Err(e) => panic!(
                    "PostgreSQL is not reachable at {url}: {e}\n\
                     These tests need a PostgreSQL server (.ci/run starts one); \
                     set DATABASE_URL to point them at yours."
                ),
            }
        }
        let db = Db::postgres(&url, &schema).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {url}: {e}\n\
                 These tests need a PostgreSQL server (.ci/run starts one); \
                 set DATABASE_URL to point them at yours."
            )
        });
        // Created before anything can fail, so the schema is always dropped.
        let guard = SchemaGuard { url, schema };
        let redis = RedisServer::start();
        let store = RedisStore::connect(&redis.url())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", redis.url()));
        let (router, app) = Self::seeded(db, store).await;
        assert_eq!(app.db.backend(), Backend::Postgres);
        TestApp {
            router,
            app,
            _schema: Some(guard),
            _redis: Some(redis),
        }
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let cost = *response
            .extensions()
            .get::<Cost>()
            .expect("the request's cost");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        Reply {
            status,
            headers,
            body,
            cost,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.get_with(path, &[]).await
    }

    async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::get(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    /// A GET that must answer 200; returns the body as JSON.
    async fn get_ok(&self, path: &str) -> Value {
        let reply = self.get(path).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "GET {path}: {:?}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.json()
    }

    /// (SQL statements run, reply) of a GET.
    async fn counted_get(&self, path: &str) -> (u64, Reply) {
        let reply = self.get(path).await;
        (reply.cost.statements, reply)
    }

    async fn send_json(&self, method: Method, path: &str, body: &str) -> Reply {
        self.send(
            Request::builder()
                .method(method)
                .uri(path)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_owned()))
                .unwrap(),
        )
        .await
    }

    /// `PATCH /questions/{id}` with a new `pub_date`.
    async fn set_pub_date(&self, id: i64, pub_date: chrono::DateTime<Utc>) -> Reply {
        self.send_json(
            Method::PATCH,
            &format!("/questions/{id}"),
            &json!({ "pub_date": pub_date.to_rfc3339() }).to_string(),
        )
        .await
    }

    async fn delete(&self, path: &str) -> Reply {
        self.send(Request::delete(path).body(Body::empty()).unwrap())
            .await
    }
}

// ---------------------------------------------------------------------------
// Scenarios, each run on both backends

/// A detail read of a cached instance makes no database query and serves
/// the cached representation.
async fn detail_hit_makes_no_query(t: TestApp) {
    let (cold, first) = t.counted_get("/questions/1").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.headers.get(header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
    assert_eq!(
        cold, 2,
        "a miss: one query for the row, one for its choices"
    );
    let q = first.json();
    assert_eq!(q["id"], 1);
    assert_eq!(q["question_text"], "What's up?");
    assert_eq!(q["choices"], json!([1, 2]));

    let (warm, second) = t.counted_get("/questions/1").await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(warm, 0, "a hit makes no database query");
    assert_eq!(second.body, first.body);
    assert_eq!(second.etag(), first.etag());

    for path in ["/users/1", "/choices/3"] {
        t.get_ok(path).await;
        let (warm, reply) = t.counted_get(path).await;
        assert_eq!((warm, reply.status), (0, StatusCode::OK), "{path}");
    }
    let user = t.get_ok("/users/1").await;
    assert_eq!(user, json!({"id": 1, "username": "ann", "votes": [1, 5]}));
    let choice = t.get_ok("/choices/3").await;
    assert_eq!(
        choice,
        json!({"id": 3, "question_id": 2, "choice_text": "Tea", "voters": [2, 3]})
    );
}

/// A list read makes exactly one query (the page of pks and the count), and
/// paginates.
async fn list_makes_one_query(t: TestApp) {
    let (cold, reply) = t.counted_get("/questions").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(cold, 3, "the page, then one batched load: rows and choices");
    let page = reply.json();
    assert_eq!(page["count"], 3);
    assert_eq!(page["next"], Value::Null);
    assert_eq!(page["previous"], Value::Null);
    assert_eq!(ids(&page["results"]), [3, 2, 1], "newest first");

    let (warm, again) = t.counted_get("/questions").await;
    assert_eq!(warm, 1, "a warm list is one query");
    assert_eq!(again.body, reply.body);

    // Pagination, both styles; every page is one query once warm.
    let (n, first) = t.counted_get("/questions?limit=2").await;
    assert_eq!(n, 1);
    let first = first.json();
    assert_eq!(ids(&first["results"]), [3, 2]);
    assert_eq!(first["count"], 3);
    assert_eq!(first["next"], "/questions?limit=2&offset=2");
    assert_eq!(first["previous"], Value::Null);
    let (n, second) = t.counted_get("/questions?limit=2&offset=2").await;
    assert_eq!(n, 1);
    let second = second.json();
    assert_eq!(ids(&second["results"]), [1]);
    assert_eq!(second["next"], Value::Null);
    assert_eq!(second["previous"], "/questions?limit=2");
    let paged = t.get_ok("/questions?page=2&page_size=2").await;
    assert_eq!(ids(&paged["results"]), [1]);
    assert_eq!(paged["previous"], "/questions?page_size=2");
    // Past the end: still one query, and the count.
    let (n, past) = t.counted_get("/questions?offset=50").await;
    assert_eq!(n, 1);
    assert_eq!(
        past.json(),
        json!({
            "count": 3,
            "next": null,
            "previous": "/questions?limit=20&offset=30",
            "results": []
        })
    );
    // A limit over the maximum is capped.
    let capped = t.get_ok("/questions?limit=100000").await;
    assert_eq!(ids(&capped["results"]), [3, 2, 1]);

    for (path, count) in [("/users", 3), ("/choices", 7)] {
        t.get_ok(path).await;
        let (n, reply) = t.counted_get(path).await;
        assert_eq!(n, 1, "{path}");
        assert_eq!(reply.json()["count"], count, "{path}");
    }
    let choices = t.get_ok("/choices?limit=3&offset=1").await;
    assert_eq!(ids(&choices["results"]), [2, 3, 4]);
}

/// A question published in the future is absent from the list and 404 on
/// detail, with no database query once cached; publishing it shows it.
async fn scope_hides_future_questions(t: TestApp) {
    let hidden = t.get("/questions/4").await;
    hidden.assert_error(StatusCode::NOT_FOUND);
    let (n, hidden) = t.counted_get("/questions/4").await;
    hidden.assert_error(StatusCode::NOT_FOUND);
    assert_eq!(n, 0, "the scope is checked on the cached instance");
    // The choice itself is not scoped.
    assert_eq!(t.get_ok("/choices/7").await["question_id"], 4);

    let list = t.get_ok("/questions").await;
    assert_eq!(list["count"], 3);
    assert!(!ids(&list["results"]).contains(&4));

    let reply = t.set_pub_date(4, Utc::now() - TimeDelta::hours(1)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(t.get_ok("/questions/4").await["id"], 4);
    let list = t.get_ok("/questions").await;
    assert_eq!(list["count"], 4);
    assert_eq!(ids(&list["results"]), [4, 3, 2, 1]);

    // And back to the future: hidden again.
    t.set_pub_date(4, Utc::now() + TimeDelta::days(1)).await;
    t.get("/questions/4")
        .await
        .assert_error(StatusCode::NOT_FOUND);
    assert_eq!(ids(&t.get_ok("/questions").await["results"]), [3, 2, 1]);
}

/// Malformed input is a 400 (or 415/422 for bodies), missing things are 404,
/// always with a JSON error body; never a 500.
async fn bad_requests_are_json_errors(t: TestApp) {
    for path in [
        "/questions/abc",
        "/questions/1.5",
        "/questions/99999999999999999999",
        "/users/%20",
        "/questions?limit=abc",
        "/questions?limit=0",
        "/questions?limit=-1",
        "/questions?offset=-1",
        "/questions?offset=x",
        "/questions?page=0",
        "/questions?page=1&limit=2",
        "/questions?limit=1&limit=2",
        "/choices?page_size=many",
    ] {
        let (n, reply) = t.counted_get(path).await;
        reply.assert_error(StatusCode::BAD_REQUEST);
        assert_eq!(n, 0, "{path} made no query");
    }
    for path in ["/questions/999", "/users/0", "/choices/-5", "/nowhere"] {
        t.get(path).await.assert_error(StatusCode::NOT_FOUND);
    }

    let cases: [(Method, &str, &str, StatusCode); 14] = [
        (
            Method::POST,
            "/questions",
            "{not json",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/questions",
            "{}",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/questions",
            r#"{"question_text": 5}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/questions",
            r#"{"question_text": "  "}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/questions",
            r#"{"question_text": "a", "extra": 1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/questions",
            r#"{"question_text": "a", "pub_date": "yesterday"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::PATCH,
            "/questions/abc",
            "{}",
            StatusCode::BAD_REQUEST,
        ),
        (Method::PATCH, "/questions/999", "{}", StatusCode::NOT_FOUND),
        (
            Method::POST,
            "/choices",
            r#"{"question_id": 999, "choice_text": "x"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::PATCH,
            "/choices/1",
            r#"{"question_id": 999}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/choices/1/vote",
            r#"{"user_id": 999}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/choices/999/vote",
            r#"{"user_id": 1}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/choices/1/vote",
            "[]",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::DELETE,
            "/choices/x/vote",
            r#"{"user_id": 1}"#,
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, path, body, status) in cases {
        let reply = t.send_json(method.clone(), path, body).await;
        assert_eq!(
            reply.status, status,
            "{method} {path} {body}: {:?}",
            reply.body
        );
        reply.assert_error(status);
    }
    // A body without a JSON content type.
    let reply = t
        .send(
            Request::post("/questions")
                .body(Body::from(r#"{"question_text": "a"}"#))
                .unwrap(),
        )
        .await;
    reply.assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    t.delete("/questions/999")
        .await
        .assert_error(StatusCode::NOT_FOUND);
    t.delete("/choices/abc")
        .await
        .assert_error(StatusCode::BAD_REQUEST);

    // Nothing was written.
    assert_eq!(t.get_ok("/questions").await["count"], 3);
    assert_eq!(t.get_ok("/choices").await["count"], 7);
}

/// ETags on detail and list; If-None-Match answers 304 without a body; a
/// write changes the tag.
async fn etags_and_304(t: TestApp) {
    let first = t.get("/questions/1").await;
    let etag = first.etag();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 20,
        "{etag}"
    );
    for header_value in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"nope\", {etag}"),
        "*".to_owned(),
    ] {
        let (n, reply) = {
            let reply = t
                .get_with("/questions/1", &[("if-none-match", &header_value)])
                .await;
            (reply.cost.statements, reply)
        };
        assert_eq!(reply.status, StatusCode::NOT_MODIFIED, "{header_value}");
        assert!(reply.body.is_empty());
        assert_eq!(reply.etag(), etag);
        assert_eq!(n, 0);
    }
    let other = t
        .get_with("/questions/1", &[("if-none-match", "\"nope\"")])
        .await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.body, first.body);

    let list = t.get("/questions").await;
    let list_etag = list.etag();
    assert_ne!(list_etag, etag);
    let not_modified = t
        .get_with("/questions", &[("if-none-match", &list_etag)])
        .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert!(not_modified.body.is_empty());
    // Another page is another representation.
    let page = t.get("/questions?limit=1").await;
    assert_ne!(page.etag(), list_etag);

    // A write changes both tags.
    let reply = t
        .send_json(
            Method::PATCH,
            "/questions/1",
            r#"{"question_text": "What's new?"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let changed = t
        .get_with("/questions/1", &[("if-none-match", &etag)])
        .await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.json()["question_text"], "What's new?");
    assert_ne!(changed.etag(), etag);
    let changed = t
        .get_with("/questions", &[("if-none-match", &list_etag)])
        .await;
    assert_eq!(changed.status, StatusCode::OK);
}

/// Creating, updating and deleting questions, each visible to the next read
/// even when the old state was cached: the cache is told after the commit
/// (told before, its reload would have read and cached the old rows).
async fn question_writes_are_visible(t: TestApp) {
    // Warm everything the writes touch.
    t.get_ok("/questions").await;
    for path in ["/questions/1", "/choices/1", "/choices/2", "/users/1"] {
        t.get_ok(path).await;
    }

    let created = t
        .send_json(
            Method::POST,
            "/questions",
            r#"{"question_text": "Cats or dogs?"}"#,
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let new = created.json();
    let id = new["id"].as_i64().unwrap();
    assert_eq!(new["question_text"], "Cats or dogs?");
    assert_eq!(new["choices"], json!([]));
    assert_eq!(
        created.headers.get(header::LOCATION).unwrap(),
        &format!("/questions/{id}")
    );
    assert_eq!(t.get_ok(&format!("/questions/{id}")).await, new);
    let list = t.get_ok("/questions").await;
    assert_eq!(list["count"], 4);
    assert_eq!(ids(&list["results"])[0], id, "newest first");

    let updated = t
        .send_json(
            Method::PATCH,
            "/questions/1",
            r#"{"question_text": "What's new?"}"#,
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK);
    assert_eq!(updated.json()["question_text"], "What's new?");
    let (n, reply) = t.counted_get("/questions/1").await;
    let q = reply.json();
    assert_eq!(q["question_text"], "What's new?");
    assert_eq!(q["choices"], json!([1, 2]));
    assert_eq!(n, 0, "the write reloaded the cached question");

    // Deleting question 1 deletes its choices and their votes.
    let deleted = t.delete("/questions/1").await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(deleted.body.is_empty());
    for path in ["/questions/1", "/choices/1", "/choices/2"] {
        t.get(path).await.assert_error(StatusCode::NOT_FOUND);
    }
    assert_eq!(t.get_ok("/users/1").await["votes"], json!([5]));
    let list = t.get_ok("/questions").await;
    assert_eq!(ids(&list["results"]), [id, 3, 2]);
    assert_eq!(t.get_ok("/choices").await["count"], 5);
    t.delete("/questions/1")
        .await
        .assert_error(StatusCode::NOT_FOUND);
}

/// Moving a choice to another question updates the choice and both
/// questions, all of them cached before the move.
async fn moved_choice_updates_both_questions(t: TestApp) {
    assert_eq!(t.get_ok("/questions/1").await["choices"], json!([1, 2]));
    assert_eq!(t.get_ok("/questions/2").await["choices"], json!([3, 4]));
    assert_eq!(t.get_ok("/choices/2").await["question_id"], 1);

    let moved = t
        .send_json(
            Method::PATCH,
            "/choices/2",
            r#"{"question_id": 2, "choice_text": "Both"}"#,
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK);
    assert_eq!(
        moved.json(),
        json!({"id": 2, "question_id": 2, "choice_text": "Both", "voters": []})
    );

    let mut statements = 0;
    for (path, field, value) in [
        ("/questions/1", "choices", json!([1])),
        ("/questions/2", "choices", json!([2, 3, 4])),
        ("/choices/2", "choice_text", json!("Both")),
    ] {
        let (n, reply) = t.counted_get(path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.json()[field], value, "{path}");
        statements += n;
    }
    assert_eq!(
        statements, 0,
        "the write refreshed all three cached entries"
    );

    // A new choice, then its deletion, update its question too.
    let created = t
        .send_json(
            Method::POST,
            "/choices",
            r#"{"question_id": 3, "choice_text": "Neither"}"#,
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.json()["id"].as_i64().unwrap();
    assert_eq!(t.get_ok("/questions/3").await["choices"], json!([5, 6, id]));
    assert_eq!(
        t.delete(&format!("/choices/{id}")).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(t.get_ok("/questions/3").await["choices"], json!([5, 6]));
    t.get(&format!("/choices/{id}"))
        .await
        .assert_error(StatusCode::NOT_FOUND);
}

/// Votes update both sides of the many-to-many: the choice's voters and the
/// user's votes.
async fn votes_update_choice_and_user(t: TestApp) {
    assert_eq!(t.get_ok("/choices/3").await["voters"], json!([2, 3]));
    assert_eq!(t.get_ok("/users/1").await["votes"], json!([1, 5]));

    for _ in 0..2 {
        // Voting twice changes nothing the second time.
        let reply = t
            .send_json(Method::POST, "/choices/3/vote", r#"{"user_id": 1}"#)
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["voters"], json!([1, 2, 3]));
    }
    assert_eq!(t.get_ok("/choices/3").await["voters"], json!([1, 2, 3]));
    assert_eq!(t.get_ok("/users/1").await["votes"], json!([1, 3, 5]));

    let reply = t
        .send_json(Method::DELETE, "/choices/1/vote", r#"{"user_id": 1}"#)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["voters"], json!([]));
    assert_eq!(t.get_ok("/users/1").await["votes"], json!([3, 5]));
    assert_eq!(t.get_ok("/choices/1").await["voters"], json!([]));
    // The list serves the same fresh representations.
    let users = t.get_ok("/users").await;
    assert_eq!(users["results"][0]["votes"], json!([3, 5]));
}

/// When the database is down, reads that need it answer 503 (JSON), and
/// cached details are still served.
async fn database_down_is_503(t: TestApp) {
    t.get_ok("/questions/1").await;
    t.app.db.close().await;

    let (n, cached) = t.counted_get("/questions/1").await;
    assert_eq!((n, cached.status), (0, StatusCode::OK));
    t.get("/questions/2")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE);
    t.get("/questions")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE);
    t.send_json(Method::PATCH, "/questions/1", r#"{"question_text": "x"}"#)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE);
}

/// Once `Question` is warmed, the question list comes from the cache's
/// index of `pub_date`: no SQL statement, pagination and the count
/// included, and a write through the API (delivered by the change feed)
/// still shows in the next list.
async fn warmed_list_makes_no_query(t: TestApp) {
    let report = t.app.cache.warm::<Question>().await.expect("warm");
    assert_eq!(report.indexed, 4, "every question, published or not");

    let (n, reply) = t.counted_get("/questions").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(n, 0, "a warmed list runs no SQL statement");
    let page = reply.json();
    assert_eq!(page["count"], 3);
    assert_eq!(ids(&page["results"]), [3, 2, 1], "newest first");
    let (n, reply) = t.counted_get("/questions?limit=2&offset=2").await;
    assert_eq!(n, 0);
    let page = reply.json();
    assert_eq!(
        (page["count"].clone(), ids(&page["results"])),
        (json!(3), vec![1])
    );
    let (n, reply) = t.counted_get("/questions?offset=50").await;
    assert_eq!(n, 0, "past the end too");
    assert_eq!(reply.json()["count"], 3);

    // Publishing the future question moves it into the list.
    let reply = t.set_pub_date(4, Utc::now() - TimeDelta::minutes(1)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let (n, reply) = t.counted_get("/questions").await;
    assert_eq!(n, 0);
    let page = reply.json();
    assert_eq!(page["count"], 4);
    assert_eq!(ids(&page["results"]), [4, 3, 2, 1]);
}

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite_memory {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::TestApp::sqlite().await).await;
                }
            )*
        }
        mod postgres_redis {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::TestApp::postgres_redis().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    detail_hit_makes_no_query,
    list_makes_one_query,
    scope_hides_future_questions,
    bad_requests_are_json_errors,
    etags_and_304,
    question_writes_are_visible,
    moved_choice_updates_both_questions,
    votes_update_choice_and_user,
    database_down_is_503,
    warmed_list_makes_no_query,
);
