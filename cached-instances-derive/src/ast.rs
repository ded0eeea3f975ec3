//! The derive's model of the input: the struct, its fields, and their parsed
//! attributes, keeping the syn nodes so every error and every generated
//! assertion can carry the user's spans.

use proc_macro2::{Group, TokenStream, TokenTree};
use quote::{ToTokens, quote};
use syn::ext::IdentExt;
use syn::{Data, DeriveInput, Fields, Ident, Type};

use crate::attr;
use crate::ctxt::Ctxt;

pub(crate) struct Container<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) input: &'a DeriveInput,
    pub(crate) attrs: attr::Container,
    pub(crate) fields: Vec<Field<'a>>,
}

pub(crate) struct Field<'a> {
    pub(crate) ident: &'a Ident,
    /// The name without `r#`: the name `via`/`inverse` refer to and the one
    /// reported in `Relation::field`.
    pub(crate) name: String,
    /// The declared type with `Self` replaced by the struct's name, because
    /// generated helper types use it where `Self` means something else.
    pub(crate) ty: Type,
    pub(crate) attrs: attr::Field,
}

/// How a field is stored in the representation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Storage {
    Codec,
    Serde,
    Skip,
}

/// The relation a field declares. `check` guarantees at most one per field.
pub(crate) enum Relation<'f> {
    References(&'f Type),
    HasMany {
        target: &'f Type,
        via: &'f Ident,
    },
    ManyToMany {
        target: &'f Type,
        inverse: Option<&'f Ident>,
    },
}

impl<'a> Container<'a> {
    /// `None` when the input is not a struct with named fields (the error is
    /// recorded in `cx`); otherwise a model that may still hold attribute
    /// mistakes for `check` to report.
    pub(crate) fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        let attrs = attr::container(cx, &input.attrs);
        let ident = &input.ident;
        let named = match &input.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(named) => named,
                Fields::Unnamed(unnamed) => {
                    cx.error_spanned_by(
                        unnamed,
                        format!(
                            "tuple structs are not supported: each field of a cached model is \
                             stored under its name; use named fields, e.g. \
                             `struct {ident} {{ #[cached(pk)] id: i64, ... }}`"
                        ),
                    );
                    return None;
                }
                Fields::Unit => {
                    cx.error_spanned_by(
                        ident,
                        format!(
                            "unit structs are not supported: a cached model needs at least a \
                             primary key field, e.g. `struct {ident} {{ #[cached(pk)] id: i64 }}`"
                        ),
                    );
                    return None;
                }
            },
            Data::Enum(data) => {
                let enum_token = data.enum_token;
                cx.error_spanned_by(
                    quote!(#enum_token #ident),
                    "`CachedInstance` can only be derived for structs with named fields, not \
                     enums; store the enum in a field of a model struct (with \
                     `#[cached(serde)]`)",
                );
                return None;
            }
            Data::Union(data) => {
                let union_token = data.union_token;
                cx.error_spanned_by(
                    quote!(#union_token #ident),
                    "`CachedInstance` can only be derived for structs with named fields, not \
                     unions",
                );
                return None;
            }
        };

        let fields = named
            .named
            .iter()
            .filter_map(|field| {
                // Named fields always have an ident; skip rather than panic if
                // a future syn says otherwise.
                let field_ident = field.ident.as_ref()?;
                let mut attrs = attr::field(cx, &field.attrs);
                for target in [
                    attrs.references.as_mut(),
                    attrs.has_many.as_mut(),
                    attrs.many_to_many.as_mut(),
                ]
                .into_iter()
                .flatten()
                {
                    target.value = replace_self(&target.value, ident);
                }
                Some(Field {
                    ident: field_ident,
                    name: field_ident.unraw().to_string(),
                    ty: replace_self(&field.ty, ident),
                    attrs,
                })
            })
            .collect();

        Some(Container {
            ident,
            input,
            attrs,
            fields,
        })
    }

    /// The model name: `model = "..."` or the struct's name.
    pub(crate) fn model(&self) -> String {
        match &self.attrs.model {
            Some(item) => item.value.value(),
            None => self.ident.unraw().to_string(),
        }
    }

    pub(crate) fn version(&self) -> String {
        match &self.attrs.version {
            Some(item) => item.value.value(),
            None => "default".to_owned(),
        }
    }

    pub(crate) fn pk(&self) -> Option<&Field<'a>> {
        self.fields.iter().find(|field| field.attrs.pk.is_some())
    }

    /// The databases to derive a loader for when the model has a table:
    /// `database = "..."`, or both (each still gated on the runtime's
    /// feature).
    pub(crate) fn databases(&self) -> Vec<Database> {
        match self.attrs.database.as_ref().map(|item| item.value.value()) {
            Some(name) if name == "sqlite" => vec![Database::Sqlite],
            Some(name) if name == "postgres" => vec![Database::Postgres],
            Some(name) if name == "mysql" => vec![Database::Mysql],
            _ => vec![Database::Sqlite, Database::Postgres, Database::Mysql],
        }
    }
}

/// A database the derived sqlx loaders support.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Database {
    Sqlite,
    Postgres,
    Mysql,
}

/// The values `database = "..."` accepts.
pub(crate) const DATABASES: &[&str] = &["sqlite", "postgres", "mysql"];

impl Field<'_> {
    /// The key the field is stored under in the JSON representation.
    pub(crate) fn json_name(&self) -> String {
        match &self.attrs.rename {
            Some(item) => item.value.value(),
            None => self.name.clone(),
        }
    }

    /// The field's column: `column = "..."` or the field's name.
    pub(crate) fn column(&self) -> String {
        match &self.attrs.column {
            Some(item) => item.value.value(),
            None => self.name.clone(),
        }
    }

    /// Whether the derived loader reads the field from a column of the
    /// model's table: every stored field except relation lists, which come
    /// from other tables.
    pub(crate) fn is_column(&self) -> bool {
        self.storage() != Storage::Skip
            && self.attrs.has_many.is_none()
            && self.attrs.many_to_many.is_none()
    }

    /// Whether the field is declared for queries (`index`, `sortable`,
    /// `search`).
    pub(crate) fn is_indexed(&self) -> bool {
        let a = &self.attrs;
        a.index.is_some() || a.sortable.is_some() || a.search.is_some()
    }

    pub(crate) fn storage(&self) -> Storage {
        if self.attrs.skip.is_some() {
            Storage::Skip
        } else if self.attrs.serde.is_some() {
            Storage::Serde
        } else {
            Storage::Codec
        }
    }

    pub(crate) fn relation(&self) -> Option<Relation<'_>> {
        let attrs = &self.attrs;
        if let Some(item) = &attrs.references {
            Some(Relation::References(&item.value))
        } else if let (Some(item), Some(via)) = (&attrs.has_many, &attrs.via) {
            Some(Relation::HasMany {
                target: &item.value,
                via: &via.value,
            })
        } else {
            attrs
                .many_to_many
                .as_ref()
                .map(|item| Relation::ManyToMany {
                    target: &item.value,
                    inverse: attrs.inverse.as_ref().map(|item| &item.value),
                })
        }
    }
}

/// `ty` with every `Self` token renamed to `ident`, keeping the user's spans.
fn replace_self(ty: &Type, ident: &Ident) -> Type {
    fn walk(tokens: TokenStream, ident: &Ident) -> TokenStream {
        tokens
            .into_iter()
            .map(|token| match token {
                TokenTree::Ident(found) if found == "Self" => {
                    let mut renamed = ident.clone();
                    renamed.set_span(found.span());
                    TokenTree::Ident(renamed)
                }
                TokenTree::Group(group) => {
                    let mut renamed = Group::new(group.delimiter(), walk(group.stream(), ident));
                    renamed.set_span(group.span());
                    TokenTree::Group(renamed)
                }
                other => other,
            })
            .collect()
    }
    syn::parse2(walk(ty.to_token_stream(), ident)).unwrap_or_else(|_| ty.clone())
}
