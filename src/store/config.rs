//! `[store]`: which backend holds the keys, domains and outboxes.
//!
//! `sled` (the default) is embedded: nothing to install, one machine, the data directory
//! (`data_dir`, `--data`) holds everything. `postgres` is for deployments that outgrow one
//! machine: several certline instances share one database ([`PostgresConfig`]), and the
//! data directory is not used for the store.

use super::postgres::PostgresConfig;
use crate::config::ConfigError;
use serde::Deserialize;

/// The `[store]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: Backend,
    /// `[store.postgres]`: required with `backend = "postgres"`.
    pub postgres: Option<PostgresConfig>,
}

/// Which store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Embedded, in the data directory (the default).
    #[default]
    Sled,
    /// A PostgreSQL database several instances share.
    Postgres,
}

impl StoreConfig {
    /// Checks that the chosen backend has what it needs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (self.backend, &self.postgres) {
            (Backend::Postgres, None) => Err(ConfigError::invalid(
                "store.postgres",
                "backend = \"postgres\" needs a [store.postgres] section with url_env or url_file",
            )),
            (Backend::Postgres, Some(pg)) => pg.validate(),
            (Backend::Sled, Some(_)) => Err(ConfigError::invalid(
                "store.backend",
                "[store.postgres] is set but backend is \"sled\": set backend = \"postgres\" to use it, or remove the section",
            )),
            (Backend::Sled, None) => Ok(()),
        }
    }

    /// The PostgreSQL settings, when that backend is chosen.
    pub fn postgres(&self) -> Option<&PostgresConfig> {
        match self.backend {
            Backend::Postgres => self.postgres.as_ref(),
            Backend::Sled => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> StoreConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn sled_is_the_default_and_needs_nothing() {
        let config = parse("");
        assert_eq!(config.backend, Backend::Sled);
        config.validate().unwrap();
        assert!(config.postgres().is_none());
    }

    #[test]
    fn postgres_needs_its_section_and_a_url_source() {
        let missing = parse("backend = \"postgres\"").validate().unwrap_err();
        assert!(
            missing.to_string().contains("[store.postgres]"),
            "{missing}"
        );
        let config =
            parse("backend = \"postgres\"\n[postgres]\nurl_env = \"CERTLINE_DATABASE_URL\"\n");
        config.validate().unwrap();
        assert_eq!(
            config.postgres().unwrap().url_env.as_deref(),
            Some("CERTLINE_DATABASE_URL")
        );
    }

    #[test]
    fn a_postgres_section_without_the_backend_is_a_mistake_named() {
        let e = parse("[postgres]\nurl_env = \"X\"\n")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("backend"), "{e}");
    }
}
