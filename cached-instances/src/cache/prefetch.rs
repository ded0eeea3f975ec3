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
//! Redis connection the two are pipelined: one round trip instead of two.
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

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::ops::Bound;
use std::sync::{Arc, Mutex};

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
}

/// A page an index query returned: its members, in order, and the keys of
/// their entries.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) members: Vec<String>,
    pub(crate) keys: Vec<String>,
}

/// A query, as [`PageGuesses`] knows it: a hash of everything that decides
/// its page. Two queries with the same hash share a guess, which costs a
/// wasted read, never a wrong answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot(u64);

impl Slot {
    pub(crate) fn of(query: &IndexQuery) -> Slot {
        let mut h = DefaultHasher::new();
        let IndexQuery {
            groups,
            ranges,
            order,
            descending,
            offset,
            limit,
            ignore_warm,
        } = query;
        groups.hash(&mut h);
        for range in ranges {
            range.zset.hash(&mut h);
            for bound in [range.min, range.max] {
                match bound {
                    Bound::Unbounded => 0u8.hash(&mut h),
                    Bound::Included(v) => (1u8, v.to_bits()).hash(&mut h),
                    Bound::Excluded(v) => (2u8, v.to_bits()).hash(&mut h),
                }
            }
        }
        (order, descending, offset, limit, ignore_warm).hash(&mut h);
        Slot(h.finish())
    }
}

impl PageGuesses {
    /// The page whose keys to read alongside the index query of `slot`, if
    /// any.
    pub(crate) fn guess(&self, slot: Slot) -> Option<Arc<Page>> {
        let mut guesses = self.lock();
        let guess = guesses.get_mut(&slot.0)?;
        if guess.skip {
            // Skipped once: the next one is sent again.
            guess.skip = false;
            return None;
        }
        Some(guess.page.clone())
    }

    /// Records the page `slot` returned, and hands it back; `guessed` is
    /// how many of its keys the guess sent with it held, when one was sent.
    pub(crate) fn record(&self, slot: Slot, page: Page, guessed: Option<usize>) -> Arc<Page> {
        let page = Arc::new(page);
        let len = page.keys.len();
        if len == 0 || len > MAX_KEYS {
            self.lock().remove(&slot.0);
            return page;
        }
        let skip = guessed.is_some_and(|held| held.saturating_mul(2) < len);
        let mut guesses = self.lock();
        if guesses.len() >= MAX_QUERIES && !guesses.contains_key(&slot.0) {
            guesses.clear();
        }
        guesses.insert(
            slot.0,
            Guess {
                page: page.clone(),
                skip,
            },
        );
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
        guesses.record(first, page(0..10), None);
        assert_eq!(*guesses.guess(first).unwrap(), page(0..10));
        assert!(guesses.guess(second).is_none());
        guesses.record(first, page(1..11), Some(9));
        assert_eq!(*guesses.guess(first).unwrap(), page(1..11));
    }

    #[test]
    fn a_guess_that_mostly_missed_is_skipped_once() {
        let guesses = PageGuesses::default();
        let slot = Slot::of(&query(0));
        guesses.record(slot, page(0..10), None);
        guesses.record(slot, page(20..30), Some(4));
        assert!(guesses.guess(slot).is_none(), "skipped after a bad guess");
        assert_eq!(*guesses.guess(slot).unwrap(), page(20..30));
        guesses.record(slot, page(20..30), Some(5));
        assert!(guesses.guess(slot).is_some(), "half held is not a miss");
    }

    #[test]
    fn big_pages_are_not_kept_and_many_queries_are_bounded() {
        let guesses = PageGuesses::default();
        let slot = Slot::of(&query(0));
        guesses.record(slot, page(0..10), None);
        let big = guesses.record(slot, page(0..(MAX_KEYS as u32 + 1)), None);
        assert_eq!(big.keys.len(), MAX_KEYS + 1, "handed back, not kept");
        assert!(guesses.guess(slot).is_none());
        for offset in 0..(MAX_QUERIES as u64 + 1) {
            guesses.record(Slot::of(&query(offset)), page(0..1), None);
        }
        assert!(guesses.lock().len() <= MAX_QUERIES);
    }
}
