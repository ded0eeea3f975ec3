//! The `http` rows (`--only http`).

use std::sync::Arc;

use axum::http::StatusCode;
use polls::routes::{self, App};

use crate::baseline::{base_router, serve};
use crate::http::{http_compare, http_connect, http_get};
use crate::setup::Env;
use crate::table::{Row, ratio_row};

pub(crate) async fn http_rows(env: &Env, rows: &mut Vec<Row>) {
    let cfg = &env.cfg;
    let app = App::with_cache(env.db.clone(), env.cache.clone())
        .await
        .expect("the polls app");
    let ours = serve(routes::router(app)).await;
    let base = serve(base_router(env.pool.clone())).await;

    // Same bodies on both sides.
    let mut o = http_connect(ours.addr).await;
    let mut b = http_connect(base.addr).await;
    for path in ["/questions/5", "/questions"] {
        let (so, bo) = http_get(&mut o, path).await;
        let (sb, bb) = http_get(&mut b, path).await;
        assert_eq!((so, sb), (StatusCode::OK, StatusCode::OK), "{path}");
        assert_eq!(
            bo,
            bb,
            "{path}: the baseline serves different JSON:\n{}\n{}",
            String::from_utf8_lossy(&bo),
            String::from_utf8_lossy(&bb)
        );
    }
    drop((o, b));

    let details: Arc<Vec<String>> = Arc::new(
        env.hot()
            .iter()
            .map(|pk| format!("/questions/{pk}"))
            .collect(),
    );
    // Statements in the polls API's requests only (the baseline's are not
    // in a counting span).
    let before = env.statements.in_requests();
    let [od, bd] = http_compare([(ours.addr, details.clone()), (base.addr, details)], cfg).await;
    let detail_queries = env.statements.in_requests() - before;
    let lists = Arc::new(vec!["/questions".to_owned()]);
    let [ol, bl] = http_compare(
        [(ours.addr, lists.clone()), (base.addr, lists.clone())],
        cfg,
    )
    .await;
    rows.push(ratio_row(
        "http_detail",
        format!(
            "HTTP `GET /questions/{{pk}}`, polls API (PostgreSQL + Redis) vs the same JSON from PostgreSQL, {} connections (ours: {detail_queries} DB queries)",
            cfg.conns
        ),
        od.show(),
        bd.show(),
        ("ours/base req/s", od.median() / bd.median()),
        (">=", 3.0),
    ));
    rows.push(ratio_row(
        "http_list",
        format!(
            "HTTP `GET /questions` (a page of 20 + count), {} connections; `Question` not warmed: the page's pks and count by SQL",
            cfg.conns
        ),
        ol.show(),
        bl.show(),
        ("ours/base req/s", ol.median() / bl.median()),
        (">=", 3.0),
    ));

    // The same list once `Question` is warmed (as the polls example's main
    // does): the page and count from the index, no database statement;
    // then the same over a near cache.
    for (near, key, what) in [
        (
            false,
            "http_list_index",
            "`Question` warmed: page and count from the index",
        ),
        (
            true,
            "http_list_index_near",
            "`Question` warmed, near cache: page, count and entries from the near tier (0 round trips on a repeat)",
        ),
    ] {
        let app = App::with_cache(env.db.clone(), env.indexed_cache(near).await)
            .await
            .expect("the polls app");
        let indexed = serve(routes::router(app)).await;
        let mut o = http_connect(indexed.addr).await;
        let mut b = http_connect(base.addr).await;
        let (so, bo) = http_get(&mut o, "/questions").await;
        let (sb, bb) = http_get(&mut b, "/questions").await;
        assert_eq!((so, sb), (StatusCode::OK, StatusCode::OK));
        assert_eq!(bo, bb, "/questions from the index: different JSON");
        drop((o, b));
        let before = env.statements.in_requests();
        let [oi, bi] = http_compare(
            [(indexed.addr, lists.clone()), (base.addr, lists.clone())],
            cfg,
        )
        .await;
        let statements = env.statements.in_requests() - before;
        rows.push(ratio_row(
            key,
            format!(
                "HTTP `GET /questions`, {what} (ours: {statements} DB statements), {} connections",
                cfg.conns
            ),
            oi.show(),
            bi.show(),
            ("ours/base req/s", oi.median() / bi.median()),
            (">=", 3.0),
        ));
        indexed.stop().await;
    }
    ours.stop().await;
    base.stop().await;
}
