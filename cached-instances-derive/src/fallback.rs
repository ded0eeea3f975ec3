//! What to emit when the derive rejects its input: the errors, plus an impl
//! of `CachedInstance` that type-checks, so the user sees our errors and not
//! a second wave of "`S` is not a cached model" from every use of the type
//! or from other models' relation checks.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput};

use crate::ast::Container;
use crate::expand::sqlx::{self, table_impls};
use crate::expand::{private, via_impls};

pub(crate) fn fallback(
    input: &DeriveInput,
    cont: Option<&Container>,
    error: syn::Error,
) -> TokenStream {
    let errors = error.into_compile_error();
    // An impl for a generic type would need bounds of its own and could fail
    // on its own; the generics error is enough.
    if !input.generics.params.is_empty() || input.generics.where_clause.is_some() {
        return errors;
    }
    let p = private();
    let ident = &input.ident;
    let model = match cont {
        Some(cont) => cont.model(),
        None => ident.to_string(),
    };
    // The declared pk type keeps `cache.get::<S>(&pk)` in user code
    // type-checking; any integer will do when there is none.
    let pk_ty = match (cont, &input.data) {
        (Some(cont), Data::Struct(_)) => match cont.pk() {
            Some(pk) => {
                let ty = &pk.ty;
                quote!(#ty)
            }
            None => quote!(u64),
        },
        _ => quote!(u64),
    };
    let via = cont.map(via_impls).unwrap_or_default();
    let table = cont.map(table_impls).unwrap_or_default();
    let loaders = cont
        .filter(|cont| cont.attrs.table.is_some())
        .map(|cont| cont.databases())
        .unwrap_or_default()
        .into_iter()
        .map(|database| sqlx::fallback_loader(ident, database));
    quote! {
        #errors

        #[allow(unreachable_code, unused_variables)]
        const _: () = {
            #[automatically_derived]
            impl #p::CachedInstance for #ident {
                type Pk = #pk_ty;
                const MODEL: &'static str = #model;
                const SCHEMA: #p::Schema = #p::Schema::new(
                    <Self as #p::CachedInstance>::MODEL,
                    "default",
                    0u64,
                    #p::Option::None,
                    &[],
                    &[],
                );
                fn pk(&self) -> &Self::Pk {
                    #p::unreachable!("#[derive(CachedInstance)] failed")
                }
                fn encode(&self, out: &mut #p::Vec<u8>) -> #p::Result<(), #p::EncodeError> {
                    #p::unreachable!("#[derive(CachedInstance)] failed")
                }
                fn decode(bytes: &[u8]) -> #p::Result<Self, #p::DecodeError> {
                    #p::unreachable!("#[derive(CachedInstance)] failed")
                }
                fn relation_links(&self, relation: usize, out: &mut #p::Vec<#p::String>) {}
            }

            #via
            #table
            #(#loaders)*
        };
    }
}
