//! Error types. Each carries the context a caller needs to act on it.
//!
//! # Causes: in the chain, not repeated
//!
//! As the Rust API guidelines and `thiserror` advise, an error either shows
//! its cause in its message or returns it from
//! [`source`](std::error::Error::source), never both, so that a report that
//! walks the chain prints each cause once. These errors return it:
//! [`Error::Load`] displays as `loading Author failed` and its `source()`
//! is the loader's [`LoadError`], whose message is the database's;
//! [`StoreError::Unavailable`] displays as `store unavailable` and its
//! `source()` is the client's error.
//!
//! To see the whole chain, print it with a reporter: `anyhow`'s `{:#}`
//! (`loading Author failed: error returned from database: relation
//! "authors" does not exist`), `eyre`, or `tracing` with the error recorded
//! as one (`error = &e as &dyn std::error::Error`, which
//! `tracing-subscriber` prints with its sources). The crate's own log lines
//! carry the whole chain in their `error` field. What an HTTP client sees
//! is another matter: the [`axum`](crate::axum) endpoints answer `503` with
//! the top message only (`loading Author failed`), no database detail.

use std::error::Error as StdError;
use std::fmt;

/// A boxed error from user code (a loader, a custom invalidator).
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Errors returned by [`Cache`](crate::Cache) operations.
///
/// Store failures are not among them for reads and writes: when the store
/// is unreachable, reads fall back to the loaders and writes are retried
/// (see the crate docs). Only [`Cache::warm`](crate::Cache::warm), which
/// builds an index in the store, fails with [`Error::Store`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The loader of a model failed.
    #[error("loading {model} failed")]
    Load {
        /// The model whose loader failed.
        model: &'static str,
        /// The loader's error.
        #[source]
        source: LoadError,
    },
    /// The loader of a model did not answer within the cache's
    /// [`loader_timeout`](crate::CacheBuilder::loader_timeout); the load was
    /// cancelled.
    #[error("loading {model} timed out after {timeout:?}")]
    LoadTimeout {
        /// The model whose loader timed out.
        model: &'static str,
        /// The deadline it ran out of.
        timeout: std::time::Duration,
    },
    /// No loader is registered for the model.
    #[error(
        "no loader is registered for model {model} version {version}; add `.loader::<{model}>(...)` to the cache builder"
    )]
    NotRegistered {
        /// The model name.
        model: &'static str,
        /// The model version.
        version: &'static str,
    },
    /// An instance could not be encoded (a `#[cached(serde)]` field whose
    /// `Serialize` impl failed, or a non-finite float).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The cache store failed during an operation that cannot do without it
    /// ([`Cache::warm`](crate::Cache::warm)).
    #[error("the cache store failed ({op}) for {model}")]
    Store {
        /// The model involved.
        model: &'static str,
        /// The store operation.
        op: StoreOp,
        /// The store's error.
        #[source]
        source: std::sync::Arc<StoreError>,
    },
    /// A query could not be run: a field not declared for it, a value of
    /// the wrong type, or a model neither warmed nor queryable through its
    /// loader (see [`query`](crate::query)).
    #[error(transparent)]
    Query(#[from] QueryError),
}

/// The error a [`Loader`](crate::Loader) returns: a message, or the
/// underlying error (a database error, say) wrapped transparently.
///
/// Like [`std::io::Error`] around a custom error, a wrapped error lends its
/// message and its [`source`](StdError::source) to the `LoadError`, so a
/// chain reads `loading Author failed: <the database's message>: ...` with
/// nothing repeated; [`get_ref`](Self::get_ref) and
/// [`into_inner`](Self::into_inner) give the wrapped error back (to
/// downcast it).
///
/// With the `sqlx` feature, `?` converts a [`sqlx::Error`](::sqlx::Error):
///
/// ```
/// # #[cfg(feature = "sqlx-sqlite")]
/// # mod demo {
/// use cached_instances::LoadError;
///
/// async fn question_ids(pool: &sqlx::SqlitePool) -> Result<Vec<i64>, LoadError> {
///     let ids: Vec<(i64,)> = sqlx::query_as("SELECT id FROM questions")
///         .fetch_all(pool)
///         .await?;
///     Ok(ids.into_iter().map(|(id,)| id).collect())
/// }
/// # }
/// ```
pub struct LoadError(LoadErrorRepr);

enum LoadErrorRepr {
    Message(String),
    Wrapped(BoxError),
}

impl LoadError {
    /// A load error with a message.
    #[must_use]
    pub fn msg(message: impl Into<String>) -> Self {
        LoadError(LoadErrorRepr::Message(message.into()))
    }

    /// Wraps the underlying error (a database error, say).
    #[must_use]
    pub fn new(source: impl Into<BoxError>) -> Self {
        LoadError(LoadErrorRepr::Wrapped(source.into()))
    }

    /// The wrapped error, if the error was made by [`new`](Self::new).
    #[must_use]
    pub fn get_ref(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        match &self.0 {
            LoadErrorRepr::Message(_) => None,
            LoadErrorRepr::Wrapped(error) => Some(&**error),
        }
    }

    /// The wrapped error, if the error was made by [`new`](Self::new).
    #[must_use]
    pub fn into_inner(self) -> Option<BoxError> {
        match self.0 {
            LoadErrorRepr::Message(_) => None,
            LoadErrorRepr::Wrapped(error) => Some(error),
        }
    }
}

impl fmt::Debug for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            LoadErrorRepr::Message(message) => f.debug_tuple("LoadError").field(message).finish(),
            LoadErrorRepr::Wrapped(error) => f.debug_tuple("LoadError").field(error).finish(),
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            LoadErrorRepr::Message(message) => f.write_str(message),
            LoadErrorRepr::Wrapped(error) => fmt::Display::fmt(error, f),
        }
    }
}

impl StdError for LoadError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.0 {
            LoadErrorRepr::Message(_) => None,
            LoadErrorRepr::Wrapped(error) => error.source(),
        }
    }
}

#[cfg(feature = "sqlx")]
impl From<::sqlx::Error> for LoadError {
    fn from(error: ::sqlx::Error) -> Self {
        LoadError::new(error)
    }
}

/// Displays an error and its sources, `a: b: c`: the crate's log lines
/// carry this, so a log shows the cause the top message leaves to
/// `source()`.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

/// An instance's representation could not be decoded. The cache treats it as
/// a miss and overwrites the entry.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode a cached {model}: {source}")]
pub struct DecodeError {
    model: &'static str,
    #[source]
    source: serde_json::Error,
}

impl DecodeError {
    #[doc(hidden)]
    #[must_use]
    pub fn new(model: &'static str, source: serde_json::Error) -> Self {
        DecodeError { model, source }
    }
}

/// An instance could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode a {model}: {source}")]
pub struct EncodeError {
    model: &'static str,
    #[source]
    source: serde_json::Error,
}

impl EncodeError {
    #[doc(hidden)]
    #[must_use]
    pub fn new(model: &'static str, source: serde_json::Error) -> Self {
        EncodeError { model, source }
    }
}

/// A store operation failed (connection lost, timeout, protocol error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached or did not answer in time.
    #[error("store unavailable")]
    Unavailable(#[source] BoxError),
    /// The store answered something the cache did not expect.
    #[error("unexpected store reply: {0}")]
    Protocol(String),
    /// Connecting to the store failed, for the reason given (see
    /// [`ConnectError`]). Returned by
    /// [`RedisStoreBuilder::connect`](crate::RedisStoreBuilder::connect)
    /// and its lazy variant, never by a request.
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

/// Why a store could not be connected (or configured), told apart so that a
/// refused port, a wrong password and a missing database each read as what
/// they are. Each variant names the server (`host:port`, never the
/// password) and keeps the client's error as its [`source`](StdError::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Nothing accepts connections at the address (the server is down, or
    /// the host or port is wrong).
    #[error("Redis at {addr} refused the connection")]
    Refused {
        /// The server, `host:port`.
        addr: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The server rejected the credentials, or wants some and the URL has
    /// none (`redis://:password@host/` or `redis://user:password@host/`).
    #[error("Redis at {addr} rejected the credentials")]
    Auth {
        /// The server, `host:port`.
        addr: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The server has no database of the URL's index (`/db`); the number of
    /// databases is the server's `databases` setting, 16 by default.
    #[error("Redis at {addr} has no database {db}")]
    NoSuchDatabase {
        /// The server, `host:port`.
        addr: String,
        /// The database index asked for.
        db: i64,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The server did not complete the connection (TCP and handshake)
    /// within the connect timeout, or did not answer within the response
    /// timeout.
    #[error("Redis at {addr} did not answer within {timeout:?}")]
    Timeout {
        /// The server, `host:port`.
        addr: String,
        /// The timeout that ran out.
        timeout: std::time::Duration,
    },
    /// The configuration is unusable: an invalid URL or key prefix, or no
    /// Tokio runtime to run the connection on.
    #[error("invalid Redis store configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// Any other failure while connecting.
    #[error("connecting to Redis at {addr} failed")]
    Other {
        /// The server, `host:port`.
        addr: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
}

/// The cache registry is inconsistent; returned by
/// [`CacheBuilder::build`](crate::CacheBuilder::build).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Two registered types share a model name and version.
    #[error(
        "model {model} version {version} is registered twice ({first} and {second}); give one of them `#[cached(version = \"...\")]`"
    )]
    DuplicateVersion {
        /// The model name.
        model: &'static str,
        /// The shared version.
        version: &'static str,
        /// The first type registered.
        first: &'static str,
        /// The second type registered.
        second: &'static str,
    },
    /// A relation points at a model without a loader.
    #[error(
        "{model}.{field} relates to {target}, which has no loader; add `.loader::<{target}>(...)` to the cache builder"
    )]
    MissingLoader {
        /// The model declaring the relation.
        model: &'static str,
        /// The relation field.
        field: &'static str,
        /// The related model.
        target: &'static str,
    },
    /// A `has_many = T, via = f` whose `f` does not reference the model.
    #[error(
        "{model}.{field} is `has_many = {target}, via = {via}`, but {target}.{via} is not `#[cached(references = {model})]`"
    )]
    BrokenVia {
        /// The model declaring the relation.
        model: &'static str,
        /// The relation field.
        field: &'static str,
        /// The related model.
        target: &'static str,
        /// The `via` field.
        via: &'static str,
    },
    /// Two versions of one model disagree on their primary key type.
    #[error("versions of model {model} have different primary key types ({first} and {second})")]
    PkMismatch {
        /// The model name.
        model: &'static str,
        /// The first pk type.
        first: &'static str,
        /// The second pk type.
        second: &'static str,
    },
}

/// Why a query could not be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// No field of that name is declared `index`, `sortable` or `search`.
    #[error(
        "{model} has no field `{field}` declared for queries (`#[cached(index)]`, `#[cached(sortable)]` or `#[cached(search)]`)"
    )]
    UnknownField {
        /// The model.
        model: &'static str,
        /// The name given.
        field: String,
    },
    /// The field is declared for queries, but not for this kind of query.
    #[error("{model}.{field} is not declared `#[cached({attribute})]`")]
    NotDeclared {
        /// The model.
        model: &'static str,
        /// The field.
        field: String,
        /// The attribute the query needs (`index`, `sortable` or `search`).
        attribute: &'static str,
    },
    /// A value that is not one of the field's type.
    #[error("{value:?} is not a valid value of {model}.{field}")]
    InvalidValue {
        /// The model.
        model: &'static str,
        /// The field.
        field: String,
        /// The value given.
        value: String,
    },
    /// A search over a model without `search` fields.
    #[error("{model} has no field declared `#[cached(search)]`")]
    NoSearchFields {
        /// The model.
        model: &'static str,
    },
    /// More than one ordering field.
    #[error("order by one field only, got {ordering:?}")]
    Ordering {
        /// The ordering given.
        ordering: String,
    },
    /// The model is not warmed, and its loader does not answer queries.
    #[error(
        "{model} is not warmed and its loader answers no queries: call `cache.warm::<{model}>()` or implement `Loader::query`"
    )]
    NoFallback {
        /// The model.
        model: &'static str,
    },
    /// `warm` needs the loader to list every primary key.
    #[error(
        "{model}'s loader cannot list every primary key: implement `Loader::all_pks` to warm it"
    )]
    NoPkList {
        /// The model.
        model: &'static str,
    },
    /// `warm` needs a store with query indexes.
    #[error("the cache's store does not support query indexes")]
    StoreUnsupported,
    /// `warm` of a model that declares no field for queries: there is no
    /// index to build, and nothing would answer from one.
    #[error(
        "{model} declares no field for queries (`#[cached(index)]`, `#[cached(sortable)]` or `#[cached(search)]`), so there is no index to warm; to preload its entries, use `cache.get_many::<{model}>(&pks)`"
    )]
    NothingToIndex {
        /// The model.
        model: &'static str,
    },
}

/// A store operation of the cache, as named in
/// [`Event::StoreUnavailable`](crate::Event::StoreUnavailable) and
/// [`Error::Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreOp {
    /// A read of entries.
    Get,
    /// Leasing missing entries before a load.
    Lease,
    /// Filling leased entries after a load.
    Fill,
    /// Releasing leases after a failed load.
    Release,
    /// Replacing corrupt entries with a tombstone.
    Replace,
    /// Invalidating entries (a write, a cascade, a queued invalidation).
    Invalidate,
    /// Deleting raw keys.
    Delete,
    /// Leasing query-index records.
    IndexLease,
    /// Applying query-index records.
    IndexApply,
    /// Listing an index's members (`warm`).
    IndexMembers,
    /// Marking an index warmed.
    IndexMark,
    /// Deleting an index's warm mark.
    IndexUnwarm,
    /// Running a query on an index.
    Query,
}

impl StoreOp {
    /// A short name, for logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::Get => "get",
            StoreOp::Lease => "lease",
            StoreOp::Fill => "fill",
            StoreOp::Release => "release",
            StoreOp::Replace => "replace",
            StoreOp::Invalidate => "invalidate",
            StoreOp::Delete => "delete",
            StoreOp::IndexLease => "index lease",
            StoreOp::IndexApply => "index apply",
            StoreOp::IndexMembers => "index members",
            StoreOp::IndexMark => "index mark",
            StoreOp::IndexUnwarm => "index unwarm",
            StoreOp::Query => "query",
        }
    }
}

impl std::fmt::Display for StoreOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
