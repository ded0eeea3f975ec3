//! The loaders `#[cached(table = "...")]` derives, on real databases: SQLite
//! in memory, the PostgreSQL server at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), where each test creates its
//! tables in a schema of its own and drops it afterwards, and the MySQL or
//! MariaDB server at `MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`),
//! where each test creates a database of its own. The PostgreSQL and MySQL
//! tests fail, saying so, when the server cannot be reached.
//!
//! Queries are counted where they reach the database, not where the loader
//! issues them:
//!
//! - SQLite: a `sqlite3_trace_v2` hook on the pool's only connection, which
//!   SQLite calls each time a statement starts running;
//! - PostgreSQL: the pool connects through a TCP proxy that forwards the
//!   wire protocol and counts the client's Execute (extended protocol) and
//!   Query (simple protocol) messages, one per statement run, keeping each
//!   statement's text (from its Parse message) for the failure messages;
//! - MySQL: the same kind of proxy, counting COM_QUERY and
//!   COM_STMT_EXECUTE packets (the text from the COM_STMT_PREPARE whose
//!   statement id the server returned).

use cached_instances::sqlx::{SqlxDatabase, SqlxLoader, SqlxModel};
use cached_instances::{Cache, CachedInstance};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use polls::db::{POSTGRES_SCHEMA, SQLITE_SCHEMA};
use polls::{Choice, Question, User};
use serde::{Deserialize, Serialize};
use sqlx::Pool;
use sqlx::mysql::MySqlPool;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use sqlx::types::Json;
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Counting statements

use cached_instances_testkit::databases;
use databases::{Statements, counted, sqlite, with_mysql, with_postgres};

// ---------------------------------------------------------------------------
// The polls models (examples/polls/models.rs), on the example's own tables
// (`polls::db::SQLITE_SCHEMA`, `POSTGRES_SCHEMA`); the example has no MySQL
// backend, so its tables are written here.

const MYSQL_POLLS: &str = "
CREATE TABLE users (id BIGINT AUTO_INCREMENT PRIMARY KEY, username VARCHAR(150) NOT NULL UNIQUE);
CREATE TABLE questions (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    question_text TEXT NOT NULL,
    pub_date DATETIME(6) NOT NULL
);
CREATE TABLE choices (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    question_id BIGINT NOT NULL,
    choice_text TEXT NOT NULL,
    FOREIGN KEY (question_id) REFERENCES questions (id) ON DELETE CASCADE
);
CREATE TABLE votes (
    user_id BIGINT NOT NULL,
    choice_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, choice_id),
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE,
    FOREIGN KEY (choice_id) REFERENCES choices (id) ON DELETE CASCADE
);
";

/// Rows inserted out of pk order, so that only `ORDER BY` sorts the lists.
const POLLS_ROWS: &str = "
INSERT INTO users (id, username) VALUES (3, 'cy'), (1, 'ann'), (2, 'bob');
INSERT INTO choices (id, question_id, choice_text) VALUES
    (6, 3, 'Spaces'), (5, 3, 'Tabs'), (4, 2, 'Coffee'), (3, 2, 'Tea'),
    (7, 1, 'Late addition'), (2, 1, 'The sky'), (1, 1, 'Not much');
INSERT INTO votes (user_id, choice_id) VALUES (3, 3), (1, 5), (2, 3), (3, 1), (1, 1);
";

/// `choices` references `questions`, inserted first with bound dates.
const INSERT_QUESTION: &str =
    "INSERT INTO questions (id, question_text, pub_date) VALUES ($1, $2, $3)";

fn pub_date(id: i64) -> DateTime<Utc> {
    // Microseconds: PostgreSQL's precision.
    Utc.with_ymd_and_hms(2024, 2, 20 + id as u32, 23, 59, 59)
        .unwrap()
        + chrono::TimeDelta::microseconds(123_456 + id)
}

fn questions() -> Vec<Question> {
    [
        (1, "What's up?", vec![1, 2, 7]),
        (2, "Tea or coffee?", vec![3, 4]),
        (3, "Tabs or spaces?", vec![5, 6]),
        (4, "No choices yet", vec![]),
    ]
    .into_iter()
    .map(|(id, text, choices)| Question {
        id,
        question_text: text.to_owned(),
        pub_date: pub_date(id),
        choices,
    })
    .collect()
}

fn choices() -> Vec<Choice> {
    [
        (1, 1, "Not much", vec![1, 3]),
        (2, 1, "The sky", vec![]),
        (3, 2, "Tea", vec![2, 3]),
        (4, 2, "Coffee", vec![]),
        (5, 3, "Tabs", vec![1]),
        (6, 3, "Spaces", vec![]),
        (7, 1, "Late addition", vec![]),
    ]
    .into_iter()
    .map(|(id, question_id, text, voters)| Choice {
        id,
        question_id,
        choice_text: text.to_owned(),
        voters,
    })
    .collect()
}

fn users() -> Vec<User> {
    [
        (1, "ann", vec![1, 5]),
        (2, "bob", vec![3]),
        (3, "cy", vec![1, 3]),
    ]
    .into_iter()
    .map(|(id, name, votes)| User {
        id,
        username: name.to_owned(),
        votes,
    })
    .collect()
}

async fn sqlite_polls() -> (SqlitePool, &'static Statements) {
    let (pool, statements) = sqlite().await;
    sqlx::raw_sql(SQLITE_SCHEMA).execute(&pool).await.unwrap();
    for q in questions() {
        sqlx::query(INSERT_QUESTION)
            .bind(q.id)
            .bind(&q.question_text)
            .bind(q.pub_date)
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::raw_sql(POLLS_ROWS).execute(&pool).await.unwrap();
    (pool, statements)
}

async fn postgres_polls(pool: &PgPool) {
    sqlx::raw_sql(POSTGRES_SCHEMA).execute(pool).await.unwrap();
    for q in questions() {
        sqlx::query(INSERT_QUESTION)
            .bind(q.id)
            .bind(&q.question_text)
            .bind(q.pub_date)
            .execute(pool)
            .await
            .unwrap();
    }
    sqlx::raw_sql(POLLS_ROWS).execute(pool).await.unwrap();
}

async fn mysql_polls(pool: &MySqlPool) {
    sqlx::raw_sql(MYSQL_POLLS).execute(pool).await.unwrap();
    for q in questions() {
        sqlx::query("INSERT INTO questions (id, question_text, pub_date) VALUES (?, ?, ?)")
            .bind(q.id)
            .bind(&q.question_text)
            .bind(q.pub_date)
            .execute(pool)
            .await
            .unwrap();
    }
    sqlx::raw_sql(POLLS_ROWS).execute(pool).await.unwrap();
}

fn polls_cache<DB: SqlxDatabase>(pool: &Pool<DB>) -> Cache
where
    User: SqlxModel<DB>,
    Question: SqlxModel<DB>,
    Choice: SqlxModel<DB>,
{
    Cache::builder()
        .loader::<User>(SqlxLoader::new(pool.clone()))
        .loader::<Question>(SqlxLoader::new(pool.clone()))
        .loader::<Choice>(SqlxLoader::new(pool.clone()))
        .build()
        .unwrap()
}

fn by_id<T: CachedInstance<Pk = i64> + Clone>(all: &[T], ids: &[i64]) -> Vec<T> {
    ids.iter()
        .filter_map(|id| all.iter().find(|x| x.pk() == id).cloned())
        .collect()
}

/// The polls models through the cache: a miss of N pks is one statement for
/// the rows plus one per relation list, whatever N; missing rows are left
/// out; lists are complete and in pk order; hits run nothing.
async fn polls_through_the_cache<DB: SqlxDatabase>(pool: Pool<DB>, statements: &Statements)
where
    User: SqlxModel<DB>,
    Question: SqlxModel<DB>,
    Choice: SqlxModel<DB>,
{
    let cache = polls_cache(&pool);

    let ids = [3, 1, 99, 4, 2];
    let (loaded, ran) = counted(statements, cache.get_many::<Question>(&ids)).await;
    assert_eq!(loaded.unwrap(), by_id(&questions(), &ids));
    assert_eq!(ran.len(), 2, "rows + choices: {ran:#?}");

    let ids = [7, 6, 5, 4, 3, 2, 1, 100];
    let (loaded, ran) = counted(statements, cache.get_many::<Choice>(&ids)).await;
    assert_eq!(loaded.unwrap(), by_id(&choices(), &ids));
    assert_eq!(ran.len(), 2, "rows + voters: {ran:#?}");

    let ids = [1, 2, 3];
    let (loaded, ran) = counted(statements, cache.get_many::<User>(&ids)).await;
    assert_eq!(loaded.unwrap(), users());
    assert_eq!(ran.len(), 2, "rows + votes: {ran:#?}");

    // Hits.
    let (loaded, ran) = counted(statements, cache.get_many::<Question>(&[1, 2, 3, 4])).await;
    assert_eq!(loaded.unwrap(), questions());
    assert_eq!(ran, Vec::<String>::new());

    // The cached representation is the one the model encodes.
    for question in questions() {
        let json = cache.get_json::<Question>(&question.id).await.unwrap();
        assert_eq!(json.unwrap().as_ref(), question.to_json().unwrap());
    }
    let json = cache.get_json::<Choice>(&1).await.unwrap().unwrap();
    assert_eq!(
        std::str::from_utf8(&json).unwrap(),
        r#"{"id":1,"question_id":1,"choice_text":"Not much","voters":[1,3]}"#
    );
    let json = cache.get_json::<User>(&3).await.unwrap().unwrap();
    assert_eq!(
        std::str::from_utf8(&json).unwrap(),
        r#"{"id":3,"username":"cy","votes":[1,3]}"#
    );
    // A missing row is not cached as anything.
    assert_eq!(cache.get::<Question>(&99).await.unwrap(), None);
}

/// `SqlxModel::sqlx_load` on a connection: the same statements, for any
/// number of pks; the relation statements are skipped when no row is found,
/// and nothing runs for no pks.
async fn polls_on_a_connection<DB: SqlxDatabase>(pool: Pool<DB>, statements: &Statements)
where
    Question: SqlxModel<DB>,
    Choice: SqlxModel<DB>,
{
    let mut conn = pool.acquire().await.unwrap();

    let (loaded, ran) = counted(statements, Question::sqlx_load(&mut *conn, &[2])).await;
    assert_eq!(loaded.unwrap(), by_id(&questions(), &[2]));
    assert_eq!(ran.len(), 2, "{ran:#?}");

    let all: Vec<i64> = (1..=200).collect();
    let (loaded, ran) = counted(statements, Choice::sqlx_load(&mut *conn, &all)).await;
    let mut loaded = loaded.unwrap();
    loaded.sort_by_key(|c| c.id);
    assert_eq!(loaded, choices());
    assert_eq!(ran.len(), 2, "{ran:#?}");

    let (loaded, ran) = counted(statements, Question::sqlx_load(&mut *conn, &[1000, 1001])).await;
    assert_eq!(loaded.unwrap(), Vec::new());
    assert_eq!(ran.len(), 1, "no rows, so no list statement: {ran:#?}");

    let (loaded, ran) = counted(statements, Question::sqlx_load(&mut *conn, &[])).await;
    assert_eq!(loaded.unwrap(), Vec::new());
    assert_eq!(ran, Vec::<String>::new());
}

#[tokio::test]
async fn sqlite_polls_through_the_cache() {
    let (pool, statements) = sqlite_polls().await;
    polls_through_the_cache(pool.clone(), statements).await;
    polls_on_a_connection(pool, statements).await;
}

#[tokio::test]
async fn postgres_polls_through_the_cache() {
    with_postgres(|pool, statements| async move {
        postgres_polls(&pool).await;
        polls_through_the_cache(pool.clone(), &statements).await;
        polls_on_a_connection(pool, &statements).await;
    })
    .await;
}

#[tokio::test]
async fn mysql_polls_through_the_cache() {
    with_mysql(|pool, statements| async move {
        mysql_polls(&pool).await;
        polls_through_the_cache(pool.clone(), &statements).await;
        polls_on_a_connection(pool, &statements).await;
    })
    .await;
}

#[tokio::test]
async fn sqlite_statements_are_what_the_docs_say() {
    let (pool, statements) = sqlite_polls().await;
    let mut conn = pool.acquire().await.unwrap();
    let (_, ran) = counted(statements, Choice::sqlx_load(&mut *conn, &[1, 2])).await;
    assert_eq!(
        ran,
        [
            "SELECT `id`, `question_id`, `choice_text` FROM `choices` WHERE `id` IN (?, ?)",
            "SELECT `choice_id`, `user_id` FROM `votes` WHERE `choice_id` IN (?, ?) \
             ORDER BY `user_id`",
        ]
    );
    let (_, ran) = counted(statements, Question::sqlx_load(&mut *conn, &[1])).await;
    assert_eq!(
        ran,
        [
            "SELECT `id`, `question_text`, `pub_date` FROM `questions` WHERE `id` IN (?)",
            "SELECT `question_id`, `id` FROM `choices` WHERE `question_id` IN (?) ORDER BY `id`",
        ]
    );
}

#[tokio::test]
async fn postgres_statements_are_what_the_docs_say() {
    with_postgres(|pool, statements| async move {
        postgres_polls(&pool).await;
        let mut conn = pool.acquire().await.unwrap();
        let (_, ran) = counted(&statements, User::sqlx_load(&mut *conn, &[1, 2, 3])).await;
        assert_eq!(
            ran,
            [
                r#"SELECT "id", "username" FROM "users" WHERE "id" = ANY($1)"#,
                r#"SELECT "user_id", "choice_id" FROM "votes" WHERE "user_id" = ANY($1) ORDER BY "choice_id""#,
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn mysql_statements_are_what_the_docs_say() {
    with_mysql(|pool, statements| async move {
        mysql_polls(&pool).await;
        let mut conn = pool.acquire().await.unwrap();
        let (_, ran) = counted(&statements, User::sqlx_load(&mut *conn, &[1, 2, 3])).await;
        assert_eq!(
            ran,
            [
                "SELECT `id`, `username` FROM `users` WHERE `id` IN (?, ?, ?)",
                "SELECT `user_id`, `choice_id` FROM `votes` WHERE `user_id` IN (?, ?, ?) \
                 ORDER BY `choice_id`",
            ]
        );
    })
    .await;
}

/// Past SQLite's 32 766 parameters, the pks are split into several
/// statements (duplicates removed first, so no row comes back twice).
#[tokio::test]
async fn sqlite_splits_huge_pk_lists() {
    let (pool, statements) = sqlite_polls().await;
    let mut conn = pool.acquire().await.unwrap();
    let mut pks: Vec<i64> = (1..=40_000).collect();
    pks.extend([1, 2, 3, 4]);
    let (loaded, ran) = counted(statements, Question::sqlx_load(&mut *conn, &pks)).await;
    let mut loaded = loaded.unwrap();
    loaded.sort_by_key(|q| q.id);
    assert_eq!(loaded, questions());
    assert_eq!(ran.len(), 3, "two row statements + choices");
}

// ---------------------------------------------------------------------------
// Nullable and self-referencing foreign keys, renamed columns

#[derive(CachedInstance, Debug, Clone, PartialEq)]
#[cached(table = "categories")]
struct Category {
    #[cached(pk)]
    id: i32,
    name: String,
    #[cached(references = Self, column = "parent_id")]
    parent: Option<i32>,
    // `via` names the field; its column comes from the model (`parent_id`).
    #[cached(has_many = Category, via = parent)]
    children: Vec<i32>,
}

const CATEGORIES: &str = "
CREATE TABLE categories (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    parent_id INTEGER REFERENCES categories (id)
);
INSERT INTO categories (id, name, parent_id) VALUES
    (1, 'root', NULL), (4, 'd', 1), (2, 'b', 1), (3, 'c', 2), (5, 'orphan', NULL);
";

fn expected_categories() -> Vec<Category> {
    [
        (1, "root", None, vec![2, 4]),
        (2, "b", Some(1), vec![3]),
        (3, "c", Some(2), vec![]),
        (4, "d", Some(1), vec![]),
        (5, "orphan", None, vec![]),
    ]
    .into_iter()
    .map(|(id, name, parent, children)| Category {
        id,
        name: name.to_owned(),
        parent,
        children,
    })
    .collect()
}

async fn categories<DB: SqlxDatabase>(pool: Pool<DB>, statements: &Statements)
where
    Category: SqlxModel<DB>,
{
    let cache = Cache::builder()
        .loader::<Category>(SqlxLoader::new(pool))
        .build()
        .unwrap();
    let (loaded, ran) = counted(statements, cache.get_many::<Category>(&[1, 2, 3, 4, 5])).await;
    assert_eq!(loaded.unwrap(), expected_categories());
    assert_eq!(ran.len(), 2, "{ran:#?}");
    let json = cache.get_json::<Category>(&5).await.unwrap().unwrap();
    assert_eq!(
        std::str::from_utf8(&json).unwrap(),
        r#"{"id":5,"name":"orphan","parent":null,"children":[]}"#
    );
}

#[tokio::test]
async fn sqlite_nullable_and_self_references() {
    let (pool, statements) = sqlite().await;
    sqlx::raw_sql(CATEGORIES).execute(&pool).await.unwrap();
    categories(pool, statements).await;
}

#[tokio::test]
async fn postgres_nullable_and_self_references() {
    with_postgres(|pool, statements| async move {
        sqlx::raw_sql(CATEGORIES).execute(&pool).await.unwrap();
        categories(pool, &statements).await;
    })
    .await;
}

#[tokio::test]
async fn mysql_nullable_and_self_references() {
    with_mysql(|pool, statements| async move {
        sqlx::raw_sql(
            "CREATE TABLE categories (
                id INT PRIMARY KEY,
                name TEXT NOT NULL,
                parent_id INT,
                FOREIGN KEY (parent_id) REFERENCES categories (id)
            );",
        )
        .execute(&pool)
        .await
        .unwrap();
        // The rows of CATEGORIES (its statements after the first).
        let rows = CATEGORIES.split_once(';').unwrap().1;
        sqlx::raw_sql(rows).execute(&pool).await.unwrap();
        categories(pool, &statements).await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// Every column type, DB -> loader -> cache JSON

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
struct Meta {
    name: String,
    tags: Vec<String>,
}

/// Every type both databases read, with names that need quoting.
#[derive(CachedInstance, Debug, Clone, PartialEq)]
#[cached(table = "everything")]
struct Everything {
    #[cached(pk)]
    id: i64,
    tiny: i8,
    small: i16,
    int: i32,
    big: i64,
    real: f32,
    double: f64,
    flag: bool,
    #[cached(column = "label text")]
    label: String,
    r#type: String,
    note: Option<String>,
    missing: Option<i64>,
    at: DateTime<Utc>,
    day: NaiveDate,
    local: NaiveDateTime,
    time: NaiveTime,
    uuid: Uuid,
    no_uuid: Option<Uuid>,
    bytes: Vec<u8>,
    json: serde_json::Value,
    #[cached(serde)]
    meta: Meta,
    #[cached(serde)]
    no_meta: Option<Meta>,
    #[cached(skip)]
    scratch: u32,
}

fn everything() -> Vec<Everything> {
    let first = Everything {
        id: 1,
        tiny: -128,
        small: i16::MIN,
        int: i32::MAX,
        big: i64::MIN,
        real: 1.5,
        double: 0.1,
        flag: true,
        label: "é ✓ \"quoted\"".to_owned(),
        r#type: "select".to_owned(),
        note: Some(String::new()),
        missing: None,
        at: Utc.with_ymd_and_hms(1969, 7, 20, 20, 17, 40).unwrap()
            + chrono::TimeDelta::microseconds(999_999),
        day: NaiveDate::from_ymd_opt(1900, 2, 28).unwrap(),
        local: NaiveDate::from_ymd_opt(2000, 1, 1)
            .unwrap()
            .and_hms_micro_opt(0, 0, 0, 1)
            .unwrap(),
        time: NaiveTime::from_hms_micro_opt(23, 59, 59, 500_000).unwrap(),
        uuid: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        no_uuid: None,
        bytes: vec![0, 1, 255],
        json: serde_json::json!({"a": [1, 2.5, {"b": null}], "c": "é", "d": true}),
        meta: Meta {
            name: "m".to_owned(),
            tags: vec!["x".to_owned(), "y".to_owned()],
        },
        no_meta: None,
        scratch: 0,
    };
    let second = Everything {
        id: 2,
        tiny: 127,
        small: 0,
        int: -1,
        big: i64::MAX,
        real: -0.25,
        double: -1e300,
        flag: false,
        label: String::new(),
        r#type: "from".to_owned(),
        note: None,
        missing: Some(-7),
        at: Utc.with_ymd_and_hms(2262, 4, 11, 23, 47, 16).unwrap(),
        day: NaiveDate::from_ymd_opt(2024, 2, 29).unwrap(),
        local: NaiveDate::from_ymd_opt(1999, 12, 31)
            .unwrap()
            .and_hms_opt(23, 59, 59)
            .unwrap(),
        time: NaiveTime::from_hms_opt(0, 0, 0).unwrap(),
        uuid: Uuid::nil(),
        no_uuid: Some(Uuid::from_u128(u128::MAX)),
        bytes: vec![],
        json: serde_json::json!([]),
        meta: Meta::default(),
        no_meta: Some(Meta {
            name: "n".to_owned(),
            tags: vec![],
        }),
        scratch: 0,
    };
    vec![first, second]
}

const INSERT_EVERYTHING: &str = r#"INSERT INTO everything (
    id, tiny, small, "int", big, "real", "double", flag, "label text", "type", note, missing,
    at, day, local, "time", uuid, no_uuid, bytes, json, meta, no_meta
) VALUES (
    $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
    $13, $14, $15, $16, $17, $18, $19, $20, $21, $22
)"#;

const MYSQL_INSERT_EVERYTHING: &str = r#"INSERT INTO everything (
    id, tiny, small, `int`, big, `real`, `double`, flag, `label text`, `type`, note, missing,
    at, day, local, `time`, uuid, no_uuid, bytes, json, meta, no_meta
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"#;

/// Inserts `rows` with bound values, so each is written as sqlx encodes it.
macro_rules! insert_everything {
    ($pool:expr, $rows:expr) => {
        insert_everything!($pool, $rows, INSERT_EVERYTHING, std::convert::identity)
    };
    ($pool:expr, $rows:expr, $sql:expr, $at:expr) => {
        for row in $rows {
            sqlx::query($sql)
                .bind(row.id)
                .bind(row.tiny)
                .bind(row.small)
                .bind(row.int)
                .bind(row.big)
                .bind(row.real)
                .bind(row.double)
                .bind(row.flag)
                .bind(&row.label)
                .bind(&row.r#type)
                .bind(&row.note)
                .bind(row.missing)
                .bind(($at)(row.at))
                .bind(row.day)
                .bind(row.local)
                .bind(row.time)
                .bind(row.uuid)
                .bind(row.no_uuid)
                .bind(&row.bytes)
                .bind(&row.json)
                .bind(Json(&row.meta))
                .bind(row.no_meta.as_ref().map(Json))
                .execute($pool)
                .await
                .unwrap();
        }
    };
}

const SQLITE_EVERYTHING: &str = r#"
CREATE TABLE everything (
    id INTEGER PRIMARY KEY, tiny INTEGER NOT NULL, small INTEGER NOT NULL,
    "int" INTEGER NOT NULL, big INTEGER NOT NULL, "real" REAL NOT NULL, "double" REAL NOT NULL,
    flag BOOLEAN NOT NULL, "label text" TEXT NOT NULL, "type" TEXT NOT NULL, note TEXT,
    missing INTEGER, at TEXT NOT NULL, day TEXT NOT NULL, local TEXT NOT NULL,
    "time" TEXT NOT NULL, uuid BLOB NOT NULL, no_uuid BLOB, bytes BLOB NOT NULL,
    json TEXT NOT NULL, meta TEXT NOT NULL, no_meta TEXT
);
"#;

const POSTGRES_EVERYTHING: &str = r#"
CREATE TABLE everything (
    id BIGINT PRIMARY KEY, tiny "char" NOT NULL, small SMALLINT NOT NULL,
    "int" INTEGER NOT NULL, big BIGINT NOT NULL, "real" REAL NOT NULL,
    "double" DOUBLE PRECISION NOT NULL, flag BOOLEAN NOT NULL, "label text" TEXT NOT NULL,
    "type" TEXT NOT NULL, note TEXT, missing BIGINT, at TIMESTAMPTZ NOT NULL,
    day DATE NOT NULL, local TIMESTAMP NOT NULL, "time" TIME NOT NULL, uuid UUID NOT NULL,
    no_uuid UUID, bytes BYTEA NOT NULL, json JSONB NOT NULL, meta JSONB NOT NULL, no_meta JSON
);
"#;

const MYSQL_EVERYTHING: &str = r#"
CREATE TABLE everything (
    id BIGINT PRIMARY KEY, tiny TINYINT NOT NULL, small SMALLINT NOT NULL,
    `int` INT NOT NULL, big BIGINT NOT NULL, `real` FLOAT NOT NULL, `double` DOUBLE NOT NULL,
    flag BOOLEAN NOT NULL, `label text` TEXT NOT NULL, `type` TEXT NOT NULL, note TEXT,
    missing BIGINT, at DATETIME(6) NOT NULL, day DATE NOT NULL, local DATETIME(6) NOT NULL,
    `time` TIME(6) NOT NULL, uuid BINARY(16) NOT NULL, no_uuid BINARY(16), bytes BLOB NOT NULL,
    json JSON NOT NULL, meta JSON NOT NULL, no_meta JSON
);
"#;

async fn round_trip_everything<DB: SqlxDatabase>(pool: Pool<DB>, statements: &Statements)
where
    Everything: SqlxModel<DB>,
{
    let cache = Cache::builder()
        .loader::<Everything>(SqlxLoader::new(pool))
        .build()
        .unwrap();
    let (loaded, ran) = counted(statements, cache.get_many::<Everything>(&[1, 2, 3])).await;
    assert_eq!(loaded.unwrap(), everything());
    assert_eq!(ran.len(), 1, "{ran:#?}");
    for row in everything() {
        let json = cache
            .get_json::<Everything>(&row.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(json.as_ref(), row.to_json().unwrap());
        assert_eq!(Everything::from_json(&json).unwrap(), row);
    }
    let json = cache.get_json::<Everything>(&2).await.unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(json["label"], "");
    assert_eq!(json["type"], "from");
    assert_eq!(json["missing"], -7);
    assert_eq!(
        json["no_meta"],
        serde_json::json!({"name": "n", "tags": []})
    );
    assert_eq!(json["day"], "2024-02-29");
    assert!(json.get("scratch").is_none());
}

#[tokio::test]
async fn sqlite_every_column_type_round_trips() {
    let (pool, statements) = sqlite().await;
    sqlx::raw_sql(SQLITE_EVERYTHING)
        .execute(&pool)
        .await
        .unwrap();
    insert_everything!(&pool, everything());
    round_trip_everything(pool, statements).await;
}

#[tokio::test]
async fn postgres_every_column_type_round_trips() {
    with_postgres(|pool, statements| async move {
        sqlx::raw_sql(POSTGRES_EVERYTHING)
            .execute(&pool)
            .await
            .unwrap();
        insert_everything!(&pool, everything());
        round_trip_everything(pool, &statements).await;
    })
    .await;
}

#[tokio::test]
async fn mysql_every_column_type_round_trips() {
    with_mysql(|pool, statements| async move {
        sqlx::raw_sql(MYSQL_EVERYTHING)
            .execute(&pool)
            .await
            .unwrap();
        // sqlx binds a `DateTime<Utc>` as a MySQL TIMESTAMP, whose range
        // (1970 to 2038) the rows leave; the column is a DATETIME.
        insert_everything!(
            &pool,
            everything(),
            MYSQL_INSERT_EVERYTHING,
            |at: DateTime<Utc>| at.naive_utc()
        );
        round_trip_everything(pool, &statements).await;
    })
    .await;
}

/// Unsigned integers: SQLite only (`database = "sqlite"` keeps the model off
/// PostgreSQL, which has no unsigned types).
#[derive(CachedInstance, Debug, Clone, PartialEq)]
#[cached(table = "unsigned", database = "sqlite")]
struct Unsigned {
    #[cached(pk)]
    id: i64,
    a: u8,
    b: u16,
    c: u32,
    d: u64,
}

#[tokio::test]
async fn sqlite_unsigned_integers() {
    let (pool, statements) = sqlite().await;
    sqlx::raw_sql(
        "CREATE TABLE unsigned (id INTEGER PRIMARY KEY, a INTEGER, b INTEGER, c INTEGER, d INTEGER);
         INSERT INTO unsigned VALUES (1, 255, 65535, 4294967295, 9223372036854775807);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let cache = Cache::builder()
        .loader::<Unsigned>(SqlxLoader::new(pool))
        .build()
        .unwrap();
    let (loaded, ran) = counted(statements, cache.get::<Unsigned>(&1)).await;
    assert_eq!(
        loaded.unwrap(),
        Some(Unsigned {
            id: 1,
            a: u8::MAX,
            b: u16::MAX,
            c: u32::MAX,
            d: i64::MAX as u64,
        })
    );
    assert_eq!(ran.len(), 1);
}

/// Arrays: PostgreSQL only.
#[derive(CachedInstance, Debug, Clone, PartialEq)]
#[cached(table = "arrays", database = "postgres")]
struct Arrays {
    #[cached(pk)]
    id: i64,
    numbers: Vec<i64>,
    words: Vec<String>,
    maybe: Option<Vec<i32>>,
}

#[tokio::test]
async fn postgres_arrays() {
    with_postgres(|pool, statements| async move {
        sqlx::raw_sql(
            "CREATE TABLE arrays (id BIGINT PRIMARY KEY, numbers BIGINT[] NOT NULL,
                 words TEXT[] NOT NULL, maybe INTEGER[]);
             INSERT INTO arrays VALUES (1, '{3,1,2}', '{\"a b\",\"\"}', NULL), (2, '{}', '{}', '{7}');",
        )
        .execute(&pool)
        .await
        .unwrap();
        let cache = Cache::builder()
            .loader::<Arrays>(SqlxLoader::new(pool))
            .build()
            .unwrap();
        let (loaded, ran) = counted(&statements, cache.get_many::<Arrays>(&[1, 2])).await;
        assert_eq!(
            loaded.unwrap(),
            [
                Arrays {
                    id: 1,
                    numbers: vec![3, 1, 2],
                    words: vec!["a b".to_owned(), String::new()],
                    maybe: None,
                },
                Arrays {
                    id: 2,
                    numbers: vec![],
                    words: vec![],
                    maybe: Some(vec![7]),
                },
            ]
        );
        assert_eq!(ran.len(), 1);
    })
    .await;
}

// ---------------------------------------------------------------------------
// String and uuid keys, a many-to-many both ways, a renamed pk column

#[derive(CachedInstance, Debug, Clone, PartialEq)]
#[cached(table = "tags")]
struct Tag {
    #[cached(pk)]
    id: Uuid,
    label: String,
    #[cached(many_to_many = Account, inverse = tags)]
    #[cached(through = "account_tags", source = "tag_id", target = "handle")]
    accounts: Vec<String>,
}

#[derive(CachedInstance, Debug, Clone, PartialEq)]
#[cached(table = "accounts")]
struct Account {
    #[cached(pk, column = "handle")]
    name: String,
    #[cached(many_to_many = Tag, inverse = accounts)]
    #[cached(through = "account_tags", source = "handle", target = "tag_id")]
    tags: Vec<Uuid>,
}

fn tag_id(n: u128) -> Uuid {
    Uuid::from_u128(n << 100 | n)
}

async fn keys<DB: SqlxDatabase>(pool: Pool<DB>, statements: &Statements)
where
    Tag: SqlxModel<DB>,
    Account: SqlxModel<DB>,
{
    let cache = Cache::builder()
        .loader::<Tag>(SqlxLoader::new(pool.clone()))
        .loader::<Account>(SqlxLoader::new(pool))
        .build()
        .unwrap();
    let names = ["zoe".to_owned(), "al:ice".to_owned(), "nobody".to_owned()];
    let (loaded, ran) = counted(statements, cache.get_many::<Account>(&names)).await;
    assert_eq!(
        loaded.unwrap(),
        [
            Account {
                name: "zoe".to_owned(),
                tags: vec![tag_id(1), tag_id(2), tag_id(3)],
            },
            Account {
                name: "al:ice".to_owned(),
                tags: vec![tag_id(2)],
            },
        ]
    );
    assert_eq!(ran.len(), 2, "{ran:#?}");
    let ids = [tag_id(3), tag_id(2), tag_id(9)];
    let (loaded, ran) = counted(statements, cache.get_many::<Tag>(&ids)).await;
    assert_eq!(
        loaded.unwrap(),
        [
            Tag {
                id: tag_id(3),
                label: "three".to_owned(),
                accounts: vec!["zoe".to_owned()],
            },
            Tag {
                id: tag_id(2),
                label: "two".to_owned(),
                accounts: vec!["al:ice".to_owned(), "zoe".to_owned()],
            },
        ]
    );
    assert_eq!(ran.len(), 2, "{ran:#?}");
}

const SQLITE_KEYS: &str = "
CREATE TABLE tags (id BLOB PRIMARY KEY, label TEXT NOT NULL);
CREATE TABLE accounts (handle TEXT PRIMARY KEY);
CREATE TABLE account_tags (handle TEXT NOT NULL, tag_id BLOB NOT NULL);
";

const POSTGRES_KEYS: &str = "
CREATE TABLE tags (id UUID PRIMARY KEY, label TEXT NOT NULL);
CREATE TABLE accounts (handle TEXT PRIMARY KEY);
CREATE TABLE account_tags (handle TEXT NOT NULL, tag_id UUID NOT NULL);
";

const MYSQL_KEYS: &str = "
CREATE TABLE tags (id BINARY(16) PRIMARY KEY, label TEXT NOT NULL);
CREATE TABLE accounts (handle VARCHAR(64) PRIMARY KEY);
CREATE TABLE account_tags (handle VARCHAR(64) NOT NULL, tag_id BINARY(16) NOT NULL);
";

macro_rules! insert_keys {
    ($pool:expr) => {
        insert_keys!($pool, "$1", "$2")
    };
    ($pool:expr, $one:literal, $two:literal) => {
        for (n, label) in [(3, "three"), (1, "one"), (2, "two")] {
            sqlx::query(concat!(
                "INSERT INTO tags (id, label) VALUES (",
                $one,
                ", ",
                $two,
                ")"
            ))
            .bind(tag_id(n))
            .bind(label)
            .execute($pool)
            .await
            .unwrap();
        }
        for (handle, n) in [("zoe", 3), ("zoe", 1), ("al:ice", 2), ("zoe", 2)] {
            sqlx::query(concat!(
                "INSERT INTO account_tags (handle, tag_id) VALUES (",
                $one,
                ", ",
                $two,
                ")"
            ))
            .bind(handle)
            .bind(tag_id(n))
            .execute($pool)
            .await
            .unwrap();
        }
        sqlx::raw_sql("INSERT INTO accounts (handle) VALUES ('zoe'), ('al:ice')")
            .execute($pool)
            .await
            .unwrap();
    };
}

#[tokio::test]
async fn sqlite_string_and_uuid_keys() {
    let (pool, statements) = sqlite().await;
    sqlx::raw_sql(SQLITE_KEYS).execute(&pool).await.unwrap();
    insert_keys!(&pool);
    keys(pool, statements).await;
}

#[tokio::test]
async fn postgres_string_and_uuid_keys() {
    with_postgres(|pool, statements| async move {
        sqlx::raw_sql(POSTGRES_KEYS).execute(&pool).await.unwrap();
        insert_keys!(&pool);
        keys(pool, &statements).await;
    })
    .await;
}

#[tokio::test]
async fn mysql_string_and_uuid_keys() {
    with_mysql(|pool, statements| async move {
        sqlx::raw_sql(MYSQL_KEYS).execute(&pool).await.unwrap();
        insert_keys!(&pool, "?", "?");
        keys(pool, &statements).await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// An enum stored as TEXT: read by sqlx (`sqlx::Type`), cached through a
// `FieldCodec` (`serde_field_codec!`)

#[derive(Serialize, Deserialize, sqlx::Type, Debug, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
enum Mood {
    Happy,
    Grumpy,
}

cached_instances::serde_field_codec!(Mood);

#[derive(CachedInstance, Debug, Clone, PartialEq)]
#[cached(table = "moods")]
struct Moody {
    #[cached(pk)]
    id: i64,
    mood: Mood,
    maybe: Option<Mood>,
}

const MOODS: &str = "
CREATE TABLE moods (id BIGINT PRIMARY KEY, mood TEXT NOT NULL, maybe TEXT);
INSERT INTO moods VALUES (1, 'happy', NULL), (2, 'grumpy', 'happy');
";

async fn moods<DB: SqlxDatabase>(pool: Pool<DB>, statements: &Statements)
where
    Moody: SqlxModel<DB>,
{
    let cache = Cache::builder()
        .loader::<Moody>(SqlxLoader::new(pool))
        .build()
        .unwrap();
    let (loaded, ran) = counted(statements, cache.get_many::<Moody>(&[1, 2])).await;
    assert_eq!(
        loaded.unwrap(),
        [
            Moody {
                id: 1,
                mood: Mood::Happy,
                maybe: None,
            },
            Moody {
                id: 2,
                mood: Mood::Grumpy,
                maybe: Some(Mood::Happy),
            },
        ]
    );
    assert_eq!(ran.len(), 1, "{ran:#?}");
    let json = cache.get_json::<Moody>(&2).await.unwrap().unwrap();
    assert_eq!(
        std::str::from_utf8(&json).unwrap(),
        r#"{"id":2,"mood":"grumpy","maybe":"happy"}"#
    );
    // A hit decodes the cached representation through the codec.
    let (hit, ran) = counted(statements, cache.get::<Moody>(&2)).await;
    assert_eq!(hit.unwrap().unwrap().mood, Mood::Grumpy);
    assert_eq!(ran, Vec::<String>::new());
}

#[tokio::test]
async fn sqlite_enums_stored_as_text() {
    let (pool, statements) = sqlite().await;
    sqlx::raw_sql(MOODS).execute(&pool).await.unwrap();
    moods(pool, statements).await;
}

#[tokio::test]
async fn postgres_enums_stored_as_text() {
    with_postgres(|pool, statements| async move {
        sqlx::raw_sql(MOODS).execute(&pool).await.unwrap();
        moods(pool, &statements).await;
    })
    .await;
}

// Not on MySQL: sqlx 0.9's derived enums match neither a MariaDB `TEXT` nor
// an `ENUM` column ("mismatched types"); see the `FieldCodec` docs.

// ---------------------------------------------------------------------------
// Errors

#[derive(CachedInstance, Debug, Clone, PartialEq)]
#[cached(table = "mistyped")]
struct Mistyped {
    #[cached(pk)]
    id: i64,
    #[cached(column = "amount")]
    n: i64,
}

/// A column that does not decode into its field fails the load, naming the
/// column.
async fn mistyped<DB: SqlxDatabase>(pool: Pool<DB>)
where
    Mistyped: SqlxModel<DB>,
{
    let cache = Cache::builder()
        .loader::<Mistyped>(SqlxLoader::new(pool))
        .build()
        .unwrap();
    let error = cache.get::<Mistyped>(&1).await.unwrap_err();
    let mut chain = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        chain.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    assert!(chain.contains("loading Mistyped failed"), "{chain}");
    assert!(chain.contains(r#"column "amount""#), "{chain}");
}

const MISTYPED: &str = "
CREATE TABLE mistyped (id BIGINT PRIMARY KEY, amount TEXT NOT NULL);
INSERT INTO mistyped VALUES (1, 'lots');
";

#[tokio::test]
async fn sqlite_decode_errors_name_the_column() {
    let (pool, _) = sqlite().await;
    sqlx::raw_sql(MISTYPED).execute(&pool).await.unwrap();
    mistyped(pool).await;
}

#[tokio::test]
async fn postgres_decode_errors_name_the_column() {
    with_postgres(|pool, _| async move {
        sqlx::raw_sql(MISTYPED).execute(&pool).await.unwrap();
        mistyped(pool).await;
    })
    .await;
}

#[tokio::test]
async fn mysql_decode_errors_name_the_column() {
    with_mysql(|pool, _| async move {
        sqlx::raw_sql(MISTYPED).execute(&pool).await.unwrap();
        mistyped(pool).await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// The checkout overlaps the lease (`Loader::load_after`)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cached_instances::MemoryStore;
use cached_instances::store::{InProcess, StoreFuture};
use cached_instances_testkit::store::{Hook, Keys, Op, Wrapped};

/// What the database had seen when a read's lease was taken: whether the
/// loader had checked a connection out of the pool by then, and how many
/// statements had run.
#[derive(Clone)]
struct AtLease {
    idle: Arc<dyn Fn() -> usize + Send + Sync>,
    statements: Arc<dyn Fn() -> usize + Send + Sync>,
    /// The pool's idle connections before the read.
    idle_before: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(bool, usize)>>>,
}

impl Hook for AtLease {
    /// Once a lease is taken, waits (at most 5 s) for the pool to lend a
    /// connection, then records; other calls are forwarded.
    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        _keys: Keys<'a>,
        call: impl FnOnce() -> StoreFuture<'a, T> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        if !op.is_lease() {
            return call();
        }
        Box::pin(async move {
            let result = call().await;
            let before = self.idle_before.load(Ordering::SeqCst);
            let lent = async {
                while (self.idle)() >= before {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            };
            let lent = tokio::time::timeout(Duration::from_secs(5), lent)
                .await
                .is_ok();
            self.seen.lock().unwrap().push((lent, (self.statements)()));
            result
        })
    }

    fn around_in_process(&self, _key: &str, read: impl FnOnce() -> InProcess) -> InProcess {
        read()
    }
}

/// A cold read through `SqlxLoader`: the loader checks its connection out
/// while the lease is pending (it is lent before the lease step returns),
/// and no statement reaches the database before the lease is taken; the
/// rows are then loaded as usual.
async fn checkout_overlaps_the_lease<DB: SqlxDatabase>(
    pool: Pool<DB>,
    statements: impl Fn() -> usize + Send + Sync + 'static,
) where
    User: SqlxModel<DB>,
    Question: SqlxModel<DB>,
    Choice: SqlxModel<DB>,
{
    let idle = {
        let pool = pool.clone();
        move || pool.num_idle()
    };
    let hook = AtLease {
        idle: Arc::new(idle),
        statements: Arc::new(statements),
        idle_before: Arc::default(),
        seen: Arc::default(),
    };
    let cache = Cache::builder()
        .store(Wrapped::with_hook(MemoryStore::new(), hook.clone()))
        .loader::<User>(SqlxLoader::new(pool.clone()))
        .loader::<Question>(SqlxLoader::new(pool.clone()))
        .loader::<Choice>(SqlxLoader::new(pool.clone()))
        .build()
        .unwrap();
    let all = questions();
    for pks in [&[1_i64, 2][..], &[3]] {
        // A connection to lend, back in the pool (sqlx returns one from a
        // task of its own).
        drop(pool.acquire().await.unwrap());
        tokio::time::timeout(Duration::from_secs(5), async {
            while pool.num_idle() == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the pool has an idle connection");
        hook.idle_before.store(pool.num_idle(), Ordering::SeqCst);
        let ran_before = (hook.statements)();
        let read = cache.get_many::<Question>(pks).await.unwrap();
        assert_eq!(read, by_id(&all, pks));
        let seen = std::mem::take(&mut *hook.seen.lock().unwrap());
        assert_eq!(
            seen,
            [(true, ran_before)],
            "pks {pks:?}: one lease step, the connection lent during it, no statement before it"
        );
        assert!(
            (hook.statements)() > ran_before,
            "the rows were loaded after"
        );
    }
    assert_eq!(cache.stats().loader_calls, 2);
}

#[tokio::test]
async fn sqlite_checkout_overlaps_the_lease() {
    let (pool, statements) = sqlite_polls().await;
    checkout_overlaps_the_lease(pool, || statements.count()).await;
}

#[tokio::test]
async fn postgres_checkout_overlaps_the_lease() {
    with_postgres(|pool, statements| async move {
        postgres_polls(&pool).await;
        checkout_overlaps_the_lease(pool, move || statements.count()).await;
    })
    .await;
}

/// With no idle connection in the pool, `SqlxLoader` checks none out
/// before the leases: a read whose lease is refused (another reader holds
/// it) goes on to wait for that lease while every connection is busy,
/// instead of queueing for one it would not use.
#[tokio::test]
async fn sqlite_a_refused_lease_never_queues_for_a_connection() {
    let (pool, _) = sqlite_polls().await;
    let memory = MemoryStore::new();
    let cache = Cache::builder()
        .store(memory.clone())
        .loader::<User>(SqlxLoader::new(pool.clone()))
        .loader::<Question>(SqlxLoader::new(pool.clone()))
        .loader::<Choice>(SqlxLoader::new(pool.clone()))
        .lease_wait(Duration::from_millis(100))
        .build()
        .unwrap();
    // Another reader's lease (one without a deadline: never voided).
    let key = cache.key_of::<Question>(&1).unwrap();
    memory.put_raw(&key, &b"\0L0123456789abcdef"[..], Duration::from_secs(60));
    // The pool's only connection, busy.
    let busy = pool.acquire().await.unwrap();
    let read = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get::<Question>(&1).await }
    });
    tokio::time::timeout(Duration::from_secs(5), async {
        while cache.stats().lease_waits == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the read waits for the lease while the connection is busy");
    assert_eq!(cache.stats().loader_calls, 0);
    // The wait runs out; the read goes to the database, once it can.
    drop(busy);
    let read = read.await.unwrap().unwrap();
    assert_eq!(read, questions().into_iter().find(|q| q.id == 1));
    assert_eq!(cache.stats().loader_calls, 1);
}
