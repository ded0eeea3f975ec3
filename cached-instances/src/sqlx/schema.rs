//! The startup schema check: the tables and columns a derived loader reads,
//! compared with the database's.

use std::fmt;

use ::sqlx::{
    Column as _, Database, Executor, Pool, SqlSafeStr as _, Statement as _, TypeInfo as _,
};

use super::{SqlxDatabase, SqlxModel, push_table};

/// Whether sqlx reads a field's type from a column of the given type.
#[doc(hidden)]
pub type Compatible<DB> = fn(&<DB as Database>::TypeInfo) -> bool;

/// A column a derived loader reads, and the type of the field it fills.
/// Generated with the loader; see [`verify_schema`].
pub struct SqlxColumn<DB: Database> {
    table: &'static str,
    column: &'static str,
    field_type: &'static str,
    compatible: Option<Compatible<DB>>,
}

impl<DB: Database> SqlxColumn<DB> {
    #[doc(hidden)]
    #[must_use]
    pub const fn new(
        table: &'static str,
        column: &'static str,
        field_type: &'static str,
        compatible: Option<Compatible<DB>>,
    ) -> Self {
        SqlxColumn {
            table,
            column,
            field_type,
            compatible,
        }
    }
}

impl<DB: Database> fmt::Debug for SqlxColumn<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlxColumn")
            .field("table", &self.table)
            .field("column", &self.column)
            .field("field_type", &self.field_type)
            .finish_non_exhaustive()
    }
}

/// One difference between a model's declaration and the database.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchemaMismatch {
    /// The table cannot be read (it does not exist, or is not visible to
    /// the connection); `cause` is the database's message.
    MissingTable {
        /// The table, as declared.
        table: String,
        /// The database's message.
        cause: String,
    },
    /// The table has no such column.
    MissingColumn {
        /// The table, as declared.
        table: String,
        /// The column, as declared.
        column: String,
    },
    /// sqlx cannot read the field's type from the column's type.
    ColumnType {
        /// The table, as declared.
        table: String,
        /// The column, as declared.
        column: String,
        /// The field's Rust type, as written.
        field_type: String,
        /// The column's type, as the database names it.
        column_type: String,
    },
}

impl fmt::Display for SchemaMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaMismatch::MissingTable { table, cause } => {
                write!(f, "table `{table}` cannot be read ({cause})")
            }
            SchemaMismatch::MissingColumn { table, column } => {
                write!(f, "table `{table}` has no column `{column}`")
            }
            SchemaMismatch::ColumnType {
                table,
                column,
                field_type,
                column_type,
            } => write!(
                f,
                "column `{table}`.`{column}` is {column_type}, which sqlx cannot read as the \
                 field's `{field_type}`"
            ),
        }
    }
}

/// What [`verify_schema`] found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The declaration and the database differ; every difference is listed.
    #[error("the {model} model does not match the database: {}", list(.mismatches))]
    Mismatch {
        /// The model checked.
        model: &'static str,
        /// Every difference, table by table.
        mismatches: Vec<SchemaMismatch>,
    },
    /// The model's loader is not derived (a hand-written `SqlxModel`), so
    /// there is no declaration to compare.
    #[error("the {model} model declares no columns (its sqlx loader is not derived)")]
    NotDerived {
        /// The model checked.
        model: &'static str,
    },
    /// The database could not be asked.
    #[error("checking the {model} model's schema failed")]
    Database {
        /// The model checked.
        model: &'static str,
        /// The database's error.
        #[source]
        source: ::sqlx::Error,
    },
}

fn list(mismatches: &[SchemaMismatch]) -> String {
    mismatches
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Compares the tables, columns and column types `T`'s derived loader reads
/// (its table, and the tables of its relation lists) with the database's,
/// and names every difference: call it at startup, so a table typo, a
/// missing column or an `i32` field on a `BIGINT` column fails there, not
/// at the first read. One statement is prepared (not run) per table, on a
/// connection of the pool whose statement cache it clears.
///
/// Types are compared as sqlx compares them when it reads a row, so what
/// passes here decodes. PostgreSQL's integer types must match exactly (an
/// `i32` field on a `BIGINT` column is a mismatch); sqlx reads any integer
/// column of SQLite and MySQL into any integer field, checking each value's
/// range as it reads it, so there only non-integer columns are mismatches.
/// SQLite columns have the types they were declared with (SQLite itself
/// stores any value in any column).
///
/// ```ignore
/// cached_instances::sqlx::verify_schema::<Question, _>(&pool).await?;
/// ```
pub async fn verify_schema<T, DB>(pool: &Pool<DB>) -> Result<(), SchemaError>
where
    DB: SqlxDatabase + ::sqlx::database::HasStatementCache,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    T: SqlxModel<DB>,
{
    let model = T::MODEL;
    let Some(columns) = T::sqlx_columns() else {
        return Err(SchemaError::NotDerived { model });
    };
    let database = |source| SchemaError::Database { model, source };
    let mut conn = pool.acquire().await.map_err(database)?;
    // The connection's statement cache would answer an earlier check's
    // columns, from before the schema changed.
    ::sqlx::Connection::clear_cached_statements(&mut *conn)
        .await
        .map_err(database)?;
    let mut tables: Vec<&'static str> = Vec::new();
    for column in &columns {
        if !tables.contains(&column.table) {
            tables.push(column.table);
        }
    }
    let mut mismatches = Vec::new();
    for table in tables {
        let mut sql = String::from("SELECT * FROM ");
        push_table(&mut sql, DB::QUOTE, table);
        sql.push_str(" WHERE 1 = 0");
        // The name is quoted by `push_table`; nothing else is dynamic.
        let sql = ::sqlx::AssertSqlSafe(sql).into_sql_str();
        let statement = match (&mut *conn).prepare(sql).await {
            Ok(statement) => statement,
            Err(::sqlx::Error::Database(error)) => {
                mismatches.push(SchemaMismatch::MissingTable {
                    table: table.to_owned(),
                    cause: error.message().to_owned(),
                });
                continue;
            }
            Err(error) => return Err(database(error)),
        };
        for column in columns.iter().filter(|c| c.table == table) {
            let found = statement
                .columns()
                .iter()
                .find(|c| c.name() == column.column);
            let Some(found) = found else {
                mismatches.push(SchemaMismatch::MissingColumn {
                    table: table.to_owned(),
                    column: column.column.to_owned(),
                });
                continue;
            };
            let type_info = found.type_info();
            if column
                .compatible
                .is_some_and(|compatible| !compatible(type_info))
            {
                mismatches.push(SchemaMismatch::ColumnType {
                    table: table.to_owned(),
                    column: column.column.to_owned(),
                    field_type: column.field_type.to_owned(),
                    column_type: type_info.name().to_owned(),
                });
            }
        }
    }
    if mismatches.is_empty() {
        Ok(())
    } else {
        Err(SchemaError::Mismatch { model, mismatches })
    }
}
