//! Setup: the data set in a schema of its own, the Redis server, the caches.

use bytes::Bytes;
use cached_instances::sqlx::SqlxLoader;
use cached_instances::{Cache, CachedInstance, Loader, NearCache, RedisStore};
use cached_instances_testkit::redis_server::RedisServer;
use polls::db::{Db, Pool};
use polls::telemetry::StatementCounter;
use polls::{Choice, Question, User};
use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::Config;
use crate::machine::redact;

pub(crate) struct Env {
    pub(crate) cfg: Config,
    pub(crate) redis_url: String,
    pub(crate) redis: RedisServer,
    /// The polls database handle: the polls API.
    pub(crate) db: Db,
    /// The loader the models derive over `db`'s pool, as the polls app
    /// has it: the caches' loaders, and the cold rows' baseline.
    pub(crate) loader: SqlxLoader<Postgres>,
    /// The baselines' pool (and ours' pk queries).
    pub(crate) pool: PgPool,
    /// A RedisStore handle sharing nothing with the caches, for clearing keys.
    pub(crate) store: RedisStore,
    /// The cache over Redis (loaders: `loader`).
    pub(crate) cache: Cache,
    /// The id of the 500-byte question.
    pub(crate) big: i64,
    pub(crate) json_size: f64,
    /// The SQL statements the process ran (counted from sqlx's events).
    pub(crate) statements: StatementCounter,
}

/// Drops benchmark schemas left by runs that died (their process is gone).
pub(crate) async fn drop_stale_schemas(pool: &PgPool) -> Result<(), sqlx::Error> {
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'bench\\_compare\\_%'",
    )
    .fetch_all(pool)
    .await?;
    for schema in schemas {
        let pid = schema.rsplit('_').next().unwrap_or("");
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE"
            )))
            .execute(pool)
            .await?;
            println!("dropped stale schema {schema}");
        }
    }
    Ok(())
}

pub(crate) async fn seed(pool: &PgPool, n: i64) -> Result<(), sqlx::Error> {
    let users = (n / 4).max(50);
    let script = format!(
        "
INSERT INTO users (username) SELECT 'user_' || lpad(g::text, 6, '0') FROM generate_series(1, {users}) g;
INSERT INTO questions (question_text, pub_date)
  SELECT 'Question ' || g || ': ' || repeat('which of these do you prefer? ', 4),
         date_trunc('second', now()) - make_interval(mins => g)
  FROM generate_series(1, {n}) g ORDER BY g;
INSERT INTO choices (question_id, choice_text)
  SELECT q, 'Choice ' || c || ' of question ' || q
  FROM generate_series(1, {n}) q CROSS JOIN generate_series(1, 4) c ORDER BY q, c;
INSERT INTO votes (user_id, choice_id)
  SELECT DISTINCT 1 + ((c * 7 + k * 131) % {users}), c
  FROM generate_series(1, {choices}) c CROSS JOIN generate_series(1, 3) k;
",
        choices = 4 * n
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(script))
        .execute(pool)
        .await?;
    // As autovacuum would leave the tables: statistics and a visibility map
    // (index-only scans). VACUUM cannot run in the script's transaction.
    sqlx::raw_sql("VACUUM ANALYZE users, questions, choices, votes")
        .execute(pool)
        .await?;
    Ok(())
}

/// Adds a question whose representation is exactly `size` bytes; returns its
/// id.
pub(crate) async fn add_sized_question(pool: &PgPool, db: &Db, size: usize) -> Result<i64, String> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO questions (question_text, pub_date)
         VALUES (repeat('x', 400), date_trunc('second', now()) - interval '30 days') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| e.to_string())?;
    sqlx::query(
        "INSERT INTO choices (question_id, choice_text) SELECT $1, 'Choice ' || c FROM generate_series(1, 4) c",
    )
    .bind(id)
    .execute(pool)
    .await
    .map_err(|e| e.to_string())?;
    let len = representation_len(db, id).await?;
    let text = 400 + size as i64 - len as i64;
    sqlx::query("UPDATE questions SET question_text = repeat('x', $2::int) WHERE id = $1")
        .bind(id)
        .bind(text as i32)
        .execute(pool)
        .await
        .map_err(|e| e.to_string())?;
    let len = representation_len(db, id).await?;
    if len != size {
        return Err(format!("the sized question is {len} bytes, not {size}"));
    }
    Ok(id)
}

pub(crate) async fn setup(cfg: Config, database_url: &str) -> Result<Env, String> {
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let version: String = {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut redis.connection())
            .map_err(|e| e.to_string())?;
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_owned()
    };
    println!(
        "started: redis-server {version} on 127.0.0.1:{} (its own, stopped at exit)",
        redis.port()
    );

    let schema = format!("bench_compare_{}", std::process::id());
    let options: PgConnectOptions = database_url
        .parse()
        .map_err(|e| format!("DATABASE_URL: {e}"))?;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await
        .map_err(|e| {
            format!(
                "cannot connect to PostgreSQL at {}: {e}",
                redact(database_url)
            )
        })?;
    let pg_version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&admin)
        .await
        .map_err(|e| e.to_string())?;
    drop_stale_schemas(&admin)
        .await
        .map_err(|e| e.to_string())?;
    admin.close().await;
    println!(
        "using: PostgreSQL {pg_version} at {}, schema {schema} (dropped at exit)",
        redact(database_url)
    );

    let db = Db::postgres(database_url, &schema)
        .await
        .map_err(|e| e.to_string())?;
    db.migrate().await.map_err(|e| e.to_string())?;
    let pool = PgPoolOptions::new()
        .max_connections(cfg.pool)
        .min_connections(cfg.pool)
        .connect_with(options.options([("search_path", schema.as_str())]))
        .await
        .map_err(|e| e.to_string())?;
    seed(&pool, cfg.questions)
        .await
        .map_err(|e| format!("seeding: {e}"))?;
    let big = add_sized_question(&pool, &db, 500).await?;

    let store = RedisStore::connect(&redis_url)
        .await
        .map_err(|e| e.to_string())?;
    let Pool::Postgres(db_pool) = db.pool() else {
        unreachable!("the bench's Db is PostgreSQL")
    };
    let loader = SqlxLoader::new(db_pool.clone());
    let cache = Cache::builder()
        .store(
            RedisStore::connect(&redis_url)
                .await
                .map_err(|e| e.to_string())?,
        )
        .loader::<User>(loader.clone())
        .loader::<Question>(loader.clone())
        .loader::<Choice>(loader.clone())
        .build()
        .map_err(|e| e.to_string())?;
    // The hot set, cached.
    let hot: Vec<i64> = (1..=cfg.hot).collect();
    let mut bytes = 0usize;
    for chunk in hot.chunks(500) {
        let rows = cache
            .get_many_json::<Question>(chunk)
            .await
            .map_err(|e| e.to_string())?;
        bytes += rows.iter().map(Bytes::len).sum::<usize>();
    }
    let json_size = bytes as f64 / hot.len() as f64;
    println!(
        "data: {} questions (4 choices each, ~3 votes per choice), {} users; hot set: questions 1..={} cached, {json_size:.0} B of JSON each on average; question {big} is 500 B",
        cfg.questions,
        (cfg.questions / 4).max(50),
        cfg.hot
    );
    Ok(Env {
        statements: polls::telemetry::init(tracing::level_filters::LevelFilter::WARN)
            .unwrap_or_default(),
        cfg,
        redis_url,
        redis,
        db,
        loader,
        pool,
        store,
        cache,
        big,
        json_size,
    })
}

impl Env {
    /// A cache over the same Redis, under its own key prefix, with
    /// `Question` warmed: its `pub_date` index holds every question, so
    /// lists in that order are one index query and one multi-get. Apart
    /// from [`cache`](Env::cache) so that no other row pays for the index.
    ///
    /// `near`: with a near cache in front of Redis (and a key prefix of its
    /// own), as a deployment that wants lists at in-process speed has it.
    pub(crate) async fn indexed_cache(&self, near: bool) -> Cache {
        let builder = RedisStore::builder(self.redis_url.as_str());
        let builder = if near {
            builder
                .key_prefix("indexed-near:")
                .near_cache(NearCache::new())
        } else {
            builder.key_prefix("indexed:")
        };
        let store = builder.connect().await.expect("redis");
        // The loaders the models derive, as the polls app has them: they
        // list every pk for `warm`.
        let Pool::Postgres(pool) = self.db.pool() else {
            unreachable!("the bench's Db is PostgreSQL")
        };
        let cache = Cache::builder()
            .store(store)
            .loader::<User>(SqlxLoader::new(pool.clone()))
            .loader::<Question>(SqlxLoader::new(pool.clone()))
            .loader::<Choice>(SqlxLoader::new(pool.clone()))
            .build()
            .expect("cache");
        let warmed = cache.warm::<Question>().await.expect("warm");
        assert_eq!(warmed.indexed as i64, self.cfg.questions + 1, "{warmed:?}");
        cache
    }

    pub(crate) fn hot(&self) -> Vec<i64> {
        (1..=self.cfg.hot).collect()
    }

    pub(crate) fn keys(&self, pks: &[i64]) -> Vec<String> {
        pks.iter()
            .map(|pk| self.cache.key_of::<Question>(pk).expect("registered"))
            .collect()
    }

    pub(crate) async fn teardown(self) {
        if let Err(e) = self.db.drop_schema().await {
            eprintln!("could not drop the schema: {e}");
        }
        self.db.close().await;
        self.pool.close().await;
        drop(self.redis);
    }
}

/// The length of question `id`'s cached representation, as loaded now.
async fn representation_len(db: &Db, id: i64) -> Result<usize, String> {
    let rows = Loader::<Question>::load(db, &[id])
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows[0].to_json().map_err(|e| e.to_string())?.len())
}
