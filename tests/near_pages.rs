//! Index pages in the near cache, on a real Redis server (started by the
//! test): a repeated order-only page costs no command; another client's
//! write to the order's sorted set or the warm mark evicts it by its push;
//! the store's own index writes void it before they return; a killed
//! tracking connection flushes it; a page read that a push overtook is not
//! kept; filtered queries still go to Redis every time; pages obey the
//! tier's byte bound and max age.
//!
//! Interleavings that depend on what the store has received are scripted
//! with a proxy that holds the tracking connection's bytes
//! ([`HoldingProxy`]), on a current-thread runtime, so that the store's
//! push reader runs only when the test awaits. Nothing here asserts
//! timing: what a push or a reconnection does is polled for with a bounded
//! number of attempts.

use std::time::Duration;

use cached_instances::store::{IndexPage, IndexQuery, IndexRecord, IndexStore, IndexUpdate};
use cached_instances::{NearCache, RedisStore, Store};
use cached_instances_testkit::poll::eventually;
use cached_instances_testkit::proxy::HoldingProxy;
use cached_instances_testkit::redis_server::RedisServer;

/// One model's index prefix, as the cache lays it out.
const PREFIX: &str = "ci:{idx:Item}:1:h:";
const ORDER: &str = "s:rank";
const TOKEN: &[u8] = b"token";

/// A max age far beyond any test, so only pushes and flushes evict.
fn near() -> NearCache {
    NearCache::new().max_age(Duration::from_secs(3600))
}

async fn near_store(url: &str, config: NearCache) -> RedisStore {
    RedisStore::builder(url)
        .near_cache(config)
        .connect()
        .await
        .unwrap()
}

fn key(suffix: &str) -> String {
    format!("{PREFIX}{suffix}")
}

/// Indexes `member` with `rank` in the order [`ORDER`], and in the set of
/// its parity, through `store` (a lease, then the update).
async fn write(store: &RedisStore, member: u32, rank: f64) {
    let members = [member.to_string()];
    store.index_lease(PREFIX, &members, TOKEN).await.unwrap();
    let parity = if member.is_multiple_of(2) {
        "even"
    } else {
        "odd"
    };
    let record = IndexRecord::new(
        vec![format!("e:parity:{parity}")],
        vec![(ORDER.to_owned(), rank)],
    );
    let update = IndexUpdate::new(member.to_string(), Some(record));
    assert_eq!(
        store.index_apply(PREFIX, TOKEN, &[update]).await.unwrap(),
        vec![true]
    );
}

/// Members 1 to 5, ranked by their number, and the index marked warm.
async fn seed(store: &RedisStore) {
    for member in 1..=5 {
        write(store, member, f64::from(member)).await;
    }
    store
        .swap_many(&[key("warm")], b"1", Duration::from_secs(3600))
        .await
        .unwrap();
}

/// The first `limit` members, highest rank first.
fn top(limit: u64) -> IndexQuery {
    let mut query = IndexQuery::default();
    query.order = Some(ORDER.to_owned());
    query.descending = true;
    query.limit = Some(limit);
    query
}

fn page(members: &[u32], total: u64) -> Option<IndexPage> {
    Some(IndexPage::new(
        members.iter().map(u32::to_string).collect(),
        total,
    ))
}

/// The page and the count (the index version a page read from Redis
/// carries is `queries.rs`'s subject).
async fn query(store: &RedisStore, query: &IndexQuery) -> Option<IndexPage> {
    let page = store.index_query(PREFIX, query).await.unwrap()?;
    Some(IndexPage::new(page.members, page.total))
}

/// Runs `query` until it yields `want` (see [`eventually`]); returns
/// whether it did.
async fn eventually_pages(
    store: &RedisStore,
    query: &IndexQuery,
    want: &Option<IndexPage>,
) -> bool {
    eventually(async || &self::query(store, query).await == want).await
}

/// Runs `query` with the server's counters reset; asserts it yields
/// `want` and returns the data commands it sent.
async fn commands_of(
    server: &RedisServer,
    store: &RedisStore,
    query: &IndexQuery,
    want: &Option<IndexPage>,
) -> u64 {
    server.reset_stats();
    assert_eq!(&self::query(store, query).await, want);
    server.data_command_count()
}

fn redis_cmd(server: &RedisServer, args: &[&str]) {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    let _: redis::Value = cmd.query(&mut server.connection()).unwrap();
}

#[tokio::test]
async fn a_repeated_order_only_page_sends_no_command() {
    let server = RedisServer::start();
    let store = near_store(&server.url(), near()).await;
    seed(&store).await;
    let want = page(&[5, 4, 3], 5);
    // The first read goes to Redis (one transaction on the tracking
    // connection), the next ones are served from the tier.
    assert_eq!(commands_of(&server, &store, &top(3), &want).await, 5);
    for _ in 0..3 {
        assert_eq!(
            commands_of(&server, &store, &top(3), &want).await,
            0,
            "a near hit: {:?}",
            server.data_commands()
        );
    }
    // Another page of the same index is its own: read once, then held.
    let mut by_member = IndexQuery::default();
    by_member.offset = 1;
    by_member.limit = Some(2);
    let want = page(&[2, 3], 5);
    assert!(commands_of(&server, &store, &by_member, &want).await > 0);
    assert_eq!(commands_of(&server, &store, &by_member, &want).await, 0);
    let stats = store.near_cache_stats().unwrap();
    assert_eq!(stats.entries, 2, "two pages held: {stats:?}");
    assert!(stats.bytes > 0);
}

#[tokio::test]
async fn an_order_only_page_is_not_kept_before_warm_nor_when_ignoring_it() {
    let server = RedisServer::start();
    let store = near_store(&server.url(), near()).await;
    for member in 1..=3 {
        write(&store, member, f64::from(member)).await;
    }
    // Not warm: `None`, from Redis every time.
    for _ in 0..2 {
        assert_eq!(commands_of(&server, &store, &top(2), &None).await, 5);
    }
    // The warming reads what the index holds, from Redis every time (and
    // the index's version with it, as every page not kept in the tier).
    let mut listing = top(2);
    listing.ignore_warm = true;
    for _ in 0..2 {
        assert_eq!(
            commands_of(&server, &store, &listing, &page(&[3, 2], 3)).await,
            6
        );
    }
    // Marked warm (an own write): the page is read, then kept. The mark
    // was read (and tracked) above, so its push is on its way: it reaches
    // the store by the end of the next read at the latest (it precedes
    // that read's reply on the tracking connection), and may void that
    // read's page; the one after is kept.
    store
        .swap_many(&[key("warm")], b"1", Duration::from_secs(3600))
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(query(&store, &top(2)).await, page(&[3, 2], 3));
    }
    assert_eq!(
        commands_of(&server, &store, &top(2), &page(&[3, 2], 3)).await,
        0
    );
}

#[tokio::test]
async fn filtered_queries_go_to_redis_every_time() {
    let server = RedisServer::start();
    let store = near_store(&server.url(), near()).await;
    seed(&store).await;
    let mut odd = top(10);
    odd.groups = vec![vec!["e:parity:odd".to_owned()]];
    let mut ranked = top(10);
    ranked.ranges = vec![cached_instances::store::ScoreRange::new(
        ORDER.to_owned(),
        std::ops::Bound::Included(2.0),
        std::ops::Bound::Unbounded,
    )];
    // A range of the order itself is read with plain commands (`ZCOUNT`
    // and `ZRANGE` in a transaction), not kept either: its bound is often
    // "now", new on every request.
    for (query, want, command) in [
        (&odd, page(&[5, 3, 1], 3), "evalsha"),
        (&ranked, page(&[5, 4, 3, 2], 4), "zcount"),
    ] {
        // Once first: the query script is loaded on its first call.
        assert_eq!(&self::query(&store, query).await, &want);
        for _ in 0..3 {
            server.reset_stats();
            assert_eq!(&self::query(&store, query).await, &want);
            assert_eq!(
                server.data_commands().get(command),
                Some(&1),
                "{command}, every time"
            );
        }
    }
}

#[tokio::test]
async fn a_write_from_another_client_evicts_the_page_by_its_push() {
    let server = RedisServer::start();
    let store = near_store(&server.url(), near()).await;
    seed(&store).await;
    let before = store.near_cache_stats().unwrap();
    assert_eq!(query(&store, &top(3)).await, page(&[5, 4, 3], 5));
    assert_eq!(
        commands_of(&server, &store, &top(3), &page(&[5, 4, 3], 5)).await,
        0
    );

    // A plain client adds to the order's sorted set: only the push (for a
    // key read inside MULTI/EXEC) can tell the store.
    redis_cmd(&server, &["ZADD", &key(ORDER), "9", "9"]);
    assert!(
        eventually_pages(&store, &top(3), &page(&[9, 5, 4], 6)).await,
        "the push for the sorted set did not evict the page"
    );
    assert!(store.near_cache_stats().unwrap().invalidations > before.invalidations);
    assert_eq!(
        commands_of(&server, &store, &top(3), &page(&[9, 5, 4], 6)).await,
        0,
        "read again, then held again"
    );

    // Another store (another process) updates the index.
    let other = RedisStore::connect(&server.url()).await.unwrap();
    write(&other, 1, 100.0).await;
    assert!(
        eventually_pages(&store, &top(3), &page(&[1, 9, 5], 6)).await,
        "another store's index write did not evict the page"
    );

    // The warm mark goes: the index is no longer known complete.
    redis_cmd(&server, &["DEL", &key("warm")]);
    assert!(
        eventually_pages(&store, &top(3), &None).await,
        "the push for the warm mark did not evict the page"
    );
}

/// The store's own index writes void its pages before they return. The
/// tracking connection's bytes are held, so that the writes' pushes cannot
/// be what evicts: on a current-thread runtime the page lookup runs before
/// the push reader sees what is released.
#[tokio::test(flavor = "current_thread")]
async fn own_index_writes_void_the_pages_before_they_return() {
    let server = RedisServer::start();
    let proxy = HoldingProxy::start(server.port());
    let store = near_store(&proxy.url(), near()).await;
    seed(&store).await;
    for n in 0..5u32 {
        // Held: read once, then served from the tier.
        let want = query(&store, &top(3)).await;
        assert_eq!(commands_of(&server, &store, &top(3), &want).await, 0);
        assert_eq!(proxy.hold(b"TRACKING"), 1, "the tracking connection");
        let member = n % 5 + 1;
        write(&store, member, 1000.0 + f64::from(n)).await;
        proxy.release();
        let now = query(&store, &top(3)).await.unwrap();
        assert_eq!(
            now.members[0],
            member.to_string(),
            "write {n}: the page from before the write was served"
        );
    }
    // The warm mark deleted by this store.
    let want = query(&store, &top(3)).await;
    assert!(want.is_some());
    assert_eq!(commands_of(&server, &store, &top(3), &want).await, 0);
    assert_eq!(proxy.hold(b"TRACKING"), 1);
    store.delete_many(&[key("warm")]).await.unwrap();
    proxy.release();
    assert_eq!(query(&store, &top(3)).await, None);
}

/// A page read sent before another client's write, whose reply reaches the
/// store together with the write's push: the reply is the page from before
/// the write, and must not be kept.
#[tokio::test(flavor = "current_thread")]
async fn a_page_read_overtaken_by_a_push_is_not_kept() {
    let server = RedisServer::start();
    let proxy = HoldingProxy::start(server.port());
    let store = near_store(&proxy.url(), near()).await;
    seed(&store).await;

    assert_eq!(proxy.hold(b"TRACKING"), 1, "the tracking connection");
    server.reset_stats();
    let reader = tokio::spawn({
        let store = store.clone();
        async move { query(&store, &top(3)).await }
    });
    // The read has run on the server (its reply is held) ...
    let ran = eventually(async || server.data_commands().get("exec") == Some(&1)).await;
    assert!(ran, "the page read never reached the server");
    // ... when another client writes: the push queues behind the reply.
    redis_cmd(&server, &["ZADD", &key(ORDER), "9", "9"]);
    let pushed = eventually(async || proxy.holds(b"invalidate")).await;
    assert!(pushed, "no invalidation push for the page's sorted set");
    proxy.release();
    assert_eq!(
        reader.await.unwrap(),
        page(&[5, 4, 3], 5),
        "the read ran before the write"
    );

    // Not kept: the next read goes to Redis and sees the write.
    server.reset_stats();
    assert_eq!(query(&store, &top(3)).await, page(&[9, 5, 4], 6));
    assert_eq!(
        server.data_commands().get("exec"),
        Some(&1),
        "the overtaken page was kept"
    );
}

#[tokio::test]
async fn a_killed_tracking_connection_flushes_the_pages() {
    let server = RedisServer::start();
    let store = near_store(&server.url(), near()).await;
    seed(&store).await;
    assert_eq!(query(&store, &top(3)).await, page(&[5, 4, 3], 5));
    assert_eq!(
        commands_of(&server, &store, &top(3), &page(&[5, 4, 3], 5)).await,
        0
    );
    let before = store.near_cache_stats().unwrap();

    let id = server.tracking_clients()[0];
    redis_cmd(&server, &["CLIENT", "KILL", "ID", &id.to_string()]);
    // Written after the kill: no push can carry this one.
    redis_cmd(&server, &["ZADD", &key(ORDER), "9", "9"]);
    assert!(
        eventually_pages(&store, &top(3), &page(&[9, 5, 4], 6)).await,
        "the tier kept its page after its tracking connection was lost"
    );
    assert!(store.near_cache_stats().unwrap().flushes > before.flushes);

    // Tracking comes back, and with it kept pages that pushes evict.
    let held = eventually(async || {
        store.near_cache_stats().unwrap().tracking
            && query(&store, &top(3)).await == page(&[9, 5, 4], 6)
            && commands_of(&server, &store, &top(3), &page(&[9, 5, 4], 6)).await == 0
    })
    .await;
    assert!(held, "pages were not kept again once tracking was back");
    redis_cmd(&server, &["ZREM", &key(ORDER), "9"]);
    assert!(
        eventually_pages(&store, &top(3), &page(&[5, 4, 3], 5)).await,
        "the new tracking connection's pushes evict pages"
    );
}

#[tokio::test]
async fn pages_count_toward_the_byte_bound_and_obey_the_max_age() {
    let server = RedisServer::start();
    let max = 4_000;
    let store = near_store(&server.url(), near().max_bytes(max)).await;
    seed(&store).await;
    for offset in 0..200 {
        let mut query = top(2);
        query.offset = offset;
        self::query(&store, &query).await;
        let stats = store.near_cache_stats().unwrap();
        assert!(
            stats.bytes <= max,
            "{} bytes held, bound {max}",
            stats.bytes
        );
    }
    let stats = store.near_cache_stats().unwrap();
    assert!(stats.entries > 0, "pages are kept: {stats:?}");
    assert!(stats.entries < 200, "not every page fits: {stats:?}");

    let max_age = Duration::from_millis(100);
    let store = near_store(&server.url(), NearCache::new().max_age(max_age)).await;
    let want = page(&[5, 4, 3], 5);
    assert_eq!(query(&store, &top(3)).await, want);
    assert_eq!(commands_of(&server, &store, &top(3), &want).await, 0);
    // Past the max age by more than any clock tick, with no push.
    tokio::time::sleep(max_age + Duration::from_millis(100)).await;
    assert_eq!(
        commands_of(&server, &store, &top(3), &want).await,
        5,
        "an expired page is read from Redis"
    );
    assert_eq!(commands_of(&server, &store, &top(3), &want).await, 0);
}
