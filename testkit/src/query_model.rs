//! For the query outage and stats tests: a small indexed model and an
//! in-memory database whose loader counts its calls and fails on demand
//! (the store whose index updates fail is [`Faulty`](crate::faults::Faulty)).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cached_instances::query::{Query, QueryPage};
use cached_instances::{CachedInstance, LoadError, Loader, Store};

#[derive(CachedInstance, Debug, Clone, PartialEq)]
pub struct Member {
    #[cached(pk)]
    pub id: i64,
    #[cached(index)]
    pub country: String,
    #[cached(sortable)]
    pub age: i32,
}

pub fn member(id: i64, country: &str) -> Member {
    Member {
        id,
        country: country.to_owned(),
        age: 20 + id as i32,
    }
}

#[derive(Default)]
struct DbState {
    rows: Mutex<BTreeMap<i64, Member>>,
    loads: AtomicUsize,
    queries: AtomicUsize,
    fail_loads: AtomicBool,
}

/// The database: rows, and a loader over them. Clones share everything.
#[derive(Clone, Default)]
pub struct Db(Arc<DbState>);

/// A cache over `store` and `db` that retries the store after `retry`.
pub fn cache_over(store: impl Store, db: &Db, retry: Duration) -> cached_instances::Cache {
    cached_instances::Cache::builder()
        .store(store)
        .loader::<Member>(db.clone())
        .store_retry_interval(retry)
        .build()
        .unwrap()
}

/// Members of `country`.
pub fn in_country(country: &str) -> Query<Member> {
    Query::<Member>::new().filter("country", country)
}

impl Db {
    /// Members `0..n`, all in `country`.
    pub fn seeded(n: i64, country: &str) -> Db {
        let db = Db::default();
        for id in 0..n {
            db.put(member(id, country));
        }
        db
    }

    pub fn put(&self, m: Member) {
        self.0.rows.lock().unwrap().insert(m.id, m);
    }

    pub fn remove(&self, id: i64) -> Option<Member> {
        self.0.rows.lock().unwrap().remove(&id)
    }

    pub fn row(&self, id: i64) -> Option<Member> {
        self.0.rows.lock().unwrap().get(&id).cloned()
    }

    /// The pks in `country`, in pk order: what a query by country returns.
    pub fn in_country(&self, country: &str) -> Vec<i64> {
        let rows = self.0.rows.lock().unwrap();
        rows.values()
            .filter(|m| m.country == country)
            .map(|m| m.id)
            .collect()
    }

    /// `Loader::load` calls so far, failed ones included.
    pub fn loads(&self) -> usize {
        self.0.loads.load(Ordering::SeqCst)
    }

    /// `Loader::query` calls so far.
    pub fn queries(&self) -> usize {
        self.0.queries.load(Ordering::SeqCst)
    }

    /// While on, every `load` fails (`query` and `all_pks` still answer).
    pub fn fail_loads(&self, on: bool) {
        self.0.fail_loads.store(on, Ordering::SeqCst);
    }
}

impl Loader<Member> for Db {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Member>, LoadError> {
        self.0.loads.fetch_add(1, Ordering::SeqCst);
        if self.0.fail_loads.load(Ordering::SeqCst) {
            return Err(LoadError::msg("injected load failure"));
        }
        let rows = self.0.rows.lock().unwrap();
        Ok(pks.iter().filter_map(|pk| rows.get(pk).cloned()).collect())
    }

    async fn all_pks(&self) -> Result<Option<Vec<i64>>, LoadError> {
        Ok(Some(self.0.rows.lock().unwrap().keys().copied().collect()))
    }

    /// `WHERE (the filters) ORDER BY id LIMIT OFFSET` (the tests do not
    /// order by a field).
    async fn query(&self, query: &Query<Member>) -> Result<Option<QueryPage<i64>>, LoadError> {
        self.0.queries.fetch_add(1, Ordering::SeqCst);
        assert!(query.order_by_field().is_none(), "not supported here");
        let matched: Vec<i64> = {
            let rows = self.0.rows.lock().unwrap();
            rows.values()
                .filter(|m| query.matches(m))
                .map(|m| m.id)
                .collect()
        };
        let count = matched.len() as u64;
        let pks = matched
            .into_iter()
            .skip(query.offset_value() as usize)
            .take(query.limit_value().map_or(usize::MAX, |l| l as usize))
            .collect();
        Ok(Some(QueryPage::new(pks, count)))
    }
}
