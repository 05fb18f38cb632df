//! The TCP face: accept connections within limits ([`listener`]), serve each one
//! ([`connection`]), and shut down gracefully.

pub mod connection;
pub mod listener;

use crate::acme::{AcmeApi, AcmeWorker};
use crate::admin::{AdminServer, AdminState};
use crate::bridge::{SectigoClient, Worker};
use crate::config::Config;
use crate::confirm::{Confirmations, Mailer};
use crate::service::{AcmeHandOut, Service};
use crate::store::{Store, StoreError, Timing};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The server could not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("listening on {addr}: {source} (is another process using the port?)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the [sectigo] section: {0}")]
    Sectigo(String),
    #[error("the [admin] section: {0}")]
    Admin(String),
    #[error("the [smtp] section: {0}")]
    Smtp(String),
    #[error(
        "admin listener on {addr}: {source} (is another process using the port? change admin.listen)"
    )]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What every connection task shares.
pub struct Shared {
    pub config: Config,
    pub service: Service,
    /// Cancelled when shutdown begins.
    pub shutdown: CancellationToken,
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    worker: Option<Arc<Worker>>,
    acme_worker: Option<Arc<AcmeWorker>>,
    admin: Option<AdminServer>,
}

impl Server {
    /// Opens the store and binds the listener. Must be called inside a tokio runtime.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let store = Store::open(
            &config.data_dir,
            config.durability.mode,
            Timing {
                relaxed_flush: Duration::from_millis(config.durability.relaxed_flush_ms),
                checkpoint: Duration::from_millis(config.durability.checkpoint_ms),
            },
        )?;
        let listener = bind(config.listen, config.limits.listen_backlog).map_err(|source| {
            StartError::Bind {
                addr: config.listen,
                source,
            }
        })?;
        let store = Arc::new(store);
        let mut acme_worker = None;
        let worker = match &config.sectigo {
            Some(sectigo) => {
                let options = sectigo
                    .client_options()
                    .map_err(|e| StartError::Sectigo(e.to_string()))?;
                let client =
                    SectigoClient::new(options).map_err(|e| StartError::Sectigo(e.to_string()))?;
                store.enable_bridge();
                tracing::info!(base_url = %sectigo.base_url, "Sectigo bridge on");
                acme_worker = AcmeWorker::new(store.clone(), AcmeApi::new(client.clone()), sectigo)
                    .map(Arc::new);
                if acme_worker.is_some() {
                    store.enable_acme();
                    tracing::info!("Sectigo ACME accounts on");
                }
                Some(Arc::new(Worker::new(store.clone(), client, sectigo)))
            }
            None => {
                tracing::info!("no [sectigo] section: the Sectigo bridge is off");
                None
            }
        };
        let shutdown = CancellationToken::new();
        let (admin, confirmations) = match &config.admin {
            Some(admin_config) => {
                let token = admin_config
                    .token()
                    .map_err(|e| StartError::Admin(e.to_string()))?;
                let mailer = match &config.smtp {
                    Some(smtp) => {
                        Some(Mailer::new(smtp).map_err(|e| StartError::Smtp(e.to_string()))?)
                    }
                    None => {
                        tracing::info!("no [smtp] section: claim confirmation links are logged");
                        None
                    }
                };
                let dcv_window = config
                    .sectigo
                    .as_ref()
                    .map_or(30, |s| s.dcv_expiry_window_days);
                let state = AdminState::new(
                    store.clone(),
                    worker.as_ref().map(|w| w.handle()),
                    &token,
                    crate::admin::metrics::install(),
                    dcv_window,
                    shutdown.clone(),
                );
                let admin = AdminServer::bind(admin_config.listen, state)
                    .await
                    .map_err(|source| StartError::AdminBind {
                        addr: admin_config.listen,
                        source,
                    })?;
                let base = admin_config.public_url(admin.local_addr());
                let confirmations = Confirmations::new(
                    store.clone(),
                    base,
                    config.claims.link_validity_secs,
                    mailer,
                );
                (Some(admin), Some(Arc::new(confirmations)))
            }
            None => (None, None),
        };
        let mut service = Service::new(store, &config.rate_limit)
            .with_claims(config.claims.caps(), confirmations);
        if let Some(worker) = &worker {
            service = service.with_bridge(worker.handle());
        }
        if let Some(sectigo) = &config.sectigo
            && let Some(acme) = sectigo.acme.as_ref().filter(|a| a.hand_out_eab)
        {
            service = service.with_acme_hand_out(AcmeHandOut {
                server: acme.acme_server.clone(),
                require_confirmed_key: sectigo.require_confirmed_key,
            });
        }
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                config,
                service,
                shutdown,
            }),
            worker,
            acme_worker,
            admin,
        })
    }

    /// The admin listener's address, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The store, shared with the running server.
    pub fn store(&self) -> Arc<Store> {
        self.shared.service.store().clone()
    }

    /// A token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then lets open connections finish their
    /// current request (up to `limits.shutdown_grace_ms`) and flushes the store.
    pub async fn run(self) -> Result<(), StoreError> {
        let tracker = TaskTracker::new();
        let shared = self.shared.clone();
        tracker.spawn(prune_rate_limiters(shared.clone()));
        if let Some(worker) = self.worker {
            tracker.spawn(worker.run(shared.shutdown.clone()));
        }
        if let Some(worker) = self.acme_worker {
            tracker.spawn(worker.run(shared.shutdown.clone()));
        }
        if let Some(admin) = self.admin {
            tracker.spawn(admin.run(shared.shutdown.clone()));
        }
        listener::accept_loop(self.listener, shared.clone(), &tracker).await;
        tracker.close();
        let grace = Duration::from_millis(shared.config.limits.shutdown_grace_ms);
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("connections still open after the shutdown grace period; closing them");
        }
        let store = shared.service.store();
        store.close().await?;
        let stats = store.group_commit().stats();
        tracing::info!(
            acks = stats.commits.load(std::sync::atomic::Ordering::Relaxed),
            log_syncs = stats.flushes.load(std::sync::atomic::Ordering::Relaxed),
            sync_micros = stats
                .flush_micros
                .load(std::sync::atomic::Ordering::Relaxed),
            checkpoints = stats.checkpoints.load(std::sync::atomic::Ordering::Relaxed),
            "store closed; stopped"
        );
        Ok(())
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
