//! The `detail` rows (`--only detail`), and the `breakdown` of each layer.

use std::sync::Arc;

use crate::ops::{CachedDetail, Many, ManyHow, Op, PgDetail, RawGet, RawGetTimeout, StoreGet};
use crate::runners::{latencies, throughputs};
use crate::setup::Env;
use crate::stats::{Lat, Rate, fmt_lat};
use crate::table::{Row, ratio_row};

pub(crate) async fn detail_rows(env: &Env, rows: &mut Vec<Row>) {
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
    // Ours calls no loader on a hit; the statement counter also sees the
    // PostgreSQL side's queries, so ours is counted by its loader calls.
    let before = env.cache.stats();
    let ops: [Arc<dyn Op>; 3] = [ours.clone(), raw.clone(), pg.clone()];
    let lats = latencies(&ops, cfg.rounds, cfg.block).await;
    let rates = throughputs(&ops, cfg).await;
    let after = env.cache.stats();
    let misses = after.misses - before.misses;
    let loads = after.loader_calls - before.loader_calls;
    println!(
        "detail: {} samples per side; ours made {misses} misses and {loads} loader calls while measured",
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
            "… throughput, {} tasks (hit rows: ours made {misses} misses, {loads} loader calls)",
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
pub(crate) async fn breakdown(env: &Env) {
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
    let ops: [Arc<dyn Op>; 4] = [raw, raw_timeout, store, ours];
    let lats = latencies(&ops, cfg.rounds, cfg.block).await;
    let rates = throughputs(&ops, cfg).await;
    print_layers("one key", &names, lats, rates, cfg.tasks);

    let pages: Vec<Vec<i64>> = hot.chunks(100).map(<[i64]>::to_vec).collect();
    let page_keys: Vec<Vec<String>> = pages.iter().map(|p| env.keys(p)).collect();
    let many = |how| -> Arc<dyn Op> {
        Arc::new(Many {
            how,
            pages: pages.clone(),
            keys: page_keys.clone(),
        })
    };
    let indexed = env.indexed_cache(false).await;
    let ops: [Arc<dyn Op>; 7] = [
        many(ManyHow::PkQuery(env.pool.clone())),
        many(ManyHow::RawMget(conn)),
        many(ManyHow::Store(env.store.clone())),
        many(ManyHow::Cache(env.cache.clone())),
        many(ManyHow::Index(indexed)),
        many(ManyHow::PollsPage(env.db.clone())),
        many(ManyHow::BasePage(env.pool.clone())),
    ];
    let names = [
        "pk query (100 ids)",
        "raw MGET of 100",
        "RedisStore::get_many(100)",
        "Cache::get_many_json(100)",
        "Cache::query_json, 100 newest first from the index",
        "HTTP list, polls API's query (20 pks + count)",
        "HTTP list, baseline's query (20 rows + related pks + count)",
    ];
    let lats = latencies(&ops, cfg.rounds, (cfg.block / 5).max(20)).await;
    let rates = throughputs(&ops, cfg).await;
    print_layers(
        "lists (the page windows cycle through the hot set)",
        &names,
        lats,
        rates,
        cfg.tasks,
    );
}

/// One table of the breakdown: each layer's latency and throughput.
fn print_layers(title: &str, names: &[&str], lats: Vec<Lat>, rates: Vec<Rate>, tasks: usize) {
    println!(
        "\n## Breakdown: {title}\n\n| layer | latency | throughput, {tasks} tasks |\n|---|---|---|"
    );
    for ((name, l), r) in names.iter().zip(lats).zip(rates) {
        println!("| {name} | {} | {} |", fmt_lat(l), r.show());
    }
}
