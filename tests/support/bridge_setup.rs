//! Pointing a test server's Sectigo bridge at the simulator, and registering many domains.

use super::client::{new_key, pipelined};
use super::scm_sim::{self, ScmSim};
use std::net::SocketAddr;
use std::path::Path;

/// How the bridge authenticates to the simulator. The acceptance tests run with both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// `login`/`password`/`customerUri` headers.
    Headers,
    /// OAuth2 client credentials from the simulator's separate token host.
    OAuth2,
}

impl AuthMode {
    /// Both modes, for tests that must pass with either.
    pub const BOTH: [AuthMode; 2] = [AuthMode::Headers, AuthMode::OAuth2];

    /// The secret the simulator accepts in this mode (what the caller writes to the file).
    pub fn secret(self) -> &'static str {
        match self {
            AuthMode::Headers => scm_sim::PASSWORD,
            AuthMode::OAuth2 => scm_sim::CLIENT_SECRET,
        }
    }
}

/// A `[sectigo]` section (with its `backoff` and `auth` tables) for the simulator, with fast
/// timers for tests. `settings` are more `key = value` lines of the `[sectigo]` table (the
/// policy: `allowed_suffixes`, `create_missing`, …). The password is read from
/// `password_file`, which the caller writes.
pub fn sectigo_section(sim: &ScmSim, password_file: &Path, settings: &str) -> String {
    sectigo_section_with(AuthMode::Headers, sim, password_file, settings)
}

/// [`sectigo_section`] in either auth mode; the secret (password or client secret) is read
/// from `secret_file`.
pub fn sectigo_section_with(
    mode: AuthMode,
    sim: &ScmSim,
    secret_file: &Path,
    settings: &str,
) -> String {
    let auth = match mode {
        AuthMode::Headers => format!(
            "mode = \"headers\"\nlogin = \"{}\"\ncustomer_uri = \"{}\"\npassword_file = \"{}\"",
            scm_sim::LOGIN,
            scm_sim::CUSTOMER_URI,
            secret_file.display()
        ),
        AuthMode::OAuth2 => format!(
            "mode = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"{}\"\nclient_secret_file = \"{}\"",
            sim.token_url(),
            scm_sim::CLIENT_ID,
            secret_file.display()
        ),
    };
    format!(
        r#"
[sectigo]
base_url = "{api}"
allow_insecure_http = true
request_timeout_secs = 5
connect_timeout_secs = 2
max_requests_per_second = 5000.0
{settings}

[sectigo.backoff]
initial_secs = 1
max_secs = 2

[sectigo.auth]
{auth}
"#,
        api = sim.api_url(),
    )
}

/// Mints a key and registers `domains` under it over one pipelined connection; every add
/// must be acknowledged. Returns the key.
pub async fn register(addr: SocketAddr, domains: &[String]) -> String {
    let key = new_key(addr).await;
    let lines: String = domains
        .iter()
        .map(|d| format!("command add apikey {key} domain {d}\n"))
        .collect();
    let all = pipelined(addr, &lines).await;
    assert_eq!(all.matches("status ok 200").count(), domains.len(), "{all}");
    key
}
