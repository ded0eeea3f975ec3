//! The change feed's side of the expansion: what the feed captures of a
//! model's table (`Schema::with_capture`), read from the same attributes the
//! derived loaders use. The triggers themselves are generated at run time
//! from this metadata (`cached_instances::feed`), so that one installer
//! sees every registered model and writes one trigger per table.

use proc_macro2::TokenStream;
use quote::quote;

use super::private;
use crate::ast::{Container, Relation};

/// `.with_capture(...)` for a model with a table; nothing otherwise.
pub(crate) fn with_capture(cont: &Container) -> TokenStream {
    let Some(table) = &cont.attrs.table else {
        return TokenStream::new();
    };
    let Some(pk) = cont.pk() else {
        return TokenStream::new();
    };
    let p = private();
    let table = &table.value;
    let pk_column = pk.column();
    let columns = cont
        .fields
        .iter()
        .filter(|field| field.is_column())
        .map(|field| field.column());
    let mut references = Vec::new();
    let mut joins = Vec::new();
    // Relation indexes count the relation fields in order, as `SCHEMA`'s
    // `relations` and `relation_links` do.
    for (relation, field) in cont
        .fields
        .iter()
        .filter(|field| field.relation().is_some())
        .enumerate()
    {
        match field.relation() {
            Some(Relation::References(_)) => {
                let column = field.column();
                references.push(quote!(#p::CapturedReference::new(#relation, #column)));
            }
            Some(Relation::ManyToMany { .. }) => {
                let a = &field.attrs;
                if let (Some(through), Some(source), Some(target)) =
                    (&a.through, &a.source, &a.target)
                {
                    let [through, source, target] =
                        [through, source, target].map(|item| item.value.value());
                    joins.push(quote!(
                        #p::CapturedJoin::new(#relation, #through, #source, #target)
                    ));
                }
            }
            _ => {}
        }
    }
    quote! {
        .with_capture(&#p::Capture::new(
            #table,
            #pk_column,
            &[#(#columns),*],
            &[#(#references),*],
            &[#(#joins),*],
        ))
    }
}
