//! Parsing of `#[cached(...)]` into plain values. Only the syntax of each
//! item is checked here; how items combine is `check`'s job.
//!
//! Every item keeps the keyword token it was written with, so that later
//! errors can point at exactly what the user typed.

use proc_macro2::{TokenStream, TokenTree};
use quote::quote;
use syn::meta::ParseNestedMeta;
use syn::parse::ParseStream;
use syn::{Attribute, Ident, Lit, LitInt, LitStr, Meta, Path, Token, Type};

use crate::ctxt::Ctxt;
use crate::suggest;

pub(crate) const CONTAINER_ATTRS: &[&str] = &[
    "model",
    "version",
    "ttl",
    "invalidates_key",
    "invalidator",
    "table",
    "database",
];

pub(crate) const FIELD_ATTRS: &[&str] = &[
    "pk",
    "references",
    "has_many",
    "via",
    "many_to_many",
    "inverse",
    "skip",
    "rename",
    "serde",
    "column",
    "through",
    "source",
    "target",
    "index",
    "sortable",
    "search",
];

/// How the join-table attributes of a `many_to_many` are written.
pub(crate) const THROUGH_EXAMPLE: &str =
    "many_to_many = User, through = \"votes\", source = \"choice_id\", target = \"user_id\"";

/// An attribute value together with the keyword that introduced it.
pub(crate) struct Item<T> {
    pub(crate) keyword: Ident,
    pub(crate) value: T,
}

#[derive(Default)]
pub(crate) struct Container {
    pub(crate) model: Option<Item<LitStr>>,
    pub(crate) version: Option<Item<LitStr>>,
    /// The literal, for spans, and its value in seconds.
    pub(crate) ttl: Option<Item<(LitInt, u64)>>,
    pub(crate) invalidates_keys: Vec<Item<LitStr>>,
    pub(crate) invalidator: Option<Item<Path>>,
    /// The database table, which turns on the derived sqlx loaders.
    pub(crate) table: Option<Item<LitStr>>,
    /// The one database to derive a loader for (default: every enabled one).
    pub(crate) database: Option<Item<LitStr>>,
}

#[derive(Default)]
pub(crate) struct Field {
    pub(crate) pk: Option<Ident>,
    pub(crate) references: Option<Item<Type>>,
    pub(crate) has_many: Option<Item<Type>>,
    pub(crate) via: Option<Item<Ident>>,
    pub(crate) many_to_many: Option<Item<Type>>,
    pub(crate) inverse: Option<Item<Ident>>,
    pub(crate) skip: Option<Ident>,
    pub(crate) rename: Option<Item<LitStr>>,
    pub(crate) serde: Option<Ident>,
    /// The field's column, when it is not the field's name.
    pub(crate) column: Option<Item<LitStr>>,
    /// The join table of a `many_to_many`, with its column pointing at this
    /// model (`source`) and the one pointing at the related model (`target`).
    pub(crate) through: Option<Item<LitStr>>,
    pub(crate) source: Option<Item<LitStr>>,
    pub(crate) target: Option<Item<LitStr>>,
    /// Query indexes: exact match, ranges and ordering, full-text search.
    pub(crate) index: Option<Ident>,
    pub(crate) sortable: Option<Ident>,
    pub(crate) search: Option<Ident>,
    /// Some item could not be read. What it said is unknown (it may have
    /// been a misspelled `pk`), so checks that rely on an item's absence
    /// stay quiet rather than pile on.
    pub(crate) unreadable: bool,
}

pub(crate) fn container(cx: &Ctxt, attrs: &[Attribute]) -> Container {
    let mut out = Container::default();
    each_item(cx, attrs, |keyword, meta| {
        match keyword.to_string().as_str() {
            "model" => {
                let lit = string_value(meta, "model = \"Question\"")?;
                set(cx, &mut out.model, keyword, lit);
            }
            "version" => {
                let lit = string_value(meta, "version = \"v2\"")?;
                set(cx, &mut out.version, keyword, lit);
            }
            "ttl" => {
                let ttl = ttl_value(meta)?;
                set(cx, &mut out.ttl, keyword, ttl);
            }
            "invalidates_key" => {
                let lit = string_value(meta, "invalidates_key = \"question-list\"")?;
                // Repeatable: each occurrence adds a key.
                out.invalidates_keys.push(Item {
                    keyword: keyword.clone(),
                    value: lit,
                });
            }
            "invalidator" => {
                let path = path_value(meta)?;
                set(cx, &mut out.invalidator, keyword, path);
            }
            "table" => {
                let lit = string_value(meta, "table = \"questions\"")?;
                set(cx, &mut out.table, keyword, lit);
            }
            "database" => {
                let lit = string_value(meta, "database = \"postgres\"")?;
                set(cx, &mut out.database, keyword, lit);
            }
            name if FIELD_ATTRS.contains(&name) => {
                return Err(syn::Error::new(
                    keyword.span(),
                    format!(
                        "`{name}` is a field attribute; put `#[cached({name})]` on the field \
                         instead of the struct"
                    ),
                ));
            }
            name => return Err(unknown(keyword, name, "container", CONTAINER_ATTRS)),
        }
        Ok(())
    });
    out
}

pub(crate) fn field(cx: &Ctxt, attrs: &[Attribute]) -> Field {
    let mut out = Field::default();
    let readable = each_item(cx, attrs, |keyword, meta| {
        match keyword.to_string().as_str() {
            "pk" => {
                flag(keyword, meta)?;
                set_flag(cx, &mut out.pk, keyword);
            }
            "skip" => {
                flag(keyword, meta)?;
                set_flag(cx, &mut out.skip, keyword);
            }
            "serde" => {
                flag(keyword, meta)?;
                set_flag(cx, &mut out.serde, keyword);
            }
            "index" => {
                flag(keyword, meta)?;
                set_flag(cx, &mut out.index, keyword);
            }
            "sortable" => {
                flag(keyword, meta)?;
                set_flag(cx, &mut out.sortable, keyword);
            }
            "search" => {
                flag(keyword, meta)?;
                set_flag(cx, &mut out.search, keyword);
            }
            "references" => {
                let ty = type_value(meta, "references")?;
                set(cx, &mut out.references, keyword, ty);
            }
            "has_many" => {
                let ty = type_value(meta, "has_many")?;
                set(cx, &mut out.has_many, keyword, ty);
            }
            "many_to_many" => {
                let ty = type_value(meta, "many_to_many")?;
                set(cx, &mut out.many_to_many, keyword, ty);
            }
            "via" => {
                let ident = ident_value(meta, "via")?;
                set(cx, &mut out.via, keyword, ident);
            }
            "inverse" => {
                let ident = ident_value(meta, "inverse")?;
                set(cx, &mut out.inverse, keyword, ident);
            }
            "rename" => {
                let lit = string_value(meta, "rename = \"jsonName\"")?;
                if lit.value().is_empty() {
                    return Err(syn::Error::new(
                        lit.span(),
                        "the JSON name must not be empty; write `rename = \"name\"` or remove \
                         `rename` to keep the field's name",
                    ));
                }
                set(cx, &mut out.rename, keyword, lit);
            }
            "column" => {
                let lit = string_value(meta, "column = \"question_text\"")?;
                set(cx, &mut out.column, keyword, lit);
            }
            "through" => {
                let lit = string_value(meta, THROUGH_EXAMPLE)?;
                set(cx, &mut out.through, keyword, lit);
            }
            "source" => {
                let lit = string_value(meta, THROUGH_EXAMPLE)?;
                set(cx, &mut out.source, keyword, lit);
            }
            "target" => {
                let lit = string_value(meta, THROUGH_EXAMPLE)?;
                set(cx, &mut out.target, keyword, lit);
            }
            name if CONTAINER_ATTRS.contains(&name) => {
                return Err(syn::Error::new(
                    keyword.span(),
                    format!(
                        "`{name}` is a container attribute; put `#[cached({name} = ...)]` on the \
                         struct instead of a field"
                    ),
                ));
            }
            name => return Err(unknown(keyword, name, "field", FIELD_ATTRS)),
        }
        Ok(())
    });
    out.unreadable = !readable;
    out
}

/// Runs `item` on every `key` / `key = value` inside every `#[cached(...)]`.
/// A bad item is recorded and skipped, so the items after it are still
/// checked. Returns whether every item was read.
fn each_item(
    cx: &Ctxt,
    attrs: &[Attribute],
    mut item: impl FnMut(&Ident, &ParseNestedMeta) -> syn::Result<()>,
) -> bool {
    let mut ok = true;
    for attr in attrs {
        if !attr.path().is_ident("cached") {
            continue;
        }
        if !matches!(attr.meta, Meta::List(_)) {
            cx.error_spanned_by(
                attr,
                "expected a list of options: `#[cached(pk)]`, `#[cached(model = \"Name\")]`, ...",
            );
            ok = false;
            continue;
        }
        let result = attr.parse_nested_meta(|meta| {
            let Some(keyword) = meta.path.get_ident() else {
                cx.error_spanned_by(
                    &meta.path,
                    "expected a single attribute name such as `pk` or `model`, not a path",
                );
                ok = false;
                return skip_value(meta.input);
            };
            if let Err(err) = item(keyword, &meta) {
                cx.syn_error(err);
                ok = false;
                skip_value(meta.input)?;
            }
            Ok(())
        });
        if let Err(err) = result {
            cx.syn_error(err);
            ok = false;
        }
    }
    ok
}

/// Consumes the rest of the current item, up to the next top-level comma.
fn skip_value(input: ParseStream) -> syn::Result<()> {
    while !input.is_empty() && !input.peek(Token![,]) {
        input.parse::<TokenTree>()?;
    }
    Ok(())
}

fn set<T>(cx: &Ctxt, slot: &mut Option<Item<T>>, keyword: &Ident, value: T) {
    if slot.is_some() {
        cx.error_spanned_by(keyword, duplicate(keyword));
    } else {
        *slot = Some(Item {
            keyword: keyword.clone(),
            value,
        });
    }
}

fn set_flag(cx: &Ctxt, slot: &mut Option<Ident>, keyword: &Ident) {
    if slot.is_some() {
        cx.error_spanned_by(keyword, duplicate(keyword));
    } else {
        *slot = Some(keyword.clone());
    }
}

fn duplicate(keyword: &Ident) -> String {
    format!("duplicate `{keyword}` attribute; remove this one")
}

fn unknown(keyword: &Ident, name: &str, kind: &str, known: &[&str]) -> syn::Error {
    let expected = known
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let message = match suggest::closest(name, known) {
        Some(hint) => format!(
            "unknown {kind} attribute `{name}`; did you mean `{hint}`? (expected one of \
             {expected})"
        ),
        None => format!("unknown {kind} attribute `{name}`; expected one of {expected}"),
    };
    syn::Error::new(keyword.span(), message)
}

fn flag(keyword: &Ident, meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.is_empty() || meta.input.peek(Token![,]) {
        return Ok(());
    }
    let mut value = TokenStream::new();
    while !meta.input.is_empty() && !meta.input.peek(Token![,]) {
        value.extend([meta.input.parse::<TokenTree>()?]);
    }
    Err(syn::Error::new_spanned(
        quote!(#keyword #value),
        format!("`{keyword}` takes no value; write `#[cached({keyword})]`"),
    ))
}

fn string_value(meta: &ParseNestedMeta, example: &str) -> syn::Result<LitStr> {
    let input = expect_eq(meta, example)?;
    if input.peek(LitStr) {
        return input.parse();
    }
    let found: TokenTree = input.parse()?;
    Err(syn::Error::new(
        found.span(),
        format!("expected a string literal: `{example}`"),
    ))
}

fn ttl_value(meta: &ParseNestedMeta) -> syn::Result<(LitInt, u64)> {
    let input = expect_eq(meta, "ttl = 300")?;
    let lit = match input.parse::<Lit>() {
        Ok(Lit::Int(lit)) => lit,
        Ok(other) => {
            return Err(syn::Error::new(
                other.span(),
                "`ttl` is a whole number of seconds, without quotes or units: e.g. `ttl = 300` \
                 for five minutes",
            ));
        }
        Err(err) => {
            return Err(syn::Error::new(
                err.span(),
                "expected a whole number of seconds: `ttl = 300`",
            ));
        }
    };
    if !matches!(lit.suffix(), "" | "u64") {
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "`ttl` takes a plain number of seconds; remove the `{}` suffix",
                lit.suffix()
            ),
        ));
    }
    if lit.base10_digits().starts_with('-') {
        return Err(syn::Error::new(
            lit.span(),
            "`ttl` must be a positive number of seconds, e.g. `ttl = 300`",
        ));
    }
    let secs: u64 = lit.base10_parse().map_err(|_| {
        syn::Error::new(
            lit.span(),
            "`ttl` is too large: it must fit in a u64 number of seconds",
        )
    })?;
    if secs == 0 {
        return Err(syn::Error::new(
            lit.span(),
            "`ttl` must be at least 1 second; remove `ttl` to use the cache's default time to live",
        ));
    }
    Ok((lit, secs))
}

fn path_value(meta: &ParseNestedMeta) -> syn::Result<Path> {
    const EXAMPLE: &str = "invalidator = crate::invalidate_question";
    let input = expect_eq(meta, EXAMPLE)?;
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        return Err(syn::Error::new(
            lit.span(),
            format!("expected a path to a function, without quotes: `{EXAMPLE}`"),
        ));
    }
    input.parse().map_err(|err| {
        syn::Error::new(
            err.span(),
            format!("expected a path to a function: `{EXAMPLE}`"),
        )
    })
}

fn type_value(meta: &ParseNestedMeta, name: &str) -> syn::Result<Type> {
    let example = match name {
        "has_many" => "has_many = Choice, via = question_id",
        "many_to_many" => "many_to_many = User, inverse = votes",
        _ => "references = Question",
    };
    let input = expect_eq(meta, example)?;
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        return Err(syn::Error::new(
            lit.span(),
            format!("expected the related model's type, without quotes: `{example}`"),
        ));
    }
    input.parse().map_err(|err| {
        syn::Error::new(
            err.span(),
            format!("expected the related model's type: `{example}`"),
        )
    })
}

fn ident_value(meta: &ParseNestedMeta, name: &str) -> syn::Result<Ident> {
    let example = match name {
        "via" => "has_many = Choice, via = question_id",
        _ => "many_to_many = User, inverse = votes",
    };
    let input = expect_eq(meta, example)?;
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        return Err(syn::Error::new(
            lit.span(),
            format!("expected a field name, without quotes: `{example}`"),
        ));
    }
    input.parse().map_err(|err| {
        syn::Error::new(
            err.span(),
            format!("expected a field name of the related model: `{example}`"),
        )
    })
}

/// Consumes the `=` of `key = value`, with an example in the error.
fn expect_eq<'a>(meta: &ParseNestedMeta<'a>, example: &str) -> syn::Result<ParseStream<'a>> {
    if meta.input.peek(Token![=]) {
        meta.value()
    } else {
        Err(meta.error(format!("expected a value: `{example}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::ToTokens;
    use syn::parse_quote;

    fn errors(cx: Ctxt) -> Vec<String> {
        match cx.check() {
            Ok(()) => Vec::new(),
            Err(err) => err.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    fn tokens(t: impl ToTokens) -> String {
        t.into_token_stream().to_string()
    }

    #[test]
    fn field_items_across_attributes() {
        let cx = Ctxt::new();
        let attrs: Vec<Attribute> = vec![
            parse_quote!(#[cached(has_many = crate::Choice, via = question_id)]),
            parse_quote!(#[doc = "not ours"]),
            parse_quote!(#[serde(rename = "not ours either")]),
            parse_quote!(#[cached(rename = "choiceIds",)]),
        ];
        let f = field(&cx, &attrs);
        assert_eq!(errors(cx), Vec::<String>::new());
        let has_many = f.has_many.unwrap();
        assert_eq!(has_many.keyword, "has_many");
        assert_eq!(tokens(&has_many.value), "crate :: Choice");
        assert_eq!(f.via.unwrap().value, "question_id");
        assert_eq!(f.rename.unwrap().value.value(), "choiceIds");
        assert!(f.pk.is_none() && f.skip.is_none() && f.serde.is_none());
    }

    #[test]
    fn generic_relation_targets_and_raw_idents() {
        let cx = Ctxt::new();
        let attrs: Vec<Attribute> =
            vec![parse_quote!(#[cached(many_to_many = models::Tag<V2>, inverse = r#type)])];
        let f = field(&cx, &attrs);
        assert_eq!(errors(cx), Vec::<String>::new());
        assert_eq!(
            tokens(&f.many_to_many.unwrap().value),
            "models :: Tag < V2 >"
        );
        assert_eq!(f.inverse.unwrap().value.to_string(), "r#type");
    }

    #[test]
    fn flags_take_no_value() {
        let cx = Ctxt::new();
        let f = field(&cx, &[parse_quote!(#[cached(pk = true, serde)])]);
        assert_eq!(errors(cx), ["`pk` takes no value; write `#[cached(pk)]`"]);
        // The item after the bad one is still read.
        assert!(f.serde.is_some());
    }

    #[test]
    fn every_bad_item_is_reported() {
        let cx = Ctxt::new();
        field(
            &cx,
            &[
                parse_quote!(#[cached(primary_key, skip, skip)]),
                parse_quote!(#[cached(rename = name, via = "f", model = "M")]),
                parse_quote!(#[cached]),
            ],
        );
        let errors = errors(cx);
        assert_eq!(errors.len(), 6, "{errors:#?}");
        assert!(errors[0].starts_with("unknown field attribute `primary_key`; did you mean `pk`?"));
        assert_eq!(errors[1], "duplicate `skip` attribute; remove this one");
        assert_eq!(
            errors[2],
            "expected a string literal: `rename = \"jsonName\"`"
        );
        assert_eq!(
            errors[3],
            "expected a field name, without quotes: `has_many = Choice, via = question_id`"
        );
        assert!(errors[4].starts_with("`model` is a container attribute"));
        assert!(errors[5].starts_with("expected a list of options"));
    }

    #[test]
    fn container_items() {
        let cx = Ctxt::new();
        let c = container(
            &cx,
            &[
                parse_quote!(#[cached(model = "Question", version = "v2", ttl = 300)]),
                parse_quote!(#[cached(invalidates_key = "a", invalidates_key = "b")]),
                parse_quote!(#[cached(invalidator = crate::hooks::on_write)]),
            ],
        );
        assert_eq!(errors(cx), Vec::<String>::new());
        assert_eq!(c.model.unwrap().value.value(), "Question");
        assert_eq!(c.version.unwrap().value.value(), "v2");
        assert_eq!(c.ttl.unwrap().value.1, 300);
        let keys: Vec<String> = c.invalidates_keys.iter().map(|k| k.value.value()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(
            tokens(c.invalidator.unwrap().value),
            "crate :: hooks :: on_write"
        );
    }

    #[test]
    fn ttl_values() {
        for (attr, expected) in [
            (quote::quote!(#[cached(ttl = 60u64)]), None),
            (
                quote::quote!(#[cached(ttl = 0)]),
                Some("`ttl` must be at least 1 second"),
            ),
            (
                quote::quote!(#[cached(ttl = -5)]),
                Some("must be a positive number"),
            ),
            (
                quote::quote!(#[cached(ttl = five)]),
                Some("expected a whole number of seconds"),
            ),
            (
                quote::quote!(#[cached(ttl = "60")]),
                Some("without quotes or units"),
            ),
            (
                quote::quote!(#[cached(ttl = 1.5)]),
                Some("without quotes or units"),
            ),
            (
                quote::quote!(#[cached(ttl = 60i32)]),
                Some("remove the `i32` suffix"),
            ),
            (
                quote::quote!(#[cached(ttl = 99999999999999999999999)]),
                Some("must fit in a u64"),
            ),
            (
                quote::quote!(#[cached(ttl)]),
                Some("expected a value: `ttl = 300`"),
            ),
        ] {
            let cx = Ctxt::new();
            let attr: Attribute = parse_quote!(#attr);
            let c = container(&cx, &[attr]);
            let errors = errors(cx);
            match expected {
                None => {
                    assert_eq!(errors, Vec::<String>::new());
                    assert_eq!(c.ttl.unwrap().value.1, 60);
                }
                Some(text) => {
                    assert_eq!(errors.len(), 1, "{errors:?}");
                    assert!(
                        errors[0].contains(text),
                        "{errors:?} should contain {text:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn container_rejects_field_attributes_and_typos() {
        let cx = Ctxt::new();
        container(
            &cx,
            &[parse_quote!(#[cached(pk, modle = "X", invalidator = "f", a::b = 1)])],
        );
        let errors = errors(cx);
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(errors[0].starts_with("`pk` is a field attribute"));
        assert!(
            errors[1].starts_with("unknown container attribute `modle`; did you mean `model`?")
        );
        assert!(errors[2].starts_with("expected a path to a function, without quotes"));
        assert!(errors[3].starts_with("expected a single attribute name"));
    }
}
