//! A TCP proxy in front of a server that can hold what the server sends
//! on some connections, to script interleavings that depend on what a
//! client has *received*: while held, the server's bytes (replies, RESP3
//! pushes) are read and kept; [`HoldingProxy::release`] then writes each
//! connection's held bytes to its client in one write, so the client reads
//! them together (a reply and a push that arrived behind it, handled in one
//! go by its reader). Connections are picked by what their client sent
//! (`TRACKING`: a near cache's tracking connection).
//!
//! Blocking I/O on threads of its own, so it keeps reading the server
//! while the test's runtime is busy or blocked.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A proxy on a loopback port to `127.0.0.1:<upstream>`; stops accepting
/// on drop (the connections it made end with their server).
pub struct HoldingProxy {
    port: u16,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    inner: Mutex<Inner>,
    stopped: AtomicBool,
}

#[derive(Default)]
struct Inner {
    connections: Vec<Connection>,
}

/// The most bytes of what a client sent that are kept to pick it by.
const SENT_KEPT: usize = 4096;

struct Connection {
    /// The client's socket.
    client: TcpStream,
    /// The first bytes the client sent.
    sent: Vec<u8>,
    /// Whether what the server sends is held.
    held: bool,
    /// What is held for the client.
    kept: Vec<u8>,
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl HoldingProxy {
    /// Starts a proxy to the server listening on `upstream` (loopback).
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub fn start(upstream: u16) -> HoldingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the proxy");
        let port = listener.local_addr().expect("the proxy's address").port();
        let state = Arc::new(State::default());
        let accepting = Arc::clone(&state);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                forward(client, server, &accepting);
            }
        });
        HoldingProxy { port, state }
    }

    /// `redis://127.0.0.1:<port>/`: the server, through the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// From now on, what the server sends on each connection whose client
    /// sent `needle` (in its first bytes) is kept from the client. Returns
    /// how many connections are held.
    pub fn hold(&self, needle: &[u8]) -> usize {
        let mut inner = self.state.lock();
        for connection in &mut inner.connections {
            if contains(&connection.sent, needle) {
                connection.held = true;
            }
        }
        inner.connections.iter().filter(|c| c.held).count()
    }

    /// Whether the bytes held for any connection contain `needle`.
    pub fn holds(&self, needle: &[u8]) -> bool {
        self.state
            .lock()
            .connections
            .iter()
            .any(|connection| contains(&connection.kept, needle))
    }

    /// Writes what is held to each client, in one write per connection,
    /// and stops holding.
    pub fn release(&self) {
        let mut inner = self.state.lock();
        for connection in &mut inner.connections {
            connection.held = false;
            if !connection.kept.is_empty() {
                // A client gone meanwhile: nothing to deliver.
                let _ = connection.client.write_all(&connection.kept);
                connection.kept.clear();
            }
        }
    }
}

impl Drop for HoldingProxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which sees the flag and ends.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies both ways between `client` and `server`, on two threads; the
/// server's bytes go through the hold.
fn forward(client: TcpStream, server: TcpStream, state: &Arc<State>) {
    let (Ok(mut client_reader), Ok(client_writer), Ok(mut server_writer)) =
        (client.try_clone(), client.try_clone(), server.try_clone())
    else {
        return;
    };
    let index = {
        let mut inner = state.lock();
        inner.connections.push(Connection {
            client: client_writer,
            sent: Vec::new(),
            held: false,
            kept: Vec::new(),
        });
        inner.connections.len() - 1
    };
    let sending = Arc::clone(state);
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let n = match client_reader.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            {
                let mut inner = sending.lock();
                let sent = &mut inner.connections[index].sent;
                let room = SENT_KEPT.saturating_sub(sent.len()).min(n);
                sent.extend_from_slice(&buffer[..room]);
            }
            if server_writer.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        let _ = server_writer.shutdown(Shutdown::Both);
    });
    let receiving = Arc::clone(state);
    let mut server_reader = server;
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let n = match server_reader.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut inner = receiving.lock();
            let connection = &mut inner.connections[index];
            if connection.held {
                connection.kept.extend_from_slice(&buffer[..n]);
            } else if connection.client.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        let inner = receiving.lock();
        let _ = inner.connections[index].client.shutdown(Shutdown::Both);
    });
}
