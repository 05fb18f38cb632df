//! The configuration: a TOML file (`--config FILE`), every key optional, with defaults that
//! run a safe server. `certline serve` with no file uses [`Config::default`].
//!
//! Every limit the wire protocol mentions is here (protocol.md §9). Each section is checked
//! on its own by [`Config::validate`]; combinations of sections that can never work are
//! found by [`requirements::unmet_requirements`].

pub mod requirements;

use crate::admin::AdminConfig;
use crate::bridge::SectigoConfig;
use crate::confirm::SmtpConfig;
use crate::store::ClaimCaps;
use crate::store::DurabilityMode;
use serde::Deserialize;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the line protocol listens (`--listen` overrides).
    pub listen: SocketAddr,
    /// The database directory (`--data` overrides).
    pub data_dir: PathBuf,
    pub limits: Limits,
    pub rate_limit: RateLimits,
    pub durability: Durability,
    pub log: Log,
    /// Threads serving connections; 0 means one per CPU core. The store's disk waits run on
    /// their own threads either way.
    pub worker_threads: usize,
    /// The Sectigo bridge; absent means off (certline only stores registrations).
    pub sectigo: Option<SectigoConfig>,
    /// The operator's HTTP face (health, metrics, inventory, claim links); absent means off.
    pub admin: Option<AdminConfig>,
    /// How claim confirmation e-mails are sent; absent means the links are only logged.
    pub smtp: Option<SmtpConfig>,
    pub claims: Claims,
}

/// Claim confirmation and KeyChest's abuse caps on claims.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Claims {
    /// Keys one e-mail address may hold unconfirmed (neither confirmed nor revoked); a claim
    /// over it gets `429 too many unconfirmed keys for this email`.
    pub max_unconfirmed_keys_per_email: u32,
    /// Addresses never seen before that one source address may claim per UTC day; over it:
    /// `429 too many new addresses from your address today`.
    pub max_new_emails_per_address_per_day: u32,
    /// How long the confirm and revoke links in a claim e-mail work.
    pub link_validity_secs: u64,
}

impl Default for Claims {
    fn default() -> Self {
        let caps = ClaimCaps::default();
        Self {
            max_unconfirmed_keys_per_email: caps.max_unconfirmed_keys_per_email,
            max_new_emails_per_address_per_day: caps.max_new_emails_per_address_per_day,
            link_validity_secs: 7 * 24 * 3600,
        }
    }
}

impl Claims {
    /// The caps the store enforces.
    pub fn caps(&self) -> ClaimCaps {
        ClaimCaps {
            max_unconfirmed_keys_per_email: self.max_unconfirmed_keys_per_email,
            max_new_emails_per_address_per_day: self.max_new_emails_per_address_per_day,
        }
    }
}

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

/// Per-source-address token buckets for the commands that create state out of nothing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    pub apikey_per_minute: NonZeroU32,
    pub apikey_burst: NonZeroU32,
    pub claim_per_minute: NonZeroU32,
    pub claim_burst: NonZeroU32,
}

/// How writes are acknowledged (protocol.md §8).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Durability {
    pub mode: DurabilityMode,
    /// In relaxed mode, how often the write-ahead log is written and synced.
    pub relaxed_flush_ms: u64,
    /// How often sled is checkpointed (flushed, and the log it covers deleted). Shorter
    /// means less log to replay at start-up; longer means fewer sled flushes.
    pub checkpoint_ms: u64,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `certline=debug`; `RUST_LOG` overrides it.
    pub filter: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 10023)),
            data_dir: PathBuf::from("./certline-data"),
            limits: Limits::default(),
            rate_limit: RateLimits::default(),
            durability: Durability::default(),
            log: Log::default(),
            sectigo: None,
            admin: None,
            smtp: None,
            claims: Claims::default(),
            worker_threads: 0,
        }
    }
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

impl Default for RateLimits {
    fn default() -> Self {
        let n = |v| NonZeroU32::new(v).expect("non-zero default");
        Self {
            apikey_per_minute: n(30),
            apikey_burst: n(10),
            claim_per_minute: n(30),
            claim_burst: n(10),
        }
    }
}

impl Default for Durability {
    fn default() -> Self {
        Self {
            mode: DurabilityMode::Durable,
            relaxed_flush_ms: 1000,
            checkpoint_ms: 30_000,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

/// The configuration file could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and validates a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: "<text>".into(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects settings that would make the server misbehave, saying which key to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if !(16..=65536).contains(&l.max_line_bytes) {
            return invalid("limits.max_line_bytes must be between 16 and 65536");
        }
        if l.quiet_period_ms == 0 {
            return invalid("limits.quiet_period_ms must be at least 1");
        }
        if l.idle_timeout_secs == 0 {
            return invalid("limits.idle_timeout_secs must be at least 1");
        }
        if l.max_connections == 0 || l.max_connections_per_ip == 0 {
            return invalid("limits.max_connections and max_connections_per_ip must be at least 1");
        }
        if self.durability.relaxed_flush_ms == 0 || self.durability.checkpoint_ms == 0 {
            return invalid("durability.relaxed_flush_ms and checkpoint_ms must be at least 1");
        }
        if let Some(sectigo) = &self.sectigo {
            sectigo
                .validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        let c = &self.claims;
        if c.max_unconfirmed_keys_per_email == 0 || c.max_new_emails_per_address_per_day == 0 {
            return invalid(
                "claims.max_unconfirmed_keys_per_email and max_new_emails_per_address_per_day must be at least 1",
            );
        }
        if c.link_validity_secs == 0 {
            return invalid(
                "claims.link_validity_secs must be at least 1 (default: 604800, 7 days)",
            );
        }
        if let Some(admin) = &self.admin {
            admin
                .validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        if let Some(smtp) = &self.smtp {
            smtp.validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        Ok(())
    }

    pub(crate) fn quiet_period(&self) -> Duration {
        Duration::from_millis(self.limits.quiet_period_ms)
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.idle_timeout_secs)
    }

    pub(crate) fn linger(&self) -> Duration {
        Duration::from_millis(self.limits.linger_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.listen.port(), 10023);
        assert_eq!(c.limits.max_line_bytes, 1024);
        assert_eq!(c.durability.mode, DurabilityMode::Durable);
    }

    #[test]
    fn sections_parse_and_typos_are_rejected() {
        let c = Config::from_toml(
            "[durability]\nmode = \"relaxed\"\nrelaxed_flush_ms = 50\n[limits]\nquiet_period_ms = 20\n",
        )
        .unwrap();
        assert_eq!(c.durability.mode, DurabilityMode::Relaxed);
        assert_eq!(c.limits.quiet_period_ms, 20);
        let err = Config::from_toml("[limits]\nmax_line_byte = 10\n").unwrap_err();
        assert!(err.to_string().contains("max_line_byte"), "{err}");
        let err = Config::from_toml("[limits]\nmax_line_bytes = 1\n").unwrap_err();
        assert!(err.to_string().contains("limits.max_line_bytes"), "{err}");
    }
}
