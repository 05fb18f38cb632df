//! The DNS hook gets a clean environment: `PATH`, `HOME`, `LANG`, the `CERTLINE_DCV_*`
//! record variables and what `dcv_hook_env` lists — never the Sectigo secret certline was
//! given in its own environment.
//!
//! A test binary of its own: the secret is put into this process's environment before any
//! thread starts (setting variables is unsound once other threads may read them).

mod support;
use certline::Config;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};
use support::bridge_setup::{AuthMode, register, sectigo_section_with};
use support::client::call;
use support::scm_sim::{self, ScmSim};
use support::server::{InProcess, test_config};

const SECRET_VAR: &str = "CERTLINE_TEST_SCM_PASSWORD";
const PASSED_VAR: &str = "CERTLINE_TEST_DNS_PROVIDER_TOKEN";
const UNLISTED_VAR: &str = "CERTLINE_TEST_UNLISTED";

#[test]
fn the_hook_sees_only_its_documented_environment_and_never_the_secret() {
    // SAFETY: no other thread exists yet in this test binary (one test, runtime not built).
    unsafe {
        std::env::set_var(SECRET_VAR, scm_sim::PASSWORD);
        std::env::set_var(PASSED_VAR, "dns-token-123");
        std::env::set_var(UNLISTED_VAR, "not-for-hooks");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn run() {
    let sim = ScmSim::start().await;
    sim.set_next_check_interval(Duration::from_millis(50));
    let dir = tempfile::tempdir().unwrap();
    let zone = dir.path().join("zone");
    std::fs::create_dir(&zone).unwrap();
    sim.set_zone_dir(&zone);
    let hook = dir.path().join("dns-hook");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nenv > '{zone}/.env-'\"$CERTLINE_DCV_ACTION\"\n\
             h=$(printf '%s' \"$CERTLINE_DCV_HOST\" | tr 'A-Z' 'a-z'); h=${{h%.}}\n\
             [ \"$CERTLINE_DCV_ACTION\" = publish ] && printf '%s' \"$CERTLINE_DCV_VALUE\" > '{zone}'/\"$h\"\n\
             exit 0\n",
            zone = zone.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let settings = format!(
        "allowed_suffixes = [\"edu\"]\ncreate_missing = true\norg_id = 7\n\
         require_confirmed_key = false\ndcv_method = \"txt\"\ndcv_hook = \"{}\"\n\
         dcv_hook_env = [\"{PASSED_VAR}\"]\ndcv_max_poll_secs = 1",
        hook.display()
    );
    let unused = dir.path().join("unused");
    let section = sectigo_section_with(AuthMode::Headers, &sim, &unused, &settings).replace(
        &format!("password_file = \"{}\"", unused.display()),
        &format!("password_env = \"{SECRET_VAR}\""),
    );
    let mut config = Config::from_toml(&section).unwrap();
    let base = test_config(&dir.path().join("data"));
    config.listen = base.listen;
    config.data_dir = base.data_dir;
    let server = InProcess::start_with(config).await;
    let key = register(server.addr, &["hookenv.edu".to_owned()]).await;
    let start = Instant::now();
    loop {
        let reply = call(
            server.addr,
            &format!("command status apikey {key} domain hookenv.edu"),
        )
        .await;
        let data = reply.data.unwrap();
        // Synced with DCV validated: the cleanup run of the hook is done too.
        if data.contains("sectigo=synced") && data.contains("dcv=VALIDATED") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{data}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;

    for action in ["publish", "cleanup"] {
        let env = std::fs::read_to_string(zone.join(format!(".env-{action}"))).unwrap();
        assert!(
            !env.contains(scm_sim::PASSWORD),
            "the Sectigo password reached the hook:\n{env}"
        );
        assert!(!env.contains(SECRET_VAR), "{env}");
        assert!(!env.contains(UNLISTED_VAR), "{env}");
        assert!(
            env.contains(&format!("{PASSED_VAR}=dns-token-123")),
            "{env}"
        );
        assert!(env.contains("CERTLINE_DCV_DOMAIN=hookenv.edu"), "{env}");
        assert!(
            env.contains(&format!("CERTLINE_DCV_ACTION={action}")),
            "{env}"
        );
        if std::env::var_os("PATH").is_some() {
            assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
        }
        let names: Vec<&str> = env
            .lines()
            .filter_map(|l| l.split_once('=').map(|(n, _)| n))
            .collect();
        for name in names {
            assert!(
                ["PATH", "HOME", "LANG", PASSED_VAR, "PWD", "SHLVL", "_"].contains(&name)
                    || name.starts_with("CERTLINE_DCV_"),
                "unexpected variable {name} in the hook's environment:\n{env}"
            );
        }
    }
}
