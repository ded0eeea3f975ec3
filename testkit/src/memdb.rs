//! An in-process polls database for the demo and the tests, with loaders that count
//! their calls, log the pks they were asked for, and can be held mid-load to
//! script an interleaving (the stale-set race).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use cached_instances::{CachedInstance, LoadError, Loader};
use chrono::{DateTime, TimeZone, Utc};
use polls::{Choice, Question, User};
use tokio::sync::oneshot;

#[derive(Debug, Default, Clone)]
pub struct Tables {
    pub users: BTreeMap<i64, String>,
    pub questions: BTreeMap<i64, (String, DateTime<Utc>)>,
    /// choice id -> (question id, text)
    pub choices: BTreeMap<i64, (i64, String)>,
    /// (user id, choice id)
    pub votes: BTreeSet<(i64, i64)>,
}

/// A load held after it read its rows, until released.
struct Hold {
    read: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

#[derive(Default)]
struct Inner {
    tables: Mutex<Tables>,
    loads: Mutex<Vec<(&'static str, Vec<i64>)>>,
    holds: Mutex<HashMap<&'static str, Hold>>,
}

/// The database. Cheap to clone; clones share the tables.
#[derive(Clone, Default)]
pub struct MemDb {
    inner: Arc<Inner>,
}

/// The handle of a held load: wait until it has read, then let it finish.
pub struct HeldLoad {
    pub read: oneshot::Receiver<()>,
    pub release: oneshot::Sender<()>,
}

pub fn date(day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, day, 12, 0, 0).unwrap()
}

impl MemDb {
    /// Three users, two questions; choices 1 and 2 answer question 1, choice 3
    /// answers question 2; user 1 voted for choice 1, user 2 for choice 3.
    pub fn seeded() -> Self {
        let db = MemDb::default();
        db.write(|t| {
            for (id, name) in [(1, "ann"), (2, "bob"), (3, "cy")] {
                t.users.insert(id, name.into());
            }
            t.questions.insert(1, ("What's up?".into(), date(1)));
            t.questions.insert(2, ("Tea or coffee?".into(), date(2)));
            t.choices.insert(1, (1, "Not much".into()));
            t.choices.insert(2, (1, "The sky".into()));
            t.choices.insert(3, (2, "Tea".into()));
            t.votes.insert((1, 1));
            t.votes.insert((2, 3));
        });
        db
    }

    /// Changes the tables (the "commit").
    pub fn write<R>(&self, f: impl FnOnce(&mut Tables) -> R) -> R {
        f(&mut self.inner.tables.lock().unwrap())
    }

    pub fn user(&self, id: i64) -> Option<User> {
        Self::assemble_user(&self.inner.tables.lock().unwrap(), id)
    }
    pub fn question(&self, id: i64) -> Option<Question> {
        Self::assemble_question(&self.inner.tables.lock().unwrap(), id)
    }
    pub fn choice(&self, id: i64) -> Option<Choice> {
        Self::assemble_choice(&self.inner.tables.lock().unwrap(), id)
    }

    fn assemble_user(t: &Tables, id: i64) -> Option<User> {
        let username = t.users.get(&id)?.clone();
        let votes = t
            .votes
            .iter()
            .filter(|(u, _)| *u == id)
            .map(|(_, c)| *c)
            .collect();
        Some(User {
            id,
            username,
            votes,
        })
    }
    fn assemble_question(t: &Tables, id: i64) -> Option<Question> {
        let (question_text, pub_date) = t.questions.get(&id)?.clone();
        let choices = t
            .choices
            .iter()
            .filter(|(_, (q, _))| *q == id)
            .map(|(c, _)| *c)
            .collect();
        Some(Question {
            id,
            question_text,
            pub_date,
            choices,
        })
    }
    fn assemble_choice(t: &Tables, id: i64) -> Option<Choice> {
        let (question_id, choice_text) = t.choices.get(&id)?.clone();
        let voters = t
            .votes
            .iter()
            .filter(|(_, c)| *c == id)
            .map(|(u, _)| *u)
            .collect();
        Some(Choice {
            id,
            question_id,
            choice_text,
            voters,
        })
    }

    /// Every load so far: (model, pks asked for).
    pub fn loads(&self) -> Vec<(&'static str, Vec<i64>)> {
        self.inner.loads.lock().unwrap().clone()
    }
    /// How many loads of `model` so far.
    pub fn load_count(&self, model: &str) -> usize {
        self.loads().iter().filter(|(m, _)| *m == model).count()
    }
    pub fn clear_loads(&self) {
        self.inner.loads.lock().unwrap().clear();
    }

    /// Holds the next load of `T` after it has read its rows.
    pub fn hold_next_load<T: CachedInstance>(&self) -> HeldLoad {
        let (read_tx, read_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        self.inner.holds.lock().unwrap().insert(
            T::MODEL,
            Hold {
                read: read_tx,
                release: release_rx,
            },
        );
        HeldLoad {
            read: read_rx,
            release: release_tx,
        }
    }

    async fn load_with<T: CachedInstance>(
        &self,
        pks: &[i64],
        assemble: fn(&Tables, i64) -> Option<T>,
    ) -> Result<Vec<T>, LoadError> {
        self.inner
            .loads
            .lock()
            .unwrap()
            .push((T::MODEL, pks.to_vec()));
        let rows: Vec<T> = {
            let t = self.inner.tables.lock().unwrap();
            pks.iter().filter_map(|&pk| assemble(&t, pk)).collect()
        };
        let hold = self.inner.holds.lock().unwrap().remove(T::MODEL);
        if let Some(hold) = hold {
            let _ = hold.read.send(());
            let _ = hold.release.await;
        }
        Ok(rows)
    }
}

impl Loader<User> for MemDb {
    async fn load(&self, pks: &[i64]) -> Result<Vec<User>, LoadError> {
        self.load_with(pks, Self::assemble_user).await
    }
}
impl Loader<Question> for MemDb {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Question>, LoadError> {
        self.load_with(pks, Self::assemble_question).await
    }
}
impl Loader<Choice> for MemDb {
    async fn load(&self, pks: &[i64]) -> Result<Vec<Choice>, LoadError> {
        self.load_with(pks, Self::assemble_choice).await
    }
}
