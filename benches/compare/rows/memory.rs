//! The `memory` rows (`--only memory`).

use std::sync::atomic::Ordering;

use cached_instances::{Cache, Loader, MemoryStore};
use polls::{Choice, Question, User};

use crate::alloc::{LIVE_HEAP, TRACK_HEAP};
use crate::setup::Env;
use crate::table::Row;

pub(crate) async fn memory_rows(env: &Env, rows: &mut Vec<Row>) {
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
        .loader::<User>(env.loader.clone())
        .loader::<Question>(env.loader.clone())
        .loader::<Choice>(env.loader.clone())
        .build()
        .expect("cache");
    // Warm the loaders' connections first, so their buffers are not counted.
    for chunk in hot.chunks(500) {
        Loader::<Question>::load(&env.loader, chunk)
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
