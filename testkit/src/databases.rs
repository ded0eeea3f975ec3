//! Databases for tests that count statements: a private in-memory SQLite
//! database whose statements a `sqlite3_trace_v2` hook counts, and a fresh
//! schema of the PostgreSQL server at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and a fresh database of the
//! MySQL or MariaDB server at `MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/test`), each reached through a proxy that
//! counts the statements clients run.

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlSslMode};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The statements a database started, in order.
#[derive(Default)]
pub struct Statements {
    count: AtomicU64,
    log: Mutex<Vec<String>>,
}

impl Statements {
    pub fn record(&self, sql: String) {
        let mut log = self.log.lock().unwrap();
        log.push(sql);
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst) as usize
    }

    /// The statements run since the count was `start`.
    pub fn since(&self, start: usize) -> Vec<String> {
        self.log.lock().unwrap()[start..].to_vec()
    }
}

/// Runs `future` and returns its output with the statements it ran.
pub async fn counted<F: Future>(statements: &Statements, future: F) -> (F::Output, Vec<String>) {
    let start = statements.count();
    let output = future.await;
    (output, statements.since(start))
}

/// SQLite's statement hook: `ctx` is the `Statements`, `sql` the statement's
/// text.
unsafe extern "C" fn on_sqlite_statement(
    kind: c_uint,
    ctx: *mut c_void,
    _statement: *mut c_void,
    sql: *mut c_void,
) -> c_int {
    if kind == libsqlite3_sys::SQLITE_TRACE_STMT as c_uint {
        // SAFETY: `ctx` is the `&'static Statements` registered with the
        // hook, and SQLite passes the statement's NUL-terminated text.
        let (statements, sql) = unsafe {
            (
                &*(ctx as *const Statements),
                CStr::from_ptr(sql as *const c_char),
            )
        };
        statements.record(sql.to_string_lossy().into_owned());
    }
    0
}

/// A private in-memory SQLite database on one connection that is never
/// closed, with its statements counted.
pub async fn sqlite() -> (SqlitePool, &'static Statements) {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(SqliteConnectOptions::new().in_memory(true))
        .await
        .expect("SQLite opens an in-memory database");
    let statements: &'static Statements = Box::leak(Box::default());
    let mut conn = pool.acquire().await.unwrap();
    let mut handle = conn.lock_handle().await.unwrap();
    // SAFETY: the handle is the connection's open database; the context
    // outlives it (leaked) and the callback matches `sqlite3_trace_v2`'s.
    let rc = unsafe {
        libsqlite3_sys::sqlite3_trace_v2(
            handle.as_raw_handle().as_ptr(),
            libsqlite3_sys::SQLITE_TRACE_STMT as c_uint,
            Some(on_sqlite_statement),
            statements as *const Statements as *mut c_void,
        )
    };
    assert_eq!(rc, libsqlite3_sys::SQLITE_OK, "sqlite3_trace_v2 failed");
    drop(handle);
    drop(conn);
    (pool, statements)
}

/// Parses what a PostgreSQL client sends (after the startup message, each
/// message is a type byte and a length that counts itself).
#[derive(Default)]
struct FrontendMessages {
    started: bool,
    pending: Vec<u8>,
    /// Prepared statement name -> SQL, from Parse messages.
    prepared: HashMap<String, String>,
    /// Portal name -> SQL, from Bind messages.
    portals: HashMap<String, String>,
}

/// The NUL-terminated string at the start of `bytes`, and the rest.
fn cstring(bytes: &[u8]) -> (String, &[u8]) {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let rest = bytes.get(end + 1..).unwrap_or(&[]);
    (String::from_utf8_lossy(&bytes[..end]).into_owned(), rest)
}

impl FrontendMessages {
    fn feed(&mut self, bytes: &[u8], statements: &Statements) {
        self.pending.extend_from_slice(bytes);
        loop {
            // The startup message has no type byte.
            let len_at = usize::from(self.started);
            let Some(len) = self.pending.get(len_at..len_at + 4) else {
                return;
            };
            let total = len_at + u32::from_be_bytes(len.try_into().unwrap()) as usize;
            if self.pending.len() < total {
                return;
            }
            let message: Vec<u8> = self.pending.drain(..total).collect();
            if !self.started {
                self.started = true;
                continue;
            }
            let body = &message[5..];
            match message[0] {
                b'Q' => statements.record(cstring(body).0),
                b'P' => {
                    let (name, rest) = cstring(body);
                    self.prepared.insert(name, cstring(rest).0);
                }
                b'B' => {
                    let (portal, rest) = cstring(body);
                    let sql = self.prepared.get(&cstring(rest).0).cloned();
                    self.portals.insert(portal, sql.unwrap_or_default());
                }
                b'E' => {
                    let sql = self.portals.get(&cstring(body).0).cloned();
                    statements.record(sql.unwrap_or_default());
                }
                _ => {}
            }
        }
    }
}

/// A TCP proxy to `upstream` counting the statements clients run through
/// it; returns its port. Each message is counted before it is forwarded,
/// so a statement is counted before its result can come back.
async fn start_proxy(upstream: (String, u16), statements: Arc<Statements>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let statements = statements.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                let down = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                    let _ = to_client.shutdown().await;
                });
                let mut messages = FrontendMessages::default();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match from_client.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    messages.feed(&buf[..n], &statements);
                    if to_server.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = to_server.shutdown().await;
                let _ = down.await;
            });
        }
    });
    port
}

/// The PostgreSQL server of the tests, benchmarks and examples when
/// `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// `DATABASE_URL`, or [`DEFAULT_DATABASE_URL`].
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// Runs `test` with a pool on a fresh schema of the PostgreSQL database at
/// `DATABASE_URL` (its `search_path`), connected through a counting proxy,
/// then drops the schema, whether the test passed or not.
pub async fn with_postgres<F, Fut>(test: F)
where
    F: FnOnce(PgPool, Arc<Statements>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let url = database_url();
    let options = PgConnectOptions::from_str(&url)
        .unwrap_or_else(|e| panic!("DATABASE_URL {url:?} is not a PostgreSQL URL: {e}"));
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.clone())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {url} is unreachable ({e}); these tests need a server: start one \
                 or point DATABASE_URL at one"
            )
        });
    let schema = format!(
        "ci_test_{}_{}_{}",
        std::process::id(),
        Utc::now().timestamp_micros(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap();

    let statements = Arc::new(Statements::default());
    let upstream = (options.get_host().to_owned(), options.get_port());
    let port = start_proxy(upstream, statements.clone()).await;
    let proxied = options
        .host("127.0.0.1")
        .port(port)
        .ssl_mode(PgSslMode::Disable)
        .options([("search_path", schema.as_str())]);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(proxied)
        .await
        .expect("connects through the counting proxy");

    let outcome = tokio::spawn(test(pool.clone(), statements)).await;
    pool.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// What a MySQL client and server say on one connection, parsed far enough
/// to count statements: every packet is a 3-byte little-endian length, a
/// sequence number and the payload; a client packet numbered 0 starts a
/// command (the handshake's packets are numbered from 1).
#[derive(Default)]
struct MySqlSession {
    from_client: Vec<u8>,
    from_server: Vec<u8>,
    /// The commands sent whose first response packet has not come back:
    /// `Some(sql)` for a prepare, whose response carries the statement id.
    awaiting: std::collections::VecDeque<Option<String>>,
    /// Statement id -> SQL.
    prepared: HashMap<u32, String>,
}

/// The complete packets at the start of `pending` (sequence number,
/// payload), removed from it.
fn mysql_packets(pending: &mut Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let mut packets = Vec::new();
    while let Some(header) = pending.get(..4) {
        let len =
            usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
        if pending.len() < 4 + len {
            break;
        }
        let seq = header[3];
        let packet: Vec<u8> = pending.drain(..4 + len).collect();
        packets.push((seq, packet[4..].to_vec()));
    }
    packets
}

impl MySqlSession {
    /// Client bytes: COM_QUERY and COM_STMT_EXECUTE are statements run.
    fn client(&mut self, bytes: &[u8], statements: &Statements) {
        self.from_client.extend_from_slice(bytes);
        for (seq, payload) in mysql_packets(&mut self.from_client) {
            let (0, Some(&command)) = (seq, payload.first()) else {
                continue;
            };
            let text = || String::from_utf8_lossy(&payload[1..]).into_owned();
            match command {
                // COM_QUERY
                0x03 => {
                    statements.record(text());
                    self.awaiting.push_back(None);
                }
                // COM_STMT_PREPARE
                0x16 => self.awaiting.push_back(Some(text())),
                // COM_STMT_EXECUTE
                0x17 => {
                    let id = payload
                        .get(1..5)
                        .map_or(0, |id| u32::from_le_bytes(id.try_into().unwrap()));
                    statements.record(self.prepared.get(&id).cloned().unwrap_or_default());
                    self.awaiting.push_back(None);
                }
                // COM_QUIT, COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE: no reply.
                0x01 | 0x18 | 0x19 => {}
                _ => self.awaiting.push_back(None),
            }
        }
    }

    /// Server bytes: the first packet after a command answers it (sqlx
    /// waits for a whole response before its next command); a prepare's
    /// answer is `0x00` and the statement id.
    fn server(&mut self, bytes: &[u8]) {
        self.from_server.extend_from_slice(bytes);
        for (_, payload) in mysql_packets(&mut self.from_server) {
            let Some(command) = self.awaiting.pop_front() else {
                continue;
            };
            if let (Some(sql), Some(0x00), Some(id)) = (command, payload.first(), payload.get(1..5))
            {
                self.prepared
                    .insert(u32::from_le_bytes(id.try_into().unwrap()), sql);
            }
        }
    }
}

/// [`start_proxy`] for MySQL's protocol.
async fn start_mysql_proxy(upstream: (String, u16), statements: Arc<Statements>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let statements = statements.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let session = Arc::new(Mutex::new(MySqlSession::default()));
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                let server_session = session.clone();
                let down = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from_server.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        server_session.lock().unwrap().server(&buf[..n]);
                        if to_client.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = to_client.shutdown().await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match from_client.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    session.lock().unwrap().client(&buf[..n], &statements);
                    if to_server.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = to_server.shutdown().await;
                let _ = down.await;
            });
        }
    });
    port
}

pub fn mysql_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// Runs `test` with a pool on a fresh database of the MySQL or MariaDB
/// server at `MYSQL_URL`, connected through a counting proxy, then drops
/// the database, whether the test passed or not.
pub async fn with_mysql<F, Fut>(test: F)
where
    F: FnOnce(MySqlPool, Arc<Statements>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let url = mysql_url();
    let options = MySqlConnectOptions::from_str(&url)
        .unwrap_or_else(|e| panic!("MYSQL_URL {url:?} is not a MySQL URL: {e}"))
        .ssl_mode(MySqlSslMode::Disabled);
    let admin = MySqlPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.clone())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "MySQL at {url} is unreachable ({e}); these tests need a server: start one \
                 (MariaDB works) or point MYSQL_URL at one"
            )
        });
    let database = format!(
        "ci_test_{}_{}_{}",
        std::process::id(),
        Utc::now().timestamp_micros(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&admin)
        .await
        .unwrap();

    let statements = Arc::new(Statements::default());
    let upstream = (options.get_host().to_owned(), options.get_port());
    let port = start_mysql_proxy(upstream, statements.clone()).await;
    let proxied = options.host("127.0.0.1").port(port).database(&database);
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(proxied)
        .await
        .expect("connects through the counting proxy");

    let outcome = tokio::spawn(test(pool.clone(), statements)).await;
    pool.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {database}")))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}
