//! The writes: plain SQL, run inside a transaction ([`Db::transaction`]).
//! Nothing here reads the previous state or tells the cache: the change
//! feed's triggers record what each statement changed (the old and the new
//! question of a moved choice, both sides of a vote, the rows a delete
//! cascades to).
//!
//! [`Db::transaction`]: super::Db::transaction

use std::fmt;

use cached_instances::feed::FeedError;
use chrono::{DateTime, Utc};

use super::sql::{Arg, Q};

/// Why a write did not happen.
#[derive(Debug)]
pub enum WriteError {
    /// The instance written does not exist.
    NotFound {
        /// Its model.
        model: &'static str,
        /// Its pk.
        id: i64,
    },
    /// The write refers to something that does not exist, or breaks a rule.
    Invalid(String),
    /// The database failed.
    Db(sqlx::Error),
    /// The change feed could not mark the transaction.
    Feed(FeedError),
}

impl From<FeedError> for WriteError {
    fn from(e: FeedError) -> Self {
        match e {
            FeedError::Database(e) => WriteError::Db(e),
            other => WriteError::Feed(other),
        }
    }
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::NotFound { model, id } => write!(f, "{model} {id} not found"),
            WriteError::Invalid(message) => f.write_str(message),
            WriteError::Db(e) => write!(f, "database error: {e}"),
            WriteError::Feed(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WriteError::Db(e) => Some(e),
            WriteError::Feed(e) => Some(e),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for WriteError {
    fn from(e: sqlx::Error) -> Self {
        WriteError::Db(e)
    }
}

/// Changes to a question; `None` keeps the field.
#[derive(Debug, Clone, Default)]
pub struct QuestionChanges {
    /// A new text.
    pub question_text: Option<String>,
    /// A new publication date.
    pub pub_date: Option<DateTime<Utc>>,
}

/// Changes to a choice; `None` keeps the field.
#[derive(Debug, Clone, Default)]
pub struct ChoiceChanges {
    /// Moves the choice to another question.
    pub question_id: Option<i64>,
    /// A new text.
    pub choice_text: Option<String>,
}

async fn require(q: &mut Q<'_>, table: &str, id: i64) -> Result<bool, WriteError> {
    let found: Option<(i64,)> = q
        .fetch_optional(
            &format!("SELECT id FROM {table} WHERE id = $1"),
            &[Arg::Int(id)],
        )
        .await?;
    Ok(found.is_some())
}

/// `Invalid` unless a row `id` of `table` exists.
async fn refers(q: &mut Q<'_>, table: &str, model: &str, id: i64) -> Result<(), WriteError> {
    if require(q, table, id).await? {
        Ok(())
    } else {
        Err(WriteError::Invalid(format!("{model} {id} does not exist")))
    }
}

/// `NotFound` unless the statement changed a row.
fn changed(rows: u64, model: &'static str, id: i64) -> Result<(), WriteError> {
    if rows == 0 {
        Err(WriteError::NotFound { model, id })
    } else {
        Ok(())
    }
}

impl Q<'_> {
    /// Inserts a question; returns its id.
    ///
    /// # Errors
    ///
    /// [`WriteError::Db`] when the database fails.
    pub async fn create_question(
        &mut self,
        question_text: &str,
        pub_date: DateTime<Utc>,
    ) -> Result<i64, WriteError> {
        let (id,): (i64,) = self
            .fetch_optional(
                "INSERT INTO questions (question_text, pub_date) VALUES ($1, $2) RETURNING id",
                &[Arg::Text(question_text), Arg::Time(pub_date)],
            )
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        Ok(id)
    }

    /// Updates a question.
    ///
    /// # Errors
    ///
    /// [`WriteError::NotFound`] when there is no such question.
    pub async fn update_question(
        &mut self,
        id: i64,
        changes: &QuestionChanges,
    ) -> Result<(), WriteError> {
        let rows = self
            .execute(
                "UPDATE questions SET question_text = COALESCE($2, question_text), \
                 pub_date = COALESCE($3, pub_date) WHERE id = $1",
                &[
                    Arg::Int(id),
                    Arg::OptText(changes.question_text.as_deref()),
                    Arg::OptTime(changes.pub_date),
                ],
            )
            .await?;
        changed(rows, "Question", id)
    }

    /// Deletes a question; its choices and their votes go with it
    /// (`ON DELETE CASCADE`).
    ///
    /// # Errors
    ///
    /// [`WriteError::NotFound`] when there is no such question.
    pub async fn delete_question(&mut self, id: i64) -> Result<(), WriteError> {
        let rows = self
            .execute("DELETE FROM questions WHERE id = $1", &[Arg::Int(id)])
            .await?;
        changed(rows, "Question", id)
    }

    /// Inserts a choice of question `question_id`; returns its id.
    ///
    /// # Errors
    ///
    /// [`WriteError::Invalid`] when the question does not exist.
    pub async fn create_choice(
        &mut self,
        question_id: i64,
        choice_text: &str,
    ) -> Result<i64, WriteError> {
        refers(self, "questions", "question", question_id).await?;
        let (id,): (i64,) = self
            .fetch_optional(
                "INSERT INTO choices (question_id, choice_text) VALUES ($1, $2) RETURNING id",
                &[Arg::Int(question_id), Arg::Text(choice_text)],
            )
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        Ok(id)
    }

    /// Updates a choice, possibly moving it to another question.
    ///
    /// # Errors
    ///
    /// [`WriteError::NotFound`] when there is no such choice,
    /// [`WriteError::Invalid`] when the new question does not exist.
    pub async fn update_choice(
        &mut self,
        id: i64,
        changes: &ChoiceChanges,
    ) -> Result<(), WriteError> {
        if let Some(question_id) = changes.question_id {
            refers(self, "questions", "question", question_id).await?;
        }
        let rows = self
            .execute(
                "UPDATE choices SET question_id = COALESCE($2, question_id), \
                 choice_text = COALESCE($3, choice_text) WHERE id = $1",
                &[
                    Arg::Int(id),
                    Arg::OptInt(changes.question_id),
                    Arg::OptText(changes.choice_text.as_deref()),
                ],
            )
            .await?;
        changed(rows, "Choice", id)
    }

    /// Deletes a choice; its votes go with it (`ON DELETE CASCADE`).
    ///
    /// # Errors
    ///
    /// [`WriteError::NotFound`] when there is no such choice.
    pub async fn delete_choice(&mut self, id: i64) -> Result<(), WriteError> {
        let rows = self
            .execute("DELETE FROM choices WHERE id = $1", &[Arg::Int(id)])
            .await?;
        changed(rows, "Choice", id)
    }

    /// Records (`true`) or withdraws (`false`) `user_id`'s vote for choice
    /// `choice_id`. Voting twice or withdrawing a vote never cast changes
    /// nothing.
    ///
    /// # Errors
    ///
    /// [`WriteError::NotFound`] when there is no such choice,
    /// [`WriteError::Invalid`] when the user does not exist.
    pub async fn set_vote(
        &mut self,
        choice_id: i64,
        user_id: i64,
        voted: bool,
    ) -> Result<(), WriteError> {
        if !require(self, "choices", choice_id).await? {
            return Err(WriteError::NotFound {
                model: "Choice",
                id: choice_id,
            });
        }
        refers(self, "users", "user", user_id).await?;
        let sql = if voted {
            "INSERT INTO votes (user_id, choice_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM votes WHERE user_id = $1 AND choice_id = $2"
        };
        self.execute(sql, &[Arg::Int(user_id), Arg::Int(choice_id)])
            .await?;
        Ok(())
    }
}
