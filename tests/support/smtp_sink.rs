//! An SMTP sink for tests: a tokio TCP server that speaks enough SMTP (RFC 5321) for a real
//! client such as lettre: greeting, EHLO/HELO with capabilities, MAIL FROM, RCPT TO, DATA
//! (with dot-unstuffing), RSET, NOOP, QUIT. It captures every message it accepts.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Captured {
    pub helo: String,
    pub from: String,
    pub to: Vec<String>,
    /// The message (headers and body) after dot-unstuffing, lines joined with CRLF.
    pub data: String,
}

impl Captured {
    /// The body after the header block, with quoted-printable soft breaks undone.
    pub fn body(&self) -> String {
        let body = self
            .data
            .split_once("\r\n\r\n")
            .map_or(self.data.as_str(), |(_, b)| b);
        body.replace("=\r\n", "")
    }

    /// Every `http://` or `https://` URL in the body.
    pub fn links(&self) -> Vec<String> {
        self.body()
            .split_whitespace()
            .filter(|w| w.starts_with("http://") || w.starts_with("https://"))
            .map(str::to_owned)
            .collect()
    }
}

/// The running sink.
pub struct SmtpSink {
    pub addr: SocketAddr,
    messages: Arc<Mutex<Vec<Captured>>>,
    arrived: Arc<Notify>,
}

impl SmtpSink {
    /// Listens on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let addr = listener.local_addr().unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (m, a) = (messages.clone(), arrived.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (m, a) = (m.clone(), a.clone());
                tokio::spawn(async move {
                    let _ = session(stream, m, a).await;
                });
            }
        });
        Self {
            addr,
            messages,
            arrived,
        }
    }

    /// The messages captured so far.
    pub fn messages(&self) -> Vec<Captured> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits until at least `n` messages arrived (or panics after `limit`).
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Captured> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.arrived.notified();
            let now = self.messages();
            if now.len() >= n {
                return now;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("{} message(s) arrived, expected {n}", self.messages().len());
            }
        }
    }
}

async fn session(
    stream: TcpStream,
    messages: Arc<Mutex<Vec<Captured>>>,
    arrived: Arc<Notify>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink.test ESMTP ready\r\n").await?;
    let mut helo = String::new();
    let mut from = String::new();
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end_matches(['\r', '\n']);
        let upper = command.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO ") {
            helo = command[5..].to_owned();
            b"250-sink.test greets you\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 10485760\r\n"
        } else if upper.starts_with("HELO ") {
            helo = command[5..].to_owned();
            b"250 sink.test\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = address(&command[10..]);
            to.clear();
            b"250 2.1.0 ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            if from.is_empty() {
                b"503 5.5.1 MAIL first\r\n"
            } else {
                to.push(address(&command[8..]));
                b"250 2.1.5 ok\r\n"
            }
        } else if upper == "DATA" {
            if to.is_empty() {
                write.write_all(b"503 5.5.1 RCPT first\r\n").await?;
                continue;
            }
            write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let mut data = Vec::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                let l = line.trim_end_matches(['\r', '\n']);
                if l == "." {
                    break;
                }
                // Dot-unstuffing (RFC 5321 §4.5.2).
                data.push(l.strip_prefix('.').unwrap_or(l).to_owned());
            }
            messages.lock().unwrap().push(Captured {
                helo: helo.clone(),
                from: std::mem::take(&mut from),
                to: std::mem::take(&mut to),
                data: data.join("\r\n"),
            });
            arrived.notify_waiters();
            b"250 2.0.0 queued\r\n"
        } else if upper == "RSET" {
            from.clear();
            to.clear();
            b"250 2.0.0 ok\r\n"
        } else if upper == "NOOP" {
            b"250 2.0.0 ok\r\n"
        } else if upper == "QUIT" {
            write.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            b"502 5.5.2 command not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
}

/// `<a@b.org> SIZE=123` → `a@b.org`.
fn address(arg: &str) -> String {
    let arg = arg.trim();
    match (arg.find('<'), arg.find('>')) {
        (Some(s), Some(e)) if s < e => arg[s + 1..e].to_owned(),
        _ => arg.split_whitespace().next().unwrap_or("").to_owned(),
    }
}
