//! The near cache side by side with what it replaces, in one run (BENCHMARKS.md):
//! a detail hit (`Cache::get_json`) through a near-cached `RedisStore`,
//! against a raw Redis `GET` of the same bytes, against `moka` in front of a
//! plain `GET` with no invalidation (what a user would otherwise pick), and
//! against the same cache without the near tier.
//!
//! ```sh
//! cargo bench --bench near                  # one run
//! cargo bench --bench near -- --runs 3      # three runs and the spread
//! cargo bench --bench near -- --quick       # smoke run
//! ```
//!
//! It starts its own `redis-server` on a free loopback port. Latencies are
//! p50/p99 of sequential reads, the sides interleaved in blocks (rotating
//! order) so drift on a shared machine hits all of them; throughput is reads
//! completed by 16 concurrent tokio tasks (2 worker threads) in fixed
//! windows, the sides alternated, median of the windows.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cached_instances::{Cache, NearCache, RedisStore};
use cached_instances_testkit::cli::BenchFlag;
use cached_instances_testkit::memdb::MemDb;
use cached_instances_testkit::redis_server::RedisServer;
use clap::Parser;
use polls::{Choice, Question, User};
use redis::aio::ConnectionManager;

/// Users cached and read (round robin).
const KEYS: i64 = 1_000;
const TASKS: usize = 16;

type BoxFut<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// One side of a comparison: reads the `i`-th key.
trait Side: Send + Sync + 'static {
    fn read(&self, i: usize) -> BoxFut<'_>;
}

fn pk(i: usize) -> i64 {
    (i as i64 % KEYS) + 1
}

/// Ours: a detail hit through the cache (near tier or not).
struct CacheHit(Cache);

impl Side for CacheHit {
    fn read(&self, i: usize) -> BoxFut<'_> {
        Box::pin(async move {
            let bytes = self.0.get_json::<User>(&pk(i)).await.expect("read");
            std::hint::black_box(bytes.expect("cached"));
        })
    }
}

/// Baseline: a raw `GET` of the same key on a `ConnectionManager`.
struct RawGet {
    redis: ConnectionManager,
    keys: Arc<Vec<String>>,
}

impl Side for RawGet {
    fn read(&self, i: usize) -> BoxFut<'_> {
        Box::pin(async move {
            let key = &self.keys[i % self.keys.len()];
            let bytes: Option<Bytes> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut self.redis.clone())
                .await
                .expect("GET");
            std::hint::black_box(bytes.expect("cached"));
        })
    }
}

/// What a user would pick instead: `moka` in front of a plain `GET`, with
/// no invalidation at all (stale until its TTL).
struct MokaGet {
    raw: RawGet,
    moka: moka::sync::Cache<String, Bytes>,
}

impl Side for MokaGet {
    fn read(&self, i: usize) -> BoxFut<'_> {
        Box::pin(async move {
            let key = &self.raw.keys[i % self.raw.keys.len()];
            if let Some(bytes) = self.moka.get(key) {
                std::hint::black_box(bytes);
                return;
            }
            let bytes: Option<Bytes> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut self.raw.redis.clone())
                .await
                .expect("GET");
            let bytes = bytes.expect("cached");
            self.moka.insert(key.clone(), bytes.clone());
            std::hint::black_box(bytes);
        })
    }
}

struct Lat {
    p50: f64,
    p99: f64,
}

fn percentiles(mut ns: Vec<u64>) -> Lat {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q).round() as usize] as f64 / 1_000.0;
    Lat {
        p50: at(0.5),
        p99: at(0.99),
    }
}

/// Sequential latencies, `rounds` blocks of `block` reads per side.
async fn latencies(sides: &[Arc<dyn Side>], rounds: usize, block: usize) -> Vec<Lat> {
    let mut samples: Vec<Vec<u64>> = sides.iter().map(|_| Vec::new()).collect();
    let mut next = vec![0usize; sides.len()];
    for side in sides {
        for i in 0..KEYS as usize {
            side.read(i).await;
        }
    }
    for round in 0..rounds {
        for k in 0..sides.len() {
            let s = (round + k) % sides.len();
            for _ in 0..block {
                let started = Instant::now();
                sides[s].read(next[s]).await;
                samples[s].push(started.elapsed().as_nanos() as u64);
                next[s] += 1;
            }
        }
    }
    samples.into_iter().map(percentiles).collect()
}

/// Reads per second by [`TASKS`] tasks in `window`.
async fn throughput(side: Arc<dyn Side>, window: Duration) -> f64 {
    let deadline = Instant::now() + window;
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let side = side.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                let mut i = t * 7919;
                while Instant::now() < deadline {
                    side.read(i).await;
                    done += 1;
                    i += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Run {
    /// Per side: p50, p99 (us), reads/s.
    sides: Vec<(Lat, f64)>,
}

const NAMES: [&str; 4] = [
    "near-cache hit (get_json)",
    "raw Redis GET",
    "moka + GET, no invalidation",
    "cache hit without near tier",
];

async fn run(quick: bool) -> Run {
    let server = RedisServer::start();
    let db = MemDb::seeded();
    db.write(|t| {
        for id in 1..=KEYS {
            t.users.insert(id, format!("user{id}"));
        }
    });
    let build = |store: RedisStore| {
        Cache::builder()
            .store(store)
            .loader::<User>(db.clone())
            .loader::<Question>(db.clone())
            .loader::<Choice>(db.clone())
            .build()
            .expect("cache")
    };
    let near_store = RedisStore::builder(server.url())
        .near_cache(NearCache::new().max_age(Duration::from_secs(3600)))
        .connect()
        .await
        .expect("redis");
    let near = build(near_store.clone());
    let plain = build(RedisStore::connect(&server.url()).await.expect("redis"));
    let keys: Vec<String> = (1..=KEYS)
        .map(|id| plain.key_of::<User>(&id).expect("key"))
        .collect();
    // Fill through the plain cache; the near cache's first reads track.
    for id in 1..=KEYS {
        plain.get_json::<User>(&id).await.expect("fill");
    }
    let redis = ConnectionManager::new(redis::Client::open(server.url()).expect("url"))
        .await
        .expect("redis");
    let raw = || RawGet {
        redis: redis.clone(),
        keys: Arc::new(keys.clone()),
    };
    let sides: Vec<Arc<dyn Side>> = vec![
        Arc::new(CacheHit(near)),
        Arc::new(raw()),
        Arc::new(MokaGet {
            raw: raw(),
            moka: moka::sync::Cache::new(10_000),
        }),
        Arc::new(CacheHit(plain)),
    ];
    let (rounds, block, window, windows) = if quick {
        (2, 200, Duration::from_millis(200), 1)
    } else {
        (10, 2_000, Duration::from_secs(1), 3)
    };
    let lats = latencies(&sides, rounds, block).await;
    let mut rates: Vec<Vec<f64>> = sides.iter().map(|_| Vec::new()).collect();
    for w in 0..windows {
        for k in 0..sides.len() {
            let s = (w + k) % sides.len();
            rates[s].push(throughput(sides[s].clone(), window).await);
        }
    }
    let stats = near_store.near_cache_stats().expect("near");
    assert!(stats.tracking && stats.entries > 0, "{stats:?}");
    Run {
        sides: lats
            .into_iter()
            .zip(rates.into_iter().map(median))
            .collect(),
    }
}

/// The near cache side by side with a raw `GET`, moka + `GET` and the
/// cache without its near tier (BENCHMARKS.md).
#[derive(Debug, Parser)]
#[command(bin_name = "cargo bench --bench near --")]
struct Args {
    /// Tiny durations (CI smoke; the numbers mean little).
    #[arg(long)]
    quick: bool,
    /// Repeat the comparison N times and print the spread.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    #[command(flatten)]
    _bench: BenchFlag,
}

fn main() {
    let Args { quick, runs, .. } = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    println!("near cache bench, {TASKS} tasks, load average {}", load());
    let mut all = Vec::new();
    for r in 1..=runs {
        // On a worker thread, as a server's request handlers run (see the
        // compare bench's `main`).
        let result = runtime
            .block_on(async { tokio::spawn(run(quick)).await })
            .expect("the benchmark's task");
        println!("run {r} (load average {}):", load());
        let (near_lat, near_rate) = &result.sides[0];
        for (name, (lat, rate)) in NAMES.iter().zip(&result.sides) {
            println!(
                "  {name:<30} p50 {:>8.2} us  p99 {:>8.2} us  {:>10.0} reads/s  near p50 = {:>6.3}x  near tput = {:>6.2}x",
                lat.p50,
                lat.p99,
                rate,
                near_lat.p50 / lat.p50,
                near_rate / rate
            );
        }
        all.push(result);
    }
    if runs > 1 {
        println!("spread over {runs} runs (min-max):");
        for (s, name) in NAMES.iter().enumerate() {
            let range = |f: &dyn Fn(&Run) -> f64| {
                let v: Vec<f64> = all.iter().map(f).collect();
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(0.0, f64::max);
                (lo, hi)
            };
            let p50 = range(&|r| r.sides[s].0.p50);
            let rate = range(&|r| r.sides[s].1);
            let tput_ratio = range(&|r| r.sides[0].1 / r.sides[s].1);
            let lat_ratio = range(&|r| r.sides[s].0.p50 / r.sides[0].0.p50);
            println!(
                "  {name:<30} p50 {:.2}-{:.2} us  {:.0}-{:.0} reads/s  its p50 / near p50 = {:.1}-{:.1}x  near tput / its = {:.2}-{:.2}x",
                p50.0, p50.1, rate.0, rate.1, lat_ratio.0, lat_ratio.1, tput_ratio.0, tput_ratio.1
            );
        }
    }
}
