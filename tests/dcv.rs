//! DCV automation: domains go from NOT_VALIDATED (or EXPIRED, or expiring soon) to VALIDATED
//! by DNS, driven by certline through a real DNS hook script, against the SCM simulator, which
//! validates only when it finds the exact record the hook wrote, refuses DCV below the
//! registrable domain (-723) and lets subdomains inherit their registrable domain's validation.

mod support;
use certline::Config;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::bridge_setup::{AuthMode, register, sectigo_section_with};
use support::client::{call, wait_for_statuses};
use support::scm_sim::ScmSim;
use support::server::{InProcess, test_config};
use support::wait::{done_or, wait_until};

struct Env {
    dir: tempfile::TempDir,
    zone: PathBuf,
}

/// A DNS hook in bash: `publish` writes the value, byte for byte, into `<zone>/<host>` (the
/// simulator's "DNS"); `cleanup` removes it. Domains starting `bad` fail and those starting
/// `hang` hang, until the file `<zone>/.fixed` exists.
fn write_hook(env: &Env) -> PathBuf {
    let path = env.dir.path().join("dns-hook");
    let script = format!(
        r#"#!/bin/bash
set -u
ZONE='{zone}'
host=$(printf '%s' "$CERTLINE_DCV_HOST" | tr 'A-Z' 'a-z')
host=${{host%.}}
case "$CERTLINE_DCV_DOMAIN" in
  bad*) [ -e "$ZONE/.fixed" ] || {{ echo "dns api refused the change" >&2; exit 3; }} ;;
  hang*) [ -e "$ZONE/.fixed" ] || sleep 30 ;;
esac
case "$CERTLINE_DCV_ACTION" in
  publish) printf '%s' "$CERTLINE_DCV_VALUE" > "$ZONE/$host"
           printf '%s %s\n' "$CERTLINE_DCV_RECORD_TYPE" "$host" >> "$ZONE/.published" ;;
  cleanup) rm -f "$ZONE/$host" ;;
  *) exit 9 ;;
esac
"#,
        zone = env.zone.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn config(sim: &ScmSim, env: &Env, method: &str, hook: Option<&Path>) -> Config {
    config_with(AuthMode::Headers, sim, env, method, hook)
}

fn config_with(
    mode: AuthMode,
    sim: &ScmSim,
    env: &Env,
    method: &str,
    hook: Option<&Path>,
) -> Config {
    let pw = env.dir.path().join("pw");
    std::fs::write(&pw, mode.secret()).unwrap();
    let hook_line = hook
        .map(|h| format!("dcv_hook = \"{}\"", h.display()))
        .unwrap_or_default();
    let settings = format!(
        r#"max_concurrency = 8
allowed_suffixes = ["edu", "se", "org"]
create_missing = true
org_id = 7
require_confirmed_key = false
dcv_method = "{method}"
{hook_line}
dcv_hook_timeout_secs = 1
dcv_max_poll_secs = 1
dcv_expiry_window_days = 30"#
    );
    let text = format!(
        "[rate_limit]\napikey_per_minute = 100000\napikey_burst = 100000\n{}",
        sectigo_section_with(mode, sim, &pw, &settings)
    );
    let mut config = Config::from_toml(&text).unwrap();
    let base = test_config(&env.dir.path().join("data"));
    config.listen = base.listen;
    config.data_dir = base.data_dir;
    config
}

async fn setup_sim() -> (ScmSim, Env) {
    let sim = ScmSim::start().await;
    // The simulator checks every 20 ms; announce that instead of Sectigo's 2 hours so the
    // worker, which honours nextCheck, polls soon.
    sim.set_next_check_interval(Duration::from_millis(50));
    let dir = tempfile::tempdir().unwrap();
    let zone = dir.path().join("zone");
    std::fs::create_dir(&zone).unwrap();
    sim.set_zone_dir(&zone);
    (sim, Env { dir, zone })
}

async fn status(addr: std::net::SocketAddr, key: &str, domain: &str) -> String {
    let reply = call(
        addr,
        &format!("command status apikey {key} domain {domain}"),
    )
    .await;
    let data = reply.data.expect("data");
    assert!(data.len() < 1000);
    data
}

/// `n` registrable domains (`<prefix><i>.edu`), each validated on its own.
fn names(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}.edu")).collect()
}

/// The registrable domains the 200 subdomains of the acceptance test fall under.
const PARENTS: [&str; 3] = ["example.edu", "kth.se", "uni.org"];

/// 200 subdomains (`www7.dept.kth.se`, …) spread over [`PARENTS`].
fn subdomains(n: usize, prefix: &str) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix}{i}.dept.{}", PARENTS[i % PARENTS.len()]))
        .collect()
}

async fn two_hundred_domains_validate_by(method: &str, mode: AuthMode) {
    let (sim, env) = setup_sim().await;
    let hook = write_hook(&env);
    let server = InProcess::start_with(config_with(mode, &sim, &env, method, Some(&hook))).await;
    let domains = subdomains(200, method);
    let key = register(server.addr, &domains).await;
    // A subdomain is synced as soon as it is in the inventory; its DCV follows its
    // validation domain's, which certline validates once (and then cleans up after).
    wait_for_statuses(
        server.addr,
        &key,
        &domains,
        " dcv=VALIDATED ",
        Duration::from_secs(180),
    )
    .await;
    wait_until(
        Duration::from_secs(60),
        "the validation domains synced (DCV records cleaned up)",
        || async {
            let mut phases = Vec::new();
            for p in PARENTS {
                phases.push(
                    server
                        .store
                        .bridge(p)
                        .await
                        .unwrap()
                        .map(|r| r.phase.name()),
                );
            }
            done_or(phases.iter().all(|p| *p == Some("synced")), phases)
        },
    )
    .await;
    let record_type = method.to_ascii_uppercase();
    for (i, d) in domains.iter().enumerate() {
        let data = status(server.addr, &key, d).await;
        assert!(data.contains(" dcv=VALIDATED dcv_expires="), "{data}");
        let parent = PARENTS[i % PARENTS.len()];
        assert!(data.contains(&format!(" dcv_domain={parent} ")), "{data}");
        assert!(!data.contains("error"), "{data}");
        // SCM itself reports each subdomain validated (inherited from its parent).
        let scm = sim.domain_json(d).expect("in the inventory");
        assert_eq!(scm["validationStatus"], "VALIDATED", "{d}: {scm}");
    }
    for parent in PARENTS {
        assert_eq!(sim.dcv_status_of(parent).as_deref(), Some("VALIDATED"));
    }
    // One DCV run per registrable domain: 3 records published with the right type (none
    // for a subdomain, which SCM would refuse with -723), and cleaned up afterwards.
    let published = std::fs::read_to_string(env.zone.join(".published")).unwrap();
    assert_eq!(published.lines().count(), PARENTS.len(), "{published}");
    assert!(
        published
            .lines()
            .all(|l| l.starts_with(&format!("{record_type} ")))
    );
    let left: Vec<_> = std::fs::read_dir(&env.zone)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "records not cleaned up: {left:?}");
    // Every step is in the audit trail.
    let steps: Vec<String> = support::store::audit_trail(&server.store)
        .await
        .into_iter()
        .filter_map(|e| match e.kind {
            certline::store::AuditKind::Bridge { step, .. } => Some(step),
            _ => None,
        })
        .collect();
    for step in [
        "dcv-begin",
        "dcv-submit",
        "dcv-publish",
        "dcv-cleanup",
        "dcv-validated",
    ] {
        assert_eq!(
            steps.iter().filter(|s| *s == step).count(),
            PARENTS.len(),
            "{step}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_subdomains_validate_through_three_cname_runs() {
    two_hundred_domains_validate_by("cname", AuthMode::Headers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_subdomains_validate_through_three_cname_runs_with_oauth2() {
    two_hundred_domains_validate_by("cname", AuthMode::OAuth2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_subdomains_validate_through_three_txt_runs_with_values_byte_exact() {
    // The simulator's TXT values always hold a backslash and a backtick, and it validates
    // only on a byte-exact match of what the hook wrote.
    two_hundred_domains_validate_by("txt", AuthMode::OAuth2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_subdomains_validate_through_three_txt_runs_with_header_auth() {
    two_hundred_domains_validate_by("txt", AuthMode::Headers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_or_hanging_hook_is_retried_reported_and_never_blocks_the_others() {
    let (sim, env) = setup_sim().await;
    let hook = write_hook(&env);
    let server = InProcess::start_with(config(&sim, &env, "txt", Some(&hook))).await;
    let good = names(20, "good");
    let mut all = good.clone();
    all.push("bad.edu".into());
    all.push("hang.edu".into());
    let key = register(server.addr, &all).await;
    wait_for_statuses(
        server.addr,
        &key,
        &good,
        "dcv=VALIDATED",
        Duration::from_secs(120),
    )
    .await;

    // Both are reported (the hanging one once its 1 s timeout has passed).
    wait_for_statuses(
        server.addr,
        &key,
        &["bad.edu".to_owned()],
        "error_step=dcv_publish error=\"DNS hook exited with exit status: 3: dns api refused the change\"",
        Duration::from_secs(30),
    )
    .await;
    let bad = status(server.addr, &key, "bad.edu").await;
    assert!(bad.contains(" sectigo=dcv_publish "), "{bad}");
    wait_for_statuses(
        server.addr,
        &key,
        &["hang.edu".to_owned()],
        "error=\"DNS hook did not finish within 1s and was killed\"",
        Duration::from_secs(30),
    )
    .await;
    // Retried, not given up: wait for a second failure of the same hook.
    wait_until(Duration::from_secs(30), "a second dns-hook failure (a retry)", || async {
        let failures = support::store::audit_trail(&server.store)
            .await
            .into_iter()
            .filter(|e| matches!(&e.kind, certline::store::AuditKind::Bridge { domain, step, .. } if domain == "bad.edu" && step == "dns-hook-failed"))
            .count();
        done_or(failures >= 2, failures)
    })
    .await;
    // The operator fixes the DNS side; the retries succeed.
    std::fs::write(env.zone.join(".fixed"), "").unwrap();
    let stuck = vec!["bad.edu".to_owned(), "hang.edu".to_owned()];
    wait_for_statuses(
        server.addr,
        &key,
        &stuck,
        "dcv=VALIDATED",
        Duration::from_secs(60),
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_and_soon_expiring_domains_are_revalidated() {
    let (sim, env) = setup_sim().await;
    let hook = write_hook(&env);
    sim.add_domain("expired.edu");
    sim.set_dcv_expired("expired.edu");
    sim.add_domain("soon.edu");
    let today = chrono::Utc::now().date_naive();
    let in_ten_days = today + chrono::Days::new(10);
    sim.set_dcv_validated("soon.edu", today - chrono::Days::new(355), in_ten_days);
    sim.add_domain("fine.edu");
    sim.set_dcv_validated("fine.edu", today, today + chrono::Days::new(300));

    let server = InProcess::start_with(config(&sim, &env, "cname", Some(&hook))).await;
    let domains: Vec<String> = ["expired", "soon", "fine"]
        .iter()
        .map(|d| format!("{d}.edu"))
        .collect();
    let key = register(server.addr, &domains).await;
    let renewed = (today + chrono::Days::new(365)).to_string();
    wait_for_statuses(
        server.addr,
        &key,
        &domains[..2],
        &format!("dcv=VALIDATED dcv_expires={renewed}"),
        Duration::from_secs(60),
    )
    .await;
    wait_for_statuses(
        server.addr,
        &key,
        &domains[2..],
        "sectigo=synced",
        Duration::from_secs(60),
    )
    .await;
    // The valid one was left alone: no DCV run for it.
    assert_eq!(
        sim.count("POST /api/dcv/v1/validation/start/domain/cname"),
        2
    );
    let published = std::fs::read_to_string(env.zone.join(".published")).unwrap();
    assert!(!published.contains("fine.edu"), "{published}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_hook_the_record_to_publish_is_shown_until_a_person_publishes_it() {
    let (sim, env) = setup_sim().await;
    // Without a hook an operator must see the record: certline refuses this without [admin].
    let mut without_hook = config(&sim, &env, "txt", None);
    without_hook.admin = Config::from_toml(&support::admin::admin_toml(env.dir.path()))
        .unwrap()
        .admin;
    let server = InProcess::start_with(without_hook).await;
    let domains = vec!["manual.edu".to_owned()];
    let key = register(server.addr, &domains).await;
    wait_for_statuses(
        server.addr,
        &key,
        &domains,
        "sectigo=dcv_action_required",
        Duration::from_secs(30),
    )
    .await;
    let data = status(server.addr, &key, "manual.edu").await;
    let host = data
        .split(" dcv_host=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(host, "_pki-validation.manual.edu.");
    assert!(data.contains(" dcv_record_type=TXT "), "{data}");
    // Undo the documented quoting to get the exact value, and publish it "by hand".
    let quoted = data.split(" dcv_value=").nth(1).unwrap();
    let mut value = String::new();
    let mut chars = quoted.chars().skip(1);
    while let Some(c) = chars.next() {
        match c {
            '\\' => value.push(chars.next().unwrap()),
            '"' => break,
            c => value.push(c),
        }
    }
    assert!(value.contains('\\') && value.contains('`'), "{value}");
    // The operator's `certline domains --needs-action` shows the same record.
    let admin = support::admin::Admin::new(server.admin.expect("admin listener"));
    let listed = admin.domains("needs_action=true").await;
    let publish = listed[0]["needs_action"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "dcv_action_required")
        .unwrap_or_else(|| panic!("{listed:?}"))["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        publish.contains(&format!("publish TXT {host} \"{value}\" by hand")),
        "{publish}"
    );
    sim.publish_dns(&host, &value);
    wait_for_statuses(
        server.addr,
        &key,
        &domains,
        "dcv=VALIDATED",
        Duration::from_secs(30),
    )
    .await;
    server.stop().await;
}
