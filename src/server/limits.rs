//! The line-protocol listener's bounds: line length, timeouts, connection caps, shutdown
//! grace (protocol.md §9). The `[limits]` section of the configuration deserialises into
//! this type; the server receives it as a value.

use serde::Deserialize;
use std::time::Duration;

/// Bounds on connections and requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Longest request line, in bytes, not counting the LF (413 above).
    pub max_line_bytes: usize,
    /// Silence that ends a request sent without a newline.
    pub quiet_period_ms: u64,
    /// A connection with no byte for this long is closed.
    pub idle_timeout_secs: u64,
    /// After a 413 (or a 503 at the connection cap), input is discarded this long before the
    /// close, so the client reads the reply instead of a reset.
    pub linger_ms: u64,
    /// Open connections in total (503 above).
    pub max_connections: usize,
    /// Open connections from one source address (503 above).
    pub max_connections_per_ip: usize,
    /// At shutdown, how long open connections may take to finish their current request.
    pub shutdown_grace_ms: u64,
    /// The listening socket's accept backlog (the kernel caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line_bytes: 1024,
            quiet_period_ms: 100,
            idle_timeout_secs: 60,
            linger_ms: 1000,
            max_connections: 10_000,
            max_connections_per_ip: 1024,
            shutdown_grace_ms: 2000,
            listen_backlog: 4096,
        }
    }
}

impl Limits {
    /// Silence that ends a request sent without a newline.
    pub fn quiet_period(&self) -> Duration {
        Duration::from_millis(self.quiet_period_ms)
    }

    /// Silence that closes a connection.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// How long input is discarded after a 413 or 503 before the close.
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }

    /// How long open connections may take to finish at shutdown.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}
