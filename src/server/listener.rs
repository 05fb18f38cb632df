//! The accept loop: enforces the total and per-address connection caps, answering the
//! connection that is one too many with `status error 503 too many connections` rather than
//! leaving it hanging. The caps are read at each accept, so a reload applies them from the
//! next connection on (open connections over a lowered cap are not closed).

use super::Shared;
use super::connection;
use crate::protocol::{ErrorCode, Reply};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

/// Open connections per source address.
#[derive(Default)]
struct PerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// Holds one connection's place in the per-address count; gives it back on drop.
struct PerIpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn try_acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PerIpSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PerIpSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Open connections in total; a slot gives its place back on drop.
#[derive(Default)]
struct Total {
    open: AtomicUsize,
}

struct TotalSlot(Arc<Total>);

impl Total {
    /// Only the accept loop acquires, so the check and the increment cannot race another
    /// acquire; releases only lower the count.
    fn try_acquire(self: &Arc<Self>, max: usize) -> Option<TotalSlot> {
        if self.open.load(Ordering::Acquire) >= max {
            return None;
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        Some(TotalSlot(self.clone()))
    }
}

impl Drop for TotalSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts until shutdown.
pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tracker: &TaskTracker) {
    let total = Arc::new(Total::default());
    // Refusals (the 503 path) are bounded too, so a flood cannot pile up lingering sockets.
    let refusals = Arc::new(Semaphore::new(256));
    let per_ip = Arc::new(PerIp::default());
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "accepting connections");
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shared.shutdown.cancelled() => {
                tracing::info!("shutdown: no longer accepting connections");
                return;
            }
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning; existing clients go on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let limits = shared.limits.load_full();
        let slot = total
            .try_acquire(limits.max_connections)
            .zip(per_ip.try_acquire(peer.ip(), limits.max_connections_per_ip));
        match slot {
            Some((permit, ip_slot)) => {
                let shared = shared.clone();
                metrics::gauge!("certline_open_connections").increment(1.0);
                tracker.spawn(async move {
                    connection::serve(stream, peer, shared).await;
                    drop((permit, ip_slot));
                    metrics::gauge!("certline_open_connections").decrement(1.0);
                });
            }
            None => {
                tracing::debug!(%peer, "connection refused: over the connection cap");
                if let Ok(permit) = refusals.clone().try_acquire_owned() {
                    let linger = limits.linger().min(Duration::from_millis(250));
                    tracker.spawn(async move {
                        refuse(stream, peer, linger).await;
                        drop(permit);
                    });
                } else {
                    // Too many refusals lingering already: still say why, in the socket's
                    // send buffer (a fresh socket always has room for one line), but do not
                    // wait around for the client to read it.
                    // (A plain non-blocking write: tokio's `try_write` reports WouldBlock until
                    // the reactor has seen the socket writable, which a new socket has not.)
                    let reply = Reply::error(ErrorCode::Unavailable, "too many connections");
                    if let Ok(mut std_stream) = stream.into_std() {
                        let _ = std::io::Write::write(&mut std_stream, &reply.to_bytes());
                    }
                }
            }
        }
    }
}

async fn refuse(mut stream: TcpStream, peer: SocketAddr, linger: Duration) {
    let reply = Reply::error(ErrorCode::Unavailable, "too many connections").to_bytes();
    if stream.write_all(&reply).await.is_ok() {
        connection::close_gracefully(stream, linger).await;
    } else {
        tracing::debug!(%peer, "could not send the 503");
    }
}
