//! The polls HTTP API.
//!
//! Reads are cached [`Resource`]s: a detail costs no database query when the
//! instance is cached, a list costs one (the page of pks and the count).
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
//! Each write runs in a database transaction that reads the previous state,
//! commits, and only then tells the cache ([`Cache::saved`],
//! [`Cache::saved_from`], [`Cache::deleted`]), which invalidates the instance
//! and the related ones (the old and the new question of a moved choice, the
//! users whose votes changed).
//!
//! Errors are JSON: `{"error": "..."}`, `400` for malformed input, `404` for
//! missing instances, `422` for a body that refers to something missing or
//! breaks a rule, `503` when the database fails.

use std::time::Instant;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cached_instances::axum::{ListQuery, Page, PageRequest, Resource};
use cached_instances::{BuildError, Cache, CachedInstance, LoadError, Store};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::db::{self, ChoiceChanges, Db, QuestionChanges, WriteError};
use crate::{Choice, Question, User};

/// The application: the database and the cache over it.
#[derive(Clone, Debug)]
pub struct App {
    /// The database.
    pub db: Db,
    /// The cache of users, questions and choices.
    pub cache: Cache,
}

impl App {
    /// A cache over `store` with `db` loading users, questions and choices.
    ///
    /// # Errors
    ///
    /// When the cache schema is inconsistent (it is not).
    pub fn new(db: Db, store: impl Store) -> Result<App, BuildError> {
        let cache = Cache::builder()
            .store(store)
            .loader::<User>(db.clone())
            .loader::<Question>(db.clone())
            .loader::<Choice>(db.clone())
            .build()?;
        Ok(App { db, cache })
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

/// Logs each request: status, time, the database statements it ran, the
/// loader calls it made, and whether the cache served it (`cache="hit"`: no
/// loader call; `"miss"`: the cache loaded from the database; `"write"`: a
/// write, whose loader calls are the cascade refreshing cached entries).
///
/// Statements and loader calls are counted per request ([`db::track`]);
/// cache hits and misses are the difference of the cache's global counters,
/// so concurrent requests can blur them.
pub async fn log_request(State(app): State<App>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let started = Instant::now();
    let before = app.cache.stats();
    let (response, tally) = db::track(next.run(request)).await;
    let after = app.cache.stats();
    let hits = after.hits.saturating_sub(before.hits);
    let misses = after.misses.saturating_sub(before.misses);
    let cache = if method != Method::GET && method != Method::HEAD {
        "write"
    } else if tally.loader_calls > 0 || misses > 0 {
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
        db_queries = tally.queries,
        loader_calls = tally.loader_calls,
        cache_hits = hits,
        cache_misses = misses,
        elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
    );
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
            WriteError::Db(e) => {
                tracing::error!(target: "polls", error = %e, "write failed");
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

fn created<T: CachedInstance>(instance: &T, location: String) -> Result<Response, ApiError> {
    let mut response = representation(StatusCode::CREATED, instance)?;
    if let Ok(location) = HeaderValue::try_from(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Logs a failed cache notification. The write is committed by then, and a
/// failed cascade leaves the entries it touched invalidated, so the next
/// read loads fresh data: the request still succeeds.
fn after_commit(model: &str, result: Result<(), cached_instances::Error>) {
    if let Err(e) = result {
        tracing::warn!(
            target: "polls",
            model,
            error = %e,
            "cache notification failed after commit",
        );
    }
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
    let question = app
        .db
        .create_question(&body.question_text, pub_date)
        .await?;
    after_commit("Question", app.cache.saved(&question).await);
    created(&question, format!("/questions/{}", question.id))
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
    let (previous, question) = app.db.update_question(id, changes).await?;
    after_commit("Question", app.cache.saved_from(&previous, &question).await);
    representation(StatusCode::OK, &question)
}

async fn delete_question(State(app): State<App>, pk: Pk) -> Result<StatusCode, ApiError> {
    let Path(id) = pk?;
    let (question, choices) = app.db.delete_question(id).await?;
    for choice in &choices {
        after_commit("Choice", app.cache.deleted(choice).await);
    }
    after_commit("Question", app.cache.deleted(&question).await);
    Ok(StatusCode::NO_CONTENT)
}

async fn create_choice(
    State(app): State<App>,
    body: Body<NewChoice>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    text("choice_text", &body.choice_text)?;
    let choice = app
        .db
        .create_choice(body.question_id, &body.choice_text)
        .await?;
    after_commit("Choice", app.cache.saved(&choice).await);
    created(&choice, format!("/choices/{}", choice.id))
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
    let (previous, choice) = app.db.update_choice(id, changes).await?;
    // The previous state names the old question, so a moved choice updates
    // both questions even when the choice was not cached.
    after_commit("Choice", app.cache.saved_from(&previous, &choice).await);
    representation(StatusCode::OK, &choice)
}

async fn delete_choice(State(app): State<App>, pk: Pk) -> Result<StatusCode, ApiError> {
    let Path(id) = pk?;
    let choice = app.db.delete_choice(id).await?;
    after_commit("Choice", app.cache.deleted(&choice).await);
    Ok(StatusCode::NO_CONTENT)
}

async fn set_vote(app: App, pk: Pk, body: Body<Vote>, voted: bool) -> Result<Response, ApiError> {
    let Path(id) = pk?;
    let Json(body) = body?;
    let (previous, choice) = app.db.set_vote(id, body.user_id, voted).await?;
    // Invalidates the choice and the user whose votes changed.
    after_commit("Choice", app.cache.saved_from(&previous, &choice).await);
    representation(StatusCode::OK, &choice)
}

async fn vote(State(app): State<App>, pk: Pk, body: Body<Vote>) -> Result<Response, ApiError> {
    set_vote(app, pk, body, true).await
}

async fn unvote(State(app): State<App>, pk: Pk, body: Body<Vote>) -> Result<Response, ApiError> {
    set_vote(app, pk, body, false).await
}
