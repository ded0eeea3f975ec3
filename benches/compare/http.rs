//! HTTP: an in-process keep-alive HTTP/1.1 load generator

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use crate::config::Config;
use crate::stats::{Rate, lat};

pub(crate) async fn http_connect(addr: SocketAddr) -> http1::SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

pub(crate) async fn http_get(
    sender: &mut http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (StatusCode, Bytes) {
    sender.ready().await.expect("connection ready");
    let request = hyper::Request::get(path)
        .header(header::HOST, "127.0.0.1")
        .body(Empty::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

/// Requests per second against `addr` over `conns` keep-alive connections
/// for `window`, each connection requesting `paths` in turn; and the
/// latency of the requests.
pub(crate) async fn http_window(
    addr: SocketAddr,
    paths: Arc<Vec<String>>,
    conns: usize,
    window: Duration,
) -> (f64, Vec<u64>) {
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        senders.push(http_connect(addr).await);
    }
    let started = Instant::now();
    let deadline = started + window;
    let handles: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(c, mut sender)| {
            let paths = paths.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut i = c * 7919;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let (status, body) = http_get(&mut sender, &paths[i % paths.len()]).await;
                    samples.push(t.elapsed().as_nanos() as u64);
                    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
                    black_box(body);
                    i += 1;
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for h in handles {
        samples.extend(h.await.expect("client task"));
    }
    let rate = samples.len() as f64 / started.elapsed().as_secs_f64();
    (rate, samples)
}

pub(crate) async fn http_compare(
    sides: [(SocketAddr, Arc<Vec<String>>); 2],
    cfg: &Config,
) -> [Rate; 2] {
    for (addr, paths) in &sides {
        http_window(*addr, paths.clone(), cfg.conns, cfg.window / 5).await;
    }
    let mut windows = [Vec::new(), Vec::new()];
    let mut samples = [Vec::new(), Vec::new()];
    for round in 0..cfg.rounds {
        for k in 0..2 {
            let side = (round + k) % 2;
            let (addr, paths) = &sides[side];
            let (rate, s) = http_window(*addr, paths.clone(), cfg.conns, cfg.window).await;
            windows[side].push(rate);
            samples[side].extend(s);
        }
    }
    let [w0, w1] = windows;
    let [s0, s1] = samples;
    [
        Rate {
            windows: w0,
            latency: Some(lat(s0)),
        },
        Rate {
            windows: w1,
            latency: Some(lat(s1)),
        },
    ]
}
