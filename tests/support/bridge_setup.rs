//! Pointing a test server's Sectigo bridge at the simulator, and registering many domains.

use super::client::{new_key, pipelined};
use super::scm_sim::{self, ScmSim};
use std::net::SocketAddr;
use std::path::Path;

/// A `[sectigo]` section (with its `backoff` and `auth` tables) for the simulator, with fast
/// timers for tests. `settings` are more `key = value` lines of the `[sectigo]` table (the
/// policy: `allowed_suffixes`, `create_missing`, …). The password is read from
/// `password_file`, which the caller writes.
pub fn sectigo_section(sim: &ScmSim, password_file: &Path, settings: &str) -> String {
    format!(
        r#"
[sectigo]
base_url = "{api}"
request_timeout_secs = 5
connect_timeout_secs = 2
max_requests_per_second = 5000.0
{settings}

[sectigo.backoff]
initial_secs = 1
max_secs = 2

[sectigo.auth]
mode = "headers"
login = "{login}"
customer_uri = "{uri}"
password_file = "{pw}"
"#,
        api = sim.api_url(),
        login = scm_sim::LOGIN,
        uri = scm_sim::CUSTOMER_URI,
        pw = password_file.display(),
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
