//! Command-line arguments the benchmarks and the soak example share
//! (flattened into their own `clap` parsers).

use crate::databases::DEFAULT_DATABASE_URL;

/// `--database URL`: the PostgreSQL server, `DATABASE_URL` by default.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArg {
    /// The PostgreSQL server (the run works in a schema of its own and
    /// drops it at the end).
    #[arg(
        long = "database",
        value_name = "URL",
        env = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub url: String,
}

/// The flag cargo passes to a `harness = false` bench target
/// (`cargo bench` runs it with `--bench`): accepted and ignored.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct BenchFlag {
    #[arg(long = "bench", hide = true)]
    bench: bool,
}
