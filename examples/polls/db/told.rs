//! The writes for callers without the change feed, who tell the cache
//! themselves after the commit (`Cache::saved_from`, `saved`, `deleted`):
//! each runs the plain SQL write between reads of the previous and the new
//! state, in its transaction. The API does not need them; the soak test's
//! writers use them.

use cached_instances::sqlx::SqlxModel;
use cached_instances::{CachedInstance, LoadError, Loader};
use chrono::{DateTime, Utc};

use super::{ChoiceChanges, Db, Q, QuestionChanges, WriteError};
use crate::{Choice, Question};

/// Instance `id` before and after `write`, in `q`'s transaction.
async fn around<T>(
    q: &mut Q<'_>,
    id: i64,
    write: impl AsyncFnOnce(&mut Q<'_>) -> Result<(), WriteError>,
) -> Result<(T, T), WriteError>
where
    T: SqlxModel<sqlx::Sqlite> + SqlxModel<sqlx::Postgres> + CachedInstance<Pk = i64>,
{
    let previous = q.one(id).await?;
    write(q).await?;
    Ok((previous, q.one(id).await?))
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
            let id = q.create_question(question_text, pub_date).await?;
            q.one(id).await
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
            around(q, id, async |q| q.update_question(id, &changes).await).await
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
            let id = q.create_choice(question_id, choice_text).await?;
            q.one(id).await
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
            around(q, id, async |q| q.update_choice(id, &changes).await).await
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
            let previous = q.one(id).await?;
            q.delete_choice(id).await?;
            Ok(previous)
        })
        .await
    }

    /// Records (`true`) or withdraws (`false`) `user_id`'s vote for choice
    /// `choice_id`; returns the choice (previous, new).
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
            around(q, choice_id, async |q| {
                q.set_vote(choice_id, user_id, voted).await
            })
            .await
        })
        .await
    }
}

/// The models' derived loaders on whichever database this is, for callers
/// that read the database directly (the soak test's snapshots).
impl<T> Loader<T> for Db
where
    T: SqlxModel<sqlx::Sqlite> + SqlxModel<sqlx::Postgres>,
{
    async fn load(&self, pks: &[T::Pk]) -> Result<Vec<T>, LoadError> {
        self.load(pks).await.map_err(LoadError::new)
    }
}
