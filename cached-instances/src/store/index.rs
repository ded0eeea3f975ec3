//! The query index primitives a store provides (see [`query`](crate::query)).
//!
//! A model version's indexes live under one key prefix,
//! `ci:{idx:<model>}:<version>:<hash>:`, whose hash tag puts every index
//! structure of the model in one Redis Cluster slot, so each primitive is one
//! atomic script there. Under the prefix, by suffix:
//!
//! | suffix | structure |
//! | --- | --- |
//! | `all` | sorted set of every indexed member, score 0 (so in member order) |
//! | `e:<field>:<term>` | set of the members whose `index` field has that term |
//! | `t:<field>:<token>` | set of the members whose `search` field has that token |
//! | `s:<field>` | sorted set of every member, scored by its `sortable` field (`+inf` for `None`) |
//! | `rec` | hash: member → its current memberships (the index record) |
//! | `lease` | hash: member → the token of the update in progress |
//! | `warm` | string: present once the index is complete (after `Cache::warm`) |
//! | `counts` | hash: the count cache, filters → how many members match them |
//!
//! Members are primary keys in their index form
//! ([`PrimaryKey::write_index_member`](crate::PrimaryKey::write_index_member)).
//! The record keeps what a member is in, so an update removes the old
//! memberships without being told the old values, even when the member's
//! cache entry expired long ago.
//!
//! The count cache keeps the counts a query had to compute with more than
//! O(1) work (an intersection of sets, a set or search term filtered by a
//! score range), keyed by the filters in a canonical form, so that the next
//! query with the same filters (in any order, with any ordering, offset or
//! limit) reads its count instead of recomputing it, and, with the count
//! known, can find its page by walking the order's sorted set rather than
//! reading every match: reads far outnumber writes. Every applied update
//! that adds, removes or rescores a member in a set or sorted set clears
//! it, so a cached count is always the count the query would compute at
//! that moment, and the first such query after a change computes it again
//! (an update that changes nothing, such as a save of unindexed fields,
//! keeps it). It holds at most `COUNTS_MAX` (10 000) counts: it is cleared
//! before it would hold more. The `MemoryStore` keeps the same cache in its
//! index.

use std::ops::Bound;

use bytes::Bytes;

/// The memberships of one member: the sets it belongs to and its score in
/// each sorted set (suffixes under the model's prefix).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct IndexRecord {
    /// Set suffixes (`e:...`, `t:...`).
    pub sets: Vec<String>,
    /// Sorted-set suffixes (`s:<field>`) with the member's score.
    pub scores: Vec<(String, f64)>,
}

impl IndexRecord {
    /// A record of `sets` and `scores`.
    #[must_use]
    pub fn new(sets: Vec<String>, scores: Vec<(String, f64)>) -> Self {
        IndexRecord { sets, scores }
    }
}

/// One member's new record, or its removal (`record: None`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct IndexUpdate {
    /// The member (a pk in index form).
    pub member: String,
    /// The new memberships; `None` removes the member from every structure.
    pub record: Option<IndexRecord>,
}

impl IndexUpdate {
    /// Sets `member`'s record, or removes it.
    #[must_use]
    pub fn new(member: String, record: Option<IndexRecord>) -> Self {
        IndexUpdate { member, record }
    }
}

/// A score interval on one sorted set. Members scored `+inf` (a `None`
/// value) only match an interval whose upper bound is `+inf`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ScoreRange {
    /// The sorted set's suffix (`s:<field>`).
    pub zset: String,
    /// The lower bound.
    pub min: Bound<f64>,
    /// The upper bound.
    pub max: Bound<f64>,
}

impl ScoreRange {
    /// The interval `min..max` of `zset`.
    #[must_use]
    pub fn new(zset: String, min: Bound<f64>, max: Bound<f64>) -> Self {
        ScoreRange { zset, min, max }
    }

    /// Whether `score` lies in the interval.
    #[must_use]
    pub fn contains(&self, score: f64) -> bool {
        let above = match self.min {
            Bound::Unbounded => true,
            Bound::Included(min) => score >= min,
            Bound::Excluded(min) => score > min,
        };
        let below = match self.max {
            Bound::Unbounded => true,
            Bound::Included(max) => score <= max,
            Bound::Excluded(max) => score < max,
        };
        above && below
    }
}

/// A query over a model's index, planned by the cache.
///
/// The result is every member that is in at least one set of each group
/// and whose score lies in each range, ordered by its score in `order`
/// (ties, and `order: None`, by member in byte order; `descending` reverses
/// both), then `offset` and `limit` applied.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct IndexQuery {
    /// Groups of set suffixes: a member must be in a set of every group.
    pub groups: Vec<Vec<String>>,
    /// Score intervals a member's scores must lie in.
    pub ranges: Vec<ScoreRange>,
    /// The sorted set to order by (`None`: by member).
    pub order: Option<String>,
    /// Highest scores first.
    pub descending: bool,
    /// Members to skip.
    pub offset: u64,
    /// Members to return at most (`None`: all).
    pub limit: Option<u64>,
    /// Run even if the index is not marked warm (to list what it holds).
    pub ignore_warm: bool,
    /// The [`version`](IndexPage::version) of the index at which the caller
    /// last read this same query's page, if it kept it. A store that
    /// versions its index may then answer [`IndexPage::unchanged`] instead
    /// of the members; any store may ignore it.
    pub known: Option<Bytes>,
}

/// What an [`IndexQuery`] found: one page of members and the total count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IndexPage {
    /// The page's members, in order (none when [`unchanged`](Self::unchanged)).
    pub members: Vec<String>,
    /// How many members match, before `offset` and `limit`.
    pub total: u64,
    /// The index's version when the page was read, for a store that keeps
    /// one: a value the index never holds twice, replaced in the same
    /// atomic step as any change to the model's sets and sorted sets.
    pub version: Option<Bytes>,
    /// The index was still at the query's [`known`](IndexQuery::known)
    /// version: the page is the one read at that version, and `members`
    /// is left empty. `total` is read afresh either way.
    pub unchanged: bool,
}

impl IndexPage {
    /// A page of `members` out of `total`.
    #[must_use]
    pub fn new(members: Vec<String>, total: u64) -> Self {
        IndexPage {
            members,
            total,
            version: None,
            unchanged: false,
        }
    }

    /// The same page, read at `version` of the index.
    #[must_use]
    pub fn at(mut self, version: Option<Bytes>) -> Self {
        self.version = version;
        self
    }

    /// The page read at `version`, the query's known version, out of
    /// `total` now.
    #[must_use]
    pub fn unchanged(total: u64, version: Bytes) -> Self {
        IndexPage {
            members: Vec::new(),
            total,
            version: Some(version),
            unchanged: true,
        }
    }
}

/// The suffix of the key marking an index complete.
pub const WARM_SUFFIX: &str = "warm";

/// The most counts a model's count cache holds: it is cleared before it
/// would hold more, so many distinct filters cannot grow it without bound
/// (a count is a few dozen bytes, so this bounds it to a few hundred KiB).
pub(crate) const COUNTS_MAX: usize = 10_000;

/// Formats a score for a Redis command or script argument.
#[cfg(feature = "redis")]
pub(crate) fn score_arg(score: f64) -> String {
    if score == f64::INFINITY {
        "+inf".to_owned()
    } else if score == f64::NEG_INFINITY {
        "-inf".to_owned()
    } else {
        // Rust prints the shortest decimal that parses back to the same
        // f64, and never uses an exponent, so `strtod` reads it exactly.
        format!("{score}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_contain() {
        let r = ScoreRange::new("s:x".into(), Bound::Included(1.0), Bound::Excluded(3.0));
        assert!(r.contains(1.0) && r.contains(2.5));
        assert!(!r.contains(3.0) && !r.contains(0.5) && !r.contains(f64::INFINITY));
        let open = ScoreRange::new("s:x".into(), Bound::Unbounded, Bound::Unbounded);
        assert!(open.contains(f64::INFINITY));
    }
}
