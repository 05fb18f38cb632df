//! A line-protocol client that behaves like the KeyChest bash scripts: one request, one read
//! of the whole reply.

use certline::protocol::Reply;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for any single test wait; generous, because CI machines are noisy.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Reads until one whole reply (ending in a `status …` line) is buffered, or EOF.
pub async fn read_reply(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        let mut chunk = [0u8; 2048];
        loop {
            if reply_complete(&buf) {
                return;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("no complete reply in time");
    buf
}

/// Does `buf` hold one complete reply?
pub fn reply_complete(buf: &[u8]) -> bool {
    buf.ends_with(b"\n")
        && buf
            .split(|&b| b == b'\n')
            .any(|line| line.starts_with(b"status "))
}

/// Sends `line` (bytes as given: add `\n` yourself) on a new connection and returns the reply
/// as text.
pub async fn request(addr: SocketAddr, line: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(line.as_bytes()).await.expect("write");
    String::from_utf8(read_reply(&mut stream).await).expect("reply is UTF-8")
}

/// Sends a request with a newline and parses the reply.
pub async fn call(addr: SocketAddr, line: &str) -> Reply {
    let text = request(addr, &format!("{line}\n")).await;
    Reply::parse(text.as_bytes()).unwrap_or_else(|e| panic!("bad reply {text:?}: {e}"))
}

/// Mints a key and returns it.
pub async fn new_key(addr: SocketAddr) -> String {
    let reply = call(addr, "command apikey").await;
    assert!(reply.is_ok(), "{reply:?}");
    reply.data.expect("apikey returns data")
}

/// Sends `lines` (requests, each ending in LF) back to back on one connection, half-closes
/// it and returns every reply the server sent before closing: a pipelining client.
pub async fn pipelined(addr: SocketAddr, lines: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(lines.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut all = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut all))
        .await
        .expect("replies in time")
        .unwrap();
    all
}

/// The domains `list` shows under `key` from `offset` on, following `next=` across pages,
/// in order. Every page must say which offset it is.
pub async fn list_pages(addr: SocketAddr, key: &str, mut offset: usize) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let reply = call(addr, &format!("command list apikey {key} offset {offset}")).await;
        assert!(reply.is_ok(), "{reply:?}");
        let data = reply.data.expect("list has a data line");
        assert!(data.contains(&format!(" offset={offset} ")), "{data}");
        let domains = data.split(" domains=").nth(1).unwrap();
        out.extend(
            domains
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_owned),
        );
        match data.split(' ').find_map(|f| f.strip_prefix("next=")) {
            Some(next) => offset = next.parse().unwrap(),
            None => return out,
        }
    }
}
