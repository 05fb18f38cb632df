//! `hooks/certline-register --acme` run by real bash against a real certline whose
//! `[sectigo.acme]` points at the SCM simulator: the script registers the names, waits for
//! the key's ACME account, fetches the EAB and runs `certbot register` exactly once (a
//! recording stand-in for certbot here; tests/acme_certbot_e2e.rs runs the real one), with
//! `--eab-hmac-key=KEY` even for a key that starts with `-`, installs the deploy hook with the
//! same key, and never prints the HMAC key.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::acme_setup::{ACME_SERVER, acme_toml, seed_validated};
use support::scm_sim::{self, ScmSim};
use support::scripts::{minimal_path, mode_of, read_trimmed, register_script, run_bounded};
use support::server::{InProcess, test_config};

/// A certbot stand-in: appends its arguments (one per line, then `--`) to `calls`, and on
/// `register` creates the account directory certbot would (`accounts/<server>/<id>/regr.json`).
fn fake_certbot(dir: &Path) -> (PathBuf, PathBuf) {
    let calls = dir.join("certbot-calls");
    let bin = dir.join("fake-certbot");
    fs::write(
        &bin,
        format!(
            r#"#!/bin/bash
printf '%s\n' "$@" -- >>'{calls}'
[[ $1 == register ]] || exit 0
while (($#)); do
    case $1 in
        --server) server=$2; shift ;;
        --config-dir) config=$2; shift ;;
    esac
    shift
done
rest=${{server#*://}}
/bin/mkdir -p "$config/accounts/$rest/0123abcd" &&
    printf '{{"body": {{}}}}\n' >"$config/accounts/$rest/0123abcd/regr.json"
echo "Account registered."
"#,
            calls = calls.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    (bin, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_boot_goes_from_nothing_to_a_registered_certbot_with_its_deploy_hook() {
    let sim = ScmSim::start().await;
    // A key that starts with '-': "--eab-hmac-key KEY" would make certbot read it as an option.
    let hmac = "-Qm9vdGluZyB3aXRoIGEgZGFzaCBpcyBhIHRyYXAuIQ";
    sim.set_eab_pool(&[("kid-dash".to_string(), hmac.to_string())]);
    let domains = ["web.example.edu".to_string(), "api.example.edu".to_string()];
    seed_validated(&sim, &domains);
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("pw");
    fs::write(&password_file, scm_sim::PASSWORD).unwrap();
    let config_file = dir.path().join("certline.toml");
    fs::write(
        &config_file,
        acme_toml(
            &sim,
            &password_file,
            "require_confirmed_key = false",
            "hand_out_eab = true",
        ),
    )
    .unwrap();
    let mut config = certline::Config::from_file(&config_file).unwrap();
    let base = test_config(&dir.path().join("data"));
    config.listen = base.listen;
    config.data_dir = base.data_dir;
    let server = InProcess::start_with(config).await;

    let bin = minimal_path(dir.path());
    let (certbot, calls) = fake_certbot(dir.path());
    let state = dir.path().join("state");
    let le = dir.path().join("le");
    let run = || {
        let mut cmd = Command::new(register_script());
        cmd.env_clear()
            .env("PATH", &bin)
            .env("CERTLINE_HOST", "127.0.0.1")
            .env("CERTLINE_PORT", server.addr.port().to_string())
            .env("CERTLINE_STATE_DIR", &state)
            .env("CERTLINE_EMAIL", "ops@example.edu")
            .env("CERTLINE_ACME_WAIT", "60")
            .env("CERTLINE_ACME_POLL", "1")
            .env("CERTLINE_CERTBOT", &certbot)
            .env("CERTLINE_CERTBOT_CONFIG_DIR", &le)
            .env(
                "CERTLINE_CERTBOT_ARGS",
                "--work-dir /tmp/w --logs-dir /tmp/l",
            )
            .args(["--strict", "--acme"])
            .args(&domains);
        cmd
    };
    let first = tokio::task::spawn_blocking({
        let cmd = run();
        move || run_bounded(cmd, Duration::from_secs(90))
    })
    .await
    .unwrap();
    assert!(first.status.success(), "{}", first.output());
    let text = fs::read_to_string(&calls).unwrap();
    let args: Vec<&str> = text.lines().collect();
    let expected_start = [
        "register",
        "--non-interactive",
        "--agree-tos",
        "--server",
        ACME_SERVER,
        "--eab-kid",
        "kid-dash",
    ];
    assert_eq!(&args[..7], expected_start, "{text}");
    assert!(
        args.contains(&format!("--eab-hmac-key={hmac}").as_str()),
        "{text}"
    );
    for want in [
        "--email",
        "ops@example.edu",
        "--work-dir",
        "/tmp/w",
        "--logs-dir",
    ] {
        assert!(args.contains(&want), "{want} missing: {text}");
    }
    assert_eq!(text.matches("\n--\n").count(), 1, "certbot ran once");
    assert!(
        !first.stdout.contains(hmac) && !first.stderr.contains(hmac),
        "the script printed the HMAC key: {}",
        first.output()
    );

    // The deploy hook is installed, executable, pointed at this server, with the same key.
    let hooks = le.join("renewal-hooks");
    assert_eq!(mode_of(&hooks.join("deploy/certline-certbot-hook")), 0o755);
    assert_eq!(
        read_trimmed(&hooks.join("certline_apikey")),
        read_trimmed(&state.join("apikey"))
    );
    assert_eq!(mode_of(&hooks.join("certline_apikey")), 0o600);
    let conf = fs::read_to_string(hooks.join("certline-hook.conf")).unwrap();
    assert!(
        conf.contains(&format!("PORT={}", server.addr.port())),
        "{conf}"
    );

    // Every boot runs it again: certbot's account is kept, certbot is not run again.
    let again = tokio::task::spawn_blocking({
        let cmd = run();
        move || run_bounded(cmd, Duration::from_secs(90))
    })
    .await
    .unwrap();
    assert!(again.status.success(), "{}", again.output());
    assert!(
        again.stderr.contains("already has an account"),
        "{}",
        again.output()
    );
    let text = fs::read_to_string(&calls).unwrap();
    assert_eq!(
        text.matches("\n--\n").count(),
        1,
        "certbot ran again: {text}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_eab_hand_out_a_strict_run_fails_and_certbot_is_not_run() {
    let sim = ScmSim::start().await;
    sim.set_eab_pool(&support::acme_setup::eab_pool(1));
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("pw");
    fs::write(&password_file, scm_sim::PASSWORD).unwrap();
    let config_file = dir.path().join("certline.toml");
    fs::write(
        &config_file,
        acme_toml(&sim, &password_file, "require_confirmed_key = false", ""),
    )
    .unwrap();
    let mut config = certline::Config::from_file(&config_file).unwrap();
    let base = test_config(&dir.path().join("data"));
    config.listen = base.listen;
    config.data_dir = base.data_dir;
    let server = InProcess::start_with(config).await;
    let bin = minimal_path(dir.path());
    let (certbot, calls) = fake_certbot(dir.path());
    let mut cmd = Command::new(register_script());
    cmd.env_clear()
        .env("PATH", &bin)
        .env("CERTLINE_HOST", "127.0.0.1")
        .env("CERTLINE_PORT", server.addr.port().to_string())
        .env("CERTLINE_STATE_DIR", dir.path().join("state"))
        .env("CERTLINE_ACME", "yes")
        .env("CERTLINE_CERTBOT", &certbot)
        .env("CERTLINE_CERTBOT_CONFIG_DIR", dir.path().join("le"))
        .args(["--strict", "www.example.edu"]);
    let done = tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(done.status.code(), Some(1), "{}", done.output());
    assert!(
        done.stderr.contains("acme eab not offered"),
        "{}",
        done.output()
    );
    assert!(!calls.exists(), "certbot must not run");
    server.stop().await;
}
