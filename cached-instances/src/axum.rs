//! Cached read endpoints for [axum](https://docs.rs/axum) (feature `axum`).
//!
//! A [`Resource`] serves a model's list and detail endpoints from the cache:
//!
//! - `GET {path}/{pk}` (detail) answers from [`Cache::get_json`]: on a hit,
//!   **no database query**, and the cached bytes are sent as they are;
//! - `GET {path}` (list) makes **one database query**, the [`ListQuery`] that
//!   returns the page's ordered primary keys and the total count, then one
//!   [`Cache::get_many_json`]; the page is assembled by concatenating the
//!   cached representations, never re-serializing them. A list query that
//!   also gives its list as a cached query ([`ListQuery::query`], an
//!   ordering on a `sortable` field) is answered from the model's index
//!   once the model is [warmed](Cache::warm): **no database query**, one
//!   index round trip for the page's pks and the count; the list query's
//!   SQL is the fallback while the index cannot answer.
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
//! A model with a derived loader (`#[cached(table = "...")]` and a
//! [`SqlxLoader`](crate::sqlx::SqlxLoader)) needs no list query at all:
//! `Resource::<Question, _>::indexed(cache).router("/questions")` lists it
//! through the loader's SQL, filters and ordering included, and from the
//! cache's indexes once it is [warmed](Cache::warm).
//!
//! # Links
//!
//! `next` and `previous` are absolute URLs, as in Django REST Framework:
//! `http://{Host}{path}?...` from the request's `Host` header (and the
//! scheme of an absolute request URI), or from
//! [`Resource::base_url`], which an application behind a proxy (TLS
//! terminated, or a public host that differs) sets to its public origin. A
//! request with neither gets links relative to the host (`/questions?...`).
//!
//! # Your own handlers
//!
//! Write endpoints live next to the read ones: the detail route's parameter is
//! named `pk`, so `.route("/questions/{pk}", patch(update))` adds a method to
//! the same route. The [`Pk`] extractor parses it as the model's primary key,
//! with the same JSON `400` as the detail endpoint for a malformed one. After
//! the database commit, the write handler calls [`Cache::saved`] /
//! [`Cache::saved_from`] / [`Cache::deleted`]:
//!
//! ```
//! # use cached_instances::{Cache, CachedInstance};
//! # #[derive(CachedInstance, Debug, Clone, PartialEq)]
//! # pub struct Question {
//! #     #[cached(pk)]
//! #     pub id: i64,
//! #     pub question_text: String,
//! # }
//! use axum::extract::State;
//! use axum::http::StatusCode;
//! use cached_instances::axum::{Pk, Rejection};
//!
//! async fn delete_question(
//!     State(cache): State<Cache>,
//!     Pk(id): Pk<Question>,
//! ) -> Result<StatusCode, Rejection> {
//!     // DELETE FROM questions WHERE id = $1, committed; then:
//!     # let row = Question { id, question_text: String::new() };
//!     cache.deleted::<Question>(&row).await.map_err(Rejection::from)?;
//!     Ok(StatusCode::NO_CONTENT)
//! }
//! # let _ = axum::routing::delete(delete_question);
//! ```
//!
//! Every error response is a [`Rejection`]; handlers can return it too.

use std::fmt::Write as _;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use ::axum::Router;
use ::axum::body::Body;
use ::axum::extract::rejection::RawPathParamsRejection;
use ::axum::extract::{FromRequestParts, OriginalUri, RawPathParams};
use ::axum::http::request::Parts;
use ::axum::http::uri::Authority;
use ::axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use ::axum::response::{IntoResponse, Response};
use ::axum::routing::{MethodRouter, get};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::cache::Cache;
use crate::error::{Chain, DecodeError, Error, LoadError};
use crate::instance::CachedInstance;
use crate::pk::PrimaryKey;
use crate::query::{Query, QueryError};

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
    ///
    /// A scope filters this resource's list and detail only, not the
    /// relation lists of other models: a hidden post's pk still appears in
    /// its author's `posts` (the cached representation is the same for every
    /// reader). Keep hidden rows out of the relation in that model's loader
    /// when their pks must not show.
    fn scope(&self) -> Option<impl Fn(&T) -> bool> {
        None::<fn(&T) -> bool>
    }

    /// The same list as a [cached query](crate::query) (its filters and its
    /// ordering on the model's `sortable` fields), or `None` (the default).
    ///
    /// With one, [`Resource`] lists from the model's index once the model
    /// is [warmed](Cache::warm): the page's pks and the count from one
    /// index round trip, then one multi-get, **no database statement**. It
    /// calls [`page`](Self::page) instead when the index cannot answer (the
    /// store has no index support, the model is not warmed, the store is
    /// down). Called once per request: a filter on "now" can be built here.
    /// The pagination is the request's; the query's own offset and limit
    /// are ignored.
    ///
    /// ```
    /// # use cached_instances::axum::{ListQuery, Page, PageRequest};
    /// # use cached_instances::query::Query;
    /// # use cached_instances::{CachedInstance, LoadError};
    /// # use chrono::{DateTime, Utc};
    /// #[derive(CachedInstance, Debug, Clone, PartialEq)]
    /// pub struct Question {
    ///     #[cached(pk)]
    ///     pub id: i64,
    ///     #[cached(sortable)]
    ///     pub pub_date: DateTime<Utc>,
    /// }
    ///
    /// /// Published questions, newest first.
    /// struct Published;
    ///
    /// impl ListQuery<Question> for Published {
    ///     async fn page(&self, request: PageRequest) -> Result<Page<i64>, LoadError> {
    ///         // SELECT ... WHERE pub_date <= now() ORDER BY pub_date DESC, id DESC
    /// #       let _ = request;
    /// #       Ok(Page::new(Vec::new(), 0))
    ///     }
    ///
    ///     fn query(&self) -> Option<Query<Question>> {
    ///         Some(Query::new().lte("pub_date", Utc::now()).order_by_desc("pub_date"))
    ///     }
    /// }
    /// ```
    fn query(&self) -> Option<Query<T>> {
        None
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
    /// The origin of pagination links (`https://api.example.com`); `None`:
    /// the request's.
    base_url: Option<Arc<str>>,
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
            base_url: self.base_url.clone(),
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
            base_url: None,
            _model: PhantomData,
        }
    }

    /// Sets the origin of the `next` and `previous` links
    /// (`https://api.example.com`, or with a path prefix the proxy adds,
    /// `https://example.com/api`), instead of the request's `Host` header:
    /// for an application behind a proxy, or one that does not want links
    /// to follow a client-supplied header.
    pub fn base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = Some(base_url.into().trim_end_matches('/').into());
        self
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
            async move { this.list_response(&uri, &headers).await.into_response() }
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
                async move { this.detail_response(params, &headers).await.into_response() }
            },
        )
    }

    async fn detail_response(
        &self,
        params: Result<RawPathParams, RawPathParamsRejection>,
        headers: &HeaderMap,
    ) -> Result<Response, Rejection> {
        let (pk, segment) = pk_of::<T>(&params?)?;
        let not_found = || Rejection::NotFound {
            model: T::MODEL,
            pk: segment.clone(),
        };
        let bytes = self.cache.get_json::<T>(&pk).await?.ok_or_else(not_found)?;
        if let Some(in_scope) = self.query.scope() {
            let instance = T::decode(&bytes).map_err(Rejection::Corrupt)?;
            if !in_scope(&instance) {
                return Err(not_found());
            }
        }
        Ok(respond(bytes, headers))
    }

    async fn list_response(&self, uri: &Uri, headers: &HeaderMap) -> Result<Response, Rejection> {
        let pagination = Pagination::parse(uri.query(), self.default_page_size, self.max_page_size)
            .map_err(Rejection::InvalidPagination)?;
        if self.queries {
            return self.query_response(uri, headers, pagination).await;
        }
        if let Some(query) = self.query.query() {
            let query = query
                .offset(pagination.request.offset)
                .limit(pagination.request.limit);
            if let Some(page) = self.cache.query_json_indexed_unchecked::<T>(&query).await? {
                // The scope is tested in the decode that checks the rows
                // against the query: one decode per row, not two.
                let in_scope = self.query.scope();
                let found = page.check(&query, dyn_scope(&in_scope));
                return Ok(self.list_body(
                    uri,
                    headers,
                    &pagination,
                    found.count,
                    &found.items,
                    None,
                ));
            }
        }
        let page = self
            .query
            .page(pagination.request)
            .await
            .map_err(|source| Rejection::ListFailed {
                model: T::MODEL,
                source,
            })?;
        let rows = self.cache.get_many_json::<T>(&page.pks).await?;
        let in_scope = self.query.scope();
        Ok(self.list_body(
            uri,
            headers,
            &pagination,
            page.count,
            &rows,
            dyn_scope(&in_scope),
        ))
    }

    /// A list answered by a cached query from the request's parameters.
    async fn query_response(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        pagination: Pagination,
    ) -> Result<Response, Rejection> {
        let params = pagination
            .others
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()));
        let query = Query::<T>::from_params(params)
            .map_err(Rejection::InvalidQuery)?
            .offset(pagination.request.offset)
            .limit(pagination.request.limit);
        let found = match self.cache.query_json::<T>(&query).await {
            Ok(found) => found,
            Err(Error::Query(e)) => return Err(Rejection::QueryUnavailable(e)),
            Err(e) => return Err(e.into()),
        };
        let in_scope = self.query.scope();
        Ok(self.list_body(
            uri,
            headers,
            &pagination,
            found.count,
            &found.items,
            dyn_scope(&in_scope),
        ))
    }

    fn list_body(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        pagination: &Pagination,
        count: u64,
        rows: &[Bytes],
        in_scope: Option<&dyn Fn(&T) -> bool>,
    ) -> Response {
        let base = match self.base_url.as_deref() {
            Some(origin) => format!("{origin}{}", uri.path()),
            None => match request_origin(uri, headers) {
                Some(origin) => format!("{origin}{}", uri.path()),
                None => uri.path().to_owned(),
            },
        };
        let (next, previous) = pagination.links(&base, count);
        let mut body = Vec::with_capacity(96 + rows.iter().map(|r| r.len() + 1).sum::<usize>());
        body.extend_from_slice(b"{\"count\":");
        body.extend_from_slice(count.to_string().as_bytes());
        body.extend_from_slice(b",\"next\":");
        push_json_link(&mut body, next.as_deref());
        body.extend_from_slice(b",\"previous\":");
        push_json_link(&mut body, previous.as_deref());
        body.extend_from_slice(b",\"results\":[");
        let mut first = true;
        for row in rows {
            if let Some(in_scope) = in_scope {
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

/// A [`ListQuery::scope`] as a trait object, to pass on.
fn dyn_scope<T, F: Fn(&T) -> bool>(scope: &Option<F>) -> Option<&dyn Fn(&T) -> bool> {
    scope.as_ref().map(|f| f as &dyn Fn(&T) -> bool)
}

/// Appends a link as a JSON string, or `null`.
fn push_json_link(out: &mut Vec<u8>, link: Option<&str>) {
    match link {
        Some(link) => {
            // Writing a `&str` into a `Vec` cannot fail.
            let _ = serde_json::to_writer(&mut *out, link);
        }
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

/// `scheme://host` of the request: its absolute URI's, else `http://` and
/// its `Host` header (a valid authority without credentials), else `None`.
fn request_origin(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    let authority = match uri.authority() {
        Some(authority) => authority.clone(),
        None => headers
            .get(header::HOST)?
            .to_str()
            .ok()?
            .parse::<Authority>()
            .ok()?,
    };
    if authority.as_str().contains('@') {
        return None;
    }
    let scheme = uri.scheme_str().unwrap_or("http");
    Some(format!("{scheme}://{authority}"))
}

/// The primary key of `T` in the route's last path parameter, and the
/// segment it was parsed from.
fn pk_of<T: CachedInstance>(params: &RawPathParams) -> Result<(T::Pk, String), Rejection> {
    let Some((_, segment)) = params.iter().last() else {
        return Err(Rejection::NoPathParameter { model: T::MODEL });
    };
    match T::Pk::from_url(segment) {
        Some(pk) => Ok((pk, segment.to_owned())),
        None => Err(Rejection::InvalidPk {
            model: T::MODEL,
            segment: segment.to_owned(),
        }),
    }
}

/// The primary key of model `T`, extracted from the route's last path
/// parameter (`/questions/{pk}`) for the handlers you write: a malformed one
/// is answered with the same JSON `400` as the [`Resource`]'s detail
/// endpoint (`{"error": "invalid Question primary key: \"abc\""}`). See the
/// [module docs](self#your-own-handlers).
pub struct Pk<T: CachedInstance>(pub T::Pk);

impl<T: CachedInstance> std::fmt::Debug for Pk<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Pk").field(&self.0).finish()
    }
}

impl<T: CachedInstance> Clone for Pk<T> {
    fn clone(&self) -> Self {
        Pk(self.0.clone())
    }
}

impl<T: CachedInstance, S: Send + Sync> FromRequestParts<S> for Pk<T> {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Rejection> {
        let params = RawPathParams::from_request_parts(parts, state).await?;
        Ok(Pk(pk_of::<T>(&params)?.0))
    }
}

/// An error answered by the endpoints of a [`Resource`] or by the [`Pk`]
/// extractor: a JSON object `{"error": "..."}` with the status of
/// [`status`](Self::status) and the text of [`body_text`](Self::body_text),
/// in the manner of axum's own rejections. Handlers may return it as well:
/// `From<Error>` sorts a cache error into `503` (the database failed) or
/// `500`.
///
/// A `503` or `500` is logged (target `cached_instances`) with the error's
/// whole chain; its body names no internals: `loading Question failed`, or
/// `internal error`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// `400`: the path's primary key is not one of the model's.
    #[error("invalid {model} primary key: {segment:?}")]
    InvalidPk {
        /// The model.
        model: &'static str,
        /// The path segment.
        segment: String,
    },
    /// The path parameters could not be read (`400` for a bad encoding, as
    /// axum's own rejection says).
    #[error(transparent)]
    PathParams(#[from] RawPathParamsRejection),
    /// `500`: the handler is mounted on a route without a path parameter.
    #[error("a {model} detail or pk extractor is used on a route without a path parameter")]
    NoPathParameter {
        /// The model.
        model: &'static str,
    },
    /// `400`: bad pagination parameters.
    #[error(transparent)]
    InvalidPagination(PaginationError),
    /// `400`: query parameters that are not a valid query of the model.
    #[error(transparent)]
    InvalidQuery(QueryError),
    /// `404`: no such instance, or one out of the list's scope.
    #[error("{model} {pk} not found")]
    NotFound {
        /// The model.
        model: &'static str,
        /// The primary key, as it appeared in the path.
        pk: String,
    },
    /// `503`: the list query failed.
    #[error("listing {model} failed")]
    ListFailed {
        /// The model.
        model: &'static str,
        /// The list query's error.
        #[source]
        source: LoadError,
    },
    /// `503`: a cached query can be answered neither by the cache nor by
    /// the loader (see [`query`](crate::query)).
    #[error(transparent)]
    QueryUnavailable(QueryError),
    /// A cache operation failed: `503` when loading failed or timed out,
    /// `500` otherwise (a model without a loader, say).
    #[error(transparent)]
    Cache(#[from] Error),
    /// `500`: a cached instance could not be decoded to check the scope.
    #[error(transparent)]
    Corrupt(DecodeError),
}

impl Rejection {
    /// The response's status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::InvalidPk { .. }
            | Rejection::InvalidPagination(_)
            | Rejection::InvalidQuery(_) => StatusCode::BAD_REQUEST,
            Rejection::PathParams(rejection) => rejection.status(),
            Rejection::NotFound { .. } => StatusCode::NOT_FOUND,
            Rejection::ListFailed { .. } | Rejection::QueryUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Rejection::Cache(Error::Load { .. } | Error::LoadTimeout { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Rejection::NoPathParameter { .. } | Rejection::Cache(_) | Rejection::Corrupt(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The response's `error` text: the error's own message (never its
    /// causes), or `internal error` for a `500`.
    #[must_use]
    pub fn body_text(&self) -> String {
        match self {
            Rejection::PathParams(rejection) => rejection.body_text(),
            _ if self.status() == StatusCode::INTERNAL_SERVER_ERROR => "internal error".to_owned(),
            _ => self.to_string(),
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            let error = Chain(&self);
            if status == StatusCode::SERVICE_UNAVAILABLE {
                tracing::warn!(target: "cached_instances", %status, %error, "request failed");
            } else {
                tracing::error!(target: "cached_instances", %status, %error, "request failed");
            }
        }
        let body = serde_json::json!({ "error": self.body_text() }).to_string();
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

/// Why a list request's pagination parameters were rejected (a `400`,
/// [`Rejection::InvalidPagination`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PaginationError {
    /// Not a number in range: `limit`, `page` and `page_size` are positive,
    /// `offset` non-negative.
    #[error("{name} must be {expected} integer, got {value:?}")]
    NotANumber {
        /// The parameter.
        name: &'static str,
        /// `a positive` or `a non-negative`.
        expected: &'static str,
        /// The value given.
        value: String,
    },
    /// An offset (given, or from the page number) past `i64::MAX`.
    #[error("{name} is too large")]
    TooLarge {
        /// The parameter.
        name: &'static str,
    },
    /// A parameter given twice.
    #[error("{name} is given more than once")]
    Repeated {
        /// The parameter.
        name: &'static str,
    },
    /// `limit`/`offset` and `page`/`page_size` together.
    #[error("use either limit and offset or page and page_size, not both")]
    MixedStyles,
}

fn parse_number(name: &'static str, value: &str, min: u64) -> Result<u64, PaginationError> {
    match value.parse::<u64>() {
        Ok(n) if n >= min && value.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(PaginationError::NotANumber {
            name,
            expected: if min == 0 {
                "a non-negative"
            } else {
                "a positive"
            },
            value: value.to_owned(),
        }),
    }
}

impl Pagination {
    fn parse(
        query: Option<&str>,
        default_size: u64,
        max_size: u64,
    ) -> Result<Self, PaginationError> {
        let mut found: [Option<String>; 4] = Default::default();
        let mut others = Vec::new();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match PAGINATION_PARAMS.iter().position(|p| *p == key) {
                Some(i) if found[i].is_some() => {
                    return Err(PaginationError::Repeated {
                        name: PAGINATION_PARAMS[i],
                    });
                }
                Some(i) => found[i] = Some(value.into_owned()),
                None => others.push((key.into_owned(), value.into_owned())),
            }
        }
        let [limit, offset, page, page_size] = found;
        let too_large = |name: &'static str| PaginationError::TooLarge { name };
        let max_offset = i64::MAX as u64;
        if page.is_some() || page_size.is_some() {
            if limit.is_some() || offset.is_some() {
                return Err(PaginationError::MixedStyles);
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

    fn parse(query: &str) -> Result<Pagination, PaginationError> {
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
            let err = parse(query).unwrap_err().to_string();
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
