//! The in-process query index engine of [`MemoryStore`](super::MemoryStore):
//! the same structures as on Redis (sets, sorted sets, a record and a lease
//! per member, and the count cache; see `store/index.rs`), kept apart from
//! the entry map so that they are never evicted, each primitive atomic
//! under one lock.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Mutex;

use crate::store::index::COUNTS_MAX;
use crate::store::{IndexPage, IndexQuery, IndexRecord, IndexUpdate, ScoreRange};

/// A score with a total order (scores are never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Score(f64);

impl Eq for Score {}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[derive(Default)]
struct Zset {
    scores: HashMap<String, f64>,
    ordered: BTreeSet<(Score, String)>,
}

impl Zset {
    /// Adds or rescores `member`; whether that changed anything.
    fn add(&mut self, member: &str, score: f64) -> bool {
        if let Some(old) = self.scores.insert(member.to_owned(), score) {
            // Bitwise: `ordered` is keyed by the total order, where
            // -0.0 and 0.0 differ.
            if old.to_bits() == score.to_bits() {
                return false;
            }
            self.ordered.remove(&(Score(old), member.to_owned()));
        }
        self.ordered.insert((Score(score), member.to_owned()));
        true
    }

    /// Removes `member`; whether it was there.
    fn remove(&mut self, member: &str) -> bool {
        match self.scores.remove(member) {
            Some(old) => self.ordered.remove(&(Score(old), member.to_owned())),
            None => false,
        }
    }
}

/// A bound in a form that can be hashed and compared: its kind and the
/// bits of its value.
type BoundKey = (u8, u64);

fn bound_key(bound: Bound<f64>) -> BoundKey {
    match bound {
        Bound::Unbounded => (0, 0),
        Bound::Included(v) => (1, v.to_bits()),
        Bound::Excluded(v) => (2, v.to_bits()),
    }
}

/// The count cache's key: a query's filters in a canonical form (each
/// group's sets sorted, the groups and the ranges sorted), so that the
/// same filters given in another order, or with another ordering, offset
/// or limit, share one count.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CountKey {
    groups: Vec<Vec<String>>,
    ranges: Vec<(String, BoundKey, BoundKey)>,
}

impl CountKey {
    fn of(query: &IndexQuery) -> CountKey {
        let mut groups: Vec<Vec<String>> = query
            .groups
            .iter()
            .map(|g| {
                let mut g = g.clone();
                g.sort();
                g
            })
            .collect();
        groups.sort();
        let mut ranges: Vec<_> = query
            .ranges
            .iter()
            .map(|r| (r.zset.clone(), bound_key(r.min), bound_key(r.max)))
            .collect();
        ranges.sort();
        CountKey { groups, ranges }
    }
}

#[derive(Default)]
struct ModelIndex {
    sets: HashMap<String, HashSet<String>>,
    zsets: HashMap<String, Zset>,
    records: HashMap<String, IndexRecord>,
    leases: HashMap<String, Vec<u8>>,
    /// The count cache (see `store/index.rs`): the counts queries computed
    /// with more than O(1) work, cleared by every change to `sets` or
    /// `zsets`, so each is the count of the index as it is now.
    counts: HashMap<CountKey, u64>,
}

const ALL: &str = "all";

impl ModelIndex {
    /// Applies one update; whether it changed a set or a sorted set (and
    /// so, possibly, a count).
    fn apply(&mut self, update: &IndexUpdate) -> bool {
        let member = update.member.as_str();
        let old = self.records.remove(member).unwrap_or_default();
        let new = update.record.clone().unwrap_or_default();
        let mut changed = false;
        for set in &old.sets {
            if !new.sets.contains(set)
                && let Some(members) = self.sets.get_mut(set)
            {
                changed |= members.remove(member);
                if members.is_empty() {
                    self.sets.remove(set);
                }
            }
        }
        for set in &new.sets {
            changed |= self
                .sets
                .entry(set.clone())
                .or_default()
                .insert(member.to_owned());
        }
        for (zset, _) in &old.scores {
            if !new.scores.iter().any(|(z, _)| z == zset)
                && let Some(z) = self.zsets.get_mut(zset)
            {
                changed |= z.remove(member);
            }
        }
        for (zset, score) in &new.scores {
            changed |= self
                .zsets
                .entry(zset.clone())
                .or_default()
                .add(member, *score);
        }
        let all = self.zsets.entry(ALL.to_owned()).or_default();
        if update.record.is_some() {
            changed |= all.add(member, 0.0);
            self.records.insert(member.to_owned(), new);
        } else {
            changed |= all.remove(member);
        }
        if changed {
            self.counts.clear();
        }
        changed
    }

    fn score(&self, zset: &str, member: &str) -> Option<f64> {
        self.zsets.get(zset)?.scores.get(member).copied()
    }

    fn in_range(&self, range: &ScoreRange, member: &str) -> bool {
        self.score(&range.zset, member)
            .is_some_and(|s| range.contains(s))
    }

    /// Answers `query`, reading and filling the count cache.
    fn query(&mut self, query: &IndexQuery) -> IndexPage {
        // One set alone is counted by its length, and the order's sorted
        // set alone by its length: nothing to cache.
        let single_set =
            query.groups.len() == 1 && query.groups[0].len() == 1 && query.ranges.is_empty();
        let no_filters = query.groups.is_empty() && query.ranges.is_empty();
        let cacheable = !(single_set || no_filters);
        let key = cacheable.then(|| CountKey::of(query));
        let cached = key.as_ref().and_then(|k| self.counts.get(k).copied());
        let (page, computed) = self.answer(query, cached);
        if let (Some(key), true) = (key, computed) {
            if self.counts.len() >= COUNTS_MAX {
                self.counts.clear();
            }
            self.counts.insert(key, page.total);
        }
        page
    }

    /// The same plans as the Redis script: the order's sorted set alone;
    /// else, with the count known (one set's length, or `cached`), the page
    /// found by walking the order's sorted set when it comes early in it;
    /// else the matches counted from the smallest group of sets (or the
    /// order's sorted set, for ranges only), and the page found by walking
    /// or by sorting. Also says whether it computed the count by visiting
    /// the matches (and so whether to cache it).
    fn answer(&self, query: &IndexQuery, cached: Option<u64>) -> (IndexPage, bool) {
        let order = query.order.as_deref().unwrap_or(ALL);
        let empty_zset = Zset::default();
        let order_zset = self.zsets.get(order).unwrap_or(&empty_zset);
        let skip = usize::try_from(query.offset).unwrap_or(usize::MAX);
        let take = query
            .limit
            .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        let in_order = || -> Box<dyn Iterator<Item = &str> + '_> {
            let members = order_zset.ordered.iter().map(|(_, m)| m.as_str());
            if query.descending {
                Box::new(order_zset.ordered.iter().rev().map(|(_, m)| m.as_str()))
            } else {
                Box::new(members)
            }
        };
        let page_of = |members: Box<dyn Iterator<Item = &str> + '_>| -> Vec<String> {
            members.skip(skip).take(take).map(str::to_owned).collect()
        };

        let empty_set = HashSet::new();
        let mut groups: Vec<Vec<&HashSet<String>>> = query
            .groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|s| self.sets.get(s).unwrap_or(&empty_set))
                    .collect()
            })
            .collect();
        // Smallest first: most members fail there, before the bigger ones.
        groups.sort_by_key(|g| g.iter().map(|s| s.len()).sum::<usize>());
        let in_groups = |m: &str| groups.iter().all(|g| g.iter().any(|s| s.contains(m)));
        let in_ranges = |m: &str| query.ranges.iter().all(|r| self.in_range(r, m));
        let matches = |m: &str| in_groups(m) && in_ranges(m);

        let Some((smallest_at, smallest)) = groups
            .iter()
            .enumerate()
            .min_by_key(|(_, g)| g.iter().map(|s| s.len()).sum::<usize>())
        else {
            // No sets: the order's sorted set, in order, filtered by range.
            if query.ranges.is_empty() {
                let total = order_zset.ordered.len() as u64;
                return (IndexPage::new(page_of(in_order()), total), false);
            }
            if let Some(total) = cached {
                // Counted already: read the matches up to the page only.
                let members = page_of(Box::new(in_order().filter(|m| in_ranges(m))));
                return (IndexPage::new(members, total), false);
            }
            let matched: Vec<&str> = in_order().filter(|m| in_ranges(m)).collect();
            let total = matched.len() as u64;
            let members = page_of(Box::new(matched.into_iter()));
            return (IndexPage::new(members, total), true);
        };

        let n = order_zset.ordered.len();
        let walk = |total: usize| {
            query.limit.is_some()
                && skip.saturating_add(take).saturating_mul(n) < total.saturating_mul(total)
        };
        let known = if smallest.len() == 1 && groups.len() == 1 && query.ranges.is_empty() {
            Some(smallest[0].len() as u64)
        } else {
            cached
        };
        if let Some(total) = known {
            let as_usize = usize::try_from(total).unwrap_or(usize::MAX);
            if total == 0 || take == 0 || skip >= as_usize {
                return (IndexPage::new(Vec::new(), total), false);
            }
            if walk(as_usize) {
                let members = page_of(Box::new(in_order().filter(|m| matches(m))));
                return (IndexPage::new(members, total), false);
            }
        }

        // Every match, from the smallest group (whose members need no
        // check against it).
        let mut seen = HashSet::new();
        let in_other_groups = |m: &str| {
            groups
                .iter()
                .enumerate()
                .all(|(i, g)| i == smallest_at || g.iter().any(|s| s.contains(m)))
        };
        let matched: Vec<&str> = smallest
            .iter()
            .flat_map(|s| s.iter())
            .map(String::as_str)
            .filter(|m| {
                (smallest.len() == 1 || seen.insert(*m)) && in_other_groups(m) && in_ranges(m)
            })
            .collect();
        let total = matched.len();
        let members = if walk(total) {
            page_of(Box::new(in_order().filter(|m| matches(m))))
        } else {
            let mut keyed: Vec<(f64, &str)> = matched
                .into_iter()
                .map(|m| {
                    let score = order_zset.scores.get(m).copied().unwrap_or(f64::INFINITY);
                    (score, m)
                })
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
            if query.descending {
                keyed.reverse();
            }
            page_of(Box::new(keyed.into_iter().map(|(_, m)| m)))
        };
        (IndexPage::new(members, total as u64), known.is_none())
    }
}

/// Every model's index, by prefix.
#[derive(Default)]
pub(super) struct Indexes {
    models: Mutex<HashMap<String, ModelIndex>>,
}

impl Indexes {
    fn with<R>(&self, prefix: &str, f: impl FnOnce(&mut ModelIndex) -> R) -> R {
        // A panic while holding the lock cannot leave a half-applied
        // update behind (each update is applied before the next starts), so
        // a poisoned lock is still usable.
        let mut models = self
            .models
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(models.entry(prefix.to_owned()).or_default())
    }

    pub(super) fn lease(&self, prefix: &str, members: &[String], token: &[u8]) {
        self.with(prefix, |index| {
            for member in members {
                index.leases.insert(member.clone(), token.to_vec());
            }
        });
    }

    pub(super) fn apply(&self, prefix: &str, token: &[u8], updates: &[IndexUpdate]) -> Vec<bool> {
        self.with(prefix, |index| {
            updates
                .iter()
                .map(|update| {
                    if index.leases.get(&update.member).map(Vec::as_slice) != Some(token) {
                        return false;
                    }
                    index.leases.remove(&update.member);
                    index.apply(update);
                    true
                })
                .collect()
        })
    }

    pub(super) fn query(&self, prefix: &str, query: &IndexQuery) -> IndexPage {
        // Under the same lock as `apply`: a count cached here is the count
        // of the index as this query saw it, and any later change clears it.
        self.with(prefix, |index| index.query(query))
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Bound;

    use super::*;

    fn record(sets: &[&str], score: f64) -> Option<IndexRecord> {
        Some(IndexRecord::new(
            sets.iter().map(|s| (*s).to_owned()).collect(),
            vec![("s:score".to_owned(), score)],
        ))
    }

    /// 20 members: `e:c:<i % 2>`, `e:a:<i % 3 == 0>`, scored `i`.
    fn index() -> ModelIndex {
        let mut index = ModelIndex::default();
        for i in 0..20 {
            let sets = [format!("e:c:{}", i % 2), format!("e:a:{}", i % 3 == 0)];
            let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
            index.apply(&IndexUpdate::new(
                format!("{i:02}"),
                record(&sets, f64::from(i)),
            ));
        }
        index
    }

    fn both() -> IndexQuery {
        IndexQuery {
            groups: vec![vec!["e:c:0".into()], vec!["e:a:true".into()]],
            order: Some("s:score".into()),
            limit: Some(2),
            ..IndexQuery::default()
        }
    }

    #[test]
    fn a_cached_count_is_read_until_the_index_changes() {
        let mut index = index();
        // 0, 6, 12, 18.
        assert_eq!(index.query(&both()).total, 4);
        let key = CountKey::of(&both());
        assert_eq!(index.counts.get(&key), Some(&4));
        // The same filters in another order share the count.
        let mut swapped = both();
        swapped.groups.reverse();
        assert_eq!(CountKey::of(&swapped), key);

        // The query reads the cache: a planted count comes back.
        index.counts.insert(key.clone(), 99);
        assert_eq!(index.query(&swapped).total, 99);
        // An update that changes nothing keeps it (it would still be right).
        let unchanged = index.records["06"].clone();
        assert!(!index.apply(&IndexUpdate::new("06".into(), Some(unchanged))));
        assert_eq!(index.query(&both()).total, 99);
        // A rescore changes the index: the cache is cleared, the count
        // computed again.
        assert!(index.apply(&IndexUpdate::new(
            "06".into(),
            record(&["e:c:0", "e:a:true"], 60.0)
        )));
        assert!(index.counts.is_empty());
        assert_eq!(index.query(&both()).total, 4);
        // A removal too.
        assert!(index.apply(&IndexUpdate::new("12".into(), None)));
        assert_eq!(index.query(&both()).total, 3);
        assert_eq!(index.counts.get(&key), Some(&3));
    }

    #[test]
    fn counts_that_cost_nothing_are_not_cached() {
        let mut index = index();
        let one = IndexQuery {
            groups: vec![vec!["e:c:0".into()]],
            ..IndexQuery::default()
        };
        assert_eq!(index.query(&one).total, 10);
        assert_eq!(index.query(&IndexQuery::default()).total, 20);
        assert!(index.counts.is_empty());
    }

    #[test]
    fn the_count_cache_is_bounded() {
        let mut index = index();
        let ranged = |min: usize| IndexQuery {
            ranges: vec![ScoreRange::new(
                "s:score".into(),
                Bound::Included(min as f64),
                Bound::Unbounded,
            )],
            limit: Some(1),
            ..IndexQuery::default()
        };
        for min in 0..COUNTS_MAX {
            index.query(&ranged(min));
        }
        assert_eq!(index.counts.len(), COUNTS_MAX);
        // One more: cleared first, then this one cached.
        assert_eq!(index.query(&ranged(COUNTS_MAX)).total, 0);
        assert_eq!(index.counts.len(), 1);
        assert_eq!(index.query(&ranged(15)).total, 5);
    }
}
