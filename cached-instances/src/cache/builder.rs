//! [`CacheBuilder`]: the store, the loaders and the tuning knobs.

use std::any::TypeId;
use std::sync::Arc;
use std::time::Duration;

use super::registry::{ModelEntry, Registry};
use super::{Cache, Config, Inner};
use crate::error::BuildError;
use crate::instance::CachedInstance;
use crate::loader::{DynLoader, Loader};
use crate::store::{MemoryStore, Store};

/// Configures and builds a [`Cache`].
///
/// ```
/// use std::time::Duration;
/// use cached_instances::{Cache, CachedInstance, LoadError, Loader, MemoryStore};
///
/// #[derive(CachedInstance, Debug, Clone, PartialEq)]
/// pub struct Tag {
///     #[cached(pk)]
///     pub id: i64,
/// }
/// struct Db;
/// impl Loader<Tag> for Db {
///     async fn load(&self, pks: &[i64]) -> Result<Vec<Tag>, LoadError> {
///         Ok(pks.iter().map(|&id| Tag { id }).collect())
///     }
/// }
///
/// let cache = Cache::builder()
///     .store(MemoryStore::new())
///     .loader::<Tag>(Db)
///     .default_ttl(Duration::from_secs(3600))
///     .build()?;
/// # Ok::<(), cached_instances::BuildError>(())
/// ```
#[must_use]
#[derive(Default)]
pub struct CacheBuilder {
    store: Option<Arc<dyn Store>>,
    entries: Vec<(TypeId, ModelEntry)>,
    config: Config,
}

impl CacheBuilder {
    /// The store (default: a [`MemoryStore`] bounded to 64 MiB).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Registers `T` (one version of a model) with its loader.
    pub fn loader<T: CachedInstance>(mut self, loader: impl Loader<T>) -> Self {
        let loader: Arc<dyn DynLoader<T>> = Arc::new(loader);
        let id = TypeId::of::<T>();
        self.entries.retain(|(t, _)| *t != id);
        self.entries.push((id, ModelEntry::new(loader)));
        self
    }

    /// Time to live of entries whose model sets no `ttl` (default: 24 h, a
    /// backstop against any invalidation that could never be delivered).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config.default_ttl = ttl;
        self
    }

    /// How long a lease protects a load (default: 10 s). A loader slower than
    /// this loses its lease, and its fill is rejected.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.config.lease_ttl = ttl;
        self
    }

    /// How long a reader waits for another reader's load of the same key
    /// before reading the database itself without filling (default: 1 s).
    pub fn lease_wait(mut self, wait: Duration) -> Self {
        self.config.lease_wait = wait;
        self
    }

    /// How long a tombstone stays (default: 60 s).
    pub fn tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.config.tombstone_ttl = ttl;
        self
    }

    /// When `true` (the default), a cascade refreshes the related entries
    /// that are cached and leaves cold ones cold; when `false` it loads and
    /// caches every related instance it reaches (drf-cached-instances'
    /// `update_only=False`).
    pub fn update_only(mut self, update_only: bool) -> Self {
        self.config.update_only = update_only;
        self
    }

    /// The deepest cascade level that is reloaded (default: 16). Every level
    /// costs at most two store round trips and one loader call per model.
    /// Levels past it are not reloaded, so loader calls stay bounded: they
    /// are invalidated with one round trip each, following everything the
    /// states they held linked to (cycles end: each instance is visited
    /// once), so no entry further down a long chain is left stale.
    pub fn max_cascade_depth(mut self, depth: usize) -> Self {
        self.config.max_cascade_depth = depth;
        self
    }

    /// After a store failure, how long the store is skipped before it is
    /// tried again (default: 1 s). Meanwhile reads go to the loaders and
    /// invalidations are queued.
    pub fn store_retry_interval(mut self, interval: Duration) -> Self {
        self.config.store_retry_interval = interval;
        self
    }

    /// The most loads that bypass the store at once (store down, caching
    /// off, a lease wait that ran out); default 32. Bounds what an outage
    /// sends to the database.
    pub fn degraded_concurrency(mut self, loads: usize) -> Self {
        self.config.degraded_concurrency = loads;
        self
    }

    /// A deadline for every loader call (default: none). A load that runs
    /// out of time is cancelled and the read returns
    /// [`Error::LoadTimeout`](crate::Error::LoadTimeout); the leases it held
    /// are released so that the next read loads again, and a cascade whose
    /// reload times out leaves its entries invalidated. Set it below
    /// [`lease_ttl`](Self::lease_ttl), so that a hung database fails reads
    /// quickly instead of holding their callers.
    pub fn loader_timeout(mut self, timeout: Duration) -> Self {
        self.config.loader_timeout = Some(timeout);
        self
    }

    /// The largest representation cached, in bytes (default: 1 MiB). A
    /// larger one (a question with 100 000 choices, say) is served to the
    /// reader but not cached: the key is left invalidated, each read of it
    /// loads from the database, and
    /// [`Stats::entries_too_large`](crate::Stats::entries_too_large) counts
    /// it, with a warning. Bytes larger than this found in the store are
    /// treated as corrupt: a miss, and replaced.
    pub fn max_entry_bytes(mut self, bytes: usize) -> Self {
        self.config.max_entry_bytes = bytes;
        self
    }

    /// Starts with caching switched off (see [`Cache::set_enabled`]).
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.config.enabled = enabled;
        self
    }

    /// Validates the registry and builds the cache.
    ///
    /// # Errors
    ///
    /// [`BuildError`] when two types share a model and version, a relation
    /// targets a model without a loader, or a `has_many` relation's `via`
    /// field does not point back.
    pub fn build(self) -> Result<Cache, BuildError> {
        let registry = Registry::build(self.entries)?;
        let store = self.store.unwrap_or_else(|| Arc::new(MemoryStore::new()));
        let degraded = super::degraded::Degraded::new(
            self.config.store_retry_interval,
            self.config.degraded_concurrency,
            self.config.enabled,
        );
        Ok(Cache {
            inner: Arc::new_cyclic(|cache| Inner {
                fills: super::fills::Fills::new(Arc::clone(&store), cache.clone()),
                store,
                registry,
                config: self.config,
                counters: Default::default(),
                degraded,
                recovery: super::recovery::Recovery::new(cache.clone()),
            }),
        })
    }
}
