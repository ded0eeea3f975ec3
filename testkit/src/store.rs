//! One forwarding store wrapper, [`Wrapped`], that every instrumented or
//! fault-injecting store of the tests and benchmarks reuses: it forwards
//! every primitive, the query-index ones included, to the inner store
//! through a [`Hook`], so a wrapper never turns a capability of the store it
//! wraps off by forgetting to forward it.
//!
//! A hook also decides what happens to the inner store's in-process reads
//! ([`Store::get_in_process`]), which are synchronous and so cannot go
//! through [`Hook::around`]: it forwards them ([`Hook::around_in_process`]
//! calls the inner store) or answers [`InProcess::Unknown`], which sends the
//! read through `around` as an [`Op::Get`], where the hook's faults, holds
//! and yields apply. The method is required, so a new hook decides.
//!
//! [`Counting`] (store calls counted), [`Recording`] (the keys
//! invalidations replace) and [`Journaled`] (every call, in order) are
//! defined here;
//! [`Faulty`](crate::faults::Faulty) (writes and index updates failed or
//! held on demand) in [`faults`](crate::faults).

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cached_instances::store::{
    Changed, CompareAndSet, InProcess, IndexPage, IndexQuery, IndexStore, IndexUpdate, StoreFuture,
};
use cached_instances::{Store, StoreError};

/// A store primitive, as a [`Hook`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    Get,
    GetMany,
    SetIfAbsentOr,
    SetIfAbsent,
    CompareAndSet,
    SwapMany,
    DeleteMany,
    IndexLease,
    IndexApply,
    IndexQuery,
}

impl Op {
    /// Whether the primitive writes entries (index updates are not
    /// included: see [`is_index_write`](Self::is_index_write)).
    #[must_use]
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Op::SetIfAbsentOr | Op::SetIfAbsent | Op::CompareAndSet | Op::SwapMany | Op::DeleteMany
        )
    }

    /// Whether the primitive is a read's lease step (`SET NX` of leases,
    /// one key or a batch).
    #[must_use]
    pub fn is_lease(self) -> bool {
        matches!(self, Op::SetIfAbsent | Op::SetIfAbsentOr)
    }

    /// Whether the primitive updates a query index.
    #[must_use]
    pub fn is_index_write(self) -> bool {
        matches!(self, Op::IndexLease | Op::IndexApply)
    }
}

/// The entry keys a call names, as a [`Hook`] sees them.
#[derive(Debug, Clone, Copy)]
pub enum Keys<'a> {
    /// `get`.
    One(&'a str),
    /// The batch primitives.
    Many(&'a [String]),
    /// `compare_and_set`: each operation's key.
    Conditional(&'a [CompareAndSet]),
    /// The query-index primitives, which name index members, not entries.
    Index,
}

impl<'a> Keys<'a> {
    /// The keys, in the call's order.
    pub fn iter(self) -> impl Iterator<Item = &'a str> {
        let (one, many, conditional): (Option<&'a str>, &'a [String], &'a [CompareAndSet]) =
            match self {
                Keys::One(key) => (Some(key), &[], &[]),
                Keys::Many(keys) => (None, keys, &[]),
                Keys::Conditional(ops) => (None, &[], ops),
                Keys::Index => (None, &[], &[]),
            };
        one.into_iter()
            .chain(many.iter().map(String::as_str))
            .chain(conditional.iter().map(|op| op.key.as_str()))
    }
}

/// What a [`Wrapped`] store does around each call it forwards.
pub trait Hook: Send + Sync + 'static {
    /// Runs one call of `op` on `keys`: `call` makes the inner store's call, and
    /// nothing reaches the inner store until it is called (a hook may fail
    /// the call without calling it, hold it, or run it and then fail).
    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        keys: Keys<'a>,
        call: impl FnOnce() -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T>;

    /// Runs one in-process read of `key`: `read` makes the inner store's
    /// [`get_in_process`](Store::get_in_process). A hook that must see
    /// every read (to hold it, fail it, yield before it) answers
    /// [`InProcess::Unknown`] instead of calling `read`: the cache then
    /// reads the key with `get`, through [`around`](Self::around).
    fn around_in_process(&self, key: &str, read: impl FnOnce() -> InProcess) -> InProcess;
}

/// A store that forwards every primitive to `inner` through the hook `H`.
/// Clones share the hook's state when `H` does (hooks keep it in an `Arc`).
/// Dereferences to the hook, so its switches and counters are methods of
/// the store.
#[derive(Debug, Clone)]
pub struct Wrapped<S, H> {
    inner: S,
    hook: H,
}

impl<S: Store, H: Hook> Wrapped<S, H> {
    /// `inner`, with `hook` around each call.
    pub fn with_hook(inner: S, hook: H) -> Self {
        Wrapped { inner, hook }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S, H> Deref for Wrapped<S, H> {
    type Target = H;

    fn deref(&self) -> &H {
        &self.hook
    }
}

impl<S: Store, H: Hook> Store for Wrapped<S, H> {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        self.hook
            .around(Op::Get, Keys::One(key), move || self.inner.get(key))
    }

    fn get_in_process(&self, key: &str) -> InProcess {
        self.hook
            .around_in_process(key, || self.inner.get_in_process(key))
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        self.hook.around(Op::GetMany, Keys::Many(keys), move || {
            self.inner.get_many(keys)
        })
    }

    fn set_if_absent_or<'a>(
        &'a self,
        keys: &'a [String],
        value: &'a [u8],
        replaceable: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        self.hook
            .around(Op::SetIfAbsentOr, Keys::Many(keys), move || {
                self.inner.set_if_absent_or(keys, value, replaceable, ttl)
            })
    }

    fn set_if_absent<'a>(
        &'a self,
        keys: &'a [String],
        value: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<bool>> {
        self.hook
            .around(Op::SetIfAbsent, Keys::Many(keys), move || {
                self.inner.set_if_absent(keys, value, ttl)
            })
    }

    fn compare_and_set<'a>(&'a self, ops: &'a [CompareAndSet]) -> StoreFuture<'a, Vec<bool>> {
        self.hook
            .around(Op::CompareAndSet, Keys::Conditional(ops), move || {
                self.inner.compare_and_set(ops)
            })
    }

    fn swap_many<'a>(
        &'a self,
        keys: &'a [String],
        value: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        self.hook.around(Op::SwapMany, Keys::Many(keys), move || {
            self.inner.swap_many(keys, value, ttl)
        })
    }

    fn delete_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, ()> {
        self.hook.around(Op::DeleteMany, Keys::Many(keys), move || {
            self.inner.delete_many(keys)
        })
    }

    /// The inner store's watch: not a call to the store, so no hook.
    fn watch(&self, keys: &[String]) -> Option<Changed> {
        self.inner.watch(keys)
    }

    /// The inner store's query indexes, with the hook around each call:
    /// `None` exactly when the inner store has none.
    fn indexes(&self) -> Option<&dyn IndexStore> {
        self.inner.indexes()?;
        Some(self)
    }
}

impl<S: Store, H: Hook> Wrapped<S, H> {
    /// Only reached through [`Store::indexes`], which checked them.
    fn inner_indexes(&self) -> &dyn IndexStore {
        self.inner
            .indexes()
            .expect("reached through `indexes`, which checked them")
    }
}

impl<S: Store, H: Hook> IndexStore for Wrapped<S, H> {
    fn index_lease<'a>(
        &'a self,
        prefix: &'a str,
        members: &'a [String],
        token: &'a [u8],
    ) -> StoreFuture<'a, ()> {
        self.hook.around(Op::IndexLease, Keys::Index, move || {
            self.inner_indexes().index_lease(prefix, members, token)
        })
    }

    fn index_apply<'a>(
        &'a self,
        prefix: &'a str,
        token: &'a [u8],
        updates: &'a [IndexUpdate],
    ) -> StoreFuture<'a, Vec<bool>> {
        self.hook.around(Op::IndexApply, Keys::Index, move || {
            self.inner_indexes().index_apply(prefix, token, updates)
        })
    }

    fn index_query<'a>(
        &'a self,
        prefix: &'a str,
        query: &'a IndexQuery,
    ) -> StoreFuture<'a, Option<IndexPage>> {
        self.hook.around(Op::IndexQuery, Keys::Index, move || {
            self.inner_indexes().index_query(prefix, query)
        })
    }

    /// Its two parts, each through the hook ([`Op::IndexQuery`], then
    /// [`Op::GetMany`], sent side by side), so that a hook's holds, faults
    /// and journal see a list's query and its page's entries apart; the
    /// inner store's single request for both is what is not forwarded.
    fn index_query_and_get<'a>(
        &'a self,
        prefix: &'a str,
        query: &'a IndexQuery,
        keys: &'a [String],
    ) -> StoreFuture<'a, (Option<IndexPage>, Result<Vec<Option<Bytes>>, StoreError>)> {
        Box::pin(async move {
            let (page, values) = tokio::join!(self.index_query(prefix, query), self.get_many(keys));
            Ok((page?, values))
        })
    }
}

/// A [`Hook`] that counts the calls: on a single Redis server each is one
/// round trip (on a cluster, one per hash slot involved). An in-process
/// read that answers counts as a call (it stands for a `get`: a hit is one
/// call either way) and as an in-process read; one answered
/// [`InProcess::Unknown`] counts as neither (the `get` that follows is the
/// call).
#[derive(Debug, Clone, Default)]
pub struct Calls(Arc<CallCounts>);

#[derive(Debug, Default)]
struct CallCounts {
    calls: AtomicU64,
    in_process: AtomicU64,
}

impl Calls {
    /// Store calls so far.
    #[must_use]
    pub fn calls(&self) -> u64 {
        self.0.calls.load(Ordering::Relaxed)
    }

    /// Of [`calls`](Self::calls), the in-process reads that answered.
    #[must_use]
    pub fn in_process_reads(&self) -> u64 {
        self.0.in_process.load(Ordering::Relaxed)
    }
}

impl Hook for Calls {
    fn around<'a, T: Send + 'a>(
        &'a self,
        _op: Op,
        _keys: Keys<'a>,
        call: impl FnOnce() -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        self.0.calls.fetch_add(1, Ordering::Relaxed);
        call()
    }

    fn around_in_process(&self, _key: &str, read: impl FnOnce() -> InProcess) -> InProcess {
        let answer = read();
        if answer != InProcess::Unknown {
            self.0.calls.fetch_add(1, Ordering::Relaxed);
            self.0.in_process.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }
}

/// Any store, with its calls counted ([`Calls::calls`]).
pub type Counting<S> = Wrapped<S, Calls>;

impl<S: Store> Wrapped<S, Calls> {
    pub fn new(inner: S) -> Self {
        Wrapped::with_hook(inner, Calls::default())
    }
}

/// A [`Hook`] that records the entry keys invalidations replace
/// (`swap_many`) or delete (`delete_many`).
#[derive(Debug, Clone, Default)]
pub struct Replaced(Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>);

impl Replaced {
    /// The keys replaced or deleted since the last call, and forgets them.
    pub fn take(&self) -> std::collections::BTreeSet<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Hook for Replaced {
    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        keys: Keys<'a>,
        call: impl FnOnce() -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        if matches!(op, Op::SwapMany | Op::DeleteMany) {
            self.0
                .lock()
                .unwrap()
                .extend(keys.iter().map(str::to_owned));
        }
        call()
    }

    /// Reads replace nothing: forwarded.
    fn around_in_process(&self, _key: &str, read: impl FnOnce() -> InProcess) -> InProcess {
        read()
    }
}

/// Any store, recording the keys invalidations replace ([`Replaced::take`]).
pub type Recording<S> = Wrapped<S, Replaced>;

impl<S: Store> Wrapped<S, Replaced> {
    pub fn new(inner: S) -> Self {
        Wrapped::with_hook(inner, Replaced::default())
    }
}

/// One call a [`Journal`] recorded: its primitive and the entry keys it
/// names (none for the query-index primitives).
pub type Entry = (Op, Vec<String>);

/// A [`Hook`] that records each call, in the order the calls were made.
/// In-process reads are forwarded and not recorded.
#[derive(Debug, Clone, Default)]
pub struct Journal(Arc<std::sync::Mutex<Vec<Entry>>>);

impl Journal {
    /// The calls made since the last call, and forgets them.
    pub fn take(&self) -> Vec<Entry> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Hook for Journal {
    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        keys: Keys<'a>,
        call: impl FnOnce() -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        let keys = keys.iter().map(str::to_owned).collect();
        self.0.lock().unwrap().push((op, keys));
        call()
    }

    fn around_in_process(&self, _key: &str, read: impl FnOnce() -> InProcess) -> InProcess {
        read()
    }
}

/// Any store, recording each call ([`Journal::take`]).
pub type Journaled<S> = Wrapped<S, Journal>;

impl<S: Store> Wrapped<S, Journal> {
    pub fn new(inner: S) -> Self {
        Wrapped::with_hook(inner, Journal::default())
    }
}

/// A future that runs `before`, then the call (for hooks that yield or
/// wait first).
pub fn after<'a, T: Send + 'a>(
    before: impl Future<Output = ()> + Send + 'a,
    call: impl FnOnce() -> StoreFuture<'a, T> + Send + 'a,
) -> StoreFuture<'a, T> {
    Box::pin(async move {
        before.await;
        call().await
    })
}
