//! The in-process query index engine of [`MemoryStore`](super::MemoryStore):
//! the same structures as on Redis (sets, sorted sets, a record and a lease
//! per member; see `store/index.rs`), kept apart from the entry map so that
//! they are never evicted, each primitive atomic under one lock.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

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
    fn add(&mut self, member: &str, score: f64) {
        if let Some(old) = self.scores.insert(member.to_owned(), score) {
            self.ordered.remove(&(Score(old), member.to_owned()));
        }
        self.ordered.insert((Score(score), member.to_owned()));
    }

    fn remove(&mut self, member: &str) {
        if let Some(old) = self.scores.remove(member) {
            self.ordered.remove(&(Score(old), member.to_owned()));
        }
    }
}

#[derive(Default)]
struct ModelIndex {
    sets: HashMap<String, HashSet<String>>,
    zsets: HashMap<String, Zset>,
    records: HashMap<String, IndexRecord>,
    leases: HashMap<String, Vec<u8>>,
}

const ALL: &str = "all";

impl ModelIndex {
    fn apply(&mut self, update: &IndexUpdate) {
        let member = update.member.as_str();
        let old = self.records.remove(member).unwrap_or_default();
        let new = update.record.clone().unwrap_or_default();
        for set in &old.sets {
            if !new.sets.contains(set)
                && let Some(members) = self.sets.get_mut(set)
            {
                members.remove(member);
                if members.is_empty() {
                    self.sets.remove(set);
                }
            }
        }
        for set in &new.sets {
            self.sets
                .entry(set.clone())
                .or_default()
                .insert(member.to_owned());
        }
        for (zset, _) in &old.scores {
            if !new.scores.iter().any(|(z, _)| z == zset)
                && let Some(z) = self.zsets.get_mut(zset)
            {
                z.remove(member);
            }
        }
        for (zset, score) in &new.scores {
            self.zsets
                .entry(zset.clone())
                .or_default()
                .add(member, *score);
        }
        let all = self.zsets.entry(ALL.to_owned()).or_default();
        if update.record.is_some() {
            all.add(member, 0.0);
            self.records.insert(member.to_owned(), new);
        } else {
            all.remove(member);
        }
    }

    fn score(&self, zset: &str, member: &str) -> Option<f64> {
        self.zsets.get(zset)?.scores.get(member).copied()
    }

    fn in_range(&self, range: &ScoreRange, member: &str) -> bool {
        self.score(&range.zset, member)
            .is_some_and(|s| range.contains(s))
    }

    /// The same plans as the Redis script: the order's sorted set alone;
    /// else the matches counted from the smallest group of sets (or the
    /// order's sorted set, for ranges only), and the page found by walking
    /// the order's sorted set when it comes early in it, else by sorting.
    fn query(&self, query: &IndexQuery) -> IndexPage {
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
                let members = in_order()
                    .skip(skip)
                    .take(take)
                    .map(str::to_owned)
                    .collect();
                return IndexPage::new(members, total);
            }
            let matched: Vec<&str> = in_order().filter(|m| in_ranges(m)).collect();
            let total = matched.len() as u64;
            let members = matched
                .into_iter()
                .skip(skip)
                .take(take)
                .map(str::to_owned)
                .collect();
            return IndexPage::new(members, total);
        };

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
        let n = order_zset.ordered.len();
        let walk = query.limit.is_some()
            && skip.saturating_add(take).saturating_mul(n) < total.saturating_mul(total);
        let members = if walk {
            in_order()
                .filter(|m| matches(m))
                .skip(skip)
                .take(take)
                .map(str::to_owned)
                .collect()
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
            keyed
                .into_iter()
                .skip(skip)
                .take(take)
                .map(|(_, m)| m.to_owned())
                .collect()
        };
        IndexPage::new(members, total as u64)
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
        self.with(prefix, |index| index.query(query))
    }
}
