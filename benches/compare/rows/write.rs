//! The `write` rows (`--only write`).

use std::future::Future;
use std::time::Instant;

use cached_instances::{Cache, RedisStore};
use cached_instances_testkit::store::{Calls, Counting};
use polls::db::ChoiceChanges;
use polls::telemetry::StatementCounter;
use polls::{Choice, Question, User};

use crate::setup::Env;
use crate::stats::{fmt_lat, lat, us};
use crate::table::Row;

/// A write with a cascade: a Choice moved between two Questions, and a vote
/// (the Choice and the User).
pub(crate) async fn write_rows(env: &Env, rows: &mut Vec<Row>) {
    let cfg = &env.cfg;
    let store = Counting::new(RedisStore::connect(&env.redis_url).await.expect("redis"));
    let calls: Calls = (*store).clone();
    let cache = Cache::builder()
        .store(store)
        .loader::<User>(env.loader.clone())
        .loader::<Question>(env.loader.clone())
        .loader::<Choice>(env.loader.clone())
        .build()
        .expect("cache");
    // Questions 10 and 11; the first choice of question 10, with its voters.
    let (a, b) = (10, 11);
    let q = cache.get::<Question>(&a).await.expect("read").expect("row");
    let choice_id = q.choices[0];
    let voters = warm(&cache, choice_id, [a, b]).await.voters.len();

    struct Sample {
        ns: u64,
        round_trips: u64,
        loader_calls: u64,
        db_queries: u64,
        invalidations: u64,
    }
    let sql = &env.statements;
    async fn measure(
        cache: &Cache,
        statements: &StatementCounter,
        calls: &Calls,
        write: impl Future<Output = Result<(), cached_instances::Error>>,
    ) -> Sample {
        let (s0, c0, q0) = (cache.stats(), calls.calls(), statements.total());
        let started = Instant::now();
        write.await.expect("write");
        let ns = started.elapsed().as_nanos() as u64;
        let s1 = cache.stats();
        Sample {
            ns,
            round_trips: calls.calls() - c0,
            loader_calls: s1.loader_calls - s0.loader_calls,
            db_queries: statements.total() - q0,
            invalidations: s1.invalidations - s0.invalidations,
        }
    }
    let summarize = |samples: Vec<Sample>| {
        let first = (
            samples[0].round_trips,
            samples[0].loader_calls,
            samples[0].db_queries,
            samples[0].invalidations,
        );
        let same = samples
            .iter()
            .all(|s| (s.round_trips, s.loader_calls, s.db_queries, s.invalidations) == first);
        let l = lat(samples.iter().map(|s| s.ns).collect());
        (l, first, same)
    };

    let mut moves = Vec::new();
    let mut db_write = Vec::new();
    for it in 0..cfg.iterations + 2 {
        let (from, to) = if it % 2 == 0 { (a, b) } else { (b, a) };
        let started = Instant::now();
        let (previous, new) = env
            .db
            .update_choice(
                choice_id,
                ChoiceChanges {
                    question_id: Some(to),
                    choice_text: None,
                },
            )
            .await
            .expect("update");
        let db_ns = started.elapsed().as_nanos() as u64;
        assert_eq!(previous.question_id, from);
        let s = measure(&cache, sql, &calls, cache.saved_from(&previous, &new)).await;
        // Every entry involved is cached again before the next write.
        warm(&cache, choice_id, [a, b]).await;
        if it >= 2 {
            moves.push(s);
            db_write.push(db_ns);
        }
    }
    let (l, (rt, lc, dq, inv), same) = summarize(moves);
    let db_l = lat(db_write);
    rows.push(Row {
        key: "write_move",
        what: format!(
            "Write with cascade: a Choice ({voters} voters) moved to another Question, `saved_from` after the commit"
        ),
        ours: format!(
            "{}; {rt} round trips, {lc} loader calls ({dq} DB queries), {inv} instances invalidated{}",
            fmt_lat(l),
            if same { "" } else { " (varied)" }
        ),
        base: format!("the DB transaction itself: p50 {}", us(db_l.p50)),
        ratio: "—".into(),
        metric: Some(l.p50 / 1000.0),
        target: "reported".into(),
        met: None,
    });

    // A vote: the Choice's voters and the User's votes change. A user who
    // has not voted for it, so every other iteration adds the vote.
    let voters_now = warm(&cache, choice_id, [a, b]).await.voters;
    let user = (1..=(cfg.questions / 4).max(50))
        .rev()
        .find(|u| !voters_now.contains(u))
        .expect("a user who did not vote");
    let mut votes = Vec::new();
    for it in 0..cfg.iterations + 2 {
        let voted = it % 2 == 0;
        let (previous, new) = env.db.set_vote(choice_id, user, voted).await.expect("vote");
        let s = measure(&cache, sql, &calls, cache.saved_from(&previous, &new)).await;
        warm(&cache, choice_id, [a, b]).await;
        cache.get::<User>(&user).await.expect("read");
        if it >= 2 {
            votes.push(s);
        }
    }
    let (l, (rt, lc, dq, inv), same) = summarize(votes);
    rows.push(Row {
        key: "write_vote",
        what: "Write with cascade: a vote cast or withdrawn (the Choice and the User)".into(),
        ours: format!(
            "{}; {rt} round trips, {lc} loader calls ({dq} DB queries), {inv} instances invalidated{}",
            fmt_lat(l),
            if same { "" } else { " (varied)" }
        ),
        base: "—".into(),
        ratio: "—".into(),
        metric: Some(l.p50 / 1000.0),
        target: "reported".into(),
        met: None,
    });
}

/// Caches the choice, both questions and the choice's voters again, so that
/// a write finds every entry it involves cached.
async fn warm(cache: &Cache, choice_id: i64, question_ids: [i64; 2]) -> Choice {
    let choice = cache
        .get::<Choice>(&choice_id)
        .await
        .expect("read")
        .expect("row");
    cache
        .get_many::<Question>(&question_ids)
        .await
        .expect("read");
    cache.get_many::<User>(&choice.voters).await.expect("read");
    choice
}
