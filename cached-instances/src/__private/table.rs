//! Table metadata of models declared with `#[cached(table = "...")]`, and the
//! pieces of the derived sqlx loaders that do not depend on sqlx.
//!
//! The derive implements [`SqlTable`] and one [`SqlColumn`] per column field
//! on every model with a table, whatever the enabled features, so that a
//! model's `has_many = T, via = f` loader reads `T`'s table, pk column and
//! `f`'s column from `T` itself instead of repeating them.

// Hidden API whose items exist only to be named by generated code; the
// module docs above say what they are for.
#![allow(missing_docs)]

use std::marker::PhantomData;

use serde::de::{DeserializeOwned, Error as _};

use crate::pk::PrimaryKey;

/// The table of a model: `#[cached(table = "...")]`.
pub trait SqlTable {
    /// The table name as written (`"questions"`, `"polls.questions"`).
    const TABLE: &'static str;
    /// The primary key's column.
    const PK_COLUMN: &'static str;
}

/// The column of the field whose name hashes (FNV-1a) to `FIELD`.
pub trait SqlColumn<const FIELD: u64> {
    /// The column name.
    const COLUMN: &'static str;
}

/// What `has_many = T` on a model with a table (`Parent`) needs from `T`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no table, so the derived sqlx loader of `{Parent}` cannot load its `has_many = {Self}` list",
    label = "`{Self}` has no `#[cached(table = \"...\")]`",
    note = "the list is read from `{Self}`'s table, with the columns `{Self}` declares: add `#[cached(table = \"...\")]` to `{Self}`, or load `{Parent}` with a hand-written `Loader` (remove its `table`)"
)]
pub trait TableFor<Parent> {}

#[diagnostic::do_not_recommend]
impl<T: SqlTable, Parent> TableFor<Parent> for T {}

/// Checks `T: TableFor<Parent>` with `Self` being `T`'s pk type, so that
/// nothing more is reported when `T` is not a model at all (see
/// `ReferencesViaCheck`).
pub trait TableForCheck<T, Parent> {}
impl<P, T: TableFor<Parent>, Parent> TableForCheck<T, Parent> for P {}

/// Asserts that `T`, the target of a `has_many` of `Parent`, has a table.
pub const fn assert_table_for<T, Parent, P: TableForCheck<T, Parent>>() {}

// Autoref dispatch (see `fields`): the names are read through these
// so that a target without a table fails once, at the assertion above.

/// `T`'s table and pk column.
pub struct TableOf<T>(PhantomData<fn() -> T>);

impl<T> TableOf<T> {
    #[must_use]
    pub const fn new() -> Self {
        TableOf(PhantomData)
    }
}

impl<T> Default for TableOf<T> {
    fn default() -> Self {
        Self::new()
    }
}

pub trait TableNames {
    fn __cached_table(self) -> (&'static str, &'static str);
}
impl<T: SqlTable> TableNames for TableOf<T> {
    #[inline]
    fn __cached_table(self) -> (&'static str, &'static str) {
        (T::TABLE, T::PK_COLUMN)
    }
}

pub trait TableNamesFallback {
    fn __cached_table(self) -> (&'static str, &'static str);
}
impl<T> TableNamesFallback for &TableOf<T> {
    fn __cached_table(self) -> (&'static str, &'static str) {
        ("", "")
    }
}

/// The column of `T`'s field hashing to `FIELD`.
pub struct ColumnOf<T, const FIELD: u64>(PhantomData<fn() -> T>);

impl<T, const FIELD: u64> ColumnOf<T, FIELD> {
    #[must_use]
    pub const fn new() -> Self {
        ColumnOf(PhantomData)
    }
}

impl<T, const FIELD: u64> Default for ColumnOf<T, FIELD> {
    fn default() -> Self {
        Self::new()
    }
}

pub trait ColumnName {
    fn __cached_column(self) -> &'static str;
}
impl<T: SqlColumn<FIELD>, const FIELD: u64> ColumnName for ColumnOf<T, FIELD> {
    #[inline]
    fn __cached_column(self) -> &'static str {
        T::COLUMN
    }
}

pub trait ColumnNameFallback {
    fn __cached_column(self) -> &'static str;
}
impl<T, const FIELD: u64> ColumnNameFallback for &ColumnOf<T, FIELD> {
    fn __cached_column(self) -> &'static str {
        ""
    }
}

/// A relation list field of type `F` built from the loaded pks `P`.
pub struct ListField<F, P>(PhantomData<fn() -> (F, P)>);

impl<F, P> ListField<F, P> {
    #[must_use]
    pub const fn new() -> Self {
        ListField(PhantomData)
    }
}

impl<F, P> Default for ListField<F, P> {
    fn default() -> Self {
        Self::new()
    }
}

pub trait ListFromPks<F, P> {
    fn __cached_list(self, pks: Vec<P>) -> Option<F>;
}
impl<P: PrimaryKey> ListFromPks<Vec<P>, P> for ListField<Vec<P>, P> {
    #[inline]
    fn __cached_list(self, pks: Vec<P>) -> Option<Vec<P>> {
        Some(pks)
    }
}

pub trait ListFromPksFallback<F, P> {
    fn __cached_list(self, pks: Vec<P>) -> Option<F>;
}
impl<F, P> ListFromPksFallback<F, P> for &ListField<F, P> {
    fn __cached_list(self, _pks: Vec<P>) -> Option<F> {
        None
    }
}

/// What a relation list field that is not a `Vec` of pks decodes to (the
/// derive's assertion has failed the build before this can run).
pub const NOT_A_LIST: &str =
    "relation field is not a list of primary keys (the derive's assertion should have failed)";

/// A `#[cached(serde)]` field of type `T`, read from a JSON column.
pub struct JsonField<T>(PhantomData<fn() -> T>);

impl<T> JsonField<T> {
    #[must_use]
    pub const fn new() -> Self {
        JsonField(PhantomData)
    }
}

impl<T> Default for JsonField<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Turns the column's JSON (`Value::Null` for SQL `NULL`) into the field.
pub type FromJson<T> = fn(serde_json::Value) -> Result<T, serde_json::Error>;

pub trait JsonFieldDecode<T> {
    fn __cached_from_json(self) -> FromJson<T>;
}
impl<T: DeserializeOwned> JsonFieldDecode<T> for JsonField<T> {
    #[inline]
    fn __cached_from_json(self) -> FromJson<T> {
        serde_json::from_value::<T>
    }
}

pub trait JsonFieldFallback<T> {
    fn __cached_from_json(self) -> FromJson<T>;
}
impl<T> JsonFieldFallback<T> for &JsonField<T> {
    fn __cached_from_json(self) -> FromJson<T> {
        |_| {
            Err(serde_json::Error::custom(
                "field type is not `DeserializeOwned` (the derive's assertion should have failed)",
            ))
        }
    }
}
