//! The change feed on PostgreSQL (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`), in a schema of its own:
//!
//! - commit throughput of a polls write (`UPDATE choices SET choice_text`)
//!   by concurrent writers, without and with the capture triggers, the two
//!   alternated in one run, as a ratio;
//! - commit -> invalidation delivered (the store's swap of the written
//!   choice's key by the spawned feed task), p50 and p99, with the writers
//!   running.
//!
//! `cargo bench --bench feed` (`-- --quick` for a smoke run).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cached_instances::feed::{Feed, OUTBOX_TABLE};
use cached_instances::sqlx::SqlxLoader;
use cached_instances::store::{InProcess, StoreFuture};
use cached_instances::{Cache, MemoryStore};
use cached_instances_testkit::store::{Hook, Keys, Op, Wrapped};
use polls::{Choice, Question, User};
use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

const WRITERS: usize = 4;
const CHOICES: i64 = 1000;

/// Records when a written choice's key is first swapped after its commit.
#[derive(Clone, Default)]
struct Timing {
    /// Key -> commit instant of the write waiting for its invalidation.
    waiting: Arc<Mutex<HashMap<String, Instant>>>,
    latencies: Arc<Mutex<Vec<Duration>>>,
}

impl Hook for Timing {
    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        keys: Keys<'a>,
        call: impl FnOnce() -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        if op == Op::SwapMany {
            let now = Instant::now();
            let mut waiting = self.waiting.lock().unwrap();
            let mut latencies = self.latencies.lock().unwrap();
            for key in keys.iter() {
                if let Some(committed) = waiting.remove(key) {
                    latencies.push(now - committed);
                }
            }
        }
        call()
    }
    /// Reads are not timed: forwarded.
    fn around_in_process(&self, _key: &str, read: impl FnOnce() -> InProcess) -> InProcess {
        read()
    }
}

const TABLES: &str = "
CREATE TABLE users (id BIGSERIAL PRIMARY KEY, username TEXT NOT NULL UNIQUE);
CREATE TABLE questions (id BIGSERIAL PRIMARY KEY, question_text TEXT NOT NULL, pub_date TIMESTAMPTZ NOT NULL);
CREATE TABLE choices (
    id BIGSERIAL PRIMARY KEY,
    question_id BIGINT NOT NULL REFERENCES questions (id) ON DELETE CASCADE,
    choice_text TEXT NOT NULL
);
CREATE TABLE votes (
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    choice_id BIGINT NOT NULL REFERENCES choices (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, choice_id)
);
INSERT INTO questions (question_text, pub_date) SELECT 'q' || g, now() FROM generate_series(1, 100) g;
INSERT INTO choices (question_id, choice_text) SELECT 1 + g % 100, 'c' || g FROM generate_series(1, 1000) g;
";

/// Writers updating choices for `duration`; each write is its own
/// transaction. Calls `committed(id)` after each commit. Returns commits.
async fn write_for(
    pool: &PgPool,
    duration: Duration,
    committed: Arc<dyn Fn(i64) + Send + Sync>,
) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (pool, stop, count, committed) =
            (pool.clone(), stop.clone(), count.clone(), committed.clone());
        tasks.push(tokio::spawn(async move {
            let mut n: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                // Writers take disjoint ids: no row lock waits.
                let id = 1 + (w as i64 + n * WRITERS as i64) % CHOICES;
                n += 1;
                sqlx::query("UPDATE choices SET choice_text = $1 WHERE id = $2")
                    .bind(format!("w{w}n{n}"))
                    .bind(id)
                    .execute(&pool)
                    .await
                    .unwrap();
                committed(id);
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    count.load(Ordering::Relaxed)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let duration = Duration::from_secs(if quick { 1 } else { 5 });
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let options = PgConnectOptions::from_str(&url).expect("DATABASE_URL");
    let admin = PgPool::connect_with(options.clone())
        .await
        .expect("PostgreSQL");
    let schema = format!("feed_bench_{}", std::process::id());
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(WRITERS as u32 + 4)
        .connect_with(options.options([("search_path", schema.as_str())]))
        .await
        .unwrap();
    sqlx::raw_sql(TABLES).execute(&pool).await.unwrap();

    let timing = Timing::default();
    let cache = Cache::builder()
        .store(Wrapped::with_hook(MemoryStore::new(), timing.clone()))
        .loader::<User>(SqlxLoader::new(pool.clone()))
        .loader::<Question>(SqlxLoader::new(pool.clone()))
        .loader::<Choice>(SqlxLoader::new(pool.clone()))
        .build()
        .unwrap();
    let feed = Feed::new(cache.clone(), pool.clone());

    // Throughput, alternated: without triggers, with them.
    let drop_triggers = "DROP TRIGGER IF EXISTS cached_instances_capture ON choices;
        DROP TRIGGER IF EXISTS cached_instances_capture_update ON choices;";
    let nothing: Arc<dyn Fn(i64) + Send + Sync> = Arc::new(|_| {});
    let (mut plain, mut captured) = (0u64, 0u64);
    for _ in 0..2 {
        sqlx::raw_sql(drop_triggers).execute(&pool).await.unwrap();
        plain += write_for(&pool, duration, nothing.clone()).await;
        feed.install().await.unwrap();
        captured += write_for(&pool, duration, nothing.clone()).await;
        sqlx::raw_sql(AssertSqlSafe(format!("TRUNCATE {OUTBOX_TABLE}")))
            .execute(&pool)
            .await
            .unwrap();
    }
    let secs = 2.0 * duration.as_secs_f64();
    let (plain, captured) = (plain as f64 / secs, captured as f64 / secs);

    // Latency: every choice cached, the task running, the writers writing.
    feed.install().await.unwrap();
    let ids: Vec<i64> = (1..=CHOICES).collect();
    cache.get_many::<Choice>(&ids).await.unwrap();
    let keys: Arc<HashMap<i64, String>> = Arc::new(
        ids.iter()
            .map(|&id| (id, cache.key_of::<Choice>(&id).unwrap()))
            .collect(),
    );
    let mut rows = Vec::new();
    for poll in [Duration::from_millis(10), Duration::from_millis(2)] {
        timing.latencies.lock().unwrap().clear();
        let running = Feed::new(cache.clone(), pool.clone())
            .poll_interval(poll)
            .spawn();
        let waiting = timing.waiting.clone();
        let keys = keys.clone();
        let record: Arc<dyn Fn(i64) + Send + Sync> = Arc::new(move |id| {
            waiting
                .lock()
                .unwrap()
                .insert(keys[&id].clone(), Instant::now());
        });
        let commits = write_for(&pool, duration, record).await;
        // Let the last writes be delivered.
        tokio::time::sleep(Duration::from_millis(500)).await;
        running.stop().await;
        let mut latencies = timing.latencies.lock().unwrap().clone();
        latencies.sort();
        rows.push((poll, commits, latencies));
    }

    println!(
        "commit throughput, {WRITERS} writers (UPDATE choices), {}s x2 each, alternated:",
        duration.as_secs()
    );
    println!("  without triggers: {plain:>8.0} commits/s");
    println!(
        "  with capture:     {captured:>8.0} commits/s  ({:.2}x)",
        captured / plain
    );
    println!("commit -> invalidation delivered by the spawned task, writers running:");
    for (poll, commits, latencies) in rows {
        println!(
            "  poll {:>2} ms: {} commits, {} measured, p50 {:.1} ms, p99 {:.1} ms",
            poll.as_millis(),
            commits,
            latencies.len(),
            percentile(&latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        );
    }
    pool.close().await;
    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
}
