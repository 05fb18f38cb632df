//! The configuration: a TOML file (`--config FILE`), every key optional, with defaults that
//! run a safe server. `certline serve` with no file uses [`Config::default`].
//!
//! Every limit the wire protocol mentions is here (protocol.md §9).
//!
//! Each section's type lives with the layer that uses it (`[limits]` in [`crate::server`],
//! `[rate_limit]` in [`crate::service`], `[sectigo]` in [`crate::bridge`], `[admin]` in
//! [`crate::admin`], `[smtp]` in [`crate::confirm`]); this module, part of the wiring, only
//! assembles the file and validates each section ([`Config::validate`]). Combinations of
//! sections that can never work are found by
//! [`requirements::unmet_requirements`](super::requirements::unmet_requirements). What every
//! section shares, the error type and secret loading, is in [`crate::config`], a leaf that
//! imports nothing else from the crate, so no layer depends on the whole file.

use crate::admin::AdminConfig;
use crate::bridge::SectigoConfig;
use crate::config::ConfigError;
use crate::confirm::SmtpConfig;
use crate::server::Limits;
use crate::service::RateLimits;
use crate::store::{ClaimCaps, DurabilityMode, StoreConfig, Timing};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Which store backend (`[store]`): embedded sled by default, or PostgreSQL.
    pub store: StoreConfig,
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

impl Durability {
    /// The store's timers.
    pub fn timing(&self) -> Timing {
        Timing {
            relaxed_flush: Duration::from_millis(self.relaxed_flush_ms),
            checkpoint: Duration::from_millis(self.checkpoint_ms),
        }
    }
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
            store: StoreConfig::default(),
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

impl Config {
    /// Reads and validates a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, Path::new("<text>"))
    }

    fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects settings that would make the server misbehave, saying which key to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let invalid = |field, problem: &str| Err(ConfigError::invalid(field, problem));
        if !(16..=65536).contains(&l.max_line_bytes) {
            return invalid("limits.max_line_bytes", "must be between 16 and 65536");
        }
        if l.quiet_period_ms == 0 {
            return invalid("limits.quiet_period_ms", "must be at least 1");
        }
        if l.idle_timeout_secs == 0 {
            return invalid("limits.idle_timeout_secs", "must be at least 1");
        }
        if l.max_connections == 0 || l.max_connections_per_ip == 0 {
            return invalid(
                "limits.max_connections",
                "limits.max_connections and max_connections_per_ip must be at least 1",
            );
        }
        if self.durability.relaxed_flush_ms == 0 || self.durability.checkpoint_ms == 0 {
            return invalid(
                "durability.relaxed_flush_ms",
                "durability.relaxed_flush_ms and checkpoint_ms must be at least 1",
            );
        }
        self.store.validate()?;
        if let Some(sectigo) = &self.sectigo {
            sectigo.validate()?;
        }
        let c = &self.claims;
        if c.max_unconfirmed_keys_per_email == 0 || c.max_new_emails_per_address_per_day == 0 {
            return invalid(
                "claims.max_unconfirmed_keys_per_email",
                "claims.max_unconfirmed_keys_per_email and max_new_emails_per_address_per_day must be at least 1",
            );
        }
        if c.link_validity_secs == 0 {
            return invalid(
                "claims.link_validity_secs",
                "must be at least 1 (default: 604800, 7 days)",
            );
        }
        if let Some(admin) = &self.admin {
            admin.validate()?;
        }
        if let Some(smtp) = &self.smtp {
            smtp.validate()?;
        }
        Ok(())
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
