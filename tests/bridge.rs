//! The Sectigo bridge end to end: domains registered over the line protocol reach the SCM
//! simulator (a real HTTP server following the reference), through faults, kill -9, a 401
//! and the operator's policy, with no secret in any log line.

mod support;
use certline::Config;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::bridge_setup::{AuthMode, register, sectigo_section_with};
use support::client::call;
use support::scm_sim::{self, ScmSim};
use support::server::{Binary, InProcess, test_config};
use support::wait::{done_or, wait_until};

/// A config file body pointing at the simulator, with fast timers for tests.
fn sectigo_toml(mode: AuthMode, sim: &ScmSim, password_file: &Path, extra: &str) -> String {
    let rate_limits = "[rate_limit]\napikey_per_minute = 100000\napikey_burst = 100000\n";
    let settings = format!(
        r#"max_concurrency = 8
unauthorized_retry_secs = 1
allowed_suffixes = ["example.edu", "b"]
create_missing = true
org_id = 2622
ct_monitoring = true
ct_bucket_id = "6d505c9c-b66b-44f9-8ba4-3aaf4d69aed6"
require_confirmed_key = false
{extra}"#
    );
    format!(
        "{rate_limits}{}",
        sectigo_section_with(mode, sim, password_file, &settings)
    )
}

struct Setup {
    dir: tempfile::TempDir,
    password_file: PathBuf,
    config_file: PathBuf,
}

fn setup(sim: &ScmSim, password: &str, extra: &str) -> Setup {
    setup_with(AuthMode::Headers, sim, password, extra)
}

/// A setup in either auth mode; `secret` is the password or the OAuth2 client secret.
fn setup_with(mode: AuthMode, sim: &ScmSim, secret: &str, extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("sectigo-password");
    std::fs::write(&password_file, secret).unwrap();
    let config_file = dir.path().join("certline.toml");
    std::fs::write(&config_file, sectigo_toml(mode, sim, &password_file, extra)).unwrap();
    Setup {
        dir,
        password_file,
        config_file,
    }
}

fn in_process_config(s: &Setup) -> Config {
    let mut config = Config::from_file(&s.config_file).unwrap();
    let base = test_config(&s.dir.path().join("data"));
    config.listen = base.listen;
    config.data_dir = base.data_dir;
    config
}

/// The `sectigo=` field of a domain's status line, and the whole data line.
async fn bridge_state(addr: std::net::SocketAddr, key: &str, domain: &str) -> (String, String) {
    let reply = call(
        addr,
        &format!("command status apikey {key} domain {domain}"),
    )
    .await;
    let data = reply.data.expect("status has data");
    assert!(data.len() < 1000);
    let state = data
        .split(' ')
        .find_map(|f| f.strip_prefix("sectigo="))
        .unwrap()
        .to_owned();
    (state, data)
}

/// Polls until every domain is synced, or panics with the stragglers after `limit`.
async fn wait_all_synced(
    addr: std::net::SocketAddr,
    key: &str,
    domains: &[String],
    limit: Duration,
) {
    // Only the domains not yet synced are asked again.
    let pending = std::sync::Mutex::new(domains.to_vec());
    wait_until(limit, "every domain synced", || async {
        let asked = std::mem::take(&mut *pending.lock().unwrap());
        let mut still = Vec::new();
        let mut example = String::new();
        for d in asked {
            let (state, data) = bridge_state(addr, key, &d).await;
            if state != "synced" {
                example = data;
                still.push(d);
            }
        }
        let left = still.len();
        *pending.lock().unwrap() = still;
        done_or(left == 0, format!("{left} not synced, e.g. {example}"))
    })
    .await;
}

fn names(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}.example.edu")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_domains_reach_synced_through_20_percent_faults_none_created_twice() {
    a_thousand_domains_through_faults(AuthMode::Headers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_domains_reach_synced_through_20_percent_faults_with_oauth2() {
    a_thousand_domains_through_faults(AuthMode::OAuth2).await;
}

async fn a_thousand_domains_through_faults(mode: AuthMode) {
    let sim = ScmSim::start().await;
    sim.set_random_failure_rate(0.2, 7);
    let s = setup_with(mode, &sim, mode.secret(), "");
    let server = InProcess::start_with(in_process_config(&s)).await;
    let domains = names(1000, "host");
    let key = register(server.addr, &domains).await;
    wait_all_synced(server.addr, &key, &domains, Duration::from_secs(240)).await;
    for d in &domains {
        assert_eq!(sim.created(d), 1, "{d} created {} times", sim.created(d));
        let record = server.store.bridge(d).await.unwrap().unwrap();
        assert_eq!(record.sectigo_id, sim.domain_id(d));
        assert_eq!(record.ct_monitoring, Some(true));
    }
    // A synced status line carries the documented fields.
    let (_, data) = bridge_state(server.addr, &key, &domains[0]).await;
    let id = sim.domain_id(&domains[0]).unwrap();
    assert!(
        data.contains(&format!(
            " sectigo=synced id={id} dcv=NOT_VALIDATED dcv_domain=example.edu ct=on checked="
        )),
        "{data}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_in_the_middle_of_a_faulty_run_and_a_restart_finishes_the_rest() {
    kill_9_in_a_faulty_run(AuthMode::Headers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_in_the_middle_of_a_faulty_run_with_oauth2() {
    kill_9_in_a_faulty_run(AuthMode::OAuth2).await;
}

async fn kill_9_in_a_faulty_run(mode: AuthMode) {
    let sim = ScmSim::start().await;
    sim.set_random_failure_rate(0.2, 11);
    sim.set_latency(Duration::from_millis(2));
    let s = setup_with(mode, &sim, mode.secret(), "");
    let data = s.dir.path().join("data");
    let server = Binary::start(&data, Some(&s.config_file));
    let domains = names(1000, "k");
    let key = register(server.addr, &domains).await;
    // Let the bridge get part of the way, then pull the plug.
    wait_until(Duration::from_secs(120), "150 domains in SCM", || async {
        done_or(sim.domain_count() >= 150, sim.domain_count())
    })
    .await;
    server.kill9();
    let before = sim.domain_count();
    assert!(before < domains.len(), "the run was not interrupted");

    let server = Binary::start(&data, Some(&s.config_file));
    wait_all_synced(server.addr, &key, &domains, Duration::from_secs(240)).await;
    for d in &domains {
        assert_eq!(sim.created(d), 1, "{d}");
    }
    assert_eq!(sim.domain_count(), domains.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_401_pauses_the_bridge_and_it_resumes_when_the_credentials_work() {
    for mode in AuthMode::BOTH {
        a_restart_with_corrected_credentials_resumes(mode).await;
    }
}

async fn a_restart_with_corrected_credentials_resumes(mode: AuthMode) {
    let sim = ScmSim::start().await;
    let s = setup_with(mode, &sim, "wrong-password", "");
    let server = InProcess::start_with(in_process_config(&s)).await;
    let domains = names(5, "p");
    let key = register(server.addr, &domains).await;
    let (state, data) = wait_until(Duration::from_secs(30), "the bridge paused", || async {
        let (state, data) = bridge_state(server.addr, &key, &domains[0]).await;
        if data.contains("bridge=paused") {
            Ok((state, data))
        } else {
            Err(data)
        }
    })
    .await;
    // Nothing got past its first step: the domain is at `lookup` (it made the probe, or waits
    // behind it), or still `queued` when another domain's probe paused the bridge before a
    // worker took this one (which domain goes first is not promised; on PostgreSQL under
    // load it is often not the first registered).
    assert!(state == "lookup" || state == "queued", "{data}");
    if mode == AuthMode::Headers {
        // The domain that made the probe carries SCM's code; the others wait behind it
        // (`bridge=paused` without an error of their own), so look at every domain.
        wait_until(Duration::from_secs(30), "a domain shows -16", || async {
            let mut seen = Vec::new();
            for d in &domains {
                let (_, data) = bridge_state(server.addr, &key, d).await;
                if data.contains("error_code=-16") {
                    return Ok(());
                }
                seen.push(data);
            }
            Err(seen)
        })
        .await;
    }
    // Paused means quiet: one probe per `unauthorized_retry_secs` (1 s here), not a retry
    // storm. When the second probe is seen, a storm would already have sent many more.
    let before = sim.total_requests();
    let during = wait_until(
        Duration::from_secs(30),
        "two probes while paused",
        || async {
            let during = sim.total_requests() - before;
            done_or(during >= 2, during).map(|()| during)
        },
    )
    .await;
    assert!(during <= 3, "{during} requests while paused");
    assert_eq!(sim.domain_count(), 0);
    // Every domain shows the pause, whether it saw the 401 itself or waits behind it.
    for d in &domains {
        let (_, data) = bridge_state(server.addr, &key, d).await;
        assert!(data.contains("bridge=paused"), "{data}");
    }

    // The operator restarts certline with the right credentials: everything syncs well
    // before the 300 s probe interval, and no domain is left behind.
    let dir = server.stop().await;
    assert!(dir.is_none());
    std::fs::write(&s.password_file, mode.secret()).unwrap();
    // A long probe interval from now on: the resumption must not wait for it.
    let text = std::fs::read_to_string(&s.config_file).unwrap().replace(
        "unauthorized_retry_secs = 1",
        "unauthorized_retry_secs = 300",
    );
    std::fs::write(&s.config_file, text).unwrap();
    let restarted = Instant::now();
    let server = InProcess::start_with(in_process_config(&s)).await;
    wait_all_synced(server.addr, &key, &domains, Duration::from_secs(60)).await;
    assert!(restarted.elapsed() < Duration::from_secs(250));
    let (_, data) = bridge_state(server.addr, &key, &domains[0]).await;
    assert!(!data.contains("bridge=paused"), "{data}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_bridge_resumes_by_itself_once_sectigo_accepts_it_again() {
    let sim = ScmSim::start().await;
    let s = setup(&sim, scm_sim::PASSWORD, "");
    sim.set_unauthorized(true);
    let server = InProcess::start_with(in_process_config(&s)).await;
    let domains = names(3, "r");
    let key = register(server.addr, &domains).await;
    wait_until(Duration::from_secs(30), "the bridge paused", || async {
        let (_, data) = bridge_state(server.addr, &key, &domains[0]).await;
        done_or(data.contains("bridge=paused"), data)
    })
    .await;
    sim.set_unauthorized(false);
    wait_all_synced(server.addr, &key, &domains, Duration::from_secs(60)).await;
    assert!(
        !bridge_state(server.addr, &key, &domains[0])
            .await
            .1
            .contains("bridge=paused")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn domains_outside_the_policy_never_reach_sectigo_and_status_says_why() {
    let sim = ScmSim::start().await;
    let s = setup(&sim, scm_sim::PASSWORD, "");
    let server = InProcess::start_with(in_process_config(&s)).await;
    let outside = [
        "www.other.org",
        "badexample.edu",
        "192.0.2.7",
        "www.example.edu.evil.org",
    ];
    let inside = vec!["www.example.edu".to_owned()];
    let all: Vec<String> = outside
        .iter()
        .map(|d| d.to_string())
        .chain(inside.clone())
        .collect();
    let key = register(server.addr, &all).await;
    wait_all_synced(server.addr, &key, &inside, Duration::from_secs(60)).await;
    for d in outside {
        assert_eq!(
            bridge_state(server.addr, &key, d).await.0,
            "not_forwarded",
            "{d}"
        );
        assert_eq!(sim.name_hits(d), 0, "{d} reached the simulator");
    }
    assert_eq!(sim.domain_count(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_step_is_final_and_shows_sectigos_code_and_text() {
    let sim = ScmSim::start().await;
    let s = setup(&sim, scm_sim::PASSWORD, "");
    let server = InProcess::start_with(in_process_config(&s)).await;
    // "a.b" passes certline's rules and the policy, but SCM wants at least 4 characters.
    let key = register(server.addr, &["a.b".to_owned()]).await;
    let data = wait_until(Duration::from_secs(30), "a.b failed", || async {
        let (state, data) = bridge_state(server.addr, &key, "a.b").await;
        done_or(state == "failed", data.clone()).map(|()| data)
    })
    .await;
    assert!(data.contains(" error_step=create error_code=-712 error=\"The domain name should be at least 4 characters in length.\""), "{data}");
    // Final: not retried with backoff, only looked at again at the next recheck (hours away),
    // so there is no retry storm to wait for.
    let record = server
        .store
        .bridge("a.b")
        .await
        .unwrap()
        .expect("a bridge record");
    let due_in =
        record.next_attempt_at.expect("rechecked eventually") - chrono::Utc::now().timestamp();
    assert!(due_in > 3600, "a final failure is due again in {due_in} s");
    assert_eq!(sim.count("POST /api/domain/v1"), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_create_permission_missing_domains_are_reported_not_created() {
    let sim = ScmSim::start().await;
    sim.add_domain("known.example.edu");
    let s = setup(&sim, scm_sim::PASSWORD, "");
    let text = std::fs::read_to_string(&s.config_file)
        .unwrap()
        .replace("create_missing = true", "create_missing = false");
    std::fs::write(&s.config_file, text).unwrap();
    let server = InProcess::start_with(in_process_config(&s)).await;
    let key = register(
        server.addr,
        &["known.example.edu".into(), "new.example.edu".into()],
    )
    .await;
    wait_all_synced(
        server.addr,
        &key,
        &["known.example.edu".to_owned()],
        Duration::from_secs(60),
    )
    .await;
    wait_until(
        Duration::from_secs(30),
        "new.example.edu not_in_sectigo",
        || async {
            let (state, data) = bridge_state(server.addr, &key, "new.example.edu").await;
            done_or(state == "not_in_sectigo", data)
        },
    )
    .await;
    assert_eq!(sim.count("POST /api/domain/v1"), 0);
    assert_eq!(sim.created("new.example.edu"), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_appears_in_any_log_line() {
    let sim = ScmSim::start().await;
    let s = setup(&sim, scm_sim::PASSWORD, "");
    let log = s.dir.path().join("certline.log");
    let data = s.dir.path().join("data");
    // Faults and a wrong password along the way, at the most verbose level.
    sim.set_random_failure_rate(0.3, 3);
    let server = Binary::start_logged(&data, Some(&s.config_file), "trace", Some(&log));
    let domains = names(20, "s");
    let key = register(server.addr, &domains).await;
    wait_all_synced(server.addr, &key, &domains, Duration::from_secs(120)).await;
    drop(server);
    std::fs::write(&s.password_file, "another-Secret-zz9").unwrap();
    let server = Binary::start_logged(&data, Some(&s.config_file), "trace", Some(&log));
    register(server.addr, &names(2, "t")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.len() > 10_000,
        "the log is not empty: {} bytes",
        text.len()
    );
    assert!(text.contains("BRIDGE PAUSED"), "the 401 was logged");
    for secret in [scm_sim::PASSWORD, "another-Secret-zz9", &key] {
        assert!(!text.contains(secret), "secret {secret:?} in the log");
    }
}

/// Polls until `domain` is in `state`; returns its status line.
async fn wait_state(addr: std::net::SocketAddr, key: &str, domain: &str, state: &str) -> String {
    let start = Instant::now();
    loop {
        let (now, data) = bridge_state(addr, key, domain).await;
        if now == state {
            return data;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never {state}: {data}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requested_delegations_and_suspended_domains_are_shown_not_synced() {
    let sim = ScmSim::start().await;
    sim.set_delegations_need_approval(true);
    sim.add_domain("off.example.edu");
    sim.set_domain_active("off.example.edu", false);
    let s = setup(&sim, scm_sim::PASSWORD, "");
    let server = InProcess::start_with(in_process_config(&s)).await;
    let key = register(
        server.addr,
        &["req.example.edu".into(), "off.example.edu".into()],
    )
    .await;
    wait_state(
        server.addr,
        &key,
        "req.example.edu",
        "awaiting_delegation_approval",
    )
    .await;
    wait_state(server.addr, &key, "off.example.edu", "suspended").await;
    // Without approve_delegations, certline does not try to approve.
    assert_eq!(sim.count("POST /api/domain/v1/{id}/delegation/approve"), 0);
    assert_eq!(sim.delegation_statuses("req.example.edu"), ["REQUESTED"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_approve_delegations_an_mrao_bridge_approves_and_syncs() {
    let sim = ScmSim::start().await;
    sim.set_delegations_need_approval(true);
    let s = setup(&sim, scm_sim::PASSWORD, "approve_delegations = true");
    let server = InProcess::start_with(in_process_config(&s)).await;
    let domains = vec!["appr.example.edu".to_owned()];
    let key = register(server.addr, &domains).await;
    wait_all_synced(server.addr, &key, &domains, Duration::from_secs(30)).await;
    assert_eq!(sim.delegation_statuses("appr.example.edu"), ["ACTIVE"]);
    assert_eq!(sim.count("POST /api/domain/v1/{id}/delegation/approve"), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_domain_another_organisation_holds_ends_failed_after_a_bounded_700_cycle() {
    let sim = ScmSim::start().await;
    // certline's admin sees org 2622 only; the domain is delegated elsewhere.
    sim.set_admin_org(Some(2622));
    sim.add_domain_for_org("theirs.example.edu", 4711);
    let s = setup(&sim, scm_sim::PASSWORD, "");
    let server = InProcess::start_with(in_process_config(&s)).await;
    let key = register(server.addr, &["theirs.example.edu".into()]).await;
    let start = Instant::now();
    let data = loop {
        let (state, data) = bridge_state(server.addr, &key, "theirs.example.edu").await;
        if state == "failed" {
            break data;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{data}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(data.contains("error_step=create"), "{data}");
    assert!(data.contains("cannot see"), "{data}");
    let creates = sim.count("POST /api/domain/v1");
    assert!((2..=4).contains(&creates), "{creates} creates");
    // Bounded: no more creates once failed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sim.count("POST /api/domain/v1"), creates);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_is_not_held_up_by_a_hanging_sectigo() {
    let sim = ScmSim::start().await;
    let s = setup(&sim, scm_sim::PASSWORD, "");
    // Every request hangs far beyond the shutdown grace period (2 s in the test config)
    // and beyond the 5 s request timeout.
    sim.set_latency(Duration::from_secs(3600));
    let log = s.dir.path().join("certline.log");
    let data = s.dir.path().join("data");
    let server = Binary::start_logged(&data, Some(&s.config_file), "info", Some(&log));
    register(server.addr, &names(4, "h")).await;
    let start = Instant::now();
    while sim.total_requests() == 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "no request sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("still open after the shutdown grace period"),
        "the worker held shutdown past the grace period:\n{text}"
    );
    assert!(text.contains("store closed; stopped"), "{text}");
}

#[test]
fn check_config_reports_the_bridge_keys() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "x").unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[sectigo]\nallowed_suffixes = [\"example.edu\"]\ndcv_method = \"cname\"\n\
             dcv_domains = [\"dept.example.edu\"]\ndcv_hook_env = [\"DNS_TOKEN\"]\n\
             approve_delegations = true\n[sectigo.auth]\nmode = \"headers\"\nlogin = \"l\"\n\
             customer_uri = \"c\"\npassword_file = \"{}\"\n",
            pw.display()
        ),
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_certline"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("sectigo dcv: dcv_method = Cname, dcv_domains = [\"dept.example.edu\"] (others validate at their registrable domain), dcv_hook_env = [\"DNS_TOKEN\"], approve_delegations = true, allow_insecure_http = false"),
        "{text}"
    );
    // http:// is refused with the reason.
    let text_http = std::fs::read_to_string(&path).unwrap().replace(
        "[sectigo]\n",
        "[sectigo]\nbase_url = \"http://127.0.0.1:1/api\"\n",
    );
    std::fs::write(&path, text_http).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_certline"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(all.contains("credentials in clear"), "{all}");
}

#[tokio::test(flavor = "multi_thread")]
async fn undecodable_answers_end_failed_after_a_few_attempts_with_the_body_start() {
    let sim = ScmSim::start().await;
    sim.malform_next(1000, scm_sim::Malform::Garbage);
    let s = setup(&sim, scm_sim::PASSWORD, "");
    let server = InProcess::start_with(in_process_config(&s)).await;
    let key = register(server.addr, &["garbled.example.edu".into()]).await;
    let data = wait_state(server.addr, &key, "garbled.example.edu", "failed").await;
    assert!(data.contains("error_step=lookup"), "{data}");
    assert!(data.contains("Gateway hiccup"), "{data}");
    let lists = sim.count("GET /api/domain/v1");
    assert!((5..=6).contains(&lists), "{lists} attempts");
    server.stop().await;
}
