//! The registry of cached models: one entry per registered type, the
//! type-erased operations the write path needs to reload any model, and the
//! invalidation graph derived from the relation declarations.

use std::any::{Any, TypeId};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use bytes::Bytes;

use super::loading::Loading;
use crate::error::{BuildError, Error};
use crate::instance::{CachedInstance, Encoder, RelationKind, Schema, Target};
use crate::key::KeyLayout;
use crate::loader::{BoxFuture, DynLoader};
use crate::pk::PrimaryKey;
use crate::query::IndexValues;
use crate::store::IndexUpdate;
use crate::store::plan;

/// The relation values of one instance state, in key form.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Links {
    /// Per relation (index into `Schema::relations`), the linked pks.
    relations: Vec<Vec<String>>,
    /// Targets from `#[cached(invalidator = ...)]`.
    extra: Vec<Target>,
}

impl Links {
    pub(crate) fn of<T: CachedInstance>(instance: &T) -> Self {
        let relations = (0..T::SCHEMA.relations.len())
            .map(|i| {
                let mut out = Vec::new();
                instance.relation_links(i, &mut out);
                out
            })
            .collect();
        let mut extra = Vec::new();
        instance.extra_targets(&mut extra);
        Links { relations, extra }
    }

    /// The links of a state known only by its relation values (the change
    /// feed's columns), without `invalidator` targets.
    #[cfg_attr(
        not(any(feature = "sqlx-postgres", feature = "sqlx-sqlite")),
        allow(dead_code)
    )]
    pub(crate) fn from_relations(relations: Vec<Vec<String>>) -> Self {
        Links {
            relations,
            extra: Vec::new(),
        }
    }
}

/// How a change of a model's relation field reaches another model.
#[derive(Debug, Clone, Copy)]
enum EdgeKind {
    /// The target lists this model's pks through `has_many ... via` this
    /// foreign key: the old and the new parent change when the key moves.
    Parent,
    /// Both sides list each other's pks: the targets added or removed change.
    Symmetric,
}

#[derive(Debug, Clone, Copy)]
struct Edge {
    relation: usize,
    target: &'static str,
    kind: EdgeKind,
}

/// A model's instance reloaded from the loader during a cascade.
pub(crate) struct Reloaded {
    pub(crate) pk_key: String,
    pub(crate) bytes: Bytes,
    pub(crate) links: Links,
}

/// What the write path needs of a model without knowing its type.
pub(crate) trait ModelOps: Send + Sync {
    fn links_of(&self, bytes: &[u8]) -> Option<Links>;
    fn reload<'a>(
        &'a self,
        loading: Loading<'a>,
        pk_keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Reloaded>, Error>>;
    /// The query-index member of a pk in key form; `None` when the key form
    /// does not parse (it names no row of this model).
    fn index_member(&self, pk_key: &str) -> Option<String>;
    /// The key form of a pk as the database writes it as text (the change
    /// feed's columns); `None` when it is not a pk of this model.
    #[cfg_attr(
        not(any(feature = "sqlx-postgres", feature = "sqlx-sqlite")),
        allow(dead_code)
    )]
    fn key_of_text(&self, text: &str) -> Option<String>;
    /// Reloads `pk_keys` with one loader call and returns the index update
    /// of each one that parses, in order: the row's values, or the
    /// member's removal when the row is gone. For the delivery of queued
    /// index updates (`index.rs`), which knows the model only by name.
    fn index_updates<'a>(
        &'a self,
        loading: Loading<'a>,
        pk_keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<IndexUpdate>, Error>>;
}

struct TypedOps<T: CachedInstance> {
    loader: Arc<dyn DynLoader<T>>,
}

impl<T: CachedInstance> TypedOps<T> {
    /// The pks whose key forms are `pk_keys`, and their rows, in one
    /// loader call (none for no pks).
    async fn load_keys(
        &self,
        loading: Loading<'_>,
        pk_keys: &[String],
    ) -> Result<(Vec<T::Pk>, Vec<T>), Error> {
        // A key form that does not parse names no row of this model.
        let pks: Vec<T::Pk> = pk_keys.iter().filter_map(|k| T::Pk::from_key(k)).collect();
        if pks.is_empty() {
            return Ok((pks, Vec::new()));
        }
        let rows = loading.call(T::MODEL, self.loader.load(&pks)).await?;
        Ok((pks, rows))
    }
}

impl<T: CachedInstance> ModelOps for TypedOps<T> {
    fn links_of(&self, bytes: &[u8]) -> Option<Links> {
        T::decode(bytes).ok().map(|t| Links::of(&t))
    }

    fn reload<'a>(
        &'a self,
        loading: Loading<'a>,
        pk_keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Reloaded>, Error>> {
        Box::pin(async move {
            let (_, rows) = self.load_keys(loading, pk_keys).await?;
            let mut out = Vec::with_capacity(rows.len());
            let mut encoder = Encoder::default();
            for row in rows {
                let bytes = encoder.encode(&row)?;
                out.push(Reloaded {
                    pk_key: row.pk().to_key(),
                    links: Links::of(&row),
                    bytes,
                });
            }
            Ok(out)
        })
    }

    fn index_member(&self, pk_key: &str) -> Option<String> {
        T::Pk::from_key(pk_key).map(|pk| pk.to_index_member())
    }

    fn key_of_text(&self, text: &str) -> Option<String> {
        T::Pk::from_url(text).map(|pk| pk.to_key())
    }

    fn index_updates<'a>(
        &'a self,
        loading: Loading<'a>,
        pk_keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<IndexUpdate>, Error>> {
        Box::pin(async move {
            let (pks, rows) = self.load_keys(loading, pk_keys).await?;
            let by_member: HashMap<String, &T> = rows
                .iter()
                .map(|row| (row.pk().to_index_member(), row))
                .collect();
            Ok(pks
                .iter()
                .map(|pk| {
                    let member = pk.to_index_member();
                    let row = by_member.get(&member).copied();
                    update_of(member, row)
                })
                .collect())
        })
    }
}

/// One registered type: a version of a model.
pub(crate) struct ModelEntry {
    pub(crate) schema: Schema,
    type_name: &'static str,
    pk_type: &'static str,
    /// `Arc<dyn DynLoader<T>>`, for the typed read path.
    loader: Box<dyn Any + Send + Sync>,
    pub(crate) ops: Box<dyn ModelOps>,
    edges: Vec<Edge>,
    /// The field names of this type's representation, learned from the
    /// first one encoded: what `get_json` checks (see `shape.rs`).
    pub(crate) shape: super::shape::ShapeCell,
    /// Whether this type's batch reads have lately been missing (`cold.rs`).
    pub(crate) cold: super::cold::ColdReads,
    /// The keys of this type's recent list pages, to read alongside the
    /// next index query of the same list (`prefetch.rs`).
    pub(crate) pages: super::prefetch::PageGuesses,
    /// The key prefix of this type's indexes (`plan::prefix`), computed
    /// once rather than on every list.
    pub(crate) index_prefix: String,
    keys: KeyLayout,
}

impl ModelEntry {
    pub(crate) fn new<T: CachedInstance>(loader: Arc<dyn DynLoader<T>>) -> Self {
        ModelEntry {
            schema: T::SCHEMA,
            type_name: std::any::type_name::<T>(),
            pk_type: std::any::type_name::<T::Pk>(),
            ops: Box::new(TypedOps {
                loader: loader.clone(),
            }),
            loader: Box::new(loader),
            edges: Vec::new(),
            shape: Default::default(),
            cold: Default::default(),
            pages: Default::default(),
            index_prefix: crate::store::plan::prefix(&T::SCHEMA),
            keys: KeyLayout::of(&T::SCHEMA),
        }
    }

    pub(crate) fn loader<T: CachedInstance>(&self) -> &Arc<dyn DynLoader<T>> {
        self.loader
            .downcast_ref::<Arc<dyn DynLoader<T>>>()
            // Entries are keyed by TypeId, so the downcast always matches.
            .expect("registry entry holds the loader of its own type")
    }

    /// One loader call for `pks` of `T` (this entry's type).
    pub(crate) async fn load<T: CachedInstance>(
        &self,
        loading: Loading<'_>,
        pks: &[T::Pk],
    ) -> Result<Vec<T>, Error> {
        loading.call(T::MODEL, self.loader::<T>().load(pks)).await
    }

    /// One loader call for the pks `pks` yields once this read's leases
    /// are taken ([`Loader::load_after`](crate::Loader::load_after)), none
    /// if it yields none.
    pub(crate) async fn load_after<'a, T: CachedInstance>(
        &'a self,
        loading: Loading<'a>,
        pks: impl Future<Output = Vec<T::Pk>> + Send + 'a,
    ) -> Result<Vec<T>, Error> {
        let loader = self.loader::<T>();
        loading
            .call_after(T::MODEL, pks, |pks| loader.load_after(pks))
            .await
    }

    /// The key of the pk whose key form is `pk_key`.
    pub(crate) fn key(&self, pk_key: &str) -> String {
        self.keys.key(pk_key)
    }

    /// The key of `pk` (of this entry's type).
    pub(crate) fn key_of<P: PrimaryKey>(&self, pk: &P) -> String {
        self.keys.key_of(pk)
    }

    /// Calls `f` with the key of `pk`, without allocating it
    /// ([`KeyLayout::with_key_of`](crate::key::KeyLayout::with_key_of)).
    pub(crate) fn with_key_of<P: PrimaryKey, R>(&self, pk: &P, f: impl FnMut(&str) -> R) -> R {
        self.keys.with_key_of(pk, f)
    }

    /// What a change from `old` to `new` (either absent for a create or a
    /// delete, or an unknown prior state) invalidates, besides the instance.
    pub(crate) fn targets(&self, old: Option<&Links>, new: Option<&Links>, out: &mut Vec<Target>) {
        for edge in &self.edges {
            let old = old.map(|l| &l.relations[edge.relation]);
            let new = new.map(|l| &l.relations[edge.relation]);
            let changed: BTreeSet<&String> = match (edge.kind, old, new) {
                (_, None, None) => BTreeSet::new(),
                (_, Some(only), None) | (_, None, Some(only)) => only.iter().collect(),
                (EdgeKind::Parent, Some(old), Some(new)) => {
                    if old == new {
                        BTreeSet::new()
                    } else {
                        old.iter().chain(new).collect()
                    }
                }
                (EdgeKind::Symmetric, Some(old), Some(new)) => {
                    let old: BTreeSet<&String> = old.iter().collect();
                    let new: BTreeSet<&String> = new.iter().collect();
                    old.symmetric_difference(&new).copied().collect()
                }
            };
            out.extend(changed.into_iter().map(|pk| Target::Instance {
                model: edge.target,
                pk: pk.clone(),
            }));
        }
        for links in [old, new].into_iter().flatten() {
            out.extend(links.extra.iter().cloned());
        }
        out.extend(
            self.schema
                .invalidates_keys
                .iter()
                .map(|k| Target::Key((*k).to_owned())),
        );
    }
}

/// A `TypeId` is already a hash: it is used as it is. Anything else
/// written (never, as `TypeId` writes one `u64`) is folded with FNV-1a.
#[derive(Default)]
pub(crate) struct TypeIdHasher(u64);

impl Hasher for TypeIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Every registered model, by type and by model name.
#[derive(Default)]
pub(crate) struct Registry {
    /// Looked up on every read: keyed by the `TypeId`'s own bits, not
    /// hashed again (see [`TypeIdHasher`]).
    by_type: HashMap<TypeId, Arc<ModelEntry>, BuildHasherDefault<TypeIdHasher>>,
    by_model: HashMap<&'static str, Vec<Arc<ModelEntry>>>,
}

impl Registry {
    pub(crate) fn entry<T: CachedInstance>(&self) -> Result<&Arc<ModelEntry>, Error> {
        self.by_type
            .get(&TypeId::of::<T>())
            .ok_or(Error::NotRegistered {
                model: T::SCHEMA.model,
                version: T::SCHEMA.version,
            })
    }

    /// Every registered type.
    #[cfg_attr(
        not(any(feature = "sqlx-postgres", feature = "sqlx-sqlite")),
        allow(dead_code)
    )]
    pub(crate) fn entries(&self) -> impl Iterator<Item = &Arc<ModelEntry>> {
        self.by_model.values().flatten()
    }

    /// Every registered version of a model.
    pub(crate) fn versions(&self, model: &str) -> &[Arc<ModelEntry>] {
        self.by_model.get(model).map_or(&[], Vec::as_slice)
    }

    /// Validates the registered entries and derives the invalidation graph.
    pub(crate) fn build(entries: Vec<(TypeId, ModelEntry)>) -> Result<Self, BuildError> {
        let mut seen: HashMap<(&str, &str), &'static str> = HashMap::new();
        let mut pk_types: HashMap<&str, &'static str> = HashMap::new();
        for (_, e) in &entries {
            if let Some(first) = seen.insert((e.schema.model, e.schema.version), e.type_name) {
                return Err(BuildError::DuplicateVersion {
                    model: e.schema.model,
                    version: e.schema.version,
                    first,
                    second: e.type_name,
                });
            }
            let first = *pk_types.entry(e.schema.model).or_insert(e.pk_type);
            if first != e.pk_type {
                return Err(BuildError::PkMismatch {
                    model: e.schema.model,
                    first,
                    second: e.pk_type,
                });
            }
        }
        for (_, e) in &entries {
            for rel in e.schema.relations {
                if !pk_types.contains_key(rel.target) {
                    return Err(BuildError::MissingLoader {
                        model: e.schema.model,
                        field: rel.field,
                        target: rel.target,
                    });
                }
            }
        }

        // A `has_many = X, via = f` on T makes X's `references` field `f` an
        // edge from X to T. The derive checks the declarations pair up; the
        // graph is still built defensively from what is actually registered.
        let has_many: Vec<(&'static str, &'static str, &'static str, &'static str)> = entries
            .iter()
            .flat_map(|(_, e)| {
                e.schema.relations.iter().filter_map(move |r| match r.kind {
                    RelationKind::HasMany { via } => Some((e.schema.model, r.field, r.target, via)),
                    _ => None,
                })
            })
            .collect();
        for (parent, field, child, via) in &has_many {
            let points_back = entries.iter().any(|(_, e)| {
                e.schema.model == *child
                    && e.schema.relations.iter().any(|r| {
                        r.field == *via
                            && r.target == *parent
                            && matches!(r.kind, RelationKind::References)
                    })
            });
            if !points_back {
                return Err(BuildError::BrokenVia {
                    model: parent,
                    field,
                    target: child,
                    via,
                });
            }
        }

        let mut registry = Registry::default();
        for (type_id, mut e) in entries {
            for (i, rel) in e.schema.relations.iter().enumerate() {
                match rel.kind {
                    RelationKind::References => {
                        let mut parents: Vec<&'static str> = has_many
                            .iter()
                            .filter(|(parent, _, child, via)| {
                                *child == e.schema.model
                                    && *via == rel.field
                                    && *parent == rel.target
                            })
                            .map(|(parent, ..)| *parent)
                            .collect();
                        parents.dedup();
                        e.edges.extend(parents.into_iter().map(|target| Edge {
                            relation: i,
                            target,
                            kind: EdgeKind::Parent,
                        }));
                    }
                    RelationKind::ManyToMany { inverse: Some(_) } => e.edges.push(Edge {
                        relation: i,
                        target: rel.target,
                        kind: EdgeKind::Symmetric,
                    }),
                    _ => {}
                }
            }
            let e = Arc::new(e);
            registry
                .by_model
                .entry(e.schema.model)
                .or_default()
                .push(e.clone());
            registry.by_type.insert(type_id, e);
        }
        Ok(registry)
    }
}

/// The index update of `member`: the row's values, or the member's removal
/// when the row is gone.
pub(super) fn update_of<T: CachedInstance>(member: String, row: Option<&T>) -> IndexUpdate {
    let record = row.map(|row| plan::record(&T::SCHEMA, &IndexValues::of(row)));
    IndexUpdate::new(member, record)
}
