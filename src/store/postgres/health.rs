//! Whether the database takes writes, as far as this instance last saw (`/readyz`), and the
//! one failure only a restart mends (a schema newer than this binary).
//!
//! There is no local log to fail: a write either committed or returned an error. What can
//! go wrong is the server: unreachable, restarting, out of disk, or a read-only standby after
//! a failover. A statement failing that way marks the store unwritable with a reason that says
//! what to do; the next committed write, or the background probe (once a second while
//! unwritable), marks it writable again.

use crate::store::{FlushError, StoreError};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub(super) struct Health {
    writable: AtomicBool,
    reason: Mutex<Option<String>>,
    /// Cancelled when the database's schema is newer than this binary (another instance was
    /// upgraded): this instance must stop, a restart with the new binary mends it.
    pub(super) fatal: CancellationToken,
    /// Wakes the probe at once after a failure.
    pub(super) kick: Notify,
    /// `user@host:port/db`, for messages.
    server: String,
}

impl Health {
    pub(super) fn new(server: String) -> Self {
        Self {
            writable: AtomicBool::new(true),
            reason: Mutex::new(None),
            fatal: CancellationToken::new(),
            kick: Notify::new(),
            server,
        }
    }

    pub(super) fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }

    /// `Ok` while the last word was that writes work; else why not and what to do.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        if self.is_writable() {
            return Ok(());
        }
        let reason = self
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| format!("PostgreSQL at {} does not take writes", self.server));
        Err(StoreError::Flush(FlushError(reason.into())))
    }

    /// Looks at a failed operation: if the server is unreachable or refuses writes, the
    /// store is unwritable until the probe or a write says otherwise.
    pub(super) fn observe(&self, error: &StoreError) {
        if let Some(reason) = unavailable(error, &self.server) {
            self.down(reason);
        }
    }

    pub(super) fn down(&self, reason: String) {
        let was = self.writable.swap(false, Ordering::AcqRel);
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if was {
            tracing::error!(reason = %reason, "the store does not take writes");
        }
        *slot = Some(reason);
        drop(slot);
        self.kick.notify_one();
    }

    /// A write committed (or the probe proved the server takes writes).
    pub(super) fn up(&self) {
        if !self.writable.swap(true, Ordering::AcqRel) {
            tracing::info!(server = %self.server, "the store takes writes again");
        }
    }

    pub(super) fn server(&self) -> &str {
        &self.server
    }
}

/// The pool gave no connection: the server is unreachable (or every connection is busy
/// for longer than a statement may take). Marks the store unwritable; returns the error.
pub(super) fn pool_unavailable(health: &Health, error: deadpool_postgres::PoolError) -> StoreError {
    match error {
        deadpool_postgres::PoolError::Backend(e) => {
            let error = StoreError::Postgres(e);
            health.observe(&error);
            error
        }
        other => {
            let text = other.to_string();
            health.down(format!(
                "PostgreSQL at {} is unreachable ({text}); certline retries every second: \
                 check that the server runs and that this host may connect (or raise \
                 [store.postgres] pool_size if every connection is busy)",
                health.server
            ));
            StoreError::Pool(text)
        }
    }
}

/// Why `error` means the server cannot take writes now (rather than a problem with one
/// statement), with what to do; `None` for other errors.
pub(super) fn unavailable(error: &StoreError, server: &str) -> Option<String> {
    match error {
        // Pool errors (no connection within the wait) are reported where they happen
        // (`pool_unavailable`); other `Pool` texts are not about the server's health.
        StoreError::Postgres(e) => {
            let io = std::error::Error::source(e)
                .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
            if e.is_closed() || io {
                return Some(format!(
                    "the connection to PostgreSQL at {server} failed ({e}); certline retries \
                     every second: check that the server runs and that this host may connect"
                ));
            }
            let code = e.code()?.code();
            if code == "25006" {
                Some(format!(
                    "PostgreSQL at {server} is read-only (a standby, or default_transaction_read_only); \
                     point [store.postgres] url at the primary"
                ))
            } else if code.starts_with("08") || code.starts_with("57P") {
                Some(format!(
                    "PostgreSQL at {server} closed or refused the connection ({e}); certline retries \
                     every second: check the server"
                ))
            } else if code == "53100" {
                Some(format!(
                    "PostgreSQL at {server} is out of disk space; free space on the database server"
                ))
            } else if code.starts_with("53") {
                Some(format!(
                    "PostgreSQL at {server} is out of resources ({e}); check max_connections and \
                     the server's memory"
                ))
            } else {
                None
            }
        }
        _ => None,
    }
}
