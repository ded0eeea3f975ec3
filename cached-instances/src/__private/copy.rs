//! Autoref dispatch for the derived `CachedInstance::__copy_for_fill`:
//! `CopyOf(self).__cached_copy()` resolves to the by-value impl, a clone,
//! when the model implements `Clone`, and otherwise to the `&CopyOf` impl,
//! which has no copy. Whether a model is `Clone` is not known when the
//! derive expands, and a model need not be: without a copy, a read encodes
//! its rows before it returns (see "Encoded by the fill's task" in the
//! runtime crate's `cache/fills.rs`).

// Hidden API whose items exist only to be named by generated code; the
// module docs above say what they are for.
#![allow(missing_docs)]

/// A model instance to copy, if its type can be.
pub struct CopyOf<'a, T>(pub &'a T);

pub trait CopyClone<T> {
    fn __cached_copy(self) -> Option<T>;
}
impl<T: Clone> CopyClone<T> for CopyOf<'_, T> {
    #[inline]
    fn __cached_copy(self) -> Option<T> {
        Some(self.0.clone())
    }
}

pub trait CopyFallback<T> {
    fn __cached_copy(self) -> Option<T>;
}
impl<T> CopyFallback<T> for &CopyOf<'_, T> {
    #[inline]
    fn __cached_copy(self) -> Option<T> {
        None
    }
}
