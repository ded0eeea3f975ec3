//! Autoref dispatch for the field code `#[derive(CachedInstance)]`
//! generates (encode, decode, links, skipped fields).
//!
//! The derive checks each field's type once, with an assertion spanned at
//! the field, so the user gets one error carrying our message at the right
//! place. The generated encode, decode and link code must then not fail a
//! second time for the same field, or each mistake would come with two more
//! errors pointing at `#[derive(CachedInstance)]`. That code therefore reaches
//! a field's trait through autoref dispatch: `Wrapper(..).__cached_x()`
//! resolves to the by-value impl when the bound holds, and otherwise to the
//! `&Wrapper` impl, which compiles for every type and never runs because the
//! assertion has already failed the build. The fallbacks return errors
//! rather than panic all the same.

// Hidden API whose items exist only to be named by generated code; the
// module docs above say what they are for.
#![allow(missing_docs)]

use std::marker::PhantomData;

use serde::de::{DeserializeOwned, DeserializeSeed, Error as _};
use serde::ser::Error as _;
use serde::{Deserializer, Serialize, Serializer};

use crate::codec::{Decode, Encode, FieldCodec};
use crate::instance::{LinkValues, ManyToManyVia, ReferencesVia, Target};

const NO_CODEC: &str = "field type has no codec (the derive's assertion should have failed)";

/// A field value to serialize with its codec.
pub struct CodecField<'a, T>(pub &'a T);

/// A field value to serialize with its own `Serialize` impl.
pub struct SerdeField<'a, T>(pub &'a T);

pub trait EncodeCodec<'a, T> {
    fn __cached_encoder(self) -> Encode<'a, T>;
}
impl<'a, T: FieldCodec> EncodeCodec<'a, T> for CodecField<'a, T> {
    #[inline]
    fn __cached_encoder(self) -> Encode<'a, T> {
        Encode(self.0)
    }
}

pub trait EncodeSerde<'a, T> {
    fn __cached_encoder(self) -> &'a T;
}
impl<'a, T: Serialize> EncodeSerde<'a, T> for SerdeField<'a, T> {
    #[inline]
    fn __cached_encoder(self) -> &'a T {
        self.0
    }
}

pub trait EncodeFallback {
    fn __cached_encoder(self) -> Unencodable;
}
impl<T> EncodeFallback for &CodecField<'_, T> {
    fn __cached_encoder(self) -> Unencodable {
        Unencodable
    }
}
impl<T> EncodeFallback for &SerdeField<'_, T> {
    fn __cached_encoder(self) -> Unencodable {
        Unencodable
    }
}

/// Stands in for a field that cannot be serialized.
pub struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: Serializer>(&self, _serializer: S) -> Result<S::Ok, S::Error> {
        Err(S::Error::custom(NO_CODEC))
    }
}

/// A seed for a field decoded with its codec.
pub struct CodecSeed<T>(PhantomData<fn() -> T>);

/// A seed for a field decoded with its own `Deserialize` impl.
pub struct SerdeSeed<T>(PhantomData<fn() -> T>);

impl<T> CodecSeed<T> {
    #[must_use]
    pub const fn new() -> Self {
        CodecSeed(PhantomData)
    }
}

impl<T> Default for CodecSeed<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> SerdeSeed<T> {
    #[must_use]
    pub const fn new() -> Self {
        SerdeSeed(PhantomData)
    }
}

impl<T> Default for SerdeSeed<T> {
    fn default() -> Self {
        Self::new()
    }
}

pub trait DecodeCodec<T> {
    fn __cached_seed(self) -> Decode<T>;
}
impl<T: FieldCodec> DecodeCodec<T> for CodecSeed<T> {
    #[inline]
    fn __cached_seed(self) -> Decode<T> {
        Decode::new()
    }
}

pub trait DecodeSerde<T> {
    fn __cached_seed(self) -> PhantomData<T>;
}
impl<T: DeserializeOwned> DecodeSerde<T> for SerdeSeed<T> {
    #[inline]
    fn __cached_seed(self) -> PhantomData<T> {
        PhantomData
    }
}

pub trait DecodeFallback<T> {
    fn __cached_seed(self) -> Undecodable<T>;
}
impl<T> DecodeFallback<T> for &CodecSeed<T> {
    fn __cached_seed(self) -> Undecodable<T> {
        Undecodable(PhantomData)
    }
}
impl<T> DecodeFallback<T> for &SerdeSeed<T> {
    fn __cached_seed(self) -> Undecodable<T> {
        Undecodable(PhantomData)
    }
}

/// Stands in for a field that cannot be deserialized.
pub struct Undecodable<T>(PhantomData<fn() -> T>);

impl<'de, T> DeserializeSeed<'de> for Undecodable<T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, _deserializer: D) -> Result<T, D::Error> {
        Err(D::Error::custom(NO_CODEC))
    }
}

/// A relation field whose primary keys are pushed as links.
pub struct LinkField<'a, T>(pub &'a T);

pub trait PushLinks {
    fn __cached_push_links(self, out: &mut Vec<String>);
}
impl<T: LinkValues> PushLinks for LinkField<'_, T> {
    #[inline]
    fn __cached_push_links(self, out: &mut Vec<String>) {
        self.0.push_links(out);
    }
}

pub trait PushLinksFallback {
    fn __cached_push_links(self, out: &mut Vec<String>);
}
impl<T> PushLinksFallback for &LinkField<'_, T> {
    fn __cached_push_links(self, _out: &mut Vec<String>) {}
}

/// The value of a `#[cached(skip)]` field after decoding.
pub struct SkipField<T>(PhantomData<fn() -> T>);

impl<T> SkipField<T> {
    #[must_use]
    pub const fn new() -> Self {
        SkipField(PhantomData)
    }
}

impl<T> Default for SkipField<T> {
    fn default() -> Self {
        Self::new()
    }
}

pub trait SkipDefault<T> {
    fn __cached_default(self) -> Option<T>;
}
impl<T: Default> SkipDefault<T> for SkipField<T> {
    #[inline]
    fn __cached_default(self) -> Option<T> {
        Some(T::default())
    }
}

pub trait SkipFallback<T> {
    fn __cached_default(self) -> Option<T>;
}
impl<T> SkipFallback<T> for &SkipField<T> {
    fn __cached_default(self) -> Option<T> {
        None
    }
}

/// The error a skipped field without a default would decode to.
pub const NO_DEFAULT: &str =
    "skipped field has no default value (the derive's assertion should have failed)";

/// What a `#[cached(skip)]` field needs. A trait of its own, rather than a
/// plain `Default` bound, to carry a message that names the attribute.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no default value, so it cannot be a `#[cached(skip)]` field",
    label = "`#[cached(skip)]` needs `Default` here",
    note = "decoding fills skipped fields with `Default::default()`; implement or derive `Default` for `{Self}`, or remove `#[cached(skip)]`"
)]
pub trait Skippable {}

#[diagnostic::do_not_recommend]
impl<T: Default> Skippable for T {}

/// What a `#[cached(serde)]` field needs: one trait, so a type lacking both
/// serde impls gets one error that names the attribute.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a `#[cached(serde)]` field: it does not implement serde's `Serialize` and `Deserialize`",
    label = "`#[cached(serde)]` needs `Serialize + DeserializeOwned` here",
    note = "derive `serde::Serialize` and `serde::Deserialize` for `{Self}` (or implement them), or remove `#[cached(serde)]` if the type has a cache codec"
)]
pub trait SerdeStorable {}

#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned> SerdeStorable for T {}

/// Asserts that a `#[cached(serde)]` field can be stored through serde.
pub const fn assert_serde<T: SerdeStorable>() {}

/// What an `#[cached(invalidator = f)]` function of model `M` returns. A
/// trait of its own so that a wrong return type gets a message that says
/// what to write.
#[diagnostic::on_unimplemented(
    message = "an invalidator must return `impl IntoIterator<Item = Target>`, not `{Self}`",
    label = "this function returns `{Self}`",
    note = "declare it as `fn(&{M}) -> impl IntoIterator<Item = cached_instances::Target>`, building targets with `Target::key` and `Target::instance`"
)]
pub trait InvalidatorTargets<M> {
    fn __cached_extend(self, out: &mut Vec<Target>);
}

#[diagnostic::do_not_recommend]
impl<M, I: IntoIterator<Item = Target>> InvalidatorTargets<M> for I {
    #[inline]
    fn __cached_extend(self, out: &mut Vec<Target>) {
        out.extend(self);
    }
}

/// Appends what model `M`'s invalidator returned.
#[inline]
pub fn extend_targets<M, I: InvalidatorTargets<M>>(out: &mut Vec<Target>, targets: I) {
    targets.__cached_extend(out);
}

/// `assert_references_via` and `assert_many_to_many_via` check `X: …Via<H, T>`
/// through these, with `Self` being `X`'s pk type. When `X` is not a model at
/// all, that type is unknown, the obligation is ambiguous, and rustc reports
/// nothing beyond the "not a cached model" error it already gave for `X`.
pub trait ReferencesViaCheck<X, T, const H: u64> {}
impl<P, X: ReferencesVia<H, T>, T, const H: u64> ReferencesViaCheck<X, T, H> for P {}

/// See [`ReferencesViaCheck`].
pub trait ManyToManyViaCheck<X, T, const H: u64> {}
impl<P, X: ManyToManyVia<H, T>, T, const H: u64> ManyToManyViaCheck<X, T, H> for P {}
