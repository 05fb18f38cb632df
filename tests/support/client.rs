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

/// How much longer [`pipelined`] waits per request: a pipeline of thousands of writes takes
/// time in proportion (on PostgreSQL, a debug build under CI load answers about 150 `add`s
/// a second on one connection: each is several statements, each a round trip).
const PATIENCE_PER_REQUEST: Duration = Duration::from_millis(50);

/// Sends `lines` (requests, each ending in LF) back to back on one connection, half-closes
/// it and returns every reply the server sent before closing: a pipelining client.
pub async fn pipelined(addr: SocketAddr, lines: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(lines.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut all = String::new();
    let requests = lines.matches('\n').count() as u32;
    let limit = PATIENCE + PATIENCE_PER_REQUEST * requests;
    tokio::time::timeout(limit, stream.read_to_string(&mut all))
        .await
        .expect("replies in time")
        .unwrap();
    all
}

/// [`request`] for code outside a runtime (the hook-script tests): sends `line` with a newline
/// on a new connection and returns the whole reply.
pub fn request_blocking(addr: SocketAddr, line: &str) -> String {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for one request")
        .block_on(request(addr, &format!("{line}\n")))
}

/// One key's listing, page by page (protocol.md §7).
pub struct Listing {
    /// Every domain, in the order the pages gave them.
    pub domains: Vec<String>,
    /// Each page's raw reply.
    pub pages: Vec<String>,
}

/// Lists every domain of `key`, following `next=` page by page. Checks the paging contract on
/// the way: each page is `ok`, echoes its `offset`, keeps `total` unchanged, `next` advances,
/// and `total` equals the number of domains listed.
pub async fn list_all(addr: SocketAddr, key: &str) -> Listing {
    list_from(addr, key, 0).await
}

/// [`list_all`] from `offset` on: the domains from there to the end, with the same checks
/// (`total` then equals `offset` plus the number listed, for an offset within the total).
pub async fn list_from(addr: SocketAddr, key: &str, first: u64) -> Listing {
    let mut listing = Listing {
        domains: Vec::new(),
        pages: Vec::new(),
    };
    let mut offset = first;
    let mut total = None;
    loop {
        let raw = request(
            addr,
            &format!("command list apikey {key} offset {offset}\n"),
        )
        .await;
        let reply = Reply::parse(raw.as_bytes()).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
        assert!(reply.is_ok(), "list failed: {raw:?}");
        let data = reply.data.expect("list has a data line");
        let mut next = None;
        for field in data.split(' ') {
            let (name, value) = field.split_once('=').expect("name=value");
            match name {
                "total" => {
                    let t: u64 = value.parse().expect("total is a number");
                    assert!(total.is_none_or(|prev| prev == t), "total changed: {data}");
                    total = Some(t);
                }
                "offset" => assert_eq!(value.parse::<u64>().ok(), Some(offset), "{data}"),
                "next" => next = Some(value.parse::<u64>().expect("next is a number")),
                "domains" => listing
                    .domains
                    .extend(value.split(',').filter(|d| !d.is_empty()).map(String::from)),
                other => panic!("unexpected field {other} in {data:?}"),
            }
        }
        listing.pages.push(raw);
        match next {
            Some(n) => {
                assert!(n > offset, "next={n} does not advance from offset={offset}");
                offset = n;
            }
            None => break,
        }
    }
    let total = total.expect("every page has a total");
    assert_eq!(
        total.max(first),
        first + listing.domains.len() as u64,
        "the key's total disagrees with its listed domains"
    );
    listing
}

/// The `data` line of `command status` for one domain (empty if the reply has none), within
/// the 1,000 bytes one bash `dd` read takes.
pub async fn status_data(addr: SocketAddr, key: &str, domain: &str) -> String {
    let reply = call(
        addr,
        &format!("command status apikey {key} domain {domain}"),
    )
    .await;
    let data = reply.data.unwrap_or_default();
    assert!(data.len() < 1000, "a status line over 1,000 bytes: {data}");
    data
}

/// Waits until the status of every one of `domains` contains `want` (e.g. `" dcv=VALIDATED "`);
/// only the domains not there yet are asked again. Past `limit` the test fails with how many
/// are left and one of their status lines.
pub async fn wait_for_statuses(
    addr: SocketAddr,
    key: &str,
    domains: &[String],
    want: &str,
    limit: Duration,
) {
    let pending = std::sync::Mutex::new(domains.to_vec());
    super::wait::wait_until(limit, &format!("every domain with {want:?}"), || async {
        let asked = std::mem::take(&mut *pending.lock().unwrap());
        let mut still = Vec::new();
        let mut example = String::new();
        for d in asked {
            let data = status_data(addr, key, &d).await;
            if !data.contains(want) {
                example = data;
                still.push(d);
            }
        }
        let left = still.len();
        *pending.lock().unwrap() = still;
        super::wait::done_or(left == 0, format!("{left} without it, e.g. {example}"))
    })
    .await;
}
