//! Hostile clients over real TCP against the real binary (protocol.md §2, ARCHITECTURE.md §6).
//!
//! Every test starts `certline serve` as a child process with a configuration of its own,
//! does something a hostile or broken client would do, and checks three things:
//! - the documented reply (or close) for the hostile client;
//! - a well-behaved client, connecting from another source address (127.0.0.2), is served
//!   throughout: a [`Watchdog`] keeps sending `command ping` and requires `status ok 200 pong`
//!   within [`SERVED_WITHIN`] (a generous liveness bound, not a speed claim);
//! - the server's resident memory stays bounded ([`MAX_RSS_KIB`]), and it still shuts down
//!   cleanly on SIGTERM afterwards.

mod support;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::client::{self, PATIENCE};
use support::server::Binary;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a well-behaved client may wait for its answer while the server is under attack.
const SERVED_WITHIN: Duration = Duration::from_secs(5);
/// A generous bound on the server's resident memory (VmRSS).
const MAX_RSS_KIB: u64 = 200 * 1024;
/// The well-behaved client's source address.
const WELL_BEHAVED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const HOSTILE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

const PONG: &str = "status ok 200 pong\n";
const TOO_LONG: &str = "status error 413 request too long\n";
const INVALID_BYTE: &str = "status error 400 invalid byte in request\n";
const TOO_MANY_CONNECTIONS: &str = "status error 503 too many connections\n";
const TOO_MANY_REQUESTS: &str = "status error 429 too many requests\n";

// ---------------------------------------------------------------------------------------
// Harness

/// The binary under test, with its temporary directory.
struct Target {
    server: Binary,
    _dir: tempfile::TempDir,
}

impl Target {
    /// Starts `certline serve` with `config` (TOML) written to a file.
    fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path: PathBuf = dir.path().join("certline.toml");
        std::fs::write(&path, config).expect("write config");
        let server = Binary::start(&dir.path().join("data"), Some(&path));
        Self { server, _dir: dir }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    fn pid(&self) -> u32 {
        self.server.child.id()
    }

    /// Starts a well-behaved client pinging from 127.0.0.2 until [`Watchdog::finish`].
    fn watchdog(&self) -> Watchdog {
        Watchdog::start(self.addr(), self.pid())
    }

    /// SIGTERM; the server must exit cleanly (it did not crash and its state is flushed).
    fn stop(self) {
        let status = self.server.terminate();
        assert!(status.success(), "certline exited with {status}");
    }
}

/// The server's resident set size in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

fn assert_memory_bounded(pid: u32) {
    let rss = rss_kib(pid);
    assert!(
        rss < MAX_RSS_KIB,
        "server RSS {rss} KiB exceeds {MAX_RSS_KIB} KiB"
    );
}

/// A connection from a chosen loopback source address.
async fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    socket.connect(addr).await
}

/// Reads until EOF (or a reset), returning what arrived, within [`PATIENCE`].
async fn read_until_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut buf)).await;
    match read {
        Err(_) => panic!("the server did not close the connection; got {buf:?}"),
        Ok(Ok(_)) => {}
        // A reset after the reply is an acceptable way to end; what arrived before counts.
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("read: {e}"),
    }
    buf
}

/// One `command ping` on a fresh connection from `source`; the reply as text.
async fn ping_from(source: Ipv4Addr, addr: SocketAddr) -> io::Result<String> {
    let mut stream = connect_from(source, addr).await?;
    stream.write_all(b"command ping\n").await?;
    let reply = client::read_reply(&mut stream).await;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// Sends `request` on `stream` and reads one reply.
async fn ask(stream: &mut TcpStream, request: &[u8]) -> String {
    stream.write_all(request).await.expect("write");
    String::from_utf8_lossy(&client::read_reply(stream).await).into_owned()
}

/// Retries `ping` from `source` until it is answered `pong`, for up to [`SERVED_WITHIN`].
/// Used where the server needs a moment to notice that connections went away.
async fn eventually_served(source: Ipv4Addr, addr: SocketAddr) {
    let deadline = Instant::now() + SERVED_WITHIN;
    loop {
        let reply = ping_from(source, addr).await;
        if matches!(&reply, Ok(r) if r == PONG) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{source} not served within {SERVED_WITHIN:?}: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A well-behaved client that keeps pinging from 127.0.0.2, and samples the server's memory.
struct Watchdog {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<u64>,
    max_rss: Arc<AtomicU64>,
}

impl Watchdog {
    fn start(addr: SocketAddr, pid: u32) -> Self {
        let stop = CancellationToken::new();
        let max_rss = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let stop = stop.clone();
            let max_rss = max_rss.clone();
            async move {
                let mut pings = 0;
                loop {
                    let reply = tokio::time::timeout(SERVED_WITHIN, ping_from(WELL_BEHAVED, addr))
                        .await
                        .unwrap_or_else(|_| {
                            panic!(
                                "the well-behaved client was not served within {SERVED_WITHIN:?}"
                            )
                        })
                        .expect("the well-behaved client could not connect");
                    assert_eq!(reply, PONG, "the well-behaved client got {reply:?}");
                    pings += 1;
                    max_rss.fetch_max(rss_kib(pid), Ordering::Relaxed);
                    tokio::select! {
                        _ = stop.cancelled() => return pings,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        });
        Self {
            stop,
            task,
            max_rss,
        }
    }

    /// Stops pinging; fails if any ping went unanswered or memory passed the bound.
    async fn finish(self) {
        self.stop.cancel();
        let pings = self.task.await.expect("the well-behaved client failed");
        assert!(pings >= 1);
        let max_rss = self.max_rss.load(Ordering::Relaxed);
        assert!(
            max_rss < MAX_RSS_KIB,
            "server RSS reached {max_rss} KiB (bound {MAX_RSS_KIB} KiB)"
        );
    }
}

/// Lets this process hold `n` more sockets.
fn raise_fd_limit(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < n {
            lim.rlim_cur = n;
            lim.rlim_max = lim.rlim_max.max(n);
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim),
                0,
                "could not raise RLIMIT_NOFILE to {n}: {}",
                io::Error::last_os_error()
            );
        }
    }
}

const BASE: &str = r#"
[limits]
quiet_period_ms = 100
linger_ms = 1000
"#;

// ---------------------------------------------------------------------------------------
// Tests

/// protocol.md §2: a line over the cap gets 413, then the server stops sending and closes.
/// The server reads at most `max_line_bytes + 1` bytes of a line, so eight clients each
/// sending a mebibyte cost it no memory to speak of.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mebibyte_without_newline_gets_413_then_close() {
    let target = Target::start(BASE);
    let watchdog = target.watchdog();
    let addr = target.addr();
    let mut clients = JoinSet::new();
    for _ in 0..8 {
        clients.spawn(async move {
            let stream = connect_from(HOSTILE, addr).await.expect("connect");
            let (mut rx, mut tx) = stream.into_split();
            let writer = tokio::spawn(async move {
                let mib = vec![b'a'; 1 << 20];
                // The server may close before it has read everything; that is allowed.
                if tx.write_all(&mib).await.is_ok() {
                    let _ = tx.shutdown().await;
                }
            });
            let mut reply = Vec::new();
            let read = tokio::time::timeout(PATIENCE, rx.read_to_end(&mut reply)).await;
            assert!(read.is_ok(), "the server did not close the connection");
            writer.await.unwrap();
            assert_eq!(String::from_utf8_lossy(&reply), TOO_LONG);
        });
    }
    while let Some(r) = clients.join_next().await {
        r.expect("hostile client");
    }
    assert_memory_bounded(target.pid());
    watchdog.finish().await;
    target.stop();
}

/// protocol.md §3: NUL, other control characters and invalid UTF-8 are `400 invalid byte in
/// request`; the connection stays open and usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_control_characters_and_invalid_utf8_get_400() {
    let target = Target::start(BASE);
    let watchdog = target.watchdog();
    let mut stream = connect_from(HOSTILE, target.addr()).await.unwrap();
    let bad: &[&[u8]] = &[
        b"command\0ping\n",
        b"command ping\0\n",
        b"\0\n",
        b"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\n",
        b"command p\xffing\n",
        b"\xff\xfe\xfd\n",
        b"command ping domain \xc0\xaf\n", // overlong encoding of '/'
        b"command ping domain a\xed\xa0\x80b\n", // a UTF-16 surrogate
        b"command ping domain \xe2\x82\n", // truncated sequence
        b"\x1b[31mcommand ping\n",         // ESC
        b"command ping\x7f\n",             // DEL
        b"command ping domain a\xc2\x85b\n", // U+0085, a C1 control
        b"command ping\rdomain x\n",       // a CR that does not end the line
        b"command ping\x0b\x0c\n",         // VT, FF
    ];
    for line in bad {
        assert_eq!(ask(&mut stream, line).await, INVALID_BYTE, "for {line:?}");
    }
    // Without a newline too: the quiet period ends the request.
    assert_eq!(ask(&mut stream, b"command\0ping").await, INVALID_BYTE);
    // Valid UTF-8 in a value is fine (unknown keys are ignored).
    assert_eq!(
        ask(&mut stream, "command ping note bücher\n".as_bytes()).await,
        PONG
    );
    assert_eq!(ask(&mut stream, b"command ping\n").await, PONG);
    drop(stream);
    watchdog.finish().await;
    assert_memory_bounded(target.pid());
    target.stop();
}

/// Regressions found by fuzzing and property tests, over the wire: a multi-byte character
/// where an `http://` prefix would end, or right after `[IPv6]`, made domain normalisation
/// panic, which dropped the connection with no reply (and no reply to what was pipelined
/// behind it); and a blank line
/// holding a CR the framer does not strip got a 400 instead of being ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_once_killed_the_connection_or_got_a_stray_reply() {
    let target = Target::start(BASE);
    let mut stream = connect_from(HOSTILE, target.addr()).await.unwrap();
    for domain in [
        "http://\u{df}_",
        "https://\u{fc}\u{fc}_",
        "http://a\u{df}",
        "[::1]\u{fc}",
        "[::ffff:192.0.2.1]\u{fc}ch)r/G",
    ] {
        let line = format!("command add apikey 0000000000000000 domain {domain}\ncommand ping\n");
        stream.write_all(line.as_bytes()).await.unwrap();
        let mut reply = client::read_reply(&mut stream).await;
        if !reply.ends_with(PONG.as_bytes()) {
            reply.extend(client::read_reply(&mut stream).await);
        }
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply == format!("status error 406 invalid domain\n{PONG}")
                || reply == format!("status error 401 unknown api key\n{PONG}"),
            "for {domain:?}: {reply:?}"
        );
    }
    assert_eq!(
        ask(&mut stream, b"\r\r\n \r\t\r\ncommand ping\n").await,
        PONG
    );
    drop(stream);
    target.stop();
}

/// A line of `n` single-letter tokens `a b c … a b c …` with distinct keys where possible.
fn tokens_line(n: usize) -> Vec<u8> {
    let mut line = Vec::new();
    for i in 0..n {
        if i > 0 {
            line.push(b' ');
        }
        line.push(b'a' + (i % 26) as u8);
    }
    line
}

/// protocol.md §2, §3: a line of 10,000 tokens is far over the 1 KiB cap (413, close); a
/// line with as many tokens as fit is parsed like any other: unknown keys are ignored, a
/// repeated key or a key without a value is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_of_many_tokens() {
    let target = Target::start(BASE);
    let watchdog = target.watchdog();
    let addr = target.addr();

    for line in [tokens_line(10_000), b"x ".repeat(10_000)] {
        let mut stream = connect_from(HOSTILE, addr).await.unwrap();
        stream.write_all(&line).await.unwrap();
        stream.write_all(b"\n").await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&read_until_close(&mut stream).await),
            TOO_LONG
        );
    }

    let mut stream = connect_from(HOSTILE, addr).await.unwrap();
    // `command ping` and distinct unknown pairs, exactly 1024 bytes: accepted, pairs ignored.
    let mut line = String::from("command ping");
    let mut i = 0;
    while line.len() + format!(" k{i} v").len() <= 1024 {
        line.push_str(&format!(" k{i} v"));
        i += 1;
    }
    while line.len() < 1024 {
        line.push('v');
    }
    assert_eq!(line.len(), 1024);
    assert!(i > 150, "{i} pairs");
    assert_eq!(ask(&mut stream, format!("{line}\n").as_bytes()).await, PONG);
    // 512 tokens, 1023 bytes, keys repeating.
    let reply = ask(&mut stream, &[tokens_line(512), b"\n".to_vec()].concat()).await;
    assert_eq!(reply, "status error 400 repeated key a\n");
    // An odd number of distinct tokens: the last key has no value.
    let mut odd = String::from("command ping");
    for k in 0..99 {
        odd.push_str(&format!(" k{k} v"));
    }
    odd.push_str(" last");
    assert!(odd.len() <= 1024);
    assert_eq!(
        ask(&mut stream, format!("{odd}\n").as_bytes()).await,
        "status error 400 missing value for key last\n"
    );
    // One byte over the cap, on the same connection: 413 and close.
    stream
        .write_all(format!("{line}v\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&read_until_close(&mut stream).await),
        TOO_LONG
    );

    watchdog.finish().await;
    assert_memory_bounded(target.pid());
    target.stop();
}

/// protocol.md §2: slow senders hold connections; up to the per-address cap they are served
/// (each pause longer than the quiet period ends a request), the one over the cap gets `503
/// too many connections` and is closed, and other addresses are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_senders_up_to_and_beyond_the_connection_cap() {
    const CAP: usize = 4;
    const DRIPS: usize = 8;
    let target = Target::start(&format!(
        "{BASE}max_connections = 100\nmax_connections_per_ip = {CAP}\n"
    ));
    let watchdog = target.watchdog();
    let addr = target.addr();

    // CAP connections, each known to be accepted (answered) before the next step.
    let mut slow = Vec::new();
    for _ in 0..CAP {
        let mut stream = connect_from(HOSTILE, addr).await.unwrap();
        assert_eq!(ask(&mut stream, b"command ping\n").await, PONG);
        slow.push(stream);
    }
    let mut drippers = JoinSet::new();
    for mut stream in slow {
        drippers.spawn(async move {
            // One byte every 300 ms: three quiet periods between bytes, so each byte is (at
            // least nearly always) a request of its own. However the bytes group, every
            // request is a run of `a`s: a key without a value.
            let (mut rx, mut tx) = stream.split();
            let writer = async {
                for _ in 0..DRIPS {
                    tx.write_all(b"a").await.unwrap();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            };
            let reader = async {
                let mut got = Vec::new();
                let mut letters = 0;
                let mut chunk = [0u8; 256];
                while letters < DRIPS {
                    let n = tokio::time::timeout(PATIENCE, rx.read(&mut chunk))
                        .await
                        .expect("a reply to a slow sender")
                        .unwrap();
                    assert!(n > 0, "closed early; got {got:?}");
                    got.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&got).into_owned();
                    letters = text
                        .lines()
                        .map(|l| {
                            let key = l
                                .strip_prefix("status error 400 missing value for key ")
                                .unwrap_or_else(|| panic!("unexpected reply {l:?}"));
                            assert!(key.bytes().all(|b| b == b'a'), "{l:?}");
                            key.len()
                        })
                        .sum();
                }
                assert_eq!(letters, DRIPS);
            };
            tokio::join!(writer, reader);
            // Still a working connection.
            assert_eq!(ask(&mut stream, b"command ping\n").await, PONG);
            stream
        });
    }
    // While they drip: over the cap from their address, refused with 503 and closed.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut extra = connect_from(HOSTILE, addr).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&read_until_close(&mut extra).await),
            TOO_MANY_CONNECTIONS
        );
    }
    let mut held = Vec::new();
    while let Some(r) = drippers.join_next().await {
        held.push(r.expect("slow sender"));
    }
    drop(held);
    // Their places are given back.
    eventually_served(HOSTILE, addr).await;
    watchdog.finish().await;
    assert_memory_bounded(target.pid());
    target.stop();
}

/// protocol.md §2: above `max_connections` in total, a new connection from any address gets
/// `503 too many connections`; once a place frees up, new clients are served again. (No
/// watchdog here: while the server is full, refusing the well-behaved client is the
/// documented behaviour.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_connection_cap() {
    let target = Target::start(&format!(
        "{BASE}max_connections = 3\nmax_connections_per_ip = 100\n"
    ));
    let addr = target.addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from(Ipv4Addr::new(127, 0, 0, 3), addr)
            .await
            .unwrap();
        assert_eq!(ask(&mut stream, b"command ping\n").await, PONG);
        held.push(stream);
    }
    let mut refused = connect_from(WELL_BEHAVED, addr).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&read_until_close(&mut refused).await),
        TOO_MANY_CONNECTIONS
    );
    drop(held.pop());
    eventually_served(WELL_BEHAVED, addr).await;
    target.stop();
}

/// 5,000 connections opened and held; each is served, and so is a newcomer from another
/// address, with bounded memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_thousand_connections_held() {
    const N: usize = 5000;
    // Our N sockets plus the server's N (the child inherits the limit), with headroom.
    raise_fd_limit(3 * N as u64);
    let target = Target::start(&format!(
        "{BASE}max_connections = {}\nmax_connections_per_ip = {}\n",
        N + 100,
        N + 100
    ));
    let addr = target.addr();
    let watchdog = target.watchdog();
    let mut held = Vec::with_capacity(N);
    // In batches, so the listen backlog is not the thing under test.
    for _ in 0..N / 250 {
        let mut batch = JoinSet::new();
        for _ in 0..250 {
            batch.spawn(async move {
                let mut stream = connect_from(HOSTILE, addr).await.expect("connect");
                assert_eq!(ask(&mut stream, b"command ping\n").await, PONG);
                stream
            });
        }
        while let Some(r) = batch.join_next().await {
            held.push(r.expect("held connection"));
        }
    }
    assert_eq!(held.len(), N);
    assert_memory_bounded(target.pid());
    // All of them are still open and working: one more request on each.
    let mut again = JoinSet::new();
    for mut stream in held {
        again.spawn(async move {
            assert_eq!(ask(&mut stream, b"command ping\n").await, PONG);
            stream
        });
    }
    let mut held = Vec::with_capacity(N);
    while let Some(r) = again.join_next().await {
        held.push(r.expect("held connection"));
    }
    watchdog.finish().await;
    assert_memory_bounded(target.pid());
    drop(held);
    target.stop();
}

/// protocol.md §7, §9: `apikey` is rate-limited per source address (default-ish: 30 a
/// minute, bursts of 10). A burst of 10,000 from one address gets mostly 429; nothing else
/// goes wrong, another address can still mint a key, and the server stays responsive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_ten_thousand_apikey_requests_from_one_address() {
    const CONNECTIONS: usize = 20;
    const PER_CONNECTION: usize = 500;
    let target = Target::start(&format!(
        "{BASE}\n[rate_limit]\napikey_per_minute = 30\napikey_burst = 10\n"
    ));
    let addr = target.addr();
    let watchdog = target.watchdog();
    let started = Instant::now();
    let mut clients = JoinSet::new();
    for _ in 0..CONNECTIONS {
        clients.spawn(async move {
            let mut stream = connect_from(HOSTILE, addr).await.expect("connect");
            let (mut rx, mut tx) = stream.split();
            let requests = b"command apikey\n".repeat(PER_CONNECTION);
            let writer = tx.write_all(&requests);
            let reader = async {
                let mut text = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                let count = |t: &[u8]| {
                    t.split(|&b| b == b'\n')
                        .filter(|l| l.starts_with(b"status "))
                        .count()
                };
                while count(&text) < PER_CONNECTION {
                    let n = tokio::time::timeout(PATIENCE, rx.read(&mut chunk))
                        .await
                        .expect("replies to the burst")
                        .unwrap();
                    assert!(n > 0, "closed during the burst");
                    text.extend_from_slice(&chunk[..n]);
                }
                String::from_utf8(text).unwrap()
            };
            let (w, text) = tokio::join!(writer, reader);
            w.unwrap();
            let (mut ok, mut limited) = (0, 0);
            let mut lines = text.lines();
            while let Some(line) = lines.next() {
                if line.starts_with("data ") {
                    assert_eq!(lines.next(), Some("status ok 200 api key created"));
                    ok += 1;
                } else {
                    assert_eq!(format!("{line}\n"), TOO_MANY_REQUESTS);
                    limited += 1;
                }
            }
            (ok, limited)
        });
    }
    // Meanwhile, another address has its own bucket.
    let other = async {
        let mut stream = connect_from(WELL_BEHAVED, addr).await.unwrap();
        ask(&mut stream, b"command apikey\n").await
    };
    let minted = tokio::time::timeout(SERVED_WITHIN, other)
        .await
        .expect("served");
    assert!(
        minted.ends_with("status ok 200 api key created\n"),
        "{minted:?}"
    );
    let (mut ok, mut limited) = (0, 0);
    while let Some(r) = clients.join_next().await {
        let (o, l) = r.expect("burst client");
        ok += o;
        limited += l;
    }
    let elapsed = started.elapsed().as_secs();
    assert_eq!(ok + limited, CONNECTIONS * PER_CONNECTION);
    // Ten at once, then one every two seconds (and one of slack for the clock's edges).
    let allowed = 10 + elapsed as usize / 2 + 1;
    assert!(
        (1..=allowed).contains(&ok),
        "{ok} keys minted in {elapsed}s; the limit allows {allowed}"
    );
    watchdog.finish().await;
    assert_memory_bounded(target.pid());
    target.stop();
}

/// Half-open connections (the client shuts down its sending side) get every answer, then a
/// close (protocol.md §2: EOF ends a request). Connections reset mid-line, mid-reply or
/// mid-413 cost the server nothing lasting: afterwards, every per-address place is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_and_reset_connections() {
    const CAP: usize = 16;
    let target = Target::start(&format!(
        "{BASE}max_connections = 1000\nmax_connections_per_ip = {CAP}\n"
    ));
    let addr = target.addr();
    let watchdog = target.watchdog();

    for round in 0..3 * CAP {
        let mut stream = connect_from(HOSTILE, addr).await.unwrap();
        let (sent, expected): (&[u8], String) = match round % 3 {
            0 => (b"command ping", PONG.into()),
            1 => (
                b"command ping\ncommand fly\ncommand ping",
                format!("{PONG}status error 404 unknown command fly\n{PONG}"),
            ),
            _ => (b"", String::new()),
        };
        stream.write_all(sent).await.unwrap();
        stream.shutdown().await.unwrap();
        let got = read_until_close(&mut stream).await;
        assert_eq!(String::from_utf8_lossy(&got), expected, "round {round}");
    }

    for round in 0..8 * CAP {
        let mut stream = connect_from(HOSTILE, addr).await.unwrap();
        match round % 4 {
            0 => {}
            1 => stream.write_all(b"command pi").await.unwrap(),
            2 => {
                // Replies are being written while the reset arrives.
                let _ = stream.write_all(&b"command ping\n".repeat(200)).await;
            }
            _ => {
                // The server is lingering after a 413.
                let _ = stream.write_all(&[b'x'; 4000]).await;
                let mut first = [0u8; 64];
                let _ = tokio::time::timeout(PATIENCE, stream.read(&mut first)).await;
            }
        }
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(stream); // RST
    }

    // No place was leaked: CAP connections at once from the same address are all served.
    let deadline = Instant::now() + SERVED_WITHIN;
    loop {
        let mut conns = JoinSet::new();
        for _ in 0..CAP {
            conns.spawn(async move {
                let mut stream = connect_from(HOSTILE, addr).await.ok()?;
                stream.write_all(b"command ping\n").await.ok()?;
                let reply = client::read_reply(&mut stream).await;
                Some((reply == PONG.as_bytes(), stream))
            });
        }
        let mut all = true;
        let mut keep = Vec::new();
        while let Some(r) = conns.join_next().await {
            match r.unwrap() {
                Some((ok, stream)) => {
                    all &= ok;
                    keep.push(stream);
                }
                None => all = false,
            }
        }
        if all {
            break;
        }
        drop(keep);
        assert!(
            Instant::now() < deadline,
            "per-address places still taken after the resets"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    watchdog.finish().await;
    assert_memory_bounded(target.pid());
    target.stop();
}
