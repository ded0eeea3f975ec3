//! The `list` rows (`--only list`).

use std::sync::Arc;
use std::time::Instant;

use cached_instances::Cache;
use cached_instances::query::Query;
use polls::Question;

use crate::ops::{CachedList, IndexList, LIST_BY_DATE_SQL, LIST_SQL, Op, PgList};
use crate::runners::{latencies, throughputs};
use crate::setup::Env;
use crate::stats::{fmt_lat, lat};
use crate::table::{Row, ratio_row};

pub(crate) async fn list_rows(env: &Env, rows: &mut Vec<Row>) {
    let cfg = &env.cfg;
    let offsets: Vec<i64> = (0..cfg.hot / 100).map(|i| i * 100).collect();
    let ours = Arc::new(CachedList {
        cache: env.cache.clone(),
        pool: env.pool.clone(),
        offsets: offsets.clone(),
    });
    let base = Arc::new(PgList {
        pool: env.pool.clone(),
        offsets: offsets.clone(),
        sql: LIST_SQL,
    });
    let ops: [Arc<dyn Op>; 2] = [ours, base];
    let lats = latencies(&ops, cfg.rounds, (cfg.block / 5).max(20)).await;
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

    // The same lists newest first, from the index of a warmed cache:
    // without a near cache (the index query and the multi-get both go to
    // Redis), then with one (the multi-get is served in process).
    for (near, key_p50, key_tput, what) in [
        (
            false,
            "list_index_p50",
            "list_index_tput",
            "List of 100 newest first from the index of a warmed cache (1 index query + 1 multi-get, Redis, 0 DB queries) vs the 100 with related pks from PostgreSQL: latency",
        ),
        (
            true,
            "list_index_near_p50",
            "list_index_near_tput",
            "… the same with a near cache (the page and the 100 entries from the near tier, kept coherent by tracking: 0 round trips on a repeat, 0 DB queries): latency",
        ),
    ] {
        let cache = env.indexed_cache(near).await;
        index_steps(&cache, &offsets, near).await;
        let ours = Arc::new(IndexList {
            cache,
            offsets: offsets.clone(),
        });
        let base = Arc::new(PgList {
            pool: env.pool.clone(),
            offsets: offsets.clone(),
            sql: LIST_BY_DATE_SQL,
        });
        let ops: [Arc<dyn Op>; 2] = [ours, base];
        let lats = latencies(&ops, cfg.rounds, (cfg.block / 5).max(20)).await;
        let rates = throughputs(&ops, cfg).await;
        rows.push(ratio_row(
            key_p50,
            what,
            fmt_lat(lats[0]),
            fmt_lat(lats[1]),
            ("base/ours p50", lats[1].p50 / lats[0].p50),
            (">=", 3.0),
        ));
        rows.push(ratio_row(
            key_tput,
            format!("… throughput, {} tasks", cfg.tasks),
            rates[0].show(),
            rates[1].show(),
            ("ours/base", rates[0].median() / rates[1].median()),
            (">=", 3.0),
        ));
    }
}

/// Prints each step of a listing from the index alone (p50 of sequential
/// calls): the index query (page of pks and count, `query_pks`) and the
/// multi-get of its 100 entries (`get_many_json`).
async fn index_steps(cache: &Cache, offsets: &[i64], near: bool) {
    const SAMPLES: usize = 400;
    let queries: Vec<Query<Question>> = offsets
        .iter()
        .map(|&offset| {
            Query::<Question>::new()
                .order_by_desc("pub_date")
                .offset(offset.unsigned_abs())
                .limit(100)
        })
        .collect();
    let mut pages = Vec::with_capacity(queries.len());
    for query in &queries {
        pages.push(cache.query_pks(query).await.expect("query").items);
    }
    let (mut index, mut multi_get) = (Vec::new(), Vec::new());
    for i in 0..SAMPLES {
        let query = &queries[i % queries.len()];
        let started = Instant::now();
        std::hint::black_box(cache.query_pks(query).await.expect("query"));
        index.push(started.elapsed().as_nanos() as u64);
        let pks = &pages[i % pages.len()];
        let started = Instant::now();
        let got = cache.get_many_json::<Question>(pks).await.expect("get");
        multi_get.push(started.elapsed().as_nanos() as u64);
        assert_eq!(got.len(), 100);
    }
    println!(
        "list from the index{}: each step alone: index query (page of 100 pks + count) {}; multi-get of the 100 {}",
        if near { ", near cache" } else { "" },
        fmt_lat(lat(index)),
        fmt_lat(lat(multi_get)),
    );
}
