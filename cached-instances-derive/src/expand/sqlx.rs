//! The sqlx side of the expansion: the table metadata (`SqlTable`,
//! `SqlColumn`) and the derived loaders (`SqlxModel<DB>`), one per database
//! the model is derived for, each behind the runtime's feature for it.

use proc_macro2::{Literal, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::{fnv1a, private, unraw};
use crate::ast::{Container, Database, Field, Relation, Storage};

/// The runtime paths one database's generated code goes through.
struct Paths {
    /// The `macro_rules!` that keeps its input only when the runtime's
    /// feature for the database is on.
    gate: TokenStream,
    /// The runtime's module of row reading for the database.
    module: TokenStream,
    /// The sqlx database type.
    db: TokenStream,
}

impl Paths {
    fn of(database: Database) -> Self {
        let p = private();
        let (gate, module, db) = match database {
            Database::Sqlite => (
                quote!(#p::__cached_if_sqlx_sqlite),
                quote!(#p::sqlx_sqlite),
                quote!(#p::sqlx::Sqlite),
            ),
            Database::Postgres => (
                quote!(#p::__cached_if_sqlx_postgres),
                quote!(#p::sqlx_postgres),
                quote!(#p::sqlx::Postgres),
            ),
            Database::Mysql => (
                quote!(#p::__cached_if_sqlx_mysql),
                quote!(#p::sqlx_mysql),
                quote!(#p::sqlx::MySql),
            ),
        };
        Paths { gate, module, db }
    }
}

/// The table metadata other models' derived loaders read: `SqlTable`, and
/// `SqlColumn` for every column field.
///
/// Reads the attributes directly, so the fallback can emit them for a model
/// whose other attributes are wrong.
pub(crate) fn table_impls(cont: &Container) -> TokenStream {
    let Some(table) = &cont.attrs.table else {
        return TokenStream::new();
    };
    let p = private();
    let ident = cont.ident;
    let table = &table.value;
    let pk_column = cont.pk().map(Field::column).unwrap_or_default();
    let columns = cont
        .fields
        .iter()
        .filter(|field| field.is_column())
        .map(|field| {
            let hash = Literal::u64_suffixed(fnv1a(field.name.as_bytes()));
            let column = field.column();
            quote! {
                #[automatically_derived]
                impl #p::SqlColumn<#hash> for #ident {
                    const COLUMN: &'static str = #column;
                }
            }
        });
    quote! {
        #[automatically_derived]
        impl #p::SqlTable for #ident {
            const TABLE: &'static str = #table;
            const PK_COLUMN: &'static str = #pk_column;
        }
        #(#columns)*
    }
}

/// The derived sqlx loader of a model with a table, on one database, behind
/// the runtime's feature for it: one query for the rows, one per relation
/// list.
///
/// Field types are checked by the calls that read them: each call names the
/// field's type with the user's span, so a type sqlx cannot read is one
/// error at the field (per database), with the runtime's message. What other
/// assertions already check (skip defaults, serde bounds, list types, the
/// target's table) goes through autoref dispatch, so it fails only once.
pub(super) fn loader(cont: &Container, pk: &Field, database: Database) -> TokenStream {
    let Some(table) = &cont.attrs.table else {
        return TokenStream::new();
    };
    let p = private();
    let ident = cont.ident;
    let table = &table.value;
    let Paths { gate, module, db } = Paths::of(database);
    let pk_ty = &pk.ty;
    let pk_ident = pk.ident;

    // The pk column first: the runtime returns each row with its key.
    let columns: Vec<&Field> = std::iter::once(pk)
        .chain(
            cont.fields
                .iter()
                .filter(|field| field.is_column() && field.attrs.pk.is_none()),
        )
        .collect();
    let column_names = columns.iter().map(|field| field.column());

    let mut lists = Vec::new();
    let mut inits = Vec::new();
    // `verify_schema`'s columns: the row's, then each list's.
    let mut checks: Vec<TokenStream> = columns
        .iter()
        .map(|field| {
            let column = field.column();
            let ty = &field.ty;
            let checked = match field.storage() {
                Storage::Serde => quote!(#p::serde_json::Value),
                _ => quote!(#ty),
            };
            let check = column_check(
                &quote!(#table),
                &quote!(#column),
                &type_name(ty),
                &checked,
                &module,
            );
            quote!(__columns.push(#check);)
        })
        .collect();
    for field in &cont.fields {
        if field.attrs.pk.is_some() {
            continue;
        }
        let member = field.ident;
        let ty = &field.ty;
        if let Some(index) = columns.iter().position(|c| c.ident == field.ident) {
            let column = field.column();
            let value = match field.storage() {
                Storage::Serde => quote! {
                    #module::get_json(
                        &__row,
                        #index,
                        #column,
                        #p::JsonField::<#ty>::new().__cached_from_json(),
                    )?
                },
                // Spanned at the type: a type sqlx cannot read fails here.
                _ => {
                    let get = quote_spanned!(ty.span()=> #module::get::<#ty>);
                    quote!(#get(&__row, #index, #column)?)
                }
            };
            inits.push(quote!(#member: #value));
            continue;
        }
        let list = format_ident!("__list{}", lists.len());
        let (target, names) = match field.relation() {
            Some(Relation::HasMany { target, via }) => {
                let hash = Literal::u64_suffixed(fnv1a(unraw(via).as_bytes()));
                let names = quote! {
                    let (__table, __item) = #p::TableOf::<#target>::new().__cached_table();
                    let __owner = #p::ColumnOf::<#target, #hash>::new().__cached_column();
                };
                (target, names)
            }
            Some(Relation::ManyToMany { target, .. }) => {
                let a = &field.attrs;
                let [through, source, target_column] =
                    [&a.through, &a.source, &a.target].map(|item| match item {
                        Some(item) => item.value.value(),
                        None => String::new(),
                    });
                let names = quote! {
                    let (__table, __owner, __item) = (#through, #source, #target_column);
                };
                (target, names)
            }
            // Skipped fields.
            _ => {
                inits.push(quote! {
                    #member: match #p::SkipField::<#ty>::new().__cached_default() {
                        #p::Option::Some(value) => value,
                        #p::Option::None => {
                            return #p::Result::Err(#p::schema_error(#p::NO_DEFAULT));
                        }
                    }
                });
                continue;
            }
        };
        // The list's item type: written as the field's `Vec<X>`, so that
        // a target that is not a model is not named in the loader (its error
        // is the schema's); otherwise the target's pk.
        let item_pk = match vec_item(ty) {
            Some(item) => item.to_token_stream(),
            None => quote_spanned!(target.span()=> <#target as #p::CachedInstance>::Pk),
        };
        let owner_check = column_check(
            &quote!(__table),
            &quote!(__owner),
            &type_name(pk_ty),
            &quote!(#pk_ty),
            &module,
        );
        let item_name = match vec_item(ty) {
            Some(item) => type_name(item),
            None => format!("<{} as CachedInstance>::Pk", target.to_token_stream()),
        };
        let item_check = column_check(
            &quote!(__table),
            &quote!(__item),
            &item_name,
            &item_pk,
            &module,
        );
        checks.push(quote! {
            {
                #names
                __columns.push(#owner_check);
                __columns.push(#item_check);
            }
        });
        let fetch_lists = quote_spanned! {pk_ty.span()=>
            #module::fetch_lists::<#pk_ty, #item_pk>(&mut *__conn, __table, __owner, __item, &__keys)
                .await?
        };
        lists.push(quote! {
            let mut #list = {
                #names
                #fetch_lists
            };
        });
        inits.push(quote! {
            #member: match #p::ListField::<#ty, #item_pk>::new()
                .__cached_list(#p::Option::unwrap_or_default(#list.remove(&__key)))
            {
                #p::Option::Some(value) => value,
                #p::Option::None => return #p::Result::Err(#p::schema_error(#p::NOT_A_LIST)),
            }
        });
    }
    // Spanned at the pk's type, all of it: a pk type the database cannot
    // bind is one error there.
    let fetch_rows = quote_spanned! {pk_ty.span()=>
        #module::fetch_rows::<#pk_ty>(&mut *__conn, #table, &[#(#column_names),*], __pks).await?
    };
    let pk_column = pk.column();
    // Through autoref dispatch: a pk type the database cannot bind is
    // reported once, by `fetch_rows`.
    let fetch_all_pks = quote! {
        {
            use #module::{FetchAllKeys as _, FetchAllKeysFallback as _};
            #module::AllKeys::<#pk_ty>::new()
                .__cached_fetch_all(&mut *__conn, #table, #pk_column)
                .await?
        }
    };
    let filter_arms = filter_arms(cont, &db);
    // Without arms the trait's default (no SQL form) is the same thing.
    let filter = if filter_arms.is_empty() {
        TokenStream::new()
    } else {
        quote! {
            fn sqlx_filter(
                __field: usize,
                __condition: &#p::Condition,
                __builder: &mut #p::sqlx_query::Builder<#db>,
            ) -> #p::Option<()> {
                match (__field, __condition) {
                    #(#filter_arms)*
                    _ => #p::Option::None,
                }
            }
        }
    };
    let keys = if lists.is_empty() {
        TokenStream::new()
    } else {
        quote! {
            let __keys: #p::Vec<#pk_ty> =
                __rows.iter().map(|(__key, _)| #p::Clone::clone(__key)).collect();
        }
    };

    quote! {
        #gate! {
            #[automatically_derived]
            impl #p::SqlxModel<#db> for #ident {
                fn sqlx_load<'__a, __C>(
                    __conn: &'__a mut __C,
                    __pks: &'__a [<Self as #p::CachedInstance>::Pk],
                ) -> impl #p::Future<Output = #p::Result<#p::Vec<Self>, #p::sqlx::Error>>
                + #p::Send
                + '__a
                where
                    __C: #p::SqlxConnection<Database = #db>,
                {
                    async move {
                        let __conn = #p::SqlxConnection::as_connection(__conn);
                        let __rows = #fetch_rows;
                        #keys
                        #(#lists)*
                        let mut __out = #p::Vec::with_capacity(__rows.len());
                        for (__key, __row) in __rows {
                            __out.push(#ident {
                                #(#inits,)*
                                #pk_ident: __key,
                            });
                        }
                        #p::Result::Ok(__out)
                    }
                }

                fn sqlx_all_pks<'__a, __C>(
                    __conn: &'__a mut __C,
                ) -> impl #p::Future<
                    Output = #p::Result<
                        #p::Option<#p::Vec<<Self as #p::CachedInstance>::Pk>>,
                        #p::sqlx::Error,
                    >,
                > + #p::Send
                + '__a
                where
                    __C: #p::SqlxConnection<Database = #db>,
                {
                    async move {
                        let __conn = #p::SqlxConnection::as_connection(__conn);
                        #p::Result::Ok(#p::Option::Some(#fetch_all_pks))
                    }
                }

                fn sqlx_table() -> #p::Option<(&'static str, &'static str)> {
                    #p::Option::Some((#table, #pk_column))
                }

                fn sqlx_columns() -> #p::Option<#p::Vec<#p::SqlxColumn<#db>>> {
                    use #module::{CompatibleColumn as _, CompatibleColumnFallback as _};
                    let mut __columns = #p::Vec::new();
                    #(#checks)*
                    #p::Option::Some(__columns)
                }

                #filter

                fn sqlx_fetch_keys<'__a>(
                    __conn: &'__a mut <#db as #p::sqlx::Database>::Connection,
                    __builder: &'__a mut #p::sqlx_query::Builder<#db>,
                ) -> #p::BoxFuture<
                    '__a,
                    #p::Result<
                        #p::Option<#p::FetchedKeys<<Self as #p::CachedInstance>::Pk>>,
                        #p::sqlx::Error,
                    >,
                > {
                    use #module::{FetchAllKeys as _, FetchAllKeysFallback as _};
                    #module::AllKeys::<#pk_ty>::new().__cached_fetch_keys(__conn, __builder)
                }
            }
        }
    }
}

/// The arms of the derived `sqlx_filter`: each index field's SQL
/// predicates, its values bound in the field's type (spanned at the type,
/// so a type the database cannot bind fails there). Fields the fallback
/// cannot compare in SQL get no arm, and their queries are declined.
fn filter_arms(cont: &Container, db: &TokenStream) -> Vec<TokenStream> {
    let p = private();
    let mut arms = Vec::new();
    for (i, field) in cont.fields.iter().filter(|f| f.is_indexed()).enumerate() {
        if !field.is_column() {
            continue;
        }
        let a = &field.attrs;
        let ty = &field.ty;
        let column = field.column();
        let serde = field.storage() == Storage::Serde;
        if a.index.is_some() {
            let push = if serde {
                quote_spanned!(ty.span()=> #p::sqlx_query::push_json_term::<#db, #ty>)
            } else {
                quote_spanned!(ty.span()=> #p::sqlx_query::push_term::<#db, #ty>)
            };
            arms.push(quote! {
                (#i, #p::Condition::Equals(__term)) => #push(__builder, #column, __term),
            });
        }
        if a.sortable.is_some() && !serde {
            let push = quote_spanned!(ty.span()=> #p::sqlx_query::push_range::<#db, #ty>);
            arms.push(quote! {
                (#i, #p::Condition::Range(__min, __max)) => #push(__builder, #column, *__min, *__max),
            });
        }
    }
    arms
}

/// `X` when `ty` is written `Vec<X>` (any path ending in `Vec`).
fn vec_item(ty: &syn::Type) -> Option<&syn::Type> {
    let syn::Type::Path(path) = ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match (last.ident == "Vec", args.args.first(), args.args.len()) {
        (true, Some(syn::GenericArgument::Type(item)), 1) => Some(item),
        _ => None,
    }
}

/// A `SqlxColumn` of `verify_schema`: `table`.`column` read into a field of
/// type `ty_name`, checked as `checked`.
fn column_check(
    table: &TokenStream,
    column: &TokenStream,
    ty_name: &str,
    checked: &TokenStream,
    module: &TokenStream,
) -> TokenStream {
    let p = private();
    quote! {
        #p::SqlxColumn::new(
            #table,
            #column,
            #ty_name,
            #module::ColumnOfType::<#checked>::new().__cached_compatible(),
        )
    }
}

/// A type as users write it (`Option<String>`, not `Option < String >`).
fn type_name(ty: &syn::Type) -> String {
    ty.to_token_stream()
        .to_string()
        .replace(' ', "")
        .replace(',', ", ")
}

/// The stand-in of a derived loader when the derive rejected its input, so
/// that `SqlxLoader::new(pool)` for the model does not fail a second time.
pub(crate) fn fallback_loader(ident: &syn::Ident, database: Database) -> TokenStream {
    let p = private();
    let Paths { gate, db, .. } = Paths::of(database);
    quote! {
        #gate! {
            #[automatically_derived]
            impl #p::SqlxModel<#db> for #ident {
                fn sqlx_load<'__a, __C>(
                    __conn: &'__a mut __C,
                    __pks: &'__a [<Self as #p::CachedInstance>::Pk],
                ) -> impl #p::Future<Output = #p::Result<#p::Vec<Self>, #p::sqlx::Error>>
                + #p::Send
                + '__a
                where
                    __C: #p::SqlxConnection<Database = #db>,
                {
                    async move {
                        #p::Result::Err(#p::schema_error("#[derive(CachedInstance)] failed"))
                    }
                }
            }
        }
    }
}
