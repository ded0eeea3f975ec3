//! The change feed's entry into the cache (`crate::feed`): what a captured
//! row change invalidates, derived from the declarations as `saved_from`
//! derives it from two states, and its delivery through the write path's
//! cascade.
//!
//! A row of a model's table names the instance (its old and new pk) and the
//! old and new values of its `references` columns, so the old and the new
//! parent of a moved foreign key are invalidated even when neither is
//! cached. A row of a `many_to_many ... through` join table names both
//! sides. The instances themselves are delivered as one cascade level: each
//! key (every version) is swapped to a lease, what it held is compared with
//! a reload, and the relations that changed are cascaded to, as a delivery
//! of queued invalidations does.

use std::collections::{BTreeSet, HashSet};

use serde_json::{Map, Value};

use super::Cache;
use super::registry::{Links, ModelEntry};
use super::write::Caller;
use crate::error::Error;
use crate::instance::Capture;
use crate::instance::{RelationKind, Target};

/// Why a captured row cannot be turned into an invalidation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unusable {
    /// No registered model reads the table.
    #[error("no registered model captures table `{0}`")]
    UnknownTable(String),
    /// A captured column is missing from the row.
    #[error("column `{column}` of `{table}` is missing from the row")]
    MissingColumn { table: String, column: &'static str },
    /// A pk (or foreign key) that is not one of its model.
    #[error("`{value}` in column `{column}` is not a primary key of `{model}`")]
    BadPk {
        model: &'static str,
        column: &'static str,
        value: String,
    },
}

/// A captured row change: its table, and its states before and after
/// (absent for an insert and a delete).
pub(crate) struct RowChange<'a> {
    pub(crate) table: &'a str,
    pub(crate) old: Option<&'a Map<String, Value>>,
    pub(crate) new: Option<&'a Map<String, Value>>,
}

/// What a batch of row changes invalidates.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Instances whose row (or list) changed: invalidated, compared with a
    /// reload, cascaded from.
    instances: BTreeSet<(&'static str, String)>,
    /// Query-index records to redo: `(model, version, pk_key)`.
    reindex: BTreeSet<(&'static str, &'static str, String)>,
    /// What the captured columns say the change touched besides.
    targets: Vec<Target>,
}

impl Changes {
    pub(crate) fn is_empty(&self) -> bool {
        self.instances.is_empty() && self.targets.is_empty()
    }

    fn merge(&mut self, other: Changes) {
        self.instances.extend(other.instances);
        self.reindex.extend(other.reindex);
        self.targets.extend(other.targets);
    }
}

/// The key form of the pk of `entry`'s model in `column` of `state`;
/// `None` for SQL `NULL` (a nullable foreign key).
fn key_in(
    state: &Map<String, Value>,
    table: &str,
    column: &'static str,
    entry: &ModelEntry,
) -> Result<Option<String>, Unusable> {
    let bad = |value: String| Unusable::BadPk {
        model: entry.schema.model,
        column,
        value,
    };
    match state.get(column) {
        None => Err(Unusable::MissingColumn {
            table: table.to_owned(),
            column,
        }),
        Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => entry
            .ops
            .key_of_text(text)
            .map(Some)
            .ok_or_else(|| bad(text.clone())),
        Some(other) => Err(bad(other.to_string())),
    }
}

impl Cache {
    /// The captures of every registered model with a table.
    pub(crate) fn captures(&self) -> Vec<&'static Capture> {
        self.inner
            .registry
            .entries()
            .filter_map(|e| e.schema.capture)
            .collect()
    }

    /// Adds what `row` invalidates to `changes`, or says why it cannot
    /// (then `changes` is left as it was).
    pub(crate) fn plan_change(
        &self,
        row: &RowChange<'_>,
        changes: &mut Changes,
    ) -> Result<(), Unusable> {
        let mut planned = Changes::default();
        let mut known = false;
        let registry = &self.inner.registry;
        let states = || [row.old, row.new].into_iter().flatten();
        for entry in registry.entries() {
            let Some(capture) = entry.schema.capture else {
                continue;
            };
            let model = entry.schema.model;
            if capture.table == row.table {
                known = true;
                let mut links = [None, None];
                for (slot, state) in [row.old, row.new].into_iter().enumerate() {
                    let Some(state) = state else { continue };
                    let pk =
                        key_in(state, row.table, capture.pk_column, entry)?.ok_or_else(|| {
                            Unusable::BadPk {
                                model,
                                column: capture.pk_column,
                                value: "NULL".to_owned(),
                            }
                        })?;
                    if !entry.schema.indexes.is_empty() {
                        planned
                            .reindex
                            .insert((model, entry.schema.version, pk.clone()));
                    }
                    planned.instances.insert((model, pk));
                    let mut relations = vec![Vec::new(); entry.schema.relations.len()];
                    for reference in capture.references {
                        let target = entry.schema.relations[reference.relation].target;
                        let Some(target_entry) = registry.versions(target).first() else {
                            continue;
                        };
                        if let Some(key) = key_in(state, row.table, reference.column, target_entry)?
                        {
                            relations[reference.relation].push(key);
                        }
                    }
                    links[slot] = Some(Links::from_relations(relations));
                }
                let [old, new] = links;
                entry.targets(old.as_ref(), new.as_ref(), &mut planned.targets);
            }
            for join in capture.joins.iter().filter(|j| j.table == row.table) {
                known = true;
                let relation = &entry.schema.relations[join.relation];
                let other = registry.versions(relation.target).first();
                for state in states() {
                    if let Some(pk) = key_in(state, row.table, join.source, entry)? {
                        planned.instances.insert((model, pk));
                    }
                    // The other side lists this model's pks only when the
                    // relation is mirrored (`inverse`), as in `saved_from`.
                    let mirrored =
                        matches!(relation.kind, RelationKind::ManyToMany { inverse: Some(_) });
                    if let (true, Some(other)) = (mirrored, other)
                        && let Some(pk) = key_in(state, row.table, join.target, other)?
                    {
                        planned.instances.insert((other.schema.model, pk));
                    }
                }
            }
        }
        if !known {
            return Err(Unusable::UnknownTable(row.table.to_owned()));
        }
        changes.merge(planned);
        Ok(())
    }

    /// Delivers `changes` as the write path would: the instances as one
    /// cascade level (every version leased, what they held compared with a
    /// reload), the targets the columns named, the cascade, then the query
    /// indexes. `Ok(true)` once the store has taken all of it; `Ok(false)`
    /// when it could not (the cache queues what it could not deliver, and
    /// the caller keeps the changes to deliver again).
    pub(crate) async fn apply_changes(&self, changes: Changes) -> Result<bool, Error> {
        if changes.is_empty() {
            return Ok(true);
        }
        let writer = self.inner.invalidator();
        if !writer.gate.usable() {
            return Ok(false);
        }
        let Changes {
            instances,
            reindex,
            targets,
        } = changes;
        // The instances and the column targets as the cascade's first
        // level: each is leased, compared with a reload, and what changed
        // is followed.
        let first: Vec<Target> = instances
            .into_iter()
            .map(|(model, pk)| Target::Instance { model, pk })
            .chain(targets)
            .collect();
        writer.cascade(first, HashSet::new(), Caller::Write).await?;
        let degraded = writer.gate.degraded;
        if !degraded.has_pending() && !reindex.is_empty() {
            let reindex = reindex.into_iter().collect();
            writer.indexes.deliver_reindexes(reindex).await;
        }
        // Anything queued (a level or an index update the store dropped)
        // is delivered by the cache later, but only the store's answer
        // acknowledges the rows.
        Ok(!degraded.has_pending())
    }
}
