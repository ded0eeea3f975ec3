//! `RedisStore` configuration against real `redis-server`s started by the
//! test: `connect` reports a refused port, rejected credentials and a
//! missing database as such (not as a timeout), and a key prefix keeps two
//! applications on one Redis apart: entries, invalidations and query
//! indexes of a same-named model.

use std::time::Duration;

use cached_instances::query::Source;
use cached_instances::{ConnectError, RedisStore, StoreError};
use cached_instances_testkit::query_model::{Db, Member, cache_over, in_country, member};
use cached_instances_testkit::redis_server::{RedisCluster, RedisServer};

/// Far longer than any failure below may take to be reported: a failure
/// that waited for it would come back as `ConnectError::Timeout`.
const LONG: Duration = Duration::from_secs(60);

async fn connect(url: &str) -> Result<RedisStore, StoreError> {
    RedisStore::builder(url)
        .connect_timeout(LONG)
        .response_timeout(LONG)
        .connect()
        .await
}

fn connect_error(result: Result<RedisStore, StoreError>) -> ConnectError {
    match result {
        Err(StoreError::Connect(e)) => e,
        Err(other) => panic!("expected StoreError::Connect, got {other:?}"),
        Ok(store) => panic!("expected an error, connected: {store:?}"),
    }
}

#[tokio::test]
async fn a_refused_port_is_reported_as_refused() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let error = connect_error(connect(&format!("redis://127.0.0.1:{port}/")).await);
    let addr = format!("127.0.0.1:{port}");
    assert!(
        matches!(&error, ConnectError::Refused { addr: a, .. } if *a == addr),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("Redis at {addr} refused the connection")
    );
}

#[tokio::test]
async fn credentials_and_database_errors_say_so() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret", "--databases", "2"]);
    let port = server.port();
    let addr = format!("127.0.0.1:{port}");

    // A wrong password: rejected in the handshake.
    let error = connect_error(connect(&format!("redis://:wrong@127.0.0.1:{port}/")).await);
    assert!(
        matches!(&error, ConnectError::Auth { addr: a, .. } if *a == addr),
        "{error:?}"
    );
    assert!(
        !format!("{error:?} {error}").contains("wrong"),
        "the password is not shown"
    );

    // No password where the server wants one: NOAUTH on the first command.
    let error = connect_error(connect(&format!("redis://127.0.0.1:{port}/")).await);
    assert!(matches!(&error, ConnectError::Auth { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("Redis at {addr} rejected the credentials")
    );

    // The right password, a database out of the server's range.
    let error = connect_error(connect(&format!("redis://:s3cret@127.0.0.1:{port}/2")).await);
    assert!(
        matches!(&error, ConnectError::NoSuchDatabase { db: 2, addr: a, .. } if *a == addr),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("Redis at {addr} has no database 2")
    );

    // All right: connected, and a cache over it caches.
    let store = connect(&format!("redis://:s3cret@127.0.0.1:{port}/1"))
        .await
        .unwrap();
    let db = Db::seeded(2, "fr");
    let cache = cache_over(store, &db, Duration::from_millis(50));
    assert_eq!(cache.get::<Member>(&1).await.unwrap(), db.row(1));
    assert_eq!(cache.get::<Member>(&1).await.unwrap(), db.row(1));
    assert_eq!(db.loads(), 1, "the second read is a hit");
    assert_eq!(cache.stats().store_errors, 0);
}

async fn prefixed(server: &RedisServer, prefix: &str) -> RedisStore {
    RedisStore::builder(server.url())
        .key_prefix(prefix)
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn key_prefixes_keep_two_applications_apart() {
    let server = RedisServer::start();
    // The same model, the same pks, different rows.
    let db_a = Db::seeded(3, "fr");
    let db_b = Db::seeded(3, "de");
    let a = cache_over(
        prefixed(&server, "a:").await,
        &db_a,
        Duration::from_millis(50),
    );
    let b = cache_over(
        prefixed(&server, "b:").await,
        &db_b,
        Duration::from_millis(50),
    );

    // Each fills its own entry and then hits it.
    for _ in 0..2 {
        assert_eq!(a.get::<Member>(&1).await.unwrap(), Some(member(1, "fr")));
        assert_eq!(b.get::<Member>(&1).await.unwrap(), Some(member(1, "de")));
    }
    assert_eq!((db_a.loads(), db_b.loads()), (1, 1));

    // A write in one application does not invalidate the other's entry.
    db_a.put(member(1, "es"));
    a.saved::<Member>(&member(1, "es")).await.unwrap();
    assert_eq!(b.get::<Member>(&1).await.unwrap(), Some(member(1, "de")));
    assert_eq!(db_b.loads(), 1, "b's entry survived a's write");

    // Indexes too: each answers its own queries from its own index.
    a.warm::<Member>().await.unwrap();
    b.warm::<Member>().await.unwrap();
    let queries = (db_a.queries(), db_b.queries());
    let fr = b.query(&in_country("fr")).await.unwrap();
    assert_eq!(
        (fr.source, fr.count),
        (Source::Cache, 0),
        "a's index unseen by b"
    );
    let de = b.query(&in_country("de")).await.unwrap();
    assert_eq!((de.source, de.count), (Source::Cache, 3));
    let fr = a.query(&in_country("fr")).await.unwrap();
    let ids: Vec<i64> = fr.items.iter().map(|m| m.id).collect();
    assert_eq!((fr.source, ids), (Source::Cache, vec![0, 2]));
    assert_eq!(
        (db_a.queries(), db_b.queries()),
        queries,
        "no query reached a loader"
    );

    // Batch reads: a cold batch leases and fills under its prefix, and
    // the next one reads it back with one multi-get, no load.
    let db_c = Db::seeded(3, "it");
    let c = cache_over(
        prefixed(&server, "c:").await,
        &db_c,
        Duration::from_millis(50),
    );
    let pks = [0, 1, 2];
    for _ in 0..2 {
        let got = c.get_many::<Member>(&pks).await.unwrap();
        assert_eq!(got, (0..3).map(|i| member(i, "it")).collect::<Vec<_>>());
    }
    assert_eq!(db_c.loads(), 1, "the second batch is all hits");
    assert_eq!(c.stats().hits, 3);

    // Every key the stores wrote is under one of the prefixes.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut server.connection())
        .unwrap();
    for prefix in ["a:", "b:", "c:"] {
        assert!(keys.iter().any(|k| k.starts_with(prefix)), "{keys:?}");
    }
    assert!(
        keys.iter()
            .all(|k| ["a:", "b:", "c:"].iter().any(|p| k.starts_with(p))),
        "{keys:?}"
    );
}

#[tokio::test]
async fn key_prefixes_keep_hash_tags_working_on_a_cluster() {
    let cluster = RedisCluster::start();
    let connect = |prefix: &'static str| {
        RedisStore::cluster_builder(cluster.urls())
            .key_prefix(prefix)
            .connect()
    };
    let db_a = Db::seeded(20, "fr");
    let db_b = Db::seeded(20, "de");
    let a = cache_over(
        connect("a:").await.unwrap(),
        &db_a,
        Duration::from_millis(50),
    );
    let b = cache_over(
        connect("b:").await.unwrap(),
        &db_b,
        Duration::from_millis(50),
    );
    let pks: Vec<i64> = (0..20).collect();

    // Multi-key requests split by slot, single-slot scripts: with a prefix
    // before the hash tag, none fails with CROSSSLOT.
    for _ in 0..2 {
        assert_eq!(a.get_many::<Member>(&pks).await.unwrap().len(), 20);
        assert_eq!(b.get_many::<Member>(&pks).await.unwrap().len(), 20);
    }
    assert_eq!((db_a.loads(), db_b.loads()), (1, 1), "the second reads hit");
    db_a.put(member(1, "es"));
    a.saved::<Member>(&member(1, "es")).await.unwrap();
    a.warm::<Member>().await.unwrap();
    b.warm::<Member>().await.unwrap();
    let es = a.query(&in_country("es")).await.unwrap();
    assert_eq!((es.source, es.count), (Source::Cache, 1));
    let de = b.query(&in_country("de")).await.unwrap();
    assert_eq!((de.source, de.count), (Source::Cache, 20));
    assert_eq!(a.stats().store_errors + b.stats().store_errors, 0);

    // The keys spread over the nodes, each under its prefix.
    let mut keys: Vec<String> = Vec::new();
    for port in cluster.ports() {
        let node: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query(&mut cluster.node_connection(port))
            .unwrap();
        keys.extend(node);
    }
    assert!(
        keys.iter()
            .all(|k| k.starts_with("a:") || k.starts_with("b:")),
        "{keys:?}"
    );
    assert!(cluster.keys_per_node().iter().all(|&n| n > 0));
}
