//! The `memory-store` rows (`--only memory-store`).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use cached_instances::{Cache, CachedInstance, MemoryStore};
use polls::{Choice, Question, User};

use crate::runners::Batches;
use crate::setup::Env;
use crate::table::Row;

pub(crate) async fn memory_store_rows(env: &Env, rows: &mut Vec<Row>) {
    let cfg = &env.cfg;
    let cache = Cache::builder()
        .store(MemoryStore::new())
        .loader::<User>(env.loader.clone())
        .loader::<Question>(env.loader.clone())
        .loader::<Choice>(env.loader.clone())
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
    // Closures of shared borrows, so that each call's future holds them
    // (a future holding `&cache` is `Send` for any lifetime; an async
    // closure's is not provably so).
    let (cache, pk, map, key) = (&cache, &pk, &map, &key);
    let mut get = move || async move {
        black_box(
            cache
                .get_json::<Question>(black_box(pk))
                .await
                .expect("read"),
        );
    };
    let mut lookup = move || async move {
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
    let bytes = &bytes;
    let mut decode_op = move || async move {
        black_box(Question::decode(black_box(bytes)).expect("decode"));
    };
    let mut typed_op = move || async move {
        black_box(cache.get::<Question>(black_box(pk)).await.expect("read"));
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
