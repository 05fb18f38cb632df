//! `[store.postgres]`: where the database is and how certline uses it.
//!
//! The connection string carries the password, so it is never written in the TOML itself: it
//! comes from an environment variable (`url_env`) or a file (`url_file`), like every other
//! secret of certline (`config::secret`), and messages describe the server without it
//! ([`describe`]).

use super::tls::{self, TlsSettings};
use crate::config::secret::{Secret, check_secret_source, load_secret};
use crate::store::StoreError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The PostgreSQL backend's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// An environment variable holding the connection string
    /// (`postgres://user:password@host:5432/dbname`).
    #[serde(default)]
    pub url_env: Option<String>,
    /// A file holding the connection string (one line).
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// Connections this instance keeps open at most.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Any statement running longer is cancelled by the server (`statement_timeout`).
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// How long a bridge domain or ACME key taken by this instance stays its own before
    /// another instance may take it over (the work of an instance that died waits this long).
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// The schema certline's tables live in (created if missing).
    #[serde(default = "default_schema")]
    pub schema: String,
    /// This instance's name, the owner written on the leases it takes. Must differ between
    /// instances sharing a database; the default (host name and process id) does.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// How often this instance writes its heartbeat (the `instances` table). An instance
    /// counts as live for three heartbeats, and the Sectigo request budget is divided among
    /// the live instances, so a dead instance's share returns to the others within about
    /// three heartbeats.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// The CA certificate(s), PEM, that the server's TLS certificate must lead to with
    /// `sslmode=verify-ca` or `verify-full` in the URL (and `require`, which then checks the
    /// chain, as libpq does). Unset: the system roots. Same as `sslrootcert` in the URL (set
    /// one of the two).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_pool_size() -> usize {
    16
}
fn default_statement_timeout_ms() -> u64 {
    5000
}
fn default_lease_secs() -> u64 {
    300
}
fn default_heartbeat_ms() -> u64 {
    5000
}
fn default_schema() -> String {
    "public".to_owned()
}

/// The host name and the process id: unique among running instances.
pub fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "certline".to_owned());
    format!("{host}:{}", std::process::id())
}

impl PostgresConfig {
    /// Settings with the defaults, the connection string read from `url_file`.
    pub fn from_url_file(path: impl Into<PathBuf>) -> Self {
        Self {
            url_env: None,
            url_file: Some(path.into()),
            pool_size: default_pool_size(),
            statement_timeout_ms: default_statement_timeout_ms(),
            lease_secs: default_lease_secs(),
            schema: default_schema(),
            instance: default_instance(),
            heartbeat_ms: default_heartbeat_ms(),
            ca_file: None,
        }
    }

    /// Checks what can be checked without the secret (for `check-config`).
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        use crate::config::ConfigError::Invalid;
        check_secret_source(
            "store.postgres.url",
            self.url_env.as_deref(),
            self.url_file.as_deref(),
        )?;
        if self.pool_size == 0 {
            return Err(Invalid {
                field: "store.postgres.pool_size",
                problem: "must be at least 1".into(),
            });
        }
        if self.statement_timeout_ms == 0 {
            return Err(Invalid {
                field: "store.postgres.statement_timeout_ms",
                problem: "must be at least 1 (0 would let a statement hang forever)".into(),
            });
        }
        if self.lease_secs == 0 {
            return Err(Invalid {
                field: "store.postgres.lease_secs",
                problem: "must be at least 1".into(),
            });
        }
        if self.heartbeat_ms < 100 {
            return Err(Invalid {
                field: "store.postgres.heartbeat_ms",
                problem: "must be at least 100 (every heartbeat is a write)".into(),
            });
        }
        if !is_plain_identifier(&self.schema) {
            return Err(Invalid {
                field: "store.postgres.schema",
                problem: format!(
                    "{:?} is not a plain schema name: use lower-case letters, digits and _, \
                     starting with a letter or _, at most 40 characters",
                    self.schema
                ),
            });
        }
        if self.instance.trim().is_empty() {
            return Err(Invalid {
                field: "store.postgres.instance",
                problem: "must name this instance (or be left out for host name and pid)".into(),
            });
        }
        Ok(())
    }

    /// The connection settings: the URL from its source, with this configuration's statement
    /// timeout and schema added, and its TLS settings (`sslmode`, `sslrootcert` or
    /// `ca_file`; see `tls.rs`). Errors never contain the URL.
    pub(super) fn connection(&self) -> Result<(tokio_postgres::Config, TlsSettings), StoreError> {
        self.validate()
            .map_err(|e| StoreError::Pool(format!("[store.postgres] {e}")))?;
        let url: Secret = load_secret(
            "store.postgres.url",
            self.url_env.as_deref(),
            self.url_file.as_deref(),
        )
        .map_err(|e| StoreError::Pool(e.to_string()))?;
        // tokio-postgres knows neither verify-ca/verify-full nor sslrootcert: taken out here.
        let (rest, sslmode, sslrootcert) = tls::take_ssl_params(url.expose())?;
        let rest = Secret::new(rest);
        let tls = tls::settings(
            sslmode.as_deref(),
            sslrootcert.as_deref(),
            self.ca_file.as_deref(),
        )?;
        let mut config = tokio_postgres::Config::from_str(rest.expose()).map_err(|_| {
            StoreError::Pool(
                "store.postgres.url: the connection string does not parse; write it as \
                 postgres://USER:PASSWORD@HOST:PORT/DATABASE"
                    .into(),
            )
        })?;
        let ours = format!(
            "-c statement_timeout={} -c search_path={}",
            self.statement_timeout_ms, self.schema
        );
        let options = match config.get_options() {
            Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {ours}"),
            _ => ours,
        };
        config.options(options);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("certline");
        }
        config.ssl_mode(tls.mode.for_tokio_postgres());
        Ok((config, tls))
    }

    /// How often this instance writes its heartbeat.
    pub(super) fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// How long a statement may take, as the server enforces it.
    pub(super) fn statement_timeout(&self) -> Duration {
        Duration::from_millis(self.statement_timeout_ms)
    }
}

/// `[a-z_][a-z0-9_]*`, at most 40 bytes: safe to put in SQL and in a channel name unquoted.
pub(super) fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 40
}

/// The server a configuration points at, for messages: `user@host:port/dbname`, never the
/// password.
pub fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            let port = config
                .get_ports()
                .get(i)
                .or(config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{name}:{port}")
        })
        .collect();
    format!(
        "{}@{}/{}",
        config.get_user().unwrap_or("?"),
        hosts.join(","),
        config.get_dbname().unwrap_or("?")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_comes_from_its_file_and_is_never_in_a_description() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("url");
        std::fs::write(
            &path,
            "postgres://certline:s3cret@db.example:6543/certline\n",
        )
        .unwrap();
        let mut config = PostgresConfig::from_url_file(&path);
        config.schema = "t_x".into();
        let (pg, tls) = config.connection().unwrap();
        assert_eq!(tls.mode, super::tls::SslMode::Prefer);
        let text = describe(&pg);
        assert_eq!(text, "certline@db.example:6543/certline");
        assert!(!format!("{text} {config:?}").contains("s3cret"));
        assert!(pg.get_options().unwrap().contains("search_path=t_x"));
    }

    #[test]
    fn exactly_one_source_and_a_plain_schema() {
        let mut config = PostgresConfig::from_url_file("/nonexistent");
        config.url_env = Some("X".into());
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("not both")
        );
        config.url_env = None;
        config.schema = "Robert'); DROP".into();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("schema")
        );
        config.schema = "t_ok_1".into();
        config.validate().unwrap();
        let unreadable = config.connection().unwrap_err().to_string();
        assert!(unreadable.contains("cannot read"), "{unreadable}");
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("url");
        std::fs::write(&path, "postgres://u:pw-xyz@host:notaport/db").unwrap();
        let err = PostgresConfig::from_url_file(&path)
            .connection()
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not parse"), "{err}");
        assert!(!err.contains("pw-xyz"));
    }
}
