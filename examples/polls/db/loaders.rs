//! The loaders the cache calls: one statement for the rows of all the pks
//! asked for, and one per relation list, never one per instance.
//!
//! Relation lists are in ascending pk order, so a representation only
//! changes when the data does. These are the only functions that build
//! models from rows; generated loaders can replace this file.

use std::collections::HashMap;

use cached_instances::{LoadError, Loader};
use chrono::{DateTime, Utc};

use super::Db;
use super::sql::Q;
use crate::{Choice, Question, User};

/// Groups `(owner, item)` pairs by owner, keeping the order.
fn group(pairs: Vec<(i64, i64)>) -> HashMap<i64, Vec<i64>> {
    let mut by_owner: HashMap<i64, Vec<i64>> = HashMap::new();
    for (owner, item) in pairs {
        by_owner.entry(owner).or_default().push(item);
    }
    by_owner
}

pub(super) async fn load_users(q: &mut Q<'_>, ids: &[i64]) -> Result<Vec<User>, sqlx::Error> {
    let rows: Vec<(i64, String)> = q
        .fetch_where_in("SELECT id, username FROM users", "id", ids, "")
        .await?;
    let found: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let mut votes = group(
        q.fetch_where_in(
            "SELECT user_id, choice_id FROM votes",
            "user_id",
            &found,
            "ORDER BY user_id, choice_id",
        )
        .await?,
    );
    Ok(rows
        .into_iter()
        .map(|(id, username)| User {
            id,
            username,
            votes: votes.remove(&id).unwrap_or_default(),
        })
        .collect())
}

pub(super) async fn load_questions(
    q: &mut Q<'_>,
    ids: &[i64],
) -> Result<Vec<Question>, sqlx::Error> {
    let rows: Vec<(i64, String, DateTime<Utc>)> = q
        .fetch_where_in(
            "SELECT id, question_text, pub_date FROM questions",
            "id",
            ids,
            "",
        )
        .await?;
    let found: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let mut choices = group(
        q.fetch_where_in(
            "SELECT question_id, id FROM choices",
            "question_id",
            &found,
            "ORDER BY question_id, id",
        )
        .await?,
    );
    Ok(rows
        .into_iter()
        .map(|(id, question_text, pub_date)| Question {
            id,
            question_text,
            pub_date,
            choices: choices.remove(&id).unwrap_or_default(),
        })
        .collect())
}

pub(super) async fn load_choices(q: &mut Q<'_>, ids: &[i64]) -> Result<Vec<Choice>, sqlx::Error> {
    let rows: Vec<(i64, i64, String)> = q
        .fetch_where_in(
            "SELECT id, question_id, choice_text FROM choices",
            "id",
            ids,
            "",
        )
        .await?;
    let found: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let mut voters = group(
        q.fetch_where_in(
            "SELECT choice_id, user_id FROM votes",
            "choice_id",
            &found,
            "ORDER BY choice_id, user_id",
        )
        .await?,
    );
    Ok(rows
        .into_iter()
        .map(|(id, question_id, choice_text)| Choice {
            id,
            question_id,
            choice_text,
            voters: voters.remove(&id).unwrap_or_default(),
        })
        .collect())
}

impl Loader<User> for Db {
    async fn load(&self, pks: &[i64]) -> Result<Vec<User>, LoadError> {
        self.count_loader_call();
        let mut conn = self.acquire().await.map_err(LoadError::new)?;
        load_users(&mut conn.on(self), pks)
            .await
            .map_err(LoadError::new)
    }
}

impl Loader<Question> for Db {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Question>, LoadError> {
        self.count_loader_call();
        let mut conn = self.acquire().await.map_err(LoadError::new)?;
        load_questions(&mut conn.on(self), pks)
            .await
            .map_err(LoadError::new)
    }
}

impl Loader<Choice> for Db {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Choice>, LoadError> {
        self.count_loader_call();
        let mut conn = self.acquire().await.map_err(LoadError::new)?;
        load_choices(&mut conn.on(self), pks)
            .await
            .map_err(LoadError::new)
    }
}
