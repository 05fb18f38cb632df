//! The TCP face: accept connections within limits ([`listener`]), serve each one
//! ([`connection`]), and shut down gracefully.

pub mod activation;
pub mod connection;
pub mod limits;
pub mod listener;

pub use limits::Limits;

use crate::service::Service;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every connection task shares.
pub struct Shared {
    /// Replaced whole by a reload; each connection keeps the limits it was accepted under.
    pub limits: Arc<ArcSwap<Limits>>,
    pub service: Service,
    /// Cancelled when shutdown begins.
    pub shutdown: CancellationToken,
}

/// A bound, not yet serving line-protocol listener. [`crate::app`] builds it with the service
/// it answers with.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds `addr` with the configured accept backlog. Must be called inside a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        limits: Limits,
        service: Service,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let listener = bind(addr, limits.listen_backlog)?;
        Ok(Self::on(listener, limits, service, shutdown))
    }

    /// Serves on a listener bound elsewhere (socket activation: systemd bound it, with its
    /// own backlog). Must be called inside a tokio runtime.
    pub fn from_listener(
        listener: std::net::TcpListener,
        limits: Limits,
        service: Service,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        Ok(Self::on(listener, limits, service, shutdown))
    }

    fn on(
        listener: TcpListener,
        limits: Limits,
        service: Service,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            listener,
            shared: Arc::new(Shared {
                limits: Arc::new(ArcSwap::from_pointee(limits)),
                service,
                shutdown,
            }),
        }
    }

    /// Where a reload puts new limits (applied to connections accepted after it).
    pub fn limits(&self) -> Arc<ArcSwap<Limits>> {
        self.shared.limits.clone()
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until the shutdown token is cancelled, then waits for the tasks in `tracker`
    /// (open connections and whatever else the caller spawned there) to finish, up to
    /// `limits.shutdown_grace_ms`.
    pub async fn serve(self, tracker: &TaskTracker) {
        let shared = self.shared;
        tracker.spawn(prune_rate_limiters(shared.clone()));
        listener::accept_loop(self.listener, shared.clone(), tracker).await;
        tracker.close();
        let grace = shared.limits.load().shutdown_grace();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("connections still open after the shutdown grace period; closing them");
        }
    }
}

/// Binds the line-protocol listener with an explicit accept backlog. A burst of connections
/// (hosts booting together, a flood) beyond the backlog is not refused by the kernel: the
/// client's handshake completes, the server side is dropped, and the client waits for a reply
/// that never comes. A deep backlog lets the accept loop catch up and answer each one.
fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

async fn prune_rate_limiters(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => shared.service.limiters().prune(),
            _ = shared.shutdown.cancelled() => return,
        }
    }
}
