//! The writes. Each runs in a transaction, reads the previous state of what
//! it changes inside it, commits, and returns the previous and new states;
//! the caller tells the cache, after the commit.

use std::fmt;
use std::future::Future;

use chrono::{DateTime, Utc};

use super::Db;
use super::loaders::{load_choices, load_questions};
use super::sql::{Arg, Q};
use crate::{Choice, Question};

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
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::NotFound { model, id } => write!(f, "{model} {id} not found"),
            WriteError::Invalid(message) => f.write_str(message),
            WriteError::Db(e) => write!(f, "database error: {e}"),
        }
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WriteError::Db(e) => Some(e),
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

async fn one<T>(
    rows: impl Future<Output = Result<Vec<T>, sqlx::Error>>,
    model: &'static str,
    id: i64,
) -> Result<T, WriteError> {
    rows.await?.pop().ok_or(WriteError::NotFound { model, id })
}

async fn require(q: &mut Q<'_>, table: &str, model: &str, id: i64) -> Result<(), WriteError> {
    let found: Option<(i64,)> = q
        .fetch_optional(
            &format!("SELECT id FROM {table} WHERE id = $1"),
            &[Arg::Int(id)],
        )
        .await?;
    match found {
        Some(_) => Ok(()),
        None => Err(WriteError::Invalid(format!("{model} {id} does not exist"))),
    }
}

impl Db {
    /// Inserts a question; returns it as stored.
    ///
    /// # Errors
    ///
    /// [`WriteError::Db`] when the database fails.
    pub async fn create_question(
        &self,
        question_text: &str,
        pub_date: DateTime<Utc>,
    ) -> Result<Question, WriteError> {
        self.transaction(async |q| {
            let (id,): (i64,) = q
                .fetch_optional(
                    "INSERT INTO questions (question_text, pub_date) VALUES ($1, $2) RETURNING id",
                    &[Arg::Text(question_text), Arg::Time(pub_date)],
                )
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            let new = one(load_questions(q, &[id]), "Question", id).await?;
            Ok(new)
        })
        .await
    }

    /// Updates a question; returns (previous, new).
    ///
    /// # Errors
    ///
    /// [`WriteError::NotFound`] when there is no such question.
    pub async fn update_question(
        &self,
        id: i64,
        changes: QuestionChanges,
    ) -> Result<(Question, Question), WriteError> {
        self.transaction(async |q| {
            let previous = one(load_questions(q, &[id]), "Question", id).await?;
            let text = changes
                .question_text
                .as_deref()
                .unwrap_or(&previous.question_text);
            let pub_date = changes.pub_date.unwrap_or(previous.pub_date);
            q.execute(
                "UPDATE questions SET question_text = $2, pub_date = $3 WHERE id = $1",
                &[Arg::Int(id), Arg::Text(text), Arg::Time(pub_date)],
            )
            .await?;
            let new = one(load_questions(q, &[id]), "Question", id).await?;
            Ok((previous, new))
        })
        .await
    }

    /// Deletes a question with its choices and their votes; returns the
    /// question and the choices as they were.
    ///
    /// # Errors
    ///
    /// [`WriteError::NotFound`] when there is no such question.
    pub async fn delete_question(&self, id: i64) -> Result<(Question, Vec<Choice>), WriteError> {
        self.transaction(async |q| {
            let question = one(load_questions(q, &[id]), "Question", id).await?;
            let choices = load_choices(q, &question.choices).await?;
            q.execute(
                "DELETE FROM votes WHERE choice_id IN (SELECT id FROM choices WHERE question_id = $1)",
                &[Arg::Int(id)],
            )
            .await?;
            q.execute(
                "DELETE FROM choices WHERE question_id = $1",
                &[Arg::Int(id)],
            )
            .await?;
            q.execute("DELETE FROM questions WHERE id = $1", &[Arg::Int(id)])
                .await?;
            Ok((question, choices))
        })
        .await
    }

    /// Inserts a choice of question `question_id`; returns it as stored.
    ///
    /// # Errors
    ///
    /// [`WriteError::Invalid`] when the question does not exist.
    pub async fn create_choice(
        &self,
        question_id: i64,
        choice_text: &str,
    ) -> Result<Choice, WriteError> {
        self.transaction(async |q| {
            require(q, "questions", "question", question_id).await?;
            let (id,): (i64,) = q
                .fetch_optional(
                    "INSERT INTO choices (question_id, choice_text) VALUES ($1, $2) RETURNING id",
                    &[Arg::Int(question_id), Arg::Text(choice_text)],
                )
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            let new = one(load_choices(q, &[id]), "Choice", id).await?;
            Ok(new)
        })
        .await
    }

    /// Updates a choice, possibly moving it to another question; returns
    /// (previous, new).
    ///
    /// # Errors
    ///
    /// [`WriteError::NotFound`] when there is no such choice,
    /// [`WriteError::Invalid`] when the new question does not exist.
    pub async fn update_choice(
        &self,
        id: i64,
        changes: ChoiceChanges,
    ) -> Result<(Choice, Choice), WriteError> {
        self.transaction(async |q| {
            let previous = one(load_choices(q, &[id]), "Choice", id).await?;
            let question_id = changes.question_id.unwrap_or(previous.question_id);
            if question_id != previous.question_id {
                require(q, "questions", "question", question_id).await?;
            }
            let text = changes
                .choice_text
                .as_deref()
                .unwrap_or(&previous.choice_text);
            q.execute(
                "UPDATE choices SET question_id = $2, choice_text = $3 WHERE id = $1",
                &[Arg::Int(id), Arg::Int(question_id), Arg::Text(text)],
            )
            .await?;
            let new = one(load_choices(q, &[id]), "Choice", id).await?;
            Ok((previous, new))
        })
        .await
    }

    /// Deletes a choice and its votes; returns it as it was.
    ///
    /// # Errors
    ///
    /// [`WriteError::NotFound`] when there is no such choice.
    pub async fn delete_choice(&self, id: i64) -> Result<Choice, WriteError> {
        self.transaction(async |q| {
            let choice = one(load_choices(q, &[id]), "Choice", id).await?;
            q.execute("DELETE FROM votes WHERE choice_id = $1", &[Arg::Int(id)])
                .await?;
            q.execute("DELETE FROM choices WHERE id = $1", &[Arg::Int(id)])
                .await?;
            Ok(choice)
        })
        .await
    }

    /// Records (`true`) or withdraws (`false`) `user_id`'s vote for choice
    /// `choice_id`; returns the choice (previous, new). Voting twice or
    /// withdrawing a vote never cast changes nothing.
    ///
    /// # Errors
    ///
    /// [`WriteError::NotFound`] when there is no such choice,
    /// [`WriteError::Invalid`] when the user does not exist.
    pub async fn set_vote(
        &self,
        choice_id: i64,
        user_id: i64,
        voted: bool,
    ) -> Result<(Choice, Choice), WriteError> {
        self.transaction(async |q| {
            let previous = one(load_choices(q, &[choice_id]), "Choice", choice_id).await?;
            require(q, "users", "user", user_id).await?;
            let sql = if voted {
                "INSERT INTO votes (user_id, choice_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            } else {
                "DELETE FROM votes WHERE user_id = $1 AND choice_id = $2"
            };
            q.execute(sql, &[Arg::Int(user_id), Arg::Int(choice_id)])
                .await?;
            let new = one(load_choices(q, &[choice_id]), "Choice", choice_id).await?;
            Ok((previous, new))
        })
        .await
    }
}
