//! Relation shapes beyond the polls example: nullable and self-referencing
//! foreign keys, a primary key that is also a foreign key, a one-sided
//! many-to-many, string keys, and relations to a model in another module.

use cached_instances::{CachedInstance, RelationKind};

mod accounts {
    #[derive(cached_instances::CachedInstance)]
    pub struct Account {
        #[cached(pk)]
        pub handle: String,
    }
}

#[derive(CachedInstance)]
pub struct Category {
    #[cached(pk)]
    pub id: i32,
    #[cached(references = Self)]
    pub parent: Option<i32>,
    #[cached(has_many = Category, via = parent)]
    pub children: Vec<i32>,
    #[cached(references = accounts::Account)]
    pub owner: String,
    #[cached(many_to_many = accounts::Account)]
    pub editors: Vec<String>,
}

/// One-to-one extension of an account.
#[derive(CachedInstance)]
pub struct Profile {
    #[cached(pk, references = accounts::Account)]
    pub handle: String,
    pub bio: String,
}

fn main() {
    let relations = Category::SCHEMA.relations;
    assert_eq!(relations.len(), 4);
    assert_eq!(relations[0].target, "Category");
    assert_eq!(relations[1].kind, RelationKind::HasMany { via: "parent" });
    assert_eq!(relations[2].target, "Account");
    assert_eq!(
        relations[3].kind,
        RelationKind::ManyToMany { inverse: None }
    );
    assert_eq!(Profile::SCHEMA.relations[0].field, "handle");

    let category = Category {
        id: 2,
        parent: Some(1),
        children: vec![3, 4],
        owner: "a:b".into(),
        editors: vec!["x".into(), "y".into()],
    };
    let mut links = Vec::new();
    for i in 0..relations.len() {
        category.relation_links(i, &mut links);
    }
    assert_eq!(links, ["1", "3", "4", "sa%3Ab", "sx", "sy"]);
}
