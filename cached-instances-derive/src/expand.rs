//! Code generation for a checked model.
//!
//! Every library path goes through `::cached_instances::__private`, so the
//! output neither depends on what the user imported nor on the user's crate
//! depending on serde itself. Assertions are spanned at the user's tokens:
//! when a type does not fit, rustc's error (carrying the runtime crate's
//! `on_unimplemented` text) lands on the attribute or field that is wrong.

use proc_macro2::{Group, Literal, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use crate::ast::{Container, Field, Relation, Storage};

pub(crate) mod feed;
pub(crate) mod sqlx;

pub(crate) fn private() -> TokenStream {
    quote!(::cached_instances::__private)
}

pub(crate) fn expand(cont: &Container) -> syn::Result<TokenStream> {
    let Some(pk) = cont.pk() else {
        // `check` reports a missing pk before we get here.
        return Err(syn::Error::new_spanned(cont.ident, "missing #[cached(pk)]"));
    };
    let p = private();
    let ident = cont.ident;
    let model = cont.model();

    let pk_ident = pk.ident;
    let pk_ty = &pk.ty;
    // Spanned so that a type that cannot be a primary key is reported at the
    // field's type, with `PrimaryKey`'s message.
    let pk_assoc = quote_spanned!(pk_ty.span()=> type Pk = #pk_ty;);

    let schema = schema(cont);
    let serialize = serialize(cont);
    let deserialize = deserialize(cont);
    let relation_links = relation_links(cont);
    let extra_targets = extra_targets(cont);
    let via_impls = via_impls(cont);
    let assertions = assertions(cont);
    let table_impls = sqlx::table_impls(cont);
    let table_imports = if cont.attrs.table.is_some() {
        quote! {
            use #p::{
                ColumnName as _, ColumnNameFallback as _, JsonFieldDecode as _,
                JsonFieldFallback as _, ListFromPks as _, ListFromPksFallback as _,
                TableNames as _, TableNamesFallback as _,
            };
        }
    } else {
        TokenStream::new()
    };
    let loaders = cont
        .databases()
        .into_iter()
        .map(|database| sqlx::loader(cont, pk, database));
    let index_methods = index_methods(cont);
    let index_imports = if cont.fields.iter().any(Field::is_indexed) {
        quote! {
            use #p::{
                ParseScore as _, ParseScoreFallback as _, ParseTerm as _, ParseTermFallback as _,
                ScoreOf as _, ScoreOfFallback as _, TermOf as _, TermOfFallback as _,
                TextOf as _, TextOfFallback as _,
            };
        }
    } else {
        TokenStream::new()
    };

    // The dispatch traits are imported because autoref dispatch only works
    // through method-call syntax (see `__private/fields.rs` in the runtime crate).
    Ok(quote! {
        #[allow(non_upper_case_globals, non_camel_case_types, unused_imports, unused_qualifications)]
        const _: () = {
            use #p::{
                DecodeCodec as _, DecodeFallback as _, DecodeSerde as _, EncodeCodec as _,
                EncodeFallback as _, EncodeSerde as _, PushLinks as _, PushLinksFallback as _,
                SkipDefault as _, SkipFallback as _, CopyClone as _, CopyFallback as _,
            };
            #table_imports
            #index_imports

            #[automatically_derived]
            impl #p::CachedInstance for #ident {
                #pk_assoc
                const MODEL: &'static str = #model;
                #schema

                #[inline]
                fn pk(&self) -> &Self::Pk {
                    &self.#pk_ident
                }

                fn encode(&self, out: &mut #p::Vec<u8>) -> #p::Result<(), #p::EncodeError> {
                    #p::serde_json::to_writer(out, &__Ser(self)).map_err(|error| {
                        #p::EncodeError::new(<Self as #p::CachedInstance>::MODEL, error)
                    })
                }

                #[inline]
                fn __copy_for_fill(&self) -> #p::Option<Self> {
                    #p::CopyOf(self).__cached_copy()
                }

                fn decode(bytes: &[u8]) -> #p::Result<Self, #p::DecodeError> {
                    match #p::serde_json::from_slice::<__De>(bytes) {
                        #p::Result::Ok(__De(value)) => #p::Result::Ok(value),
                        #p::Result::Err(error) => #p::Result::Err(#p::DecodeError::new(
                            <Self as #p::CachedInstance>::MODEL,
                            error,
                        )),
                    }
                }

                #relation_links
                #extra_targets
                #index_methods
            }

            #serialize
            #deserialize
            #via_impls
            #assertions
            #table_impls
            #(#loaders)*
        };
    })
}

fn schema(cont: &Container) -> TokenStream {
    let p = private();
    let version = cont.version();
    let hash = Literal::u64_suffixed(schema_hash(cont));
    let ttl = match &cont.attrs.ttl {
        Some(item) => {
            let secs = Literal::u64_suffixed(item.value.1);
            quote!(#p::Option::Some(#p::Duration::from_secs(#secs)))
        }
        None => quote!(#p::Option::None),
    };
    let relations = cont.fields.iter().filter_map(|field| {
        let relation = field.relation()?;
        let name = &field.name;
        let (target, kind) = match relation {
            Relation::References(target) => (target, quote!(#p::RelationKind::References)),
            Relation::HasMany { target, via } => {
                let via = unraw(via);
                (target, quote!(#p::RelationKind::HasMany { via: #via }))
            }
            Relation::ManyToMany { target, inverse } => {
                let inverse = match inverse {
                    Some(inverse) => {
                        let inverse = unraw(inverse);
                        quote!(#p::Option::Some(#inverse))
                    }
                    None => quote!(#p::Option::None),
                };
                (
                    target,
                    quote!(#p::RelationKind::ManyToMany { inverse: #inverse }),
                )
            }
        };
        // `MODEL`, not `SCHEMA.model`: two models naming each other would
        // otherwise make their SCHEMA constants depend on each other.
        let target_model = quote_spanned!(target.span()=>
            <#target as #p::CachedInstance>::MODEL
        );
        Some(quote!(#p::Relation::new(#name, #target_model, #kind)))
    });
    let keys = cont.attrs.invalidates_keys.iter().map(|item| &item.value);
    let indexes: Vec<TokenStream> = cont
        .fields
        .iter()
        .filter(|field| field.is_indexed())
        .map(|field| {
            let a = &field.attrs;
            let name = &field.name;
            let json = field.json_name();
            let column = field.column();
            let [exact, sortable, search] =
                [&a.index, &a.sortable, &a.search].map(|flag| flag.is_some());
            quote!(#p::IndexField::new(#name, #json, #column, #exact, #sortable, #search))
        })
        .collect();
    let with_indexes = if indexes.is_empty() {
        TokenStream::new()
    } else {
        quote!(.with_indexes(&[#(#indexes),*]))
    };
    let with_capture = feed::with_capture(cont);
    quote! {
        const SCHEMA: #p::Schema = #p::Schema::new(
            <Self as #p::CachedInstance>::MODEL,
            #version,
            #hash,
            #ttl,
            &[#(#relations),*],
            &[#(#keys),*],
        )#with_indexes #with_capture;
    }
}

/// `index_values`, `parse_index_term` and `parse_index_score` for the
/// fields declared `index`, `sortable` or `search` (nothing when there are
/// none: the trait's defaults). Each field's type is read through autoref
/// dispatch, so a type without the trait the attribute needs fails once, at
/// the assertion `assertions` emits.
fn index_methods(cont: &Container) -> TokenStream {
    let p = private();
    let indexed: Vec<&Field> = cont.fields.iter().filter(|f| f.is_indexed()).collect();
    if indexed.is_empty() {
        return TokenStream::new();
    }
    let mut values = Vec::new();
    let mut terms = Vec::new();
    let mut scores = Vec::new();
    for (i, field) in indexed.iter().enumerate() {
        let i = Literal::usize_unsuffixed(i);
        let member = field.ident;
        let ty = &field.ty;
        let a = &field.attrs;
        let serde = field.storage() == Storage::Serde;
        if a.index.is_some() {
            if serde {
                values.push(quote! {
                    #p::IndexValues::set_term(__out, #i, #p::SerdeTermField(&self.#member).__cached_term());
                });
                terms.push(
                    quote!(#i => #p::SerdeTermParser::<#ty>::new().__cached_parse_term(text),),
                );
            } else {
                values.push(quote! {
                    #p::IndexValues::set_term(__out, #i, #p::TermField(&self.#member).__cached_term());
                });
                terms.push(quote!(#i => #p::TermParser::<#ty>::new().__cached_parse_term(text),));
            }
        }
        if a.sortable.is_some() {
            values.push(quote! {
                #p::IndexValues::set_score(__out, #i, #p::ScoreField(&self.#member).__cached_score());
            });
            scores.push(quote!(#i => #p::ScoreParser::<#ty>::new().__cached_parse_score(text),));
        }
        if a.search.is_some() {
            values.push(quote! {
                {
                    let mut __text = #p::String::new();
                    #p::TextField(&self.#member).__cached_text(&mut __text);
                    #p::IndexValues::set_text(__out, #i, &__text);
                }
            });
        }
    }
    quote! {
        fn index_values(&self, __out: &mut #p::IndexValues) {
            #(#values)*
        }

        fn parse_index_term(field: usize, text: &str) -> #p::Option<#p::String> {
            match field {
                #(#terms)*
                _ => #p::Option::None,
            }
        }

        fn parse_index_score(field: usize, text: &str) -> #p::Option<f64> {
            match field {
                #(#scores)*
                _ => #p::Option::None,
            }
        }
    }
}

/// Changes whenever the stored shape or the relations change, so a new build
/// never reads entries written by an old one. Skipped fields are left out:
/// they do not change the representation.
pub(crate) fn schema_hash(cont: &Container) -> u64 {
    let mut text = String::new();
    let mut push = |part: &str| {
        text.push_str(part);
        // A separator no identifier or type contains, so ("ab", "c") and
        // ("a", "bc") hash differently.
        text.push('\0');
    };
    push(&cont.model());
    push(&cont.version());
    for field in &cont.fields {
        let storage = field.storage();
        if storage == Storage::Skip {
            continue;
        }
        push(&field.json_name());
        push(&field.ty.to_token_stream().to_string());
        push(if field.attrs.pk.is_some() {
            "pk"
        } else if storage == Storage::Serde {
            "serde"
        } else {
            "codec"
        });
        match field.relation() {
            None => push("-"),
            Some(Relation::References(target)) => {
                push("references");
                push(&target.to_token_stream().to_string());
            }
            Some(Relation::HasMany { target, via }) => {
                push("has_many");
                push(&target.to_token_stream().to_string());
                push(&unraw(via));
            }
            Some(Relation::ManyToMany { target, inverse }) => {
                push("many_to_many");
                push(&target.to_token_stream().to_string());
                push(&inverse.map(unraw).unwrap_or_default());
            }
        }
    }
    fnv1a(text.as_bytes())
}

fn stored<'c, 'a>(cont: &'c Container<'a>) -> impl Iterator<Item = &'c Field<'a>> {
    cont.fields
        .iter()
        .filter(|field| field.storage() != Storage::Skip)
}

fn serialize(cont: &Container) -> TokenStream {
    let p = private();
    let ident = cont.ident;
    let name = ident.to_string();
    let len = stored(cont).count();
    let fields = stored(cont).map(|field| {
        let json = field.json_name();
        let member = field.ident;
        // See `__private/fields.rs` in the runtime crate for why the dispatch.
        let value = match field.storage() {
            Storage::Serde => quote!(&#p::SerdeField(&self.0.#member).__cached_encoder()),
            _ => quote!(&#p::CodecField(&self.0.#member).__cached_encoder()),
        };
        quote! {
            #p::serde::ser::SerializeStruct::serialize_field(&mut __state, #json, #value)?;
        }
    });
    quote! {
        struct __Ser<'a>(&'a #ident);

        #[automatically_derived]
        impl #p::serde::Serialize for __Ser<'_> {
            fn serialize<__S>(&self, __serializer: __S) -> #p::Result<__S::Ok, __S::Error>
            where
                __S: #p::serde::Serializer,
            {
                let mut __state =
                    #p::serde::Serializer::serialize_struct(__serializer, #name, #len)?;
                #(#fields)*
                #p::serde::ser::SerializeStruct::end(__state)
            }
        }
    }
}

fn deserialize(cont: &Container) -> TokenStream {
    let p = private();
    let ident = cont.ident;
    let name = ident.to_string();
    let stored: Vec<&Field> = stored(cont).collect();
    let variants: Vec<_> = (0..stored.len())
        .map(|i| format_ident!("__field{}", i))
        .collect();
    let json_names: Vec<String> = stored.iter().map(|field| field.json_name()).collect();
    let json_bytes = json_names
        .iter()
        .map(|name| Literal::byte_string(name.as_bytes()));
    let expecting_field = format!("a field of a cached `{name}`");
    let expecting = format!("a cached `{name}`");

    let next_values = stored.iter().map(|field| {
        let ty = &field.ty;
        let seed = match field.storage() {
            Storage::Serde => quote!(#p::SerdeSeed::<#ty>::new().__cached_seed()),
            _ => quote!(#p::CodecSeed::<#ty>::new().__cached_seed()),
        };
        quote!(#p::serde::de::MapAccess::next_value_seed(&mut __map, #seed)?)
    });
    let types = stored.iter().map(|field| &field.ty);
    let members = stored.iter().map(|field| field.ident);
    let skipped = cont
        .fields
        .iter()
        .filter(|field| field.storage() == Storage::Skip)
        .map(|field| {
            let member = field.ident;
            let ty = &field.ty;
            quote! {
                #member: match #p::SkipField::<#ty>::new().__cached_default() {
                    #p::Option::Some(value) => value,
                    #p::Option::None => {
                        return #p::Result::Err(
                            <__A::Error as #p::serde::de::Error>::custom(#p::NO_DEFAULT),
                        );
                    }
                }
            }
        });

    quote! {
        const __FIELDS: &[&str] = &[#(#json_names),*];

        enum __Field {
            #(#variants,)*
        }

        struct __FieldVisitor;

        #[automatically_derived]
        impl<'de> #p::serde::de::Visitor<'de> for __FieldVisitor {
            type Value = __Field;

            fn expecting(&self, __f: &mut #p::fmt::Formatter<'_>) -> #p::fmt::Result {
                #p::fmt::Formatter::write_str(__f, #expecting_field)
            }

            fn visit_str<__E>(self, __value: &str) -> #p::Result<__Field, __E>
            where
                __E: #p::serde::de::Error,
            {
                match __value {
                    #(#json_names => #p::Result::Ok(__Field::#variants),)*
                    _ => #p::Result::Err(#p::serde::de::Error::unknown_field(__value, __FIELDS)),
                }
            }

            fn visit_bytes<__E>(self, __value: &[u8]) -> #p::Result<__Field, __E>
            where
                __E: #p::serde::de::Error,
            {
                match __value {
                    #(#json_bytes => #p::Result::Ok(__Field::#variants),)*
                    _ => #p::Result::Err(#p::serde::de::Error::unknown_field(
                        &#p::String::from_utf8_lossy(__value),
                        __FIELDS,
                    )),
                }
            }
        }

        #[automatically_derived]
        impl<'de> #p::serde::Deserialize<'de> for __Field {
            fn deserialize<__D>(__deserializer: __D) -> #p::Result<Self, __D::Error>
            where
                __D: #p::serde::Deserializer<'de>,
            {
                #p::serde::Deserializer::deserialize_identifier(__deserializer, __FieldVisitor)
            }
        }

        struct __Visitor;

        #[automatically_derived]
        impl<'de> #p::serde::de::Visitor<'de> for __Visitor {
            type Value = #ident;

            fn expecting(&self, __f: &mut #p::fmt::Formatter<'_>) -> #p::fmt::Result {
                #p::fmt::Formatter::write_str(__f, #expecting)
            }

            fn visit_map<__A>(self, mut __map: __A) -> #p::Result<#ident, __A::Error>
            where
                __A: #p::serde::de::MapAccess<'de>,
            {
                #(let mut #variants: #p::Option<#types> = #p::Option::None;)*
                while let #p::Option::Some(__key) =
                    #p::serde::de::MapAccess::next_key::<__Field>(&mut __map)?
                {
                    match __key {
                        #(__Field::#variants => {
                            if #p::Option::is_some(&#variants) {
                                return #p::Result::Err(
                                    <__A::Error as #p::serde::de::Error>::duplicate_field(#json_names),
                                );
                            }
                            #variants = #p::Option::Some(#next_values);
                        })*
                    }
                }
                #(let #variants = match #variants {
                    #p::Option::Some(value) => value,
                    #p::Option::None => {
                        return #p::Result::Err(
                            <__A::Error as #p::serde::de::Error>::missing_field(#json_names),
                        );
                    }
                };)*
                #p::Result::Ok(#ident {
                    #(#members: #variants,)*
                    #(#skipped,)*
                })
            }
        }

        struct __De(#ident);

        #[automatically_derived]
        impl<'de> #p::serde::Deserialize<'de> for __De {
            fn deserialize<__D>(__deserializer: __D) -> #p::Result<Self, __D::Error>
            where
                __D: #p::serde::Deserializer<'de>,
            {
                #p::Result::map(
                    #p::serde::Deserializer::deserialize_struct(
                        __deserializer,
                        #name,
                        __FIELDS,
                        __Visitor,
                    ),
                    __De,
                )
            }
        }
    }
}

fn relation_links(cont: &Container) -> TokenStream {
    let p = private();
    let arms: Vec<TokenStream> = cont
        .fields
        .iter()
        .filter(|field| field.relation().is_some())
        .enumerate()
        .map(|(index, field)| {
            let member = field.ident;
            quote!(#index => #p::LinkField(&self.#member).__cached_push_links(out),)
        })
        .collect();
    if arms.is_empty() {
        return quote! {
            fn relation_links(&self, _relation: usize, _out: &mut #p::Vec<#p::String>) {}
        };
    }
    quote! {
        fn relation_links(&self, relation: usize, out: &mut #p::Vec<#p::String>) {
            match relation {
                #(#arms)*
                _ => {}
            }
        }
    }
}

fn extra_targets(cont: &Container) -> TokenStream {
    let Some(item) = &cont.attrs.invalidator else {
        return TokenStream::new();
    };
    let p = private();
    let path = &item.value;
    // Spanned at the path so a function of the wrong shape is reported there.
    let extend = quote_spanned!(path.span()=> #p::extend_targets::<Self, _>(out, #path(self)));
    quote! {
        fn extra_targets(&self, out: &mut #p::Vec<#p::Target>) {
            #extend;
        }
    }
}

/// The facts other models' assertions check: "`Self` has a `references = T`
/// field named f" and "`Self` has a `many_to_many = T` field named f".
///
/// Reads the attributes directly rather than `Field::relation`, so the
/// fallback can emit them for a model whose other attributes are wrong.
pub(crate) fn via_impls(cont: &Container) -> TokenStream {
    let p = private();
    let ident = cont.ident;
    let mut out = TokenStream::new();
    for field in &cont.fields {
        let hash = Literal::u64_suffixed(fnv1a(field.name.as_bytes()));
        if let Some(item) = &field.attrs.references {
            let target = &item.value;
            out.extend(quote! {
                #[automatically_derived]
                impl #p::ReferencesVia<#hash, #target> for #ident {}
            });
        }
        if let Some(item) = &field.attrs.many_to_many {
            let target = &item.value;
            out.extend(quote! {
                #[automatically_derived]
                impl #p::ManyToManyVia<#hash, #target> for #ident {}
            });
        }
    }
    out
}

fn assertions(cont: &Container) -> TokenStream {
    let p = private();
    let ident = cont.ident;
    let mut out = TokenStream::new();
    for field in &cont.fields {
        let ty = &field.ty;
        let ty_span = ty.span();
        // The derived loader reads a `has_many` list from the target's table.
        if cont.attrs.table.is_some()
            && let Some(Relation::HasMany { target, .. }) = field.relation()
        {
            out.extend(quote_spanned! {target.span()=>
                #p::assert_table_for::<#target, #ident, <#target as #p::CachedInstance>::Pk>();
            });
        }
        match field.relation() {
            // No `assert_cached::<T>()`: the schema's `<T as CachedInstance>::MODEL`
            // already fails, at the same span, with the same message.
            Some(Relation::References(target)) => {
                out.extend(quote_spanned! {ty_span=>
                    #p::assert_pk_field::<#ty, <#target as #p::CachedInstance>::Pk>();
                });
            }
            Some(Relation::HasMany { target, via }) => {
                out.extend(assert_pk_list(ty, target));
                let hash = Literal::u64_suffixed(fnv1a(unraw(via).as_bytes()));
                // rustc reports the unmet bound at the first type argument;
                // respanned, that is the `via` field name, which is what is
                // wrong when the target type itself is fine.
                // The pk projection keeps the target's own span, so if the
                // target is not a model its error merges with the schema's.
                let respanned = respan(target, via.span());
                out.extend(quote_spanned! {via.span()=>
                    #p::assert_references_via::<
                        #respanned, #ident, #hash, <#target as #p::CachedInstance>::Pk,
                    >();
                });
            }
            Some(Relation::ManyToMany { target, inverse }) => {
                out.extend(assert_pk_list(ty, target));
                if let Some(inverse) = inverse {
                    let hash = Literal::u64_suffixed(fnv1a(unraw(inverse).as_bytes()));
                    let respanned = respan(target, inverse.span());
                    out.extend(quote_spanned! {inverse.span()=>
                        #p::assert_many_to_many_via::<
                            #respanned, #ident, #hash, <#target as #p::CachedInstance>::Pk,
                        >();
                    });
                }
            }
            None => match field.storage() {
                // The pk's bound is checked by `type Pk`.
                _ if field.attrs.pk.is_some() => {}
                Storage::Codec => out.extend(quote_spanned! {ty_span=>
                    #p::assert_codec::<#ty>();
                }),
                Storage::Serde => out.extend(quote_spanned! {ty_span=>
                    #p::assert_serde::<#ty>();
                }),
                Storage::Skip => out.extend(quote_spanned! {ty_span=>
                    #p::assert_default::<#ty>();
                }),
            },
        }
        // Query indexes: the field's type must have what the attribute
        // needs. Serde fields are indexed through serde (`assert_serde`
        // checks them).
        let a = &field.attrs;
        if a.index.is_some() && field.storage() != Storage::Serde {
            out.extend(quote_spanned! {ty_span=> #p::assert_indexable::<#ty>(); });
        }
        if a.sortable.is_some() {
            out.extend(quote_spanned! {ty_span=> #p::assert_sortable::<#ty>(); });
        }
        if a.search.is_some() {
            out.extend(quote_spanned! {ty_span=> #p::assert_searchable::<#ty>(); });
        }
    }
    if out.is_empty() {
        return out;
    }
    quote! {
        const _: () = {
            #out
        };
    }
}

fn assert_pk_list(ty: &syn::Type, target: &syn::Type) -> TokenStream {
    let p = private();
    quote_spanned! {ty.span()=>
        #p::assert_pk_list::<#ty, <#target as #p::CachedInstance>::Pk>();
    }
}

/// `tokens` with every span replaced by `span`.
fn respan(tokens: &impl ToTokens, span: Span) -> TokenStream {
    tokens
        .to_token_stream()
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut group = Group::new(group.delimiter(), respan(&group.stream(), span));
                group.set_span(span);
                token = TokenTree::Group(group);
            }
            token.set_span(span);
            token
        })
        .collect()
}

pub(crate) fn unraw(ident: &syn::Ident) -> String {
    use syn::ext::IdentExt;
    ident.unraw().to_string()
}

/// 64-bit FNV-1a, identical to `cached_instances::__private::fnv1a`: the
/// runtime crate's tests recompute these constants with it.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
