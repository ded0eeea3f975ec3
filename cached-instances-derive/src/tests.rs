//! Expansion snapshots and whole-pipeline tests. Review a changed snapshot
//! as you would review the generated code itself; accept with
//! `INSTA_UPDATE=always cargo test -p cached-instances-derive`.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::{DeriveInput, parse_quote};

use crate::derive;

const POLLS: &str = include_str!("../../examples/polls/models.rs");

fn pretty(tokens: TokenStream) -> String {
    let mut file: syn::File = syn::parse2(tokens).expect("the expansion is valid Rust");
    for item in &mut file.items {
        if let syn::Item::Const(item) = item
            && let syn::Expr::Block(block) = &mut *item.expr
        {
            show_gated_items(&mut block.block.stmts);
        }
    }
    prettyplease::unparse(&file)
}

/// prettyplease leaves macro input unformatted, so the items generated
/// behind `__cached_if_*! { ... }` are shown as `mod __cached_if_* { ... }`
/// in the snapshots (only there) to be readable.
fn show_gated_items(stmts: &mut [syn::Stmt]) {
    for stmt in stmts {
        let mac = match stmt {
            syn::Stmt::Macro(stmt) => &stmt.mac,
            syn::Stmt::Item(syn::Item::Macro(item)) => &item.mac,
            _ => continue,
        };
        let Some(name) = mac.path.segments.last().map(|s| s.ident.clone()) else {
            continue;
        };
        if !name.to_string().starts_with("__cached_if_") {
            continue;
        }
        let body: syn::File = syn::parse2(mac.tokens.clone()).expect("gated items parse");
        let items = body.items;
        *stmt = syn::Stmt::Item(parse_quote!(mod #name { #(#items)* }));
    }
}

/// A model of the polls example, read from the example itself so the
/// snapshots follow it.
fn polls_model(name: &str) -> DeriveInput {
    let file = syn::parse_file(POLLS).expect("the polls models parse");
    file.items
        .into_iter()
        .find_map(|item| match item {
            syn::Item::Struct(item) if item.ident == name => {
                Some(syn::parse2(item.into_token_stream()).expect("a struct is a derive input"))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no struct {name} in examples/polls/models.rs"))
}

#[test]
fn polls_user() {
    insta::assert_snapshot!(pretty(derive(&polls_model("User"))));
}

#[test]
fn polls_question() {
    insta::assert_snapshot!(pretty(derive(&polls_model("Question"))));
}

#[test]
fn polls_choice() {
    insta::assert_snapshot!(pretty(derive(&polls_model("Choice"))));
}

#[test]
fn every_attribute() {
    let input: DeriveInput = parse_quote! {
        #[cached(model = "Article", version = "v2", ttl = 60)]
        #[cached(invalidates_key = "article-list")]
        #[cached(invalidator = crate::hooks::article_targets)]
        pub struct ArticleV2 {
            #[cached(pk, references = Document)]
            pub r#id: String,
            #[cached(rename = "headline")]
            pub title: String,
            #[cached(serde)]
            pub meta: Meta,
            #[cached(skip)]
            pub cache_hint: u32,
            #[cached(references = Self)]
            pub parent: Option<String>,
        }
    };
    insta::assert_snapshot!(pretty(derive(&input)));
}

/// A derived sqlx loader with every kind of field: renamed columns, a
/// serde field, a skipped field, both kinds of lists, one database.
#[test]
fn every_sqlx_attribute() {
    let input: DeriveInput = parse_quote! {
        #[cached(table = "blog.articles", database = "postgres")]
        pub struct Article {
            #[cached(pk, column = "article_id")]
            pub id: uuid::Uuid,
            #[cached(column = "title text")]
            pub title: String,
            #[cached(serde)]
            pub meta: Meta,
            #[cached(skip)]
            pub cache_hint: u32,
            #[cached(references = Self)]
            pub parent: Option<uuid::Uuid>,
            #[cached(has_many = Self, via = parent)]
            pub children: Vec<uuid::Uuid>,
            #[cached(many_to_many = Tag, through = "article_tags", source = "article_id", target = "tag")]
            pub tags: Vec<String>,
        }
    };
    insta::assert_snapshot!(pretty(derive(&input)));
}

/// A rejected model with a table keeps its table metadata and loaders, as
/// stand-ins.
#[test]
fn errors_with_a_table_keep_the_loaders() {
    let input: DeriveInput = parse_quote! {
        #[cached(table = "broken")]
        pub struct Broken {
            #[cached(pk)]
            pub id: i64,
            #[cached(column = "")]
            pub name: String,
        }
    };
    insta::assert_snapshot!(pretty(derive(&input)));
}

#[test]
fn errors_come_with_a_fallback_impl() {
    let input: DeriveInput = parse_quote! {
        #[cached(modle = "X")]
        pub struct Broken {
            #[cached(pk)]
            pub id: i64,
            #[cached(references = Other, skip)]
            pub other_id: i64,
        }
    };
    insta::assert_snapshot!(pretty(derive(&input)));
}

#[test]
fn no_impl_for_generic_input() {
    let input: DeriveInput = parse_quote! {
        pub struct Page<T> { #[cached(pk)] pub id: i64, pub items: Vec<T> }
    };
    let out = derive(&input).to_string();
    assert!(out.contains("compile_error"), "{out}");
    assert!(!out.contains("impl"), "{out}");
}

fn schema_hash(input: DeriveInput) -> u64 {
    let cx = crate::ctxt::Ctxt::new();
    let cont = crate::ast::Container::from_ast(&cx, &input).expect("a struct");
    crate::check::check(&cx, &cont);
    cx.check().expect("a valid model");
    crate::expand::schema_hash(&cont)
}

#[test]
fn schema_hash_follows_the_stored_shape() {
    let base = schema_hash(parse_quote! {
        struct Q { #[cached(pk)] id: i64, text: String }
    });
    let same = [
        // Skipped fields are not stored.
        parse_quote!(
            struct Q {
                #[cached(pk)]
                id: i64,
                text: String,
                #[cached(skip)]
                x: u8,
            }
        ),
        // The Rust name is not part of the representation; the JSON name is.
        parse_quote!(
            struct Q {
                #[cached(pk)]
                id: i64,
                #[cached(rename = "text")]
                body: String,
            }
        ),
        // Nor is the TTL, or the Rust type name when the model is named.
        parse_quote!(
            #[cached(model = "Q", ttl = 5)]
            struct Other {
                #[cached(pk)]
                id: i64,
                text: String,
            }
        ),
    ];
    for input in same {
        assert_eq!(schema_hash(input), base);
    }
    let different = [
        parse_quote!(
            struct Q {
                #[cached(pk)]
                id: i32,
                text: String,
            }
        ),
        parse_quote!(
            struct Q {
                #[cached(pk)]
                id: i64,
                text: Option<String>,
            }
        ),
        parse_quote!(
            struct Q {
                #[cached(pk)]
                id: i64,
                #[cached(rename = "t")]
                text: String,
            }
        ),
        parse_quote!(
            struct Q {
                text: String,
                #[cached(pk)]
                id: i64,
            }
        ),
        parse_quote!(
            struct Q {
                #[cached(pk)]
                id: i64,
                #[cached(serde)]
                text: String,
            }
        ),
        parse_quote!(
            #[cached(version = "v2")]
            struct Q {
                #[cached(pk)]
                id: i64,
                text: String,
            }
        ),
        parse_quote!(
            #[cached(model = "R")]
            struct Q {
                #[cached(pk)]
                id: i64,
                text: String,
            }
        ),
        parse_quote!(
            struct Q {
                #[cached(pk)]
                id: i64,
                text: String,
                n: i64,
            }
        ),
        parse_quote!(
            struct Q {
                #[cached(pk, references = P)]
                id: i64,
                text: String,
            }
        ),
    ];
    for (i, input) in different.into_iter().enumerate() {
        assert_ne!(schema_hash(input), base, "variant {i}");
    }
}

#[test]
fn fnv1a_matches_the_reference_vectors() {
    use crate::expand::fnv1a;
    assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a(b"foobar"), 0x85944171f73967e8);
}

/// Whatever the input, the derive returns tokens (errors included) and
/// never panics.
#[test]
fn odd_inputs_do_not_panic() {
    let inputs: Vec<TokenStream> = vec![
        quote::quote!(
            struct S {}
        ),
        quote::quote!(
            struct S {
                #[cached()]
                #[cached(pk)]
                a: i64,
            }
        ),
        quote::quote!(
            struct S {
                #[cached(pk,,)]
                a: i64,
            }
        ),
        quote::quote!(
            struct S {
                #[cached(pk = )]
                a: i64,
            }
        ),
        quote::quote!(
            struct S {
                #[cached = "pk"]
                a: i64,
            }
        ),
        quote::quote!(
            struct S {
                #[cached(pk)]
                a: i64,
                #[cached(references)]
                b: i64,
            }
        ),
        quote::quote!(
            struct S {
                #[cached(pk)]
                a: i64,
                #[cached(references = )]
                b: i64,
            }
        ),
        quote::quote!(
            struct S {
                #[cached(pk)]
                a: i64,
                #[cached(has_many = 5)]
                b: i64,
            }
        ),
        quote::quote!(
            struct S {
                #[cached(pk)]
                a: i64,
                #[cached(via = 5, inverse = "x")]
                b: i64,
            }
        ),
        quote::quote!(
            struct S {
                #[cached(pk)]
                a: i64,
                #[cached(rename = "")]
                b: i64,
            }
        ),
        quote::quote!(
            struct S {
                #[cached(pk)]
                a: i64,
                #[cached(rename = b"x")]
                b: i64,
            }
        ),
        quote::quote!(
            #[cached(invalidator = )]
            struct S {
                #[cached(pk)]
                a: i64,
            }
        ),
        quote::quote!(
            #[cached(invalidates_key = "")]
            struct S {
                #[cached(pk)]
                a: i64,
            }
        ),
        quote::quote!(
            #[cached(invalidates_key = "k", invalidates_key = "k")]
            struct S {
                #[cached(pk)]
                a: i64,
            }
        ),
        quote::quote!(
            #[cached(model = "a", model = "b", model = 3)]
            struct S {
                #[cached(pk)]
                a: i64,
            }
        ),
        quote::quote!(
            #[cached(ttl = 18446744073709551615)]
            struct S {
                #[cached(pk)]
                a: i64,
            }
        ),
        quote::quote!(
            struct S<'a> {
                #[cached(pk)]
                a: &'a str,
            }
        ),
        quote::quote!(
            struct S<const N: usize> {
                #[cached(pk)]
                a: [u8; N],
            }
        ),
        quote::quote!(
            enum E {
                A {
                    #[cached(pk)]
                    id: i64,
                },
            }
        ),
        quote::quote!(
            #[cached(table)]
            struct S {
                #[cached(pk)]
                a: i64,
            }
        ),
        quote::quote!(
            #[cached(table = 5, database = sqlite)]
            struct S {
                #[cached(pk, column)]
                a: i64,
            }
        ),
        quote::quote!(
            #[cached(table = "t")]
            struct S {
                #[cached(column = "a")]
                a: i64,
                #[cached(many_to_many = S, through = "", source = "", target = "")]
                b: Vec<i64>,
            }
        ),
    ];
    for tokens in inputs {
        let input: DeriveInput = syn::parse2(tokens.clone()).expect("valid derive input");
        let out = derive(&input);
        syn::parse2::<syn::File>(out.clone())
            .unwrap_or_else(|e| panic!("{tokens}: invalid output {e}: {out}"));
    }
}
