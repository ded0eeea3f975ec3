//! From a [`Query`] and from index values to the store's index primitives:
//! the key prefix of a model's index, each instance's record, and the
//! store-level [`IndexQuery`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::ops::Bound;

use super::{IndexQuery, IndexRecord, ScoreRange};
use crate::instance::{CachedInstance, IndexValues, Schema};
use crate::key::fnv1a;
use crate::query::{Condition, Query};

/// The prefix of every index key of a model version:
/// `ci:{idx:<model>}:<version>:<hash>:`. The hash covers the schema hash
/// and the index declarations, so a changed struct or a new index starts
/// from an empty, cold index.
pub(crate) fn prefix(schema: &Schema) -> String {
    let mut declared = format!("{:016x}", schema.hash);
    for field in schema.indexes {
        let _ = write!(
            declared,
            "\0{}\0{}{}{}",
            field.name,
            u8::from(field.exact),
            u8::from(field.sortable),
            u8::from(field.search)
        );
    }
    let hash = fnv1a(declared.as_bytes());
    format!(
        "ci:{{idx:{}}}:{}:{hash:016x}:",
        schema.model, schema.version
    )
}

pub(crate) fn exact_set(name: &str, term: &str) -> String {
    format!("e:{name}:{term}")
}

pub(crate) fn token_set(name: &str, token: &str) -> String {
    format!("t:{name}:{token}")
}

pub(crate) fn sort_zset(name: &str) -> String {
    format!("s:{name}")
}

/// The memberships of an instance with these index values.
pub(crate) fn record(schema: &Schema, values: &IndexValues) -> IndexRecord {
    let mut sets = Vec::new();
    let mut scores = Vec::new();
    for (i, field) in schema.indexes.iter().enumerate() {
        let Some(v) = values.field(i) else { continue };
        if field.exact
            && let Some(term) = &v.term
        {
            sets.push(exact_set(field.name, term));
        }
        if field.search {
            sets.extend(v.tokens.iter().map(|t| token_set(field.name, t)));
        }
        if field.sortable {
            scores.push((sort_zset(field.name), v.score.unwrap_or(f64::INFINITY)));
        }
    }
    IndexRecord::new(sets, scores)
}

fn tighter_min(a: Bound<f64>, b: Bound<f64>) -> Bound<f64> {
    match (a, b) {
        (Bound::Unbounded, x) | (x, Bound::Unbounded) => x,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y))
            if x != y =>
        {
            if x > y {
                a
            } else {
                b
            }
        }
        // Same value: exclusive is tighter.
        (Bound::Excluded(_), _) | (_, Bound::Excluded(_)) => match a {
            Bound::Excluded(_) => a,
            _ => b,
        },
        _ => a,
    }
}

fn tighter_max(a: Bound<f64>, b: Bound<f64>) -> Bound<f64> {
    match (a, b) {
        (Bound::Unbounded, x) | (x, Bound::Unbounded) => x,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y))
            if x != y =>
        {
            if x < y {
                a
            } else {
                b
            }
        }
        (Bound::Excluded(_), _) | (_, Bound::Excluded(_)) => match a {
            Bound::Excluded(_) => a,
            _ => b,
        },
        _ => a,
    }
}

/// The store-level form of `query`: one group per exact filter and per
/// search term, one range per filtered field (its filters intersected; an
/// open upper end stops at `f64::MAX`, so `None`, scored `+inf`, matches no
/// range).
pub(crate) fn index_query<T: CachedInstance>(query: &Query<T>) -> IndexQuery {
    let schema = T::SCHEMA;
    let mut groups = Vec::new();
    let mut ranges: BTreeMap<usize, (Bound<f64>, Bound<f64>)> = BTreeMap::new();
    for filter in query.filters() {
        match &filter.condition {
            Condition::Equals(term) => groups.push(vec![exact_set(filter.field.name, term)]),
            Condition::Range(min, max) => {
                let slot = ranges
                    .entry(filter.index)
                    .or_insert((Bound::Unbounded, Bound::Unbounded));
                slot.0 = tighter_min(slot.0, *min);
                slot.1 = tighter_max(slot.1, *max);
            }
        }
    }
    for term in query.search_terms() {
        groups.push(
            term.fields
                .iter()
                .map(|&i| token_set(schema.indexes[i].name, &term.token))
                .collect(),
        );
    }
    let ranges = ranges
        .into_iter()
        .map(|(index, (min, max))| {
            let max = match max {
                Bound::Unbounded => Bound::Included(f64::MAX),
                other => other,
            };
            ScoreRange::new(sort_zset(schema.indexes[index].name), min, max)
        })
        .collect();
    let order = query.order_by_field();
    IndexQuery {
        groups,
        ranges,
        order: order.map(|o| sort_zset(o.field.name)),
        descending: order.is_some_and(|o| o.descending),
        offset: query.offset_value(),
        limit: query.limit_value(),
        ignore_warm: false,
        known: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_intersect() {
        use Bound::{Excluded as E, Included as I, Unbounded as U};
        assert_eq!(tighter_min(U, I(1.0)), I(1.0));
        assert_eq!(tighter_min(I(2.0), I(1.0)), I(2.0));
        assert_eq!(tighter_min(I(1.0), E(1.0)), E(1.0));
        assert_eq!(tighter_max(I(2.0), E(3.0)), I(2.0));
        assert_eq!(tighter_max(E(2.0), I(2.0)), E(2.0));
        assert_eq!(tighter_max(U, U), U);
    }
}
