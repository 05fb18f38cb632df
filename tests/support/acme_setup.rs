//! Pointing a test server's `[sectigo.acme]` at the simulator: the config, an EAB pool, and
//! reading the `acme=` fields of `status`.

use super::bridge_setup::sectigo_section;
use super::client::call;
use super::scm_sim::ScmSim;
use super::wait::{done_or, wait_until};
use base64::Engine;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The ACME server the simulator knows (and certline is configured with).
pub const ACME_SERVER: &str = "https://acme.sectigo.com/v2/OV";

/// The organisation the simulator's `add_domain` delegates to.
pub const ORG: u64 = 1;

/// A config file body: the bridge (`sectigo_settings` more `[sectigo]` lines) and
/// `[sectigo.acme]` for [`ACME_SERVER`] (`acme_settings` more lines), with fast timers.
pub fn acme_toml(
    sim: &ScmSim,
    password_file: &Path,
    sectigo_settings: &str,
    acme_settings: &str,
) -> String {
    acme_toml_for(
        sim,
        password_file,
        sectigo_settings,
        ACME_SERVER,
        acme_settings,
    )
}

/// Like [`acme_toml`], for another ACME server (which the simulator must know).
pub fn acme_toml_for(
    sim: &ScmSim,
    password_file: &Path,
    sectigo_settings: &str,
    acme_server: &str,
    acme_settings: &str,
) -> String {
    let settings = format!(
        "max_concurrency = 8\nunauthorized_retry_secs = 1\norg_id = {ORG}\n\
         allowed_suffixes = [\"example.edu\"]\n{sectigo_settings}"
    );
    format!(
        "[rate_limit]\napikey_per_minute = 100000\napikey_burst = 100000\n{}\n\
         [sectigo.acme]\nacme_server = \"{acme_server}\"\npending_recheck_secs = 1\n{acme_settings}\n",
        sectigo_section(sim, password_file, &settings)
    )
}

/// `n` EAB pairs as Pebble and Sectigo shape them: kid, and 32 random bytes as base64url
/// without padding (43 characters; about one in 64 starts with `-`).
pub fn eab_pool(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let key: [u8; 32] = rand::random();
            (
                format!("kid-{i}-{:08x}", rand::random::<u32>()),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key),
            )
        })
        .collect()
}

/// Adds `names` to the simulator's inventory with DCV validated, as an operator's SCM
/// would have them.
pub fn seed_validated(sim: &ScmSim, names: &[String]) {
    let today = chrono::Utc::now().date_naive();
    for n in names {
        sim.add_domain(n);
        sim.set_dcv_validated(n, today, today + chrono::Duration::days(365));
    }
}

/// The `acme=` and `acme_account=` fields of a domain's `status`, and the whole data line.
pub async fn acme_state(
    addr: SocketAddr,
    key: &str,
    domain: &str,
) -> (String, Option<u64>, String) {
    let reply = call(
        addr,
        &format!("command status apikey {key} domain {domain}"),
    )
    .await;
    let data = reply.data.expect("status has data");
    let field = |name: &str| {
        data.split(' ')
            .find_map(|f| f.strip_prefix(name))
            .map(str::to_owned)
    };
    let state = field("acme=").unwrap_or_default();
    let account = field("acme_account=").map(|v| v.parse().expect("numeric account id"));
    (state, account, data)
}

/// Polls until every domain of `key` shows `acme=<state>`; fails with the last status line.
pub async fn wait_acme(
    addr: SocketAddr,
    key: &str,
    domains: &[String],
    state: &str,
    limit: Duration,
) {
    for d in domains {
        wait_until(limit, &format!("{d} acme={state}"), || async {
            let (now, _, data) = acme_state(addr, key, d).await;
            done_or(now == state, data)
        })
        .await;
    }
}
