//! The round-trip budgets, measured on a real Redis server (started by the
//! test): the server itself counts every command, so nothing the client
//! batches or retries hides. `INFO commandstats` counts the commands Lua
//! scripts run too (a script's GET is a `get`), so the commands clients sent
//! are told apart with MONITOR, and checked against commandstats.
//!
//! - a hit is exactly one command (GET) and no loader call;
//! - N cold misses of one model are one loader call and three round trips:
//!   MGET, a pipeline of N `SET NX GET` to lease, EVALSHA to fill; two
//!   (no MGET) while the model's batch reads keep missing;
//! - a write whose cascade has k targets at one depth costs the same number
//!   of commands for k = 2 and k = 50.

use std::collections::BTreeMap;

use cached_instances::{Cache, RedisStore};
use cached_instances_testkit::memdb::{MemDb, date};
use cached_instances_testkit::redis_server::{Monitor, RedisServer, parse_command_stats};
use polls::{Choice, Question, User};

struct Setup {
    server: RedisServer,
    monitor: Monitor,
    db: MemDb,
    cache: Cache,
}

impl Setup {
    async fn new() -> Setup {
        let server = RedisServer::start();
        let store = RedisStore::connect(&server.url()).await.unwrap();
        let db = MemDb::seeded();
        let cache = Cache::builder()
            .store(store)
            .loader::<User>(db.clone())
            .loader::<Question>(db.clone())
            .loader::<Choice>(db.clone())
            .build()
            .unwrap();
        let monitor = server.monitor();
        Setup {
            server,
            monitor,
            db,
            cache,
        }
    }

    /// Starts a measurement: zeroes the server's stats and the loader log,
    /// once the fills sent before it were answered.
    async fn reset(&self) {
        self.cache.settle().await;
        self.server.reset_stats();
        self.monitor.reset();
        self.db.clear_loads();
    }

    /// The commands the cache sent since [`reset`](Self::reset), one per
    /// round trip, its fills' included (a read does not wait for its fill's
    /// reply: `settle` does).
    async fn commands(&self) -> BTreeMap<String, u64> {
        self.cache.settle().await;
        let client = self.monitor.client_commands();
        let mut all = client.clone();
        for (command, n) in self.monitor.script_commands() {
            *all.entry(command).or_insert(0) += n;
        }
        let mut stats = self.server.data_commands();
        stats.remove("echo"); // the monitor's markers
        assert_eq!(
            stats, all,
            "INFO commandstats = commands sent + commands scripts ran"
        );
        client
    }

    /// The commands the store's scripts ran since the reset.
    fn script_commands(&self) -> BTreeMap<String, u64> {
        self.monitor.script_commands()
    }
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect()
}

#[test]
fn commandstats_are_parsed() {
    let info = "# Commandstats\r\n\
        cmdstat_get:calls=3,usec=10,usec_per_call=3.33,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_config|resetstat:calls=1,usec=5,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n";
    let stats = parse_command_stats(info);
    assert_eq!(stats, counts(&[("get", 3), ("config|resetstat", 1)]));
}

#[tokio::test]
async fn a_hit_is_one_get_and_no_loader_call() {
    let s = Setup::new().await;
    let warm = s.cache.get::<Question>(&1).await.unwrap().unwrap();

    s.reset().await;
    let hit = s.cache.get::<Question>(&1).await.unwrap().unwrap();
    assert_eq!(hit, warm);
    assert_eq!(
        s.commands().await,
        counts(&[("get", 1)]),
        "a hit is one GET"
    );
    assert!(s.db.loads().is_empty(), "a hit loads nothing");

    s.reset().await;
    let json = s.cache.get_json::<Question>(&1).await.unwrap().unwrap();
    assert_eq!(json.first(), Some(&b'{'));
    assert_eq!(
        s.commands().await,
        counts(&[("get", 1)]),
        "a JSON hit is one GET"
    );
    assert!(s.db.loads().is_empty());

    s.reset().await;
    let many = s.cache.get_many::<Question>(&[1, 1]).await.unwrap();
    assert_eq!(many, [warm.clone(), warm]);
    assert_eq!(
        s.commands().await,
        counts(&[("mget", 1)]),
        "a list hit is one MGET"
    );
    assert!(s.db.loads().is_empty());
}

/// `n` cold misses through `get_many`, checked against the budget.
async fn cold_get_many(s: &Setup, first_pk: i64, n: i64) {
    let pks: Vec<i64> = (first_pk..first_pk + n).collect();
    s.db.write(|t| {
        for &id in &pks {
            t.users.insert(id, format!("user{id}"));
        }
    });
    // Asked in reverse order, with a pk that has no row.
    let mut asked: Vec<i64> = pks.iter().rev().copied().collect();
    asked.push(first_pk + n + 1_000_000);

    s.reset().await;
    let users = s.cache.get_many::<User>(&asked).await.unwrap();
    let commands = s.commands().await;
    // Three round trips: MGET; the lease, one `MSETNX` of every key, since
    // the MGET found them all absent (it was one `SET NX GET` per key in
    // one pipeline, and before that a script); the fill, one script that
    // reads every key with one MGET and sets each. Every command the
    // server ran, the scripts' included: 4 + m (it was 3 + 2m with the
    // pipeline, 2 + 3m with a GET per key in the fill, and 3 + 4m with a
    // lease script).
    let m = asked.len() as u64;
    assert_eq!(
        commands,
        counts(&[("mget", 1), ("msetnx", 1), ("evalsha", 1)]),
        "{n} cold misses: MGET, one MSETNX, fill"
    );
    assert_eq!(
        s.script_commands(),
        counts(&[("mget", 1), ("set", m)]),
        "the fill script: one MGET, and one SET per key"
    );
    let loads = s.db.loads();
    assert_eq!(
        loads.len(),
        1,
        "{n} cold misses, one loader call: {loads:?}"
    );
    assert_eq!(loads[0].1, asked, "every miss in the one call");
    let expected: Vec<User> = pks.iter().rev().map(|&id| s.db.user(id).unwrap()).collect();
    assert_eq!(users, expected, "request order, the missing row omitted");

    // Warm now, but the model's last batch read was all absent and leased
    // at once, so the next one starts with that (`cold.rs`): an `MSETNX`
    // that sets nothing (the keys hold entries), then the per-key lease,
    // one pipeline of `SET NX GET`, which finds every entry and writes
    // nothing, and no load. The guess cost one round trip.
    let warm = &asked[..asked.len() - 1];
    s.reset().await;
    assert_eq!(s.cache.get_many::<User>(warm).await.unwrap(), expected);
    let lease_first = if warm.len() > 1 {
        counts(&[("msetnx", 1), ("set", warm.len() as u64)])
    } else {
        // A single pk is not a batch: it never leases first.
        counts(&[("mget", 1)])
    };
    assert_eq!(
        s.commands().await,
        lease_first,
        "a lease-first read of entries: MSETNX, one pipeline, no fill"
    );
    assert!(s.db.loads().is_empty());
    // That read hit: the next is one MGET and no load.
    s.reset().await;
    assert_eq!(s.cache.get_many::<User>(warm).await.unwrap(), expected);
    assert_eq!(s.commands().await, counts(&[("mget", 1)]));
    assert!(s.db.loads().is_empty());
}

#[tokio::test]
async fn cold_misses_are_one_load_and_three_round_trips() {
    // A cache each: a model whose batch reads were all hits so far.
    for (first_pk, n) in [(1_000, 1), (2_000, 10), (3_000, 100)] {
        cold_get_many(&Setup::new().await, first_pk, n).await;
    }
}

/// While a model's batch reads find every key absent, a batch read takes
/// its leases without the multi-get first: cold misses are two round
/// trips, one `MSETNX` and the fill. A batch that guessed wrong (some keys
/// hold something) is leased key by key after it, one round trip more, and
/// whatever that lease finds (an entry, another reader's lease, a
/// tombstone) is served as after a multi-get.
#[tokio::test]
async fn cold_misses_after_cold_misses_are_two_round_trips() {
    let s = Setup::new().await;
    s.db.write(|t| {
        for id in 5_000..5_030 {
            t.users.insert(id, format!("user{id}"));
        }
    });
    let first: Vec<i64> = (5_000..5_010).collect();
    s.cache.get_many::<User>(&first).await.unwrap();

    // All absent again: the lease is the first command, and the only one
    // before the fill.
    let cold: Vec<i64> = (5_020..5_030).collect();
    s.reset().await;
    let found = s.cache.get_many::<User>(&cold).await.unwrap();
    assert_eq!(found.len(), cold.len());
    assert_eq!(
        s.commands().await,
        counts(&[("msetnx", 1), ("evalsha", 1)]),
        "lease first (one MSETNX), fill (a script): no MGET"
    );
    assert_eq!(s.db.loads(), [("User", cold.clone())]);
    s.db.clear_loads();

    // Ten keys: four entries, four absent, two tombstones (an entry
    // removed, its row still there: read again from the database).
    let asked: Vec<i64> = (5_000..5_004).chain(5_010..5_016).collect();
    for id in [5_014, 5_015] {
        s.cache.get::<User>(&id).await.unwrap();
        s.cache
            .deleted::<User>(&s.db.user(id).unwrap())
            .await
            .unwrap();
    }
    // Still guessed all absent: the last batch read was.
    s.reset().await;
    let stats = s.cache.stats();
    let found = s.cache.get_many::<User>(&asked).await.unwrap();
    let expected: Vec<User> = asked.iter().map(|&id| s.db.user(id).unwrap()).collect();
    assert_eq!(found, expected, "entries, loaded rows and rewritten rows");
    let m = asked.len() as u64;
    assert_eq!(
        s.commands().await,
        counts(&[("msetnx", 1), ("set", m), ("evalsha", 2)]),
        "an MSETNX that sets nothing, the per-key lease (one pipeline), \
         replace the tombstones (a script), fill (a script): no MGET"
    );
    assert_eq!(
        s.script_commands(),
        // The lease script: a GET and a SET per tombstone; the fill: one
        // MGET and a SET per loaded key.
        counts(&[("get", 2), ("set", 2 + 6), ("mget", 1)])
    );
    let loads = s.db.loads();
    assert_eq!(loads.len(), 1, "one loader call: {loads:?}");
    assert_eq!(loads[0].1, asked[4..].to_vec());
    let after = s.cache.stats();
    assert_eq!(after.hits - stats.hits, 4, "the entries the lease found");
    assert_eq!(after.misses - stats.misses, 6);

    // That read mostly missed (6 of 10), not all at once: the next one
    // leases key by key first, and hits everything, so the one after is a
    // multi-get.
    s.reset().await;
    assert_eq!(s.cache.get_many::<User>(&asked).await.unwrap(), expected);
    assert_eq!(s.commands().await, counts(&[("set", m)]), "lease first");
    s.reset().await;
    assert_eq!(s.cache.get_many::<User>(&asked).await.unwrap(), expected);
    assert_eq!(s.commands().await, counts(&[("mget", 1)]), "warm again");
    assert!(s.db.loads().is_empty());
}

#[tokio::test]
async fn a_cold_get_is_one_load_and_at_most_three_commands() {
    let s = Setup::new().await;
    s.reset().await;
    let q = s.cache.get::<Question>(&2).await.unwrap();
    assert_eq!(q, s.db.question(2));
    let commands = s.commands().await;
    assert!(
        commands.values().sum::<u64>() <= 3,
        "a cold get: {commands:?}"
    );
    assert_eq!(s.db.load_count("Question"), 1);
}

/// What one write cost.
struct WriteCost {
    /// Commands sent (round trips).
    commands: BTreeMap<String, u64>,
    /// Commands the scripts ran inside them (the per-key work).
    script_commands: BTreeMap<String, u64>,
    /// Loader calls: (model, how many pks).
    loads: Vec<(&'static str, usize)>,
}

/// Deletes a choice with `k` voters whose entries are all cached, and
/// checks that the cascade left every target fresh.
async fn delete_choice_with_voters(k: i64) -> WriteCost {
    let s = Setup::new().await;
    let voters: Vec<i64> = (1_000..1_000 + k).collect();
    s.db.write(|t| {
        t.questions.insert(50, ("Pick one".into(), date(3)));
        t.choices.insert(500, (50, "This one".into()));
        t.choices.insert(501, (50, "That one".into()));
        for &id in &voters {
            t.users.insert(id, format!("voter{id}"));
            t.votes.insert((id, 500));
            t.votes.insert((id, 501));
        }
    });
    // Everything involved is cached.
    s.cache.get::<Question>(&50).await.unwrap().unwrap();
    s.cache.get_many::<Choice>(&[500, 501]).await.unwrap();
    let users = s.cache.get_many::<User>(&voters).await.unwrap();
    assert!(users.iter().all(|u| u.votes == [500, 501]));
    // That read missed: read again (all hits), so that the next batch
    // read is a multi-get again (`cold.rs`).
    assert_eq!(s.cache.get_many::<User>(&voters).await.unwrap(), users);

    let choice = s.db.choice(500).unwrap();
    assert_eq!(choice.voters, voters);
    s.db.write(|t| {
        t.choices.remove(&500);
        t.votes.retain(|&(_, c)| c != 500);
    });
    s.reset().await;
    s.cache.deleted::<Choice>(&choice).await.unwrap();
    let commands = s.commands().await;
    let script_commands = s.script_commands();
    let loads =
        s.db.loads()
            .into_iter()
            .map(|(model, pks)| (model, pks.len()))
            .collect();

    // The cascade refreshed every voter and the question: all hits now,
    // showing the change.
    s.reset().await;
    let users = s.cache.get_many::<User>(&voters).await.unwrap();
    assert!(users.iter().all(|u| u.votes == [501]), "{users:?}");
    let question = s.cache.get::<Question>(&50).await.unwrap().unwrap();
    assert_eq!(question.choices, [501]);
    assert!(
        s.db.loads().is_empty(),
        "the cascade refilled what it touched"
    );
    assert_eq!(s.commands().await, counts(&[("get", 1), ("mget", 1)]));
    assert_eq!(s.cache.get::<Choice>(&500).await.unwrap(), None);

    WriteCost {
        commands,
        script_commands,
        loads,
    }
}

#[tokio::test]
async fn a_cascade_costs_the_same_for_2_and_50_targets_at_one_depth() {
    let small = delete_choice_with_voters(2).await;
    let large = delete_choice_with_voters(50).await;

    // Depth 0 is the choice itself; depth 1 is the question and every voter,
    // leased in one call, reloaded with one loader call per model and filled
    // in one call. Nothing changes at depth 2 (the choice is visited).
    assert_eq!(
        small.commands, large.commands,
        "O(1) commands per depth, not O(k)"
    );
    let sent: u64 = large.commands.values().sum();
    assert_eq!(
        large.commands.keys().collect::<Vec<_>>(),
        ["evalsha"],
        "scripts only: {:?}",
        large.commands
    );
    assert!(sent <= 2 * 2, "at most two calls per depth: {sent}");

    // The per-key work did grow with k, inside those calls: every target
    // was written by a script twice (swapped to the write's lease, then
    // filled).
    let sets = |cost: &WriteCost| cost.script_commands.get("set").copied().unwrap_or(0);
    assert!(
        sets(&large) >= sets(&small) + 2 * 48,
        "{:?} vs {:?}",
        small.script_commands,
        large.script_commands
    );

    let models = |cost: &WriteCost| {
        let mut models: Vec<_> = cost.loads.iter().map(|(m, _)| *m).collect();
        models.sort_unstable();
        models
    };
    assert_eq!(models(&small), ["Question", "User"], "one load per model");
    assert_eq!(models(&large), models(&small));
    assert!(large.loads.contains(&("User", 50)), "{:?}", large.loads);
}
