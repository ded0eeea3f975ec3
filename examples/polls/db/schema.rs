//! The tables, on SQLite and PostgreSQL, and the demo data.

use chrono::{DateTime, TimeDelta, Timelike, Utc};

use super::sql::Arg;
use super::{Backend, Db};

/// The tables on SQLite, with `ON DELETE CASCADE` foreign keys and the
/// indexes the list queries use; idempotent. Tests that need the polls
/// tables under their own data run it too.
pub const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS questions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    question_text TEXT NOT NULL,
    pub_date TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS questions_pub_date ON questions (pub_date);
CREATE TABLE IF NOT EXISTS choices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    question_id INTEGER NOT NULL REFERENCES questions (id) ON DELETE CASCADE,
    choice_text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS choices_question_id ON choices (question_id);
CREATE TABLE IF NOT EXISTS votes (
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    choice_id INTEGER NOT NULL REFERENCES choices (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, choice_id)
);
CREATE INDEX IF NOT EXISTS votes_choice_id ON votes (choice_id);
";

/// The tables on PostgreSQL, as [`SQLITE_SCHEMA`] on SQLite.
pub const POSTGRES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id BIGSERIAL PRIMARY KEY,
    username TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS questions (
    id BIGSERIAL PRIMARY KEY,
    question_text TEXT NOT NULL,
    pub_date TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS questions_pub_date ON questions (pub_date);
CREATE TABLE IF NOT EXISTS choices (
    id BIGSERIAL PRIMARY KEY,
    question_id BIGINT NOT NULL REFERENCES questions (id) ON DELETE CASCADE,
    choice_text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS choices_question_id ON choices (question_id);
CREATE TABLE IF NOT EXISTS votes (
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    choice_id BIGINT NOT NULL REFERENCES choices (id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, choice_id)
);
CREATE INDEX IF NOT EXISTS votes_choice_id ON votes (choice_id);
";

/// The seed data, as ids (the tables are seeded empty, so ids start at 1).
pub mod seed {
    /// Users: ann, bob, cy.
    pub const USERS: [i64; 3] = [1, 2, 3];
    /// Published questions, oldest first: "What's up?" (3 days ago), "Tea or
    /// coffee?" (2 days ago), "Tabs or spaces?" (yesterday).
    pub const PUBLISHED_QUESTIONS: [i64; 3] = [1, 2, 3];
    /// A question published 30 days from the seeding: hidden until then.
    pub const FUTURE_QUESTION: i64 = 4;
    /// Choices: 1 "Not much" and 2 "The sky" (question 1), 3 "Tea" and 4
    /// "Coffee" (question 2), 5 "Tabs" and 6 "Spaces" (question 3), 7 "Brazil"
    /// (question 4).
    pub const CHOICES: [i64; 7] = [1, 2, 3, 4, 5, 6, 7];
    /// Votes (user, choice): ann for 1 and 5, bob for 3, cy for 3.
    pub const VOTES: [(i64, i64); 4] = [(1, 1), (1, 5), (2, 3), (3, 3)];
}

impl Db {
    /// Creates the tables (and the PostgreSQL schema) unless they exist.
    ///
    /// # Errors
    ///
    /// When a statement fails.
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        let mut conn = self.acquire().await?;
        let mut q = conn.on();
        match self.backend() {
            Backend::Sqlite => q.execute_script(SQLITE_SCHEMA).await,
            Backend::Postgres => {
                let schema = self.inner.schema.as_deref().unwrap_or("public");
                q.execute_script(&format!("CREATE SCHEMA IF NOT EXISTS {schema};"))
                    .await?;
                q.execute_script(POSTGRES_SCHEMA).await
            }
        }
    }

    /// Drops the PostgreSQL schema and everything in it (tests clean up with
    /// it). Does nothing on SQLite.
    ///
    /// # Errors
    ///
    /// When the statement fails.
    pub async fn drop_schema(&self) -> Result<(), sqlx::Error> {
        if let (Backend::Postgres, Some(schema)) = (self.backend(), &self.inner.schema) {
            let mut conn = self.acquire().await?;
            conn.on()
                .execute_script(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE;"))
                .await?;
        }
        Ok(())
    }

    /// Inserts the [seed] data into empty tables, with publication dates
    /// relative to `now`. Returns `false` (and inserts nothing) when there
    /// are users already.
    ///
    /// # Errors
    ///
    /// When a statement fails.
    pub async fn seed(&self, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
        let now = now.with_nanosecond(0).unwrap_or(now);
        self.transaction(async |q| {
            let (users,): (i64,) = q
                .fetch_optional("SELECT count(*) FROM users", &[])
                .await?
                .unwrap_or((0,));
            if users > 0 {
                return Ok(false);
            }
            let mut user_ids = Vec::new();
            for name in ["ann", "bob", "cy"] {
                let (id,): (i64,) = q
                    .fetch_optional(
                        "INSERT INTO users (username) VALUES ($1) RETURNING id",
                        &[Arg::Text(name)],
                    )
                    .await?
                    .ok_or(sqlx::Error::RowNotFound)?;
                user_ids.push(id);
            }
            let questions: [(&str, i64, &[&str]); 4] = [
                ("What's up?", -3, &["Not much", "The sky"]),
                ("Tea or coffee?", -2, &["Tea", "Coffee"]),
                ("Tabs or spaces?", -1, &["Tabs", "Spaces"]),
                ("Who will win the next World Cup?", 30, &["Brazil"]),
            ];
            let mut choice_ids = Vec::new();
            for (text, days, choices) in questions {
                let pub_date = now + TimeDelta::days(days);
                let (question_id,): (i64,) = q
                    .fetch_optional(
                        "INSERT INTO questions (question_text, pub_date) VALUES ($1, $2) RETURNING id",
                        &[Arg::Text(text), Arg::Time(pub_date)],
                    )
                    .await?
                    .ok_or(sqlx::Error::RowNotFound)?;
                for choice in choices {
                    let (id,): (i64,) = q
                        .fetch_optional(
                            "INSERT INTO choices (question_id, choice_text) VALUES ($1, $2) RETURNING id",
                            &[Arg::Int(question_id), Arg::Text(choice)],
                        )
                        .await?
                        .ok_or(sqlx::Error::RowNotFound)?;
                    choice_ids.push(id);
                }
            }
            for (user, choice) in seed::VOTES {
                // Seed ids are 1-based positions.
                let (Some(&user), Some(&choice)) = (
                    user_ids.get((user - 1) as usize),
                    choice_ids.get((choice - 1) as usize),
                ) else {
                    continue;
                };
                q.execute(
                    "INSERT INTO votes (user_id, choice_id) VALUES ($1, $2)",
                    &[Arg::Int(user), Arg::Int(choice)],
                )
                .await?;
            }
            Ok(true)
        })
        .await
    }
}
