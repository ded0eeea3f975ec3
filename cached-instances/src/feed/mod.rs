//! The change feed: invalidation from the database itself, so that writes
//! by anyone (`psql`, another service, an `ON DELETE CASCADE`, a process
//! that died between its commit and `saved`) reach the cache.
//!
//! - **Capture.** For every registered model with `#[cached(table = "...")]`
//!   and every `many_to_many ... through = "..."` join table, AFTER
//!   INSERT/UPDATE/DELETE triggers write one row per changed row into an
//!   outbox table, in the writing transaction: the table, the operation, the
//!   OLD and NEW values of the columns the cache needs to find what changed
//!   (the pk, the `references` columns, the join columns) and the
//!   transaction id. An UPDATE that changes none of the columns the model
//!   reads writes nothing. [`Feed::install`] applies the DDL idempotently;
//!   [`Feed::install_sql`] gives its text for `sqlx migrate`.
//! - **Delivery.** [`Feed::spawn`] starts a task that drains the outbox in
//!   batches and turns each row into the invalidation `saved_from` or
//!   `deleted` would make: the instance (every version), the old *and* the
//!   new parent of a moved foreign key (from the OLD and NEW columns, even
//!   when nothing is cached), both sides of a join-table row, the cascade
//!   and the query indexes. Rows are deleted only once the store has taken
//!   the invalidation; while it is down they stay, and any process running
//!   the feed delivers them when it is back. At least once; invalidation is
//!   idempotent, so twice is harmless.
//! - **Read your own writes.** [`Feed::mark`] inside a transaction, then
//!   [`Feed::flush`] after its commit delivers that transaction's changes
//!   before the handler responds; the task stays the durable backstop.
//! - **Bad rows** (a table no registered model reads, a row that does not
//!   decode, a pk that does not parse) are counted, logged with their id and
//!   moved to the dead-letter table; they never block the feed.
//!
//! On PostgreSQL several processes can run the feed at once: each batch is
//! claimed with `FOR UPDATE SKIP LOCKED` and deleted in the transaction
//! that claimed it, so no row is applied by two workers and none is lost
//! when one dies (its transaction rolls back, the rows are claimed again).
//! The transaction id is `txid_current()`. SQLite has one writer at a time
//! and no row locks: two workers on one file may apply a row twice (harmless),
//! and its transaction id is not available to triggers, so a
//! [`WriteMark`] there is the highest outbox id the transaction sees, and
//! [`Feed::flush`] delivers every row up to it (its own and any earlier).
//!
//! # Wakeups
//!
//! The task polls: it drains while batches come back full, and otherwise
//! sleeps [`poll_interval`](Feed::poll_interval) (10 ms by default). A
//! `NOTIFY` in the trigger would wake it sooner, but PostgreSQL serializes
//! every notifying commit on one global lock, which costs write throughput
//! on the writers' path; an idle poll costs one indexed query. Handlers that
//! need their write visible at once use [`Feed::flush`] instead.
//!
//! # Not captured
//!
//! `TRUNCATE` (statement-level, not row-level triggers), and changes to
//! tables no registered model declares. The `invalidator` targets of a
//! deleted instance are known only when its state was cached.

mod capture;

pub use capture::{Capture, CapturedJoin, CapturedReference};

#[cfg(feature = "sqlx")]
mod ddl;
#[cfg(any(feature = "sqlx-postgres", feature = "sqlx-sqlite"))]
mod worker;

#[cfg(feature = "sqlx")]
pub use ddl::{DEAD_LETTER_TABLE, OUTBOX_TABLE};
#[cfg(any(feature = "sqlx-postgres", feature = "sqlx-sqlite"))]
pub use worker::{Feed, FeedConnection, FeedError, FeedHandle, FeedPool, FeedStats, WriteMark};
