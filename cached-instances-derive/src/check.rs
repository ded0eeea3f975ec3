//! Validation of what the attributes mean together. Everything that can be
//! decided from the tokens of this one struct is decided here; what needs
//! type information (codecs, pk types, the other side of a relation) is left
//! to the assertions `expand` emits.

use std::collections::HashMap;

use quote::ToTokens;
use syn::Ident;

use crate::ast::{Container, DATABASES, Field};
use crate::attr::{Item, THROUGH_EXAMPLE};
use crate::ctxt::Ctxt;
use crate::suggest;

pub(crate) fn check(cx: &Ctxt, cont: &Container) {
    check_generics(cx, cont);
    check_key_names(cx, cont);
    check_invalidates_keys(cx, cont);
    check_primary_key(cx, cont);
    for field in &cont.fields {
        check_field(cx, field);
    }
    check_json_names(cx, cont);
    check_table(cx, cont);
}

fn check_generics(cx: &Ctxt, cont: &Container) {
    let generics = &cont.input.generics;
    let message = "generic structs are not supported: a cached model's schema and cache keys are \
                   fixed at compile time; derive `CachedInstance` on a concrete struct instead \
                   (one per type argument you need)";
    if !generics.params.is_empty() {
        cx.error_spanned_by(generics, message);
    } else if let Some(where_clause) = &generics.where_clause {
        cx.error_spanned_by(
            where_clause,
            "a cached model cannot have a `where` clause; remove it",
        );
    }
}

/// Model and version names go into every store key, between separators.
fn check_key_names(cx: &Ctxt, cont: &Container) {
    const ALLOWED: &str = "use only ASCII letters, digits, `_`, `-` and `.`";
    match &cont.attrs.model {
        Some(item) => {
            if let Err(problem) = key_name(&item.value.value()) {
                let advice = if item.value.value().is_empty() {
                    "remove `model` to use the type's name, or write a name that uses only ASCII \
                     letters, digits, `_`, `-` and `.`"
                } else {
                    ALLOWED
                };
                cx.error_spanned_by(&item.value, format!("the model name {problem}; {advice}"));
            }
        }
        None => {
            let name = cont.model();
            if let Err(problem) = key_name(&name) {
                cx.error_spanned_by(
                    cont.ident,
                    format!(
                        "the type name `{name}` cannot be the model name: it {problem}; set a \
                         model name with `#[cached(model = \"...\")]` and {ALLOWED}"
                    ),
                );
            }
        }
    }
    if let Some(item) = &cont.attrs.version
        && let Err(problem) = key_name(&item.value.value())
    {
        let advice = if item.value.value().is_empty() {
            "remove `version` to use \"default\", or write a name that uses only ASCII \
                 letters, digits, `_`, `-` and `.`"
        } else {
            ALLOWED
        };
        cx.error_spanned_by(&item.value, format!("the version name {problem}; {advice}"));
    }
}

/// `Err` describes what is wrong with a name that goes into cache keys.
fn key_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".to_owned());
    }
    match name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        Some(c) => Err(format!("contains {c:?}, which would break cache keys")),
        None => Ok(()),
    }
}

fn check_invalidates_keys(cx: &Ctxt, cont: &Container) {
    let mut seen: Vec<String> = Vec::new();
    for item in &cont.attrs.invalidates_keys {
        let key = item.value.value();
        if key.is_empty() {
            cx.error_spanned_by(
                &item.value,
                "`invalidates_key` must name a store key; write `invalidates_key = \"key\"`",
            );
        } else if seen.contains(&key) {
            cx.error_spanned_by(
                &item.value,
                format!("`invalidates_key = \"{key}\"` is listed twice; remove this one"),
            );
        } else {
            seen.push(key);
        }
    }
}

fn check_primary_key(cx: &Ctxt, cont: &Container) {
    let mut pks = cont.fields.iter().filter(|f| f.attrs.pk.is_some());
    let Some(first) = pks.next() else {
        if cont.fields.iter().any(|f| f.attrs.unreadable) {
            // The pk may be in the attribute we could not read; its error is
            // the one to fix.
            return;
        }
        let ident = cont.ident;
        cx.error_spanned_by(
            ident,
            format!(
                "`{ident}` has no primary key; mark the primary key field with `#[cached(pk)]`"
            ),
        );
        return;
    };
    for extra in pks {
        if let Some(keyword) = &extra.attrs.pk {
            cx.error_spanned_by(
                keyword,
                format!(
                    "`{}` already has a primary key, `{}`; a model has exactly one \
                     `#[cached(pk)]` field (composite keys are not supported)",
                    cont.ident, first.name
                ),
            );
        }
    }
}

fn check_field(cx: &Ctxt, field: &Field) {
    let a = &field.attrs;

    // What the field is; at most one, except that a primary key may also be a
    // foreign key (a one-to-one extension of another model).
    let kinds: Vec<(&str, &Ident)> = [
        ("pk", a.pk.as_ref()),
        ("references", a.references.as_ref().map(|i| &i.keyword)),
        ("has_many", a.has_many.as_ref().map(|i| &i.keyword)),
        ("many_to_many", a.many_to_many.as_ref().map(|i| &i.keyword)),
        ("skip", a.skip.as_ref()),
    ]
    .into_iter()
    .filter_map(|(name, keyword)| Some((name, keyword?)))
    .collect();
    for (i, &(later, keyword)) in kinds.iter().enumerate() {
        for &(earlier, _) in &kinds[..i] {
            if let Some(reason) = conflict(earlier, later) {
                cx.error_spanned_by(
                    keyword,
                    format!("`{later}` cannot be combined with `{earlier}`; {reason}"),
                );
            }
        }
    }

    if let Some(serde) = &a.serde
        && let Some(&(kind, _)) = kinds.first()
    {
        let reason = if kind == "skip" {
            "a skipped field is not stored; remove one of them".to_owned()
        } else {
            format!(
                "a `{kind}` field holds primary keys, which are always stored with their \
                     own codec; remove `serde`"
            )
        };
        cx.error_spanned_by(
            serde,
            format!("`serde` cannot be combined with `{kind}`; {reason}"),
        );
    }

    check_index(cx, field);

    if let (Some(rename), Some(_)) = (&a.rename, &a.skip) {
        cx.error_spanned_by(
            &rename.keyword,
            "`rename` cannot be combined with `skip`; a skipped field is not stored under any \
             name; remove one of them",
        );
    }

    if let Some(has_many) = &a.has_many
        && a.via.is_none()
    {
        let target = has_many.value.to_token_stream();
        cx.error_spanned_by(
            &has_many.keyword,
            format!(
                "`has_many` needs `via`, the field of `{target}` that references this \
                     model: write `#[cached(has_many = {target}, via = <field>)]`"
            ),
        );
    }
    if let Some(via) = &a.via
        && a.has_many.is_none()
    {
        let message = if a.many_to_many.is_some() {
            "`many_to_many` names the mirroring field with `inverse`, not `via`: write \
                 `#[cached(many_to_many = T, inverse = <field>)]`"
        } else {
            "`via` only goes with `has_many`: write `#[cached(has_many = T, via = <field>)]`"
        };
        cx.error_spanned_by(&via.keyword, message);
    }
    if let Some(inverse) = &a.inverse
        && a.many_to_many.is_none()
    {
        let message = if a.has_many.is_some() {
            "`has_many` names the foreign key with `via`, not `inverse`: write \
                 `#[cached(has_many = T, via = <field>)]`"
        } else {
            "`inverse` only goes with `many_to_many`: write `#[cached(many_to_many = T, \
                 inverse = <field>)]`"
        };
        cx.error_spanned_by(&inverse.keyword, message);
    }
}

/// `index`, `sortable` and `search` need a stored, single value.
fn check_index(cx: &Ctxt, field: &Field) {
    let a = &field.attrs;
    let conflict = if a.skip.is_some() {
        Some((
            "skip",
            "a skipped field is not stored, so its value is not known to the cache; remove one \
             of them"
                .to_owned(),
        ))
    } else {
        [
            ("has_many", a.has_many.is_some()),
            ("many_to_many", a.many_to_many.is_some()),
        ]
        .into_iter()
        .find_map(|(kind, set)| set.then_some(kind))
        .map(|kind| {
            (
                kind,
                format!(
                    "a `{kind}` list cannot be queried through an index; index the foreign key \
                     on the other model instead (`#[cached(references = ..., index)]`)"
                ),
            )
        })
    };
    let Some((with, reason)) = conflict else {
        return;
    };
    for (name, keyword) in [
        ("index", a.index.as_ref()),
        ("sortable", a.sortable.as_ref()),
        ("search", a.search.as_ref()),
    ] {
        if let Some(keyword) = keyword {
            cx.error_spanned_by(
                keyword,
                format!("`{name}` cannot be combined with `{with}`; {reason}"),
            );
        }
    }
}

/// Why field kinds `a` and `b` (in that order of appearance) exclude each
/// other, or `None` if they don't.
fn conflict(a: &str, b: &str) -> Option<&'static str> {
    let pair = |x: &str, y: &str| (a == x && b == y) || (a == y && b == x);
    if pair("pk", "references") {
        None
    } else if pair("pk", "skip") {
        Some("the primary key is stored and is part of every cache key, so it cannot be skipped")
    } else if a == "pk" || b == "pk" {
        Some(
            "a primary key holds this model's own key, not a list of related keys; put the \
             relation on a separate `Vec` field",
        )
    } else if a == "skip" || b == "skip" {
        Some("a skipped field is not stored, so it cannot hold a relation; remove one of them")
    } else {
        Some(
            "a field declares one relation: `references` (a foreign key), `has_many` (the keys \
             of the models that reference this one) or `many_to_many` (a list of keys)",
        )
    }
}

fn check_json_names(cx: &Ctxt, cont: &Container) {
    let mut seen: HashMap<String, &Field> = HashMap::new();
    for field in &cont.fields {
        if field.attrs.skip.is_some() {
            continue;
        }
        let name = field.json_name();
        if let Some(first) = seen.get(&name) {
            let message = format!(
                "field `{}` would be stored under the JSON name \"{name}\", which field `{}` \
                 already uses; give one of them another name with `#[cached(rename = \
                 \"...\")]`",
                field.name, first.name
            );
            match &field.attrs.rename {
                Some(item) => cx.error_spanned_by(&item.value, message),
                None => cx.error_spanned_by(field.ident, message),
            }
        } else {
            seen.insert(name, field);
        }
    }
}

/// The attributes of the derived sqlx loader: `table`, `database`, and the
/// fields' `column`, `through`, `source` and `target`.
fn check_table(cx: &Ctxt, cont: &Container) {
    let ident = cont.ident;
    let table = cont.attrs.table.as_ref();
    if let Some(item) = table {
        check_table_name(
            cx,
            &item.value,
            "table",
            "write the table's name (`table = \"questions\"`, or `\"schema.questions\"`), or \
             remove `table` to load the model with a hand-written `Loader`",
        );
    }
    if let Some(item) = &cont.attrs.database {
        let name = item.value.value();
        if table.is_none() {
            cx.error_spanned_by(
                &item.keyword,
                format!(
                    "`database` picks the database of the loader that `table` derives, and \
                     `{ident}` has no `table`; add `#[cached(table = \"...\")]` or remove \
                     `database`"
                ),
            );
        } else if !DATABASES.contains(&name.as_str()) {
            let hint = match suggest::closest(&name, DATABASES) {
                Some(hint) => format!("did you mean \"{hint}\"? "),
                None => String::new(),
            };
            cx.error_spanned_by(
                &item.value,
                format!(
                    "unknown database \"{name}\"; {hint}expected \"sqlite\", \"postgres\" or \"mysql\" \
                     (remove `database` to derive a loader for each database feature enabled \
                     on cached-instances)"
                ),
            );
        }
    }

    let mut columns: HashMap<String, &Field> = HashMap::new();
    for field in &cont.fields {
        let a = &field.attrs;
        if let Some(column) = &a.column {
            if table.is_none() {
                cx.error_spanned_by(
                    &column.keyword,
                    format!(
                        "`column` names the field's column for the sqlx loader that \
                         `#[cached(table = \"...\")]` derives, and `{ident}` has no `table`; add \
                         `#[cached(table = \"...\")]` to `{ident}`, or remove `column`"
                    ),
                );
            } else if a.skip.is_some() {
                cx.error_spanned_by(
                    &column.keyword,
                    "`column` cannot be combined with `skip`; a skipped field is not read from \
                     the database, so remove one of them",
                );
            } else if let Some(has_many) = &a.has_many {
                let target = has_many.value.to_token_stream();
                cx.error_spanned_by(
                    &column.keyword,
                    format!(
                        "a `has_many` list is not a column of this table: it is read from the \
                         table of `{target}`, through the column of its `via` field; remove \
                         `column`"
                    ),
                );
            } else if a.many_to_many.is_some() {
                cx.error_spanned_by(
                    &column.keyword,
                    "a `many_to_many` list is not a column of this table: it is read from the \
                     join table named by `through`; remove `column` (the join table's columns \
                     are `source` and `target`)",
                );
            } else {
                let advice = format!(
                    "write the column's name, or remove `column` to read the column `{}`",
                    field.name
                );
                check_name(cx, &column.value, "column", &advice);
            }
        }

        check_join_table(cx, cont, field);

        if table.is_some() && field.is_column() {
            let column = field.column();
            if let Some(first) = columns.get(&column) {
                let message = format!(
                    "field `{}` would be read from column \"{column}\", which field `{}` \
                     already reads; give one of them its own column with `#[cached(column = \
                     \"...\")]`",
                    field.name, first.name
                );
                match &a.column {
                    Some(item) => cx.error_spanned_by(&item.value, message),
                    None => cx.error_spanned_by(field.ident, message),
                }
            } else {
                columns.insert(column, field);
            }
        }
    }
}

/// `through`, `source` and `target`: only on a `many_to_many` of a model
/// with a table, and then all three.
fn check_join_table(cx: &Ctxt, cont: &Container, field: &Field) {
    let ident = cont.ident;
    let a = &field.attrs;
    let items: Vec<(&str, &Item<syn::LitStr>)> = [
        ("through", a.through.as_ref()),
        ("source", a.source.as_ref()),
        ("target", a.target.as_ref()),
    ]
    .into_iter()
    .filter_map(|(name, item)| Some((name, item?)))
    .collect();

    let Some(many_to_many) = &a.many_to_many else {
        for (name, item) in &items {
            let message = if a.has_many.is_some() {
                format!(
                    "a `has_many` list is read from the related model's table, through the \
                     column of its `via` field, not from a join table; remove `{name}`"
                )
            } else {
                format!(
                    "`{name}` only goes with `many_to_many`, to name its join table and \
                     columns: write `#[cached({THROUGH_EXAMPLE})]`"
                )
            };
            cx.error_spanned_by(&item.keyword, message);
        }
        return;
    };

    if cont.attrs.table.is_none() {
        if let Some((name, item)) = items.first() {
            cx.error_spanned_by(
                &item.keyword,
                format!(
                    "`{name}` describes the join table for the sqlx loader that \
                     `#[cached(table = \"...\")]` derives, and `{ident}` has no `table`; add \
                     `#[cached(table = \"...\")]` to `{ident}`, or remove `through`, `source` \
                     and `target`"
                ),
            );
        }
        return;
    }

    let missing: Vec<String> = ["through", "source", "target"]
        .into_iter()
        .filter(|name| !items.iter().any(|(found, _)| found == name))
        .map(|name| format!("`{name}`"))
        .collect();
    if !missing.is_empty() {
        let target = many_to_many.value.to_token_stream();
        let missing = match missing.as_slice() {
            [one] => one.clone(),
            [first, second] => format!("{first} and {second}"),
            _ => "`through`, `source` and `target`".to_owned(),
        };
        cx.error_spanned_by(
            &many_to_many.keyword,
            format!(
                "`{ident}` has a table, so its derived loader reads `{}` from a join table: \
                 add {missing} (`through` = the join table, `source` = its column holding \
                 `{ident}`'s pk, `target` = its column holding `{target}`'s pk), e.g. \
                 `#[cached({THROUGH_EXAMPLE})]`",
                field.name
            ),
        );
    }
    let advice = format!("write `{THROUGH_EXAMPLE}`");
    if let Some(through) = &a.through {
        check_table_name(cx, &through.value, "join table", &advice);
    }
    for item in [&a.source, &a.target].into_iter().flatten() {
        check_name(cx, &item.value, "column", &advice);
    }
    if let (Some(source), Some(target)) = (&a.source, &a.target)
        && source.value.value() == target.value.value()
        && !source.value.value().is_empty()
    {
        cx.error_spanned_by(
            &target.value,
            "`source` and `target` must be different columns of the join table: `source` \
             holds this model's pk, `target` the related model's",
        );
    }
}

/// A table name: `table` or `schema.table`.
fn check_table_name(cx: &Ctxt, lit: &syn::LitStr, what: &str, advice: &str) {
    let name = lit.value();
    if let Err(problem) = sql_name(&name) {
        cx.error_spanned_by(lit, format!("the {what} name {problem}; {advice}"));
    } else if name.split('.').count() > 2 || name.split('.').any(str::is_empty) {
        cx.error_spanned_by(
            lit,
            format!("the {what} name \"{name}\" is neither `table` nor `schema.table`; {advice}"),
        );
    }
}

/// A column name.
fn check_name(cx: &Ctxt, lit: &syn::LitStr, what: &str, advice: &str) {
    if let Err(problem) = sql_name(&lit.value()) {
        cx.error_spanned_by(lit, format!("the {what} name {problem}; {advice}"));
    }
}

/// `Err` describes what keeps `name` from being a quoted SQL name.
fn sql_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    match name.chars().find(|&c| matches!(c, '"' | '`' | '\0')) {
        Some(c) => Err(format!("contains {c:?}, which SQL names cannot contain")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::{DeriveInput, parse_quote};

    fn errors(input: DeriveInput) -> Vec<String> {
        let cx = Ctxt::new();
        if let Some(cont) = Container::from_ast(&cx, &input) {
            check(&cx, &cont);
        }
        match cx.check() {
            Ok(()) => Vec::new(),
            Err(err) => err.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn valid_models_pass() {
        assert_eq!(
            errors(parse_quote! {
                #[cached(model = "poll.Choice-2", version = "v_2", ttl = 5)]
                #[cached(invalidates_key = "a", invalidates_key = "b")]
                struct Choice {
                    #[cached(pk, references = Question)]
                    id: i64,
                    #[cached(has_many = Self, via = parent)]
                    children: Vec<i64>,
                    #[cached(references = Self)]
                    parent: Option<i64>,
                    #[cached(many_to_many = User)]
                    voters: Vec<i64>,
                    #[cached(skip)]
                    scratch: u8,
                    #[cached(rename = "scratch")]
                    other: String,
                }
            }),
            Vec::<String>::new()
        );
    }

    #[test]
    fn valid_tables_pass() {
        assert_eq!(
            errors(parse_quote! {
                #[cached(table = "polls.choices", database = "postgres")]
                struct Choice {
                    #[cached(pk, column = "choice_id")]
                    id: i64,
                    #[cached(references = Question, column = "question")]
                    question_id: i64,
                    // The JSON names and the columns are separate namespaces.
                    #[cached(rename = "question", column = "text")]
                    choice_text: String,
                    #[cached(many_to_many = User, through = "votes")]
                    #[cached(source = "choice_id", target = "user_id")]
                    voters: Vec<i64>,
                    #[cached(has_many = Self, via = question_id)]
                    siblings: Vec<i64>,
                    #[cached(skip)]
                    scratch: u8,
                }
            }),
            Vec::<String>::new()
        );
    }

    #[test]
    fn sqlx_attributes_need_a_table() {
        let errs = errors(parse_quote! {
            #[cached(database = "sqlite")]
            struct S {
                #[cached(pk, column = "x")] id: i64,
                #[cached(many_to_many = T, source = "a", through = "b")] a: Vec<i64>,
                #[cached(target = "t")] b: i64,
            }
        });
        assert_eq!(errs.len(), 4, "{errs:#?}");
        assert!(errs[0].starts_with("`database` picks the database of the loader"));
        assert!(errs[1].starts_with("`column` names the field's column"));
        // One error per field, at its first join-table attribute.
        assert!(errs[2].starts_with("`through` describes the join table"));
        assert!(errs[3].starts_with("`target` only goes with `many_to_many`"));
    }

    #[test]
    fn table_names_and_columns() {
        let errs = errors(parse_quote! {
            #[cached(table = "a..b", database = "Postgres")]
            struct S {
                #[cached(pk)] id: i64,
                #[cached(column = "i\0d")] a: i64,
                #[cached(column = "id")] b: i64,
                #[cached(many_to_many = T)] c: Vec<i64>,
                #[cached(many_to_many = T, through = "j", source = "s", target = "s")] d: Vec<i64>,
                #[cached(many_to_many = T, through = "j", column = "d")] e: Vec<i64>,
            }
        });
        assert_eq!(errs.len(), 8, "{errs:#?}");
        assert!(errs[0].starts_with("the table name \"a..b\" is neither"));
        assert!(errs[1].starts_with("unknown database \"Postgres\"; did you mean \"postgres\"?"));
        assert!(errs[2].starts_with("the column name contains '\\0'"));
        assert!(
            errs[3].starts_with("field `b` would be read from column \"id\", which field `id`")
        );
        assert!(errs[4].contains("add `through`, `source` and `target`"));
        assert!(errs[5].starts_with("`source` and `target` must be different columns"));
        assert!(errs[6].starts_with("a `many_to_many` list is not a column"));
        assert!(errs[7].contains("add `source` and `target`"));
    }

    #[test]
    fn sql_names() {
        assert_eq!(sql_name("weird name.with dots"), Ok(()));
        assert_eq!(sql_name(""), Err("must not be empty".to_owned()));
        assert!(sql_name("a`b").is_err());
        assert!(sql_name("a\"b").is_err());
    }

    #[test]
    fn key_names() {
        assert_eq!(key_name("a.B-9_"), Ok(()));
        assert_eq!(key_name(""), Err("is empty".to_owned()));
        assert!(key_name("a:b").unwrap_err().starts_with("contains ':'"));
        assert!(key_name("é").unwrap_err().starts_with("contains 'é'"));
        let errs = errors(parse_quote! {
            struct Café { #[cached(pk)] id: i64 }
        });
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("the type name `Café` cannot be the model name"));
    }

    #[test]
    fn index_attributes_need_a_stored_single_value() {
        let errs = errors(parse_quote! {
            struct S {
                #[cached(pk, index)] id: i64,
                #[cached(references = T, index, sortable)] t: i64,
                #[cached(skip, search)] a: String,
                #[cached(has_many = T, via = s, index)] b: Vec<i64>,
                #[cached(many_to_many = U, sortable)] c: Vec<i64>,
                #[cached(index, index)] d: i64,
            }
        });
        assert_eq!(errs.len(), 4, "{errs:#?}");
        // Parsing reports the duplicate before the checks run.
        assert!(errs[0].starts_with("duplicate `index` attribute"));
        assert!(errs[1].starts_with("`search` cannot be combined with `skip`"));
        assert!(errs[2].starts_with("`index` cannot be combined with `has_many`"));
        assert!(errs[3].starts_with("`sortable` cannot be combined with `many_to_many`"));
    }

    #[test]
    fn conflicts_are_reported_once_per_pair() {
        let errs = errors(parse_quote! {
            struct S {
                #[cached(pk, has_many = T, via = f, many_to_many = U)]
                id: i64,
            }
        });
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(errs[0].starts_with("`has_many` cannot be combined with `pk`"));
        assert!(errs[1].starts_with("`many_to_many` cannot be combined with `pk`"));
        assert!(errs[2].starts_with("`many_to_many` cannot be combined with `has_many`"));
    }

    #[test]
    fn misplaced_via_and_inverse() {
        let errs = errors(parse_quote! {
            struct S {
                #[cached(pk)] id: i64,
                #[cached(many_to_many = T, via = f)] a: Vec<i64>,
                #[cached(has_many = T, inverse = f)] b: Vec<i64>,
                #[cached(via = f)] c: Vec<i64>,
            }
        });
        assert_eq!(errs.len(), 4, "{errs:#?}");
        assert!(errs[0].starts_with("`many_to_many` names the mirroring field with `inverse`"));
        assert!(errs[1].starts_with("`has_many` needs `via`"));
        assert!(errs[2].starts_with("`has_many` names the foreign key with `via`"));
        assert!(errs[3].starts_with("`via` only goes with `has_many`"));
    }

    #[test]
    fn serde_and_rename_on_keys_and_skips() {
        let errs = errors(parse_quote! {
            struct S {
                #[cached(pk, serde)] id: i64,
                #[cached(skip, serde, rename = "x")] a: u8,
            }
        });
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(errs[0].starts_with("`serde` cannot be combined with `pk`"));
        assert!(errs[1].starts_with("`serde` cannot be combined with `skip`"));
        assert!(errs[2].starts_with("`rename` cannot be combined with `skip`"));
    }

    #[test]
    fn json_name_collisions_ignore_skipped_fields() {
        let errs = errors(parse_quote! {
            struct S {
                #[cached(pk)] id: i64,
                #[cached(rename = "id")] other: i64,
                #[cached(skip)] hidden: i64,
                #[cached(rename = "hidden")] shown: i64,
                r#type: i64,
                #[cached(rename = "type")] kind: i64,
            }
        });
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs[0].starts_with("field `other` would be stored under the JSON name \"id\""));
        assert!(errs[1].starts_with("field `kind` would be stored under the JSON name \"type\""));
    }

    #[test]
    fn primary_keys() {
        let errs = errors(parse_quote! { struct S { a: i64 } });
        assert_eq!(
            errs,
            ["`S` has no primary key; mark the primary key field with `#[cached(pk)]`"]
        );
        let errs = errors(parse_quote! {
            struct S { #[cached(pk)] a: i64, #[cached(pk)] b: i64, #[cached(pk)] c: i64 }
        });
        assert_eq!(errs.len(), 2);
        assert!(errs[0].starts_with("`S` already has a primary key, `a`"));
    }

    #[test]
    fn shapes() {
        for (input, start) in [
            (
                quote::quote!(
                    enum E {
                        A,
                    }
                ),
                "`CachedInstance` can only be derived for structs with named fields, not enums",
            ),
            (
                quote::quote!(union U { a: u8 }),
                "`CachedInstance` can only be derived for structs with named fields, not unions",
            ),
            (
                quote::quote!(
                    struct T(i64);
                ),
                "tuple structs are not supported",
            ),
            (
                quote::quote!(
                    struct U;
                ),
                "unit structs are not supported",
            ),
            (
                quote::quote!(
                    struct G<T> {
                        #[cached(pk)]
                        id: T,
                    }
                ),
                "generic structs are not supported",
            ),
            (
                quote::quote!(
                    struct W
                    where
                        i64: Copy,
                    {
                        #[cached(pk)]
                        id: i64,
                    }
                ),
                "a cached model cannot have a `where` clause",
            ),
        ] {
            let errs = errors(syn::parse2(input).unwrap());
            assert_eq!(errs.len(), 1, "{errs:#?}");
            assert!(errs[0].starts_with(start), "{errs:#?}");
        }
    }
}
