//! Autoref dispatch for the index code `#[derive(CachedInstance)]`
//! generates (see `fields` for the pattern): each index field's
//! type is asserted once, spanned at the field; the generated calls then
//! fall back to inert impls instead of failing a second time.

// Hidden API whose items exist only to be named by generated code.
#![allow(missing_docs)]

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::instance::{Indexable, Searchable, Sortable, serde_term, serde_text};

/// Asserts that an `index` field's type has exact-match terms.
pub const fn assert_indexable<T: Indexable + ?Sized>() {}
/// Asserts that a `sortable` field's type has sort scores.
pub const fn assert_sortable<T: Sortable + ?Sized>() {}
/// Asserts that a `search` field's type is text.
pub const fn assert_searchable<T: Searchable + ?Sized>() {}

/// An `index` field's value.
pub struct TermField<'a, T>(pub &'a T);
/// An `index` field's value stored through serde.
pub struct SerdeTermField<'a, T>(pub &'a T);

pub trait TermOf {
    fn __cached_term(self) -> Option<String>;
}
impl<T: Indexable> TermOf for TermField<'_, T> {
    #[inline]
    fn __cached_term(self) -> Option<String> {
        self.0.term()
    }
}
impl<T: Serialize> TermOf for SerdeTermField<'_, T> {
    #[inline]
    fn __cached_term(self) -> Option<String> {
        serde_term(self.0)
    }
}

pub trait TermOfFallback {
    fn __cached_term(self) -> Option<String>;
}
impl<T> TermOfFallback for &TermField<'_, T> {
    fn __cached_term(self) -> Option<String> {
        None
    }
}
impl<T> TermOfFallback for &SerdeTermField<'_, T> {
    fn __cached_term(self) -> Option<String> {
        None
    }
}

/// A `sortable` field's value.
pub struct ScoreField<'a, T>(pub &'a T);

pub trait ScoreOf {
    fn __cached_score(self) -> f64;
}
impl<T: Sortable> ScoreOf for ScoreField<'_, T> {
    #[inline]
    fn __cached_score(self) -> f64 {
        self.0.score()
    }
}
pub trait ScoreOfFallback {
    fn __cached_score(self) -> f64;
}
impl<T> ScoreOfFallback for &ScoreField<'_, T> {
    fn __cached_score(self) -> f64 {
        f64::INFINITY
    }
}

/// A `search` field's value.
pub struct TextField<'a, T>(pub &'a T);

pub trait TextOf {
    fn __cached_text(self, out: &mut String);
}
impl<T: Searchable> TextOf for TextField<'_, T> {
    #[inline]
    fn __cached_text(self, out: &mut String) {
        self.0.write_text(out);
    }
}
pub trait TextOfFallback {
    fn __cached_text(self, out: &mut String);
}
impl<T> TextOfFallback for &TextField<'_, T> {
    fn __cached_text(self, _out: &mut String) {}
}

/// Parses filter values of an `index` field of type `T`.
pub struct TermParser<T>(PhantomData<fn() -> T>);
/// Parses filter values of an `index` field of type `T` stored through serde.
pub struct SerdeTermParser<T>(PhantomData<fn() -> T>);
/// Parses range values of a `sortable` field of type `T`.
pub struct ScoreParser<T>(PhantomData<fn() -> T>);

macro_rules! phantom_new {
    ($($t:ident),*) => {$(
        impl<T> $t<T> {
            #[must_use]
            pub const fn new() -> Self {
                $t(PhantomData)
            }
        }
        impl<T> Default for $t<T> {
            fn default() -> Self {
                Self::new()
            }
        }
    )*};
}
phantom_new!(TermParser, SerdeTermParser, ScoreParser);

pub trait ParseTerm {
    fn __cached_parse_term(self, text: &str) -> Option<String>;
}
impl<T: Indexable> ParseTerm for TermParser<T> {
    #[inline]
    fn __cached_parse_term(self, text: &str) -> Option<String> {
        T::parse_term(text)
    }
}
impl<T: Serialize + DeserializeOwned> ParseTerm for SerdeTermParser<T> {
    #[inline]
    fn __cached_parse_term(self, text: &str) -> Option<String> {
        serde_text::<T>(text).and_then(|v| serde_term(&v))
    }
}
pub trait ParseTermFallback {
    fn __cached_parse_term(self, text: &str) -> Option<String>;
}
impl<T> ParseTermFallback for &TermParser<T> {
    fn __cached_parse_term(self, _text: &str) -> Option<String> {
        None
    }
}
impl<T> ParseTermFallback for &SerdeTermParser<T> {
    fn __cached_parse_term(self, _text: &str) -> Option<String> {
        None
    }
}

pub trait ParseScore {
    fn __cached_parse_score(self, text: &str) -> Option<f64>;
}
impl<T: Sortable> ParseScore for ScoreParser<T> {
    #[inline]
    fn __cached_parse_score(self, text: &str) -> Option<f64> {
        T::parse_score(text)
    }
}
pub trait ParseScoreFallback {
    fn __cached_parse_score(self, text: &str) -> Option<f64>;
}
impl<T> ParseScoreFallback for &ScoreParser<T> {
    fn __cached_parse_score(self, _text: &str) -> Option<f64> {
        None
    }
}
