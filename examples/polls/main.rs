//! The polls API server.
//!
//! ```sh
//! cargo run --example polls                      # SQLite in memory + in-process cache, on 127.0.0.1:8000
//! cargo run --example polls -- --database postgres://postgres@127.0.0.1:5432/test --redis redis://127.0.0.1:6379/
//! cargo run --example polls -- --smoke           # serve on a free port, try a few requests, exit
//! ```
//!
//! Each request is logged with what it cost: SQL statements, loader calls,
//! and whether the cache served it. Writes are plain SQL; the change feed
//! (triggers on the tables, and a worker in this process) brings every
//! change to the cache, including those made with `psql` (see the README).

use std::error::Error;
use std::net::SocketAddr;
use std::process::ExitCode;

use cached_instances::{MemoryStore, RedisStore};
use chrono::Utc;
use clap::Parser;
use polls::Question;
use polls::db::Db;
use polls::routes::{self, App};
use polls::telemetry::{self, StatementCounter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves the polls API, seeded with demo data.
#[derive(Debug, Parser)]
#[command(bin_name = "cargo run --example polls --")]
struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8000")]
    bind: String,
    /// postgres://... (tables in schema `polls`) or sqlite:path [default:
    /// SQLite in memory].
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// Cache in Redis at redis://host:port/db [default: in-process
    /// MemoryStore].
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Serve on a free loopback port, make a few requests against it, print
    /// them and exit (non-zero on failure).
    #[arg(long)]
    smoke: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let statements = telemetry::init(level.into()).unwrap_or_default();

    let args = Args::parse();
    match run(args, statements).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, statements: StatementCounter) -> Result<ExitCode, Box<dyn Error>> {
    let db = match &args.database {
        Some(url) => Db::connect(url)
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?,
        None => Db::sqlite_in_memory().await?,
    };
    db.migrate().await?;
    let seeded = db.seed(Utc::now()).await?;
    let app = match &args.redis {
        Some(url) => {
            let store = RedisStore::connect(url)
                .await
                .map_err(|e| format!("cannot connect to {url}: {e}"))?;
            if seeded {
                tracing::warn!(
                    "the database was just seeded: entries an earlier run left in {url} are served until they expire (FLUSHDB that Redis database if the data was reset)"
                );
            }
            App::new(db, store).await?
        }
        None => App::new(db, MemoryStore::new()).await?,
    };
    // Indexes `pub_date`: the question list needs no SQL from now on.
    let warmed = app.cache.warm::<Question>().await?;
    tracing::info!(
        database = args
            .database
            .as_deref()
            .map_or("SQLite in memory".into(), redact),
        cache = args
            .redis
            .as_deref()
            .map_or("in-process MemoryStore".into(), redact),
        seeded,
        questions_indexed = warmed.indexed,
        "polls ready"
    );

    let bind = if args.smoke {
        "127.0.0.1:0"
    } else {
        &args.bind
    };
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|e| format!("cannot listen on {bind}: {e}"))?;
    let addr = listener.local_addr()?;
    let router = routes::router(app.clone());

    if args.smoke {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        let ok = smoke(addr, &statements).await;
        let _ = stop.send(());
        server.await??;
        return Ok(if ok {
            println!("smoke test passed");
            ExitCode::SUCCESS
        } else {
            println!("smoke test FAILED");
            ExitCode::FAILURE
        });
    }

    print_banner(addr);
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}

/// `url` without its credentials, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn print_banner(addr: SocketAddr) {
    let base = format!("http://{addr}");
    println!(
        "\
Polls API on {base}  (Ctrl-C to stop). Try:

  curl -i {base}/questions                     # from the cache's index: no SQL
  curl -i {base}/questions/1                   # run it twice: the second makes 0 queries
  curl -i {base}/questions/4                   # published in the future: 404
  curl -i '{base}/questions?limit=2&offset=1'
  curl -i {base}/users/1
  curl -i -H 'If-None-Match: \"<etag from a response>\"' {base}/questions/1   # 304
  curl -i -X POST {base}/choices/3/vote -H 'content-type: application/json' -d '{{\"user_id\": 1}}'
  curl -i -X PATCH {base}/choices/2 -H 'content-type: application/json' -d '{{\"question_id\": 2}}'
  curl -i -X POST {base}/questions -H 'content-type: application/json' -d '{{\"question_text\": \"Cats or dogs?\"}}'
"
    );
}

/// One request over a fresh connection: (status, body).
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    head.push_str(body.unwrap_or(""));
    stream.write_all(head.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// A smoke request: method, path, JSON body, expected status, expected
/// SQL statements (`None`: not checked).
type Step = (
    &'static str,
    &'static str,
    Option<&'static str>,
    u16,
    Option<u64>,
);

/// Requests against the running server, one at a time; prints each with
/// its status and SQL statements (those requests ran meanwhile: one);
/// `false` when one is not as expected.
async fn smoke(addr: SocketAddr, statements: &StatementCounter) -> bool {
    let steps: [Step; 11] = [
        ("GET", "/questions", None, 200, None),
        ("GET", "/questions", None, 200, Some(0)),
        ("GET", "/questions/1", None, 200, Some(0)),
        ("GET", "/questions/4", None, 404, None),
        ("GET", "/questions/4", None, 404, Some(0)),
        ("GET", "/questions/abc", None, 400, Some(0)),
        ("GET", "/questions?limit=zero", None, 400, Some(0)),
        (
            "POST",
            "/choices/4/vote",
            Some(r#"{"user_id": 1}"#),
            200,
            None,
        ),
        ("GET", "/choices/4", None, 200, None),
        (
            "PATCH",
            "/choices/2",
            Some(r#"{"question_id": 2}"#),
            200,
            None,
        ),
        ("GET", "/questions?limit=2", None, 200, None),
    ];
    let mut ok = true;
    for (method, path, body, want, want_queries) in steps {
        let before = statements.in_requests();
        let result = request(addr, method, path, body).await;
        let queries = statements.in_requests() - before;
        match result {
            Ok((status, body)) => {
                let good = status == want && want_queries.is_none_or(|q| q == queries);
                ok &= good;
                println!(
                    "{} {method} {path} -> {status} ({queries} SQL statements)\n    {body}",
                    if good { "ok  " } else { "FAIL" }
                );
                if !good {
                    println!(
                        "    expected {want}{}",
                        want_queries.map_or(String::new(), |q| format!(" with {q} statements"))
                    );
                }
            }
            Err(e) => {
                ok = false;
                println!("FAIL {method} {path}: {e}");
            }
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("polls").chain(args.iter().copied()))
    }

    #[test]
    fn arguments() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.bind, "127.0.0.1:8000");
        assert!(a.database.is_none() && a.redis.is_none() && !a.smoke);
        let a = parse(&[
            "--bind=0.0.0.0:9000",
            "--database",
            "sqlite:x.db",
            "--smoke",
        ])
        .unwrap();
        assert_eq!(a.bind, "0.0.0.0:9000");
        assert_eq!(a.database.as_deref(), Some("sqlite:x.db"));
        assert!(a.smoke);
        assert_eq!(
            parse(&["--help"]).unwrap_err().kind(),
            clap::error::ErrorKind::DisplayHelp
        );
        assert!(parse(&["--redis"]).is_err());
        assert!(parse(&["--nope"]).is_err());
    }

    #[test]
    fn credentials_are_not_logged() {
        assert_eq!(
            redact("postgres://u:secret@db:5432/x"),
            "postgres://***@db:5432/x"
        );
        assert_eq!(redact("redis://127.0.0.1/"), "redis://127.0.0.1/");
    }
}
