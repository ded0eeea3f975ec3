//! Cache database-backed API models as their ready-to-serve JSON.
//!
//! A detail read costs no database query and one store round trip; a list
//! read costs one query for the primary keys and one multi-get; a write
//! invalidates exactly the instances whose representation it changed, and
//! the lease protocol keeps a slow reader from putting stale data back.
//!
//! ```
//! use cached_instances::{Cache, CachedInstance, LoadError, Loader};
//!
//! #[derive(CachedInstance, Debug, Clone, PartialEq)]
//! pub struct Question {
//!     #[cached(pk)]
//!     pub id: i64,
//!     pub question_text: String,
//! }
//!
//! struct Db;
//!
//! impl Loader<Question> for Db {
//!     async fn load(&self, pks: &[i64]) -> Result<Vec<Question>, LoadError> {
//!         // One query for every missing pk; rows that do not exist are absent.
//!         Ok(pks
//!             .iter()
//!             .filter(|&&id| id < 100)
//!             .map(|&id| Question { id, question_text: format!("question {id}") })
//!             .collect())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Cache::builder().loader::<Question>(Db).build()?;
//!
//! let q = cache.get::<Question>(&1).await?;          // miss: one loader call
//! assert_eq!(q.unwrap().question_text, "question 1");
//! let q = cache.get::<Question>(&1).await?;          // hit: no loader call
//! assert!(q.is_some());
//! assert_eq!(cache.stats().loader_calls, 1);
//!
//! let many = cache.get_many::<Question>(&[3, 500, 2]).await?;
//! assert_eq!(many.iter().map(|q| q.id).collect::<Vec<_>>(), [3, 2]);
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
mod cache;
mod codec;
mod error;
pub mod feed;
mod instance;
mod key;
mod loader;
mod marker;
mod pk;
pub mod query;
#[cfg(feature = "sqlx")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx")))]
pub mod sqlx;
pub mod store;
mod striped;

pub use cache::{Cache, CacheBuilder, Event, Stats, Warm, WarmProgress, WarmReport};
pub use codec::FieldCodec;
pub use error::{
    BoxError, BuildError, ConnectError, DecodeError, EncodeError, Error, LoadError, StoreError,
    StoreOp,
};
pub use instance::{CachedInstance, IndexField, Relation, RelationKind, Schema, Target};
pub use loader::{LeasedPks, Loader};
pub use pk::PrimaryKey;
pub use store::{MemoryStore, Store};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use store::{NearCache, NearCacheStats, RedisStore, RedisStoreBuilder};

/// Derives [`CachedInstance`]; see the crate docs for the attributes.
#[cfg(feature = "derive")]
pub use cached_instances_derive::CachedInstance;

/// Items used by the code `#[derive(CachedInstance)]` generates. Not a public
/// API: no stability guarantees.
///
/// The one place of the derive's support code: its own modules (field,
/// index and table dispatch) live below it, and the runtime items generated
/// code names are re-exported here. The crate's own modules never import
/// from it.
#[doc(hidden)]
pub mod __private {
    mod copy;
    mod fields;
    mod index;
    mod table;

    pub use crate::codec::{Decode, Decoded, Encode, FieldCodec};
    pub use crate::error::{DecodeError, EncodeError};
    pub use crate::instance::{
        CachedInstance, Capture, CapturedJoin, CapturedReference, IndexField, LinkValues,
        ManyToManyVia, PkField, PkList, ReferencesVia, Relation, RelationKind, Schema, Target,
        assert_codec,
    };
    // Query indexes (`#[cached(index)]`, `sortable`, `search`).
    pub use crate::pk::PrimaryKey;
    pub use crate::query::IndexValues;
    pub use index::*;
    pub use serde;
    pub use serde_json;
    pub use std::time::Duration;
    pub use std::{fmt, option::Option, result::Result, string::String, vec::Vec};
    // Autoref dispatch and assertion traits; see `fields` and `copy`.
    pub use copy::*;
    pub use fields::*;
    pub use std::unreachable;

    // Derived sqlx loaders (`#[cached(table = "...")]`). The metadata and
    // dispatch helpers exist whatever the features; what names sqlx sits
    // behind the `__cached_if_*` macros below.
    pub use crate::query::Condition;
    #[cfg(feature = "sqlx-mysql")]
    pub use crate::sqlx::mysql as sqlx_mysql;
    #[cfg(feature = "sqlx-postgres")]
    pub use crate::sqlx::postgres as sqlx_postgres;
    #[cfg(feature = "sqlx")]
    pub use crate::sqlx::query as sqlx_query;
    #[cfg(feature = "sqlx-sqlite")]
    pub use crate::sqlx::sqlite as sqlx_sqlite;
    #[cfg(feature = "sqlx")]
    pub use crate::sqlx::{
        BoxFuture, FetchedKeys, SqlxColumn, SqlxConnection, SqlxModel, schema_error,
    };
    pub use crate::{
        __cached_if_sqlx, __cached_if_sqlx_mysql, __cached_if_sqlx_postgres,
        __cached_if_sqlx_sqlite,
    };
    #[cfg(feature = "sqlx")]
    pub use ::sqlx;
    pub use std::clone::Clone;
    pub use std::future::Future;
    pub use std::marker::Send;
    pub use table::*;

    /// Asserts at compile time that `T` is a cached model.
    pub const fn assert_cached<T: CachedInstance>() {}
    /// Asserts at compile time that `F` is `T`'s pk or an optional one.
    pub const fn assert_pk_field<F: PkField<P>, P>() {}
    /// Asserts at compile time that `F` is a list of `T`'s pks.
    pub const fn assert_pk_list<F: PkList<P>, P>() {}
    /// Asserts that `X` has a `references = T` field whose name hashes to `H`.
    /// `P` is `X`'s pk type (see [`ReferencesViaCheck`] for why).
    pub const fn assert_references_via<X, T, const H: u64, P: ReferencesViaCheck<X, T, H>>() {}
    /// Asserts that `X` has a `many_to_many = T` field whose name hashes to `H`.
    /// `P` is `X`'s pk type (see [`ReferencesViaCheck`] for why).
    pub const fn assert_many_to_many_via<X, T, const H: u64, P: ManyToManyViaCheck<X, T, H>>() {}
    /// Asserts that a skipped field can be rebuilt on decode.
    pub const fn assert_default<T: Skippable>() {}

    /// Exposed so tests can check the derive's constants.
    pub use crate::key::fnv1a;
}

// Generated code is compiled in the user's crate, where `cfg(feature = ...)`
// would test the user's features. These macros carry this crate's features
// to it instead: each passes its input through when the feature is enabled
// here and drops it otherwise.

/// Emits its input when the `sqlx` feature is enabled. Used by generated code.
#[cfg(feature = "sqlx")]
#[doc(hidden)]
#[macro_export]
macro_rules! __cached_if_sqlx {
    ($($t:tt)*) => { $($t)* };
}

/// Emits its input when the `sqlx` feature is enabled. Used by generated code.
#[cfg(not(feature = "sqlx"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __cached_if_sqlx {
    ($($t:tt)*) => {};
}

/// Emits its input when the `sqlx-sqlite` feature is enabled. Used by
/// generated code.
#[cfg(feature = "sqlx-sqlite")]
#[doc(hidden)]
#[macro_export]
macro_rules! __cached_if_sqlx_sqlite {
    ($($t:tt)*) => { $($t)* };
}

/// Emits its input when the `sqlx-sqlite` feature is enabled. Used by
/// generated code.
#[cfg(not(feature = "sqlx-sqlite"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __cached_if_sqlx_sqlite {
    ($($t:tt)*) => {};
}

/// Emits its input when the `sqlx-postgres` feature is enabled. Used by
/// generated code.
#[cfg(feature = "sqlx-postgres")]
#[doc(hidden)]
#[macro_export]
macro_rules! __cached_if_sqlx_postgres {
    ($($t:tt)*) => { $($t)* };
}

/// Emits its input when the `sqlx-postgres` feature is enabled. Used by
/// generated code.
#[cfg(not(feature = "sqlx-postgres"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __cached_if_sqlx_postgres {
    ($($t:tt)*) => {};
}

/// Emits its input when the `sqlx-mysql` feature is enabled. Used by
/// generated code.
#[cfg(feature = "sqlx-mysql")]
#[doc(hidden)]
#[macro_export]
macro_rules! __cached_if_sqlx_mysql {
    ($($t:tt)*) => { $($t)* };
}

/// Emits its input when the `sqlx-mysql` feature is enabled. Used by
/// generated code.
#[cfg(not(feature = "sqlx-mysql"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __cached_if_sqlx_mysql {
    ($($t:tt)*) => {};
}

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
