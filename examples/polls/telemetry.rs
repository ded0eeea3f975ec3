//! What a request cost, counted from sqlx itself: sqlx logs every statement
//! it runs as a `tracing` event of target `sqlx::query`, in the span of the
//! task that awaits it (the SQLite worker thread enters the caller's span
//! too). [`StatementCounter`] is a `tracing` layer that counts those events,
//! in total and per request: [`counting`] runs a request in a span that
//! carries its own counter.
//!
//! sqlx runs `BEGIN`, `COMMIT` and `ROLLBACK` without a log event, so a
//! write's count is the statements inside its transaction.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::Instrument;
use tracing::level_filters::LevelFilter;
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::{LookupSpan, Registry};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

/// sqlx's target for its statement events.
const SQLX_QUERY: &str = "sqlx::query";
/// The target of [`counting`]'s spans.
const COUNTING: &str = "polls::statements";

/// The statement count of one [`counting`] span, kept in its extensions.
#[derive(Clone, Default)]
struct SpanStatements(Arc<AtomicU64>);

/// A `tracing` layer counting sqlx's statements: each in the innermost
/// enclosing [`counting`] span, and in totals. Cheap to clone; clones share
/// the totals.
#[derive(Debug, Clone, Default)]
pub struct StatementCounter {
    total: Arc<AtomicU64>,
    in_requests: Arc<AtomicU64>,
}

impl StatementCounter {
    /// Statements run since the layer was installed, by any task.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Statements run in [`counting`] spans since the layer was installed:
    /// not those of background tasks (the change feed's worker).
    #[must_use]
    pub fn in_requests(&self) -> u64 {
        self.in_requests.load(Ordering::Relaxed)
    }

    /// The layer, listening to sqlx's statement events only (at every
    /// level: sqlx logs statements at DEBUG, slow ones at WARN), whatever
    /// the other layers print.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        self.clone().with_filter(
            Targets::new()
                .with_target(SQLX_QUERY, LevelFilter::TRACE)
                .with_target(COUNTING, LevelFilter::TRACE),
        )
    }
}

impl<S> Layer<S> for StatementCounter
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != SQLX_QUERY {
            return;
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        for span in scope {
            if let Some(statements) = span.extensions().get::<SpanStatements>() {
                statements.0.fetch_add(1, Ordering::Relaxed);
                self.in_requests.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Runs `future` in a span of its own, counting the sqlx statements it runs (0 when
/// the global subscriber is not a [`Registry`] with a
/// [`StatementCounter`], as [`init`] installs). The cache loads misses in
/// the reading task, so a request's loads are counted; background tasks
/// (the change feed's worker) are not.
pub async fn counting<F: Future>(future: F) -> (F::Output, u64) {
    let span = tracing::info_span!(target: COUNTING, "request");
    let statements = SpanStatements::default();
    span.with_subscriber(|(id, dispatch)| {
        if let Some(span) = dispatch
            .downcast_ref::<Registry>()
            .and_then(|registry| registry.span(id))
        {
            span.extensions_mut().insert(statements.clone());
        }
    });
    let output = future.instrument(span).await;
    (output, statements.0.load(Ordering::Relaxed))
}

/// Installs the global subscriber: log lines at `level` and above on
/// stderr, and a [`StatementCounter`], which it returns. `None` when a
/// global subscriber was already set (the tests' binaries set it once).
pub fn init(level: LevelFilter) -> Option<StatementCounter> {
    let counter = StatementCounter::default();
    let log = fmt::layer()
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(level);
    tracing_subscriber::registry()
        .with(log)
        .with(counter.layer())
        .try_init()
        .ok()
        .map(|()| counter)
}
