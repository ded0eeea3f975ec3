//! Running [`Query`]s: from the store's indexes for a warmed model (one
//! round trip for the page's pks and the count, one multi-get for the
//! instances; when the query's last page is known, the multi-get of its
//! entries goes with the index query: `prefetch.rs`), else from the
//! loader's `query`.

use std::collections::HashMap;

use bytes::Bytes;

use super::Cache;
use super::prefetch::{Page, Slot};
use super::read::{Found, Want};
use crate::error::{Error, StoreOp};
use crate::instance::CachedInstance;
use crate::pk::PrimaryKey;
use crate::query::{Query, QueryError, QueryResult, Source};
use crate::store::plan;

/// A query's page before it is shaped for the caller.
struct Answer<T: CachedInstance> {
    pks: Vec<T::Pk>,
    found: Vec<Found<T>>,
    count: u64,
    source: Source,
}

impl<T: CachedInstance> Answer<T> {
    /// Drops the rows read from the store that no longer match `query` (a
    /// write between its commit and its index update) or that `also`
    /// rejects, each decoded once for both. Rows are decoded only when
    /// there is something to test: a query without filters matches every
    /// instance, and decoding a hundred representations was most of a
    /// listing's CPU. For an answer whose rows were read (not `query_pks`'s).
    fn checked(self, query: &Query<T>, also: Option<&dyn Fn(&T) -> bool>) -> Self {
        let filters = query.filters_anything();
        let test = filters || also.is_some();
        if !test && self.found.iter().all(Found::is_found) {
            return self;
        }
        let keep = |t: &T| (!filters || query.matches(t)) && also.is_none_or(|also| also(t));
        let Answer {
            mut pks,
            mut found,
            count,
            source,
        } = self;
        // Compacted in place: collecting the kept rows into new vectors,
        // grown a push at a time, was a tenth of an indexed listing's CPU.
        let mut kept = 0;
        for i in 0..found.len().min(pks.len()) {
            let keeps = match &found[i] {
                Found::Missing => false,
                _ if !test => true,
                Found::Instance(instance) => keep(instance),
                Found::Bytes(bytes) => T::decode(bytes).is_ok_and(|t| keep(&t)),
            };
            if keeps {
                pks.swap(kept, i);
                found.swap(kept, i);
                kept += 1;
            }
        }
        pks.truncate(kept);
        found.truncate(kept);
        Answer {
            pks,
            found,
            count,
            source,
        }
    }

    /// The page as cached JSON representations.
    fn into_json(self) -> QueryResult<Bytes> {
        QueryResult {
            items: self
                .found
                .into_iter()
                .filter_map(Found::into_bytes)
                .collect(),
            count: self.count,
            source: self.source,
        }
    }
}

impl Cache {
    /// Runs `query` and returns its page of instances and the count of all
    /// matches. From the cache when `T` is [warmed](Self::warm) (one store
    /// round trip for the page's pks and the count, one multi-get for the
    /// instances, misses loaded with one loader call; when the same query
    /// ran before, the multi-get of its last page's entries is sent with
    /// the page's query, so a page that did not change is one round trip),
    /// else from the
    /// loader's [`Loader::query`](crate::Loader::query); the result's
    /// `source` says which. Instances read from the cache that no longer
    /// match are dropped (see the [`query`](crate::query) module).
    ///
    /// # Errors
    ///
    /// [`Error::Query`] for a query naming undeclared fields or values of
    /// the wrong type, or a model neither warmed nor queryable through its
    /// loader; [`Error::Load`] when a load failed; [`Error::NotRegistered`]
    /// when `T` has no loader.
    pub async fn query<T: CachedInstance>(
        &self,
        query: &Query<T>,
    ) -> Result<QueryResult<T>, Error> {
        let answer = self.answer(query, Some(Want::Instances)).await?;
        Ok(QueryResult {
            items: answer
                .found
                .into_iter()
                .filter_map(Found::into_instance)
                .collect(),
            count: answer.count,
            source: answer.source,
        })
    }

    /// Like [`query`](Self::query), returning the instances' cached JSON
    /// representations, ready to serve.
    ///
    /// # Errors
    ///
    /// As [`query`](Self::query).
    pub async fn query_json<T: CachedInstance>(
        &self,
        query: &Query<T>,
    ) -> Result<QueryResult<Bytes>, Error> {
        let answer = self.answer(query, Some(Want::Bytes)).await?;
        Ok(answer.into_json())
    }

    /// Like [`query`](Self::query), returning only the page's pks: one
    /// store round trip for a warmed model, and no check of the instances.
    ///
    /// # Errors
    ///
    /// As [`query`](Self::query).
    pub async fn query_pks<T: CachedInstance>(
        &self,
        query: &Query<T>,
    ) -> Result<QueryResult<T::Pk>, Error> {
        let answer = self.answer(query, None).await?;
        Ok(QueryResult {
            items: answer.pks,
            count: answer.count,
            source: answer.source,
        })
    }

    /// [`find`](Self::find), counted by where the answer came from (only
    /// answers: a query that failed is in neither counter).
    async fn answer<T: CachedInstance>(
        &self,
        query: &Query<T>,
        want: Option<Want>,
    ) -> Result<Answer<T>, Error> {
        self.inner.fills.ordered().await;
        let answer = self.find(query, want).await?;
        let counter = match answer.source {
            Source::Cache => &self.inner.counters.queries_from_cache,
            Source::Database => &self.inner.counters.queries_from_database,
        };
        super::stats::add(counter, 1);
        Ok(answer)
    }

    /// Like [`query_json`](Self::query_json), from the store's indexes
    /// only: `None`, with no loader call, when they cannot answer (the
    /// store has no index support, `T` is not [warmed](Self::warm), or the
    /// store is unavailable). For callers with a cheaper answer of their
    /// own in the database, such as [`Resource`](crate::axum::Resource)'s
    /// list query.
    ///
    /// # Errors
    ///
    /// As [`query`](Self::query), except that a model its loader cannot
    /// query is not an error.
    pub async fn query_json_indexed<T: CachedInstance>(
        &self,
        query: &Query<T>,
    ) -> Result<Option<QueryResult<Bytes>>, Error> {
        let answer = self.query_json_indexed_unchecked(query).await?;
        Ok(answer.map(|answer| answer.check(query, None)))
    }

    /// [`query_json_indexed`](Self::query_json_indexed)'s answer before its
    /// rows are checked against the query: the caller checks them, with a
    /// test of its own in the same decode ([`Unchecked::check`]).
    pub(crate) async fn query_json_indexed_unchecked<T: CachedInstance>(
        &self,
        query: &Query<T>,
    ) -> Result<Option<Unchecked<T>>, Error> {
        query.check()?;
        self.inner.registry.entry::<T>()?;
        self.inner.fills.ordered().await;
        let Some(answer) = self.index_answer(query, Some(Want::Bytes), false).await? else {
            return Ok(None);
        };
        super::stats::add(&self.inner.counters.queries_from_cache, 1);
        Ok(Some(Unchecked(answer)))
    }

    async fn find<T: CachedInstance>(
        &self,
        query: &Query<T>,
        want: Option<Want>,
    ) -> Result<Answer<T>, Error> {
        query.check()?;
        let entry = self.inner.registry.entry::<T>()?;
        if let Some(answer) = self.index_answer(query, want, true).await? {
            return Ok(answer);
        }

        // Not warmed (or no store to read it from): the database answers.
        let reader = self.inner.reader();
        let page = reader
            .loading
            .call(T::MODEL, entry.loader::<T>().query(query))
            .await?
            .ok_or(QueryError::NoFallback { model: T::MODEL })?;
        let found = match want {
            Some(want) => reader.many::<T>(&page.pks, want).await?,
            None => Vec::new(),
        };
        Ok(Answer {
            pks: page.pks,
            found,
            count: page.count,
            source: Source::Database,
        })
    }

    /// The answer from the store's indexes; `None` when they cannot give
    /// it (no index support, not warmed, the store unavailable). With
    /// `check`, its rows are [checked](Answer::checked) against the query.
    async fn index_answer<T: CachedInstance>(
        &self,
        query: &Query<T>,
        want: Option<Want>,
        check: bool,
    ) -> Result<Option<Answer<T>>, Error> {
        let reader = self.inner.reader();
        if query.matches_nothing() {
            return Ok(Some(Answer {
                pks: Vec::new(),
                found: Vec::new(),
                count: 0,
                source: Source::Cache,
            }));
        }
        if let Some(indexes) = self.inner.indexes().of::<T>()
            && reader.gate.readable()
        {
            let entry = self.inner.registry.entry::<T>()?;
            let mut plan = plan::index_query(query);
            // With the entries of the query's last page, read alongside
            // (one round trip on one connection: `prefetch.rs`), and the
            // index version this query read that page at, if any.
            let slot = Slot::of(&plan);
            let guess = want.and_then(|_| entry.pages.guess(slot));
            plan.known = guess.as_ref().and_then(|g| g.version.clone());
            let run = || {
                reader.gate.call(
                    Some(T::MODEL),
                    StoreOp::Query,
                    indexes.index_query(&entry.index_prefix, &plan),
                )
            };
            let (page, guessed) = match &guess {
                Some(guess) => {
                    // One call for both: on Redis, one request.
                    let both = reader
                        .gate
                        .call(
                            Some(T::MODEL),
                            StoreOp::Query,
                            indexes.index_query_and_get(
                                &entry.index_prefix,
                                &plan,
                                &guess.page.keys,
                            ),
                        )
                        .await;
                    match both {
                        Some((page, values)) => {
                            let values = reader
                                .gate
                                .record(Some(T::MODEL), StoreOp::Get, values)
                                .ok();
                            (Some(page), values.map(|values| (guess, values)))
                        }
                        None => (None, None),
                    }
                }
                None => (run().await, None),
            };
            if let Some(page) = page.flatten() {
                let total = page.total;
                // The page: its members as the index returned them, or,
                // the index unchanged since this query read its guess, the
                // guess's.
                let (own, version) = match (page.unchanged, &guess) {
                    (false, _) => (Some(page.members), page.version),
                    (true, Some(_)) if plan.known.is_some() => (None, page.version),
                    // Unchanged since a version we did not send.
                    (true, _) => return Ok(None),
                };
                let members: &[String] = match (&own, &guess) {
                    (Some(own), _) => own,
                    (None, guess) => guess.as_ref().map_or(&[], |g| &g.page.members),
                };
                let mut pks: Vec<T::Pk> = Vec::with_capacity(members.len());
                pks.extend(members.iter().filter_map(|m| T::Pk::from_index_member(m)));
                let Some(want) = want else {
                    return Ok(Some(Answer {
                        pks,
                        found: Vec::new(),
                        count: total,
                        source: Source::Cache,
                    }));
                };
                // A version sent and found changed: the next read is plain.
                let version = match (&plan.known, own.is_some()) {
                    (Some(_), true) => None,
                    _ => version,
                };
                let found = match guessed {
                    // The page did not change: its keys are the guess's,
                    // each was read, in order, and the guess stands.
                    Some((guess, values))
                        if (own.is_none() || guess.page.members.as_slice() == members)
                            && values.len() == guess.page.keys.len() =>
                    {
                        if version != plan.known {
                            entry.pages.versioned(slot, version);
                        }
                        let read = values.into_iter().map(Some).collect();
                        reader
                            .many_read::<T>(&pks, &guess.page.keys, read, want)
                            .await?
                    }
                    guessed => {
                        let keys: Vec<String> = pks.iter().map(|pk| entry.key_of(pk)).collect();
                        let (read, held) = match guessed {
                            Some((guess, values)) => {
                                let read = read_of(&keys, &guess.page.keys, values);
                                let held = read.iter().filter(|v| v.is_some()).count();
                                (read, Some(held))
                            }
                            None => (Vec::new(), None),
                        };
                        let members = match own {
                            Some(own) => own,
                            None => members.to_vec(),
                        };
                        let page = entry
                            .pages
                            .record(slot, Page { members, keys }, held, version);
                        reader.many_read::<T>(&pks, &page.keys, read, want).await?
                    }
                };
                let answer = Answer {
                    pks,
                    found,
                    count: total,
                    source: Source::Cache,
                };
                return Ok(Some(if check {
                    answer.checked(query, None)
                } else {
                    answer
                }));
            }
        }
        Ok(None)
    }
}

/// A page from the store's indexes whose rows are not yet checked against
/// its query ([`Cache::query_json_indexed_unchecked`]).
pub(crate) struct Unchecked<T: CachedInstance>(Answer<T>);

impl<T: CachedInstance> Unchecked<T> {
    /// The page as cached JSON representations, without the rows that no
    /// longer match `query` or that `also` rejects (each decoded once for
    /// both; see [`Answer::checked`]).
    pub(crate) fn check(
        self,
        query: &Query<T>,
        also: Option<&dyn Fn(&T) -> bool>,
    ) -> QueryResult<Bytes> {
        self.0.checked(query, also).into_json()
    }
}

/// What a guessed multi-get read for each of `keys`: `values[j]` is what
/// `guessed[j]` held; `None` for a key the guess left out.
fn read_of(
    keys: &[String],
    guessed: &[String],
    values: Vec<Option<Bytes>>,
) -> Vec<Option<Option<Bytes>>> {
    let by_key: HashMap<&str, Option<Bytes>> =
        guessed.iter().map(String::as_str).zip(values).collect();
    keys.iter()
        .map(|key| by_key.get(key.as_str()).cloned())
        .collect()
}
