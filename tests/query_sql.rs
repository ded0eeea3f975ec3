//! The derived SQL fallback of cached queries (`cached_instances::sqlx::query`)
//! on real SQLite, PostgreSQL and MySQL (MariaDB): for a model that is not warmed, the
//! database's answer equals a naive evaluation of the query over the rows
//! (the cache's semantics, `QueryPage::evaluate`), for random rows and
//! random queries, after random writes and deletes; and it costs one
//! statement (statements counted where they reach the database).

use cached_instances::query::{Query, QueryPage, Source};
use cached_instances::sqlx::{SqlxDatabase, SqlxLoader, SqlxModel};
use cached_instances::{Cache, CachedInstance, MemoryStore};
use cached_instances_testkit::databases::{Statements, counted, sqlite, with_mysql, with_postgres};
use cached_instances_testkit::rng::Rng;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{MySqlPool, PgPool, Pool, SqlitePool};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Away,
    Gone,
}

#[derive(CachedInstance, Debug, Clone, PartialEq)]
#[cached(table = "members")]
pub struct Member {
    #[cached(pk)]
    pub id: i64,
    #[cached(search)]
    pub name: String,
    #[cached(search)]
    pub bio: Option<String>,
    #[cached(index)]
    pub country: String,
    #[cached(index)]
    pub active: bool,
    #[cached(index, sortable)]
    pub age: Option<i32>,
    #[cached(sortable)]
    pub score: f64,
    #[cached(sortable)]
    pub joined: DateTime<Utc>,
    #[cached(index, sortable)]
    pub birthday: NaiveDate,
    #[cached(index, serde)]
    pub status: Status,
}

const SQLITE_MEMBERS: &str = "CREATE TABLE members (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, bio TEXT, country TEXT NOT NULL,
    active BOOLEAN NOT NULL, age INTEGER, score REAL NOT NULL, joined TEXT NOT NULL,
    birthday TEXT NOT NULL, status TEXT NOT NULL)";

const POSTGRES_MEMBERS: &str = "CREATE TABLE members (
    id BIGINT PRIMARY KEY, name TEXT NOT NULL, bio TEXT, country TEXT NOT NULL,
    active BOOLEAN NOT NULL, age INTEGER, score DOUBLE PRECISION NOT NULL,
    joined TIMESTAMPTZ NOT NULL, birthday DATE NOT NULL, status JSONB NOT NULL)";

/// `country` compares byte for byte, as the cache's terms do (MySQL's
/// default collations ignore case and trailing spaces).
const MYSQL_MEMBERS: &str = "CREATE TABLE members (
    id BIGINT PRIMARY KEY, name TEXT NOT NULL, bio TEXT,
    country VARCHAR(32) COLLATE utf8mb4_bin NOT NULL, active BOOLEAN NOT NULL, age INT,
    score DOUBLE NOT NULL, joined DATETIME(6) NOT NULL, birthday DATE NOT NULL,
    status JSON NOT NULL)";

const COUNTRIES: [&str; 6] = ["GB", "US", "FR", "Ünïcode", "null", "\"GB\""];
const WORDS: [&str; 8] = [
    "Rust", "redis", "Straße", "ÉCOLE", "don't", "tokio", "axum", "sql",
];

fn member(rng: &mut Rng, id: i64) -> Member {
    let words = |rng: &mut Rng| {
        (0..1 + rng.below(3))
            .map(|_| *rng.pick(&WORDS))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let base = Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap();
    Member {
        id,
        name: words(rng),
        bio: rng.chance(70).then(|| words(rng)),
        country: (*rng.pick(&COUNTRIES)).to_owned(),
        active: rng.chance(50),
        age: rng.chance(80).then(|| 15 + rng.below(10) as i32),
        // Few values: ties are ordered by pk.
        score: *rng.pick(&[-1.5, 0.0, 0.25, 2.0, 1e10]),
        joined: base + chrono::TimeDelta::microseconds(rng.below(5) as i64 * 1_500_000),
        birthday: NaiveDate::from_ymd_opt(2000, 1, 1).unwrap()
            + chrono::TimeDelta::days(rng.below(6) as i64),
        status: *rng.pick(&[Status::Active, Status::Away, Status::Gone]),
    }
}

/// A random query over every kind of filter, with bounds between and
/// beyond the values, search terms, an ordering and a window.
fn query(rng: &mut Rng) -> Query<Member> {
    let mut q = Query::<Member>::new();
    for _ in 0..rng.below(4) {
        q = match rng.below(12) {
            0 => q.filter("country", *rng.pick(&COUNTRIES)),
            1 => q.filter("country", "nowhere"),
            2 => q.filter("active", rng.chance(50)),
            3 => q.filter("age", 15 + rng.below(10) as i32),
            4 => q.gte("age", 14.5 + rng.below(12) as f64 / 2.0),
            5 => q.lt("age", *rng.pick(&[17.5, 20.0, 1e12, -1e12])),
            6 => q.gt("score", *rng.pick(&[-1.5, 0.0, 0.1, 2.0, 1e11])),
            7 => q.lte("score", *rng.pick(&[-2.0, 0.25, 2.0])),
            8 => {
                let base = Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap();
                let at = base + chrono::TimeDelta::microseconds(rng.below(8) as i64 * 750_000);
                if rng.chance(50) {
                    q.gte("joined", at)
                } else {
                    q.lt("joined", at)
                }
            }
            9 => {
                let day = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap()
                    + chrono::TimeDelta::days(rng.below(7) as i64);
                if rng.chance(50) {
                    q.filter("birthday", day)
                } else {
                    q.range("birthday", day..)
                }
            }
            10 => q.filter_text("status", rng.pick::<&str>(&["active", "away", "gone"])),
            _ => q.search(&format!("{} {}", rng.pick(&WORDS), rng.pick(&["", "RUST"]))),
        };
    }
    q = match rng.below(7) {
        0 => q.order_by("age"),
        1 => q.order_by_desc("age"),
        2 => q.order_by("score"),
        3 => q.order_by_desc("joined"),
        4 => q.order_by("birthday"),
        _ => q,
    };
    if rng.chance(50) {
        q = q.offset(rng.below(8));
    }
    if rng.chance(70) {
        q = q.limit(rng.below(6));
    }
    q
}

/// The statements of `query` on the database: one, unless it searches
/// (candidates, then their rows in batches) or its page is past the last
/// match (then a second one for the count).
fn expected_statements(query: &Query<Member>, expected: &QueryPage<i64>) -> Option<usize> {
    if !query.search_terms().is_empty() {
        return None;
    }
    let past_the_end =
        expected.pks.is_empty() && query.offset_value() > 0 && query.limit_value() != Some(0);
    Some(if past_the_end { 2 } else { 1 })
}

async fn differential<DB: SqlxDatabase>(
    pool: Pool<DB>,
    statements: &Statements,
    seed: u64,
    mut write: impl AsyncFnMut(&Pool<DB>, Option<&Member>, i64),
) where
    Member: SqlxModel<DB>,
{
    let mut rng = Rng::new(seed);
    let mut rows: Vec<Member> = Vec::new();
    for id in 1..=40 {
        let m = member(&mut rng, id);
        write(&pool, Some(&m), id).await;
        rows.push(m);
    }
    // Not warmed: every query goes to the derived SQL fallback.
    let cache = Cache::builder()
        .store(MemoryStore::new())
        .loader::<Member>(SqlxLoader::new(pool.clone()))
        .build()
        .unwrap();
    for round in 0..6 {
        for i in 0..40 {
            let query = query(&mut rng);
            let expected = QueryPage::evaluate(&query, rows.clone());
            let (found, run) = counted(statements, cache.query_pks(&query)).await;
            let found = found.unwrap_or_else(|e| panic!("seed {seed}, {query:?}: {e}"));
            assert_eq!(found.source, Source::Database);
            assert_eq!(
                (found.items.clone(), found.count),
                (expected.pks.clone(), expected.count),
                "seed {seed}, round {round}, query {i}: {query:?}"
            );
            if let Some(n) = expected_statements(&query, &expected) {
                assert_eq!(run.len(), n, "seed {seed}, {query:?}: {run:#?}");
            }
        }
        // Random writes and deletes between rounds.
        for _ in 0..8 {
            let id = 1 + rng.below(45) as i64;
            rows.retain(|m| m.id != id);
            if rng.chance(75) {
                let m = member(&mut rng, id);
                write(&pool, Some(&m), id).await;
                rows.push(m);
            } else {
                write(&pool, None, id).await;
            }
        }
    }
}

/// `async fn $name(pool, row, id)`: deletes row `id`, then inserts `row`
/// with its values bound (so dates are stored as sqlx writes them, which
/// the fallback's bound values compare with).
macro_rules! write_fn {
    ($name:ident, $pool:ty, $delete:literal, $insert:literal) => {
        async fn $name(pool: &$pool, row: Option<&Member>, id: i64) {
            sqlx::query($delete).bind(id).execute(pool).await.unwrap();
            let Some(m) = row else { return };
            sqlx::query($insert)
                .bind(m.id)
                .bind(&m.name)
                .bind(&m.bio)
                .bind(&m.country)
                .bind(m.active)
                .bind(m.age)
                .bind(m.score)
                .bind(m.joined)
                .bind(m.birthday)
                .bind(serde_json::to_value(m.status).unwrap())
                .execute(pool)
                .await
                .unwrap();
        }
    };
}

write_fn!(
    sqlite_write,
    SqlitePool,
    "DELETE FROM members WHERE id = ?",
    "INSERT INTO members VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
);
write_fn!(
    postgres_write,
    PgPool,
    "DELETE FROM members WHERE id = $1",
    "INSERT INTO members VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
);

write_fn!(
    mysql_write,
    MySqlPool,
    "DELETE FROM members WHERE id = ?",
    "INSERT INTO members VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
);

#[tokio::test]
async fn sqlite_answers_unwarmed_queries_like_the_cache() {
    for seed in [7, 1_234_567, 0xDEAD_BEEF] {
        let (pool, statements) = sqlite().await;
        sqlx::query(SQLITE_MEMBERS).execute(&pool).await.unwrap();
        differential(pool, statements, seed, async |p, r, id| {
            sqlite_write(p, r, id).await;
        })
        .await;
    }
}

#[tokio::test]
async fn postgres_answers_unwarmed_queries_like_the_cache() {
    for seed in [11, 7_654_321] {
        with_postgres(move |pool, statements| async move {
            sqlx::query(POSTGRES_MEMBERS).execute(&pool).await.unwrap();
            differential(pool, &statements, seed, async |p, r, id| {
                postgres_write(p, r, id).await;
            })
            .await;
        })
        .await;
    }
}

#[tokio::test]
async fn mysql_answers_unwarmed_queries_like_the_cache() {
    for seed in [13, 3_141_592] {
        with_mysql(move |pool, statements| async move {
            sqlx::query(MYSQL_MEMBERS).execute(&pool).await.unwrap();
            differential(pool, &statements, seed, async |p, r, id| {
                mysql_write(p, r, id).await;
            })
            .await;
        })
        .await;
    }
}

/// The statement is the one the docs show, with its values bound.
#[tokio::test]
async fn the_statement_binds_values_in_the_columns_types() {
    let (pool, statements) = sqlite().await;
    sqlx::query(SQLITE_MEMBERS).execute(&pool).await.unwrap();
    let cache = Cache::builder()
        .loader::<Member>(SqlxLoader::new(pool.clone()))
        .build()
        .unwrap();
    let query = Query::<Member>::new()
        .filter("country", "GB")
        .gte("age", 17.5)
        .order_by_desc("score")
        .limit(20);
    let (found, run) = counted(statements, cache.query_pks(&query)).await;
    assert_eq!(found.unwrap().count, 0);
    assert_eq!(
        run,
        [
            "SELECT `id`, COUNT(*) OVER () FROM `members` WHERE `country` = ? AND `age` IS NOT NULL \
          AND `age` >= ? ORDER BY `score` DESC NULLS FIRST, `id` DESC LIMIT 20 OFFSET 0"
        ]
    );
}

/// A search scans at most `scan_limit` candidates, then declines.
#[tokio::test]
async fn a_search_past_the_scan_limit_is_declined() {
    let (pool, statements) = sqlite().await;
    sqlx::query(SQLITE_MEMBERS).execute(&pool).await.unwrap();
    let mut rng = Rng::new(99);
    for id in 1..=30 {
        sqlite_write(&pool, Some(&member(&mut rng, id)), id).await;
    }
    let query = Query::<Member>::new().search("rust");
    let small = Cache::builder()
        .loader::<Member>(SqlxLoader::new(pool.clone()).scan_limit(10))
        .build()
        .unwrap();
    let error = small.query_pks(&query).await.unwrap_err();
    assert!(error.to_string().contains("not warmed"), "{error}");
    // With a filter leaving fewer candidates than the limit, it answers:
    // the candidates, then their rows in one batch.
    let narrow = query.clone().filter("country", "GB").filter("active", true);
    let (found, run) = counted(statements, small.query_pks(&narrow)).await;
    let found = found.unwrap();
    assert_eq!(found.source, Source::Database);
    assert_eq!(run.len(), 2, "{run:#?}");
}
