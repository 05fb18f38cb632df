//! `certline check-config FILE`: parse and validate a configuration file, load every secret
//! it names (without printing one), say what was found, and name every combination of
//! settings that could never work ([`crate::app::requirements`]), as `serve` would refuse.

use crate::app::config::{Config, LogFormat};
use crate::app::requirements::unmet_requirements;
use std::fmt::Write as _;
use std::path::Path;

/// The report, and whether every check passed.
pub struct CheckReport {
    pub text: String,
    pub ok: bool,
}

/// Checks `path`. A file that does not parse or validate is an `Err` naming the key to fix.
pub fn check_config(path: &Path) -> Result<CheckReport, crate::config::ConfigError> {
    let c = Config::from_file(path)?;
    let mut out = String::new();
    let mut problems = 0;
    let mut secret = |out: &mut String, what: &str, result: Result<(), String>| match result {
        Ok(()) => {
            let _ = writeln!(out, "  {what}: ok");
        }
        Err(e) => {
            problems += 1;
            let _ = writeln!(out, "  {what}: PROBLEM: {e}");
        }
    };
    let _ = writeln!(out, "listen = {}", c.listen);
    let _ = writeln!(out, "data_dir = {}", c.data_dir.display());
    let _ = writeln!(
        out,
        "durability: mode = {:?}, relaxed_flush_ms = {}",
        c.durability.mode, c.durability.relaxed_flush_ms
    );
    let _ = writeln!(
        out,
        "log: format = {}, filter = {:?} (RUST_LOG overrides)",
        match c.log.format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        },
        c.log.filter
    );
    let l = &c.limits;
    let _ = writeln!(
        out,
        "limits: max_line_bytes = {}, quiet_period_ms = {}, idle_timeout_secs = {}, max_connections = {}, max_connections_per_ip = {}",
        l.max_line_bytes,
        l.quiet_period_ms,
        l.idle_timeout_secs,
        l.max_connections,
        l.max_connections_per_ip
    );
    let r = &c.rate_limit;
    let _ = writeln!(
        out,
        "rate_limit: apikey {}/min (burst {}), claim {}/min (burst {})",
        r.apikey_per_minute, r.apikey_burst, r.claim_per_minute, r.claim_burst
    );
    let cl = &c.claims;
    let _ = writeln!(
        out,
        "claims: max_unconfirmed_keys_per_email = {}, max_new_emails_per_address_per_day = {}, link_validity_secs = {}",
        cl.max_unconfirmed_keys_per_email,
        cl.max_new_emails_per_address_per_day,
        cl.link_validity_secs
    );
    match &c.sectigo {
        None => {
            let _ = writeln!(
                out,
                "sectigo: off (no [sectigo] section; registrations are only stored)"
            );
        }
        Some(s) => {
            let _ = writeln!(
                out,
                "sectigo: on, base_url = {}, allowed_suffixes = {:?}, create_missing = {}, require_confirmed_key = {}",
                s.base_url, s.allowed_suffixes, s.create_missing, s.require_confirmed_key
            );
            let _ = writeln!(
                out,
                "sectigo dcv: dcv_method = {:?}, dcv_domains = {:?} (others validate at their registrable domain), dcv_hook_env = {:?}, approve_delegations = {}, allow_insecure_http = {}",
                s.dcv_method,
                s.dcv_domains,
                s.dcv_hook_env,
                s.approve_delegations,
                s.allow_insecure_http
            );
            secret(
                &mut out,
                "sectigo credentials",
                s.client_options().map(|_| ()).map_err(|e| e.to_string()),
            );
        }
    }
    match &c.admin {
        None => {
            let _ = writeln!(
                out,
                "admin: off (no [admin] section: no metrics, inventory, CLI or claim links)"
            );
        }
        Some(a) => {
            let source = match (&a.token_env, &a.token_file) {
                (Some(env), _) => format!("environment variable {env}"),
                (None, Some(file)) => format!("file {}", file.display()),
                (None, None) => "nowhere".into(),
            };
            let _ = writeln!(
                out,
                "admin: listen = {}, public_url = {}, token from {source}",
                a.listen,
                a.public_url(a.listen)
            );
            secret(
                &mut out,
                "admin token",
                a.token().map(|_| ()).map_err(|e| e.to_string()),
            );
        }
    }
    match &c.smtp {
        None => {
            let _ = writeln!(
                out,
                "smtp: off (claim confirmation links are logged{})",
                if c.admin.is_some() {
                    ""
                } else {
                    "; and without [admin] none are made"
                }
            );
        }
        Some(s) => {
            let _ = writeln!(
                out,
                "smtp: {}:{} tls = {:?}, from = {}, login = {}",
                s.host,
                s.port(),
                s.tls,
                s.from,
                s.username.as_deref().unwrap_or("(none)")
            );
            if s.username.is_some() {
                secret(
                    &mut out,
                    "smtp password",
                    s.password().map(|_| ()).map_err(|e| e.to_string()),
                );
            }
        }
    }
    let unmet = unmet_requirements(&c);
    if unmet.is_empty() {
        let _ = writeln!(
            out,
            "requirements: ok (nothing waits for something that cannot happen)"
        );
    } else {
        let _ = writeln!(out, "requirements:");
        for u in &unmet {
            let _ = writeln!(out, "  PROBLEM: {u}");
        }
        problems += unmet.len();
    }
    let ok = problems == 0;
    if ok {
        let _ = writeln!(out, "{}: ok", path.display());
    } else {
        let _ = writeln!(
            out,
            "{}: {problems} problem(s); fix them before `certline serve`",
            path.display()
        );
    }
    Ok(CheckReport { text: out, ok })
}
