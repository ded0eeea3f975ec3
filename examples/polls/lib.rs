//! The poll app of the cached-instances examples and end-to-end tests: users
//! vote for the choices of questions.
//!
//! - [`models`]: the cached models;
//! - [`db`]: the database (SQLite or PostgreSQL through sqlx): schema, seed
//!   data, list queries, writes;
//! - [`routes`]: the HTTP API (axum), cached reads and write endpoints;
//! - [`telemetry`]: the log, and what each request cost in SQL statements.

pub mod db;
pub mod models;
pub mod routes;
pub mod telemetry;

pub use models::{Choice, Question, User};
