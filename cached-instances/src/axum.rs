//! Cached read endpoints for [axum](https://docs.rs/axum) (feature `axum`).
//!
//! A [`Resource`] serves a model's list and detail endpoints from the cache:
//!
//! - `GET {path}/{pk}` (detail) answers from [`Cache::get_json`]: on a hit,
//!   **no database query**, and the cached bytes are sent as they are;
//! - `GET {path}` (list) makes **one database query**, the [`ListQuery`] that
//!   returns the page's ordered primary keys and the total count, then one
//!   [`Cache::get_many_json`]; the page is assembled by concatenating the
//!   cached representations, never re-serializing them.
//!
//! Lists are paginated with `?limit=&offset=` or `?page=&page_size=`, and
//! answer `{"count": N, "next": url|null, "previous": url|null, "results":
//! [...]}` (Django REST Framework's shape). Every `200` carries a strong
//! `ETag` computed from the bytes sent, and a matching `If-None-Match`
//! answers `304 Not Modified` with no body. Errors are JSON objects
//! `{"error": "..."}`: `400` for a malformed primary key or bad pagination,
//! `404` for a missing (or out-of-scope) instance, `503` when the database
//! failed.
//!
//! ```
//! use axum::Router;
//! use cached_instances::axum::{ListQuery, Page, PageRequest, Resource};
//! use cached_instances::{Cache, CachedInstance, LoadError, Loader};
//!
//! #[derive(CachedInstance, Debug, Clone, PartialEq)]
//! pub struct Question {
//!     #[cached(pk)]
//!     pub id: i64,
//!     pub question_text: String,
//!     pub published: bool,
//! }
//!
//! #[derive(Clone)]
//! struct Db; // your connection pool
//!
//! impl Loader<Question> for Db {
//!     async fn load(&self, pks: &[i64]) -> Result<Vec<Question>, LoadError> {
//!         // SELECT ... WHERE id = ANY($1)
//! #       let _ = pks;
//!         Ok(Vec::new())
//!     }
//! }
//!
//! /// The published questions, newest first.
//! struct Published(Db);
//!
//! impl ListQuery<Question> for Published {
//!     async fn page(&self, request: PageRequest) -> Result<Page<i64>, LoadError> {
//!         // SELECT id, count(*) OVER () FROM questions WHERE published
//!         // ORDER BY id DESC LIMIT $1 OFFSET $2
//! #       let _ = (&self.0, request.limit, request.offset);
//!         Ok(Page::new(vec![3, 1], 2))
//!     }
//!
//!     // The same scope, checked on the cached instance: detail serves no
//!     // unpublished question either.
//!     fn scope(&self) -> Option<impl Fn(&Question) -> bool> {
//!         Some(|q: &Question| q.published)
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Cache::builder().loader::<Question>(Db).build()?;
//! let app: Router = Router::new()
//!     .merge(Resource::new(cache.clone(), Published(Db)).router("/questions"));
//! # Ok(())
//! # }
//! ```
//!
//! # Filtering, ordering and search
//!
//! [`Resource::with_queries`] (or [`Resource::indexed`], without a list
//! query) turns the list into a [cached query](crate::query) for the fields
//! the model declares: `?country=FR` (`#[cached(index)]`),
//! `?age__gte=18&age__lt=65` and `?ordering=-age` (`#[cached(sortable)]`),
//! `?search=ada lovelace` (`#[cached(search)]`). Undeclared parameters and
//! values of the wrong type are a `400`. A warmed model is answered by the
//! cache with no database query; otherwise by the loader's `query`.
//!
//! Write endpoints live next to the read ones: the detail route's parameter is
//! named `pk`, so `.route("/questions/{pk}", patch(update))` adds a method to
//! the same route. After the database commit, the write handler calls
//! [`Cache::saved`] / [`Cache::saved_from`] / [`Cache::deleted`].

use std::fmt::Write as _;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use ::axum::Router;
use ::axum::body::Body;
use ::axum::extract::rejection::RawPathParamsRejection;
use ::axum::extract::{OriginalUri, RawPathParams};
use ::axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use ::axum::response::{IntoResponse, Response};
use ::axum::routing::{MethodRouter, get};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::cache::Cache;
use crate::error::{Error, LoadError};
use crate::instance::CachedInstance;
use crate::pk::PrimaryKey;
use crate::query::Query;

/// The page size used when the request gives none.
pub const DEFAULT_PAGE_SIZE: u64 = 20;
/// The largest page a request may ask for; larger `limit`s are capped.
pub const MAX_PAGE_SIZE: u64 = 100;

/// The window of a list a request asks for, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PageRequest {
    /// How many rows to skip (`OFFSET`); at most `i64::MAX`.
    pub offset: u64,
    /// How many rows to return (`LIMIT`); at least 1, at most the
    /// resource's maximum page size.
    pub limit: u64,
}

impl PageRequest {
    /// A window of `limit` rows after `offset` rows.
    #[must_use]
    pub fn new(offset: u64, limit: u64) -> Self {
        PageRequest { offset, limit }
    }
}

/// What a [`ListQuery`] returns: the page's primary keys, in list order, and
/// the number of rows in the whole (unpaginated) list.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Page<P> {
    /// The primary keys of the requested window, in order.
    pub pks: Vec<P>,
    /// The total number of rows the list has.
    pub count: u64,
}

impl<P> Page<P> {
    /// A page of `pks` out of `count` rows.
    #[must_use]
    pub fn new(pks: Vec<P>, count: u64) -> Self {
        Page { pks, count }
    }
}

/// The database side of a list endpoint: one query for the ordered primary
/// keys of a page and the total count, and the scope it applies.
///
/// A single query can return both, e.g. on PostgreSQL and SQLite:
///
/// ```sql
/// SELECT id, count(*) OVER () FROM questions WHERE pub_date <= $1
/// ORDER BY pub_date DESC, id DESC LIMIT $2 OFFSET $3
/// ```
///
/// (past the last page that returns no row, hence no count; a `LEFT JOIN` of
/// the page onto `SELECT count(*)` returns the count in every case).
///
/// See the [module docs](self) for an example.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a list query for `{T}`",
    note = "implement `ListQuery<{T}>` for `{Self}`: `async fn page(&self, request: PageRequest) -> Result<Page<<{T} as CachedInstance>::Pk>, LoadError>`"
)]
pub trait ListQuery<T: CachedInstance>: Send + Sync + 'static {
    /// The primary keys of the rows in `request`'s window, in list order, and
    /// the total row count. Called once per list request.
    fn page(
        &self,
        request: PageRequest,
    ) -> impl Future<Output = Result<Page<T::Pk>, LoadError>> + Send;

    /// The scope of the list as a predicate over cached instances, or `None`
    /// (the default) when every instance is visible.
    ///
    /// With a scope, detail decodes the cached instance and answers `404`
    /// when the predicate rejects it, so an instance the list hides is not
    /// served by detail either, still with no database query; list pages drop
    /// the rows it rejects (an instance changed since the list query ran).
    /// Without one, detail serves the cached bytes without decoding them.
    ///
    /// Called once per request, after the cache read: a predicate comparing
    /// with "now" can capture it here.
    fn scope(&self) -> Option<impl Fn(&T) -> bool> {
        None::<fn(&T) -> bool>
    }
}

/// The list query of a [`Resource`] whose list only answers cached queries
/// ([`Resource::indexed`]); every instance is in scope.
#[derive(Debug, Clone, Copy, Default)]
pub struct Indexed;

impl<T: CachedInstance> ListQuery<T> for Indexed {
    async fn page(&self, _request: PageRequest) -> Result<Page<T::Pk>, LoadError> {
        // `with_queries` lists through `Cache::query_json` instead.
        Err(LoadError::msg(
            "an indexed resource lists through cached queries",
        ))
    }
}

impl<T: CachedInstance> Resource<T, Indexed> {
    /// Endpoints of `T` whose list answers cached queries from its URL
    /// parameters (see [`with_queries`](Resource::with_queries)), with no
    /// list query of its own:
    ///
    /// ```ignore
    /// cache.warm::<User>().await?;
    /// let app = Router::new().merge(Resource::<User, _>::indexed(cache).router("/users"));
    /// // GET /users?country=FR&ordering=-age&search=ada&limit=20
    /// ```
    pub fn indexed(cache: Cache) -> Self {
        Resource::new(cache, Indexed).with_queries()
    }
}

/// The cached list and detail endpoints of model `T`, with `Q` as the list
/// query.
///
/// Cheap to clone. See the [module docs](self) for an example.
#[must_use = "a Resource does nothing until its router is mounted"]
pub struct Resource<T, Q> {
    cache: Cache,
    query: Arc<Q>,
    default_page_size: u64,
    max_page_size: u64,
    /// Lists answer cached queries (`?field=value`, `?ordering=`,
    /// `?search=`) instead of calling the list query.
    queries: bool,
    _model: PhantomData<fn() -> T>,
}

impl<T, Q> Clone for Resource<T, Q> {
    fn clone(&self) -> Self {
        Resource {
            cache: self.cache.clone(),
            query: self.query.clone(),
            default_page_size: self.default_page_size,
            max_page_size: self.max_page_size,
            queries: self.queries,
            _model: PhantomData,
        }
    }
}

impl<T, Q> std::fmt::Debug for Resource<T, Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resource")
            .field("model", &std::any::type_name::<T>())
            .field("default_page_size", &self.default_page_size)
            .field("max_page_size", &self.max_page_size)
            .finish_non_exhaustive()
    }
}

impl<T: CachedInstance, Q: ListQuery<T>> Resource<T, Q> {
    /// Endpoints of `T` read through `cache`, listing with `query`. Pages
    /// hold [`DEFAULT_PAGE_SIZE`] rows unless the request asks otherwise, and
    /// at most [`MAX_PAGE_SIZE`].
    pub fn new(cache: Cache, query: Q) -> Self {
        Resource {
            cache,
            query: Arc::new(query),
            default_page_size: DEFAULT_PAGE_SIZE,
            max_page_size: MAX_PAGE_SIZE,
            queries: false,
            _model: PhantomData,
        }
    }

    /// Makes the list endpoint answer [cached queries](crate::query) built
    /// from its URL parameters, for the fields `T` declares: `?field=value`
    /// (`#[cached(index)]`), `?field__gte=` / `__gt` / `__lte` / `__lt`
    /// (`#[cached(sortable)]`), `?ordering=field` or `-field`
    /// (`#[cached(sortable)]`) and `?search=terms` (`#[cached(search)]`),
    /// with the usual pagination. Any other parameter, or a value that is not
    /// one of the field's type, is a `400`. The page and the count come from
    /// [`Cache::query_json`] (the cache for a warmed model, else the loader's
    /// `query`); the list query's [`page`](ListQuery::page) is not called,
    /// its [`scope`](ListQuery::scope) still applies.
    pub fn with_queries(mut self) -> Self {
        self.queries = true;
        self
    }

    /// Sets the page size used when a request gives none, and the largest
    /// one a request may ask for (larger requests are capped to it). `max` is
    /// at least 1 and `default` is kept between 1 and `max`.
    pub fn page_size(mut self, default: u64, max: u64) -> Self {
        self.max_page_size = max.max(1);
        self.default_page_size = default.clamp(1, self.max_page_size);
        self
    }

    /// A router with the list at `path` and the detail at `{path}/{pk}`, to
    /// [`merge`](Router::merge) into the application's router (or
    /// [`nest`](Router::nest): pagination links keep the full path).
    ///
    /// # Panics
    ///
    /// As [`Router::route`], when `path` is not a valid route (it must start
    /// with `/`).
    pub fn router<S>(self, path: &str) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let base = path.trim_end_matches('/');
        let list_path = if base.is_empty() { "/" } else { base };
        Router::new()
            .route(list_path, self.list())
            .route(&format!("{base}/{{pk}}"), self.detail())
    }

    /// The list endpoint alone (`GET` and `HEAD`), to mount on a route of
    /// your choosing or to chain with other methods:
    /// `.route("/questions", questions.list().post(create_question))`.
    pub fn list<S>(&self) -> MethodRouter<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let this = self.clone();
        get(move |OriginalUri(uri): OriginalUri, headers: HeaderMap| {
            let this = this.clone();
            async move { this.list_response(&uri, &headers).await }
        })
    }

    /// The detail endpoint alone (`GET` and `HEAD`). The primary key is the
    /// route's last path parameter: `.route("/questions/{pk}", detail)`.
    pub fn detail<S>(&self) -> MethodRouter<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let this = self.clone();
        get(
            move |params: Result<RawPathParams, RawPathParamsRejection>, headers: HeaderMap| {
                let this = this.clone();
                async move { this.detail_response(params, &headers).await }
            },
        )
    }

    async fn detail_response(
        &self,
        params: Result<RawPathParams, RawPathParamsRejection>,
        headers: &HeaderMap,
    ) -> Response {
        let params = match params {
            Ok(params) => params,
            Err(rejection) => return error(StatusCode::BAD_REQUEST, &rejection.body_text()),
        };
        let Some((_, segment)) = params.iter().last() else {
            tracing::error!(
                target: "cached_instances",
                model = T::MODEL,
                "a detail endpoint is mounted on a route without a path parameter"
            );
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        };
        let Some(pk) = T::Pk::from_url(segment) else {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("invalid {} primary key: {segment:?}", T::MODEL),
            );
        };
        let bytes = match self.cache.get_json::<T>(&pk).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return not_found::<T>(segment),
            Err(e) => return cache_error::<T>(e),
        };
        if let Some(in_scope) = self.query.scope() {
            match T::decode(&bytes) {
                Ok(instance) if in_scope(&instance) => {}
                Ok(_) => return not_found::<T>(segment),
                Err(e) => {
                    tracing::error!(
                        target: "cached_instances",
                        model = T::MODEL,
                        error = %e,
                        "cannot decode a cached instance",
                    );
                    return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
                }
            }
        }
        respond(bytes, headers)
    }

    async fn list_response(&self, uri: &Uri, headers: &HeaderMap) -> Response {
        let pagination =
            match Pagination::parse(uri.query(), self.default_page_size, self.max_page_size) {
                Ok(pagination) => pagination,
                Err(message) => return error(StatusCode::BAD_REQUEST, &message),
            };
        if self.queries {
            return self.query_response(uri, headers, pagination).await;
        }
        let page = match self.query.page(pagination.request).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(
                    target: "cached_instances",
                    model = T::MODEL,
                    error = %e,
                    "list query failed",
                );
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("listing {} failed", T::MODEL),
                );
            }
        };
        let rows = match self.cache.get_many_json::<T>(&page.pks).await {
            Ok(rows) => rows,
            Err(e) => return cache_error::<T>(e),
        };

        self.list_body(uri, headers, &pagination, page.count, &rows)
    }

    /// A list answered by a cached query from the request's parameters.
    async fn query_response(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        pagination: Pagination,
    ) -> Response {
        let params = pagination
            .others
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()));
        let query = match Query::<T>::from_params(params) {
            Ok(query) => query
                .offset(pagination.request.offset)
                .limit(pagination.request.limit),
            Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let found = match self.cache.query_json::<T>(&query).await {
            Ok(found) => found,
            Err(Error::Query(e)) => {
                tracing::warn!(
                    target: "cached_instances",
                    model = T::MODEL,
                    error = %e,
                    "list query cannot be answered",
                );
                return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
            }
            Err(e) => return cache_error::<T>(e),
        };
        self.list_body(uri, headers, &pagination, found.count, &found.items)
    }

    fn list_body(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        pagination: &Pagination,
        count: u64,
        rows: &[Bytes],
    ) -> Response {
        let (next, previous) = pagination.links(uri.path(), count);
        let mut body = Vec::with_capacity(96 + rows.iter().map(|r| r.len() + 1).sum::<usize>());
        body.extend_from_slice(b"{\"count\":");
        body.extend_from_slice(count.to_string().as_bytes());
        body.extend_from_slice(b",\"next\":");
        push_json_link(&mut body, next.as_deref());
        body.extend_from_slice(b",\"previous\":");
        push_json_link(&mut body, previous.as_deref());
        body.extend_from_slice(b",\"results\":[");
        let in_scope = self.query.scope();
        let mut first = true;
        for row in rows {
            if let Some(in_scope) = &in_scope {
                // A row that left the scope since the list query ran.
                if !T::decode(row).is_ok_and(|instance| in_scope(&instance)) {
                    continue;
                }
            }
            if !first {
                body.push(b',');
            }
            first = false;
            body.extend_from_slice(row);
        }
        body.extend_from_slice(b"]}");
        respond(Bytes::from(body), headers)
    }
}

/// Appends a link as a JSON string, or `null`.
fn push_json_link(out: &mut Vec<u8>, link: Option<&str>) {
    match link {
        Some(link) => out.extend_from_slice(serde_json::Value::from(link).to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

/// A `200` with `body` as JSON and its ETag, or a `304` when the request's
/// `If-None-Match` already has that ETag.
fn respond(body: Bytes, headers: &HeaderMap) -> Response {
    let etag = etag_of(&body);
    let etag_value = HeaderValue::from_str(&etag).ok();
    if none_match_hits(headers, &etag) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        if let Some(value) = etag_value {
            response.headers_mut().insert(header::ETAG, value);
        }
        return response;
    }
    let mut response = Response::new(Body::from(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(value) = etag_value {
        h.insert(header::ETAG, value);
    }
    response
}

/// A strong ETag of `body`: the first 128 bits of its SHA-256, quoted.
fn etag_of(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let mut etag = String::with_capacity(34);
    etag.push('"');
    for b in &digest[..16] {
        let _ = write!(etag, "{b:02x}");
    }
    etag.push('"');
    etag
}

/// Whether `If-None-Match` lists `etag` (weak comparison, as RFC 9110
/// requires for this header) or is `*`.
fn none_match_hits(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// A JSON error: `{"error": message}`.
fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
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

fn not_found<T: CachedInstance>(segment: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        &format!("{} {segment} not found", T::MODEL),
    )
}

/// A failed cache read: the database failed (`503`), or the cache is
/// misconfigured (`500`, logged).
fn cache_error<T: CachedInstance>(e: Error) -> Response {
    match e {
        Error::Load { .. } | Error::LoadTimeout { .. } => {
            let source = std::error::Error::source(&e).map(ToString::to_string);
            tracing::warn!(
                target: "cached_instances",
                model = T::MODEL,
                error = %e,
                source,
                "loading failed",
            );
            error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        e => {
            tracing::error!(
                target: "cached_instances",
                model = T::MODEL,
                error = %e,
                "cache read failed",
            );
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// The pagination parameters of a list request.
#[derive(Debug, PartialEq, Eq)]
struct Pagination {
    request: PageRequest,
    style: Style,
    /// The query's other parameters, kept in the links.
    others: Vec<(String, String)>,
}

#[derive(Debug, PartialEq, Eq)]
enum Style {
    /// `?limit=&offset=`.
    Offset,
    /// `?page=&page_size=`: 1-based page number, page size if given.
    Page { page: u64, size: Option<u64> },
}

const PAGINATION_PARAMS: [&str; 4] = ["limit", "offset", "page", "page_size"];

fn parse_number(name: &str, value: &str, min: u64) -> Result<u64, String> {
    let kind = if min == 0 {
        "a non-negative"
    } else {
        "a positive"
    };
    match value.parse::<u64>() {
        Ok(n) if n >= min && value.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!("{name} must be {kind} integer, got {value:?}")),
    }
}

impl Pagination {
    fn parse(query: Option<&str>, default_size: u64, max_size: u64) -> Result<Self, String> {
        let mut found: [Option<String>; 4] = Default::default();
        let mut others = Vec::new();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match PAGINATION_PARAMS.iter().position(|p| *p == key) {
                Some(i) if found[i].is_some() => {
                    return Err(format!("{key} is given more than once"));
                }
                Some(i) => found[i] = Some(value.into_owned()),
                None => others.push((key.into_owned(), value.into_owned())),
            }
        }
        let [limit, offset, page, page_size] = found;
        let too_large = |name: &str| format!("{name} is too large");
        let max_offset = i64::MAX as u64;
        if page.is_some() || page_size.is_some() {
            if limit.is_some() || offset.is_some() {
                return Err("use either limit and offset or page and page_size, not both".into());
            }
            let page = page.map_or(Ok(1), |v| parse_number("page", &v, 1))?;
            let size = page_size
                .map(|v| parse_number("page_size", &v, 1).map(|n| n.min(max_size)))
                .transpose()?;
            let limit = size.unwrap_or(default_size);
            let offset = (page - 1)
                .checked_mul(limit)
                .filter(|&o| o <= max_offset)
                .ok_or_else(|| too_large("page"))?;
            return Ok(Pagination {
                request: PageRequest { offset, limit },
                style: Style::Page { page, size },
                others,
            });
        }
        let limit = limit
            .map(|v| parse_number("limit", &v, 1).map(|n| n.min(max_size)))
            .transpose()?
            .unwrap_or(default_size);
        let offset = offset
            .map(|v| parse_number("offset", &v, 0))
            .transpose()?
            .unwrap_or(0);
        if offset > max_offset {
            return Err(too_large("offset"));
        }
        Ok(Pagination {
            request: PageRequest { offset, limit },
            style: Style::Offset,
            others,
        })
    }

    /// The `next` and `previous` links of a list of `count` rows at `path`.
    fn links(&self, path: &str, count: u64) -> (Option<String>, Option<String>) {
        let PageRequest { offset, limit } = self.request;
        let has_next = offset.saturating_add(limit) < count;
        match self.style {
            Style::Offset => {
                let next = has_next
                    .then(|| self.link(path, &[("limit", limit), ("offset", offset + limit)]));
                let previous = (offset > 0).then(|| match offset.saturating_sub(limit) {
                    0 => self.link(path, &[("limit", limit)]),
                    back => self.link(path, &[("limit", limit), ("offset", back)]),
                });
                (next, previous)
            }
            Style::Page { page, size } => {
                let with_size = |page: Option<u64>| {
                    let mut params = Vec::with_capacity(2);
                    if let Some(page) = page {
                        params.push(("page", page));
                    }
                    if let Some(size) = size {
                        params.push(("page_size", size));
                    }
                    self.link(path, &params)
                };
                let next = has_next.then(|| with_size(Some(page + 1)));
                let previous = (page > 1).then(|| with_size((page > 2).then(|| page - 1)));
                (next, previous)
            }
        }
    }

    fn link(&self, path: &str, params: &[(&str, u64)]) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.extend_pairs(&self.others);
        for (name, value) in params {
            query.append_pair(name, &value.to_string());
        }
        let query = query.finish();
        if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<Pagination, String> {
        Pagination::parse(Some(query), 20, 100)
    }

    #[test]
    fn pagination_defaults_and_caps() {
        let p = Pagination::parse(None, 20, 100).unwrap();
        assert_eq!(p.request, PageRequest::new(0, 20));
        assert_eq!(p.style, Style::Offset);
        assert_eq!(
            parse("limit=5&offset=10").unwrap().request,
            PageRequest::new(10, 5)
        );
        assert_eq!(
            parse("limit=1000").unwrap().request,
            PageRequest::new(0, 100)
        );
        assert_eq!(
            parse("page=3&page_size=10").unwrap().request,
            PageRequest::new(20, 10)
        );
        assert_eq!(parse("page=2").unwrap().request, PageRequest::new(20, 20));
        assert_eq!(
            parse("page_size=500").unwrap().request,
            PageRequest::new(0, 100)
        );
    }

    #[test]
    fn bad_pagination_is_rejected_with_a_message() {
        for (query, needle) in [
            ("limit=abc", "limit must be a positive integer"),
            ("limit=0", "limit must be a positive integer"),
            ("limit=-1", "limit must be a positive integer"),
            ("limit=", "limit must be a positive integer"),
            ("limit=+5", "limit must be a positive integer"),
            ("offset=-1", "offset must be a non-negative integer"),
            ("offset=1.5", "offset must be a non-negative integer"),
            ("offset=99999999999999999999", "offset must be"),
            ("offset=9223372036854775808", "offset is too large"),
            ("page=0", "page must be a positive integer"),
            ("page_size=0", "page_size must be a positive integer"),
            ("page=999999999999999999", "page is too large"),
            ("page=499999999999999999", "page is too large"),
            ("page=2&limit=3", "not both"),
            ("limit=1&limit=2", "more than once"),
        ] {
            let err = parse(query).unwrap_err();
            assert!(err.contains(needle), "{query}: {err}");
        }
    }

    #[test]
    fn links_keep_other_parameters_and_the_style() {
        let p = parse("q=a%20b&limit=10&offset=15").unwrap();
        let (next, previous) = p.links("/questions", 40);
        assert_eq!(next.as_deref(), Some("/questions?q=a+b&limit=10&offset=25"));
        assert_eq!(
            previous.as_deref(),
            Some("/questions?q=a+b&limit=10&offset=5")
        );
        let (next, previous) = parse("limit=10&offset=5").unwrap().links("/q", 15);
        assert_eq!(next, None);
        assert_eq!(previous.as_deref(), Some("/q?limit=10"));
        let (next, previous) = parse("").unwrap().links("/q", 20);
        assert_eq!((next, previous), (None, None));

        let (next, previous) = parse("page=2").unwrap().links("/q", 41);
        assert_eq!(next.as_deref(), Some("/q?page=3"));
        assert_eq!(previous.as_deref(), Some("/q"));
        let (next, previous) = parse("page=3&page_size=5").unwrap().links("/q", 15);
        assert_eq!(next, None);
        assert_eq!(previous.as_deref(), Some("/q?page=2&page_size=5"));
    }

    #[test]
    fn if_none_match_lists_weak_tags_and_star() {
        let etag = etag_of(b"{}");
        assert_eq!(etag.len(), 34);
        assert!(etag.starts_with('"') && etag.ends_with('"'));
        assert_ne!(etag, etag_of(b"{ }"));
        let hits = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
            none_match_hits(&headers, &etag)
        };
        assert!(hits(&etag));
        assert!(hits("*"));
        assert!(hits(&format!("\"x\", W/{etag}")));
        assert!(!hits("\"x\""));
        assert!(!hits(etag.trim_matches('"')));
        assert!(!none_match_hits(&HeaderMap::new(), &etag));
    }
}
