//! `#[derive(CachedInstance)]`. Use it through the `cached-instances` crate,
//! which re-exports it.
//!
//! The pipeline: `attr` reads `#[cached(...)]`, `ast` builds the model of
//! the struct, `check` validates what can be decided from the tokens alone,
//! `expand` generates the impl plus compile-time assertions for what needs
//! types, and `fallback` stands in for the impl when there are errors.

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

mod ast;
mod attr;
mod check;
mod ctxt;
mod expand;
mod fallback;
mod suggest;

#[cfg(test)]
mod tests;

/// Derives `cached_instances::CachedInstance` for a struct with named
/// fields.
///
/// The representation is a JSON object with every field that is not
/// skipped, in declaration order. Mistakes are compile errors at the
/// offending token, including those that need the types (a field without a
/// codec, a foreign key of the wrong type, a `via` naming a field the other
/// model does not have).
///
/// # Container attributes
///
/// | attribute | meaning |
/// | --- | --- |
/// | `model = "Question"` | the model name (default: the type's name); ASCII letters, digits, `_`, `-`, `.` |
/// | `version = "v2"` | the schema version (default `"default"`); same characters as `model` |
/// | `ttl = 300` | the model's time to live in seconds (at least 1); default: the cache's |
/// | `invalidates_key = "key"` | a raw store key every write of the model invalidates; repeatable |
/// | `invalidator = path::to::f` | `fn(&Self) -> impl IntoIterator<Item = Target>`: more targets a write invalidates |
/// | `table = "questions"` | derive a batched sqlx loader reading this table (`"schema.table"` works too) |
/// | `database = "sqlite"` | with `table`: derive the loader for `"sqlite"`, `"postgres"` or `"mysql"` only (default: each database feature enabled on cached-instances) |
///
/// # Field attributes
///
/// | attribute | meaning |
/// | --- | --- |
/// | `pk` | the primary key; exactly one field, of a `PrimaryKey` type |
/// | `references = T` | a foreign key: `T::Pk` or `Option<T::Pk>` |
/// | `has_many = T, via = f` | `Vec<T::Pk>`: the `T`s whose `references = Self` field `f` holds this pk |
/// | `many_to_many = T` | `Vec<T::Pk>`; add `inverse = f` to name the `many_to_many = Self` field of `T` mirroring it |
/// | `rename = "name"` | the field's JSON name (default: the field's name) |
/// | `serde` | store the field with its own `Serialize`/`Deserialize` impls instead of a `FieldCodec` |
/// | `skip` | leave the field out; decoding fills it with `Default::default()` |
/// | `column = "name"` | with `table`: the field's column (default: the field's name) |
/// | `through = "votes", source = "choice_id", target = "user_id"` | with `table`, on a `many_to_many`: the join table, its column holding this model's pk, and its column holding the related model's pk |
///
/// # Derived sqlx loaders
///
/// With `table`, the derive also implements `cached_instances::sqlx::SqlxModel`
/// for SQLite, PostgreSQL and MySQL (each behind the runtime's `sqlx-sqlite` /
/// `sqlx-postgres` / `sqlx-mysql` feature), which `SqlxLoader` serves: one query for the
/// rows of all the pks, one per relation list. A `has_many = T` list is read
/// from `T`'s table, so `T` needs a `table` as well; its table, pk column and
/// `via` column come from `T`'s own declaration. Field types sqlx cannot read
/// on an enabled database are compile errors at the field. See the
/// `cached_instances::sqlx` module docs.
///
/// A primary key may also be a foreign key (`#[cached(pk, references = T)]`)
/// for a one-to-one extension of another model. `Self` is accepted as a
/// relation target.
///
/// ```ignore
/// #[derive(CachedInstance)]
/// #[cached(model = "Choice", ttl = 3600)]
/// pub struct Choice {
///     #[cached(pk)]
///     pub id: i64,
///     #[cached(references = Question)]
///     pub question_id: i64,
///     #[cached(rename = "text")]
///     pub choice_text: String,
///     #[cached(many_to_many = User, inverse = votes)]
///     pub voters: Vec<i64>,
/// }
/// ```
#[proc_macro_derive(CachedInstance, attributes(cached))]
pub fn derive_cached_instance(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    derive(&input).into()
}

fn derive(input: &DeriveInput) -> proc_macro2::TokenStream {
    let cx = ctxt::Ctxt::new();
    let cont = ast::Container::from_ast(&cx, input);
    if let Some(cont) = &cont {
        check::check(&cx, cont);
    }
    let expanded = match (cx.check(), &cont) {
        (Ok(()), Some(cont)) => expand::expand(cont),
        (Err(err), _) => Err(err),
        // `from_ast` records an error whenever it returns `None`.
        (Ok(()), None) => Err(syn::Error::new_spanned(
            &input.ident,
            "`CachedInstance` can only be derived for structs with named fields",
        )),
    };
    expanded.unwrap_or_else(|err| fallback::fallback(input, cont.as_ref(), err))
}
