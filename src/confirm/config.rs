//! The `[smtp]` section: how claim confirmation e-mails leave certline.
//!
//! ```toml
//! [smtp]
//! host = "smtp.example.org"
//! tls = "starttls"                  # none | starttls | tls
//! port = 587                        # default: 25 (none), 587 (starttls), 465 (tls)
//! username = "certline"
//! password_env = "SMTP_PASSWORD"    # or password_file
//! from = "certline <certline@example.org>"
//! ```

use crate::config::error::ConfigError;
use crate::config::secret::{Secret, load_secret};
use serde::Deserialize;
use std::path::PathBuf;

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text: only for a relay on the same host or a test sink.
    None,
    /// Plain connection upgraded with STARTTLS; refused if the server does not offer it.
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
}

/// The `[smtp]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// The relay's host name (checked against its certificate with TLS).
    pub host: String,
    /// Default by `tls`: 25, 587 or 465.
    pub port: Option<u16>,
    #[serde(default = "default_tls")]
    pub tls: SmtpTls,
    /// Log in with this user (then a password source is required).
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// The sender, `name <address>` or `address`.
    pub from: String,
    /// Gives up on one message after this long.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_tls() -> SmtpTls {
    SmtpTls::Starttls
}

fn default_timeout_secs() -> u64 {
    30
}

impl SmtpConfig {
    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        })
    }

    /// Checks the section without reading the secret.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, problem: &str| ConfigError::Invalid {
            field,
            problem: problem.into(),
        };
        if self.host.trim().is_empty() {
            return Err(invalid("smtp.host", "names no host"));
        }
        if self.from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(invalid(
                "smtp.from",
                "is not an address; use e.g. \"certline <certline@example.org>\"",
            ));
        }
        if self.timeout_secs == 0 {
            return Err(invalid("smtp.timeout_secs", "must be at least 1"));
        }
        let has_password = self.password_env.is_some() || self.password_file.is_some();
        match (&self.username, has_password) {
            (Some(_), false) => Err(ConfigError::Secret {
                field: "smtp.password_env",
                problem: "smtp.username is set: set smtp.password_env (or smtp.password_file) too"
                    .into(),
            }),
            (None, true) => Err(invalid(
                "smtp.username",
                "a password source is set but no username; set smtp.username",
            )),
            _ if self.password_env.is_some() && self.password_file.is_some() => {
                Err(ConfigError::Secret {
                    field: "smtp.password_env",
                    problem: "set either smtp.password_env or smtp.password_file, not both".into(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Loads the password, if the relay needs a login.
    pub fn password(&self) -> Result<Option<Secret>, ConfigError> {
        if self.username.is_none() {
            return Ok(None);
        }
        let field = if self.password_file.is_some() {
            "smtp.password_file"
        } else {
            "smtp.password_env"
        };
        load_secret(
            field,
            self.password_env.as_deref(),
            self.password_file.as_deref(),
        )
        .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let c: SmtpConfig = toml::from_str("host = \"m\"\nfrom = \"c@example.org\"").unwrap();
        assert_eq!(c.tls, SmtpTls::Starttls);
        assert_eq!(c.port(), 587);
        assert!(c.validate().is_ok());
        let c: SmtpConfig =
            toml::from_str("host = \"m\"\nfrom = \"not an address\"\ntls = \"none\"").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("smtp.from"));
        let c: SmtpConfig =
            toml::from_str("host = \"m\"\nfrom = \"c@example.org\"\nusername = \"u\"").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("password_env")
        );
        assert!(
            toml::from_str::<SmtpConfig>("host = \"m\"\nfrom = \"c@e.org\"\ntls = \"ssl\"")
                .is_err()
        );
    }
}
