//! Cached queries against PostgreSQL: a filtered and sorted page of 20 out
//! of 100 000 cached users (see QUERY_BENCHMARKS.md).
//!
//! ```sh
//! cargo bench --bench query               # 100 000 users
//! cargo bench --bench query -- --quick    # 10 000 users, short runs (CI smoke)
//! ```
//!
//! It starts its own `redis-server` on a free loopback port (the test
//! support's `RedisServer`) and uses the PostgreSQL server at `DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`), in a schema of its
//! own (`ci_query_bench`) that it drops at the end. The same query is asked
//! of each side, interleaved, a different country each time, in two
//! variants (without and with `AND active`):
//!
//! ```sql
//! SELECT id, name, country, active, score, age, created, count(*) OVER ()
//! FROM users WHERE country = $1 [AND active]
//! ORDER BY score DESC, id DESC LIMIT 20
//! ```
//!
//! PostgreSQL gets the indexes that serve them best,
//! `(country, score DESC, id DESC)` and `(country, active, score DESC, id
//! DESC)`; the cache answers `Query::new().filter("country", c)
//! [.filter("active", true)].order_by_desc("score").limit(20)` with
//! `Cache::query_json`, on Redis and on the in-process `MemoryStore`. Every
//! side's answer (rows and count) is checked equal first. Redis' own CPU time
//! per script call (`INFO commandstats`) is printed too: unlike wall-clock
//! latencies, it does not depend on what else the machine runs.
//!
//! Repeated filters read their count from the index's count cache (see the
//! `store` module docs); for the two-filter query, the first query after a
//! write (which clears that cache, so the count is computed again) is timed
//! too, after the other measurements.
//!
//! `-- --memory-only` runs the `MemoryStore` side alone, on users made in
//! memory (no PostgreSQL, no Redis), for profiling.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cached_instances::query::{Query, Source};
use cached_instances::{Cache, CachedInstance, LoadError, Loader, MemoryStore, RedisStore, Store};
use cached_instances_testkit::cli::{BenchFlag, DatabaseArg};
use cached_instances_testkit::redis_server::RedisServer;
use chrono::{DateTime, Utc};
use clap::Parser;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};

const SCHEMA: &str = "ci_query_bench";
const COUNTRIES: usize = 20;

#[derive(CachedInstance, Debug, Clone, PartialEq)]
#[cached(model = "BenchUser")]
pub struct User {
    #[cached(pk)]
    pub id: i64,
    #[cached(search)]
    pub name: String,
    #[cached(index)]
    pub country: String,
    #[cached(index)]
    pub active: bool,
    #[cached(sortable)]
    pub score: f64,
    #[cached(sortable)]
    pub age: i32,
    pub created: DateTime<Utc>,
}

#[derive(Clone)]
struct Pg(PgPool);

fn user_of(row: &sqlx::postgres::PgRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        country: row.try_get(2)?,
        active: row.try_get(3)?,
        score: row.try_get(4)?,
        age: row.try_get(5)?,
        created: row.try_get(6)?,
    })
}

const COLUMNS: &str = "id, name, country, active, score, age, created";

impl Loader<User> for Pg {
    async fn load(&self, pks: &[i64]) -> Result<Vec<User>, LoadError> {
        let sql = format!("SELECT {COLUMNS} FROM {SCHEMA}.users WHERE id = ANY($1)");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(pks)
            .fetch_all(&self.0)
            .await
            .map_err(LoadError::new)?;
        rows.iter()
            .map(user_of)
            .collect::<Result<_, _>>()
            .map_err(LoadError::new)
    }

    async fn all_pks(&self) -> Result<Option<Vec<i64>>, LoadError> {
        let sql = format!("SELECT id FROM {SCHEMA}.users ORDER BY id");
        let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
            .fetch_all(&self.0)
            .await
            .map_err(LoadError::new)?;
        Ok(Some(ids))
    }
}

/// The baseline: the page's rows and the total count in one query.
async fn pg_page(pool: &PgPool, country: &str, active: bool) -> (Vec<User>, i64) {
    let filter = if active { " AND active" } else { "" };
    let sql = format!(
        "SELECT {COLUMNS}, count(*) OVER () FROM {SCHEMA}.users WHERE country = $1{filter} \
         ORDER BY score DESC, id DESC LIMIT 20"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(country)
        .fetch_all(pool)
        .await
        .unwrap();
    let count = rows.first().map_or(0, |r| r.get::<i64, _>(7));
    (rows.iter().map(|r| user_of(r).unwrap()).collect(), count)
}

/// A write that changes the index: moves user `id`'s score a little;
/// returns the user as saved.
async fn nudge_score(pool: &PgPool, id: i64) -> User {
    let sql = format!(
        "UPDATE {SCHEMA}.users SET score = score + 0.001 WHERE id = $1 RETURNING {COLUMNS}"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    user_of(&row).unwrap()
}

fn country(i: u64) -> String {
    format!("C{:02}", i % COUNTRIES as u64)
}

async fn setup(pool: &PgPool, users: u64) {
    for sql in [
        format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"),
        format!("CREATE SCHEMA {SCHEMA}"),
        format!(
            "CREATE TABLE {SCHEMA}.users (id BIGINT PRIMARY KEY, name TEXT NOT NULL, \
             country TEXT NOT NULL, active BOOLEAN NOT NULL, score DOUBLE PRECISION NOT NULL, \
             age INTEGER NOT NULL, created TIMESTAMPTZ NOT NULL)"
        ),
        // Deterministic pseudo-random values from the id.
        format!(
            "INSERT INTO {SCHEMA}.users SELECT g, 'user ' || g || ' ' || md5(g::text), \
             'C' || lpad((((g * 7919) % {COUNTRIES}))::text, 2, '0'), (g / 3) % 2 = 0, \
             ((g * 2654435761) % 100000) / 100.0, 18 + (g * 13) % 60, \
             '2020-01-01'::timestamptz + ((g * 977) % 100000) * interval '1 minute' \
             FROM generate_series(1, {users}) g"
        ),
        format!("CREATE INDEX users_page ON {SCHEMA}.users (country, active, score DESC, id DESC)"),
        format!("ANALYZE {SCHEMA}.users"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .execute(pool)
            .await
            .unwrap();
    }
}

struct Samples(Vec<Duration>);

impl Samples {
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    }
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// Runs `op` from `tasks` concurrent tasks for `window`; operations per
/// second.
async fn throughput<F, Fut>(tasks: usize, window: Duration, op: F) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + window;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (op, done) = (op.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = t as u64 * 7;
                while Instant::now() < deadline {
                    op(i).await;
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / window.as_secs_f64()
}

/// Users made in memory, for `--memory-only`.
struct Synthetic(Vec<User>);

impl Loader<User> for Synthetic {
    async fn load(&self, pks: &[i64]) -> Result<Vec<User>, LoadError> {
        Ok(pks
            .iter()
            .map(|&id| self.0[id as usize - 1].clone())
            .collect())
    }
    async fn all_pks(&self) -> Result<Option<Vec<i64>>, LoadError> {
        Ok(Some(self.0.iter().map(|u| u.id).collect()))
    }
}

/// `--memory-only`: the cache on a `MemoryStore` alone, without PostgreSQL
/// or Redis (for profiling the in-process engine).
async fn memory_only(users: u64, iterations: u64) {
    let rows = (1..=users as i64)
        .map(|g| User {
            id: g,
            name: format!("user {g}"),
            country: format!("C{:02}", (g * 7919) % COUNTRIES as i64),
            active: (g / 3) % 2 == 0,
            score: ((g * 2_654_435_761) % 100_000) as f64 / 100.0,
            age: 18 + ((g * 13) % 60) as i32,
            created: DateTime::from_timestamp(1_600_000_000 + g, 0).unwrap(),
        })
        .collect();
    let cache = Cache::builder()
        .store(MemoryStore::builder().max_bytes(1 << 30).build())
        .loader::<User>(Synthetic(rows))
        .build()
        .unwrap();
    cache.warm::<User>().batch_size(2000).await.unwrap();
    for json in [false, true] {
        let t = Instant::now();
        for i in 0..iterations {
            let q = Query::<User>::new()
                .filter("country", country(i * 2))
                .filter("active", true)
                .order_by_desc("score")
                .limit(20);
            if json {
                std::hint::black_box(cache.query_json(&q).await.unwrap());
            } else {
                std::hint::black_box(cache.query_pks(&q).await.unwrap());
            }
        }
        let per = t.elapsed() / iterations as u32;
        println!(
            "MemoryStore {}: {per:?} per query",
            if json { "query_json" } else { "query_pks" }
        );
    }
}

/// Cached queries against PostgreSQL (QUERY_BENCHMARKS.md).
#[derive(Debug, Parser)]
#[command(bin_name = "cargo bench --bench query --")]
struct Args {
    /// 10 000 users and short runs (CI smoke).
    #[arg(long)]
    quick: bool,
    /// The `MemoryStore` side alone, on users made in memory (no
    /// PostgreSQL, no Redis), for profiling.
    #[arg(long)]
    memory_only: bool,
    #[command(flatten)]
    database: DatabaseArg,
    #[command(flatten)]
    _bench: BenchFlag,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    // On a worker thread, as a server's request handlers run, not on the
    // thread blocked in `block_on`: redis-rs reads each reply in a task of
    // its own, and a caller on that other thread would pay a wake across
    // threads per request (BENCHMARKS.md, session 12).
    match tokio::spawn(run(args)).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: the benchmark's task failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> ExitCode {
    let quick = args.quick;
    if args.memory_only {
        memory_only(if quick { 10_000 } else { 100_000 }, 2_000).await;
        return ExitCode::SUCCESS;
    }
    let users: u64 = if quick { 10_000 } else { 100_000 };
    let iterations: u64 = if quick { 200 } else { 1_000 };
    let window = Duration::from_secs(if quick { 1 } else { 4 });

    let url = args.database.url;
    let pool = match PgPoolOptions::new().max_connections(16).connect(&url).await {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("cannot connect to PostgreSQL at {url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    setup(&pool, users).await;
    eprintln!(
        "loaded {users} users into PostgreSQL in {:?}",
        started.elapsed()
    );

    let server = RedisServer::start();
    let redis = RedisStore::connect(&server.url()).await.unwrap();
    let db = Pg(pool.clone());
    let cache_on = |store: Arc<dyn Store>| {
        Cache::builder()
            .store(store)
            .loader::<User>(db.clone())
            .default_ttl(Duration::from_secs(24 * 3600))
            .build()
            .unwrap()
    };
    let on_redis = cache_on(Arc::new(redis));
    let on_memory = cache_on(Arc::new(MemoryStore::builder().max_bytes(1 << 30).build()));
    let mut warm_times = Vec::new();
    for (name, cache) in [("Redis", &on_redis), ("MemoryStore", &on_memory)] {
        let started = Instant::now();
        let report = cache.warm::<User>().batch_size(2000).await.unwrap();
        assert_eq!(report.indexed, users);
        warm_times.push((name, started.elapsed()));
        eprintln!("warmed {users} users on {name} in {:?}", started.elapsed());
    }

    let query = |c: &str, both: bool| {
        let q = Query::<User>::new().filter("country", c);
        let q = if both { q.filter("active", true) } else { q };
        q.order_by_desc("score").limit(20)
    };
    // The answers agree.
    for both in [false, true] {
        for i in 0..COUNTRIES as u64 {
            let c = country(i);
            let (rows, count) = pg_page(&pool, &c, both).await;
            for cache in [&on_redis, &on_memory] {
                let found = cache.query(&query(&c, both)).await.unwrap();
                assert_eq!(found.source, Source::Cache);
                assert_eq!(found.count, count as u64, "{c}");
                assert_eq!(found.items, rows, "{c}");
            }
        }
    }

    let names = [
        "PostgreSQL: rows + count(*) OVER (), one query",
        "cache on Redis: Cache::query_json (1 script + 1 MGET)",
        "cache on MemoryStore: Cache::query_json",
        "cache on Redis: Cache::query_pks (the script alone)",
    ];
    for both in [false, true] {
        let _: Result<(), _> = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut server.connection());
        // Latency, interleaved.
        let mut samples: [Samples; 4] = std::array::from_fn(|_| Samples(Vec::new()));
        for i in 0..iterations {
            let c = country(i * 7);
            let order = [i % 4, (i + 1) % 4, (i + 2) % 4, (i + 3) % 4];
            for side in order {
                let t = Instant::now();
                match side {
                    0 => {
                        std::hint::black_box(pg_page(&pool, &c, both).await);
                    }
                    1 => {
                        std::hint::black_box(on_redis.query_json(&query(&c, both)).await.unwrap());
                    }
                    3 => {
                        std::hint::black_box(on_redis.query_pks(&query(&c, both)).await.unwrap());
                    }
                    _ => {
                        std::hint::black_box(on_memory.query_json(&query(&c, both)).await.unwrap());
                    }
                }
                samples[side as usize].0.push(t.elapsed());
            }
        }
        // Redis' own accounting: CPU time per script call inside the
        // server, immune to client-side scheduling on a busy machine.
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut server.connection())
            .unwrap_or_default();
        let usec = info
            .lines()
            .find(|l| l.starts_with("cmdstat_evalsha:"))
            .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("usec_per_call=")))
            .unwrap_or("?")
            .to_owned();

        // Throughput, 16 concurrent tasks each.
        let mut rates = Vec::new();
        {
            let pool = pool.clone();
            rates.push(
                throughput(16, window, move |i| {
                    let pool = pool.clone();
                    async move {
                        std::hint::black_box(pg_page(&pool, &country(i), both).await);
                    }
                })
                .await,
            );
        }
        for (cache, json) in [
            (on_redis.clone(), true),
            (on_memory.clone(), true),
            (on_redis.clone(), false),
        ] {
            rates.push(
                throughput(16, window, move |i| {
                    let cache = cache.clone();
                    async move {
                        let q = Query::<User>::new().filter("country", country(i));
                        let q = if both { q.filter("active", true) } else { q };
                        let q = q.order_by_desc("score").limit(20);
                        if json {
                            std::hint::black_box(cache.query_json(&q).await.unwrap());
                        } else {
                            std::hint::black_box(cache.query_pks(&q).await.unwrap());
                        }
                    }
                })
                .await,
            );
        }

        // The first query after a write: every write that changes the
        // index clears the count cache, so this query computes the count
        // again (`SINTERCARD` on Redis), as every query did before the
        // cache. Each iteration moves one user's score (in PostgreSQL, then
        // `saved` on both caches, untimed) and times the next query.
        let mut after_write: [Samples; 2] = std::array::from_fn(|_| Samples(Vec::new()));
        if both {
            for i in 0..iterations / 4 {
                let id = (i * 7919) % users + 1;
                let user = nudge_score(&pool, id as i64).await;
                on_redis.saved(&user).await.unwrap();
                on_memory.saved(&user).await.unwrap();
                let c = country(i * 7);
                for (side, cache) in [&on_redis, &on_memory].into_iter().enumerate() {
                    let t = Instant::now();
                    std::hint::black_box(cache.query_json(&query(&c, both)).await.unwrap());
                    after_write[side].0.push(t.elapsed());
                }
            }
        }

        let (filter, matches) = if both {
            ("country = ? AND active", users / COUNTRIES as u64 / 2)
        } else {
            ("country = ?", users / COUNTRIES as u64)
        };
        println!(
            "\n{filter} ORDER BY score DESC LIMIT 20, with the count (~{matches} matches), out of \
             {users} users; {iterations} sequential requests per side, interleaved; throughput: \
             16 concurrent tasks for {window:?}. Redis server CPU per script call: {usec} µs.\n"
        );
        println!("| side | p50 | p99 | mean | req/s (16 tasks) |");
        println!("| --- | ---: | ---: | ---: | ---: |");
        for (i, name) in names.iter().enumerate() {
            let s = &samples[i];
            let mean = s.0.iter().sum::<Duration>() / s.0.len() as u32;
            println!(
                "| {name} | {} | {} | {} | {:.0} |",
                us(s.pct(0.5)),
                us(s.pct(0.99)),
                us(mean),
                rates[i]
            );
        }
        if both {
            for (s, name) in after_write.iter().zip([
                "cache on Redis: Cache::query_json, first query after a write",
                "cache on MemoryStore: Cache::query_json, first query after a write",
            ]) {
                let mean = s.0.iter().sum::<Duration>() / s.0.len() as u32;
                println!(
                    "| {name} | {} | {} | {} | - |",
                    us(s.pct(0.5)),
                    us(s.pct(0.99)),
                    us(mean)
                );
            }
        }
    }

    for (name, took) in warm_times {
        println!("\nwarm::<User>() of {users} users on {name}: {took:.1?}");
    }

    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"
    )))
    .execute(&pool)
    .await;
    drop(server);
    ExitCode::SUCCESS
}
