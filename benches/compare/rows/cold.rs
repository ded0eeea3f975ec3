//! The `cold` rows (`--only cold`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use cached_instances::store::CompareAndSet;
use cached_instances::{Cache, CachedInstance, Loader, MemoryStore, Store};
use polls::{Choice, Question, User};

use crate::runners::{WARM_UP, in_turn};
use crate::setup::Env;
use crate::stats::{fmt_lat, lat};
use crate::table::{Row, ratio_row};

/// 100 cold misses: `get_many` of 100 absent keys vs the loader alone,
/// on each store twice: read after read of cold keys (the model's batch
/// reads keep finding every key absent, so each starts with the lease of
/// all its keys at once, `MSETNX` on Redis: `cache/cold.rs`), and each
/// right after an untimed batch read of 100 cached entries (a multi-get
/// first, then that lease).
pub(crate) async fn cold_rows(env: &Env, rows: &mut Vec<Row>) {
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
        .loader::<User>(env.loader.clone())
        .loader::<Question>(env.loader.clone())
        .loader::<Choice>(env.loader.clone())
        .build()
        .expect("cache");
    let warm_pks: Vec<i64> = (1..=100.min(cfg.hot)).collect();
    let runs = [
        ("RedisStore", &env.cache, &env.store as &dyn Store, false),
        ("RedisStore", &env.cache, &env.store as &dyn Store, true),
        ("MemoryStore", &memory_cache, &memory as &dyn Store, false),
        ("MemoryStore", &memory_cache, &memory as &dyn Store, true),
    ];
    for (name, cache, store, after_warm) in runs {
        let mut ours = Vec::new();
        let mut base = Vec::new();
        let mut extra_calls = 0;
        let iterations = cfg.iterations;
        env.redis.reset_stats();
        for it in 0..iterations + WARM_UP {
            let pks = &windows[it % windows.len()];
            let keys = env.keys(pks);
            store.delete_many(&keys).await.expect("clear");
            // Async blocks run when awaited: in the order the iteration
            // picks.
            let run_ours = async {
                if after_warm {
                    // Untimed: the model's last batch read hit.
                    let warm = cache.get_many::<Question>(&warm_pks).await.expect("warm");
                    assert_eq!(warm.len(), warm_pks.len());
                }
                let calls = cache.stats().loader_calls;
                let started = Instant::now();
                let found = cache.get_many::<Question>(pks).await.expect("read");
                let elapsed = started.elapsed().as_nanos() as u64;
                // The read returned before its fill's reply: wait for it
                // untimed, so that it overlaps neither the next measurement
                // nor the clear.
                cache.settle().await;
                assert_eq!(found.len(), 100);
                (elapsed, cache.stats().loader_calls - calls)
            };
            let run_base = async {
                let started = Instant::now();
                let found = Loader::<Question>::load(&env.loader, pks)
                    .await
                    .expect("load");
                assert_eq!(found.len(), 100);
                started.elapsed().as_nanos() as u64
            };
            let ((o, calls), b) = in_turn(it, run_ours, run_base).await;
            if it >= WARM_UP {
                ours.push(o);
                base.push(b);
                if calls != 1 {
                    extra_calls += 1;
                }
            }
            store.delete_many(&keys).await.expect("clear");
        }
        if name == "RedisStore" && !after_warm {
            redis_server_time(env, iterations + WARM_UP);
        }
        if !after_warm {
            phases(env, name, store, &windows).await;
        }
        let (o, b) = (lat(ours), lat(base));
        let key = match (name, after_warm) {
            ("RedisStore", false) => "cold_redis",
            ("RedisStore", true) => "cold_redis_after_warm",
            (_, false) => "cold_memory",
            (_, true) => "cold_memory_after_warm",
        };
        let mode = if after_warm {
            "right after a batch read that hit (multi-get, then lease)"
        } else {
            "after cold reads (lease first, no multi-get)"
        };
        let mut row = ratio_row(
            key,
            format!(
                "100 cold misses, {name} (`get_many`), {mode}: loader calls per read = {}",
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
pub(crate) fn redis_server_time(env: &Env, reads: usize) {
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
        if cached_instances_testkit::redis_server::is_bookkeeping(name) {
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

/// Where a cold read's time goes: each step of the protocol timed alone
/// through the store's primitives, on the same 100 keys (p50 over the
/// iterations): the multi-get that misses, the lease of all the keys at
/// once (`set_if_absent`, what a cold read takes), the loader, encoding the
/// rows, the fill. Then the two round trips that bound a cold read's
/// overhead: a one-key `GET` from the store, and the loader's checkout
/// (with sqlx's default `test_before_acquire`, a ping to PostgreSQL). A
/// cold read's lease overlaps that checkout, so only the lease's time
/// beyond it adds to the loader's.
async fn phases(env: &Env, name: &str, store: &dyn Store, windows: &[Vec<i64>]) {
    const STEPS: [&str; 7] = [
        "multi-get",
        "lease",
        "loader",
        "encode",
        "fill",
        "one-key GET",
        "checkout (a ping)",
    ];
    let mut samples: [Vec<u64>; STEPS.len()] = Default::default();
    let ttl = Duration::from_secs(60);
    for it in 0..env.cfg.iterations + WARM_UP {
        let pks = &windows[it % windows.len()];
        let keys = env.keys(pks);
        store.delete_many(&keys).await.expect("clear");
        let mut took = [0u64; STEPS.len()];
        let mut lap = Instant::now();
        let mut step = |i: usize| {
            took[i] = lap.elapsed().as_nanos() as u64;
            lap = Instant::now();
        };
        std::hint::black_box(store.get_many(&keys).await.expect("get_many"));
        step(0);
        let lease: &[u8] = b"\0Lbench-lease-0123456789abcdef";
        let set = store.set_if_absent(&keys, lease, ttl).await.expect("lease");
        assert!(set.iter().all(|set| *set), "leased");
        step(1);
        let rows = Loader::<Question>::load(&env.loader, pks)
            .await
            .expect("load");
        step(2);
        let ops: Vec<CompareAndSet> = rows
            .iter()
            .zip(&keys)
            .map(|(row, key)| CompareAndSet {
                key: key.clone(),
                expected: Bytes::from_static(lease),
                value: Bytes::from(row.to_json().expect("encode")),
                ttl,
            })
            .collect();
        step(3);
        let written = store.compare_and_set(&ops).await.expect("fill");
        assert!(written.iter().all(|w| *w), "filled");
        step(4);
        let one = store.get(&keys[0]).await.expect("get");
        assert!(one.is_some(), "filled");
        step(5);
        let checkout = env.loader.pool().acquire().await.expect("checkout");
        step(6);
        drop(checkout);
        if it >= WARM_UP {
            for (samples, took) in samples.iter_mut().zip(took) {
                samples.push(took);
            }
        }
        store.delete_many(&keys).await.expect("clear");
    }
    let parts: Vec<String> = STEPS
        .iter()
        .zip(samples)
        .map(|(step, samples)| format!("{step} {:.0} us", lat(samples).p50 / 1000.0))
        .collect();
    println!(
        "cold, {name}: each step of a cold read alone, p50: {}",
        parts.join(", ")
    );
}
