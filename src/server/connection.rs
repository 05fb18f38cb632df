//! One client connection: read a request, answer it, repeat (protocol.md §2).
//!
//! The loop answers every complete line already buffered (pipelining, in order), then waits
//! for more bytes: for the idle timeout when nothing is pending, for the quiet period when a
//! line has started but not ended. When the quiet period passes, the partial line is a
//! request: that is how `echo -ne "command apikey" >&3` gets its answer without a newline.
//!
//! Pipelined requests (several complete lines already buffered) are answered as a batch: each
//! request's checks and store write run in the order sent, then the batch waits for
//! durability once, so its writes share one group-commit round instead of paying one each, and
//! the replies go out in order in one write, each only after its own write is durable. This
//! is what Redis does with a pipeline under `appendfsync always`.
//!
//! Memory per idle connection stays small because the read buffer is released whenever it is
//! empty, and the task waits for readability before allocating one again.

use super::{Limits, Shared};
use crate::protocol::parse::is_blank;
use crate::protocol::{ErrorCode, Frame, LineFramer, Reply, parse_request};
use crate::service::Context;
use bytes::BytesMut;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::Decoder;

/// How many bytes one read may add. With the line cap, this bounds the buffer.
const READ_CHUNK: usize = 2048;

/// While a client keeps the socket full (a pipeline), reads continue up to this many buffered
/// bytes before the requests are answered: the bigger the batch, the fewer commit rounds.
const PIPELINE_BYTES: usize = 64 * 1024;

/// The most requests answered as one batch (their handlers are in memory at the same time).
const MAX_BATCH: usize = 1024;

/// Serves one connection until it closes, under the limits in force when it was accepted
/// (a reload changes the limits of later connections, not of this one).
pub async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let limits = shared.limits.load_full();
    let framer = LineFramer::new(limits.max_line_bytes);
    let mut conn = Connection {
        stream,
        peer,
        buf: BytesMut::new(),
        framer,
        limits,
        shared,
        draining: false,
    };
    if let Err(e) = conn.run().await {
        tracing::debug!(%peer, error = %e, "connection ended with an I/O error");
    }
}

struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    buf: BytesMut,
    framer: LineFramer,
    /// The limits when the connection was accepted.
    limits: Arc<Limits>,
    shared: Arc<Shared>,
    /// Shutdown has begun: the next request gets 503 and the connection closes.
    draining: bool,
}

/// What waiting for input produced.
enum Input {
    Bytes,
    Eof,
    Timeout,
}

/// Whether to keep the connection after a reply.
enum Next {
    Continue,
    Close,
}

impl Connection {
    async fn run(&mut self) -> io::Result<()> {
        loop {
            if let Next::Close = self.answer_buffered().await? {
                return Ok(());
            }
            let waiting_for_line_end = !self.buf.is_empty();
            let wait = if waiting_for_line_end {
                self.limits.quiet_period()
            } else {
                self.limits.idle_timeout()
            };
            match self.read_more(wait).await? {
                Input::Bytes => {}
                Input::Eof => {
                    if let Some(frame) = self.framer.decode_eof(&mut self.buf)? {
                        self.answer_frame(frame).await?;
                    }
                    let _ = self.stream.shutdown().await;
                    return Ok(());
                }
                Input::Timeout if waiting_for_line_end => {
                    if let Some(frame) = self.framer.take_partial(&mut self.buf)
                        && let Next::Close = self.answer_frame(frame).await?
                    {
                        return Ok(());
                    }
                }
                Input::Timeout => {
                    tracing::debug!(peer = %self.peer, draining = self.draining, "closing idle connection");
                    return Ok(());
                }
            }
        }
    }

    /// Waits up to `wait` for bytes. When shutdown begins meanwhile, the wait is cut to one
    /// quiet period: long enough for a request that is on its way to arrive and get its 503.
    async fn read_more(&mut self, wait: Duration) -> io::Result<Input> {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
        let mut deadline = Instant::now() + wait;
        loop {
            tokio::select! {
                ready = self.stream.readable() => ready?,
                _ = tokio::time::sleep_until(deadline) => return Ok(Input::Timeout),
                _ = self.shared.shutdown.cancelled(), if !self.draining => {
                    self.draining = true;
                    deadline = deadline.min(Instant::now() + self.limits.quiet_period());
                    continue;
                }
            }
            self.buf.reserve(READ_CHUNK);
            match self.stream.try_read_buf(&mut self.buf) {
                Ok(0) => return Ok(Input::Eof),
                Ok(n) => {
                    self.read_pipeline(n)?;
                    return Ok(Input::Bytes);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// A read that filled its chunk suggests a pipeline: keep reading what the socket already
    /// holds (without waiting) up to [`PIPELINE_BYTES`], so the batch is as big as it can be.
    /// EOF or an error here is left for the next read to report.
    fn read_pipeline(&mut self, mut last: usize) -> io::Result<()> {
        while last >= READ_CHUNK && self.buf.len() < PIPELINE_BYTES {
            self.buf.reserve(READ_CHUNK);
            match self.stream.try_read_buf(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => last = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// Answers every complete request in the buffer: one alone as it comes, several as a
    /// batch (see the module doc).
    async fn answer_buffered(&mut self) -> io::Result<Next> {
        loop {
            let mut lines = Vec::new();
            let mut stop = None;
            while lines.len() < MAX_BATCH {
                match self.framer.decode(&mut self.buf)? {
                    None => break,
                    Some(Frame::Line(line)) if is_blank(&line) => {}
                    Some(Frame::Line(line)) => lines.push(line),
                    Some(frame @ Frame::TooLong) => {
                        stop = Some(frame);
                        break;
                    }
                }
            }
            let full = lines.len() == MAX_BATCH;
            if lines.len() > 1 && !self.draining && !self.shared.shutdown.is_cancelled() {
                self.answer_batch(lines).await?;
            } else {
                for line in lines {
                    if let Next::Close = self.answer_frame(Frame::Line(line)).await? {
                        return Ok(Next::Close);
                    }
                }
            }
            if let Some(frame) = stop {
                return self.answer_frame(frame).await;
            }
            if !full {
                return Ok(Next::Continue);
            }
        }
    }

    /// Answers pipelined requests (none of them blank) together: their handlers start in
    /// order, so each one's checks and store write happen in the order the client sent them
    /// (every handler writes before its first wait, which is for durability); then they all
    /// wait, sharing the commit round; then the replies go out in order, in one write.
    async fn answer_batch(&mut self, lines: Vec<BytesMut>) -> io::Result<()> {
        let shared = self.shared.clone();
        let peer = self.peer;
        let mut handlers: Vec<Pin<Box<dyn Future<Output = Reply> + Send + '_>>> =
            Vec::with_capacity(lines.len());
        for line in &lines {
            let handler: Pin<Box<dyn Future<Output = Reply> + Send + '_>> =
                match parse_request(line) {
                    Ok(request) => {
                        let command = request.command_name();
                        let service = &shared.service;
                        Box::pin(async move {
                            let reply = service.handle(request, Context::now(peer.ip())).await;
                            tracing::debug!(%peer, command, code = reply.code(), "request");
                            count_request(command, reply.code());
                            reply
                        })
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "malformed request");
                        let code = ErrorCode::from_u16(e.code()).unwrap_or(ErrorCode::BadRequest);
                        count_request("none", code as u16);
                        let reply = Reply::error(code, e.to_string());
                        Box::pin(std::future::ready(reply))
                    }
                };
            handlers.push(handler);
        }
        let replies = in_order(handlers).await;
        let mut out = BytesMut::with_capacity(replies.len() * 64);
        for reply in &replies {
            reply.encode(&mut out);
        }
        self.stream.write_all(&out).await
    }

    async fn answer_frame(&mut self, frame: Frame) -> io::Result<Next> {
        let line = match frame {
            Frame::TooLong => {
                tracing::info!(peer = %self.peer, "request over the line cap; closing");
                count_request("none", ErrorCode::TooLong as u16);
                self.send(&Reply::error(ErrorCode::TooLong, "request too long"))
                    .await?;
                self.close_gracefully().await;
                return Ok(Next::Close);
            }
            Frame::Line(line) => line,
        };
        if is_blank(&line) {
            return Ok(Next::Continue);
        }
        if self.draining || self.shared.shutdown.is_cancelled() {
            self.send(&Reply::error(ErrorCode::Unavailable, "shutting down"))
                .await?;
            self.close_gracefully().await;
            return Ok(Next::Close);
        }
        let reply = match parse_request(&line) {
            Ok(request) => {
                let command = request.command_name();
                let reply = self
                    .shared
                    .service
                    .handle(request, Context::now(self.peer.ip()))
                    .await;
                tracing::debug!(peer = %self.peer, command, code = reply.code(), "request");
                count_request(command, reply.code());
                reply
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "malformed request");
                let code = ErrorCode::from_u16(e.code()).unwrap_or(ErrorCode::BadRequest);
                count_request("none", code as u16);
                Reply::error(code, e.to_string())
            }
        };
        self.send(&reply).await?;
        Ok(Next::Continue)
    }

    /// One reply, one buffer, one write.
    async fn send(&mut self, reply: &Reply) -> io::Result<()> {
        self.stream.write_all(&reply.to_bytes()).await
    }

    async fn close_gracefully(&mut self) {
        let linger = self.limits.linger();
        let _ = self.stream.shutdown().await;
        discard_until_eof(&mut self.stream, linger).await;
    }
}

/// Drives `handlers` to completion and returns their outputs in order. Each is first polled in
/// order, so everything a handler does before its first wait happens in the order of the
/// list; after that they progress together.
async fn in_order<T>(mut handlers: Vec<Pin<Box<dyn Future<Output = T> + Send + '_>>>) -> Vec<T> {
    let mut done: Vec<Option<T>> = handlers.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (handler, out) in handlers.iter_mut().zip(done.iter_mut()) {
            if out.is_none() {
                match handler.as_mut().poll(cx) {
                    Poll::Ready(value) => *out = Some(value),
                    Poll::Pending => all = false,
                }
            }
        }
        if all { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    done.into_iter().flatten().collect()
}

/// Ends a connection without handing the client a reset before it has read our last reply:
/// shut down our sending side, then discard input until the client closes or `linger`
/// passes. (Closing a socket with unread input makes the kernel send RST, which can destroy
/// the reply in the client's receive path.)
pub async fn close_gracefully(mut stream: TcpStream, linger: Duration) {
    let _ = stream.shutdown().await;
    discard_until_eof(&mut stream, linger).await;
}

async fn discard_until_eof(stream: &mut TcpStream, linger: Duration) {
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(linger, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// `certline_requests_total{command, code}`; `command="none"` for lines that did not parse.
fn count_request(command: &'static str, code: u16) {
    // A static label for every code certline sends: no String per request.
    let code: &'static str = match ErrorCode::from_u16(code) {
        Some(code) => code.as_str(),
        None if code == 200 => "200",
        None => "other",
    };
    metrics::counter!("certline_requests_total", "command" => command, "code" => code).increment(1);
}
