//! The near cache's one consistency exception, measured (CONSISTENCY.md):
//! after a write acknowledged in process A, how long can process B still
//! read the old entry from its near cache (until Redis' invalidation push
//! reaches B)?
//!
//! ```sh
//! cargo bench --bench near_window                    # 2000 writes, one run
//! cargo bench --bench near_window -- --runs 3        # three runs
//! cargo bench --bench near_window -- --writes 200    # smoke run
//! ```
//!
//! Two processes on loopback: this one (A) starts its own `redis-server`,
//! spawns itself as the reader (B) and writes one key `--writes` times,
//! stamping each acknowledgement with the wall clock. B reads the key in a
//! loop through a near-cached `RedisStore`, and for each value keeps the
//! start time of the last read that returned it. The window of write `n` is
//! how long after A's acknowledgement of `n` a read in B began and still
//! returned value `n - 1` (0 when none did). Both processes read the same
//! kernel clock (`CLOCK_REALTIME`), so the stamps compare.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cached_instances::{NearCache, RedisStore, Store};
use cached_instances_testkit::cli::BenchFlag;
use cached_instances_testkit::redis_server::RedisServer;
use clap::Parser;

const KEY: &str = "near:window";
/// Time between two writes: long enough for B to read the new value back
/// into its tier, so every write has a cached entry to invalidate.
const PAUSE: Duration = Duration::from_millis(2);

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

fn value(n: u64) -> Vec<u8> {
    format!("{{\"n\":{n}}}").into_bytes()
}

fn parse(bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.strip_prefix("{\"n\":")?
        .strip_suffix('}')?
        .parse()
        .ok()
}

/// The near cache's staleness window across two processes (CONSISTENCY.md).
#[derive(Debug, Parser)]
#[command(bin_name = "cargo bench --bench near_window --")]
struct Args {
    /// Writes per run.
    #[arg(long, value_name = "N", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..))]
    writes: u64,
    /// Repeat the measurement N times and print the spread.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Internal: run as the reader process (B) of the Redis server at URL.
    #[arg(long, value_name = "URL", hide = true)]
    reader: Option<String>,
    /// Internal: the reader's last value to wait for.
    #[arg(long, value_name = "N", hide = true, default_value_t = 0)]
    last: u64,
    #[command(flatten)]
    _bench: BenchFlag,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Some(url) = &args.reader {
        runtime.block_on(reader(url, args.last));
        return ExitCode::SUCCESS;
    }
    let Args { writes, runs, .. } = args;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.trim();
    println!("near cache staleness window, {writes} writes per run, load average {load}");
    let mut summaries = Vec::new();
    for run in 1..=runs {
        let windows = runtime.block_on(writer(writes));
        let s = Summary::of(&windows);
        println!(
            "run {run}: p50 {:.1} us, p99 {:.1} us, max {:.1} us, stale reads after {} of {} writes",
            s.p50, s.p99, s.max, s.stale, s.writes
        );
        summaries.push(s);
    }
    if runs > 1 {
        let range = |f: fn(&Summary) -> f64| {
            let lo = summaries.iter().map(f).fold(f64::INFINITY, f64::min);
            let hi = summaries.iter().map(f).fold(0.0, f64::max);
            format!("{lo:.1}-{hi:.1}")
        };
        println!(
            "spread over {runs} runs: p50 {} us, p99 {} us, max {} us",
            range(|s| s.p50),
            range(|s| s.p99),
            range(|s| s.max)
        );
    }
    ExitCode::SUCCESS
}

struct Summary {
    p50: f64,
    p99: f64,
    max: f64,
    stale: usize,
    writes: usize,
}

impl Summary {
    /// Windows in nanoseconds, 0 where no stale read happened.
    fn of(windows: &[i128]) -> Summary {
        let mut sorted: Vec<i128> = windows.to_vec();
        sorted.sort_unstable();
        let at = |q: f64| {
            let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
            sorted.get(i).copied().unwrap_or(0) as f64 / 1_000.0
        };
        Summary {
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
            stale: windows.iter().filter(|&&w| w > 0).count(),
            writes: windows.len(),
        }
    }
}

/// Process A: writes `1..=writes`, then collects B's report.
async fn writer(writes: u64) -> Vec<i128> {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.expect("redis");
    let key = [KEY.to_owned()];
    store
        .swap_many(&key, &value(0), Duration::from_secs(3600))
        .await
        .expect("first write");
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .args(["--reader", &server.url(), "--last", &writes.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the reader");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let ready = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(ready, "ready", "the reader did not start");

    let mut acks = vec![0i128; usize::try_from(writes).unwrap_or(0) + 1];
    for n in 1..=writes {
        store
            .swap_many(&key, &value(n), Duration::from_secs(3600))
            .await
            .expect("write");
        acks[n as usize] = now_ns();
        tokio::time::sleep(PAUSE).await;
    }
    // B's report: for each value, the start of the last read returning it.
    let mut last_read = vec![0i128; acks.len()];
    for line in lines.map_while(Result::ok) {
        let mut parts = line.split(' ');
        if let (Some(n), Some(t)) = (parts.next(), parts.next())
            && let (Ok(n), Ok(t)) = (n.parse::<usize>(), t.parse::<i128>())
            && n < last_read.len()
        {
            last_read[n] = t;
        }
    }
    let _ = child.wait();
    (1..acks.len())
        .map(|n| (last_read[n - 1] - acks[n]).max(0))
        .collect()
}

/// Process B: reads through a near cache until it has seen `last`, then
/// reports.
async fn reader(url: &str, last: u64) {
    let store = RedisStore::builder(url)
        .near_cache(NearCache::new().max_age(Duration::from_secs(3600)))
        .connect()
        .await
        .expect("redis with a near cache");
    let mut last_read = vec![0i128; usize::try_from(last).unwrap_or(0) + 1];
    store.get(KEY).await.expect("warm");
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready").expect("stdout");
    stdout.flush().expect("stdout");
    loop {
        let start = now_ns();
        let Ok(Some(bytes)) = store.get(KEY).await else {
            continue;
        };
        let Some(n) = parse(&bytes) else { continue };
        if let Some(slot) = last_read.get_mut(n as usize) {
            *slot = start;
        }
        if n >= last {
            break;
        }
        // Let the connection tasks (and their pushes) run.
        tokio::task::yield_now().await;
    }
    for (n, t) in last_read.iter().enumerate() {
        writeln!(stdout, "{n} {t}").expect("stdout");
    }
}
