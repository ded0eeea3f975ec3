//! The list queries: one statement for a page of pks and the total count.
//!
//! The page is `LEFT JOIN`ed onto the count, so the count comes back even for
//! a page past the end (where `count(*) OVER ()` would return no row at all).

use chrono::{DateTime, Utc};

use super::Db;
use super::sql::Arg;

/// A page of pks and the total row count.
pub type PageOfPks = (Vec<i64>, u64);

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Db {
    async fn page(&self, sql: &str, args: &[Arg<'_>]) -> Result<PageOfPks, sqlx::Error> {
        let mut conn = self.acquire().await?;
        let rows: Vec<(i64, Option<i64>)> = conn.on().fetch(sql, args).await?;
        let count = rows.first().map_or(0, |r| u64::try_from(r.0).unwrap_or(0));
        Ok((rows.into_iter().filter_map(|r| r.1).collect(), count))
    }

    /// Users by id.
    ///
    /// # Errors
    ///
    /// When the statement fails.
    pub async fn user_page(&self, limit: u64, offset: u64) -> Result<PageOfPks, sqlx::Error> {
        self.page(
            "SELECT total.n, page.id
             FROM (SELECT count(*) AS n FROM users) AS total
             LEFT JOIN (SELECT id FROM users ORDER BY id LIMIT $1 OFFSET $2) AS page ON TRUE
             ORDER BY page.id",
            &[Arg::Int(to_i64(limit)), Arg::Int(to_i64(offset))],
        )
        .await
    }

    /// The questions published at `now`, newest first.
    ///
    /// # Errors
    ///
    /// When the statement fails.
    pub async fn published_question_page(
        &self,
        now: DateTime<Utc>,
        limit: u64,
        offset: u64,
    ) -> Result<PageOfPks, sqlx::Error> {
        self.page(
            "SELECT total.n, page.id
             FROM (SELECT count(*) AS n FROM questions WHERE pub_date <= $3) AS total
             LEFT JOIN (
                 SELECT id, pub_date FROM questions WHERE pub_date <= $3
                 ORDER BY pub_date DESC, id DESC LIMIT $1 OFFSET $2
             ) AS page ON TRUE
             ORDER BY page.pub_date DESC, page.id DESC",
            &[
                Arg::Int(to_i64(limit)),
                Arg::Int(to_i64(offset)),
                Arg::Time(now),
            ],
        )
        .await
    }

    /// Choices by id.
    ///
    /// # Errors
    ///
    /// When the statement fails.
    pub async fn choice_page(&self, limit: u64, offset: u64) -> Result<PageOfPks, sqlx::Error> {
        self.page(
            "SELECT total.n, page.id
             FROM (SELECT count(*) AS n FROM choices) AS total
             LEFT JOIN (SELECT id FROM choices ORDER BY id LIMIT $1 OFFSET $2) AS page ON TRUE
             ORDER BY page.id",
            &[Arg::Int(to_i64(limit)), Arg::Int(to_i64(offset))],
        )
        .await
    }
}
