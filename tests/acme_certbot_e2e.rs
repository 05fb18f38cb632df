//! The whole chain with real programs: bash registers names over `/dev/tcp`
//! (`hooks/certline-register --acme`) → certline maps them into the key's Sectigo ACME account
//! (the SCM simulator) → the script fetches the account's EAB and runs real certbot
//! `register` against Pebble requiring EAB (the simulator's EAB pool and Pebble's
//! `externalAccountMACKeys` hold the same keys) → certbot obtains a certificate → the deploy
//! hook the script installed reports the names back to certline. Without the EAB, certbot's
//! registration is refused.
//!
//! Runs with Debian's certbot 2.1 and with PyPI's certbot 5.x (the venv
//! `.ci/install-e2e-deps` makes, or `CERTLINE_E2E_CERTBOT5`). Needs certbot, pebble and
//! openssl, so it is ignored by default; `.ci/e2e` runs it with `--include-ignored`.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::acme_setup::{acme_state, acme_toml_for, eab_pool, seed_validated, wait_acme};
use support::pebble::{Pebble, require};
use support::scm_sim::{self, ScmSim};
use support::scripts::{Finished, register_script, run_bounded};
use support::server::{InProcess, test_config};

const CERTBOT_LIMIT: Duration = Duration::from_secs(240);
const DOMAINS: [&str; 2] = ["www.example.edu", "api.example.edu"];
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

async fn blocking(cmd: Command) -> Finished {
    tokio::task::spawn_blocking(move || run_bounded(cmd, CERTBOT_LIMIT))
        .await
        .unwrap()
}

/// certbot with this test's directories, the Pebble CA trusted, and nothing of the test
/// runner's environment.
fn certbot(bin: &Path, root: &Path, pebble: &Pebble, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", PATH)
        .env("REQUESTS_CA_BUNDLE", &pebble.ca_bundle)
        .args(args)
        .arg("--non-interactive")
        .arg("--config-dir")
        .arg(root.join("le/config"))
        .args(certbot_dirs(root).split(' '))
        .current_dir(root);
    cmd
}

fn certbot_dirs(root: &Path) -> String {
    format!(
        "--work-dir {} --logs-dir {} --max-log-backups 0",
        root.join("le/work").display(),
        root.join("le/logs").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs certbot and pebble; .ci/e2e installs them and runs it"]
async fn debian_certbot_gets_a_certificate_for_registered_names_through_sectigo_acme_with_eab() {
    chain(&require("certbot")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs certbot 5 in the venv .ci/install-e2e-deps makes; .ci/e2e runs it"]
async fn pypi_certbot_5_gets_a_certificate_for_registered_names_through_sectigo_acme_with_eab() {
    let bin = std::env::var_os("CERTLINE_E2E_CERTBOT5")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/certline-e2e/certbot5/bin/certbot"));
    assert!(
        bin.exists(),
        "no certbot 5.x at {}: run .ci/install-e2e-deps (it creates that venv) or set CERTLINE_E2E_CERTBOT5",
        bin.display()
    );
    chain(&bin).await;
}

async fn chain(certbot_bin: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    assert!(
        !root.display().to_string().contains(' '),
        "certbot hooks need a path without spaces"
    );
    let pool = eab_pool(1);
    let pebble = Pebble::start_with_eab(root, &pool);
    let directory = pebble.directory();

    let sim = ScmSim::start().await;
    sim.add_acme_server(&directory);
    sim.set_eab_pool(&pool);
    let domains: Vec<String> = DOMAINS.iter().map(|d| d.to_string()).collect();
    seed_validated(&sim, &domains);
    let password_file = root.join("sectigo-password");
    fs::write(&password_file, scm_sim::PASSWORD).unwrap();
    let config_file = root.join("certline.toml");
    fs::write(
        &config_file,
        acme_toml_for(
            &sim,
            &password_file,
            "require_confirmed_key = false",
            &directory,
            "hand_out_eab = true",
        ),
    )
    .unwrap();
    let mut config = certline::Config::from_file(&config_file).unwrap();
    let base = test_config(&root.join("data"));
    config.listen = base.listen;
    config.data_dir = base.data_dir;
    let server = InProcess::start_with(config).await;

    // Without the EAB, certbot refuses to register with this server.
    let refused = blocking(certbot(
        certbot_bin,
        root,
        &pebble,
        &[
            "register",
            "--server",
            &directory,
            "--agree-tos",
            "-m",
            "ops@example.edu",
            "--no-eff-email",
        ],
    ))
    .await;
    assert!(!refused.status.success(), "{}", refused.output());
    assert!(
        refused
            .output()
            .contains("Server requires external account binding"),
        "{}",
        refused.output()
    );

    // First boot: register the names, wait for the account, register certbot with the EAB.
    let mut register = Command::new(register_script());
    register
        .env_clear()
        .env("PATH", PATH)
        .env("REQUESTS_CA_BUNDLE", &pebble.ca_bundle)
        .env("CERTLINE_HOST", "127.0.0.1")
        .env("CERTLINE_PORT", server.addr.port().to_string())
        .env("CERTLINE_STATE_DIR", root.join("state"))
        .env("CERTLINE_EMAIL", "ops@example.edu")
        .env("CERTLINE_ACME_WAIT", "120")
        .env("CERTLINE_ACME_POLL", "1")
        .env("CERTLINE_CERTBOT", certbot_bin)
        .env("CERTLINE_CERTBOT_CONFIG_DIR", root.join("le/config"))
        .env("CERTLINE_CERTBOT_ARGS", certbot_dirs(root))
        .args(["--strict", "--acme"])
        .args(&domains);
    let done = blocking(register).await;
    assert!(done.status.success(), "{}", done.output());
    assert!(
        !done.output().contains(&pool[0].1),
        "the script printed the HMAC key"
    );
    let key = fs::read_to_string(root.join("state/apikey")).unwrap();
    let key = key.trim();
    wait_acme(
        server.addr,
        key,
        &domains,
        "mapped",
        Duration::from_secs(60),
    )
    .await;
    let account = sim.acme_accounts();
    assert_eq!(account.len(), 1);
    assert_eq!(account[0].domains, {
        let mut d = domains.clone();
        d.sort();
        d
    });
    assert!(
        pebble.log().contains(&format!(
            "Successful newAccount Binding with CA using kid \"{}\"",
            pool[0].0
        )),
        "Pebble did not bind the account with the EAB: {}",
        pebble.log()
    );

    // certbot obtains the certificate with the EAB-bound account (no EAB flags now), and the
    // deploy hook the script installed reports to certline.
    let webroot = root.join("webroot");
    fs::create_dir_all(&webroot).unwrap();
    let hook = root.join("le/config/renewal-hooks/deploy/certline-certbot-hook");
    let mut args = vec![
        "certonly".to_string(),
        "--server".into(),
        directory.clone(),
        "--webroot".into(),
        "-w".into(),
        webroot.display().to_string(),
        "--deploy-hook".into(),
        hook.display().to_string(),
    ];
    for d in &domains {
        args.extend(["-d".into(), d.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let issued = blocking(certbot(certbot_bin, root, &pebble, &args)).await;
    assert!(issued.status.success(), "{}", issued.output());
    let cert = root.join(format!("le/config/live/{}/cert.pem", domains[0]));
    let mut x509 = Command::new(require("openssl"));
    x509.args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&cert);
    let san = blocking(x509).await;
    for d in &domains {
        assert!(san.stdout.contains(&format!("DNS:{d}")), "{}", san.output());
    }
    let log = fs::read_to_string(root.join("le/logs/letsencrypt.log")).unwrap();
    for d in &domains {
        assert!(
            log.contains(&format!("{d}: status ok 200 domain already registered")),
            "the deploy hook did not report {d} to certline: {log}"
        );
    }
    let (state, _, data) = acme_state(server.addr, key, &domains[0]).await;
    assert_eq!(state, "mapped", "{data}");
    drop(pebble);
    server.stop().await;
}
