//! Side-by-side benchmarks of cached-instances against the baselines of the
//! performance issue, printed as one table (see BENCHMARKS.md).
//!
//! ```sh
//! cargo bench --bench compare                  # one full run
//! cargo bench --bench compare -- --runs 3      # three runs and the spread of each ratio
//! cargo bench --bench compare -- --quick       # smoke run for CI (tiny durations)
//! ```
//!
//! It starts its own `redis-server` on a free loopback port (the test
//! support's `RedisServer`) and uses the PostgreSQL server at `DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`), in a schema of its
//! own that it drops at the end. Every comparison runs both sides in the same
//! process, interleaved (A B, then B A, ...) so that drift on a shared
//! machine hits both; latencies are p50/p99 of many samples, throughputs are
//! operations completed by concurrent tokio tasks in fixed windows.

#[path = "../tests/support/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hint::black_box;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use cached_instances::store::{CompareAndSet, StoreFuture};
use cached_instances::{Cache, CachedInstance, Loader, MemoryStore, RedisStore, Store};
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use polls::db::{ChoiceChanges, Db};
use polls::routes::{self, App};
use polls::{Choice, Question, User};
use redis_server::RedisServer;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

// ---------------------------------------------------------------------------
// Heap accounting, for the memory row: counts live bytes only while enabled.

struct CountingAlloc;

static TRACK_HEAP: AtomicBool = AtomicBool::new(false);
static LIVE_HEAP: AtomicI64 = AtomicI64::new(0);

fn heap_delta(bytes: i64) {
    if TRACK_HEAP.load(Ordering::Relaxed) {
        LIVE_HEAP.fetch_add(bytes, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counter is a side effect.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is the system allocator's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            heap_delta(layout.size() as i64);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            heap_delta(layout.size() as i64);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        heap_delta(-(layout.size() as i64));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            heap_delta(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

// ---------------------------------------------------------------------------
// Configuration

const USAGE: &str = "\
Usage: cargo bench --bench compare -- [OPTIONS]

Options:
  --quick          tiny durations and data set (CI smoke; the numbers mean little)
  --runs N         repeat the whole comparison N times and print the spread (default 1)
  --window SECS    throughput window per side and round (default 1.5)
  --rounds N       interleaving rounds per comparison (default 4)
  --tasks N        concurrent tasks of the throughput rows (default 16)
  --conns N        concurrent HTTP connections (default 32)
  --pool N         PostgreSQL connections of the baselines' pool (default 16)
  --only LIST      comma-separated groups: detail,list,memory-store,cold,write,http,memory
                   (and breakdown: each layer of the Redis rows alone, printed apart)
  --wait-load X    before each run, wait until the 1-minute load average is below X
  --wait-max MIN   ... for at most MIN minutes, then measure anyway (default 40)
  -h, --help       this help

Environment: DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test).";

#[derive(Debug, Clone)]
struct Config {
    quick: bool,
    runs: usize,
    window: Duration,
    rounds: usize,
    /// Samples per side and round of the sequential latency rows.
    block: usize,
    tasks: usize,
    conns: usize,
    pool: u32,
    only: Option<Vec<String>>,
    wait_load: Option<f64>,
    wait_max: Duration,
    /// Questions in the data set (plus one 500-byte question).
    questions: i64,
    /// The hot set: questions 1..=hot are cached before the hit rows.
    hot: i64,
    /// Iterations of the cold-miss and write rows.
    iterations: usize,
}

impl Config {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Config>, String> {
        let mut c = Config {
            quick: false,
            runs: 1,
            window: Duration::from_millis(1500),
            rounds: 4,
            block: 2500,
            tasks: 16,
            conns: 32,
            pool: 16,
            only: None,
            wait_load: None,
            wait_max: Duration::from_secs(40 * 60),
            questions: 2000,
            hot: 1000,
            iterations: 120,
        };
        let mut window = None;
        let mut rounds = None;
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            let number = |name: &str, v: String| -> Result<f64, String> {
                v.parse::<f64>()
                    .ok()
                    .filter(|n| *n > 0.0)
                    .ok_or(format!("{name}: not a positive number: {v:?}"))
            };
            match arg.as_str() {
                "--quick" => c.quick = true,
                "--runs" => c.runs = number("--runs", value("--runs")?)? as usize,
                "--window" => {
                    window = Some(Duration::from_secs_f64(number(
                        "--window",
                        value("--window")?,
                    )?))
                }
                "--rounds" => rounds = Some(number("--rounds", value("--rounds")?)? as usize),
                "--tasks" => c.tasks = number("--tasks", value("--tasks")?)? as usize,
                "--conns" => c.conns = number("--conns", value("--conns")?)? as usize,
                "--pool" => c.pool = number("--pool", value("--pool")?)? as u32,
                "--only" => {
                    c.only = Some(
                        value("--only")?
                            .split(',')
                            .map(|s| s.trim().to_owned())
                            .collect(),
                    )
                }
                "--wait-load" => c.wait_load = Some(number("--wait-load", value("--wait-load")?)?),
                "--wait-max" => {
                    c.wait_max =
                        Duration::from_secs_f64(60.0 * number("--wait-max", value("--wait-max")?)?)
                }
                // cargo passes --bench to harness = false targets.
                "--bench" => {}
                "-h" | "--help" => return Ok(None),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if c.quick {
            c.window = Duration::from_millis(150);
            c.rounds = 2;
            c.block = 100;
            c.questions = 300;
            c.hot = 100;
            c.iterations = 6;
        }
        if let Some(w) = window {
            c.window = w;
        }
        if let Some(r) = rounds {
            c.rounds = r.max(1);
        }
        Ok(Some(c))
    }

    fn wants(&self, group: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|g| g == group))
    }
}

// ---------------------------------------------------------------------------
// The machine

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn load1() -> f64 {
    loadavg()
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::MAX)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = &url[scheme + 3..at];
            let user = user.split(':').next().unwrap_or("");
            format!("{}://{user}{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Statistics

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[derive(Debug, Clone, Copy)]
struct Lat {
    p50: f64,
    p99: f64,
    n: usize,
}

fn lat(mut samples: Vec<u64>) -> Lat {
    samples.sort_unstable();
    Lat {
        p50: percentile(&samples, 0.50) as f64,
        p99: percentile(&samples, 0.99) as f64,
        n: samples.len(),
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn us(ns: f64) -> String {
    if ns >= 10_000.0 {
        format!("{:.0} us", ns / 1000.0)
    } else {
        format!("{:.1} us", ns / 1000.0)
    }
}

fn fmt_lat(l: Lat) -> String {
    format!("p50 {} / p99 {}", us(l.p50), us(l.p99))
}

fn fmt_rate(r: f64) -> String {
    if r >= 10_000.0 {
        format!("{:.1}k/s", r / 1000.0)
    } else {
        format!("{r:.0}/s")
    }
}

/// Throughput of each window; the side's figure is the median window.
#[derive(Debug, Clone)]
struct Rate {
    windows: Vec<f64>,
    latency: Option<Lat>,
}

impl Rate {
    fn median(&self) -> f64 {
        median(&self.windows)
    }
    fn show(&self) -> String {
        let mut s = fmt_rate(self.median());
        if let Some(l) = self.latency {
            s.push_str(&format!(" (p50 {})", us(l.p50)));
        }
        s
    }
}

// ---------------------------------------------------------------------------
// Operations under test

type BoxFut<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// One operation of a comparison; `i` picks the pk (or page) so that both
/// sides visit the same ones in the same order. Both sides pay the same
/// boxing.
trait Op: Send + Sync + 'static {
    fn run(&self, i: usize) -> BoxFut<'_>;
}

/// Ours: a detail hit, `Cache::get_json` (bytes, no decode).
struct CachedDetail {
    cache: Cache,
    pks: Vec<i64>,
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
struct RawGet {
    conn: redis::aio::ConnectionManager,
    keys: Vec<String>,
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
struct RawGetTimeout(RawGet);

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
struct StoreGet {
    store: RedisStore,
    keys: Vec<String>,
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
struct Many {
    how: ManyHow,
    pages: Vec<Vec<i64>>,
    keys: Vec<Vec<String>>,
}

enum ManyHow {
    RawMget(redis::aio::ConnectionManager),
    Store(RedisStore),
    Cache(Cache),
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
const DETAIL_SQL: &str = "SELECT q.id, q.question_text, q.pub_date,
        (SELECT coalesce(array_agg(c.id ORDER BY c.id), '{}') FROM choices c WHERE c.question_id = q.id)
 FROM questions q WHERE q.id = $1";

/// 100 questions with their choices' pks, in one query.
/// (The page is taken first, so the aggregates run for its rows only: the
/// fastest of the forms tried.)
const LIST_SQL: &str = "SELECT p.id, p.question_text, p.pub_date,
        (SELECT coalesce(array_agg(c.id ORDER BY c.id), '{}') FROM choices c WHERE c.question_id = p.id)
 FROM (SELECT id, question_text, pub_date FROM questions ORDER BY id LIMIT 100 OFFSET $1) p
 ORDER BY p.id";

/// Ours, list: the page's pks (one query), then one multi-get.
const PK_PAGE_SQL: &str = "SELECT id FROM questions ORDER BY id LIMIT 100 OFFSET $1";

type QuestionRow = (i64, String, DateTime<Utc>, Vec<i64>);

fn question((id, question_text, pub_date, choices): QuestionRow) -> Question {
    Question {
        id,
        question_text,
        pub_date,
        choices,
    }
}

/// Baseline: the question loaded from PostgreSQL with its related pks.
struct PgDetail {
    pool: PgPool,
    pks: Vec<i64>,
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
struct CachedList {
    cache: Cache,
    pool: PgPool,
    offsets: Vec<i64>,
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

/// Baseline: the same 100 loaded from PostgreSQL with their related pks.
struct PgList {
    pool: PgPool,
    offsets: Vec<i64>,
}

impl Op for PgList {
    fn run(&self, i: usize) -> BoxFut<'_> {
        let offset = self.offsets[i % self.offsets.len()];
        Box::pin(async move {
            let rows: Vec<QuestionRow> = sqlx::query_as(LIST_SQL)
                .bind(offset)
                .fetch_all(&self.pool)
                .await
                .expect("list query");
            assert_eq!(rows.len(), 100);
            black_box(rows.into_iter().map(question).collect::<Vec<_>>());
        })
    }
}

// ---------------------------------------------------------------------------
// Runners

/// Sequential latencies of each op, interleaved in blocks; the order of the
/// sides rotates every round (A B C, B C A, ...) so drift hits all of them.
async fn latencies(ops: &[&dyn Op], rounds: usize, block: usize) -> Vec<Lat> {
    let mut samples: Vec<Vec<u64>> = ops
        .iter()
        .map(|_| Vec::with_capacity(rounds * block))
        .collect();
    let mut next = vec![0usize; ops.len()];
    // Warm-up: connections made, statements prepared, caches hot.
    for op in ops {
        for i in 0..(block / 5).max(20) {
            op.run(i).await;
        }
    }
    for round in 0..rounds {
        for k in 0..ops.len() {
            let side = (round + k) % ops.len();
            for _ in 0..block {
                let started = Instant::now();
                ops[side].run(next[side]).await;
                samples[side].push(started.elapsed().as_nanos() as u64);
                next[side] += 1;
            }
        }
    }
    samples.into_iter().map(lat).collect()
}

/// Operations per second of `op` run by `tasks` concurrent tasks for
/// `window`.
async fn throughput(op: Arc<dyn Op>, tasks: usize, window: Duration) -> f64 {
    let started = Instant::now();
    let deadline = started + window;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                let mut i = t * 7919;
                while Instant::now() < deadline {
                    op.run(i).await;
                    done += 1;
                    i += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.await.expect("task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Throughput windows of each op, interleaved as [`latencies`].
async fn throughputs(ops: &[Arc<dyn Op>], cfg: &Config) -> Vec<Rate> {
    for op in ops {
        throughput(op.clone(), cfg.tasks, cfg.window / 5).await;
    }
    let mut windows = vec![Vec::new(); ops.len()];
    for round in 0..cfg.rounds {
        for k in 0..ops.len() {
            let side = (round + k) % ops.len();
            windows[side].push(throughput(ops[side].clone(), cfg.tasks, cfg.window).await);
        }
    }
    windows
        .into_iter()
        .map(|windows| Rate {
            windows,
            latency: None,
        })
        .collect()
}

/// Per-op nanoseconds of `f`, timed in batches (an `Instant` per call would
/// cost as much as a MemoryStore hit).
struct Batches {
    per_op: Vec<u64>,
}

impl Batches {
    fn new() -> Self {
        Batches { per_op: Vec::new() }
    }
    async fn run<F: AsyncFnMut()>(&mut self, batches: usize, batch: usize, f: &mut F) {
        for _ in 0..batches {
            let started = Instant::now();
            for _ in 0..batch {
                f().await;
            }
            self.per_op
                .push((started.elapsed().as_nanos() / batch as u128) as u64);
        }
    }
    fn lat(self) -> Lat {
        lat(self.per_op)
    }
}

// ---------------------------------------------------------------------------
// HTTP: an in-process keep-alive HTTP/1.1 load generator

async fn http_connect(addr: SocketAddr) -> http1::SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

async fn http_get(
    sender: &mut http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (StatusCode, Bytes) {
    sender.ready().await.expect("connection ready");
    let request = hyper::Request::get(path)
        .header(header::HOST, "127.0.0.1")
        .body(Empty::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

/// Requests per second against `addr` over `conns` keep-alive connections
/// for `window`, each connection requesting `paths` in turn; and the
/// latency of the requests.
async fn http_window(
    addr: SocketAddr,
    paths: Arc<Vec<String>>,
    conns: usize,
    window: Duration,
) -> (f64, Vec<u64>) {
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        senders.push(http_connect(addr).await);
    }
    let started = Instant::now();
    let deadline = started + window;
    let handles: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(c, mut sender)| {
            let paths = paths.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut i = c * 7919;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let (status, body) = http_get(&mut sender, &paths[i % paths.len()]).await;
                    samples.push(t.elapsed().as_nanos() as u64);
                    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
                    black_box(body);
                    i += 1;
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for h in handles {
        samples.extend(h.await.expect("client task"));
    }
    let rate = samples.len() as f64 / started.elapsed().as_secs_f64();
    (rate, samples)
}

async fn http_compare(sides: [(SocketAddr, Arc<Vec<String>>); 2], cfg: &Config) -> [Rate; 2] {
    for (addr, paths) in &sides {
        http_window(*addr, paths.clone(), cfg.conns, cfg.window / 5).await;
    }
    let mut windows = [Vec::new(), Vec::new()];
    let mut samples = [Vec::new(), Vec::new()];
    for round in 0..cfg.rounds {
        for k in 0..2 {
            let side = (round + k) % 2;
            let (addr, paths) = &sides[side];
            let (rate, s) = http_window(*addr, paths.clone(), cfg.conns, cfg.window).await;
            windows[side].push(rate);
            samples[side].extend(s);
        }
    }
    let [w0, w1] = windows;
    let [s0, s1] = samples;
    [
        Rate {
            windows: w0,
            latency: Some(lat(s0)),
        },
        Rate {
            windows: w1,
            latency: Some(lat(s1)),
        },
    ]
}

// ---------------------------------------------------------------------------
// The baseline HTTP API: the same JSON, straight from PostgreSQL

const BASE_DETAIL_SQL: &str = "SELECT q.id, q.question_text, q.pub_date,
        (SELECT coalesce(array_agg(c.id ORDER BY c.id), '{}') FROM choices c WHERE c.question_id = q.id)
 FROM questions q WHERE q.id = $1 AND q.pub_date <= $2";

/// The page of published questions, newest first, with their choices' pks
/// and the total count, in one query.
const BASE_PAGE_SQL: &str = "WITH page AS (
     SELECT id, question_text, pub_date FROM questions WHERE pub_date <= $1
     ORDER BY pub_date DESC, id DESC LIMIT $2 OFFSET $3)
 SELECT (SELECT count(*) FROM questions WHERE pub_date <= $1), p.id, p.question_text, p.pub_date,
        (SELECT coalesce(array_agg(c.id ORDER BY c.id), '{}') FROM choices c WHERE c.question_id = p.id)
 FROM page p ORDER BY p.pub_date DESC, p.id DESC";

/// The total count, then a question's columns.
type PageRow = (i64, i64, String, DateTime<Utc>, Vec<i64>);

#[derive(serde::Deserialize)]
struct PageParams {
    limit: Option<u64>,
    offset: Option<u64>,
}

fn json_response(body: Vec<u8>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn base_detail(State(pool): State<PgPool>, Path(pk): Path<i64>) -> Response {
    let row: Option<QuestionRow> = match sqlx::query_as(BASE_DETAIL_SQL)
        .bind(pk)
        .bind(Utc::now())
        .fetch_optional(&pool)
        .await
    {
        Ok(row) => row,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    match row {
        Some(row) => json_response(question(row).to_json().expect("encode")),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn base_list(State(pool): State<PgPool>, Query(params): Query<PageParams>) -> Response {
    let limit = params.limit.unwrap_or(20).clamp(1, 100);
    let offset = params.offset.unwrap_or(0);
    let rows: Vec<PageRow> = match sqlx::query_as(BASE_PAGE_SQL)
        .bind(Utc::now())
        .bind(limit as i64)
        .bind(offset as i64)
        .fetch_all(&pool)
        .await
    {
        Ok(rows) => rows,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    // Past the last page there is no row to carry the count; the benchmark
    // never asks for one.
    let count = rows.first().map_or(0, |r| r.0 as u64);
    let mut body = Vec::with_capacity(96 + rows.len() * 256);
    body.extend_from_slice(format!("{{\"count\":{count},\"next\":").as_bytes());
    if offset + limit < count {
        body.extend_from_slice(
            format!("\"/questions?limit={limit}&offset={}\"", offset + limit).as_bytes(),
        );
    } else {
        body.extend_from_slice(b"null");
    }
    body.extend_from_slice(b",\"previous\":");
    match offset {
        0 => body.extend_from_slice(b"null"),
        o if o <= limit => {
            body.extend_from_slice(format!("\"/questions?limit={limit}\"").as_bytes())
        }
        o => body.extend_from_slice(
            format!("\"/questions?limit={limit}&offset={}\"", o - limit).as_bytes(),
        ),
    }
    body.extend_from_slice(b",\"results\":[");
    for (i, (_, id, question_text, pub_date, choices)) in rows.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let q = question((id, question_text, pub_date, choices));
        q.encode(&mut body).expect("encode");
    }
    body.extend_from_slice(b"]}");
    json_response(body)
}

fn base_router(pool: PgPool) -> Router {
    Router::new()
        .route("/questions", get(base_list))
        .route("/questions/{pk}", get(base_detail))
        .with_state(pool)
}

async fn serve(router: Router) -> SocketAddr {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local addr");
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

// ---------------------------------------------------------------------------
// A store that counts its round trips, for the write rows

#[derive(Clone)]
struct Counted<S> {
    inner: S,
    calls: Arc<AtomicU64>,
}

impl<S> Counted<S> {
    fn tick(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

impl<S: Store> Store for Counted<S> {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        self.tick();
        self.inner.get(key)
    }
    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        self.tick();
        self.inner.get_many(keys)
    }
    fn set_if_absent_or<'a>(
        &'a self,
        keys: &'a [String],
        value: &'a [u8],
        replaceable: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        self.tick();
        self.inner.set_if_absent_or(keys, value, replaceable, ttl)
    }
    fn compare_and_set<'a>(&'a self, ops: &'a [CompareAndSet]) -> StoreFuture<'a, Vec<bool>> {
        self.tick();
        self.inner.compare_and_set(ops)
    }
    fn swap_many<'a>(
        &'a self,
        keys: &'a [String],
        value: &'a [u8],
        ttl: Duration,
    ) -> StoreFuture<'a, Vec<Option<Bytes>>> {
        self.tick();
        self.inner.swap_many(keys, value, ttl)
    }
    fn delete_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, ()> {
        self.tick();
        self.inner.delete_many(keys)
    }
}

// ---------------------------------------------------------------------------
// The table

#[derive(Debug, Clone)]
struct Row {
    /// Stable id, for the spread across runs.
    key: &'static str,
    what: String,
    ours: String,
    base: String,
    /// The figure the target is about, e.g. "ours/base = 1.04".
    ratio: String,
    /// Its value, for the spread.
    metric: Option<f64>,
    target: String,
    met: Option<bool>,
}

fn ratio_row(
    key: &'static str,
    what: impl Into<String>,
    ours: String,
    base: String,
    (label, value): (&str, f64),
    target: (&str, f64),
) -> Row {
    let (op, bound) = target;
    let met = match op {
        "<=" => value <= bound,
        _ => value >= bound,
    };
    Row {
        key,
        what: what.into(),
        ours,
        base,
        ratio: format!("{label} = {value:.2}"),
        metric: Some(value),
        target: format!("{label} {} {bound}", if op == "<=" { "≤" } else { "≥" }),
        met: Some(met),
    }
}

fn print_table(rows: &[Row]) {
    println!("| row | ours | baseline | ratio | target | met? |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.what, r.ours, r.base, r.ratio, r.target, met
        );
    }
}

// ---------------------------------------------------------------------------
// Setup

struct Env {
    cfg: Config,
    redis_url: String,
    redis: RedisServer,
    /// The polls database handle: the cache's loaders, the polls API.
    db: Db,
    /// The baselines' pool (and ours' pk queries).
    pool: PgPool,
    /// A RedisStore handle sharing nothing with the caches, for clearing keys.
    store: RedisStore,
    /// The cache over Redis (loaders: `db`).
    cache: Cache,
    /// The id of the 500-byte question.
    big: i64,
    json_size: f64,
}

/// Drops benchmark schemas left by runs that died (their process is gone).
async fn drop_stale_schemas(pool: &PgPool) -> Result<(), sqlx::Error> {
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'bench\\_compare\\_%'",
    )
    .fetch_all(pool)
    .await?;
    for schema in schemas {
        let pid = schema.rsplit('_').next().unwrap_or("");
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE"
            )))
            .execute(pool)
            .await?;
            println!("dropped stale schema {schema}");
        }
    }
    Ok(())
}

async fn seed(pool: &PgPool, n: i64) -> Result<(), sqlx::Error> {
    let users = (n / 4).max(50);
    let script = format!(
        "
INSERT INTO users (username) SELECT 'user_' || lpad(g::text, 6, '0') FROM generate_series(1, {users}) g;
INSERT INTO questions (question_text, pub_date)
  SELECT 'Question ' || g || ': ' || repeat('which of these do you prefer? ', 4),
         date_trunc('second', now()) - make_interval(mins => g)
  FROM generate_series(1, {n}) g ORDER BY g;
INSERT INTO choices (question_id, choice_text)
  SELECT q, 'Choice ' || c || ' of question ' || q
  FROM generate_series(1, {n}) q CROSS JOIN generate_series(1, 4) c ORDER BY q, c;
INSERT INTO votes (user_id, choice_id)
  SELECT DISTINCT 1 + ((c * 7 + k * 131) % {users}), c
  FROM generate_series(1, {choices}) c CROSS JOIN generate_series(1, 3) k;
",
        choices = 4 * n
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(script))
        .execute(pool)
        .await?;
    // As autovacuum would leave the tables: statistics and a visibility map
    // (index-only scans). VACUUM cannot run in the script's transaction.
    sqlx::raw_sql("VACUUM ANALYZE users, questions, choices, votes")
        .execute(pool)
        .await?;
    Ok(())
}

/// Adds a question whose representation is exactly `size` bytes; returns its
/// id.
async fn add_sized_question(pool: &PgPool, db: &Db, size: usize) -> Result<i64, String> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO questions (question_text, pub_date)
         VALUES (repeat('x', 400), date_trunc('second', now()) - interval '30 days') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| e.to_string())?;
    sqlx::query(
        "INSERT INTO choices (question_id, choice_text) SELECT $1, 'Choice ' || c FROM generate_series(1, 4) c",
    )
    .bind(id)
    .execute(pool)
    .await
    .map_err(|e| e.to_string())?;
    let load = async |db: &Db| -> Result<usize, String> {
        let rows = Loader::<Question>::load(db, &[id])
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows[0].to_json().map_err(|e| e.to_string())?.len())
    };
    let len = load(db).await?;
    let text = 400 + size as i64 - len as i64;
    sqlx::query("UPDATE questions SET question_text = repeat('x', $2::int) WHERE id = $1")
        .bind(id)
        .bind(text as i32)
        .execute(pool)
        .await
        .map_err(|e| e.to_string())?;
    let len = load(db).await?;
    if len != size {
        return Err(format!("the sized question is {len} bytes, not {size}"));
    }
    Ok(id)
}

async fn setup(cfg: Config, database_url: &str) -> Result<Env, String> {
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let version: String = {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut redis.connection())
            .map_err(|e| e.to_string())?;
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_owned()
    };
    println!(
        "started: redis-server {version} on 127.0.0.1:{} (its own, stopped at exit)",
        redis.port()
    );

    let schema = format!("bench_compare_{}", std::process::id());
    let options: PgConnectOptions = database_url
        .parse()
        .map_err(|e| format!("DATABASE_URL: {e}"))?;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await
        .map_err(|e| {
            format!(
                "cannot connect to PostgreSQL at {}: {e}",
                redact(database_url)
            )
        })?;
    let pg_version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&admin)
        .await
        .map_err(|e| e.to_string())?;
    drop_stale_schemas(&admin)
        .await
        .map_err(|e| e.to_string())?;
    admin.close().await;
    println!(
        "using: PostgreSQL {pg_version} at {}, schema {schema} (dropped at exit)",
        redact(database_url)
    );

    let db = Db::postgres(database_url, &schema)
        .await
        .map_err(|e| e.to_string())?;
    db.migrate().await.map_err(|e| e.to_string())?;
    let pool = PgPoolOptions::new()
        .max_connections(cfg.pool)
        .min_connections(cfg.pool)
        .connect_with(options.options([("search_path", schema.as_str())]))
        .await
        .map_err(|e| e.to_string())?;
    seed(&pool, cfg.questions)
        .await
        .map_err(|e| format!("seeding: {e}"))?;
    let big = add_sized_question(&pool, &db, 500).await?;

    let store = RedisStore::connect(&redis_url)
        .await
        .map_err(|e| e.to_string())?;
    let cache = Cache::builder()
        .store(
            RedisStore::connect(&redis_url)
                .await
                .map_err(|e| e.to_string())?,
        )
        .loader::<User>(db.clone())
        .loader::<Question>(db.clone())
        .loader::<Choice>(db.clone())
        .build()
        .map_err(|e| e.to_string())?;
    // The hot set, cached.
    let hot: Vec<i64> = (1..=cfg.hot).collect();
    let mut bytes = 0usize;
    for chunk in hot.chunks(500) {
        let rows = cache
            .get_many_json::<Question>(chunk)
            .await
            .map_err(|e| e.to_string())?;
        bytes += rows.iter().map(Bytes::len).sum::<usize>();
    }
    let json_size = bytes as f64 / hot.len() as f64;
    println!(
        "data: {} questions (4 choices each, ~3 votes per choice), {} users; hot set: questions 1..={} cached, {json_size:.0} B of JSON each on average; question {big} is 500 B",
        cfg.questions,
        (cfg.questions / 4).max(50),
        cfg.hot
    );
    Ok(Env {
        cfg,
        redis_url,
        redis,
        db,
        pool,
        store,
        cache,
        big,
        json_size,
    })
}

impl Env {
    fn hot(&self) -> Vec<i64> {
        (1..=self.cfg.hot).collect()
    }

    fn keys(&self, pks: &[i64]) -> Vec<String> {
        pks.iter()
            .map(|pk| self.cache.key_of::<Question>(pk).expect("registered"))
            .collect()
    }

    async fn teardown(self) {
        if let Err(e) = self.db.drop_schema().await {
            eprintln!("could not drop the schema: {e}");
        }
        self.db.close().await;
        self.pool.close().await;
        drop(self.redis);
    }
}

// ---------------------------------------------------------------------------
// The rows

async fn detail_rows(env: &Env, rows: &mut Vec<Row>) {
    let cfg = &env.cfg;
    let hot = env.hot();
    let ours = Arc::new(CachedDetail {
        cache: env.cache.clone(),
        pks: hot.clone(),
    });
    let conn = redis::Client::open(env.redis_url.as_str())
        .expect("url")
        .get_connection_manager()
        .await
        .expect("ConnectionManager");
    let raw = Arc::new(RawGet {
        conn,
        keys: env.keys(&hot),
    });
    let pg = Arc::new(PgDetail {
        pool: env.pool.clone(),
        pks: hot.clone(),
    });
    let before = (env.cache.stats(), env.db.queries());
    let lats = latencies(&[&*ours, &*raw, &*pg], cfg.rounds, cfg.block).await;
    let ops: [Arc<dyn Op>; 3] = [ours.clone(), raw.clone(), pg.clone()];
    let rates = throughputs(&ops, cfg).await;
    let after = (env.cache.stats(), env.db.queries());
    let misses = after.0.misses - before.0.misses;
    let queries = after.1 - before.1;
    println!(
        "detail: {} samples per side; ours made {misses} misses and {queries} database queries while measured",
        lats[0].n
    );
    let show = |r: &Rate| {
        r.windows
            .iter()
            .map(|w| format!("{:.0}", w / 1000.0))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "detail: throughput windows, k/s in round order: ours {}; raw GET {}; PostgreSQL {}",
        show(&rates[0]),
        show(&rates[1]),
        show(&rates[2])
    );
    let (o, r, p) = (lats[0], lats[1], lats[2]);
    rows.push(ratio_row(
        "redis_p50",
        "Detail hit via RedisStore (`get_json`) vs raw `GET` on a ConnectionManager: latency",
        fmt_lat(o),
        fmt_lat(r),
        ("ours/base p50", o.p50 / r.p50),
        ("<=", 1.10),
    ));
    rows.push(ratio_row(
        "redis_tput",
        format!(
            "… throughput, {} tasks (hit rows: {misses} misses, {queries} DB queries)",
            cfg.tasks
        ),
        rates[0].show(),
        rates[1].show(),
        ("ours/base", rates[0].median() / rates[1].median()),
        (">=", 0.9),
    ));
    rows.push(ratio_row(
        "pg_p50",
        "Detail hit via RedisStore vs PostgreSQL (one query, `array_agg` of related pks, sqlx): latency",
        fmt_lat(o),
        fmt_lat(p),
        ("base/ours p50", p.p50 / o.p50),
        (">=", 3.0),
    ));
    rows.push(ratio_row(
        "pg_tput",
        format!("… throughput, {} tasks", cfg.tasks),
        rates[0].show(),
        rates[2].show(),
        ("ours/base", rates[0].median() / rates[2].median()),
        (">=", 4.0),
    ));
}

/// Where the time of the Redis rows goes: each layer alone, interleaved.
/// Printed, not part of the table (`--only breakdown`).
async fn breakdown(env: &Env) {
    let cfg = &env.cfg;
    let hot = env.hot();
    let keys = env.keys(&hot);
    let conn = redis::Client::open(env.redis_url.as_str())
        .expect("url")
        .get_connection_manager()
        .await
        .expect("ConnectionManager");
    let raw = Arc::new(RawGet {
        conn: conn.clone(),
        keys: keys.clone(),
    });
    let raw_timeout = Arc::new(RawGetTimeout(RawGet {
        conn: conn.clone(),
        keys: keys.clone(),
    }));
    let store = Arc::new(StoreGet {
        store: env.store.clone(),
        keys: keys.clone(),
    });
    let ours = Arc::new(CachedDetail {
        cache: env.cache.clone(),
        pks: hot.clone(),
    });
    let names = [
        "raw GET",
        "raw GET in tokio::time::timeout",
        "RedisStore::get",
        "Cache::get_json",
    ];
    let lats = latencies(
        &[&*raw, &*raw_timeout, &*store, &*ours],
        cfg.rounds,
        cfg.block,
    )
    .await;
    let ops: [Arc<dyn Op>; 4] = [raw, raw_timeout, store, ours];
    let rates = throughputs(&ops, cfg).await;
    println!(
        "\n## Breakdown: one key\n\n| layer | latency | throughput, {} tasks |\n|---|---|---|",
        cfg.tasks
    );
    for ((name, l), r) in names.iter().zip(lats).zip(rates) {
        println!("| {name} | {} | {} |", fmt_lat(l), r.show());
    }

    let pages: Vec<Vec<i64>> = hot.chunks(100).map(<[i64]>::to_vec).collect();
    let page_keys: Vec<Vec<String>> = pages.iter().map(|p| env.keys(p)).collect();
    let many = |how| {
        Arc::new(Many {
            how,
            pages: pages.clone(),
            keys: page_keys.clone(),
        })
    };
    let ops: [Arc<Many>; 6] = [
        many(ManyHow::PkQuery(env.pool.clone())),
        many(ManyHow::RawMget(conn)),
        many(ManyHow::Store(env.store.clone())),
        many(ManyHow::Cache(env.cache.clone())),
        many(ManyHow::PollsPage(env.db.clone())),
        many(ManyHow::BasePage(env.pool.clone())),
    ];
    let names = [
        "pk query (100 ids)",
        "raw MGET of 100",
        "RedisStore::get_many(100)",
        "Cache::get_many_json(100)",
        "HTTP list, polls API's query (20 pks + count)",
        "HTTP list, baseline's query (20 rows + related pks + count)",
    ];
    let refs: Vec<&dyn Op> = ops.iter().map(|o| &**o as &dyn Op).collect();
    let lats = latencies(&refs, cfg.rounds, (cfg.block / 5).max(20)).await;
    let dyns: Vec<Arc<dyn Op>> = ops.iter().map(|o| o.clone() as Arc<dyn Op>).collect();
    let rates = throughputs(&dyns, cfg).await;
    println!(
        "\n## Breakdown: lists (the page windows cycle through the hot set)\n\n| layer | latency | throughput, {} tasks |\n|---|---|---|",
        cfg.tasks
    );
    for ((name, l), r) in names.iter().zip(lats).zip(rates) {
        println!("| {name} | {} | {} |", fmt_lat(l), r.show());
    }
}

async fn list_rows(env: &Env, rows: &mut Vec<Row>) {
    let cfg = &env.cfg;
    let offsets: Vec<i64> = (0..cfg.hot / 100).map(|i| i * 100).collect();
    let ours = Arc::new(CachedList {
        cache: env.cache.clone(),
        pool: env.pool.clone(),
        offsets: offsets.clone(),
    });
    let base = Arc::new(PgList {
        pool: env.pool.clone(),
        offsets,
    });
    let lats = latencies(&[&*ours, &*base], cfg.rounds, (cfg.block / 5).max(20)).await;
    let ops: [Arc<dyn Op>; 2] = [ours, base];
    let rates = throughputs(&ops, cfg).await;
    rows.push(ratio_row(
        "list_p50",
        "List of 100: 1 pk query + 1 multi-get (Redis) vs the 100 with related pks from PostgreSQL: latency",
        fmt_lat(lats[0]),
        fmt_lat(lats[1]),
        ("base/ours p50", lats[1].p50 / lats[0].p50),
        (">=", 3.0),
    ));
    rows.push(ratio_row(
        "list_tput",
        format!("… throughput, {} tasks", cfg.tasks),
        rates[0].show(),
        rates[1].show(),
        ("ours/base", rates[0].median() / rates[1].median()),
        (">=", 3.0),
    ));
}

async fn memory_store_rows(env: &Env, rows: &mut Vec<Row>) {
    let cfg = &env.cfg;
    let cache = Cache::builder()
        .store(MemoryStore::new())
        .loader::<User>(env.db.clone())
        .loader::<Question>(env.db.clone())
        .loader::<Choice>(env.db.clone())
        .build()
        .expect("cache");
    let pk = env.big;
    let bytes = cache
        .get_json::<Question>(&pk)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(bytes.len(), 500);
    let key = cache.key_of::<Question>(&pk).expect("registered");
    // The baseline: a map lookup and an Arc clone, under a key of the same
    // shape, among as many entries as the hot set.
    let mut map: HashMap<String, Arc<[u8]>> = HashMap::new();
    for other in 1..=cfg.hot {
        map.insert(
            cache.key_of::<Question>(&other).expect("registered"),
            Arc::from(vec![b'x'; 200]),
        );
    }
    map.insert(key.clone(), Arc::from(&bytes[..]));
    let loader_calls = cache.stats().loader_calls;

    let (batches, batch) = if cfg.quick { (20, 200) } else { (400, 1000) };
    let mut ours = Batches::new();
    let mut base = Batches::new();
    let mut get = async || {
        black_box(
            cache
                .get_json::<Question>(black_box(&pk))
                .await
                .expect("read"),
        );
    };
    let mut lookup = async || {
        black_box(map.get(black_box(key.as_str())).cloned());
    };
    for round in 0..cfg.rounds * 2 {
        if round % 2 == 0 {
            ours.run(batches, batch, &mut get).await;
            base.run(batches, batch, &mut lookup).await;
        } else {
            base.run(batches, batch, &mut lookup).await;
            ours.run(batches, batch, &mut get).await;
        }
    }
    let (o, b) = (ours.lat(), base.lat());
    assert_eq!(cache.stats().loader_calls, loader_calls, "hits only");
    rows.push(Row {
        key: "mem_get_json",
        what: "MemoryStore detail hit, bytes (`get_json`), 500-byte instance, per op (p99 of 1000-op batches)".into(),
        ours: format!("p50 {:.0} ns / p99 {:.0} ns", o.p50, o.p99),
        base: format!(
            "HashMap get + Arc clone: p50 {:.0} ns / p99 {:.0} ns",
            b.p50, b.p99
        ),
        ratio: format!("ours p50 = {:.0} ns ({:.0}x base)", o.p50, o.p50 / b.p50),
        metric: Some(o.p50),
        target: "ours p50 ≤ 1000 ns".into(),
        met: Some(o.p50 <= 1000.0),
    });

    // Decode, measured separately, and the typed hit that includes it.
    let mut decode = Batches::new();
    let mut typed = Batches::new();
    let mut decode_op = async || {
        black_box(Question::decode(black_box(&bytes)).expect("decode"));
    };
    let mut typed_op = async || {
        black_box(cache.get::<Question>(black_box(&pk)).await.expect("read"));
    };
    for _ in 0..cfg.rounds {
        decode.run(batches / 2, batch, &mut decode_op).await;
        typed.run(batches / 2, batch, &mut typed_op).await;
    }
    let (d, t) = (decode.lat(), typed.lat());
    rows.push(Row {
        key: "mem_decode",
        what: "… decoding the 500-byte representation to the struct (`Question::decode`); `get` = hit + decode".into(),
        ours: format!("decode p50 {:.0} ns; `get` p50 {:.0} ns", d.p50, t.p50),
        base: "—".into(),
        ratio: "—".into(),
        metric: Some(d.p50),
        target: "reported".into(),
        met: None,
    });
}

/// 100 cold misses: `get_many` of 100 absent keys vs the loader alone.
async fn cold_rows(env: &Env, rows: &mut Vec<Row>) {
    let cfg = &env.cfg;
    // Questions outside the hot set, 100 at a time.
    let windows: Vec<Vec<i64>> = (cfg.hot + 1..=cfg.questions)
        .collect::<Vec<_>>()
        .chunks(100)
        .filter(|c| c.len() == 100)
        .map(<[i64]>::to_vec)
        .collect();
    assert!(!windows.is_empty(), "the data set has no cold window");
    let memory = MemoryStore::new();
    let memory_cache = Cache::builder()
        .store(memory.clone())
        .loader::<User>(env.db.clone())
        .loader::<Question>(env.db.clone())
        .loader::<Choice>(env.db.clone())
        .build()
        .expect("cache");
    for (name, cache, store) in [
        ("RedisStore", &env.cache, &env.store as &dyn Store),
        ("MemoryStore", &memory_cache, &memory as &dyn Store),
    ] {
        let mut ours = Vec::new();
        let mut base = Vec::new();
        let mut extra_calls = 0;
        let iterations = cfg.iterations;
        env.redis.reset_stats();
        for it in 0..iterations + 4 {
            let pks = &windows[it % windows.len()];
            let keys = env.keys(pks);
            store.delete_many(&keys).await.expect("clear");
            let run_ours = async || {
                let calls = cache.stats().loader_calls;
                let started = Instant::now();
                let found = cache.get_many::<Question>(pks).await.expect("read");
                let elapsed = started.elapsed().as_nanos() as u64;
                assert_eq!(found.len(), 100);
                (elapsed, cache.stats().loader_calls - calls)
            };
            let run_base = async || {
                let started = Instant::now();
                let found = Loader::<Question>::load(&env.db, pks).await.expect("load");
                assert_eq!(found.len(), 100);
                started.elapsed().as_nanos() as u64
            };
            let ((o, calls), b) = if it % 2 == 0 {
                let o = run_ours().await;
                (o, run_base().await)
            } else {
                let b = run_base().await;
                (run_ours().await, b)
            };
            // The first iterations warm up.
            if it >= 4 {
                ours.push(o);
                base.push(b);
                if calls != 1 {
                    extra_calls += 1;
                }
            }
            store.delete_many(&keys).await.expect("clear");
        }
        if name == "RedisStore" {
            redis_server_time(env, iterations + 4);
        }
        let (o, b) = (lat(ours), lat(base));
        let key = if name == "RedisStore" {
            "cold_redis"
        } else {
            "cold_memory"
        };
        let mut row = ratio_row(
            key,
            format!(
                "100 cold misses, {name} (`get_many`): loader calls per read = {}",
                if extra_calls == 0 {
                    "1 in every read".to_owned()
                } else {
                    format!("≠ 1 in {extra_calls} of {iterations} reads")
                }
            ),
            fmt_lat(o),
            format!("the loader alone: {}", fmt_lat(b)),
            ("ours/base p50", o.p50 / b.p50),
            ("<=", 1.3),
        );
        row.met = row.met.map(|m| m && extra_calls == 0);
        rows.push(row);
    }
}

/// Where a cold read's time goes in Redis: the server's own time per
/// command (`INFO commandstats`), per read of 100.
fn redis_server_time(env: &Env, reads: usize) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut env.redis.connection())
        .expect("INFO");
    let mut parts = Vec::new();
    for line in info.lines() {
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        if redis_server::is_bookkeeping(name) {
            continue;
        }
        let field = |f: &str| {
            fields
                .split(',')
                .find_map(|kv| kv.strip_prefix(f))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let (calls, usec) = (field("calls="), field("usec="));
        parts.push(format!(
            "{name}: {:.1} calls, {:.0} us",
            calls / reads as f64,
            usec / reads as f64
        ));
    }
    println!(
        "cold, RedisStore: Redis server time per read of 100 (a script's GET/SET counted in get/set too; clears included): {}",
        parts.join("; ")
    );
}

/// A write with a cascade: a Choice moved between two Questions, and a vote
/// (the Choice and the User).
async fn write_rows(env: &Env, rows: &mut Vec<Row>) {
    let cfg = &env.cfg;
    let calls = Arc::new(AtomicU64::new(0));
    let store = Counted {
        inner: RedisStore::connect(&env.redis_url).await.expect("redis"),
        calls: calls.clone(),
    };
    let cache = Cache::builder()
        .store(store)
        .loader::<User>(env.db.clone())
        .loader::<Question>(env.db.clone())
        .loader::<Choice>(env.db.clone())
        .build()
        .expect("cache");
    // Questions 10 and 11; the first choice of question 10, with its voters.
    let (a, b) = (10, 11);
    let q = cache.get::<Question>(&a).await.expect("read").expect("row");
    let choice_id = q.choices[0];
    let warm = async |question_ids: [i64; 2]| {
        let choice = cache
            .get::<Choice>(&choice_id)
            .await
            .expect("read")
            .expect("row");
        cache
            .get_many::<Question>(&question_ids)
            .await
            .expect("read");
        cache.get_many::<User>(&choice.voters).await.expect("read");
        choice
    };
    let voters = warm([a, b]).await.voters.len();

    struct Sample {
        ns: u64,
        round_trips: u64,
        loader_calls: u64,
        db_queries: u64,
        invalidations: u64,
    }
    async fn measure(
        cache: &Cache,
        db: &Db,
        calls: &AtomicU64,
        write: impl Future<Output = Result<(), cached_instances::Error>>,
    ) -> Sample {
        let (s0, c0, q0) = (cache.stats(), calls.load(Ordering::Relaxed), db.queries());
        let started = Instant::now();
        write.await.expect("write");
        let ns = started.elapsed().as_nanos() as u64;
        let s1 = cache.stats();
        Sample {
            ns,
            round_trips: calls.load(Ordering::Relaxed) - c0,
            loader_calls: s1.loader_calls - s0.loader_calls,
            db_queries: db.queries() - q0,
            invalidations: s1.invalidations - s0.invalidations,
        }
    }
    let summarize = |samples: Vec<Sample>| {
        let first = (
            samples[0].round_trips,
            samples[0].loader_calls,
            samples[0].db_queries,
            samples[0].invalidations,
        );
        let same = samples
            .iter()
            .all(|s| (s.round_trips, s.loader_calls, s.db_queries, s.invalidations) == first);
        let l = lat(samples.iter().map(|s| s.ns).collect());
        (l, first, same)
    };

    let mut moves = Vec::new();
    let mut db_write = Vec::new();
    for it in 0..cfg.iterations + 2 {
        let (from, to) = if it % 2 == 0 { (a, b) } else { (b, a) };
        let started = Instant::now();
        let (previous, new) = env
            .db
            .update_choice(
                choice_id,
                ChoiceChanges {
                    question_id: Some(to),
                    choice_text: None,
                },
            )
            .await
            .expect("update");
        let db_ns = started.elapsed().as_nanos() as u64;
        assert_eq!(previous.question_id, from);
        let s = measure(&cache, &env.db, &calls, cache.saved_from(&previous, &new)).await;
        // Every entry involved is cached again before the next write.
        warm([a, b]).await;
        if it >= 2 {
            moves.push(s);
            db_write.push(db_ns);
        }
    }
    let (l, (rt, lc, dq, inv), same) = summarize(moves);
    let db_l = lat(db_write);
    rows.push(Row {
        key: "write_move",
        what: format!(
            "Write with cascade: a Choice ({voters} voters) moved to another Question, `saved_from` after the commit"
        ),
        ours: format!(
            "{}; {rt} round trips, {lc} loader calls ({dq} DB queries), {inv} instances invalidated{}",
            fmt_lat(l),
            if same { "" } else { " (varied)" }
        ),
        base: format!("the DB transaction itself: p50 {}", us(db_l.p50)),
        ratio: "—".into(),
        metric: Some(l.p50 / 1000.0),
        target: "reported".into(),
        met: None,
    });

    // A vote: the Choice's voters and the User's votes change. A user who
    // has not voted for it, so every other iteration adds the vote.
    let voters_now = warm([a, b]).await.voters;
    let user = (1..=(cfg.questions / 4).max(50))
        .rev()
        .find(|u| !voters_now.contains(u))
        .expect("a user who did not vote");
    let mut votes = Vec::new();
    for it in 0..cfg.iterations + 2 {
        let voted = it % 2 == 0;
        let (previous, new) = env.db.set_vote(choice_id, user, voted).await.expect("vote");
        let s = measure(&cache, &env.db, &calls, cache.saved_from(&previous, &new)).await;
        warm([a, b]).await;
        cache.get::<User>(&user).await.expect("read");
        if it >= 2 {
            votes.push(s);
        }
    }
    let (l, (rt, lc, dq, inv), same) = summarize(votes);
    rows.push(Row {
        key: "write_vote",
        what: "Write with cascade: a vote cast or withdrawn (the Choice and the User)".into(),
        ours: format!(
            "{}; {rt} round trips, {lc} loader calls ({dq} DB queries), {inv} instances invalidated{}",
            fmt_lat(l),
            if same { "" } else { " (varied)" }
        ),
        base: "—".into(),
        ratio: "—".into(),
        metric: Some(l.p50 / 1000.0),
        target: "reported".into(),
        met: None,
    });
}

async fn http_rows(env: &Env, rows: &mut Vec<Row>) {
    let cfg = &env.cfg;
    let app = App {
        db: env.db.clone(),
        cache: env.cache.clone(),
    };
    let ours = serve(routes::router(app)).await;
    let base = serve(base_router(env.pool.clone())).await;

    // Same bodies on both sides.
    let mut o = http_connect(ours).await;
    let mut b = http_connect(base).await;
    for path in ["/questions/5", "/questions"] {
        let (so, bo) = http_get(&mut o, path).await;
        let (sb, bb) = http_get(&mut b, path).await;
        assert_eq!((so, sb), (StatusCode::OK, StatusCode::OK), "{path}");
        assert_eq!(
            bo,
            bb,
            "{path}: the baseline serves different JSON:\n{}\n{}",
            String::from_utf8_lossy(&bo),
            String::from_utf8_lossy(&bb)
        );
    }
    drop((o, b));

    let details: Arc<Vec<String>> = Arc::new(
        env.hot()
            .iter()
            .map(|pk| format!("/questions/{pk}"))
            .collect(),
    );
    let before = env.db.queries();
    let [od, bd] = http_compare([(ours, details.clone()), (base, details)], cfg).await;
    let detail_queries = env.db.queries() - before;
    let lists = Arc::new(vec!["/questions".to_owned()]);
    let [ol, bl] = http_compare([(ours, lists.clone()), (base, lists)], cfg).await;
    rows.push(ratio_row(
        "http_detail",
        format!(
            "HTTP `GET /questions/{{pk}}`, polls API (PostgreSQL + Redis) vs the same JSON from PostgreSQL, {} connections (ours: {detail_queries} DB queries)",
            cfg.conns
        ),
        od.show(),
        bd.show(),
        ("ours/base req/s", od.median() / bd.median()),
        (">=", 3.0),
    ));
    rows.push(ratio_row(
        "http_list",
        format!(
            "HTTP `GET /questions` (a page of 20 + count), {} connections",
            cfg.conns
        ),
        ol.show(),
        bl.show(),
        ("ours/base req/s", ol.median() / bl.median()),
        (">=", 3.0),
    ));
}

async fn memory_rows(env: &Env, rows: &mut Vec<Row>) {
    let hot = env.hot();
    let json = env.json_size;
    // Redis: MEMORY USAGE of each cached question.
    let mut conn = env.redis.connection();
    let mut total = 0u64;
    for key in env.keys(&hot) {
        let usage: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .query(&mut conn)
            .expect("MEMORY USAGE");
        total += usage.expect("the key is cached");
    }
    let redis_per = total as f64 / hot.len() as f64;
    let key_len = env.keys(&hot[..1])[0].len();

    // MemoryStore: the live heap the store holds after caching the hot set.
    let store = MemoryStore::new();
    let cache = Cache::builder()
        .store(store.clone())
        .loader::<User>(env.db.clone())
        .loader::<Question>(env.db.clone())
        .loader::<Choice>(env.db.clone())
        .build()
        .expect("cache");
    // Warm the loaders' connections first, so their buffers are not counted.
    for chunk in hot.chunks(500) {
        Loader::<Question>::load(&env.db, chunk)
            .await
            .expect("load");
    }
    let before = LIVE_HEAP.load(Ordering::Relaxed);
    TRACK_HEAP.store(true, Ordering::Relaxed);
    for chunk in hot.chunks(500) {
        cache.get_many_json::<Question>(chunk).await.expect("read");
    }
    // Reads let the map run its pending maintenance.
    for _ in 0..3 {
        for chunk in hot.chunks(500) {
            cache.get_many_json::<Question>(chunk).await.expect("read");
        }
    }
    TRACK_HEAP.store(false, Ordering::Relaxed);
    let held = LIVE_HEAP.load(Ordering::Relaxed) - before;
    let memory_per = held as f64 / hot.len() as f64;
    rows.push(Row {
        key: "mem_bytes_memory",
        what: format!(
            "Memory per cached instance, MemoryStore (live heap / instances; key {key_len} B)"
        ),
        ours: format!("{memory_per:.0} B"),
        base: format!("JSON {json:.0} B"),
        ratio: format!("ours/JSON = {:.2}", memory_per / json),
        metric: Some(memory_per / json),
        target: "reported".into(),
        met: None,
    });
    rows.push(Row {
        key: "mem_bytes_redis",
        what: "Memory per cached instance, Redis (`MEMORY USAGE`, key included)".into(),
        ours: format!("{redis_per:.0} B"),
        base: format!("JSON {json:.0} B"),
        ratio: format!("ours/JSON = {:.2}", redis_per / json),
        metric: Some(redis_per / json),
        target: "reported".into(),
        met: None,
    });
}

// ---------------------------------------------------------------------------
// Main

async fn run_once(env: &Env) -> Vec<Row> {
    let mut rows = Vec::new();
    let cfg = &env.cfg;
    if cfg
        .only
        .as_ref()
        .is_some_and(|o| o.iter().any(|g| g == "breakdown"))
    {
        breakdown(env).await;
    }
    if cfg.wants("detail") {
        detail_rows(env, &mut rows).await;
    }
    if cfg.wants("list") {
        list_rows(env, &mut rows).await;
    }
    if cfg.wants("memory-store") {
        memory_store_rows(env, &mut rows).await;
    }
    if cfg.wants("cold") {
        cold_rows(env, &mut rows).await;
    }
    if cfg.wants("write") {
        write_rows(env, &mut rows).await;
    }
    if cfg.wants("http") {
        http_rows(env, &mut rows).await;
    }
    if cfg.wants("memory") {
        memory_rows(env, &mut rows).await;
    }
    rows
}

fn print_spread(runs: &[Vec<Row>]) {
    println!(
        "\n## Spread over {} runs (min / median / max of each row's figure)\n",
        runs.len()
    );
    println!("| row | figure | min | median | max | met |");
    println!("|---|---|---|---|---|---|");
    let mut order = Vec::new();
    let mut by_key: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for run in runs {
        for row in run {
            if !by_key.contains_key(row.key) {
                order.push(row.key);
            }
            by_key.entry(row.key).or_default().push(row);
        }
    }
    for key in order {
        let rows = &by_key[key];
        let values: Vec<f64> = rows.iter().filter_map(|r| r.metric).collect();
        if values.is_empty() {
            continue;
        }
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let label = rows[0].ratio.split(" = ").next().unwrap_or("").to_owned();
        let label = match key {
            "write_move" | "write_vote" => "p50 us".to_owned(),
            "mem_decode" => "decode p50 ns".to_owned(),
            "mem_get_json" => "ours p50 ns".to_owned(),
            _ => label,
        };
        let met = rows.iter().filter(|r| r.met == Some(true)).count();
        let met = if rows.iter().all(|r| r.met.is_none()) {
            "—".to_owned()
        } else {
            format!("{met}/{}", rows.len())
        };
        println!(
            "| {key} | {label} | {min:.2} | {:.2} | {max:.2} | {met} |",
            median(&values)
        );
    }
}

async fn wait_for_load(threshold: f64, max: Duration) {
    let deadline = Instant::now() + max;
    loop {
        let load = load1();
        if load < threshold {
            println!("load average {} (below {threshold})", loadavg());
            return;
        }
        if Instant::now() >= deadline {
            println!(
                "load average still {} after 40 min: measuring anyway",
                loadavg()
            );
            return;
        }
        println!("load average {} — waiting for < {threshold}", loadavg());
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

async fn main_async(cfg: Config) -> Result<(), String> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    println!(
        "machine: {} cores, {}, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        kernel()
    );
    let env = setup(cfg.clone(), &url).await?;
    println!(
        "method: sides interleaved (rotating order) in {} rounds; latency: {} sequential samples per side and round; throughput: {} tasks (HTTP: {} connections), {:?} windows, median window reported; baselines' pool: {} PostgreSQL connections (the polls Db: 4)",
        cfg.rounds, cfg.block, cfg.tasks, cfg.conns, cfg.window, cfg.pool
    );
    let mut runs = Vec::new();
    for run in 0..cfg.runs {
        if let Some(threshold) = cfg.wait_load {
            wait_for_load(threshold, cfg.wait_max).await;
        }
        let load_before = loadavg();
        let started = Instant::now();
        let rows = run_once(&env).await;
        println!(
            "\n## Run {} of {} ({:.0} s; load average before: {load_before}, after: {})\n",
            run + 1,
            cfg.runs,
            started.elapsed().as_secs_f64(),
            loadavg()
        );
        print_table(&rows);
        runs.push(rows);
    }
    if runs.len() > 1 {
        print_spread(&runs);
    }
    env.teardown().await;
    Ok(())
}

fn main() -> ExitCode {
    let cfg = match Config::parse(std::env::args().skip(1)) {
        Ok(Some(cfg)) => cfg,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if cfg.quick {
        println!("--quick: tiny durations and data set; a smoke run, not a measurement");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(main_async(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
