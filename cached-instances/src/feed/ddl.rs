//! The capture DDL: an outbox table, a dead-letter table, and per captured
//! table the AFTER INSERT/UPDATE/DELETE triggers that write one outbox row
//! per changed row, in the writing transaction.
//!
//! Generated at run time from the [`Capture`]s of every model registered
//! with the cache, so that a table two models (or two versions) read gets
//! one set of triggers capturing what both need.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::instance::Capture;
#[cfg(test)]
use crate::instance::{CapturedJoin, CapturedReference};

/// The outbox table the triggers write and the feed drains.
pub const OUTBOX_TABLE: &str = "cached_instances_outbox";
/// Where rows the feed cannot turn into an invalidation are moved.
pub const DEAD_LETTER_TABLE: &str = "cached_instances_dead_letter";

/// The SQL dialect of the capture DDL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Postgres,
    Sqlite,
}

impl Dialect {
    /// A column, quoted as the derived loaders quote it.
    fn name(self, name: &str) -> String {
        let mut out = String::new();
        crate::sqlx::push_name(&mut out, self.quote(), name);
        out
    }

    /// A table, `schema.table` quoted part by part.
    fn table(self, table: &str) -> String {
        let mut out = String::new();
        crate::sqlx::push_table(&mut out, self.quote(), table);
        out
    }

    fn quote(self) -> char {
        match self {
            Dialect::Postgres => '"',
            Dialect::Sqlite => '`',
        }
    }
}

/// One table to capture: the columns whose values go into the outbox, and
/// those whose change makes an UPDATE worth capturing.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct TablePlan {
    pub(crate) captured: Vec<&'static str>,
    pub(crate) watched: Vec<&'static str>,
}

/// Every table the captures name, with the union of what they need.
pub(crate) fn plan<'a>(
    captures: impl IntoIterator<Item = &'a Capture>,
) -> BTreeMap<&'static str, TablePlan> {
    fn add(list: &mut Vec<&'static str>, column: &'static str) {
        if !list.contains(&column) {
            list.push(column);
        }
    }
    let mut tables: BTreeMap<&'static str, TablePlan> = BTreeMap::new();
    for capture in captures {
        let table = tables.entry(capture.table).or_default();
        add(&mut table.captured, capture.pk_column);
        for reference in capture.references {
            add(&mut table.captured, reference.column);
        }
        add(&mut table.watched, capture.pk_column);
        for column in capture.columns {
            add(&mut table.watched, column);
        }
        for join in capture.joins {
            let table = tables.entry(join.table).or_default();
            for column in [join.source, join.target] {
                add(&mut table.captured, column);
                add(&mut table.watched, column);
            }
        }
    }
    tables
}

/// `text` as an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A trigger or function name for `table`: its letters and digits, and a
/// hash so that `a.b` and `a_b` do not collide.
fn object_name(prefix: &str, table: &str) -> String {
    let clean: String = table
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(32)
        .collect();
    let hash = crate::key::fnv1a(table.as_bytes()) & 0xffff_ffff;
    format!("{prefix}_{clean}_{hash:08x}")
}

/// The whole DDL: idempotent (it can run on every start, and as a migration).
pub(crate) fn ddl(dialect: Dialect, tables: &BTreeMap<&'static str, TablePlan>) -> String {
    let mut sql = String::new();
    match dialect {
        Dialect::Postgres => {
            let _ = write!(
                sql,
                "CREATE TABLE IF NOT EXISTS {OUTBOX_TABLE} (\n    \
                 id BIGSERIAL PRIMARY KEY,\n    \
                 table_name TEXT NOT NULL,\n    \
                 op TEXT NOT NULL,\n    \
                 txid BIGINT NOT NULL DEFAULT txid_current(),\n    \
                 old_row JSONB,\n    \
                 new_row JSONB,\n    \
                 created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()\n);\n\
                 CREATE INDEX IF NOT EXISTS {OUTBOX_TABLE}_txid ON {OUTBOX_TABLE} (txid);\n\
                 CREATE TABLE IF NOT EXISTS {DEAD_LETTER_TABLE} (\n    \
                 id BIGINT PRIMARY KEY,\n    \
                 table_name TEXT,\n    \
                 op TEXT,\n    \
                 txid BIGINT,\n    \
                 old_row TEXT,\n    \
                 new_row TEXT,\n    \
                 reason TEXT NOT NULL,\n    \
                 failed_at TIMESTAMPTZ NOT NULL DEFAULT now()\n);\n"
            );
            for (table, plan) in tables {
                postgres_triggers(&mut sql, table, plan);
            }
        }
        Dialect::Sqlite => {
            let _ = write!(
                sql,
                "CREATE TABLE IF NOT EXISTS {OUTBOX_TABLE} (\n    \
                 id INTEGER PRIMARY KEY AUTOINCREMENT,\n    \
                 table_name TEXT NOT NULL,\n    \
                 op TEXT NOT NULL,\n    \
                 txid INTEGER,\n    \
                 old_row TEXT,\n    \
                 new_row TEXT,\n    \
                 created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))\n);\n\
                 CREATE TABLE IF NOT EXISTS {DEAD_LETTER_TABLE} (\n    \
                 id INTEGER PRIMARY KEY,\n    \
                 table_name TEXT,\n    \
                 op TEXT,\n    \
                 txid INTEGER,\n    \
                 old_row TEXT,\n    \
                 new_row TEXT,\n    \
                 reason TEXT NOT NULL,\n    \
                 failed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))\n);\n"
            );
            for (table, plan) in tables {
                sqlite_triggers(&mut sql, table, plan);
            }
        }
    }
    sql
}

/// `jsonb_build_object('c', ROW.c::text, ...)` / `json_object(...)`.
fn row_object(dialect: Dialect, row: &str, columns: &[&str]) -> String {
    let pairs: Vec<String> = columns
        .iter()
        .map(|c| {
            let key = literal(c);
            let c = dialect.name(c);
            match dialect {
                Dialect::Postgres => format!("{key}, {row}.{c}::text"),
                Dialect::Sqlite => format!("{key}, CAST({row}.{c} AS TEXT)"),
            }
        })
        .collect();
    match dialect {
        Dialect::Postgres => format!("jsonb_build_object({})", pairs.join(", ")),
        Dialect::Sqlite => format!("json_object({})", pairs.join(", ")),
    }
}

/// `OLD.a IS DISTINCT FROM NEW.a OR ...` / `OLD.a IS NOT NEW.a OR ...`.
fn changed(dialect: Dialect, columns: &[&str]) -> String {
    let op = match dialect {
        Dialect::Postgres => "IS DISTINCT FROM",
        Dialect::Sqlite => "IS NOT",
    };
    columns
        .iter()
        .map(|c| dialect.name(c))
        .map(|c| format!("OLD.{c} {op} NEW.{c}"))
        .collect::<Vec<_>>()
        .join(" OR ")
}

fn postgres_triggers(sql: &mut String, table: &str, plan: &TablePlan) {
    let function = object_name("cached_instances_capture", table);
    let name = literal(table);
    let old = row_object(Dialect::Postgres, "OLD", &plan.captured);
    let new = row_object(Dialect::Postgres, "NEW", &plan.captured);
    let changed = changed(Dialect::Postgres, &plan.watched);
    let table_name = Dialect::Postgres.table(table);
    // One function per table; OLD and NEW are NULL where TG_OP has none.
    // Its search path is the installer's: the outbox is found whatever the
    // writing session's own.
    let _ = write!(
        sql,
        "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql\n    \
         SET search_path FROM CURRENT AS $cached$\n\
         BEGIN\n    \
         INSERT INTO {OUTBOX_TABLE} (table_name, op, old_row, new_row) VALUES (\n        \
         {name},\n        \
         left(TG_OP, 1),\n        \
         CASE WHEN TG_OP <> 'INSERT' THEN {old} END,\n        \
         CASE WHEN TG_OP <> 'DELETE' THEN {new} END\n    \
         );\n    \
         RETURN NULL;\n\
         END\n\
         $cached$;\n\
         DROP TRIGGER IF EXISTS cached_instances_capture ON {table_name};\n\
         CREATE TRIGGER cached_instances_capture AFTER INSERT OR DELETE ON {table_name}\n    \
         FOR EACH ROW EXECUTE PROCEDURE {function}();\n\
         DROP TRIGGER IF EXISTS cached_instances_capture_update ON {table_name};\n\
         CREATE TRIGGER cached_instances_capture_update AFTER UPDATE ON {table_name}\n    \
         FOR EACH ROW WHEN ({changed}) EXECUTE PROCEDURE {function}();\n"
    );
}

fn sqlite_triggers(sql: &mut String, table: &str, plan: &TablePlan) {
    let name = literal(table);
    let old = row_object(Dialect::Sqlite, "OLD", &plan.captured);
    let new = row_object(Dialect::Sqlite, "NEW", &plan.captured);
    let changed = changed(Dialect::Sqlite, &plan.watched);
    let table_name = Dialect::Sqlite.table(table);
    for (event, op, when, old, new) in [
        ("INSERT", "I", String::new(), "NULL", new.as_str()),
        (
            "UPDATE",
            "U",
            format!(" WHEN {changed}"),
            old.as_str(),
            new.as_str(),
        ),
        ("DELETE", "D", String::new(), old.as_str(), "NULL"),
    ] {
        let trigger = object_name(
            &format!("cached_instances_capture_{}", event.to_lowercase()),
            table,
        );
        let _ = write!(
            sql,
            "DROP TRIGGER IF EXISTS {trigger};\n\
             CREATE TRIGGER {trigger} AFTER {event} ON {table_name}{when}\n\
             BEGIN\n    \
             INSERT INTO {OUTBOX_TABLE} (table_name, op, old_row, new_row)\n        \
             VALUES ({name}, '{op}', {old}, {new});\n\
             END;\n"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHOICE: Capture = Capture::new(
        "choices",
        "id",
        &["id", "question_id", "choice_text"],
        &[CapturedReference::new(0, "question_id")],
        &[CapturedJoin::new(1, "votes", "choice_id", "user_id")],
    );
    const USER: Capture = Capture::new(
        "users",
        "id",
        &["id", "username"],
        &[],
        &[CapturedJoin::new(0, "votes", "user_id", "choice_id")],
    );

    #[test]
    fn a_join_table_two_models_declare_is_captured_once() {
        let tables = plan([&CHOICE, &USER]);
        assert_eq!(
            tables.keys().copied().collect::<Vec<_>>(),
            ["choices", "users", "votes"]
        );
        assert_eq!(tables["votes"].captured, ["choice_id", "user_id"]);
        assert_eq!(tables["choices"].captured, ["id", "question_id"]);
        assert_eq!(
            tables["choices"].watched,
            ["id", "question_id", "choice_text"]
        );
    }

    #[test]
    fn updates_are_captured_only_when_a_cached_column_changed() {
        let sql = ddl(Dialect::Postgres, &plan([&CHOICE]));
        assert!(sql.contains(
            r#"WHEN (OLD."id" IS DISTINCT FROM NEW."id" OR OLD."question_id" IS DISTINCT FROM NEW."question_id" OR OLD."choice_text" IS DISTINCT FROM NEW."choice_text")"#
        ));
        let sql = ddl(Dialect::Sqlite, &plan([&CHOICE]));
        assert!(sql.contains(
            "AFTER UPDATE ON `choices` WHEN OLD.`id` IS NOT NEW.`id` OR OLD.`question_id` IS NOT NEW.`question_id` OR OLD.`choice_text` IS NOT NEW.`choice_text`"
        ));
    }

    #[test]
    fn object_names_are_identifiers_and_distinct() {
        let a = object_name("f", "polls.questions");
        let b = object_name("f", "polls_questions");
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        assert_eq!(literal("it's"), "'it''s'");
    }
}
