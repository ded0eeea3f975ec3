//! The poll app's models: users vote for choices of questions.
//!
//! The `table`, `through`, `source` and `target` attributes describe the
//! tables `db.rs` creates, so the derive also generates batched sqlx loaders
//! for them (`cached_instances::sqlx::SqlxLoader`, which the cache loads
//! with), and the change feed's triggers on them
//! (`cached_instances::feed`).

use cached_instances::CachedInstance;
use chrono::{DateTime, Utc};

/// A user; `votes` mirrors `Choice.voters`.
#[derive(CachedInstance, Debug, Clone, PartialEq)]
#[cached(model = "User", table = "users")]
pub struct User {
    #[cached(pk)]
    pub id: i64,
    pub username: String,
    #[cached(many_to_many = Choice, inverse = voters)]
    #[cached(through = "votes", source = "user_id", target = "choice_id")]
    pub votes: Vec<i64>,
}

/// A question with its choices (the pks of the `Choice`s whose
/// `question_id` is this question). `pub_date` is `sortable`: once warmed,
/// questions are listed newest first from the cache's index.
#[derive(CachedInstance, Debug, Clone, PartialEq)]
#[cached(model = "Question", table = "questions")]
pub struct Question {
    #[cached(pk)]
    pub id: i64,
    pub question_text: String,
    #[cached(sortable)]
    pub pub_date: DateTime<Utc>,
    #[cached(has_many = Choice, via = question_id)]
    pub choices: Vec<i64>,
}

/// One answer to a question, with the users who voted for it.
#[derive(CachedInstance, Debug, Clone, PartialEq)]
#[cached(model = "Choice", table = "choices")]
pub struct Choice {
    #[cached(pk)]
    pub id: i64,
    #[cached(references = Question)]
    pub question_id: i64,
    pub choice_text: String,
    #[cached(many_to_many = User, inverse = votes)]
    #[cached(through = "votes", source = "choice_id", target = "user_id")]
    pub voters: Vec<i64>,
}
