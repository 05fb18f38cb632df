//! The `[admin]` section: where the operator's HTTP face listens and how it is protected.
//!
//! ```toml
//! [admin]
//! listen = "127.0.0.1:10080"
//! token_env = "CERTLINE_ADMIN_TOKEN"        # or token_file = "/run/secrets/certline-admin"
//! public_url = "https://certline.example.org:10080"
//! ```
//!
//! The bearer token is a secret like Sectigo's password: it is read from the environment or
//! a file, never written in the TOML, so the file can be committed and shared.

use crate::config::error::ConfigError;
use crate::config::secret::{Secret, load_secret};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use url::Url;

/// The shortest admin token accepted: anything shorter is guessable over a network.
pub const MIN_TOKEN_LEN: usize = 16;

/// The `[admin]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin HTTP listener binds. Loopback by default: put a reverse proxy with TLS
    /// in front of it before exposing it.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The environment variable holding the bearer token.
    pub token_env: Option<String>,
    /// A file holding the bearer token (trailing newline ignored).
    pub token_file: Option<PathBuf>,
    /// The base URL users' browsers reach the admin listener at, for the confirm and revoke
    /// links in claim e-mails. Default: `http://` + `listen`.
    pub public_url: Option<String>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 10080))
}

impl AdminConfig {
    /// Checks the section without reading the secret.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.token_env, &self.token_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Secret {
                    field: "admin.token_env",
                    problem: "set either admin.token_env or admin.token_file, not both".into(),
                });
            }
            (None, None) => {
                return Err(ConfigError::Secret {
                    field: "admin.token_env",
                    problem: "the admin API needs a bearer token: set admin.token_env to the name of an environment variable (or admin.token_file to a file) holding it".into(),
                });
            }
            _ => {}
        }
        if let Some(url) = &self.public_url {
            let parsed = Url::parse(url).map_err(|e| ConfigError::Invalid {
                field: "admin.public_url",
                problem: format!("is not a URL ({e}); use e.g. \"https://certline.example.org\""),
            })?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.cannot_be_a_base() {
                return Err(ConfigError::Invalid {
                    field: "admin.public_url",
                    problem: "must be an http or https URL".into(),
                });
            }
        }
        Ok(())
    }

    /// Loads the bearer token from the environment or the file.
    pub fn token(&self) -> Result<Secret, ConfigError> {
        let field = if self.token_file.is_some() {
            "admin.token_file"
        } else {
            "admin.token_env"
        };
        let token = load_secret(field, self.token_env.as_deref(), self.token_file.as_deref())?;
        if token.expose().len() < MIN_TOKEN_LEN {
            return Err(ConfigError::Secret {
                field,
                problem: format!(
                    "the token is shorter than {MIN_TOKEN_LEN} characters; make a long random one, e.g. `openssl rand -hex 32`"
                ),
            });
        }
        Ok(token)
    }

    /// The base of the links in claim e-mails, ending in `/`. Without `public_url`, the
    /// address the listener is `bound` to (which only suits a server users reach directly).
    pub fn public_url(&self, bound: SocketAddr) -> Url {
        let text = match &self.public_url {
            Some(u) => u.clone(),
            None => format!("http://{bound}"),
        };
        let mut url = Url::parse(&text).expect("validated");
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> AdminConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_token_source_is_required_and_urls_are_checked() {
        let c = parse("token_env = \"X\"");
        assert!(c.validate().is_ok());
        assert_eq!(c.listen.to_string(), "127.0.0.1:10080");
        assert_eq!(c.public_url(c.listen).as_str(), "http://127.0.0.1:10080/");
        let err = parse("").validate().unwrap_err().to_string();
        assert!(err.contains("admin.token_env"), "{err}");
        let err = parse("token_env = \"X\"\ntoken_file = \"/f\"")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("not both"), "{err}");
        let err = parse("token_env = \"X\"\npublic_url = \"mailto:x\"")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.public_url"), "{err}");
        let c = parse("token_env = \"X\"\npublic_url = \"https://c.example.org/certline\"");
        assert_eq!(
            c.public_url(c.listen).as_str(),
            "https://c.example.org/certline/"
        );
    }

    #[test]
    fn short_tokens_are_refused_without_showing_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t");
        std::fs::write(&file, "short-Tok\n").unwrap();
        let c = AdminConfig {
            listen: default_listen(),
            token_env: None,
            token_file: Some(file.clone()),
            public_url: None,
        };
        let err = c.token().unwrap_err().to_string();
        assert!(
            err.contains("shorter than 16") && !err.contains("short-Tok"),
            "{err}"
        );
        std::fs::write(&file, "a-long-enough-token-123\n").unwrap();
        assert_eq!(c.token().unwrap().expose(), "a-long-enough-token-123");
    }
}
