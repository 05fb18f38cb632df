//! A TCP proxy between certline and a server it depends on (PostgreSQL), for tests of what
//! certline does when that server goes away: the shared server itself must keep running for
//! every other test, so the test cuts the path to it instead.
//!
//! [`TcpProxy::cut`] closes every connection through the proxy and refuses new ones (accepted
//! and closed at once, as a server that went away or a firewall's reset looks to a client);
//! [`TcpProxy::restore`] lets new connections through again.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A proxy on a loopback port, forwarding to one upstream address; stops when dropped.
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// `None` while cut; else the token that ends the connections opened since.
    open: Arc<Mutex<Option<CancellationToken>>>,
    stop: CancellationToken,
}

impl TcpProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(Mutex::new(Some(CancellationToken::new())));
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, upstream, open.clone(), stop.clone()));
        Self { addr, open, stop }
    }

    /// Closes every connection through the proxy and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        if let Some(connections) = self.open.lock().unwrap().take() {
            connections.cancel();
        }
    }

    /// Lets new connections through again.
    pub fn restore(&self) {
        self.open
            .lock()
            .unwrap()
            .get_or_insert_with(CancellationToken::new);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.stop.cancel();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    open: Arc<Mutex<Option<CancellationToken>>>,
    stop: CancellationToken,
) {
    loop {
        let client = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => continue,
            },
            _ = stop.cancelled() => return,
        };
        // Cut: the connection is dropped (closed) here, before a byte went through.
        let Some(cut) = open.lock().unwrap().clone() else {
            continue;
        };
        tokio::spawn(forward(client, upstream, cut));
    }
}

/// Copies both ways until either side closes or the proxy is cut.
async fn forward(mut client: TcpStream, upstream: SocketAddr, cut: CancellationToken) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.cancelled() => {}
    }
}
