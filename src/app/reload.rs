//! Reload (`SIGHUP`, `systemctl reload`): read the configuration file and the secrets it
//! names again, validate them as `serve` and `check-config` do (the values, the
//! combinations of [`super::requirements`], the secrets), and apply what can change
//! while certline runs. Nothing is applied unless everything validates and every secret
//! loads: a failed reload keeps the running configuration and says why.
//!
//! | applied at once | how |
//! |---|---|
//! | `[limits]` (but `listen_backlog`) | to connections accepted after the reload |
//! | `[sectigo]` credentials (re-read from their files or variables), policy, timings, DCV (`dcv_domains`, `dcv_hook_env`, …), `approve_delegations`, `allow_insecure_http` | from each domain's next bridge step; a bridge paused by a 401 probes at once, and every domain the 401 parked follows the probe ([`Worker::reconfigure`]); the ACME account worker's next call uses the new credentials too |
//! | the admin token (re-read) | from the next admin request |
//!
//! Everything else (`listen`, `data_dir`, `[store]`, `[durability]`, `worker_threads`, `[log]`,
//! `[rate_limit]`, `[claims]`, `[smtp]`, `admin.listen`/`public_url`, adding or removing
//! `[sectigo]` or `[admin]`, `sectigo.max_concurrency`, `[sectigo.acme]`, `limits.listen_backlog`) needs a
//! restart: when it changed, the reload says so and keeps the running value.

use super::config::Config;
use crate::acme::AcmeWorker;
use crate::admin::AdminState;
use crate::bridge::{SectigoClient, SectigoError, Worker};
use crate::config::ConfigError;
use crate::server::Limits;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// Where the configuration comes from: the file and the command line's overrides, so a
/// reload reads it the way start-up did.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// `--config` (none: the defaults).
    pub file: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data`.
    pub data_dir: Option<PathBuf>,
}

impl ConfigSource {
    /// Reads, parses and validates the configuration, with the overrides applied.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.file {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(data_dir) = &self.data_dir {
            config.data_dir = data_dir.clone();
        }
        Ok(config)
    }
}

/// A reload failed; the running configuration stays in force.
#[derive(Debug, Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The sections each validate but cannot work together (as at start-up).
    #[error(transparent)]
    Refused(#[from] super::requirements::Refused),
    #[error("the Sectigo client: {0}")]
    SectigoClient(#[from] SectigoError),
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Settings that changed and are in force now.
    pub applied: Vec<&'static str>,
    /// Settings that changed in the file but need a restart; the running values are kept.
    pub kept: Vec<&'static str>,
}

/// Applies a re-read configuration to a running [`crate::App`].
pub struct Reloader {
    source: ConfigSource,
    /// The configuration in force (restart-only settings as started).
    running: Mutex<Config>,
    limits: Arc<ArcSwap<Limits>>,
    worker: Option<Arc<Worker>>,
    acme: Option<Arc<AcmeWorker>>,
    admin: Option<Arc<AdminState>>,
    /// How many instances share the store: a rebuilt Sectigo client takes its share of the
    /// (possibly changed) budget from it, as the first one did.
    live_instances: tokio::sync::watch::Receiver<usize>,
}

impl Reloader {
    pub(crate) fn new(
        source: ConfigSource,
        running: Config,
        limits: Arc<ArcSwap<Limits>>,
        worker: Option<Arc<Worker>>,
        acme: Option<Arc<AcmeWorker>>,
        admin: Option<Arc<AdminState>>,
        live_instances: tokio::sync::watch::Receiver<usize>,
    ) -> Self {
        Self {
            source,
            running: Mutex::new(running),
            limits,
            worker,
            acme,
            admin,
            live_instances,
        }
    }

    /// Reads the configuration and its secrets again and applies them (see the module docs).
    /// Logs what changed, what needs a restart, or why nothing was applied.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let result = self.try_reload();
        match &result {
            Ok(report) => {
                for setting in &report.kept {
                    tracing::warn!(
                        setting,
                        "reload: {setting} changed in the configuration but needs a restart; the running value is kept"
                    );
                }
                tracing::info!(applied = ?report.applied, kept = ?report.kept, "configuration reloaded");
            }
            Err(e) => tracing::error!(
                error = %e,
                "reload failed; the running configuration stays in force (fix the file, check it with `certline check-config`, and reload again)"
            ),
        }
        result
    }

    fn try_reload(&self) -> Result<ReloadReport, ReloadError> {
        let new = self.source.load()?;
        super::requirements::check(&new)?;
        // Everything that can fail happens before anything is applied.
        let client = match (&new.sectigo, &self.worker) {
            (Some(sectigo), Some(_)) => {
                let mut options = sectigo.client_options()?;
                options.live_instances = Some(self.live_instances.clone());
                Some(SectigoClient::new(options)?)
            }
            _ => None,
        };
        let token = match (&new.admin, &self.admin) {
            (Some(admin), Some(_)) => Some(admin.token()?),
            _ => None,
        };
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let kept = restart_only_changes(&running, &new);
        let mut applied = Vec::new();
        let next = keep_restart_only(&running, new);
        if debug_differs(&running.limits, &next.limits) {
            applied.push("limits");
        }
        self.limits.store(Arc::new(next.limits.clone()));
        if let (Some(worker), Some(client), Some(sectigo)) = (&self.worker, client, &next.sectigo) {
            // Always: the credentials may have changed in their file with the TOML as it was.
            if let Some(acme) = &self.acme {
                acme.replace_client(client.clone());
            }
            worker.reconfigure(client, sectigo);
            applied.push("sectigo");
        }
        if let (Some(admin), Some(token)) = (&self.admin, token) {
            admin.set_token(&token);
            applied.push("admin token");
        }
        *running = next;
        Ok(ReloadReport { applied, kept })
    }
}

/// Compares two settings by their `Debug` form: every field, and no secrets (the sections
/// name where secrets are, not what they are).
fn debug_differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

/// The restart-only settings that differ between the running and the new configuration.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            kept.push(name);
        }
    };
    check("listen", old.listen != new.listen);
    check("data_dir", old.data_dir != new.data_dir);
    check("store", debug_differs(&old.store, &new.store));
    check(
        "durability",
        debug_differs(&old.durability, &new.durability),
    );
    check("worker_threads", old.worker_threads != new.worker_threads);
    check("log", debug_differs(&old.log, &new.log));
    check(
        "rate_limit",
        debug_differs(&old.rate_limit, &new.rate_limit),
    );
    check("claims", debug_differs(&old.claims, &new.claims));
    check("smtp", debug_differs(&old.smtp, &new.smtp));
    check(
        "limits.listen_backlog",
        old.limits.listen_backlog != new.limits.listen_backlog,
    );
    check(
        "the [sectigo] section (added or removed)",
        old.sectigo.is_some() != new.sectigo.is_some(),
    );
    if let (Some(o), Some(n)) = (&old.sectigo, &new.sectigo) {
        check(
            "sectigo.max_concurrency",
            o.max_concurrency != n.max_concurrency,
        );
        check("sectigo.acme", debug_differs(&o.acme, &n.acme));
    }
    check(
        "the [admin] section (added or removed)",
        old.admin.is_some() != new.admin.is_some(),
    );
    if let (Some(o), Some(n)) = (&old.admin, &new.admin) {
        check("admin.listen", o.listen != n.listen);
        check("admin.public_url", o.public_url != n.public_url);
    }
    kept
}

/// The new configuration with every restart-only setting as it runs now.
fn keep_restart_only(running: &Config, new: Config) -> Config {
    let mut next = Config {
        listen: running.listen,
        data_dir: running.data_dir.clone(),
        store: running.store.clone(),
        durability: running.durability.clone(),
        worker_threads: running.worker_threads,
        log: running.log.clone(),
        rate_limit: running.rate_limit.clone(),
        claims: running.claims.clone(),
        smtp: running.smtp.clone(),
        ..new
    };
    next.limits.listen_backlog = running.limits.listen_backlog;
    match (&running.sectigo, &mut next.sectigo) {
        (Some(old), Some(new)) => {
            new.max_concurrency = old.max_concurrency;
            new.acme = old.acme.clone();
        }
        (old, new) => *new = old.clone(),
    }
    match (&running.admin, &mut next.admin) {
        (Some(old), Some(new)) => {
            new.listen = old.listen;
            new.public_url = old.public_url.clone();
        }
        (old, new) => *new = old.clone(),
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_settings_are_reported_and_kept() {
        let old =
            Config::from_toml("listen = \"127.0.0.1:10023\"\n[limits]\nmax_connections = 10\n")
                .unwrap();
        let new = Config::from_toml(
            "listen = \"127.0.0.1:10024\"\nworker_threads = 3\n[limits]\nmax_connections = 20\nlisten_backlog = 16\n",
        )
        .unwrap();
        assert_eq!(
            restart_only_changes(&old, &new),
            ["listen", "worker_threads", "limits.listen_backlog"]
        );
        let next = keep_restart_only(&old, new);
        assert_eq!(next.listen, old.listen);
        assert_eq!(next.worker_threads, old.worker_threads);
        assert_eq!(next.limits.listen_backlog, old.limits.listen_backlog);
        assert_eq!(next.limits.max_connections, 20, "limits apply");
        assert!(restart_only_changes(&old, &next).is_empty());
    }

    /// The ACME worker is built at start from `[sectigo.acme]`; a reload that changes it is
    /// reported and the section is kept, while the rest of `[sectigo]` applies.
    #[test]
    fn the_acme_section_needs_a_restart() {
        let with = |acme: &str| {
            Config::from_toml(&format!(
                "[sectigo]\nallowed_suffixes = [\"example.edu\"]\norg_id = 7\n\
                 [sectigo.auth]\nmode = \"headers\"\nlogin = \"api\"\ncustomer_uri = \"example\"\n\
                 password_env = \"UNUSED\"\n{acme}"
            ))
            .unwrap()
        };
        let old = with("[sectigo.acme]\nacme_server = \"https://acme.sectigo.com/v2/OV\"\n");
        let new = with("[sectigo.acme]\nacme_server = \"https://acme.sectigo.com/v2/EV\"\n");
        assert_eq!(restart_only_changes(&old, &new), ["sectigo.acme"]);
        let next = keep_restart_only(&old, new);
        let acme = next.sectigo.as_ref().and_then(|s| s.acme.as_ref()).unwrap();
        assert_eq!(acme.acme_server, "https://acme.sectigo.com/v2/OV");
        assert!(restart_only_changes(&old, &next).is_empty());
    }
}
