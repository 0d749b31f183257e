//! Plain HTTP/1.1 calls of the end-to-end tests: a JSON route of the orchestrator's HTTP side,
//! and one series of a Prometheus `/metrics` scrape.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Connects to `addr`, retrying for a minute while the server starts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("connects to {addr}: {e}"),
        }
    }
}

/// One HTTP/1.1 call (no keep-alive) with a JSON body; returns the status and the JSON body.
pub fn call_json(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut stream = connect(addr);
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("sends the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("reads the response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("an HTTP response: {response}"));
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "a whole JSON body: {head}"
    );
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head}"));
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON ({e}): {body}"));
    (status, json)
}

/// The sum of metric `name` scraped from `metrics` (`/metrics`) over the series whose labels
/// include `label` (`key="value"`).
pub fn metric(metrics: SocketAddr, name: &str, label: &str) -> f64 {
    let mut tcp = connect(metrics);
    write!(
        tcp,
        "GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .expect("sends the scrape");
    let mut response = String::new();
    let _ = tcp.read_to_string(&mut response);
    response
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, v| sum + v)
}
