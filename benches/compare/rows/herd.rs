//! The `herd` row (`--only herd`).

use std::future::Future;
use std::time::Instant;

use cached_instances::{Loader, Store};
use polls::Question;

use crate::runners::{WARM_UP, in_turn};
use crate::setup::Env;
use crate::stats::{fmt_lat, lat};
use crate::table::Row;

/// Readers of one key at once.
const HERD: usize = 16;

/// A herd on one cold key in one process: `HERD` concurrent `get`s (one
/// loads, the others wait on its lease: `cache/fills.rs`), against as
/// many concurrent loads of the row by the loader alone, what the process
/// does without a cache. Each reader's latency from the herd's start.
pub(crate) async fn herd_rows(env: &Env, rows: &mut Vec<Row>) {
    let cfg = &env.cfg;
    let cold: Vec<i64> = (cfg.hot + 1..=cfg.questions).collect();
    assert!(!cold.is_empty(), "the data set has no cold question");
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    let mut extra_calls = 0;
    for it in 0..cfg.iterations + WARM_UP {
        let pk = cold[it % cold.len()];
        let keys = env.keys(&[pk]);
        env.store.delete_many(&keys).await.expect("clear");
        let calls = env.cache.stats().loader_calls;
        let run_ours = async {
            let took = herd(|| {
                let cache = env.cache.clone();
                async move {
                    let found = cache.get::<Question>(&pk).await.expect("read");
                    assert!(found.is_some(), "question {pk}");
                }
            })
            .await;
            // Untimed: the fill's reply, before the next herd.
            env.cache.settle().await;
            took
        };
        let run_base = herd(|| {
            let loader = env.loader.clone();
            async move {
                let found = Loader::<Question>::load(&loader, &[pk])
                    .await
                    .expect("load");
                assert_eq!(found.len(), 1, "question {pk}");
            }
        });
        let (o, b) = in_turn(it, run_ours, run_base).await;
        if it >= WARM_UP {
            ours.extend(o);
            base.extend(b);
            if env.cache.stats().loader_calls - calls != 1 {
                extra_calls += 1;
            }
        }
        env.store.delete_many(&keys).await.expect("clear");
    }
    let (o, b) = (lat(ours), lat(base));
    rows.push(Row {
        key: "herd",
        what: format!(
            "{HERD} concurrent `get`s of one cold key, RedisStore, one process (one loads, {} wait on its lease): loader calls per herd = {}",
            HERD - 1,
            if extra_calls == 0 {
                "1 in every herd".to_owned()
            } else {
                format!("≠ 1 in {extra_calls} of {} herds", cfg.iterations)
            }
        ),
        ours: fmt_lat(o),
        base: format!("{HERD} concurrent loads by the loader alone: {}", fmt_lat(b)),
        ratio: format!("ours/base p50 = {:.2}", o.p50 / b.p50),
        metric: Some(o.p50 / b.p50),
        target: "reported".into(),
        met: None,
    });
}

/// Runs `HERD` tasks made by `task` at once; each one's latency (ns) from
/// the start.
async fn herd<F, Fut>(task: F) -> Vec<u64>
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..HERD)
        .map(|_| {
            let run = task();
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
