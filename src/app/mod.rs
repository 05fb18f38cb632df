//! The wiring: one place that turns a [`Config`] into running parts (the store, the Sectigo
//! bridge worker, the admin HTTP face with its mailer, the line-protocol server) and runs them
//! until shutdown. Every other module receives its own section or value from here and never
//! reads the whole configuration; nothing imports this module but `main`, the operator's
//! command-line client ([`crate::cli`], which reads the same file) and the tests.
//!
//! The whole file is assembled and validated in [`config`], the combinations that can never
//! work are refused by [`requirements`], and [`reload`] applies a re-read file to the running
//! parts. Only these wiring modules see every section, so they sit at the top of the module
//! graph while [`crate::config`] (the error and secret types every layer shares) is a leaf.

pub mod config;
pub mod reload;
pub mod requirements;

pub use config::Config;

use crate::acme::{AcmeApi, AcmeWorker};
use crate::admin::{AdminServer, AdminState};
use crate::bridge::{SectigoClient, SectigoError, Worker};
use crate::config::ConfigError;
use crate::confirm::{Confirmations, Mailer};
use crate::server::Server;
use crate::server::activation::{Activated, ActivationError};
use crate::service::{AcmeHandOut, Service};
use crate::store::{Store, StoreError};
use reload::{ConfigSource, Reloader};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Days before a DCV expires at which the admin face flags it, without a `[sectigo]` section.
const DEFAULT_DCV_EXPIRY_WINDOW_DAYS: u32 = 30;

/// certline could not start. Each variant says which part failed; the message says what to do.
/// No variant also carries its cause as an error `source`: the message already has it, and
/// `main` prints the whole chain.
#[derive(Debug, Error)]
pub enum StartError {
    /// The sections each validate, but together could never do what they ask
    /// ([`requirements`]); every such problem, with its ways out.
    #[error(transparent)]
    Refused(#[from] requirements::Refused),
    /// A section's values cannot be used (a secret that cannot be read, an unusable TLS
    /// setting); the message names the key.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened or its log replayed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Sectigo client could not be built from a valid `[sectigo]` section.
    #[error("the Sectigo client: {0}")]
    SectigoClient(SectigoError),
    /// The line-protocol port could not be bound.
    #[error("listening on {addr}: {error} (is another process using the port?)")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// The admin port could not be bound.
    #[error(
        "admin listener on {addr}: {error} (is another process using the port? change admin.listen)"
    )]
    AdminBind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// The sockets systemd passed do not fit the configuration.
    #[error(transparent)]
    Activation(#[from] ActivationError),
    /// systemd passed a socket that could not be used.
    #[error("using the {what} socket systemd passed: {error}")]
    ActivatedSocket {
        what: &'static str,
        error: std::io::Error,
    },
}

/// A started, not yet running certline: every port bound, every secret loaded.
pub struct App {
    server: Server,
    store: Arc<Store>,
    worker: Option<Arc<Worker>>,
    acme_worker: Option<Arc<AcmeWorker>>,
    admin: Option<AdminServer>,
    confirmations: Option<Arc<Confirmations>>,
    shutdown: CancellationToken,
    /// The configuration it started with, for [`App::reloader`].
    config: Config,
}

impl App {
    /// Refuses a configuration that could never do what it asks, then opens the store, loads
    /// the secrets and binds the listeners. Must be called inside a tokio runtime. Fails
    /// before serving anything, so a bad secret never half-starts.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        Self::start_activated(config, Activated::default()).await
    }

    /// Like [`App::start`], serving on the listeners systemd passed where it passed one
    /// (socket activation) and binding the others.
    pub async fn start_activated(config: Config, activated: Activated) -> Result<Self, StartError> {
        requirements::check(&config)?;
        let running = config.clone();
        let store = Arc::new(
            Store::open_configured(
                &config.store,
                &config.data_dir,
                config.durability.mode,
                config.durability.timing(),
            )
            .await?,
        );
        tracing::info!(backend = store.backend_name(), "store open");
        let shutdown = CancellationToken::new();
        let mut acme_worker = None;
        let worker = match &config.sectigo {
            Some(sectigo) => {
                // The budget is the deployment's: this instance takes its share of it,
                // following how many instances share the store (1 on sled).
                let mut options = sectigo.client_options()?;
                options.live_instances = Some(store.live_instances());
                let client = SectigoClient::new(options).map_err(StartError::SectigoClient)?;
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
        let (admin, confirmations) = match &config.admin {
            Some(admin_config) => {
                let token = admin_config.token()?;
                let mailer = match &config.smtp {
                    Some(smtp) => Some(Mailer::new(smtp)?),
                    None => {
                        tracing::info!("no [smtp] section: claim confirmation links are logged");
                        None
                    }
                };
                let dcv_window = config
                    .sectigo
                    .as_ref()
                    .map_or(DEFAULT_DCV_EXPIRY_WINDOW_DAYS, |s| s.dcv_expiry_window_days);
                let state = AdminState::new(
                    store.clone(),
                    worker.as_ref().map(|w| w.handle()),
                    &token,
                    crate::admin::metrics::install(),
                    dcv_window,
                    shutdown.clone(),
                );
                let admin = match activated.admin {
                    Some(listener) => {
                        AdminServer::from_listener(listener, state).map_err(|error| {
                            StartError::ActivatedSocket {
                                what: "admin",
                                error,
                            }
                        })?
                    }
                    None => AdminServer::bind(admin_config.listen, state)
                        .await
                        .map_err(|error| StartError::AdminBind {
                            addr: admin_config.listen,
                            error,
                        })?,
                };
                let base = admin_config.public_url(admin.local_addr());
                store.enable_confirmation_mail();
                let confirmations = Confirmations::new(
                    store.clone(),
                    base,
                    config.claims.link_validity_secs,
                    mailer,
                );
                (Some(admin), Some(Arc::new(confirmations)))
            }
            None => {
                if activated.admin.is_some() {
                    tracing::warn!(
                        "systemd passed an admin socket but the configuration has no [admin] section: not serving it"
                    );
                }
                (None, None)
            }
        };
        let mut service = Service::new(store.clone(), &config.rate_limit)
            .with_claims(config.claims.caps(), confirmations.clone());
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
        let server =
            match activated.line {
                Some(listener) => {
                    Server::from_listener(listener, config.limits, service, shutdown.clone())
                        .map_err(|error| StartError::ActivatedSocket {
                            what: "line-protocol",
                            error,
                        })?
                }
                None => Server::bind(config.listen, config.limits, service, shutdown.clone())
                    .map_err(|error| StartError::Bind {
                        addr: config.listen,
                        error,
                    })?,
            };
        Ok(Self {
            server,
            store,
            worker,
            acme_worker,
            admin,
            confirmations,
            shutdown,
            config: running,
        })
    }

    /// The line-protocol address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The admin listener's address, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// The store, shared with the running parts.
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// What applies a changed configuration to this app once it runs (SIGHUP); `source` says
    /// where to read it again.
    pub fn reloader(&self, source: ConfigSource) -> Arc<Reloader> {
        Arc::new(Reloader::new(
            source,
            self.config.clone(),
            self.server.limits(),
            self.worker.clone(),
            self.acme_worker.clone(),
            self.admin.as_ref().map(AdminServer::state),
            self.store.live_instances(),
        ))
    }

    /// A token that stops everything when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs every part until the shutdown token is cancelled, lets open connections finish
    /// their current request (up to `limits.shutdown_grace_ms`), then closes the store. Also
    /// shuts down, and returns the store's error, when the store fails in a way only a
    /// restart mends (README, "Durability"): the process then exits non-zero for systemd to
    /// restart it.
    pub async fn run(self) -> Result<(), StoreError> {
        let tracker = TaskTracker::new();
        tracker.spawn(shut_down_if_the_store_fails(
            self.store.clone(),
            self.shutdown.clone(),
        ));
        if let Some(worker) = self.worker {
            tracker.spawn(worker.run(self.shutdown.clone()));
        }
        if let Some(worker) = self.acme_worker {
            tracker.spawn(worker.run(self.shutdown.clone()));
        }
        if let Some(admin) = self.admin {
            tracker.spawn(admin.run(self.shutdown.clone()));
        }
        if let Some(confirmations) = self.confirmations {
            tracker.spawn(confirmations.run(self.shutdown.clone()));
        }
        self.server.serve(&tracker).await;
        self.store.close().await?;
        match self.store.group_commit().map(|commits| commits.stats()) {
            Some(stats) => tracing::info!(
                acks = stats.commits.load(Ordering::Relaxed),
                log_syncs = stats.flushes.load(Ordering::Relaxed),
                sync_micros = stats.flush_micros.load(Ordering::Relaxed),
                checkpoints = stats.checkpoints.load(Ordering::Relaxed),
                "store closed; stopped"
            ),
            None => tracing::info!("store closed; stopped"),
        }
        Ok(())
    }
}

async fn shut_down_if_the_store_fails(store: Arc<Store>, shutdown: CancellationToken) {
    tokio::select! {
        _ = store.fatal().cancelled() => {
            tracing::error!("the store failed for good: shutting down so that a restart replays the write-ahead log");
            shutdown.cancel();
        }
        _ = shutdown.cancelled() => {}
    }
}
