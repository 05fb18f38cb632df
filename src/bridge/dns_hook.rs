//! The operator's DNS hook: an executable certline runs to publish the record DCV needs, and
//! again to remove it afterwards, like certbot's `--manual-auth-hook`/`--manual-cleanup-hook`.
//!
//! The record travels in environment variables, never on a command line (values may hold any
//! printable character, backslashes and backticks included, and no shell ever sees them):
//!
//! | variable | value |
//! |---|---|
//! | `CERTLINE_DCV_ACTION` | `publish` or `cleanup` |
//! | `CERTLINE_DCV_DOMAIN` | the domain being validated |
//! | `CERTLINE_DCV_RECORD_TYPE` | `CNAME` or `TXT` |
//! | `CERTLINE_DCV_HOST` | the record's name as Sectigo gave it, with its trailing dot |
//! | `CERTLINE_DCV_VALUE` | the record's value, byte for byte as Sectigo gave it |
//!
//! The hook runs with a clean environment: `PATH`, `HOME` and `LANG` (when certline has
//! them), the variables above, and the names the operator lists in `dcv_hook_env`. Nothing
//! else of certline's environment reaches it, so a third-party DNS script never sees the
//! Sectigo password or OAuth2 client secret certline may have been given in its
//! environment.
//!
//! Exit status 0 means done. Anything else, or running longer than the timeout (the hook is
//! then killed), is a failure the bridge retries with backoff.

use crate::store::DcvRecordType;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use thiserror::Error;
use tokio::process::Command;

/// What every hook gets from certline's environment, besides `dcv_hook_env`.
const BASE_ENV: &[&str] = &["PATH", "HOME", "LANG"];

/// Publish or remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookAction {
    Publish,
    Cleanup,
}

impl HookAction {
    fn as_str(self) -> &'static str {
        match self {
            HookAction::Publish => "publish",
            HookAction::Cleanup => "cleanup",
        }
    }
}

/// The record a hook run is about.
#[derive(Debug, Clone)]
pub struct DnsRecord<'a> {
    pub domain: &'a str,
    pub record_type: DcvRecordType,
    pub host: &'a str,
    pub value: &'a str,
}

/// Why a hook run did not succeed.
#[derive(Debug, Error)]
pub enum HookError {
    #[error("DNS hook {path} could not be started: {source}")]
    Spawn {
        path: String,
        source: std::io::Error,
    },
    #[error("DNS hook did not finish within {0:?} and was killed")]
    Timeout(Duration),
    #[error("DNS hook exited with {status}: {stderr}")]
    Failed { status: String, stderr: String },
}

/// Runs the hook once and waits for it, at most `timeout`.
pub async fn run(
    hook: &Path,
    action: HookAction,
    record: &DnsRecord<'_>,
    pass_env: &[String],
    timeout: Duration,
) -> Result<(), HookError> {
    let inherited = BASE_ENV
        .iter()
        .copied()
        .chain(pass_env.iter().map(String::as_str))
        .filter_map(|name| std::env::var_os(name).map(|v| (name, v)));
    let child = Command::new(hook)
        .env_clear()
        .envs(inherited)
        .env("CERTLINE_DCV_ACTION", action.as_str())
        .env("CERTLINE_DCV_DOMAIN", record.domain)
        .env("CERTLINE_DCV_RECORD_TYPE", record.record_type.as_str())
        .env("CERTLINE_DCV_HOST", record.host)
        .env("CERTLINE_DCV_VALUE", record.value)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // A hook that outlives its timeout is killed when the future is dropped.
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HookError::Spawn {
            path: hook.display().to_string(),
            source,
        })?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| HookError::Timeout(timeout))?
        .map_err(|source| HookError::Spawn {
            path: hook.display().to_string(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    // The first line of stderr, bounded: enough for the operator to see why.
    let stderr: String = String::from_utf8_lossy(&output.stderr)
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    Err(HookError::Failed {
        status: output.status.to_string(),
        stderr,
    })
}
