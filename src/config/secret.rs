//! Secrets (passwords, client secrets, bearer tokens) that must never be printed, and how they
//! are loaded: the TOML names an environment variable or a file, never the value, so a
//! configuration can be committed and shared without leaking credentials.

use super::error::ConfigError;
use std::fmt;
use std::path::Path;

/// A secret value (password, client secret, bearer token).
///
/// `Debug` and `Display` print `***` so a secret cannot reach a log line or an error message by
/// accident; the only way to the value is [`Secret::expose`], which is easy to grep for.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value that must not be printed.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Checks that exactly one source (environment variable or file) is named for a secret,
/// without reading it: `check-config` and validation run before the secret exists.
pub fn check_secret_source(
    field: &'static str,
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<(), ConfigError> {
    match (env, file) {
        (Some(_), Some(_)) => Err(ConfigError::Secret {
            field,
            problem: "set either the *_env or the *_file key, not both".into(),
        }),
        (None, None) => Err(ConfigError::Secret {
            field,
            problem: "the secret is missing; set the *_env key to an environment variable name or the *_file key to a file path".into(),
        }),
        (Some(name), None) if name.trim().is_empty() => Err(ConfigError::Secret {
            field,
            problem: "names no environment variable".into(),
        }),
        _ => Ok(()),
    }
}

/// Reads a secret from an environment variable or a file. Errors name the variable or the
/// path, never the value.
pub fn load_secret(
    field: &'static str,
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<Secret, ConfigError> {
    check_secret_source(field, env, file)?;
    let value = if let Some(name) = env {
        std::env::var(name).map_err(|e| ConfigError::Secret {
            field,
            problem: match e {
                std::env::VarError::NotPresent => {
                    format!(
                        "environment variable {name} is not set; export it before starting certline"
                    )
                }
                std::env::VarError::NotUnicode(_) => {
                    format!("environment variable {name} is not valid UTF-8")
                }
            },
        })?
    } else {
        let path = file.expect("check_secret_source guarantees a file when there is no env");
        std::fs::read_to_string(path).map_err(|e| ConfigError::Secret {
            field,
            problem: format!("cannot read {}: {e}", path.display()),
        })?
    };
    let value = value.trim_end_matches(['\r', '\n']);
    if value.is_empty() {
        return Err(ConfigError::Secret {
            field,
            problem: "the secret is empty".into(),
        });
    }
    Ok(Secret::new(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_load_from_file_without_trailing_newline_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "hunter2-file\n").unwrap();
        let s = load_secret("f", None, Some(&path)).unwrap();
        assert_eq!(s.expose(), "hunter2-file");
        assert_eq!(format!("{s} {s:?}"), "*** ***");

        let missing = load_secret("f", None, Some(&dir.path().join("nope"))).unwrap_err();
        assert!(missing.to_string().contains("cannot read"));

        let unset = load_secret("f", Some("CERTLINE_TEST_SURELY_UNSET_VAR"), None).unwrap_err();
        assert!(
            unset
                .to_string()
                .contains("CERTLINE_TEST_SURELY_UNSET_VAR is not set")
        );
    }
}
