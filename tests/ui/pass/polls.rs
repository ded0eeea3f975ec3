//! The polls example's models: relations in both directions between three
//! models, including two pairs that name each other.

use cached_instances::{CachedInstance, RelationKind};
use polls::{Choice, Question, User};

fn main() {
    assert_eq!(User::SCHEMA.relations[0].target, "Choice");
    assert_eq!(
        Question::SCHEMA.relations[0].kind,
        RelationKind::HasMany { via: "question_id" }
    );
    assert_eq!(Choice::SCHEMA.relations.len(), 2);
}
