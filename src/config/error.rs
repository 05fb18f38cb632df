//! The one error type for configuration: reading and parsing the file, a value that cannot
//! work, or a secret that cannot be loaded. Every section (`[sectigo]`, `[admin]`, `[smtp]`,
//! and the server's own) reports through it, so `certline check-config` and start-up print
//! the same words.

use std::path::PathBuf;
use thiserror::Error;

/// A configuration problem, worded so the operator knows what to change.
///
/// No variant carries its cause as an error `source`: the message already contains it, and a
/// reporter that walks the chain (anyhow's `{:#}`) would print it twice.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema (a typo, a wrong type).
    #[error("config file {}: {message}", path.display())]
    Parse {
        path: PathBuf,
        /// The TOML parser's message, with the line and a caret under the problem.
        message: String,
    },
    /// A field has a value that cannot work.
    #[error("{field}: {problem}")]
    Invalid {
        /// Dotted TOML path of the field, e.g. `sectigo.org_id`.
        field: &'static str,
        /// What is wrong and what to do.
        problem: String,
    },
    /// A secret could not be loaded from where the configuration says it is.
    #[error("{field}: {problem}")]
    Secret {
        /// Dotted TOML path of the `*_env`/`*_file` key.
        field: &'static str,
        /// What is wrong (never the secret).
        problem: String,
    },
}

impl ConfigError {
    /// A field whose value cannot work, and what to do about it.
    pub fn invalid(field: &'static str, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field,
            problem: problem.into(),
        }
    }
}
