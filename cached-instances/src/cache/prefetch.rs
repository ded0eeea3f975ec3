//! Which entries a list from the index will most likely need, read in the
//! same round trip as its index query.
//!
//! A list from the index is two steps: the index query (the page's pks and
//! the count), then the multi-get of the page's entries. The second needs
//! the first's answer, so each costs a round trip. But a page of a query is
//! most often the page the same query returned last time (the first page
//! of a list, read again and again between writes), so the cache keeps,
//! per model and per query, the keys of the last page it read, and sends
//! their multi-get alongside the next index query of that query. On one
//! Redis connection the two are pipelined: one round trip instead of two
//! ([`IndexStore::index_query_and_get`](crate::store::IndexStore::index_query_and_get);
//! a repeated list's query and its entries go as one request, which costs
//! the connection's writer one message and the reader one wake-up instead
//! of two).
//!
//! What is guessed only decides which keys are read early, never what is
//! served: the entries used are those of the pks the index query returned;
//! the keys of pks that left the page are dropped, and those of pks that
//! joined it are read after the index query, as without a guess. Reading
//! an entry alongside the query rather than after its reply changes
//! nothing a list promises: either way it is read after the list began
//! (what freshness asks, CONSISTENCY.md), and a list with filters checks
//! each entry against them as before. On one connection, the multi-get is
//! sent right behind the index query, so Redis runs it second anyway.
//!
//! A guess that mostly missed is not sent the next time, so a query whose
//! pages keep changing (a feed under heavy writes) pays for a wasted read
//! at most every other time.
//!
//! A guess keeps the page's index members beside its keys: when the index
//! returns the same members, the page's keys are the guess's, and a list
//! builds none (a hundred key strings were a tenth of a listing's CPU).
//!
//! It also keeps the index version the page was read at, when the store
//! keeps one ([`IndexPage::version`](crate::store::IndexPage::version)):
//! the same query sends it with its index query, and while the index is
//! still at that version the store answers with the count alone
//! ([`IndexPage::unchanged`](crate::store::IndexPage::unchanged)): the
//! members are not sent, parsed or compared (on Redis, reading them was
//! about a third of a list's client CPU). Only the query that read the
//! page uses its version: one of the same shape with other bounds may have
//! another page at the same version.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::store::IndexQuery;

/// The most queries per model whose last page is kept; when full, the
/// guesses are dropped and relearned, so distinct queries cannot grow it.
const MAX_QUERIES: usize = 256;

/// The largest page whose keys are kept: a bigger one (or an empty one) is
/// not guessed.
const MAX_KEYS: usize = 1000;

/// The last page's keys of each recent query of one model.
#[derive(Debug, Default)]
pub(crate) struct PageGuesses(Mutex<HashMap<u64, Guess>>);

#[derive(Debug)]
struct Guess {
    page: Arc<Page>,
    /// The last guess sent was mostly wrong: the next one is skipped.
    skip: bool,
    /// The exact hash of the query that read `page`.
    read_by: u64,
    /// The index's version `page` was read at, if the store keeps one and
    /// the last read did not find it changed.
    version: Option<Bytes>,
}

/// A guess for a query: the page to read alongside its index query, and
/// the index version at which this very query read it (never one a query
/// of the same shape but other bounds read, whose page may differ).
#[derive(Debug)]
pub(crate) struct Guessed {
    pub(crate) page: Arc<Page>,
    pub(crate) version: Option<Bytes>,
}

/// A page an index query returned: its members, in order, and the keys of
/// their entries.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) members: Vec<String>,
    pub(crate) keys: Vec<String>,
}

/// A query, as [`PageGuesses`] knows it: a hash of everything that decides
/// its page, and a hash of the same without its ranges' bounds (its
/// *shape*). Two queries with the same hash share a guess, which costs a
/// wasted read, never a wrong answer.
///
/// A query is guessed by its exact hash first, else by its shape. The
/// shape is for ranges whose bounds move on every request, such as
/// "published by now" (`pub_date <= now`): no two of those queries are
/// equal, yet each returns the page the last one did until something is
/// published. A query with fixed bounds that the shape guessed wrong is
/// recorded under its exact hash, and guessed by it from then on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    exact: u64,
    shape: u64,
}

impl Slot {
    pub(crate) fn of(query: &IndexQuery) -> Slot {
        let IndexQuery {
            groups,
            ranges,
            order,
            descending,
            offset,
            limit,
            ignore_warm,
            known: _,
        } = query;
        let mut shape = DefaultHasher::new();
        groups.hash(&mut shape);
        for range in ranges {
            range.zset.hash(&mut shape);
            for bound in [range.min, range.max] {
                std::mem::discriminant(&bound).hash(&mut shape);
            }
        }
        (order, descending, offset, limit, ignore_warm).hash(&mut shape);
        let shape = shape.finish();
        if ranges.is_empty() {
            return Slot {
                exact: shape,
                shape,
            };
        }
        let mut exact = DefaultHasher::new();
        shape.hash(&mut exact);
        for range in ranges {
            for bound in [range.min, range.max] {
                if let Bound::Included(v) | Bound::Excluded(v) = bound {
                    v.to_bits().hash(&mut exact);
                }
            }
        }
        Slot {
            exact: exact.finish(),
            shape,
        }
    }
}

impl PageGuesses {
    /// The page whose keys to read alongside the index query of `slot`, if
    /// any.
    pub(crate) fn guess(&self, slot: Slot) -> Option<Guessed> {
        let mut guesses = self.lock();
        let key = if guesses.contains_key(&slot.exact) {
            slot.exact
        } else {
            slot.shape
        };
        let guess = guesses.get_mut(&key)?;
        if guess.skip {
            // Skipped once: the next one is sent again.
            guess.skip = false;
            return None;
        }
        let version = (guess.read_by == slot.exact)
            .then(|| guess.version.clone())
            .flatten();
        Some(Guessed {
            page: guess.page.clone(),
            version,
        })
    }

    /// Sets the index version of the page `slot` read, which the guess
    /// holds: the version it was just read at, or `None` when a read that
    /// sent the old version found the index changed (so that the next read
    /// is a plain one: under a stream of writes, at most every other read
    /// pays for sending a version that no longer holds).
    pub(crate) fn versioned(&self, slot: Slot, version: Option<Bytes>) {
        let mut guesses = self.lock();
        for key in [slot.exact, slot.shape] {
            if let Some(guess) = guesses.get_mut(&key)
                && guess.read_by == slot.exact
            {
                guess.version.clone_from(&version);
            }
        }
    }

    /// Records the page `slot` returned at `version` of the index, and
    /// hands it back; `guessed` is how many of its keys the guess sent with
    /// it held, when one was sent.
    pub(crate) fn record(
        &self,
        slot: Slot,
        page: Page,
        guessed: Option<usize>,
        version: Option<Bytes>,
    ) -> Arc<Page> {
        let page = Arc::new(page);
        let len = page.keys.len();
        if len == 0 || len > MAX_KEYS {
            let mut guesses = self.lock();
            guesses.remove(&slot.exact);
            guesses.remove(&slot.shape);
            return page;
        }
        let skip = guessed.is_some_and(|held| held.saturating_mul(2) < len);
        let mut guesses = self.lock();
        // Under its shape, the page of the latest query of that shape; under
        // its exact hash only once the shape guessed it wrong (or nothing
        // guessed it), so that a moving bound, guessed right by its shape,
        // adds no entry per request.
        let exact = slot.exact != slot.shape
            && (guesses.contains_key(&slot.exact) || guessed.is_none_or(|held| held < len));
        let adding = usize::from(!guesses.contains_key(&slot.shape))
            + usize::from(exact && !guesses.contains_key(&slot.exact));
        if guesses.len() + adding > MAX_QUERIES {
            guesses.clear();
        }
        let guess = || Guess {
            page: page.clone(),
            skip,
            read_by: slot.exact,
            version: version.clone(),
        };
        if exact {
            guesses.insert(slot.exact, guess());
        }
        guesses.insert(slot.shape, guess());
        page
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Guess>> {
        // A guess is a hint: one left half-written by a panic is still one.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ids: std::ops::Range<u32>) -> Vec<String> {
        ids.map(|i| format!("k{i}")).collect()
    }

    fn page(ids: std::ops::Range<u32>) -> Page {
        Page {
            members: ids.clone().map(|i| format!("{i:04x}")).collect(),
            keys: keys(ids),
        }
    }

    fn query(offset: u64) -> IndexQuery {
        IndexQuery {
            order: Some("s:views".into()),
            offset,
            limit: Some(10),
            ..IndexQuery::default()
        }
    }

    #[test]
    fn a_query_guesses_its_last_page_and_only_its_own() {
        let guesses = PageGuesses::default();
        let (first, second) = (Slot::of(&query(0)), Slot::of(&query(10)));
        assert_ne!(first, second);
        assert!(guesses.guess(first).is_none(), "nothing read yet");
        guesses.record(first, page(0..10), None, None);
        assert_eq!(guesses.guess(first).unwrap().page, Arc::new(page(0..10)));
        assert!(guesses.guess(second).is_none());
        guesses.record(first, page(1..11), Some(9), None);
        assert_eq!(guesses.guess(first).unwrap().page, Arc::new(page(1..11)));
    }

    fn published_by(now: f64, offset: u64) -> IndexQuery {
        IndexQuery {
            ranges: vec![crate::store::ScoreRange::new(
                "s:pub_date".into(),
                Bound::Unbounded,
                Bound::Included(now),
            )],
            descending: true,
            ..query(offset)
        }
    }

    #[test]
    fn a_moving_bound_is_guessed_by_its_shape_and_adds_no_entry() {
        let guesses = PageGuesses::default();
        let first = Slot::of(&published_by(1.0, 0));
        guesses.record(first, page(0..10), None, None);
        // Every request's "now" differs: the same shape is guessed.
        for now in 2..50 {
            let slot = Slot::of(&published_by(f64::from(now), 0));
            assert_ne!(slot, first);
            assert_eq!(guesses.guess(slot).unwrap().page, Arc::new(page(0..10)));
        }
        assert!(
            guesses.guess(Slot::of(&published_by(9.0, 10))).is_none(),
            "another offset"
        );
        assert!(guesses.guess(Slot::of(&query(0))).is_none(), "no range");
        // Right guesses record nothing; a page that changed is recorded
        // under the shape, so the next query of that shape guesses it.
        let moved = Slot::of(&published_by(60.0, 0));
        guesses.record(moved, page(1..11), Some(9), None);
        assert_eq!(
            guesses
                .guess(Slot::of(&published_by(61.0, 0)))
                .unwrap()
                .page,
            Arc::new(page(1..11))
        );
        assert!(guesses.lock().len() <= 3);
    }

    #[test]
    fn fixed_bounds_the_shape_guessed_wrong_keep_their_own_guess() {
        let guesses = PageGuesses::default();
        let (low, high) = (
            Slot::of(&published_by(10.0, 0)),
            Slot::of(&published_by(20.0, 0)),
        );
        guesses.record(low, page(0..10), None, None);
        // `high` is guessed `low`'s page by shape, wrongly: recorded exactly.
        assert_eq!(guesses.guess(high).unwrap().page, Arc::new(page(0..10)));
        guesses.record(high, page(10..20), Some(0), None);
        // The skip after a bad guess goes to both of `high`'s entries.
        assert!(guesses.guess(high).is_none(), "skipped once");
        assert_eq!(guesses.guess(high).unwrap().page, Arc::new(page(10..20)));
        // `low` keeps its exact guess although the shape moved on.
        assert_eq!(guesses.guess(low).unwrap().page, Arc::new(page(0..10)));
    }

    #[test]
    fn a_version_is_only_guessed_to_the_query_that_read_its_page() {
        let guesses = PageGuesses::default();
        let v1 = Some(Bytes::from_static(b"v1"));
        let first = Slot::of(&published_by(1.0, 0));
        guesses.record(first, page(0..10), None, v1.clone());
        assert_eq!(guesses.guess(first).unwrap().version, v1);
        // Same shape, other bounds: the page is guessed, not its version.
        let other = Slot::of(&published_by(2.0, 0));
        let guessed = guesses.guess(other).unwrap();
        assert_eq!(
            (guessed.page, guessed.version),
            (Arc::new(page(0..10)), None)
        );
        guesses.versioned(other, Some(Bytes::from_static(b"v2")));
        assert_eq!(
            guesses.guess(first).unwrap().version,
            v1,
            "not read by `other`"
        );
        // A read that found its version changed makes the next one plain,
        // then the version it read is kept.
        guesses.versioned(first, None);
        assert_eq!(guesses.guess(first).unwrap().version, None);
        guesses.versioned(first, Some(Bytes::from_static(b"v3")));
        assert_eq!(
            guesses.guess(first).unwrap().version.as_deref(),
            Some(&b"v3"[..])
        );
    }

    #[test]
    fn a_guess_that_mostly_missed_is_skipped_once() {
        let guesses = PageGuesses::default();
        let slot = Slot::of(&query(0));
        guesses.record(slot, page(0..10), None, None);
        guesses.record(slot, page(20..30), Some(4), None);
        assert!(guesses.guess(slot).is_none(), "skipped after a bad guess");
        assert_eq!(guesses.guess(slot).unwrap().page, Arc::new(page(20..30)));
        guesses.record(slot, page(20..30), Some(5), None);
        assert!(guesses.guess(slot).is_some(), "half held is not a miss");
    }

    #[test]
    fn big_pages_are_not_kept_and_many_queries_are_bounded() {
        let guesses = PageGuesses::default();
        let slot = Slot::of(&query(0));
        guesses.record(slot, page(0..10), None, None);
        let big = guesses.record(slot, page(0..(MAX_KEYS as u32 + 1)), None, None);
        assert_eq!(big.keys.len(), MAX_KEYS + 1, "handed back, not kept");
        assert!(guesses.guess(slot).is_none());
        for offset in 0..(MAX_QUERIES as u64 + 1) {
            guesses.record(Slot::of(&query(offset)), page(0..1), None, None);
        }
        assert!(guesses.lock().len() <= MAX_QUERIES);
    }
}
