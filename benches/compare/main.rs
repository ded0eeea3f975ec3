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

mod alloc;
mod baseline;
mod config;
mod http;
mod machine;
mod ops;
mod rows;
mod runners;
mod setup;
mod stats;
mod table;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::machine::{cpu_model, kernel, load1, loadavg};
use crate::rows::cold::cold_rows;
use crate::rows::detail::{breakdown, detail_rows};
use crate::rows::herd::herd_rows;
use crate::rows::http::http_rows;
use crate::rows::list::list_rows;
use crate::rows::memory::memory_rows;
use crate::rows::memory_store::memory_store_rows;
use crate::rows::write::write_rows;
use crate::setup::{Env, setup};
use crate::stats::median;
use crate::table::{Row, print_table};

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
    if cfg.wants("herd") {
        herd_rows(env, &mut rows).await;
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
    let url = cfg.database_url.clone();
    println!(
        "machine: {} cores, {}, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        kernel()
    );
    let env = setup(cfg.clone(), &url).await?;
    println!(
        "method: sides interleaved (rotating order) in {} rounds; latency: {} sequential samples per side and round, in a task on a worker thread; throughput: {} tasks (HTTP: {} connections), {:?} windows, median window reported; baselines' pool: {} PostgreSQL connections (the polls Db: 4)",
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
    let cfg = Config::from_args();
    if cfg.quick {
        println!("--quick: tiny durations and data set; a smoke run, not a measurement");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // On a worker thread, as a server's request handlers run, not on the
    // thread blocked in `block_on`: a client whose connection is driven by
    // a task of its own (redis-rs) then wakes its caller on the worker that
    // read the reply instead of across threads (BENCHMARKS.md, session 12).
    match runtime.block_on(async { tokio::spawn(main_async(cfg)).await }) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: the benchmark's task failed: {e}");
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
