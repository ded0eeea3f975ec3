//! Operations under test: each side of a comparison, behind one trait.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use cached_instances::query::{Query, Source};
use cached_instances::{Cache, RedisStore, Store};
use chrono::{DateTime, Utc};
use polls::Question;
use polls::db::Db;
use sqlx::postgres::PgPool;

use crate::baseline::{BASE_PAGE_SQL, PageRow};

pub(crate) type BoxFut<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// One operation of a comparison; `i` picks the pk (or page) so that both
/// sides visit the same ones in the same order. Both sides pay the same
/// boxing.
pub(crate) trait Op: Send + Sync + 'static {
    fn run(&self, i: usize) -> BoxFut<'_>;
}

/// Ours: a detail hit, `Cache::get_json` (bytes, no decode).
pub(crate) struct CachedDetail {
    pub(crate) cache: Cache,
    pub(crate) pks: Vec<i64>,
}

impl Op for CachedDetail {
    fn run(&self, i: usize) -> BoxFut<'_> {
        let pk = self.pks[i % self.pks.len()];
        Box::pin(async move {
            let bytes = self.cache.get_json::<Question>(&pk).await.expect("read");
            black_box(bytes.expect("the row exists"));
        })
    }
}

/// Baseline: a raw `GET` of the same key on a `ConnectionManager`.
pub(crate) struct RawGet {
    pub(crate) conn: redis::aio::ConnectionManager,
    pub(crate) keys: Vec<String>,
}

impl Op for RawGet {
    fn run(&self, i: usize) -> BoxFut<'_> {
        let key = &self.keys[i % self.keys.len()];
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let bytes: Option<Bytes> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut conn)
                .await
                .expect("GET");
            black_box(bytes.expect("the key exists"));
        })
    }
}

/// Breakdown: a raw `GET` bounded by a tokio timeout, as `RedisStore` bounds
/// each request.
pub(crate) struct RawGetTimeout(pub(crate) RawGet);

impl Op for RawGetTimeout {
    fn run(&self, i: usize) -> BoxFut<'_> {
        Box::pin(async move {
            tokio::time::timeout(Duration::from_millis(500), self.0.run(i))
                .await
                .expect("in time");
        })
    }
}

/// Breakdown: `RedisStore::get` called directly (no cache layer).
pub(crate) struct StoreGet {
    pub(crate) store: RedisStore,
    pub(crate) keys: Vec<String>,
}

impl Op for StoreGet {
    fn run(&self, i: usize) -> BoxFut<'_> {
        let key = &self.keys[i % self.keys.len()];
        Box::pin(async move {
            black_box(self.store.get(key).await.expect("get").expect("hit"));
        })
    }
}

/// Breakdown: 100 keys, by raw `MGET`, `RedisStore::get_many` or
/// `Cache::get_many_json`.
pub(crate) struct Many {
    pub(crate) how: ManyHow,
    pub(crate) pages: Vec<Vec<i64>>,
    pub(crate) keys: Vec<Vec<String>>,
}

pub(crate) enum ManyHow {
    RawMget(redis::aio::ConnectionManager),
    Store(RedisStore),
    Cache(Cache),
    /// The page newest first from the `pub_date` index of a warmed cache
    /// (`Cache::query_json`): one index query and one multi-get, pipelined.
    Index(Cache),
    PkQuery(PgPool),
    /// The polls API's list query: a page of 20 published pks and the count.
    PollsPage(Db),
    /// The baseline API's list query: the page of 20 with the choices' pks
    /// and the count.
    BasePage(PgPool),
}

impl Op for Many {
    fn run(&self, i: usize) -> BoxFut<'_> {
        let n = i % self.pages.len();
        Box::pin(async move {
            match &self.how {
                ManyHow::RawMget(conn) => {
                    let mut cmd = redis::cmd("MGET");
                    for key in &self.keys[n] {
                        cmd.arg(key);
                    }
                    let v: Vec<Option<Bytes>> =
                        cmd.query_async(&mut conn.clone()).await.expect("MGET");
                    black_box(v);
                }
                ManyHow::Store(store) => {
                    black_box(store.get_many(&self.keys[n]).await.expect("get_many"));
                }
                ManyHow::Cache(cache) => {
                    black_box(
                        cache
                            .get_many_json::<Question>(&self.pages[n])
                            .await
                            .expect("read"),
                    );
                }
                ManyHow::Index(cache) => {
                    let query = Query::<Question>::new()
                        .order_by_desc("pub_date")
                        .offset(n as u64 * 100)
                        .limit(100);
                    let page = cache.query_json(&query).await.expect("query");
                    assert_eq!(page.source, Source::Cache, "from the index");
                    black_box(page);
                }
                ManyHow::PollsPage(db) => {
                    black_box(
                        db.published_question_page(Utc::now(), 20, 0)
                            .await
                            .expect("page"),
                    );
                }
                ManyHow::BasePage(pool) => {
                    let rows: Vec<PageRow> = sqlx::query_as(BASE_PAGE_SQL)
                        .bind(Utc::now())
                        .bind(20_i64)
                        .bind(0_i64)
                        .fetch_all(pool)
                        .await
                        .expect("page");
                    black_box(rows);
                }
                ManyHow::PkQuery(pool) => {
                    let pks: Vec<i64> = sqlx::query_scalar(PK_PAGE_SQL)
                        .bind(n as i64 * 100)
                        .fetch_all(pool)
                        .await
                        .expect("pk query");
                    black_box(pks);
                }
            }
        })
    }
}

/// A question with its choices' pks, in one query.
pub(crate) const DETAIL_SQL: &str = "SELECT q.id, q.question_text, q.pub_date,
        (SELECT coalesce(array_agg(c.id ORDER BY c.id), '{}') FROM choices c WHERE c.question_id = q.id)
 FROM questions q WHERE q.id = $1";

/// 100 questions with their choices' pks, in one query.
/// (The page is taken first, so the aggregates run for its rows only: the
/// fastest of the forms tried.)
pub(crate) const LIST_SQL: &str = "SELECT p.id, p.question_text, p.pub_date,
        (SELECT coalesce(array_agg(c.id ORDER BY c.id), '{}') FROM choices c WHERE c.question_id = p.id)
 FROM (SELECT id, question_text, pub_date FROM questions ORDER BY id LIMIT 100 OFFSET $1) p
 ORDER BY p.id";

/// Ours, list: the page's pks (one query), then one multi-get.
pub(crate) const PK_PAGE_SQL: &str = "SELECT id FROM questions ORDER BY id LIMIT 100 OFFSET $1";

pub(crate) type QuestionRow = (i64, String, DateTime<Utc>, Vec<i64>);

pub(crate) fn question((id, question_text, pub_date, choices): QuestionRow) -> Question {
    Question {
        id,
        question_text,
        pub_date,
        choices,
    }
}

/// Baseline: the question loaded from PostgreSQL with its related pks.
pub(crate) struct PgDetail {
    pub(crate) pool: PgPool,
    pub(crate) pks: Vec<i64>,
}

impl Op for PgDetail {
    fn run(&self, i: usize) -> BoxFut<'_> {
        let pk = self.pks[i % self.pks.len()];
        Box::pin(async move {
            let row: QuestionRow = sqlx::query_as(DETAIL_SQL)
                .bind(pk)
                .fetch_one(&self.pool)
                .await
                .expect("detail query");
            black_box(question(row));
        })
    }
}

/// Ours: a list of 100, one pk query and one multi-get.
pub(crate) struct CachedList {
    pub(crate) cache: Cache,
    pub(crate) pool: PgPool,
    pub(crate) offsets: Vec<i64>,
}

impl Op for CachedList {
    fn run(&self, i: usize) -> BoxFut<'_> {
        let offset = self.offsets[i % self.offsets.len()];
        Box::pin(async move {
            let pks: Vec<i64> = sqlx::query_scalar(PK_PAGE_SQL)
                .bind(offset)
                .fetch_all(&self.pool)
                .await
                .expect("pk query");
            let rows = self
                .cache
                .get_many_json::<Question>(&pks)
                .await
                .expect("read");
            assert_eq!(rows.len(), 100);
            black_box(rows);
        })
    }
}

/// 100 questions, newest first, with their choices' pks, in one query (the
/// page taken first on the `pub_date` index, as in [`LIST_SQL`]).
pub(crate) const LIST_BY_DATE_SQL: &str = "SELECT p.id, p.question_text, p.pub_date,
        (SELECT coalesce(array_agg(c.id ORDER BY c.id), '{}') FROM choices c WHERE c.question_id = p.id)
 FROM (SELECT id, question_text, pub_date FROM questions ORDER BY pub_date DESC, id DESC LIMIT 100 OFFSET $1) p
 ORDER BY p.pub_date DESC, p.id DESC";

/// Ours: a list of 100 newest first from the `pub_date` index of a warmed
/// cache: one index query (the page's pks and the count), one multi-get.
pub(crate) struct IndexList {
    pub(crate) cache: Cache,
    pub(crate) offsets: Vec<i64>,
}

impl Op for IndexList {
    fn run(&self, i: usize) -> BoxFut<'_> {
        let offset = self.offsets[i % self.offsets.len()];
        Box::pin(async move {
            let query = Query::<Question>::new()
                .order_by_desc("pub_date")
                .offset(offset.unsigned_abs())
                .limit(100);
            let page = self.cache.query_json(&query).await.expect("query");
            assert_eq!(page.source, Source::Cache, "from the index");
            assert_eq!(page.items.len(), 100);
            black_box(page);
        })
    }
}

/// Baseline: the same 100 loaded from PostgreSQL with their related pks.
pub(crate) struct PgList {
    pub(crate) pool: PgPool,
    pub(crate) offsets: Vec<i64>,
    /// [`LIST_SQL`] (by pk) or [`LIST_BY_DATE_SQL`].
    pub(crate) sql: &'static str,
}

impl Op for PgList {
    fn run(&self, i: usize) -> BoxFut<'_> {
        let offset = self.offsets[i % self.offsets.len()];
        Box::pin(async move {
            let rows: Vec<QuestionRow> = sqlx::query_as(self.sql)
                .bind(offset)
                .fetch_all(&self.pool)
                .await
                .expect("list query");
            assert_eq!(rows.len(), 100);
            black_box(rows.into_iter().map(question).collect::<Vec<_>>());
        })
    }
}
