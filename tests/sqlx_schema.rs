//! `cached_instances::sqlx::verify_schema` on real SQLite, PostgreSQL and
//! MySQL (MariaDB): a matching schema passes; a wrong column type, a
//! missing column and a missing table (of a relation list) are each named.

use cached_instances::CachedInstance;
use cached_instances::sqlx::{SchemaError, SchemaMismatch, SqlxDatabase, SqlxModel, verify_schema};
use cached_instances_testkit::databases::{sqlite, with_mysql, with_postgres};
use sqlx::{Executor, Pool};

#[derive(CachedInstance, Debug, Clone, PartialEq)]
#[cached(table = "audits")]
struct Audit {
    #[cached(pk)]
    id: i64,
    count: i32,
    #[cached(column = "note text")]
    note: Option<String>,
    #[cached(has_many = Entry, via = audit_id)]
    entries: Vec<i64>,
}

#[derive(CachedInstance, Debug, Clone, PartialEq)]
#[cached(table = "entries")]
struct Entry {
    #[cached(pk)]
    id: i64,
    #[cached(references = Audit)]
    audit_id: i64,
}

/// `good` matches the models; `bad` has `count` of a type `i32` cannot be
/// read from, no `note text` column and no `entries` table.
async fn check<DB>(pool: Pool<DB>, good: &'static str, bad: &'static str)
where
    DB: SqlxDatabase + sqlx::database::HasStatementCache,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'e> &'e Pool<DB>: Executor<'e, Database = DB>,
    Audit: SqlxModel<DB>,
    Entry: SqlxModel<DB>,
{
    pool.execute(good).await.unwrap();
    verify_schema::<Audit, DB>(&pool).await.unwrap();
    verify_schema::<Entry, DB>(&pool).await.unwrap();

    pool.execute(bad).await.unwrap();
    let error = verify_schema::<Audit, DB>(&pool).await.unwrap_err();
    let message = error.to_string();
    let SchemaError::Mismatch { model, mismatches } = error else {
        panic!("{message}");
    };
    assert_eq!(model, "Audit");
    assert_eq!(mismatches.len(), 3, "{message}");
    assert!(
        matches!(&mismatches[0], SchemaMismatch::ColumnType { table, column, field_type, .. }
            if table == "audits" && column == "count" && field_type == "i32"),
        "{message}"
    );
    assert_eq!(
        mismatches[1],
        SchemaMismatch::MissingColumn {
            table: "audits".to_owned(),
            column: "note text".to_owned()
        },
        "{message}"
    );
    assert!(
        matches!(&mismatches[2], SchemaMismatch::MissingTable { table, .. } if table == "entries"),
        "{message}"
    );
    assert!(
        message.contains("which sqlx cannot read as the field's `i32`"),
        "{message}"
    );
}

#[tokio::test]
async fn sqlite_schema_mismatches_are_named() {
    let (pool, _) = sqlite().await;
    check(
        pool,
        "CREATE TABLE audits (id INTEGER PRIMARY KEY, count INTEGER NOT NULL, `note text` TEXT);
         CREATE TABLE entries (id INTEGER PRIMARY KEY, audit_id INTEGER NOT NULL);",
        // SQLite reads any integer column as `i32`: a TEXT column is what
        // sqlx refuses.
        "DROP TABLE audits; DROP TABLE entries;
         CREATE TABLE audits (id INTEGER PRIMARY KEY, count TEXT NOT NULL);",
    )
    .await;
}

#[tokio::test]
async fn postgres_schema_mismatches_are_named() {
    with_postgres(|pool, _| async move {
        check(
            pool,
            r#"CREATE TABLE audits (id BIGINT PRIMARY KEY, count INTEGER NOT NULL, "note text" TEXT);
               CREATE TABLE entries (id BIGINT PRIMARY KEY, audit_id BIGINT NOT NULL);"#,
            "DROP TABLE audits; DROP TABLE entries;
             CREATE TABLE audits (id BIGINT PRIMARY KEY, count BIGINT NOT NULL);",
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn mysql_schema_mismatches_are_named() {
    with_mysql(|pool, _| async move {
        check(
            pool,
            "CREATE TABLE audits (id BIGINT PRIMARY KEY, count INT NOT NULL, `note text` TEXT);
             CREATE TABLE entries (id BIGINT PRIMARY KEY, audit_id BIGINT NOT NULL);",
            // sqlx reads an `i32` from any MySQL integer column (checking
            // each value's range): a TEXT column is what it refuses.
            "DROP TABLE audits; DROP TABLE entries;
             CREATE TABLE audits (id BIGINT PRIMARY KEY, count TEXT NOT NULL);",
        )
        .await;
    })
    .await;
}
