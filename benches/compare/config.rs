//! Configuration: the command line.

use std::time::Duration;

use cached_instances_testkit::cli::{BenchFlag, DatabaseArg};
use clap::Parser;

/// Side-by-side benchmarks of cached-instances against the baselines
/// (BENCHMARKS.md).
#[derive(Debug, Parser)]
#[command(bin_name = "cargo bench --bench compare --")]
struct Cli {
    /// Tiny durations and data set (CI smoke; the numbers mean little).
    #[arg(long)]
    quick: bool,
    /// Repeat the whole comparison N times and print the spread.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = positive_count)]
    runs: usize,
    /// Throughput window per side and round, in seconds [default: 1.5].
    #[arg(long, value_name = "SECS", value_parser = positive)]
    window: Option<f64>,
    /// Interleaving rounds per comparison [default: 4].
    #[arg(long, value_name = "N", value_parser = positive_count)]
    rounds: Option<usize>,
    /// Iterations of the cold-miss and write rows [default: 120].
    #[arg(long, value_name = "N", value_parser = positive_count)]
    iterations: Option<usize>,
    /// Concurrent tasks of the throughput rows.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = positive_count)]
    tasks: usize,
    /// Concurrent HTTP connections.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = positive_count)]
    conns: usize,
    /// PostgreSQL connections of the baselines' pool.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = positive_count)]
    pool: usize,
    /// Comma-separated groups: detail,list,memory-store,cold,herd,write,http,memory
    /// (and breakdown: each layer of the Redis rows alone, printed apart).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Before each run, wait until the 1-minute load average is below X.
    #[arg(long, value_name = "X", value_parser = positive)]
    wait_load: Option<f64>,
    /// ... for at most MIN minutes, then measure anyway.
    #[arg(long, value_name = "MIN", default_value_t = 40.0, value_parser = positive)]
    wait_max: f64,
    #[command(flatten)]
    database: DatabaseArg,
    #[command(flatten)]
    _bench: BenchFlag,
}

fn positive(value: &str) -> Result<f64, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|n| *n > 0.0)
        .ok_or_else(|| format!("not a positive number: {value:?}"))
}

fn positive_count(value: &str) -> Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("not a positive whole number: {value:?}"))
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) quick: bool,
    pub(crate) runs: usize,
    pub(crate) window: Duration,
    pub(crate) rounds: usize,
    /// Samples per side and round of the sequential latency rows.
    pub(crate) block: usize,
    pub(crate) tasks: usize,
    pub(crate) conns: usize,
    pub(crate) pool: u32,
    pub(crate) only: Option<Vec<String>>,
    pub(crate) wait_load: Option<f64>,
    pub(crate) wait_max: Duration,
    /// Questions in the data set (plus one 500-byte question).
    pub(crate) questions: i64,
    /// The hot set: questions 1..=hot are cached before the hit rows.
    pub(crate) hot: i64,
    /// Iterations of the cold-miss and write rows.
    pub(crate) iterations: usize,
    pub(crate) database_url: String,
}

impl Config {
    /// The configuration of the command line; exits with the usage on
    /// `--help` or a bad argument.
    pub(crate) fn from_args() -> Config {
        let cli = Cli::parse();
        let mut c = Config {
            quick: cli.quick,
            runs: cli.runs,
            window: Duration::from_millis(1500),
            rounds: 4,
            block: 2500,
            tasks: cli.tasks,
            conns: cli.conns,
            pool: u32::try_from(cli.pool).unwrap_or(u32::MAX),
            only: cli
                .only
                .map(|only| only.iter().map(|g| g.trim().to_owned()).collect()),
            wait_load: cli.wait_load,
            wait_max: Duration::from_secs_f64(60.0 * cli.wait_max),
            questions: 2000,
            hot: 1000,
            iterations: 120,
            database_url: cli.database.url,
        };
        if c.quick {
            c.window = Duration::from_millis(150);
            c.rounds = 2;
            c.block = 100;
            c.questions = 300;
            c.hot = 100;
            c.iterations = 6;
        }
        if let Some(w) = cli.window {
            c.window = Duration::from_secs_f64(w);
        }
        if let Some(r) = cli.rounds {
            c.rounds = r;
        }
        if let Some(n) = cli.iterations {
            c.iterations = n;
        }
        c
    }

    pub(crate) fn wants(&self, group: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|g| g == group))
    }
}
