//! The `herd` rows (`--only herd`).

use std::future::Future;
use std::time::{Duration, Instant};

use cached_instances::{Cache, LeasedPks, LoadError, Loader, NearCache, RedisStore, Store};
use polls::{Choice, Question, User};

use crate::runners::{WARM_UP, in_turn};
use crate::setup::Env;
use crate::stats::{fmt_lat, lat};
use crate::table::Row;

/// Readers of one key at once.
const HERD: usize = 16;

/// A herd on one cold key: `HERD` concurrent `get`s (one loads, the others
/// wait on its lease), against as many concurrent loads of the row by the
/// loader alone, what a process does without a cache. Each reader's
/// latency from the herd's start. Twice:
///
/// - in one process: the waiters wait on a lease of their own process,
///   and read once it is handed over (`cache/fills.rs`);
/// - across two processes (two caches, each with its own store, readers
///   dealt to them in turn): the row gives the latencies of the readers of
///   the process that did not load (which wait on a lease held elsewhere,
///   and read again when Redis pushes the fill to their tracking
///   connection: `Store::watch`), and the p50 of the others. All readers
///   together would put the p50 between the two groups. With near-cached
///   stores, and with plain ones (whose tracking connection serves lease
///   waits alone); each again with a load of 10 ms more (a heavier query),
///   on both sides: a waiter that polled (1, 2, 4 ... ms) learned of the
///   fill up to a poll late.
pub(crate) async fn herd_rows(env: &Env, rows: &mut Vec<Row>) {
    let one = [env.cache.clone()];
    let derived = Slow(env.loader.clone(), Duration::ZERO);
    rows.push(
        herd_row(
            env,
            &one,
            &derived,
            "herd",
            format!(
                "RedisStore, one process (one loads, {} wait on its lease)",
                HERD - 1
            ),
        )
        .await,
    );
    for loader in [derived, Slow(env.loader.clone(), Duration::from_millis(10))] {
        for near in [true, false] {
            let two = [
                process_cache(env, &loader, near).await,
                process_cache(env, &loader, near).await,
            ];
            let key = match (near, loader.1.is_zero()) {
                (true, true) => "herd_two_processes",
                (true, false) => "herd_two_processes_10ms",
                (false, true) => "herd_two_processes_plain",
                (false, false) => "herd_two_processes_plain_10ms",
            };
            let store = if near {
                "RedisStore with a near cache"
            } else {
                "RedisStore (no near cache: the lease waits' own tracking connection)"
            };
            let load = if loader.1.is_zero() {
                ""
            } else {
                " and 10 ms more per load"
            };
            rows.push(
                herd_row(
                    env,
                    &two,
                    &loader,
                    key,
                    format!(
                        "{store}, two processes{load} (one loads; {} wait on its lease in its process, {} on a lease of the other)",
                        HERD / 2 - 1,
                        HERD / 2
                    ),
                )
                .await,
            );
        }
    }
}

/// The derived loader of questions, with a pause before each load (none,
/// or a heavier query's).
#[derive(Clone)]
struct Slow(cached_instances::sqlx::SqlxLoader<sqlx::Postgres>, Duration);

impl Loader<Question> for Slow {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Question>, LoadError> {
        if !self.1.is_zero() {
            tokio::time::sleep(self.1).await;
        }
        Loader::<Question>::load(&self.0, pks).await
    }

    /// Without a pause, the derived loader's own (its checkout beside the
    /// leases), as the caches of the one-process row have it.
    async fn load_after(&self, pks: LeasedPks<'_, i64>) -> Result<Vec<Question>, LoadError> {
        if self.1.is_zero() {
            return Loader::<Question>::load_after(&self.0, pks).await;
        }
        let pks = pks.await;
        if pks.is_empty() {
            return Ok(Vec::new());
        }
        self.load(&pks).await
    }
}

/// A cache as another process of the app has it: its own connections (and
/// near cache, if `near`), on the same server and keys as `env.cache`,
/// loading questions with `loader`.
async fn process_cache(env: &Env, loader: &Slow, near: bool) -> Cache {
    let mut store = RedisStore::builder(env.redis_url.as_str());
    if near {
        store = store.near_cache(NearCache::new());
    }
    let store = store.connect().await.expect("redis");
    Cache::builder()
        .store(store)
        .loader::<User>(env.loader.clone())
        .loader::<Question>(loader.clone())
        .loader::<Choice>(env.loader.clone())
        .build()
        .expect("cache")
}

/// The herd row of readers dealt to `caches` in turn.
async fn herd_row(
    env: &Env,
    caches: &[Cache],
    loader: &Slow,
    key: &'static str,
    what: String,
) -> Row {
    let cfg = &env.cfg;
    let cold: Vec<i64> = (cfg.hot + 1..=cfg.questions).collect();
    assert!(!cold.is_empty(), "the data set has no cold question");
    let loader_calls = || -> Vec<u64> { caches.iter().map(|c| c.stats().loader_calls).collect() };
    // The readers of the process that did not load (all of them in one
    // process), and those of the one that did, when there are two.
    let (mut ours, mut loading, mut base) = (Vec::new(), Vec::new(), Vec::new());
    let mut extra_calls = 0;
    for it in 0..cfg.iterations + WARM_UP {
        let pk = cold[it % cold.len()];
        let keys = env.keys(&[pk]);
        env.store.delete_many(&keys).await.expect("clear");
        let calls = loader_calls();
        let run_ours = async {
            let took = herd(|i| {
                let cache = caches[i % caches.len()].clone();
                async move {
                    let found = cache.get::<Question>(&pk).await.expect("read");
                    assert!(found.is_some(), "question {pk}");
                }
            })
            .await;
            // Untimed: the fill's reply, before the next herd.
            for cache in caches {
                cache.settle().await;
            }
            took
        };
        let run_base = herd(|_| {
            let loader = loader.clone();
            async move {
                let found = Loader::<Question>::load(&loader, &[pk])
                    .await
                    .expect("load");
                assert_eq!(found.len(), 1, "question {pk}");
            }
        });
        let (o, b) = in_turn(it, run_ours, run_base).await;
        if it >= WARM_UP {
            let made: Vec<u64> = loader_calls()
                .iter()
                .zip(&calls)
                .map(|(n, c)| n - c)
                .collect();
            if made.iter().sum::<u64>() != 1 {
                extra_calls += 1;
            }
            let loader = made.iter().position(|&n| n > 0);
            for (i, took) in o.into_iter().enumerate() {
                if caches.len() > 1 && Some(i % caches.len()) == loader {
                    loading.push(took);
                } else {
                    ours.push(took);
                }
            }
            base.extend(b);
        }
        env.store.delete_many(&keys).await.expect("clear");
    }
    let who = if loading.is_empty() {
        String::new()
    } else {
        format!(
            "; the readers of the process that did not load (those of the one that did: p50 {:.0} us)",
            lat(loading).p50 / 1000.0
        )
    };
    let (o, b) = (lat(ours), lat(base));
    Row {
        key,
        what: format!(
            "{HERD} concurrent `get`s of one cold key, {what}: loader calls per herd = {}{who}",
            if extra_calls == 0 {
                "1 in every herd".to_owned()
            } else {
                format!("≠ 1 in {extra_calls} of {} herds", cfg.iterations)
            }
        ),
        ours: fmt_lat(o),
        base: format!(
            "{HERD} concurrent loads by the loader alone: {}",
            fmt_lat(b)
        ),
        ratio: format!("ours/base p50 = {:.2}", o.p50 / b.p50),
        metric: Some(o.p50 / b.p50),
        target: "reported".into(),
        met: None,
    }
}

/// Runs `HERD` tasks made by `task` (given each one's index) at once; each
/// one's latency (ns) from the start.
async fn herd<F, Fut>(task: F) -> Vec<u64>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..HERD)
        .map(|i| {
            let run = task(i);
            tokio::spawn(async move {
                run.await;
                start.elapsed().as_nanos() as u64
            })
        })
        .collect();
    let mut took = Vec::with_capacity(HERD);
    for task in tasks {
        took.push(task.await.expect("a reader"));
    }
    took
}
