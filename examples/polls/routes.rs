//! The polls HTTP API.
//!
//! Reads are cached [`Resource`]s: a detail costs no database query when the
//! instance is cached, a list costs one (the page of pks and the count), and
//! the question list none once `Question` is warmed (it is listed from the
//! cache's index of its `sortable` `pub_date`).
//!
//! | method and path | does |
//! |---|---|
//! | `GET /` | the endpoints |
//! | `GET /users`, `GET /users/{pk}` | users, by id |
//! | `GET /questions`, `GET /questions/{pk}` | published questions, newest first; a question published in the future is hidden from both |
//! | `GET /choices`, `GET /choices/{pk}` | choices, by id |
//! | `POST /questions` | `{"question_text": "...", "pub_date"?: "RFC 3339"}` (default now) |
//! | `PATCH /questions/{pk}` | `{"question_text"?: "...", "pub_date"?: "..."}` |
//! | `DELETE /questions/{pk}` | deletes it with its choices and their votes |
//! | `POST /choices` | `{"question_id": n, "choice_text": "..."}` |
//! | `PATCH /choices/{pk}` | `{"question_id"?: n, "choice_text"?: "..."}`; a new `question_id` moves it |
//! | `DELETE /choices/{pk}` | deletes it and its votes |
//! | `POST /choices/{pk}/vote`, `DELETE /choices/{pk}/vote` | `{"user_id": n}`: votes, withdraws the vote |
//!
//! Each write is plain SQL in a transaction ([`write()`]): no previous state
//! is read and the cache is not told what changed. The change feed's
//! triggers record, in the same transaction, every row the write changed
//! (with its old and new foreign keys), and the handler delivers exactly
//! its own transaction's changes ([`Feed::flush`]) before it responds, so
//! the next read sees the write: the instance, the old and the new question
//! of a moved choice, the users whose votes changed. The feed's worker
//! delivers what anyone else writes (`psql`, another service), and what a
//! handler could not deliver.
//!
//! Errors are JSON: `{"error": "..."}`, `400` for malformed input, `404` for
//! missing instances, `422` for a body that refers to something missing or
//! breaks a rule, `503` when the database fails.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cached_instances::axum::{ListQuery, Page, PageRequest, Resource};
use cached_instances::feed::{Feed, FeedError, FeedHandle};
use cached_instances::query::Query;
use cached_instances::sqlx::{SqlxDatabase, SqlxLoader, SqlxModel};
use cached_instances::{BuildError, Cache, CacheBuilder, CachedInstance, LoadError, Store};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::db::{ChoiceChanges, Db, Pool, Q, QuestionChanges, WriteError};
use crate::telemetry;
use crate::{Choice, Question, User};

/// The application: the database, the cache over it and its change feed.
#[derive(Clone, Debug)]
pub struct App {
    /// The database.
    pub db: Db,
    /// The cache of users, questions and choices.
    pub cache: Cache,
    /// The change feed: what the writes change reaches the cache.
    pub feed: Feed,
    /// The feed's worker, stopped with the last clone of the app.
    _worker: Arc<FeedHandle>,
}

/// Why the app could not start.
#[derive(Debug)]
pub enum AppError {
    /// The cache's schema is inconsistent (it is not).
    Build(BuildError),
    /// The change feed's triggers could not be installed.
    Feed(FeedError),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Build(e) => write!(f, "cache: {e}"),
            AppError::Feed(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AppError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AppError::Build(e) => Some(e),
            AppError::Feed(e) => Some(e),
        }
    }
}

/// The models' derived loaders over `pool`.
fn loaders<DB: SqlxDatabase>(builder: CacheBuilder, pool: &sqlx::Pool<DB>) -> CacheBuilder
where
    User: SqlxModel<DB>,
    Question: SqlxModel<DB>,
    Choice: SqlxModel<DB>,
{
    builder
        .loader::<User>(SqlxLoader::new(pool.clone()))
        .loader::<Question>(SqlxLoader::new(pool.clone()))
        .loader::<Choice>(SqlxLoader::new(pool.clone()))
}

impl App {
    /// A cache over `store` loading users, questions and choices from `db`
    /// with the loaders the models derive; then as
    /// [`with_cache`](Self::with_cache).
    ///
    /// # Errors
    ///
    /// As [`with_cache`](Self::with_cache).
    pub async fn new(db: Db, store: impl Store) -> Result<App, AppError> {
        let builder = Cache::builder().store(store);
        let builder = match db.pool() {
            Pool::Sqlite(pool) => loaders(builder, pool),
            Pool::Postgres(pool) => loaders(builder, pool),
        };
        let cache = builder.build().map_err(AppError::Build)?;
        App::with_cache(db, cache).await
    }

    /// The app over `db` and `cache`: the change feed's triggers installed
    /// on `db`'s tables (idempotent; [`Db::migrate`] first) and its worker
    /// running.
    ///
    /// # Errors
    ///
    /// When the triggers cannot be installed (the tables are missing).
    pub async fn with_cache(db: Db, cache: Cache) -> Result<App, AppError> {
        let feed = Feed::new(cache.clone(), db.feed_pool());
        feed.install().await.map_err(AppError::Feed)?;
        let worker = Arc::new(feed.spawn());
        Ok(App {
            db,
            cache,
            feed,
            _worker: worker,
        })
    }
}

// ---------------------------------------------------------------------------
// List queries

/// Users, by id.
#[derive(Debug)]
pub struct AllUsers(pub Db);

impl ListQuery<User> for AllUsers {
    async fn page(&self, request: PageRequest) -> Result<Page<i64>, LoadError> {
        let (pks, count) = self
            .0
            .user_page(request.limit, request.offset)
            .await
            .map_err(LoadError::new)?;
        Ok(Page::new(pks, count))
    }
}

/// Questions published by now, newest first. The same scope hides the
/// others from detail.
///
/// The list is also a cached query on `pub_date` (`sortable`): once
/// `Question` is warmed, [`Resource`] answers it from the cache's index,
/// with no database statement; the SQL here answers until then.
#[derive(Debug)]
pub struct PublishedQuestions(pub Db);

impl ListQuery<Question> for PublishedQuestions {
    async fn page(&self, request: PageRequest) -> Result<Page<i64>, LoadError> {
        let (pks, count) = self
            .0
            .published_question_page(Utc::now(), request.limit, request.offset)
            .await
            .map_err(LoadError::new)?;
        Ok(Page::new(pks, count))
    }

    fn scope(&self) -> Option<impl Fn(&Question) -> bool> {
        let now = Utc::now();
        Some(move |q: &Question| q.pub_date <= now)
    }

    fn query(&self) -> Option<Query<Question>> {
        Some(
            Query::new()
                .lte("pub_date", Utc::now())
                .order_by_desc("pub_date"),
        )
    }
}

/// Choices, by id.
#[derive(Debug)]
pub struct AllChoices(pub Db);

impl ListQuery<Choice> for AllChoices {
    async fn page(&self, request: PageRequest) -> Result<Page<i64>, LoadError> {
        let (pks, count) = self
            .0
            .choice_page(request.limit, request.offset)
            .await
            .map_err(LoadError::new)?;
        Ok(Page::new(pks, count))
    }
}

// ---------------------------------------------------------------------------
// The router

/// The API, with a log line per request (see [`log_request`]).
pub fn router(app: App) -> Router {
    let users = Resource::new(app.cache.clone(), AllUsers(app.db.clone()));
    let questions = Resource::new(app.cache.clone(), PublishedQuestions(app.db.clone()));
    let choices = Resource::new(app.cache.clone(), AllChoices(app.db.clone()));
    Router::new()
        .route("/", get(index))
        .merge(users.router("/users"))
        .route("/questions", questions.list().post(create_question))
        .route(
            "/questions/{pk}",
            questions
                .detail()
                .patch(update_question)
                .delete(delete_question),
        )
        .route("/choices", choices.list().post(create_choice))
        .route(
            "/choices/{pk}",
            choices.detail().patch(update_choice).delete(delete_choice),
        )
        .route("/choices/{pk}/vote", post(vote).delete(unvote))
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(app.clone(), log_request))
        .with_state(app)
}

async fn index() -> Response {
    json_bytes(
        StatusCode::OK,
        br#"{"users":"/users","questions":"/questions","choices":"/choices"}"#.to_vec(),
    )
}

async fn no_route(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
}

/// What a request cost, in its response's extensions (for tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    /// The SQL statements it ran ([`telemetry::counting`]).
    pub statements: u64,
    /// The cache's loader calls meanwhile.
    pub loader_calls: u64,
}

/// Logs each request: status, time, the SQL statements it ran, the loader
/// calls it made, and whether the cache served it (`cache="hit"`: no loader
/// call; `"miss"`: the cache loaded from the database; `"write"`: a write,
/// whose loader calls are the cache's reloads of what it changed).
///
/// Statements are counted per request, from sqlx's own statement events
/// ([`telemetry::counting`]); loader calls, hits and misses are the
/// difference of the cache's counters ([`Cache::stats`]), which concurrent
/// requests move too.
pub async fn log_request(State(app): State<App>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let started = Instant::now();
    let before = app.cache.stats();
    let (mut response, statements) = telemetry::counting(next.run(request)).await;
    let after = app.cache.stats();
    let hits = after.hits.saturating_sub(before.hits);
    let misses = after.misses.saturating_sub(before.misses);
    let loader_calls = after.loader_calls.saturating_sub(before.loader_calls);
    let cache = if method != Method::GET && method != Method::HEAD {
        "write"
    } else if loader_calls > 0 || misses > 0 {
        "miss"
    } else if hits > 0 {
        "hit"
    } else {
        "-"
    };
    tracing::info!(
        target: "polls",
        %method,
        %uri,
        status = response.status().as_u16(),
        cache,
        db_statements = statements,
        loader_calls,
        cache_hits = hits,
        cache_misses = misses,
        elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
    );
    response.extensions_mut().insert(Cost {
        statements,
        loader_calls,
    });
    response
}

// ---------------------------------------------------------------------------
// Errors and responses

/// A JSON error response: `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        json_bytes(self.status, body.into_bytes())
    }
}

impl From<JsonRejection> for ApiError {
    /// `400` for malformed JSON, `415` without a JSON content type, `422` for
    /// JSON of the wrong shape.
    fn from(rejection: JsonRejection) -> Self {
        ApiError::new(rejection.status(), rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, rejection.body_text())
    }
}

impl From<WriteError> for ApiError {
    fn from(error: WriteError) -> Self {
        match error {
            WriteError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, error.to_string()),
            WriteError::Invalid(message) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
            }
            WriteError::Db(_) | WriteError::Feed(_) => {
                tracing::error!(target: "polls", error = %error, "write failed");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
            }
        }
    }
}

fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// The representation of `instance`, as the cache stores it.
fn representation<T: CachedInstance>(
    status: StatusCode,
    instance: &T,
) -> Result<Response, ApiError> {
    let body = instance.to_json().map_err(|e| {
        tracing::error!(target: "polls", error = %e, "cannot encode");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    })?;
    Ok(json_bytes(status, body))
}

/// Runs `body`'s plain SQL in a transaction and commits it, then delivers
/// that transaction's own changes to the cache ([`Feed::flush`]) before
/// the handler responds: the next read sees the write. Should the delivery
/// fail, the write still succeeded (it is committed) and the feed's worker
/// delivers it.
pub async fn write<R>(
    app: &App,
    body: impl AsyncFnOnce(&mut Q<'_>) -> Result<R, WriteError>,
) -> Result<R, WriteError> {
    let feed = &app.feed;
    let (value, mark) = app
        .db
        .transaction(async |q| {
            let value = body(q).await?;
            Ok::<_, WriteError>((value, q.mark(feed).await?))
        })
        .await?;
    if let Err(e) = feed.flush(mark).await {
        tracing::warn!(
            target: "polls",
            error = %e,
            "the write is committed; the feed's worker will deliver it",
        );
    }
    Ok(value)
}

/// `id` as the cache has it now: `status` and its representation, or 404.
async fn current<T: CachedInstance<Pk = i64>>(
    app: &App,
    status: StatusCode,
    id: i64,
) -> Result<Response, ApiError> {
    match app.cache.get::<T>(&id).await {
        Ok(Some(instance)) => representation(status, &instance),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{} {id} not found", T::MODEL),
        )),
        Err(e) => {
            tracing::error!(target: "polls", error = %e, "read after write failed");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable",
            ))
        }
    }
}

/// `201 Created` with `id`'s representation and its `Location`.
async fn created<T: CachedInstance<Pk = i64>>(
    app: &App,
    id: i64,
    location: String,
) -> Result<Response, ApiError> {
    let mut response = current::<T>(app, StatusCode::CREATED, id).await?;
    if let Ok(location) = HeaderValue::try_from(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Rejects empty and overlong texts.
fn text(field: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{field} must not be empty"),
        ));
    }
    if value.chars().count() > 200 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{field} is longer than 200 characters"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Write endpoints

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewQuestion {
    question_text: String,
    #[serde(default)]
    pub_date: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuestionPatch {
    #[serde(default)]
    question_text: Option<String>,
    #[serde(default)]
    pub_date: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewChoice {
    question_id: i64,
    choice_text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChoicePatch {
    #[serde(default)]
    question_id: Option<i64>,
    #[serde(default)]
    choice_text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vote {
    user_id: i64,
}

type Body<T> = Result<Json<T>, JsonRejection>;
type Pk = Result<Path<i64>, PathRejection>;

async fn create_question(
    State(app): State<App>,
    body: Body<NewQuestion>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    text("question_text", &body.question_text)?;
    let pub_date = body.pub_date.unwrap_or_else(Utc::now);
    let id = write(&app, async |q| {
        q.create_question(&body.question_text, pub_date).await
    })
    .await?;
    created::<Question>(&app, id, format!("/questions/{id}")).await
}

async fn update_question(
    State(app): State<App>,
    pk: Pk,
    body: Body<QuestionPatch>,
) -> Result<Response, ApiError> {
    let Path(id) = pk?;
    let Json(body) = body?;
    if let Some(t) = &body.question_text {
        text("question_text", t)?;
    }
    let changes = QuestionChanges {
        question_text: body.question_text,
        pub_date: body.pub_date,
    };
    write(&app, async |q| q.update_question(id, &changes).await).await?;
    current::<Question>(&app, StatusCode::OK, id).await
}

async fn delete_question(State(app): State<App>, pk: Pk) -> Result<StatusCode, ApiError> {
    let Path(id) = pk?;
    write(&app, async |q| q.delete_question(id).await).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_choice(
    State(app): State<App>,
    body: Body<NewChoice>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    text("choice_text", &body.choice_text)?;
    let id = write(&app, async |q| {
        q.create_choice(body.question_id, &body.choice_text).await
    })
    .await?;
    created::<Choice>(&app, id, format!("/choices/{id}")).await
}

async fn update_choice(
    State(app): State<App>,
    pk: Pk,
    body: Body<ChoicePatch>,
) -> Result<Response, ApiError> {
    let Path(id) = pk?;
    let Json(body) = body?;
    if let Some(t) = &body.choice_text {
        text("choice_text", t)?;
    }
    let changes = ChoiceChanges {
        question_id: body.question_id,
        choice_text: body.choice_text,
    };
    // The trigger records the old and the new question_id: a moved choice
    // updates both questions, cached or not.
    write(&app, async |q| q.update_choice(id, &changes).await).await?;
    current::<Choice>(&app, StatusCode::OK, id).await
}

async fn delete_choice(State(app): State<App>, pk: Pk) -> Result<StatusCode, ApiError> {
    let Path(id) = pk?;
    write(&app, async |q| q.delete_choice(id).await).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_vote(app: App, pk: Pk, body: Body<Vote>, voted: bool) -> Result<Response, ApiError> {
    let Path(id) = pk?;
    let Json(body) = body?;
    // The votes row names both sides: the choice and the user are updated.
    write(&app, async |q| q.set_vote(id, body.user_id, voted).await).await?;
    current::<Choice>(&app, StatusCode::OK, id).await
}

async fn vote(State(app): State<App>, pk: Pk, body: Body<Vote>) -> Result<Response, ApiError> {
    set_vote(app, pk, body, true).await
}

async fn unvote(State(app): State<App>, pk: Pk, body: Body<Vote>) -> Result<Response, ApiError> {
    set_vote(app, pk, body, false).await
}
